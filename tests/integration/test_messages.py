"""What the kernel writes of a connection's messages (issue 15) and how it reads their heads
(issue 18): a busy keep-alive connection costs a handful of message records, not one per
request, yet its record counts every request and lists the first, the one after an idle gap and
the last; a request head sent a few bytes per segment is reassembled to its method and target;
an interim response (100 Continue) is no answer, and the body it asked for is no request."""
import socket
import threading
import time
import unittest

from support import CONTINUE, RESPONSE, KeepAliveServer, Recorder, ThreadedServer, require_bpf

PORT = 18950
REQUEST = b"GET /split/path/abc?token=SECRET HTTP/1.1\r\nHost: backend\r\nUser-Agent: t\r\n\r\n"
EXPECT = (b"POST /upload HTTP/1.1\r\nHost: backend\r\nContent-Length: 4\r\n"
          b"Expect: 100-continue\r\n\r\n")


class AnswerAtEndServer(ThreadedServer):
    """Reads until the client shuts down its sending side, then answers (as HTTP/1.0 servers
    did): the response comes after the client's FIN."""

    def handle(self, conn):
        with conn:
            while conn.recv(65536):
                pass
            conn.sendall(RESPONSE)


def client(port=PORT):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def exchange(sock, chunk=None):
    """One request, `chunk` bytes per segment (whole when None), and its response read."""
    step = chunk or len(REQUEST)
    for start in range(0, len(REQUEST), step):
        sock.sendall(REQUEST[start:start + step])
        if chunk:
            time.sleep(0.005)  # each piece its own segment
    received = b""
    while not received.endswith(b"ok"):
        received += sock.recv(4096)


def server_record(conns, client_port):
    found = [c for c in conns if c["role"] == "server" and c["remote"]["port"] == client_port]
    assert len(found) == 1, f"{len(found)} server records for client port {client_port}"
    return found[0]


class MessagesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_bpf()
        cls.enterClassContext(KeepAliveServer(PORT))

    def record(self, traffic, *args):
        recorder = Recorder("--port", str(PORT), *args)
        self.addCleanup(recorder.cleanup)
        with recorder:
            ports = traffic()
            time.sleep(0.6)  # past the linger: every connection is written
        self.assertEqual(recorder.process.returncode, 0, recorder.stderr)
        return recorder.trace(), ports

    def test_busy_connection_counts_every_request_and_lists_those_that_matter(self):
        def traffic():
            sock = client()
            port = sock.getsockname()[1]
            for _ in range(300):
                exchange(sock)
            time.sleep(0.8)  # an idle gap longer than --idle-gap-ms
            exchange(sock)
            for _ in range(50):
                exchange(sock)
            sock.close()
            return port

        (_, conns, events, summary), port = self.record(traffic, "--events")
        conn = server_record(conns, port)
        listed = conn["requests"]
        gaps = [r["idle_before_ms"] for r in listed]
        self.assertEqual(len(listed) + conn["requests_omitted"], 351, gaps)
        self.assertTrue(all(r["outcome"] == "completed" for r in listed), listed)
        # The first, the one after the gap and the last, each with its own response.
        self.assertEqual(len(listed), 3, gaps)
        self.assertGreaterEqual(listed[1]["idle_before_ms"], 700)
        self.assertLess(listed[2]["idle_before_ms"], 700)
        self.assertTrue(all(r["status"] == 200 for r in listed), listed)
        self.assertEqual(conn["verdict"], "peer_idle_close")
        # Both ends are on this host: 2 x (the first exchange, the gap's, the last) at most.
        messages = [e for e in events if e["kind"] == "message"]
        self.assertLessEqual(len(messages), 12, messages)
        self.assertEqual(summary["lost_events"], 0)

    def test_heads_split_across_small_segments_give_method_and_target(self):
        def traffic():
            ports = {}
            for chunk in (1, 4, 8):
                sock = client()
                ports[chunk] = sock.getsockname()[1]
                exchange(sock, chunk)
                sock.close()
            return ports

        (_, conns, _, _), ports = self.record(traffic)
        for chunk, port in ports.items():
            with self.subTest(bytes_per_segment=chunk):
                request = server_record(conns, port)["requests"][0]
                self.assertEqual((request["method"], request["target"]), ("GET", "/split/path/abc"))
                self.assertEqual(request["status"], 200)

    def test_a_client_that_shuts_down_its_sending_side_is_answered(self):
        """The request and the client's FIN come before the response (this host in CLOSE_WAIT),
        whose body shares its head's segment: the response still answers the request."""
        answers = []
        self.enterContext(AnswerAtEndServer(PORT + 1))

        def traffic():
            sock = client(PORT + 1)
            port = sock.getsockname()[1]
            sock.sendall(REQUEST)
            sock.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := sock.recv(4096):
                received += chunk
            answers.append(received)
            sock.close()
            return port

        (_, conns, _, _), port = self.record(traffic, "--port", str(PORT + 1))
        self.assertEqual(answers, [RESPONSE])
        conn = server_record(conns, port)
        self.assertEqual([(r["target"], r["outcome"], r["status"]) for r in conn["requests"]],
                         [("/split/path/abc", "completed", 200)])
        self.assertEqual(conn["close"]["initiator"], "peer")
        self.assertLess(conn["close"]["peer_fin_ns"], conn["requests"][0]["response_ns"])
        self.assertEqual(conn["verdict"], "peer_idle_close")

    def test_an_interim_response_is_no_answer_and_leaves_the_held_one(self):
        """On a busy connection the kernel holds the latest response for a close; a 100 Continue
        neither counts as a response nor takes the held one's place: its request, abandoned at
        the close, is unanswered, and the response written at the close is the 200 before it."""
        def read(sock, until):
            received = b""
            while not received.endswith(until):
                received += sock.recv(4096)

        def traffic():
            ports = {}
            for abandon in (False, True):
                sock = client()
                ports[abandon] = sock.getsockname()[1]
                for _ in range(20):
                    exchange(sock)
                sock.sendall(EXPECT)
                read(sock, CONTINUE)
                if not abandon:
                    sock.sendall(b"body")
                    read(sock, b"ok")
                sock.close()
            return ports

        (_, conns, events, _), ports = self.record(traffic, "--events")
        for abandon, port in ports.items():
            with self.subTest(abandoned=abandon):
                conn = server_record(conns, port)
                listed = conn["requests"]
                self.assertEqual(len(listed) + conn["requests_omitted"], 21, listed)
                last = listed[-1]
                self.assertEqual((last["method"], last["target"]), ("POST", "/upload"))
                if abandon:
                    self.assertEqual(last["outcome"], "unanswered_at_close", last)
                    held = [e["heads"] for e in events
                            if e["kind"] == "message" and e["message"] == "response" and e["held"]
                            and e["local"]["port"] == PORT and e["remote"]["port"] == port]
                    self.assertEqual(held, [[{"status": 200}]], held)
                else:
                    self.assertEqual((last["outcome"], last["status"]), ("completed", 200), last)


UPGRADE = (b"GET /chat HTTP/1.1\r\nHost: backend\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\n\r\n")
SWITCHING = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
             b"Connection: Upgrade\r\n\r\n")


class SwitchingServer(ThreadedServer):
    """Answers a connection's first request 101 Switching Protocols, with `greeting` (a first
    frame) in the same segment, then echoes every frame."""

    def __init__(self, greeting):
        super().__init__()
        self.greeting = greeting

    def handle(self, conn):
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    return
                head += data
            conn.sendall(SWITCHING + self.greeting)
            while data := conn.recv(65536):
                conn.sendall(data)


