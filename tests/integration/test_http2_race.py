"""The GOAWAY race of HTTP/2 (h2c) against a real Node.js `http2` server: its session times out
(GOAWAY, then the close) while a balancer's client, which stopped reading its connection (busy),
opens a stream on it. Judged by the wire (tshark's HTTP/2 decoding of a capture of the same
run): every stream the client saw refused or reset is a caught stream of that connection in the
trace and the report, with the server's GOAWAY before it on the wire; with the session timeout
above the client's idle time nothing is caught."""
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from support import SCENARIO_TOOLS, Recorder, closetrace, read_trace, report_json, require_bpf

sys.path.insert(0, SCENARIO_TOOLS)

import netns  # noqa: E402
import peers  # noqa: E402
import wire  # noqa: E402

PORT = 8082
HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "http2")
CLIENT_IDLE_MS = 1500
HEADERS, RST_STREAM, GOAWAY = 1, 3, 7


def http2_frames(pcap):
    """(time, source port, destination port, type, stream id) of every HTTP/2 frame on the wire,
    as tshark decodes them (several frames of one segment share its time)."""
    fields = ["frame.time_epoch", "tcp.srcport", "tcp.dstport", "http2.type", "http2.streamid"]
    out = subprocess.run(["tshark", "-r", pcap, "-d", f"tcp.port=={PORT},http2", "-Y", "http2",
                          "-T", "fields", "-E", "separator=/t",
                          *[arg for field in fields for arg in ("-e", field)]],
                         capture_output=True, text=True, check=True).stdout
    frames = []
    for line in out.splitlines():
        time_s, sport, dport, types, ids = line.split("\t")
        for frame_type, stream_id in zip(types.split(","), ids.split(",")):
            frames.append((float(time_s), int(sport), int(dport), int(frame_type), int(stream_id)))
    return frames


