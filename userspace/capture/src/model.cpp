#include "closetrace/model.h"

#include <algorithm>
#include <array>
#include <utility>

namespace closetrace {
namespace {

// Names as string_views: compared without a strlen of each (the reader parses every enum).
template <typename Enum, std::size_t N>
std::optional<Enum> lookup(const std::array<std::pair<Enum, std::string_view>, N>& names,
                           std::string_view name) {
    for (const auto& [value, text] : names) {
        if (name == text) return value;
    }
    return std::nullopt;
}

template <typename Enum, std::size_t N>
const char* name_of(const std::array<std::pair<Enum, std::string_view>, N>& names, Enum value) {
    for (const auto& [candidate, text] : names) {
        if (candidate == value) return text.data();  // a literal's: NUL-terminated
    }
    return "?";
}

constexpr std::array<std::pair<Initiator, std::string_view>, 3> kInitiatorNames{{
    {Initiator::Local, "local"},
    {Initiator::Peer, "peer"},
    {Initiator::Unknown, "unknown"},
}};

constexpr std::array<std::pair<CloseHow, std::string_view>, 2> kHowNames{{
    {CloseHow::Fin, "fin"},
    {CloseHow::Rst, "rst"},
}};

constexpr std::array<std::pair<Outcome, std::string_view>, 6> kOutcomeNames{{
    {Outcome::Completed, "completed"},
    {Outcome::UnansweredAtClose, "unanswered_at_close"},
    {Outcome::AfterLocalClose, "after_local_close"},
    {Outcome::AfterPeerClose, "after_peer_close"},
    {Outcome::InFlight, "in_flight"},
    {Outcome::UnreadAtClose, "unread_at_close"},
}};

constexpr std::array<std::pair<CloseCause, std::string_view>, 13> kCauseNames{{
    {CloseCause::IdleTimer, "idle_timer"},
    {CloseCause::ConnectionClose, "connection_close"},
    {CloseCause::KeepaliveEnded, "keepalive_ended"},
    {CloseCause::ClosedAfterUse, "closed_after_use"},
    {CloseCause::Probe, "probe"},
    {CloseCause::UnreadRequest, "unread_request"},
    {CloseCause::ProcessExit, "process_exit"},
    {CloseCause::InFlight, "in_flight"},
    {CloseCause::Forgotten, "forgotten"},
    {CloseCause::ClosedTogether, "closed_together"},
    {CloseCause::Refused, "refused"},
    {CloseCause::Upgraded, "upgraded"},
    {CloseCause::Unknown, "unknown"},
}};

constexpr std::array<std::pair<CloseAsked, std::string_view>, 2> kCloseAskedNames{{
    {CloseAsked::Request, "request"},
    {CloseAsked::Response, "response"},
}};

constexpr std::array<std::pair<Verdict, std::string_view>, 9> kVerdictNames{{
    {Verdict::LocalIdleClose, "local_idle_close"},
    {Verdict::PeerIdleClose, "peer_idle_close"},
    {Verdict::LocalCloseRace, "local_close_race"},
    {Verdict::PeerCloseRace, "peer_close_race"},
    {Verdict::LocalResetInflight, "local_reset_inflight"},
    {Verdict::PeerCloseInflight, "peer_close_inflight"},
    {Verdict::LocalReset, "local_reset"},
    {Verdict::PeerReset, "peer_reset"},
    {Verdict::Open, "open"},
}};

constexpr std::array<std::pair<StreamFate, std::string_view>, 3> kStreamFateNames{{
    {StreamFate::AfterGoaway, "after_goaway"},
    {StreamFate::Refused, "refused"},
    {StreamFate::UnansweredAtClose, "unanswered_at_close"},
}};

constexpr std::array<std::pair<StreamNames, std::string_view>, 3> kStreamNamesNames{{
    {StreamNames::Decoded, "decoded"},
    {StreamNames::NotRecorded, "not_recorded"},
    {StreamNames::NotDecodable, "not_decodable"},
}};

constexpr std::array<std::pair<Role, std::string_view>, 3> kRoleNames{{
    {Role::Unknown, "unknown"},
    {Role::Server, "server"},
    {Role::Client, "client"},
}};

}  // namespace

const char* to_string(Initiator initiator) { return name_of(kInitiatorNames, initiator); }
const char* to_string(CloseHow how) { return name_of(kHowNames, how); }
const char* to_string(Outcome outcome) { return name_of(kOutcomeNames, outcome); }
const char* to_string(Verdict verdict) { return name_of(kVerdictNames, verdict); }
const char* to_string(Role role) { return name_of(kRoleNames, role); }
const char* to_string(CloseCause cause) { return name_of(kCauseNames, cause); }
const char* to_string(CloseAsked asked) { return name_of(kCloseAskedNames, asked); }
const char* to_string(StreamFate fate) { return name_of(kStreamFateNames, fate); }
std::optional<StreamFate> stream_fate_from_string(std::string_view name) {
    return lookup(kStreamFateNames, name);
}
const char* to_string(StreamNames names) { return name_of(kStreamNamesNames, names); }
std::optional<StreamNames> stream_names_from_string(std::string_view name) {
    return lookup(kStreamNamesNames, name);
}

std::optional<Initiator> initiator_from_string(std::string_view name) {
    return lookup(kInitiatorNames, name);
}
std::optional<CloseHow> close_how_from_string(std::string_view name) {
    return lookup(kHowNames, name);
}
std::optional<Outcome> outcome_from_string(std::string_view name) {
    return lookup(kOutcomeNames, name);
}
std::optional<Verdict> verdict_from_string(std::string_view name) {
    return lookup(kVerdictNames, name);
}
std::optional<Role> role_from_string(std::string_view name) { return lookup(kRoleNames, name); }
std::optional<CloseCause> close_cause_from_string(std::string_view name) {
    return lookup(kCauseNames, name);
}
std::optional<CloseAsked> close_asked_from_string(std::string_view name) {
    return lookup(kCloseAskedNames, name);
}

uint64_t last_seen_ns(const Connection& conn) {
    uint64_t latest = std::max(conn.established_ns.value_or(0), conn.closed_ns.value_or(0));
    for (const std::optional<uint64_t> close_ns :
         {conn.close.local_fin_ns, conn.close.peer_fin_ns, conn.close.local_rst_ns,
          conn.close.peer_rst_ns}) {
        latest = std::max(latest, close_ns.value_or(0));
    }
    for (const Request& request : conn.requests) {
        latest = std::max({latest, request.request_ns, request.response_ns.value_or(0)});
    }
    return latest;
}

std::optional<bool> serves_by_port(uint16_t port, uint16_t other_port,
                                   std::span<const uint16_t> service_ports) {
    const bool filtered = std::ranges::find(service_ports, port) != service_ports.end();
    const bool other_filtered =
        std::ranges::find(service_ports, other_port) != service_ports.end();
    if (filtered != other_filtered) return filtered;
    return std::nullopt;
}

std::optional<bool> serves_here(const Connection& conn, std::span<const uint16_t> service_ports) {
    if (conn.role != Role::Unknown) return conn.role == Role::Server;
    if (conn.other_end && conn.other_end->server) {
        return *conn.other_end->server == Initiator::Local;
    }
    return serves_by_port(conn.local.port, conn.remote.port, service_ports);
}

std::string_view plain_address(std::string_view addr) {
    constexpr std::string_view kMappedPrefix = "::ffff:";
    if (addr.starts_with(kMappedPrefix) && addr.find('.') != std::string_view::npos) {
        addr.remove_prefix(kMappedPrefix.size());
    }
    return addr;
}

namespace {

bool came_after_the_close(const Request& request) {
    return request.outcome == Outcome::AfterLocalClose || request.outcome == Outcome::AfterPeerClose;
}

bool any_outcome(const std::vector<Request>& requests, Outcome outcome) {
    return std::ranges::any_of(requests,
                               [outcome](const Request& r) { return r.outcome == outcome; });
}

// The side that sends the requests: the peer of a connection this host serves.
Initiator requester(Role role) { return role == Role::Client ? Initiator::Local : Initiator::Peer; }

// Payload from the side that sends requests (either side when the role is unknown), by the
// socket's own byte counts, which count sequence numbers: a FIN received is one byte in, and a
// client's acknowledged SYN and FIN are two out.
bool requester_sent_bytes(const Connection& conn) {
    const bool in = conn.bytes_in > 1;
    const bool out = conn.bytes_out > 2;
    switch (conn.role) {
        case Role::Server: return in;
        case Role::Client: return out;
        default: return in || out;
    }
}

Initiator other_side(Initiator side) {
    return side == Initiator::Local ? Initiator::Peer : Initiator::Local;
}

}  // namespace

CloseCause classify_close(const Connection& conn, const CloseEvidence& evidence) {
    const CloseInfo& close = conn.close;
    if (close.initiator == Initiator::Unknown) return CloseCause::Unknown;
    const bool local = close.initiator == Initiator::Local;
    // Nothing listened on the peer's port, or a firewall rejected the connect with a reset.
    if (!local && evidence.never_established && close.how == CloseHow::Rst) {
        return CloseCause::Refused;
    }
    if (local && evidence.owner_exiting) return CloseCause::ProcessExit;
    // Bytes left unread, an idle, a close right after: all the new protocol's (WebSocket frames).
    if (evidence.switched_protocols || switched_protocols(conn)) return CloseCause::Upgraded;
    if (local && close.unread_bytes > 0 && !evidence.unread_only_tls_alerts) {
        return CloseCause::UnreadRequest;
    }

    // The last request made before the close; late ones only show that the closer's timer ran
    // on a connection that had carried none before.
    const auto last = std::ranges::find_if(conn.requests.rbegin(), conn.requests.rend(),
                                           [](const Request& r) { return !came_after_the_close(r); });
    if (last == conn.requests.rend()) {
        if (conn.requests.empty() && conn.requests_omitted == 0) {
            if (!requester_sent_bytes(conn)) return CloseCause::Probe;
            // Requests that no message shows (a connection met mid-life, messages lost): its
            // idle tells what it can.
            if (evidence.closed_together) return CloseCause::ClosedTogether;
            if (!close.idle_ms) return CloseCause::Unknown;
            return cause_by_idle(*close.idle_ms, close.initiator, requester(conn.role));
        }
        if (evidence.closed_together) return CloseCause::ClosedTogether;
        // Closed as soon as it opened: no keep-alive timer runs that short.
        if (local && close.idle_ms && *close.idle_ms < kRightAfterExchangeMs) {
            return CloseCause::Refused;
        }
        return CloseCause::IdleTimer;
    }
    if (last->outcome != Outcome::Completed) {
        const bool forgotten = !local && close.how == CloseHow::Rst && !close.peer_fin_ns &&
                               conn.role != Role::Server &&
                               last->idle_before_ms.value_or(0) >= kIdleGapMs;
        return forgotten ? CloseCause::Forgotten : CloseCause::InFlight;
    }
    if (last->close_asked != CloseAsked::None) {
        return last->close_asked == CloseAsked::Request ? CloseCause::ConnectionClose
                                                        : CloseCause::KeepaliveEnded;
    }
    if (evidence.closed_together) return CloseCause::ClosedTogether;
    if (!close.idle_ms) return CloseCause::Unknown;
    return cause_by_idle(*close.idle_ms, close.initiator, requester(conn.role));
}

namespace {

bool answered_by_a_switch(const Request& request) {
    return request.status == 101 && request.outcome == Outcome::Completed;
}

}  // namespace

bool switched_protocols(const Connection& conn) {
    return !conn.requests.empty() && answered_by_a_switch(conn.requests.back());
}

void reread_switch_of_protocols(Connection& conn) {
    if (conn.http2) return;
    const auto switched = std::ranges::find_if(conn.requests, answered_by_a_switch);
    if (switched == conn.requests.end()) return;
    conn.requests.erase(std::next(switched), conn.requests.end());
    // classify_close's order: an unknown closer, then a process exit, come first.
    if (conn.close.initiator != Initiator::Unknown &&
        conn.close.cause != CloseCause::ProcessExit) {
        conn.close.cause = CloseCause::Upgraded;
        conn.close.asked_by.reset();
    }
    conn.verdict = judge(conn);
}

CloseCause cause_by_idle(double idle_ms, Initiator closer, Initiator client) {
    if (idle_ms >= kRightAfterExchangeMs) return CloseCause::IdleTimer;
    return closer == client ? CloseCause::ClosedAfterUse : CloseCause::KeepaliveEnded;
}

std::optional<Initiator> asked_by(const Connection& conn) {
    switch (conn.close.cause) {
        case CloseCause::ConnectionClose: return requester(conn.role);
        case CloseCause::KeepaliveEnded: return other_side(requester(conn.role));
        default: return std::nullopt;
    }
}

Verdict judge(const Connection& conn) {
    const CloseInfo& close = conn.close;
    // Nothing known of a close, even of a socket that is gone (events lost, or an abort on a
    // kernel that does not trace active resets): naming a side would be a guess, so the record
    // says `open` with initiator unknown, and its closed_ns tells that the socket is gone.
    if (close.initiator == Initiator::Unknown) return Verdict::Open;
    const std::vector<Request>& requests = conn.requests;
    const bool unanswered = any_outcome(requests, Outcome::UnansweredAtClose);
    if (close.initiator == Initiator::Local) {
        if (any_outcome(requests, Outcome::AfterLocalClose)) return Verdict::LocalCloseRace;
        const bool unread = any_outcome(requests, Outcome::UnreadAtClose);
        // The timer closed a connection left idle, and a request waited in it unread.
        const bool unread_after_idle =
            close.cause == CloseCause::UnreadRequest &&
            std::ranges::any_of(requests, [](const Request& r) {
                return r.outcome == Outcome::UnreadAtClose &&
                       r.idle_before_ms.value_or(0) >= kIdleGapMs;
            });
        if (unread_after_idle) return Verdict::LocalCloseRace;
        if (unanswered || unread) return Verdict::LocalResetInflight;
        return close.how == CloseHow::Fin ? Verdict::LocalIdleClose : Verdict::LocalReset;
    }
    if (any_outcome(requests, Outcome::AfterPeerClose)) return Verdict::PeerCloseRace;
    if (unanswered) return Verdict::PeerCloseInflight;
    return close.how == CloseHow::Fin ? Verdict::PeerIdleClose : Verdict::PeerReset;
}

void bound_request_list(Connection& conn) {
    std::vector<Request>& requests = conn.requests;
    if (requests.size() <= kListedFirstRequests + kListedLastRequests) return;
    const std::size_t last_start = requests.size() - kListedLastRequests;
    std::vector<Request> kept;
    kept.reserve(kListedFirstRequests + kListedLastRequests);
    for (std::size_t i = 0; i < requests.size(); ++i) {
        const bool listed = i < kListedFirstRequests || i >= last_start ||
                            requests[i].outcome != Outcome::Completed;
        if (listed) {
            kept.push_back(std::move(requests[i]));
        } else {
            ++conn.requests_omitted;
        }
    }
    requests = std::move(kept);
}

bool catches_a_request(Verdict verdict) {
    switch (verdict) {
        case Verdict::LocalCloseRace:
        case Verdict::PeerCloseRace:
        case Verdict::LocalResetInflight:
        case Verdict::PeerCloseInflight: return true;
        default: return false;
    }
}

bool is_caught(Verdict verdict, Outcome outcome) {
    if (!catches_a_request(verdict)) return false;
    switch (verdict) {
        case Verdict::LocalCloseRace:
            return outcome == Outcome::AfterLocalClose || outcome == Outcome::UnreadAtClose;
        case Verdict::PeerCloseRace: return outcome == Outcome::AfterPeerClose;
        default: return outcome == Outcome::UnansweredAtClose || outcome == Outcome::UnreadAtClose;
    }
}

}  // namespace closetrace
