#include "closetrace/tracker.h"

#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <queue>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "closetrace.h"
#include "closetrace/http.h"
#include "closetrace/http2.h"

// How events become a connection record:
// - On arrival, each event of a socket is reduced to a compact fact: a message to its parsed HTTP
//   heads (one inline), a State or reset event to the members its close needs; an incoming
//   message keeps a hash of its first bytes, to recognise one segment seen twice. Memory grows
//   with the messages on a connection, not with its bytes: an idle connection that made one
//   exchange is held in about 560 bytes of heap (bench/RESULTS.md, part 4).
// - Everything else is derived once, at finalisation, from the facts in time order: events reach
//   userspace per CPU in order but interleaved, so no decision is taken on arrival order.

namespace closetrace {
namespace {

// Incoming payload bytes hashed to recognise one segment seen twice: by the ingress hook (a
// Message) and as the trigger of the reset the kernel answered it with (whose bytes are kept).
constexpr std::size_t kSegmentPrefixBytes = 64;

// When data reaches a socket this host already closed, the kernel first resets the socket itself
// (tcp_reset fires tcp_receive_reset) and then sends an RST triggered by that data. A
// ResetReceived followed this closely by such a ResetSent on the same socket is that, not the
// peer's RST (which is never answered with an RST).
constexpr uint64_t kSelfResetWindowNs = 1'000'000;

// The ingress hook stamps a segment before the socket processes it; while close() holds the socket
// lock the segment waits in the backlog. So a request that the kernel then reset as data on a
// closed socket may carry a time slightly before the close: within this much it is the same
// instant, and the reset proves it came after.
constexpr uint64_t kSameInstantNs = 1'000'000;

// A FIN sent or received before the recording started (socket first seen already closing).
constexpr uint64_t kBeforeRecording = 0;

// The lifecycle facts of a socket that closes: its establishment, then FIN_WAIT1 or CLOSE_WAIT,
// FIN_WAIT2 or LAST_ACK, TIME_WAIT or CLOSE, CLOSE, and room for a reset.
constexpr std::size_t kClosingFacts = 6;

// Messages a connection holds before the settled ones are fed to its request builder.
constexpr std::size_t kSettleBatch = 128;

// A message head, as much of it as a request record takes. The method and the target share one
// string, which a short request line fits without a heap allocation.
struct Head {
    std::string method_target;
    uint16_t method_length = 0;
    uint16_t status = 0;  // a response's status code; 0 when the line was cut before it
    http::MessageKind kind = http::MessageKind::Opaque;
    bool has_target = false;     // a request's target was captured (not cut right after the method)
    bool asks_to_close = false;  // Connection: close (or HTTP/1.0 without keep-alive)
    // The known health checker that sent a request: 1 + its index in http::kHealthCheckers; 0
    // for any other.
    uint8_t health_checker = 0;

    std::optional<std::string_view> method() const {
        if (kind != http::MessageKind::Request) return std::nullopt;
        return std::string_view(method_target).substr(0, method_length);
    }
    std::optional<std::string_view> target() const {
        if (!has_target) return std::nullopt;
        return std::string_view(method_target).substr(method_length);
    }
    std::optional<int> status_code() const {
        return status != 0 ? std::optional<int>(status) : std::nullopt;
    }
    std::string_view health_checker_name() const {
        return health_checker != 0 ? http::kHealthCheckers[health_checker - 1] : std::string_view();
    }
};

// The heads a captured payload starts with: nearly always one, kept inline; pipelined requests
// after it apart.
struct Heads {
    Head first;
    std::unique_ptr<std::vector<Head>> pipelined;  // null when there are none

    std::size_t size() const { return 1 + (pipelined ? pipelined->size() : 0); }
    const Head& operator[](std::size_t i) const { return i == 0 ? first : (*pipelined)[i - 1]; }
};

// An incoming segment's first bytes, hashed: enough to recognise the segment when it comes again
// as the trigger of a reset. Only the segment's own bytes count (a message's capture may run on
// into the next segment, which a reset's trigger does not).
// 32 bits of hash suffice: a trigger is compared with the segments of one connection's
// unanswered requests only.
struct SegmentDigest {
    uint32_t hash = 0;
    uint8_t length = 0;  // bytes hashed, at most kSegmentPrefixBytes

    static uint32_t hash_of(std::string_view bytes) {
        return static_cast<uint32_t>(std::hash<std::string_view>{}(bytes));
    }

    static SegmentDigest of(std::string_view payload, uint32_t segment_len) {
        std::size_t length = std::min(payload.size(), kSegmentPrefixBytes);
        if (segment_len != 0) length = std::min<std::size_t>(length, segment_len);
        return {.hash = hash_of(payload.substr(0, length)), .length = static_cast<uint8_t>(length)};
    }

