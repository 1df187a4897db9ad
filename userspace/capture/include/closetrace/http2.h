// HTTP/2 over cleartext: from the kernel's HTTP/2 records of one connection (its frame counts,
// the frames that mattered) to what the connection record says, the streams its close caught.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "closetrace/event.h"
#include "closetrace/model.h"

namespace closetrace {

// RFC 9113, section 7.
inline constexpr uint32_t kHttp2NoError = 0x0;
inline constexpr uint32_t kHttp2RefusedStream = 0x7;

// The error code's name ("NO_ERROR", "REFUSED_STREAM", ...), or its number in hex for one the
// RFC does not define.
std::string http2_error_name(uint32_t code);

// `records`: the connection's Http2 events, in time order. A stream is caught when it was
// opened above the other side's GOAWAY last-stream-id, reset with REFUSED_STREAM, or still
// awaiting its answer in the counts written at the close.
Http2Connection account_http2(std::span<const Event> records);

// An HTTP/2 connection (`conn.http2` set from `records`) judged by its frames: its requests are
// its streams, so the HTTP/1 view of its bytes (opaque messages) is dropped. The closer is the
// side of the first GOAWAY (else of the first FIN or RST); a stream caught after a GOAWAY or
// refused makes a race, one unanswered at the close an in-flight loss. A GOAWAY without error
// is an idle timer's, and the idle is from the other side's last frame before it.
void judge_http2(Connection& conn, std::span<const Event> records);

}  // namespace closetrace
