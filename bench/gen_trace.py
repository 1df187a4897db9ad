#!/usr/bin/env python3
"""Writes a synthetic, realistic closetrace/1 trace (docs/trace-format.md) for the offline part.

  gen_trace.py --lines 10000000 --out trace.jsonl [--seed 1]

One header, LINES records, one summary. The records are what a backend behind a load balancer
produces: mostly `server` keep-alive connections with 1-6 HTTP requests each (idle closes by
either side, some close races with a late request, in-flight resets, the peer's 460s), some
`client` (upstream) connections, and about 3 % `event` lines (resets sent with no socket and raw
`state`/`message` events as `record --events` writes them). Deterministic for a given seed.
Prints the line count and bytes written.
"""
import argparse
import json
import random
import sys

METHODS = ["GET"] * 8 + ["POST", "PUT", "DELETE", "HEAD"]
TARGETS = ["/", "/api/v1/orders", "/api/v1/orders/8812", "/health", "/api/v1/users/me",
           "/static/app.4f9c1.js", "/checkout/pay", "/api/v2/search", "/login",
           "/api/v1/cart/items", "/metrics", "/img/logo%20small.png", "/caf\\u00c3\\u00a9"]
STATUSES = [200] * 20 + [201, 204, 301, 304, 400, 404, 500, 502]
CONTAINERS = ["9581a69a761a%052x" % i for i in range(1, 5)]

CONN = ('{"type":"conn","id":%d,"cookie":%d,"netns":4026531840,"family":"ipv4",'
        '"local":{"addr":"10.0.1.17","port":%d},"remote":{"addr":"10.0.%d.%d","port":%d},'
        '"role":"%s","pid":%d,"comm":"%s","owner_from":"%s","cgroup_id":%d,"cgroup":%s,'
        '"container":%s,"established_ns":%d,"closed_ns":%d,'
        '"bytes_in":%d,"bytes_out":%d,"segs_in":%d,"segs_out":%d,'
        '"close":{"initiator":"%s","how":"%s","local_fin_ns":%s,"peer_fin_ns":%s,'
        '"local_rst_ns":%s,"peer_rst_ns":%s,"rst_reason":%s,"idle_ms":%.3f},'
        '"requests":[%s],"verdict":"%s"}\n')
REQ = ('{"method":"%s","target":"%s","status":%s,"request_ns":%d,"response_ns":%s,'
       '"outcome":"%s"}')
EV_RESET = ('{"type":"event","kind":"reset_sent","ts_ns":%d,"cookie":0,"netns":4026531840,'
            '"family":"ipv4","local":{"addr":"10.0.1.17","port":8080},'
            '"remote":{"addr":"10.0.%d.%d","port":%d},"rst_reason":"NO_SOCKET",'
            '"trigger_flags":"P.","sk_state":null,"payload_len":%d,"payload":"%s"}\n')
EV_STATE = ('{"type":"event","kind":"state","ts_ns":%d,"cookie":%d,"netns":4026531840,'
            '"family":"ipv4","local":{"addr":"10.0.1.17","port":8080},'
            '"remote":{"addr":"10.0.%d.%d","port":%d},"old_state":"ESTABLISHED",'
            '"new_state":"FIN_WAIT1","role":"server"}\n')
EV_MESSAGE = ('{"type":"event","kind":"message","ts_ns":%d,"cookie":%d,"netns":4026531840,'
              '"family":"ipv4","local":{"addr":"10.0.1.17","port":8080},'
              '"remote":{"addr":"10.0.%d.%d","port":%d},"direction":"in","segment_len":%d,'
              '"payload":"GET /api/v1/orders HTTP/1.1\\r\\nHost: shop.example\\r\\nUser-Agent: '
              'ELB-HealthChecker/2.0\\r\\nAccept: */*\\r\\n\\r\\n"}\n')


# verdict, initiator, how, weight
KINDS = [
    ("local_idle_close", "local", "fin", 55),
    ("peer_idle_close", "peer", "fin", 30),
    ("local_close_race", "local", "fin", 3),
    ("local_reset_inflight", "local", "rst", 2),
    ("peer_close_inflight", "peer", "fin", 3),
    ("peer_reset", "peer", "rst", 2),
    ("open", "unknown", None, 5),
]
POOL = 4096    # distinct connection bodies per epoch
EPOCH = 65536  # lines per epoch: every epoch draws new bodies with later times


