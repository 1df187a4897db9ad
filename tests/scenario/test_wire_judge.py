"""The wire judge (tools/scenario/wire.py) on made-up packets: no root, no capture.

    python3 -m unittest tests/scenario/test_wire_judge.py -v
"""
import dataclasses
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "tools", "scenario"))

import wire  # noqa: E402
from wire import ACK, FIN, PSH, RST, SYN, Packet  # noqa: E402

LOCAL, PEER = ("10.201.0.6", 8080), ("10.201.0.5", 40000)


class Conn:
    """Builds one connection's packets; the backend (LOCAL) accepts unless client=True."""

    def __init__(self, client=False):
        self.pkts, self.t, self.seq = [], 100.0, {"out": 1, "in": 1}
        first, second = ("out", "in") if client else ("in", "out")
        self.send(first, SYN, at=0)
        self.send(second, SYN | ACK, at=0.0001)

    def send(self, d, flags=ACK | PSH, data=b"", at=0.001, ack=None):
        """`ack`: what the packet acknowledges; everything the other side sent by default."""
        self.t += at
        src, dst = (LOCAL, PEER) if d == "out" else (PEER, LOCAL)
        other = self.seq["in" if d == "out" else "out"]
        self.pkts.append(Packet(self.t, src[0], src[1], dst[0], dst[1], flags, len(data),
                                self.seq[d], data, other if ack is None else ack))
        self.seq[d] += len(data) + (1 if flags & FIN else 0)
        return self

    def judge(self, exits=()):
        [c] = wire.conns_from_packets(self.pkts, LOCAL[0])
        c.exit_times = tuple(exits)
        return c


def req(path, extra=""):
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


