#include "closetrace/http2.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <map>
#include <set>

#include "closetrace.h"

namespace closetrace {
namespace {

Initiator side_of(Direction direction) {
    return direction == Direction::Out ? Initiator::Local : Initiator::Peer;
}

const Http2Side& sent_by(const Http2Record& record, Initiator side) {
    return side == Initiator::Local ? record.local : record.peer;
}

// The streams the records name, by id: opened (a written HEADERS), refused, or pending at the
// close.
class CaughtStreams {
public:
    void opened(uint32_t id, Initiator by, uint64_t ts_ns) {
        Http2Stream& stream = at(id, by);
        if (!stream.opened_ns) stream.opened_ns = ts_ns;
    }

    void refused(uint32_t id, Initiator opener, Initiator by, uint64_t ts_ns) {
        Http2Stream& stream = at(id, opener);
        stream.reset_by = by;
        stream.reset_ns = ts_ns;
        refused_.insert(id);
    }

    void pending(uint32_t id, Initiator opener) {
        at(id, opener);
        pending_.insert(id);
    }

    // Each stream's fate from the final counts; the ones not caught are dropped.
    std::vector<Http2Stream> settle(const Http2Record& final_counts) {
        std::vector<Http2Stream> caught;
        for (auto& [id, stream] : streams_) {
            // The side that did not open it: its GOAWAY's last-stream-id bounds what it processed.
            const Http2Side& other = sent_by(
                final_counts, stream.opened_by == Initiator::Local ? Initiator::Peer
                                                                   : Initiator::Local);
            if (refused_.contains(id)) {
                stream.fate = StreamFate::Refused;
            } else if (other.goaway_count > 0 && id > other.goaway_last_stream_id) {
                stream.fate = StreamFate::AfterGoaway;
            } else if (pending_.contains(id)) {
                stream.fate = StreamFate::UnansweredAtClose;
            } else {
                continue;
            }
            caught.push_back(stream);
        }
        return caught;
    }

private:
    Http2Stream& at(uint32_t id, Initiator opener) {
        auto [it, created] = streams_.try_emplace(id);
        if (created) {
            it->second.id = id;
            it->second.opened_by = opener;
        }
        return it->second;
    }