    // Whether a reset's trigger payload starts with the bytes hashed: the same segment (nothing
    // captured tells nothing apart; a trigger shorter than the bytes hashed is another segment).
    bool matches(std::string_view trigger) const {
        if (length == 0 || trigger.empty()) return true;
        return trigger.size() >= length && hash_of(trigger.substr(0, length)) == hash;
    }
};

// What a reset this host sent says beyond its time: why, and the segment that triggered it.
struct ResetTrigger {
    std::optional<std::string> reason;
    uint8_t flags = 0;         // TCP flags of the triggering segment
    uint32_t payload_len = 0;  // its bytes on the wire
    std::string prefix;        // its first bytes, cut to kSegmentPrefixBytes
    Heads heads;               // ... parsed
};

// Where a State record saw its pid and comm (Event::owner_from).
enum class OwnerSource : uint8_t { Unknown, Connect, Close };

// A state change or a reset: what the close and the requests need of it. A socket has only a few.
struct LifecycleFact {
    uint64_t ts_ns = 0;
    uint64_t arrival = 0;
    SockSnapshot snap;
    EventKind kind = EventKind::State;
    // State
    uint8_t old_state = 0;
    uint8_t new_state = 0;
    bool by_owner = false;
    bool owner_exiting = false;
    OwnerSource owner_from = OwnerSource::Unknown;
    // Resets
    bool by_tuple = false;  // a reset with no socket, attributed by its tuple
    // State
    uint32_t pid = 0;
    uint64_t cgroup_id = 0;
    uint64_t established_ns = 0;
    std::array<char, CT_COMM_LEN> comm{};  // the kernel's task name: at most CT_COMM_LEN - 1 bytes
    // Resets
    std::unique_ptr<ResetTrigger> sent;  // a reset this host sent; null for one received
};

// A Message, one per request or response the kernel wrote: only what the requests need.
struct MessageFact {
    uint64_t ts_ns = 0;
    uint64_t arrival = 0;
    uint64_t previous_ns = 0;  // the previous message's start; 0 unknown
    uint32_t requests_before = 0;   // the kernel's counts of each kind before it
    uint32_t responses_before = 0;
    Direction direction = Direction::In;
    bool response = false;  // the kernel's kind
    SegmentDigest segment;  // an incoming message's first segment
    // The idle timeout a response head in it announced ("Keep-Alive: timeout=N"), in seconds;
    // 0 when none did. Here, where the layout has room, rather than in every Head.
    uint32_t keep_alive_timeout_s = 0;
    Heads heads;
};

struct Arrived {
    uint64_t arrival = 0;
    Event event;
};

Head parse_head(const http::Message& message, bool full_target) {
    Head head;
    head.kind = message.kind;
    head.asks_to_close = http::asks_to_close(message);
    if (message.kind == http::MessageKind::Request) {
        const std::string_view checker = http::health_checker(message.user_agent);
        if (!checker.empty()) {
            head.health_checker =
                static_cast<uint8_t>(1 + (std::ranges::find(http::kHealthCheckers, checker) -
                                          std::begin(http::kHealthCheckers)));
        }
        head.method_target = message.method;
        head.method_length = static_cast<uint16_t>(message.method.size());
        // Empty only when the capture ended right after the method.
        if (!message.target.empty()) {
            head.method_target += full_target ? message.target : http::public_target(message.target);
            head.has_target = true;
        }
    } else if (message.kind == http::MessageKind::Response) {
        head.status = static_cast<uint16_t>(message.status);
    }
    return head;
}

// The heads a payload starts with, and the idle timeout the last response among them announced
// (MessageFact::keep_alive_timeout_s).
struct ParsedPayload {
    Heads heads;
    uint32_t keep_alive_timeout_s = 0;
};

ParsedPayload parse_payload(std::string_view payload, bool full_target) {
    const http::ParseResult parsed = http::parse(payload);
    // A segment whose bytes were not captured is still one message.
    ParsedPayload result;
    for (std::size_t i = 0; i < parsed.count; ++i) {
        const http::Message& message = parsed.messages[i];
        if (message.kind == http::MessageKind::Response && message.keep_alive_timeout_s) {
            result.keep_alive_timeout_s = *message.keep_alive_timeout_s;
        }
        if (i == 0) {
            result.heads.first = parse_head(message, full_target);
            continue;
        }
        if (!result.heads.pipelined) result.heads.pipelined = std::make_unique<std::vector<Head>>();
        result.heads.pipelined->push_back(parse_head(message, full_target));
    }
    return result;
}

std::string segment_prefix(std::string_view payload) {
    return std::string(payload.substr(0, kSegmentPrefixBytes));
}

OwnerSource owner_source(const std::optional<std::string>& owner_from) {
    if (owner_from == "connect") return OwnerSource::Connect;
    if (owner_from == "close") return OwnerSource::Close;
    return OwnerSource::Unknown;
}

std::optional<std::string> to_owner_from(OwnerSource source) {
    switch (source) {
        case OwnerSource::Connect: return "connect";
        case OwnerSource::Close: return "close";
        case OwnerSource::Unknown: break;
    }
    return std::nullopt;
}

// Progress of a TCP state through the lifecycle, to order transitions stamped in the same ns.
int lifecycle_rank(uint8_t state) {
    switch (state) {
        case kTcpEstablished: return 1;
        case kTcpFinWait1:
        case kTcpCloseWait: return 2;
        case kTcpFinWait2:
        case kTcpClosing:
        case kTcpLastAck: return 3;
        case kTcpTimeWait: return 4;
        case kTcpClose: return 5;
        default: return 0;  // opening states
    }
}

// Time order; equal times keep arrival order, except that state transitions (of the one socket)
// take their lifecycle order, whichever CPU delivered them first.
void order_by_time(std::vector<LifecycleFact>& facts) {
    const auto order = [](const LifecycleFact& f) { return std::pair(f.ts_ns, f.arrival); };
    if (!std::ranges::is_sorted(facts, {}, order)) std::ranges::sort(facts, {}, order);
    auto run_begin = facts.begin();
    while (run_begin != facts.end()) {
        const uint64_t ts = run_begin->ts_ns;
        const auto run_end = std::find_if(
            run_begin, facts.end(), [ts](const LifecycleFact& f) { return f.ts_ns != ts; });
        if (run_end - run_begin == 1) {  // nearly every fact: nothing to reorder
            run_begin = run_end;
            continue;
        }
        std::vector<LifecycleFact*> slots;
        for (auto it = run_begin; it != run_end; ++it) {
            if (it->kind == EventKind::State) slots.push_back(&*it);
        }
        std::vector<LifecycleFact> transitions;
        for (LifecycleFact* slot : slots) transitions.push_back(std::move(*slot));
        std::ranges::stable_sort(transitions, {}, [](const LifecycleFact& f) {
            return std::pair(lifecycle_rank(f.old_state), lifecycle_rank(f.new_state));
        });
        for (std::size_t i = 0; i < slots.size(); ++i) *slots[i] = std::move(transitions[i]);
        run_begin = run_end;
    }
}

// Messages of one socket come through one ring buffer: nearly always already in order.
void order_by_time(std::vector<MessageFact>& messages) {
    const auto order = [](const MessageFact& m) { return std::pair(m.ts_ns, m.arrival); };
    if (!std::ranges::is_sorted(messages, {}, order)) std::ranges::sort(messages, {}, order);
}

bool has_counters(const SockSnapshot& snap) {
    return snap.bytes_in != 0 || snap.bytes_out != 0 || snap.segs_in != 0 || snap.segs_out != 0;
}

std::optional<double> idle_ms(uint64_t close_ns, const SockSnapshot& snap) {
    const uint64_t last_payload_ns = std::max(snap.last_rx_ns, snap.last_tx_ns);
    if (last_payload_ns == 0) return std::nullopt;
    if (last_payload_ns >= close_ns) return 0.0;
    return static_cast<double>(close_ns - last_payload_ns) / 1e6;
}

bool is_local_fin(const LifecycleFact& state) {
    return state.new_state == kTcpFinWait1 || state.new_state == kTcpLastAck;
}

bool is_peer_fin(const LifecycleFact& state) {
    if (state.new_state == kTcpCloseWait || state.new_state == kTcpClosing ||
        state.new_state == kTcpTimeWait) {
        return true;
    }
    // Linux hands a FIN_WAIT2 socket over to a time-wait socket with no TIME_WAIT transition:
    // the full socket goes FIN_WAIT2 -> CLOSE, on the peer's FIN, or (closed by its owner) on the
    // mere ACK of ours. The peer's FIN shows in the receive sequence: it takes one sequence
    // number that nobody reads.
    return state.old_state == kTcpFinWait2 && state.new_state == kTcpClose &&
           state.snap.unread_in > 0;
}

// The kernel resetting its own socket over data that arrived after this host closed it.
bool is_self_reset(const LifecycleFact& received, std::span<const LifecycleFact> facts) {
    const uint64_t ts = received.ts_ns;
    return std::ranges::any_of(facts, [ts](const LifecycleFact& sent) {
        return sent.sent && !sent.by_tuple && sent.ts_ns >= ts &&
               sent.ts_ns - ts <= kSelfResetWindowNs &&
               (sent.sent->flags & CT_TCP_RST) == 0;  // an RST never answers an RST
    });
}

// First FIN and RST of each side; times equal to kBeforeRecording happened before the recording.
struct CloseFacts {
    std::optional<uint64_t> local_fin;
    std::optional<uint64_t> peer_fin;
    std::optional<uint64_t> local_rst;
    std::optional<uint64_t> peer_rst;
    std::optional<std::string> rst_reason;
    Initiator initiator = Initiator::Unknown;
    std::optional<CloseHow> how;
    std::optional<double> idle_ms;
    SockSnapshot at_close;       // the socket when the first FIN or RST went
    uint64_t unread_bytes = 0;   // left unread when this host's application aborted
    bool owner_exiting = false;  // this host's close was its owning process exiting

    std::optional<uint64_t> local_first() const { return earliest(local_fin, local_rst); }
    std::optional<uint64_t> peer_first() const { return earliest(peer_fin, peer_rst); }
    std::optional<uint64_t> fin_of(Initiator side) const {
        return side == Initiator::Local ? local_fin : peer_fin;
    }
    std::optional<uint64_t> rst_of(Initiator side) const {
        return side == Initiator::Local ? local_rst : peer_rst;
    }

    void mark(std::optional<uint64_t>& first, const LifecycleFact& fact, Initiator side,
              CloseHow kind) {
        if (first) return;
        first = fact.ts_ns;
        if (initiator != Initiator::Unknown) return;
        initiator = side;
        how = kind;
        idle_ms = closetrace::idle_ms(fact.ts_ns, fact.snap);
        at_close = fact.snap;
    }

    // The owning process closing the socket: an abort (straight to CLOSE) drops what it left
    // unread.
    void note_owner_close(const LifecycleFact& state) {
        if (!state.by_owner || owner_exiting || unread_bytes > 0) return;
        owner_exiting = state.owner_exiting;
        if (state.new_state != kTcpClose) return;
        // A FIN received takes a sequence number that is never read.
        const uint32_t fin = peer_fin ? 1 : 0;
        unread_bytes = state.snap.unread_in > fin ? state.snap.unread_in - fin : 0;
    }
};

// A socket first seen already closing tells which FINs went before the recording, and in which
// order (from FIN_WAIT1 a peer FIN leads to CLOSING; from CLOSE_WAIT our FIN leads to LAST_ACK).
void note_close_before_recording(uint8_t first_old_state, CloseFacts& close) {
    switch (first_old_state) {
        case kTcpFinWait1:
        case kTcpFinWait2:
            close.local_fin = kBeforeRecording;
            close.initiator = Initiator::Local;
            break;
        case kTcpClosing:
            close.local_fin = close.peer_fin = kBeforeRecording;
            close.initiator = Initiator::Local;
            break;
        case kTcpCloseWait:
            close.peer_fin = kBeforeRecording;
            close.initiator = Initiator::Peer;
            break;
        case kTcpLastAck:
            close.local_fin = close.peer_fin = kBeforeRecording;
            close.initiator = Initiator::Peer;
            break;
        default: return;
    }
    close.how = CloseHow::Fin;
}

CloseFacts derive_close(std::span<const LifecycleFact> facts) {
    CloseFacts close;
    const auto first_state = std::ranges::find(
        facts, EventKind::State, &LifecycleFact::kind);
    if (first_state != facts.end()) {
        note_close_before_recording(first_state->old_state, close);
    }

    for (const LifecycleFact& fact : facts) {
        switch (fact.kind) {
            case EventKind::State:
                close.note_owner_close(fact);
                // The owner's abort: the kernel resets the connection as it goes to CLOSE.
                if (fact.by_owner && fact.new_state == kTcpClose) {
                    close.mark(close.local_rst, fact, Initiator::Local, CloseHow::Rst);
                }
                if (is_local_fin(fact)) {
                    close.mark(close.local_fin, fact, Initiator::Local, CloseHow::Fin);
                }
                if (is_peer_fin(fact)) {
                    close.mark(close.peer_fin, fact, Initiator::Peer, CloseHow::Fin);
                }
                break;
            case EventKind::ResetSent:
                if (!close.rst_reason) close.rst_reason = fact.sent->reason;
                close.mark(close.local_rst, fact, Initiator::Local, CloseHow::Rst);
                break;
            case EventKind::ResetReceived:
                if (!is_self_reset(fact, facts)) {
                    close.mark(close.peer_rst, fact, Initiator::Peer, CloseHow::Rst);
                }
                break;
            case EventKind::Message:  // kept apart, as MessageFacts
            case EventKind::Http2:  // kept apart, as the HTTP/2 records
            case EventKind::Http2Fragment: break;
        }
    }
    return close;
}

std::optional<uint64_t> earliest_close(const CloseFacts& close) {
    return earliest(close.local_first(), close.peer_first());
}

std::optional<uint64_t> recorded_time(std::optional<uint64_t> ns) {
    return ns == kBeforeRecording ? std::nullopt : ns;
}

// Whether this host is the server of the exchange: by its role, or for a socket first seen
// mid-life by the first message that parses as HTTP (a request going out makes it the client).
// Unknown while no message tells.
std::optional<bool> serves_requests(Role role, std::span<const MessageFact> messages) {
    if (role != Role::Unknown) return role == Role::Server;
    for (const MessageFact& message : messages) {
        for (std::size_t i = 0; i < message.heads.size(); ++i) {
            const Head& head = message.heads[i];
            const bool incoming = message.direction == Direction::In;
            if (head.kind == http::MessageKind::Request) return incoming;
            if (head.kind == http::MessageKind::Response) return !incoming;
        }
    }
    return std::nullopt;
}

// A new request (as value-initialised) made by `head`; in place, as it is made in its builder.
void describe_request(Request& request, const Head& head, uint64_t ts_ns) {
    request.request_ns = ts_ns;
    if (head.asks_to_close) request.close_asked = CloseAsked::Request;
    if (head.kind == http::MessageKind::Request) {
        request.method = head.method();
        request.target = head.target();
    } else {
        request.opaque = true;
    }
}

// Requests in the order they were made, each with its outcome. Fed messages in time order,
// possibly over the connection's life. The kernel writes only the messages that matter and
// numbers them, so the requests and responses between two of them are known by count: made and
// answered, never listed. Requests answered long ago and beyond the first listed are reduced to
// a count as they go too (see compact()), so a keep-alive connection that lives for hours holds
// as much as the record will list.
class RequestBuilder {
public:
    explicit RequestBuilder(bool serves) : serves_(serves) {}

