"""`closetrace record --metrics` scraped by a real Prometheus server (loopback, 1 s scrapes and
rule evaluations, the shipped rules) during the field report's close race: a Node.js backend
whose keep-alive timeout is below its nginx balancer's, ALB-style health checks
(`ELB-HealthChecker/2.0`, `Connection: close`) beside the traffic, and the busy-balancer pause
(tools/scenario) that makes the race deterministic. PromQL through Prometheus' HTTP API must give
the trace's race and close counts, and the shipped race alert must fire; on the fixed setup
(keep-alive above the balancer's) the same traffic must leave both alerts silent."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

from support import (ROOT, SCENARIO_TOOLS, ChurningTraffic, Recorder, conn_lines_so_far, free_port,
                     read_trace, require_bpf, require_peers, wait_for)

sys.path.insert(0, SCENARIO_TOOLS)

import netns  # noqa: E402
import peers  # noqa: E402
import scenarios  # noqa: E402

PEERS = ("ip", "nsenter", "node", "nginx", "tcpdump", "prometheus")
RULES = os.path.join(ROOT, "deploy", "prometheus", "closetrace-rules.yml")
BALANCER_KEEPALIVE_S = 3.0
HEALTH_CHECK_INTERVAL_S = 0.7
# The recorder's counters the answers are computed from.
COUNTED = ("closetrace_closes_total", "closetrace_close_races_total",
           "closetrace_caught_requests_total")


def scrape(address, metric):
    """The sum of `metric`'s series in one scrape of the recorder's endpoint."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines
               if line.split("{")[0].split(" ")[0] == metric)


def settled(read, interval_s, attempts):
    """What `read()` returns once two reads `interval_s` apart agree."""
    previous = None
    for _ in range(attempts):
        time.sleep(interval_s)
        current = read()
        if current == previous:
            return current
        previous = current
    raise AssertionError(f"still changing after {attempts} reads: {previous}")


def settled_scrape(address, metrics):
    """`metrics`' sums once two scrapes agree: what a recorder still writing connections out
    shows only when it has caught up."""
    return settled(lambda: tuple(scrape(address, metric) for metric in metrics), 1.0, 20)


def backend_connections(run):
    """The backend's connections on its port that are not closed on both sides yet (`ss` lines;
    TIME_WAIT, which only absorbs stray segments, counts as closed)."""
    states = ("syn-recv", "established", "fin-wait-1", "fin-wait-2", "close-wait", "last-ack",
              "closing")
    listing = run.topo.run_in("backend", ["ss", "-Htn", *(arg for state in states
                                                          for arg in ("state", state)),
                                          "sport", "=", f":{scenarios.BACKEND_PORT}"])
    return listing.stdout.splitlines()


