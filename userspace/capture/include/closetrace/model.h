// Connection records: what the tracker derives from events, what a trace's `conn` lines hold,
// and what the analysis reads back. See docs/trace-format.md.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "closetrace/container_ref.h"
#include "closetrace/event.h"

namespace closetrace {

enum class Initiator { Local, Peer, Unknown };
enum class CloseHow { Fin, Rst };

enum class Outcome {
    Completed,
    UnansweredAtClose,
    AfterLocalClose,
    AfterPeerClose,
    InFlight,
    UnreadAtClose,  // arrived before this host closed, never read by its application
};

// Why a connection closed, from the closer's side (docs/trace-format.md, "close.cause").
enum class CloseCause {
    IdleTimer,        // the closer's idle (keep-alive) timer
    ConnectionClose,  // the last request asked for it (Connection: close, HTTP/1.0)
    KeepaliveEnded,   // the last response announced Connection: close
    ClosedAfterUse,   // the side that sent the last request closed right after its response
    Probe,            // no request at all
    UnreadRequest,    // this host closed with request bytes its application never read
    ProcessExit,      // this host's owning process was exiting
    InFlight,         // closed or reset with a request unanswered (a timeout, an abort)
    Forgotten,        // a request after a long idle was answered by a reset: a NAT or
                      // conntrack entry in between had expired
    ClosedTogether,   // its closer (a process here, or the peer) closed it idle at once with
                      // others idle for far other times: a shutdown, restart or reload
    Refused,          // this host closed it right after it opened, before any request: a
                      // connection limit, or a server not taking connections; or the peer
                      // reset this host's connect() (nothing listening, a firewall's reject)
    Upgraded,         // it switched protocols (101: a WebSocket): its close is the new
                      // protocol's, not a keep-alive timer's
    Unknown,
};

// Which message of an exchange asked for the connection to close.
enum class CloseAsked { None, Request, Response };

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
    // Since the previous exchange (or the connection's start): a race's late request follows an
    // idle gap as long as the closer's timeout.
    std::optional<double> idle_before_ms{};
    CloseAsked close_asked = CloseAsked::None;
};

struct CloseInfo {
    Initiator initiator = Initiator::Unknown;
    std::optional<CloseHow> how{};
    std::optional<uint64_t> local_fin_ns{};
    std::optional<uint64_t> peer_fin_ns{};
    std::optional<uint64_t> local_rst_ns{};
    std::optional<uint64_t> peer_rst_ns{};
    std::optional<std::string> rst_reason{};
    // From the end of the last completed exchange to the first FIN or RST: a request that came
    // unanswered into the close does not make the connection less idle.
    std::optional<double> idle_ms{};
    CloseCause cause = CloseCause::Unknown;
    // For ConnectionClose and KeepaliveEnded: the side whose message asked.
    std::optional<Initiator> asked_by{};
    uint64_t unread_bytes = 0;  // received, never read by this host's application at its close
};

// Why a close caught an HTTP/2 stream (docs/trace-format.md, "http2").
enum class StreamFate {
    AfterGoaway,        // opened above the other side's GOAWAY last-stream-id: never processed
    Refused,            // reset with REFUSED_STREAM
    UnansweredAtClose,  // opened, neither answered nor reset when the connection closed
};

// Whether a stream's names (its request's :method and :path, its response's grpc-status) are
// known: they need every header block of the connection before them (HPACK), and are never
// guessed.
enum class StreamNames {
    Decoded,       // from its header blocks (a field may still be absent: null)
    NotRecorded,   // recorded without record --http2-names (or before closetrace/5)
    NotDecodable,  // a header block of its direction was missed at or before it
};

struct Http2Stream {
    uint32_t id = 0;
    Initiator opened_by = Initiator::Unknown;
    std::optional<uint64_t> opened_ns{};  // when its HEADERS passed, if the kernel wrote it
    std::optional<Initiator> reset_by{};  // for Refused
    std::optional<uint64_t> reset_ns{};
    StreamFate fate = StreamFate::UnansweredAtClose;
    StreamNames names = StreamNames::NotRecorded;
    // Wire text, untrusted: escaped wherever shown. The path without its query string unless
    // recorded with --full-target.
    std::optional<std::string> method{};
    std::optional<std::string> path{};
    std::optional<uint32_t> grpc_status{};
    bool operator==(const Http2Stream&) const = default;
};

