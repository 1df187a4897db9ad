// HTTP/2 over cleartext: from the kernel's HTTP/2 records of one connection (its frame counts,
// the frames that mattered) to what the connection record says, the streams its close caught.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "closetrace/event.h"
#include "closetrace/http2_names.h"
#include "closetrace/model.h"

namespace closetrace {

// RFC 9113, section 7.
inline constexpr uint32_t kHttp2NoError = 0x0;
inline constexpr uint32_t kHttp2RefusedStream = 0x7;

// The error code's name ("NO_ERROR", "REFUSED_STREAM", ...), or its number in hex for one the
// RFC does not define.
std::string http2_error_name(uint32_t code);

struct Http2FrameHeader {
    uint32_t length = 0;
    uint8_t type = 0;
    uint8_t flags = 0;
    uint32_t stream_id = 0;
};

// The frame headers wholly within `bytes`, which start with one (untrusted bytes: nothing is
// read past them).
std::vector<Http2FrameHeader> http2_frame_headers(std::string_view bytes);

// What is kept of a connection's HTTP/2 records until its close (the tracker's compact form):
// a few facts of each frame record and the counts of the latest record, the close's once it came.
struct Http2Frame {
    uint64_t ts_ns = 0;
    uint64_t other_last_frame_ns = 0;  // the last frame of the side that did not send it, then
    uint32_t stream_id = 0;
    uint32_t error_code = 0;  // GOAWAY, RST_STREAM
    Direction direction = Direction::In;
    uint8_t frame_type = 0;
};

struct Http2Facts {
    std::vector<Http2Frame> frames;  // in arrival order
    Http2Record counts;  // the latest record's (at the close once written, else at the end)
    uint64_t counts_ns = 0;
    bool any = false;
    bool lost = false;              // a direction's frames no longer followed, in any record
    bool pending_overflow = false;  // in any record
    // Recorded with --http2-names: the decoder its header block fragments are fed to.
    std::unique_ptr<Http2NameDecoder> names;

    // An Http2 event, in any order.
    void add(const Event& event);
};

// `facts`: the connection's HTTP/2 records. A stream is caught when it was opened above the
// other side's GOAWAY last-stream-id, reset with REFUSED_STREAM, or still awaiting its answer in
// the counts written at the close. `late_segments`: the resets this host sent after its socket
// was gone (ResetSent events, in time order), whose trigger is the peer's next segment: when the
// close left the peer's bytes at a frame boundary, the streams its first one opens are caught
// too (the kernel's hooks no longer see that socket). The caught streams are named by
// `facts.names`, when recorded.
Http2Connection account_http2(const Http2Facts& facts, std::span<const Event> late_segments = {});
// The same of the connection's Http2 events.
Http2Connection account_http2(std::span<const Event> records,
                              std::span<const Event> late_segments = {});

// An HTTP/2 connection (`conn.http2` set from `facts`) judged by its frames: its requests are
// its streams, so the HTTP/1 view of its bytes (opaque messages) is dropped. The closer is the
// side of the first GOAWAY (else of the first FIN or RST); a stream caught after a GOAWAY or
// refused makes a race, one unanswered at the close an in-flight loss. A GOAWAY without error
// is an idle timer's, and the idle is from the other side's last frame before it.
void judge_http2(Connection& conn, const Http2Facts& facts,
                 std::span<const Event> late_segments = {});
void judge_http2(Connection& conn, std::span<const Event> records,
                 std::span<const Event> late_segments = {});

}  // namespace closetrace
