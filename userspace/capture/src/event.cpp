#include "closetrace/event.h"

#include <arpa/inet.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>

extern "C" {
#include "closetrace.h"
}

namespace closetrace {
namespace {

// Copies a fixed-size record out of the ring buffer; the caller checked the size.
template <typename Record>
Record copy_record(std::span<const uint8_t> raw) {
    Record record;
    std::memcpy(&record, raw.data(), sizeof(record));
    return record;
}

Tuple decode_tuple(const ct_tuple& raw) {
    Tuple tuple;
    tuple.family = raw.family;
    std::memcpy(tuple.laddr.data(), raw.laddr, sizeof(raw.laddr));
    std::memcpy(tuple.raddr.data(), raw.raddr, sizeof(raw.raddr));
    tuple.lport = raw.lport;
    tuple.rport = raw.rport;
    return tuple;
}

SockSnapshot decode_snapshot(const ct_sock_snapshot& raw) {
    return SockSnapshot{
        .last_rx_ns = raw.last_rx_ns,
        .last_tx_ns = raw.last_tx_ns,
        .bytes_in = raw.bytes_in,
        .bytes_out = raw.bytes_out,
        .segs_in = raw.segs_in,
        .segs_out = raw.segs_out,
        .unacked_out = raw.unacked_out,
        .unread_in = raw.unread_in,
    };
}

Role decode_role(uint8_t role) {
    switch (role) {
        case CT_ROLE_SERVER: return Role::Server;
        case CT_ROLE_CLIENT: return Role::Client;
        default: return Role::Unknown;
    }
}

void assign_bounded(std::string& to, const char* chars, std::size_t capacity) {
    to.assign(chars, strnlen(chars, capacity));
}

void assign_payload(std::string& to, const uint8_t* payload, std::size_t captured,
                    std::size_t max) {
    to.assign(reinterpret_cast<const char*>(payload), std::min(captured, max));
}

// A message's head as the record holds it (see Event::head_tail_kept): its first bytes up to
// their last whole line, then its last bytes from their first whole line on, when the kernel
// kept a head's last bytes at the capture's end. Tells whether it did.
bool assign_head(std::string& to, const ct_message_event& record) {
    const std::string_view captured(reinterpret_cast<const char*>(record.payload),
                                    std::min<std::size_t>(record.captured, CT_PAYLOAD_MAX));
    if (record.tail_at == 0 || record.tail_at >= captured.size()) {
        to.assign(captured);
        return false;
    }
    const std::string_view first = captured.substr(0, record.tail_at);
    const std::string_view last = captured.substr(record.tail_at);
    const std::size_t first_end = first.rfind('\n');
    const std::size_t last_begin = last.find('\n');
    if (first_end == std::string_view::npos || last_begin == std::string_view::npos) {
        to.assign(first);
        return false;
    }
    to.assign(first.substr(0, first_end + 1));
    to.append(last.substr(last_begin + 1));
    return true;
}

// Every member back to its default. A copy, not a move: the strings keep their buffers.
void reset(Event& event) {
    static const Event kDefaults;
    event = kDefaults;
}

Http2Side decode_http2_side(const ct_http2_side& raw) {
    return Http2Side{
        .last_frame_ns = raw.last_frame_ns,
        .streams_opened = raw.streams_opened,
        .streams_answered = raw.streams_answered,
        .last_stream_id = raw.last_stream_id,
        .goaway_count = raw.goaway_count,
        .goaway_last_stream_id = raw.goaway_last_stream_id,
        .goaway_error = raw.goaway_error,
        .rst_count = raw.rst_count,
        .rst_last_error = raw.rst_last_error,
        .ping_count = raw.ping_count,
        .settings_count = raw.settings_count,
    };
}

void decode_common(const ct_event& raw, Event& event) {
    event.ts_ns = raw.ts_ns;
    event.cookie = raw.cookie;
    event.netns = raw.netns;
    event.tuple = decode_tuple(raw.tuple);
}

}  // namespace

bool decode_event(std::span<const uint8_t> raw, const RstReasonNames& reasons, Event& event,
                  std::string* error) {
    auto fail = [&](const char* why) {
        if (error) *error = why;
        return false;
    };
    if (raw.size() < sizeof(ct_event)) return fail("record shorter than the event header");
    const auto head = copy_record<ct_event>(raw);
    if (head.size != raw.size()) return fail("record size does not match its header");

    reset(event);
    switch (head.kind) {
        case CT_EV_STATE: {
            if (raw.size() != sizeof(ct_state_event)) return fail("state record has the wrong size");
            const auto record = copy_record<ct_state_event>(raw);
            event.kind = EventKind::State;
            decode_common(record.hdr, event);
            event.snap = decode_snapshot(record.snap);
            event.established_ns = record.established_ns;
            event.cgroup_id = record.cgroup_id;
            event.pid = record.pid;
            event.old_state = record.old_state;
            event.new_state = record.new_state;
            event.role = decode_role(record.role);
            assign_bounded(event.comm, record.comm, sizeof(record.comm));
            if (record.owner_from == CT_OWNER_CONNECT) event.owner_from = "connect";
            if (record.owner_from == CT_OWNER_CLOSE) event.owner_from = "close";
            event.by_owner = (record.flags & CT_STATE_BY_OWNER) != 0;
            event.owner_exiting = (record.flags & CT_STATE_OWNER_EXITING) != 0;
            return true;
        }
        case CT_EV_RESET_SENT:
        case CT_EV_RESET_RECEIVED: {
            if (raw.size() != sizeof(ct_reset_event)) return fail("reset record has the wrong size");
            const auto record = copy_record<ct_reset_event>(raw);
            event.kind = head.kind == CT_EV_RESET_SENT ? EventKind::ResetSent
                                                       : EventKind::ResetReceived;
            decode_common(record.hdr, event);
            event.snap = decode_snapshot(record.snap);
            event.role = decode_role(record.role);
            if (record.reason >= 0 && static_cast<std::size_t>(record.reason) < reasons.size()) {
                event.rst_reason = reasons[record.reason];
            }
            event.trigger_flags = record.trigger_flags;
            event.sk_state = record.sk_state;
            event.payload_len = record.payload_len;
            assign_payload(event.payload, record.payload, record.captured, CT_PAYLOAD_MAX);
            return true;
        }
        case CT_EV_MESSAGE: {
            if (raw.size() != sizeof(ct_message_event)) {
                return fail("message record has the wrong size");
            }
            const auto record = copy_record<ct_message_event>(raw);
            event.kind = EventKind::Message;
            decode_common(record.hdr, event);
            event.role = decode_role(record.role);
            event.direction = record.direction == CT_DIR_OUT ? Direction::Out : Direction::In;
            event.response = record.kind == CT_MESSAGE_RESPONSE;
            event.requests_before = record.requests;
            event.responses_before = record.responses;
            event.previous_ns = record.previous_ns;
            event.held = (record.flags & CT_MESSAGE_HELD) != 0;
            event.payload_len = record.segment_len;
            event.head_tail_kept = assign_head(event.payload, record);
            return true;
        }
        case CT_EV_HTTP2: {
            if (raw.size() != sizeof(ct_http2_event)) return fail("HTTP/2 record has the wrong size");
            const auto record = copy_record<ct_http2_event>(raw);
            event.kind = EventKind::Http2;
            decode_common(record.hdr, event);
            event.role = decode_role(record.role);
            Http2Record& h2 = event.http2;
            switch (record.record) {
                case CT_HTTP2_FRAME: h2.kind = Http2RecordKind::Frame; break;
                case CT_HTTP2_CLOSE: h2.kind = Http2RecordKind::Close; break;
                case CT_HTTP2_END: h2.kind = Http2RecordKind::End; break;
                default: return fail("HTTP/2 record of an unknown kind");
            }
            h2.peer = decode_http2_side(record.sides[CT_DIR_IN - 1]);
            h2.local = decode_http2_side(record.sides[CT_DIR_OUT - 1]);
            h2.pending = record.pending;
            h2.pending_base = record.pending_base;
            h2.client = record.client_direction == CT_DIR_OUT ? Direction::Out : Direction::In;
            h2.lost_in = (record.flags & CT_HTTP2_LOST_IN) != 0;
            h2.lost_out = (record.flags & CT_HTTP2_LOST_OUT) != 0;
            h2.pending_overflow = (record.flags & CT_HTTP2_PENDING_OVERFLOW) != 0;
            h2.in_skip = record.in_skip;
            h2.direction = record.direction == CT_DIR_OUT ? Direction::Out : Direction::In;
            h2.frame_type = record.frame_type;
            h2.frame_flags = record.frame_flags;
            h2.stream_id = record.stream_id;
            h2.error_code = record.error_code;
            h2.frame_len = record.frame_len;
            return true;
        }
        case CT_EV_HTTP2_FRAGMENT: {
            if (raw.size() != sizeof(ct_http2_fragment_event)) {
                return fail("HTTP/2 fragment record has the wrong size");
            }
            const auto record = copy_record<ct_http2_fragment_event>(raw);
            event.kind = EventKind::Http2Fragment;
            decode_common(record.hdr, event);
            event.role = decode_role(record.role);
            event.direction = record.direction == CT_DIR_OUT ? Direction::Out : Direction::In;
            event.fragment = Http2Fragment{
                .sequence = record.sequence,
                .stream_id = record.stream_id,
                .frame_type = record.frame_type,
                .frame_flags = record.frame_flags,
                .whole = record.status == CT_HTTP2_FRAGMENT_WHOLE &&
                         record.captured == record.frame_len,
            };
            assign_payload(event.payload, record.payload, record.captured, CT_HTTP2_FRAGMENT_MAX);
            return true;
        }
        default:
            return fail("unknown event kind");
    }
}

std::optional<Event> decode_event(std::span<const uint8_t> raw, const RstReasonNames& reasons,
                                  std::string* error) {
    Event event;
    if (!decode_event(raw, reasons, event, error)) return std::nullopt;
    return event;
}

const char* tcp_state_name(uint8_t state) {
    static constexpr const char* kNames[] = {
        "UNKNOWN",   "ESTABLISHED", "SYN_SENT",   "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2",
        "TIME_WAIT", "CLOSE",       "CLOSE_WAIT", "LAST_ACK", "LISTEN",    "CLOSING",
        "NEW_SYN_RECV",
    };
    return state < std::size(kNames) ? kNames[state] : "UNKNOWN";
}

const char* to_string(EventKind kind) {
    switch (kind) {
        case EventKind::State: return "state";
        case EventKind::ResetSent: return "reset_sent";
        case EventKind::ResetReceived: return "reset_received";
        case EventKind::Message: return "message";
        case EventKind::Http2: return "http2";
        case EventKind::Http2Fragment: return "http2_fragment";
    }
    return "?";
}

const char* to_string(Direction direction) { return direction == Direction::In ? "in" : "out"; }

const char* to_string(Http2RecordKind kind) {
    switch (kind) {
        case Http2RecordKind::Frame: return "frame";
        case Http2RecordKind::Close: return "close";
        case Http2RecordKind::End: return "end";
    }
    return "?";
}

std::string tcp_flags_string(uint8_t flags) {
    std::string text;
    if (flags & CT_TCP_SYN) text += 'S';
    if (flags & CT_TCP_FIN) text += 'F';
    if (flags & CT_TCP_RST) text += 'R';
    if (flags & CT_TCP_PSH) text += 'P';
    if (flags & CT_TCP_ACK) text += '.';
    return text;
}

std::string format_address(int family, const std::array<uint8_t, 16>& addr) {
    // std::to_chars, not inet_ntop's sprintf nor fmt's parsed format: two per finished
    // connection, a large part of churn's instructions.
    if (family != AF_INET6) {
        std::array<char, INET_ADDRSTRLEN> text{};
        char* end = text.data();
        for (std::size_t i = 0; i < 4; ++i) {
            if (i > 0) *end++ = '.';
            end = std::to_chars(end, text.data() + text.size(), addr[i]).ptr;
        }
        return {text.data(), end};
    }
    char text[INET6_ADDRSTRLEN] = {};
    if (!inet_ntop(AF_INET6, addr.data(), text, sizeof(text))) return "?";
    return text;
}

}  // namespace closetrace
