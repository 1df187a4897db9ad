"""The close race against a real Node.js `http` server: a client reuses its idle keep-alive
connection at the server's idle timeout. The trace must prove the race (this host's FIN, then
the late request, answered with RST) and agree with a packet capture of the same run; with the
server's timeout above the client's reuse delay there must be no race at all."""
import os
import shutil
import sys
import time
import unittest

from support import SCENARIO_TOOLS, PeerTest, Recorder, closetrace, read_trace, report_json

sys.path.insert(0, SCENARIO_TOOLS)

import clients  # noqa: E402
import netns  # noqa: E402
import peers  # noqa: E402
import wire  # noqa: E402

PORT = 8080
SWEEP_STEP_S = 0.010
SWEEP_ATTEMPTS = 12

# Sends a request, waits, and reuses the connection without looking at it first; prints the
# second request's status line or what became of it.
REUSE_CLIENT = """
import socket, sys, time
host, port, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection((host, port))
s.sendall(b"GET /first HTTP/1.1\\r\\nHost: b\\r\\n\\r\\n")
assert s.recv(4096).startswith(b"HTTP/1.1 200")
time.sleep(delay)
try:
    s.sendall(b"POST /pay?card=4111 HTTP/1.1\\r\\nHost: b\\r\\nContent-Length: 8\\r\\n\\r\\namount=1")
    reply = s.recv(4096)
    print(reply.split(b"\\r\\n")[0].decode() if reply else "closed")
except ConnectionResetError:
    print("reset")
"""


