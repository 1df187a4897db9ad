"""Connections still open when `record` ends (issue 15, deliverable 3: a conn record carries exact
request and response counts). The kernel counts a keep-alive connection's messages in the
socket's state and hands the latest of each kind over when the socket closes; at the end of a
recording it hands over those of the sockets still open, however the recording ends (SIGINT,
SIGTERM, --duration). Judged by the wire: tshark counts the requests and responses of a capture
of the same run. The portable programs (record --btf) cannot hand them over: the trace then says
that the open connection's requests are a lower bound."""
import json
import os
import signal
import socket
import subprocess
import unittest

from support import KeepAliveServer, LoopbackCapture, PeerTest, Recorder, free_port, wait_for

HTTP2_PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "http2")
NODE = "/usr/bin/node"
HEADERS = 1

EXCHANGES = 30
REQUEST = b"GET /open/%d HTTP/1.1\r\nHost: backend\r\n\r\n"


def wire_count(pcap, port, client_port, kind):
    """HTTP messages of `kind` (request | response) on the connection from `client_port`, as
    tshark decodes the capture (one message per segment here: each request waits for its
    response). The capture may still be written: a packet cut short at its end is not counted."""
    out = subprocess.run(["tshark", "-r", pcap, "-d", f"tcp.port=={port},http", "-Y",
                          f"tcp.port == {client_port} && http.{kind}", "-T", "fields", "-e",
                          "frame.number"], capture_output=True, text=True, check=False).stdout
    return len(out.split())


def http2_headers(pcap, port, client_port):
    """(streams the client opened, streams the server answered) on the connection from
    `client_port`: the stream ids of the HEADERS frames each side sent, as tshark decodes the
    capture (several frames of one segment share its line)."""
    out = subprocess.run(["tshark", "-r", pcap, "-d", f"tcp.port=={port},http2", "-Y",
                          f"tcp.port == {client_port} && http2.type == {HEADERS}", "-T", "fields",
                          "-E", "separator=/t", "-e", "tcp.srcport", "-e", "http2.type", "-e",
                          "http2.streamid"], capture_output=True, text=True, check=False).stdout
    opened, answered = set(), set()
    for line in out.splitlines():
        source, types, ids = line.split("\t")
        for frame_type, stream_id in zip(types.split(","), ids.split(",")):
            if int(frame_type) == HEADERS:
                (opened if int(source) == client_port else answered).add(int(stream_id))
    return len(opened), len(answered)


def stop_by_signal(number):
    def stop(recorder):
        recorder.process.send_signal(number)
        _, recorder.stderr = recorder.process.communicate(timeout=30)
    return stop


def stop_at_duration(recorder):
    _, recorder.stderr = recorder.process.communicate(timeout=30)


class OpenAtEndTest(PeerTest):
    TOOLS = ("tcpdump", "tshark")

    def setUp(self):
        super().setUp()
        self.port = free_port()
        self.enterContext(KeepAliveServer(self.port))

    def record_open_connection(self, stop, *args, exchanges=EXCHANGES):
        """`exchanges` keep-alive exchanges on one connection, left open while the recording ends
        by `stop`. Returns the two conn records (client, server) and the wire's counts of
        requests and responses on that connection."""
        pcap = os.path.join(self.workdir, "wire.pcap")
        recorder = Recorder("--port", str(self.port), "--quiet", *args)
        self.addCleanup(recorder.cleanup)
        with LoopbackCapture(pcap, self.port):
            with recorder:
                client = socket.create_connection(("127.0.0.1", self.port))
                self.addCleanup(client.close)
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                client_port = client.getsockname()[1]
                for number in range(exchanges):
                    client.sendall(REQUEST % number)
                    received = b""
                    while not received.endswith(b"ok"):
                        received += client.recv(4096)
                stop(recorder)
            # tcpdump hands packets over in blocks (immediate mode drops some of a burst): what
            # it has not written when it stops is lost. The client saw every exchange; wait until
            # the capture holds them.
            def wire():
                return (wire_count(pcap, self.port, client_port, "request"),
                        wire_count(pcap, self.port, client_port, "response"))
            wait_for(lambda: wire() == (exchanges, exchanges), timeout=30, interval=0.5)
        self.assertEqual(recorder.process.returncode, 0, recorder.stderr)
        _, conns, _, _ = recorder.trace()
        records = [c for c in conns if client_port in (c["local"]["port"], c["remote"]["port"])]
        self.assertEqual(sorted(c["role"] for c in records), ["client", "server"], records)
        wire = wire()
        self.assertEqual(wire, (exchanges, exchanges), "the wire: every request answered")
        return sorted(records, key=lambda c: c["role"]), wire

    def assert_exact(self, stop, *args, exchanges=EXCHANGES):
        records, (requests, responses) = self.record_open_connection(stop, *args,
                                                                     exchanges=exchanges)
        for conn in records:
            listed = conn["requests"]
            self.assertEqual(conn["verdict"], "open", conn)
            self.assertIsNone(conn["closed_ns"], conn)
            self.assertEqual(len(listed) + conn["requests_omitted"], requests, conn)
            # Omitted requests are all completed: every request answered, none in flight.
            answered = conn["requests_omitted"] + sum(r["outcome"] == "completed" for r in listed)
            self.assertEqual(answered, responses, conn)
            self.assertNotIn("in_flight", [r["outcome"] for r in listed], conn)
            self.assertNotIn("requests_lower_bound", conn)

    def test_counts_are_exact_when_stopped_by_sigint(self):
        self.assert_exact(stop_by_signal(signal.SIGINT))

    def test_counts_are_exact_when_stopped_by_sigterm(self):
        self.assert_exact(stop_by_signal(signal.SIGTERM))

    def test_counts_are_exact_at_the_end_of_the_duration(self):
        self.assert_exact(stop_at_duration, "--duration", "2")

    def test_a_single_request_answered_is_not_in_flight(self):
        # Its response's head has no blank line at the end of its segment: the kernel waits for
        # the rest of it, which the next message or the close would have ended.
        self.assert_exact(stop_by_signal(signal.SIGINT), exchanges=1)

    def test_portable_programs_say_the_counts_are_a_lower_bound(self):
        if not os.path.exists("/sys/kernel/btf/vmlinux"):
            raise unittest.SkipTest("no kernel BTF file to give record --btf")
        records, (requests, _) = self.record_open_connection(
            stop_by_signal(signal.SIGINT), "--btf", "/sys/kernel/btf/vmlinux")
        for conn in records:
            self.assertIs(conn.get("requests_lower_bound"), True, conn)
            self.assertLessEqual(len(conn["requests"]) + conn["requests_omitted"], requests)