    // As new for another connection, its vectors keeping their capacity.
    RequestBuilder& reset(bool serves) {
        std::vector<Pending> pending = std::move(pending_);
        std::vector<Segment> segments = std::move(segments_);
        *this = RequestBuilder(serves);
        pending.clear();
        segments.clear();
        pending_ = std::move(pending);
        segments_ = std::move(segments);
        return *this;
    }

    void feed(const MessageFact& message) {
        if (upgraded_) return;  // after 101 Switching Protocols nothing is HTTP/1.x any more
        const bool request_direction = (message.direction == Direction::In) == serves_;
        count_unwritten(message, request_direction);
        // A TLS alert or key update (a close_notify as the connection closes) carries no
        // request and answers none: only each side's first since the last exchange is kept, for
        // the close's cause.
        if (message.heads.first.kind == http::MessageKind::TlsControl) {
            std::optional<uint64_t>& first = tls_control_since_exchange_[message.direction ==
                                                                        Direction::Out];
            if (!first) first = message.ts_ns;
            return;
        }
        tls_control_since_exchange_[0].reset();
        tls_control_since_exchange_[1].reset();
        last_exchange_ns_ = std::max(last_exchange_ns_, message.previous_ns);
        if (request_direction) {
            // After an interim response the next request-direction message is the body it asked
            // for, unless it opens with a request line.
            const bool body =
                expecting_body_ && message.heads.first.kind != http::MessageKind::Request;
            expecting_body_ = false;
            if (!body) {
                const uint64_t previous_ns =
                    message.previous_ns != 0 ? message.previous_ns : last_exchange_ns_;
                add_requests(message.heads, message.segment, message.ts_ns, previous_ns, false);
            }
            return;
        }
        if (message.keep_alive_timeout_s != 0) keep_alive_timeout_s_ = message.keep_alive_timeout_s;
        for (std::size_t i = 0; i < message.heads.size(); ++i) {
            const Head& head = message.heads[i];
            if (head.status != 0 && http::is_interim_status(head.status)) {
                expecting_body_ = true;
                continue;
            }
            expecting_body_ = false;
            last_exchange_ns_ = std::max(last_exchange_ns_, message.ts_ns);
            if (answered_ < total_) {
                if (Pending* pending = listed(answered_)) {
                    Request& request = pending->request;
                    request.status = head.status_code();
                    request.response_ns = message.ts_ns;
                    if (head.asks_to_close && request.close_asked == CloseAsked::None) {
                        request.close_asked = CloseAsked::Response;
                    }
                }
                ++answered_;
            }
            if (head.status == 101) {
                switch_protocols();
                return;
            }
        }
    }

    bool serves() const { return serves_; }
    // A 101 Switching Protocols passed, whether or not the request it answered is listed.
    bool switched_protocols() const { return upgraded_; }
    // When `side` first sent TLS records that carry no HTTP message (its close_notify) since
    // the last request or response.
    std::optional<uint64_t> tls_control_since_exchange(Initiator side) const {
        return tls_control_since_exchange_[side == Initiator::Local];
    }
    // The known health checker that sent requests here; empty when none did.
    std::string_view health_checker() const { return health_checker_; }
    // The idle timeout the server's latest response that announced one announced, in seconds.
    std::optional<uint32_t> keep_alive_timeout_s() const {
        return keep_alive_timeout_s_ != 0 ? std::optional(keep_alive_timeout_s_) : std::nullopt;
    }

    // Drops answered requests that the record would not list (bound_request_list keeps the first
    // kListedFirstRequests, the last kListedLastRequests and every one not completed), and the
    // segments of answered requests, which no reset can concern any more.
    void compact() {
        if (pending_.size() > kListedFirstRequests + kListedLastRequests) {
            const auto first_dropped = pending_.begin() + kListedFirstRequests;
            const auto kept_last = pending_.end() - kListedLastRequests;
            const auto first_kept = std::find_if(first_dropped, kept_last, [this](const Pending& p) {
                return p.number >= answered_;
            });
            pending_.erase(first_dropped, first_kept);
        }
        std::erase_if(segments_, [this](const Segment& s) { return s.first < answered_; });
    }

    // The requests with their outcomes, once the close is known; `omitted` counts those dropped.
    std::vector<Request> finish(const CloseFacts& close, std::optional<uint64_t> closed_ns,
                                std::optional<uint64_t> established_ns,
                                std::span<const LifecycleFact> lifecycle, uint64_t& omitted) {
        // After a switch of protocols a reset's trigger, or bytes left unread, are the new
        // protocol's (a WebSocket frame), no request.
        if (serves_ && !upgraded_) {
            bool reset_before = false;
            for (const LifecycleFact& fact : lifecycle) {
                if (!fact.sent) continue;
                on_reset(fact, close, closed_ns, reset_before);
                reset_before = true;
            }
            if (close.unread_bytes > 0) mark_unread(*close.local_first());
        }
        // The first request's idle gap runs from the connection's start.
        if (!pending_.empty() && !pending_.front().request.idle_before_ms && established_ns &&
            pending_.front().request.request_ns >= *established_ns) {
            pending_.front().request.idle_before_ms =
                ms_between(*established_ns, pending_.front().request.request_ns);
        }
        const bool closing = close.how.has_value() || closed_ns.has_value();
        const bool requester_is_peer = serves_;
        const std::optional<uint64_t> requester_close =
            requester_is_peer ? close.peer_first() : close.local_first();
        const std::optional<uint64_t> requester_rst =
            requester_is_peer ? close.peer_rst : close.local_rst;
        std::vector<Request> requests;
        requests.reserve(pending_.size());
        for (Pending& pending : pending_) {
            if (requester_close && requester_rst) {
                forget_refused_response(*requester_close, *requester_rst, pending.request);
            }
            pending.request.outcome = outcome(pending, close, closing);
            requests.push_back(std::move(pending.request));
        }
        // Nearly always in order already; stable_sort would take a buffer all the same.
        if (!std::ranges::is_sorted(requests, {}, &Request::request_ns)) {
            std::ranges::stable_sort(requests, {}, &Request::request_ns);
        }
        omitted = total_ - pending_.size();
        return requests;
    }

private:
    struct Pending {
        std::size_t number = 0;  // among every request made, unlisted ones included
        Request request;
        bool proven_late = false;  // the kernel reset it as data on a closed socket
        bool unread = false;       // its bytes were left unread when this host aborted
    };

    // A response that starts after the side that made the request closed, and that this side
    // answers with an RST, answers no one: its socket was gone (a balancer that gave up: its 460
    // or 504), and the request was in flight when it closed. (A client that only shut down its
    // sending side reads the response: no RST, and the response answers.)
    static void forget_refused_response(uint64_t requester_close, uint64_t requester_rst,
                                        Request& request) {
        if (!request.response_ns || *request.response_ns <= requester_close ||
            requester_rst < *request.response_ns) {
            return;
        }
        request.response_ns.reset();
        request.status.reset();
        if (request.close_asked == CloseAsked::Response) request.close_asked = CloseAsked::None;
    }

