"""A connection with both ends on this host in two network namespaces (a client container calling
a server container over veth pairs, no NAT): the recorder writes both sockets, each naming the
other (`other_end`), and `report` counts the connection once, judged by the server end: the
idle close is Node's, as the wire shows, and the keep-alive recommendation names Node, never the
client. Also for a connection opened before the recording (both roles unknown)."""
import os
import random
import shutil
import sys
import unittest

from support import SCENARIO_TOOLS, PeerTest, Recorder, read_trace, report_json

sys.path.insert(0, SCENARIO_TOOLS)

import clients  # noqa: E402
import netns  # noqa: E402
import peers  # noqa: E402
import wire  # noqa: E402


class AcrossNamespacesTest(PeerTest):
    TOOLS = ("ip", "node", "tcpdump")

    def setUp(self):
        super().setUp()
        # Below the ephemeral range and unusual: the recorder sees every namespace of the host,
        # and other tests' connections must not be in this trace.
        self.port = random.randrange(20000, 32000)

    def record(self, keepalive_ms, before_recording):
        """Node in the backend namespace closes idle connections after `keepalive_ms`; a client
        in the client namespace makes a request (before the recording starts when
        `before_recording`) and one in it, then waits for Node's close. Returns (trace, report,
        wire connections, Node's address)."""
        pcap = os.path.join(self.workdir, "backend.pcap")
        trace = os.path.join(self.workdir, "trace.jsonl")
        with netns.Topology() as topo:
            backend = topo.addr["backend"]
            peers.start_node_backend(topo, keepalive_ms=keepalive_ms, port=self.port,
                                     base_dir=self.workdir)
            capture = wire.Capture(topo, "backend", "to-bal", pcap,
                                   bpf_filter=f"tcp port {self.port}").start()
            client = clients.KeepAliveClient(topo, "client", backend, self.port)
            try:
                if before_recording:
                    first = client.request("GET", "/before")
                    self.assertEqual(first.get("status"), 200, first)
                recorder = Recorder("--port", str(self.port), "--quiet", linger_ms=300)
                with recorder:
                    during = client.request("GET", "/during", reconnect=not before_recording)
                    self.assertEqual(during.get("status"), 200, during)
                    if before_recording:
                        self.assertFalse(during.get("reconnected"), during)
                        self.assertEqual(during.get("local_port"), first.get("local_port"))
                    closed = client.wait_close(timeout=keepalive_ms / 1000 + 10)
                    self.assertEqual(closed.get("ev"), "closed", closed)
                    capture.wait_quiet()
            finally:
                client.quit()
            capture.stop()
            self.assertEqual(recorder.process.returncode, 0, recorder.stderr)
            shutil.copyfile(recorder.path, trace)
            recorder.cleanup()
        return trace, report_json(trace), wire.read_capture(pcap, backend, {self.port}), backend

    def check_counted_once_as_nodes_close(self, trace, report, on_wire, backend, roles):
        _, conns, _, summary = read_trace(trace)
        self.assertEqual(summary["lost_events"], 0)
        # Two sockets, in two namespaces, naming each other; Node's is the server end.
        self.assertEqual(len(conns), 2, conns)
        server = next(c for c in conns if c["local"]["addr"] == backend)
        client = next(c for c in conns if c["remote"]["addr"] == backend)
        self.assertNotEqual(server["netns"], client["netns"])
        self.assertEqual((server["role"], client["role"]), roles)
        self.assertEqual(server["other_end"], {"cookie": client["cookie"], "server": "local"})
        self.assertEqual(client["other_end"], {"cookie": server["cookie"], "server": "peer"})

        # Who closed first, by the wire: Node, idle.
        self.assertEqual(len(on_wire), 1, [w.describe() for w in on_wire])
        self.assertEqual(on_wire[0].initiator, "local", on_wire[0].describe())
        self.assertEqual(on_wire[0].how, "fin", on_wire[0].describe())

        self.assertEqual(report["trace"]["connections"], 1, report["trace"])
        self.assertEqual(report["trace"]["same_host_connections"], 1)
        closed = {v: f["connections"] for v, f in report["verdicts"].items() if f["connections"]}
        self.assertEqual(closed, {"local_idle_close": 1})
        # The client's view of Node's close is not taken for a peer's timeout (unknown roles
        # read apart would: a recommendation of Node's own timeout + 5 s).
        self.assertEqual(report["idle"]["peer"]["closes"], 0)
        self.assertEqual(report["idle"]["upstream_peer"]["closes"], 0)
        self.assertEqual([g["comm"] for g in report["by_comm"]["groups"]], ["node"])
        keepalive = [r for r in report["recommendations"] if r["kind"] == "keepalive_timeout"]
        self.assertEqual([r["comm"] for r in keepalive], ["node"], report["recommendations"])

    def test_a_connection_between_two_namespaces_is_counted_once_from_its_server_end(self):
        trace, report, on_wire, backend = self.record(keepalive_ms=1000, before_recording=False)
        self.check_counted_once_as_nodes_close(trace, report, on_wire, backend,
                                               ("server", "client"))

    def test_a_connection_open_before_the_recording_is_judged_by_the_end_that_served(self):
        # Long enough for the recorder to start between the two requests.
        trace, report, on_wire, backend = self.record(keepalive_ms=8000, before_recording=True)
        # Both roles unknown: the recorder told Node's socket by the request it received.
        self.check_counted_once_as_nodes_close(trace, report, on_wire, backend,
                                               ("unknown", "unknown"))


if __name__ == "__main__":
    unittest.main()