    std::map<uint32_t, Http2Stream> streams_;
    std::set<uint32_t> refused_;
    std::set<uint32_t> pending_;
};

}  // namespace

std::string http2_error_name(uint32_t code) {
    static constexpr std::array<const char*, 14> kNames = {
        "NO_ERROR",       "PROTOCOL_ERROR", "INTERNAL_ERROR",     "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT", "STREAM_CLOSED", "FRAME_SIZE_ERROR",  "REFUSED_STREAM",
        "CANCEL",         "COMPRESSION_ERROR", "CONNECT_ERROR",   "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED",
    };
    if (code < kNames.size()) return kNames[code];
    return fmt::format("0x{:x}", code);
}

std::vector<Http2FrameHeader> http2_frame_headers(std::string_view bytes) {
    constexpr std::size_t kHeaderLen = 9;
    std::vector<Http2FrameHeader> headers;
    std::size_t at = 0;
    while (bytes.size() - at >= kHeaderLen) {
        const auto byte = [&](std::size_t i) { return static_cast<uint8_t>(bytes[at + i]); };
        headers.push_back({
            .length = (uint32_t{byte(0)} << 16) | (uint32_t{byte(1)} << 8) | byte(2),
            .type = byte(3),
            .flags = byte(4),
            .stream_id = ((uint32_t{byte(5)} << 24) | (uint32_t{byte(6)} << 16) |
                          (uint32_t{byte(7)} << 8) | byte(8)) & 0x7fffffff,
        });
        const std::size_t next = kHeaderLen + headers.back().length;
        if (bytes.size() - at < next) break;
        at += next;
    }
    return headers;
}

void Http2Facts::add(const Event& event) {
    const Http2Record& record = event.http2;
    lost = lost || record.lost_in || record.lost_out;
    pending_overflow = pending_overflow || record.pending_overflow;
    // The close's counts first, then those at the end of the recording, then a frame's; of
    // two of a kind the last in time order (the later arrival of two at once).
    const auto rank = [](Http2RecordKind kind) {
        return kind == Http2RecordKind::Close ? 2 : kind == Http2RecordKind::End ? 1 : 0;
    };
    const bool latest = !any || rank(record.kind) > rank(counts.kind) ||
                        (rank(record.kind) == rank(counts.kind) && event.ts_ns >= counts_ns);
    if (latest) {
        counts = record;
        counts_ns = event.ts_ns;
    }
    any = true;
    if (record.kind != Http2RecordKind::Frame) return;
    frames.push_back({
        .ts_ns = event.ts_ns,
        .other_last_frame_ns = record.direction == Direction::Out ? record.peer.last_frame_ns
                                                                  : record.local.last_frame_ns,
        .stream_id = record.stream_id,
        .error_code = record.error_code,
        .direction = record.direction,
        .frame_type = record.frame_type,
    });
}

namespace {

std::vector<Http2Frame> in_time_order(const Http2Facts& facts) {
    std::vector<Http2Frame> frames = facts.frames;
    std::ranges::stable_sort(frames, {}, &Http2Frame::ts_ns);
    return frames;
}

Http2Facts facts_of(std::span<const Event> records) {
    Http2Facts facts;
    for (const Event& event : records) facts.add(event);
    return facts;
}

}  // namespace

Http2Connection account_http2(std::span<const Event> records,
                              std::span<const Event> late_segments) {
    return account_http2(facts_of(records), late_segments);
}

Http2Connection account_http2(const Http2Facts& facts, std::span<const Event> late_segments) {
    Http2Connection conn;
    if (!facts.any) return conn;
    // The counts grow monotonically: the last record holds them all (at the close, when written).
    const Http2Record* final_counts = &facts.counts;
    const Initiator client = side_of(final_counts->client);
    conn.client = client;
    conn.local = final_counts->local;
    conn.peer = final_counts->peer;
    const bool at_close = final_counts->kind == Http2RecordKind::Close;
    conn.counted_at_close = at_close;
    conn.lost = facts.lost;
    conn.pending_overflow = facts.pending_overflow;

    CaughtStreams streams;
    for (const Http2Frame& frame : in_time_order(facts)) {
        const Initiator sender = side_of(frame.direction);
        switch (frame.frame_type) {
            case CT_HTTP2_HEADERS: streams.opened(frame.stream_id, sender, frame.ts_ns); break;
            case CT_HTTP2_RST_STREAM:
                if (frame.error_code == kHttp2RefusedStream) {
                    streams.refused(frame.stream_id, client, sender, frame.ts_ns);
                }
                break;
            case CT_HTTP2_GOAWAY: {
                std::optional<uint64_t>& first =
                    sender == Initiator::Local ? conn.local_goaway_ns : conn.peer_goaway_ns;
                if (!first) first = frame.ts_ns;
                break;
            }
            default: break;
        }
    }
    // The peer's first segment after the socket was gone, read from the reset it triggered:
    // only when the close left the peer's bytes at a frame boundary and followed.
    if (at_close && client == Initiator::Peer && !late_segments.empty() &&
        final_counts->in_skip == 0 && !final_counts->lost_in) {
        const Event& late = late_segments.front();
        for (const Http2FrameHeader& header : http2_frame_headers(late.payload)) {
            if (header.type == CT_HTTP2_HEADERS && (header.stream_id & 1) &&
                header.stream_id > final_counts->peer.last_stream_id) {
                streams.opened(header.stream_id, Initiator::Peer, late.ts_ns);
                streams.pending(header.stream_id, Initiator::Peer);
            }
        }
    }
    // Awaiting an answer: caught only when the connection closed with it so.
    if (at_close) {
        for (uint32_t bit = 0; bit < CT_HTTP2_PENDING_WINDOW; ++bit) {
            if (final_counts->pending & (uint64_t{1} << bit)) {
                streams.pending(final_counts->pending_base + 2 * bit, client);
            }
        }
    }
    conn.caught = streams.settle(*final_counts);
    if (facts.names) {
        for (Http2Stream& stream : conn.caught) facts.names->name(stream);
        conn.names_undecodable_from = facts.names->undecodable_from();
    }
    return conn;
}

namespace {

// The side whose GOAWAY came first, else the first FIN or RST's.
Initiator http2_closer(const Connection& conn) {
    const Http2Connection& h2 = *conn.http2;
    if (h2.local_goaway_ns && (!h2.peer_goaway_ns || *h2.local_goaway_ns <= *h2.peer_goaway_ns)) {
        return Initiator::Local;
    }
    return h2.peer_goaway_ns ? Initiator::Peer : conn.close.initiator;
}

// From the closer's first GOAWAY back to the other side's last frame before it.
std::optional<double> idle_before_goaway(const Http2Facts& facts, Initiator closer) {
    const Direction closer_direction = closer == Initiator::Local ? Direction::Out : Direction::In;
    for (const Http2Frame& frame : in_time_order(facts)) {
        if (frame.frame_type != CT_HTTP2_GOAWAY || frame.direction != closer_direction) continue;
        if (frame.other_last_frame_ns == 0 || frame.other_last_frame_ns > frame.ts_ns) {
            return std::nullopt;
        }
        return static_cast<double>(frame.ts_ns - frame.other_last_frame_ns) / 1e6;
    }
    return std::nullopt;
}

// A GOAWAY without error (or a FIN without GOAWAY): by its idle time as for HTTP/1 (a gRPC
// channel closed right after its calls, a maximum connection age just after one), an idle
// timer's when that time is not known.
CloseCause idle_close_cause(const Connection& conn, Initiator closer) {
    const std::optional<double>& idle_ms = conn.close.idle_ms;
    return idle_ms ? cause_by_idle(*idle_ms, closer, conn.http2->client) : CloseCause::IdleTimer;
}

Verdict by_closer(Initiator closer, Verdict local, Verdict peer) {
    return closer == Initiator::Local ? local : peer;
}

}  // namespace

void judge_http2(Connection& conn, std::span<const Event> records,
                 std::span<const Event> late_segments) {
    judge_http2(conn, facts_of(records), late_segments);
}

void judge_http2(Connection& conn, const Http2Facts& facts,
                 std::span<const Event> late_segments) {
    conn.http2 = account_http2(facts, late_segments);
    conn.requests.clear();
    conn.requests_omitted = 0;
    // Its requests' User-Agent, when recorded with --http2-names (an ALB's gRPC health checks).
    if (facts.names && !facts.names->health_checker().empty()) {
        conn.health_check = std::string(facts.names->health_checker());
    }
    if (!conn.close.how) return;  // open: the verdict stays Open

    const Http2Connection& h2 = *conn.http2;
    const Initiator closer = http2_closer(conn);
    const Http2Side& closer_sent = closer == Initiator::Local ? h2.local : h2.peer;
    const bool raced = std::ranges::any_of(h2.caught, [](const Http2Stream& stream) {
        return stream.fate != StreamFate::UnansweredAtClose;
    });
    const bool in_flight = !h2.caught.empty() && !raced;
    const bool goaway_without_error =
        closer_sent.goaway_count > 0 && closer_sent.goaway_error == kHttp2NoError;
    // A FIN with no GOAWAY either way on a connection whose frames were all followed: an idle
    // close all the same (nginx closes an idle upstream connection so, at its keepalive_timeout),
    // timed from the last payload as for HTTP/1.
    const bool fin_without_goaway = conn.close.how == CloseHow::Fin && !h2.lost &&
                                    h2.local.goaway_count == 0 && h2.peer.goaway_count == 0 &&
                                    conn.close.idle_ms.has_value();

    conn.close.asked_by = std::nullopt;
    if (goaway_without_error) conn.close.idle_ms = idle_before_goaway(facts, closer);
    conn.close.cause = in_flight ? CloseCause::InFlight
                       : goaway_without_error || fin_without_goaway ? idle_close_cause(conn, closer)
                                                                    : CloseCause::Unknown;

    if (raced) {
        conn.verdict = by_closer(closer, Verdict::LocalCloseRace, Verdict::PeerCloseRace);
    } else if (in_flight) {
        conn.verdict = by_closer(closer, Verdict::LocalResetInflight, Verdict::PeerCloseInflight);
    } else if (conn.close.how == CloseHow::Rst && !goaway_without_error) {
        conn.verdict = by_closer(closer, Verdict::LocalReset, Verdict::PeerReset);
    } else {
        conn.verdict = by_closer(closer, Verdict::LocalIdleClose, Verdict::PeerIdleClose);
    }
}

}  // namespace closetrace
