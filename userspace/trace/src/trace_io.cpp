#include "closetrace/trace_io.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <concepts>
#include <cstring>
#include <limits>
#include <span>
#include <system_error>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <simdjson.h>

#include "closetrace/http.h"

namespace closetrace {
namespace {

// ---------------------------------------------------------------------------------------------
// Strings as bytes

// Each byte becomes the code point of the same value, in UTF-8; dump() with ensure_ascii then
// writes every one that is not printable ASCII as \u00XX.
std::string bytes_to_utf8(std::string_view bytes) {
    std::string text;
    text.reserve(bytes.size());
    for (const char c : bytes) {
        const auto byte = static_cast<unsigned char>(c);
        if (byte < 0x80) {
            text += c;
        } else {
            text += static_cast<char>(0xC0 | (byte >> 6));
            text += static_cast<char>(0x80 | (byte & 0x3F));
        }
    }
    return text;
}

// Inverse of bytes_to_utf8; nullopt when `text` holds a code point above U+00FF.
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
// Writing

// Members keep the documented order, which makes traces easier to read and to grep.
using Json = nlohmann::ordered_json;

Json bytes_json(std::string_view bytes) { return Json(bytes_to_utf8(bytes)); }

Json nullable_json(const std::optional<std::string>& bytes) {
    return bytes ? bytes_json(*bytes) : Json(nullptr);
}

template <typename Number>
Json nullable_json(const std::optional<Number>& number) {
    return number ? Json(*number) : Json(nullptr);
}

Json endpoint_json(std::string_view addr, uint16_t port) {
    Json endpoint;
    endpoint["addr"] = bytes_json(addr);
    endpoint["port"] = port;
    return endpoint;
}

Json container_json(const ContainerRef& container) {
    Json json = Json::object();
    json["runtime"] = bytes_json(container.runtime);
    json["id"] = bytes_json(container.id);
    json["name"] = nullable_json(container.name);
    json["task_id"] = nullable_json(container.task_id);
    json["pod_uid"] = nullable_json(container.pod_uid);
    Json ecs(nullptr);
    if (container.ecs) {
        ecs = Json::object();
        ecs["task_arn"] = bytes_json(container.ecs->task_arn);
        ecs["family"] = bytes_json(container.ecs->family);
        ecs["revision"] = bytes_json(container.ecs->revision);
    }
    json["ecs"] = std::move(ecs);
    return json;
}

Json counts_json(const std::map<std::string, uint64_t>& counts) {
    Json object = Json::object();
    for (const auto& [name, count] : counts) object[bytes_to_utf8(name)] = count;
    return object;
}

// The HTTP messages a captured payload starts, without its bytes: what a verdict needs of them.
Json heads_json(std::string_view payload, bool full_target) {
    Json heads = Json::array();
    if (payload.empty()) return heads;
    const http::ParseResult parsed = http::parse(payload);
    for (std::size_t i = 0; i < parsed.count; ++i) {
        const http::Message& message = parsed.messages[i];
        Json head = Json::object();
        switch (message.kind) {
            case http::MessageKind::Request:
                head["method"] = bytes_json(message.method);
                head["target"] =
                    bytes_json(full_target ? message.target : http::strip_query(message.target));
                break;
            case http::MessageKind::Response:
                head["status"] = message.status != 0 ? Json(message.status) : Json(nullptr);
                break;
            case http::MessageKind::Opaque:
                head["opaque"] = true;
                break;
        }
        heads.push_back(std::move(head));
    }
    return heads;
}

std::string dump_line(const Json& line) { return line.dump(-1, ' ', /*ensure_ascii=*/true); }

// ---------------------------------------------------------------------------------------------
// Reading

using simdjson::dom::array;
using simdjson::dom::element;
using simdjson::dom::object;

// A problem within one line; the reader adds the file name and line number.
struct LineError {
    std::string message;
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

// An object's members, looked up by name. Each search starts after the previous match and wraps
// around, so looking members up in the order the writer wrote them costs one step each.
class Members {
public:
    explicit Members(object fields) : fields_(fields), next_(fields.begin()) {}

    std::optional<element> find(std::string_view key) {
        for (auto it = next_; it != fields_.end(); ++it) {
            if (it.key_equals(key)) return take(it);
        }
        for (auto it = fields_.begin(); it != next_; ++it) {
            if (it.key_equals(key)) return take(it);
        }
        return std::nullopt;
    }

private:
    element take(object::iterator match) {
        const element value = match.value();
        next_ = ++match;
        return value;
    }

