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

    def wire_conns(self, local_ports=None):
        return wire.read_capture(self.pcap, self.backend_addr,
                                 local_ports or {self.backend_port})

    def trace_data(self):
        return wire.load_trace(self.trace) if self.trace else None

    def compare(self, verbose=True, check_verdicts=False):
        """closetrace conn records vs the capture: a list of disagreements."""
        if not self.trace:
            raise ValueError("no trace recorded (recorder=None)")
        return wire.compare_files(self.trace, self.pcap, self.backend_addr,
                                  {self.backend_port}, verbose=verbose,
                                  check_verdicts=check_verdicts)

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

    def __init__(self, name, recorder, workdir, recorder_ns="host", recorder_ready_s=15.0):
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

    def __enter__(self):
        self.topo.__enter__()
        try:
            self.cap = wire.Capture(self.topo, "backend", self.topo.iface["backend"],
                                    os.path.join(self.workdir, "backend.pcap")).start()
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

    def log_client(self, res: dict, **extra):
        res = dict(res, **extra)
        with open(self.client_log, "a") as f:
            f.write(json.dumps(res) + "\n")
        return res

    def __exit__(self, *exc):
        try:
            for c in self.clients:
                c.quit()
            time.sleep(0.2)  # let the last FIN/ACKs reach the capture
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
            backend_log=n.log if n else "", client_log=self.client_log,
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
             race_method="POST", race_path="/pay", recorder_ns="host") -> ScenarioResult:
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
        run.backend = peers.start_node_backend(t, keepalive_ms=backend_keepalive_ms,
                                               port=BACKEND_PORT, base_dir=run.workdir)
        b = _start_balancer(run, balancer, balancer_keepalive_s)
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


SCENARIOS = {"mismatch": mismatch, "fixed": fixed, "overload": overload,
             "client_gives_up": client_gives_up}


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--recorder", help="argv (shell-quoted) run in the backend namespace; "
                    "{trace} is replaced by the trace path")
    ap.add_argument("--workdir")
    ap.add_argument("--balancer", choices=["nginx", "haproxy"])
    ap.add_argument("--compare", action="store_true", help="compare the trace with the wire")
    ap.add_argument("--wire", action="store_true", help="print the wire's connections")
    a = ap.parse_args(argv)
    kw = {}
    if a.balancer:
        if a.scenario == "client_gives_up":
            ap.error("client_gives_up takes no --balancer")
        kw["balancer"] = a.balancer
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
