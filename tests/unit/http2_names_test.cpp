// HTTP/2 stream names (Http2NameDecoder): header block fragments fed in order, HPACK's dynamic
// table across blocks, CONTINUATION, and what a missed block makes of the streams after it. The
// blocks are encoded by nghttp2's HPACK encoder, as a peer's would be.
#include <gtest/gtest.h>
#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "closetrace.h"
#include "closetrace/http2_names.h"

namespace closetrace {
namespace {

constexpr uint8_t kEndStream = 0x1;
constexpr uint8_t kEndHeaders = 0x4;
constexpr uint8_t kPadded = 0x8;
constexpr uint8_t kPriority = 0x20;

using Fields = std::vector<std::pair<std::string, std::string>>;

// One side's HPACK encoder: its blocks refer to the fields it sent before (dynamic table).
class Encoder {
public:
    Encoder() {
        nghttp2_hd_deflater* deflater = nullptr;
        EXPECT_EQ(nghttp2_hd_deflate_new(&deflater, 4096), 0);
        deflater_.reset(deflater);
    }

    std::string block(const Fields& fields) {
        std::vector<nghttp2_nv> nva;
        for (const auto& [name, value] : fields) {
            nva.push_back({.name = reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
                           .value = reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())),
                           .namelen = name.size(),
                           .valuelen = value.size(),
                           .flags = NGHTTP2_NV_FLAG_NONE});
        }
        std::string out(nghttp2_hd_deflate_bound(deflater_.get(), nva.data(), nva.size()), '\0');
        const ssize_t written =
            nghttp2_hd_deflate_hd(deflater_.get(), reinterpret_cast<uint8_t*>(out.data()),
                                  out.size(), nva.data(), nva.size());
        EXPECT_GT(written, 0);
        out.resize(written > 0 ? static_cast<std::size_t>(written) : 0);
        return out;
    }

private:
    struct Delete {
        void operator()(nghttp2_hd_deflater* deflater) const { nghttp2_hd_deflate_del(deflater); }
    };
    std::unique_ptr<nghttp2_hd_deflater, Delete> deflater_;
};

Fields request(const std::string& path) {
    return {{":method", "POST"},
            {":scheme", "http"},
            {":path", path},
            {":authority", "backend:50051"},
            {"content-type", "application/grpc"},
            {"te", "trailers"}};
}

Event fragment(Direction direction, uint32_t sequence, uint32_t stream_id, std::string payload,
               uint8_t flags = kEndHeaders, uint8_t type = CT_HTTP2_HEADERS, bool whole = true) {
    Event event;
    event.kind = EventKind::Http2Fragment;
    event.direction = direction;
    event.fragment = {.sequence = sequence,
                      .stream_id = stream_id,
                      .frame_type = type,
                      .frame_flags = flags,
                      .whole = whole};
    event.payload = whole ? std::move(payload) : std::string();
    return event;
}

Http2Stream named(Http2NameDecoder& decoder, uint32_t id) {
    Http2Stream stream{.id = id};
    decoder.name(stream);
    return stream;
}

TEST(Http2Names, ALaterRequestsPathFromTheDynamicTableIsDecoded) {
    // RFC 7541 by hand (nghttp2's encoder never indexes :path; grpc-js's does): `:method POST`
    // (static index 3), then `:path` as a literal added to the dynamic table (static name
    // index 4) ...
    const std::string path = "/helloworld.Greeter/SayHello";
    const std::string first = std::string("\x83\x44", 2) + static_cast<char>(path.size()) + path;
    // ... which the next request names by its dynamic index alone (62, the first entry).
    const std::string second("\x83\xbe", 2);

    Http2NameDecoder decoder(false);
    decoder.add(fragment(Direction::In, 0, 1, first));
    decoder.add(fragment(Direction::In, 1, 3, second));
    const Http2Stream stream = named(decoder, 3);
    EXPECT_EQ(stream.names, StreamNames::Decoded);
    EXPECT_EQ(stream.method, "POST");
    EXPECT_EQ(stream.path, "/helloworld.Greeter/SayHello");
    EXPECT_EQ(stream.grpc_status, std::nullopt);
    EXPECT_EQ(decoder.undecodable_from(), std::nullopt);
}

TEST(Http2Names, FragmentsOutOfOrderWaitForTheOnesBefore) {
    Encoder client;
    const std::string first = client.block(request("/a.B/C"));
    const std::string second = client.block(request("/a.B/C"));
    Http2NameDecoder decoder(false);
    decoder.add(fragment(Direction::In, 1, 3, second));
    decoder.add(fragment(Direction::In, 0, 1, first));
    EXPECT_EQ(named(decoder, 3).path, "/a.B/C");
    EXPECT_EQ(named(decoder, 1).path, "/a.B/C");
}

TEST(Http2Names, AMissedBlockLeavesTheLaterStreamsUndecodable) {
    Encoder client;
    const std::string first = client.block(request("/a.B/C"));
    client.block(request("/a.B/D"));  // stream 3: its record lost
    const std::string third = client.block(request("/a.B/C"));
    Http2NameDecoder decoder(false);
    decoder.add(fragment(Direction::In, 0, 1, first));
    decoder.add(fragment(Direction::In, 2, 5, third));
    EXPECT_EQ(named(decoder, 1).names, StreamNames::Decoded);
    const Http2Stream later = named(decoder, 5);
    EXPECT_EQ(later.names, StreamNames::NotDecodable);
    EXPECT_EQ(later.path, std::nullopt);
    EXPECT_EQ(named(decoder, 3).names, StreamNames::NotDecodable);
    // Above the last stream decoded that way: which block was lost is not known.
    EXPECT_EQ(decoder.undecodable_from(), 2u);
}

