"""TLS keep-alive connections (an ALB's HTTPS targets): each side ends a TLS connection with a
close_notify alert, a few bytes that are neither a request nor a response. A client that answers
the server's idle close with its own reaches a socket already closed, as a late request would:
the wire shows the race's pattern (FIN, data, RST), and only the alert's content type tells it
from one. nginx serves TLS 1.2 on loopback (its alerts travel with their content type visible);
Python's ssl module is the client, and an ALB-style health check (Connection: close,
ELB-HealthChecker) runs beside each case; judged by tshark's decoding of a capture of the run."""
import os
import socket
import ssl
import subprocess
import tempfile
import time

from support import LoopbackCapture, PeerTest, Recorder, free_port, wait_for

KEEPALIVE_TIMEOUT_S = 1
ALERT = 21
NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  keepalive_timeout {timeout}s;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {dir}/cert.pem;
    ssl_certificate_key {dir}/key.pem;
    ssl_protocols TLSv1.2;
    location / {{ return 200 "ok\\n"; }}
  }}
}}
"""


def tls_client():
    """A TLS 1.2 client that does not check the server's self-signed certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


def segments(pcap, port, client_port):
    """(time, from the client, TCP flags, payload length, TLS content types) of each segment of
    the connection from `client_port`, as tshark decodes the capture."""
    fields = ["frame.time_epoch", "tcp.srcport", "tcp.flags", "tcp.len", "tls.record.content_type"]
    out = subprocess.run(["tshark", "-r", pcap, "-d", f"tcp.port=={port},tls", "-Y",
                          f"tcp.port == {client_port}", "-T", "fields", "-E", "separator=/t",
                          *[arg for field in fields for arg in ("-e", field)]],
                         capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        time_s, source, flags, length, types = line.split("\t")
        rows.append((float(time_s), int(source) == client_port, int(flags, 16), int(length),
                     [int(t) for t in types.split(",") if t]))
    return rows


def first_tls_close(wire):
    """The segment that began the close: the first alert, FIN or RST of either side (a side's
    close_notify goes before its FIN, and the other side may answer it before that FIN)."""
    return next(row for row in wire if row[2] & 0x5 or ALERT in row[4])


class TlsCloseTest(PeerTest):
    TOOLS = ("nginx", "openssl", "tcpdump", "tshark")

    def setUp(self):
        super().setUp()
        self.port = free_port()
        nginx_dir = tempfile.mkdtemp(prefix="nginx-", dir=self.workdir)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=backend", "-keyout", f"{nginx_dir}/key.pem", "-out",
                        f"{nginx_dir}/cert.pem"], check=True, capture_output=True)
        conf = os.path.join(nginx_dir, "nginx.conf")
        with open(conf, "w", encoding="ascii") as out:
            out.write(NGINX_CONF.format(dir=nginx_dir, port=self.port,
                                        timeout=KEEPALIVE_TIMEOUT_S))
        nginx = subprocess.Popen(["nginx", "-p", nginx_dir, "-e", f"{nginx_dir}/error.log", "-c",
                                  conf, "-g", "daemon off;"], stderr=subprocess.DEVNULL)
        self.addCleanup(nginx.wait, timeout=10)
        self.addCleanup(nginx.terminate)
        wait_for(lambda: os.path.exists(f"{nginx_dir}/nginx.pid"), timeout=20, interval=0.1)

    def exchange(self):
        """One request answered over a new TLS connection; returns the TLS socket."""
        raw = socket.create_connection(("127.0.0.1", self.port))
        self.addCleanup(raw.close)
        tls = tls_client().wrap_socket(raw, server_hostname="backend")
        tls.sendall(b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n")
        received = b""
        while not received.endswith(b"ok\n"):
            received += tls.recv(4096)
        return tls

    def health_check(self):
        """An ALB's health check of an HTTPS target: a new TLS connection, one request with
        Connection: close, read to the server's close, then the client's close_notify (to a
        socket the server already closed). Returns its local port."""
        raw = socket.create_connection(("127.0.0.1", self.port))
        self.addCleanup(raw.close)
        tls = tls_client().wrap_socket(raw, server_hostname="backend")
        tls.sendall(b"GET /health HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n"
                    b"User-Agent: ELB-HealthChecker/2.0\r\n\r\n")
        while tls.recv(4096):
            pass
        port = tls.getsockname()[1]
        try:
            tls.unwrap()
        except (ssl.SSLError, OSError):
            pass  # the server's reset may come first
        return port

    def recorded(self, client):
        """Runs `client` (returns its local port) recorded and captured, beside a health check;
        returns the server's conn record and the connection's segments on the wire. The health
        check is judged here."""
        pcap = os.path.join(self.workdir, "wire.pcap")
        recorder = Recorder("--port", str(self.port), "--quiet", linger_ms=300)
        self.addCleanup(recorder.cleanup)
        with LoopbackCapture(pcap, self.port):
            with recorder:
                check_port = self.health_check()
                client_port = client()
                time.sleep(0.5)  # the last resets, and the linger
            for port in (check_port, client_port):
                wait_for(lambda: any(row[2] & 0x4 or (row[2] & 0x1 and row[1])
                                     for row in segments(pcap, self.port, port)),
                         timeout=30, interval=0.5)
        self.assertEqual(recorder.process.returncode, 0, recorder.stderr)
        _, conns, _, _ = recorder.trace()

        def server_end(port):
            ends = [c for c in conns if c["role"] == "server" and c["remote"]["port"] == port]
            self.assertEqual(len(ends), 1, conns)
            return ends[0]

        self.assert_health_check(server_end(check_port), segments(pcap, self.port, check_port))
        return server_end(client_port), segments(pcap, self.port, client_port)

    def assert_health_check(self, check, wire):
        """Its Connection: close and User-Agent are encrypted: the close is judged by the
        alerts and the TCP close as the wire shows them (the first of them is the close), and
        is a close right after a completed exchange, no race, no idle timer and no request
        caught."""
        first_close = first_tls_close(wire)
        self.assertEqual(check["close"]["initiator"], "peer" if first_close[1] else "local",
                         f"{check} {wire}")
        self.assertEqual(check["close"]["cause"],
                         "closed_after_use" if first_close[1] else "keepalive_ended",
                         f"{check} {wire}")
        self.assertNotIn("race", check["verdict"], check)
        self.assertEqual({r["outcome"] for r in check["requests"]}, {"completed"}, check)
        self.assertIsNone(check["health_check"], check)

    def test_a_close_notify_after_the_servers_idle_close_is_no_late_request(self):
        def client():
            tls = self.exchange()
            self.assertEqual(tls.recv(4096), b"", "the server closes the idle connection")
            tls.unwrap()  # the client's close_notify, to a socket already closed
            return tls.getsockname()[1]

        conn, wire = self.recorded(client)
        # The server's first close: its alert (nginx may send one), FIN or RST.
        server_close = next(row for row in wire
                            if not row[1] and (row[2] & 0x5 or ALERT in row[4]))
        after = [row for row in wire if row[1] and row[3] > 0 and row[0] >= server_close[0]]
        self.assertTrue(after, f"the wire: the client's bytes after the server's close {wire}")
        self.assertTrue(all(types and set(types) == {ALERT} for *_, types in after),
                        f"the wire: only TLS alerts after the server's close {wire}")
        last_payload = max(row[0] for row in wire if row[3] > 0 and row[0] < server_close[0])
        wire_idle_ms = (server_close[0] - last_payload) * 1000

        self.assertNotIn("race", conn["verdict"], conn)
        self.assertEqual([r["outcome"] for r in conn["requests"]],
                         ["completed"] * len(conn["requests"]), conn)
        self.assertAlmostEqual(conn["close"]["idle_ms"], wire_idle_ms, delta=50, msg=conn)
        # The server began the close (its alert, FIN or RST), whichever FIN or RST went first at
        # the TCP level: nginx may reset when the client's alert is still unread
        # (TCP_ABORT_ON_CLOSE), or the client's FIN may go before nginx's.
        self.assertFalse(first_tls_close(wire)[1], f"the wire: the server's close first {wire}")
        self.assertEqual(conn["close"]["initiator"], "local", conn)
        server_fin_or_rst = next(row for row in wire if not row[1] and row[2] & 0x5)
        self.assertEqual(conn["verdict"], "local_reset" if server_fin_or_rst[2] & 0x4
                         else "local_idle_close", conn)
        self.assertEqual(conn["close"]["cause"], "idle_timer", conn)

    def test_a_close_notify_before_the_servers_fin_is_the_clients_close(self):
        def client():
            tls = self.exchange()
            time.sleep(KEEPALIVE_TIMEOUT_S / 2)
            port = tls.getsockname()[1]
            try:
                tls.unwrap()  # nginx closes the socket on reading it, without its own alert
            except ssl.SSLError:
                pass
            return port

        conn, wire = self.recorded(client)
        first_fin = next(row for row in wire if row[2] & 0x1)
        self.assertFalse(first_fin[1], f"the wire: the server's FIN first {wire}")
        alerts = [row for row in wire if row[1] and ALERT in row[4]]
        self.assertTrue(alerts and alerts[0][0] <= first_fin[0],
                        f"the wire: the client's alert before it {wire}")

        # The client closed first, at the TLS layer, half a second after its exchange: done
        # with its connection, whoever's FIN went first.
        self.assertEqual(conn["close"]["initiator"], "peer", conn)
        self.assertEqual(conn["verdict"], "peer_idle_close", conn)
        self.assertEqual(conn["close"]["cause"], "closed_after_use", conn)
        self.assertAlmostEqual(conn["close"]["idle_ms"], KEEPALIVE_TIMEOUT_S / 2 * 1000, delta=50,
                               msg=conn)
        self.assertEqual([r["outcome"] for r in conn["requests"]],
                         ["completed"] * len(conn["requests"]), conn)

    def test_a_request_after_the_servers_idle_close_is_still_a_race(self):
        def client():
            tls = self.exchange()
            # Not reading: the server's close is not seen before the next request goes.
            time.sleep(KEEPALIVE_TIMEOUT_S + 0.3)
            tls.sendall(b"GET /late HTTP/1.1\r\nHost: backend\r\n\r\n")
            return tls.getsockname()[1]

        conn, wire = self.recorded(client)
        # The server's first close: its alert, FIN or RST.
        server_close = next(row for row in wire
                            if not row[1] and (row[2] & 0x5 or ALERT in row[4]))
        late = [row for row in wire if row[1] and row[3] > 0 and row[0] >= server_close[0]]
        self.assertTrue(late and any(ALERT not in types for *_, types in late),
                        f"the wire: the client's request after the server's close {wire}")

        self.assertEqual(conn["close"]["initiator"], "local", conn)
        self.assertEqual(conn["verdict"], "local_close_race", conn)
        # After the FIN, or before it and unread when nginx closed the socket (an RST).
        self.assertIn(conn["requests"][-1]["outcome"], ("after_local_close", "unread_at_close"),
                      conn)
