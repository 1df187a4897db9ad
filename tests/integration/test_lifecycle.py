"""Issue: the kernel lifecycle record. Real sockets on loopback close in each way while
`closetrace record` runs; every conn record's initiator and how must say what happened."""
import os
import socket
import struct
import subprocess
import threading
import time
import unittest

from support import LoopbackCapture, PeerTest, Recorder, free_port, require_bpf, wait_for


class Pair:
    """A connected client/server socket pair on loopback that has exchanged one request."""

    def __init__(self, listener):
        self.client = socket.create_connection(listener.getsockname())
        self.server, _ = listener.accept()
        self.client_port = self.client.getsockname()[1]
        self.client.sendall(b"GET /lifecycle HTTP/1.1\r\nHost: test\r\n\r\n")
        self.server.recv(1024)
        self.server.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.client.recv(1024)

    def close_both(self):
        for sock in (self.client, self.server):
            try:
                sock.close()
            except OSError:
                pass


def abort(sock):
    """close() with SO_LINGER 0: the kernel resets the connection."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class LifecycleTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_bpf()

    def setUp(self):
        self.port = free_port()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(16)
        self.recorder = Recorder("--port", str(self.port), "--quiet", "--events")

    def tearDown(self):
        self.listener.close()
        self.recorder.stop()
        self.recorder.cleanup()

    def run_cases(self, cases):
        """Runs each case on its own pair; returns {case: (client conn, server conn)}."""
        pairs = {}
        with self.recorder:
            for name, close in cases.items():
                pair = Pair(self.listener)
                close(pair)
                time.sleep(0.05)
                pair.close_both()
                pairs[name] = pair
            time.sleep(0.5)  # past the linger, so every connection is written before the end
        self.assertEqual(self.recorder.process.returncode, 0, self.recorder.stderr)
        header, conns, events, summary = self.recorder.trace()
        self.assertEqual(header["schema"], "closetrace/5")
        self.assertEqual(summary["lost_events"], 0)
        # Our FIN acknowledged says nothing the close's other records do not: never written.
        transitions = {(e["old_state"], e["new_state"]) for e in events if e["kind"] == "state"}
        self.assertIn(("ESTABLISHED", "FIN_WAIT1"), transitions)
        self.assertNotIn(("FIN_WAIT1", "FIN_WAIT2"), transitions)
        result = {}
        for name, pair in pairs.items():
            client = [c for c in conns if c["local"]["port"] == pair.client_port]
            server = [c for c in conns
                      if c["local"]["port"] == self.port and c["remote"]["port"] == pair.client_port]
            self.assertEqual(len(client), 1, f"{name}: client conn records {client}")
            self.assertEqual(len(server), 1, f"{name}: server conn records {server}")
            result[name] = (client[0], server[0])
        return result

    def assert_close(self, conn, initiator, how):
        close = conn["close"]
        self.assertEqual((close["initiator"], close["how"]), (initiator, how), conn)
        self.assertIsNotNone(conn["closed_ns"], conn)

    def test_each_way_of_closing(self):
        def server_first(pair):
            pair.server.close()
            time.sleep(0.05)

        def client_first(pair):
            pair.client.close()
            time.sleep(0.05)

        def client_resets(pair):
            abort(pair.client)

        def server_resets(pair):
            abort(pair.server)

        def both_at_once(pair):
            barrier = threading.Barrier(2)

            def close(sock):
                barrier.wait()
                sock.shutdown(socket.SHUT_WR)

            threads = [threading.Thread(target=close, args=(s,)) for s in (pair.client, pair.server)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        records = self.run_cases({
            "server_first": server_first,
            "client_first": client_first,
            "client_resets": client_resets,
            "server_resets": server_resets,
            "both_at_once": both_at_once,
        })

        client, server = records["server_first"]
        self.assert_close(server, "local", "fin")
        self.assert_close(client, "peer", "fin")
        self.assertEqual((server["role"], client["role"]), ("server", "client"))

        client, server = records["client_first"]
        self.assert_close(client, "local", "fin")
        self.assert_close(server, "peer", "fin")

        client, server = records["client_resets"]
        self.assert_close(client, "local", "rst")
        self.assert_close(server, "peer", "rst")

        client, server = records["server_resets"]
        self.assert_close(server, "local", "rst")
        self.assert_close(client, "peer", "rst")

        # Both closed together. Either one FIN arrived before the other side sent its own (the
        # records mirror each other: one local, one peer), or the two FINs crossed on two CPUs (a
        # simultaneous close: each side sent its FIN first, and both records say local). Either
        # way each record's initiator is the side whose FIN came first from its own view.
        client, server = records["both_at_once"]
        for conn in (client, server):
            close = conn["close"]
            self.assertEqual(close["how"], "fin", conn)
            local_fin, peer_fin = close["local_fin_ns"], close["peer_fin_ns"]
            self.assertTrue(local_fin is not None or peer_fin is not None, conn)
            first = "local" if peer_fin is None or (local_fin is not None and local_fin <= peer_fin) \
                else "peer"
            self.assertEqual(close["initiator"], first, conn)
        self.assertIn("local", {client["close"]["initiator"], server["close"]["initiator"]},
                      (client, server))

        for client, server in records.values():
            for conn in (client, server):
                self.assertEqual(conn["local"]["addr"], "127.0.0.1")
                self.assertGreater(conn["bytes_in"] + conn["bytes_out"], 0, conn)
                self.assertIsNotNone(conn["close"]["idle_ms"], conn)


class RefusedConnectTest(PeerTest):
    """A connect() to a port where nothing listens: the wire shows the SYN answered with a reset
    and no SYN-ACK; the client socket's record says the peer reset it, refused, not a probe."""
    TOOLS = ("tcpdump", "tshark")

    def test_a_connect_answered_with_a_reset_is_refused(self):
        port = free_port()
        pcap = os.path.join(self.workdir, "wire.pcap")
        recorder = Recorder("--port", str(port), "--quiet", linger_ms=300)
        self.addCleanup(recorder.cleanup)
        with LoopbackCapture(pcap, port):
            with recorder:
                client = socket.socket()
                client.bind(("127.0.0.1", 0))
                client_port = client.getsockname()[1]
                with self.assertRaises(ConnectionRefusedError):
                    client.connect(("127.0.0.1", port))
                client.close()
                time.sleep(0.5)  # past the linger
            wait_for(lambda: len(wire_flags(pcap, client_port)) >= 2, timeout=30, interval=0.5)
        self.assertEqual(recorder.process.returncode, 0, recorder.stderr)
        flags = wire_flags(pcap, client_port)
        self.assertEqual(flags[0], (True, SYN), flags)
        self.assertIn((False, RST | ACK), flags)
        self.assertFalse(any(f & SYN and f & ACK for _, f in flags), flags)

        _, conns, _, _ = recorder.trace()
        [conn] = [c for c in conns if c["local"]["port"] == client_port]
        self.assertEqual((conn["role"], conn["verdict"]), ("client", "peer_reset"), conn)
        self.assertEqual((conn["close"]["initiator"], conn["close"]["how"],
                          conn["close"]["cause"]), ("peer", "rst", "refused"), conn)
        self.assertEqual(conn["requests"], [])


SYN, RST, ACK = 0x02, 0x04, 0x10


def wire_flags(pcap, client_port):
    """(from the client, TCP flags) of each segment of the connection from `client_port`."""
    out = subprocess.run(["tshark", "-r", pcap, "-Y", f"tcp.port == {client_port}", "-T",
                          "fields", "-E", "separator=/t", "-e", "tcp.srcport", "-e",
                          "tcp.flags"], capture_output=True, text=True, check=True).stdout
    return [(int(source) == client_port, int(flags, 16) & (SYN | RST | ACK))
            for source, flags in (line.split("\t") for line in out.splitlines())]


if __name__ == "__main__":
    unittest.main()
