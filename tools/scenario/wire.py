"""The wire judge: a packet capture of the backend's interface, cut into TCP connections
as seen from the backend, and a comparison with closetrace's ``conn`` records.

    cap = Capture(topo, "backend", topo.iface["backend"], "/tmp/x.pcap").start()
    ...
    cap.stop()
    conns = read_capture("/tmp/x.pcap", local_addr="10.201.0.6")
    disagreements = compare(load_trace("trace.jsonl")["conns"], conns,
                            mono_to_wall_ns=..., local_addr="10.201.0.6")

Times on the wire are wall clock (epoch seconds, float); times in a trace are
CLOCK_MONOTONIC ns, converted with the header's ``mono_to_wall_ns``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field

HTTP_METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE")
_REQ_RX = re.compile(rb"^(%s) \S+ HTTP/1\.[01]" % b"|".join(m.encode() for m in HTTP_METHODS))

# tcp flag bits
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# health checkers by User-Agent prefix (the trace's `health_check` names them the same way)
HEALTH_CHECKERS = ("ELB-HealthChecker", "kube-probe", "GoogleHC", "Consul Health Check",
                   "Amazon-Route53-Health-Check-Service", "Envoy/HC")
# the trace format's thresholds (issue 14): an idle timer closes after >= 1 s idle; a client
# that closes within 1 s of its last response closed after use; a late or unread request
# after >= 0.5 s idle is a race's, and a connection idle that long is one of a shutdown's
IDLE_TIMER_MIN_S = 1.0
AFTER_USE_MAX_S = 1.0
RACE_IDLE_MIN_S = 0.5
# segments that cross are sent within a round trip of each other (see _crossed); far more
# apart, the second not acknowledging the first says the capture lost something
CROSS_WITHIN_S = 0.01
# a segment that starts a message (its head may go on in the next segments)
_HEAD_START_RX = re.compile(rb"^((%s) |HTTP/1\.)" % b"|".join(m.encode() for m in HTTP_METHODS))


# ---------------------------------------------------------------------------------------
# capture

class Capture:
    """tcpdump -i IFACE -w FILE -U inside a namespace; start() returns once it captures."""

    def __init__(self, topo, ns, iface, path, bpf_filter="tcp", snaplen=0, buffer_kib=32768):
        self.topo, self.ns, self.iface, self.path = topo, ns, iface, path
        self.buffer_kib = buffer_kib
        self.filter, self.snaplen = bpf_filter, snaplen
        self.proc = None
        self.stderr_lines: list[str] = []
        self._listening = threading.Event()

    def start(self, timeout=30.0):
        argv = ["tcpdump", "-i", self.iface, "-w", self.path, "-U", "-n", "-Z", "root",
                "-s", str(self.snaplen), "-B", str(self.buffer_kib), "--immediate-mode",
                self.filter]
        self.proc = self.topo.spawn_in(self.ns, argv, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        if not self._listening.wait(timeout):
            self.topo.stop_proc(self.proc)
            raise RuntimeError("tcpdump did not start: " + "".join(self.stderr_lines))
        return self

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line)
            if "listening on" in line:
                self._listening.set()
        self._listening.set()  # exited: unblock start() (it checks the process)

    def wait_quiet(self, quiet_s=0.3, timeout=10.0):
        """Waits until the file has not grown for `quiet_s` (up to `timeout`): tcpdump, late on a
        loaded machine, has written the packets that reached it; stop() would drop those it has
        not read yet."""
        deadline = time.monotonic() + timeout
        size, quiet_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now_size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
            if now_size != size:
                size, quiet_since = now_size, time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_s:
                return
            time.sleep(0.05)

    def stop(self, timeout=5.0):
        """SIGINT tcpdump (it flushes and writes its statistics) and wait."""
        if self.proc is not None:
            import signal
            self.topo.stop_proc(self.proc, signal.SIGINT, timeout)
            self._reader.join(timeout=2)
        return self.path

    def stats(self) -> str:
        return "".join(self.stderr_lines)

    def dropped(self):
        """Packets tcpdump reported as dropped by the kernel (None before stop())."""
        m = re.search(r"(\d+) packets? dropped by kernel", self.stats())
        return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------
# reading a capture

@dataclass
class Packet:
    t: float
    src: str
    sport: int
    dst: str
    dport: int
    flags: int
    length: int
    seq: int
    payload: bytes
    ack: int | None = None  # relative to the other direction's first sequence number

    def flag_str(self):
        return "".join(c for c, b in (("S", SYN), ("F", FIN), ("R", RST), ("P", PSH), ("A", ACK))
                       if self.flags & b)


def read_packets(path) -> list[Packet]:
    """Packets of a capture, via tshark (falls back to a small pcap parser if tshark is
    missing)."""
    if shutil.which("tshark"):
        return _read_tshark(path)
    return _read_pcap(path)


def _read_tshark(path):
    argv = ["tshark", "-n", "-r", path, "-Y", "tcp and ip",
            "-o", "tcp.relative_sequence_numbers:TRUE",
            "-T", "fields", "-E", "separator=\t", "-E", "occurrence=f",
            "-e", "frame.time_epoch", "-e", "ip.src", "-e", "tcp.srcport", "-e", "ip.dst",
            "-e", "tcp.dstport", "-e", "tcp.flags", "-e", "tcp.len", "-e", "tcp.seq",
            "-e", "tcp.payload", "-e", "tcp.ack"]
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"tshark failed: {r.stderr}")
    pkts = []
    for line in r.stdout.splitlines():
        f = line.split("\t")
        if len(f) < 8 or not f[0]:
            continue
        payload = bytes.fromhex(f[8].replace(":", "")) if len(f) > 8 and f[8] else b""
        ack = int(f[9]) if len(f) > 9 and f[9] else None
        pkts.append(Packet(float(f[0]), f[1], int(f[2]), f[3], int(f[4]), int(f[5], 16),
                           int(f[6] or 0), int(f[7] or 0), payload, ack))
    return pkts


def _read_pcap(path):
    """Minimal pcap (not pcapng) reader: Ethernet/IPv4/TCP only."""
    pkts = []
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return pkts
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    nano = magic in (0xA1B23C4D, 0x4D3CB2A1)
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    off = 24
    first_seq = {}
    while off + 16 <= len(data):
        ts, tfrac, incl, _orig = struct.unpack(endian + "IIII", data[off:off + 16])
        frame = data[off + 16:off + 16 + incl]
        off += 16 + incl
        t = ts + tfrac / (1e9 if nano else 1e6)
        if linktype == 1:
            if len(frame) < 14 or struct.unpack("!H", frame[12:14])[0] != 0x0800:
                continue
            ip = frame[14:]
        elif linktype == 113:  # linux cooked
            ip = frame[16:]
        else:
            continue
        if len(ip) < 20 or ip[9] != 6:
            continue
        ihl = (ip[0] & 0x0F) * 4
        tot = struct.unpack("!H", ip[2:4])[0]
        tcp = ip[ihl:tot]
        src = ".".join(map(str, ip[12:16]))
        dst = ".".join(map(str, ip[16:20]))
        sport, dport, seq, ack = struct.unpack("!HHII", tcp[:12])
        doff = (tcp[12] >> 4) * 4
        flags = tcp[13] | ((tcp[12] & 1) << 8)
        payload = tcp[doff:]
        k = (src, sport, dst, dport)
        if flags & SYN or k not in first_seq:
            first_seq[k] = seq
        back = first_seq.get((dst, dport, src, sport))
        pkts.append(Packet(t, src, sport, dst, dport, flags, len(payload),
                           (seq - first_seq[k]) & 0xFFFFFFFF, payload,
                           (ack - back) & 0xFFFFFFFF if flags & ACK and back is not None
                           else None))
    return pkts


@dataclass
class WireConn:
    """One TCP connection seen from the backend (local) side."""
    local: tuple          # (addr, port)
    remote: tuple
    role: str = "unknown"  # server (peer sent the SYN) | client | unknown
    syn_t: float | None = None
    synack_t: float | None = None
    first_t: float | None = None
    last_t: float | None = None
    local_fin_t: float | None = None
    peer_fin_t: float | None = None
    # each FIN's own sequence number and what it acknowledged (see fins_crossed)
    local_fin_seq: int | None = None
    local_fin_ack: int | None = None
    peer_fin_seq: int | None = None
    peer_fin_ack: int | None = None
    # crossed FINs: the closer the trace names, which the judge then takes (see compare)
    taken_closer: str | None = None
    local_rsts: list = field(default_factory=list)
    peer_rsts: list = field(default_factory=list)
    segments: list = field(default_factory=list)  # {"t","dir","len","head","seq"}
    capture_gaps: int = 0  # payload the capture missed (sequence holes), both directions
    exit_times: tuple = ()  # when the harness killed the local process (see ``cause``)
    shutdown_times: tuple = ()  # when the harness told the local server to stop (``cause``)
    _seen: set = field(default_factory=set, repr=False)
    _next: dict = field(default_factory=dict, repr=False)

    # ---- derived ----
    @property
    def key(self):
        return (self.local[0], self.local[1], self.remote[0], self.remote[1])

    @property
    def local_rst_t(self):
        return self.local_rsts[0] if self.local_rsts else None

    @property
    def peer_rst_t(self):
        return self.peer_rsts[0] if self.peer_rsts else None

    @property
    def first_close(self):
        """(time, initiator 'local'|'peer', how 'fin'|'rst') of the first FIN or RST."""
        c = [(t, who, how) for t, who, how in ((self.local_fin_t, "local", "fin"),
                                                (self.peer_fin_t, "peer", "fin"),
                                                (self.local_rst_t, "local", "rst"),
                                                (self.peer_rst_t, "peer", "rst"))
             if t is not None]
        if self.taken_closer is not None and self.fins_crossed:
            c = [x for x in c if x[1] == self.taken_closer and x[2] == "fin"]
        return min(c) if c else None

    @property
    def fins_crossed(self):
        """Both sides sent a FIN before the other's reached them (the second FIN does not
        acknowledge the first), and no RST came before them: each closed on its own (a response
        with Connection: close and a client closing as it reads it), microseconds apart, and
        which FIN the capture shows first says only which was on the wire first. Either side
        may be named the closer."""
        if self.local_fin_t is None or self.peer_fin_t is None:
            return False
        first, second = sorted(((self.local_fin_t, self.local_fin_seq, self.local_fin_ack),
                                (self.peer_fin_t, self.peer_fin_seq, self.peer_fin_ack)),
                               key=lambda fin: fin[0])
        if any(t < second[0] for t in self.local_rsts + self.peer_rsts):
            return False
        return _crossed(first[0], first[1], second[0], second[2])

    @property
    def initiator(self):
        fc = self.first_close
        return fc[1] if fc else None

    @property
    def how(self):
        fc = self.first_close
        return fc[2] if fc else None

    @property
    def refused(self):
        """A SYN answered by RST (nothing listening): never a socket, so closetrace reports
        it as an ``event`` (reset_sent, no socket), not as a ``conn``."""
        return self.syn_t is not None and self.synack_t is None and \
            bool(self.local_rsts if self.role == "server" else self.peer_rsts) and \
            not self.segments

    @property
    def closed(self):
        return self.first_close is not None

    def _msgs(self, direction, rx):
        return [s for s in self.segments if s["dir"] == direction and rx(s["head"])]

    @property
    def requests(self):
        d = "in" if self.role != "client" else "out"
        return self._msgs(d, lambda h: _REQ_RX.match(h.encode("latin-1")) is not None)

    @property
    def responses(self):
        d = "out" if self.role != "client" else "in"
        return self._msgs(d, lambda h: h.startswith("HTTP/"))

    @property
    def req_dir(self):
        return "in" if self.role != "client" else "out"

    def messages(self, direction):
        """The HTTP/1.x messages of one direction, parsed from the reassembled stream (so
        pipelined requests in one segment count one each): dicts with ``t`` (its first
        segment), ``end_t`` (its last), ``line``, ``method`` or ``status``, ``headers``
        (lower-case names), ``head_len`` (its bytes before the blank line) and ``close`` (it
        asks to end the connection: ``Connection: close``, or HTTP/1.0 without keep-alive).
        After a capture gap the parser waits for a segment that starts a message."""
        cache = self.__dict__.setdefault("_msgs_cache", {})
        if direction not in cache:
            segs = [x for x in self.segments if x["dir"] == direction]
            cache[direction] = _parse_messages(segs, direction == self.req_dir)
        return cache[direction]

    def exchanges(self):
        """(request, response|None) pairs: HTTP/1.1 answers requests in order, so the n-th
        final (non-1xx) response belongs to the n-th request.  101 Switching Protocols is
        final, and the last: what follows is another protocol (WebSocket frames)."""
        reqs = self.messages(self.req_dir)
        resps = [m for m in self.messages("out" if self.req_dir == "in" else "in")
                 if m.get("status") == 101 or not (m.get("status") or 0) // 100 == 1]
        pairs = []
        for i, q in enumerate(reqs):
            r = resps[i] if i < len(resps) else None
            pairs.append((q, r))
            if r is not None and r.get("status") == 101:
                break
        return pairs

    def request_outcomes(self):
        """Requests in order, each with an outcome like the trace's: completed |
        unanswered_at_close | unread_at_close | after_local_close | after_peer_close |
        in_flight, its ``status``, ``idle_before`` (s since the previous payload, or since
        the handshake for the first) and ``close_asked`` ("request" | "response" | None).

        unread_at_close: this host's first close was an RST (no FIN of its own before it)
        with the request unanswered: Linux resets a socket closed with unread bytes
        (TCP_ABORT_ON_CLOSE), so the request was never read.  after_local_close also for a
        request just before this host's FIN on the wire that the FIN does not acknowledge:
        it crossed the FIN (the socket was closed before it came)."""
        fc = self.first_close
        unread_rst = fc is not None and fc[1] == "local" and fc[2] == "rst" and \
            self.role != "client"
        # A response started after the requesting side closed, which that side answered with an
        # RST, answered no one (the trace format's `unanswered_at_close`).
        fin_t, rst_t = ((self.peer_fin_t, self.peer_rst_t) if self.role != "client"
                        else (self.local_fin_t, self.local_rst_t))
        requester_close = min(t for t in (fin_t, rst_t, math.inf) if t is not None)

        def crossed_local_fin(q):
            # On the wire just before this host's FIN, which does not acknowledge it: the close
            # held the socket as the request came, so the socket was closed before it (and then
            # answered it with a reset), as for crossed FINs.
            return fc is not None and fc[1:] == ("local", "fin") and \
                _crossed(q["t"], q["seq"], fc[0], self.local_fin_ack)
        out = []
        for q, r in self.exchanges():
            if r is not None and requester_close < r["t"] and rst_t is not None and \
                    rst_t >= r["t"]:
                r = None
            prev = [x["t"] for x in self.segments if x["t"] < q["t"]]
            since = max(prev) if prev else (self.synack_t or self.syn_t)
            o = {"t": q["t"], "line": q["line"], "method": q.get("method"),
                 "target": q.get("target"), "response_t": r["t"] if r else None,
                 "status": r.get("status") if r else None,
                 "idle_before": q["t"] - since if since is not None else None,
                 "close_asked": "request" if q["close"] else
                 ("response" if r is not None and r["close"] else None),
                 "user_agent": q["headers"].get("user-agent")}
            if r is not None:
                o["outcome"] = "completed"
            elif fc and (q["t"] >= fc[0] or crossed_local_fin(q)) and fc[1] == "local" and \
                    self.role != "client":
                o["outcome"] = "after_local_close"
            elif fc and q["t"] >= fc[0] and fc[1] == "peer" and self.role == "client":
                o["outcome"] = "after_peer_close"
            elif fc and unread_rst:
                o["outcome"] = "unread_at_close"
            elif fc:
                o["outcome"] = "unanswered_at_close"
            else:
                o["outcome"] = "in_flight"
            out.append(o)
        return out

    @property
    def verdict(self):
        """The closetrace verdict this connection should get, judged from the wire."""
        fc = self.first_close
        if fc is None:
            return "open"
        if self.refused:
            return "refused"
        reqs = self.request_outcomes()
        outs = [o["outcome"] for o in reqs]
        _, who, how = fc
        if who == "local":
            if "after_local_close" in outs:
                return "local_close_race"
            # an unread request that came after an idle gap: the timer closed the socket
            # with the request waiting in it (issue 14)
            if any(o["outcome"] == "unread_at_close" and o["idle_before"] is not None
                   and o["idle_before"] >= RACE_IDLE_MIN_S for o in reqs):
                return "local_close_race"
            if "unanswered_at_close" in outs or "unread_at_close" in outs:
                return "local_reset_inflight"
            return "local_reset" if how == "rst" else "local_idle_close"
        if "after_peer_close" in outs:
            return "peer_close_race"
        if "unanswered_at_close" in outs:
            return "peer_close_inflight"
        return "peer_reset" if how == "rst" else "peer_idle_close"

    @property
    def health_check(self):
        """The health checker's name if a request came from one (User-Agent prefix)."""
        for q in self.messages(self.req_dir):
            ua = q["headers"].get("user-agent") or ""
            for name in HEALTH_CHECKERS:
                if ua.startswith(name):
                    return name
        return None

    @property
    def keep_alive_timeout_s(self):
        """The idle timeout, in seconds, that the latest response announcing one announced
        (``Keep-Alive: timeout=N``); None when none did."""
        response_dir = "out" if self.req_dir == "in" else "in"
        announced = None
        for m in self.messages(response_dir):
            for parameter in m["headers"].get("keep-alive", "").split(","):
                name, _, value = parameter.partition("=")
                if name.strip().lower() == "timeout" and value.strip().isdigit():
                    announced = int(value.strip())
        return announced

    @property
    def idle_since_exchange(self):
        """Seconds from the end of the last completed exchange (the response's last segment;
        the handshake without one) to the first FIN/RST: the trace's new ``idle_ms``."""
        fc = self.first_close
        if fc is None:
            return None
        ends = [r["end_t"] for q, r in self.exchanges() if r is not None and r["t"] <= fc[0]]
        last = max(ends) if ends else (self.synack_t or self.syn_t or self.first_t)
        return fc[0] - last if last is not None else None

    @property
    def cause(self):
        """(causes, asked_by): the set of ``close.cause`` values the wire allows for the first
        close (None: the wire cannot tell) and ``close.asked_by`` (None where not asked).

        The wire cannot see a process exit: a harness that killed the process passes the
        time in ``exit_times`` (read_capture(local_exits=...)); a local close within
        0.3 s after it is ``process_exit``.  Nor a shutdown: a harness that told the server to
        close its idle connections at once (Node's server.close()) passes the time in
        ``shutdown_times``, and the scenario leaves them idle for times far apart; a local
        close of an idle (>= 0.5 s) connection within 0.3 s after it is ``closed_together``."""
        fc = self.first_close
        if fc is None or self.refused:
            return None, None
        t, who, how = fc
        reqs = self.request_outcomes()
        outs = {o["outcome"] for o in reqs}
        closer_requested = (who == "local") == (self.role == "client")
        if who == "local" and any(0 <= t - e <= 0.3 for e in self.exit_times):
            # an unread request at the exit is both
            return ({"process_exit", "unread_request"} if "unread_at_close" in outs
                    else {"process_exit"}), None
        if not reqs:
            return {"probe"}, None
        if reqs[-1]["status"] == 101:
            return {"upgraded"}, None
        if "unread_at_close" in outs:
            return {"unread_request"}, None
        if who == "peer" and how == "rst" and self.role == "client" and \
                self.peer_fin_t is None and "unanswered_at_close" in outs:
            late = [o for o in reqs if o["outcome"] == "unanswered_at_close"]
            if late[-1]["idle_before"] is not None and \
                    late[-1]["idle_before"] >= IDLE_TIMER_MIN_S:
                return {"forgotten"}, None
        if "unanswered_at_close" in outs:
            return {"in_flight"}, None
        done = [o for o in reqs if o["outcome"] == "completed"]
        if done and done[-1]["close_asked"] == "request":
            return {"connection_close"}, "peer" if self.role != "client" else "local"
        if done and done[-1]["close_asked"] == "response":
            return {"keepalive_ended"}, "local" if self.role != "client" else "peer"
        idle = self.idle_since_exchange
        if idle is None:
            return None, None
        if who == "local" and idle >= RACE_IDLE_MIN_S and \
                any(0 <= t - s <= 0.3 for s in self.shutdown_times):
            return {"closed_together"}, None
        # closed as it opened, before any request: a connection limit
        if who == "local" and not done and idle < IDLE_TIMER_MIN_S:
            return {"refused"}, None
        if idle >= IDLE_TIMER_MIN_S:
            return {"idle_timer"}, None
        if closer_requested and idle < AFTER_USE_MAX_S:
            return {"closed_after_use"}, None
        return None, None

    @property
    def idle_before_close(self):
        """Seconds from the last payload (either direction) to the first FIN/RST."""
        fc = self.first_close
        if fc is None:
            return None
        before = [s["t"] for s in self.segments if s["t"] <= fc[0]]
        last = max(before) if before else self.syn_t or self.first_t
        return fc[0] - last if last is not None else None

    def to_dict(self):
        fc = self.first_close
        causes, asked_by = self.cause
        return {"local": {"addr": self.local[0], "port": self.local[1]},
                "remote": {"addr": self.remote[0], "port": self.remote[1]},
                "role": self.role, "syn_t": self.syn_t, "synack_t": self.synack_t,
                "refused": self.refused, "first_t": self.first_t,
                "last_t": self.last_t,
                "close": {"initiator": fc[1] if fc else None, "how": fc[2] if fc else None,
                          "t": fc[0] if fc else None, "local_fin_t": self.local_fin_t,
                          "peer_fin_t": self.peer_fin_t, "local_rsts": self.local_rsts,
                          "peer_rsts": self.peer_rsts,
                          "idle_s": self.idle_before_close},
                "requests": self.request_outcomes(), "capture_gaps": self.capture_gaps,
                "segments": [{k: v for k, v in x.items() if k != "data"}
                             for x in self.segments],
                "verdict": self.verdict, "cause": sorted(causes) if causes else None,
                "asked_by": asked_by, "health_check": self.health_check,
                "idle_since_exchange_s": self.idle_since_exchange}

    def describe(self, max_segments=24):
        fc = self.first_close
        causes, asked_by = self.cause
        lines = [f"wire {self.local[0]}:{self.local[1]} <-> {self.remote[0]}:{self.remote[1]} "
                 f"role={self.role} verdict={self.verdict}"
                 + (f" cause={'|'.join(sorted(causes))}" if causes else "")
                 + (f" asked_by={asked_by}" if asked_by else "")
                 + (f" health_check={self.health_check}" if self.health_check else "")
                 + (f" capture_gaps={self.capture_gaps}" if self.capture_gaps else "")]
        if fc:
            idle = self.idle_since_exchange
            lines.append(f"  first close: {fc[1]} {fc[2]} at {fc[0]:.6f}"
                         f" (idle {self.idle_before_close:.3f}s, since the last exchange "
                         + (f"{idle:.3f}s)" if idle is not None else "-)"))
        for o in self.request_outcomes():
            lines.append(f"  request {o['line'][:50]!r} {o['outcome']} status={o['status']}"
                         + (f" idle_before={o['idle_before']:.3f}s"
                            if o["idle_before"] is not None else "")
                         + (f" close_asked={o['close_asked']}" if o["close_asked"] else ""))
        segs = self.segments
        if max_segments is not None and len(segs) > max_segments:
            half = max_segments // 2
            lines.append(f"  ({len(segs)} payload segments, showing first and last {half})")
            segs = segs[:half] + [None] + segs[-half:]
        for s in segs:
            if s is None:
                lines.append("  ...")
                continue
            lines.append(f"  {s['t']:.6f} {s['dir']:>3} len={s['len']} "
                         f"{s['head'].splitlines()[0][:60] if s['head'] else ''!r}")
        for t in self.local_rsts:
            lines.append(f"  {t:.6f} out RST")
        for t in self.peer_rsts:
            lines.append(f"  {t:.6f}  in RST")
        return "\n".join(lines)


