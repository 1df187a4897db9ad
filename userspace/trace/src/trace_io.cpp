#include "closetrace/trace_io.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <concepts>
#include <cstring>
#include <limits>
#include <span>
#include <system_error>

#include <fmt/format.h>
#include <nlohmann/json.hpp>  // its double-to-text conversion, for the digits traces have
#include <simdjson.h>

#include "closetrace/http.h"

namespace closetrace {
namespace {

// ---------------------------------------------------------------------------------------------
// Strings as bytes

// A trace string's bytes from its text as the JSON parser decodes it, UTF-8: each code point
// U+0000..U+00FF is the byte of that value (JsonLine::quoted); nullopt for one above.
std::optional<std::string> utf8_to_bytes(std::string_view text) {
    const auto is_ascii = [](char c) { return static_cast<unsigned char>(c) < 0x80; };
    if (std::all_of(text.begin(), text.end(), is_ascii)) return std::string(text);
    std::string bytes;
    bytes.reserve(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
        const auto lead = static_cast<unsigned char>(text[i]);
        if (lead < 0x80) {
            bytes += text[i];
            continue;
        }
        // U+0080..U+00FF are C2 80..C3 BF in UTF-8; any other lead byte starts a larger one.
        if ((lead != 0xC2 && lead != 0xC3) || i + 1 == text.size()) return std::nullopt;
        const auto continuation = static_cast<unsigned char>(text[++i]);
        if ((continuation & 0xC0) != 0x80) return std::nullopt;
        bytes += static_cast<char>(((lead & 0x1F) << 6) | (continuation & 0x3F));
    }
    return bytes;
}

// Untrusted text for an error message: one line of printable ASCII, not too long.
std::string excerpt_for_error(std::string_view text) {
    constexpr std::size_t kMaxShown = 64;
    std::string shown;
    for (const char c : text.substr(0, kMaxShown)) {
        const auto byte = static_cast<unsigned char>(c);
        if (byte >= 0x20 && byte < 0x7F) {
            shown += c;
        } else {
            shown += fmt::format("\\x{:02x}", byte);
        }
    }
    if (text.size() > kMaxShown) shown += "...";
    return shown;
}

// ---------------------------------------------------------------------------------------------
// Enumerations: the values each one has, for parsing and for naming the choices in errors.

constexpr Initiator kInitiators[] = {Initiator::Local, Initiator::Peer, Initiator::Unknown};
constexpr CloseHow kCloseHows[] = {CloseHow::Fin, CloseHow::Rst};
constexpr Outcome kOutcomes[] = {Outcome::Completed,      Outcome::UnansweredAtClose,
                                 Outcome::AfterLocalClose, Outcome::AfterPeerClose,
                                 Outcome::InFlight,        Outcome::UnreadAtClose};
constexpr CloseAsked kCloseAskedValues[] = {CloseAsked::Request, CloseAsked::Response};
constexpr Initiator kSides[] = {Initiator::Local, Initiator::Peer};
constexpr Role kRoles[] = {Role::Server, Role::Client, Role::Unknown};
constexpr Direction kDirections[] = {Direction::In, Direction::Out};
constexpr EventKind kEventKinds[] = {EventKind::State, EventKind::ResetSent,
                                     EventKind::ResetReceived, EventKind::Message,
                                     EventKind::Http2};
constexpr StreamFate kStreamFates[] = {StreamFate::AfterGoaway, StreamFate::Refused,
                                       StreamFate::UnansweredAtClose};
constexpr StreamNames kStreamNamesValues[] = {StreamNames::Decoded, StreamNames::NotRecorded,
                                              StreamNames::NotDecodable};
constexpr std::string_view kFamilies[] = {"ipv4", "ipv6"};

// For the enumerations that have no *_from_string function.
template <typename Enum>
std::optional<Enum> find_by_name(std::span<const Enum> values, std::string_view name) {
    for (const Enum value : values) {
        if (name == to_string(value)) return value;
    }
    return std::nullopt;
}

const char* family_name(int family) { return family == AF_INET6 ? "ipv6" : "ipv4"; }

// ---------------------------------------------------------------------------------------------
// Writing: each line straight into the caller's buffer, in the form nlohmann's
// dump(ensure_ascii) gave it when lines were built as trees (docs/trace-format.md): no spaces,
// members in the documented order, which makes traces easier to read and to grep.

// A member's name as a line holds it after another member, `,"name":`, made at compile time: the
// writer's own names, printable ASCII with nothing to escape, each stored as one fixed-size copy.
class MemberName {
public:
    static constexpr std::size_t kCopied = 32;  // bytes stored per name, whatever its length

    // Implicit, so that a member is named by its literal: json.name("id").
    template <std::size_t Size>
    consteval MemberName(const char (&member)[Size]) : size_(Size + 3) {
        static_assert(Size + 3 <= kCopied, "a member name longer than MemberName holds");
        text_[0] = ',';
        text_[1] = '"';
        for (std::size_t i = 0; i + 1 < Size; ++i) text_[2 + i] = member[i];
        text_[Size + 1] = '"';
        text_[Size + 2] = ':';
    }

    // Without its comma when it is the first of its object; kCopied bytes can be read from it.
    const char* text(bool after_value) const { return text_.data() + (after_value ? 0 : 1); }
    std::size_t size(bool after_value) const { return size_ - (after_value ? 0 : 1); }

private:
    std::array<char, kCopied + 1> text_{};
    std::size_t size_;  // of `,"name":` (Size counts the literal's NUL)
};

// One line's JSON, appended to `out`: values are separated by commas as they come. Each piece is
// stored straight into room taken past the line's end (the string grown in steps, zero-filled),
// which the destructor gives back: `out` holds the line once the JsonLine is gone.
class JsonLine {
public:
    explicit JsonLine(std::string& out) : out_(out), size_(out.size()) {}
    ~JsonLine() { out_.resize(size_); }
    JsonLine(const JsonLine&) = delete;
    JsonLine& operator=(const JsonLine&) = delete;

    void begin_object() {
        separate();
        put('{');
        after_value_ = false;
    }
    void end_object() {
        put('}');
        after_value_ = true;
    }
    void begin_array() {
        separate();
        put('[');
        after_value_ = false;
    }
    void end_array() {
        put(']');
        after_value_ = true;
    }

    JsonLine& name(const MemberName& member) {
        std::memcpy(room(MemberName::kCopied), member.text(after_value_), MemberName::kCopied);
        size_ += member.size(after_value_);
        after_value_ = false;
        return *this;
    }
    // A name taken from data (a summary's counts).
    JsonLine& data_name(std::string_view member) {
        separate();
        quoted(member);
        put(':');
        after_value_ = false;
        return *this;
    }

    void string(std::string_view bytes) {
        separate();
        quoted(bytes);
    }
    template <std::integral Integer>
    void number(Integer value) {
        separate();
        constexpr std::size_t kMaxDigits = std::numeric_limits<Integer>::digits10 + 2;  // and sign
        char* at = room(kMaxDigits);
        size_ += static_cast<std::size_t>(std::to_chars(at, at + kMaxDigits, value).ptr - at);
    }
    // The shortest text that reads back as the same double, by nlohmann's own conversion: the
    // digits traces have always had. A non-finite value is null, as nlohmann wrote it.
    void number(double value) {
        if (!std::isfinite(value)) return null();
        separate();
        constexpr std::size_t kMaxText = 64;
        char* at = room(kMaxText);
        const char* end = nlohmann::detail::to_chars(at, at + kMaxText, value);
        size_ += static_cast<std::size_t>(end - at);
    }
    void boolean(bool value) {
        separate();
        put(value ? std::string_view("true") : std::string_view("false"));
    }
    void null() {
        separate();
        put("null");
    }

    void nullable(const std::optional<std::string>& bytes) {
        if (bytes) return string(*bytes);
        null();
    }
    template <typename Number>
    void nullable(const std::optional<Number>& number) {
        if (number) return this->number(*number);
        null();
    }
    // An optional enumeration, by its name.
    template <typename Enum>
    void nullable_name(const std::optional<Enum>& value) {
        if (value) return string(to_string(*value));
        null();
    }

private:
    // At least `bytes` of room at the line's end, where the next piece is stored.
    char* room(std::size_t bytes) {
        if (out_.size() - size_ < bytes) grow(bytes);
        return out_.data() + size_;
    }
    // Out of line, so that the pieces' own stores stay small enough to inline.
    [[gnu::noinline]] void grow(std::size_t bytes) {
        constexpr std::size_t kStep = 1024;  // a conn line is about this long
        out_.resize(size_ + std::max(bytes, kStep));
    }
    void put(char c) {
        *room(1) = c;
        ++size_;
    }
    void put(std::string_view text) {
        std::memcpy(room(text.size()), text.data(), text.size());
        size_ += text.size();
    }

