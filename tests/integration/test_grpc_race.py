"""The GOAWAY race against a real grpc-js server (npm @grpc/grpc-js, installed by tools/setup):
its grpc.max_connection_idle_ms sends GOAWAY and closes the connection while a balancer's
grpc-js client, which stopped reading its connection (busy), makes a call on it. Judged by the
wire as test_http2_race is: every stream the client saw refused or reset is a caught stream of
that connection, with the server's GOAWAY before it on the wire, and the report names the
grpc-js setting; so with grpc.max_connection_age_ms; with the idle limit above the client's
idle time nothing is caught. Behind
nginx grpc_pass with upstream keep-alive, paused (busy) as the client's call reaches it and
resumed after the backend's GOAWAY, nginx forwards the call on the cached upstream connection
and answers 502: that upstream stream is caught. Recorded with --http2-names, each caught
stream's :method and :path are those tshark decodes on the wire; without, the trace says they
were not recorded. The ALB's gRPC health checks beside the race (a new connection each) are
never taken for caught streams. nginx closing an idle upstream connection on
its own timer (FIN, no GOAWAY) is the peer's idle close, as the wire shows. The kernel's PING
and SETTINGS counts are those of the wire."""
import functools
import os
import signal
import sys
import time
import unittest

from http2_race import GOAWAY, PEERS, Http2RaceTest, http2_frames, http2_request_names
from support import SCENARIO_TOOLS, closetrace, read_trace, report_json, wait_for

sys.path.insert(0, SCENARIO_TOOLS)

import peers  # noqa: E402
import wire  # noqa: E402

CLIENT_IDLE_MS = 1500
IDLE_LIMIT_MS = 1000
UNAVAILABLE = 14
# Behind nginx, from the end of the first call (its access log line): nginx stops, the second
# call reaches it, the backend's GOAWAY comes (IDLE_LIMIT_MS), nginx resumes.
NGINX_STOP_S, NGINX_CLIENT_IDLE_MS, NGINX_RESUME_S = 0.5, 750, 1.5
# An ALB health-checks a GRPC target group so (its interval is 5 s or more; shorter here).
HEALTH_CHECK_INTERVAL_MS = 300
HEALTH_CHECK_PATH = "/AWS.ALB/healthcheck"
UNIMPLEMENTED = 12
RACES = ("local_close_race", "peer_close_race", "local_reset_inflight", "peer_close_inflight")


class NoRace(Exception):
    """Both calls succeeded: the client's timers missed the GOAWAY's instant (a loaded machine),
    so there was no race to judge."""


def assert_raced(seen):
    if [c["code"] for c in seen["calls"]] == [0, 0]:
        raise NoRace(seen)


def until_a_race(test):
    """Runs `test` again (three runs at most) while its run had no race (NoRace)."""
    @functools.wraps(test)
    def run(self):
        for _ in range(3):
            try:
                return test(self)
            except NoRace as no_race:
                last = no_race
        raise AssertionError(f"no race in three runs: {last}")
    return run