    // After 101 Switching Protocols nothing is HTTP/1.x: requests counted or listed after the
    // one it answered (pipelined behind it) were the new protocol's bytes.
    void switch_protocols() {
        upgraded_ = true;
        std::erase_if(pending_, [this](const Pending& p) { return p.number >= answered_; });
        segments_.clear();
        total_ = answered_;
    }

    static double ms_between(uint64_t from_ns, uint64_t to_ns) {
        return static_cast<double>(to_ns - from_ns) / 1e6;
    }

    // The application closed with bytes unread: those of the requests that came in last, in the
    // last segment it had not answered anything of before the close.
    void mark_unread(uint64_t local_close) {
        const Segment* last = nullptr;
        for (const Segment& segment : segments_) {
            const bool before_close = segment.ts_ns <= local_close + kSameInstantNs;
            if (!segment.from_reset && before_close && segment.first >= answered_ &&
                (!last || segment.ts_ns >= last->ts_ns)) {
                last = &segment;
            }
        }
        if (!last) return;
        for (std::size_t i = 0; i < last->count; ++i) {
            if (Pending* pending = listed(last->first + i)) pending->unread = true;
        }
    }
    // Incoming segments that carried requests, to recognise them in a reset's trigger.
    struct Segment {
        SegmentDigest digest;
        uint64_t ts_ns = 0;
        std::size_t first = 0;  // index of its first request among all made
        std::size_t count = 0;
        bool from_reset = false;
    };

    // Request `number` (counting every request made), if it is still listed.
    Pending* listed(std::size_t number) {
        const auto it = std::ranges::lower_bound(pending_, number, {}, &Pending::number);
        return it != pending_.end() && it->number == number ? &*it : nullptr;
    }

    // Each written message carries the kernel's counts of requests and responses before it:
    // beyond those seen, they are messages it did not write, requests made and the oldest
    // requests answered (requests first, so that the responses can answer them). Taken by this
    // builder's sides: on a socket first seen mid-life the kernel may have named them the other
    // way round.
    void count_unwritten(const MessageFact& message, bool request_direction) {
        const bool kinds_agree = message.response != request_direction;
        const std::size_t requests =
            kinds_agree ? message.requests_before : message.responses_before;
        const std::size_t responses =
            kinds_agree ? message.responses_before : message.requests_before;
        if (requests > requests_counted_) {
            total_ += requests - requests_counted_;
            requests_counted_ = requests;
        }
        if (responses > responses_counted_) {
            answered_ = std::min(total_, answered_ + (responses - responses_counted_));
            responses_counted_ = responses;
        }
        ++(request_direction ? requests_counted_ : responses_counted_);  // the message itself
    }

    // A data segment reset after this host closed (or after its socket was gone) is a request
    // that arrived too late: unless the ingress hook already recorded it (at the close, or in the
    // same instant before it) or an earlier reset did (a retransmission).
    void on_reset(const LifecycleFact& fact, const CloseFacts& close,
                  std::optional<uint64_t> closed_ns, bool reset_before) {
        const ResetTrigger& reset = *fact.sent;
        const bool closed_before = reset_before ||
                                   (close.local_fin && *close.local_fin <= fact.ts_ns) ||
                                   (closed_ns && *closed_ns <= fact.ts_ns);
        if (reset.payload_len == 0 || !closed_before) return;
        if (reset.heads.first.kind == http::MessageKind::TlsControl) return;  // no request
        const uint64_t local_close = *close.local_first();  // this reset is one, if none before
        for (const Segment& segment : segments_) {
            if (!segment.digest.matches(reset.prefix)) continue;
            if (segment.from_reset) return;
            const bool unanswered = segment.first >= answered_;
            if (unanswered && segment.ts_ns + kSameInstantNs >= local_close) {
                for (std::size_t i = 0; i < segment.count; ++i) {
                    if (Pending* pending = listed(segment.first + i)) pending->proven_late = true;
                }
                return;
            }
        }
        add_requests(reset.heads, SegmentDigest::of(reset.prefix, reset.payload_len), fact.ts_ns,
                     last_exchange_ns_, true);
    }

    // `previous_ns`: when the message before them started; 0 unknown.
    void add_requests(const Heads& heads, SegmentDigest digest, uint64_t ts_ns,
                      uint64_t previous_ns, bool from_reset) {
        segments_.push_back({.digest = digest,
                             .ts_ns = ts_ns,
                             .first = total_,
                             .count = heads.size(),
                             .from_reset = from_reset});
        for (std::size_t i = 0; i < heads.size(); ++i) {
            const Head& head = heads[i];
            Pending& pending = pending_.emplace_back();
            pending.number = total_++;
            describe_request(pending.request, head, ts_ns);
            if (previous_ns != 0 && ts_ns >= previous_ns) {
                pending.request.idle_before_ms = ms_between(previous_ns, ts_ns);
            }
            if (health_checker_.empty()) health_checker_ = head.health_checker_name();
        }
        last_exchange_ns_ = std::max(last_exchange_ns_, ts_ns);
    }

    Outcome outcome(const Pending& pending, const CloseFacts& close, bool closing) const {
        const Request& request = pending.request;
        if (request.response_ns) return Outcome::Completed;
        if (serves_) {
            const std::optional<uint64_t> local_close = close.local_first();
            if (pending.proven_late || (local_close && request.request_ns >= *local_close)) {
                return Outcome::AfterLocalClose;
            }
            if (pending.unread) return Outcome::UnreadAtClose;
        } else {
            const std::optional<uint64_t> peer_close = close.peer_first();
            if (peer_close && request.request_ns >= *peer_close) return Outcome::AfterPeerClose;
        }
        return closing ? Outcome::UnansweredAtClose : Outcome::InFlight;
    }

    bool serves_;
    std::vector<Pending> pending_;  // every request made but the omitted ones
    std::vector<Segment> segments_;
    std::size_t total_ = 0;        // requests made
    std::size_t answered_ = 0;     // requests are answered in order (FIFO)
    std::size_t requests_counted_ = 0;   // the kernel's request messages, written or not
    std::size_t responses_counted_ = 0;  // ... and its response messages
    bool expecting_body_ = false;
    bool upgraded_ = false;
    uint64_t last_exchange_ns_ = 0;  // the latest request or response start; 0 before any
    std::optional<uint64_t> tls_control_since_exchange_[2];  // [0] the peer's, [1] this host's
    std::string_view health_checker_;  // one of http::health_checker's names
    uint32_t keep_alive_timeout_s_ = 0;  // MessageFact::keep_alive_timeout_s
};

// A tracked connection: a hundred thousand of them may be held at once, so its members are laid
// out to leave no padding.
struct Tracked {
    // The same on every event of the socket, so taken as they first come.
    Tuple tuple;  // hashed, the key in the tuple index
    uint64_t first_arrival = 0;
    uint64_t newest_ns = 0;
    // When the socket went to CLOSE, set through close_at(): apart rather than a std::optional,
    // whose padding would take 8 bytes more.
    uint64_t closed_at_ns = 0;
    std::vector<LifecycleFact> lifecycle;
    std::vector<MessageFact> messages;  // not yet fed to the builder
    // An HTTP/2 connection's frames that mattered and its counts; null for every other.
    std::unique_ptr<Http2Facts> http2;
    std::unique_ptr<RequestBuilder> builder;  // once the side that serves is known
    // The cookie of the connection's other socket when it is tracked too (0: none found yet),
    // and which of the two serves (Unknown: nothing tells); see ConnTracker::State::meet().
    uint64_t other_end = 0;
    uint32_t netns = 0;
    uint32_t settle_at = kSettleBatch;  // messages held when settle() next runs
    Initiator other_end_server = Initiator::Unknown;
    Role role = Role::Unknown;
    // Until a State, Message or ResetReceived shows the socket alive, its events are only resets
    // (held apart, in State::unconfirmed).
    bool seen_alive = false;
    bool closed = false;

