"""HTTP clients for the scenarios: a keep-alive client on raw sockets, and a wrk wrapper.

The client part of this file is also a script, run inside a namespace with
``ip netns exec NS python3 clients.py MODE ...``:

  serve     --host H --port P          interactive: one JSON command per stdin line, JSON
                                       events on stdout (used by KeepAliveClient)
  keepalive --host H --port P -n N --delay S [--method M --path X --timeout T]
                                       N requests on one connection, one JSON line each
  parallel  --host H --port P -c K [--path X --timeout T]
                                       K connections, one request each, at the same time

Per request it reports: ``sent`` (wall time the request was written), ``status`` or
``error`` (``reset`` | ``closed`` (EOF before a full response) | ``timeout`` |
``refused`` | ``write_error``), ``done``, ``local_port``.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import socket
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.abspath(__file__)


# ---------------------------------------------------------------------------------------
# the client itself (runs inside a namespace)

# What an AWS ALB sends to every target, one connection each (field notes: HTTP/1.1,
# Connection: close); Host is the target's address:port.
ALB_HEALTH_CHECK_HEADERS = {"Connection": "close", "User-Agent": "ELB-HealthChecker/2.0",
                            "Accept-Encoding": "gzip, compressed"}


def build_request(method, path, host, body=b"", headers=None) -> bytes:
    """One HTTP/1.1 request: Host, User-Agent (cts-client), Content-Length (left out for a
    bodiless GET/HEAD), then `headers` (a dict: a name already present is replaced in
    place, new ones are appended in order)."""
    if isinstance(body, str):
        body = body.encode()
    lines = {"Host": host, "User-Agent": "cts-client"}
    if body or method not in ("GET", "HEAD"):
        lines["Content-Length"] = str(len(body))
    for k, v in (headers or {}).items():
        lines[k] = v
    return (f"{method} {path} HTTP/1.1\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in lines.items()) + "\r\n").encode() + body


class Conn:
    def __init__(self, host, port, connect_timeout=3.0):
        self.host, self.port = host, port
        self.sock = None
        self.buf = b""
        self.connect_timeout = connect_timeout

    def connect(self):
        self.close()
        self.sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        return self.sock.getsockname()[1]

    def local_port(self):
        try:
            return self.sock.getsockname()[1] if self.sock else None
        except OSError:
            return None

    def close(self, rst=False):
        if self.sock is not None:
            if rst:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None

    def _peer_closed(self):
        """True if the idle connection already got the peer's FIN or RST."""
        import select
        try:
            r, _, _ = select.select([self.sock], [], [], 0)
            if not r:
                return False
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _recv(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        self.sock.settimeout(left)
        data = self.sock.recv(65536)
        if not data:
            raise EOFError()
        self.buf += data

    def _read_response(self, deadline):
        while b"\r\n\r\n" not in self.buf:
            self._recv(deadline)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
        if not m:
            raise ValueError(f"bad status line {lines[0]!r}")
        status = int(m.group(1))
        headers = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            n = int(headers["content-length"])
            while len(self.buf) < n:
                self._recv(deadline)
            body, self.buf = self.buf[:n], self.buf[n:]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    self._recv(deadline)
                size_line, self.buf = self.buf.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                while len(self.buf) < size + 2:
                    self._recv(deadline)
                body += self.buf[:size]
                self.buf = self.buf[size + 2:]
                if size == 0:
                    break
        else:
            body = b""
        return status, headers, body

    def request(self, method="GET", path="/", body=b"", timeout=5.0, on_sent=None,
                close_on_timeout=True, reconnect=True, headers=None, wait_server_close=0.0,
                reuse_closed=False):
        """Send one request; returns a result dict.  Reconnects first if there is no socket
        (or the previous one failed) when reconnect is true.  headers: extra or replaced
        header lines (see build_request).  wait_server_close: after a response with
        Connection: close, wait up to that many seconds for the server's FIN before closing
        (0: close at once, as most clients do; then client and server race to close).
        reuse_closed: send even on a connection the server already closed, as a busy balancer
        that has not read the FIN yet does."""
        res = {"method": method, "path": path, "sent": None, "status": None, "error": None,
               "done": None, "local_port": None, "reconnected": False}
        try:
            if self.sock is None:
                if not reconnect:
                    res["error"] = "no_connection"
                    return res
                self.connect()
                res["reconnected"] = True
        except ConnectionRefusedError:
            res["error"] = "refused"
            return res
        except OSError as e:
            res["error"] = f"connect:{e.__class__.__name__}"
            return res
        if not res["reconnected"] and not reuse_closed and self._peer_closed():
            # like any keep-alive client: do not reuse a connection the peer already closed
            res["stale_closed"] = True
            if not reconnect:
                res["error"] = "closed_before_send"
                return res
            try:
                self.connect()
                res["reconnected"] = True
            except OSError as e:
                res["error"] = f"connect:{e.__class__.__name__}"
                return res
        res["local_port"] = self.local_port()
        if isinstance(body, str):
            body = body.encode()
        req = build_request(method, path, self.host, body, headers)
        deadline = time.monotonic() + timeout
        try:
            res["sent"] = time.time()
            self.sock.sendall(req)
        except OSError as e:
            res["error"] = "write_error:" + e.__class__.__name__
            self.close()
            res["done"] = time.time()
            return res
        if on_sent:
            on_sent(res)
        try:
            status, rheaders, rbody = self._read_response(deadline)
            res["status"] = status
            res["body"] = rbody[:200].decode("latin-1")
            if rheaders.get("connection", "").lower() == "close":
                res["connection_close"] = True
                if wait_server_close:
                    res["server_close"] = self.wait_close(wait_server_close)["how"]
                self.close()
        except socket.timeout:
            res["error"] = "timeout"
            if close_on_timeout:
                self.close()  # the client gives up: FIN with the response pending
        except ConnectionResetError:
            res["error"] = "reset"
            self.close()
        except EOFError:
            res["error"] = "closed"
            self.close()
        except (OSError, ValueError) as e:
            res["error"] = e.__class__.__name__
            self.close()
        res["done"] = time.time()
        return res

    def wait_close(self, timeout=10.0):
        """Wait on an idle connection for the peer's FIN or RST."""
        if self.sock is None:
            return {"how": "no_connection", "t": time.time()}
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._recv(deadline)
        except EOFError:
            how = "fin"
        except ConnectionResetError:
            how = "rst"
        except socket.timeout:
            return {"how": "timeout", "t": time.time()}
        t = time.time()
        self.close()
        return {"how": how, "t": t}


def _emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def serve(host, port):
    """Interactive mode: commands as JSON lines on stdin.
    {"op":"connect"} {"op":"request","method":..,"path":..,"body":..,"timeout":..,"id":..}
    {"op":"wait_close","timeout":..} {"op":"close","rst":false} {"op":"quit"}"""
    c = Conn(host, port)
    _emit({"ev": "ready", "t": time.time()})
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        op, cid = cmd.get("op"), cmd.get("id")
        try:
            if op == "connect":
                _emit({"ev": "connected", "id": cid, "local_port": c.connect(), "t": time.time()})
            elif op == "request":
                r = c.request(cmd.get("method", "GET"), cmd.get("path", "/"),
                              cmd.get("body", ""), float(cmd.get("timeout", 5)),
                              on_sent=lambda res: _emit({"ev": "sent", "id": cid,
                                                         "t": res["sent"],
                                                         "local_port": res["local_port"]}),
                              close_on_timeout=cmd.get("close_on_timeout", True),
                              reconnect=cmd.get("reconnect", True),
                              wait_server_close=float(cmd.get("wait_server_close", 0)),
                              reuse_closed=cmd.get("reuse_closed", False))
                r.update(ev="result", id=cid)
                _emit(r)
            elif op == "wait_close":
                r = c.wait_close(float(cmd.get("timeout", 10)))
                r.update(ev="closed", id=cid)
                _emit(r)
            elif op == "close":
                c.close(rst=bool(cmd.get("rst")))
                _emit({"ev": "closed_by_us", "id": cid, "t": time.time()})
            elif op == "quit":
                break
            else:
                _emit({"ev": "error", "id": cid, "error": f"unknown op {op}"})
        except Exception as e:  # report, keep serving
            _emit({"ev": "error", "id": cid, "error": repr(e)})
    c.close()


def keepalive_batch(host, port, n, delay, method, path, timeout, body=""):
    c = Conn(host, port)
    out = []
    for i in range(n):
        if i:
            time.sleep(delay)
        r = c.request(method, path, body, timeout)
        r["i"] = i
        _emit(r)
        out.append(r)
    c.close()
    return out


def _at_once(conns, one):
    """one(i) for i in range(conns), each in a thread of its own, all at once; their results,
    each emitted as a JSON line, in order."""
    results = [None] * conns

    def run(i):
        results[i] = one(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        _emit(r)
    return results


def parallel_batch(host, port, conns, method, path, timeout, body=""):
    def one(i):
        c = Conn(host, port)
        r = c.request(method, path, body, timeout)
        r["i"] = i
        c.close()
        return r

    return _at_once(conns, one)


def healthcheck(host, port, interval, path, timeout, stop_file=None):
    """ALB-style health checks until stdin closes: every `interval` s a new connection, one
    `GET path` with ALB_HEALTH_CHECK_HEADERS; one JSON line per check."""
    import select
    hdrs = dict(ALB_HEALTH_CHECK_HEADERS, Host=f"{host}:{port}")
    i = 0
    while True:
        c = Conn(host, port)
        # waits for the target's FIN after its Connection: close response before closing,
        # so that the target always closes these connections first (deterministic tests)
        r = c.request("GET", path, timeout=timeout, headers=hdrs, wait_server_close=timeout)
        c.close()
        r["i"] = i
        _emit(r)
        i += 1
        # stdin readable = EOF (the harness closed it): stop
        if select.select([sys.stdin], [], [], interval)[0]:
            return


def pipeline(host, port, paths, timeout, hold):
    """All of `paths` as GET requests in ONE send (pipelined), then read as many responses,
    wait `hold` s, close.  One JSON line: sent, statuses, local_port."""
    c = Conn(host, port)
    res = {"paths": paths, "statuses": [], "error": None}
    try:
        res["local_port"] = c.connect()
        data = b"".join(build_request("GET", p, host) for p in paths)
        res["sent"] = time.time()
        c.sock.sendall(data)
        deadline = time.monotonic() + timeout
        for _ in paths:
            res["statuses"].append(c._read_response(deadline)[0])
        res["done"] = time.time()
        time.sleep(hold)
    except (OSError, EOFError, ValueError) as e:
        res["error"] = e.__class__.__name__
    c.close()
    res["closed"] = time.time()
    _emit(res)


def oneshot(host, port, path, timeout, hold):
    """curl-like: a new connection, one request (no Connection: close), close `hold` s after
    the response."""
    c = Conn(host, port)
    r = c.request("GET", path, timeout=timeout)
    time.sleep(hold)
    c.close()
    r["closed"] = time.time()
    _emit(r)


def websocket(host, port, path, conns, frames, gap, timeout, close_after, reuse=False):
    """`conns` WebSocket clients at once, each on its own connection: with `reuse` a plain GET
    first (the upgrade then comes on a connection kept alive, right after its answer), the
    upgrade (GET with Upgrade: websocket), then `frames` masked text frames `gap` s apart,
    each answered by a frame of the server's. Then silent: with `close_after` >= 0 the client
    closes that long after its last frame, else it waits (up to `timeout`) for the server to
    close. One JSON line each: local_port, status, answered frames, closed (its own close's
    time) or server_close ({"how", "t"}), error."""
    def one(i):
        c = Conn(host, port)
        res = {"i": i, "status": None, "answered": 0, "error": None}
        try:
            res["local_port"] = c.connect()
            if reuse:
                res["before"] = c.request("GET", "/before-upgrade", timeout=timeout)["status"]
            key = base64.b64encode(os.urandom(16)).decode()
            c.sock.sendall(build_request("GET", path, host, headers={
                "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": key,
                "Sec-WebSocket-Version": "13"}))
            deadline = time.monotonic() + timeout
            res["status"] = c._read_response(deadline)[0]
            if res["status"] != 101:
                raise ValueError(f"no switch of protocols: {res['status']}")
            for j in range(frames):
                if j:
                    time.sleep(gap)
                mask = os.urandom(4)
                payload = bytes(b ^ mask[k % 4] for k, b in enumerate(f"frame {j}".encode()))
                c.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + payload)
                while len(c.buf) < 2:
                    c._recv(deadline)
                if c.buf[:2] != b"\x8a\x00":  # the server's empty pong
                    raise ValueError(f"unexpected frame {c.buf[:2]!r}")
                c.buf = c.buf[2:]
                res["answered"] += 1
            if close_after >= 0:
                time.sleep(close_after)
                res["closed"] = time.time()
            else:
                res["server_close"] = c.wait_close(timeout)
        except Exception as e:  # noqa: BLE001 - every client reports, whatever went wrong
            res["error"] = f"{e.__class__.__name__}: {e}"
        c.close()
        return res

    _at_once(conns, one)


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["serve", "keepalive", "parallel", "healthcheck",
                                     "pipeline", "oneshot", "websocket"])
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("-n", type=int, default=1)
    ap.add_argument("-c", type=int, default=1)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--method", default="GET")
    ap.add_argument("--path", default="/")
    ap.add_argument("--body", default="")
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--interval", type=float, default=0.7)
    ap.add_argument("--hold", type=float, default=0.0)
    ap.add_argument("--close-after", type=float, default=-1.0)
    ap.add_argument("--reuse", action="store_true")
    a = ap.parse_args(argv)
    if a.mode == "serve":
        serve(a.host, a.port)
    elif a.mode == "keepalive":
        keepalive_batch(a.host, a.port, a.n, a.delay, a.method, a.path, a.timeout, a.body)
    elif a.mode == "healthcheck":
        healthcheck(a.host, a.port, a.interval, a.path, a.timeout)
    elif a.mode == "pipeline":
        pipeline(a.host, a.port, a.path.split(","), a.timeout, a.hold)
    elif a.mode == "oneshot":
        oneshot(a.host, a.port, a.path, a.timeout, a.hold)
    elif a.mode == "websocket":
        websocket(a.host, a.port, a.path, a.c, a.n, a.delay, a.timeout, a.close_after, a.reuse)
    else:
        parallel_batch(a.host, a.port, a.c, a.method, a.path, a.timeout, a.body)