class NodeRaceTest(PeerTest):
    def attempt(self, topo, delay_s):
        """One connection: a GET, `delay_s` idle, then a POST on the same connection whatever
        the server did meanwhile (a balancer that has not processed the FIN yet)."""
        result = topo.run_in("balancer", [sys.executable, "-c", REUSE_CLIENT, topo.addr["backend"],
                                          str(PORT), str(delay_s)], timeout=15)
        return result.stdout.strip()

    def measure_close_delay(self, topo):
        """How long after a response Node really closes an idle connection (it adds its
        keep-alive buffer to keepAliveTimeout): measured, not assumed."""
        client = clients.KeepAliveClient(topo, "balancer", topo.addr["backend"], PORT)
        try:
            client.request("GET", "/calibrate")
            started = time.monotonic()
            client.wait_close(timeout=10)
            return time.monotonic() - started
        finally:
            client.quit()

    def record(self, keepalive_ms, sweep, calibrate=True):
        """Runs Node with `keepalive_ms`, sweeps the reuse delay while recording and capturing.
        Returns (trace path, pcap path, backend address, results of the attempts)."""
        pcap = os.path.join(self.workdir, "backend.pcap")
        with netns.Topology() as topo:
            peers.start_node_backend(topo, keepalive_ms=keepalive_ms, port=PORT,
                                     base_dir=self.workdir)
            close_delay = self.measure_close_delay(topo) if calibrate else None
            capture = wire.Capture(topo, "backend", "to-bal", pcap,
                                   bpf_filter=f"tcp port {PORT}").start()
            recorder = Recorder("--port", str(PORT), "--quiet", "--netns",
                                f"/run/netns/{topo.nsname('backend')}", linger_ms=500)
            results = []
            with recorder:
                for delay in sweep(close_delay):
                    result = self.attempt(topo, delay)
                    results.append((delay, result))
                    if not result.startswith("HTTP/1.1 200"):
                        break
                time.sleep(0.8)
            capture.stop()
            self.assertEqual(recorder.process.returncode, 0, recorder.stderr)
            shutil.copyfile(recorder.path, os.path.join(self.workdir, "trace.jsonl"))
            recorder.cleanup()
            return os.path.join(self.workdir, "trace.jsonl"), pcap, topo.addr["backend"], \
                close_delay, results

    def test_reuse_at_the_timeout_is_a_proven_close_race(self):
        def sweep(close_delay):
            start = close_delay - SWEEP_STEP_S * 3
            return [start + i * SWEEP_STEP_S for i in range(SWEEP_ATTEMPTS)]

        trace, pcap, backend, close_delay, results = self.record(1000, sweep)
        failed = [(d, r) for d, r in results if not r.startswith("HTTP/1.1 200")]
        self.assertTrue(failed, f"no reuse delay met the close (Node closed after "
                                f"{close_delay:.3f} s): {results}")

        _, conns, _, summary = read_trace(trace)
        self.assertEqual(summary["lost_events"], 0)
        races = [c for c in conns if c["verdict"] == "local_close_race"]
        self.assertEqual(len(races), 1, [c["verdict"] for c in conns])
        race = races[0]

        # The wire tells which of the race's two forms this run met: the POST after Node's FIN
        # (answered with RST), or the POST just before a FIN that a lagging event loop turned
        # into an RST with the request never read (TCP_ABORT_ON_CLOSE); the trace must say that
        # form, and no connection's first FIN/RST or verdict may differ from the trace.
        wire_conns = wire.read_capture(pcap, backend, {PORT})
        key = (race["remote"]["addr"], race["remote"]["port"])
        on_wire = [w for w in wire_conns if (w.remote[0], w.remote[1]) == key]
        self.assertEqual(len(on_wire), 1)
        self.assertEqual(on_wire[0].verdict, "local_close_race", on_wire[0].describe())
        self.assertEqual(race["close"]["initiator"], "local")
        self.assertEqual(race["close"]["how"], on_wire[0].how)
        if on_wire[0].how == "fin":
            late = [r for r in race["requests"] if r["outcome"] == "after_local_close"]
            self.assertEqual([(r["method"], r["target"]) for r in late], [("POST", "/pay")])
            self.assertIsNotNone(race["close"]["local_rst_ns"])
            self.assertGreaterEqual(late[0]["request_ns"], race["close"]["local_fin_ns"])
        else:
            late = [r for r in race["requests"] if r["outcome"] == "unread_at_close"]
            self.assertEqual([(r["method"], r["target"]) for r in late], [("POST", "/pay")])
            self.assertEqual(race["close"]["cause"], "unread_request")
        self.assertAlmostEqual(race["close"]["idle_ms"], close_delay * 1000,
                               delta=close_delay * 1000 * 0.05)
        header, _, _, _ = read_trace(trace)
        disagreements = wire.compare(conns, wire_conns, mono_to_wall_ns=header["mono_to_wall_ns"],
                                     local_addr=backend, check_verdicts=True)
        self.assertEqual(disagreements, [])

    def test_timeout_above_the_reuse_delay_has_no_race(self):
        trace, pcap, backend, _, results = self.record(5000, lambda _: [2.05], calibrate=False)
        self.assertEqual([r.split()[1] for _, r in results], ["200"])
        header, conns, _, _ = read_trace(trace)
        self.assertTrue(conns)
        for conn in conns:
            self.assertIn(conn["verdict"], ("peer_idle_close", "open"), conn)
        disagreements = wire.compare(conns, wire.read_capture(pcap, backend, {PORT}),
                                     mono_to_wall_ns=header["mono_to_wall_ns"],
                                     local_addr=backend, check_verdicts=True)
        self.assertEqual(disagreements, [])


