"""Self-test of the scenario harness (tools/scenario), without closetrace.

    python3 -m unittest discover -s tests/scenario -v

Runs each scenario on real peers in network namespaces and asserts what the wire (a
tcpdump capture of the backend's interface) and the balancer's logs show; then checks that
the run left no namespaces and no processes behind.  Needs root and node, nginx, tcpdump,
tshark, ip, ss; skips (with the reason) otherwise.

With CLOSETRACE=/path/to/closetrace in the environment, TestWithClosetrace also records
each scenario with `closetrace record` in the backend namespace and compares its conn
records with the capture (initiator and how of every connection).
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools", "scenario"))

import netns  # noqa: E402
import scenarios  # noqa: E402
import wire  # noqa: E402

NEEDED = ["ip", "ss", "node", "nginx", "tcpdump", "tshark"]
KEEP = os.environ.get("CTS_KEEP")  # keep the work dirs of passing runs too


def _why_skip():
    if os.geteuid() != 0:
        return "needs root (network namespaces, tcpdump)"
    missing = [p for p in NEEDED if not shutil.which(p) and not os.path.exists(f"/usr/sbin/{p}")]
    if missing:
        return "missing programs: " + ", ".join(missing)
    r = subprocess.run(["ip", "netns", "list"], capture_output=True)
    if r.returncode != 0:
        return "ip netns does not work here: " + r.stderr.decode()
    return None


SKIP = _why_skip()


def _procs_mentioning(text):
    """pids whose command line mentions text (the run's work dir: every peer's config,
    script and capture lives there)."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            found.append((int(d), cmd))
    return found


