// bench/tracker_churn: the recorder's work per connection under churn without a kernel: the ring
// records of bench/run's churn part (wrk -> nginx, `Connection: close`, one request; both sockets
// on this host: the client's 4 state changes and the server's 3 that the kernel writes, and 2
// messages each) for N connections at 10k a second, laid out as bpf/closetrace.h has them,
// decoded and fed to ConnTracker as the recorder's ring callback and poll loop do (a poll every
// 100 connections), and each `conn` line written to FILE by TraceWriter, flushed after each poll
// as the recorder does. Prints the CPU per connection (decoding, tracker and writer; building the
// records is a small part of it). Built against two trees, it compares them: the same records
// must give the same FILE, byte for byte, and the CPU side by side.
//
//   c++ -O2 -std=c++20 -Iuserspace/capture/include -Iuserspace/trace/include -Ibpf
//       bench/tracker_churn.cpp build/userspace/trace/libclosetrace_trace.a
//       build/userspace/capture/libclosetrace_capture.a -lfmt -lsimdjson -lz -lnghttp2 -o tracker_churn
//   ./tracker_churn [CONNECTIONS] FILE     (one line of JSON; default 100000 connections)
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <span>
#include <string_view>
#include <vector>

#include "closetrace/trace_io.h"
#include "closetrace/tracker.h"

extern "C" {
#include "closetrace.h"
}

#include "ring_records.h"

namespace {

using namespace closetrace;
using bench::Recorder;
using bench::Ring;

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
    uint8_t role;  // enum ct_role
    uint16_t client_port;
    uint64_t established_ns;

    ct_event header(ct_event_kind kind, uint64_t ts_ns, std::size_t size) const {
        ct_event header{};
        header.ts_ns = ts_ns;
        header.cookie = cookie;
        header.netns = 4026531840;
        header.kind = kind;
        header.size = static_cast<uint16_t>(size);
        header.tuple.family = AF_INET;
        const uint8_t loopback[4] = {127, 0, 0, 1};
        std::memcpy(header.tuple.laddr, loopback, sizeof(loopback));
        std::memcpy(header.tuple.raddr, loopback, sizeof(loopback));
        header.tuple.lport = role == CT_ROLE_SERVER ? kServerPort : client_port;
        header.tuple.rport = role == CT_ROLE_SERVER ? client_port : kServerPort;
        return header;
    }

    ct_state_event state(uint64_t ts_ns, uint8_t from, uint8_t to) const {
        ct_state_event state{};
        state.hdr = header(CT_EV_STATE, ts_ns, sizeof(state));
        state.old_state = from;
        state.new_state = to;
        state.role = role;
        state.established_ns = established_ns;
        state.cgroup_id = 4242;
        state.snap = {.last_rx_ns = established_ns + 20'000, .last_tx_ns = established_ns + 30'000,
                      .bytes_in = 80, .bytes_out = 160, .segs_in = 4, .segs_out = 4,
                      .unacked_out = 0, .unread_in = 0};
        if (role == CT_ROLE_CLIENT) {
            state.pid = 777;
            std::strcpy(state.comm, "wrk");
            state.owner_from = CT_OWNER_CONNECT;
        } else if (to == kTcpFinWait1) {  // nginx closes first
            state.pid = 555;
            std::strcpy(state.comm, "nginx");
            state.owner_from = CT_OWNER_CLOSE;
            state.flags = CT_STATE_BY_OWNER;
        }
        return state;
    }

    ct_message_event message(uint64_t ts_ns, bool response) const {
        ct_message_event message{};
        message.hdr = header(CT_EV_MESSAGE, ts_ns, sizeof(message));
        message.role = role;
        message.direction = (role == CT_ROLE_SERVER) != response ? CT_DIR_IN : CT_DIR_OUT;
        message.kind = response ? CT_MESSAGE_RESPONSE : CT_MESSAGE_REQUEST;
        message.requests = response ? 1 : 0;
        const std::string_view head = response ? kResponse : kRequest;
        std::memcpy(message.payload, head.data(), head.size());
        message.captured = static_cast<uint16_t>(head.size());
        message.segment_len = static_cast<uint32_t>(head.size());
        if (response) message.previous_ns = ts_ns - 10'000;
        return message;
    }
};

// One connection's eleven records, in the order the ring buffer gives them (the kernel writes
// neither the client's SYN_SENT nor the server's FIN_WAIT1 -> FIN_WAIT2).
void add_connection(Ring& ring, long index) {
    const uint64_t ts = 1'000'000'000 + static_cast<uint64_t>(index) * kConnectionEveryNs;
    // wrk's ports, reused as on the bench host: the tracker holds some tuples twice.
    const auto port = static_cast<uint16_t>(32768 + 2 * (index % 14'000));
    const auto cookie = 2 * static_cast<uint64_t>(index);
    const Socket client{cookie + 1, CT_ROLE_CLIENT, port, ts};
    const Socket server{cookie + 2, CT_ROLE_SERVER, port, ts + 1'000};
    ring.add(client.state(ts, kTcpSynSent, kTcpEstablished));
    ring.add(server.state(ts + 1'000, kTcpSynRecv, kTcpEstablished));
    ring.add(client.message(ts + 10'000, false));
    ring.add(server.message(ts + 11'000, false));
    ring.add(server.message(ts + 20'000, true));
    ring.add(client.message(ts + 21'000, true));
    ring.add(server.state(ts + 30'000, kTcpEstablished, kTcpFinWait1));
    ring.add(client.state(ts + 31'000, kTcpEstablished, kTcpCloseWait));
    ring.add(client.state(ts + 40'000, kTcpCloseWait, kTcpLastAck));
    ring.add(server.state(ts + 50'000, kTcpFinWait2, kTcpClose));
    ring.add(client.state(ts + 51'000, kTcpLastAck, kTcpClose));
}

// As the recorder's poll loop writes them: into the writer's buffer, flushed after each poll.
void write_lines(TraceWriter& writer, const std::vector<Connection>& connections) {
    for (const Connection& conn : connections) writer.write_conn(conn);
    writer.flush();
}

double cpu_seconds() {
    timespec now{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
    return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
    const long connections = argc > 2 ? std::strtol(argv[1], nullptr, 10) : 100'000;
    const int out = argc > 1 ? open(argv[argc - 1], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)
                             : -1;
    if (connections <= 0 || out < 0) {
        std::fprintf(stderr, "usage: tracker_churn [CONNECTIONS] FILE (a positive number, a "
                             "writable file)\n");
        return 2;
    }
    Recorder recorder;
    Ring ring;
    TraceWriter writer(out);
    const double start = cpu_seconds();
    for (long i = 0; i < connections; ++i) {
        add_connection(ring, i);
        if (i % kPollEvery != kPollEvery - 1) continue;
        recorder.poll(ring);
        ring.clear();
        write_lines(writer, recorder.tracker.take_finished(
                             1'000'000'000 + static_cast<uint64_t>(i) * kConnectionEveryNs));
    }
    recorder.poll(ring);
    write_lines(writer, recorder.tracker.finish_all(0));
    const double cpu = cpu_seconds() - start;
    close(out);
    std::printf("{\"connections\":%ld,\"cpu_s\":%.3f,\"cpu_us_per_connection\":%.2f}\n",
                connections, cpu, cpu * 1e6 / static_cast<double>(connections));
    return 0;
}