    // A trace string is bytes: each byte is the code point of the same value, written as itself
    // when printable ASCII, else escaped (\" \\ \b \f \n \r \t, any other as \u00xx), so that any
    // byte string round-trips and every line is pure ASCII. Wire bytes (targets, methods) are
    // untrusted: every string a line holds goes through here.
    void quoted(std::string_view bytes) {
        constexpr std::size_t kEscapedMax = 6;  // \u00xx
        constexpr char kHex[] = "0123456789abcdef";
        // By table: strings are short and many, the test is per byte.
        static constexpr std::array<bool, 256> kAsItself = [] {
            std::array<bool, 256> as_itself{};
            for (int byte = 0x20; byte < 0x7F; ++byte) {
                as_itself[byte] = byte != '"' && byte != '\\';
            }
            return as_itself;
        }();
        char* const begin = room(bytes.size() * kEscapedMax + 2);
        char* at = begin;
        *at++ = '"';
        for (const char c : bytes) {
            const auto byte = static_cast<unsigned char>(c);
            if (kAsItself[byte]) {
                *at++ = c;
                continue;
            }
            *at++ = '\\';
            switch (byte) {
                case '"': *at++ = '"'; break;
                case '\\': *at++ = '\\'; break;
                case '\b': *at++ = 'b'; break;
                case '\f': *at++ = 'f'; break;
                case '\n': *at++ = 'n'; break;
                case '\r': *at++ = 'r'; break;
                case '\t': *at++ = 't'; break;
                default:
                    std::memcpy(at, "u00", 3);
                    at[3] = kHex[byte >> 4];
                    at[4] = kHex[byte & 0xF];
                    at += 5;
            }
        }
        *at++ = '"';
        size_ += static_cast<std::size_t>(at - begin);
    }

    // Called before each value: a comma when it follows another value of its object or array
    // (not when it opens the line, its object or array, or is a member's value).
    void separate() {
        if (after_value_) put(',');
        after_value_ = true;
    }

    std::string& out_;
    std::size_t size_;  // of `out_` up to the end of what has been written
    bool after_value_ = false;  // the last thing written was a value: the next needs a comma
};

// A whole line into `out`: the JsonLine gives back the room it took once `write` is done.
template <typename Value>
void append_line(std::string& out, void (*write)(JsonLine&, const Value&), const Value& value) {
    JsonLine json(out);
    write(json, value);
}

void endpoint_json(JsonLine& json, std::string_view addr, uint16_t port) {
    json.begin_object();
    json.name("addr").string(addr);
    json.name("port").number(port);
    json.end_object();
}

void container_json(JsonLine& json, const ContainerRef& container) {
    json.begin_object();
    json.name("runtime").string(container.runtime);
    json.name("id").string(container.id);
    json.name("name").nullable(container.name);
    json.name("task_id").nullable(container.task_id);
    json.name("pod_uid").nullable(container.pod_uid);
    json.name("ecs");
    if (container.ecs) {
        json.begin_object();
        json.name("task_arn").string(container.ecs->task_arn);
        json.name("family").string(container.ecs->family);
        json.name("revision").string(container.ecs->revision);
        json.end_object();
    } else {
        json.null();
    }
    json.end_object();
}

void counts_json(JsonLine& json, const std::map<std::string, uint64_t>& counts) {
    json.begin_object();
    for (const auto& [name, count] : counts) json.data_name(name).number(count);
    json.end_object();
}

// The HTTP messages a captured payload starts, without its bytes: what a verdict needs of them.
void heads_json(JsonLine& json, std::string_view payload, bool full_target) {
    json.begin_array();
    const http::ParseResult parsed = payload.empty() ? http::ParseResult{} : http::parse(payload);
    for (std::size_t i = 0; i < parsed.count; ++i) {
        const http::Message& message = parsed.messages[i];
        json.begin_object();
        switch (message.kind) {
            case http::MessageKind::Request:
                json.name("method").string(message.method);
                json.name("target").string(full_target ? message.target
                                                       : http::public_target(message.target));
                break;
            case http::MessageKind::Response:
                json.name("status");
                if (message.status != 0) {
                    json.number(message.status);
                } else {
                    json.null();
                }
                break;
            case http::MessageKind::Opaque: json.name("opaque").boolean(true); break;
            case http::MessageKind::TlsControl:
                json.name("opaque").boolean(true);
                json.name("tls_control").boolean(true);
                break;
        }
        json.end_object();
    }
    json.end_array();
}

// ---------------------------------------------------------------------------------------------
// Reading: simdjson On-Demand, each line parsed where it lies in LineSource's padded buffer.
// Every object is read in one pass over its members, in whatever order they come (the writer's
// order costs one name comparison each); a member no rule names is skipped unread, so of its
// value only the brackets and strings are checked, as simdjson's first stage checks every line.

namespace ondemand = simdjson::ondemand;

// Several traces in one stream (`zcat DIR/*.gz | closetrace report -`).
constexpr const char* kGiveTheFiles =
    "give the files themselves (gzip files and directories are read as they are)";

// A problem within one line; the reader adds the file name and line number.
struct LineError {
    std::string message;
    std::string what_to_do{};  // where it is not the reader's usual advice
};

// The line is not valid JSON (simdjson's error); a truncated last line is one.
struct JsonError {
    simdjson::error_code code;
};

// Where a value sits in its line, e.g. "conn.requests[2].outcome"; made into text only when
// something is wrong.
struct MemberPath {
    const MemberPath* parent = nullptr;
    std::string_view name;  // empty for an array element
    std::size_t index = 0;

    std::string text() const {
        std::string prefix = parent ? parent->text() : std::string();
        if (name.empty()) return prefix + fmt::format("[{}]", index);
        return prefix.empty() ? excerpt_for_error(name) : prefix + "." + excerpt_for_error(name);
    }
};

[[noreturn]] void fail(const MemberPath& path, std::string_view problem) {
    throw LineError{fmt::format("{}: {}", path.text(), problem)};
}

// A step through the line's structure (the next member or element) that only JSON which is
// not valid can fail.
template <typename T>
T valid(simdjson::simdjson_result<T>&& result) {
    T out{};
    if (const simdjson::error_code error = std::move(result).get(out)) throw JsonError{error};
    return out;
}

// A member's name, unescaped. The writer's names have no escapes: those are taken where they lie.
std::string_view member_name(ondemand::field& field) {
    const char* const start = field.key().raw();
    const char* end = start;
    while (*end != '"' && *end != '\\') ++end;  // simdjson has checked that the string closes
    if (*end == '"') return {start, static_cast<std::size_t>(end - start)};
    return valid(field.unescaped_key());
}

// The text between a string value's quotes as it lies in the line, unchecked; nullopt for any
// other value. The value stays unread, for the object's iteration to step over.
std::optional<std::string_view> raw_string(ondemand::value& value) {
    // The token runs to the next ',', ':', ']' or '}': the closing quote, maybe white space.
    std::string_view token = value.raw_json_token();
    while (!token.empty() && (token.back() == ' ' || token.back() == '\t' ||
                              token.back() == '\r' || token.back() == '\n')) {
        token.remove_suffix(1);
    }
    if (token.size() < 2 || token.front() != '"' || token.back() != '"') return std::nullopt;
    return token.substr(1, token.size() - 2);
}

// A string value that is its own bytes (printable ASCII, no escapes), as it lies in the line:
// most are, and reading them so costs no unescaping copy. nullopt for any other value.
std::optional<std::string_view> plain_string(ondemand::value& value) {
    const std::optional<std::string_view> text = raw_string(value);
    if (!text) return std::nullopt;
    // No early exit: the compiler vectorises the loop.
    bool plain = true;
    for (const char c : *text) {
        const auto byte = static_cast<unsigned char>(c);
        plain &= byte != '\\' && byte >= 0x20 && byte < 0x80;
    }
    if (!plain) return std::nullopt;
    return text;
}

// A string value unescaped (in the parser's buffer), or nullopt when the value is no string.
std::optional<std::string_view> string_value(ondemand::value& value) {
    if (std::optional<std::string_view> plain = plain_string(value)) return plain;
    std::string_view text;
    if (value.get_string().get(text) != simdjson::SUCCESS) return std::nullopt;
    return text;
}

bool is_null(ondemand::value& value) {
    bool null = false;
    return value.is_null().get(null) == simdjson::SUCCESS && null;
}

// How a JSON value becomes a C++ value of type T: decode() fails on a wrong type or an out of
// range number, and expected() says what would have been right.
template <typename T>
struct ValueCodec;

template <typename T>
    requires std::unsigned_integral<T> && (!std::same_as<T, bool>)
struct ValueCodec<T> {
    static bool decode(ondemand::value& value, T& out) {
        uint64_t number = 0;
        if (value.get_uint64().get(number) != simdjson::SUCCESS) return false;
        if (number > std::numeric_limits<T>::max()) return false;
        out = static_cast<T>(number);
        return true;
    }
    static std::string expected() {
        return fmt::format("an integer from 0 to {}", std::numeric_limits<T>::max());
    }
};

template <std::signed_integral T>
struct ValueCodec<T> {
    static bool decode(ondemand::value& value, T& out) {
        int64_t number = 0;
        if (value.get_int64().get(number) != simdjson::SUCCESS) return false;
        if (number < std::numeric_limits<T>::min() || number > std::numeric_limits<T>::max()) {
            return false;
        }
        out = static_cast<T>(number);
        return true;
    }
    static std::string expected() {
        return fmt::format("an integer from {} to {}", std::numeric_limits<T>::min(),
                           std::numeric_limits<T>::max());
    }
};

template <>
struct ValueCodec<double> {
    static bool decode(ondemand::value& value, double& out) {
        return value.get_double().get(out) == simdjson::SUCCESS;
    }
    static std::string expected() { return "a number"; }
};

template <>
struct ValueCodec<bool> {
    static bool decode(ondemand::value& value, bool& out) {
        return value.get_bool().get(out) == simdjson::SUCCESS;
    }
    static std::string expected() { return "true or false"; }
};

template <>
struct ValueCodec<std::string> {
    static bool decode(ondemand::value& value, std::string& out) {
        if (const std::optional<std::string_view> plain = plain_string(value)) {
            // Into the storage of the previous line's string; append() is assign()'s path
            // without its care for a source inside the string.
            out.clear();
            out.append(plain->data(), plain->size());
            return true;
        }
        std::string_view text;
        if (value.get_string().get(text) != simdjson::SUCCESS) return false;
        std::optional<std::string> bytes = utf8_to_bytes(text);
        if (!bytes) return false;
        out = std::move(*bytes);
        return true;
    }
    static std::string expected() { return "a string of code points up to U+00FF"; }
};

// Into `out`, where the value is kept: no temporary to move.
template <typename T>
void read_required(ondemand::value& value, const MemberPath& path, T& out) {
    if (!ValueCodec<T>::decode(value, out)) fail(path, "expected " + ValueCodec<T>::expected());
}

// Into the value `out` holds, if any: a string keeps its storage. The value is tried first and
// null only when that fails: most of these members hold a value, and On-Demand steps past a
// value only when it was read, so a failed read leaves it in place for the null test.
template <typename T>
void read_nullable(ondemand::value& value, const MemberPath& path, std::optional<T>& out) {
    if (ValueCodec<T>::decode(value, out ? *out : out.emplace())) return;
    if (!is_null(value)) fail(path, "expected " + ValueCodec<T>::expected() + " or null");
    out.reset();
}

template <typename T>
T required(ondemand::value& value, const MemberPath& path) {
    T out{};
    read_required(value, path, out);
    return out;
}

// `"a", "b" or "c"`, with `or null` when null is allowed too.
std::string expected_one_of(std::span<const std::string_view> names, bool or_null) {
    std::string text = "expected ";
    const std::size_t count = names.size() + (or_null ? 1 : 0);
    for (std::size_t i = 0; i < count; ++i) {
        if (i > 0) text += i + 1 == count ? " or " : ", ";
        text += i < names.size() ? fmt::format("\"{}\"", names[i]) : std::string("null");
    }
    return text;
}

template <typename Enum>
[[noreturn]] void fail_enum(const MemberPath& path, std::span<const Enum> values, bool or_null) {
    std::vector<std::string_view> names;
    for (const Enum value : values) names.emplace_back(to_string(value));
    fail(path, expected_one_of(names, or_null));
}

template <typename Enum>
using EnumParser = std::optional<Enum> (*)(std::string_view);

// A string value parsed as it lies in the line: names are plain ASCII, so text that `parse`
// knows there is the string's value, found without a check of its bytes. Else the string
// unescaped, then parsed. nullopt for a name `parse` does not know, or for no string.
template <typename Enum>
std::optional<Enum> parse_enum(ondemand::value& text, EnumParser<Enum> parse) {
    if (const std::optional<std::string_view> raw = raw_string(text)) {
        if (const std::optional<Enum> value = parse(*raw)) return value;
    }
    const std::optional<std::string_view> name = string_value(text);
    return name ? parse(*name) : std::nullopt;
}

template <typename Enum>
Enum required_enum(ondemand::value& text, const MemberPath& path, EnumParser<Enum> parse,
                   std::span<const Enum> values) {
    const std::optional<Enum> value = parse_enum(text, parse);
    if (!value) fail_enum(path, values, false);
    return *value;
}

template <typename Enum>
std::optional<Enum> nullable_enum(ondemand::value& text, const MemberPath& path,
                                  EnumParser<Enum> parse, std::span<const Enum> values) {
    // The name first, as read_nullable() does.
    const std::optional<Enum> value = parse_enum(text, parse);
    if (!value && !is_null(text)) fail_enum(path, values, true);
    return value;
}

ondemand::object required_object(ondemand::value& value, const MemberPath& path) {
    ondemand::object object;
    if (value.get_object().get(object) != simdjson::SUCCESS) fail(path, "expected an object");
    return object;
}

ondemand::array required_array(ondemand::value& value, const MemberPath& path) {
    ondemand::array array;
    if (value.get_array().get(array) != simdjson::SUCCESS) fail(path, "expected an array");
    return array;
}

std::string required_family(ondemand::value& value, const MemberPath& path) {
    const std::optional<std::string_view> name = string_value(value);
    if (!name || std::find(std::begin(kFamilies), std::end(kFamilies), *name) ==
                     std::end(kFamilies)) {
        fail(path, expected_one_of(kFamilies, false));
    }
    return std::string(*name);
}

// ---------------------------------------------------------------------------------------------
// Objects: a table of the members each one has, read in one pass.

// A member's name as it lies in a line, `name"`, in two words, with the masks that keep its
// bytes: a name of up to 15 characters is compared against a line's in four operations instead
// of one byte at a time (the lines' padding lets 16 bytes be read from any key).
class QuotedName {
public:
    constexpr explicit QuotedName(std::string_view name) : fits_(name.size() < kBytes) {
        if (!fits_) return;
        for (std::size_t i = 0; i <= name.size(); ++i) {
            const auto byte = static_cast<unsigned char>(i < name.size() ? name[i] : '"');
            // The byte's place in the word as memcpy() loads it.
            const std::size_t shift = std::endian::native == std::endian::little
                                          ? 8 * (i % 8)
                                          : 8 * (7 - i % 8);
            words_[i / 8] |= uint64_t{byte} << shift;
            masks_[i / 8] |= uint64_t{0xFF} << shift;
        }
    }

