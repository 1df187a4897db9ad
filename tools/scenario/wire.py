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

import json
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

    def start(self, timeout=10.0):
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
            "-e", "tcp.payload"]
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
        pkts.append(Packet(float(f[0]), f[1], int(f[2]), f[3], int(f[4]), int(f[5], 16),
                           int(f[6] or 0), int(f[7] or 0), payload))
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
        sport, dport, seq = struct.unpack("!HHI", tcp[:8])
        doff = (tcp[12] >> 4) * 4
        flags = tcp[13] | ((tcp[12] & 1) << 8)
        payload = tcp[doff:]
        k = (src, sport, dst, dport)
        if flags & SYN or k not in first_seq:
            first_seq[k] = seq
        pkts.append(Packet(t, src, sport, dst, dport, flags, len(payload),
                           (seq - first_seq[k]) & 0xFFFFFFFF, payload))
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
    local_rsts: list = field(default_factory=list)
    peer_rsts: list = field(default_factory=list)
    segments: list = field(default_factory=list)  # {"t","dir","len","head","seq"}
    capture_gaps: int = 0  # payload the capture missed (sequence holes), both directions
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
        return min(c) if c else None

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

    def request_outcomes(self):
        """Requests in order, each with an outcome like the trace's: completed |
        unanswered_at_close | after_local_close | after_peer_close | in_flight.

        HTTP/1.1 without pipelining: a request is answered by the next payload in the other
        direction.  A request followed by another request with no response seen between
        them counts as completed (the capture lost the response; see ``capture_gaps``)."""
        req_dir = "in" if self.role != "client" else "out"
        fc = self.first_close
        out = []
        pending = None
        for s in self.segments:
            if s["dir"] == req_dir:
                if _REQ_RX.match(s["head"].encode("latin-1")):
                    if pending is not None:
                        pending.update(outcome="completed", response_t=None, status=None,
                                       response_unseen=True)
                    pending = {"t": s["t"], "line": s["head"].split("\r\n", 1)[0],
                               "response_t": None, "status": None}
                    out.append(pending)
            elif pending is not None:
                h = s["head"]
                pending["response_t"] = s["t"]
                pending["status"] = int(h[9:12]) if h.startswith("HTTP/") and \
                    h[9:12].isdigit() else None
                pending["outcome"] = "completed"
                pending = None
        for o in out:
            if "outcome" in o:
                continue
            if fc and o["t"] >= fc[0] and fc[1] == "local" and self.role != "client":
                o["outcome"] = "after_local_close"
            elif fc and o["t"] >= fc[0] and fc[1] == "peer" and self.role == "client":
                o["outcome"] = "after_peer_close"
            elif fc:
                o["outcome"] = "unanswered_at_close"
            else:
                o["outcome"] = "in_flight"
        return out

    @property
    def verdict(self):
        """The closetrace verdict this connection should get, judged from the wire."""
        fc = self.first_close
        if fc is None:
            return "open"
        if self.refused:
            return "refused"
        outs = [o["outcome"] for o in self.request_outcomes()]
        _, who, how = fc
        if who == "local":
            if "after_local_close" in outs:
                return "local_close_race"
            if "unanswered_at_close" in outs:
                return "local_reset_inflight"
            return "local_reset" if how == "rst" else "local_idle_close"
        if "after_peer_close" in outs:
            return "peer_close_race"
        if "unanswered_at_close" in outs:
            return "peer_close_inflight"
        return "peer_reset" if how == "rst" else "peer_idle_close"

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
                "segments": self.segments, "verdict": self.verdict}

    def describe(self, max_segments=24):
        fc = self.first_close
        lines = [f"wire {self.local[0]}:{self.local[1]} <-> {self.remote[0]}:{self.remote[1]} "
                 f"role={self.role} verdict={self.verdict}"
                 + (f" capture_gaps={self.capture_gaps}" if self.capture_gaps else "")]
        if fc:
            lines.append(f"  first close: {fc[1]} {fc[2]} at {fc[0]:.6f}"
                         f" (idle {self.idle_before_close:.3f}s)")
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
            if not out and c.peer_fin_t is None:
                c.peer_fin_t = p.t
        if p.flags & RST:
            (c.local_rsts if out else c.peer_rsts).append(p.t)
        if p.length > 0:
            sig = ("o" if out else "i", p.seq)
            if sig not in c._seen:  # drop retransmissions
                c._seen.add(sig)
                nxt = c._next.get(sig[0])
                if nxt is not None and p.seq > nxt:
                    c.capture_gaps += 1
                c._next[sig[0]] = max(nxt or 0, p.seq + p.length)
                c.segments.append({"t": p.t, "dir": "out" if out else "in", "len": p.length,
                                   "seq": p.seq,
                                   "head": p.payload[:100].decode("latin-1")})
    done.extend(active.values())
    done.sort(key=lambda c: c.first_t or 0)
    return done


def read_capture(path, local_addr, local_ports=None) -> list[WireConn]:
    return conns_from_packets(read_packets(path), local_addr, local_ports)


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
             f"idle_ms={cl.get('idle_ms')} rst_reason={cl.get('rst_reason')}"]
    for k in ("established_ns", "closed_ns"):
        lines.append(f"  {k}: {c.get(k)} wall={_twall(c.get(k), mono_to_wall_ns)}")
    for k in ("local_fin_ns", "peer_fin_ns", "local_rst_ns", "peer_rst_ns"):
        if cl.get(k) is not None:
            lines.append(f"  {k}: {cl[k]} wall={_twall(cl[k], mono_to_wall_ns)}")
    for r in c.get("requests") or []:
        lines.append(f"  request {r.get('method')} {r.get('target')} status={r.get('status')} "
                     f"outcome={r.get('outcome')} "
                     f"wall={_twall(r.get('request_ns'), mono_to_wall_ns)}")
    return "\n".join(lines)


def compare(trace_conns, wire_conns, mono_to_wall_ns=None, local_addr=None,
            trace_end_wall=None, verbose=True, check_verdicts=False, out=print):
    """Match closetrace ``conn`` records to wire connections by 4-tuple (nearest in time when
    a 4-tuple was reused) and return a list of disagreements, each a dict with ``kind``
    (``missing_on_wire`` | ``missing_in_trace`` | ``initiator`` | ``how`` | ``verdict``),
    ``key``, ``trace`` and ``wire``.

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
        if t_how is None and t.get("verdict") == "open":
            if not w.closed or (trace_end_wall is not None and w.first_close[0] >= trace_end_wall):
                continue
        if (t_init or None) != w.initiator and not (t_init == "unknown" and w.initiator is None):
            report("initiator", key, t, w, f"trace={t_init} wire={w.initiator}")
        elif (t_how or None) != w.how:
            report("how", key, t, w, f"trace={t_how} wire={w.how}")
        elif check_verdicts and t.get("verdict") != w.verdict:
            report("verdict", key, t, w, f"trace={t.get('verdict')} wire={w.verdict}")
    for w in wire_conns:
        if id(w) in used or (local_addr is not None and w.local[0] != local_addr):
            continue
        if w.refused:  # no socket: closetrace writes an event, not a conn
            continue
        report("missing_in_trace", w.key, None, w)
    return disagreements


def compare_files(trace_path, pcap_path, local_addr, local_ports=None, **kw):
    tr = load_trace(trace_path)
    hdr, summ = tr["header"] or {}, tr["summary"] or {}
    off = hdr.get("mono_to_wall_ns")
    end = _twall(summ.get("end_ns"), off)
    wire = read_capture(pcap_path, local_addr, local_ports)
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
