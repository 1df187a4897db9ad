// Trace and wire text made safe for a terminal or a report, shared by every command; and the
// string helpers every parser shares.
#pragma once

#include <algorithm>
#include <string>
#include <string_view>

#include "closetrace/model.h"

namespace closetrace {

// Wire and trace bytes on a terminal: control and non-ASCII bytes could rewrite the screen, so
// each becomes '?'.
std::string printable(std::string_view text);
// "10.0.0.1:51234", "[fd00::1]:51234".
std::string endpoint_text(const Endpoint& endpoint);
// "POST /pay"; what an opaque request was. Wire bytes made printable.
std::string request_line(const Request& request);
// A caught HTTP/2 stream: "HTTP/2 stream 7 POST /helloworld.Greeter/SayHello after_goaway",
// with "grpc-status 14" when its response had one, or why its names are missing
// ("HTTP/2 stream 7 after_goaway (names not recorded)"). Wire bytes made printable.
std::string stream_line(const Http2Stream& stream);
// The same without the "HTTP/2 stream" prefix: "7 POST /helloworld.Greeter/SayHello after_goaway".
std::string stream_name(const Http2Stream& stream);

// The two below are inline: the HTTP head parser calls them for every header field.

// Without the spaces and tabs around it (HTTP's optional whitespace).
inline std::string_view trim_whitespace(std::string_view text) {
    while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
    while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
    return text;
}

// `text` equals `lowercase` (which is all lower case) but for the case of ASCII letters.
inline bool equals_ignoring_case(std::string_view text, std::string_view lowercase) {
    const auto to_lower = [](char c) {
        return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    };
    return text.size() == lowercase.size() &&
           std::equal(text.begin(), text.end(), lowercase.begin(),
                      [&](char a, char b) { return to_lower(a) == b; });
}

}  // namespace closetrace
