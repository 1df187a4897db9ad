// bench/tracker_churn: the recorder's work per connection under churn without a kernel: the ring
// records of bench/run's churn part (wrk -> nginx, `Connection: close`, one request; both sockets
// on this host: 5 state changes and 2 messages each) for N connections at 10k a second, fed to
// ConnTracker, finished as the recorder's poll loop does (every 100 connections), and each `conn`
// line written to FILE. Prints the CPU per connection (tracker and writer; building the events
// is a small part of it). Built against two trees, it compares them: the same records must give
// the same FILE, byte for byte, and the CPU side by side.
//
//   c++ -O2 -std=c++20 -Iuserspace/capture/include -Iuserspace/trace/include -Ibpf
//       bench/tracker_churn.cpp build/userspace/trace/libclosetrace_trace.a
//       build/userspace/capture/libclosetrace_capture.a -lfmt -lsimdjson -lz -o tracker_churn
//   ./tracker_churn [CONNECTIONS] FILE     (one line of JSON; default 100000 connections)
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <string_view>
#include <vector>

#include "closetrace/trace_io.h"
#include "closetrace/tracker.h"

namespace {

using namespace closetrace;

constexpr std::string_view kRequest =
    "GET / HTTP/1.1\r\nHost: 127.0.0.1:28481\r\nConnection: close\r\n\r\n";
constexpr std::string_view kResponse =
    "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
    "Connection: close\r\n\r\nok\n";
constexpr uint16_t kServerPort = 28481;
constexpr uint64_t kConnectionEveryNs = 100'000;
constexpr long kPollEvery = 100;  // connections

struct Socket {
    uint64_t cookie;
    Role role;
    uint16_t client_port;
    uint64_t established_ns;

    Event event(EventKind kind, uint64_t ts_ns) const {
        Event event;
        event.kind = kind;
        event.ts_ns = ts_ns;
        event.cookie = cookie;
        event.netns = 4026531840;
        event.role = role;
        event.tuple.family = AF_INET;
        event.tuple.laddr = event.tuple.raddr = {127, 0, 0, 1};
        event.tuple.lport = role == Role::Server ? kServerPort : client_port;
        event.tuple.rport = role == Role::Server ? client_port : kServerPort;
        return event;
    }

    Event state(uint64_t ts_ns, uint8_t from, uint8_t to) const {
        Event state = event(EventKind::State, ts_ns);
        state.old_state = from;
        state.new_state = to;
        state.established_ns = established_ns;
        state.cgroup_id = 4242;
        state.snap = {.last_rx_ns = established_ns + 20'000, .last_tx_ns = established_ns + 30'000,
                      .bytes_in = 80, .bytes_out = 160, .segs_in = 4, .segs_out = 4};
        if (role == Role::Client) {
            state.pid = 777;
            state.comm = "wrk";
            state.owner_from = "connect";
        } else if (to == kTcpFinWait1) {  // nginx closes first
            state.pid = 555;
            state.comm = "nginx";
            state.owner_from = "close";
            state.by_owner = true;
        }
        return state;
    }

    Event message(uint64_t ts_ns, bool response) const {
        Event message = event(EventKind::Message, ts_ns);
        message.direction = (role == Role::Server) != response ? Direction::In : Direction::Out;
        message.response = response;
        message.requests_before = response ? 1 : 0;
        message.payload = std::string(response ? kResponse : kRequest);
        message.payload_len = static_cast<uint32_t>(message.payload.size());
        if (response) message.previous_ns = ts_ns - 10'000;
        return message;
    }
};

// One connection's twelve records, in the order the ring buffer gives them.
void add_connection(std::vector<Event>& events, long index) {
    const uint64_t ts = 1'000'000'000 + static_cast<uint64_t>(index) * kConnectionEveryNs;
    // wrk's ports, reused as on the bench host: the tracker holds some tuples twice.
    const auto port = static_cast<uint16_t>(32768 + 2 * (index % 14'000));
    const auto cookie = 2 * static_cast<uint64_t>(index);
    const Socket client{cookie + 1, Role::Client, port, ts};
    const Socket server{cookie + 2, Role::Server, port, ts + 1'000};
    events.push_back(client.state(ts, kTcpSynSent, kTcpEstablished));
    events.push_back(server.state(ts + 1'000, kTcpSynRecv, kTcpEstablished));
    events.push_back(client.message(ts + 10'000, false));
    events.push_back(server.message(ts + 11'000, false));
    events.push_back(server.message(ts + 20'000, true));
    events.push_back(client.message(ts + 21'000, true));
    events.push_back(server.state(ts + 30'000, kTcpEstablished, kTcpFinWait1));
    events.push_back(client.state(ts + 31'000, kTcpEstablished, kTcpCloseWait));
    events.push_back(client.state(ts + 40'000, kTcpCloseWait, kTcpLastAck));
    events.push_back(server.state(ts + 41'000, kTcpFinWait1, kTcpFinWait2));
    events.push_back(server.state(ts + 50'000, kTcpFinWait2, kTcpClose));
    events.push_back(client.state(ts + 51'000, kTcpLastAck, kTcpClose));
}

void write_lines(std::FILE* out, const std::vector<Connection>& connections) {
    for (const Connection& conn : connections) {
        const std::string line = conn_line(conn);
        std::fwrite(line.data(), 1, line.size(), out);
        std::fputc('\n', out);
    }
}

double cpu_seconds() {
    timespec now{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
    return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
    const long connections = argc > 2 ? std::strtol(argv[1], nullptr, 10) : 100'000;
    std::FILE* out = argc > 1 ? std::fopen(argv[argc - 1], "w") : nullptr;
    if (connections <= 0 || !out) {
        std::fprintf(stderr, "usage: tracker_churn [CONNECTIONS] FILE (a positive number, a "
                             "writable file)\n");
        return 2;
    }
    ConnTracker tracker;
    std::vector<Event> batch;
    const double start = cpu_seconds();
    for (long i = 0; i < connections; ++i) {
        add_connection(batch, i);
        if (i % kPollEvery != kPollEvery - 1) continue;
        for (const Event& event : batch) tracker.on_event(event);
        batch.clear();
        write_lines(out, tracker.take_finished(1'000'000'000 + static_cast<uint64_t>(i) *
                                                                  kConnectionEveryNs));
    }
    for (const Event& event : batch) tracker.on_event(event);
    write_lines(out, tracker.finish_all(0));
    const double cpu = cpu_seconds() - start;
    std::fclose(out);
    std::printf("{\"connections\":%ld,\"cpu_s\":%.3f,\"cpu_us_per_connection\":%.2f}\n",
                connections, cpu, cpu * 1e6 / static_cast<double>(connections));
    return 0;
}