def _parse_head(head: bytes, is_request: bool):
    lines = head.decode("latin-1").split("\r\n")
    m = {"line": lines[0], "headers": {}, "head_len": len(head)}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        m["headers"][k.strip().lower()] = v.strip()
    parts = lines[0].split(" ")
    version = parts[0] if not is_request else (parts[2] if len(parts) > 2 else "")
    if is_request:
        m["method"], m["target"] = parts[0], parts[1] if len(parts) > 1 else None
    else:
        m["status"] = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    conn = {x.strip().lower() for x in m["headers"].get("connection", "").split(",")}
    m["close"] = "close" in conn or (version == "HTTP/1.0" and "keep-alive" not in conn)
    return m


def _crossed(first_t, first_seq, second_t, second_ack):
    """The other side's segment sent at `second_t`, acknowledging `second_ack`, crossed the one
    sent at `first_t` with sequence number `first_seq`: sent soon after it (CROSS_WITHIN_S)
    without acknowledging it, so its sender had not seen it."""
    return first_seq is not None and second_ack is not None and \
        0 <= second_t - first_t <= CROSS_WITHIN_S and second_ack <= first_seq


def _parse_messages(segs, is_request):
    """HTTP/1.x messages in one direction's segments (see WireConn.messages)."""
    msgs = []
    head, head_t, head_seq = b"", None, None  # a head still being collected
    body_left = 0               # Content-Length bytes still to come
    chunk = None                # bytes of a chunked body still being parsed
    for s in segs:
        data = s["data"]
        if s.get("gap"):
            head, head_t, body_left, chunk = b"", None, 0, None
        while data:
            if body_left:
                n = min(body_left, len(data))
                body_left -= n
                data = data[n:]
                if not body_left:
                    msgs[-1]["end_t"] = s["t"]
                continue
            if chunk is not None:
                chunk += data
                data = b""
                while True:  # size line, chunk, CRLF; a 0 chunk (no trailers) ends it
                    i = chunk.find(b"\r\n")
                    if i < 0:
                        break
                    try:
                        size = int(chunk[:i].split(b";")[0], 16)
                    except ValueError:
                        chunk = None
                        break
                    if len(chunk) < i + 2 + size + 2:
                        break
                    chunk = chunk[i + 2 + size + 2:]
                    if size == 0:
                        msgs[-1]["end_t"] = s["t"]
                        data, chunk = chunk, None
                        break
                continue
            if not head and not _HEAD_START_RX.match(data):
                break  # not a message start (body until close, or lost bytes): skip
            if not head:
                head_t, head_seq = s["t"], s["seq"]
            head += data
            data = b""
            i = head.find(b"\r\n\r\n")
            if i < 0:
                break
            data, head = head[i + 4:], head[:i]
            m = _parse_head(head, is_request)
            head = b""
            m["t"], m["end_t"], m["seq"] = head_t, s["t"], head_seq
            msgs.append(m)
            h = m["headers"]
            st = m.get("status")
            if not is_request and (st is None or st // 100 == 1 or st in (204, 304)):
                continue
            if "chunked" in h.get("transfer-encoding", "").lower():
                chunk = b""
            elif h.get("content-length", "").isdigit():
                body_left = int(h["content-length"])
            elif not is_request:
                break  # a body until the close: the rest is body
    return msgs


def conns_from_packets(pkts, local_addr, local_ports=None) -> list[WireConn]:
    """Cut packets into connections from local_addr's point of view.  A SYN on a 4-tuple
    whose previous connection is closed starts a new connection."""
    active: dict = {}
    done: list[WireConn] = []
    for p in pkts:
        if p.src == local_addr:
            out, lkey, rkey = True, (p.src, p.sport), (p.dst, p.dport)
        elif p.dst == local_addr:
            out, lkey, rkey = False, (p.dst, p.dport), (p.src, p.sport)
        else:
            continue
        if local_ports is not None and lkey[1] not in local_ports and rkey[1] not in local_ports:
            continue
        k = lkey + rkey
        c = active.get(k)
        syn_only = (p.flags & SYN) and not (p.flags & ACK)
        if c is not None and syn_only and (c.closed or c.last_t is not None
                                           and p.t - c.last_t > 60):
            done.append(c)
            c = None
        if c is None:
            c = WireConn(lkey, rkey)
            active[k] = c
        if c.first_t is None:
            c.first_t = p.t
        c.last_t = p.t
        if syn_only and c.syn_t is None:
            c.syn_t = p.t
            c.role = "client" if out else "server"
        if (p.flags & SYN) and (p.flags & ACK) and c.synack_t is None:
            c.synack_t = p.t
        if p.flags & FIN:
            if out and c.local_fin_t is None:
                c.local_fin_t = p.t
                c.local_fin_seq, c.local_fin_ack = p.seq + p.length, p.ack
            if not out and c.peer_fin_t is None:
                c.peer_fin_t = p.t
                c.peer_fin_seq, c.peer_fin_ack = p.seq + p.length, p.ack
        if p.flags & RST:
            (c.local_rsts if out else c.peer_rsts).append(p.t)
        if p.length > 0:
            sig = ("o" if out else "i", p.seq)
            if sig not in c._seen:  # drop retransmissions
                c._seen.add(sig)
                nxt = c._next.get(sig[0])
                gap = nxt is not None and p.seq > nxt
                if gap:
                    c.capture_gaps += 1
                c._next[sig[0]] = max(nxt or 0, p.seq + p.length)
                # "data": the whole payload, for the HTTP message parser (pipelining,
                # headers past the first 100 bytes); "gap": bytes before it were lost
                c.segments.append({"t": p.t, "dir": "out" if out else "in", "len": p.length,
                                   "seq": p.seq, "gap": gap, "data": p.payload,
                                   "head": p.payload[:100].decode("latin-1")})
    done.extend(active.values())
    done.sort(key=lambda c: c.first_t or 0)
    return done


def read_capture(path, local_addr, local_ports=None, local_exits=(),
                 local_shutdowns=()) -> list[WireConn]:
    """local_exits: wall times the harness killed the local process; local_shutdowns: when it
    told the local server to stop (see WireConn.cause)."""
    conns = conns_from_packets(read_packets(path), local_addr, local_ports)
    for c in conns:
        c.exit_times = tuple(local_exits)
        c.shutdown_times = tuple(local_shutdowns)
    return conns


# ---------------------------------------------------------------------------------------
# traces and the comparison

def load_trace(path) -> dict:
    """Read a closetrace JSONL trace: {"header", "conns", "events", "summary",
    "truncated"}.  A truncated last line is ignored (and reported)."""
    res = {"header": None, "conns": [], "events": [], "summary": None, "truncated": False}
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    if lines and lines[-1] != b"":
        res["truncated"] = True
    for ln in lines[:-1]:
        if not ln.strip():
            continue
        o = json.loads(ln)
        t = o.get("type")
        if t == "header":
            res["header"] = o
        elif t == "conn":
            for end in ("local", "remote"):  # a dual-stack socket's view of IPv4 (Apache, Go)
                a = (o.get(end) or {}).get("addr")
                if isinstance(a, str) and a.startswith("::ffff:") and "." in a:
                    o[end]["addr"] = a[len("::ffff:"):]
            res["conns"].append(o)
        elif t == "event":
            res["events"].append(o)
        elif t == "summary":
            res["summary"] = o
    return res


def _tkey(c):
    return (c["local"]["addr"], c["local"]["port"], c["remote"]["addr"], c["remote"]["port"])


def _twall(ns, off):
    return None if ns is None or off is None else (ns + off) / 1e9


def describe_trace_conn(c, mono_to_wall_ns=None):
    cl = c.get("close") or {}
    lines = [f"trace {c['local']['addr']}:{c['local']['port']} <-> "
             f"{c['remote']['addr']}:{c['remote']['port']} id={c.get('id')} "
             f"role={c.get('role')} verdict={c.get('verdict')}",
             f"  close: initiator={cl.get('initiator')} how={cl.get('how')} "
             f"idle_ms={cl.get('idle_ms')} rst_reason={cl.get('rst_reason')} "
             f"cause={cl.get('cause')} asked_by={cl.get('asked_by')} "
             f"unread_bytes={cl.get('unread_bytes')}",
             f"  comm={c.get('comm')} health_check={c.get('health_check')} "
             f"requests_omitted={c.get('requests_omitted')}"]
    for k in ("established_ns", "closed_ns"):
        lines.append(f"  {k}: {c.get(k)} wall={_twall(c.get(k), mono_to_wall_ns)}")
    for k in ("local_fin_ns", "peer_fin_ns", "local_rst_ns", "peer_rst_ns"):
        if cl.get(k) is not None:
            lines.append(f"  {k}: {cl[k]} wall={_twall(cl[k], mono_to_wall_ns)}")
    for r in c.get("requests") or []:
        lines.append(f"  request {r.get('method')} {r.get('target')} status={r.get('status')} "
                     f"outcome={r.get('outcome')} idle_before_ms={r.get('idle_before_ms')} "
                     f"close_asked={r.get('close_asked')} "
                     f"wall={_twall(r.get('request_ns'), mono_to_wall_ns)}")
    return "\n".join(lines)


def _outcome_disagreement(t, w):
    """The trace's requests against the wire's: the same number (the trace's listed plus
    ``requests_omitted``), the same requests not ``completed`` (outcome, method, target) in
    order, and, where the trace lists every request, each one's outcome, status and
    ``close_asked``.  Returns a description or None."""
    wr = w.request_outcomes()
    tr = t.get("requests") or []
    n = len(tr) + (t.get("requests_omitted") or 0)
    if n != len(wr):
        return f"requests: trace {n} wire {len(wr)}"
    key = lambda o: (o.get("outcome"), o.get("method"), o.get("target"))  # noqa: E731
    tb = [key(o) for o in tr if o.get("outcome") != "completed"]
    wb = [key(o) for o in wr if o["outcome"] != "completed"]
    if tb != wb:
        return f"requests not completed: trace {tb} wire {wb}"
    if len(tr) == len(wr):
        for a, b in zip(tr, wr):
            ta = (a.get("outcome"), a.get("status"), a.get("close_asked"))
            wa = (b["outcome"], b["status"], b["close_asked"])
            if ta != wa:
                return (f"request {b['line'][:40]!r}: trace (outcome, status, close_asked)="
                        f"{ta} wire {wa}")
    return None


def compare(trace_conns, wire_conns, mono_to_wall_ns=None, local_addr=None,
            trace_end_wall=None, verbose=True, check_verdicts=False, check_causes=False,
            check_outcomes=False, check_health=False, out=print):
    """Match closetrace ``conn`` records to wire connections by 4-tuple (nearest in time when
    a 4-tuple was reused) and return a list of disagreements, each a dict with ``kind``
    (``missing_on_wire`` | ``missing_in_trace`` | ``initiator`` | ``how`` | ``verdict`` |
    ``cause`` | ``asked_by`` | ``outcomes`` | ``health_check``), ``key``, ``trace`` and
    ``wire``.

    check_causes: ``close.cause`` must be one the wire allows (WireConn.cause; skipped where
    the wire cannot tell) and ``close.asked_by`` the wire's.  check_outcomes: see
    _outcome_disagreement.  check_health: ``health_check`` must be the wire's.

    Only trace records whose local address is local_addr (default: the wire's local
    address) and whose remote address differs from it (loopback traffic never reaches the
    captured interface) are compared.  A trace connection still ``open`` at the end whose
    wire close came after trace_end_wall is not a disagreement.  With verbose, both views
    are printed for every disagreement."""
    if local_addr is None and wire_conns:
        local_addr = wire_conns[0].local[0]
    wall = lambda ns: _twall(ns, mono_to_wall_ns)  # noqa: E731
    tc = [c for c in trace_conns
          if (local_addr is None or c["local"]["addr"] == local_addr)
          and c["remote"]["addr"] != c["local"]["addr"]]
    by_key: dict = {}
    for w in wire_conns:
        by_key.setdefault(w.key, []).append(w)
    used = set()
    disagreements = []

    def report(kind, key, t, w, detail=""):
        d = {"kind": kind, "key": key, "detail": detail,
             "trace": t, "wire": w.to_dict() if w is not None else None}
        disagreements.append(d)
        if verbose:
            out(f"--- disagreement: {kind} {key} {detail}")
            out(describe_trace_conn(t, mono_to_wall_ns) if t is not None else "trace: (none)")
            out(w.describe() if w is not None else "wire: (none)")

    for t in tc:
        key = _tkey(t)
        cands = [w for w in by_key.get(key, []) if id(w) not in used]
        if not cands:
            report("missing_on_wire", key, t, None)
            continue
        tt = wall(t.get("established_ns")) or wall(t.get("closed_ns"))
        if tt is not None and len(cands) > 1:
            w = min(cands, key=lambda w: abs((w.syn_t or w.first_t) - tt))
        else:
            w = cands[0]
        used.add(id(w))
        cl = t.get("close") or {}
        t_init, t_how = cl.get("initiator"), cl.get("how")
        if w.fins_crossed and t_how == "fin" and t_init in ("local", "peer"):
            w = dataclasses.replace(w, taken_closer=t_init)
        if t_how is None and t.get("verdict") == "open":
            if not w.closed or (trace_end_wall is not None and w.first_close[0] >= trace_end_wall):
                continue
        if (t_init or None) != w.initiator and not (t_init == "unknown" and w.initiator is None):
            report("initiator", key, t, w, f"trace={t_init} wire={w.initiator}")
        elif (t_how or None) != w.how:
            report("how", key, t, w, f"trace={t_how} wire={w.how}")
        elif check_verdicts and t.get("verdict") != w.verdict:
            report("verdict", key, t, w, f"trace={t.get('verdict')} wire={w.verdict}")
        if check_causes and t_how is not None:
            causes, asked_by = w.cause
            if causes is not None and cl.get("cause") not in causes:
                report("cause", key, t, w, f"trace={cl.get('cause')} wire={sorted(causes)}")
            elif causes is not None and (cl.get("asked_by") or None) != asked_by:
                report("asked_by", key, t, w, f"trace={cl.get('asked_by')} wire={asked_by}")
        if check_outcomes:
            why = _outcome_disagreement(t, w)
            if why:
                report("outcomes", key, t, w, why)
        if check_health and (t.get("health_check") or None) != w.health_check:
            report("health_check", key, t, w,
                   f"trace={t.get('health_check')} wire={w.health_check}")
    for w in wire_conns:
        if id(w) in used or (local_addr is not None and w.local[0] != local_addr):
            continue
        if w.refused:  # no socket: closetrace writes an event, not a conn
            continue
        report("missing_in_trace", w.key, None, w)
    return disagreements


def compare_files(trace_path, pcap_path, local_addr, local_ports=None, local_exits=(),
                  local_shutdowns=(), **kw):
    tr = load_trace(trace_path)
    hdr, summ = tr["header"] or {}, tr["summary"] or {}
    off = hdr.get("mono_to_wall_ns")
    end = _twall(summ.get("end_ns"), off)
    wire = read_capture(pcap_path, local_addr, local_ports, local_exits, local_shutdowns)
    return compare(tr["conns"], wire, mono_to_wall_ns=off, local_addr=local_addr,
                   trace_end_wall=end, **kw)


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="print a capture's connections from the "
                                 "backend's view, or compare it with a trace")
    ap.add_argument("pcap")
    ap.add_argument("--local", default="10.201.0.6")
    ap.add_argument("--port", type=int, action="append")
    ap.add_argument("--trace")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.trace:
        ds = compare_files(a.trace, a.pcap, a.local, set(a.port) if a.port else None)
        print(f"{len(ds)} disagreement(s)")
        raise SystemExit(1 if ds else 0)
    for c in read_capture(a.pcap, a.local, set(a.port) if a.port else None):
        print(json.dumps(c.to_dict()) if a.json else c.describe())
