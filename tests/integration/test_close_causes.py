"""Issue 14: why each connection closed, on real peers beside ALB-style health checks
(tools/scenario), recorded on the host by closetrace and judged against a packet capture of
its interface.  Every connection must agree with the wire on who closed, how, the verdict,
the cause (where the wire can tell it), the requests' outcomes and the health checker; and
report/verify must draw the conclusion the issue asks for.  What each scenario measured on
the wire is in tools/scenario/README.md."""
import os
import re
import shutil
import subprocess
import sys
import unittest

from support import SCENARIO_TOOLS, backend_recorder, closetrace, report_json, require_bpf, require_peers

sys.path.insert(0, SCENARIO_TOOLS)

import netns  # noqa: E402
import scenarios  # noqa: E402

PEERS = ("ip", "nsenter", "node", "nginx", "tcpdump", "tshark", "nft")
HC = "ELB-HealthChecker"


class CloseCauseTest(unittest.TestCase):
    """Each scenario runs once (per variant); the tests judge its trace."""

    results = {}
    passed = set()  # scenarios whose test passed: their work dirs go at the end

    @classmethod
    def setUpClass(cls):
        require_bpf()
        require_peers(PEERS)

    def run_scenario(self, name, recorder_ns="backend", **options):
        key = (name, tuple(sorted(options.items())))
        if key not in self.results:
            # the recorder sees only its own namespace (--netns /proc/self/ns/net), so that
            # scenario runs of other users on this machine cannot pollute the trace
            self.results[key] = scenarios.SCENARIOS[name](
                recorder=backend_recorder(), recorder_ns=recorder_ns, **options)
        result = self.results[key]
        self.addCleanup(self._note_outcome, key)
        self.assertEqual(result.recorder_rc, 0, f"recorder failed; see {result.recorder_log}")
        self.assertGreaterEqual(result.measured.get("health_checks", 0), 3,
                                "the health checks did not run")
        self.assertEqual(result.measured.get("capture_dropped"), 0)
        return result

    def _note_outcome(self, key):
        # a failing test keeps its scenario's work dir (trace, capture, logs) for a look
        if not any(test is self and err for test, err in self._outcome.result.failures
                   + self._outcome.result.errors):
            self.passed.add(key)

    def wire(self, result):
        return [w for w in result.wire_conns() if not w.refused]

    def conns(self, result):
        local = result.host_addr
        return [c for c in result.trace_data()["conns"]
                if c["local"]["addr"] == local and c["remote"]["addr"] != local]

    def by_port(self, result):
        """trace conn records by the peer's port (each scenario's 4-tuples are unique)."""
        return {c["remote"]["port"]: c for c in self.conns(result)}

    def assert_agrees_with_wire(self, result):
        disagreements = result.compare(verbose=True, check_verdicts=True, check_causes=True,
                                       check_outcomes=True, check_health=True)
        # both views of each disagreement are printed above; the message lists them
        self.assertEqual([(d["kind"], d["key"][3], d["detail"]) for d in disagreements], [],
                         f"trace and capture disagree (kept in {result.workdir})")

    def assert_health_checks(self, result):
        """Every health check: the backend closed after its Connection: close answer."""
        trace = self.by_port(result)
        checks = [w for w in self.wire(result) if w.health_check == HC]
        self.assertGreaterEqual(len(checks), 3)
        for w in checks:
            self.assertEqual((w.initiator, w.cause), (("local"), ({"connection_close"}, "peer")),
                             w.describe())
            c = trace.get(w.remote[1])
            self.assertIsNotNone(c, w.describe())
            self.assertEqual(c.get("health_check"), HC, c)
            self.assertEqual(c["close"].get("cause"), "connection_close", c)
            self.assertEqual(c["close"].get("asked_by"), "peer", c)

    def recommendation_kinds(self, report):
        return [r["kind"] for r in report["recommendations"]]

    # ---- a correct backend behind health checks ---------------------------------------
    def test_healthy(self):
        result = self.run_scenario("healthy")
        # the wire: nginx closes its idle upstream connections at its 3 s
        timers = [w for w in self.wire(result) if w.cause[0] == {"idle_timer"}]
        self.assertGreaterEqual(len(timers), 2)
        for w in timers:
            self.assertEqual(w.initiator, "peer", w.describe())
            self.assertAlmostEqual(w.idle_since_exchange, 3.0, delta=0.3)
        self.assert_agrees_with_wire(result)
        self.assert_health_checks(result)
        report = report_json(result.trace)
        self.assertEqual(self.recommendation_kinds(report), ["nothing_to_fix"], report)
        self.assertIn("Nothing to fix", closetrace("report", result.trace).stdout)
        verify = closetrace("verify", result.trace)
        self.assertEqual(verify.returncode, 0, verify.stdout + verify.stderr)

    # ---- WebSockets beside healthy keep-alive ------------------------------------------
    def test_websocket(self):
        result = self.run_scenario("websocket")
        clients = [r for r in result.client_results() if r.get("phase", "").startswith("websocket")]
        self.assertEqual([(r["status"], r["answered"], r["error"]) for r in clients],
                         [(101, 3, None)] * 4, clients)
        sockets = [w for w in self.wire(result)
                   if [o["status"] for o in w.request_outcomes()] in ([101], [200, 101])]
        self.assertEqual(len(sockets), 4, [w.describe() for w in self.wire(result)])
        # one upgraded a connection right after a GET on it (the kernel writes the 101 and its
        # request all the same: the trace's cause below tells)
        self.assertEqual(sum(len(w.request_outcomes()) == 2 for w in sockets), 1)
        for w in sockets:
            self.assertEqual(w.cause[0], {"upgraded"}, w.describe())
        by_application = [w for w in sockets if w.initiator == "local"]
        self.assertEqual(len(by_application), 3, [w.describe() for w in sockets])
        for w in by_application:  # the application's 1.5 s after the last frame, under nginx's 3 s
            last_frame = max(x["t"] for x in w.segments
                             if x["dir"] == "in" and x["t"] < w.first_close[0])
            self.assertAlmostEqual(w.first_close[0] - last_frame, 1.5, delta=0.25,
                                   msg=w.describe())
        self.assert_agrees_with_wire(result)
        self.assert_health_checks(result)
        trace = self.by_port(result)
        for w in sockets:
            self.assertEqual(trace[w.remote[1]]["close"].get("cause"), "upgraded")
        # The WebSockets' closes tell no keep-alive timeout: nginx's timer is the only one, and
        # this host closes no idle keep-alive connection before it.
        report = report_json(result.trace)
        self.assertEqual(report["idle"]["this_host"]["closes"], 0, report["idle"])
        self.assertEqual(report["causes"]["upgraded"], 4, report["causes"])
        self.assertEqual(self.recommendation_kinds(report), ["nothing_to_fix"], report)
        verify = closetrace("verify", result.trace)
        self.assertEqual(verify.returncode, 0, verify.stdout + verify.stderr)

    # ---- Gunicorn's arbiter killing a worker busy past --timeout -------------------------
    def test_worker_timeout(self):
        require_peers(("gunicorn",))
        result = self.run_scenario("worker_timeout")
        self.assertEqual(result.measured["slow_statuses"], [502, 502])
        killed = [w for w in self.wire(result) if w.verdict == "local_reset_inflight"]
        self.assertEqual(len(killed), 2, [w.describe() for w in self.wire(result)])
        for w in killed:  # the request read, no response: the worker's close is a FIN
            self.assertEqual((w.how, w.cause[0]), ("fin", {"in_flight"}), w.describe())
        self.assert_agrees_with_wire(result)
        self.assert_health_checks(result)
        report = report_json(result.trace)
        [load] = [r for r in report["recommendations"] if r["kind"] == "load"]
        self.assertIn("Also, for comm gunicorn: worke: Gunicorn's arbiter kills a worker busy on "
                      "one request for longer than --timeout", load["text"])
        # the arbiter looks about once a second: the kill comes 2-3 s after the request
        waited = re.search(r"Its requests here had waited ([\d.]+) s or more", load["text"])
        self.assertIsNotNone(waited, load["text"])
        self.assertTrue(2.0 <= float(waited.group(1)) < 4.0, load["text"])

    # ---- a broken backend behind health checks, the peer shows no timer ---------------
    def test_broken_behind_hc(self):
        result = self.run_scenario("broken_behind_hc")
        timers = [w for w in self.wire(result) if w.cause[0] == {"idle_timer"}]
        self.assertEqual(len(timers), 3)
        for w in timers:  # Node: keepAliveTimeout 1000 + its 1 s buffer
            self.assertEqual(w.initiator, "local", w.describe())
            self.assertAlmostEqual(w.idle_since_exchange, 2.0, delta=0.1)
        self.assert_agrees_with_wire(result)
        self.assert_health_checks(result)
        report = report_json(result.trace)
        keepalive = [r for r in report["recommendations"] if r["kind"] == "keepalive_timeout"]
        self.assertTrue(keepalive, report["recommendations"])
        # the ALB's default 60 s + 5 s, never a few seconds
        self.assertEqual(keepalive[0]["value_s"], 65, keepalive)
        self.assertEqual(keepalive[0]["comm"], "node", keepalive)
        self.assertEqual(report["recommended_keepalive_s"], 65)
        self.assertEqual(report["peer_idle_timeout"]["source"], "alb_default")
        self.assertEqual(closetrace("verify", result.trace).returncode, 1)

    # ---- the same beside an internal client that closes its idle connections first --------
    def test_mixed_peers(self):
        result = self.run_scenario("mixed_peers")
        timers = [w for w in self.wire(result) if w.cause[0] == {"idle_timer"}]
        balancer = [w for w in timers if w.remote[0] == netns.ADDR["balancer"]]
        internal = [w for w in timers if w.remote[0] == netns.ADDR["client"]]
        self.assertEqual((len(balancer), len(internal)), (3, 3), [w.describe() for w in timers])
        for w in balancer:  # Node: keepAliveTimeout 1000 + its 1 s buffer
            self.assertEqual(w.initiator, "local", w.describe())
            self.assertAlmostEqual(w.idle_since_exchange, 2.0, delta=0.1)
        for w in internal:  # the internal client's 1 s, before the backend's timer
            self.assertEqual(w.initiator, "peer", w.describe())
            self.assertAlmostEqual(w.idle_since_exchange, 1.0, delta=0.1)
        self.assert_agrees_with_wire(result)
        self.assert_health_checks(result)
        # The internal client's 1 s is not the balancer's timeout: the backend closes the
        # balancer's idle connections first, and the report, verify and the fix say so.
        report = report_json(result.trace)
        peer = report["peer_idle_timeout"]
        self.assertEqual(peer["source"], "outlasted", peer)
        self.assertEqual(peer["outlasting_peers"]["named"], [netns.ADDR["balancer"]], peer)
        self.assertAlmostEqual(peer["observed_ms"], 1000, delta=100)
        self.assertTrue(report["closes_before_peer"])
        self.assertEqual(report["early_idle_closes"], len(balancer))
        keepalive = [r for r in report["recommendations"] if r["kind"] == "keepalive_timeout"]
        self.assertEqual([(r["comm"], r["value_s"]) for r in keepalive], [("node", 65)])
        self.assertEqual(closetrace("verify", result.trace).returncode, 1)

    # ---- one-shot clients beside a keep-alive client -----------------------------------
    def test_one_shot(self):
        result = self.run_scenario("one_shot")
        once = [w for w in self.wire(result)
                if any(o["target"].startswith("/once") for o in w.request_outcomes())]
        self.assertEqual(len(once), 4)
        for w in once:
            self.assertEqual((w.initiator, w.cause[0]), ("peer", {"closed_after_use"}),
                             w.describe())
        self.assert_agrees_with_wire(result)
        self.assert_health_checks(result)
        trace = self.by_port(result)
        for w in once:
            c = trace[w.remote[1]]
            self.assertEqual((c["close"]["initiator"], c["close"].get("cause")),
                             ("peer", "closed_after_use"), c)
        report = report_json(result.trace)
        # the one-shot closes (0-0.4 s) are not the peer's idle timeout: nginx's 3 s is
        # (or, if one close is too few to be a timer, the ALB default)
        peer = report["peer_idle_timeout"]
        self.assertTrue(peer["source"] == "alb_default"
                        or abs(peer["ms"] - 3000) < 300, peer)
        self.assertEqual(self.recommendation_kinds(report), ["nothing_to_fix"], report)
        verify = closetrace("verify", result.trace)
        self.assertEqual(verify.returncode, 0, verify.stdout + verify.stderr)

    # ---- a server that ends keep-alive after N requests --------------------------------
    def check_max_requests(self, backend, initiator, **options):
        result = self.run_scenario("max_requests", backend=backend, **options)
        ended = [w for w in self.wire(result) if w.cause[0] == {"keepalive_ended"}]
        self.assertEqual(len(ended), 2)
        if options.get("security_headers"):
            # Connection and Keep-Alive lie past the kernel's first 256 bytes of each head
            for w in ended:
                heads = [m["head_len"] for m in w.messages("out")]
                self.assertEqual(len(heads), 3, w.describe())
                self.assertTrue(all(length > 256 for length in heads), heads)
        for w in ended:
            self.assertEqual(w.cause[1], "local")
            self.assertEqual(w.initiator, initiator, w.describe())
            self.assertEqual([o["close_asked"] for o in w.request_outcomes()],
                             [None, None, "response"])
        self.assert_agrees_with_wire(result)
        self.assert_health_checks(result)
        trace = self.by_port(result)
        for w in ended:
            c = trace[w.remote[1]]
            self.assertEqual((c["close"].get("cause"), c["close"].get("asked_by")),
                             ("keepalive_ended", "local"), c)
        # Keep-alive ended by request count is no failure; with no idle timer run out in the
        # recording (5 s), nothing shows who closes idle connections first: inconclusive. But
        # Node says its 5 s in every response (Keep-Alive: timeout=5), as the wire shows: below
        # an ALB's 60 s, that fails.
        announced = {w.keep_alive_timeout_s for w in self.wire(result)
                     if w.requests and not w.health_check}
        verify = closetrace("verify", result.trace)
        if backend == "node":
            self.assertEqual(announced, {5})
            self.assertEqual(verify.returncode, 1, verify.stdout + verify.stderr)
            self.assertIn("comm node announces Keep-Alive: timeout=5", verify.stdout)
        else:
            self.assertEqual(announced, {None})
            self.assertEqual(verify.returncode, 3, verify.stdout + verify.stderr)
            self.assertIn("INCONCLUSIVE", verify.stdout)

    def test_max_requests_node(self):
        # Node 20 announces Connection: close on the 3rd response but does not close:
        # the client does (measured)
        self.check_max_requests("node", "peer")

    def test_max_requests_node_behind_long_heads(self):
        # an Express application's helmet fields put Node's Connection: close ~700 bytes in
        self.check_max_requests("node", "peer", security_headers=True)

    def test_max_requests_nginx(self):
        self.check_max_requests("nginx", "local")

    # ---- the unread-request race --------------------------------------------------------
    def check_unread_race(self, backend, comm, setting):
        result = self.run_scenario("unread_race", backend=backend)
        self.assertEqual(result.measured["race_errors"], ["reset", "reset"],
                         result.measured["races"])
        races = [w for w in self.wire(result)
                 if any(o["target"].startswith("/race") for o in w.request_outcomes())]
        self.assertEqual(len(races), 2)
        for w in races:
            # the request arrives, then this host's RST: no FIN, no response
            late = w.request_outcomes()[-1]
            self.assertEqual((w.initiator, w.how), ("local", "rst"), w.describe())
            self.assertIsNone(w.local_fin_t, w.describe())
            self.assertLess(late["t"], w.local_rst_t)
            self.assertEqual(late["outcome"], "unread_at_close")
            self.assertGreater(late["idle_before"], 1.0)
            self.assertEqual(w.verdict, "local_close_race")
        self.assert_agrees_with_wire(result)
        self.assert_health_checks(result)
        trace = self.by_port(result)
        for w in races:
            c = trace[w.remote[1]]
            self.assertEqual(c["verdict"], "local_close_race", c)
            self.assertEqual(c["close"].get("cause"), "unread_request", c)
            self.assertGreater(c["close"].get("unread_bytes") or 0, 0, c)
            self.assertEqual(c["comm"], comm, c)
            self.assertEqual([r["outcome"] for r in c["requests"]],
                             ["completed", "unread_at_close"], c)
            self.assertGreater(c["requests"][-1].get("idle_before_ms") or 0, 1000, c)
        report = report_json(result.trace)
        self.assertEqual(report["races"]["total"], 2, report["races"])
        kinds = self.recommendation_kinds(report)
        self.assertEqual(kinds[0], "keepalive_timeout", report["recommendations"])
        self.assertNotIn("load", kinds)
        text = closetrace("report", result.trace).stdout
        self.assertIn(setting, text)
        self.assertNotIn("scale out", text.lower())
        self.assertEqual(closetrace("verify", result.trace).returncode, 1)

    def test_unread_race_node(self):
        self.check_unread_race("node", "node", "keepAliveTimeout")

    def test_unread_race_nginx(self):
        self.check_unread_race("nginx", "nginx", "keepalive_timeout")

    # ---- kill -9 with requests read and unanswered -----------------------------------
    def test_crash(self):
        result = self.run_scenario("crash")
        self.assertEqual(result.measured["slow_read_before_kill"], 3)
        self.assertEqual(result.measured["inflight_statuses"], [502, 502, 502])
        slow = [w for w in self.wire(result)
                if any(o["target"] == "/slow" and o["outcome"] == "unanswered_at_close"
                       for o in w.request_outcomes())]
        self.assertEqual(len(slow), 3)
        for w in slow:  # the requests had been read: the kernel closes with a FIN
            self.assertEqual((w.initiator, w.how, w.verdict),
                             ("local", "fin", "local_reset_inflight"), w.describe())
            self.assertEqual(w.cause[0], {"process_exit"})
        self.assert_agrees_with_wire(result)
        trace = self.by_port(result)
        for w in slow:
            c = trace[w.remote[1]]
            self.assertEqual((c["verdict"], c["close"].get("cause")),
                             ("local_reset_inflight", "process_exit"), c)
        report = report_json(result.trace)
        self.assertNotIn("load", self.recommendation_kinds(report), report["recommendations"])
        self.assertIn("exit", report["conclusion"].lower(), report["conclusion"])

    # ---- a deploy without draining: every idle connection closed at once -----------------
    def test_shutdown(self):
        result = self.run_scenario("shutdown")
        self.assertEqual(result.measured["race_status"], 502)
        together = [w for w in self.wire(result) if w.cause[0] == {"closed_together"}]
        self.assertEqual(len(together), 2, [w.describe() for w in self.wire(result)])
        idles = sorted(w.idle_since_exchange for w in together)
        self.assertGreater(idles[1], 1.5 * idles[0], idles)  # far apart: no one timer
        races = [w for w in together if w.verdict == "local_close_race"]
        self.assertEqual(len(races), 1, [w.describe() for w in together])
        self.assert_agrees_with_wire(result)
        self.assert_health_checks(result)
        trace = self.by_port(result)
        c = trace[races[0].remote[1]]
        self.assertEqual((c["verdict"], c["close"]["cause"]),
                         ("local_close_race", "closed_together"), c)
        report = report_json(result.trace)
        kinds = self.recommendation_kinds(report)
        self.assertEqual(kinds[0], "drain", report["recommendations"])
        self.assertNotIn("keepalive_timeout", kinds, report["recommendations"])
        self.assertEqual(report["idle"]["this_host"]["closes"], 0, report["idle"])

    # ---- a connection limit: connections closed as they open -------------------------------
    def test_connection_limit(self):
        result = self.run_scenario("connection_limit")
        # the backend's FIN, then its RST answering the POST: the client reads either first
        self.assertTrue(all(e in ("closed", "reset") for e in result.measured["over_errors"]),
                        result.measured["over_errors"])
        refused = [w for w in self.wire(result) if w.cause[0] == {"refused"}]
        over = [w for w in refused if any(o["target"].startswith("/over")
                                          for o in w.request_outcomes())]
        self.assertEqual(len(over), 2, [w.describe() for w in self.wire(result)])
        for w in over:
            self.assertEqual((w.initiator, w.verdict), ("local", "local_close_race"), w.describe())
        self.assert_agrees_with_wire(result)
        trace = self.by_port(result)
        for w in over:
            c = trace[w.remote[1]]
            self.assertEqual((c["verdict"], c["close"]["cause"]),
                             ("local_close_race", "refused"), c)
        report = report_json(result.trace)
        kinds = self.recommendation_kinds(report)
        self.assertIn("connection_limit", kinds, report["recommendations"])
        self.assertNotIn("keepalive_timeout", kinds, report["recommendations"])

    # ---- pipelining -----------------------------------------------------------------------
    def test_pipelining(self):
        result = self.run_scenario("pipelining")
        self.assertEqual(result.measured["pipeline_statuses"], [200, 404, 201])
        piped = [w for w in self.wire(result) if len(w.request_outcomes()) == 3]
        self.assertEqual(len(piped), 1)
        w = piped[0]
        # three requests in one segment, three responses
        self.assertEqual(len([s for s in w.segments if s["dir"] == "in"]), 1, w.describe())
        self.assertEqual([(o["outcome"], o["status"]) for o in w.request_outcomes()],
                         [("completed", 200), ("completed", 404), ("completed", 201)])
        self.assert_agrees_with_wire(result)
        c = self.by_port(result)[w.remote[1]]
        self.assertEqual([(r["target"], r["outcome"], r["status"]) for r in c["requests"]],
                         [("/a", "completed", 200), ("/b", "completed", 404),
                          ("/c", "completed", 201)], c)
        self.assertNotEqual(c["verdict"], "local_reset_inflight", c)

    # ---- a NAT that forgot the pooled connection -----------------------------------------
    def test_nat_forgotten(self):
        # recorded (and captured) in the client's namespace: this host is the client
        result = self.run_scenario("nat_forgotten", recorder_ns="client")
        self.assertEqual(result.measured["reuse"]["error"], "reset")
        pooled = [w for w in self.wire(result) if w.role == "client"]
        self.assertEqual(len(pooled), 1)
        w = pooled[0]
        self.assertEqual((w.initiator, w.how), ("peer", "rst"), w.describe())
        self.assertIsNone(w.peer_fin_t)
        self.assertEqual(w.request_outcomes()[-1]["outcome"], "unanswered_at_close")
        self.assertEqual(w.cause[0], {"forgotten"})
        self.assert_agrees_with_wire(result)
        c = self.by_port(result)[8080]
        self.assertEqual((c["role"], c["close"].get("cause")), ("client", "forgotten"), c)

    @classmethod
    def tearDownClass(cls):
        # Nothing may outlive the run: the harness removes its namespaces even on failure.
        leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for key, result in cls.results.items():
            assert result.prefix not in leftovers, f"namespaces left behind: {leftovers}"
            if key in cls.passed and not os.environ.get("CTS_KEEP"):
                shutil.rmtree(result.workdir, ignore_errors=True)
            else:
                print(f"kept {key[0]}: {result.workdir}")


if __name__ == "__main__":
    unittest.main()