    // When the socket went to CLOSE (the earliest such change); nullopt while it is open.
    std::optional<uint64_t> closed_ns() const {
        return closed ? std::optional<uint64_t>(closed_at_ns) : std::nullopt;
    }
    void close_at(uint64_t ts_ns) {
        closed_at_ns = closed ? std::min(closed_at_ns, ts_ns) : ts_ns;
        closed = true;
    }
};

// Idle at the first FIN or RST, from the end of the last completed exchange: a request that came
// before the close and was never answered does not count as activity, so the idle is the
// response direction's (the timer that closed saw no response go out since).
std::optional<double> idle_since_last_exchange(const CloseFacts& close,
                                               const std::vector<Request>& requests, bool serves) {
    const std::optional<uint64_t> first = earliest_close(close);
    if (!first) return close.idle_ms;
    const bool pending_at_close = std::ranges::any_of(requests, [&](const Request& r) {
        return r.outcome != Outcome::Completed && r.request_ns <= *first;
    });
    const uint64_t response_clock = serves ? close.at_close.last_tx_ns : close.at_close.last_rx_ns;
    if (!pending_at_close || response_clock == 0) return close.idle_ms;
    return idle_ms(*first, SockSnapshot{.last_rx_ns = response_clock, .last_tx_ns = 0});
}

// A closer sends its close_notify right before its FIN: a short TLS record longer before the first
// FIN or RST is something else (a TLS 1.3 record of a few bytes of data, a key update).
constexpr uint64_t kAlertBeforeCloseNs = 1'000'000'000;

// A TLS connection's close begins with its closer's close_notify: the side whose alert came
// after the last exchange, shortly before any FIN or RST, closed it first, whichever FIN or RST
// went first (the other side may answer the alert before the closer's own FIN leaves). Its idle
// time is the one at its alert.
void begin_close_with_tls_alert(CloseFacts& close, const RequestBuilder& builder) {
    const std::optional<uint64_t> first = earliest_close(close);
    const std::optional<uint64_t> local = builder.tls_control_since_exchange(Initiator::Local);
    const std::optional<uint64_t> peer = builder.tls_control_since_exchange(Initiator::Peer);
    const std::optional<uint64_t> alert = earliest(local, peer);
    if (!first || !alert || *alert >= *first || *first - *alert > kAlertBeforeCloseNs) return;
    const Initiator side = alert == local ? Initiator::Local : Initiator::Peer;
    if (side == close.initiator) return;
    close.initiator = side;
    const std::optional<uint64_t> rst = close.rst_of(side);
    const std::optional<uint64_t> fin = close.fin_of(side);
    close.how = rst && (!fin || *rst < *fin) ? CloseHow::Rst : CloseHow::Fin;
    if (close.idle_ms) {
        close.idle_ms = std::max(0.0, *close.idle_ms - static_cast<double>(*first - *alert) / 1e6);
    }
}

// Whether the bytes this host left unread were the peer's TLS alerts, no request (every one was
// answered).
bool unread_only_tls_alerts(const Connection& conn, const CloseFacts& close,
                            const RequestBuilder& builder) {
    return close.unread_bytes > 0 && builder.tls_control_since_exchange(Initiator::Peer) &&
           std::ranges::all_of(conn.requests,
                               [](const Request& r) { return r.outcome == Outcome::Completed; });
}

void fill_identity(Connection& conn, const Tracked& tracked) {
    const Tuple& tuple = tracked.tuple;
    conn.netns = tracked.netns;
    conn.family = tuple.family == AF_INET6 ? "ipv6" : "ipv4";
    conn.local = {format_address(tuple.family, tuple.laddr), tuple.lport};
    conn.remote = {format_address(tuple.family, tuple.raddr), tuple.rport};
    conn.role = tracked.role;
    conn.closed_ns = tracked.closed_ns();
    const SockSnapshot* latest = nullptr;
    for (const LifecycleFact& fact : tracked.lifecycle) {
        if (fact.kind == EventKind::State) {
            if (!conn.comm && fact.comm.front() != '\0') {
                conn.pid = fact.pid;
                conn.comm = std::string(fact.comm.data(), strnlen(fact.comm.data(), CT_COMM_LEN));
                conn.owner_from = to_owner_from(fact.owner_from);
            }
            if (conn.cgroup_id == 0) conn.cgroup_id = fact.cgroup_id;
            if (!conn.established_ns && fact.established_ns != 0) {
                conn.established_ns = fact.established_ns;
            }
        }
        if (has_counters(fact.snap)) latest = &fact.snap;
    }
    if (tracked.other_end != 0) {
        conn.other_end = OtherEnd{.cookie = tracked.other_end, .server = std::nullopt};
        if (tracked.other_end_server != Initiator::Unknown) {
            conn.other_end->server = tracked.other_end_server;
        }
    }
    if (latest) {
        conn.bytes_in = latest->bytes_in;
        conn.bytes_out = latest->bytes_out;
        conn.segs_in = latest->segs_in;
        conn.segs_out = latest->segs_out;
    }
}

// Connections closed after some idle (a FIN from ESTABLISHED), by this host's processes and by
// its peers. A timer closes each connection its timeout after that connection's last exchange,
// so closes at the same instant share their idle time; several closed by one closer (a process
// here, or the peer's address) of one service (role and port) in the same instant after idle
// times far apart are a shutdown's, a restart's or a reload's (CloseCause::ClosedTogether: Node's
// server.close() closes every idle keep-alive connection at once, and so does nginx reloading).
class IdleCloses {
public:
    // Closes within this of each other are at once (one pass of a process over its connections).
    static constexpr uint64_t kWindowNs = 10'000'000;
    // Idle times at least this far apart (the longer over the shorter) are no one timer's, also
    // not one that sweeps its connections every so often.
    static constexpr double kApart = 1.5;

    void note(uint64_t cookie, const Event& event) {
        if (event.kind != EventKind::State || event.old_state != kTcpEstablished) return;
        const bool local = event.new_state == kTcpFinWait1 && event.by_owner;
        const bool peer = event.new_state == kTcpCloseWait;
        if ((!local && !peer) || event.owner_exiting) return;
        const std::optional<double> idle = idle_ms(event.ts_ns, event.snap);
        if (!idle || *idle < kIdleGapMs) return;
        const Tuple& tuple = event.tuple;
        Closer closer{.side = local ? Initiator::Local : Initiator::Peer,
                      .role = event.role,
                      .port = event.role == Role::Client ? tuple.rport : tuple.lport,
                      .netns = event.netns};
        if (local) {
            closer.pid = event.pid;
        } else {
            closer.peer = tuple.raddr;
        }
        by_time_.emplace(event.ts_ns, Close{.cookie = cookie, .closer = closer, .idle_ms = *idle});
    }

    // Decides for each close noted at least kWindowNs + `settle_ns` (events' reordering) before
    // `now_ns`, when every close at once with it has come, whether it was one of several; and
    // forgets the closes no decision still to come needs.
    void settle(uint64_t now_ns, uint64_t settle_ns) {
        for (auto it = by_time_.begin();
             it != by_time_.end() && it->first + kWindowNs + settle_ns <= now_ns; ++it) {
            if (it->second.decided) continue;
            it->second.decided = true;
            if (one_of_several(it)) together_[it->second.cookie] = it->second.closer.side;
        }
        const uint64_t needed = 2 * kWindowNs + settle_ns;
        by_time_.erase(by_time_.begin(),
                       by_time_.lower_bound(now_ns > needed ? now_ns - needed : 0));
    }

    // The side whose close of `cookie` settle() found one of several at once (Unknown: none);
    // forgets it.
    Initiator take_closed_together(uint64_t cookie) {
        const auto found = together_.find(cookie);
        if (found == together_.end()) return Initiator::Unknown;
        const Initiator side = found->second;
        together_.erase(found);
        return side;
    }

private:
    struct Closer {
        Initiator side = Initiator::Unknown;
        uint32_t pid = 0;                  // this host's process, for its own closes
        std::array<uint8_t, 16> peer{};    // the peer's address, for the peer's
        Role role = Role::Unknown;
        uint16_t port = 0;                 // the service's: local for a server, remote else
        uint32_t netns = 0;
        bool operator==(const Closer&) const = default;
    };
    struct Close {
        uint64_t cookie = 0;
        Closer closer{};
        double idle_ms = 0;
        bool decided = false;
    };
    using ByTime = std::multimap<uint64_t, Close>;

    bool one_of_several(ByTime::const_iterator close) const {
        const uint64_t ts_ns = close->first;
        double shortest = close->second.idle_ms;
        double longest = shortest;
        const auto last = by_time_.upper_bound(ts_ns + kWindowNs);
        for (auto it = by_time_.lower_bound(ts_ns > kWindowNs ? ts_ns - kWindowNs : 0); it != last;
             ++it) {
            if (it->second.closer != close->second.closer) continue;
            shortest = std::min(shortest, it->second.idle_ms);
            longest = std::max(longest, it->second.idle_ms);
        }
        return longest >= kApart * shortest;
    }

