"""Helpers shared by the integration tests: run `closetrace record` and read its trace."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import socket
import tempfile
import threading
import time
import unittest

CLOSETRACE = os.environ.get("CLOSETRACE", "build/closetrace")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCENARIO_TOOLS = os.path.join(ROOT, "tools", "scenario")


def closetrace(*args):
    """Runs a closetrace command to completion; returns the CompletedProcess."""
    return subprocess.run([CLOSETRACE, *args], capture_output=True, text=True, timeout=120)


def free_port():
    """A loopback port nothing listens on, below the kernel's ephemeral range (32768 and up by
    default): a port the kernel hands out could be taken, before the test listens on it, as the
    source port of a connection another test opens meanwhile."""
    while True:
        port = random.randrange(20000, 32000)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def report_json(trace):
    """`closetrace report --format json` of a trace, parsed; fails the test if report fails."""
    result = closetrace("report", trace, "--format", "json")
    if result.returncode != 0:
        raise AssertionError(f"report failed: {result.stderr}")
    return json.loads(result.stdout)


def backend_recorder():
    """The scenario harness' recorder: closetrace in the backend's namespace, recording that
    namespace only (run it with recorder_ns="backend")."""
    if SCENARIO_TOOLS not in sys.path:
        sys.path.insert(0, SCENARIO_TOOLS)
    import scenarios
    return scenarios.backend_recorder(os.path.abspath(CLOSETRACE))


def require_bpf(test_case=None):
    """Skip, saying why, where recording truly cannot work: not root, or no kernel BTF."""
    reason = None
    if os.geteuid() != 0:
        reason = "integration tests need root (BPF and network namespaces): run them with sudo"
    elif not os.path.exists("/sys/kernel/btf/vmlinux"):
        reason = "this kernel has no BTF (/sys/kernel/btf/vmlinux): closetrace cannot record here"
    elif not os.path.exists(CLOSETRACE):
        raise RuntimeError(f"{CLOSETRACE} is not built")
    if reason:
        raise unittest.SkipTest(reason)


def require_peers(tools):
    """Skip, naming them, when the real peers a scenario runs are not installed."""
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        raise unittest.SkipTest(f"missing real peers {missing}: run tools/setup")


class PeerTest(unittest.TestCase):
    """A test of real peers on the wire: skipped, saying why, without root, BPF or the tools in
    TOOLS; each test gets its own temporary directory (self.workdir), removed after it, also
    when it fails."""
    TOOLS = ("ip", "node", "tcpdump", "tshark")

    @classmethod
    def setUpClass(cls):
        require_bpf()
        require_peers(cls.TOOLS)

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix=f"closetrace-{type(self).__name__}-")
        self.addCleanup(shutil.rmtree, self.workdir, ignore_errors=True)


class LoopbackCapture:
    """tcpdump on loopback for the duration of a `with` block."""

    def __init__(self, path, port):
        self.command = ["tcpdump", "-i", "lo", "-U", "-n", "-w", path, f"tcp port {port}"]
        self.process = None

    def __enter__(self):
        self.process = subprocess.Popen(self.command, stderr=subprocess.PIPE, text=True)
        # tcpdump says it is listening once the capture has started.
        line = self.process.stderr.readline()
        if "listening" not in line:
            self.process.kill()
            raise RuntimeError(f"tcpdump did not start: {line}{self.process.stderr.read()}")
        return self

    def __exit__(self, *exc):
        self.process.send_signal(signal.SIGINT)
        self.process.communicate(timeout=20)
        return False


def read_trace(path):
    """Returns (header, conns, events, summary) from a trace file; asserts its shape."""
    header, conns, events, summary = None, [], [], None
    with open(path, encoding="ascii") as trace:
        for number, line in enumerate(trace, 1):
            record = json.loads(line)
            kind = record["type"]
            if number == 1:
                assert kind == "header", f"{path}: first line is {kind}, not header"
                header = record
            elif kind == "conn":
                conns.append(record)
            elif kind == "event":
                events.append(record)
            elif kind == "summary":
                summary = record
            else:
                raise AssertionError(f"{path}:{number}: unknown type {kind}")
    assert summary is not None, f"{path}: no summary line"
    return header, conns, events, summary


def conn_lines_so_far(path):
    """The `conn` records of a trace still being written, up to its last whole line."""
    with open(path, encoding="ascii") as trace:
        text = trace.read()
    records = (json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines())
    return [record for record in records if record["type"] == "conn"]


class Recorder:
    """`closetrace record` in the background for the duration of a `with` block."""

    def __init__(self, *args, prefix=(), linger_ms=300):
        """`prefix`: a command that runs closetrace in its environment (it must exec it, so that
        stopping signals reach closetrace)."""
        self.directory = tempfile.TemporaryDirectory(prefix="closetrace-test-")
        self.path = os.path.join(self.directory.name, "trace.jsonl")
        self.command = [*prefix, os.path.abspath(CLOSETRACE), "record", "-o", self.path,
                        "--linger-ms", str(linger_ms), *args]
        self.process = None
        self.stderr = ""

    def __enter__(self):
        self.process = subprocess.Popen(self.command, stderr=subprocess.PIPE, text=True)
        # The header line is written once the programs are attached: recording has started.
        def started():
            return os.path.exists(self.path) and os.path.getsize(self.path) > 0
        if not wait_for(lambda: started() or self.process.poll() is not None, timeout=30):
            self.process.kill()
        if not started():
            _, stderr = self.process.communicate()
            raise RuntimeError(f"closetrace record did not start: {stderr}")
        return self

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                _, self.stderr = self.process.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.communicate()
                raise
        return self.process.returncode

    def __exit__(self, *exc):
        self.stop()
        return False

    def trace(self):
        return read_trace(self.path)

    def cleanup(self):
        self.directory.cleanup()


def wait_for(predicate, timeout=5.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class ThreadedServer:
    """A TCP server on loopback that hands each accepted connection to `handle` in its own
    thread; a context manager that stops accepting on exit."""

    def __init__(self, port=0):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn):
        raise NotImplementedError

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.listener.close()


RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class KeepAliveServer(ThreadedServer):
    """Answers every request head on a connection until the client closes it."""

    def handle(self, conn):
        buffered = b""
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buffered += data
                while b"\r\n\r\n" in buffered:
                    head, buffered = buffered.split(b"\r\n\r\n", 1)
                    if b"Expect: 100-continue" not in head:
                        conn.sendall(RESPONSE)
                        continue
                    conn.sendall(CONTINUE)
                    while len(buffered) < 4:  # the body (Content-Length: 4), then the answer
                        data = conn.recv(65536)
                        if not data:
                            return
                        buffered += data
                    buffered = buffered[4:]
                    conn.sendall(RESPONSE)


class ChurningTraffic:
    """Short connections to a local listener until stopped, so a recording has work in flight."""

    def __init__(self, pause_s=0.005):
        """`pause_s`: between one connection's close and the next one's opening."""
        self.pause_s = pause_s
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.serving = self.connecting = True
        self.server = threading.Thread(target=self.serve)
        self.client = threading.Thread(target=self.connect)

    def serve(self):
        self.listener.settimeout(0.2)
        while self.serving:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            conn.close()

    def connect(self):
        while self.connecting:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as client:
                    client.sendall(b"GET /churn HTTP/1.1\r\nHost: t\r\n\r\n")
                    client.recv(1024)
            except OSError:
                pass
            time.sleep(self.pause_s)

    def __enter__(self):
        self.server.start()
        self.client.start()
        return self

    def stall(self, recorder, seconds=4):
        """Stops `recorder` reading (SIGSTOP) for `seconds` of this traffic, so that its smallest
        ring fills and events are lost, lets it catch up, then ends the traffic."""
        time.sleep(0.5)
        recorder.process.send_signal(signal.SIGSTOP)
        time.sleep(seconds)
        recorder.process.send_signal(signal.SIGCONT)
        time.sleep(0.5)
        self.stop()

    def stop(self):
        """The client stops first, so that every connection it made is answered and closed."""
        self.connecting = False
        self.client.join()
        self.serving = False
        self.server.join()
        self.listener.close()

    def __exit__(self, *exc):
        self.stop()
