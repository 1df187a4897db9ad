"""The four scenarios of the field report, on real peers in network namespaces.

Each scenario builds a Topology, starts a packet capture on the backend's interface and
the recorder (optional) inside the backend namespace, starts real peers, drives load,
stops everything, and returns a ScenarioResult with the paths of the trace, the capture
and the peers' logs (all kept in ``workdir``).

    from scenarios import mismatch, closetrace_recorder
    res = mismatch(recorder=closetrace_recorder("/work/main/build/closetrace"))
    res.trace, res.pcap, res.balancer_access_log
    res.compare()          # closetrace's conn records vs the wire

Command line:
    python3 tools/scenario/scenarios.py mismatch [--recorder 'closetrace record --port 8080 -o {trace} --quiet'] [--workdir D] [--compare]
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import clients  # noqa: E402
import netns  # noqa: E402
import peers  # noqa: E402
import wire  # noqa: E402

BACKEND_PORT = 8080
BALANCER_PORT = 80


def closetrace_recorder(binary="closetrace", port=BACKEND_PORT, extra=()) -> list[str]:
    """The real recorder's argv template ({trace} is replaced by the trace path)."""
    return [binary, "record", "--port", str(port), "-o", "{trace}", "--quiet", *extra]


def backend_recorder(binary="closetrace", port=BACKEND_PORT) -> list[str]:
    """closetrace recording the backend's network namespace only: pass recorder_ns="backend",
    so that /proc/self/ns/net is that namespace."""
    return closetrace_recorder(binary, port, extra=["--netns", "/proc/self/ns/net"])


@dataclass
class ScenarioResult:
    name: str
    workdir: str
    prefix: str                       # namespace prefix of the run
    pcap: str                         # capture of the backend's interface
    trace: str | None                 # recorder output (None without a recorder)
    recorder_log: str | None
    recorder_rc: int | None
    balancer: str | None              # "nginx" | "haproxy" | None
    balancer_access_log: str | None   # nginx: "$msec $status $upstream_status \"$request\" ..."
    balancer_error_log: str | None    # haproxy: same file as the access log
    backend_log: str                  # node: one JSON line per connection/request/response
    client_log: str                   # JSON lines of every client result
    backend_addr: str
    backend_port: int
    balancer_addr: str                # the balancer's address on the backend side
    duration_s: float = 0.0
    measured: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    balancer_alb_log: str | None = None  # nginx: the same requests in the ALB access log format
    # the captured (and recorded) host's address: the backend's, or the client's where the
    # scenario records the client (nat_forgotten)
    local_addr: str | None = None
    local_exits: list = field(default_factory=list)  # wall times the local server was killed
    local_shutdowns: list = field(default_factory=list)  # ... told to close its connections

    @property
    def host_addr(self):
        return self.local_addr or self.backend_addr

    def wire_conns(self, local_ports=None):
        return wire.read_capture(self.pcap, self.host_addr,
                                 local_ports or {self.backend_port}, self.local_exits,
                                 self.local_shutdowns)

    def trace_data(self):
        return wire.load_trace(self.trace) if self.trace else None

    def compare(self, verbose=True, check_verdicts=False, **checks):
        """closetrace conn records vs the capture: a list of disagreements (checks:
        check_causes, check_outcomes, check_health; see wire.compare)."""
        if not self.trace:
            raise ValueError("no trace recorded (recorder=None)")
        return wire.compare_files(self.trace, self.pcap, self.host_addr,
                                  {self.backend_port}, self.local_exits,
                                  self.local_shutdowns, verbose=verbose,
                                  check_verdicts=check_verdicts, **checks)

    def balancer_statuses(self) -> list[int]:
        """HTTP statuses the balancer returned, from its access log."""
        if not self.balancer_access_log or not os.path.exists(self.balancer_access_log):
            return []
        out = []
        with open(self.balancer_access_log) as f:
            for line in f:
                if self.balancer == "nginx":
                    p = line.split()
                    if len(p) > 1 and p[1].isdigit():
                        out.append(int(p[1]))
                else:  # haproxy httplog: ... Tq/Tw/Tc/Tr/Ta STATUS BYTES ...
                    m = re.search(r" [-+]?\d+/[-+]?\d+/[-+]?\d+/[-+]?\d+/[-+]?\d+ (\d{3}) ", line)
                    if m and "<BADREQ>" not in line:
                        out.append(int(m.group(1)))
        return out

    def client_results(self) -> list[dict]:
        with open(self.client_log) as f:
            return [json.loads(x) for x in f if x.strip()]

    def to_json(self):
        return json.dumps(asdict(self), indent=2, default=str)


# ---------------------------------------------------------------------------------------
# plumbing shared by the scenarios

