"""Whose socket it is: two fake Docker containers (cgroup v2 scopes, each with its own network
namespace) serve on the same port. The trace must tell them apart, and `--container` must keep
exactly the connections of the one it names."""
import os
import secrets
import shutil
import signal
import subprocess
import time
import unittest

from support import CLOSETRACE, Recorder, closetrace, require_bpf, wait_for

PORT = 8080
SERVER = """
import http.server, socketserver
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args): pass
socketserver.TCPServer.allow_reuse_address = True
http.server.HTTPServer(("127.0.0.1", %d), Handler).serve_forever()
""" % PORT
CLIENT = """
import http.client
for path in ("/one", "/two"):
    c = http.client.HTTPConnection("127.0.0.1", %d, timeout=5)
    c.request("GET", path); c.getresponse().read(); c.close()
""" % PORT


def cgroup2_mount():
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[2] == "cgroup2":
                return fields[1]
    return None


class FakeContainer:
    """A cgroup v2 scope named like Docker's, a network namespace, and a server inside both."""

    def __init__(self, parent_cgroup, tag):
        self.id = secrets.token_hex(32)
        self.netns = f"ctcont{os.getpid()}{tag}"
        self.cgroup = os.path.join(parent_cgroup, f"docker-{self.id}.scope")
        os.mkdir(self.cgroup)
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True)
        # Joins the cgroup before it creates its listening socket: sockets keep the cgroup of
        # the process that created them.
        self.server = subprocess.Popen(
            ["sh", "-c", f'echo $$ > "{self.cgroup}/cgroup.procs" && '
                         f'exec ip netns exec {self.netns} python3 -c "$0"', SERVER],
            start_new_session=True)
        ready = wait_for(lambda: subprocess.run(
            ["ip", "netns", "exec", self.netns, "python3", "-c",
             f"import socket; socket.create_connection(('127.0.0.1', {PORT}), 1)"],
            capture_output=True).returncode == 0, timeout=30)
        if not ready:
            raise RuntimeError(f"server in {self.netns} did not start")

    def serve_requests(self):
        subprocess.run(["ip", "netns", "exec", self.netns, "python3", "-c", CLIENT], check=True,
                       timeout=30)

    def remove(self):
        if self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait()
        subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True)
        wait_for(lambda: not open(f"{self.cgroup}/cgroup.procs").read().strip(), timeout=30)
        os.rmdir(self.cgroup)


class ContainerAttributionTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_bpf()
        mount = cgroup2_mount()
        if not mount:
            raise unittest.SkipTest("no cgroup v2 mount: containers cannot be told apart here")
        cls.parent = os.path.join(mount, f"closetrace-test-{os.getpid()}")
        os.mkdir(cls.parent)
        cls.containers = []
        try:
            cls.containers = [FakeContainer(cls.parent, tag) for tag in "ab"]
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for container in getattr(cls, "containers", []):
            container.remove()
        if os.path.isdir(getattr(cls, "parent", "")):
            os.rmdir(cls.parent)

    def record(self, *args, report_args=None):
        """Records both containers serving; returns the trace (and `report` output if asked)."""
        recorder = Recorder("--port", str(PORT), "--quiet", *args)
        try:
            with recorder:
                for container in self.containers:
                    container.serve_requests()
                time.sleep(0.6)
            self.assertEqual(recorder.process.returncode, 0, recorder.stderr)
            if report_args is None:
                return recorder.trace()
            return recorder.trace(), closetrace("report", recorder.path, *report_args)
        finally:
            recorder.cleanup()

    def server_conns(self, conns):
        return [c for c in conns if c["local"]["port"] == PORT]

    def test_same_port_in_two_containers_is_told_apart(self):
        _, conns, _, _ = self.record()
        by_container = {}
        for conn in self.server_conns(conns):
            container = conn["container"]
            self.assertIsNotNone(container, conn)
            self.assertEqual(container["runtime"], "docker")
            by_container.setdefault(container["id"], []).append(conn)
            self.assertTrue(conn["cgroup"].endswith(".scope"), conn["cgroup"])
        self.assertEqual(set(by_container), {c.id for c in self.containers})
        for container in self.containers:
            served = by_container[container.id]
            self.assertEqual(len(served), 2)
            self.assertEqual({c["netns"] for c in served}, {served[0]["netns"]})
            self.assertEqual(sorted(r["target"] for c in served for r in c["requests"]),
                             ["/one", "/two"])
        netns = {by_container[c.id][0]["netns"] for c in self.containers}
        self.assertEqual(len(netns), 2, "the two containers' network namespaces")
        # Each loopback connection's two sockets name each other, in their own namespace: the
        # same addresses in the other container are another connection.
        by_cookie = {conn["cookie"]: conn for conn in conns}
        self.assertEqual(len(conns), 8, conns)
        for conn in conns:
            other = by_cookie[conn["other_end"]["cookie"]]
            self.assertEqual(other["other_end"]["cookie"], conn["cookie"])
            self.assertEqual(other["netns"], conn["netns"])
            self.assertEqual(conn["other_end"]["server"],
                             "local" if conn["local"]["port"] == PORT else "peer")

    def test_report_breaks_the_figures_down_by_container(self):
        _, report = self.record(report_args=["--by", "container"])
        self.assertEqual(report.returncode, 0, report.stderr)
        self.assertIn("By container", report.stdout)
        for container in self.containers:
            self.assertIn(f"docker:{container.id[:12]}", report.stdout)

    def test_container_filter_keeps_only_that_container(self):
        kept = self.containers[0]
        header, conns, _, _ = self.record("--container", kept.id[:12])
        self.assertEqual(header["filters"]["container"], kept.id[:12])
        self.assertEqual(len(conns), 2, conns)
        for conn in conns:
            self.assertEqual(conn["container"]["id"], kept.id)
            self.assertEqual(conn["local"]["port"], PORT)

    def test_unknown_container_is_a_one_line_error(self):
        result = subprocess.run([CLOSETRACE, "record",
                                 "--container", "0123456789abcdef0123", "--duration", "1"],
                                capture_output=True, text=True)
        self.assertEqual(result.returncode, 2)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertIn("no running container", result.stderr)


if __name__ == "__main__":
    unittest.main()
