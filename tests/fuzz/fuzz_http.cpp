// libFuzzer target for the HTTP/1.x head parser: any bytes may arrive from the wire.
#include "closetrace/http.h"

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string_view>

namespace {

using closetrace::http::Message;
using closetrace::http::MessageKind;

void require(bool invariant) {
    if (!invariant) {
        std::abort();
    }
}

// Views may be empty (then their pointer means nothing) or lie wholly within the input.
bool lies_within(std::string_view part, std::string_view whole) {
    if (part.empty()) {
        return true;
    }
    const std::less_equal<const char*> not_after;
    return not_after(whole.data(), part.data()) &&
           not_after(part.data() + part.size(), whole.data() + whole.size());
}

void check_message(const Message& message, std::string_view input, bool pipelined) {
    require(lies_within(message.method, input));
    require(lies_within(message.target, input));
    require(lies_within(message.version, input));
    require(message.version.empty() || message.version.size() == 8);

    // What default output shows of the target: a piece of it, with no query, fragment, path
    // parameters or credentials.
    const std::string_view shown = closetrace::http::public_target(message.target);
    require(lies_within(shown, message.target));
    require(shown.find_first_of("?#;") == std::string_view::npos);
    const std::size_t scheme_end = shown.find("://");
    if (scheme_end != std::string_view::npos && shown.find('/') == scheme_end + 1) {
        const std::size_t authority = scheme_end + 3;
        const std::size_t path = shown.find('/', authority);
        require(shown.substr(authority, path - authority).find('@') == std::string_view::npos);
    }

    switch (message.kind) {
        case MessageKind::Opaque:
        case MessageKind::TlsControl:
            require(!pipelined);
            require(message.method.empty() && message.target.empty() && message.version.empty());
            require(message.status == 0 && !message.line_complete);
            break;
        case MessageKind::Request:
            require(!message.method.empty() && message.method.size() <= 32);
            require(message.status == 0);
            require(!message.line_complete || (!message.target.empty() && !message.version.empty()));
            require(!pipelined || !message.version.empty());
            break;
        case MessageKind::Response:
            require(message.method.empty() && message.target.empty());
            require(!message.version.empty());
            require(message.status == 0 || (message.status >= 100 && message.status <= 999));
            require(!message.line_complete || message.status != 0);
            require(!closetrace::http::is_interim_status(message.status) ||
                    (message.status >= 100 && message.status <= 199));
            break;
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view input(reinterpret_cast<const char*>(data), size);
    const closetrace::http::ParseResult result = closetrace::http::parse(input);

    require(result.count <= closetrace::http::kMaxMessages);
    require((result.count == 0) == input.empty());
    for (std::size_t i = 0; i < result.count; ++i) {
        check_message(result.messages[i], input, i > 0);
    }
    // Pipelined messages come in wire order: each starts after the previous one's line.
    for (std::size_t i = 1; i < result.count; ++i) {
        const Message& previous = result.messages[i - 1];
        const Message& current = result.messages[i];
        require(previous.line_complete);
        const std::string_view current_start =
            current.kind == MessageKind::Request ? current.method : current.version;
        require(std::less<const char*>()(previous.version.data(), current_start.data()));
    }
    return 0;
}