class _Run:
    """Topology + capture + recorder + bookkeeping for one scenario."""

    def __init__(self, name, recorder, workdir, recorder_ns="host", recorder_ready_s=30.0,
                 capture_ns="backend"):
        netns.cleanup_stale()
        self.name = name
        self.workdir = workdir or tempfile.mkdtemp(prefix=f"cts-{name}-")
        os.makedirs(self.workdir, exist_ok=True)
        self.recorder = recorder
        self.recorder_ns = recorder_ns
        self.recorder_ready_s = recorder_ready_s
        self.topo = netns.Topology()
        self.t0 = time.monotonic()
        self.cap = None
        self.rec = None
        self.clients: list[clients.KeepAliveClient] = []
        self.client_log = os.path.join(self.workdir, "clients.jsonl")
        open(self.client_log, "w").close()
        self.trace = os.path.join(self.workdir, "trace.jsonl") if recorder else None
        self.recorder_log = os.path.join(self.workdir, "recorder.log") if recorder else None
        self.recorder_rc = None
        self.warnings: list[str] = []
        self.measured: dict = {}
        self.balancer = None
        self.backend = None
        self.health: list[clients.HealthChecker] = []
        self.local_exits: list[float] = []
        self.local_shutdowns: list[float] = []
        # the recorded host: the capture runs on its interface toward the balancer
        self.capture_ns = capture_ns
        self.local_addr = self.topo.addr[capture_ns]

    def __enter__(self):
        self.topo.__enter__()
        try:
            self.cap = wire.Capture(self.topo, self.capture_ns, self.topo.iface[self.capture_ns],
                                    os.path.join(self.workdir, f"{self.capture_ns}.pcap")).start()
            self._start_recorder()
        except BaseException:
            self.topo.close()
            raise
        return self

    def _start_recorder(self):
        if not self.recorder:
            return
        argv = self.recorder(self.trace) if callable(self.recorder) else \
            [a.replace("{trace}", self.trace) for a in self.recorder]
        with open(self.recorder_log, "w") as out:
            self.rec = self.topo.spawn_in(self.recorder_ns, argv, stdout=out,
                                          stderr=subprocess.STDOUT, nsenter=True)
        end = time.monotonic() + self.recorder_ready_s
        while time.monotonic() < end:
            if self.rec.poll() is not None:
                raise RuntimeError(f"recorder exited with {self.rec.returncode}: "
                                   + open(self.recorder_log).read()[-2000:])
            try:
                with open(self.trace, "rb") as f:
                    if b"\n" in f.read(65536):
                        return
            except FileNotFoundError:
                pass
            time.sleep(0.05)
        self.warnings.append(f"recorder wrote no header within {self.recorder_ready_s}s; "
                             "went on anyway")

    def stop_recorder(self):
        if self.rec is None or self.rec.returncode is not None:
            return
        try:
            os.kill(self.rec.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        try:
            self.recorder_rc = self.rec.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.warnings.append("recorder ignored SIGINT for 20s; killed")
            self.topo.stop_proc(self.rec, signal.SIGKILL)
            self.recorder_rc = self.rec.returncode

    def client(self, ns, host, port) -> clients.KeepAliveClient:
        c = clients.KeepAliveClient(self.topo, ns, host, port)
        self.clients.append(c)
        return c

    def health_checks(self, interval=0.7, path="/health"):
        """ALB-style health checks of the backend from the balancer's namespace, as an ALB
        sends them straight to its targets, until the scenario ends (or stop_health())."""
        h = clients.HealthChecker(self.topo, "balancer", self.topo.addr["backend"],
                                  BACKEND_PORT, interval=interval, path=path)
        self.health.append(h)
        return h

    def stop_health(self):
        for h in self.health:
            if h.results_ is None:
                for r in h.stop():
                    self.log_client(r, phase="health")
        res = [r for h in self.health for r in h.results_ or []]
        self.measured["health_checks"] = len(res)
        self.measured["health_statuses"] = sorted({r.get("status") for r in res},
                                                  key=str)

    def kill_backend(self):
        """kill -9 of the backend (a crash); the time goes to the wire judge (it cannot see
        a process exit) as local_exits."""
        self.local_exits.append(time.time())
        self.backend.kill9()

    def log_client(self, res: dict, **extra):
        res = dict(res, **extra)
        with open(self.client_log, "a") as f:
            f.write(json.dumps(res) + "\n")
        return res

    def __exit__(self, *exc):
        try:
            try:
                self.stop_health()
            except Exception as e:  # keep tearing down
                self.warnings.append(f"health checks: {e!r}")
            for c in self.clients:
                c.quit()
            if self.cap is not None:
                self.cap.wait_quiet()  # the last FIN/ACKs written to the capture
            self.stop_recorder()
            if self.cap is not None:
                self.cap.stop()
                self.measured["capture_dropped"] = self.cap.dropped()
                if self.cap.dropped():
                    self.warnings.append(f"tcpdump dropped {self.cap.dropped()} packets")
        finally:
            self.topo.close()
        return False

    def result(self, balancer_kind=None) -> ScenarioResult:
        b, n = self.balancer, self.backend
        return ScenarioResult(
            name=self.name, workdir=self.workdir, prefix=self.topo.prefix,
            pcap=self.cap.path, trace=self.trace, recorder_log=self.recorder_log,
            recorder_rc=self.recorder_rc, balancer=balancer_kind,
            balancer_access_log=getattr(b, "access_log", None) if b else None,
            balancer_error_log=getattr(b, "error_log", None) if b else None,
            balancer_alb_log=getattr(b, "alb_log", None) if b else None,
            backend_log=(getattr(n, "log", None) or getattr(n, "access_log", "")) if n else "",
            client_log=self.client_log, local_addr=self.local_addr,
            local_exits=list(self.local_exits), local_shutdowns=list(self.local_shutdowns),
            backend_addr=self.topo.addr["backend"], backend_port=BACKEND_PORT,
            balancer_addr=self.topo.addr["balancer"],
            duration_s=round(time.monotonic() - self.t0, 2),
            measured=self.measured, warnings=self.warnings)


def _start_balancer(run: _Run, kind, keepalive_s):
    if kind == "nginx":
        b = peers.start_nginx_balancer(run.topo, upstream_keepalive_timeout_s=keepalive_s,
                                       port=BALANCER_PORT, base_dir=run.workdir)
    elif kind == "haproxy":
        b = peers.start_haproxy_balancer(run.topo, keepalive_timeout_s=keepalive_s,
                                         port=BALANCER_PORT, base_dir=run.workdir)
    else:
        raise ValueError(f"unknown balancer {kind!r}")
    run.balancer = b
    return b


def _upstream_in_state(topo, state) -> bool:
    """True if an upstream connection of the balancer is in `state` (ss state name):
    "close-wait" once the backend's FIN arrived and the balancer has not processed it."""
    out = topo.run_in("balancer", ["ss", "-Htn", "state", state, "dport", "=",
                                   f":{BACKEND_PORT}"], check=False).stdout
    return bool(out.strip())


def _measure_backend_close(run: _Run, timeout=15.0) -> float | None:
    """Seconds from the end of a response to the backend's idle FIN, measured by a client
    in the balancer namespace talking to the backend directly."""
    c = run.client("balancer", run.topo.addr["backend"], BACKEND_PORT)
    r = run.log_client(c.request("GET", "/calibrate"), phase="calibrate")
    if r.get("status") != 200:
        run.warnings.append(f"calibration request failed: {r}")
        return None
    cl = c.wait_close(timeout)
    run.log_client(cl, phase="calibrate_close")
    if cl.get("how") != "fin":
        run.warnings.append(f"calibration: backend did not close with FIN: {cl}")
        return None
    return cl["t"] - r["done"]


def _race(run: _Run, cl, b, pause_offset_s, hold_max_s, method, path, idx):
    """One pause race: a request on the client's keep-alive connection to the balancer,
    sent while the balancer is stopped around the backend's idle close."""
    warm = run.log_client(cl.request("GET", f"/warm{idx}"), phase="warm", race=idx)
    if warm.get("status") != 200:
        run.warnings.append(f"race {idx}: warm-up request failed: {warm}")
    time.sleep(max(0.0, warm["done"] + pause_offset_s - time.time()))
    b.signal(signal.SIGSTOP, workers=True)
    paused_at = time.time()
    try:
        # the idle upstream connection must still be open when the balancer stops
        idle_open = _upstream_in_state(run.topo, "established")
        p = cl.send(method, path, body=f"race={idx}&amount=100")
        p.wait_sent()
        fin_seen = None
        end = time.monotonic() + hold_max_s
        while time.monotonic() < end:
            if _upstream_in_state(run.topo, "close-wait"):
                fin_seen = time.time()
                time.sleep(0.05)
                break
            time.sleep(0.03)
    finally:
        b.signal(signal.SIGCONT, workers=True)
    resumed_at = time.time()
    r = run.log_client(p.result(15), phase="race", race=idx)
    return {"race": idx, "warm_done": warm["done"], "paused_at": paused_at,
            "idle_upstream_open_at_pause": idle_open,
            "request_sent": r.get("sent"), "backend_fin_seen_at_balancer": fin_seen,
            "resumed_at": resumed_at, "status": r.get("status"), "error": r.get("error")}


# ---------------------------------------------------------------------------------------
# scenarios

def mismatch(recorder=None, workdir=None, *, races=3, normal_requests=5, wrk_seconds=1,
             backend_keepalive_ms=1000, balancer_keepalive_s=3.0, balancer="nginx",
             race_method="POST", race_path="/pay", recorder_ns="host", backend="node",
             backend_keepalive_s=2, hc_interval_s=None, apache_extra="") -> ScenarioResult:
    """Backend keep-alive shorter than the balancer's: the backend closes idle upstream
    connections first, and a request the balancer sends on one gets an RST (nginx: 502).

    Steps: calibrate the backend's real idle close (direct client); normal traffic through
    the balancer (keep-alive client + a short wrk burst); then `races` times: GET on the
    client's keep-alive connection to the balancer, SIGSTOP the balancer just before the
    backend's idle close, send `race_method` `race_path`, wait (bounded) until the backend's
    FIN sits unread at the balancer (CLOSE-WAIT), SIGCONT.
    measured: backend_close_delay_s (calibration), races[...]."""
    with _Run("mismatch", recorder, workdir, recorder_ns) as run:
        t = run.topo
        if backend == "node":
            run.backend = peers.start_node_backend(t, keepalive_ms=backend_keepalive_ms,
                                                   port=BACKEND_PORT, base_dir=run.workdir)
        else:  # peers.BACKEND_KINDS; keep-alive in whole seconds
            backend_keepalive_ms = backend_keepalive_s * 1000
            run.backend = peers.start_backend(t, backend, keepalive_s=backend_keepalive_s,
                                              port=BACKEND_PORT, base_dir=run.workdir,
                                              apache_extra=apache_extra)
        b = _start_balancer(run, balancer, balancer_keepalive_s)
        if hc_interval_s:
            run.health_checks(hc_interval_s)
        delay = _measure_backend_close(run, timeout=backend_keepalive_ms / 1000 + 5)
        run.measured["backend_close_delay_s"] = delay
        if delay is None:
            delay = backend_keepalive_ms / 1000 + 1.0
        cl = run.client("client", t.addr["balancer_client_side"], BALANCER_PORT)
        for i in range(normal_requests):
            run.log_client(cl.request("GET", f"/normal{i}"), phase="normal")
        if wrk_seconds:
            w = clients.run_wrk(t, "client", f"http://{t.addr['balancer_client_side']}:"
                                f"{BALANCER_PORT}/wrk", threads=1, connections=4,
                                duration_s=wrk_seconds)
            w.pop("raw", None)
            run.measured["wrk"] = w
        # let every cached upstream connection die before the races
        time.sleep(delay + 0.3)
        # a race counts when the balancer was stopped with the idle upstream connection
        # still open and the backend's FIN then arrived; retry a few times otherwise
        attempts = []
        for i in range(races + 3):
            if sum(a["valid"] for a in attempts) >= races:
                break
            a = _race(run, cl, b, pause_offset_s=max(0.1, delay - 0.3), hold_max_s=1.5,
                      method=race_method, path=race_path, idx=i)
            a["valid"] = bool(a["idle_upstream_open_at_pause"]
                              and a["backend_fin_seen_at_balancer"])
            if not a["valid"]:
                run.warnings.append(f"race attempt {i} missed the window: {a}")
                time.sleep(delay + 0.3)  # let the upstream connection go before retrying
            attempts.append(a)
        run.measured["races"] = attempts
        run.measured["race_statuses"] = [a["status"] for a in attempts if a["valid"]]
        time.sleep(0.2)
    return run.result(balancer)


APACHE_BUSY_EXTRA = """
LoadModule cgid_module /usr/lib/apache2/modules/mod_cgid.so
LoadModule alias_module /usr/lib/apache2/modules/mod_alias.so
ScriptSock {dir}/cgid.sock
ScriptAlias /cgi/ {dir}/cgi/
ServerLimit 1
StartServers 1
ThreadsPerChild 2
ThreadLimit 2
MaxRequestWorkers 2
MinSpareThreads 1
MaxSpareThreads 2
AcceptFilter http none
"""


def apache_busy(recorder=None, workdir=None, *, races=2, keepalive_s=30,
                balancer_keepalive_s=60.0, slow=3, hc_interval_s=2.0,
                recorder_ns="host") -> ScenarioResult:
    """Apache mpm_event with 2 worker threads and a long KeepAliveTimeout behind nginx, every
    worker busy (3 slow CGI requests straight to the backend). With nginx's worker SIGSTOPped,
    a POST is sent on the client's keep-alive connection; measured here, Apache closes the
    upstream connection it arrives on when a worker frees (FIN ~0.25 s after the request), not
    its idle ones at once: 502, an in-flight close, which raising KeepAliveTimeout cannot help."""
    with _Run("apache_busy", recorder, workdir, recorder_ns) as run:
        t = run.topo
        run.backend = peers.start_backend(t, "apache", keepalive_s=keepalive_s,
                                          port=BACKEND_PORT, base_dir=run.workdir,
                                          apache_extra=APACHE_BUSY_EXTRA)
        b = _start_balancer(run, "nginx", balancer_keepalive_s)
        if hc_interval_s:
            run.health_checks(hc_interval_s)
        cl = run.client("client", t.addr["balancer_client_side"], BALANCER_PORT)
        for i in range(3):
            run.log_client(cl.request("GET", f"/normal{i}"), phase="normal")
        attempts = []
        for i in range(races):
            warm = run.log_client(cl.request("GET", f"/warm{i}"), phase="warm", race=i)
            time.sleep(0.5)
            b.signal(signal.SIGSTOP, workers=True)
            try:
                idle_open = _upstream_in_state(t, "established")
                slow_clients = []
                for j in range(slow):
                    c = run.client("balancer", t.addr["backend"], BACKEND_PORT)
                    slow_clients.append((c, c.send("GET", f"/cgi/slow?r={i}&n={j}",
                                                   timeout=10)))
                fin_seen = None
                end = time.monotonic() + 2.5
                while time.monotonic() < end:
                    if _upstream_in_state(t, "close-wait"):
                        fin_seen = time.time()
                        break
                    time.sleep(0.03)
                p = cl.send("POST", "/pay", body=f"race={i}&amount=100")
                p.wait_sent()
                time.sleep(0.1)
            finally:
                b.signal(signal.SIGCONT, workers=True)
            r = run.log_client(p.result(15), phase="race", race=i)
            for c, sp in slow_clients:
                run.log_client(sp.result(15), phase="slow", race=i)
                c.quit()
            attempts.append({"race": i, "warm_done": warm.get("done"), "idle_open": idle_open,
                             "fin_seen": fin_seen, "status": r.get("status"),
                             "error": r.get("error")})
            time.sleep(1.0)
        run.measured["races"] = attempts
        run.measured["race_statuses"] = [a["status"] for a in attempts]
        time.sleep(0.5)
    return run.result("nginx")


def fixed(recorder=None, workdir=None, *, races=3, normal_requests=5,
          backend_keepalive_ms=5000, balancer_keepalive_s=3.0, balancer="nginx",
          pause_offset_s=1.7, race_method="POST", race_path="/pay",
          recorder_ns="host") -> ScenarioResult:
    """The fix: backend keep-alive (5 s, closes at ~6 s) above the balancer's (3 s).  The
    same pause trick at the same instant as in `mismatch` finds the connection alive (200),
    and then each upstream connection idles until the balancer closes it (FIN from the
    balancer side) before the next round."""
    with _Run("fixed", recorder, workdir, recorder_ns) as run:
        t = run.topo
        run.backend = peers.start_node_backend(t, keepalive_ms=backend_keepalive_ms,
                                               port=BACKEND_PORT, base_dir=run.workdir)
        b = _start_balancer(run, balancer, balancer_keepalive_s)
        cl = run.client("client", t.addr["balancer_client_side"], BALANCER_PORT)
        for i in range(normal_requests):
            run.log_client(cl.request("GET", f"/normal{i}"), phase="normal")
        rounds = []
        for i in range(races):
            a = _race(run, cl, b, pause_offset_s=pause_offset_s, hold_max_s=0.6,
                      method=race_method, path=race_path, idx=i)
            a["valid"] = bool(a["idle_upstream_open_at_pause"])
            rounds.append(a)
            time.sleep(balancer_keepalive_s + 0.4)  # the balancer's idle close
        run.measured["races"] = rounds
        run.measured["race_statuses"] = [r["status"] for r in rounds]
    return run.result(balancer)


def overload(recorder=None, workdir=None, *, slow=3, busy_ms=5000, queued=3,
             slow_ms=3000, normal_requests=3, kill_after_s=0.6, balancer="nginx",
             recorder_ns="host") -> ScenarioResult:
    """An overloaded backend dies with requests in flight: `slow` requests being served
    slowly (read by Node, response pending), one request blocking Node's event loop
    (`/busy`), then `queued` requests that Node never reads; then SIGKILL.  The kernel
    closes the sockets: with a FIN where the request had been read, with an RST where
    unread bytes (or an unaccepted connection) remained.  The balancer answers 502."""
    with _Run("overload", recorder, workdir, recorder_ns) as run:
        t = run.topo
        run.backend = peers.start_node_backend(t, keepalive_ms=5000, slow_ms=slow_ms,
                                               port=BACKEND_PORT, base_dir=run.workdir)
        _start_balancer(run, balancer, 3.0)
        host = t.addr["balancer_client_side"]
        cl = run.client("client", host, BALANCER_PORT)
        for i in range(normal_requests):
            run.log_client(cl.request("GET", f"/normal{i}"), phase="normal")
        procs = [clients.spawn_parallel(t, "client", host, BALANCER_PORT, conns=slow,
                                        path="/slow", timeout=15)]
        time.sleep(0.2)
        procs.append(clients.spawn_parallel(t, "client", host, BALANCER_PORT, conns=1,
                                            path=f"/busy?ms={busy_ms}", timeout=15))
        time.sleep(0.2)
        if queued:
            procs.append(clients.spawn_parallel(t, "client", host, BALANCER_PORT,
                                                conns=queued, path="/queued", timeout=15))
        time.sleep(kill_after_s)
        run.measured["killed_at"] = time.time()
        run.backend.kill9()
        results = []
        for p in procs:
            for r in clients.parallel_results(p, timeout=25):
                results.append(run.log_client(r, phase="inflight"))
        run.measured["inflight_statuses"] = [r.get("status") for r in results]
        time.sleep(0.2)
    return run.result(balancer)


def client_gives_up(recorder=None, workdir=None, *, tries=2, slow_ms=1000,
                    client_timeout_s=0.3, via=("direct", "nginx"),
                    recorder_ns="host") -> ScenarioResult:
    """A client with a short timeout (0.3 s) gives up on a slow response (1 s) and closes:
    the backend sees the peer's FIN while the request is unanswered (the ALB's 460).
    via "direct": the client is in the balancer namespace and talks to the backend;
    via "nginx": the client talks to the nginx balancer, which closes its upstream
    connection when its client goes away (logs 499)."""
    with _Run("client_gives_up", recorder, workdir, recorder_ns) as run:
        t = run.topo
        run.backend = peers.start_node_backend(t, keepalive_ms=5000, slow_ms=slow_ms,
                                               port=BACKEND_PORT, base_dir=run.workdir)
        kind = None
        if "nginx" in via:
            _start_balancer(run, "nginx", 3.0)
            kind = "nginx"
        for v in via:
            if v == "direct":
                c = run.client("balancer", t.addr["backend"], BACKEND_PORT)
            else:
                c = run.client("client", t.addr["balancer_client_side"], BALANCER_PORT)
            for i in range(tries):
                run.log_client(c.request("GET", f"/fast{i}"), phase="fast", via=v)
                run.log_client(c.request("GET", f"/slow{i}", timeout=client_timeout_s),
                               phase="gives_up", via=v)
        time.sleep(slow_ms / 1000 + 0.2)  # let the backend finish the abandoned responses
    return run.result(kind)


# ---------------------------------------------------------------------------------------
# issue 14: why each connection closed, beside ALB-style health checks

def _keepalive_rounds(run: _Run, cl, rounds, per_round, gap_s, idle_s, phase):
    """`rounds` times: `per_round` requests `gap_s` apart on the keep-alive client `cl`, then
    `idle_s` of silence (long enough for the idle timer under test to close)."""
    for i in range(rounds):
        for j in range(per_round):
            if j:
                time.sleep(gap_s)
            run.log_client(cl.request("GET", f"/{phase}{i}-{j}"), phase=phase)
        time.sleep(idle_s)


def _node_behind_nginx(run: _Run, backend_keepalive_ms, balancer_keepalive_s, hc_interval_s,
                       **backend_options):
    """The Node backend behind nginx, ALB-style health checks straight to the backend, and a
    keep-alive client of nginx in the client namespace, which is returned."""
    run.backend = peers.start_node_backend(run.topo, keepalive_ms=backend_keepalive_ms,
                                           port=BACKEND_PORT, base_dir=run.workdir,
                                           **backend_options)
    _start_balancer(run, "nginx", balancer_keepalive_s)
    run.health_checks(hc_interval_s)
    return run.client("client", run.topo.addr["balancer_client_side"], BALANCER_PORT)


def healthy(recorder=None, workdir=None, *, backend_keepalive_ms=10000,
            balancer_keepalive_s=3.0, rounds=2, per_round=5, gap_s=0.4,
            hc_interval_s=0.7, recorder_ns="host") -> ScenarioResult:
    """A correct backend: Node keepAliveTimeout (10 s) above nginx's upstream
    keepalive_timeout (3 s), keep-alive traffic through nginx, ALB-style health checks
    straight to the backend.  nginx closes its idle upstream connections at 3 s (the peer's
    timer); the backend only closes the health checks' connections (Connection: close)."""
    with _Run("healthy", recorder, workdir, recorder_ns) as run:
        cl = _node_behind_nginx(run, backend_keepalive_ms, balancer_keepalive_s, hc_interval_s)
        _keepalive_rounds(run, cl, rounds, per_round, gap_s, balancer_keepalive_s + 0.5,
                          "normal")
    return run.result("nginx")


def websocket(recorder=None, workdir=None, *, conns=3, frames=3, gap_s=0.3, ws_idle_ms=1500,
              backend_keepalive_ms=10000, balancer_keepalive_s=3.0, rounds=2, per_round=3,
              hc_interval_s=0.7, recorder_ns="host") -> ScenarioResult:
    """WebSockets beside healthy keep-alive: `healthy`'s setup (Node keepAliveTimeout 10 s
    behind nginx's 3 s, whose timer closes its idle upstream connections), and `conns`
    WebSocket clients in the balancer's namespace (an ALB's connections to its target) that
    upgrade straight to the backend, exchange `frames` frames `gap_s` apart and fall silent:
    the backend's application closes each `ws_idle_ms` after its last frame (a heartbeat
    giving up on a silent client), sooner than nginx's timer, and no keep-alive timer. One
    more client upgrades a connection it has just made a GET on (below the kernel's idle gap)
    and closes its WebSocket itself right after its frames (a browser leaving)."""
    with _Run("websocket", recorder, workdir, recorder_ns) as run:
        t = run.topo
        cl = _node_behind_nginx(run, backend_keepalive_ms, balancer_keepalive_s, hc_interval_s,
                                ws_idle_ms=ws_idle_ms)
        backend = t.addr["backend"]
        for r in clients.run_websocket(t, "balancer", backend, BACKEND_PORT, conns=conns,
                                       frames=frames, gap=gap_s):
            run.log_client(r, phase="websocket")
        for r in clients.run_websocket(t, "balancer", backend, BACKEND_PORT, frames=frames,
                                       gap=gap_s, close_after=0.1, reuse=True):
            run.log_client(r, phase="websocket_left")
        _keepalive_rounds(run, cl, rounds, per_round, 0.3, balancer_keepalive_s + 0.5, "normal")
    return run.result("nginx")


def broken_behind_hc(recorder=None, workdir=None, *, backend_keepalive_ms=1000,
                     balancer_keepalive_s=60.0, rounds=3, per_round=2, gap_s=0.3,
                     idle_s=2.5, hc_interval_s=0.7, recorder_ns="host") -> ScenarioResult:
    """The field report's misconfiguration behind health checks: Node keepAliveTimeout 1000
    (closes idle at ~2 s) behind nginx whose upstream keepalive_timeout (60 s, like the
    ALB's idle timeout) never runs out during the recording: the peer shows no timer."""
    with _Run("broken_behind_hc", recorder, workdir, recorder_ns) as run:
        cl = _node_behind_nginx(run, backend_keepalive_ms, balancer_keepalive_s, hc_interval_s)
        _keepalive_rounds(run, cl, rounds, per_round, gap_s, idle_s, "normal")
    return run.result("nginx")


def mixed_peers(recorder=None, workdir=None, *, backend_keepalive_ms=1000,
                balancer_keepalive_s=60.0, rounds=3, per_round=2, gap_s=0.3, idle_s=2.5,
                internal_idle_s=1.0, hc_interval_s=0.7, recorder_ns="host") -> ScenarioResult:
    """broken_behind_hc beside a second kind of peer: an internal keep-alive client (the client
    namespace, straight to the backend through the balancer's forwarding) that closes its
    connection after `internal_idle_s` of idle, before the backend's timer.  The backend closes
    nginx's idle upstream connections first (the misconfiguration); the only idle timer the
    peer side shows is the internal client's, which is not the balancer's."""
    with _Run("mixed_peers", recorder, workdir, recorder_ns) as run:
        t = run.topo
        cl = _node_behind_nginx(run, backend_keepalive_ms, balancer_keepalive_s, hc_interval_s)
        for i in range(rounds):
            internal = run.client("client", t.addr["backend"], BACKEND_PORT)
            for j in range(per_round):
                if j:
                    time.sleep(gap_s)
                run.log_client(cl.request("GET", f"/normal{i}-{j}"), phase="normal")
                run.log_client(internal.request("GET", f"/internal{i}-{j}"), phase="internal")
            time.sleep(internal_idle_s)
            internal.close()
            time.sleep(idle_s - internal_idle_s)
    return run.result("nginx")


def one_shot(recorder=None, workdir=None, *, holds=(0.0, 0.0, 0.2, 0.4),
             backend_keepalive_ms=10000, balancer_keepalive_s=3.0, per_round=4, gap_s=0.3,
             hc_interval_s=0.7, recorder_ns="host") -> ScenarioResult:
    """curl-like clients (a new connection, one GET without Connection: close, closed `hold`
    s after the response) straight to the backend, beside a keep-alive client through nginx
    whose idle upstream connection nginx closes at its 3 s."""
    with _Run("one_shot", recorder, workdir, recorder_ns) as run:
        t = run.topo
        cl = _node_behind_nginx(run, backend_keepalive_ms, balancer_keepalive_s, hc_interval_s)
        _keepalive_rounds(run, cl, 1, per_round, gap_s, 0.0, "normal")
        idle_from = time.monotonic()
        for i, hold in enumerate(holds):
            run.log_client(clients.run_oneshot(t, "balancer", t.addr["backend"], BACKEND_PORT,
                                               f"/once{i}", hold=hold), phase="oneshot")
        time.sleep(max(0.0, balancer_keepalive_s + 0.5 - (time.monotonic() - idle_from)))
    return run.result("nginx")


def max_requests(recorder=None, workdir=None, *, backend="node", limit=3, connections=2,
                 hc_interval_s=0.7, recorder_ns="host",
                 security_headers=False) -> ScenarioResult:
    """A server that ends keep-alive after `limit` requests (Node maxRequestsPerSocket,
    nginx keepalive_requests): its last response says Connection: close and it closes.
    A keep-alive client in the balancer's namespace sends `limit` requests on each of
    `connections` connections. `security_headers`: Node's responses carry helmet's fields
    (peers.start_node_backend), which put its Connection field ~700 bytes in."""
    with _Run("max_requests", recorder, workdir, recorder_ns) as run:
        t = run.topo
        if backend == "node":
            run.backend = peers.start_node_backend(t, keepalive_ms=5000, max_requests=limit,
                                                   port=BACKEND_PORT, base_dir=run.workdir,
                                                   security_headers=security_headers)
        else:
            run.backend = peers.start_nginx_backend(t, keepalive_timeout_s=5.0,
                                                    keepalive_requests=limit,
                                                    port=BACKEND_PORT, base_dir=run.workdir)
        run.health_checks(hc_interval_s)
        cl = run.client("balancer", t.addr["backend"], BACKEND_PORT)
        for i in range(connections * limit):
            # after the Connection: close response the client lets the server close first
            # for up to 0.5 s (else client and server race to close): nginx closes at
            # once; Node 20 never does (measured), so the client closes after 0.5 s
            run.log_client(cl.request("GET", f"/req{i}", wait_server_close=0.5),
                           phase="limited")
            time.sleep(0.2)
        time.sleep(0.5)
    return run.result(None)


def worker_timeout(recorder=None, workdir=None, *, slow=2, worker_timeout_s=2,
                   hc_interval_s=0.7, recorder_ns="host") -> ScenarioResult:
    """Gunicorn (sync workers, --workers 2, --timeout `worker_timeout_s`) behind nginx: `slow`
    requests one after another through nginx to a handler that sleeps 6 s, longer than the
    timeout. The arbiter kills the busy worker (SIGABRT; its log says WORKER TIMEOUT): the
    connection of the request it was serving closes unanswered, nginx answers 502. The other
    worker serves the health checks meanwhile."""
    with _Run("worker_timeout", recorder, workdir, recorder_ns) as run:
        t = run.topo
        run.backend = peers.start_backend(t, "gunicorn-sync", port=BACKEND_PORT,
                                          base_dir=run.workdir, workers=2,
                                          worker_timeout_s=worker_timeout_s)
        _start_balancer(run, "nginx", 60.0)
        run.health_checks(hc_interval_s)
        cl = run.client("client", t.addr["balancer_client_side"], BALANCER_PORT)
        statuses = []
        for i in range(slow):
            r = run.log_client(cl.request("GET", f"/slow{i}", timeout=11), phase="slow")
            statuses.append(r.get("status"))
        run.measured["slow_statuses"] = statuses
        time.sleep(1.0)
    return run.result("nginx")


def unread_race(recorder=None, workdir=None, *, backend="node", races=2, hc_interval_s=0.7,
                recorder_ns="host") -> ScenarioResult:
    """The unread-request race made deterministic: a request arrives on an idle keep-alive
    connection while the server cannot run, and its keep-alive timer comes due meanwhile;
    when it runs again it handles the timer first and closes the socket with the request
    unread: the kernel answers RST (TCP_ABORT_ON_CLOSE), the client sees ECONNRESET.

    node: keepAliveTimeout 1000 (timer due 2.0 s after the response); the warm-up request
    asks Node (?lag_in=1850&lag_ms=300) to block its event loop from 1.85 s to 2.15 s
    (from the check phase: after it the timers phase runs before the poll phase reads any
    socket); the request is sent at 1.95 s.
    nginx: keepalive_timeout 1 s; the worker is SIGSTOPped 0.6-1.5 s after the response,
    the request sent at 1.2 s; after SIGCONT, epoll_wait returns EINTR and nginx expires
    its timers before it reads the socket.
    The client is in the balancer's namespace (a balancer's upstream connection)."""
    with _Run("unread_race", recorder, workdir, recorder_ns) as run:
        t = run.topo
        if backend == "node":
            run.backend = peers.start_node_backend(t, keepalive_ms=1000, port=BACKEND_PORT,
                                                   base_dir=run.workdir)
        else:
            run.backend = peers.start_nginx_backend(t, keepalive_timeout_s=1.0,
                                                    port=BACKEND_PORT, base_dir=run.workdir)
        run.health_checks(hc_interval_s)
        cl = run.client("balancer", t.addr["backend"], BACKEND_PORT)
        out = []
        for i in range(races):
            if backend == "node":
                warm = run.log_client(cl.request("GET", f"/warm{i}?lag_in=1850&lag_ms=300"),
                                      phase="warm", race=i)
                time.sleep(max(0.0, warm["done"] + 1.95 - time.time()))
                r = run.log_client(cl.request("GET", f"/race{i}", timeout=3), phase="race",
                                   race=i)
            else:
                warm = run.log_client(cl.request("GET", f"/warm{i}"), phase="warm", race=i)
                time.sleep(max(0.0, warm["done"] + 0.6 - time.time()))
                run.backend.signal(signal.SIGSTOP, workers=True)
                try:
                    time.sleep(max(0.0, warm["done"] + 1.2 - time.time()))
                    p = cl.send("GET", f"/race{i}", timeout=3)
                    p.wait_sent()
                    time.sleep(max(0.0, warm["done"] + 1.5 - time.time()))
                finally:
                    run.backend.signal(signal.SIGCONT, workers=True)
                r = run.log_client(p.result(8), phase="race", race=i)
            out.append({"race": i, "warm_done": warm["done"], "sent": r.get("sent"),
                        "status": r.get("status"), "error": r.get("error")})
            time.sleep(0.3)
        run.measured["races"] = out
        run.measured["race_errors"] = [o["error"] for o in out]
    return run.result(None)


def crash(recorder=None, workdir=None, *, slow=3, slow_ms=5000, normal_requests=3,
          hc_interval_s=0.7, recorder_ns="host") -> ScenarioResult:
    """kill -9 of the Node backend with `slow` requests read (Node logged them) and
    unanswered, beside keep-alive traffic through nginx and health checks: the kernel
    closes the sockets of the dead process with a FIN (their requests had been read)."""
    with _Run("crash", recorder, workdir, recorder_ns) as run:
        t = run.topo
        run.backend = peers.start_node_backend(t, keepalive_ms=5000, slow_ms=slow_ms,
                                               port=BACKEND_PORT, base_dir=run.workdir)
        _start_balancer(run, "nginx", 3.0)
        run.health_checks(hc_interval_s)
        # a few health checks answered before the crash, as a target in service has had
        time.sleep(3 * hc_interval_s)
        host = t.addr["balancer_client_side"]
        cl = run.client("client", host, BALANCER_PORT)
        for i in range(normal_requests):
            run.log_client(cl.request("GET", f"/normal{i}"), phase="normal")
        proc = clients.spawn_parallel(t, "client", host, BALANCER_PORT, conns=slow,
                                      path="/slow", timeout=15)
        # kill only once Node has read every slow request
        end = time.monotonic() + 5
        while time.monotonic() < end and _node_requests(run.backend.log, "/slow") < slow:
            time.sleep(0.05)
        run.measured["slow_read_before_kill"] = _node_requests(run.backend.log, "/slow")
        time.sleep(0.2)
        run.kill_backend()
        run.measured["killed_at"] = run.local_exits[-1]
        results = [run.log_client(r, phase="inflight")
                   for r in clients.parallel_results(proc, timeout=25)]
        run.measured["inflight_statuses"] = [r.get("status") for r in results]
        time.sleep(0.5)
    return run.result("nginx")


def shutdown(recorder=None, workdir=None, *, backend_keepalive_ms=65000,
             balancer_keepalive_s=60.0, slow_ms=300, hc_interval_s=0.7,
             recorder_ns="host") -> ScenarioResult:
    """A deploy without draining: the Node backend (keepAliveTimeout 65 s, above nginx's
    upstream keepalive_timeout of 60 s, as it should be: neither timer runs out in this
    scenario's span, and the only fault is the stop) is told to stop
    (SIGUSR2: server.close(), which closes every idle keep-alive connection at once) while
    nginx holds two idle upstream connections, idle for about 2.4 s and 0.8 s, and is stopped
    with a client's POST waiting: after SIGCONT nginx sends it on a closed connection, the
    backend answers RST, nginx returns 502.  A shutdown's close race, no timer's."""
    with _Run("shutdown", recorder, workdir, recorder_ns) as run:
        t = run.topo
        run.backend = peers.start_node_backend(t, keepalive_ms=backend_keepalive_ms,
                                               slow_ms=slow_ms, port=BACKEND_PORT,
                                               base_dir=run.workdir)
        b = _start_balancer(run, "nginx", balancer_keepalive_s)
        run.health_checks(hc_interval_s)
        host = t.addr["balancer_client_side"]
        # two upstream connections at once, then one of them used again: idle times far apart
        proc = clients.spawn_parallel(t, "client", host, BALANCER_PORT, conns=2, path="/slow")
        for r in clients.parallel_results(proc):
            run.log_client(r, phase="parallel")
        time.sleep(1.5)
        cl = run.client("client", host, BALANCER_PORT)
        run.log_client(cl.request("GET", "/again"), phase="again")
        time.sleep(0.8)
        b.signal(signal.SIGSTOP, workers=True)
        try:
            p = cl.send("POST", "/pay", body="amount=100")
            p.wait_sent()
            run.local_shutdowns.append(time.time())
            run.backend.signal(signal.SIGUSR2)
            end = time.monotonic() + 2
            while time.monotonic() < end and not _upstream_in_state(t, "close-wait"):
                time.sleep(0.03)
            time.sleep(0.05)
        finally:
            b.signal(signal.SIGCONT, workers=True)
        r = run.log_client(p.result(15), phase="race")
        run.measured["race_status"] = r.get("status")
        time.sleep(0.5)
    return run.result("nginx")


def connection_limit(recorder=None, workdir=None, *, limit=2, tries=2, hc_interval_s=0.7,
                     recorder_ns="host") -> ScenarioResult:
    """A backend at its connection limit (Node server.maxConnections; keepAliveTimeout 65 s,
    above an ALB's idle timeout, as it should be): `limit` keep-alive
    connections hold it, and each of `tries` new connections is closed as soon as Node accepts
    it; its client, like a busy balancer that has not read the FIN yet, sends its POST 0.2 s
    after connecting, and the backend answers RST.  Health checks in that span meet the limit
    too."""
    with _Run("connection_limit", recorder, workdir, recorder_ns) as run:
        t = run.topo
        run.backend = peers.start_node_backend(t, keepalive_ms=65000, max_connections=limit,
                                               port=BACKEND_PORT, base_dir=run.workdir)
        run.health_checks(hc_interval_s)
        time.sleep(3 * hc_interval_s)
        backend = t.addr["backend"]
        holders = [run.client("balancer", backend, BACKEND_PORT) for _ in range(limit)]
        for i, holder in enumerate(holders):
            run.log_client(holder.request("GET", f"/hold{i}"), phase="hold")
        results = []
        for i in range(tries):
            c = run.client("balancer", backend, BACKEND_PORT)
            c.connect()
            time.sleep(0.2)
            results.append(run.log_client(c.request("POST", f"/over{i}", body="amount=100",
                                                    reuse_closed=True, reconnect=False),
                                          phase="over"))
        run.measured["over_errors"] = [r.get("error") for r in results]
        for holder in holders:
            run.log_client(holder.close(), phase="release")
        time.sleep(3 * hc_interval_s)
    return run.result(None)


def _node_requests(log_path, path_prefix) -> int:
    """Requests Node logged as read (NODE_SERVER_JS's "request" lines) whose url starts
    with path_prefix."""
    n = 0
    with open(log_path) as f:
        for line in f:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            n += e.get("ev") == "request" and e.get("url", "").startswith(path_prefix)
    return n


def pipelining(recorder=None, workdir=None, *, backend="node",
               paths=("/a?status=200", "/b?status=404", "/c?status=201"), hold_s=0.0,
               hc_interval_s=0.7, recorder_ns="host") -> ScenarioResult:
    """Three GETs in one send on a new connection (HTTP/1.1 pipelining) from the balancer's
    namespace, three responses (Node: each its own status), then the client closes."""
    with _Run("pipelining", recorder, workdir, recorder_ns) as run:
        t = run.topo
        if backend == "node":
            run.backend = peers.start_node_backend(t, keepalive_ms=5000, port=BACKEND_PORT,
                                                   base_dir=run.workdir)
        else:
            paths = tuple(p.split("?")[0] for p in paths)
            run.backend = peers.start_nginx_backend(t, keepalive_timeout_s=5.0,
                                                    port=BACKEND_PORT, base_dir=run.workdir)
        run.health_checks(hc_interval_s)
        r = run.log_client(clients.run_pipeline(t, "balancer", t.addr["backend"],
                                                BACKEND_PORT, list(paths), hold=hold_s),
                           phase="pipeline")
        run.measured["pipeline_statuses"] = r.get("statuses")
        time.sleep(2.0)  # a few more health checks
    return run.result(None)


# nftables in the NAT namespace: masquerade the client's flows toward the backend; a packet
# of a flow conntrack no longer knows is INVALID (nf_conntrack_tcp_loose=0: no mid-stream
# pickup) and is answered with an RST, as AWS's NAT gateway does after its idle timeout.
NAT_RULES = """
table ip cts_nat {
    chain masq {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr %(client)s oifname "%(out)s" masquerade
    }
    chain forgetful {
        type filter hook forward priority filter; policy accept;
        ct state invalid counter reject with tcp reset
    }
}
"""


def nat_forgotten(recorder=None, workdir=None, *, conntrack_timeout_s=2, idle_s=3.5,
                  hc_interval_s=0.7, recorder_ns="client") -> ScenarioResult:
    """A pooled keep-alive connection through a NAT whose conntrack entry expires while the
    connection idles: the client (recorded and captured in the client's namespace) reuses it
    and the NAT answers the request with an RST, no FIN before it.  The balancer's namespace
    does the NAT (nftables masquerade) with nf_conntrack_tcp_timeout_established =
    `conntrack_timeout_s`; the backend (Node, keepAliveTimeout 30 s) never closes."""
    with _Run("nat_forgotten", recorder, workdir, recorder_ns, capture_ns="client") as run:
        t = run.topo
        t.run_in("balancer", ["nft", "-f", "-"], input=NAT_RULES % {
            "client": t.addr["client"], "out": t.iface["balancer"]})
        t.run_in("balancer", ["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0",
                              "net.netfilter.nf_conntrack_tcp_timeout_established="
                              f"{conntrack_timeout_s}"])
        run.backend = peers.start_node_backend(t, keepalive_ms=30000, port=BACKEND_PORT,
                                               base_dir=run.workdir)
        run.health_checks(hc_interval_s)
        cl = run.client("client", t.addr["backend"], BACKEND_PORT)
        first = run.log_client(cl.request("GET", "/pooled"), phase="pooled")
        time.sleep(max(0.0, first["done"] + idle_s - time.time()))
        # reconnect=False: a pool reuses the connection it has (no FIN told it otherwise)
        r = run.log_client(cl.request("GET", "/reuse", timeout=3, reconnect=False),
                           phase="reuse")
        run.measured["reuse"] = {"error": r.get("error"), "status": r.get("status")}
        run.measured["nft"] = t.run_in("balancer", ["nft", "list", "table", "ip", "cts_nat"],
                                       check=False).stdout
        time.sleep(0.3)
    return run.result(None)


SCENARIOS = {"mismatch": mismatch, "fixed": fixed, "overload": overload,
             "client_gives_up": client_gives_up, "healthy": healthy,
             "broken_behind_hc": broken_behind_hc, "mixed_peers": mixed_peers,
             "one_shot": one_shot, "websocket": websocket,
             "max_requests": max_requests, "unread_race": unread_race, "crash": crash,
             "pipelining": pipelining, "nat_forgotten": nat_forgotten, "shutdown": shutdown,
             "connection_limit": connection_limit, "apache_busy": apache_busy,
             "worker_timeout": worker_timeout}


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--recorder", help="argv (shell-quoted) run in the backend namespace; "
                    "{trace} is replaced by the trace path")
    ap.add_argument("--workdir")
    ap.add_argument("--balancer", choices=["nginx", "haproxy"])
    ap.add_argument("--backend", choices=["node", "nginx", *peers.BACKEND_KINDS],
                    help="max_requests, unread_race, pipelining: the backend server")
    ap.add_argument("--backend-keepalive", type=int, help="mismatch with --backend "
                    f"{'/'.join(peers.BACKEND_KINDS)}: its keep-alive timeout (s)")
    ap.add_argument("--balancer-keepalive", type=float, help="mismatch: nginx's upstream "
                    "keepalive_timeout (s)")
    ap.add_argument("--hc-interval", type=float, help="mismatch: ALB-style health checks "
                    "every N s")
    ap.add_argument("--apache-extra", help="mismatch --backend apache: more config lines")
    ap.add_argument("--wrk-seconds", type=int, help="mismatch: the wrk burst (0: none)")
    ap.add_argument("--compare", action="store_true", help="compare the trace with the wire")
    ap.add_argument("--wire", action="store_true", help="print the wire's connections")
    a = ap.parse_args(argv)
    kw = {}
    if a.balancer:
        if a.scenario == "client_gives_up":
            ap.error("client_gives_up takes no --balancer")
        kw["balancer"] = a.balancer
    if a.backend:
        kw["backend"] = a.backend
    if a.backend_keepalive is not None:
        kw["backend_keepalive_s"] = a.backend_keepalive
    if a.balancer_keepalive is not None:
        kw["balancer_keepalive_s"] = a.balancer_keepalive
    if a.hc_interval is not None:
        kw["hc_interval_s"] = a.hc_interval
    if a.apache_extra:
        kw["apache_extra"] = a.apache_extra
    if a.wrk_seconds is not None:
        kw["wrk_seconds"] = a.wrk_seconds
    rec = shlex.split(a.recorder) if a.recorder else None
    res = SCENARIOS[a.scenario](recorder=rec, workdir=a.workdir, **kw)
    print(res.to_json())
    if a.wire:
        for c in res.wire_conns():
            print(c.describe())
    if a.compare and res.trace:
        ds = res.compare(verbose=True)
        print(f"{len(ds)} disagreement(s) between trace and wire")
        return 1 if ds else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
