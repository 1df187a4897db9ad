#pragma once
// Connections the unit tests build: one end of a connection that served one request, and the
// close that ends it, with the cause and verdict the tracker would write.
#include <cstdint>
#include <optional>

#include "closetrace/model.h"

namespace closetrace::test {

inline constexpr uint64_t kMs = 1'000'000;
inline constexpr uint32_t kNetns = 4026531840;

// One end of a connection from python3 (pid 3762) to node (pid 3761), established at `at_ns`
// with one completed request; open until closed_by().
inline Connection served_end(Role role, Endpoint server, Endpoint client, uint64_t at_ns) {
    static uint64_t next_id = 1;
    const bool is_client = role == Role::Client;
    Connection conn;
    conn.id = next_id++;
    conn.netns = kNetns;
    conn.family = "ipv4";
    conn.role = role;
    conn.local = is_client ? client : server;
    conn.remote = is_client ? server : client;
    conn.pid = is_client ? 3762 : 3761;
    conn.comm = is_client ? "python3" : "node";
    conn.established_ns = at_ns;
    conn.requests.push_back({.method = "GET",
                             .target = "/a",
                             .status = 200,
                             .request_ns = at_ns + kMs,
                             .response_ns = at_ns + 2 * kMs,
                             .outcome = Outcome::Completed,
                             .idle_before_ms = 1.0});
    return conn;
}

// When closed_by() closes a connection established at `at_ns`: 2 s after its exchange.
inline uint64_t close_time(uint64_t at_ns) { return at_ns + 2002 * kMs; }

// `initiator` sent the first FIN or RST at close_time().
inline Connection closed_by(Connection conn, Initiator initiator, CloseHow how,
                            CloseEvidence evidence = {}) {
    const uint64_t at_ns = close_time(*conn.established_ns);
    CloseInfo& close = conn.close;
    close.initiator = initiator;
    close.how = how;
    close.idle_ms = 2000;
    const bool local = initiator == Initiator::Local;
    std::optional<uint64_t>& first = how == CloseHow::Fin
                                         ? (local ? close.local_fin_ns : close.peer_fin_ns)
                                         : (local ? close.local_rst_ns : close.peer_rst_ns);
    first = at_ns;
    conn.closed_ns = at_ns + kMs;
    close.cause = classify_close(conn, evidence);
    conn.verdict = judge(conn);
    return conn;
}

}  // namespace closetrace::test
