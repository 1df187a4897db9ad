// libFuzzer target for the HTTP/2 name decoder: header block fragments are wire bytes, and the
// kernel's records say what frame each one came from (type, flags, stream, sequence). The input
// is a run of records, each a 9-byte head (direction, sequence step, stream id, type, flags,
// whole, length) and its payload.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "closetrace/http2_names.h"

namespace {

void require(bool invariant) {
    if (!invariant) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using closetrace::Direction;
    const bool full_target = (size & 1) != 0;
    closetrace::Http2NameDecoder decoder(full_target);
    uint32_t sequences[2] = {0, 0};
    constexpr std::size_t kHead = 9;
    while (size >= kHead) {
        closetrace::Event event;
        event.kind = closetrace::EventKind::Http2Fragment;
        const std::size_t side = data[0] & 1;
        event.direction = side ? Direction::Out : Direction::In;
        // Mostly in order; now and then a step back or a gap.
        sequences[side] += static_cast<uint32_t>(static_cast<int8_t>(data[1]) % 3);
        event.fragment = {.sequence = sequences[side]++,
                          .stream_id = static_cast<uint32_t>(data[2]) | (uint32_t{data[3]} << 8),
                          .frame_type = data[4],
                          .frame_flags = data[5],
                          .whole = (data[6] & 1) != 0};
        const std::size_t length = std::min<std::size_t>(
            (static_cast<std::size_t>(data[7]) << 8) | data[8], size - kHead);
        event.payload.assign(reinterpret_cast<const char*>(data + kHead), length);
        decoder.add(event);
        data += kHead + length;
        size -= kHead + length;
    }
    for (uint32_t id = 1; id < 16; id += 2) {
        closetrace::Http2Stream stream{.id = id};
        decoder.name(stream);
        require((stream.names == closetrace::StreamNames::Decoded) ==
                (stream.method.has_value() || stream.path.has_value()));
        // A query string is never kept unless asked for.
        if (stream.path && !full_target) {
            require(stream.path->find_first_of("?#") == std::string::npos);
        }
    }
    decoder.undecodable_from();
    return 0;
}