class Prometheus:
    """A Prometheus server on loopback scraping `target` every second with the shipped rules,
    its storage in `workdir`; stopped (and its storage removed with workdir) on exit."""

    def __init__(self, workdir, target):
        self.port = free_port()
        self.workdir = workdir
        self.config = os.path.join(workdir, "prometheus.yml")
        with open(self.config, "w") as config:
            # JSON is YAML.
            json.dump({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                       "rule_files": [RULES],
                       "scrape_configs": [{"job_name": "closetrace",
                                           "static_configs": [{"targets": [target]}]}]},
                      config)
        self.process = None

    def __enter__(self):
        self.log = open(os.path.join(self.workdir, "prometheus.log"), "w")
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={self.config}",
             f"--storage.tsdb.path={os.path.join(self.workdir, 'tsdb')}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        if not wait_for(self.ready, timeout=30, interval=0.2):
            self.__exit__()
            raise RuntimeError(f"prometheus did not become ready; see {self.log.name}")
        return self

    def ready(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2):
                return True
        except OSError:
            return False

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return False

    def query(self, promql):
        """The instant vector of `promql` now: {frozenset(labels.items()): value}."""
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": promql}))
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return {frozenset(sample["metric"].items()): float(sample["value"][1])
                for sample in answer["data"]["result"]}

    def value(self, promql):
        """The one value of a query that aggregates to a single series (0 when it has none)."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return next(iter(result.values()), 0.0)

    def by_label(self, promql, label):
        return {dict(labels)[label]: value for labels, value in self.query(promql).items()}


class MetricsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_bpf()
        require_peers(PEERS)

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="closetrace-metrics-")

    def tearDown(self):
        if not os.environ.get("CTS_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def record(self, name, backend_keepalive_ms, traffic):
        """The backend, its nginx balancer and health checks in namespaces; a recorder of the
        backend's namespace with --metrics, scraped by Prometheus while `traffic(run, balancer)`
        runs and until every close is written and scraped. Returns (Prometheus' answers while
        still running, as `check(prometheus)` computes them; the trace's conn lines)."""
        metrics_address = f"127.0.0.1:{free_port()}"
        run_dir = os.path.join(self.workdir, name)
        with scenarios._Run(name, None, run_dir) as run:
            run.backend = peers.start_node_backend(run.topo, keepalive_ms=backend_keepalive_ms,
                                                   port=scenarios.BACKEND_PORT,
                                                   base_dir=run_dir)
            balancer = scenarios._start_balancer(run, "nginx", BALANCER_KEEPALIVE_S)
            recorder = Recorder("--port", str(scenarios.BACKEND_PORT), "--quiet",
                                "--netns", f"/run/netns/{run.topo.nsname('backend')}",
                                "--metrics", metrics_address, linger_ms=300)
            try:
                with Prometheus(run_dir, metrics_address) as prometheus, recorder:
                    run.health_checks(HEALTH_CHECK_INTERVAL_S)
                    traffic(run, balancer)
                    run.stop_health()
                    # Every connection closes (the balancer's idle upstream ones at its timeout)
                    # and is written after the linger: the recorder's counts settle.
                    self.assertTrue(wait_for(lambda: not backend_connections(run), timeout=30,
                                             interval=0.2),
                                    f"still open after 30 s: {backend_connections(run)}")
                    counts = dict(zip(COUNTED, settled_scrape(metrics_address, COUNTED)))
                    answers = self.settled_answers(prometheus, counts)
                self.assertEqual(recorder.process.returncode, 0, recorder.stderr)
                _, conns, _, summary = read_trace(recorder.path)
                shutil.copyfile(recorder.path, os.path.join(run_dir, "trace.jsonl"))
            finally:
                recorder.cleanup()
        self.assertGreater(run.measured.get("health_checks", 0), 0, "no health checks ran")
        self.assertEqual(summary["lost_events"], 0)
        return answers, conns

    def settled_answers(self, prometheus, counts):
        """Prometheus' answers once it has scraped the recorder's settled `counts` and evaluated
        the rules on them: two asks, more than an evaluation interval apart, agree."""
        def scraped():
            return prometheus.value('up{job="closetrace"}') == 1 and all(
                prometheus.value(f'sum({metric}{{job="closetrace"}})') == value
                for metric, value in counts.items())
        self.assertTrue(wait_for(scraped, timeout=30, interval=0.5),
                        f"Prometheus did not scrape {counts} within 30 s")
        return settled(lambda: self.ask(prometheus), 3.0, 10)

    @staticmethod
    def ask(prometheus):
        return {
            "closes": prometheus.value('sum(closetrace_closes_total{job="closetrace"})'),
            "by_verdict": prometheus.by_label(
                'sum by (verdict) (closetrace_closes_total{job="closetrace"})', "verdict"),
            "health_check_closes": prometheus.value(
                'sum(closetrace_closes_total{job="closetrace", cause="connection_close"})'),
            "races": prometheus.value(
                'sum(closetrace_close_races_total{job="closetrace", closer="local"})'),
            "caught_in_races": prometheus.value(
                'sum(closetrace_caught_requests_total{job="closetrace", '
                'verdict="local_close_race"})'),
            "outlasting_peers": prometheus.value(
                'sum(closetrace_outlasting_peers{job="closetrace", role="server"})'),
            "alerts": prometheus.by_label(
                'count by (alertname) (count_over_time(ALERTS{alertstate="firing"}[10m]))',
                "alertname"),
        }

    def trace_counts(self, conns):
        closed = [c for c in conns if c["verdict"] != "open" and not c["incomplete"]]
        by_verdict = {}
        for conn in closed:
            by_verdict[conn["verdict"]] = by_verdict.get(conn["verdict"], 0) + 1
        return closed, by_verdict

    def test_race_counts_match_the_trace_and_the_race_alert_fires(self):
        def race_traffic(run, balancer):
            close_delay = scenarios._measure_backend_close(run)
            self.assertIsNotNone(close_delay, run.warnings)
            client = run.client("client", run.topo.addr["balancer_client_side"],
                                scenarios.BALANCER_PORT)
            for i in range(3):
                run.log_client(client.request("GET", f"/normal{i}"), phase="normal")
            time.sleep(close_delay + 0.3)  # the cached upstream connection closes idle
            valid = 0
            for attempt in range(4):
                race = scenarios._race(run, client, balancer,
                                       pause_offset_s=max(0.1, close_delay - 0.3),
                                       hold_max_s=1.5, method="POST", path="/pay", idx=attempt)
                if race["idle_upstream_open_at_pause"] and race["backend_fin_seen_at_balancer"]:
                    valid += 1
                    if valid == 2:
                        break
                else:
                    time.sleep(close_delay + 0.3)
            self.assertEqual(valid, 2, run.warnings)

        answers, conns = self.record("race", 1000, race_traffic)
        closed, by_verdict = self.trace_counts(conns)
        races = [c for c in closed if c["verdict"] == "local_close_race"]
        self.assertGreaterEqual(len(races), 2, by_verdict)
        self.assertEqual(answers["races"], len(races))
        self.assertEqual(answers["closes"], len(closed))
        self.assertEqual(answers["by_verdict"], by_verdict)
        health_checks = [c for c in closed if c["close"]["cause"] == "connection_close"]
        self.assertTrue(health_checks, "no health check's close in the trace")
        self.assertEqual(answers["health_check_closes"], len(health_checks))
        late = [r for c in races for r in c["requests"]
                if r["outcome"] in ("after_local_close", "unread_at_close")]
        self.assertEqual(answers["caught_in_races"], len(late))
        self.assertIn("CloseRaces", answers["alerts"])
        # Node closes idle at ~2 s; nginx never did: held against an ALB's 60 s.
        self.assertIn("IdleTimeoutBelowBalancers", answers["alerts"])

    def test_fixed_setup_leaves_the_alerts_silent(self):
        def fixed_traffic(run, balancer):
            client = run.client("client", run.topo.addr["balancer_client_side"],
                                scenarios.BALANCER_PORT)
            for i in range(3):
                run.log_client(client.request("GET", f"/normal{i}"), phase="normal")
            # The same pause at the instant the broken backend would close: alive, a 200.
            race = scenarios._race(run, client, balancer, pause_offset_s=1.7, hold_max_s=0.6,
                                   method="POST", path="/pay", idx=0)
            self.assertEqual(race["status"], 200, race)

        answers, conns = self.record("fixed", 5000, fixed_traffic)
        closed, by_verdict = self.trace_counts(conns)
        self.assertNotIn("local_close_race", by_verdict)
        self.assertGreater(by_verdict.get("peer_idle_close", 0), 0, by_verdict)
        self.assertEqual(answers["closes"], len(closed))
        self.assertEqual(answers["by_verdict"], by_verdict)
        self.assertEqual(answers["races"], 0)
        self.assertEqual(answers["alerts"], {})

    def test_balancer_behind_quicker_clients_fires_the_timeout_alert(self):
        """tools/scenario's mixed_peers: the backend closes nginx's idle connections after 2 s,
        an internal client (its own address) closes its connections after 1 s. The peer side's
        only idle timer is the client's, yet the balancer never closed one: the timeout alert
        fires, as report's peer timeout is `outlasted`."""
        def pooled_traffic(run, balancer):
            client = run.client("client", run.topo.addr["balancer_client_side"],
                                scenarios.BALANCER_PORT)
            for i in range(2):
                internal = run.client("client", run.topo.addr["backend"],
                                      scenarios.BACKEND_PORT)
                for j in range(2):
                    run.log_client(client.request("GET", f"/normal{i}-{j}"), phase="normal")
                    run.log_client(internal.request("GET", f"/internal{i}-{j}"),
                                   phase="internal")
                time.sleep(1.0)
                internal.close()
                time.sleep(1.5)

        answers, conns = self.record("pooled", 1000, pooled_traffic)
        closed, by_verdict = self.trace_counts(conns)
        timer_closes = {}
        for conn in closed:
            if conn["close"]["cause"] == "idle_timer" and conn["role"] == "server":
                closers = timer_closes.setdefault(conn["remote"]["addr"], set())
                closers.add(conn["close"]["initiator"])
        self.assertEqual(timer_closes, {netns.ADDR["balancer"]: {"local"},
                                        netns.ADDR["client"]: {"peer"}}, by_verdict)
        self.assertEqual(answers["outlasting_peers"], 1)
        self.assertEqual(answers["closes"], len(closed))
        self.assertIn("IdleTimeoutBelowBalancers", answers["alerts"])
        self.assertNotIn("CloseRaces", answers["alerts"])

    def test_lost_events_are_the_summarys(self):
        """A recorder that stops reading (SIGSTOP) under churn loses events: its endpoint counts
        them as the trace's summary does, and the connections they left incomplete."""
        metrics_address = f"127.0.0.1:{free_port()}"
        with ChurningTraffic() as traffic:
            recorder = Recorder("--port", str(traffic.port), "--quiet", "--ring-mb", "1",
                                "--metrics", metrics_address)
            self.addCleanup(recorder.cleanup)
            with recorder:
                traffic.stall(recorder)
                # Once the counts settle, every connection the recorder will write before it stops
                # is in the file: a closed one after its linger. Those it holds to the end (still
                # open, or their close's last records lost) are written after the last scrape.
                lost, incomplete = settled_scrape(metrics_address, (
                    "closetrace_lost_events_total", "closetrace_incomplete_connections_total"))
                written = conn_lines_so_far(recorder.path)
        self.assertEqual(recorder.process.returncode, 0, recorder.stderr)
        _, conns, _, summary = recorder.trace()
        self.assertGreater(summary["lost_events"], 0)
        self.assertEqual(lost, summary["lost_events"])
        written_incomplete = [c for c in written if c["incomplete"]]
        self.assertGreater(len(written_incomplete), 0)
        self.assertEqual(incomplete, len(written_incomplete))
        self.assertEqual(written, conns[:len(written)])


if __name__ == "__main__":
    unittest.main()