class AnnouncedTimeoutTest(PeerTest):
    """Node says its keepAliveTimeout in every response (Keep-Alive: timeout=N). A recording
    shorter than that timeout shows no idle close, yet the announcement tells who closes first:
    the trace must hold what the wire carries, and verify must fail on Node's default against an
    ALB's 60 s, from a recording of a few requests, and stay inconclusive on the fixed 80 s."""

    def record(self, keepalive_ms, security_headers=False):
        """A few keep-alive requests and ALB health checks beside them, in about 2 s.
        Returns the trace's conn records and the wire's connections."""
        pcap = os.path.join(self.workdir, "backend.pcap")
        trace = os.path.join(self.workdir, "trace.jsonl")
        with netns.Topology() as topo:
            peers.start_node_backend(topo, keepalive_ms=keepalive_ms, port=PORT,
                                     base_dir=self.workdir, security_headers=security_headers)
            capture = wire.Capture(topo, "backend", "to-bal", pcap,
                                   bpf_filter=f"tcp port {PORT}").start()
            recorder = Recorder("--port", str(PORT), "--quiet", "--netns",
                                f"/run/netns/{topo.nsname('backend')}", linger_ms=500)
            with recorder:
                checks = clients.HealthChecker(topo, "balancer", topo.addr["backend"], PORT,
                                               interval=0.4)
                client = clients.KeepAliveClient(topo, "balancer", topo.addr["backend"], PORT)
                try:
                    for i in range(5):
                        self.assertEqual(client.request("GET", f"/item/{i}")["status"], 200)
                        time.sleep(0.2)
                finally:
                    client.quit()
                    checked = checks.stop()
                self.assertTrue(any(c.get("status") == 200 for c in checked), checked)
                time.sleep(0.8)
            capture.stop()
            self.assertEqual(recorder.process.returncode, 0, recorder.stderr)
            shutil.copyfile(recorder.path, trace)
            recorder.cleanup()
            _, conns, _, summary = read_trace(trace)
            self.assertEqual(summary["lost_events"], 0)
            return trace, conns, wire.read_capture(pcap, topo.addr["backend"], {PORT})

    def check_against_the_wire(self, conns, wire_conns, announced_s):
        """Every connection's announcement as on the wire: the keep-alive client's says
        `announced_s`; the health checks' (answered with Connection: close) say none."""
        on_wire = {(w.remote[0], w.remote[1]): w for w in wire_conns}
        said = []
        for conn in conns:
            w = on_wire.get((conn["remote"]["addr"], conn["remote"]["port"]))
            self.assertIsNotNone(w, conn)
            self.assertEqual(conn.get("keep_alive_timeout_s"), w.keep_alive_timeout_s,
                             w.describe())
            said.append(conn.get("keep_alive_timeout_s"))
        self.assertIn(announced_s, said)
        self.assertIn(None, said, "no health check connection was recorded")

    def test_node_default_fails_verify_before_any_idle_close(self):
        trace, conns, wire_conns = self.record(5000)
        self.check_against_the_wire(conns, wire_conns, 5)
        self.assertFalse([c for c in conns if c["close"]["cause"] == "idle_timer"], conns)
        result = closetrace("verify", trace)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn("comm node announces Keep-Alive: timeout=5", result.stdout)
        report = report_json(trace)
        self.assertEqual([(a["comm"], a["timeout_s"], a["below_peer"])
                          for a in report["announced_keepalive"]], [("node", 5, True)])
        self.assertEqual(report["recommendations"][0]["kind"], "keepalive_timeout")
        self.assertEqual(report["recommendations"][0]["value_s"], 65)

    def test_announced_after_an_applications_long_head(self):
        """An Express application's helmet fields come first in Node's responses: its
        Keep-Alive field stands ~700 bytes in, past the kernel's first 256 bytes of the head."""
        trace, conns, wire_conns = self.record(5000, security_headers=True)
        responses = [m["head_len"] for w in wire_conns for m in w.messages("out")]
        self.assertTrue(responses and all(length > 256 for length in responses), responses)
        self.check_against_the_wire(conns, wire_conns, 5)
        result = closetrace("verify", trace)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn("comm node announces Keep-Alive: timeout=5", result.stdout)

    def test_the_fixed_timeout_announced_proves_nothing_yet(self):
        trace, conns, wire_conns = self.record(80000)
        self.check_against_the_wire(conns, wire_conns, 80)
        result = closetrace("verify", trace)
        self.assertEqual(result.returncode, 3, result.stdout + result.stderr)
        self.assertIn("comm node announces Keep-Alive: timeout=80, not below the peer's idle "
                      "timeout", result.stdout)
        report = report_json(trace)
        self.assertEqual([(a["comm"], a["timeout_s"], a["below_peer"])
                          for a in report["announced_keepalive"]], [("node", 80, False)])


if __name__ == "__main__":
    unittest.main()
