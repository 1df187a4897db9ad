// bench/tracker_memory: the heap the tracker (ConnTracker, closetrace_capture) holds per idle
// connection, without a kernel: the events bench/run's memory part makes (each connection's two
// sockets on this host, each with its ESTABLISHED change, one request and its response), fed for
// N connections; glibc's count of the bytes in use (mallinfo2) before and after. Reproducible to
// the byte, where the recorder's RSS also holds the ring buffer and the allocator's slack.
//
//   c++ -O2 -std=c++20 -Iuserspace/capture/include -Ibpf bench/tracker_memory.cpp
//       build/userspace/capture/libclosetrace_capture.a -lfmt -o tracker_memory  (one line)
//   ./tracker_memory [CONNECTIONS]        (default 100000; prints one JSON line)
#include <malloc.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "closetrace/tracker.h"

namespace {

using namespace closetrace;

// bench/conns.py's request and response.
constexpr std::string_view kRequest =
    "GET /idle HTTP/1.1\r\nHost: bench\r\nUser-Agent: closetrace-bench\r\n\r\n";
constexpr std::string_view kResponse =
    "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n";
constexpr uint16_t kServerPort = 18483;

std::size_t heap_in_use() {
    const struct mallinfo2 info = mallinfo2();
    return info.uordblks + info.hblkhd;
}

Event message(const Event& open, uint64_t ts_ns, bool response, std::string_view payload) {
    Event event;
    event.kind = EventKind::Message;
    event.ts_ns = ts_ns;
    event.cookie = open.cookie;
    event.netns = open.netns;
    event.tuple = open.tuple;
    event.role = open.role;
    // A server receives the request, a client the response.
    event.direction = (open.role == Role::Server) != response ? Direction::In : Direction::Out;
    event.response = response;
    event.requests_before = response ? 1 : 0;
    event.payload = std::string(payload);
    event.payload_len = static_cast<uint32_t>(payload.size());
    return event;
}

// One socket's events: its ESTABLISHED change, then the request and the response.
void feed_socket(ConnTracker& tracker, uint64_t cookie, Role role, uint8_t client_host,
                 uint16_t client_port, uint64_t ts_ns) {
    Event open;
    open.kind = EventKind::State;
    open.ts_ns = ts_ns;
    open.cookie = cookie;
    open.netns = 4026531840;
    open.role = role;
    open.tuple.family = AF_INET;
    // bench/run's clients connect from 127.0.1.1 and up, each from its own address.
    const std::array<uint8_t, 16> server = {127, 0, 0, 1};
    const std::array<uint8_t, 16> client = {127, 0, 1, client_host};
    open.tuple.laddr = role == Role::Server ? server : client;
    open.tuple.raddr = role == Role::Server ? client : server;
    open.tuple.lport = role == Role::Server ? kServerPort : client_port;
    open.tuple.rport = role == Role::Server ? client_port : kServerPort;
    open.old_state = role == Role::Server ? kTcpSynRecv : kTcpSynSent;
    open.new_state = kTcpEstablished;
    open.established_ns = ts_ns;
    open.cgroup_id = 4242;
    open.snap = {.last_rx_ns = ts_ns, .last_tx_ns = ts_ns, .segs_in = 1, .segs_out = 1};
    if (role == Role::Client) {  // the kernel knows the connecting process, not the accepting one
        open.pid = 4242;
        open.comm = "python3";
        open.owner_from = "connect";
    }
    tracker.on_event(open);
    tracker.on_event(message(open, ts_ns + 1'000, false, kRequest));
    Event response = message(open, ts_ns + 2'000, true, kResponse);
    response.previous_ns = ts_ns + 1'000;
    tracker.on_event(response);
}

}  // namespace

int main(int argc, char** argv) {
    const long connections = argc > 1 ? std::strtol(argv[1], nullptr, 10) : 100'000;
    if (connections <= 0) {
        std::fprintf(stderr, "usage: tracker_memory [CONNECTIONS], a positive number\n");
        return 2;
    }
    ConnTracker tracker;
    const std::size_t before = heap_in_use();
    for (long i = 0; i < connections; ++i) {
        const uint64_t ts_ns = 1'000'000'000 + static_cast<uint64_t>(i) * 10'000;
        const auto client_host = static_cast<uint8_t>(1 + i / 60'000);
        const auto client_port = static_cast<uint16_t>(1024 + i % 60'000);
        const uint64_t cookie = 2 * static_cast<uint64_t>(i);
        feed_socket(tracker, cookie + 1, Role::Client, client_host, client_port, ts_ns);
        feed_socket(tracker, cookie + 2, Role::Server, client_host, client_port, ts_ns);
    }
    const std::size_t held = heap_in_use() - before;
    const double sockets = 2.0 * static_cast<double>(connections);
    std::printf("{\"sockets\":%.0f,\"open\":%zu,\"heap_bytes\":%zu,\"heap_bytes_per_socket\":%.0f}\n",
                sockets, tracker.open_connections(), held, static_cast<double>(held) / sockets);
    return tracker.open_connections() == static_cast<std::size_t>(sockets) ? 0 : 1;
}