class Http2OpenAtEndTest(PeerTest):
    """An HTTP/2 connection still open at the end: the kernel counts its frames and writes none
    but those that matter (here only its first stream's: no idle gap, no GOAWAY or RST_STREAM);
    the recording's end hands its counts over."""
    TOOLS = ("node", "tcpdump", "tshark")
    STREAMS = 25

    def setUp(self):
        super().setUp()
        self.port = free_port()
        server = subprocess.Popen([NODE, os.path.join(HTTP2_PEERS, "server.js")],
                                  env=dict(os.environ, PORT=str(self.port), HOST="127.0.0.1",
                                           SESSION_TIMEOUT_MS="600000"),
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.addCleanup(server.wait, timeout=10)
        self.addCleanup(server.kill)
        self.assertEqual(server.stdout.readline().strip(), "listening")

    def record_open_connection(self, *record_args):
        """The recording ended by SIGINT while a client holds STREAMS answered streams open on one
        connection (as the wire shows); returns that connection's two ends (client and server,
        both on loopback)."""
        pcap = os.path.join(self.workdir, "wire.pcap")
        recorder = Recorder("--port", str(self.port), "--quiet", *record_args)
        self.addCleanup(recorder.cleanup)
        with LoopbackCapture(pcap, self.port):
            with recorder:
                client = subprocess.Popen(
                    [NODE, os.path.join(HTTP2_PEERS, "open_streams.js"), "127.0.0.1",
                     str(self.port), str(self.STREAMS)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True)
                self.addCleanup(client.kill)
                line = client.stdout.readline()
                self.assertTrue(line, client.stderr.read() if client.poll() is not None else "")
                client_port = json.loads(line)["port"]
                stop_by_signal(signal.SIGINT)(recorder)
            client.stdin.close()
            client.wait(timeout=10)
            wait_for(lambda: http2_headers(pcap, self.port, client_port) ==
                     (self.STREAMS, self.STREAMS), timeout=30, interval=0.5)
        self.assertEqual(recorder.process.returncode, 0, recorder.stderr)
        self.assertEqual(http2_headers(pcap, self.port, client_port), (self.STREAMS, self.STREAMS),
                         "the wire: every stream answered")
        _, conns, _, _ = recorder.trace()
        records = [c for c in conns if client_port in (c["local"]["port"], c["remote"]["port"])]
        self.assertEqual(sorted(c["role"] for c in records), ["client", "server"], records)
        for conn in records:
            self.assertEqual(conn["verdict"], "open", conn)
            self.assertIsNotNone(conn.get("http2"), f"read as HTTP/1: {conn}")
            self.assertEqual(conn["requests"], [], conn)
            self.assertIs(conn["http2"]["counted_at_close"], False, conn)
            self.assertEqual(conn["http2"]["caught"], [], conn)
        return records

    @staticmethod
    def client_and_server(conn):
        h2 = conn["http2"]
        return (h2["local"], h2["peer"]) if conn["role"] == "client" else (h2["peer"], h2["local"])

    def test_its_counts_are_exact_when_stopped_by_sigint(self):
        for conn in self.record_open_connection():
            self.assertNotIn("requests_lower_bound", conn)
            client, server = self.client_and_server(conn)
            self.assertEqual(client["streams_opened"], self.STREAMS, conn)
            self.assertEqual(client["last_stream_id"], 2 * self.STREAMS - 1, conn)
            self.assertEqual(server["streams_answered"], self.STREAMS, conn)

    def test_portable_programs_say_its_counts_are_a_lower_bound(self):
        # They cannot hand the counts over at the end: those of the first stream's record stand.
        if not os.path.exists("/sys/kernel/btf/vmlinux"):
            raise unittest.SkipTest("no kernel BTF file to give record --btf")
        for conn in self.record_open_connection("--btf", "/sys/kernel/btf/vmlinux"):
            self.assertIs(conn.get("requests_lower_bound"), True, conn)
            client, server = self.client_and_server(conn)
            self.assertGreaterEqual(client["streams_opened"], 1, conn)
            self.assertLessEqual(client["streams_opened"], self.STREAMS, conn)
            self.assertLessEqual(server["streams_answered"], client["streams_opened"], conn)


if __name__ == "__main__":
    unittest.main()
