"""`closetrace alb` on a real balancer: the mismatch scenario's nginx writes its access log in the
AWS Application Load Balancer format (tools/scenario/peers.py, alb.log), closetrace records the
backend, and every 502 the balancer logged must be explained by a close race the trace proves,
each by its own connection and request. With the fix (fixed scenario) the balancer logs no 502
and `alb` says there is nothing to explain."""
import json
import os
import shutil
import subprocess
import sys
import unittest

from support import SCENARIO_TOOLS, backend_recorder, closetrace, require_bpf, require_peers

sys.path.insert(0, SCENARIO_TOOLS)

import scenarios  # noqa: E402

PEERS = ("ip", "nsenter", "node", "nginx", "tcpdump")
NO_ERRORS = "logged no 502, 504 or 460 for this trace's endpoints"




def alb_lines(path):
    """(elb_status_code, target_status_code, method, path) of each line of an ALB log."""
    lines = []
    with open(path) as log:
        for line in log:
            if not line.strip():
                continue
            fields = line.split(" ")
            request = line.split('"')[1].split(" ")  # the first quoted field: "request"
            path_part = "/" + request[1].split("://", 1)[1].split("/", 1)[1]
            lines.append((fields[8], fields[9], request[0], path_part.split("?")[0]))
    return lines


class AlbScenarioTest(unittest.TestCase):
    results = []

    @classmethod
    def setUpClass(cls):
        require_bpf()
        require_peers(PEERS)

    def run_scenario(self, run, **options):
        result = run(recorder=backend_recorder(), recorder_ns="backend", **options)
        self.results.append(result)
        self.assertEqual(result.recorder_rc, 0, f"recorder failed; see {result.recorder_log}")
        self.assertTrue(result.balancer_alb_log and os.path.exists(result.balancer_alb_log))
        return result

    def alb(self, result, *args):
        return closetrace("alb", result.trace, result.balancer_alb_log, *args)

    def test_mismatch_every_502_is_a_race(self):
        result = self.run_scenario(scenarios.mismatch, races=3)
        self.assertEqual(result.measured["race_statuses"].count(502), 3,
                         result.measured["race_statuses"])
        lines = alb_lines(result.balancer_alb_log)
        logged_502 = [line for line in lines if line[0] == "502"]
        self.assertEqual(len(logged_502), 3, logged_502)
        # nginx's 502 after the reset is its own answer: no target status, as ALB logs it
        self.assertEqual({line[1] for line in logged_502}, {"-"})
        # The only other errors: wrk's connections that it drops mid-request when its burst
        # ends (nginx 499, logged as ALB's 460). Where the backend had answered, they stay
        # unexplained, and rightly so.
        others = [line for line in lines if line[0] in ("504", "460")]
        self.assertEqual({(line[0], line[3]) for line in others} - {("460", "/wrk")}, set(),
                         others)

        run = self.alb(result, "--format", "json")
        self.assertEqual(run.returncode, 0, run.stderr)
        out = json.loads(run.stdout)
        # nginx wrote every line (thousands from wrk) in a shape the parser accepts
        self.assertEqual(out["logs"]["malformed"], 0, out["logs"]["malformed_examples"])
        self.assertEqual(out["logs"]["entries"], len(lines))
        self.assertEqual(out["selection"]["lb_errors"], 3 + len(others), out["selection"])
        self.assertEqual(out["selection"]["on_trace"], 3 + len(others), out["selection"])
        self.assertEqual(out["by_status"]["502"]["lines"], 3, out["by_status"])
        self.assertEqual(out["by_status"]["502"]["explained"], {"local_close_race": 3},
                         out["by_status"])
        self.assertEqual(out["by_status"]["502"]["unexplained"], 0, out["unexplained"])
        self.assertEqual([u for u in out["unexplained"] if u["elb_status_code"] == 502], [])

        # A wrk request that nginx gave up on (460) before the backend answered it is explained
        # by that in-flight loss, as the wire shows it; under load that happens.
        for pair in out["pairs"]:
            if pair["lb"]["elb_status_code"] == 460:
                self.assertEqual(pair["trace"]["verdict"], "peer_close_inflight", pair)
                self.assertEqual(pair["trace"]["target"], "/wrk", pair)
                host, port = pair["trace"]["remote"].rsplit(":", 1)
                on_wire = [w for w in result.wire_conns()
                           if (w.remote[0], w.remote[1]) == (host, int(port))]
                self.assertEqual([w.verdict for w in on_wire], ["peer_close_inflight"], pair)
        pairs = [pair for pair in out["pairs"] if pair["lb"]["elb_status_code"] == 502]
        self.assertEqual(len(pairs), 3, out["pairs"])
        self.assertEqual(sorted(p["lb"]["line"] for p in pairs),
                         sorted(i + 1 for i, line in enumerate(lines) if line[0] == "502"))
        for pair in pairs:
            self.assertEqual(pair["trace"]["verdict"], "local_close_race", pair)
            self.assertEqual(pair["trace"]["outcome"], "after_local_close", pair)
            self.assertEqual((pair["trace"]["method"], pair["trace"]["target"]), ("POST", "/pay"))
            self.assertIn("POST http://", pair["lb"]["request"])
            self.assertTrue(pair["lb"]["request"].split(" ")[1].endswith("/pay"), pair)
            self.assertTrue(pair["path_compared"], pair)
            self.assertLess(abs(pair["delta_ms"]), 100, pair)  # same host, same clock
        # none matched twice: three connections, three requests
        self.assertEqual(len({p["trace"]["conn_id"] for p in pairs}), 3, pairs)
        self.assertEqual(len({(p["trace"]["conn_id"], p["trace"]["request_ns"])
                              for p in pairs}), 3, pairs)

    def test_fixed_has_no_502(self):
        result = self.run_scenario(scenarios.fixed, races=2)
        self.assertNotIn(502, result.measured["race_statuses"])
        lines = alb_lines(result.balancer_alb_log)
        self.assertTrue(lines)
        self.assertEqual([line for line in lines if line[0] in ("502", "504", "460")], [])

        run = self.alb(result)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertIn(NO_ERRORS, " ".join(run.stdout.split()))
        self.assertNotIn("Yet the trace has", run.stdout)  # no race for the balancer to hide
        self.assertIn("0 malformed", run.stdout)

    @classmethod
    def tearDownClass(cls):
        # Nothing may outlive the run: the harness removes its namespaces even on failure.
        leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for result in cls.results:
            assert result.prefix not in leftovers, f"namespaces left behind: {leftovers}"
            if not os.environ.get("CTS_KEEP"):
                shutil.rmtree(result.workdir, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