# ---------------------------------------------------------------------------------------
# harness side

class Pending:
    def __init__(self, client, cid):
        self.client, self.id = client, cid
        self.sent = None
        self.result_ = None

    def wait_sent(self, timeout=5.0):
        self.client._pump(lambda: self.sent is not None or self.result_ is not None, timeout)
        return self.sent

    def result(self, timeout=10.0):
        self.client._pump(lambda: self.result_ is not None, timeout)
        return self.result_


class KeepAliveClient:
    """Interactive keep-alive client running inside a namespace (``clients.py serve``).

        c = KeepAliveClient(topo, "client", "10.201.0.2", 80)
        r = c.request("GET", "/")                 # blocking
        p = c.send("POST", "/pay", body="x")      # non-blocking
        p.wait_sent(); ...; r = p.result()
    """

    def __init__(self, topo, ns, host, port, log_path=None):
        self.topo = topo
        self.proc = topo.spawn_in(ns, [sys.executable, SCRIPT, "serve", "--host", host,
                                       "--port", str(port)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, bufsize=1)
        self.q: queue.Queue = queue.Queue()
        self.pending: dict[int, Pending] = {}
        self.events: list[dict] = []
        self.log_path = log_path
        self._n = 0
        self._thread = threading.Thread(target=self._reader, daemon=True)
        self._thread.start()
        self._pump(lambda: any(e.get("ev") == "ready" for e in self.events), 10.0)

    def _reader(self):
        for line in self.proc.stdout:
            try:
                self.q.put(json.loads(line))
            except ValueError:
                self.q.put({"ev": "garbage", "line": line})
        self.q.put({"ev": "eof"})

    def _pump(self, cond, timeout):
        end = time.monotonic() + timeout
        while not cond():
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("client did not answer in time")
            try:
                e = self.q.get(timeout=left)
            except queue.Empty:
                continue
            self.events.append(e)
            if self.log_path:
                with open(self.log_path, "a") as f:
                    f.write(json.dumps(e) + "\n")
            if e.get("ev") == "eof":
                raise RuntimeError("client process exited: " + (self.proc.stderr.read() or ""))
            p = self.pending.get(e.get("id"))
            if p is not None:
                if e["ev"] == "sent":
                    p.sent = e
                elif e["ev"] in ("result", "closed", "connected", "closed_by_us", "error"):
                    p.result_ = e

    def _cmd(self, **cmd) -> Pending:
        self._n += 1
        cmd["id"] = self._n
        p = Pending(self, self._n)
        self.pending[self._n] = p
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return p

    def send(self, method="GET", path="/", body="", timeout=5.0, **kw) -> Pending:
        return self._cmd(op="request", method=method, path=path, body=body, timeout=timeout, **kw)

    def request(self, method="GET", path="/", body="", timeout=5.0, **kw) -> dict:
        return self.send(method, path, body, timeout, **kw).result(timeout + 5)

    def connect(self) -> dict:
        return self._cmd(op="connect").result(10)

    def wait_close(self, timeout=10.0) -> dict:
        return self._cmd(op="wait_close", timeout=timeout).result(timeout + 5)

    def close(self, rst=False) -> dict:
        return self._cmd(op="close", rst=rst).result(5)

    def quit(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.topo.stop_proc(self.proc)
        self._thread.join(timeout=2)

    def results(self) -> list[dict]:
        return [e for e in self.events if e.get("ev") == "result"]


def run_keepalive(topo, ns, host, port, n=3, delay=0.0, method="GET", path="/",
                  timeout=5.0, body="") -> list[dict]:
    """N requests on one keep-alive connection with `delay` s between them (blocking)."""
    r = topo.run_in(ns, [sys.executable, SCRIPT, "keepalive", "--host", host, "--port",
                         str(port), "-n", str(n), "--delay", str(delay), "--method", method,
                         "--path", path, "--timeout", str(timeout), "--body", body],
                    timeout=n * (delay + timeout) + 15)
    return [json.loads(x) for x in r.stdout.splitlines() if x.strip()]


def spawn_parallel(topo, ns, host, port, conns=4, method="GET", path="/", timeout=10.0,
                   body="") -> subprocess.Popen:
    """K connections each sending one request at once; read results with parallel_results()."""
    return topo.spawn_in(ns, [sys.executable, SCRIPT, "parallel", "--host", host, "--port",
                              str(port), "-c", str(conns), "--method", method, "--path", path,
                              "--timeout", str(timeout), "--body", body],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def parallel_results(proc: subprocess.Popen, timeout=20.0) -> list[dict]:
    out, _ = proc.communicate(timeout=timeout)
    return [json.loads(x) for x in out.splitlines() if x.strip()]


class HealthChecker:
    """ALB-style health checks (``clients.py healthcheck``) in the background, from `ns`
    straight to the target; ``stop()`` ends them (closes stdin) and returns the results."""

    def __init__(self, topo, ns, host, port, interval=0.7, path="/health"):
        self.topo = topo
        self.proc = topo.spawn_in(ns, [sys.executable, SCRIPT, "healthcheck", "--host", host,
                                       "--port", str(port), "--interval", str(interval),
                                       "--path", path, "--timeout", "2"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        self.results_: list[dict] | None = None

    def stop(self, timeout=10.0) -> list[dict]:
        if self.results_ is None:
            try:
                out, _ = self.proc.communicate(input="", timeout=timeout)
            except subprocess.TimeoutExpired:
                self.topo.stop_proc(self.proc)
                out, _ = self.proc.communicate()
            self.results_ = [json.loads(x) for x in (out or "").splitlines() if x.strip()]
        return self.results_


def run_pipeline(topo, ns, host, port, paths, timeout=5.0, hold=0.0) -> dict:
    """Pipelined GETs of `paths` in one send on a new connection (see pipeline())."""
    r = topo.run_in(ns, [sys.executable, SCRIPT, "pipeline", "--host", host, "--port",
                         str(port), "--path", ",".join(paths), "--timeout", str(timeout),
                         "--hold", str(hold)], timeout=timeout + hold + 15)
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_oneshot(topo, ns, host, port, path="/", hold=0.0, timeout=5.0) -> dict:
    """One curl-like request on a new connection, closed `hold` s after the response."""
    r = topo.run_in(ns, [sys.executable, SCRIPT, "oneshot", "--host", host, "--port",
                         str(port), "--path", path, "--timeout", str(timeout),
                         "--hold", str(hold)], timeout=timeout + hold + 15)
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_websocket(topo, ns, host, port, path="/ws", conns=1, frames=3, gap=0.3,
                  close_after=-1.0, reuse=False, timeout=10.0) -> list[dict]:
    """WebSocket clients at once (see websocket()); their results."""
    r = topo.run_in(ns, [sys.executable, SCRIPT, "websocket", "--host", host, "--port",
                         str(port), "--path", path, "-c", str(conns), "-n", str(frames),
                         "--delay", str(gap), "--close-after", str(close_after),
                         "--timeout", str(timeout)] + (["--reuse"] if reuse else []),
                    timeout=timeout + frames * gap + max(close_after, 0) + 15)
    return [json.loads(line) for line in r.stdout.strip().splitlines()]


def run_wrk(topo, ns, url, threads=2, connections=4, duration_s=2, timeout_s=2,
            extra=()) -> dict:
    """Run wrk inside ns; returns the parsed numbers and the raw output."""
    r = topo.run_in(ns, ["wrk", "-t", str(threads), "-c", str(connections),
                         "-d", f"{duration_s}s", "--timeout", f"{timeout_s}s", *extra, url],
                    timeout=duration_s + timeout_s + 20, check=False)
    out = r.stdout
    res = {"raw": out, "rc": r.returncode, "requests": None, "non_2xx_3xx": 0,
           "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0},
           "requests_per_s": None}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if m:
        res["requests"] = int(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        res["non_2xx_3xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        res["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"),
                                        map(int, m.groups())))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        res["requests_per_s"] = float(m.group(1))
    return res


if __name__ == "__main__":
    main()