// An HTTP/2 (h2c) connection: what each side sent, and the streams its close caught, named when
// recorded with --http2-names.
struct Http2Connection {
    Initiator client = Initiator::Unknown;  // the side that sent the client preface
    Http2Side local{};                      // frames this host sent
    Http2Side peer{};
    std::optional<uint64_t> local_goaway_ns{};  // this host's first GOAWAY, when written
    std::optional<uint64_t> peer_goaway_ns{};
    // Frames of a direction stopped being followed (a gap, a split header, too many frames in
    // a segment): counts stop there and caught streams may be missing, never invented.
    bool lost = false;
    // More client streams were open at once than the kernel's window: some unanswered ones may
    // be missing from `caught`.
    bool pending_overflow = false;
    // The counts are those at the close (else the latest the kernel wrote: still open).
    bool counted_at_close = false;
    std::vector<Http2Stream> caught{};  // by id
    // Recorded with --http2-names: the first stream from which a header block (either way) could
    // not be decoded; later streams' names are not decodable. Null: none missed.
    std::optional<uint32_t> names_undecodable_from{};
    bool operator==(const Http2Connection&) const = default;
};

struct Endpoint {
    std::string addr;
    uint16_t port = 0;
    auto operator<=>(const Endpoint&) const = default;
};

// The connection's other socket, when it is on this host and recorded too (any network
// namespace): found by the recorder, which sees both (docs/trace-format.md, "other_end").
struct OtherEnd {
    uint64_t cookie = 0;  // the other socket's
    // Which of the two serves: Local (this record's socket) or Peer; nullopt when nothing tells
    // (two ends open before the recording that carried no request).
    std::optional<Initiator> server{};
    bool operator==(const OtherEnd&) const = default;
};

// The earlier of two times either of which may be unknown.
inline std::optional<uint64_t> earliest(std::optional<uint64_t> a, std::optional<uint64_t> b) {
    if (a && b) return std::min(*a, *b);
    return a ? a : b;
}

// The address without the ::ffff: prefix a dual-stack socket shows an IPv4 address with.
std::string_view plain_address(std::string_view addr);

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
    // The known health checker that sent requests on it (http::health_checker), if any.
    std::optional<std::string> health_check;
    // The idle timeout the server announced in its responses ("Keep-Alive: timeout=N"), in
    // seconds: the latest of the responses recorded. nullopt when none announced one.
    std::optional<uint32_t> keep_alive_timeout_s;
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
    // Events of it may be missing: the kernel lost events while it was open (or lingering), so
    // its close, requests and verdict may be wrong (docs/trace-format.md, "incomplete").
    bool incomplete = false;
    // Still open when a recording ended whose kernel could not hand over the messages it held
    // of it: its requests are a lower bound (docs/trace-format.md, "requests_lower_bound").
    bool requests_lower_bound = false;
    // Set when the connection spoke HTTP/2 over cleartext from its start.
    std::optional<Http2Connection> http2{};
    std::optional<OtherEnd> other_end{};

    uint64_t request_count() const { return requests.size() + requests_omitted; }
};

// Whether the end with local port `port` serves, where the other end's is `other_port`: the end
// whose port is one of `service_ports` (a recording's --port; the other's is ephemeral);
// nullopt when both or neither are.
std::optional<bool> serves_by_port(uint16_t port, uint16_t other_port,
                                   std::span<const uint16_t> service_ports);

// Whether this host's end serves the connection: by its role, else (an end found open) by what
// the recorder learned pairing it with its other end on this host, else by which of its ports
// is one of `service_ports` (a recording's --port); nullopt when nothing tells.
std::optional<bool> serves_here(const Connection& conn,
                                std::span<const uint16_t> service_ports = {});

// The latest monotonic time a connection records (its listed requests, close and end): where a
// trace without a summary ends.
uint64_t last_seen_ns(const Connection& conn);

const char* to_string(Initiator initiator);
const char* to_string(CloseHow how);
const char* to_string(Outcome outcome);
const char* to_string(Verdict verdict);
const char* to_string(CloseCause cause);
const char* to_string(CloseAsked asked);
const char* to_string(StreamFate fate);
const char* to_string(StreamNames names);
// Inverse of to_string; nullopt for an unknown name.
std::optional<Initiator> initiator_from_string(std::string_view name);
std::optional<CloseHow> close_how_from_string(std::string_view name);
std::optional<Outcome> outcome_from_string(std::string_view name);
std::optional<Verdict> verdict_from_string(std::string_view name);
std::optional<Role> role_from_string(std::string_view name);
std::optional<CloseCause> close_cause_from_string(std::string_view name);
std::optional<CloseAsked> close_asked_from_string(std::string_view name);
std::optional<StreamFate> stream_fate_from_string(std::string_view name);
std::optional<StreamNames> stream_names_from_string(std::string_view name);

