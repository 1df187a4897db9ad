"""Three network namespaces joined by veth pairs: client <-> balancer <-> backend.

    with Topology() as topo:
        topo.spawn_in("backend", ["node", "server.js"])
        topo.run_in("client", ["python3", "-c", "..."])

Addresses (all inside the run's own namespaces, never on the host):

    client   10.201.0.1/30  (iface to-bal)   default via 10.201.0.2
    balancer 10.201.0.2/30  (iface to-cli)   ip_forward=1
             10.201.0.5/30  (iface to-back)
    backend  10.201.0.6/30  (iface to-bal)   default via 10.201.0.5

Every namespace has its own network stack, so parallel runs can reuse the same
addresses; only the namespace names must differ.  Names are
``<prefix>-client`` etc. with a pid-based prefix (``cts<pid>x<n>`` by default);
``cleanup_stale()`` removes leftovers of runs whose pid is gone.

Teardown (normal exit, exception, SIGINT, SIGTERM) kills every process group the
topology started, then every process still inside its namespaces, then deletes the
namespaces (which deletes the veth pairs with them).
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time

ROLES = ("client", "balancer", "backend")
DEFAULT_PREFIX_BASE = "cts"
# default prefixes look like cts<pid>x<n>
STALE_PATTERN = r"^cts(?P<pid>\d+)x\d+-"

ADDR = {
    "client": "10.201.0.1",
    "balancer_client_side": "10.201.0.2",
    "balancer": "10.201.0.5",  # balancer's address as seen from the backend
    "backend": "10.201.0.6",
}
IFACE = {
    "client": "to-bal",
    "balancer_client_side": "to-cli",
    "balancer": "to-back",
    "backend": "to-bal",
}

_counter = itertools.count()


def default_prefix() -> str:
    return f"{DEFAULT_PREFIX_BASE}{os.getpid()}x{next(_counter)}"


def _run(argv, check=True, timeout=20, **kw):
    return subprocess.run(argv, check=check, timeout=timeout,
                          stdout=kw.pop("stdout", subprocess.PIPE),
                          stderr=kw.pop("stderr", subprocess.PIPE), text=True, **kw)


def list_netns() -> list[str]:
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(ns: str) -> list[int]:
    out = _run(["ip", "netns", "pids", ns], check=False).stdout
    return [int(x) for x in out.split() if x.isdigit()]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def children_of(pid: int) -> list[int]:
    """Direct children of pid (scans /proc; this kernel has no /proc/*/children)."""
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # comm may contain spaces/parens: ppid is the 2nd field after the last ')'
        rest = stat[stat.rfind(")") + 2:].split()
        if len(rest) > 1 and int(rest[1]) == pid:
            kids.append(int(d))
    return sorted(kids)


def _kill_pids(pids, sig):
    for p in pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


def delete_netns(ns: str) -> None:
    """Kill everything inside ns, then delete it."""
    for _ in range(3):
        pids = netns_pids(ns)
        if not pids:
            break
        _kill_pids(pids, signal.SIGCONT)
        _kill_pids(pids, signal.SIGKILL)
        time.sleep(0.1)
    _run(["ip", "netns", "delete", ns], check=False)


def cleanup_stale(prefix_pattern: str = STALE_PATTERN) -> list[str]:
    """Delete namespaces matching prefix_pattern (a regex with a named group ``pid``)
    whose owning harness pid is no longer alive.  Returns the names removed."""
    rx = re.compile(prefix_pattern)
    removed = []
    for ns in list_netns():
        m = rx.match(ns)
        if not m:
            continue
        pid = int(m.group("pid"))
        if pid == os.getpid() or pid_alive(pid):
            continue
        delete_netns(ns)
        removed.append(ns)
    return removed


class Topology:
    """Context manager building client/balancer/backend namespaces."""

    def __init__(self, prefix: str | None = None, install_signal_handlers: bool = True):
        self.prefix = prefix or default_prefix()
        self.ns = {r: f"{self.prefix}-{r}" for r in ROLES}
        self.addr = dict(ADDR)
        self.iface = dict(IFACE)
        self.procs: list[subprocess.Popen] = []
        self._created: list[str] = []
        self._install = install_signal_handlers
        self._old_handlers = {}
        self._closed = False

    # ---- setup -----------------------------------------------------------------
    def __enter__(self):
        if self._install and threading.current_thread() is threading.main_thread():
            self._old_handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise_exit)
            self._old_handlers[signal.SIGINT] = signal.signal(signal.SIGINT, _raise_interrupt)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _ip(self, *args):
        _run(["ip", *args])

    def _build(self):
        existing = set(list_netns())
        for r in ROLES:
            if self.ns[r] in existing:
                raise RuntimeError(f"namespace {self.ns[r]} already exists")
        for r in ROLES:
            self._ip("netns", "add", self.ns[r])
            self._created.append(self.ns[r])
            self._ip("-n", self.ns[r], "link", "set", "lo", "up")
        c, b, s = (self.ns[r] for r in ROLES)
        # create each veth pair directly in its two namespaces (names never touch the host)
        self._ip("link", "add", IFACE["client"], "netns", c, "type", "veth",
                 "peer", "name", IFACE["balancer_client_side"], "netns", b)
        self._ip("link", "add", IFACE["backend"], "netns", s, "type", "veth",
                 "peer", "name", IFACE["balancer"], "netns", b)
        for ns, ifc, a in ((c, IFACE["client"], ADDR["client"]),
                           (b, IFACE["balancer_client_side"], ADDR["balancer_client_side"]),
                           (b, IFACE["balancer"], ADDR["balancer"]),
                           (s, IFACE["backend"], ADDR["backend"])):
            self._ip("-n", ns, "addr", "add", f"{a}/30", "dev", ifc)
            self._ip("-n", ns, "link", "set", ifc, "up")
        self._ip("-n", c, "route", "add", "default", "via", ADDR["balancer_client_side"])
        self._ip("-n", s, "route", "add", "default", "via", ADDR["balancer"])
        _run(["ip", "netns", "exec", b, "sysctl", "-qw", "net.ipv4.ip_forward=1"])

    # ---- processes ---------------------------------------------------------------
    def nsname(self, ns: str) -> str:
        return self.ns.get(ns, ns)

    def _argv(self, ns, argv, nsenter=False):
        if ns in (None, "host"):
            return list(argv)
        if nsenter:
            # only the network namespace: keeps the host's /sys mounts (cgroup2, bpffs),
            # which `ip netns exec` hides behind a fresh sysfs
            return ["nsenter", f"--net=/run/netns/{self.nsname(ns)}", "--", *argv]
        return ["ip", "netns", "exec", self.nsname(ns), *argv]

    def run_in(self, ns, argv, timeout=30, check=True, nsenter=False, **kw):
        """Run argv to completion inside ns ('client'|'balancer'|'backend'|full name|'host')."""
        return _run(self._argv(ns, argv, nsenter), check=check, timeout=timeout, **kw)

    def spawn_in(self, ns, argv, nsenter=False, **kw) -> subprocess.Popen:
        """Start argv inside ns in its own process group; teardown kills the group.
        ``ip netns exec`` and ``nsenter`` exec argv in place, so Popen.pid is argv's pid.
        nsenter=True enters only the network namespace (see _argv)."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(self._argv(ns, argv, nsenter), start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def stop_proc(self, p: subprocess.Popen, sig=signal.SIGTERM, timeout=5.0):
        """Signal a spawned process' group, wait, then SIGKILL the group."""
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGCONT)
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:  # leftovers of the group (e.g. children of a killed parent)
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        return p.returncode

    @staticmethod
    def close_pipes(p: subprocess.Popen):
        for f in (p.stdin, p.stdout, p.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass

    # ---- teardown ---------------------------------------------------------------
    def close(self):
        if self._closed:
            return
        self._closed = True
        # ignore further SIGINT/SIGTERM while tearing down
        if self._old_handlers:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            for p in reversed(self.procs):
                self.stop_proc(p, signal.SIGTERM, timeout=2.0)
            for p in self.procs:
                self.close_pipes(p)
            for ns in reversed(self._created):
                delete_netns(ns)
        finally:
            for sig, h in self._old_handlers.items():
                signal.signal(sig, h)
            self._old_handlers.clear()

    def alive_namespaces(self) -> list[str]:
        return [n for n in list_netns() if n.startswith(self.prefix + "-")]


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    # python3 netns.py cleanup  -> remove stale namespaces of dead harness runs
    if sys.argv[1:2] == ["cleanup"]:
        print("\n".join(cleanup_stale()) or "nothing stale")
    else:
        with Topology() as t:
            print(t.ns)
            print(t.run_in("client", ["ping", "-c1", "-W1", ADDR["backend"]]).stdout)