def iso_utc(wall_ns):
    """Unix-epoch ns as an ALB log writes times (microseconds)."""
    when = datetime.datetime.fromtimestamp(wall_ns // 1000 / 1e6, tz=datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def h2_alb_502(received_ns, target):
    """An ALB 502 line of type h2 (its client spoke HTTP/2) for a request it received at
    `received_ns` and sent to `target` at once, with no response from it."""
    return (f"h2 {iso_utc(received_ns + 2_000_000)} app/shop-alb/50dc6c495c0c9188 "
            f"10.0.0.99:50001 {target} 0.000 0.001 -1 502 - 512 0 "
            f"\"POST https://api.example.com:443/shop.Orders/Pay HTTP/2.0\" \"grpc-client/1.0\" "
            "- - arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/shop-api/"
            "73e2d6bc24d8a067 \"Root=1-6744cc00-000000000000000000000001\" \"-\" \"-\" 1 "
            f"{iso_utc(received_ns)} \"forward\" \"-\" \"-\" \"{target}\" \"-\" \"-\" \"-\" "
            "TID_01\n")


class Http2RaceTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_bpf()
        missing = [tool for tool in ("ip", "node", "tcpdump", "tshark") if not shutil.which(tool)]
        if missing:
            raise unittest.SkipTest(f"missing {missing}: run tools/setup")

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="closetrace-http2-race-")

    def tearDown(self):
        shutil.rmtree(self.workdir, ignore_errors=True)

    def run_balancer(self, session_timeout_ms):
        """One run: the server with `session_timeout_ms`, the pausing client, recorded and
        captured in the backend's namespace. Returns (trace, pcap, client's streams)."""
        pcap = os.path.join(self.workdir, "backend.pcap")
        trace = os.path.join(self.workdir, "trace.jsonl")
        with netns.Topology() as topo:
            env = dict(os.environ, PORT=str(PORT), HOST="0.0.0.0",
                       SESSION_TIMEOUT_MS=str(session_timeout_ms))
            server = topo.spawn_in("backend", [peers.NODE, os.path.join(HERE, "server.js")],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            peers.wait_port(topo, "backend", topo.addr["backend"], PORT, proc=server)
            capture = wire.Capture(topo, "backend", "to-bal", pcap,
                                   bpf_filter=f"tcp port {PORT}").start()
            recorder = Recorder("--port", str(PORT), "--quiet", "--netns",
                                f"/run/netns/{topo.nsname('backend')}", linger_ms=2000)
            try:
                with recorder:
                    result = topo.run_in("balancer", [
                        peers.NODE, os.path.join(HERE, "balancer.js"), topo.addr["backend"],
                        str(PORT), str(CLIENT_IDLE_MS), "pause"], timeout=20, check=False)
                    self.assertEqual(result.returncode, 0, result.stderr)
                    topo.stop_proc(server)  # its listener; the connection is over
                self.assertEqual(recorder.process.returncode, 0, recorder.stderr)
                shutil.copyfile(recorder.path, trace)
            finally:
                capture.stop()
                recorder.cleanup()
        return trace, pcap, json.loads(result.stdout.strip().splitlines()[-1])["streams"]

    def http2_connection(self, trace):
        _, conns, _, summary = read_trace(trace)
        self.assertEqual(summary["lost_events"], 0)
        spoke_http2 = [c for c in conns if c.get("http2")]
        self.assertEqual(len(spoke_http2), 1, conns)
        return spoke_http2[0]

    def test_a_stream_opened_as_the_goaway_comes_is_caught(self):
        trace, pcap, streams = self.run_balancer(session_timeout_ms=1000)
        failed = [s for s in streams if s["outcome"] in ("refused", "reset")]
        self.assertTrue(failed, f"the client saw no stream refused or reset: {streams}")

        conn = self.http2_connection(trace)
        client_port = conn["remote"]["port"]
        caught = {s["id"]: s for s in conn["http2"]["caught"]}
        frames = [f for f in http2_frames(pcap) if client_port in (f[1], f[2])]
        goaways = [f[0] for f in frames if f[1] == PORT and f[3] == GOAWAY]
        self.assertTrue(goaways, "no GOAWAY from the server on the wire")
        for stream in failed:
            self.assertIn(stream["id"], caught, conn["http2"])
            self.assertEqual(caught[stream["id"]]["opened_by"], "peer")
            opened = [f[0] for f in frames
                      if f[2] == PORT and f[3] == HEADERS and f[4] == stream["id"]]
            self.assertTrue(opened, f"stream {stream['id']} not on the wire")
            self.assertLess(goaways[0], opened[0], "the server's GOAWAY came after the stream")
            self.assertEqual(caught[stream["id"]]["fate"], "after_goaway")
        self.assertEqual(conn["verdict"], "local_close_race")
        self.assertEqual(conn["http2"]["client"], "peer")
        self.assertGreaterEqual(conn["http2"]["local"]["goaway_count"], 1)

        # The report lists the connection with its streams and names Node's setting.
        races = report_json(trace)["races"]
        listed = [r for r in races["listed"] if r["conn_id"] == conn["id"]]
        self.assertEqual(len(listed), 1, races)
        self.assertEqual(sorted(s["id"] for s in listed[0]["streams"]),
                         sorted(s["id"] for s in failed))
        text = closetrace("report", trace).stdout
        self.assertIn("(names not decoded)", text)
        self.assertIn("server.setTimeout(", text)

        # `alb` pairs an h2 502 line at each caught stream's opening with that stream.
        header = read_trace(trace)[0]
        target = f"{conn['local']['addr']}:{PORT}"
        log = os.path.join(self.workdir, "alb.log")
        with open(log, "w", encoding="ascii") as out:
            for stream in conn["http2"]["caught"]:
                out.write(h2_alb_502(stream["opened_ns"] + header["mono_to_wall_ns"], target))
        result = closetrace("alb", trace, log, "--format", "json")
        self.assertEqual(result.returncode, 0, result.stderr)
        pairs = json.loads(result.stdout)["pairs"]
        self.assertEqual(sorted(p["trace"]["stream"]["id"] for p in pairs), sorted(caught))
        for pair in pairs:
            self.assertEqual(pair["trace"]["conn_id"], conn["id"])
            self.assertFalse(pair["path_compared"])
        self.assertIn("(names not decoded)", closetrace("alb", trace, log).stdout)

    def test_a_session_timeout_above_the_clients_idle_catches_nothing(self):
        trace, _, streams = self.run_balancer(session_timeout_ms=5000)
        self.assertEqual([s["outcome"] for s in streams], ["status 200", "status 200"])
        conn = self.http2_connection(trace)
        self.assertEqual(conn["http2"]["caught"], [])
        self.assertNotIn(conn["verdict"], ("local_close_race", "peer_close_race",
                                           "local_reset_inflight", "peer_close_inflight"))


if __name__ == "__main__":
    unittest.main()
