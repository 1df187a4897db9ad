"""The GOAWAY race of HTTP/2 (h2c) against a real Node.js `http2` server: its session times out
(GOAWAY, then the close) while a balancer's client, which stopped reading its connection (busy),
opens a stream on it. Judged by the wire (tshark's HTTP/2 decoding of a capture of the same
run): every stream the client saw refused or reset is a caught stream of that connection in the
trace and the report, with the server's GOAWAY before it on the wire; with the session timeout
above the client's idle time nothing is caught."""
import datetime
import json
import os
import unittest

from http2_race import Http2RaceTest
from support import closetrace, read_trace, report_json

CLIENT_IDLE_MS = 1500


def iso_utc(wall_ns):
    """Unix-epoch ns as an ALB log writes times (microseconds)."""
    when = datetime.datetime.fromtimestamp(wall_ns // 1000 / 1e6, tz=datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def h2_alb_502(received_ns, target):
    """An ALB 502 line of type h2 (its client spoke HTTP/2) for a request it received at
    `received_ns` and sent to `target` at once, with no response from it."""
    return (f"h2 {iso_utc(received_ns + 2_000_000)} app/shop-alb/50dc6c495c0c9188 "
            f"10.0.0.99:50001 {target} 0.000 0.001 -1 502 - 512 0 "
            f"\"POST https://api.example.com:443/shop.Orders/Pay HTTP/2.0\" \"grpc-client/1.0\" "
            "- - arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/shop-api/"
            "73e2d6bc24d8a067 \"Root=1-6744cc00-000000000000000000000001\" \"-\" \"-\" 1 "
            f"{iso_utc(received_ns)} \"forward\" \"-\" \"-\" \"{target}\" \"-\" \"-\" \"-\" "
            "TID_01\n")


class NodeHttp2RaceTest(Http2RaceTest):
    PORT = 8082

    def run_balancer(self, session_timeout_ms):
        """The Node h2c server with `session_timeout_ms` and the pausing client."""
        trace, pcap, result = self.run_race(
            "server.js", {"SESSION_TIMEOUT_MS": str(session_timeout_ms)},
            ["balancer.js", str(CLIENT_IDLE_MS), "pause"])
        return trace, pcap, result["streams"]

    def test_a_stream_opened_as_the_goaway_comes_is_caught(self):
        trace, pcap, streams = self.run_balancer(session_timeout_ms=1000)
        failed = [s for s in streams if s["outcome"] in ("refused", "reset")]
        self.assertTrue(failed, f"the client saw no stream refused or reset: {streams}")

        conn = self.assert_caught_after_goaway(trace, pcap, [s["id"] for s in failed])
        caught = {s["id"] for s in conn["http2"]["caught"]}

        # The report lists the connection with its streams and names Node's setting.
        races = report_json(trace)["races"]
        listed = [r for r in races["listed"] if r["conn_id"] == conn["id"]]
        self.assertEqual(len(listed), 1, races)
        self.assertEqual(sorted(s["id"] for s in listed[0]["streams"]),
                         sorted(s["id"] for s in failed))
        text = closetrace("report", trace).stdout
        self.assertIn("(names not recorded)", text)
        self.assertIn("server.setTimeout(", text)

        # `alb` pairs an h2 502 line at each caught stream's opening with that stream.
        header = read_trace(trace)[0]
        target = f"{conn['local']['addr']}:{self.PORT}"
        log = os.path.join(self.workdir, "alb.log")
        with open(log, "w", encoding="ascii") as out:
            for stream in conn["http2"]["caught"]:
                out.write(h2_alb_502(stream["opened_ns"] + header["mono_to_wall_ns"], target))
        result = closetrace("alb", trace, log, "--format", "json")
        self.assertEqual(result.returncode, 0, result.stderr)
        pairs = json.loads(result.stdout)["pairs"]
        self.assertEqual(sorted(p["trace"]["stream"]["id"] for p in pairs), sorted(caught))
        for pair in pairs:
            self.assertEqual(pair["trace"]["conn_id"], conn["id"])
            self.assertFalse(pair["path_compared"])
        self.assertIn("(names not recorded)", closetrace("alb", trace, log).stdout)

    def test_a_session_timeout_above_the_clients_idle_catches_nothing(self):
        trace, _, streams = self.run_balancer(session_timeout_ms=5000)
        self.assertEqual([s["outcome"] for s in streams], ["status 200", "status 200"])
        self.assert_nothing_caught(trace)


if __name__ == "__main__":
    unittest.main()