def _procs_appearing(text, timeout=5.0):
    """_procs_mentioning once they show: a process caught inside execve (`ip netns exec`
    replacing itself with its command) has no readable command line for that instant."""
    deadline = time.monotonic() + timeout
    while not (found := _procs_mentioning(text)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


class ScenarioCase(unittest.TestCase):
    results = {}

    def setUp(self):
        if SKIP:
            self.skipTest(SKIP)

    def run_scenario(self, name, **kw):
        fn = scenarios.SCENARIOS[name]
        if name == "mismatch" and not shutil.which("wrk"):
            kw.setdefault("wrk_seconds", 0)
        res = fn(**kw)
        self.addCleanup(self._cleanup_workdir, res)
        self.assert_nothing_left(res)
        return res

    def _cleanup_workdir(self, res):
        ok = getattr(getattr(self, "_outcome", None), "success", True)
        if ok and not KEEP:
            shutil.rmtree(res.workdir, ignore_errors=True)
        else:
            print(f"\n[kept {res.workdir}]", file=sys.stderr)

    def assert_nothing_left(self, res):
        left = [n for n in netns.list_netns() if n.startswith(res.prefix + "-")]
        self.assertEqual(left, [], "namespaces left behind")
        procs = _procs_mentioning(res.workdir)
        self.assertEqual(procs, [], "processes left behind")

    def wire(self, res):
        conns = res.wire_conns()
        self.assertTrue(conns, "the capture shows no connection to the backend")
        return conns

    @staticmethod
    def dump(conns):
        return "\n".join(c.describe(max_segments=8) for c in conns)


@unittest.skipIf(SKIP, SKIP or "")
class TestScenarios(ScenarioCase):

    def test_mismatch(self):
        res = self.run_scenario("mismatch", races=3)
        conns = self.wire(res)
        dump = self.dump(conns)
        # the backend's real idle close (Node: keepAliveTimeout + its 1 s buffer), measured
        delay = res.measured["backend_close_delay_s"]
        self.assertIsNotNone(delay)
        self.assertTrue(1.0 < delay < 3.0, f"backend closes after {delay}s, expected "
                        "between its keepAliveTimeout (1 s) and the balancer's 3 s")
        races = [c for c in conns if c.verdict == "local_close_race"]
        self.assertEqual(len(races), 3, dump)
        for c in races:
            posts = [o for o in c.request_outcomes() if o["line"].startswith("POST ")]
            self.assertEqual(len(posts), 1, c.describe())
            self.assertEqual(c.initiator, "local", c.describe())
            self.assertEqual(c.how, "fin", c.describe())
            # backend FIN first, then the late POST, then the backend's RST
            self.assertLess(c.local_fin_t, posts[0]["t"], c.describe())
            self.assertTrue(c.local_rsts and c.local_rsts[0] >= posts[0]["t"], c.describe())
            self.assertEqual(posts[0]["outcome"], "after_local_close")
            self.assertAlmostEqual(c.idle_before_close, delay, delta=0.2)
        # every other connection: the backend's idle close, nothing lost; or, right after the
        # load, the balancer closing an upstream connection it has no room to keep idle
        for c in conns:
            if c in races:
                continue
            if c.verdict == "peer_idle_close":
                self.assertEqual(c.cause, ({"closed_after_use"}, None), c.describe())
            elif c.verdict == "peer_close_inflight":
                # wrk, stopping at the end of the load, leaves requests in flight, and nginx
                # gives their upstream requests up (FIN, then RST to the late answer)
                given_up = [o for o in c.request_outcomes()
                            if o["outcome"] == "unanswered_at_close"]
                self.assertTrue(given_up, c.describe())
                self.assertTrue(all(o["line"].startswith("GET /wrk ") for o in given_up),
                                c.describe())
            else:
                self.assertEqual(c.verdict, "local_idle_close", c.describe())
        # the balancer: 502 for each race, "upstream prematurely closed connection"
        self.assertEqual(res.measured["race_statuses"], [502, 502, 502])
        self.assertEqual(res.balancer_statuses().count(502), 3)
        with open(res.balancer_error_log) as f:
            errs = [l for l in f if "upstream prematurely closed connection" in l]
        self.assertEqual(len(errs), 3)
        self.assertEqual(res.measured.get("capture_dropped"), 0)
        self.check_compare(res, conns)

    def check_compare(self, res, conns):
        """compare(): a trace agreeing with the wire gives no disagreement; a changed
        initiator, a changed how, a missing record are reported."""
        fake = []
        for i, c in enumerate(conns):
            fc = c.first_close
            fake.append({"type": "conn", "id": i, "local": {"addr": c.local[0], "port": c.local[1]},
                         "remote": {"addr": c.remote[0], "port": c.remote[1]},
                         "role": c.role, "established_ns": int(c.syn_t * 1e9),
                         "closed_ns": int(fc[0] * 1e9) if fc else None,
                         "close": {"initiator": fc[1] if fc else None,
                                   "how": fc[2] if fc else None},
                         "requests": [], "verdict": c.verdict})
        quiet = lambda *a: None  # noqa: E731
        self.assertEqual(wire.compare(fake, conns, mono_to_wall_ns=0, out=quiet,
                                      check_verdicts=True), [])
        # records of the balancer's side and loopback probes are not the backend's view
        other = dict(fake[0], local={"addr": res.balancer_addr, "port": 40000})
        loop = dict(fake[0], remote={"addr": res.backend_addr, "port": 40001})
        self.assertEqual(wire.compare(fake + [other, loop], conns, mono_to_wall_ns=0,
                                      out=quiet), [])
        bad = [dict(f) for f in fake]
        bad[0] = dict(bad[0], close={"initiator": "peer", "how": "fin"})
        bad[1] = dict(bad[1], close={"initiator": "local", "how": "rst"})
        del bad[2]
        ds = wire.compare(bad, conns, mono_to_wall_ns=0, out=quiet)
        self.assertEqual(sorted(d["kind"] for d in ds), ["how", "initiator", "missing_in_trace"])
        ghost = dict(fake[0], remote={"addr": "10.201.0.5", "port": 1})
        ds = wire.compare(fake + [ghost], conns, mono_to_wall_ns=0, out=quiet)
        self.assertEqual([d["kind"] for d in ds], ["missing_on_wire"])

    def test_fixed(self):
        res = self.run_scenario("fixed", races=2)
        conns = self.wire(res)
        dump = self.dump(conns)
        self.assertEqual(res.measured["race_statuses"], [200, 200])
        self.assertNotIn(502, res.balancer_statuses())
        used = [c for c in conns if c.requests]
        self.assertGreaterEqual(len(used), 2, dump)
        for c in used:
            # the balancer closes its idle upstream connections first, at its 3 s
            self.assertEqual((c.initiator, c.how), ("peer", "fin"), c.describe())
            self.assertEqual(c.verdict, "peer_idle_close", c.describe())
            self.assertAlmostEqual(c.idle_before_close, 3.0, delta=0.3)
            self.assertEqual(c.local_rsts, [], c.describe())

    def test_overload(self):
        res = self.run_scenario("overload")
        conns = self.wire(res)
        dump = self.dump(conns)
        # unread requests (Node's event loop blocked): the kernel resets them
        rst = [c for c in conns if (c.initiator, c.how) == ("local", "rst")
               and any(o["outcome"] == "unread_at_close" for o in c.request_outcomes())]
        self.assertGreaterEqual(len(rst), 1, dump)
        for c in rst:
            self.assertEqual(c.verdict, "local_reset_inflight", c.describe())
        # requests Node had read: the kernel closes with FIN, the response never comes
        fin = [c for c in conns if (c.initiator, c.how) == ("local", "fin")
               and c.verdict == "local_reset_inflight"]
        self.assertGreaterEqual(len(fin), 1, dump)
        self.assertGreaterEqual(len(rst) + len(fin), 7, dump)
        statuses = res.measured["inflight_statuses"]
        self.assertEqual(statuses, [502] * len(statuses))
        self.assertGreaterEqual(res.balancer_statuses().count(502), 7)

    def test_client_gives_up(self):
        res = self.run_scenario("client_gives_up", tries=2)
        conns = self.wire(res)
        dump = self.dump(conns)
        gave_up = [c for c in conns if c.verdict == "peer_close_inflight"]
        self.assertEqual(len(gave_up), 4, dump)  # 2 direct + 2 through nginx
        for c in gave_up:
            self.assertEqual((c.initiator, c.how), ("peer", "fin"), c.describe())
            last = c.request_outcomes()[-1]
            self.assertEqual(last["outcome"], "unanswered_at_close")
            self.assertAlmostEqual(c.first_close[0] - last["t"], 0.3, delta=0.1)
        self.assertEqual(res.balancer_statuses().count(499), 2)

    def test_recorder_plumbing(self):
        """A stand-in recorder is started in the backend namespace (network namespace only:
        the host's cgroup2 mount stays visible) before the traffic, gets SIGINT at the end,
        and its trace file is returned."""
        d = tempfile.mkdtemp(prefix="cts-fake-rec-")
        self.addCleanup(shutil.rmtree, d, True)
        script = os.path.join(d, "fake_recorder.py")
        with open(script, "w") as f:
            f.write(textwrap.dedent("""
                import json, os, signal, socket, sys, time
                s = socket.socket()
                try:  # only possible inside the backend's network namespace
                    s.bind(("10.201.0.6", 0)); in_backend = True
                except OSError:
                    in_backend = False
                s.close()
                cg2 = (os.path.exists("/sys/fs/cgroup/unified/cgroup.controllers")
                       or os.path.exists("/sys/fs/cgroup/cgroup.controllers"))
                out = open(sys.argv[1], "w")
                out.write(json.dumps({"type": "header", "schema": "closetrace/1",
                                      "mono_to_wall_ns": 0, "in_backend": in_backend,
                                      "cgroup2": cg2}) + "\\n")
                out.flush()
                def stop(*a):
                    out.write(json.dumps({"type": "summary", "connections": 0}) + "\\n")
                    out.close(); sys.exit(0)
                signal.signal(signal.SIGINT, stop)
                while True: time.sleep(0.1)
            """))
        res = self.run_scenario("client_gives_up", tries=1, via=("direct",),
                                recorder=[sys.executable, script, "{trace}"],
                                recorder_ns="backend")
        self.assertEqual(res.recorder_rc, 0)
        tr = wire.load_trace(res.trace)
        self.assertEqual(tr["header"]["schema"], "closetrace/1")
        self.assertTrue(tr["header"]["in_backend"])
        self.assertEqual(tr["header"]["cgroup2"],
                         os.path.exists("/sys/fs/cgroup/unified/cgroup.controllers")
                         or os.path.exists("/sys/fs/cgroup/cgroup.controllers"))
        self.assertIsNotNone(tr["summary"])
        self.assertEqual(res.warnings, [])


@unittest.skipIf(SKIP, SKIP or "")
class TestTopology(unittest.TestCase):

    def test_teardown_on_sigterm(self):
        """A harness killed with SIGTERM still removes its namespaces and processes."""
        code = textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {os.path.join(ROOT, 'tools', 'scenario')!r})
            import netns
            with netns.Topology() as t:
                t.spawn_in("backend", ["sleep", "300.0417"])
                print(t.prefix, flush=True)
                time.sleep(60)
        """)
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        prefix = p.stdout.readline().strip()
        self.assertTrue(prefix)
        self.assertEqual(len([n for n in netns.list_netns() if n.startswith(prefix + "-")]), 3)
        self.assertTrue(_procs_appearing("sleep 300.0417"))
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=20)
        p.stdout.close()
        self.assertEqual([n for n in netns.list_netns() if n.startswith(prefix + "-")], [])
        self.assertEqual(_procs_mentioning("sleep 300.0417"), [])

    def test_cleanup_stale(self):
        dead = subprocess.Popen(["true"])
        dead.wait()
        name = f"cts{dead.pid}x0-client"
        if netns.pid_alive(dead.pid):
            self.skipTest("pid reused already")
        subprocess.run(["ip", "netns", "add", name], check=True)
        try:
            removed = netns.cleanup_stale()
            self.assertIn(name, removed)
            self.assertNotIn(name, netns.list_netns())
        finally:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)

    def test_exception_in_block(self):
        with self.assertRaises(RuntimeError):
            with netns.Topology() as t:
                prefix = t.prefix
                p = t.spawn_in("balancer", ["sleep", "300"])
                raise RuntimeError("boom")
        self.assertEqual([n for n in netns.list_netns() if n.startswith(prefix + "-")], [])
        self.assertIsNotNone(p.poll())


CLOSETRACE = os.environ.get("CLOSETRACE") or os.environ.get("CLOSETRACE_BIN")


@unittest.skipIf(SKIP, SKIP or "")
@unittest.skipUnless(CLOSETRACE and os.access(CLOSETRACE, os.X_OK),
                     "set CLOSETRACE=/path/to/closetrace to compare its traces with the wire")
class TestWithClosetrace(ScenarioCase):
    """closetrace's conn records against the capture of the same run."""

    def check(self, name, expect_verdict, **kw):
        res = self.run_scenario(name, recorder=scenarios.closetrace_recorder(CLOSETRACE), **kw)
        self.assertEqual(res.recorder_rc, 0, open(res.recorder_log).read()[-3000:])
        ds = res.compare(verbose=True)
        self.assertEqual(ds, [], f"{len(ds)} disagreement(s) between trace and wire")
        verdicts = [c.get("verdict") for c in res.trace_data()["conns"]
                    if c["local"]["addr"] == res.backend_addr]
        self.assertIn(expect_verdict, verdicts)

    def test_mismatch(self):
        self.check("mismatch", "local_close_race", races=2, wrk_seconds=0)

    def test_fixed(self):
        self.check("fixed", "peer_idle_close", races=1)

    def test_overload(self):
        self.check("overload", "local_reset_inflight")

    def test_client_gives_up(self):
        self.check("client_gives_up", "peer_close_inflight", tries=1)


if __name__ == "__main__":
    unittest.main()
