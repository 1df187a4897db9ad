"""The field report's incidents between real servers and proxies (tools/scenario), recorded on
the backend by closetrace and judged against a packet capture of the backend's interface:
every connection's first FIN/RST and its direction must agree with the wire, the verdicts must
name what happened, and report/verify/diff must draw the right conclusion."""
import json
import os
import shutil
import subprocess
import sys
import unittest

from support import SCENARIO_TOOLS, backend_recorder, closetrace, report_json, require_bpf, require_peers

sys.path.insert(0, SCENARIO_TOOLS)

import scenarios  # noqa: E402

PEERS = ("ip", "nsenter", "node", "nginx", "tcpdump", "tshark")




class ScenarioTest(unittest.TestCase):
    """Each scenario runs once; the results are shared by the tests that judge them."""

    results = {}

    @classmethod
    def setUpClass(cls):
        require_bpf()
        require_peers(PEERS)

    def run_scenario(self, name, key=None, **options):
        """`key`: what the result is shared as (the scenario's name by default)."""
        key = key or name
        if key not in self.results:
            run = scenarios.SCENARIOS[name]
            self.results[key] = run(recorder=backend_recorder(), recorder_ns="backend", **options)
        result = self.results[key]
        self.assertEqual(result.recorder_rc, 0, f"recorder failed; see {result.recorder_log}")
        return result

    def conns(self, result):
        return [c for c in result.trace_data()["conns"] if c["role"] == "server"]

    def assert_agrees_with_wire(self, result):
        disagreements = result.compare(verbose=True)
        self.assertEqual(disagreements, [], f"trace and capture disagree (kept in {result.workdir})")

    def verdicts(self, result):
        counts = {}
        for conn in self.conns(result):
            counts[conn["verdict"]] = counts.get(conn["verdict"], 0) + 1
        return counts

    def test_keepalive_mismatch(self):
        result = self.run_scenario("mismatch", races=3)
        self.assert_agrees_with_wire(result)
        statuses = result.measured["race_statuses"]
        self.assertEqual(statuses.count(502), 3, f"the balancer's log shows {statuses}")

        races = [c for c in self.conns(result) if c["verdict"] == "local_close_race"]
        self.assertEqual(len(races), 3, self.verdicts(result))
        for conn in races:
            late = [r for r in conn["requests"] if r["outcome"] == "after_local_close"]
            self.assertEqual([(r["method"], r["target"]) for r in late], [("POST", "/pay")])
            self.assertEqual(conn["comm"], "node")
            self.assertGreaterEqual(late[0]["request_ns"], conn["close"]["local_fin_ns"])
        # This host's idle closes all come at Node's real timeout (keepAliveTimeout + 1 s).
        real_close_ms = result.measured["backend_close_delay_s"] * 1000
        for conn in self.conns(result):
            if conn["verdict"] in ("local_idle_close", "local_close_race"):
                self.assertAlmostEqual(conn["close"]["idle_ms"], real_close_ms,
                                       delta=real_close_ms * 0.05)

        report = report_json(result.trace)
        text = closetrace("report", result.trace).stdout
        self.assertIn("keepAliveTimeout", text)
        self.assertIn("POST /pay", text)
        self.assertEqual(report["verdicts"]["local_close_race"]["connections"], 3,
                         report["verdicts"])
        self.assertEqual(closetrace("verify", result.trace).returncode, 1)

    def test_fixed(self):
        # Enough requests after the fix for diff to judge (it wants at least 20).
        result = self.run_scenario("fixed", races=2, normal_requests=25)
        self.assert_agrees_with_wire(result)
        self.assertNotIn(502, result.measured["race_statuses"])
        counts = self.verdicts(result)
        self.assertNotIn("local_close_race", counts)
        self.assertGreater(counts.get("peer_idle_close", 0), 0, counts)
        verify = closetrace("verify", result.trace, "--peer-idle-timeout", "3")
        self.assertEqual(verify.returncode, 0, verify.stdout + verify.stderr)

        before = self.run_scenario("mismatch", races=3)
        diff = closetrace("diff", before.trace, result.trace, "--format", "json")
        self.assertEqual(diff.returncode, 0, diff.stderr)
        self.assertEqual(json.loads(diff.stdout)["conclusion"], "fixed")

    def test_overload(self):
        result = self.run_scenario("overload")
        self.assert_agrees_with_wire(result)
        counts = self.verdicts(result)
        self.assertGreaterEqual(counts.get("local_reset_inflight", 0), 3, counts)
        self.assertNotIn("local_close_race", counts)
        text = closetrace("report", result.trace).stdout
        self.assertIn("not the cause", text)

    def test_client_gives_up(self):
        result = self.run_scenario("client_gives_up")
        self.assert_agrees_with_wire(result)
        gave_up = [c for c in self.conns(result) if c["verdict"] == "peer_close_inflight"]
        self.assertGreaterEqual(len(gave_up), 2, self.verdicts(result))
        for conn in gave_up:
            unanswered = [r for r in conn["requests"] if r["outcome"] == "unanswered_at_close"]
            self.assertTrue(unanswered, conn)
            self.assertTrue(unanswered[0]["target"].startswith("/slow"), conn)

    def test_keepalive_off(self):
        # Gunicorn's sync worker answers every request with Connection: close, behind nginx and
        # ALB-style health checks: no connection is ever idle, so nothing can race. Waiting for
        # an idle close ("record longer") would be waiting forever.
        require_peers(("gunicorn",))
        result = self.run_scenario("mismatch", key="keepalive_off", races=0,
                                   backend="gunicorn-sync", hc_interval_s=1)
        disagreements = result.compare(verbose=True, check_verdicts=True, check_causes=True,
                                       check_health=True)
        self.assertEqual(disagreements, [],
                         f"trace and capture disagree (kept in {result.workdir})")
        causes = {}
        for conn in self.conns(result):
            cause = conn["close"]["cause"] if conn["close"] else None
            causes[cause] = causes.get(cause, 0) + 1
        self.assertGreaterEqual(causes.get("keepalive_ended", 0), 20, causes)
        self.assertGreater(causes.get("connection_close", 0), 0, causes)  # the health checks

        # wrk stops with requests in flight: the peer may have given up on one, advice of its own
        recommendations = report_json(result.trace)["recommendations"]
        self.assertIn(("nothing_to_fix", "gunicorn: worke"),
                      [(r["kind"], r["comm"]) for r in recommendations], recommendations)
        verify = closetrace("verify", result.trace)
        self.assertEqual(verify.returncode, 0, verify.stdout + verify.stderr)
        self.assertIn("keeps no connection alive", verify.stdout)
        # Turning keep-alive off fixes the races of a keep-alive timeout shorter than nginx's.
        before = self.run_scenario("mismatch", races=3)
        diff = closetrace("diff", before.trace, result.trace, "--format", "json")
        self.assertEqual(diff.returncode, 0, diff.stderr)
        self.assertEqual(json.loads(diff.stdout)["conclusion"], "fixed", diff.stdout[:2000])

    @classmethod
    def tearDownClass(cls):
        # Nothing may outlive the run: the harness removes its namespaces even on failure.
        leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for result in cls.results.values():
            assert result.prefix not in leftovers, f"namespaces left behind: {leftovers}"
            if not os.environ.get("CTS_KEEP"):
                shutil.rmtree(result.workdir, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