TEST(Http2Names, AFragmentNotCopiedWholeStopsItsDirectionAtItsStream) {
    // In order, and in reverse: the later ones wait for it, then stop with it.
    for (const bool reversed : {false, true}) {
        Encoder client;
        std::vector<Event> fragments;
        fragments.push_back(fragment(Direction::In, 0, 1, client.block(request("/a.B/C"))));
        fragments.push_back(fragment(Direction::In, 1, 3, client.block(request("/a.B/C")),
                                     kEndHeaders, CT_HTTP2_HEADERS, false));
        fragments.push_back(fragment(Direction::In, 2, 5, client.block(request("/a.B/C"))));
        if (reversed) std::ranges::reverse(fragments);
        Http2NameDecoder decoder(false);
        for (const Event& event : fragments) decoder.add(event);
        EXPECT_EQ(named(decoder, 1).names, StreamNames::Decoded) << reversed;
        EXPECT_EQ(named(decoder, 5).names, StreamNames::NotDecodable) << reversed;
        EXPECT_EQ(decoder.undecodable_from(), 3u) << reversed;
    }
}

TEST(Http2Names, ABlockContinuedInContinuationFramesIsDecodedWhole) {
    Encoder client;
    const std::string block = client.block(request("/a.B/Continued"));
    const std::size_t half = block.size() / 2;
    Http2NameDecoder decoder(false);
    decoder.add(fragment(Direction::In, 0, 1, block.substr(0, half), 0));
    decoder.add(fragment(Direction::In, 1, 1, block.substr(half), kEndHeaders,
                         CT_HTTP2_CONTINUATION));
    EXPECT_EQ(named(decoder, 1).path, "/a.B/Continued");
    EXPECT_EQ(decoder.undecodable_from(), std::nullopt);
}

TEST(Http2Names, AContinuationOfAnotherStreamIsNotDecoded) {
    Encoder client;
    const std::string block = client.block(request("/a.B/C"));
    Http2NameDecoder decoder(false);
    decoder.add(fragment(Direction::In, 0, 1, block.substr(0, 4), 0));
    decoder.add(fragment(Direction::In, 1, 3, block.substr(4), kEndHeaders, CT_HTTP2_CONTINUATION));
    EXPECT_EQ(named(decoder, 1).names, StreamNames::NotDecodable);
    EXPECT_EQ(decoder.undecodable_from(), 3u);
}

TEST(Http2Names, PaddingAndPriorityAreNotPartOfTheBlock) {
    Encoder client;
    const std::string block = client.block(request("/a.B/Padded"));
    // Pad length 3, then the priority's stream dependency and weight, the block, the padding.
    const std::string payload = std::string("\x03", 1) + std::string(5, '\0') + block + "xyz";
    Http2NameDecoder decoder(false);
    decoder.add(fragment(Direction::In, 0, 1, payload, kEndHeaders | kPadded | kPriority));
    EXPECT_EQ(named(decoder, 1).path, "/a.B/Padded");
}

// The path of a connection's first request of `path`, as recorded with --full-target or not.
std::optional<std::string> path_named(const std::string& path, bool full_target) {
    Encoder client;
    Http2NameDecoder decoder(full_target);
    decoder.add(fragment(Direction::In, 0, 1, client.block(request(path))));
    return named(decoder, 1).path;
}

TEST(Http2Names, APathLosesItsQueryStringUnlessFullTarget) {
    EXPECT_EQ(path_named("/pay?card=4111", false), "/pay");
    EXPECT_EQ(path_named("/pay?card=4111", true), "/pay?card=4111");
}

TEST(Http2Names, TheResponsesGrpcStatusComesFromItsTrailers) {
    Encoder client;
    Encoder server;
    Http2NameDecoder decoder(false);
    decoder.add(fragment(Direction::In, 0, 1, client.block(request("/a.B/C"))));
    decoder.add(fragment(Direction::Out, 0, 1,
                         server.block({{":status", "200"}, {"content-type", "application/grpc"}})));
    decoder.add(fragment(Direction::Out, 1, 1, server.block({{"grpc-status", "14"}}),
                         kEndHeaders | kEndStream));
    const Http2Stream stream = named(decoder, 1);
    EXPECT_EQ(stream.names, StreamNames::Decoded);
    EXPECT_EQ(stream.grpc_status, 14u);
}

TEST(Http2Names, AnAlbsGrpcHealthCheckIsKnownByItsUserAgent) {
    Encoder checker;
    Fields fields = request("/AWS.ALB/healthcheck");
    fields.emplace_back("user-agent", "ELB-HealthChecker/2.0 grpc-node-js/1.14.7");
    Http2NameDecoder decoder(false);
    EXPECT_EQ(decoder.health_checker(), "");
    decoder.add(fragment(Direction::In, 0, 1, checker.block(fields)));
    EXPECT_EQ(decoder.health_checker(), "ELB-HealthChecker");
    EXPECT_EQ(named(decoder, 1).path, "/AWS.ALB/healthcheck");
}

TEST(Http2Names, BytesThatAreNoHpackMakeTheStreamUndecodable) {
    Http2NameDecoder decoder(false);
    // An index far past both tables.
    decoder.add(fragment(Direction::In, 0, 1, std::string("\xff\xff\xff\xff\x0f", 5)));
    EXPECT_EQ(named(decoder, 1).names, StreamNames::NotDecodable);
    EXPECT_EQ(decoder.undecodable_from(), 1u);
}

}  // namespace
}  // namespace closetrace