// Thresholds of the close causes (docs/trace-format.md).
// A close this soon after the last exchange is its end, not an idle timer.
inline constexpr double kRightAfterExchangeMs = 1'000;
// A request after at least this much idle is "after an idle gap": its connection had been left
// to a keep-alive timer.
inline constexpr double kIdleGapMs = 500;

// What is known of a close beyond the connection record: the owning process was exiting (the
// kernel's); the closer closed it together with others, a shutdown (the tracker's, across
// connections); the bytes left unread were only TLS alerts.
struct CloseEvidence {
    bool owner_exiting = false;
    // Its closer (this host's process, or the peer) closed it at once with other idle
    // connections whose idle times were far apart (the tracker's IdleCloses).
    bool closed_together = false;
    bool unread_only_tls_alerts = false;
    // Its connect() never completed (closed from SYN_SENT): a reset to it is a refusal.
    bool never_established = false;
    // A 101 Switching Protocols passed, also where the request it answered is not listed (the
    // upgrade made before the recording, or its record lost).
    bool switched_protocols = false;
};

// The cause of a close that nothing else explains, by how long its connection had been idle
// (`idle_ms`): right after the last exchange, the client was done with it (ClosedAfterUse) or the
// server ended keep-alive without announcing it (KeepaliveEnded); later, an idle timer's.
// `client`: the side that made the requests.
CloseCause cause_by_idle(double idle_ms, Initiator closer, Initiator client);
// Why the connection closed, from its close, requests and `evidence` (nothing for a trace
// recorded before closetrace/2, whose records lack the facts of some causes).
CloseCause classify_close(const Connection& conn, const CloseEvidence& evidence);
// Whether its last request was answered 101 Switching Protocols (a WebSocket): nothing after it
// is HTTP/1, and its close is the new protocol's.
bool switched_protocols(const Connection& conn);
// A connection recorded before `upgraded` (2026-12-07) as it reads now: requests listed after the
// one answered 101 were the new protocol's bytes (a frame a reset answered), its cause
// `upgraded` where classify_close gives it (but a process exit), its verdict judged again.
// Nothing changes for a connection recorded since.
void reread_switch_of_protocols(Connection& conn);
// For ConnectionClose and KeepaliveEnded (by `conn.close.cause`): the side whose message asked.
std::optional<Initiator> asked_by(const Connection& conn);
// The verdict from the close and the requests' outcomes (and the unread-request race, by cause).
Verdict judge(const Connection& conn);
// Whether the close tells the closer's idle timeout: only an idle timer does.
inline bool is_timer_close(const Connection& conn) {
    return conn.close.cause == CloseCause::IdleTimer;
}
// A close of an idle connection no timer made: a shutdown's (closed together with others, or the
// owner exiting). Its race asks for draining, not for a keep-alive fix.
inline bool is_shutdown_close(CloseCause cause) {
    return cause == CloseCause::ClosedTogether || cause == CloseCause::ProcessExit;
}
// ... or a connection refused as it opened: neither tells a keep-alive timeout.
inline bool is_shutdown_or_refusal(CloseCause cause) {
    return is_shutdown_close(cause) || cause == CloseCause::Refused;
}

// A long keep-alive connection carries many thousands of requests; its record keeps the first
// and the last ones and every request that was not completed (the evidence), and counts the rest.
inline constexpr std::size_t kListedFirstRequests = 16;
inline constexpr std::size_t kListedLastRequests = 48;
void bound_request_list(Connection& conn);

// Whether a connection with this verdict caught a request: a race, an in-flight close.
bool catches_a_request(Verdict verdict);
// Whether a request with this outcome is one such a connection caught: late (or left unread
// after an idle gap) for a race, unanswered or unread for an in-flight close. What `report`
// lists and what `alb` matches to the load balancer's errors.
bool is_caught(Verdict verdict, Outcome outcome);

// Every verdict, in the order reports list them.
inline constexpr Verdict kAllVerdicts[] = {
    Verdict::LocalIdleClose,     Verdict::PeerIdleClose,     Verdict::LocalCloseRace,
    Verdict::PeerCloseRace,      Verdict::LocalResetInflight, Verdict::PeerCloseInflight,
    Verdict::LocalReset,         Verdict::PeerReset,         Verdict::Open,
};

inline constexpr CloseCause kAllCloseCauses[] = {
    CloseCause::IdleTimer,     CloseCause::ConnectionClose, CloseCause::KeepaliveEnded,
    CloseCause::ClosedAfterUse, CloseCause::Probe,          CloseCause::UnreadRequest,
    CloseCause::ProcessExit,   CloseCause::InFlight,        CloseCause::Forgotten,
    CloseCause::ClosedTogether, CloseCause::Refused,        CloseCause::Upgraded,
    CloseCause::Unknown,
};

}  // namespace closetrace
