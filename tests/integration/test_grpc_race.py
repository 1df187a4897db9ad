"""The GOAWAY race against a real grpc-js server (npm @grpc/grpc-js, installed by tools/setup):
its grpc.max_connection_idle_ms sends GOAWAY and closes the connection while a balancer's
grpc-js client, which stopped reading its connection (busy), makes a call on it. Judged by the
wire as test_http2_race is: every stream the client saw refused or reset is a caught stream of
that connection, with the server's GOAWAY before it on the wire, and the report names the
grpc-js setting; with the idle limit above the client's idle time nothing is caught."""
import os
import unittest

from http2_race import PEERS, Http2RaceTest
from support import closetrace, report_json

CLIENT_IDLE_MS = 1500
UNAVAILABLE = 14


class GrpcRaceTest(Http2RaceTest):
    PORT = 50051

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if not os.path.isdir(os.path.join(PEERS, "node_modules", "@grpc", "grpc-js")):
            raise unittest.SkipTest("grpc-js is not installed: run tools/setup")

    def run_client(self, idle_limit_ms):
        """The grpc-js server with `idle_limit_ms` and the pausing client."""
        return self.run_race("grpc_server.js", {"MAX_CONNECTION_IDLE_MS": str(idle_limit_ms)},
                             ["grpc_client.js", str(CLIENT_IDLE_MS), "pause"])

    def test_a_call_made_as_the_idle_goaway_comes_is_caught(self):
        trace, pcap, seen = self.run_client(idle_limit_ms=1000)
        failed = [s for s in seen["streams"] if s["outcome"] in ("refused", "reset")]
        self.assertTrue(failed, f"the client saw no stream refused or reset: {seen}")
        self.assertEqual([c["code"] for c in seen["calls"]], [0, UNAVAILABLE], seen)

        conn = self.assert_caught_after_goaway(trace, pcap, failed)
        self.assertEqual(conn["comm"], "node")

        # The report lists the connection with its streams and names grpc-js's setting.
        listed = [r for r in report_json(trace)["races"]["listed"] if r["conn_id"] == conn["id"]]
        self.assertEqual(len(listed), 1)
        self.assertEqual(sorted(s["id"] for s in listed[0]["streams"]),
                         sorted(s["id"] for s in failed))
        self.assertIn("grpc.max_connection_idle_ms", closetrace("report", trace).stdout)

    def test_an_idle_limit_above_the_clients_idle_catches_nothing(self):
        trace, _, seen = self.run_client(idle_limit_ms=5000)
        self.assertEqual([c["code"] for c in seen["calls"]], [0, 0], seen)
        self.assert_nothing_caught(trace)


if __name__ == "__main__":
    unittest.main()
