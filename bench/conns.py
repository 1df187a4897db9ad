#!/usr/bin/env python3
"""Many idle keep-alive connections on loopback, for bench/run's memory part; steady churn for
its soak part.

  conns.py server --addr 127.0.0.1 --port P
      accepts for ever; answers every chunk it receives with one small HTTP response. Several
      may listen on one port (SO_REUSEPORT): the kernel spreads the connections among them.
  conns.py client --src 127.0.1.1 --addr 127.0.0.1 --port P --count N
      opens N connections from source address SRC (IP_BIND_ADDRESS_NO_PORT, so the port is
      chosen per 4-tuple), sends one request on each, reads every response, prints
      "ready N" and then holds them open, idle, until killed.
  conns.py churn --addr 127.0.0.1 --port P --rate R
      a steady R new connections a second until killed, each with one request and closed by
      the client after its response, and every tenth an ALB health check (`Connection: close`,
      closed by the server); prints "made N failed M" every 10 s and when killed.

Python standard library only. Each process needs RLIMIT_NOFILE above its socket count: bench/run
raises the soft limit up to the hard one and spreads the sockets over enough processes.
"""
import argparse
import errno
import selectors
import signal
import socket
import sys
import time

IP_BIND_ADDRESS_NO_PORT = 24
REQUEST = b"GET /idle HTTP/1.1\r\nHost: bench\r\nUser-Agent: closetrace-bench\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n"


def serve(addr, port):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Several servers share the port: each process holds only its share of the sockets.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind((addr, port))
    listener.listen(65535)
    listener.setblocking(False)
    selector = selectors.EpollSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    held = {}
    print("listening", flush=True)
    while True:
        for key, _ in selector.select(timeout=1.0):
            if key.data is None:
                while True:
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:
                        break
                    except OSError as error:
                        if error.errno in (errno.EMFILE, errno.ENFILE):
                            print(f"accept: {error}", file=sys.stderr, flush=True)
                            time.sleep(0.1)
                            break
                        raise
                    conn.setblocking(False)
                    held[conn.fileno()] = conn
                    selector.register(conn, selectors.EVENT_READ, True)
            else:
                conn = key.fileobj
                try:
                    data = conn.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if data:
                    try:
                        conn.send(RESPONSE)
                    except OSError:
                        pass
                else:
                    selector.unregister(conn)
                    held.pop(conn.fileno(), None)
                    conn.close()


def client(src, addr, port, count):
    held = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((src, 0))
        for attempt in range(50):
            try:
                sock.connect((addr, port))
                break
            except OSError as error:
                if error.errno not in (errno.EADDRNOTAVAIL, errno.ECONNREFUSED, errno.EAGAIN) or attempt == 49:
                    raise
                time.sleep(0.05)
        sock.send(REQUEST)
        held.append(sock)
    answered = 0
    for sock in held:
        sock.settimeout(10)
        try:
            if sock.recv(4096):
                answered += 1
        except OSError:
            pass
    print(f"ready {len(held)} {answered}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()


HEALTH_CHECK = (b"GET /health HTTP/1.1\r\nHost: bench\r\nUser-Agent: ELB-HealthChecker/2.0\r\n"
                b"Connection: close\r\n\r\n")


def churn(addr, port, rate):
    made = failed = 0

    def report(*_):
        print(f"made {made} failed {failed}", flush=True)
        if _:
            sys.exit(0)

    signal.signal(signal.SIGTERM, report)
    start = time.monotonic()
    while True:
        # On schedule, not after the previous one: the rate stays R however long each takes.
        delay = start + made / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            with socket.create_connection((addr, port), timeout=5) as sock:
                sock.sendall(HEALTH_CHECK if made % 10 == 9 else REQUEST)
                sock.recv(4096)
        except OSError:
            failed += 1
        made += 1
        if made % (rate * 10) == 0:
            report()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    server_args = sub.add_parser("server")
    server_args.add_argument("--addr", default="127.0.0.1")
    server_args.add_argument("--port", type=int, required=True)
    client_args = sub.add_parser("client")
    client_args.add_argument("--src", required=True)
    client_args.add_argument("--addr", default="127.0.0.1")
    client_args.add_argument("--port", type=int, required=True)
    client_args.add_argument("--count", type=int, required=True)
    churn_args = sub.add_parser("churn")
    churn_args.add_argument("--addr", default="127.0.0.1")
    churn_args.add_argument("--port", type=int, required=True)
    churn_args.add_argument("--rate", type=int, required=True)
    args = parser.parse_args()
    if args.mode == "server":
        serve(args.addr, args.port)
    elif args.mode == "churn":
        churn(args.addr, args.port, args.rate)
    else:
        client(args.src, args.addr, args.port, args.count)


if __name__ == "__main__":
    main()
