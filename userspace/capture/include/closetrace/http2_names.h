// HTTP/2 stream names (record --http2-names): an HPACK decoder per direction of a connection
// (nghttp2's), fed the header block fragments the kernel copied, in order. HPACK compresses each
// block against a dynamic table both ends update with every block, so one block missed (a lost
// ring record, a fragment the kernel could not copy whole) makes that direction's later blocks
// undecodable: from there on its streams' names are missing, never guessed.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "closetrace/event.h"
#include "closetrace/model.h"

namespace closetrace {

class Http2NameDecoder {
public:
    // `full_target`: keep a :path's query string (record --full-target); else it is cut at '?'.
    explicit Http2NameDecoder(bool full_target);
    ~Http2NameDecoder();
    Http2NameDecoder(Http2NameDecoder&&) noexcept;
    Http2NameDecoder& operator=(Http2NameDecoder&&) noexcept;

    // An Http2Fragment event. A direction's fragments may come out of order by a few (CPUs
    // interleave in the ring buffer): they wait for the ones before them by `sequence`.
    void add(const Event& fragment);

    // The stream's names as decoded so far: a fragment still missing (a lost record) counts
    // as missed. `stream` gets names, method, path and grpc_status.
    void name(Http2Stream& stream);

    // The first stream whose header block could not be decoded, either way; null: none.
    std::optional<uint32_t> undecodable_from();

    // The known health checker (http::health_checker) whose User-Agent a request carried, as
    // an ALB's gRPC health checks do; empty for none.
    std::string_view health_checker() const { return health_checker_; }

private:
    struct Side;      // one direction's decoder
    struct Fragment;  // as decoding needs it, kept while it waits for one before it
    struct Names {
        std::optional<std::string> method;
        std::optional<std::string> path;
        std::optional<uint32_t> grpc_status;
    };

    void decode(Side& side, const Fragment& fragment);
    void decode_block(Side& side);
    void name_field(uint32_t stream_id, std::string_view name, std::string_view value);
    // The fragments still waiting for a lost one: that direction is undecodable from there.
    void give_up_waiting();

    bool full_target_;
    std::unique_ptr<Side> sides_[2];   // [0] received, [1] sent
    std::map<uint32_t, Names> names_;  // the latest streams named, by id
    std::string_view health_checker_;  // one of http::kHealthCheckers
};

}  // namespace closetrace
