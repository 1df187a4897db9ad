// The HTTP/2 accounting of the kernel's records (account_http2) and the verdicts it gives
// (judge_http2): which streams a close caught, and who closed how.
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "closetrace.h"
#include "closetrace/http2.h"

namespace closetrace {
namespace {

// A connection this host served (the peer sent the client preface).
constexpr Direction kClientIn = Direction::In;

Event frame(uint64_t ts_ns, Direction direction, uint8_t type, uint32_t stream_id,
            uint32_t error_code = 0) {
    Event event;
    event.kind = EventKind::Http2;
    event.ts_ns = ts_ns;
    event.http2.client = kClientIn;
    event.http2.direction = direction;
    event.http2.frame_type = type;
    event.http2.stream_id = stream_id;
    event.http2.error_code = error_code;
    return event;
}

// The counts the kernel wrote at the connection's close (or, `kind` End, at the recording's end).
Event close_counts(uint64_t ts_ns, uint64_t pending, uint32_t pending_base,
                   Http2RecordKind kind = Http2RecordKind::Close) {
    Event event;
    event.kind = EventKind::Http2;
    event.ts_ns = ts_ns;
    event.http2.kind = kind;
    event.http2.client = kClientIn;
    event.http2.pending = pending;
    event.http2.pending_base = pending_base;
    return event;
}

// This host's GOAWAY with last stream 1 after the peer's stream 1 was answered at 1000 ns.
void set_local_goaway(std::vector<Event>& records, uint32_t last_stream_id) {
    for (Event& event : records) {
        event.http2.peer.last_frame_ns = 1'000;
        event.http2.peer.streams_opened = 1;
        event.http2.peer.last_stream_id = 1;
        if (event.ts_ns >= 2'000'000'000) {
            event.http2.local.goaway_count = 1;
            event.http2.local.goaway_last_stream_id = last_stream_id;
        }
    }
}

Connection closed_by_this_host(CloseHow how) {
    Connection conn;
    conn.role = Role::Server;
    conn.close.initiator = Initiator::Local;
    conn.close.how = how;
    conn.close.local_fin_ns = 2'000'100'000;
    conn.closed_ns = 2'000'300'000;
    // The HTTP/1 view of the bytes: an opaque "request" after the close, dropped.
    conn.requests.push_back({.opaque = true, .outcome = Outcome::AfterLocalClose});
    return conn;
}

TEST(Http2Accounting, AStreamOpenedAboveThisHostsGoawayIsCaughtAsARace) {
    std::vector<Event> records = {
        frame(2'000'000'000, Direction::Out, CT_HTTP2_GOAWAY, 0),
        frame(2'000'200'000, Direction::In, CT_HTTP2_HEADERS, 3),
        close_counts(2'000'300'000, 0b1, 3),
    };
    set_local_goaway(records, 1);
    Connection conn = closed_by_this_host(CloseHow::Fin);
    judge_http2(conn, records);

    ASSERT_TRUE(conn.http2);
    ASSERT_EQ(conn.http2->caught.size(), 1u);
    const Http2Stream& stream = conn.http2->caught[0];
    EXPECT_EQ(stream.id, 3u);
    EXPECT_EQ(stream.fate, StreamFate::AfterGoaway);
    EXPECT_EQ(stream.opened_by, Initiator::Peer);
    EXPECT_EQ(stream.opened_ns, 2'000'200'000u);
    EXPECT_EQ(conn.http2->local_goaway_ns, 2'000'000'000u);
    EXPECT_TRUE(conn.http2->counted_at_close);
    EXPECT_EQ(conn.verdict, Verdict::LocalCloseRace);
    EXPECT_EQ(conn.close.cause, CloseCause::IdleTimer);
    EXPECT_TRUE(conn.requests.empty());
    // From the peer's last frame (1000 ns) to this host's GOAWAY.
    ASSERT_TRUE(conn.close.idle_ms);
    EXPECT_DOUBLE_EQ(*conn.close.idle_ms, (2'000'000'000 - 1'000) / 1e6);
}

TEST(Http2Accounting, AnIdleGoawayWithNothingPendingCatchesNothing) {
    std::vector<Event> records = {
        frame(2'000'000'000, Direction::Out, CT_HTTP2_GOAWAY, 0),
        close_counts(2'000'300'000, 0, 1),
    };
    set_local_goaway(records, 1);
    Connection conn = closed_by_this_host(CloseHow::Fin);
    judge_http2(conn, records);
    EXPECT_TRUE(conn.http2->caught.empty());
    EXPECT_EQ(conn.verdict, Verdict::LocalIdleClose);
    EXPECT_EQ(conn.close.cause, CloseCause::IdleTimer);
}

// A GOAWAY right after the last exchange tells no idle timeout: the client's is a channel
// closed after use, the server's an early end (a maximum connection age).
TEST(Http2Accounting, AGoawayRightAfterTheExchangeIsNoIdleTimer) {
    std::vector<Event> records = {
        frame(100'000'000, Direction::In, CT_HTTP2_GOAWAY, 0),
        close_counts(101'000'000, 0, 1),
    };
    for (Event& event : records) {
        event.http2.local.last_frame_ns = 1'000;  // its answer to stream 1
        event.http2.peer.goaway_count = 1;
    }
    Connection by_client = closed_by_this_host(CloseHow::Fin);
    judge_http2(by_client, records);
    EXPECT_EQ(by_client.verdict, Verdict::PeerIdleClose);
    EXPECT_EQ(by_client.close.cause, CloseCause::ClosedAfterUse);
    EXPECT_DOUBLE_EQ(*by_client.close.idle_ms, (100'000'000 - 1'000) / 1e6);

    records = {
        frame(100'000'000, Direction::Out, CT_HTTP2_GOAWAY, 0),
        close_counts(101'000'000, 0, 1),
    };
    for (Event& event : records) {
        event.http2.peer.last_frame_ns = 1'000;
        event.http2.local.goaway_count = 1;
    }
    Connection by_server = closed_by_this_host(CloseHow::Fin);
    judge_http2(by_server, records);
    EXPECT_EQ(by_server.verdict, Verdict::LocalIdleClose);
    EXPECT_EQ(by_server.close.cause, CloseCause::KeepaliveEnded);
}

// nginx closes an idle upstream connection with a FIN and no GOAWAY: an idle close all the same,
// timed from the last payload; a FIN of a connection whose frames were lost tells nothing.
TEST(Http2Accounting, AFinWithoutGoawayAfterIdleIsAnIdleTimer) {
    const std::vector<Event> records = {close_counts(2'000'300'000, 0, 1)};
    Connection conn = closed_by_this_host(CloseHow::Fin);
    conn.close.initiator = Initiator::Peer;
    conn.close.local_fin_ns.reset();
    conn.close.peer_fin_ns = 2'000'100'000;
    conn.close.idle_ms = 1'007.0;
    Connection lost = conn;
    judge_http2(conn, records);
    EXPECT_EQ(conn.verdict, Verdict::PeerIdleClose);
    EXPECT_EQ(conn.close.cause, CloseCause::IdleTimer);
    EXPECT_DOUBLE_EQ(*conn.close.idle_ms, 1'007.0);

    std::vector<Event> lost_records = records;
    lost_records[0].http2.lost_in = true;
    judge_http2(lost, lost_records);
    EXPECT_EQ(lost.close.cause, CloseCause::Unknown);
}

TEST(Http2Accounting, RefusedStreamsAreCaughtOtherResetsAreNot) {
    std::vector<Event> records = {
        frame(1'000'000, Direction::Out, CT_HTTP2_RST_STREAM, 5, kHttp2RefusedStream),
        frame(2'000'000, Direction::In, CT_HTTP2_RST_STREAM, 7, 0x8 /* CANCEL */),
        close_counts(3'000'000, 0, 1),
    };
    Connection conn = closed_by_this_host(CloseHow::Fin);
    judge_http2(conn, records);
    ASSERT_EQ(conn.http2->caught.size(), 1u);
    EXPECT_EQ(conn.http2->caught[0].id, 5u);
    EXPECT_EQ(conn.http2->caught[0].fate, StreamFate::Refused);
    EXPECT_EQ(conn.http2->caught[0].reset_by, Initiator::Local);
    EXPECT_EQ(conn.http2->caught[0].reset_ns, 1'000'000u);
    EXPECT_EQ(conn.verdict, Verdict::LocalCloseRace);
}

TEST(Http2Accounting, StreamsPendingAtTheCloseWithoutGoawayAreAnInFlightLoss) {
    // Streams 5 and 9 (bits 0 and 2 from base 5) were awaiting their answers.
    std::vector<Event> records = {close_counts(3'000'000, 0b101, 5)};
    Connection conn = closed_by_this_host(CloseHow::Rst);
    judge_http2(conn, records);
    ASSERT_EQ(conn.http2->caught.size(), 2u);
    EXPECT_EQ(conn.http2->caught[0].id, 5u);
    EXPECT_EQ(conn.http2->caught[1].id, 9u);
    EXPECT_EQ(conn.http2->caught[1].fate, StreamFate::UnansweredAtClose);
    EXPECT_EQ(conn.verdict, Verdict::LocalResetInflight);
    EXPECT_EQ(conn.close.cause, CloseCause::InFlight);
}

TEST(Http2Accounting, AnOpenConnectionsPendingStreamsAreNotCaught) {
    Event latest = frame(1'000'000, Direction::In, CT_HTTP2_HEADERS, 3);
    latest.http2.pending = 0b1;
    latest.http2.pending_base = 3;
    Connection conn;
    conn.role = Role::Server;
    judge_http2(conn, std::vector<Event>{latest});
    EXPECT_TRUE(conn.http2->caught.empty());
    EXPECT_FALSE(conn.http2->counted_at_close);
    EXPECT_EQ(conn.verdict, Verdict::Open);
}

// The counts the kernel wrote when the recording ended with the connection open.
Event end_counts(uint64_t ts_ns, uint32_t streams_opened, uint64_t pending) {
    Event event =
        close_counts(ts_ns, pending, 2 * streams_opened - 1, Http2RecordKind::End);
    event.http2.peer.streams_opened = streams_opened;
    event.http2.peer.last_stream_id = 2 * streams_opened - 1;
    return event;
}

TEST(Http2Accounting, TheCountsAtTheEndOfTheRecordingAreAnOpenConnectionsCounts) {
    // A stream opened after an idle gap (written), then 40 more counted, not written.
    Event idle_stream = frame(1'000'000, Direction::In, CT_HTTP2_HEADERS, 1);
    idle_stream.http2.peer.streams_opened = 1;
    // The end's counts arrive before a frame of the same instant or later: still the latest.
    const std::vector<Event> records = {end_counts(9'000'000, 41, 0b1), idle_stream};
    Connection conn;
    conn.role = Role::Server;
    judge_http2(conn, records);
    EXPECT_EQ(conn.http2->peer.streams_opened, 41u);
    EXPECT_FALSE(conn.http2->counted_at_close);
    // The stream in flight at the end was not caught by a close: none happened.
    EXPECT_TRUE(conn.http2->caught.empty());
    EXPECT_EQ(conn.verdict, Verdict::Open);
}

TEST(Http2Accounting, TheCloseCountsOutrankTheEnds) {
    // A socket that closed but was not yet freed when the recording ended.
    Event close = close_counts(2'000'000, 0, 1);
    close.http2.peer.streams_opened = 3;
    const Http2Connection h2 =
        account_http2(std::vector<Event>{close, end_counts(9'000'000, 5, 0)});
    EXPECT_EQ(h2.peer.streams_opened, 3u);
    EXPECT_TRUE(h2.counted_at_close);
}

TEST(Http2Accounting, ThePeersGoawayMakesThePeerTheCloser) {
    std::vector<Event> records = {
        frame(1'000'000, Direction::In, CT_HTTP2_GOAWAY, 0),
        frame(1'500'000, Direction::Out, CT_HTTP2_GOAWAY, 0),
        close_counts(2'000'000, 0, 1),
    };
    for (Event& event : records) event.http2.peer.goaway_count = 1;
    Connection conn = closed_by_this_host(CloseHow::Fin);  // this host's FIN came first
    judge_http2(conn, records);
    EXPECT_EQ(conn.http2->peer_goaway_ns, 1'000'000u);
    EXPECT_EQ(conn.verdict, Verdict::PeerIdleClose);
}

TEST(Http2Accounting, LostTrackIsCarried) {
    Event counts = close_counts(1'000, 0, 1);
    counts.http2.lost_in = true;
    const Http2Connection h2 = account_http2(std::vector<Event>{counts});
    EXPECT_TRUE(h2.lost);
}

// A 9-byte frame header: length, type, flags, stream id.
std::string frame_header(uint32_t length, uint8_t type, uint32_t stream_id) {
    const char bytes[] = {static_cast<char>(length >> 16), static_cast<char>(length >> 8),
                          static_cast<char>(length),       static_cast<char>(type),
                          0x4,
                          static_cast<char>(stream_id >> 24), static_cast<char>(stream_id >> 16),
                          static_cast<char>(stream_id >> 8),  static_cast<char>(stream_id)};
    return std::string(bytes, sizeof(bytes));
}

TEST(Http2FrameHeaders, WalksWholeHeadersAndStopsAtTheEnd) {
    const std::string bytes = frame_header(2, CT_HTTP2_HEADERS, 0x80000003) + "ab" +
                              frame_header(100, 0x0 /* DATA */, 3) + "cut";
    const std::vector<Http2FrameHeader> headers = http2_frame_headers(bytes);
    ASSERT_EQ(headers.size(), 2u);
    EXPECT_EQ(headers[0].type, CT_HTTP2_HEADERS);
    EXPECT_EQ(headers[0].stream_id, 3u);  // the reserved bit is not part of the id
    EXPECT_EQ(headers[0].length, 2u);
    EXPECT_EQ(headers[1].length, 100u);
    EXPECT_TRUE(http2_frame_headers(frame_header(0, 1, 1).substr(0, 8)).empty());
}

Event late_reset(uint64_t ts_ns, std::string payload) {
    Event event;
    event.kind = EventKind::ResetSent;
    event.ts_ns = ts_ns;
    event.payload = std::move(payload);
    return event;
}

TEST(Http2Accounting, AStreamOpenedAfterTheSocketWasGoneIsReadFromItsReset) {
    std::vector<Event> records = {
        frame(2'000'000'000, Direction::Out, CT_HTTP2_GOAWAY, 0),
        close_counts(2'000'300'000, 0, 1),
    };
    set_local_goaway(records, 1);
    const std::vector<Event> late = {
        late_reset(2'500'000'000, frame_header(4, CT_HTTP2_HEADERS, 3) + "hpak")};
    Connection conn = closed_by_this_host(CloseHow::Fin);
    judge_http2(conn, records, late);
    ASSERT_EQ(conn.http2->caught.size(), 1u);
    EXPECT_EQ(conn.http2->caught[0].id, 3u);
    EXPECT_EQ(conn.http2->caught[0].fate, StreamFate::AfterGoaway);
    EXPECT_EQ(conn.http2->caught[0].opened_ns, 2'500'000'000u);
    EXPECT_EQ(conn.verdict, Verdict::LocalCloseRace);

    // Not when the peer's bytes were mid-frame at the close: its segment is no frame start.
    records.back().http2.in_skip = 10;
    Connection mid_frame = closed_by_this_host(CloseHow::Fin);
    judge_http2(mid_frame, records, late);
    EXPECT_TRUE(mid_frame.http2->caught.empty());
}

TEST(Http2Accounting, ErrorCodesByName) {
    EXPECT_EQ(http2_error_name(0), "NO_ERROR");
    EXPECT_EQ(http2_error_name(kHttp2RefusedStream), "REFUSED_STREAM");
    EXPECT_EQ(http2_error_name(0xd), "HTTP_1_1_REQUIRED");
    EXPECT_EQ(http2_error_name(0x99), "0x99");
}

}  // namespace
}  // namespace closetrace
