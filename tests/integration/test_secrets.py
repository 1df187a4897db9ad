"""No secret a request carries (a token in its query, a Cookie, an Authorization header) leaves
the host in any output of a recording unless asked for: the trace, the live view, and the
reports in every format, through every path a request takes (completed, the late request of a
close race, a reset with the request in flight, --events)."""
import os
import socket
import subprocess
import tempfile
import time
import unittest

from support import (CLOSETRACE, ThreadedServer, conn_lines_so_far, read_trace, require_bpf,
                     wait_for)

QUERY_SECRET = "QSECRET1"
COOKIE_SECRET = "CSECRET2"
AUTH_SECRET = "ASECRET3"
SECRETS = (QUERY_SECRET, COOKIE_SECRET, AUTH_SECRET)
# Idle keep-alive timeout of the server: a client that waits longer meets its FIN.
IDLE_CLOSE_S = 0.2
# record --linger-ms: how long a closed connection waits for a late request.
LINGER_S = 0.5


def request(method, path):
    return (f"{method} {path}?token={QUERY_SECRET} HTTP/1.1\r\nHost: b\r\n"
            f"Cookie: session={COOKIE_SECRET}\r\nAuthorization: Bearer {AUTH_SECRET}\r\n"
            "Content-Length: 0\r\n\r\n").encode()


class KeepAliveServer(ThreadedServer):
    """Answers each request and closes a connection idle for IDLE_CLOSE_S; a request for
    /reset is answered with a reset (SO_LINGER 0)."""

    def handle(self, conn):
        conn.settimeout(IDLE_CLOSE_S)
        try:
            while True:
                head = conn.recv(4096)
                if not head:
                    break
                if head.split(b" ")[1].startswith(b"/reset"):
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                    break
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            pass
        conn.close()


def exchange(port, *steps):
    """Each step: bytes to send, or a function of the client socket to wait with. Returns what
    came back."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=2) as client:
        for step in steps:
            if callable(step):
                step(client)
                continue
            try:
                client.sendall(step)
                replies.append(client.recv(4096))
            except OSError as error:
                replies.append(error)
    return replies


def server_closed(client):
    """Waits for the server's idle close (its FIN), however late a loaded machine runs its
    timer."""
    client.settimeout(30)
    assert client.recv(4096) == b"", "the server did not close the idle connection"
    client.settimeout(2)


def written(path):
    """Waits, after the server's idle close, until the recorder has written the server's side of
    the connection to `path`: after its linger, at a poll of its own that load can delay."""
    def wait(client):
        server_closed(client)
        client_port = client.getsockname()[1]

        def server_side_written():
            return any(c["role"] == "server" and c["remote"]["port"] == client_port
                       for c in conn_lines_so_far(path))
        assert wait_for(server_side_written, timeout=30, interval=0.05), \
            f"the connection from port {client_port} was not written within 30 s"
    return wait


def traffic(port, path):
    exchange(port, request("GET", "/completed"))
    # The late request of a close race: sent after the server's idle close, within the linger.
    exchange(port, request("GET", "/first"), server_closed, request("POST", "/late"))
    # One so late that its connection was written already: only the reset it met tells of it.
    exchange(port, request("GET", "/first"), written(path), request("POST", "/gone"))
    exchange(port, request("GET", "/reset"))


class SecretsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_bpf()

    def setUp(self):
        directory = tempfile.TemporaryDirectory(prefix="closetrace-secrets-")
        self.addCleanup(directory.cleanup)
        self.directory = directory.name

    def record(self, *flags):
        """Records the traffic; returns (trace path, everything record printed)."""
        path = os.path.join(self.directory, f"trace{len(os.listdir(self.directory))}.jsonl")
        with KeepAliveServer() as server:
            process = subprocess.Popen([CLOSETRACE, "record", "--port", str(server.port), "-o",
                                        path, "--linger-ms", str(int(LINGER_S * 1000)), *flags],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                started = wait_for(lambda: os.path.exists(path) and os.path.getsize(path) > 0
                                   or process.poll() is not None, timeout=30)
                self.assertTrue(started and process.poll() is None, "record did not start")
                traffic(server.port, path)
                time.sleep(1)
            finally:
                process.terminate()
                out, err = process.communicate(timeout=30)
        self.assertEqual(process.returncode, 0, err)
        return path, out + err

    def outputs(self, path):
        """The reports of the trace in every format, and verify's."""
        texts = {}
        for form in ("text", "json", "html"):
            result = subprocess.run([CLOSETRACE, "report", path, "--format", form],
                                    capture_output=True, text=True, timeout=60)
            self.assertEqual(result.returncode, 0, result.stderr)
            texts[f"report --format {form}"] = result.stdout + result.stderr
        result = subprocess.run([CLOSETRACE, "verify", path], capture_output=True, text=True,
                                timeout=60)
        texts["verify"] = result.stdout + result.stderr
        return texts

    def assert_paths_taken(self, path):
        _, conns, events, _ = read_trace(path)
        servers = [c for c in conns if c["role"] == "server"]
        verdicts = {c["verdict"] for c in servers}
        self.assertIn("local_close_race", verdicts, servers)
        self.assertIn("local_reset_inflight", verdicts, servers)
        outcomes = {(r["target"], r["outcome"]) for c in servers for r in c["requests"]}
        self.assertIn(("/completed", "completed"), outcomes)
        self.assertIn(("/late", "after_local_close"), outcomes)
        resets = [e for e in events if e["kind"] == "reset_sent"]
        self.assertIn([{"method": "POST", "target": "/gone"}], [e["heads"] for e in resets])

    def assert_no_secret(self, texts, allowed=()):
        for name, text in texts.items():
            for secret in SECRETS:
                if secret not in allowed:
                    self.assertNotIn(secret, text, f"{secret} in {name}")

    def test_default_recording_writes_no_secret_anywhere(self):
        path, printed = self.record()
        self.assert_paths_taken(path)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        with open(path, encoding="ascii") as trace:
            texts = {"trace": trace.read(), "record's output": printed}
        texts.update(self.outputs(path))
        self.assert_no_secret(texts)

    def test_events_write_heads_but_no_secret(self):
        path, printed = self.record("--events")
        self.assert_paths_taken(path)
        _, _, events, _ = read_trace(path)
        heads = [h for e in events for h in e.get("heads", [])]
        self.assertIn({"method": "POST", "target": "/late"}, heads)
        self.assertFalse([e for e in events if "payload" in e])
        with open(path, encoding="ascii") as trace:
            texts = {"trace": trace.read(), "record's output": printed}
        texts.update(self.outputs(path))
        self.assert_no_secret(texts)

    def test_full_target_keeps_the_query_only(self):
        path, printed = self.record("--events", "--full-target")
        with open(path, encoding="ascii") as trace:
            text = trace.read()
        self.assertIn(QUERY_SECRET, text)
        texts = {"trace": text, "record's output": printed}
        texts.update(self.outputs(path))
        self.assert_no_secret(texts, allowed=(QUERY_SECRET,))

    def test_raw_payloads_write_what_the_wire_carried(self):
        # The control: the recorder saw every secret, and writes them only when asked to.
        path, _ = self.record("--events", "--raw-payloads")
        with open(path, encoding="ascii") as trace:
            text = trace.read()
        for secret in SECRETS:
            self.assertIn(secret, text)


if __name__ == "__main__":
    unittest.main()
