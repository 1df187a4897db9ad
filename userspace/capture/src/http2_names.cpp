#include "closetrace/http2_names.h"

#include <nghttp2/nghttp2.h>

#include <charconv>
#include <string_view>

#include "closetrace.h"
#include "closetrace/http.h"

namespace closetrace {
namespace {

// RFC 9113, section 6: the flags that shape a header block fragment's frame.
constexpr uint8_t kEndHeaders = 0x4;
constexpr uint8_t kPadded = 0x8;
constexpr uint8_t kPriority = 0x20;
constexpr std::size_t kPriorityLen = 5;
constexpr std::size_t kPromisedIdLen = 4;

// A block above this is not assembled (RFC 9113 leaves it to SETTINGS_MAX_HEADER_LIST_SIZE).
constexpr std::size_t kMaxBlock = 256 * 1024;
// Fragments held behind a missing one before it counts as lost.
constexpr std::size_t kMaxWaiting = 64;
// Streams whose names are kept: the kernel's window of streams awaiting an answer, and more.
constexpr std::size_t kMaxNamed = 256;
// The dynamic table an encoder may grow to: above HPACK's 4 KiB default, which a peer's
// SETTINGS_HEADER_TABLE_SIZE (not followed here) may raise.
constexpr std::size_t kMaxTableSize = 64 * 1024;

struct InflaterDelete {
    void operator()(nghttp2_hd_inflater* inflater) const { nghttp2_hd_inflate_del(inflater); }
};

std::size_t side_index(Direction direction) { return direction == Direction::In ? 0 : 1; }

}  // namespace

struct Http2NameDecoder::Fragment {
    uint32_t stream_id = 0;
    uint8_t frame_type = 0;
    uint8_t frame_flags = 0;
    bool whole = false;
    std::string bytes;
};

struct Http2NameDecoder::Side {
    std::unique_ptr<nghttp2_hd_inflater, InflaterDelete> inflater;
    uint32_t next_sequence = 0;
    std::map<uint32_t, Fragment> waiting;  // by sequence, behind a missing one
    std::string block;                     // the header block being assembled
    uint32_t block_stream = 0;             // its stream: a PUSH_PROMISE's promised one
    bool in_block = false;                 // a CONTINUATION is due
    uint32_t last_decoded_stream = 0;
    std::optional<uint32_t> missed_from;   // from this stream on, nothing is decoded

