// bench/tracker_memory: what the recorder holds per idle connection without a kernel: the ring
// records bench/run's memory part makes (each connection's two sockets on this host, each with
// its ESTABLISHED change, one request and its response), laid out as bpf/closetrace.h has them,
// for N connections, decoded and fed to ConnTracker as the recorder's ring callback and poll
// loop do, a whole ring (8 MiB of records) per poll: a recorder behind the kernel, as in the
// memory part's runs that lose events. Prints glibc's count of the heap in use (mallinfo2) and
// the process's RSS, each before and after, per socket. The heap is reproducible to the byte;
// the RSS also holds what glibc kept of the peak of a poll.
//
//   c++ -O2 -std=c++20 -Iuserspace/capture/include -Ibpf bench/tracker_memory.cpp
//       build/userspace/capture/libclosetrace_capture.a -lfmt -lnghttp2 -o tracker_memory
//   ./tracker_memory [CONNECTIONS]        (default 100000; prints one JSON line)
#include <malloc.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string_view>
#include <vector>

#include "closetrace/tracker.h"

extern "C" {
#include "closetrace.h"
}

#include "ring_records.h"

namespace {

using namespace closetrace;
using bench::Recorder;
using bench::Ring;

// bench/conns.py's request and response.
constexpr std::string_view kRequest =
    "GET /idle HTTP/1.1\r\nHost: bench\r\nUser-Agent: closetrace-bench\r\n\r\n";
constexpr std::string_view kResponse =
    "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n";
constexpr uint16_t kServerPort = 18483;
constexpr std::size_t kRingBytes = 8u << 20;  // record's default --ring-mb

std::size_t heap_in_use() {
    const struct mallinfo2 info = mallinfo2();
    return info.uordblks + info.hblkhd;
}

std::size_t rss_bytes() {
    std::FILE* statm = std::fopen("/proc/self/statm", "r");
    unsigned long size = 0, resident = 0;
    if (!statm || std::fscanf(statm, "%lu %lu", &size, &resident) != 2) std::abort();
    std::fclose(statm);
    return resident * static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
}

ct_message_event message(const ct_state_event& open, uint64_t ts_ns, bool response,
                         std::string_view payload) {
    ct_message_event event{};
    event.hdr = open.hdr;
    event.hdr.kind = CT_EV_MESSAGE;
    event.hdr.size = sizeof(event);
    event.hdr.ts_ns = ts_ns;
    event.role = open.role;
    // A server receives the request, a client the response.
    event.direction = (open.role == CT_ROLE_SERVER) != response ? CT_DIR_IN : CT_DIR_OUT;
    event.kind = response ? CT_MESSAGE_RESPONSE : CT_MESSAGE_REQUEST;
    event.requests = response ? 1 : 0;
    std::memcpy(event.payload, payload.data(), payload.size());
    event.captured = static_cast<uint16_t>(payload.size());
    event.segment_len = static_cast<uint32_t>(payload.size());
    return event;
}

// One socket's records: its ESTABLISHED change, then the request and the response.
void add_socket(Ring& ring, uint64_t cookie, uint8_t role, uint8_t client_host,
                uint16_t client_port, uint64_t ts_ns) {
    ct_state_event open{};
    open.hdr.kind = CT_EV_STATE;
    open.hdr.size = sizeof(open);
    open.hdr.ts_ns = ts_ns;
    open.hdr.cookie = cookie;
    open.hdr.netns = 4026531840;
    open.hdr.tuple.family = AF_INET;
    // bench/run's clients connect from 127.0.1.1 and up, each from its own address.
    const uint8_t server[4] = {127, 0, 0, 1};
    const uint8_t client[4] = {127, 0, 1, client_host};
    std::memcpy(open.hdr.tuple.laddr, role == CT_ROLE_SERVER ? server : client, 4);
    std::memcpy(open.hdr.tuple.raddr, role == CT_ROLE_SERVER ? client : server, 4);
    open.hdr.tuple.lport = role == CT_ROLE_SERVER ? kServerPort : client_port;
    open.hdr.tuple.rport = role == CT_ROLE_SERVER ? client_port : kServerPort;
    open.role = role;
    open.old_state = role == CT_ROLE_SERVER ? kTcpSynRecv : kTcpSynSent;
    open.new_state = kTcpEstablished;
    open.established_ns = ts_ns;
    open.cgroup_id = 4242;
    open.snap.last_rx_ns = open.snap.last_tx_ns = ts_ns;
    open.snap.segs_in = open.snap.segs_out = 1;
    if (role == CT_ROLE_CLIENT) {  // the kernel knows the connecting process, not the accepting one
        open.pid = 4242;
        std::strcpy(open.comm, "python3");
        open.owner_from = CT_OWNER_CONNECT;
    }
    ring.add(open);
    ring.add(message(open, ts_ns + 1'000, false, kRequest));
    ct_message_event response = message(open, ts_ns + 2'000, true, kResponse);
    response.previous_ns = ts_ns + 1'000;
    ring.add(response);
}

}  // namespace

int main(int argc, char** argv) {
    const long connections = argc > 1 ? std::strtol(argv[1], nullptr, 10) : 100'000;
    if (connections <= 0) {
        std::fprintf(stderr, "usage: tracker_memory [CONNECTIONS], a positive number\n");
        return 2;
    }
    Ring ring;
    // The ring's own pages are the kernel's mapping in the recorder: not counted.
    ring.bytes.resize(kRingBytes);
    ring.clear();
    Recorder recorder;
    const std::size_t heap_before = heap_in_use();
    const std::size_t rss_before = rss_bytes();
    for (long i = 0; i < connections; ++i) {
        const uint64_t ts_ns = 1'000'000'000 + static_cast<uint64_t>(i) * 10'000;
        const auto client_host = static_cast<uint8_t>(1 + i / 60'000);
        const auto client_port = static_cast<uint16_t>(1024 + i % 60'000);
        const uint64_t cookie = 2 * static_cast<uint64_t>(i);
        if (ring.bytes.size() + 2 * (sizeof(ct_state_event) + 2 * sizeof(ct_message_event)) >
            kRingBytes) {
            recorder.poll(ring);
            ring.clear();
        }
        add_socket(ring, cookie + 1, CT_ROLE_CLIENT, client_host, client_port, ts_ns);
        add_socket(ring, cookie + 2, CT_ROLE_SERVER, client_host, client_port, ts_ns);
    }
    recorder.poll(ring);
    const std::size_t heap = heap_in_use() - heap_before;
    const std::size_t rss = rss_bytes() - rss_before;
    const std::size_t open = recorder.tracker.open_connections();
    const double sockets = 2.0 * static_cast<double>(connections);
    std::printf("{\"sockets\":%.0f,\"open\":%zu,\"heap_bytes\":%zu,\"heap_bytes_per_socket\":%.0f,"
                "\"rss_bytes\":%zu,\"rss_bytes_per_socket\":%.0f}\n",
                sockets, open, heap, static_cast<double>(heap) / sockets, rss,
                static_cast<double>(rss) / sockets);
    return open == static_cast<std::size_t>(sockets) ? 0 : 1;
}
