// Connection records: what the tracker derives from events, what a trace's `conn` lines hold,
// and what the analysis reads back. See docs/trace-format.md.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "closetrace/container.h"
#include "closetrace/event.h"

namespace closetrace {

enum class Initiator { Local, Peer, Unknown };
enum class CloseHow { Fin, Rst };

enum class Outcome { Completed, UnansweredAtClose, AfterLocalClose, AfterPeerClose, InFlight };

enum class Verdict {
    LocalIdleClose,
    PeerIdleClose,
    LocalCloseRace,
    PeerCloseRace,
    LocalResetInflight,
    PeerCloseInflight,
    LocalReset,
    PeerReset,
    Open,
};

// Every member of the records below has a default, so that a designated initializer names only
// what it sets (g++'s -Wextra flags an omitted member without one).
struct Request {
    std::optional<std::string> method{};  // nullopt for an opaque (non-HTTP) message
    std::optional<std::string> target{};  // query string removed unless recorded with --full-target
    bool opaque = false;
    std::optional<int> status{};
    uint64_t request_ns = 0;
    std::optional<uint64_t> response_ns{};
    Outcome outcome = Outcome::InFlight;
};

struct CloseInfo {
    Initiator initiator = Initiator::Unknown;
    std::optional<CloseHow> how{};
    std::optional<uint64_t> local_fin_ns{};
    std::optional<uint64_t> peer_fin_ns{};
    std::optional<uint64_t> local_rst_ns{};
    std::optional<uint64_t> peer_rst_ns{};
    std::optional<std::string> rst_reason{};
    std::optional<double> idle_ms{};
};

struct Endpoint {
    std::string addr;
    uint16_t port = 0;
    auto operator<=>(const Endpoint&) const = default;
};

struct Connection {
    uint64_t id = 0;
    uint64_t cookie = 0;
    uint32_t netns = 0;
    std::string family;  // "ipv4" | "ipv6"
    Endpoint local;
    Endpoint remote;
    Role role = Role::Unknown;
    std::optional<uint32_t> pid;
    std::optional<std::string> comm;
    std::optional<std::string> owner_from;  // "connect" | "close": the syscall pid/comm came from
    uint64_t cgroup_id = 0;                 // the socket's cgroup v2 id; 0 = unknown
    std::optional<std::string> cgroup;      // its path below the cgroup v2 mount
    std::optional<ContainerRef> container;  // null for a host process
    std::optional<uint64_t> established_ns;
    std::optional<uint64_t> closed_ns;
    uint64_t bytes_in = 0;
    uint64_t bytes_out = 0;
    uint64_t segs_in = 0;
    uint64_t segs_out = 0;
    CloseInfo close;
    std::vector<Request> requests;
    // Completed requests in the middle of a long keep-alive connection, left out of `requests`
    // so that a record stays small (see bound_request_list).
    uint64_t requests_omitted = 0;
    Verdict verdict = Verdict::Open;

    uint64_t request_count() const { return requests.size() + requests_omitted; }
};

const char* to_string(Initiator initiator);
const char* to_string(CloseHow how);
const char* to_string(Outcome outcome);
const char* to_string(Verdict verdict);
// Inverse of to_string; nullopt for an unknown name.
std::optional<Initiator> initiator_from_string(std::string_view name);
std::optional<CloseHow> close_how_from_string(std::string_view name);
std::optional<Outcome> outcome_from_string(std::string_view name);
std::optional<Verdict> verdict_from_string(std::string_view name);
std::optional<Role> role_from_string(std::string_view name);

// A long keep-alive connection carries many thousands of requests; its record keeps the first
// and the last ones and every request that was not completed (the evidence), and counts the rest.
inline constexpr std::size_t kListedFirstRequests = 16;
inline constexpr std::size_t kListedLastRequests = 48;
void bound_request_list(Connection& conn);

// Every verdict, in the order reports list them.
inline constexpr Verdict kAllVerdicts[] = {
    Verdict::LocalIdleClose,     Verdict::PeerIdleClose,     Verdict::LocalCloseRace,
    Verdict::PeerCloseRace,      Verdict::LocalResetInflight, Verdict::PeerCloseInflight,
    Verdict::LocalReset,         Verdict::PeerReset,         Verdict::Open,
};

}  // namespace closetrace
