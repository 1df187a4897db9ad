"""Real peers started inside a Topology's namespaces.

Every ``start_*`` returns a handle with ``.stop()``, ``.pid``, ``.dir`` (its temp dir with
config, pid file and logs) and log paths.  Servers run in the foreground as children of
the harness (own process group, registered with the Topology so its teardown kills
them).  Each start waits (bounded) until the port accepts connections.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import textwrap
import time

from netns import Topology, children_of
from security_headers import SECURITY_HEADERS

NODE = "/usr/bin/node"
NGINX = "/usr/sbin/nginx"
HAPROXY = "/usr/sbin/haproxy"

NODE_SERVER_JS = r"""
// closetrace scenario backend: 200 to any GET/POST.
//   ?delay=MS or /slow  -> answer after MS ms (default: DEFAULT_DELAY env, /slow: SLOW_MS)
//   /busy?ms=MS          -> block the event loop for MS ms (overload: nothing else is read)
//   /crash               -> process.abort()
//   ?status=N            -> answer with status N
//   ?lag_in=MS&lag_ms=MS -> answer now; MS later block the event loop for lag_ms (from the
//                           check phase, so that the timers due meanwhile, such as a
//                           keep-alive timeout, run before the poll phase reads any socket)
//   MAX_REQUESTS env     -> server.maxRequestsPerSocket (the last response says
//                           Connection: close)
//   MAX_CONNECTIONS env  -> server.maxConnections (a connection over it is closed as soon as
//                           it is accepted)
//   SECURITY_HEADERS env -> header fields (a JSON object) added to every response: helmet's
//                           (security_headers.py), ~700 bytes that Node writes before its own
//                           Connection and Keep-Alive
//   SIGUSR2              -> server.close(): stop listening and close every idle keep-alive
//                           connection at once (a shutdown without draining)
//   Upgrade: websocket   -> 101 Switching Protocols; a two-byte frame back for every read; the
//                           application closes the socket WS_IDLE_MS env (1500) after its last
//                           frame, as a heartbeat gives up on a silent client (no keep-alive timer)
const http = require('http');
const crypto = require('crypto');
const KA = parseInt(process.env.KEEPALIVE_MS || '5000');
const HT = parseInt(process.env.HEADERS_MS || String(KA + 1000));
const PORT = parseInt(process.env.PORT || '8080');
const HOST = process.env.HOST || '0.0.0.0';
const SLOW = parseInt(process.env.SLOW_MS || '1000');
const DEF = parseInt(process.env.DEFAULT_DELAY || '0');
const SECURITY_HEADERS = JSON.parse(process.env.SECURITY_HEADERS || '{}');
const log = (o) => process.stdout.write(JSON.stringify(Object.assign({t: Date.now() / 1000}, o)) + '\n');
const server = http.createServer((req, res) => {
  const u = new URL(req.url, 'http://x');
  const sock = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
  log({ev: 'request', method: req.method, url: req.url, peer: sock});
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    if (u.pathname === '/crash') { log({ev: 'abort'}); process.abort(); }
    if (u.pathname === '/busy') {
      const until = Date.now() + parseInt(u.searchParams.get('ms') || '2000');
      while (Date.now() < until) {}
    }
    let delay = DEF;
    if (u.pathname.startsWith('/slow')) delay = SLOW;
    if (u.searchParams.has('delay')) delay = parseInt(u.searchParams.get('delay'));
    const answer = () => {
      const body = `ok ${req.method} ${u.pathname} ${Buffer.concat(chunks).length}\n`;
      const status = parseInt(u.searchParams.get('status') || '200');
      for (const [name, value] of Object.entries(SECURITY_HEADERS)) res.setHeader(name, value);
      res.writeHead(status, {'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body)});
      res.end(body);
      log({ev: 'response', method: req.method, url: req.url, peer: sock});
    };
    if (delay > 0) setTimeout(answer, delay); else answer();
    if (u.searchParams.has('lag_in')) {
      const ms = parseInt(u.searchParams.get('lag_ms') || '300');
      setTimeout(() => setImmediate(() => {
        log({ev: 'lag', ms});
        const until = Date.now() + ms;
        while (Date.now() < until) {}
        log({ev: 'lag_end'});
      }), parseInt(u.searchParams.get('lag_in')));
    }
  });
});
const WS_IDLE = parseInt(process.env.WS_IDLE_MS || '1500');
server.on('upgrade', (req, socket) => {
  const peer = `${socket.remoteAddress}:${socket.remotePort}`;
  const key = req.headers['sec-websocket-key'] || '';
  const accept = crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11')
    .digest('base64');
  socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n' +
               `Connection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
  log({ev: 'upgrade', url: req.url, peer});
  let timer = null;
  let closed = false;
  const arm = () => {
    clearTimeout(timer);
    if (closed) return;
    timer = setTimeout(() => {
      closed = true;
      log({ev: 'ws_idle_close', peer});
      socket.end();
    }, WS_IDLE);
  };
  socket.on('data', () => { if (!closed) socket.write(Buffer.from([0x8a, 0x00])); arm(); });
  socket.on('end', () => { closed = true; clearTimeout(timer); socket.end(); });
  socket.on('close', () => { closed = true; clearTimeout(timer); });
  socket.on('error', () => {});
  arm();
});
server.keepAliveTimeout = KA;
server.headersTimeout = HT;
server.requestTimeout = 0;
if (process.env.MAX_REQUESTS) server.maxRequestsPerSocket = parseInt(process.env.MAX_REQUESTS);
if (process.env.MAX_CONNECTIONS) server.maxConnections = parseInt(process.env.MAX_CONNECTIONS);
server.on('connection', (s) => log({ev: 'connection', peer: `${s.remoteAddress}:${s.remotePort}`}));
server.listen(PORT, HOST, () => log({ev: 'listening', port: PORT, keepAliveTimeout: KA,
                                     headersTimeout: HT, node: process.version}));
process.on('SIGTERM', () => process.exit(0));
process.on('SIGUSR2', () => { log({ev: 'shutdown'}); server.close(); });
"""


class Peer:
    def __init__(self, topo: Topology, ns: str, proc: subprocess.Popen, workdir: str,
                 kind: str, addr: str, port: int, **logs):
        self.topo, self.ns, self.proc, self.dir = topo, ns, proc, workdir
        self.kind, self.addr, self.port = kind, addr, port
        self.logs = logs
        for k, v in logs.items():
            setattr(self, k, v)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def workers(self) -> list[int]:
        """Worker processes (nginx: children of the master; others: the process itself)."""
        kids = children_of(self.proc.pid)
        return kids or [self.proc.pid]

    def signal(self, sig, workers=False):
        for p in (self.workers() if workers else [self.proc.pid]):
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass

    def kill9(self):
        """SIGKILL the server (and its workers) right now, as a crash would."""
        for p in set(self.workers() + [self.proc.pid]):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass

    def stop(self, timeout=5.0):
        for p in self.workers():  # a SIGSTOPped worker would block a graceful stop
            try:
                os.kill(p, signal.SIGCONT)
            except ProcessLookupError:
                pass
        return self.topo.stop_proc(self.proc, signal.SIGTERM, timeout)

    def __repr__(self):
        return f"<{self.kind} pid={self.pid} {self.addr}:{self.port} in {self.ns}>"


def wait_port(topo: Topology, ns: str, addr: str, port: int, timeout=30.0, proc=None):
    """Wait until addr:port inside ns accepts a TCP connection (one helper process); the bound
    allows for a start-up (Node, nginx) slowed by a loaded machine."""
    code = textwrap.dedent(f"""
        import socket, sys, time
        end = time.monotonic() + {timeout}
        while time.monotonic() < end:
            try:
                socket.create_connection(({addr!r}, {port}), timeout=0.5).close()
                sys.exit(0)
            except OSError:
                time.sleep(0.05)
        sys.exit(1)
    """)
    r = topo.run_in(ns, ["python3", "-c", code], check=False, timeout=timeout + 5)
    if r.returncode != 0:
        dead = proc is not None and proc.poll() is not None
        raise RuntimeError(f"{addr}:{port} in {ns} not accepting after {timeout}s"
                           + (f" (process exited with {proc.returncode})" if dead else ""))


def _mkdir(kind, base=None):
    return tempfile.mkdtemp(prefix=f"cts-{kind}-", dir=base)


def start_node_backend(topo: Topology, keepalive_ms=1000, headers_ms=None, port=8080,
                       slow_ms=1000, default_delay_ms=0, ns="backend", base_dir=None,
                       max_requests=None, max_connections=None, ws_idle_ms=None,
                       security_headers=False) -> Peer:
    """Node.js http server, 200 to GET and POST on any path (see NODE_SERVER_JS);
    max_requests sets server.maxRequestsPerSocket, max_connections server.maxConnections,
    ws_idle_ms how long a silent WebSocket stays open; security_headers adds helmet's fields
    to every response, as an Express application has them."""
    d = _mkdir("node", base_dir)
    script = os.path.join(d, "server.js")
    with open(script, "w") as f:
        f.write(NODE_SERVER_JS)
    addr = topo.addr["backend"] if ns == "backend" else "0.0.0.0"
    env = dict(os.environ, KEEPALIVE_MS=str(keepalive_ms),
               HEADERS_MS=str(headers_ms or keepalive_ms + 1000), PORT=str(port),
               HOST="0.0.0.0", SLOW_MS=str(slow_ms), DEFAULT_DELAY=str(default_delay_ms))
    if max_requests:
        env["MAX_REQUESTS"] = str(max_requests)
    if max_connections:
        env["MAX_CONNECTIONS"] = str(max_connections)
    if ws_idle_ms:
        env["WS_IDLE_MS"] = str(ws_idle_ms)
    if security_headers:
        env["SECURITY_HEADERS"] = json.dumps(SECURITY_HEADERS)
    log = os.path.join(d, "node.log")
    with open(log, "w") as out:
        p = topo.spawn_in(ns, [NODE, script], stdout=out, stderr=subprocess.STDOUT, env=env)
    peer = Peer(topo, ns, p, d, "node", addr, port, log=log, script=script)
    wait_port(topo, ns, addr, port, proc=p)
    return peer


def _nginx_common(d):
    return textwrap.dedent(f"""
        user root;
        daemon off;
        master_process on;
        worker_processes 1;
        pid {d}/nginx.pid;
        error_log {d}/error.log info;
        events {{ worker_connections 1024; }}
    """)


def _nginx_http_common(d):
    return textwrap.dedent(f"""
        client_body_temp_path {d}/body;
        proxy_temp_path {d}/proxy;
        fastcgi_temp_path {d}/fastcgi;
        uwsgi_temp_path {d}/uwsgi;
        scgi_temp_path {d}/scgi;
        log_format ct '$msec $status $upstream_status "$request" upstream=$upstream_addr '
                      'rt=$request_time urt=$upstream_response_time conn=$connection '
                      'creq=$connection_requests client=$remote_addr:$remote_port';
        access_log {d}/access.log ct;
    """)


def _start_nginx(topo, ns, d, conf_text, addr, port, kind, timeout=30.0, env=None) -> Peer:
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(conf_text)
    stderr = os.path.join(d, "stderr.log")
    r = topo.run_in(ns, [NGINX, "-t", "-p", d, "-e", os.path.join(d, "error.log"), "-c", conf],
                    check=False)
    if r.returncode != 0:
        raise RuntimeError(f"nginx -t failed: {r.stderr}")
    with open(stderr, "w") as out:
        p = topo.spawn_in(ns, [NGINX, "-p", d, "-e", os.path.join(d, "error.log"), "-c", conf],
                          stdout=out, stderr=subprocess.STDOUT, env=env)
    peer = Peer(topo, ns, p, d, kind, addr, port, access_log=os.path.join(d, "access.log"),
                error_log=os.path.join(d, "error.log"), conf=conf, stderr=stderr)
    wait_port(topo, ns, "127.0.0.1" if addr == "0.0.0.0" else addr, port, timeout=timeout,
              proc=p)
    return peer


def start_nginx_backend(topo: Topology, keepalive_timeout_s=1.0, port=8080, ns="backend",
                        base_dir=None, keepalive_requests=10000) -> Peer:
    """nginx answering 200 to everything, with keepalive_timeout and keepalive_requests
    toward its clients."""
    d = _mkdir("nginx-backend", base_dir)
    addr = topo.addr["backend"]
    conf = _nginx_common(d) + textwrap.dedent(f"""
        http {{
        {_nginx_http_common(d)}
            keepalive_timeout {int(keepalive_timeout_s * 1000)}ms;
            keepalive_requests {keepalive_requests};
            server {{
                listen {port};
                location / {{ return 200 "ok\\n"; }}
            }}
        }}
    """)
    return _start_nginx(topo, ns, d, conf, addr, port, "nginx-backend")


# The balancer's second access log, `alb.log`, in the AWS Application Load Balancer access
# log format (29 fields up to classification_reason, then conn_trace_id), so that
# `closetrace alb TRACE alb.log` can be tested on a real balancer.  nginx -> ALB field mapping:
#   time                     $time_iso8601 + $msec's milliseconds, when nginx logged the
#                            request (ALB: when it answered the client).  nginx runs with TZ=UTC,
#                            so $time_iso8601 ends in +00:00; the map swaps that for
#                            ".mmm000Z".  Without UTC the field reads "not-utc:..." and the
#                            line is malformed rather than silently shifted.
#   request_creation_time    the same clock, saved by `set` in the server's rewrite phase: when
#                            nginx had read the request's headers (ALB: when it received the
#                            request).  It forwards the request right after (after the body,
#                            which it buffers), so request_processing_time is 0.000, and -1
#                            when no upstream was tried (ALB: never sent to a target).
#   target:port              the last upstream tried ($upstream_addr lists every retry).
#   target_processing_time   the last upstream's $upstream_header_time; when it sent no header
#                            (reset, closed, timed out), its $upstream_response_time: the time
#                            until the failure.  -1 when no upstream was tried.
#   response_processing_time 0.000 when the last upstream sent a header, else -1.
#   elb_status_code          $status, 499 (client went away) as ALB's 460.
#   target_status_code       the last upstream's status if it sent a header, else "-": for a
#                            connection error nginx puts its own 502 (504 on timeout) in
#                            $upstream_status with header time "-", which ALB logs as "-".
#   "target:port_list"       every upstream tried ($upstream_addr); "target_status_code_list"
#                            $upstream_status when the last one sent a header, else "-".
#   trace_id                 "Root=1-" + $request_id; conn_trace_id "TID_" + $connection.
# A line looks like:
#   http 2026-11-25T01:01:05.123000Z app/scenario-nginx/0000000000000000 10.201.0.1:41234
#   10.201.0.6:8080 0.000 0.000 -1 502 - 187 319 "POST http://10.201.0.2:80/pay HTTP/1.1" "-"
#   - - arn:aws:elasticloadbalancing:local:000000000000:targetgroup/scenario-backend/0000000000000000
#   "Root=1-..." "-" "-" 0 2026-11-25T01:01:05.123000Z "forward" "-" "-" "10.201.0.6:8080"
#   "-" "-" "-" TID_3                                                          (one line)
_ALB_LOG_HTTP = r"""
    map "$time_iso8601|$msec" $alb_time {
        "~^(?<alb_ts>[0-9T:-]{19})\+00:00\|[0-9]+\.(?<alb_tf>[0-9]{3})$" "${alb_ts}.${alb_tf}000Z";
        default "not-utc:$time_iso8601";
    }
    map "$alb_start_iso|$alb_start_msec" $alb_request_creation_time {
        "~^(?<alb_cs>[0-9T:-]{19})\+00:00\|[0-9]+\.(?<alb_cf>[0-9]{3})$" "${alb_cs}.${alb_cf}000Z";
        default $alb_time;
    }
    map $upstream_addr $alb_target {
        "~(?<alb_a>[^ ,]+:[0-9]+)$" $alb_a;
        default -;
    }
    map $upstream_addr $alb_request_processing_time {
        "" -1;
        default 0.000;
    }
    map "$upstream_header_time|$upstream_response_time" $alb_target_processing_time {
        "~(?<alb_h>[0-9.]+)\|" $alb_h;
        "~(?<alb_r>[0-9.]+)$" $alb_r;
        default -1;
    }
    map $upstream_header_time $alb_response_processing_time {
        "~[0-9]$" 0.000;
        default -1;
    }
    map "$upstream_status|$upstream_header_time" $alb_target_status {
        "~(?<alb_s>[0-9]{3})\|.*[0-9]$" $alb_s;
        default -;
    }
    map "$upstream_status|$upstream_header_time" $alb_target_status_list {
        "|" -;
        "~\|.*[0-9]$" $upstream_status;
        default -;
    }
    map $status $alb_elb_status {
        499 460;
        default $status;
    }
    log_format alb 'http $alb_time app/scenario-nginx/0000000000000000 '
                   '$remote_addr:$remote_port $alb_target '
                   '$alb_request_processing_time $alb_target_processing_time '
                   '$alb_response_processing_time $alb_elb_status $alb_target_status '
                   '$request_length $bytes_sent '
                   '"$request_method http://$host:$server_port$request_uri $server_protocol" '
                   '"$http_user_agent" - - '
                   'arn:aws:elasticloadbalancing:local:000000000000:targetgroup/scenario-backend/0000000000000000 '
                   '"Root=1-$request_id" "-" "-" 0 $alb_request_creation_time '
                   '"forward" "-" "-" "$upstream_addr" "$alb_target_status_list" "-" "-" '
                   'TID_$connection';
"""


def start_nginx_balancer(topo: Topology, backend_addr=None, backend_port=8080,
                         upstream_keepalive_timeout_s=3.0, port=80, ns="balancer",
                         proxy_read_timeout_s=30, extra_location="", base_dir=None) -> Peer:
    """nginx reverse proxy reusing upstream connections (keepalive 16, HTTP/1.1,
    Connection "" cleared, upstream keepalive_timeout).  One worker, so that the harness can
    SIGSTOP/SIGCONT it (``peer.workers()``).  Besides ``access_log`` it writes ``alb_log``
    in the ALB access log format (see _ALB_LOG_HTTP); it runs with TZ=UTC for that."""
    d = _mkdir("nginx-balancer", base_dir)
    backend_addr = backend_addr or topo.addr["backend"]
    conf = _nginx_common(d) + textwrap.dedent(f"""
        http {{
        {_nginx_http_common(d)}
        {textwrap.indent(_ALB_LOG_HTTP, "    ").strip()}
            access_log {d}/alb.log alb;
            keepalive_timeout 75s;
            keepalive_requests 10000;
            upstream backend {{
                server {backend_addr}:{backend_port};
                keepalive 16;
                keepalive_timeout {int(upstream_keepalive_timeout_s * 1000)}ms;
                keepalive_requests 10000;
            }}
            server {{
                listen {port};
                # when the request was received (headers read), for alb.log
                set $alb_start_iso $time_iso8601;
                set $alb_start_msec $msec;
                location / {{
                    proxy_pass http://backend;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    proxy_read_timeout {proxy_read_timeout_s}s;
                    {extra_location}
                }}
            }}
        }}
    """)
    peer = _start_nginx(topo, ns, d, conf, "0.0.0.0", port, "nginx-balancer",
                        env=dict(os.environ, TZ="UTC"))
    peer.alb_log = peer.logs["alb_log"] = os.path.join(d, "alb.log")
    return peer


def start_nginx_grpc_balancer(topo: Topology, backend_port, upstream_keepalive_timeout_s=60.0,
                              port=80, ns="balancer", base_dir=None) -> Peer:
    """nginx as a gRPC balancer: h2c on `port` (listen ... http2), grpc_pass to the backend
    with upstream keep-alive (keepalive 16, keepalive_timeout). One worker, so that the harness
    can SIGSTOP/SIGCONT it (``peer.workers()``)."""
    d = _mkdir("nginx-grpc-balancer", base_dir)
    conf = _nginx_common(d) + textwrap.dedent(f"""
        http {{
        {_nginx_http_common(d)}
            upstream backend {{
                server {topo.addr["backend"]}:{backend_port};
                keepalive 16;
                keepalive_timeout {int(upstream_keepalive_timeout_s * 1000)}ms;
            }}
            server {{
                listen {port} http2;
                location / {{ grpc_pass grpc://backend; }}
            }}
        }}
    """)
    return _start_nginx(topo, ns, d, conf, "0.0.0.0", port, "nginx-grpc-balancer")


def start_haproxy_balancer(topo: Topology, backend_addr=None, backend_port=8080,
                           keepalive_timeout_s=3.0, port=80, ns="balancer",
                           server_timeout_s=30, client_keepalive_s=75.0, retry_on=None,
                           base_dir=None) -> Peer:
    """HAProxy 2.6 (foreground, -db) with `http-reuse always`, `timeout server/client/
    connect`, and its log on stdout (``log stdout format raw local0``) captured in
    ``peer.log`` (no syslog needed).

    HAProxy has no upstream keep-alive timeout like nginx's: `timeout http-keep-alive`
    (client_keepalive_s here) is the idle timeout of the *client* side; idle server
    connections sit in the server's idle pool and `pool-purge-delay` (keepalive_timeout_s
    here) only closes the ones above the estimated need, so with steady light traffic an
    idle upstream connection is never closed by HAProxy (observed: see README).
    """
    d = _mkdir("haproxy", base_dir)
    backend_addr = backend_addr or topo.addr["backend"]
    ka_ms = int(keepalive_timeout_s * 1000)
    retry = f"    retry-on {retry_on}\n" if retry_on else ""
    cfg = textwrap.dedent(f"""
        global
            log stdout format raw local0 info
            pidfile {d}/haproxy.pid
            nbthread 1
        defaults
            mode http
            log global
            option httplog
            timeout connect 2s
            timeout client 30s
            timeout server {server_timeout_s}s
            timeout http-keep-alive {int(client_keepalive_s * 1000)}ms
            timeout http-request 10s
        frontend fe
            bind *:{port}
            default_backend be
        backend be
            http-reuse always
        {retry}    server s1 {backend_addr}:{backend_port} pool-purge-delay {ka_ms}ms
    """)
    conf = os.path.join(d, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(cfg)
    r = topo.run_in(ns, [HAPROXY, "-c", "-f", conf], check=False)
    if r.returncode != 0:
        raise RuntimeError(f"haproxy -c failed: {r.stdout}{r.stderr}")
    log = os.path.join(d, "haproxy.log")
    with open(log, "w") as out:
        p = topo.spawn_in(ns, [HAPROXY, "-db", "-f", conf], stdout=out, stderr=subprocess.STDOUT)
    peer = Peer(topo, ns, p, d, "haproxy", "0.0.0.0", port, log=log, access_log=log,
                error_log=log, conf=conf)
    wait_port(topo, ns, "127.0.0.1", port, proc=p)
    return peer


# ---------------------------------------------------------------------------------------
# Other HTTP servers as backends (audit of closetrace's per-server advice): Apache httpd
# (mpm_event), Gunicorn (gthread / sync), uvicorn (its own script, or python3 -m uvicorn),
# Go net/http.  Each answers 200 "ok" to any method and path (Apache: GET only, see below)
# and has an idle keep-alive timeout of `keepalive_s` seconds.

APACHE2 = "/usr/sbin/apache2"
APACHE_MODULES = "/usr/lib/apache2/modules"
GUNICORN = "/usr/bin/gunicorn"
SYS_PYTHON = "/usr/bin/python3"   # Debian's python3 (gunicorn, uvicorn, setproctitle)
GO = "/usr/bin/go"

WSGI_APP = r'''
import time
import urllib.parse


def app(environ, start_response):
    n = int(environ.get("CONTENT_LENGTH") or 0)
    if n:
        environ["wsgi.input"].read(n)
    if environ["PATH_INFO"].startswith("/slow"):  # /slow?ms=MS: a slow handler (6 s)
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        time.sleep(int(query.get("ms", ["6000"])[0]) / 1000)
    body = ("ok %s %s\n" % (environ["REQUEST_METHOD"], environ["PATH_INFO"])).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''

ASGI_APP = r'''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while True:
        m = await receive()
        if not m.get("more_body"):
            break
    body = ("ok %s %s\n" % (scope["method"], scope["path"])).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
'''

# uvicorn's console script as pip installs it (Debian's python3-uvicorn ships none): its
# process name (comm) is "uvicorn".
UVICORN_SCRIPT = "#!/usr/bin/python3\nimport sys\nfrom uvicorn.main import main\nsys.exit(main())\n"

GO_SERVER = r'''
package main

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"time"
)

func main() {
	idle, err := time.ParseDuration(os.Getenv("IDLE"))
	if err != nil {
		log.Fatal(err)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		body := fmt.Sprintf("ok %s %s\n", r.Method, r.URL.Path)
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		io.WriteString(w, body)
	})
	s := &http.Server{Addr: ":" + os.Getenv("PORT"), Handler: h, IdleTimeout: idle}
	log.Printf("listening %s IdleTimeout %s", s.Addr, idle)
	log.Fatal(s.ListenAndServe())
}
'''

BACKEND_KINDS = ("apache", "gunicorn-gthread", "gunicorn-sync", "uvicorn", "uvicorn-py", "go",
                 "tomcat")
CATALINA_HOME = "/usr/share/tomcat10"

TOMCAT_SERVER_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Server port="-1" shutdown="SHUTDOWN">
  <Service name="Catalina">
    <Connector port="{port}" protocol="HTTP/1.1" keepAliveTimeout="{keepalive_ms}"
               connectionTimeout="20000" maxKeepAliveRequests="10000"/>
    <Engine name="Catalina" defaultHost="localhost">
      <Host name="localhost" appBase="webapps" unpackWARs="false" autoDeploy="false">
        <Valve className="org.apache.catalina.valves.rewrite.RewriteValve"/>
      </Host>
    </Engine>
  </Service>
</Server>
"""


def _go_binary(name="goserver") -> str:
    """GO_SERVER built once (cached by source hash) as `name`: comm is the binary's name."""
    import hashlib
    h = hashlib.sha256(GO_SERVER.encode()).hexdigest()[:12]
    d = os.path.join(tempfile.gettempdir(), f"cts-go-{h}")
    binary = os.path.join(d, name)
    if os.path.exists(binary):
        return binary
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "main.go"), "w") as f:
        f.write(GO_SERVER)
    env = dict(os.environ, GO111MODULE="off", GOCACHE=os.path.join(d, "cache"),
               GOPATH=os.path.join(d, "gopath"), GOFLAGS="")
    subprocess.run([GO, "build", "-o", binary, "main.go"], cwd=d, env=env, check=True,
                   timeout=300)
    return binary


def _apache_conf(d, port, keepalive_s, max_keepalive_requests=10000, extra=""):
    # mpm_event; the document root holds one file and every path is rewritten to it (static
    # files answer 405 to POST, which only the raced request sends: it never gets an answer).
    os.makedirs(os.path.join(d, "htdocs"), exist_ok=True)
    with open(os.path.join(d, "htdocs", "ok.txt"), "w") as f:
        f.write("ok\n")
    m = APACHE_MODULES
    return textwrap.dedent(f"""
        ServerRoot {d}
        DefaultRuntimeDir {d}
        PidFile {d}/apache2.pid
        Mutex file:{d} default
        LoadModule mpm_event_module {m}/mod_mpm_event.so
        LoadModule authz_core_module {m}/mod_authz_core.so
        LoadModule rewrite_module {m}/mod_rewrite.so
        LoadModule mime_module {m}/mod_mime.so
        TypesConfig /etc/mime.types
        User www-data
        Group www-data
        ServerName backend
        Listen {port}
        KeepAlive On
        KeepAliveTimeout {keepalive_s}
        MaxKeepAliveRequests {max_keepalive_requests}
        ErrorLog {d}/error.log
        LogLevel info
        LogFormat "%{{%s}}t.%{{msec_frac}}t %a:%{{remote}}p \\"%r\\" %>s %k" ct
        CustomLog {d}/access.log ct
        DocumentRoot {d}/htdocs
        <Directory {d}/htdocs>
            Require all granted
        </Directory>
        RewriteEngine On
        RewriteCond %{{REQUEST_URI}} !^/cgi/
        RewriteRule ^ /ok.txt [L]
        {extra}
    """)


def start_backend(topo: Topology, kind: str, keepalive_s=2, port=8080, ns="backend",
                  base_dir=None, apache_extra="", workers=1, worker_timeout_s=None) -> Peer:
    """One of BACKEND_KINDS with an idle keep-alive timeout of `keepalive_s` seconds
    (gunicorn's also --workers `workers` and --timeout `worker_timeout_s`; its app's
    /slow?ms= sleeps):
      apache            apache2 -DFOREGROUND, mpm_event, KeepAliveTimeout keepalive_s (comm apache2)
      gunicorn-gthread  gunicorn --worker-class gthread --threads 4 --keep-alive keepalive_s
      gunicorn-sync     gunicorn (sync worker: Connection: close on every response)
      uvicorn           the `uvicorn` script --timeout-keep-alive keepalive_s (comm uvicorn)
      uvicorn-py        python3 -m uvicorn ... (comm python3)
      go                Go net/http, http.Server.IdleTimeout = keepalive_s (comm goserver)"""
    d = _mkdir(kind, base_dir)
    addr = topo.addr["backend"]
    log = os.path.join(d, f"{kind}.log")
    if kind == "apache" and "/cgi/" in apache_extra:  # a slow CGI: /cgi/slow (sleeps 3 s)
        os.makedirs(os.path.join(d, "cgi"))
        with open(os.path.join(d, "cgi", "slow"), "w") as f:
            f.write("#!/bin/sh\nsleep 3\nprintf 'Content-Type: text/plain\\r\\n\\r\\nslow\\n'\n")
        os.chmod(os.path.join(d, "cgi", "slow"), 0o755)
        apache_extra = apache_extra.replace("{dir}", d)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if kind == "apache":
        for x in (d, os.path.dirname(d)):  # www-data must reach the document root
            os.chmod(x, 0o755)
        conf = os.path.join(d, "apache2.conf")
        with open(conf, "w") as f:
            f.write(_apache_conf(d, port, keepalive_s, extra=apache_extra))
        r = topo.run_in(ns, [APACHE2, "-t", "-f", conf], check=False)
        if r.returncode != 0:
            raise RuntimeError(f"apache2 -t failed: {r.stdout}{r.stderr}")
        argv = [APACHE2, "-f", conf, "-DFOREGROUND"]
    elif kind.startswith("gunicorn"):
        with open(os.path.join(d, "wsgiapp.py"), "w") as f:
            f.write(WSGI_APP)
        argv = [GUNICORN, "--bind", f"0.0.0.0:{port}", "--workers", str(workers), "--chdir", d,
                "--access-logfile", "-", "--log-level", "debug"]
        if kind == "gunicorn-gthread":
            argv += ["--worker-class", "gthread", "--threads", "4",
                     "--keep-alive", str(keepalive_s)]
        if worker_timeout_s:
            argv += ["--timeout", str(worker_timeout_s)]
        argv += ["wsgiapp:app"]
    elif kind in ("uvicorn", "uvicorn-py"):
        with open(os.path.join(d, "asgiapp.py"), "w") as f:
            f.write(ASGI_APP)
        if kind == "uvicorn":
            script = os.path.join(d, "uvicorn")
            with open(script, "w") as f:
                f.write(UVICORN_SCRIPT)
            os.chmod(script, 0o755)
            argv = [script]
        else:
            argv = [SYS_PYTHON, "-m", "uvicorn"]
        argv += ["--host", "0.0.0.0", "--port", str(port), "--app-dir", d,
                 "--timeout-keep-alive", str(keepalive_s), "asgiapp:app"]
    elif kind == "tomcat":  # catalina.sh run: java in the foreground; every path -> ok.txt
        for sub in ("conf/Catalina/localhost", "logs", "temp", "work", "webapps/ROOT"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        with open(os.path.join(d, "conf", "server.xml"), "w") as f:
            f.write(TOMCAT_SERVER_XML.format(port=port, keepalive_ms=int(keepalive_s * 1000)))
        subprocess.run(["cp", "/etc/tomcat10/web.xml", os.path.join(d, "conf", "web.xml")],
                       check=True)
        with open(os.path.join(d, "conf", "Catalina", "localhost", "rewrite.config"), "w") as f:
            f.write("RewriteRule ^/.*$ /ok.txt [L]\n")
        with open(os.path.join(d, "webapps", "ROOT", "ok.txt"), "w") as f:
            f.write("ok\n")
        env.update(CATALINA_HOME=CATALINA_HOME, CATALINA_BASE=d,
                   CATALINA_TMPDIR=os.path.join(d, "temp"), JAVA_OPTS="-Xmx128m -Xss512k")
        argv = [os.path.join(CATALINA_HOME, "bin", "catalina.sh"), "run"]
    elif kind == "go":
        argv = [_go_binary()]
        env.update(IDLE=f"{keepalive_s}s", PORT=str(port))
    else:
        raise ValueError(f"unknown backend {kind!r}")
    with open(log, "w") as out:
        p = topo.spawn_in(ns, argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=d)
    access = os.path.join(d, "access.log") if kind == "apache" else log
    peer = Peer(topo, ns, p, d, kind, addr, port, log=log, access_log=access)
    wait_port(topo, ns, addr, port, proc=p)
    return peer