    // Whether `raw` (a key after its opening quote, in a padded line) starts with `name"`;
    // nullopt for a name too long to compare so.
    std::optional<bool> matches(const char* raw) const {
        if (!fits_) return std::nullopt;
        uint64_t words[2];
        std::memcpy(words, raw, sizeof words);
        return (((words[0] & masks_[0]) ^ words_[0]) | ((words[1] & masks_[1]) ^ words_[1])) == 0;
    }

private:
    static constexpr std::size_t kBytes = 16;
    bool fits_;
    uint64_t words_[2] = {};
    uint64_t masks_[2] = {};
};

// One member of an object read into `Out`: its name, how its value is read, whether it must be
// there. Tables list them in the order the writer writes them.
template <typename Out>
struct MemberRule {
    std::string_view name;
    void (*read)(Out& out, ondemand::value& value, const MemberPath& path);
    // For a member a line may leave out (written only when set, or added by a later schema):
    // what it becomes then, absent<>; nullptr: the member is required.
    void (*absent)(Out& out) = nullptr;
    // Required after all when this other member is present (members added together).
    std::string_view required_with = {};
    // The rule holds only when this says so of what was read before (event kinds); nullptr:
    // always. A member whose rule does not hold is skipped like an unknown one.
    bool (*holds)(const Out& out) = nullptr;
    QuotedName quoted{name};
};

template <typename>
struct DataMember;
template <typename Owner, typename Type>
struct DataMember<Type Owner::*> {
    using OwnerType = Owner;
    using ValueType = Type;
};

template <typename T>
constexpr bool kIsOptional = false;
template <typename T>
constexpr bool kIsOptional<std::optional<T>> = true;

// The common rule: the member's value straight into `Member` (a ValueCodec type, or one of
// them or null as a std::optional).
template <auto Member>
void into(typename DataMember<decltype(Member)>::OwnerType& out, ondemand::value& value,
          const MemberPath& path) {
    using Type = typename DataMember<decltype(Member)>::ValueType;
    if constexpr (kIsOptional<Type>) {
        read_nullable(value, path, out.*Member);
    } else {
        read_required(value, path, out.*Member);
    }
}

// A member left out is its record's default: the record read into holds the previous line's
// values (TraceReader reuses it, and so the storage of its strings and vectors).
template <auto Member>
void absent(typename DataMember<decltype(Member)>::OwnerType& out) {
    using Owner = typename DataMember<decltype(Member)>::OwnerType;
    static const Owner defaults{};
    out.*Member = defaults.*Member;
}

// The rule of a member that no stage of closetrace reads (none of report, diff, verify and alb):
// On-Demand steps over its value, neither decoded nor checked beyond the JSON, and the record
// keeps the member's default. Whether a required one is there is still checked.
template <auto Member>
void not_decoded(typename DataMember<decltype(Member)>::OwnerType& out, ondemand::value&,
                 const MemberPath&) {
    absent<Member>(out);
}

// The rule of a member a line may leave out, read straight into `Member`.
template <auto Member, typename Out = typename DataMember<decltype(Member)>::OwnerType>
constexpr MemberRule<Out> optional_into(std::string_view name, std::string_view required_with = {},
                                        bool (*holds)(const Out&) = nullptr) {
    return {name, into<Member>, absent<Member>, required_with, holds};
}

template <typename Out>
bool holds(const MemberRule<Out>& rule, const Out& out) {
    return !rule.holds || rule.holds(out);
}

// Member names are short: compared inline, which is much cheaper here than a call to memcmp.
bool same_name(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (a[i] != b[i]) return false;
    }
    return true;
}

// Whether the member's name as it lies in the line (after its opening quote) is the rule's,
// which has no quote: a shorter name stops the comparison at its closing quote.
template <typename Out>
bool raw_name_is(const char* raw, const MemberRule<Out>& rule) {
    if (const std::optional<bool> matches = rule.quoted.matches(raw)) return *matches;
    for (std::size_t i = 0; i < rule.name.size(); ++i) {
        if (raw[i] != rule.name[i]) return false;
    }
    return raw[rule.name.size()] == '"';
}

// The rule for `field`'s name; rules.size() when none. Tried first as the name lies in the line,
// from the rule after the previous match on: the writer's order, members left out skipped at
// their first character. Then unescaped, against every rule: members in another order, names
// written with escapes.
template <typename Out>
std::size_t find_rule(std::span<const MemberRule<Out>> rules, ondemand::field& field,
                      std::size_t expected) {
    const char* const raw = field.key().raw();
    for (std::size_t i = expected; i < rules.size(); ++i) {
        if (raw_name_is(raw, rules[i])) return i;
    }
    const std::string_view name = member_name(field);
    for (std::size_t i = 0; i < rules.size(); ++i) {
        if (same_name(rules[i].name, name)) return i;
    }
    return rules.size();
}

// Reads the members `rules` name from `object` into `out`, each in one pass; then fails on the
// first required member (in the writer's order) that was not there, and resets those left out.
// `out` may hold an earlier line's values: every member a rule names is overwritten.
template <typename Out>
void read_members(ondemand::object object, std::span<const MemberRule<Out>> rules,
                  const MemberPath& path, Out& out) {
    uint64_t seen = 0;  // bit i: rules[i] was read
    std::size_t expected = 0;
    for (auto member : object) {
        ondemand::field field = valid(std::move(member));
        const std::size_t index = find_rule(rules, field, expected);
        if (index == rules.size() || !holds(rules[index], out)) continue;
        const MemberRule<Out>& rule = rules[index];
        rule.read(out, field.value(), MemberPath{&path, rule.name});
        seen |= uint64_t{1} << index;
        expected = index + 1;
    }
    const auto was_seen = [&](std::string_view name) {
        for (std::size_t i = 0; i < rules.size(); ++i) {
            if (rules[i].name == name) return (seen >> i & 1) != 0;
        }
        return false;
    };
    // Only the rules not seen, in order: most lines hold every member.
    const uint64_t all = rules.size() == 64 ? ~uint64_t{0} : (uint64_t{1} << rules.size()) - 1;
    for (uint64_t unseen = all & ~seen; unseen != 0; unseen &= unseen - 1) {
        const MemberRule<Out>& rule = rules[static_cast<std::size_t>(std::countr_zero(unseen))];
        if (!holds(rule, out)) continue;
        const bool required = rule.absent == nullptr ||
                              (!rule.required_with.empty() && was_seen(rule.required_with));
        if (required) fail(MemberPath{&path, rule.name}, "missing");
        rule.absent(out);
    }
}

// Into `out` where the object is kept: no temporary to move (a ContainerRef moved is five
// strings), and the storage of the previous line's strings is reused.
template <typename Out, std::size_t N>
void read_object(ondemand::value& value, const MemberPath& path, const MemberRule<Out> (&rules)[N],
                 Out& out) {
    static_assert(N <= 64, "read_members keeps what it saw in 64 bits");
    read_members<Out>(required_object(value, path), rules, path, out);
}

template <typename Out, std::size_t N>
void read_nullable_object(ondemand::value& value, const MemberPath& path,
                          const MemberRule<Out> (&rules)[N], std::optional<Out>& out) {
    if (is_null(value)) {
        out.reset();
    } else {
        read_object(value, path, rules, out ? *out : out.emplace());
    }
}

// An array of objects into `out`'s elements where they are (their strings' storage reused),
// `out` then cut to the array's length.
template <typename Out, std::size_t N>
void read_object_array(ondemand::value& value, const MemberPath& path,
                       const MemberRule<Out> (&rules)[N], std::vector<Out>& out) {
    static_assert(N <= 64, "read_members keeps what it saw in 64 bits");
    std::size_t index = 0;
    for (auto element : required_array(value, path)) {
        ondemand::value object = valid(std::move(element));
        if (index == out.size()) out.emplace_back();
        const MemberPath element_path{&path, {}, index};
        read_members<Out>(required_object(object, element_path), rules, element_path, out[index]);
        ++index;
    }
    out.erase(out.begin() + static_cast<std::ptrdiff_t>(index), out.end());
}

// A member that another must be read before (the line's type, the schema, an event's kind).
ondemand::value member(ondemand::object& object, const MemberPath& path) {
    ondemand::value value;
    const simdjson::error_code error = object.find_field_unordered(path.name).get(value);
    if (error == simdjson::NO_SUCH_FIELD) fail(path, "missing");
    if (error) throw JsonError{error};
    return value;
}

// Back to the first member, for the pass after member().
void rewind(ondemand::object& object) {
    bool not_empty = false;
    if (const simdjson::error_code error = object.reset().get(not_empty)) throw JsonError{error};
}

// ---------------------------------------------------------------------------------------------
// The members of each line type

constexpr MemberRule<ContainerRef> kContainerMembers[] = {
    {"runtime", into<&ContainerRef::runtime>},
    {"id", into<&ContainerRef::id>},
    {"name", into<&ContainerRef::name>},
    {"task_id", into<&ContainerRef::task_id>},
    {"pod_uid", not_decoded<&ContainerRef::pod_uid>},
    {"ecs", not_decoded<&ContainerRef::ecs>},
};

constexpr MemberRule<Endpoint> kEndpointMembers[] = {
    {"addr", into<&Endpoint::addr>},
    {"port", into<&Endpoint::port>},
};

void read_endpoint(Endpoint& out, ondemand::value& value, const MemberPath& path) {
    read_object(value, path, kEndpointMembers, out);
}

std::map<std::string, uint64_t> read_counts(ondemand::value& value, const MemberPath& path) {
    std::map<std::string, uint64_t> counts;
    for (auto member : required_object(value, path)) {
        ondemand::field field = valid(std::move(member));
        const std::string_view key = member_name(field);
        const MemberPath entry{&path, key};
        std::optional<std::string> name = utf8_to_bytes(key);
        if (!name) fail(entry, "member name is not a string of code points up to U+00FF");
        counts[std::move(*name)] = required<uint64_t>(field.value(), entry);
    }
    return counts;
}

constexpr MemberRule<TraceFilters> kFilterMembers[] = {
    {"ports",
     [](TraceFilters& out, ondemand::value& value, const MemberPath& path) {
         std::size_t index = 0;
         for (auto element : required_array(value, path)) {
             ondemand::value port = valid(std::move(element));
             out.ports.push_back(required<uint16_t>(port, MemberPath{&path, {}, index++}));
         }
     }},
    {"cgroup", into<&TraceFilters::cgroup>},
    {"full_target", into<&TraceFilters::full_target>},
    // Filters added later in closetrace/1: absent means not used.
    optional_into<&TraceFilters::raw_payloads>("raw_payloads"),
    optional_into<&TraceFilters::netns>("netns"),
    optional_into<&TraceFilters::container>("container"),
    optional_into<&TraceFilters::pid>("pid"),
};

constexpr MemberRule<TraceProbes> kProbeMembers[] = {
    {"state", into<&TraceProbes::state>},
    {"reset_sent", into<&TraceProbes::reset_sent>},
    {"reset_received", into<&TraceProbes::reset_received>},
    {"messages", into<&TraceProbes::messages>},
    {"rst_reason", into<&TraceProbes::rst_reason>},
};

// After "type" and "schema", which the reader checks first.
constexpr MemberRule<TraceHeader> kHeaderMembers[] = {
    {"tool_version", into<&TraceHeader::tool_version>},
    {"host", into<&TraceHeader::host>},
    {"kernel", into<&TraceHeader::kernel>},
    {"start_ns", into<&TraceHeader::start_ns>},
    {"start_wall", into<&TraceHeader::start_wall>},
    {"mono_to_wall_ns", into<&TraceHeader::mono_to_wall_ns>},
    {"filters",
     [](TraceHeader& out, ondemand::value& value, const MemberPath& path) {
         read_object(value, path, kFilterMembers, out.filters);
     }},
    {"probes",
     [](TraceHeader& out, ondemand::value& value, const MemberPath& path) {
         read_object(value, path, kProbeMembers, out.probes);
     }},
};

TraceHeader read_header(ondemand::object& line) {
    const MemberPath root{nullptr, "header"};
    TraceHeader header;
    // First, so that a later schema's changes are reported as what they are.
    ondemand::value schema = member(line, {&root, "schema"});
    header.schema = required<std::string>(schema, {&root, "schema"});
    if (header.schema != kTraceSchema && header.schema != kTraceSchemaV4 &&
        header.schema != kTraceSchemaV3 && header.schema != kTraceSchemaV2 &&
        header.schema != kTraceSchemaV1) {
        throw LineError{fmt::format(
            "unsupported schema \"{}\"; this closetrace reads {}, {}, {}, {} and {}",
            excerpt_for_error(header.schema), kTraceSchemaV1, kTraceSchemaV2, kTraceSchemaV3,
            kTraceSchemaV4, kTraceSchema)};
    }
    rewind(line);
    read_members<TraceHeader>(line, kHeaderMembers, root, header);
    return header;
}

constexpr MemberRule<Request> kRequestMembers[] = {
    {"method", into<&Request::method>},
    {"target", into<&Request::target>},
    optional_into<&Request::opaque>("opaque"),  // written only when true
    {"status", into<&Request::status>},
    {"request_ns", into<&Request::request_ns>},
    {"response_ns", into<&Request::response_ns>},
    {"outcome",
     [](Request& out, ondemand::value& value, const MemberPath& path) {
         out.outcome = required_enum<Outcome>(value, path, outcome_from_string, kOutcomes);
     }},
    // closetrace/2; close_asked written only when a message asked.
    optional_into<&Request::idle_before_ms>("idle_before_ms"),
    {"close_asked", [](Request& out, ondemand::value& value, const MemberPath& path) {
         out.close_asked = required_enum<CloseAsked>(value, path, close_asked_from_string,
                                                     kCloseAskedValues);
     }, absent<&Request::close_asked>},
};

constexpr MemberRule<CloseInfo> kCloseMembers[] = {
    {"initiator",
     [](CloseInfo& out, ondemand::value& value, const MemberPath& path) {
         out.initiator =
             required_enum<Initiator>(value, path, initiator_from_string, kInitiators);
     }},
    {"how",
     [](CloseInfo& out, ondemand::value& value, const MemberPath& path) {
         out.how = nullable_enum<CloseHow>(value, path, close_how_from_string, kCloseHows);
     }},
    {"local_fin_ns", into<&CloseInfo::local_fin_ns>},
    {"peer_fin_ns", into<&CloseInfo::peer_fin_ns>},
    {"local_rst_ns", into<&CloseInfo::local_rst_ns>},
    {"peer_rst_ns", into<&CloseInfo::peer_rst_ns>},
    {"rst_reason", into<&CloseInfo::rst_reason>},
    {"idle_ms", into<&CloseInfo::idle_ms>},
    // closetrace/2
    {"cause",
     [](CloseInfo& out, ondemand::value& value, const MemberPath& path) {
         out.cause =
             required_enum<CloseCause>(value, path, close_cause_from_string, kAllCloseCauses);
     },
     absent<&CloseInfo::cause>},
    {"asked_by",
     [](CloseInfo& out, ondemand::value& value, const MemberPath& path) {
         out.asked_by = nullable_enum<Initiator>(value, path, initiator_from_string, kSides);
     },
     absent<&CloseInfo::asked_by>, "cause"},
    optional_into<&CloseInfo::unread_bytes>("unread_bytes", "cause"),
};

constexpr MemberRule<Http2Side> kHttp2SideMembers[] = {
    {"last_frame_ns", into<&Http2Side::last_frame_ns>},
    {"streams_opened", into<&Http2Side::streams_opened>},
    {"streams_answered", into<&Http2Side::streams_answered>},
    {"last_stream_id", into<&Http2Side::last_stream_id>},
    {"goaway_count", into<&Http2Side::goaway_count>},
    {"goaway_last_stream_id", into<&Http2Side::goaway_last_stream_id>},
    {"goaway_error", into<&Http2Side::goaway_error>},
    {"rst_count", into<&Http2Side::rst_count>},
    {"rst_last_error", into<&Http2Side::rst_last_error>},
    // closetrace/4: 0 in closetrace/3 traces, written before them.
    optional_into<&Http2Side::ping_count>("ping_count"),
    optional_into<&Http2Side::settings_count>("settings_count", "ping_count"),
};

constexpr MemberRule<Http2Stream> kHttp2StreamMembers[] = {
    {"id", into<&Http2Stream::id>},
    {"opened_by",
     [](Http2Stream& out, ondemand::value& value, const MemberPath& path) {
         out.opened_by = required_enum<Initiator>(value, path, initiator_from_string, kSides);
     }},
    {"opened_ns", into<&Http2Stream::opened_ns>},
    {"reset_by",
     [](Http2Stream& out, ondemand::value& value, const MemberPath& path) {
         out.reset_by = nullable_enum<Initiator>(value, path, initiator_from_string, kSides);
     }},
    {"reset_ns", into<&Http2Stream::reset_ns>},
    {"fate",
     [](Http2Stream& out, ondemand::value& value, const MemberPath& path) {
         out.fate = required_enum<StreamFate>(value, path, stream_fate_from_string, kStreamFates);
     }},
    // closetrace/5: not_recorded in earlier traces.
    {"names",
     [](Http2Stream& out, ondemand::value& value, const MemberPath& path) {
         out.names =
             required_enum<StreamNames>(value, path, stream_names_from_string, kStreamNamesValues);
     },
     absent<&Http2Stream::names>},
    optional_into<&Http2Stream::method>("method", "names"),
    optional_into<&Http2Stream::path>("path", "names"),
    optional_into<&Http2Stream::grpc_status>("grpc_status", "names"),
};

// closetrace/3: written for HTTP/2 connections only.
constexpr MemberRule<Http2Connection> kHttp2Members[] = {
    {"client",
     [](Http2Connection& out, ondemand::value& value, const MemberPath& path) {
         out.client = required_enum<Initiator>(value, path, initiator_from_string, kSides);
     }},
    {"local",
     [](Http2Connection& out, ondemand::value& value, const MemberPath& path) {
         read_object(value, path, kHttp2SideMembers, out.local);
     }},
    {"peer",
     [](Http2Connection& out, ondemand::value& value, const MemberPath& path) {
         read_object(value, path, kHttp2SideMembers, out.peer);
     }},
    {"local_goaway_ns", into<&Http2Connection::local_goaway_ns>},
    {"peer_goaway_ns", into<&Http2Connection::peer_goaway_ns>},
    {"lost", into<&Http2Connection::lost>},
    {"pending_overflow", into<&Http2Connection::pending_overflow>},
    {"counted_at_close", into<&Http2Connection::counted_at_close>},
    {"caught",
     [](Http2Connection& out, ondemand::value& value, const MemberPath& path) {
         read_object_array(value, path, kHttp2StreamMembers, out.caught);
     }},
    // closetrace/5
    optional_into<&Http2Connection::names_undecodable_from>("names_undecodable_from"),
};

// Added within closetrace/5 (2026-12-05).
constexpr MemberRule<OtherEnd> kOtherEndMembers[] = {
    {"cookie", into<&OtherEnd::cookie>},
    {"server",
     [](OtherEnd& out, ondemand::value& value, const MemberPath& path) {
         out.server = nullable_enum<Initiator>(value, path, initiator_from_string, kSides);
         if (out.server == Initiator::Unknown) fail_enum<Initiator>(path, kSides, true);
     }},
};

// Requests a conn line's vector makes room for at its first one; more grow it as usual.
constexpr std::size_t kRequestsReserved = 8;

constexpr MemberRule<Connection> kConnMembers[] = {
    // Checked by decode(); named here so that the writer's order is followed from the first member.
    {"type", [](Connection&, ondemand::value&, const MemberPath&) {}},
    {"id", into<&Connection::id>},
    {"cookie", into<&Connection::cookie>},
    {"netns", into<&Connection::netns>},
    {"family", not_decoded<&Connection::family>},
    {"local",
     [](Connection& out, ondemand::value& value, const MemberPath& path) {
         read_endpoint(out.local, value, path);
     }},
    {"remote",
     [](Connection& out, ondemand::value& value, const MemberPath& path) {
         read_endpoint(out.remote, value, path);
     }},
    {"role",
     [](Connection& out, ondemand::value& value, const MemberPath& path) {
         out.role = required_enum<Role>(value, path, role_from_string, kRoles);
     }},
    {"pid", into<&Connection::pid>},
    {"comm", into<&Connection::comm>},
    // Attribution members came later in closetrace/1: absent means not known.
    {"owner_from", not_decoded<&Connection::owner_from>, absent<&Connection::owner_from>},
    {"cgroup_id", not_decoded<&Connection::cgroup_id>, absent<&Connection::cgroup_id>},
    {"cgroup", not_decoded<&Connection::cgroup>, absent<&Connection::cgroup>},
    {"container",
     [](Connection& out, ondemand::value& value, const MemberPath& path) {
         read_nullable_object(value, path, kContainerMembers, out.container);
     },
     absent<&Connection::container>},
    optional_into<&Connection::health_check>("health_check"),
    // Since 2026-12-07, within closetrace/5: written only when a response announced one.
    optional_into<&Connection::keep_alive_timeout_s>("keep_alive_timeout_s"),
    {"established_ns", into<&Connection::established_ns>},
    {"closed_ns", into<&Connection::closed_ns>},
    {"bytes_in", not_decoded<&Connection::bytes_in>},
    {"bytes_out", not_decoded<&Connection::bytes_out>},
    {"segs_in", not_decoded<&Connection::segs_in>},
    {"segs_out", not_decoded<&Connection::segs_out>},
    {"close",
     [](Connection& out, ondemand::value& value, const MemberPath& path) {
         read_object(value, path, kCloseMembers, out.close);
     }},
    {"requests",
     [](Connection& out, ondemand::value& value, const MemberPath& path) {
         // Room for a typical connection's requests at once: growing one by one moved every
         // request's strings up to three times.
         out.requests.reserve(kRequestsReserved);
         read_object_array(value, path, kRequestMembers, out.requests);
     }},
    optional_into<&Connection::requests_omitted>("requests_omitted"),
    {"verdict",
     [](Connection& out, ondemand::value& value, const MemberPath& path) {
         out.verdict = required_enum<Verdict>(value, path, verdict_from_string, kAllVerdicts);
     }},
    // Added within closetrace/2: absent means no event was known lost while it was open.
    optional_into<&Connection::incomplete>("incomplete"),
    // Added within closetrace/5 (2026-12-05): absent means the recorder did not look.
    {"other_end",
     [](Connection& out, ondemand::value& value, const MemberPath& path) {
         read_nullable_object(value, path, kOtherEndMembers, out.other_end);
     },
     absent<&Connection::other_end>},
    // Since 2026-12-05, within closetrace/5: written only when true.
    optional_into<&Connection::requests_lower_bound>("requests_lower_bound"),
    // closetrace/3: written for HTTP/2 connections only.
    {"http2",
     [](Connection& out, ondemand::value& value, const MemberPath& path) {
         read_object(value, path, kHttp2Members, out.http2 ? *out.http2 : out.http2.emplace());
     },
     absent<&Connection::http2>},
};

// Into `conn`, which holds the previous conn line's values (TraceReader reuses the record and
// its storage). `v1`: a closetrace/1 record, whose close cause is derived here from what it
// holds. A connection that switched protocols reads as it is judged since 2026-12-07.
void read_connection(ondemand::object& line, bool v1, Connection& conn) {
    rewind(line);
    read_members<Connection>(line, kConnMembers, MemberPath{nullptr, "conn"}, conn);
    if (v1) {
        conn.close.cause = classify_close(conn, {});
        conn.close.asked_by = asked_by(conn);
    }
    reread_switch_of_protocols(conn);
}

template <EventKind... Kinds>
bool is_kind(const TraceEventLine& event) {
    return ((event.kind == to_string(Kinds)) || ...);
}

// After "type" and "kind", which the reader reads first: which members follow depends on it.
constexpr MemberRule<TraceEventLine> kEventMembers[] = {
    {"ts_ns", into<&TraceEventLine::ts_ns>},
    {"cookie", into<&TraceEventLine::cookie>},
    {"netns", into<&TraceEventLine::netns>},
    {"family",
     [](TraceEventLine& out, ondemand::value& value, const MemberPath& path) {
         out.family = required_family(value, path);
     }},
    {"local",
     [](TraceEventLine& out, ondemand::value& value, const MemberPath& path) {
         read_endpoint(out.local, value, path);
     }},
    {"remote",
     [](TraceEventLine& out, ondemand::value& value, const MemberPath& path) {
         read_endpoint(out.remote, value, path);
     }},
    {"old_state", into<&TraceEventLine::old_state>, nullptr, {},
     is_kind<EventKind::State>},
    {"new_state", into<&TraceEventLine::new_state>, nullptr, {},
     is_kind<EventKind::State>},
    {"role",
     [](TraceEventLine& out, ondemand::value& value, const MemberPath& path) {
         out.role = required_enum<Role>(value, path, role_from_string, kRoles);
     },
     nullptr, {}, is_kind<EventKind::State>},
    {"rst_reason", into<&TraceEventLine::rst_reason>, nullptr, {},
     is_kind<EventKind::ResetSent, EventKind::ResetReceived>},
    {"trigger_flags", into<&TraceEventLine::trigger_flags>, nullptr, {},
     is_kind<EventKind::ResetSent, EventKind::ResetReceived>},
    {"sk_state", into<&TraceEventLine::sk_state>, nullptr, {},
     is_kind<EventKind::ResetSent, EventKind::ResetReceived>},
    {"payload_len", into<&TraceEventLine::payload_len>, nullptr, {},
     is_kind<EventKind::ResetSent, EventKind::ResetReceived>},
    {"direction",
     [](TraceEventLine& out, ondemand::value& value, const MemberPath& path) {
         out.direction = required_enum<Direction>(
             value, path,
             [](std::string_view name) { return find_by_name<Direction>(kDirections, name); },
             kDirections);
     },
     nullptr, {}, is_kind<EventKind::Message>},
    {"segment_len", into<&TraceEventLine::payload_len>, nullptr, {},
     is_kind<EventKind::Message>},
    // closetrace/2 recorders since ABI 3: the kernel's numbering of the message.
    {"message",
     [](TraceEventLine& out, ondemand::value& value, const MemberPath& path) {
         out.response = required<std::string>(value, path) == "response";
     },
     absent<&TraceEventLine::response>, {}, is_kind<EventKind::Message>},
    optional_into<&TraceEventLine::requests_before>("requests_before", "message",
                                                    is_kind<EventKind::Message>),
    optional_into<&TraceEventLine::responses_before>("responses_before", "message",
                                                     is_kind<EventKind::Message>),
    optional_into<&TraceEventLine::held>("held", "message", is_kind<EventKind::Message>),
    // Written only by a recording with --raw-payloads.
    optional_into<&TraceEventLine::payload>(
        "payload", {},
        is_kind<EventKind::ResetSent, EventKind::ResetReceived, EventKind::Message,
                EventKind::Http2>),
};

TraceEventLine read_event(ondemand::object& line) {
    const MemberPath root{nullptr, "event"};
    TraceEventLine event;
    const MemberPath kind_path{&root, "kind"};
    ondemand::value kind = member(line, kind_path);
    event.kind = to_string(required_enum<EventKind>(
        kind, kind_path,
        [](std::string_view name) { return find_by_name<EventKind>(kEventKinds, name); },
        kEventKinds));
    rewind(line);
    read_members<TraceEventLine>(line, kEventMembers, root, event);
    return event;
}

constexpr MemberRule<TraceSummary> kSummaryMembers[] = {
    {"connections", into<&TraceSummary::connections>},
    {"open_at_end", into<&TraceSummary::open_at_end>},
    {"requests", into<&TraceSummary::requests>},
    {"lost_events", into<&TraceSummary::lost_events>},
    {"events", into<&TraceSummary::events>},
    {"duration_s", into<&TraceSummary::duration_s>},
    {"end_ns", into<&TraceSummary::end_ns>},
    {"by_initiator",
     [](TraceSummary& out, ondemand::value& value, const MemberPath& path) {
         out.by_initiator = read_counts(value, path);
     }},
    {"by_how",
     [](TraceSummary& out, ondemand::value& value, const MemberPath& path) {
         out.by_how = read_counts(value, path);
     }},
    {"verdicts",
     [](TraceSummary& out, ondemand::value& value, const MemberPath& path) {
         out.verdicts = read_counts(value, path);
     }},
};

TraceSummary read_summary(ondemand::object& line) {
    TraceSummary summary;
    rewind(line);
    read_members<TraceSummary>(line, kSummaryMembers, MemberPath{nullptr, "summary"}, summary);
    return summary;
}

// Values no recording writes, rejected rather than turned into verdicts and figures: a trace
// edited by hand or made by another tool.
void check_plausible(const Connection& conn) {
    if (conn.established_ns && conn.closed_ns && *conn.closed_ns < *conn.established_ns) {
        throw LineError{"conn.closed_ns: before conn.established_ns"};
    }
    if (conn.close.idle_ms && *conn.close.idle_ms < 0) {
        throw LineError{"conn.close.idle_ms: negative"};
    }
}

void check_plausible(const TraceSummary& summary) {
    if (summary.duration_s < 0) throw LineError{"summary.duration_s: negative"};
}

bool is_blank(std::string_view line) {
    return line.find_first_not_of(" \t\r") == std::string_view::npos;
}

bool ends_with_brace(std::string_view line) {
    const std::size_t last = line.find_last_not_of(" \t\r");
    return last != std::string_view::npos && line[last] == '}';
}

// The lines of a stream, read in large chunks into one reused buffer that grows only for a line
// longer than it (up to kMaxTraceLineBytes). simdjson's padding follows the buffer, so a line
// is parsed where it lies, without a copy.
class LineSource {
public:
    struct Line {
        std::string_view text;  // without the '\n'; valid until the next call
        bool terminated;        // false for a last line with no '\n'
    };

