#include "closetrace/http.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <limits>
#include <optional>

#include "closetrace.h"
#include "closetrace/text.h"

// How a start line is judged, also when the capture limit cut it (the buffer ends inside it):
// - a request needs at least "METHOD SP"; a response at least "HTTP/1.x SP". Anything shorter
//   ("GE", "HTTP/1.1") could be the start of anything and is Opaque;
// - everything present must be consistent with a request or status line, then the parts that
//   are complete are reported: the target when SP or the buffer end terminates it, the version
//   when all its 8 characters are present, the status when its 3 digits are;
// - a complete line (ending in LF) must be a valid request or status line, else Opaque: methods
//   are case-sensitive tokens, so "get / HTTP/1.1" is a request (its server will reject it) but
//   "hello world" is not;
// - HTTP/2's connection preface ("PRI * HTTP/2.0", RFC 9113 section 3.4) is named a request with
//   that method and target, so that an h2c connection is not taken for TLS; the frames after it
//   are not decoded;
// - these rules apply to the first message, which the kernel saw start a message; a pipelined
//   message after it must in addition show its whole version ("GET /b HTTP/1.1").

namespace closetrace::http {
namespace {

constexpr std::size_t kMaxMethodLength = 32;
constexpr std::string_view kVersionPrefix = "HTTP/1.";
constexpr std::size_t kVersionLength = kVersionPrefix.size() + 1;  // "HTTP/1." and one digit
constexpr std::string_view kHttp2PrefaceLine = "PRI * HTTP/2.0\r\n";

constexpr bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

constexpr bool is_alpha(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// Byte classes, one bit each, looked up: the head parser asks them of nearly every byte it reads.
enum ByteClass : uint8_t {
    kTokenByte = 1,   // RFC 9110 tchar: the characters of a method or a header field name
    // Any visible byte: request targets on the wire are not always valid URIs (raw UTF-8, stray
    // characters), and the server sees them as they are.
    kTargetByte = 2,
    kTextByte = 4,  // reason phrase and field value bytes: HTAB, SP, VCHAR, obs-text
};

constexpr std::array<uint8_t, 256> kByteClasses = [] {
    constexpr std::string_view kTokenSymbols = "!#$%&'*+-.^_`|~";
    std::array<uint8_t, 256> classes{};
    for (std::size_t byte = 0; byte < classes.size(); ++byte) {
        const char c = static_cast<char>(byte);
        if (is_digit(c) || is_alpha(c) || kTokenSymbols.find(c) != std::string_view::npos) {
            classes[byte] |= kTokenByte;
        }
        if (byte > 0x20 && byte != 0x7f) classes[byte] |= kTargetByte | kTextByte;
        if (c == '\t' || c == ' ') classes[byte] |= kTextByte;
    }
    return classes;
}();

bool in_class(char c, ByteClass byte_class) {
    return (kByteClasses[static_cast<unsigned char>(c)] & byte_class) != 0;
}

bool is_tchar(char c) {
    return in_class(c, kTokenByte);
}

bool is_target_char(char c) {
    return in_class(c, kTargetByte);
}

bool is_text_char(char c) {
    return in_class(c, kTextByte);
}

// How much of a fixed syntax element the buffer holds.
enum class Match {
    Invalid,  // contradicts the syntax
    Partial,  // the buffer ends before the element does; consistent so far
    Complete,
};

Match match_version(std::string_view text) {
    if (text.size() < kVersionLength) {
        return kVersionPrefix.starts_with(text) ? Match::Partial : Match::Invalid;
    }
    return text.starts_with(kVersionPrefix) && is_digit(text[kVersionPrefix.size()])
               ? Match::Complete
               : Match::Invalid;
}

// A line ends in CRLF or, tolerated, a bare LF.
struct LineEnd {
    Match match = Match::Invalid;
    std::size_t length = 0;  // 1 or 2 when Complete
};

LineEnd match_line_end(std::string_view text) {
    if (text.empty() || text == "\r") {
        return {Match::Partial};
    }
    if (text.starts_with("\r\n")) {
        return {Match::Complete, 2};
    }
    if (text.front() == '\n') {
        return {Match::Complete, 1};
    }
    return {};
}

// A start line that is consistent with HTTP/1.x as far as the buffer goes.
struct StartLine {
    Message message;
    std::size_t length = 0;  // bytes up to and including the LF, when message.line_complete
};

// Checks that the line in `bytes` ends at `offset`, and marks it complete when the buffer holds
// its end.
std::optional<StartLine> finish_line(StartLine line, std::string_view bytes, std::size_t offset) {
    const LineEnd end = match_line_end(bytes.substr(offset));
    if (end.match == Match::Invalid) {
        return std::nullopt;
    }
    if (end.match == Match::Complete) {
        line.message.line_complete = true;
        line.length = offset + end.length;
    }
    return line;
}

std::optional<StartLine> parse_request_line(std::string_view bytes) {
    std::size_t method_end = 0;
    while (method_end < bytes.size() && method_end <= kMaxMethodLength &&
           is_tchar(bytes[method_end])) {
        ++method_end;
    }
    if (method_end == 0 || method_end > kMaxMethodLength || method_end == bytes.size() ||
        bytes[method_end] != ' ') {
        return std::nullopt;
    }
    StartLine line;
    line.message.kind = MessageKind::Request;
    line.message.method = bytes.substr(0, method_end);

    const std::size_t target_begin = method_end + 1;
    std::size_t target_end = target_begin;
    while (target_end < bytes.size() && is_target_char(bytes[target_end])) {
        ++target_end;
    }
    line.message.target = bytes.substr(target_begin, target_end - target_begin);
    if (target_end == bytes.size()) {
        return line;
    }
    if (target_end == target_begin || bytes[target_end] != ' ') {
        return std::nullopt;
    }
    const std::size_t version_begin = target_end + 1;
    const std::string_view version_text = bytes.substr(version_begin);
    const Match version = match_version(version_text);
    if (version == Match::Invalid) {
        return std::nullopt;
    }
    if (version == Match::Partial) {
        return line;
    }
    line.message.version = version_text.substr(0, kVersionLength);
    return finish_line(line, bytes, version_begin + kVersionLength);
}

std::optional<StartLine> parse_status_line(std::string_view bytes) {
    if (match_version(bytes) != Match::Complete || bytes.size() == kVersionLength ||
        bytes[kVersionLength] != ' ') {
        return std::nullopt;
    }
    StartLine line;
    line.message.kind = MessageKind::Response;
    line.message.version = bytes.substr(0, kVersionLength);

    constexpr std::size_t kStatusDigits = 3;
    const std::size_t status_begin = kVersionLength + 1;
    const std::string_view status_text = bytes.substr(status_begin, kStatusDigits);
    for (const char c : status_text) {
        if (!is_digit(c)) {
            return std::nullopt;
        }
    }
    if (!status_text.empty() && status_text.front() == '0') {
        return std::nullopt;
    }
    if (status_text.size() < kStatusDigits) {
        return line;
    }
    int status = 0;
    for (const char c : status_text) {
        status = status * 10 + (c - '0');
    }
    line.message.status = status;

    // The reason phrase is optional: "HTTP/1.1 200\r\n" and "HTTP/1.1 200 \r\n" are both seen.
    std::size_t reason_end = status_begin + kStatusDigits;
    if (reason_end < bytes.size() && bytes[reason_end] == ' ') {
        while (reason_end < bytes.size() && is_text_char(bytes[reason_end])) {
            ++reason_end;
        }
    }
    return finish_line(line, bytes, reason_end);
}

std::optional<StartLine> parse_start_line(std::string_view bytes) {
    // "HTTP/1.1" is itself a token: a line starting like a version is only ever a status line.
    if (bytes.starts_with("HTTP/")) {
        return parse_status_line(bytes);
    }
    return parse_request_line(bytes);
}

// RFC 9112 lets a recipient ignore empty lines before a start line; some clients send a stray
// CRLF after a body.
std::size_t skip_empty_lines(std::string_view bytes, std::size_t offset) {
    while (offset < bytes.size() && (bytes[offset] == '\r' || bytes[offset] == '\n')) {
        ++offset;
    }
    return offset;
}

// Parses a decimal number (digits only: a Content-Length value). Values beyond `limit` are
// reported as limit + 1: such a body cannot lie within the buffer anyway, and the cap keeps the
// arithmetic in range.
std::optional<std::size_t> parse_decimal(std::string_view value, std::size_t limit) {
    if (value.empty()) {
        return std::nullopt;
    }
    std::size_t length = 0;
    for (const char c : value) {
        if (!is_digit(c)) {
            return std::nullopt;
        }
        length = length * 10 + static_cast<std::size_t>(c - '0');
        if (length > limit) {
            length = limit + 1;
        }
    }
    return length;
}

// The framing a head announces for its body.
struct BodyFraming {
    std::size_t body_begin = 0;  // offset just past the empty line that ends the head
    std::optional<std::size_t> content_length;
    bool length_trusted = true;      // false for a repeated or invalid Content-Length
    bool transfer_encoding = false;  // any Transfer-Encoding
    bool chunked = false;            // a Transfer-Encoding naming chunked
};

// The `timeout` parameter of a Keep-Alive field ("timeout=5, max=100"), in seconds; nullopt
// when it has none or it is no number. Above the largest uint32_t it is that.
std::optional<uint32_t> keep_alive_timeout(std::string_view value) {
    while (!value.empty()) {
        const std::size_t comma = value.find(',');
        const std::string_view parameter = trim_whitespace(value.substr(0, comma));
        value = comma == std::string_view::npos ? std::string_view() : value.substr(comma + 1);
        const std::size_t equals = parameter.find('=');
        if (equals == std::string_view::npos ||
            !equals_ignoring_case(trim_whitespace(parameter.substr(0, equals)), "timeout")) {
            continue;
        }
        constexpr std::size_t kMax = std::numeric_limits<uint32_t>::max();
        const std::optional<std::size_t> seconds =
            parse_decimal(trim_whitespace(parameter.substr(equals + 1)), kMax);
        if (!seconds) return std::nullopt;
        return static_cast<uint32_t>(std::min(*seconds, kMax));
    }
    return std::nullopt;
}

// Whether a list-valued header field ("keep-alive, Upgrade") holds `lowercase_token`.
bool has_token(std::string_view value, std::string_view lowercase_token) {
    while (!value.empty()) {
        const std::size_t comma = value.find(',');
        if (equals_ignoring_case(trim_whitespace(value.substr(0, comma)), lowercase_token)) {
            return true;
        }
        value = comma == std::string_view::npos ? std::string_view() : value.substr(comma + 1);
    }
    return false;
}

// Reads the header fields from `offset` (just past the start line) to the empty line into
// `framing`, noting in `message` those it reports (as far as whole fields lie in the buffer).
// Incomplete when the head does not end within the buffer, Malformed for a malformed field.
ReadState read_head(std::string_view bytes, std::size_t offset, Message& message,
                    BodyFraming& framing) {
    while (true) {
        const std::size_t newline = bytes.find('\n', offset);
        if (newline == std::string_view::npos) {
            return ReadState::Incomplete;
        }
        std::string_view field = bytes.substr(offset, newline - offset);
        if (field.ends_with('\r')) {
            field.remove_suffix(1);
        }
        offset = newline + 1;
        if (field.empty()) {
            framing.body_begin = offset;
            return ReadState::Complete;
        }
        // The name is tchars up to the colon (which is none): read in one pass.
        std::size_t colon = 0;
        while (colon < field.size() && is_tchar(field[colon])) {
            ++colon;
        }
        if (colon == 0 || colon == field.size() || field[colon] != ':') {
            return ReadState::Malformed;
        }
        const std::string_view name = field.substr(0, colon);
        const std::string_view value = trim_whitespace(field.substr(colon + 1));
        for (const char c : value) {
            if (!is_text_char(c)) {
                return ReadState::Malformed;
            }
        }
        if (equals_ignoring_case(name, "connection")) {
            message.connection_close = message.connection_close || has_token(value, "close");
            message.keep_alive = message.keep_alive || has_token(value, "keep-alive");
        } else if (equals_ignoring_case(name, "keep-alive")) {
            message.keep_alive_timeout_s = keep_alive_timeout(value);
        } else if (equals_ignoring_case(name, "user-agent")) {
            message.user_agent = value;
        } else if (equals_ignoring_case(name, "transfer-encoding")) {
            framing.transfer_encoding = true;
            framing.chunked = framing.chunked || has_token(value, "chunked");
        } else if (equals_ignoring_case(name, "content-length")) {
            if (framing.content_length) {
                framing.length_trusted = false;
            }
            framing.content_length = parse_decimal(value, bytes.size());
            if (!framing.content_length) {
                framing.length_trusted = false;
            }
        }
    }
}

// RFC 9112 6.3: these responses never have a body, whatever their Content-Length says.
bool response_has_no_body(int status) {
    return (status >= 100 && status <= 199) || status == 204 || status == 304;
}

// Reads the head of the message whose complete start line `line` begins at `offset` (its
// header facts go into line.message), and tells where the next message starts, when this one's
// head and body both end within the buffer.
std::optional<std::size_t> next_message_offset(std::string_view bytes, std::size_t offset,
                                               StartLine& line) {
    // Only a framing the head states once can be followed (chunked bodies are not).
    BodyFraming framing;
    if (read_head(bytes, offset + line.length, line.message, framing) != ReadState::Complete ||
        !framing.length_trusted || framing.transfer_encoding) {
        return std::nullopt;
    }
    std::size_t body_length = framing.content_length.value_or(0);
    if (line.message.kind == MessageKind::Response) {
        if (response_has_no_body(line.message.status)) {
            body_length = 0;
        } else if (!framing.content_length) {
            // Without Content-Length a response body runs until the connection closes.
            return std::nullopt;
        }
    }
    if (body_length > bytes.size() - framing.body_begin) {
        return std::nullopt;
    }
    return framing.body_begin + body_length;
}

// Whether `bytes` are whole TLS records, each an alert or too short for an HTTP message
// (closetrace.h, CT_TLS_*).
bool is_tls_control(std::string_view bytes) {
    std::size_t at = 0;
    while (bytes.size() - at >= CT_TLS_RECORD_HEADER_LEN) {
        const auto byte = [&](std::size_t i) { return static_cast<uint8_t>(bytes[at + i]); };
        const uint8_t type = byte(0);
        const std::size_t length = (std::size_t{byte(3)} << 8) | byte(4);
        const bool control = type == CT_TLS_ALERT ||
                             (type == CT_TLS_APPLICATION_DATA && length <= CT_TLS_LONGEST_CONTROL);
        if (!control || byte(1) != 3 || byte(2) > 4) return false;
        if (bytes.size() - at - CT_TLS_RECORD_HEADER_LEN < length) return false;
        at += CT_TLS_RECORD_HEADER_LEN + length;
    }
    return at == bytes.size();
}

}  // namespace

ParseResult parse(std::string_view bytes) {
    ParseResult result;
    if (bytes.empty()) {
        return result;
    }
    if (bytes.starts_with(kHttp2PrefaceLine)) {
        Message& preface = result.messages[result.count++];
        preface.kind = MessageKind::Request;
        preface.method = bytes.substr(0, 3);
        preface.target = bytes.substr(4, 1);
        preface.version = bytes.substr(6, 8);
        preface.line_complete = true;
        return result;
    }
    std::size_t offset = skip_empty_lines(bytes, 0);
    std::optional<StartLine> line = parse_start_line(bytes.substr(offset));
    if (!line) {
        result.count = 1;  // one Opaque message, as Message is by default
        if (is_tls_control(bytes)) result.messages[0].kind = MessageKind::TlsControl;
        return result;
    }
    while (true) {
        Message& message = result.messages[result.count++];
        if (!line->message.line_complete) {
            message = line->message;
            return result;
        }
        const std::optional<std::size_t> next = next_message_offset(bytes, offset, *line);
        message = line->message;
        if (!next || result.count == kMaxMessages) {
            return result;
        }
        offset = skip_empty_lines(bytes, *next);
        if (offset == bytes.size()) {
            return result;
        }
        // A further message must show its version: bytes after a head may be a body the head
        // did not announce, and "hello world" cut by the buffer end is no request.
        line = parse_start_line(bytes.substr(offset));
        if (!line || line->message.version.empty()) {
            return result;
        }
    }
}

bool is_http2_preface(std::string_view method, std::string_view target) {
    return method == "PRI" && target == "*";
}

std::string_view public_target(std::string_view target) {
    // Credentials go before the query is cut: a password may hold a ';' or a '?'.
    const std::size_t scheme_end = target.find("://");
    if (scheme_end != std::string_view::npos && target.find('/') == scheme_end + 1) {
        // The absolute form (a request to a proxy) may carry them in its authority.
        const std::size_t authority = scheme_end + 3;
        const std::size_t path = target.find('/', authority);
        if (target.substr(authority, path - authority).find('@') != std::string_view::npos) {
            target = path == std::string_view::npos ? std::string_view() : target.substr(path);
        }
    } else if (!target.starts_with('/')) {
        // So may the authority form (CONNECT user:password@host:443): no host has an '@'.
        const std::size_t at = target.rfind('@');
        if (at != std::string_view::npos) target = target.substr(at + 1);
    }
    return target.substr(0, target.find_first_of("?#;"));
}

bool is_interim_status(int status) {
    return status >= 100 && status <= 199 && status != 101;
}

bool asks_to_close(const Message& message) {
    return message.connection_close || (message.version == "HTTP/1.0" && !message.keep_alive);
}

std::string_view health_checker(std::string_view user_agent) {
    for (const std::string_view checker : kHealthCheckers) {
        if (user_agent.starts_with(checker)) return checker;
    }
    return {};
}

ReadState read_response_head(std::string_view bytes, ResponseHead& head) {
    if (bytes.find('\n') == std::string_view::npos) {
        return ReadState::Incomplete;
    }
    std::optional<StartLine> line = parse_start_line(bytes);
    if (!line || line->message.kind != MessageKind::Response || !line->message.line_complete ||
        line->message.status == 0) {
        return ReadState::Malformed;
    }
    BodyFraming framing;
    const ReadState state = read_head(bytes, line->length, line->message, framing);
    if (state != ReadState::Complete) {
        return state;
    }
    if (!framing.length_trusted) {
        return ReadState::Malformed;
    }
    head = ResponseHead{.status = line->message.status,
                        .body_begin = framing.body_begin,
                        .content_length = framing.content_length,
                        .chunked = framing.chunked};
    return ReadState::Complete;
}

ReadState decode_chunked(std::string_view bytes, std::string& body, std::size_t max_chunk) {
    body.clear();
    while (true) {
        const std::size_t line_end = bytes.find("\r\n");
        if (line_end == std::string_view::npos) {
            return ReadState::Incomplete;
        }
        // The size, then optional extensions after ';'.
        const std::string_view size_text =
            trim_whitespace(bytes.substr(0, std::min(line_end, bytes.find(';'))));
        std::size_t size = 0;
        const auto [end, error] =
            std::from_chars(size_text.data(), size_text.data() + size_text.size(), size, 16);
        if (error != std::errc{} || end != size_text.data() + size_text.size() ||
            size_text.empty() || size > max_chunk) {
            return ReadState::Malformed;
        }
        bytes.remove_prefix(line_end + 2);
        if (size == 0) {
            // Optional trailer fields, then an empty line.
            if (bytes.starts_with("\r\n") || bytes.find("\r\n\r\n") != std::string_view::npos) {
                return ReadState::Complete;
            }
            return ReadState::Incomplete;
        }
        if (bytes.size() < size + 2) {
            return ReadState::Incomplete;
        }
        if (bytes.substr(size, 2) != "\r\n") {
            return ReadState::Malformed;
        }
        body.append(bytes.substr(0, size));
        bytes.remove_prefix(size + 2);
    }
}

}  // namespace closetrace::http