    ByTime by_time_;
    std::unordered_map<uint64_t, Initiator> together_;  // decided: the cookie's closer side
};

// Whether the closer's FIN, which began the close, was one of several at once (IdleCloses).
bool closed_together(const CloseFacts& close, uint64_t cookie, IdleCloses& idle_closes) {
    const Initiator side = idle_closes.take_closed_together(cookie);
    return side != Initiator::Unknown && side == close.initiator;
}

// Its connect() never completed: the socket closed from SYN_SENT and was never established (a
// socket may connect() again after a refusal).
bool never_established(const std::vector<LifecycleFact>& lifecycle) {
    bool closed_connecting = false;
    for (const LifecycleFact& fact : lifecycle) {
        if (fact.kind != EventKind::State) continue;
        if (fact.new_state == kTcpEstablished) return false;
        closed_connecting |= fact.old_state == kTcpSynSent && fact.new_state == kTcpClose;
    }
    return closed_connecting;
}

// `spare`: the builder of a connection that has none yet, reused from one to the next (no
// allocation for its vectors per connection). `idle_closes`: the recent closes after idle, to tell
// a shutdown's from a timer's.
Connection build_connection(uint64_t cookie, Tracked tracked, RequestBuilder& spare,
                            IdleCloses& idle_closes) {
    order_by_time(tracked.lifecycle);
    order_by_time(tracked.messages);
    Connection conn;
    conn.cookie = cookie;
    fill_identity(conn, tracked);

    CloseFacts close = derive_close(tracked.lifecycle);
    // A connection with few messages has none settled yet, nor a builder of its own.
    RequestBuilder& builder =
        tracked.builder
            ? *tracked.builder
            : spare.reset(serves_requests(conn.role, tracked.messages).value_or(true));
    for (MessageFact& message : tracked.messages) builder.feed(message);
    begin_close_with_tls_alert(close, builder);
    conn.close = {.initiator = close.initiator,
                  .how = close.how,
                  .local_fin_ns = recorded_time(close.local_fin),
                  .peer_fin_ns = recorded_time(close.peer_fin),
                  .local_rst_ns = recorded_time(close.local_rst),
                  .peer_rst_ns = recorded_time(close.peer_rst),
                  .rst_reason = close.rst_reason,
                  .idle_ms = close.idle_ms};
    conn.requests = builder.finish(close, conn.closed_ns, conn.established_ns, tracked.lifecycle,
                                   conn.requests_omitted);
    if (!builder.health_checker().empty()) {
        conn.health_check = std::string(builder.health_checker());
    }
    conn.keep_alive_timeout_s = builder.keep_alive_timeout_s();
    conn.close.unread_bytes = close.unread_bytes;
    conn.close.idle_ms = idle_since_last_exchange(close, conn.requests, builder.serves());
    const CloseEvidence evidence{
        .owner_exiting = close.owner_exiting,
        .closed_together = closed_together(close, cookie, idle_closes),
        .unread_only_tls_alerts = unread_only_tls_alerts(conn, close, builder),
        .never_established = never_established(tracked.lifecycle),
        .switched_protocols = builder.switched_protocols()};
    conn.close.cause = classify_close(conn, evidence);
    conn.close.asked_by = asked_by(conn);
    conn.verdict = judge(conn);
    bound_request_list(conn);
    if (tracked.http2 && tracked.http2->any) {
        // The first reset this host sent once the socket was gone, with its trigger's bytes.
        std::vector<Event> late_segments;
        for (const LifecycleFact& fact : tracked.lifecycle) {
            if (fact.kind == EventKind::ResetSent && fact.sent && !fact.sent->prefix.empty() &&
                conn.closed_ns && fact.ts_ns >= *conn.closed_ns &&
                (late_segments.empty() || fact.ts_ns < late_segments.front().ts_ns)) {
                Event late;
                late.kind = EventKind::ResetSent;
                late.ts_ns = fact.ts_ns;
                late.payload = fact.sent->prefix;
                late_segments.assign(1, std::move(late));
            }
        }
        judge_http2(conn, *tracked.http2, late_segments);
    }
    return conn;
}

// The compact fact of a State or reset event.
LifecycleFact lifecycle_fact(const Event& event, uint64_t arrival, bool by_tuple,
                             bool full_target) {
    LifecycleFact fact;
    fact.ts_ns = event.ts_ns;
    fact.arrival = arrival;
    fact.snap = event.snap;
    fact.kind = event.kind;
    fact.by_tuple = by_tuple;
    if (event.kind == EventKind::State) {
        fact.old_state = event.old_state;
        fact.new_state = event.new_state;
        fact.by_owner = event.by_owner;
        fact.owner_exiting = event.owner_exiting;
        fact.owner_from = owner_source(event.owner_from);
        fact.pid = event.pid;
        fact.cgroup_id = event.cgroup_id;
        fact.established_ns = event.established_ns;
        event.comm.copy(fact.comm.data(), CT_COMM_LEN - 1);
    } else if (event.kind == EventKind::ResetSent) {
        fact.sent = std::make_unique<ResetTrigger>(ResetTrigger{
            .reason = event.rst_reason,
            .flags = event.trigger_flags,
            .payload_len = event.payload_len,
            .prefix = segment_prefix(event.payload),
            .heads = event.payload_len > 0 ? parse_payload(event.payload, full_target).heads
                                           : Heads{}});
    }
    return fact;
}

// Established before the recording: 0.
uint64_t established_ns(const Tracked& tracked) {
    uint64_t earliest_ns = 0;
    for (const LifecycleFact& fact : tracked.lifecycle) {
        if (fact.established_ns != 0 && (earliest_ns == 0 || fact.established_ns < earliest_ns)) {
            earliest_ns = fact.established_ns;
        }
    }
    return earliest_ns;
}

// Both sockets existed at once: the same ports reused after one is gone are another connection.
bool alive_together(const Tracked& a, const Tracked& b) {
    constexpr uint64_t kStillOpen = std::numeric_limits<uint64_t>::max();
    return established_ns(a) <= b.closed_ns().value_or(kStillOpen) &&
           established_ns(b) <= a.closed_ns().value_or(kStillOpen);
}

bool is_v4_mapped(const std::array<uint8_t, 16>& addr) {
    constexpr std::array<uint8_t, 12> kPrefix{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return std::equal(kPrefix.begin(), kPrefix.end(), addr.begin());
}

// A loopback address never leaves its network namespace.
bool is_loopback(const Tuple& tuple) {
    const std::array<uint8_t, 16>& addr = tuple.laddr;
    if (tuple.family != AF_INET6) return addr[0] == 127;
    constexpr std::array<uint8_t, 16> kLoopback6{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    return addr == kLoopback6 || (is_v4_mapped(addr) && addr[12] == 127);
}

// The tuples the other socket of the connection may have: this one's with the addresses and
// ports swapped, and, for IPv4, as a dual-stack socket shows it (::ffff:a.b.c.d) or the reverse.
// No allocation: one look-up per connection finalised.
struct MirroredTuples {
    std::array<Tuple, 2> tuples{};
    std::size_t count = 0;

    explicit MirroredTuples(const Tuple& tuple) {
        Tuple& mirror = tuples[count++];
        mirror = {.family = tuple.family,
                  .laddr = tuple.raddr,
                  .raddr = tuple.laddr,
                  .lport = tuple.rport,
                  .rport = tuple.lport};
        if (tuple.family != AF_INET6) {
            Tuple& mapped = tuples[count++] = mirror;
            mapped.family = AF_INET6;
            for (auto* addr : {&mapped.laddr, &mapped.raddr}) {
                *addr = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, (*addr)[0], (*addr)[1],
                         (*addr)[2], (*addr)[3]};
            }
        } else if (is_v4_mapped(tuple.laddr) && is_v4_mapped(tuple.raddr)) {
            Tuple& plain = tuples[count++] = mirror;
            plain.family = AF_INET;
            for (auto* addr : {&plain.laddr, &plain.raddr}) {
                *addr = {(*addr)[12], (*addr)[13], (*addr)[14], (*addr)[15]};
            }
        }
    }

    std::span<const Tuple> all() const { return std::span(tuples).first(count); }
};

// Whether the socket serves requests: by its role, else by the first message it saw in time
// order, as its record's requests will be read (see serves_requests()); nullopt when neither
// tells.
std::optional<bool> serves(Tracked& tracked) {
    if (tracked.builder) return tracked.builder->serves();
    if (tracked.role == Role::Unknown) order_by_time(tracked.messages);
    return serves_requests(tracked.role, tracked.messages);
}

// Which of two ends of one connection serves, from `end`'s side: the one that serves by its
// role or the requests it saw, else the one whose local port the recording filters on (a
// service's port; the other end's is ephemeral); Unknown when nothing tells.
Initiator server_of(Tracked& end, Tracked& other, std::span<const uint16_t> ports) {
    const std::optional<bool> end_serves = serves(end);
    const std::optional<bool> other_serves = serves(other);
    if (end_serves && other_serves != end_serves) {
        return *end_serves ? Initiator::Local : Initiator::Peer;
    }
    if (other_serves && !end_serves) return *other_serves ? Initiator::Peer : Initiator::Local;
    const std::optional<bool> end_by_port =
        serves_by_port(end.tuple.lport, other.tuple.lport, ports);
    if (end_by_port) return *end_by_port ? Initiator::Local : Initiator::Peer;
    return Initiator::Unknown;
}

Initiator seen_from_other_end(Initiator server) {
    switch (server) {
        case Initiator::Local: return Initiator::Peer;
        case Initiator::Peer: return Initiator::Local;
        case Initiator::Unknown: break;
    }
    return Initiator::Unknown;
}

uint64_t tuple_hash(const Tuple& tuple) {
    std::array<char, sizeof(tuple.laddr) + sizeof(tuple.raddr) + 2 * sizeof(uint16_t) + 1> bytes{};
    char* out = bytes.data();
    out = std::copy(tuple.laddr.begin(), tuple.laddr.end(), out);
    out = std::copy(tuple.raddr.begin(), tuple.raddr.end(), out);
    std::memcpy(out, &tuple.lport, sizeof(tuple.lport));
    std::memcpy(out + sizeof(tuple.lport), &tuple.rport, sizeof(tuple.rport));
    bytes.back() = static_cast<char>(tuple.family);
    return std::hash<std::string_view>{}(std::string_view(bytes.data(), bytes.size()));
}

// Cookies by the hash of their socket's tuple, in one array probed linearly (several cookies may
// share a hash: a reused tuple, a collision). Each socket's entry is touched twice in its life,
// and a node per entry (std::unordered_multimap) cost a few cache misses at each touch: under
// churn, a sixth of the recorder. A live socket's cookie is never 0, which marks a free slot.
class TupleIndex {
public:
    void insert(uint64_t hash, uint64_t cookie) {
        if (4 * (used_ + 1) > 3 * slots_.size()) grow();
        std::size_t at = home(hash);
        while (slots_[at].cookie != 0) at = next(at);
        slots_[at] = {.hash = hash, .cookie = cookie};
        ++used_;
    }

    void erase(uint64_t hash, uint64_t cookie) {
        if (slots_.empty()) return;
        std::size_t hole = home(hash);
        while (slots_[hole].cookie != cookie || slots_[hole].hash != hash) {
            if (slots_[hole].cookie == 0) return;
            hole = next(hole);
        }
        // Each later entry of the run moves into the hole when its probe passed there, so that
        // no probe meets a free slot before its entry.
        for (std::size_t at = next(hole); slots_[at].cookie != 0; at = next(at)) {
            if (distance(home(slots_[at].hash), at) >= distance(hole, at)) {
                slots_[hole] = slots_[at];
                hole = at;
            }
        }
        slots_[hole] = {};
        --used_;
    }

    template <typename Visit>
    void for_each(uint64_t hash, Visit&& visit) const {
        if (slots_.empty()) return;
        for (std::size_t at = home(hash); slots_[at].cookie != 0; at = next(at)) {
            if (slots_[at].hash == hash) visit(slots_[at].cookie);
        }
    }

private:
    struct Slot {
        uint64_t hash = 0;
        uint64_t cookie = 0;  // 0: free
    };

    std::size_t home(uint64_t hash) const { return hash & (slots_.size() - 1); }
    std::size_t next(std::size_t at) const { return (at + 1) & (slots_.size() - 1); }
    std::size_t distance(std::size_t from, std::size_t to) const {
        return (to - from) & (slots_.size() - 1);
    }

    void grow() {
        std::vector<Slot> old = std::exchange(slots_, std::vector<Slot>(std::max<std::size_t>(
                                                           16, 2 * slots_.size())));
        used_ = 0;
        for (const Slot& slot : old) {
            if (slot.cookie != 0) insert(slot.hash, slot.cookie);
        }
    }

    std::vector<Slot> slots_;  // a power of two of them, at most three quarters used
    std::size_t used_ = 0;
};

}  // namespace

struct ConnTracker::State {
    uint64_t next_arrival = 0;
    std::unordered_map<uint64_t, Tracked> by_cookie;
    // Indexes for take_finished(), which must not walk every connection held (a busy host holds
    // hundreds of thousands): closed connections by (closed_ns, cookie), and the cookies not
    // seen alive yet, with their resets as they came: from a time-wait socket of a connection
    // closed before the recording or already finalised (unattributed once the linger passes),
    // or delivered by another CPU ahead of the socket's first event (folded in when that comes).
    // `closed` is a heap, earliest first, rather than a tree with a node per connection: an entry
    // is not removed but goes stale when its connection goes or closes earlier (pop_finished()
    // skips it). Each entry also holds its connection's first arrival, which tells the connection
    // from a later one of the same socket (its events after the finalisation).
    using ClosedEntry = std::tuple<uint64_t, uint64_t, uint64_t>;  // (closed, cookie, arrival)
    std::priority_queue<ClosedEntry, std::vector<ClosedEntry>, std::greater<>> closed;
    std::map<uint64_t, std::vector<Arrived>> unconfirmed;
    // Connections seen alive by the hash of their tuple: for resets with no socket.
    TupleIndex alive_by_tuple;
    std::vector<Arrived> unattributed;
    // Spans (from, to] in which the kernel lost events, in time order, touching ones merged.
    std::vector<std::pair<uint64_t, uint64_t>> losses;
    RequestBuilder spare_builder{true};  // for build_connection()
    IdleCloses idle_closes;
    // When given_up() last walked the connections (they are many: it walks rarely).
    uint64_t swept_ns = 0;