def conn_tail(rng, kinds, end_ts):
    """Everything of a conn line after its id and cookie, for a connection that ended at end_ts."""
    verdict, initiator, how, _w = rng.choice(kinds)
    n = rng.choice([1, 1, 2, 2, 3, 4, 6])
    span = sum(rng.randrange(200_000, 30_000_000) for _ in range(n))
    est = end_ts - span - rng.randrange(1_000_000, 5_000_000)
    t = est + rng.randrange(100_000, 900_000)
    reqs = []
    for i in range(n):
        last = i == n - 1
        method = rng.choice(METHODS)
        target = rng.choice(TARGETS)
        if last and verdict == "local_close_race":
            reqs.append(REQ % (method, target, "null", end_ts - 300_000, "null", "after_local_close"))
        elif last and verdict in ("local_reset_inflight", "peer_close_inflight"):
            reqs.append(REQ % (method, target, "null", t, "null", "unanswered_at_close"))
        elif last and verdict == "open" and rng.random() < 0.3:
            reqs.append(REQ % (method, target, "null", t, "null", "in_flight"))
        else:
            reqs.append(REQ % (method, target, rng.choice(STATUSES), t,
                               "%d" % (t + rng.randrange(200_000, 4_000_000)), "completed"))
        t += rng.randrange(200_000, 30_000_000) if not last else 0
    role = "server" if rng.random() < 0.9 else "client"
    lfin = "%d" % (end_ts - 1_000_000) if initiator == "local" and how == "fin" else "null"
    pfin = "%d" % (end_ts - 900_000) if how == "fin" else "null"
    lrst = "%d" % (end_ts - 500_000) if verdict == "local_reset_inflight" else "null"
    prst = "%d" % (end_ts - 500_000) if verdict == "peer_reset" else "null"
    reason = '"TCP_ABORT_ON_DATA"' if verdict == "local_reset_inflight" else "null"
    closed = "%d" % end_ts
    how_s = '"%s"' % how
    idle = "%.3f" % (rng.randrange(1000, 5_000_000) / 1000.0)
    if verdict == "open":
        closed, how_s, idle = "null", "null", "null"
    if rng.random() < 0.7:  # an ECS/Docker host: most backends are in containers
        cid = CONTAINERS[rng.randrange(len(CONTAINERS))]
        cgroup = '"/system.slice/docker-%s.scope"' % cid
        container = ('{"runtime":"docker","id":"%s","name":"ecs-shop-api-12-web-%s",'
                     '"task_id":"7f3c9a1e5b2d4c6e8f0a1b2c3d4e5f60","pod_uid":null,"ecs":null}' % (cid, cid[:8]))
        cgroup_id = 5123 + CONTAINERS.index(cid)
    else:
        cgroup, container, cgroup_id = '"/system.slice/node-api.service"', "null", 4099
    owner = "close" if initiator == "local" else "connect" if role == "client" else "close"
    line = CONN % (0, 0, 8080, rng.randrange(1, 4), rng.randrange(2, 250), rng.randrange(1024, 65535),
                   role, 4242, "node", owner, cgroup_id, cgroup, container, est, 0, 180 * n, 950 * n, 2 * n + 2, 2 * n + 1, initiator,
                   "HOW", lfin, pfin, lrst, prst, reason, 0.0, ",".join(reqs), verdict)
    line = line.replace('"closed_ns":0,', '"closed_ns":%s,' % closed).replace(
        '"how":"HOW"', '"how":%s' % how_s).replace('"idle_ms":0.000', '"idle_ms":%s' % idle)
    head = '{"type":"conn","id":0,"cookie":0,'
    assert line.startswith(head)
    return line[len(head):], verdict, n


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10_000_000)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    kinds = [k for k in KINDS for _ in range(k[3])]

    # Speed (about 4 s per million lines): each epoch of EPOCH lines draws POOL connection
    # bodies (endpoints, requests, times within the epoch) and every conn line is a fresh id and
    # cookie plus one of them; times advance from epoch to epoch.
    out = open(args.out, "w", buffering=1 << 20)
    header = {"type": "header", "schema": "closetrace/1", "tool_version": "0.1.0",
              "host": "ip-10-0-1-17", "kernel": "6.18.44", "start_ns": 1_000_000_000,
              "start_wall": "2026-11-25T01:02:03.123456Z", "mono_to_wall_ns": 1795000000000000000,
              "filters": {"ports": [8080], "cgroup": None, "full_target": False, "netns": None,
                          "container": None, "pid": None},
              "probes": {"state": "tp_btf/inet_sock_set_state",
                         "reset_sent": "tp_btf/tcp_send_reset (skb dynptr)",
                         "reset_received": "tp_btf/tcp_receive_reset", "messages": "cgroup_skb",
                         "rst_reason": True}}
    out.write(json.dumps(header, separators=(",", ":")) + "\n")

    written = 0
    conns = 0
    requests = 0
    by_verdict = {}
    ts = 1_000_000_000
    prefix = '{"type":"conn","id":%d,"cookie":%d,'
    i = 0
    while i < args.lines:
        epoch_end = ts + EPOCH * 37_000
        tails = [conn_tail(rng, kinds, epoch_end - rng.randrange(0, EPOCH * 37_000)) for _ in range(POOL)]
        count = min(EPOCH, args.lines - i)
        chunk = []
        for j in range(count):
            k = i + j
            ts += 37_000
            sel = k % 100
            if sel == 7:
                chunk.append(EV_RESET % (ts, 1 + k % 3, 2 + k % 248, 1024 + k % 60000, 80 + k % 800,
                                         "GET /late HTTP/1.1\\r\\nHost: shop\\r\\n"))
            elif sel == 37:
                chunk.append(EV_STATE % (ts, 4096 + k, 1 + k % 3, 2 + k % 248, 1024 + k % 60000))
            elif sel == 71:
                chunk.append(EV_MESSAGE % (ts, 4096 + k, 1 + k % 3, 2 + k % 248, 1024 + k % 60000,
                                           80 + k % 1300))
            else:
                tail, verdict, n = tails[(k * 2654435761 >> 7) % POOL]
                chunk.append(prefix % (1 + k, 4096 + k) + tail)
                conns += 1
                requests += n
                by_verdict[verdict] = by_verdict.get(verdict, 0) + 1
            if len(chunk) >= 16384:
                out.write("".join(chunk))
                written += len(chunk)
                chunk = []
        out.write("".join(chunk))
        written += len(chunk)
        i += count
    summary = {"type": "summary", "connections": conns, "open_at_end": by_verdict.get("open", 0),
               "requests": requests, "lost_events": 0, "events": args.lines * 6,
               "duration_s": (ts - 1_000_000_000) / 1e9, "end_ns": ts,
               "by_initiator": {}, "by_how": {}, "verdicts": by_verdict}
    out.write(json.dumps(summary, separators=(",", ":")) + "\n")
    size = out.tell()
    out.close()
    print(f"{written + 2} lines {size} bytes", flush=True)


if __name__ == "__main__":
    sys.exit(main())