    void miss(uint32_t stream_id) {
        if (!missed_from) missed_from = stream_id;
        waiting.clear();
        block.clear();
        in_block = false;
    }
};

Http2NameDecoder::Http2NameDecoder(bool full_target) : full_target_(full_target) {
    for (auto& side : sides_) {
        side = std::make_unique<Side>();
        nghttp2_hd_inflater* inflater = nullptr;
        if (nghttp2_hd_inflate_new(&inflater) != 0) {
            side->miss(1);  // out of memory: nothing of it is decoded
            continue;
        }
        side->inflater.reset(inflater);
        nghttp2_hd_inflate_change_table_size(inflater, kMaxTableSize);
    }
}

Http2NameDecoder::~Http2NameDecoder() = default;
Http2NameDecoder::Http2NameDecoder(Http2NameDecoder&&) noexcept = default;
Http2NameDecoder& Http2NameDecoder::operator=(Http2NameDecoder&&) noexcept = default;

void Http2NameDecoder::add(const Event& event) {
    Side& side = *sides_[side_index(event.direction)];
    if (side.missed_from) return;
    const uint32_t sequence = event.fragment.sequence;
    if (sequence < side.next_sequence) return;  // seen already
    Fragment fragment{.stream_id = event.fragment.stream_id,
                      .frame_type = event.fragment.frame_type,
                      .frame_flags = event.fragment.frame_flags,
                      .whole = event.fragment.whole,
                      .bytes = event.payload};
    if (sequence > side.next_sequence) {
        side.waiting.emplace(sequence, std::move(fragment));
        if (side.waiting.size() > kMaxWaiting) side.miss(side.last_decoded_stream + 1);
        return;
    }
    decode(side, fragment);
    ++side.next_sequence;
    // The ones that waited for it (a miss on the way drops the rest).
    while (!side.missed_from && !side.waiting.empty() &&
           side.waiting.begin()->first == side.next_sequence) {
        const Fragment waited = std::move(side.waiting.begin()->second);
        side.waiting.erase(side.waiting.begin());
        decode(side, waited);
        ++side.next_sequence;
    }
}

void Http2NameDecoder::decode(Side& side, const Fragment& fragment) {
    if (side.missed_from) return;
    if (!fragment.whole) return side.miss(fragment.stream_id);
    std::string_view bytes = fragment.bytes;
    std::size_t begin = 0;
    std::size_t padding = 0;
    const bool padded = (fragment.frame_flags & kPadded) != 0;
    if (fragment.frame_type == CT_HTTP2_CONTINUATION) {
        if (!side.in_block || fragment.stream_id != side.block_stream) {
            return side.miss(fragment.stream_id);
        }
    } else {
        if (side.in_block) return side.miss(fragment.stream_id);
        if (padded) {
            if (bytes.empty()) return side.miss(fragment.stream_id);
            padding = static_cast<uint8_t>(bytes[0]);
            begin = 1;
        }
        side.block_stream = fragment.stream_id;
        if (fragment.frame_type == CT_HTTP2_HEADERS && (fragment.frame_flags & kPriority)) {
            begin += kPriorityLen;
        } else if (fragment.frame_type == CT_HTTP2_PUSH_PROMISE) {
            if (bytes.size() < begin + kPromisedIdLen) return side.miss(fragment.stream_id);
            side.block_stream = 0;  // a pushed stream: decoded for the table, not named
            begin += kPromisedIdLen;
        }
        side.in_block = true;
    }
    if (bytes.size() < begin + padding) return side.miss(fragment.stream_id);
    side.block.append(bytes.substr(begin, bytes.size() - begin - padding));
    if (side.block.size() > kMaxBlock) return side.miss(fragment.stream_id);
    if (fragment.frame_flags & kEndHeaders) decode_block(side);
}

void Http2NameDecoder::decode_block(Side& side) {
    const uint32_t stream_id = side.block_stream;
    const auto* in = reinterpret_cast<const uint8_t*>(side.block.data());
    std::size_t left = side.block.size();
    for (;;) {
        nghttp2_nv field;
        int flags = 0;
        const ssize_t used =
            nghttp2_hd_inflate_hd2(side.inflater.get(), &field, &flags, in, left, 1);
        if (used < 0) return side.miss(stream_id);
        in += used;
        left -= static_cast<std::size_t>(used);
        if (flags & NGHTTP2_HD_INFLATE_EMIT) {
            name_field(stream_id,
                       {reinterpret_cast<const char*>(field.name), field.namelen},
                       {reinterpret_cast<const char*>(field.value), field.valuelen});
        }
        if (flags & NGHTTP2_HD_INFLATE_FINAL) {
            nghttp2_hd_inflate_end_headers(side.inflater.get());
            break;
        }
        if (!(flags & NGHTTP2_HD_INFLATE_EMIT) && left == 0) return side.miss(stream_id);
    }
    side.block.clear();
    side.in_block = false;
    if (stream_id != 0) side.last_decoded_stream = std::max(side.last_decoded_stream, stream_id);
}

void Http2NameDecoder::name_field(uint32_t stream_id, std::string_view name,
                                  std::string_view value) {
    if (stream_id == 0) return;
    if (name == "user-agent" && health_checker_.empty()) {
        health_checker_ = http::health_checker(value);
        return;
    }
    if (name != ":method" && name != ":path" && name != "grpc-status") return;
    Names& names = names_[stream_id];
    if (name == ":method") {
        names.method = std::string(value);
    } else if (name == ":path") {
        names.path = std::string(full_target_ ? value : http::public_target(value));
    } else {
        uint32_t status = 0;
        const auto [end, error] = std::from_chars(value.data(), value.data() + value.size(), status);
        if (error == std::errc{} && end == value.data() + value.size()) names.grpc_status = status;
    }
    if (names_.size() > kMaxNamed) names_.erase(names_.begin());
}

void Http2NameDecoder::give_up_waiting() {
    for (auto& side : sides_) {
        if (!side->waiting.empty()) side->miss(side->last_decoded_stream + 1);
    }
}

void Http2NameDecoder::name(Http2Stream& stream) {
    give_up_waiting();
    stream.names = StreamNames::NotDecodable;
    const auto found = names_.find(stream.id);
    if (found == names_.end()) return;
    const Names& names = found->second;
    if (names.method || names.path) stream.names = StreamNames::Decoded;
    stream.method = names.method;
    stream.path = names.path;
    stream.grpc_status = names.grpc_status;
}

std::optional<uint32_t> Http2NameDecoder::undecodable_from() {
    give_up_waiting();
    std::optional<uint32_t> first;
    for (const auto& side : sides_) {
        if (side->missed_from && (!first || *side->missed_from < *first)) {
            first = side->missed_from;
        }
    }
    return first;
}

}  // namespace closetrace