    // Whether the kernel lost events while a connection was alive, from `from` to `to`.
    bool lost_during(uint64_t from, uint64_t to) const {
        const auto first_after = std::ranges::lower_bound(
            losses, from, {}, &std::pair<uint64_t, uint64_t>::second);
        return first_after != losses.end() && first_after->first < to;
    }

    // The connection's record. It is incomplete when events were lost while it was alive: from
    // its establishment (from the start, when that was not seen) to the end of its linger, in
    // which a late request's reset still belongs to it (to the end, while it is open).
    Connection finalise(uint64_t cookie, Tracked tracked, uint64_t linger_ns) {
        Connection conn =
            build_connection(cookie, std::move(tracked), spare_builder, idle_closes);
        const uint64_t end =
            conn.closed_ns ? *conn.closed_ns + linger_ns : std::numeric_limits<uint64_t>::max();
        conn.incomplete = lost_during(conn.established_ns.value_or(0), end);
        return conn;
    }

    // The open connections that have shown nothing for `silence_ns` since the kernel lost events
    // after their last one, in the order they were first seen. Walked at most 16 times per
    // silence, and only when a loss may have made new ones since the last walk.
    std::vector<uint64_t> given_up(uint64_t now_ns, uint64_t silence_ns) {
        std::vector<uint64_t> cookies;
        if (losses.empty() || now_ns < swept_ns + silence_ns / 16 ||
            losses.back().second + silence_ns < swept_ns) {
            return cookies;
        }
        swept_ns = now_ns;
        std::vector<std::pair<uint64_t, uint64_t>> silent;  // (first arrival, cookie)
        for (const auto& [cookie, tracked] : by_cookie) {
            if (tracked.seen_alive && !tracked.closed && tracked.newest_ns + silence_ns < now_ns &&
                lost_during(tracked.newest_ns, now_ns)) {
                silent.emplace_back(tracked.first_arrival, cookie);
            }
        }
        std::ranges::sort(silent);
        cookies.reserve(silent.size());
        for (const auto& [first_arrival, cookie] : silent) cookies.push_back(cookie);
        return cookies;
    }

    // The cookie of the connection whose linger ended first before `now_ns`, by (closed_ns,
    // cookie); nullopt when there is none.
    std::optional<uint64_t> pop_finished(uint64_t now_ns, uint64_t linger_ns) {
        while (!closed.empty() && std::get<0>(closed.top()) + linger_ns < now_ns) {
            const auto [closed_ns, cookie, first_arrival] = closed.top();
            closed.pop();
            const auto it = by_cookie.find(cookie);
            if (it != by_cookie.end() && it->second.first_arrival == first_arrival &&
                it->second.closed_ns() == closed_ns) {
                return cookie;
            }
        }
        return std::nullopt;
    }

    Tracked* find_by_tuple(const Event& event) {
        Tracked* found = nullptr;
        alive_by_tuple.for_each(tuple_hash(event.tuple), [&](uint64_t cookie) {
            Tracked& candidate = by_cookie.at(cookie);
            // A socket first met by the ingress hook may lack its namespace.
            const bool same_netns =
                candidate.netns == event.netns || candidate.netns == 0 || event.netns == 0;
            // The most recent wins: a reused tuple means a newer socket.
            if (candidate.tuple == event.tuple && same_netns &&
                (!found || candidate.first_arrival > found->first_arrival)) {
                found = &candidate;
            }
        });
        return found;
    }

    // Pairs the connection with its other socket, when that is tracked too: the mirrored tuple,
    // in any network namespace (a veth pair, a bridge) but the same one for loopback, alive at
    // the same time, and not paired with another; the only such socket (two would be a guess).
    // Run as the first of the two is finalised: both hold their facts up to its linger's end.
    void meet(uint64_t cookie, Tracked& tracked, std::span<const uint16_t> ports) {
        if (tracked.other_end != 0) return;
        uint64_t found_cookie = 0;
        Tracked* found = nullptr;
        int matches = 0;
        const MirroredTuples mirrors(tracked.tuple);
        for (const Tuple& mirror : mirrors.all()) {
            alive_by_tuple.for_each(tuple_hash(mirror), [&](uint64_t candidate_cookie) {
                Tracked& candidate = by_cookie.at(candidate_cookie);
                const bool namespace_fits = !is_loopback(tracked.tuple) ||
                                            candidate.netns == tracked.netns ||
                                            candidate.netns == 0 || tracked.netns == 0;
                if (candidate_cookie == cookie || candidate.tuple != mirror || !namespace_fits ||
                    candidate.other_end != 0 || !alive_together(tracked, candidate)) {
                    return;
                }
                found_cookie = candidate_cookie;
                found = &candidate;
                ++matches;
            });
        }
        if (matches != 1) return;
        tracked.other_end = found_cookie;
        tracked.other_end_server = server_of(tracked, *found, ports);
        found->other_end = cookie;
        found->other_end_server = seen_from_other_end(tracked.other_end_server);
    }

