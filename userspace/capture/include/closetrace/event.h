// Kernel events decoded from the ring buffer's records (bpf/closetrace.h) into plain C++.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace closetrace {

enum class EventKind : uint8_t { State, ResetSent, ResetReceived, Message, Http2, Http2Fragment };
enum class Role : uint8_t { Unknown, Server, Client };
enum class Direction : uint8_t { In, Out };

// TCP states as numbered in include/net/tcp_states.h.
enum TcpState : uint8_t {
    kTcpEstablished = 1,
    kTcpSynSent = 2,
    kTcpSynRecv = 3,
    kTcpFinWait1 = 4,
    kTcpFinWait2 = 5,
    kTcpTimeWait = 6,
    kTcpClose = 7,
    kTcpCloseWait = 8,
    kTcpLastAck = 9,
    kTcpListen = 10,
    kTcpClosing = 11,
    kTcpNewSynRecv = 12,
};

// Endpoints from this host's point of view; IPv4 addresses use the first 4 bytes.
struct Tuple {
    int family = 0;  // AF_INET or AF_INET6
    std::array<uint8_t, 16> laddr{};
    std::array<uint8_t, 16> raddr{};
    uint16_t lport = 0;
    uint16_t rport = 0;
    auto operator<=>(const Tuple&) const = default;
};

struct SockSnapshot {
    uint64_t last_rx_ns = 0;  // last payload received; 0 = unknown
    uint64_t last_tx_ns = 0;  // last payload sent; 0 = unknown
    uint64_t bytes_in = 0;
    uint64_t bytes_out = 0;
    uint32_t segs_in = 0;
    uint32_t segs_out = 0;
    uint32_t unacked_out = 0;
    uint32_t unread_in = 0;
};

// What one side of an HTTP/2 connection sent, counted by the kernel (ct_http2_side).
struct Http2Side {
    uint64_t last_frame_ns = 0;  // 0: none
    uint32_t streams_opened = 0;
    uint32_t streams_answered = 0;  // streams of the other side it sent a first HEADERS on
    uint32_t last_stream_id = 0;    // the highest stream id it opened; 0 none
    uint32_t goaway_count = 0;
    uint32_t goaway_last_stream_id = 0;  // of its latest GOAWAY
    uint32_t goaway_error = 0;
    uint32_t rst_count = 0;  // RST_STREAM frames
    uint32_t rst_last_error = 0;
    uint32_t ping_count = 0;      // PING frames, acknowledgements not counted
    uint32_t settings_count = 0;  // SETTINGS frames, acknowledgements not counted
    bool operator==(const Http2Side&) const = default;
};

// What an HTTP/2 record is (enum ct_http2_record).
enum class Http2RecordKind : uint8_t {
    Frame,  // a frame that mattered
    Close,  // the counts at the connection's close
    End,    // the counts of a connection still open when the recording ended
};

// An HTTP/2 record (ct_http2_event): a frame that mattered, or the counts at the close or at the
// end of the recording. Each carries the counts so far.
struct Http2Record {
    Http2RecordKind kind = Http2RecordKind::Frame;
    Http2Side peer;   // frames received
    Http2Side local;  // frames sent
    // Client streams awaiting an answer: bit i is stream pending_base + 2 i.
    uint64_t pending = 0;
    uint32_t pending_base = 1;
    Direction client = Direction::In;  // the client preface's direction
    bool lost_in = false;   // received frames no longer followed from some point on
    bool lost_out = false;  // ... sent frames
    bool pending_overflow = false;  // more streams open at once than `pending` holds
    // Bytes of the peer's frame under way still to come: 0, its next segment opens with a frame.
    uint32_t in_skip = 0;
    // A frame's
    Direction direction = Direction::In;
    uint8_t frame_type = 0;
    uint8_t frame_flags = 0;
    uint32_t stream_id = 0;
    uint32_t error_code = 0;  // GOAWAY, RST_STREAM
    uint32_t frame_len = 0;
};