    object fields_;
    object::iterator next_;
};

bool has_member(Members& parent, std::string_view name) { return parent.find(name).has_value(); }

element member(Members& parent, const MemberPath& path) {
    const std::optional<element> value = parent.find(path.name);
    if (!value) fail(path, "missing");
    return *value;
}

// How a JSON value becomes a C++ value of type T: decode() fails on a wrong type or an out of
// range number, and expected() says what would have been right.
template <typename T>
struct ValueCodec;

template <typename T>
    requires std::unsigned_integral<T> && (!std::same_as<T, bool>)
struct ValueCodec<T> {
    static bool decode(element value, T& out) {
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
    static bool decode(element value, T& out) {
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
    static bool decode(element value, double& out) {
        return value.get_double().get(out) == simdjson::SUCCESS;
    }
    static std::string expected() { return "a number"; }
};

template <>
struct ValueCodec<bool> {
    static bool decode(element value, bool& out) {
        return value.get_bool().get(out) == simdjson::SUCCESS;
    }
    static std::string expected() { return "true or false"; }
};

template <>
struct ValueCodec<std::string> {
    static bool decode(element value, std::string& out) {
        std::string_view text;
        if (value.get_string().get(text) != simdjson::SUCCESS) return false;
        std::optional<std::string> bytes = utf8_to_bytes(text);
        if (!bytes) return false;
        out = std::move(*bytes);
        return true;
    }
    static std::string expected() { return "a string of code points up to U+00FF"; }
};

template <typename T>
T required(Members& parent, const MemberPath& path) {
    T out{};
    if (!ValueCodec<T>::decode(member(parent, path), out)) {
        fail(path, "expected " + ValueCodec<T>::expected());
    }
    return out;
}

template <typename T>
std::optional<T> nullable(Members& parent, const MemberPath& path) {
    const element value = member(parent, path);
    if (value.is_null()) return std::nullopt;
    T out{};
    if (!ValueCodec<T>::decode(value, out)) {
        fail(path, "expected " + ValueCodec<T>::expected() + " or null");
    }
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

template <typename Enum>
Enum required_enum(Members& parent, const MemberPath& path, EnumParser<Enum> parse,
                   std::span<const Enum> values) {
    std::string_view name;
    std::optional<Enum> value;
    if (member(parent, path).get_string().get(name) == simdjson::SUCCESS) value = parse(name);
    if (!value) fail_enum(path, values, false);
    return *value;
}

template <typename Enum>
std::optional<Enum> nullable_enum(Members& parent, const MemberPath& path, EnumParser<Enum> parse,
                                  std::span<const Enum> values) {
    const element text = member(parent, path);
    if (text.is_null()) return std::nullopt;
    std::string_view name;
    std::optional<Enum> value;
    if (text.get_string().get(name) == simdjson::SUCCESS) value = parse(name);
    if (!value) fail_enum(path, values, true);
    return value;
}

object required_object(Members& parent, const MemberPath& path) {
    object value;
    if (member(parent, path).get_object().get(value) != simdjson::SUCCESS) {
        fail(path, "expected an object");
    }
    return value;
}

array required_array(Members& parent, const MemberPath& path) {
    array value;
    if (member(parent, path).get_array().get(value) != simdjson::SUCCESS) {
        fail(path, "expected an array");
    }
    return value;
}

std::string required_family(Members& parent, const MemberPath& path) {
    std::string_view name;
    const bool is_string = member(parent, path).get_string().get(name) == simdjson::SUCCESS;
    if (!is_string || std::find(std::begin(kFamilies), std::end(kFamilies), name) ==
                          std::end(kFamilies)) {
        fail(path, expected_one_of(kFamilies, false));
    }
    return std::string(name);
}


std::optional<ContainerRef> read_container(Members& parent, const MemberPath& path) {
    if (member(parent, path).is_null()) return std::nullopt;
    Members fields(required_object(parent, path));
    ContainerRef container;
    container.runtime = required<std::string>(fields, {&path, "runtime"});
    container.id = required<std::string>(fields, {&path, "id"});
    container.name = nullable<std::string>(fields, {&path, "name"});
    container.task_id = nullable<std::string>(fields, {&path, "task_id"});
    container.pod_uid = nullable<std::string>(fields, {&path, "pod_uid"});
    const MemberPath ecs_path{&path, "ecs"};
    if (!member(fields, ecs_path).is_null()) {
        Members ecs(required_object(fields, ecs_path));
        container.ecs = EcsTask{required<std::string>(ecs, {&ecs_path, "task_arn"}),
                                required<std::string>(ecs, {&ecs_path, "family"}),
                                required<std::string>(ecs, {&ecs_path, "revision"})};
    }
    return container;
}

Endpoint read_endpoint(Members& parent, const MemberPath& path) {
    Members endpoint(required_object(parent, path));
    return Endpoint{
        .addr = required<std::string>(endpoint, {&path, "addr"}),
        .port = required<uint16_t>(endpoint, {&path, "port"}),
    };
}

std::map<std::string, uint64_t> read_counts(Members& parent, const MemberPath& path) {
    std::map<std::string, uint64_t> counts;
    for (const auto [key, value] : required_object(parent, path)) {
        const MemberPath entry{&path, key};
        std::optional<std::string> name = utf8_to_bytes(key);
        uint64_t count = 0;
        if (!name) fail(entry, "member name is not a string of code points up to U+00FF");
        if (!ValueCodec<uint64_t>::decode(value, count)) {
            fail(entry, "expected " + ValueCodec<uint64_t>::expected());
        }
        counts[std::move(*name)] = count;
    }
    return counts;
}

TraceHeader read_header(Members& line) {
    const MemberPath root{nullptr, "header"};
    TraceHeader header;
    // First, so that a later schema's changes are reported as what they are.
    header.schema = required<std::string>(line, {&root, "schema"});
    if (header.schema != kTraceSchema && header.schema != kTraceSchemaV2 &&
        header.schema != kTraceSchemaV1) {
        throw LineError{fmt::format(
            "unsupported schema \"{}\"; this closetrace reads {}, {} and {}",
            excerpt_for_error(header.schema), kTraceSchemaV1, kTraceSchemaV2, kTraceSchema)};
    }
    header.tool_version = required<std::string>(line, {&root, "tool_version"});
    header.host = required<std::string>(line, {&root, "host"});
    header.kernel = required<std::string>(line, {&root, "kernel"});
    header.start_ns = required<uint64_t>(line, {&root, "start_ns"});
    header.start_wall = required<std::string>(line, {&root, "start_wall"});
    header.mono_to_wall_ns = required<int64_t>(line, {&root, "mono_to_wall_ns"});

    const MemberPath filters_path{&root, "filters"};
    Members filters(required_object(line, filters_path));
    const MemberPath ports_path{&filters_path, "ports"};
    std::size_t index = 0;
    for (const element port : required_array(filters, ports_path)) {
        const MemberPath port_path{&ports_path, {}, index++};
        uint16_t number = 0;
        if (!ValueCodec<uint16_t>::decode(port, number)) {
            fail(port_path, "expected " + ValueCodec<uint16_t>::expected());
        }
        header.filters.ports.push_back(number);
    }
    header.filters.cgroup = nullable<std::string>(filters, {&filters_path, "cgroup"});
    header.filters.full_target = required<bool>(filters, {&filters_path, "full_target"});
    if (has_member(filters, "raw_payloads")) {
        header.filters.raw_payloads = required<bool>(filters, {&filters_path, "raw_payloads"});
    }
    // Filters added later in closetrace/1: absent means not used.
    if (has_member(filters, "netns")) {
        header.filters.netns = nullable<uint32_t>(filters, {&filters_path, "netns"});
    }
    if (has_member(filters, "container")) {
        header.filters.container = nullable<std::string>(filters, {&filters_path, "container"});
    }
    if (has_member(filters, "pid")) {
        header.filters.pid = nullable<uint32_t>(filters, {&filters_path, "pid"});
    }

    const MemberPath probes_path{&root, "probes"};
    Members probes(required_object(line, probes_path));
    header.probes.state = nullable<std::string>(probes, {&probes_path, "state"});
    header.probes.reset_sent = nullable<std::string>(probes, {&probes_path, "reset_sent"});
    header.probes.reset_received = nullable<std::string>(probes, {&probes_path, "reset_received"});
    header.probes.messages = nullable<std::string>(probes, {&probes_path, "messages"});
    header.probes.rst_reason = required<bool>(probes, {&probes_path, "rst_reason"});
    return header;
}

Request read_request(Members& request, const MemberPath& path) {
    Request out;
    out.method = nullable<std::string>(request, {&path, "method"});
    out.target = nullable<std::string>(request, {&path, "target"});
    // Written only when true (docs/trace-format.md).
    const MemberPath opaque_path{&path, "opaque"};
    if (const std::optional<element> opaque = request.find(opaque_path.name)) {
        if (!ValueCodec<bool>::decode(*opaque, out.opaque)) {
            fail(opaque_path, "expected " + ValueCodec<bool>::expected());
        }
    }
    out.status = nullable<int>(request, {&path, "status"});
    out.request_ns = required<uint64_t>(request, {&path, "request_ns"});
    out.response_ns = nullable<uint64_t>(request, {&path, "response_ns"});
    out.outcome = required_enum<Outcome>(request, {&path, "outcome"}, outcome_from_string,
                                         kOutcomes);
    // closetrace/2; idle_before_ms nullable, close_asked written only when a message asked.
    if (has_member(request, "idle_before_ms")) {
        out.idle_before_ms = nullable<double>(request, {&path, "idle_before_ms"});
    }
    if (has_member(request, "close_asked")) {
        out.close_asked = required_enum<CloseAsked>(request, {&path, "close_asked"},
                                                    close_asked_from_string, kCloseAskedValues);
    }
    return out;
}

CloseInfo read_close(Members& parent, const MemberPath& path) {
    Members close(required_object(parent, path));
    CloseInfo out;
    out.initiator = required_enum<Initiator>(close, {&path, "initiator"}, initiator_from_string,
                                             kInitiators);
    out.how = nullable_enum<CloseHow>(close, {&path, "how"}, close_how_from_string, kCloseHows);
    out.local_fin_ns = nullable<uint64_t>(close, {&path, "local_fin_ns"});
    out.peer_fin_ns = nullable<uint64_t>(close, {&path, "peer_fin_ns"});
    out.local_rst_ns = nullable<uint64_t>(close, {&path, "local_rst_ns"});
    out.peer_rst_ns = nullable<uint64_t>(close, {&path, "peer_rst_ns"});
    out.rst_reason = nullable<std::string>(close, {&path, "rst_reason"});
    out.idle_ms = nullable<double>(close, {&path, "idle_ms"});
    if (has_member(close, "cause")) {  // closetrace/2
        out.cause = required_enum<CloseCause>(close, {&path, "cause"}, close_cause_from_string,
                                              kAllCloseCauses);
        out.asked_by = nullable_enum<Initiator>(close, {&path, "asked_by"}, initiator_from_string,
                                                kSides);
        out.unread_bytes = required<uint64_t>(close, {&path, "unread_bytes"});
    }
    return out;
}

Http2Side read_http2_side(Members& parent, const MemberPath& path) {
    Members side(required_object(parent, path));
    return Http2Side{
        .last_frame_ns = required<uint64_t>(side, {&path, "last_frame_ns"}),
        .streams_opened = required<uint32_t>(side, {&path, "streams_opened"}),
        .streams_answered = required<uint32_t>(side, {&path, "streams_answered"}),
        .last_stream_id = required<uint32_t>(side, {&path, "last_stream_id"}),
        .goaway_count = required<uint32_t>(side, {&path, "goaway_count"}),
        .goaway_last_stream_id = required<uint32_t>(side, {&path, "goaway_last_stream_id"}),
        .goaway_error = required<uint32_t>(side, {&path, "goaway_error"}),
        .rst_count = required<uint32_t>(side, {&path, "rst_count"}),
        .rst_last_error = required<uint32_t>(side, {&path, "rst_last_error"}),
    };
}

// closetrace/3: written for HTTP/2 connections only.
Http2Connection read_http2(Members& parent, const MemberPath& path) {
    Members fields(required_object(parent, path));
    Http2Connection out;
    out.client = required_enum<Initiator>(fields, {&path, "client"}, initiator_from_string, kSides);
    out.local = read_http2_side(fields, {&path, "local"});
    out.peer = read_http2_side(fields, {&path, "peer"});
    out.local_goaway_ns = nullable<uint64_t>(fields, {&path, "local_goaway_ns"});
    out.peer_goaway_ns = nullable<uint64_t>(fields, {&path, "peer_goaway_ns"});
    out.lost = required<bool>(fields, {&path, "lost"});
    out.pending_overflow = required<bool>(fields, {&path, "pending_overflow"});
    out.counted_at_close = required<bool>(fields, {&path, "counted_at_close"});
    const MemberPath caught_path{&path, "caught"};
    std::size_t index = 0;
    for (const element entry : required_array(fields, caught_path)) {
        const MemberPath stream_path{&caught_path, {}, index++};
        object stream_fields;
        if (entry.get_object().get(stream_fields) != simdjson::SUCCESS) {
            fail(stream_path, "expected an object");
        }
        Members stream(stream_fields);
        out.caught.push_back({
            .id = required<uint32_t>(stream, {&stream_path, "id"}),
            .opened_by = required_enum<Initiator>(stream, {&stream_path, "opened_by"},
                                                  initiator_from_string, kSides),
            .opened_ns = nullable<uint64_t>(stream, {&stream_path, "opened_ns"}),
            .reset_by = nullable_enum<Initiator>(stream, {&stream_path, "reset_by"},
                                                 initiator_from_string, kSides),
            .reset_ns = nullable<uint64_t>(stream, {&stream_path, "reset_ns"}),
            .fate = required_enum<StreamFate>(stream, {&stream_path, "fate"},
                                              stream_fate_from_string, kStreamFates),
        });
    }
    return out;
}

// `v1`: a closetrace/1 record, whose close cause is derived here from what it holds.
Connection read_connection(Members& line, bool v1) {
    const MemberPath root{nullptr, "conn"};
    Connection conn;
    conn.id = required<uint64_t>(line, {&root, "id"});
    conn.cookie = required<uint64_t>(line, {&root, "cookie"});
    conn.netns = required<uint32_t>(line, {&root, "netns"});
    conn.family = required_family(line, {&root, "family"});
    conn.local = read_endpoint(line, {&root, "local"});
    conn.remote = read_endpoint(line, {&root, "remote"});
    conn.role = required_enum<Role>(line, {&root, "role"}, role_from_string, kRoles);
    conn.pid = nullable<uint32_t>(line, {&root, "pid"});
    conn.comm = nullable<std::string>(line, {&root, "comm"});
    // Attribution members came later in closetrace/1: absent means not known.
    if (has_member(line, "owner_from")) {
        conn.owner_from = nullable<std::string>(line, {&root, "owner_from"});
    }
    if (has_member(line, "cgroup_id")) conn.cgroup_id = required<uint64_t>(line, {&root, "cgroup_id"});
    if (has_member(line, "cgroup")) conn.cgroup = nullable<std::string>(line, {&root, "cgroup"});
    if (has_member(line, "container")) conn.container = read_container(line, {&root, "container"});
    conn.established_ns = nullable<uint64_t>(line, {&root, "established_ns"});
    conn.closed_ns = nullable<uint64_t>(line, {&root, "closed_ns"});
    conn.bytes_in = required<uint64_t>(line, {&root, "bytes_in"});
    conn.bytes_out = required<uint64_t>(line, {&root, "bytes_out"});
    conn.segs_in = required<uint64_t>(line, {&root, "segs_in"});
    conn.segs_out = required<uint64_t>(line, {&root, "segs_out"});
    conn.close = read_close(line, {&root, "close"});

    const MemberPath requests_path{&root, "requests"};
    const array requests = required_array(line, requests_path);
    conn.requests.reserve(requests.size());
    std::size_t index = 0;
    for (const element request : requests) {
        const MemberPath request_path{&requests_path, {}, index++};
        object fields;
        if (request.get_object().get(fields) != simdjson::SUCCESS) {
            fail(request_path, "expected an object");
        }
        Members members(fields);
        conn.requests.push_back(read_request(members, request_path));
    }
    if (has_member(line, "requests_omitted")) {
        conn.requests_omitted = required<uint64_t>(line, {&root, "requests_omitted"});
    }
    conn.verdict = required_enum<Verdict>(line, {&root, "verdict"}, verdict_from_string,
                                          kAllVerdicts);
    if (has_member(line, "health_check")) {
        conn.health_check = nullable<std::string>(line, {&root, "health_check"});
    }
    // Added within closetrace/2: absent means no event was known lost while it was open.
    if (has_member(line, "incomplete")) {
        conn.incomplete = required<bool>(line, {&root, "incomplete"});
    }
    if (has_member(line, "http2")) conn.http2 = read_http2(line, {&root, "http2"});
    if (v1) {
        conn.close.cause = classify_close(conn, {});
        conn.close.asked_by = asked_by(conn);
    }
    return conn;
}

TraceEventLine read_event(Members& line) {
    const MemberPath root{nullptr, "event"};
    TraceEventLine event;
    const EventKind kind = required_enum<EventKind>(
        line, {&root, "kind"},
        [](std::string_view name) { return find_by_name<EventKind>(kEventKinds, name); },
        kEventKinds);
    event.kind = to_string(kind);
    event.ts_ns = required<uint64_t>(line, {&root, "ts_ns"});
    event.cookie = required<uint64_t>(line, {&root, "cookie"});
    event.netns = required<uint32_t>(line, {&root, "netns"});
    event.family = required_family(line, {&root, "family"});
    event.local = read_endpoint(line, {&root, "local"});
    event.remote = read_endpoint(line, {&root, "remote"});
    switch (kind) {
        case EventKind::State:
            event.old_state = required<std::string>(line, {&root, "old_state"});
            event.new_state = required<std::string>(line, {&root, "new_state"});
            event.role = required_enum<Role>(line, {&root, "role"}, role_from_string, kRoles);
            break;
        case EventKind::ResetSent:
        case EventKind::ResetReceived:
            event.rst_reason = nullable<std::string>(line, {&root, "rst_reason"});
            event.trigger_flags = required<std::string>(line, {&root, "trigger_flags"});
            event.sk_state = nullable<std::string>(line, {&root, "sk_state"});
            event.payload_len = required<uint32_t>(line, {&root, "payload_len"});
            break;
        case EventKind::Message:
            event.direction = required_enum<Direction>(
                line, {&root, "direction"},
                [](std::string_view name) { return find_by_name<Direction>(kDirections, name); },
                kDirections);
            event.payload_len = required<uint32_t>(line, {&root, "segment_len"});
            // closetrace/2 recorders since ABI 3: the kernel's numbering of the message.
            if (has_member(line, "message")) {
                event.response = required<std::string>(line, {&root, "message"}) == "response";
                event.requests_before = required<uint32_t>(line, {&root, "requests_before"});
                event.responses_before = required<uint32_t>(line, {&root, "responses_before"});
                event.held = required<bool>(line, {&root, "held"});
            }
            break;
        case EventKind::Http2: break;  // closetrace/3: its facts are in the conn line
    }
    // Written only by a recording with --raw-payloads.
    if (kind != EventKind::State && has_member(line, "payload")) {
        event.payload = required<std::string>(line, {&root, "payload"});
    }
    return event;
}

TraceSummary read_summary(Members& line) {
    const MemberPath root{nullptr, "summary"};
    TraceSummary summary;
    summary.connections = required<uint64_t>(line, {&root, "connections"});
    summary.open_at_end = required<uint64_t>(line, {&root, "open_at_end"});
    summary.requests = required<uint64_t>(line, {&root, "requests"});
    summary.lost_events = required<uint64_t>(line, {&root, "lost_events"});
    summary.events = required<uint64_t>(line, {&root, "events"});
    summary.duration_s = required<double>(line, {&root, "duration_s"});
    summary.end_ns = required<uint64_t>(line, {&root, "end_ns"});
    summary.by_initiator = read_counts(line, {&root, "by_initiator"});
    summary.by_how = read_counts(line, {&root, "by_how"});
    summary.verdicts = read_counts(line, {&root, "verdicts"});
    return summary;
}

// Values no recording writes, rejected rather than turned into verdicts and figures: a trace
// edited by hand or made by another tool.
Connection plausible(Connection conn) {
    if (conn.established_ns && conn.closed_ns && *conn.closed_ns < *conn.established_ns) {
        throw LineError{"conn.closed_ns: before conn.established_ns"};
    }
    if (conn.close.idle_ms && *conn.close.idle_ms < 0) {
        throw LineError{"conn.close.idle_ms: negative"};
    }
    return conn;
}

TraceSummary plausible(TraceSummary summary) {
    if (summary.duration_s < 0) throw LineError{"summary.duration_s: negative"};
    return summary;
}

std::string_view line_type(Members& line) {
    const MemberPath path{nullptr, "type"};
    std::string_view type;
    if (member(line, path).get_string().get(type) != simdjson::SUCCESS) {
        fail(path, "expected a string");
    }
    return type;
}

bool is_blank(std::string_view line) {
    return line.find_first_not_of(" \t\r") == std::string_view::npos;
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
    static constexpr std::size_t kInitialCapacity = 64 * 1024;

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

std::string header_line(const TraceHeader& header) {
    Json filters;
    Json ports = Json::array();
    for (const uint16_t port : header.filters.ports) ports.push_back(port);
    filters["ports"] = std::move(ports);
    filters["cgroup"] = nullable_json(header.filters.cgroup);
    filters["full_target"] = header.filters.full_target;
    filters["raw_payloads"] = header.filters.raw_payloads;
    filters["netns"] = nullable_json(header.filters.netns);
    filters["container"] = nullable_json(header.filters.container);
    filters["pid"] = nullable_json(header.filters.pid);

    Json probes;
    probes["state"] = nullable_json(header.probes.state);
    probes["reset_sent"] = nullable_json(header.probes.reset_sent);
    probes["reset_received"] = nullable_json(header.probes.reset_received);
    probes["messages"] = nullable_json(header.probes.messages);
    probes["rst_reason"] = header.probes.rst_reason;

    Json line;
    line["type"] = "header";
    line["schema"] = bytes_json(header.schema);
    line["tool_version"] = bytes_json(header.tool_version);
    line["host"] = bytes_json(header.host);
    line["kernel"] = bytes_json(header.kernel);
    line["start_ns"] = header.start_ns;
    line["start_wall"] = bytes_json(header.start_wall);
    line["mono_to_wall_ns"] = header.mono_to_wall_ns;
    line["filters"] = std::move(filters);
    line["probes"] = std::move(probes);
    return dump_line(line);
}

Json http2_side_json(const Http2Side& side) {
    Json json;
    json["last_frame_ns"] = side.last_frame_ns;
    json["streams_opened"] = side.streams_opened;
    json["streams_answered"] = side.streams_answered;
    json["last_stream_id"] = side.last_stream_id;
    json["goaway_count"] = side.goaway_count;
    json["goaway_last_stream_id"] = side.goaway_last_stream_id;
    json["goaway_error"] = side.goaway_error;
    json["rst_count"] = side.rst_count;
    json["rst_last_error"] = side.rst_last_error;
    return json;
}

Json http2_json(const Http2Connection& h2) {
    Json caught = Json::array();
    for (const Http2Stream& stream : h2.caught) {
        Json entry;
        entry["id"] = stream.id;
        entry["opened_by"] = to_string(stream.opened_by);
        entry["opened_ns"] = nullable_json(stream.opened_ns);
        entry["reset_by"] = stream.reset_by ? Json(to_string(*stream.reset_by)) : Json(nullptr);
        entry["reset_ns"] = nullable_json(stream.reset_ns);
        entry["fate"] = to_string(stream.fate);
        caught.push_back(std::move(entry));
    }
    Json json;
    json["client"] = to_string(h2.client);
    json["local"] = http2_side_json(h2.local);
    json["peer"] = http2_side_json(h2.peer);
    json["local_goaway_ns"] = nullable_json(h2.local_goaway_ns);
    json["peer_goaway_ns"] = nullable_json(h2.peer_goaway_ns);
    json["lost"] = h2.lost;
    json["pending_overflow"] = h2.pending_overflow;
    json["counted_at_close"] = h2.counted_at_close;
    json["caught"] = std::move(caught);
    return json;
}

std::string conn_line(const Connection& conn) {
    const CloseInfo& info = conn.close;
    Json close;
    close["initiator"] = to_string(info.initiator);
    close["how"] = info.how ? Json(to_string(*info.how)) : Json(nullptr);
    close["local_fin_ns"] = nullable_json(info.local_fin_ns);
    close["peer_fin_ns"] = nullable_json(info.peer_fin_ns);
    close["local_rst_ns"] = nullable_json(info.local_rst_ns);
    close["peer_rst_ns"] = nullable_json(info.peer_rst_ns);
    close["rst_reason"] = nullable_json(info.rst_reason);
    close["idle_ms"] = nullable_json(info.idle_ms);
    close["cause"] = to_string(info.cause);
    close["asked_by"] = info.asked_by ? Json(to_string(*info.asked_by)) : Json(nullptr);
    close["unread_bytes"] = info.unread_bytes;

    Json requests = Json::array();
    for (const Request& request : conn.requests) {
        Json entry;
        entry["method"] = nullable_json(request.method);
        entry["target"] = nullable_json(request.target);
        if (request.opaque) entry["opaque"] = true;
        entry["status"] = nullable_json(request.status);
        entry["request_ns"] = request.request_ns;
        entry["response_ns"] = nullable_json(request.response_ns);
        entry["outcome"] = to_string(request.outcome);
        entry["idle_before_ms"] = nullable_json(request.idle_before_ms);
        if (request.close_asked != CloseAsked::None) {
            entry["close_asked"] = to_string(request.close_asked);
        }
        requests.push_back(std::move(entry));
    }

    Json line;
    line["type"] = "conn";
    line["id"] = conn.id;
    line["cookie"] = conn.cookie;
    line["netns"] = conn.netns;
    line["family"] = bytes_json(conn.family);
    line["local"] = endpoint_json(conn.local.addr, conn.local.port);
    line["remote"] = endpoint_json(conn.remote.addr, conn.remote.port);
    line["role"] = to_string(conn.role);
    line["pid"] = nullable_json(conn.pid);
    line["comm"] = nullable_json(conn.comm);
    line["owner_from"] = nullable_json(conn.owner_from);
    line["cgroup_id"] = conn.cgroup_id;
    line["cgroup"] = nullable_json(conn.cgroup);
    line["container"] = conn.container ? container_json(*conn.container) : Json(nullptr);
    line["health_check"] = nullable_json(conn.health_check);
    line["established_ns"] = nullable_json(conn.established_ns);
    line["closed_ns"] = nullable_json(conn.closed_ns);
    line["bytes_in"] = conn.bytes_in;
    line["bytes_out"] = conn.bytes_out;
    line["segs_in"] = conn.segs_in;
    line["segs_out"] = conn.segs_out;
    line["close"] = std::move(close);
    line["requests"] = std::move(requests);
    line["requests_omitted"] = conn.requests_omitted;
    line["verdict"] = to_string(conn.verdict);
    line["incomplete"] = conn.incomplete;
    if (conn.http2) line["http2"] = http2_json(*conn.http2);
    return dump_line(line);
}

std::string event_line(const Event& event, PayloadPolicy policy) {
    const Tuple& tuple = event.tuple;
    Json line;
    line["type"] = "event";
    line["kind"] = to_string(event.kind);
    line["ts_ns"] = event.ts_ns;
    line["cookie"] = event.cookie;
    line["netns"] = event.netns;
    line["family"] = family_name(tuple.family);
    line["local"] = endpoint_json(format_address(tuple.family, tuple.laddr), tuple.lport);
    line["remote"] = endpoint_json(format_address(tuple.family, tuple.raddr), tuple.rport);
    switch (event.kind) {
        case EventKind::State:
            line["old_state"] = tcp_state_name(event.old_state);
            line["new_state"] = tcp_state_name(event.new_state);
            line["role"] = to_string(event.role);
            break;
        case EventKind::ResetSent:
        case EventKind::ResetReceived:
            line["rst_reason"] = nullable_json(event.rst_reason);
            line["trigger_flags"] = tcp_flags_string(event.trigger_flags);
            // sk_state 0: the kernel had no socket for the segment.
            line["sk_state"] = event.sk_state ? Json(tcp_state_name(event.sk_state)) : Json(nullptr);
            line["payload_len"] = event.payload_len;
            break;
        case EventKind::Message:
            line["direction"] = to_string(event.direction);
            line["segment_len"] = event.payload_len;
            line["message"] = event.response ? "response" : "request";
            line["requests_before"] = event.requests_before;
            line["responses_before"] = event.responses_before;
            line["held"] = event.held;
            break;
        case EventKind::Http2:
            line["record"] = event.http2.at_close ? "close" : "frame";
            line["direction"] = to_string(event.http2.direction);
            line["frame_type"] = event.http2.frame_type;
            line["stream_id"] = event.http2.stream_id;
            line["error_code"] = event.http2.error_code;
            break;
    }
    if (event.kind != EventKind::State && event.kind != EventKind::Http2) {
        line["heads"] = heads_json(event.payload, policy.full_target);
        if (policy.raw) line["payload"] = bytes_json(event.payload);
    }
    return dump_line(line);
}

std::string summary_line(const TraceSummary& summary) {
    Json line;
    line["type"] = "summary";
    line["connections"] = summary.connections;
    line["open_at_end"] = summary.open_at_end;
    line["requests"] = summary.requests;
    line["lost_events"] = summary.lost_events;
    line["events"] = summary.events;
    line["duration_s"] = summary.duration_s;
    line["end_ns"] = summary.end_ns;
    line["by_initiator"] = counts_json(summary.by_initiator);
    line["by_how"] = counts_json(summary.by_how);
    line["verdicts"] = counts_json(summary.verdicts);
    return dump_line(line);
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
    buffer_ += '\n';
    if (buffer_.size() >= flush_bytes_) flush();
}

void TraceWriter::flush() {
    std::size_t written = 0;
    const auto fail = [&](int error) {
        buffer_.erase(0, written);
        throw std::system_error(error, std::generic_category(), "writing the trace");
    };
    while (written < buffer_.size()) {
        const ssize_t count = ::write(fd_, buffer_.data() + written, buffer_.size() - written);
        if (count >= 0) {
            written += static_cast<std::size_t>(count);
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            // Standard output may be a non-blocking pipe shared with another process.
            pollfd writable{.fd = fd_, .events = POLLOUT, .revents = 0};
            if (::poll(&writable, 1, -1) < 0 && errno != EINTR) fail(errno);
        } else if (errno != EINTR) {
            fail(errno);
        }
    }
    buffer_.clear();
}

// ---------------------------------------------------------------------------------------------
// TraceError, TraceReader

TraceError::TraceError(const std::string& file, uint64_t line, const std::string& what)
    : std::runtime_error(line > 0 ? fmt::format("{}:{}: {}", file, line, what)
                                  : fmt::format("{}: {}", file, what)),
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

    simdjson::error_code parse(std::string_view text, element& root) {
        // The line lies in LineSource's padded buffer: no copy needed.
        return parser.parse(text.data(), text.size(), /*realloc_if_needed=*/false).get(root);
    }

    void read_first_line() {
        const std::optional<LineSource::Line> line = next_line();
        if (!line) throw TraceError(file_name, 0, "empty file, not a closetrace trace");
        element root;
        object fields;
        std::string_view type;
        if (parse(line->text, root) != simdjson::SUCCESS ||
            root.get_object().get(fields) != simdjson::SUCCESS ||
            fields.at_key("type").get_string().get(type) != simdjson::SUCCESS || type != "header") {
            throw LineError{"not a closetrace trace"};
        }
        Members members(fields);
        header = read_header(members);
    }

    std::optional<TraceRecord> read_record() {
        const std::optional<LineSource::Line> line = next_line();
        if (!line) return std::nullopt;
        element root;
        if (const auto error = parse(line->text, root); error != simdjson::SUCCESS) {
            if (!line->terminated) {
                warnings.push_back(fmt::format(
                    "{}: line {} is truncated (recording interrupted?); ignored", file_name,
                    line_number));
                return std::nullopt;
            }
            throw LineError{fmt::format("not valid JSON ({})", simdjson::error_message(error))};
        }
        object fields;
        if (root.get_object().get(fields) != simdjson::SUCCESS) {
            throw LineError{"expected a JSON object"};
        }
        // The summary is the last line: anything after it is another recording's.
        if (summary_seen) throw LineError{"a line after the summary (traces concatenated?)"};
        Members members(fields);
        const std::string_view type = line_type(members);
        if (type == "conn") return plausible(read_connection(members, header.schema == kTraceSchemaV1));
        if (type == "event") return read_event(members);
        if (type == "summary") {
            summary_seen = true;
            return plausible(read_summary(members));
        }
        if (type == "header") throw LineError{"a second header (traces concatenated?)"};
        throw LineError{fmt::format("unknown line type \"{}\"", excerpt_for_error(type))};
    }

    LineSource lines;
    std::string file_name;
    uint64_t line_number = 0;
    simdjson::dom::parser parser;
    TraceHeader header;
    std::vector<std::string> warnings;
    bool summary_seen = false;
};

TraceReader::TraceReader(std::istream& in, std::string file_name)
    : impl_(std::make_unique<Impl>(in, std::move(file_name))) {
    try {
        impl_->read_first_line();
    } catch (const LineError& error) {
        throw TraceError(impl_->file_name, impl_->line_number, error.message);
    }
}

TraceReader::~TraceReader() = default;

const TraceHeader& TraceReader::header() const { return impl_->header; }

std::optional<TraceRecord> TraceReader::next() {
    try {
        return impl_->read_record();
    } catch (const LineError& error) {
        throw TraceError(impl_->file_name, impl_->line_number, error.message);
    }
}

const std::vector<std::string>& TraceReader::warnings() const { return impl_->warnings; }

}  // namespace closetrace