    static void add(Tracked& tracked, const Event& event, uint64_t arrival, bool by_tuple,
                    const TrackerOptions& options) {
        const bool full_target = options.full_target;
        tracked.newest_ns = std::max(tracked.newest_ns, event.ts_ns);
        if (tracked.netns == 0) tracked.netns = event.netns;
        if (tracked.role == Role::Unknown) tracked.role = event.role;
        if (event.kind == EventKind::Message) {
            // Room for a request and its answer, which nearly every connection holds.
            if (tracked.messages.empty()) tracked.messages.reserve(2);
            ParsedPayload parsed = parse_payload(event.payload, full_target);
            tracked.messages.push_back(
                {.ts_ns = event.ts_ns,
                 .arrival = arrival,
                 .previous_ns = event.previous_ns,
                 .requests_before = event.requests_before,
                 .responses_before = event.responses_before,
                 .direction = event.direction,
                 .response = event.response,
                 .segment = event.direction == Direction::In
                                ? SegmentDigest::of(event.payload, event.payload_len)
                                : SegmentDigest{},
                 .keep_alive_timeout_s = parsed.keep_alive_timeout_s,
                 .heads = std::move(parsed.heads)});
            if (tracked.messages.size() >= tracked.settle_at) settle(tracked, options.reorder_ns);
            return;
        }
        if (event.kind == EventKind::Http2 || event.kind == EventKind::Http2Fragment) {
            if (!tracked.http2) {
                tracked.http2 = std::make_unique<Http2Facts>();
                if (options.http2_names) {
                    tracked.http2->names = std::make_unique<Http2NameDecoder>(full_target);
                }
            }
            if (event.kind == EventKind::Http2) {
                tracked.http2->add(event);
            } else if (tracked.http2->names) {
                tracked.http2->names->add(event);
            }
            return;
        }
        if (event.kind == EventKind::State && event.new_state == kTcpClose) {
            tracked.close_at(event.ts_ns);
        }
        // Past its establishment a socket's state changes only to close, and a close takes a few:
        // room for them at once (an idle socket keeps room for its one fact).
        if (tracked.lifecycle.size() == 1) tracked.lifecycle.reserve(kClosingFacts);
        tracked.lifecycle.push_back(lifecycle_fact(event, arrival, by_tuple, full_target));
    }

    // Feeds the builder the messages older than the newest event by more than reorder_ns, in
    // time order: no event of the socket still to come can precede them.
    static void settle(Tracked& tracked, uint64_t reorder_ns) {
        if (!tracked.builder) {
            const std::optional<bool> serves = serves_requests(tracked.role, tracked.messages);
            if (!serves) {
                tracked.settle_at = static_cast<uint32_t>(2 * tracked.messages.size());
                return;
            }
            tracked.builder = std::make_unique<RequestBuilder>(*serves);
        }
        order_by_time(tracked.messages);
        const auto settled = std::ranges::find_if(tracked.messages, [&](const MessageFact& m) {
            return m.ts_ns + reorder_ns >= tracked.newest_ns;
        });
        for (auto it = tracked.messages.begin(); it != settled; ++it) tracked.builder->feed(*it);
        tracked.messages.erase(tracked.messages.begin(), settled);
        tracked.builder->compact();
        // Twice what stays (messages within reorder_ns): sorting is amortised at a busy rate.
        tracked.settle_at =
            static_cast<uint32_t>(std::max(kSettleBatch, 2 * tracked.messages.size()));
    }

    void confirm_alive(uint64_t cookie, Tracked& tracked, const Event& event,
                       const TrackerOptions& options) {
        tracked.seen_alive = true;
        tracked.tuple = event.tuple;
        alive_by_tuple.insert(tuple_hash(event.tuple), cookie);
        const auto resets = unconfirmed.find(cookie);
        if (resets == unconfirmed.end()) return;
        for (const Arrived& earlier : resets->second) {
            add(tracked, earlier.event, earlier.arrival, false, options);
        }
        unconfirmed.erase(resets);
    }

    // Removes a connection; resets never confirmed by a live socket become unattributed.
    Tracked release(std::unordered_map<uint64_t, Tracked>::iterator it) {
        Tracked tracked = std::move(it->second);
        if (tracked.seen_alive) alive_by_tuple.erase(tuple_hash(tracked.tuple), it->first);
        if (const auto resets = unconfirmed.find(it->first); resets != unconfirmed.end()) {
            for (Arrived& arrived : resets->second) unattributed.push_back(std::move(arrived));
            unconfirmed.erase(resets);
        }
        by_cookie.erase(it);
        return tracked;
    }
};

ConnTracker::ConnTracker(TrackerOptions options)
    : options_(options), state_(std::make_unique<State>()) {}

ConnTracker::~ConnTracker() = default;
ConnTracker::ConnTracker(ConnTracker&&) noexcept = default;
ConnTracker& ConnTracker::operator=(ConnTracker&&) noexcept = default;

void ConnTracker::on_event(const Event& event) {
    const uint64_t arrival = state_->next_arrival++;
    if (event.cookie == 0) {
        if (Tracked* tracked = state_->find_by_tuple(event)) {
            State::add(*tracked, event, arrival, true, options_);
        } else {
            state_->unattributed.push_back({arrival, event});
        }
        return;
    }
    auto [it, created] = state_->by_cookie.try_emplace(event.cookie);
    Tracked& tracked = it->second;
    if (created) tracked.first_arrival = arrival;
    if (!tracked.seen_alive) {
        // A reset alone does not show a live socket: a time-wait socket sends them too.
        if (event.kind == EventKind::ResetSent) {
            tracked.newest_ns = std::max(tracked.newest_ns, event.ts_ns);
            state_->unconfirmed[event.cookie].push_back({arrival, event});
            return;
        }
        state_->confirm_alive(event.cookie, tracked, event, options_);
    }
    const std::optional<uint64_t> closed_before = tracked.closed_ns();
    State::add(tracked, event, arrival, false, options_);
    state_->idle_closes.note(event.cookie, event);
    if (tracked.closed_ns() != closed_before) {
        state_->closed.emplace(*tracked.closed_ns(), event.cookie, tracked.first_arrival);
    }
}

std::vector<Connection> ConnTracker::take_finished(uint64_t now_ns) {
    state_->idle_closes.settle(now_ns, options_.reorder_ns);
    std::vector<uint64_t> stale;
    for (const auto& [cookie, resets] : state_->unconfirmed) {
        if (state_->by_cookie.at(cookie).newest_ns + options_.linger_ns < now_ns) {
            stale.push_back(cookie);
        }
    }
    for (uint64_t cookie : stale) state_->release(state_->by_cookie.find(cookie));
    // Closed ones in closing order, then those given up.
    std::vector<uint64_t> finished;
    while (const auto cookie = state_->pop_finished(now_ns, options_.linger_ns)) {
        finished.push_back(*cookie);
    }
    std::ranges::copy(state_->given_up(now_ns, options_.give_up_after_loss_ns),
                      std::back_inserter(finished));
    std::vector<Connection> connections;
    connections.reserve(finished.size());
    for (uint64_t cookie : finished) {
        const auto it = state_->by_cookie.find(cookie);
        state_->meet(cookie, it->second, options_.ports);
        connections.push_back(
            state_->finalise(cookie, state_->release(it), options_.linger_ns));
        connections.back().id = next_id_++;
    }
    return connections;
}

std::vector<Connection> ConnTracker::finish_all(uint64_t /*end_ns*/) {
    state_->idle_closes.settle(std::numeric_limits<uint64_t>::max(), 0);  // every close has come
    // Closed ones first, in closing order; then the open ones in the order they were first seen.
    std::vector<std::tuple<uint64_t, uint64_t, uint64_t>> held;  // (closed, first arrival, cookie)
    for (const auto& [cookie, tracked] : state_->by_cookie) {
        held.emplace_back(tracked.closed_ns().value_or(std::numeric_limits<uint64_t>::max()),
                          tracked.first_arrival, cookie);
    }
    std::ranges::sort(held);
    std::vector<Connection> connections;
    connections.reserve(held.size());
    for (const auto& [closed_ns, first_arrival, cookie] : held) {
        const auto it = state_->by_cookie.find(cookie);
        if (it->second.seen_alive) state_->meet(cookie, it->second, options_.ports);
        Tracked tracked = state_->release(it);
        if (!tracked.seen_alive) continue;
        connections.push_back(state_->finalise(cookie, std::move(tracked), options_.linger_ns));
        connections.back().id = next_id_++;
    }
    state_->closed = {};  // every entry stale
    return connections;
}

void ConnTracker::on_events_lost(uint64_t from_ns, uint64_t to_ns) {
    auto& losses = state_->losses;
    if (!losses.empty() && from_ns <= losses.back().second) {
        losses.back().second = std::max(losses.back().second, to_ns);
    } else {
        losses.emplace_back(from_ns, to_ns);
    }
}

std::vector<Event> ConnTracker::take_unattributed() {
    std::ranges::sort(state_->unattributed, {}, &Arrived::arrival);
    std::vector<Event> events;
    events.reserve(state_->unattributed.size());
    for (Arrived& arrived : state_->unattributed) events.push_back(std::move(arrived.event));
    state_->unattributed.clear();
    return events;
}

std::size_t ConnTracker::open_connections() const {
    return static_cast<std::size_t>(std::ranges::count_if(state_->by_cookie, [](const auto& entry) {
        return entry.second.seen_alive && !entry.second.closed_ns();
    }));
}

}  // namespace closetrace
