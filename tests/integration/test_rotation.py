"""Continuous recording (issue 16): two recorders with rotation watch the same half minute of
churn, ALB health checks (`Connection: close`) and keep-alive connections, and get a SIGHUP
halfway. Every file either leaves is a whole trace on its own (`closetrace report` reads it
without a word on standard error, gzip ones too); the one without retention holds every
connection the client made (counted by the client), each once across its files; the other stays
within its retention bounds."""
import gzip
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

from support import CLOSETRACE, ThreadedServer, require_bpf, wait_for

TRAFFIC_SECONDS = 30
CLOSED_NAME = re.compile(r"closetrace-\d{8}T\d{6}-\d{6}\.jsonl(\.gz)?")
HEALTH_CHECK = (b"GET /health HTTP/1.1\r\nHost: target\r\nUser-Agent: ELB-HealthChecker/2.0\r\n"
                b"Connection: close\r\n\r\n")
REQUEST = b"GET /items?token=secret HTTP/1.1\r\nHost: target\r\n\r\n"


class KeepAliveServer(ThreadedServer):
    """HTTP/1.1 with keep-alive: answers each request, closes on `Connection: close` and after
    0.5 s without one (an idle timer)."""

    def handle(self, conn):
        conn.settimeout(0.5)
        with conn:
            try:
                while request := conn.recv(4096):
                    closing = b"connection: close" in request.lower()
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" +
                                 (b"Connection: close\r\n" if closing else b"") + b"\r\nok")
                    if closing:
                        return
            except OSError:  # the idle timer, or the client went away
                return


class Client:
    """Connections of three kinds until stopped; remembers each one's source port."""

    def __init__(self, port):
        self.port = port
        self.ports = []
        self.lock = threading.Lock()
        self.running = True
        self.threads = [threading.Thread(target=self.churn, args=(0.05, REQUEST)),
                        threading.Thread(target=self.churn, args=(0.5, HEALTH_CHECK)),
                        threading.Thread(target=self.keep_alive)]

    def connect(self):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        with self.lock:
            self.ports.append(sock.getsockname()[1])
        return sock

    def churn(self, interval, request):
        """One request a connection, closed by the client (or by the server when asked)."""
        while self.running:
            with self.connect() as sock:
                sock.sendall(request)
                sock.recv(4096)
                if request == HEALTH_CHECK:
                    sock.recv(4096)  # the server's FIN
            time.sleep(interval)

    def keep_alive(self):
        """Five requests on a connection, then idle until the server's idle timer closes it."""
        while self.running:
            with self.connect() as sock:
                for _ in range(5):
                    sock.sendall(REQUEST)
                    sock.recv(4096)
                    time.sleep(0.1)
                sock.recv(4096)

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        for thread in self.threads:
            thread.join()


class RotatingRecorder:
    """`closetrace record` into a directory of rotated files."""

    def __init__(self, directory, port, *options):
        self.directory = directory
        self.process = subprocess.Popen(
            [CLOSETRACE, "record", "--port", str(port), "--quiet", "--linger-ms", "300",
             "-o", directory, *options], stderr=subprocess.PIPE, text=True)
        if not wait_for(lambda: self.live_file() or self.process.poll() is not None, 30):
            self.process.kill()
        if not self.live_file():
            raise RuntimeError(f"closetrace record did not start: {self.process.communicate()[1]}")

    def live_file(self):
        live = [name for name in os.listdir(self.directory) if name.endswith(".live.jsonl")]
        return live[0] if live else None

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        _, stderr = self.process.communicate(timeout=30)
        return self.process.returncode, stderr


def read_lines(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="ascii") as trace:
        return [json.loads(line) for line in trace]


class RotationTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_bpf()

    def setUp(self):
        for name in ("complete", "retained"):
            directory = tempfile.TemporaryDirectory(prefix=f"closetrace-rotation-{name}-")
            self.addCleanup(directory.cleanup)
            setattr(self, name, directory.name)

    def assert_whole_traces(self, directory):
        """Every file is closed, named by the scheme, and a whole trace that report reads
        without warnings; returns {file name: its records}."""
        files = {}
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            self.assertRegex(name, CLOSED_NAME)
            result = subprocess.run([CLOSETRACE, "report", path], capture_output=True, text=True,
                                    timeout=60)
            self.assertEqual((result.returncode, result.stderr), (0, ""), name)
            records = read_lines(path)
            self.assertEqual(records[0]["type"], "header", name)
            self.assertEqual(records[-1]["type"], "summary", name)
            conns = [record for record in records if record["type"] == "conn"]
            self.assertEqual(records[-1]["connections"], len(conns), name)
            self.assertNotIn("secret", json.dumps(records), name)
            files[name] = records
        return files

    def test_rotated_files_are_whole_and_lose_no_connection(self):
        with KeepAliveServer() as server:
            complete = RotatingRecorder(self.complete, server.port, "--rotate-size", "48K",
                                        "--gzip")
            retained = RotatingRecorder(self.retained, server.port, "--rotate-interval", "2s",
                                        "--rotate-size", "16K", "--keep-files", "3",
                                        "--keep-bytes", "40K", "--gzip")
            try:
                with Client(server.port) as client:
                    time.sleep(TRAFFIC_SECONDS / 2)
                    live = complete.live_file()
                    complete.process.send_signal(signal.SIGHUP)
                    retained.process.send_signal(signal.SIGHUP)
                    # The recorder turns to the signal at its next poll (100 ms), once the last
                    # file's compression (a thread) is done: late on a loaded machine.
                    self.assertTrue(wait_for(lambda: complete.live_file() not in (None, live), 30),
                                    "SIGHUP did not start a new file within 30 s")
                    time.sleep(TRAFFIC_SECONDS / 2)
                time.sleep(1)  # the server's idle closes, the recorder's linger
            finally:
                outcomes = [complete.stop(), retained.stop()]
        for returncode, stderr in outcomes:
            self.assertEqual((returncode, stderr), (0, ""))

        files = self.assert_whole_traces(self.complete)
        self.assertGreater(len(files), 3)
        self.assertTrue(all(name.endswith(".gz") for name in files))
        # Both ends are on this host: the server's record of each connection names the client's
        # port as its remote one.
        server_side = [conn["remote"]["port"] for records in files.values() for conn in records
                       if conn["type"] == "conn" and conn["local"]["port"] == server.port]
        self.assertEqual(sorted(server_side), sorted(client.ports))
        cookies = [conn["cookie"] for records in files.values() for conn in records
                   if conn["type"] == "conn"]
        self.assertEqual(len(cookies), len(set(cookies)), "a connection in two files")
        self.assertTrue(any(conn["type"] == "conn" and conn["health_check"]
                            for records in files.values() for conn in records))
        # Consecutive files: each starts where the one before ended.
        spans = [(records[0]["start_ns"], records[-1]["end_ns"]) for records in files.values()]
        for (_, end), (start, _) in zip(spans, spans[1:]):
            self.assertEqual(start, end)

        kept = self.assert_whole_traces(self.retained)
        self.assertLessEqual(len(kept), 3)
        self.assertLessEqual(sum(os.path.getsize(os.path.join(self.retained, name))
                                 for name in kept), 40 * 1024)
        for name, records in kept.items():
            self.assertLessEqual(records[-1]["duration_s"], 2.5, name)


if __name__ == "__main__":
    unittest.main()