// A header block fragment (ct_http2_fragment_event), copied with record --http2-names: a
// HEADERS, CONTINUATION or PUSH_PROMISE frame's payload, in Event::payload when `whole`.
struct Http2Fragment {
    uint32_t sequence = 0;  // fragments of its direction before it: a gap is a lost record
    uint32_t stream_id = 0;
    uint8_t frame_type = 0;
    uint8_t frame_flags = 0;
    bool whole = false;  // else not copied: too long, or continued in the next segment
};

// One kernel event. Members that do not apply to `kind` keep their defaults.
struct Event {
    EventKind kind = EventKind::State;
    uint64_t ts_ns = 0;
    uint64_t cookie = 0;  // 0 when the kernel had no socket (reset to a stray segment)
    uint32_t netns = 0;
    Tuple tuple;
    Role role = Role::Unknown;
    SockSnapshot snap;

    // State
    uint8_t old_state = 0;
    uint8_t new_state = 0;
    uint64_t established_ns = 0;  // 0 = established before recording
    uint64_t cgroup_id = 0;       // the socket's cgroup v2 id; 0 = unknown
    uint32_t pid = 0;
    std::string comm;
    std::optional<std::string> owner_from;  // "connect" | "close": where pid/comm were seen
    bool by_owner = false;       // made by the owning process closing the socket
    bool owner_exiting = false;  // ... while that process was exiting

    // ResetSent
    std::optional<std::string> rst_reason;  // kernel's name, e.g. "TCP_ABORT_ON_DATA"
    uint8_t trigger_flags = 0;              // TCP flags of the triggering segment
    uint8_t sk_state = 0;                   // 0 = no socket

    // ResetSent (trigger payload) and Message
    uint32_t payload_len = 0;  // bytes on the wire in that segment
    std::string payload;       // first bytes captured (raw, untrusted)

    // Message: one the kernel wrote because it matters; those between are only numbered.
    Direction direction = Direction::In;
    bool response = false;     // the kernel's kind: a response, else a request
    uint32_t requests_before = 0;   // requests before it on the socket
    uint32_t responses_before = 0;  // responses before it (interim ones not counted)
    uint64_t previous_ns = 0;  // when the previous message (either kind) started; 0 none
    bool held = false;         // written only when the connection began to close
    // The head outgrew the capture: `payload` holds its first whole lines, then its last ones
    // up to the blank line that ends it (ct_message_event.tail_at); those between are left out.
    bool head_tail_kept = false;

    // Http2
    Http2Record http2;

    // Http2Fragment (with `direction` and `payload`)
    Http2Fragment fragment;
};

// Names of the kernel's enum sk_rst_reason, indexed by value (from the running kernel's BTF,
// with the "SK_RST_REASON_" prefix removed). Empty when the kernel has no such enum.
using RstReasonNames = std::vector<std::string>;

// Decodes one ring buffer record into `event`: every member is the record's or its default,
// and the strings keep their capacity, so that an Event reused for every record costs no
// allocation per record. Returns false and sets `error` for a record whose size or kind does
// not match the ABI (never reads past `raw`); `event` is then unspecified.
bool decode_event(std::span<const uint8_t> raw, const RstReasonNames& reasons, Event& event,
                  std::string* error);
// The same into a new Event; nullopt for a record that does not match the ABI.
std::optional<Event> decode_event(std::span<const uint8_t> raw, const RstReasonNames& reasons,
                                  std::string* error);

const char* tcp_state_name(uint8_t state);
const char* to_string(EventKind kind);
const char* to_string(Role role);
const char* to_string(Direction direction);
const char* to_string(Http2RecordKind kind);  // "frame" | "close" | "end"
// Flags as tcpdump prints them: "S", "F", "R", "P", "." for ACK; e.g. "P." for PSH|ACK.
std::string tcp_flags_string(uint8_t flags);
// Address text ("10.0.0.2", "fd00::2") of one side of a tuple.
std::string format_address(int family, const std::array<uint8_t, 16>& addr);

}  // namespace closetrace
