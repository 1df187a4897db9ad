"""The HTTP/2 GOAWAY race against real peers (the servers and clients in http2/): a server whose
connection limit sends GOAWAY while a balancer's client, which stopped reading its connection
(busy), opens a stream on it. Recorded and captured in the backend's namespace; judged by
tshark's HTTP/2 decoding of the capture."""
import contextlib
import json
import os
import shutil
import subprocess
import sys

from support import SCENARIO_TOOLS, PeerTest, Recorder, read_trace

sys.path.insert(0, SCENARIO_TOOLS)

import netns  # noqa: E402
import peers  # noqa: E402
import wire  # noqa: E402

PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "http2")
HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 1, 3, 4, 6, 7
ACK = 0x1


def http2_frames(pcap, port):
    """(time, source port, destination port, type, stream id, flags) of every HTTP/2 frame on the
    wire to or from `port`, as tshark decodes them (several frames of one segment share its
    time)."""
    fields = ["frame.time_epoch", "tcp.srcport", "tcp.dstport", "http2.type", "http2.streamid",
              "http2.flags"]
    out = subprocess.run(["tshark", "-r", pcap, "-d", f"tcp.port=={port},http2", "-Y", "http2",
                          "-T", "fields", "-E", "separator=/t",
                          *[arg for field in fields for arg in ("-e", field)]],
                         capture_output=True, text=True, check=True).stdout
    frames = []
    for line in out.splitlines():
        time_s, sport, dport, types, ids, flags = line.split("\t")
        for frame_type, stream_id, frame_flags in zip(types.split(","), ids.split(","),
                                                      flags.split(",")):
            frames.append((float(time_s), int(sport), int(dport), int(frame_type), int(stream_id),
                           int(frame_flags, 16)))
    return frames


def http2_request_names(pcap, port):
    """{(client port, stream id): (method, path)} of every request HEADERS frame on the wire to
    `port`, as tshark decodes its header block (HPACK, from the connection's first block)."""
    fields = ["tcp.srcport", "http2.type", "http2.streamid", "http2.headers.method",
              "http2.headers.path"]
    out = subprocess.run(["tshark", "-r", pcap, "-d", f"tcp.port=={port},http2", "-Y",
                          f"http2.type == {HEADERS} && tcp.dstport == {port}", "-T", "fields",
                          "-E", "separator=/t", *[arg for field in fields for arg in ("-e", field)]],
                         capture_output=True, text=True, check=True).stdout
    names = {}
    for line in out.splitlines():
        sport, types, ids, methods, paths = line.split("\t")
        # Several frames of a segment: each HEADERS frame of a request has both pseudo-headers.
        streams = [int(i) for t, i in zip(types.split(","), ids.split(",")) if int(t) == HEADERS]
        for stream_id, method, path in zip(streams, methods.split(","), paths.split(",")):
            names[(int(sport), stream_id)] = (method, path)
    return names