    explicit LineSource(std::istream& in) : in_(in) { resize(kInitialCapacity); }

    // nullopt at the end of the input.
    std::optional<Line> next() {
        std::size_t scanned = begin_;
        for (;;) {
            const void* newline = std::memchr(buffer_.get() + scanned, '\n', end_ - scanned);
            if (newline) {
                const auto length =
                    static_cast<std::size_t>(static_cast<const char*>(newline) - buffer_.get()) -
                    begin_;
                const Line line{{buffer_.get() + begin_, length}, true};
                begin_ += length + 1;
                return line;
            }
            if (input_ended_) {
                if (begin_ == end_) return std::nullopt;
                const Line line{{buffer_.get() + begin_, end_ - begin_}, false};
                begin_ = end_;
                return line;
            }
            const std::size_t pending = end_ - begin_;
            refill();
            scanned = begin_ + pending;
        }
    }

private:
    // Half a MiB a read: at 64 KiB, the read(2) calls and the partial lines moved to the front
    // cost `report` ~6 % more CPU on a 2 GB trace (bench/RESULTS.md, runs of 2026-12-06).
    static constexpr std::size_t kInitialCapacity = 512 * 1024;

    // Moves the partial line to the front of the buffer and reads more after it.
    void refill() {
        const std::size_t pending = end_ - begin_;
        std::memmove(buffer_.get(), buffer_.get() + begin_, pending);
        begin_ = 0;
        end_ = pending;
        if (end_ == capacity_) {
            // Room for the longest line and its '\n': a full buffer without one is too long.
            if (capacity_ > kMaxTraceLineBytes) throw LineError{"line longer than 1 MiB"};
            resize(std::min(capacity_ * 2, kMaxTraceLineBytes + 1));
        }
        in_.read(buffer_.get() + end_, static_cast<std::streamsize>(capacity_ - end_));
        end_ += static_cast<std::size_t>(in_.gcount());
        if (in_.bad()) throw LineError{"cannot read the input"};
        if (!in_) input_ended_ = true;
    }