def resp(status=200, body=b"ok\n", extra=""):
    return (f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


class WireJudgeTest(unittest.TestCase):
    def test_pipelined_requests_each_get_their_response(self):
        c = (Conn().send("in", data=req("/a") + req("/b") + req("/c"))
             .send("out", data=resp(200)).send("out", data=resp(404) + resp(201))
             .send("in", FIN | ACK, at=0.01).judge())
        self.assertEqual([(o["target"], o["outcome"], o["status"])
                          for o in c.request_outcomes()],
                         [("/a", "completed", 200), ("/b", "completed", 404),
                          ("/c", "completed", 201)])
        self.assertEqual((c.verdict, c.cause), ("peer_idle_close", ({"closed_after_use"}, None)))

    def test_chunked_and_split_heads(self):
        chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        c = (Conn().send("in", data=req("/a")[:10]).send("in", data=req("/a")[10:])
             .send("out", data=chunked[:30]).send("out", data=chunked[30:])
             .send("in", data=req("/b")).send("out", data=resp())
             .send("out", FIN | ACK, at=2.0).judge())
        self.assertEqual([(o["target"], o["status"]) for o in c.request_outcomes()],
                         [("/a", 200), ("/b", 200)])
        self.assertEqual(c.cause, ({"idle_timer"}, None))
        self.assertAlmostEqual(c.idle_since_exchange, 2.0, delta=0.01)

    def test_crossed_fins_let_either_side_be_the_closer(self):
        # A response with Connection: close; the client's FIN reaches the capture 9 us before
        # the server's, which does not acknowledge it: the server had closed on its own.
        answered = (Conn().send("in", data=req("/a"))
                    .send("out", data=resp(extra="Connection: close\r\n")))
        fin_seq = answered.seq["in"]
        c = (answered.send("in", FIN | ACK)
             .send("out", FIN | ACK, at=0.000009, ack=fin_seq).judge())
        self.assertTrue(c.fins_crossed)
        self.assertEqual(c.verdict, "peer_idle_close")
        taken = dataclasses.replace(c, taken_closer="local")
        self.assertEqual((taken.initiator, taken.verdict, taken.cause),
                         ("local", "local_idle_close", ({"keepalive_ended"}, "local")))
        # The server's FIN acknowledging the client's: it closed after it saw the client's.
        c = (Conn().send("in", data=req("/a")).send("out", data=resp())
             .send("in", FIN | ACK, at=2.0).send("out", FIN | ACK).judge())
        self.assertFalse(c.fins_crossed)
        self.assertEqual(dataclasses.replace(c, taken_closer="local").initiator, "peer")
        # Seconds apart, a FIN that acknowledges nothing says the capture lost a segment.
        answered = Conn().send("in", data=req("/a")).send("out", data=resp())
        fin_seq = answered.seq["in"]
        c = answered.send("in", FIN | ACK).send("out", FIN | ACK, at=2.0, ack=fin_seq).judge()
        self.assertFalse(c.fins_crossed)

    def test_a_request_crossing_this_hosts_fin_came_after_the_close(self):
        # Node's timer closes as the reused connection's POST arrives: on the wire the POST is
        # 5 us before the FIN, which does not acknowledge it; the closed socket resets it.
        idle = Conn().send("in", data=req("/first")).send("out", data=resp())
        before_post = idle.seq["in"]
        c = (idle.send("in", data=req("/pay"), at=2.0)
             .send("out", FIN | ACK, at=0.000005, ack=before_post)
             .send("out", RST, at=0.0001).judge())
        self.assertEqual([o["outcome"] for o in c.request_outcomes()],
                         ["completed", "after_local_close"])
        self.assertEqual(c.verdict, "local_close_race")
        # The FIN acknowledging it: the request was there when the socket closed.
        c = (Conn().send("in", data=req("/first")).send("out", data=resp())
             .send("in", data=req("/pay"), at=2.0).send("out", FIN | ACK, at=0.000005)
             .send("out", RST, at=0.0001).judge())
        self.assertEqual(c.request_outcomes()[1]["outcome"], "unanswered_at_close")

    def test_health_check_connection_close(self):
        hc = "User-Agent: ELB-HealthChecker/2.0\r\nConnection: close\r\n"
        c = (Conn().send("in", data=req("/health", hc))
             .send("out", data=resp(extra="Connection: close\r\n"))
             .send("out", FIN | ACK).judge())
        self.assertEqual(c.health_check, "ELB-HealthChecker")
        self.assertEqual(c.request_outcomes()[0]["close_asked"], "request")
        self.assertEqual((c.verdict, c.cause),
                         ("local_idle_close", ({"connection_close"}, "peer")))

    def test_keepalive_ended_by_the_response(self):
        c = (Conn().send("in", data=req("/a")).send("out", data=resp(extra="Connection: close\r\n"))
             .send("out", FIN | ACK).judge())
        self.assertEqual(c.cause, ({"keepalive_ended"}, "local"))
        self.assertIsNone(c.health_check)

    def test_unread_request_after_idle_is_a_race(self):
        c = (Conn().send("in", data=req("/warm")).send("out", data=resp())
             .send("in", data=req("/race"), at=1.9).send("out", RST | ACK, at=0.2).judge())
        last = c.request_outcomes()[-1]
        self.assertEqual(last["outcome"], "unread_at_close")
        self.assertAlmostEqual(last["idle_before"], 1.9, delta=0.01)
        self.assertEqual((c.verdict, c.cause), ("local_close_race", ({"unread_request"}, None)))
        # without the idle gap it is an in-flight reset
        c = (Conn().send("in", data=req("/q")).send("out", RST | ACK, at=0.1).judge())
        self.assertEqual(c.verdict, "local_reset_inflight")

    def test_a_response_the_requester_resets_answers_no_one(self):
        # The balancer gave up (its client left: 460) and closed; the response it resets after
        # its FIN found no one: the request was in flight when the peer closed.
        c = (Conn().send("in", data=req("/a")).send("out", data=resp())
             .send("in", data=req("/wrk")).send("in", FIN | ACK, at=0.003)
             .send("out", data=resp(), at=0.0002).send("in", RST, at=0.00002).judge())
        self.assertEqual([o["outcome"] for o in c.request_outcomes()],
                         ["completed", "unanswered_at_close"])
        self.assertEqual((c.verdict, c.cause), ("peer_close_inflight", ({"in_flight"}, None)))
        # A client that shut down its sending side reads the response: it answers.
        c = (Conn().send("in", data=req("/h")).send("in", FIN | ACK)
             .send("out", data=resp(), at=0.05).send("out", FIN | ACK, at=0.05).judge())
        self.assertEqual([(o["outcome"], o["status"]) for o in c.request_outcomes()],
                         [("completed", 200)])
        self.assertEqual(c.verdict, "peer_idle_close")

    def test_process_exit_is_told_by_the_harness(self):
        c = Conn().send("in", data=req("/slow")).send("out", FIN | ACK, at=0.3)
        self.assertEqual(c.judge().cause, ({"in_flight"}, None))
        self.assertEqual(c.judge(exits=[c.t - 0.01]).cause, ({"process_exit"}, None))
        self.assertEqual(c.judge().verdict, "local_reset_inflight")

    def test_forgotten_by_a_nat(self):
        c = (Conn(client=True).send("out", data=req("/pooled")).send("in", data=resp())
             .send("out", data=req("/reuse"), at=3.5).send("in", RST, at=0.0001).judge())
        self.assertEqual(c.role, "client")
        self.assertEqual(c.request_outcomes()[-1]["outcome"], "unanswered_at_close")
        self.assertEqual(c.cause, ({"forgotten"}, None))

    def test_a_websocket_closed_by_its_application_is_upgraded(self):
        # After 101 the bytes are WebSocket frames: no request, no race; the server's
        # application closes 2 s after the last frame, which is no keep-alive timer.
        upgrade = req("/ws", "Upgrade: websocket\r\nConnection: Upgrade\r\n")
        switched = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
        # frames whose bytes happen to read as HTTP are frames all the same
        c = (Conn().send("in", data=upgrade).send("out", data=switched)
             .send("in", data=req("/not-http")).send("out", data=resp())
             .send("out", FIN | ACK, at=2.0).send("in", data=b"\x81\x85abcd" + bytes(5))
             .send("out", RST, at=0.0001).judge())
        self.assertEqual([(o["target"], o["outcome"], o["status"])
                          for o in c.request_outcomes()], [("/ws", "completed", 101)])
        self.assertEqual((c.verdict, c.cause), ("local_idle_close", ({"upgraded"}, None)))

    def test_probe(self):
        c = Conn().send("in", FIN | ACK, at=0.01).judge()
        self.assertEqual(c.cause, ({"probe"}, None))

    def test_compare_checks_causes_outcomes_and_health(self):
        c = (Conn().send("in", data=req("/warm")).send("out", data=resp())
             .send("in", data=req("/race"), at=1.9).send("out", RST | ACK, at=0.2).judge())
        rec = {"local": {"addr": LOCAL[0], "port": LOCAL[1]},
               "remote": {"addr": PEER[0], "port": PEER[1]}, "established_ns": int(100e9),
               "close": {"initiator": "local", "how": "rst", "cause": "unread_request"},
               "requests": [{"method": "GET", "target": "/warm", "status": 200,
                             "outcome": "completed"},
                            {"method": "GET", "target": "/race", "status": None,
                             "outcome": "unread_at_close"}],
               "verdict": "local_close_race", "health_check": None}
        checks = dict(mono_to_wall_ns=0, out=lambda *a: None, check_verdicts=True,
                      check_causes=True, check_outcomes=True, check_health=True)
        self.assertEqual(wire.compare([rec], [c], **checks), [])
        bad = dict(rec, close=dict(rec["close"], cause="idle_timer"),
                   requests=rec["requests"][:1] + [dict(rec["requests"][1],
                                                        outcome="unanswered_at_close")],
                   health_check="kube-probe")
        self.assertEqual(sorted(d["kind"] for d in wire.compare([bad], [c], **checks)),
                         ["cause", "health_check", "outcomes"])


if __name__ == "__main__":
    unittest.main()