class Http2RaceTest(PeerTest):
    """Runs the race; PORT is each test module's own, so that their captures never mix."""
    PORT = None

    @contextlib.contextmanager
    def recorded_backend(self, server_script, server_env, record_args=()):
        """The node `server_script` (in http2/) in the backend's namespace with `server_env`,
        recorded (with `record_args` added) and captured for the `with` block, which gets the
        topology. Then self.trace and self.pcap hold the trace and the capture."""
        self.pcap = os.path.join(self.workdir, "backend.pcap")
        self.trace = os.path.join(self.workdir, "trace.jsonl")
        with netns.Topology() as topo:
            env = dict(os.environ, PORT=str(self.PORT), HOST="0.0.0.0", **server_env)
            server = topo.spawn_in("backend", [peers.NODE, os.path.join(PEERS, server_script)],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            peers.wait_port(topo, "backend", topo.addr["backend"], self.PORT, proc=server)
            capture = wire.Capture(topo, "backend", "to-bal", self.pcap,
                                   bpf_filter=f"tcp port {self.PORT}").start()
            recorder = Recorder("--port", str(self.PORT), "--quiet", "--netns",
                                f"/run/netns/{topo.nsname('backend')}", *record_args,
                                linger_ms=2000)
            try:
                with recorder:
                    yield topo
                    topo.stop_proc(server)  # its listener; the connections are over
                self.assertEqual(recorder.process.returncode, 0, recorder.stderr)
                shutil.copyfile(recorder.path, self.trace)
            finally:
                capture.stop()
                recorder.cleanup()

    def start_client(self, topo, ns, address, port, client_args, client_env=None):
        """The node client `client_args` (a script in http2/ and its arguments after the
        address and port it reaches) in namespace `ns`, in the background, with `client_env`
        added to its environment."""
        client_script, *client_rest = client_args
        return topo.spawn_in(ns, [peers.NODE, os.path.join(PEERS, client_script), address,
                                  str(port), *client_rest],
                             env=dict(os.environ, **(client_env or {})),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def client_output(self, client):
        """What the client printed last, parsed as JSON, once it ends."""
        stdout, stderr = client.communicate(timeout=20)
        self.assertEqual(client.returncode, 0, stderr)
        return json.loads(stdout.strip().splitlines()[-1])

    def run_race(self, server_script, server_env, client_args, client_env=None, record_args=()):
        """One run: the server, then the client in the balancer's namespace, reaching it
        directly. Returns (trace, pcap, what the client printed)."""
        with self.recorded_backend(server_script, server_env, record_args) as topo:
            seen = self.client_output(self.start_client(topo, "balancer", topo.addr["backend"],
                                                        self.PORT, client_args, client_env))
        return self.trace, self.pcap, seen

    def http2_connection(self, trace, client_port=None):
        """The trace's one HTTP/2 connection (from `client_port` when given); no event lost."""
        _, conns, _, summary = read_trace(trace)
        self.assertEqual(summary["lost_events"], 0)
        spoke_http2 = [c for c in conns if c.get("http2") and
                       client_port in (None, c["remote"]["port"])]
        self.assertEqual(len(spoke_http2), 1, conns)
        return spoke_http2[0]

    def assert_caught_after_goaway(self, trace, pcap, failed_ids=None, client_port=None):
        """Every stream of `failed_ids` (the client saw it refused or reset) is a caught stream
        of the trace's HTTP/2 connection, opened by the peer after this host's GOAWAY, and on
        the wire its HEADERS came after the server's first GOAWAY. Without `failed_ids` (a
        proxy's upstream streams, whose fate its client does not see), the streams the wire
        shows opened after that GOAWAY, and exactly those are caught. `client_port`: the
        connection's, when the trace holds others. Returns the connection."""
        conn = self.http2_connection(trace, client_port)
        client_port = conn["remote"]["port"]
        caught = {s["id"]: s for s in conn["http2"]["caught"]}
        frames = [f for f in http2_frames(pcap, self.PORT) if client_port in (f[1], f[2])]
        goaways = [f[0] for f in frames if f[1] == self.PORT and f[3] == GOAWAY]
        self.assertTrue(goaways, "no GOAWAY from the server on the wire")
        opened = {}
        for time_s, _, dport, frame_type, stream_id, _ in frames:
            if dport == self.PORT and frame_type == HEADERS:
                opened.setdefault(stream_id, time_s)
        if failed_ids is None:
            failed_ids = [stream for stream, time_s in opened.items() if time_s > goaways[0]]
            self.assertTrue(failed_ids, "no stream opened after the server's GOAWAY")
            self.assertEqual(sorted(caught), sorted(failed_ids))
        for stream_id in failed_ids:
            self.assertIn(stream_id, caught, conn["http2"])
            self.assertEqual(caught[stream_id]["opened_by"], "peer")
            self.assertIn(stream_id, opened, f"stream {stream_id} not on the wire")
            self.assertLess(goaways[0], opened[stream_id],
                            "the server's GOAWAY came after the stream")
            self.assertEqual(caught[stream_id]["fate"], "after_goaway")
        self.assertEqual(conn["verdict"], "local_close_race")
        self.assertEqual(conn["http2"]["client"], "peer")
        self.assertGreaterEqual(conn["http2"]["local"]["goaway_count"], 1)
        return conn

    def assert_names_match_the_wire(self, conn, pcap):
        """Each caught stream (recorded with --http2-names) has the :method and :path tshark
        decodes for it on the wire, its path without the query string."""
        self.assertTrue(conn["http2"]["caught"])
        on_wire = http2_request_names(pcap, self.PORT)
        for stream in conn["http2"]["caught"]:
            method, path = on_wire[(conn["remote"]["port"], stream["id"])]
            self.assertEqual(stream["names"], "decoded", stream)
            self.assertEqual((stream["method"], stream["path"]), (method, path.split("?")[0]))
        self.assertIsNone(conn["http2"]["names_undecodable_from"])

    def assert_counts_match_the_wire(self, conn, pcap):
        """Each side's PING and SETTINGS counts in the trace are the frames the wire shows it
        sent (acknowledgements not counted)."""
        client_port = conn["remote"]["port"]
        frames = [f for f in http2_frames(pcap, self.PORT) if client_port in (f[1], f[2])]
        for side, source_port in (("local", self.PORT), ("peer", client_port)):
            sent = [f[3] for f in frames if f[1] == source_port and not f[5] & ACK]
            self.assertEqual((conn["http2"][side]["ping_count"],
                              conn["http2"][side]["settings_count"]),
                             (sent.count(PING), sent.count(SETTINGS)), side)

    def assert_nothing_caught(self, trace):
        conn = self.http2_connection(trace)
        self.assertEqual(conn["http2"]["caught"], [])
        self.assertNotIn(conn["verdict"], ("local_close_race", "peer_close_race",
                                           "local_reset_inflight", "peer_close_inflight"))
        return conn