    // Zero-filled, so that simdjson never reads uninitialised padding.
    void resize(std::size_t capacity) {
        auto buffer = std::make_unique<char[]>(capacity + simdjson::SIMDJSON_PADDING);
        if (buffer_) std::memcpy(buffer.get(), buffer_.get(), end_);
        buffer_ = std::move(buffer);
        capacity_ = capacity;
    }

    std::istream& in_;
    std::unique_ptr<char[]> buffer_;
    std::size_t capacity_ = 0;  // without the padding
    std::size_t begin_ = 0;     // first byte not yet returned
    std::size_t end_ = 0;       // end of the bytes read
    bool input_ended_ = false;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Lines

namespace {

void header_json(JsonLine& json, const TraceHeader& header) {
    json.begin_object();
    json.name("type").string("header");
    json.name("schema").string(header.schema);
    json.name("tool_version").string(header.tool_version);
    json.name("host").string(header.host);
    json.name("kernel").string(header.kernel);
    json.name("start_ns").number(header.start_ns);
    json.name("start_wall").string(header.start_wall);
    json.name("mono_to_wall_ns").number(header.mono_to_wall_ns);

    const TraceFilters& filters = header.filters;
    json.name("filters").begin_object();
    json.name("ports").begin_array();
    for (const uint16_t port : filters.ports) json.number(port);
    json.end_array();
    json.name("cgroup").nullable(filters.cgroup);
    json.name("full_target").boolean(filters.full_target);
    json.name("raw_payloads").boolean(filters.raw_payloads);
    json.name("netns").nullable(filters.netns);
    json.name("container").nullable(filters.container);
    json.name("pid").nullable(filters.pid);
    json.end_object();

    const TraceProbes& probes = header.probes;
    json.name("probes").begin_object();
    json.name("state").nullable(probes.state);
    json.name("reset_sent").nullable(probes.reset_sent);
    json.name("reset_received").nullable(probes.reset_received);
    json.name("messages").nullable(probes.messages);
    json.name("rst_reason").boolean(probes.rst_reason);
    json.end_object();
    json.end_object();
}

}  // namespace

std::string header_line(const TraceHeader& header) {
    std::string text;
    append_line(text, header_json, header);
    return text;
}

namespace {

void http2_side_json(JsonLine& json, const Http2Side& side) {
    json.begin_object();
    json.name("last_frame_ns").number(side.last_frame_ns);
    json.name("streams_opened").number(side.streams_opened);
    json.name("streams_answered").number(side.streams_answered);
    json.name("last_stream_id").number(side.last_stream_id);
    json.name("goaway_count").number(side.goaway_count);
    json.name("goaway_last_stream_id").number(side.goaway_last_stream_id);
    json.name("goaway_error").number(side.goaway_error);
    json.name("rst_count").number(side.rst_count);
    json.name("rst_last_error").number(side.rst_last_error);
    json.name("ping_count").number(side.ping_count);
    json.name("settings_count").number(side.settings_count);
    json.end_object();
}

void http2_json(JsonLine& json, const Http2Connection& h2) {
    json.begin_object();
    json.name("client").string(to_string(h2.client));
    json.name("local");
    http2_side_json(json, h2.local);
    json.name("peer");
    http2_side_json(json, h2.peer);
    json.name("local_goaway_ns").nullable(h2.local_goaway_ns);
    json.name("peer_goaway_ns").nullable(h2.peer_goaway_ns);
    json.name("lost").boolean(h2.lost);
    json.name("pending_overflow").boolean(h2.pending_overflow);
    json.name("counted_at_close").boolean(h2.counted_at_close);
    json.name("caught").begin_array();
    for (const Http2Stream& stream : h2.caught) {
        json.begin_object();
        json.name("id").number(stream.id);
        json.name("opened_by").string(to_string(stream.opened_by));
        json.name("opened_ns").nullable(stream.opened_ns);
        json.name("reset_by").nullable_name(stream.reset_by);
        json.name("reset_ns").nullable(stream.reset_ns);
        json.name("fate").string(to_string(stream.fate));
        json.name("names").string(to_string(stream.names));
        json.name("method").nullable(stream.method);
        json.name("path").nullable(stream.path);
        json.name("grpc_status").nullable(stream.grpc_status);
        json.end_object();
    }
    json.end_array();
    json.name("names_undecodable_from").nullable(h2.names_undecodable_from);
    json.end_object();
}

void close_json(JsonLine& json, const CloseInfo& info) {
    json.begin_object();
    json.name("initiator").string(to_string(info.initiator));
    json.name("how").nullable_name(info.how);
    json.name("local_fin_ns").nullable(info.local_fin_ns);
    json.name("peer_fin_ns").nullable(info.peer_fin_ns);
    json.name("local_rst_ns").nullable(info.local_rst_ns);
    json.name("peer_rst_ns").nullable(info.peer_rst_ns);
    json.name("rst_reason").nullable(info.rst_reason);
    json.name("idle_ms").nullable(info.idle_ms);
    json.name("cause").string(to_string(info.cause));
    json.name("asked_by").nullable_name(info.asked_by);
    json.name("unread_bytes").number(info.unread_bytes);
    json.end_object();
}

void request_json(JsonLine& json, const Request& request) {
    json.begin_object();
    json.name("method").nullable(request.method);
    json.name("target").nullable(request.target);
    if (request.opaque) json.name("opaque").boolean(true);
    json.name("status").nullable(request.status);
    json.name("request_ns").number(request.request_ns);
    json.name("response_ns").nullable(request.response_ns);
    json.name("outcome").string(to_string(request.outcome));
    json.name("idle_before_ms").nullable(request.idle_before_ms);
    if (request.close_asked != CloseAsked::None) {
        json.name("close_asked").string(to_string(request.close_asked));
    }
    json.end_object();
}

}  // namespace

void append_conn_line(std::string& out, const Connection& conn) {
    JsonLine json(out);
    json.begin_object();
    json.name("type").string("conn");
    json.name("id").number(conn.id);
    json.name("cookie").number(conn.cookie);
    json.name("netns").number(conn.netns);
    json.name("family").string(conn.family);
    json.name("local");
    endpoint_json(json, conn.local.addr, conn.local.port);
    json.name("remote");
    endpoint_json(json, conn.remote.addr, conn.remote.port);
    json.name("role").string(to_string(conn.role));
    json.name("pid").nullable(conn.pid);
    json.name("comm").nullable(conn.comm);
    json.name("owner_from").nullable(conn.owner_from);
    json.name("cgroup_id").number(conn.cgroup_id);
    json.name("cgroup").nullable(conn.cgroup);
    json.name("container");
    if (conn.container) {
        container_json(json, *conn.container);
    } else {
        json.null();
    }
    json.name("health_check").nullable(conn.health_check);
    if (conn.keep_alive_timeout_s) {
        json.name("keep_alive_timeout_s").number(*conn.keep_alive_timeout_s);
    }
    json.name("established_ns").nullable(conn.established_ns);
    json.name("closed_ns").nullable(conn.closed_ns);
    json.name("bytes_in").number(conn.bytes_in);
    json.name("bytes_out").number(conn.bytes_out);
    json.name("segs_in").number(conn.segs_in);
    json.name("segs_out").number(conn.segs_out);
    json.name("close");
    close_json(json, conn.close);
    json.name("requests").begin_array();
    for (const Request& request : conn.requests) request_json(json, request);
    json.end_array();
    json.name("requests_omitted").number(conn.requests_omitted);
    json.name("verdict").string(to_string(conn.verdict));
    json.name("incomplete").boolean(conn.incomplete);
    json.name("other_end");
    if (conn.other_end) {
        json.begin_object();
        json.name("cookie").number(conn.other_end->cookie);
        json.name("server").nullable_name(conn.other_end->server);
        json.end_object();
    } else {
        json.null();
    }
    if (conn.requests_lower_bound) json.name("requests_lower_bound").boolean(true);
    if (conn.http2) {
        json.name("http2");
        http2_json(json, *conn.http2);
    }
    json.end_object();
}

std::string conn_line(const Connection& conn) {
    std::string line;
    append_conn_line(line, conn);
    return line;
}

void append_event_line(std::string& out, const Event& event, PayloadPolicy policy) {
    const Tuple& tuple = event.tuple;
    JsonLine json(out);
    json.begin_object();
    json.name("type").string("event");
    json.name("kind").string(to_string(event.kind));
    json.name("ts_ns").number(event.ts_ns);
    json.name("cookie").number(event.cookie);
    json.name("netns").number(event.netns);
    json.name("family").string(family_name(tuple.family));
    json.name("local");
    endpoint_json(json, format_address(tuple.family, tuple.laddr), tuple.lport);
    json.name("remote");
    endpoint_json(json, format_address(tuple.family, tuple.raddr), tuple.rport);
    switch (event.kind) {
        case EventKind::State:
            json.name("old_state").string(tcp_state_name(event.old_state));
            json.name("new_state").string(tcp_state_name(event.new_state));
            json.name("role").string(to_string(event.role));
            break;
        case EventKind::ResetSent:
        case EventKind::ResetReceived:
            json.name("rst_reason").nullable(event.rst_reason);
            json.name("trigger_flags").string(tcp_flags_string(event.trigger_flags));
            // sk_state 0: the kernel had no socket for the segment.
            json.name("sk_state");
            if (event.sk_state) {
                json.string(tcp_state_name(event.sk_state));
            } else {
                json.null();
            }
            json.name("payload_len").number(event.payload_len);
            break;
        case EventKind::Message:
            json.name("direction").string(to_string(event.direction));
            json.name("segment_len").number(event.payload_len);
            json.name("message").string(event.response ? "response" : "request");
            json.name("requests_before").number(event.requests_before);
            json.name("responses_before").number(event.responses_before);
            json.name("held").boolean(event.held);
            if (event.head_tail_kept) json.name("head_tail_kept").boolean(true);
            break;
        case EventKind::Http2:
            json.name("record").string(to_string(event.http2.kind));
            json.name("direction").string(to_string(event.http2.direction));
            json.name("frame_type").number(event.http2.frame_type);
            json.name("stream_id").number(event.http2.stream_id);
            json.name("error_code").number(event.http2.error_code);
            break;
        case EventKind::Http2Fragment:
            // Header blocks hold cookies and authorization: the recorder writes none of them.
            break;
    }
    if (event.kind != EventKind::State && event.kind != EventKind::Http2) {
        json.name("heads");
        heads_json(json, event.payload, policy.full_target);
        if (policy.raw) json.name("payload").string(event.payload);
    }
    json.end_object();
}

std::string event_line(const Event& event, PayloadPolicy policy) {
    std::string line;
    append_event_line(line, event, policy);
    return line;
}

namespace {

void summary_json(JsonLine& json, const TraceSummary& summary) {
    json.begin_object();
    json.name("type").string("summary");
    json.name("connections").number(summary.connections);
    json.name("open_at_end").number(summary.open_at_end);
    json.name("requests").number(summary.requests);
    json.name("lost_events").number(summary.lost_events);
    json.name("events").number(summary.events);
    json.name("duration_s").number(summary.duration_s);
    json.name("end_ns").number(summary.end_ns);
    json.name("by_initiator");
    counts_json(json, summary.by_initiator);
    json.name("by_how");
    counts_json(json, summary.by_how);
    json.name("verdicts");
    counts_json(json, summary.verdicts);
    json.end_object();
}

}  // namespace

std::string summary_line(const TraceSummary& summary) {
    std::string text;
    append_line(text, summary_json, summary);
    return text;
}

// ---------------------------------------------------------------------------------------------
// TraceWriter

TraceWriter::TraceWriter(int fd, std::size_t flush_bytes) : fd_(fd), flush_bytes_(flush_bytes) {}

TraceWriter::~TraceWriter() {
    try {
        flush();
    } catch (const std::system_error&) {
        // A destructor must not throw; callers that need to know flush() first.
    }
}

void TraceWriter::write_line(std::string_view line) {
    buffer_.append(line);
    end_line();
}

void TraceWriter::write_conn(const Connection& conn) {
    append_conn_line(buffer_, conn);
    end_line();
}

void TraceWriter::write_event(const Event& event, PayloadPolicy policy) {
    append_event_line(buffer_, event, policy);
    end_line();
}

void TraceWriter::end_line() {
    buffer_ += '\n';
    if (buffer_.size() >= flush_bytes_) flush();
}

void TraceWriter::take_back_cut_line(std::size_t& written) {
    const std::size_t last_newline =
        written == 0 ? std::string::npos : buffer_.rfind('\n', written - 1);
    const std::size_t whole = last_newline == std::string::npos ? 0 : last_newline + 1;
    const auto cut = static_cast<off_t>(written - whole);
    if (cut == 0) return;
    const off_t end = ::lseek(fd_, 0, SEEK_CUR);  // fails on a pipe: what went out stays out
    if (end < cut || ::ftruncate(fd_, end - cut) != 0 || ::lseek(fd_, end - cut, SEEK_SET) < 0) {
        return;
    }
    written = whole;
}

void TraceWriter::flush() {
    std::size_t written = 0;
    if (const int error = write_all(fd_, buffer_, written)) {
        take_back_cut_line(written);
        buffer_.erase(0, written);
        throw std::system_error(error, std::generic_category(), "writing the trace");
    }
    buffer_.clear();
}

int write_all(int fd, std::string_view data, std::size_t& written) {
    written = 0;
    while (written < data.size()) {
        const ssize_t count = ::write(fd, data.data() + written, data.size() - written);
        if (count > 0) {
            written += static_cast<std::size_t>(count);
        } else if (count == 0) {
            return EIO;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            // Standard output may be a non-blocking pipe shared with another process.
            pollfd writable{.fd = fd, .events = POLLOUT, .revents = 0};
            if (::poll(&writable, 1, -1) < 0 && errno != EINTR) return errno;
        } else if (errno != EINTR) {
            return errno;
        }
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// TraceError, TraceReader

TraceError::TraceError(const std::string& file, uint64_t line, const std::string& what,
                       std::string what_to_do)
    : std::runtime_error(line > 0 ? fmt::format("{}:{}: {}", file, line, what)
                                  : fmt::format("{}: {}", file, what)),
      what_to_do_(std::move(what_to_do)),
      file_(file),
      line_(line) {}

struct TraceReader::Impl {
    Impl(std::istream& in, std::string file) : lines(in), file_name(std::move(file)) {}

    // The next line that is not blank; nullopt at the end of the input.
    std::optional<LineSource::Line> next_line() {
        for (;;) {
            ++line_number;
            std::optional<LineSource::Line> line = lines.next();
            if (!line || !is_blank(line->text)) return line;
        }
    }

    // The line's root object, parsed where it lies: LineSource keeps simdjson's padding after
    // every line. A root that is not an object is a LineError, invalid JSON a JsonError.
    ondemand::object root_object(std::string_view text) {
        const std::size_t padded = text.size() + simdjson::SIMDJSON_PADDING;
        if (const auto error = parser.iterate(text.data(), text.size(), padded).get(document)) {
            throw JsonError{error};
        }
        ondemand::json_type type;
        if (const auto error = document.type().get(type)) throw JsonError{error};
        if (type != ondemand::json_type::object) throw LineError{"expected a JSON object"};
        return valid(document.get_object());
    }

    // After the root object: nothing but white space.
    void expect_end() {
        const char* after = nullptr;
        if (document.current_location().get(after) == simdjson::SUCCESS) {
            throw JsonError{simdjson::TRAILING_CONTENT};
        }
    }

    void read_first_line() {
        const std::optional<LineSource::Line> line = next_line();
        if (!line) throw NoRecordingError(file_name, 0, "empty file, not a closetrace trace");
        try {
            header = read_header_line(line->text);
        } catch (const JsonError&) {
            // The file ends inside a header (the recording stopped as it began): no trace in it,
            // but no other tool's file either.
            if (!line->terminated && begins_a_header(line->text)) {
                throw NoRecordingError(file_name, line_number,
                                       "the file ends inside its header line (a recording "
                                       "stopped before it had written one line): it holds no "
                                       "connection");
            }
            throw LineError{kNotATrace};
        }
    }

    static constexpr const char* kNotATrace = "not a closetrace trace";

    // A JsonError where the JSON is invalid or ends early.
    TraceHeader read_header_line(std::string_view text) {
        const LineError not_a_trace{kNotATrace};
        ondemand::object fields;
        try {
            fields = root_object(text);
        } catch (const LineError&) {
            throw not_a_trace;
        }
        std::string_view type;
        const simdjson::error_code error =
            fields.find_field_unordered("type").get_string().get(type);
        if (error == simdjson::NO_SUCH_FIELD || error == simdjson::INCORRECT_TYPE ||
            (!error && type != "header")) {
            throw not_a_trace;
        }
        if (error) throw JsonError{error};
        TraceHeader read = read_header(fields);
        expect_end();
        return read;
    }

    // What a recorder writes first, or a cut of it.
    static bool begins_a_header(std::string_view text) {
        constexpr std::string_view kHeaderStart = R"({"type":"header")";
        return kHeaderStart.starts_with(text.substr(0, kHeaderStart.size()));
    }

    // nullptr at the end of the input.
    TraceRecord* read_record() {
        const std::optional<LineSource::Line> line = next_line();
        if (!line) return nullptr;
        try {
            return decode(line->text);
        } catch (const JsonError& error) {
            if (line->terminated) {
                throw LineError{fmt::format("not valid JSON ({})", simdjson::error_message(error.code))};
            }
        } catch (const LineError&) {
            // A cut that leaves valid JSON behind ends the line with the root's '}'; one inside a
            // value (`nu` of null) can fail as a wrong value before the JSON does.
            if (line->terminated || ends_with_brace(line->text)) throw;
        }
        warnings.push_back(fmt::format("{}: line {} is truncated (recording interrupted?); ignored",
                                       file_name, line_number));
        return nullptr;
    }

    TraceRecord* decode(std::string_view text) {
        ondemand::object fields = root_object(text);
        // The summary is the last line: anything after it is another recording's.
        if (summary_seen) {
            throw LineError{"a line after the summary: traces concatenated", kGiveTheFiles};
        }
        const MemberPath type_path{nullptr, "type"};
        ondemand::value type_value = member(fields, type_path);
        const std::optional<std::string_view> type = string_value(type_value);
        if (!type) fail(type_path, "expected a string");
        TraceRecord* record = read_typed(fields, *type);
        expect_end();
        return record;
    }

    TraceRecord* read_typed(ondemand::object& fields, std::string_view type) {
        if (type == "conn") {
            Connection& conn = std::get<Connection>(conn_record);
            read_connection(fields, header.schema == kTraceSchemaV1, conn);
            check_plausible(conn);
            return &conn_record;
        }
        if (type == "event") {
            other_record = read_event(fields);
            return &other_record;
        }
        if (type == "summary") {
            summary_seen = true;
            TraceSummary summary = read_summary(fields);
            check_plausible(summary);
            other_record = std::move(summary);
            return &other_record;
        }
        if (type == "header") {
            throw LineError{"a second header: traces concatenated", kGiveTheFiles};
        }
        throw LineError{fmt::format("unknown line type \"{}\"", excerpt_for_error(type))};
    }

    LineSource lines;
    std::string file_name;
    uint64_t line_number = 0;
    ondemand::parser parser;
    ondemand::document document;  // the current line's, parsed by root_object()
    TraceHeader header;
    // What next() returns. Every conn line is read into the one record, whose strings and vectors
    // keep their storage from line to line (no allocation for most of them); an event or summary
    // line, a few in a trace, is read anew into the other.
    TraceRecord conn_record{std::in_place_type<Connection>};
    TraceRecord other_record;
    std::vector<std::string> warnings;
    bool summary_seen = false;
};

TraceReader::TraceReader(std::istream& in, std::string file_name)
    : impl_(std::make_unique<Impl>(in, std::move(file_name))) {
    try {
        impl_->read_first_line();
    } catch (const LineError& error) {
        throw TraceError(impl_->file_name, impl_->line_number, error.message, error.what_to_do);
    }
}

TraceReader::~TraceReader() = default;

const TraceHeader& TraceReader::header() const { return impl_->header; }

TraceRecord* TraceReader::next() {
    try {
        return impl_->read_record();
    } catch (const LineError& error) {
        throw TraceError(impl_->file_name, impl_->line_number, error.message, error.what_to_do);
    }
}

const std::vector<std::string>& TraceReader::warnings() const { return impl_->warnings; }

}  // namespace closetrace
