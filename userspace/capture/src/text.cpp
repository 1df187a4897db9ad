#include "closetrace/text.h"

#include <algorithm>

#include <fmt/format.h>

#include "closetrace/http.h"

namespace closetrace {

std::string printable(std::string_view text) {
    std::string safe;
    safe.reserve(text.size());
    for (const char c : text) {
        const auto byte = static_cast<unsigned char>(c);
        safe += (byte >= 0x20 && byte < 0x7f) ? c : '?';
    }
    return safe;
}

std::string endpoint_text(const Endpoint& endpoint) {
    const std::string_view addr = plain_address(endpoint.addr);
    const bool ipv6 = addr.find(':') != std::string_view::npos;
    return ipv6 ? fmt::format("[{}]:{}", printable(addr), endpoint.port)
                : fmt::format("{}:{}", printable(addr), endpoint.port);
}

std::string request_line(const Request& request) {
    if (request.opaque || !request.method) return "(not HTTP: TLS?)";
    if (http::is_http2_preface(*request.method, request.target.value_or(""))) {
        return "PRI * (HTTP/2 cleartext; its streams are not decoded)";
    }
    return printable(fmt::format("{} {}", *request.method, request.target.value_or("")));
}

std::string stream_name(const Http2Stream& stream) {
    switch (stream.names) {
        case StreamNames::NotRecorded:
            return fmt::format("{} {} (names not recorded)", stream.id, to_string(stream.fate));
        case StreamNames::NotDecodable:
            return fmt::format("{} {} (names not decodable: a header block was missed)", stream.id,
                               to_string(stream.fate));
        case StreamNames::Decoded: break;
    }
    std::string text = fmt::format("{} {} {} {}", stream.id, printable(stream.method.value_or("-")),
                                   printable(stream.path.value_or("-")), to_string(stream.fate));
    if (stream.grpc_status) text += fmt::format(" grpc-status {}", *stream.grpc_status);
    return text;
}

std::string stream_line(const Http2Stream& stream) { return "HTTP/2 stream " + stream_name(stream); }

}  // namespace closetrace