class GrpcRaceTest(Http2RaceTest):
    PORT = 50051

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if not os.path.isdir(os.path.join(PEERS, "node_modules", "@grpc", "grpc-js")):
            raise unittest.SkipTest("grpc-js is not installed: run tools/setup")

    def run_client(self, idle_limit_ms, client_env=None, server_env=None, record_args=()):
        """The grpc-js server with `idle_limit_ms` (and `server_env`) and the pausing client."""
        return self.run_race("grpc_server.js",
                             {"MAX_CONNECTION_IDLE_MS": str(idle_limit_ms), **(server_env or {})},
                             ["grpc_client.js", str(CLIENT_IDLE_MS), "pause"], client_env,
                             record_args)

    @until_a_race
    def test_a_call_made_as_the_idle_goaway_comes_is_caught(self):
        trace, pcap, seen = self.run_client(idle_limit_ms=IDLE_LIMIT_MS,
                                            record_args=["--http2-names"])
        assert_raced(seen)
        failed = [s for s in seen["streams"] if s["outcome"] in ("refused", "reset")]
        self.assertTrue(failed, f"the client saw no stream refused or reset: {seen}")
        self.assertEqual([c["code"] for c in seen["calls"]], [0, UNAVAILABLE], seen)

        conn = self.assert_caught_after_goaway(trace, pcap, [s["id"] for s in failed])
        self.assertEqual(conn["comm"], "node")
        self.assert_counts_match_the_wire(conn, pcap)
        self.assert_names_match_the_wire(conn, pcap)

        # The report lists the connection with its streams, named, and grpc-js's setting.
        listed = [r for r in report_json(trace)["races"]["listed"] if r["conn_id"] == conn["id"]]
        self.assertEqual(len(listed), 1)
        self.assertEqual(sorted(s["id"] for s in listed[0]["streams"]),
                         sorted(s["id"] for s in failed))
        text = closetrace("report", trace).stdout
        self.assertIn("grpc.max_connection_idle_ms", text)
        first = conn["http2"]["caught"][0]
        self.assertIn(f"HTTP/2 stream {first['id']} {first['method']} {first['path']} after_goaway",
                      text)

    @until_a_race
    def test_alb_health_checks_beside_the_race_are_not_caught(self):
        """Beside the race, the ALB's gRPC health checks: a call of /AWS.ALB/healthcheck with
        User-Agent ELB-HealthChecker/2.0 on a new connection each time, answered UNIMPLEMENTED
        (the ALB's default success code). Their connections catch nothing, and the race's
        stream is the only one caught, on the race's connection, as the wire shows."""
        with self.recorded_backend("grpc_server.js",
                                   {"MAX_CONNECTION_IDLE_MS": str(IDLE_LIMIT_MS)},
                                   ["--http2-names"]) as topo:
            checker = self.start_client(topo, "balancer", topo.addr["backend"], self.PORT,
                                        ["grpc_health_checker.js", str(HEALTH_CHECK_INTERVAL_MS)])
            seen = self.client_output(self.start_client(
                topo, "balancer", topo.addr["backend"], self.PORT,
                ["grpc_client.js", str(CLIENT_IDLE_MS), "pause"]))
            checker.send_signal(signal.SIGTERM)
            checks = self.client_output(checker)
        self.assertGreaterEqual(len(checks["codes"]), 3, checks)
        self.assertEqual(set(checks["codes"]), {UNIMPLEMENTED}, checks)
        assert_raced(seen)
        failed = [s["id"] for s in seen["streams"] if s["outcome"] in ("refused", "reset")]
        self.assertEqual([c["code"] for c in seen["calls"]], [0, UNAVAILABLE], seen)

        on_wire = http2_request_names(self.pcap, self.PORT)
        race_ports = {port for (port, _), (_, path) in on_wire.items() if path != HEALTH_CHECK_PATH}
        check_ports = {port for (port, _), (_, path) in on_wire.items()
                       if path == HEALTH_CHECK_PATH}
        self.assertEqual(len(race_ports), 1, on_wire)
        self.assertEqual(len(check_ports), len(checks["codes"]), on_wire)
        conn = self.assert_caught_after_goaway(self.trace, self.pcap, failed, race_ports.pop())
        self.assert_names_match_the_wire(conn, self.pcap)

        _, conns, _, _ = read_trace(self.trace)
        checked = [c for c in conns if c["remote"]["port"] in check_ports]
        self.assertEqual(len(checked), len(check_ports))
        for check in checked:
            self.assertEqual(check["http2"]["caught"], [], check)
            self.assertNotIn(check["verdict"], RACES, check)
            self.assertEqual(check["health_check"], "ELB-HealthChecker")
        self.assertIsNone(conn["health_check"])
        listed = report_json(self.trace)["races"]["listed"]
        self.assertEqual([r["conn_id"] for r in listed], [conn["id"]])

    def test_a_call_made_as_the_age_goaway_comes_is_caught(self):
        """grpc.max_connection_age_ms: the GOAWAY comes at the connection's age (1 s, +-10 %),
        idle or not; a call made after it is caught the same way."""
        trace, pcap, seen = self.run_client(
            idle_limit_ms=10_000,
            server_env={"MAX_CONNECTION_AGE_MS": "1000", "MAX_CONNECTION_AGE_GRACE_MS": "500"})
        failed = [s for s in seen["streams"] if s["outcome"] in ("refused", "reset")]
        self.assertTrue(failed, f"the client saw no stream refused or reset: {seen}")
        self.assertEqual([c["code"] for c in seen["calls"]], [0, UNAVAILABLE], seen)
        conn = self.assert_caught_after_goaway(trace, pcap, [s["id"] for s in failed])
        text = closetrace("report", trace).stdout
        self.assertIn("grpc.max_connection_age_ms", text)
        # Recorded without --http2-names: the names are said to be missing, not guessed.
        self.assertEqual({s["names"] for s in conn["http2"]["caught"]}, {"not_recorded"})
        self.assertIn("(names not recorded)", text)

    @until_a_race
    def test_a_call_nginx_forwards_as_the_idle_goaway_comes_is_caught(self):
        with self.recorded_backend("grpc_server.js",
                                   {"MAX_CONNECTION_IDLE_MS": str(IDLE_LIMIT_MS)},
                                   ["--http2-names"]) as topo:
            nginx = peers.start_nginx_grpc_balancer(topo, self.PORT, base_dir=self.workdir)
            client = self.start_client(topo, "client", topo.addr["balancer_client_side"], 80,
                                       ["grpc_client.js", str(NGINX_CLIENT_IDLE_MS)])
            self.assertTrue(wait_for(lambda: os.path.getsize(nginx.access_log) > 0, timeout=30),
                            "no call through nginx within 30 s")
            first_answered = time.monotonic()
            time.sleep(NGINX_STOP_S)
            nginx.signal(signal.SIGSTOP, workers=True)
            time.sleep(max(0.0, first_answered + NGINX_RESUME_S - time.monotonic()))
            nginx.signal(signal.SIGCONT, workers=True)
            seen = self.client_output(client)
        assert_raced(seen)
        self.assertEqual([c["code"] for c in seen["calls"]], [0, UNAVAILABLE], seen)
        with open(nginx.error_log, encoding="utf-8") as log:
            self.assertIn("upstream sent goaway", log.read())

        conn = self.assert_caught_after_goaway(self.trace, self.pcap)
        self.assert_names_match_the_wire(conn, self.pcap)
        self.assertIn("grpc.max_connection_idle_ms", closetrace("report", self.trace).stdout)
        self.assertEqual(conn["remote"]["addr"], topo.addr["balancer"])

    def test_nginx_closing_an_idle_upstream_connection_is_the_peers_idle_timer(self):
        """nginx's own timer (keepalive_timeout in the upstream block, 1 s here) closes an idle
        upstream HTTP/2 connection with a FIN and no GOAWAY: the trace says so, with the idle
        time the wire shows, and takes it for the peer's idle timer."""
        with self.recorded_backend("grpc_server.js", {"MAX_CONNECTION_IDLE_MS": "10000"}) as topo:
            peers.start_nginx_grpc_balancer(topo, self.PORT, upstream_keepalive_timeout_s=1.0,
                                            base_dir=self.workdir)
            # The client holds its own connection past nginx's timer, so that nginx, not the
            # backend stopping, closes the second upstream connection too.
            seen = self.client_output(self.start_client(
                topo, "client", topo.addr["balancer_client_side"], 80, ["grpc_client.js", "2000"],
                {"HOLD_MS": "1500"}))
        self.assertEqual([c["code"] for c in seen["calls"]], [0, 0], seen)

        _, conns, _, _ = read_trace(self.trace)
        on_wire = {w.remote[1]: w for w in wire.read_capture(self.pcap, topo.addr["backend"],
                                                             {self.PORT})}
        goaways = [f for f in http2_frames(self.pcap, self.PORT) if f[3] == GOAWAY]
        self.assertEqual(goaways, [])
        self.assertEqual(len(conns), 2, conns)  # each call found the last connection closed
        for conn in conns:
            w = on_wire[conn["remote"]["port"]]
            self.assertEqual((w.initiator, w.how), ("peer", "fin"), w.describe())
            self.assertEqual(conn["verdict"], "peer_idle_close")
            self.assertEqual(conn["close"]["cause"], "idle_timer")
            self.assertAlmostEqual(conn["close"]["idle_ms"], w.idle_before_close * 1000, delta=5)
            self.assertAlmostEqual(conn["close"]["idle_ms"], 1000, delta=100)

    def test_an_idle_limit_above_the_clients_idle_catches_nothing(self):
        # The client pings while idle: the kernel's PING and SETTINGS counts against the wire.
        trace, pcap, seen = self.run_client(idle_limit_ms=5000,
                                            client_env={"KEEPALIVE_TIME_MS": "300"})
        self.assertEqual([c["code"] for c in seen["calls"]], [0, 0], seen)
        conn = self.assert_nothing_caught(trace)
        self.assertGreater(conn["http2"]["peer"]["ping_count"], 0)
        self.assert_counts_match_the_wire(conn, pcap)


if __name__ == "__main__":
    unittest.main()