class SwitchedProtocolsTest(unittest.TestCase):
    def setUp(self):
        require_bpf()

    def test_the_new_protocols_bytes_are_no_messages(self):
        """After a 101 the kernel neither counts nor writes the frames, also those that follow
        an idle gap (each would be written as a message) or read like HTTP, and also when the
        server's first frame shares the 101's segment."""
        for greeting in (b"", b"\x81\x02hi"):
            with self.subTest(greeting=greeting), SwitchingServer(greeting) as server:
                self.assert_only_the_upgrade_is_messages(server)

    def assert_only_the_upgrade_is_messages(self, server):
        frames = (b"\x81\x05hello", b"GET /frame HTTP/1.1\r\n\r\n", b"\x88\x00")
        recorder = Recorder("--port", str(server.port), "--quiet", "--events")
        self.addCleanup(recorder.cleanup)
        with recorder:
            sock = client(server.port)
            client_port = sock.getsockname()[1]
            sock.sendall(UPGRADE)
            received = b""
            while len(received) < len(SWITCHING + server.greeting):
                received += sock.recv(4096)
            self.assertEqual(received, SWITCHING + server.greeting)
            for frame in frames:
                time.sleep(0.6)  # past --idle-gap-ms
                sock.sendall(frame)
                self.assertEqual(sock.recv(4096), frame)
            sock.close()
            time.sleep(0.6)  # past the linger: both ends are written
        self.assertEqual(recorder.process.returncode, 0, recorder.stderr)
        _, conns, events, _ = recorder.trace()
        messages = [(e["direction"], e["message"], e["heads"]) for e in events
                    if e["kind"] == "message" and client_port in
                    (e["local"]["port"], e["remote"]["port"])]
        request = [{"method": "GET", "target": "/chat"}]
        self.assertCountEqual(messages, [("in", "request", request), ("out", "response",
                                         [{"status": 101}]), ("out", "request", request),
                                         ("in", "response", [{"status": 101}])], messages)
        conn = server_record(conns, client_port)
        self.assertEqual([(r["target"], r["status"]) for r in conn["requests"]],
                         [("/chat", 101)], conn)
        self.assertEqual(conn["close"]["cause"], "upgraded", conn)


HEALTH_CHECK = (b"GET /health HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n"
                b"User-Agent: ELB-HealthChecker/2.0\r\n\r\n")


class DeferredAcceptServer(KeepAliveServer):
    """A listener that defers its accept until data arrives (TCP_DEFER_ACCEPT: Apache's default
    AcceptFilter, nginx's `listen ... deferred`): the connection is completed by its first
    request's segment, which the hooks see on the listener. `dual_stack` listens on :: for IPv4
    too, so its sockets show IPv4 peers as ::ffff:a.b.c.d (Apache, Go, Java)."""

    def __init__(self, port, dual_stack):
        self.listener = socket.socket(socket.AF_INET6 if dual_stack else socket.AF_INET)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dual_stack:
            self.listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)
        self.listener.bind(("::" if dual_stack else "127.0.0.1", port))
        self.listener.listen(16)
        self.port = port
        self.thread = threading.Thread(target=self.serve, daemon=True)


class DeferredAcceptTest(unittest.TestCase):
    """The first request of a connection to a deferred-accept listener is read like any other:
    a health check is a health check with its request, not a probe without one."""

    def setUp(self):
        require_bpf()

    def test_first_requests_on_a_deferred_accept_listener(self):
        for port, dual_stack in ((PORT + 2, False), (PORT + 3, True)):
            with self.subTest(dual_stack=dual_stack), DeferredAcceptServer(port, dual_stack):
                recorder = Recorder("--port", str(port))
                self.addCleanup(recorder.cleanup)
                with recorder:
                    check = client(port)
                    check_port = check.getsockname()[1]
                    check.sendall(HEALTH_CHECK)
                    self.assertTrue(check.recv(4096).endswith(b"ok"))
                    check.close()
                    busy = client(port)
                    busy_port = busy.getsockname()[1]
                    for _ in range(3):
                        exchange(busy)
                    busy.close()
                    time.sleep(0.6)  # past the linger: every connection is written
                self.assertEqual(recorder.process.returncode, 0, recorder.stderr)
                _, conns, _, _ = recorder.trace()
                conn = server_record(conns, check_port)
                self.assertEqual([(r["method"], r["target"], r["status"])
                                  for r in conn["requests"]], [("GET", "/health", 200)], conn)
                self.assertEqual(conn.get("health_check"), "ELB-HealthChecker", conn)
                self.assertEqual(conn["close"]["cause"], "connection_close", conn)
                conn = server_record(conns, busy_port)
                listed = conn["requests"]
                self.assertEqual(len(listed) + conn["requests_omitted"], 3, conn)
                self.assertEqual((listed[0]["method"], listed[0]["target"]),
                                 ("GET", "/split/path/abc"), conn)
                self.assertTrue(all(r["status"] == 200 for r in listed), conn)


if __name__ == "__main__":
    unittest.main()
