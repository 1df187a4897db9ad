#include "closetrace/alb_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <system_error>

#include <fmt/format.h>

#include "closetrace/file_content.h"
#include "closetrace/file_descriptor.h"
#include "closetrace/http.h"

namespace closetrace {
namespace {

namespace fs = std::filesystem;

struct Field {
    std::string_view text;  // without the quotes of a quoted field
    bool quoted = false;
};

// A line that does not have the documented shape; `why` names the field.
struct Malformed {
    std::string why;
};

// A field's text for a message: a line may be megabytes of anything.
std::string excerpt(std::string_view text) {
    constexpr size_t kMaxBytes = 40;
    if (text.size() <= kMaxBytes) return fmt::format("\"{}\"", text);
    return fmt::format("\"{}...\"", text.substr(0, kMaxBytes));
}

// Space-separated fields; a quoted field runs to the next quote that is followed by a space or
// the end of the line and not escaped by a backslash (a user agent may hold quotes).
std::vector<Field> split_fields(std::string_view line) {
    std::vector<Field> fields;
    size_t pos = 0;
    while (pos < line.size()) {
        if (line[pos] == ' ') {
            ++pos;
            continue;
        }
        if (line[pos] == '"') {
            size_t close = pos + 1;
            for (;; ++close) {
                close = line.find('"', close);
                if (close == std::string_view::npos) {
                    throw Malformed{fmt::format("field {}: no closing quote", fields.size() + 1)};
                }
                const bool escaped = line[close - 1] == '\\' && close - 1 > pos;
                if (!escaped && (close + 1 == line.size() || line[close + 1] == ' ')) break;
            }
            fields.push_back({line.substr(pos + 1, close - pos - 1), true});
            pos = close + 1;
        } else {
            const size_t end = std::min(line.find(' ', pos), line.size());
            const std::string_view text = line.substr(pos, end - pos);
            if (text.find('"') != std::string_view::npos) {
                throw Malformed{
                    fmt::format("field {}: stray quote in {}", fields.size() + 1, excerpt(text))};
            }
            fields.push_back({text, false});
            pos = end;
        }
    }
    return fields;
}

std::string_view unquoted(const Field& field, const char* name) {
    if (field.quoted) throw Malformed{fmt::format("{}: quoted, expected a bare value", name)};
    return field.text;
}

std::string_view quoted(const Field& field, const char* name) {
    if (!field.quoted) throw Malformed{fmt::format("{}: expected a quoted value", name)};
    return field.text;
}

template <typename Number>
std::optional<Number> parse_number(std::string_view text) {
    Number value{};
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (error != std::errc{} || end != text.data() + text.size()) return std::nullopt;
    return value;
}

int64_t parse_time(const Field& field, const char* name) {
    const std::optional<int64_t> ns = parse_iso8601_utc(unquoted(field, name));
    if (!ns) {
        throw Malformed{
            fmt::format("{}: {} is not an ISO 8601 UTC time", name, excerpt(field.text))};
    }
    return *ns;
}

// Seconds with a fraction, or -1 where AWS marks a step that did not happen.
double parse_seconds(const Field& field, const char* name) {
    const std::optional<double> seconds = parse_number<double>(unquoted(field, name));
    if (!seconds || !std::isfinite(*seconds) || (*seconds < 0 && *seconds != -1)) {
        throw Malformed{fmt::format("{}: {} is not seconds or -1", name, excerpt(field.text))};
    }
    return *seconds;
}

// "-" (ALB) or 0 (Classic, a backend that never answered): no status.
std::optional<int> parse_status(const Field& field, const char* name) {
    const std::string_view text = unquoted(field, name);
    if (text == "-" || text == "0") return std::nullopt;
    const std::optional<int> status = parse_number<int>(text);
    if (!status || *status < 100 || *status > 999) {
        throw Malformed{fmt::format("{}: {} is not an HTTP status or -", name, excerpt(text))};
    }
    return status;
}

uint64_t parse_bytes(const Field& field, const char* name) {
    const std::optional<uint64_t> bytes = parse_number<uint64_t>(unquoted(field, name));
    if (!bytes) {
        throw Malformed{fmt::format("{}: {} is not a byte count", name, excerpt(field.text))};
    }
    return *bytes;
}

std::optional<Endpoint> parse_endpoint_field(const Field& field, const char* name) {
    const std::string_view text = unquoted(field, name);
    if (text == "-") return std::nullopt;
    std::optional<Endpoint> endpoint = parse_host_port(text);
    if (!endpoint) {
        throw Malformed{fmt::format("{}: {} is not address:port or -", name, excerpt(text))};
    }
    return endpoint;
}

std::optional<int> parse_rule_priority(const Field& field) {
    const std::string_view text = unquoted(field, "matched_rule_priority");
    if (text == "-") return std::nullopt;
    const std::optional<int> priority = parse_number<int>(text);
    if (!priority) {
        throw Malformed{
            fmt::format("matched_rule_priority: {} is not a number or -", excerpt(text))};
    }
    return priority;
}

// The fields both formats share, from `first` (client:port) to ssl_protocol.
void parse_common_fields(const std::vector<Field>& fields, size_t first, LbLogEntry& entry) {
    const Field* f = fields.data() + first;
    const bool classic = entry.kind == LbKind::Classic;
    entry.client = parse_endpoint_field(f[0], "client:port");
    entry.target = parse_endpoint_field(f[1], classic ? "backend:port" : "target:port");
    entry.request_processing_s = parse_seconds(f[2], "request_processing_time");
    entry.target_processing_s =
        parse_seconds(f[3], classic ? "backend_processing_time" : "target_processing_time");
    entry.response_processing_s = parse_seconds(f[4], "response_processing_time");
    entry.elb_status_code = parse_status(f[5], "elb_status_code");
    entry.target_status_code =
        parse_status(f[6], classic ? "backend_status_code" : "target_status_code");
    entry.received_bytes = parse_bytes(f[7], "received_bytes");
    entry.sent_bytes = parse_bytes(f[8], "sent_bytes");
    entry.request = quoted(f[9], "request");
    entry.user_agent = quoted(f[10], "user_agent");
    entry.ssl_cipher = unquoted(f[11], "ssl_cipher");
    entry.ssl_protocol = unquoted(f[12], "ssl_protocol");
}

// A quoted field that swallowed its neighbours holds a quote: the likely cause of a misfit.
std::string lost_quote_hint(const std::vector<Field>& fields) {
    const bool swallowed = std::ranges::any_of(fields, [](const Field& field) {
        return field.quoted && field.text.find('"') != std::string_view::npos;
    });
    return swallowed ? " (a closing quote missing?)" : "";
}

// type time elb client:port target:port ... ssl_protocol target_group_arn "trace_id" ...
// "classification_reason" [conn_trace_id]
constexpr size_t kAlbFields = 29;  // up to classification_reason; conn_trace_id came later
// time elb client:port backend:port ... "request" "user_agent" ssl_cipher ssl_protocol
constexpr size_t kClassicFields = 15;

LbLogEntry parse_alb(const std::vector<Field>& fields) {
    if (fields.size() < kAlbFields) {
        throw Malformed{fmt::format("{} fields, an Application Load Balancer line has at least {}",
                                    fields.size(), kAlbFields)};
    }
    LbLogEntry entry;
    entry.kind = LbKind::Application;
    entry.type = unquoted(fields[0], "type");
    entry.time_ns = parse_time(fields[1], "time");
    entry.elb = unquoted(fields[2], "elb");
    parse_common_fields(fields, 3, entry);
    entry.target_group_arn = unquoted(fields[16], "target_group_arn");
    entry.trace_id = quoted(fields[17], "trace_id");
    entry.domain_name = quoted(fields[18], "domain_name");
    entry.chosen_cert_arn = quoted(fields[19], "chosen_cert_arn");
    entry.matched_rule_priority = parse_rule_priority(fields[20]);
    entry.request_creation_time_ns = parse_time(fields[21], "request_creation_time");
    entry.actions_executed = quoted(fields[22], "actions_executed");
    entry.redirect_url = quoted(fields[23], "redirect_url");
    entry.error_reason = quoted(fields[24], "error_reason");
    entry.target_port_list = quoted(fields[25], "target:port_list");
    entry.target_status_code_list = quoted(fields[26], "target_status_code_list");
    entry.classification = quoted(fields[27], "classification");
    entry.classification_reason = quoted(fields[28], "classification_reason");
    if (fields.size() > kAlbFields) entry.conn_trace_id = unquoted(fields[29], "conn_trace_id");
    return entry;
}

LbLogEntry parse_classic(const std::vector<Field>& fields) {
    if (fields.size() < kClassicFields) {
        throw Malformed{fmt::format("{} fields, a Classic Load Balancer line has at least {}",
                                    fields.size(), kClassicFields)};
    }
    LbLogEntry entry;
    entry.kind = LbKind::Classic;
    entry.time_ns = parse_time(fields[0], "time");
    entry.elb = unquoted(fields[1], "elb");
    parse_common_fields(fields, 2, entry);
    return entry;
}

// Lines of a log file's content.
class LogLines {
public:
    explicit LogLines(FileContent& content) : content_(content) {}

    // The next line without its "\n" or "\r\n"; false at the end of the file. A line longer than
    // kMaxLbLogLineBytes is skipped to its end and comes back empty with `overlong` set.
    bool next(std::string& line, bool& overlong) {
        overlong = false;
        for (;;) {
            const size_t newline = buffer_.find('\n', scanned_);
            if (newline != std::string::npos) {
                take(line, newline, newline + 1);
                return true;
            }
            scanned_ = buffer_.size();
            if (buffer_.size() - start_ > kMaxLbLogLineBytes) {
                overlong = true;
                line.clear();
                skip_to_next_line();
                return true;
            }
            if (!fill()) {
                if (start_ == buffer_.size()) return false;
                take(line, buffer_.size(), buffer_.size());  // last line with no "\n"
                return true;
            }
        }
    }

private:
    static constexpr size_t kChunkBytes = 128 * 1024;

    void take(std::string& line, size_t end, size_t next_start) {
        line.assign(buffer_, start_, end - start_);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        start_ = scanned_ = next_start;
    }

    // Appends a chunk, first dropping the lines already handed out; false at the end or on error.
    bool fill() {
        buffer_.erase(0, start_);
        scanned_ -= start_;
        start_ = 0;
        const size_t old_size = buffer_.size();
        buffer_.resize(old_size + kChunkBytes);
        const size_t got = content_.read(buffer_.data() + old_size, kChunkBytes);
        buffer_.resize(old_size + got);
        return got > 0;
    }

    void skip_to_next_line() {
        buffer_.clear();
        start_ = scanned_ = 0;
        while (fill()) {
            const size_t newline = buffer_.find('\n');
            if (newline != std::string::npos) {
                start_ = scanned_ = newline + 1;
                return;
            }
            buffer_.clear();
        }
    }

    FileContent& content_;
    std::string buffer_;
    size_t start_ = 0;    // where the next line begins
    size_t scanned_ = 0;  // searched for "\n" up to here
};

bool has_log_extension(const fs::path& path) {
    const std::string name = path.filename().string();
    return name.ends_with(".log") || name.ends_with(".gz");
}

// The files named by `paths`, with directories expanded; problems go to `errors`.
std::vector<std::string> log_files(const std::vector<std::string>& paths,
                                   std::vector<std::string>& errors) {
    std::vector<std::string> files;
    for (const std::string& path : paths) {
        std::error_code error;
        if (!fs::is_directory(path, error)) {
            if (!fs::exists(path, error)) {
                errors.push_back(fmt::format("{}: no such file or directory", path));
            } else {
                files.push_back(path);
            }
            continue;
        }
        std::vector<std::string> found;
        fs::recursive_directory_iterator entry(path, fs::directory_options::skip_permission_denied,
                                               error);
        for (; !error && entry != fs::recursive_directory_iterator(); entry.increment(error)) {
            std::error_code type_error;
            if (entry->is_regular_file(type_error) && has_log_extension(entry->path())) {
                found.push_back(entry->path().string());
            }
        }
        if (error) errors.push_back(fmt::format("{}: {}", path, error.message()));
        if (found.empty() && !error) {
            errors.push_back(fmt::format("{}: no .log or .gz file in this directory", path));
        }
        std::sort(found.begin(), found.end());
        files.insert(files.end(), found.begin(), found.end());
    }
    return files;
}

void read_one_file(const std::string& file, const LbLogVisitor& visit, LbLogReadStats& stats) {
    const FileDescriptor fd(open(file.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) {
        stats.file_errors.push_back(fmt::format("{}: {}", file, std::strerror(errno)));
        return;
    }
    ++stats.files;
    FileContent content(fd.get());
    LogLines lines(content);
    std::string text;
    std::string why;
    bool overlong = false;
    for (uint64_t number = 1; lines.next(text, overlong); ++number) {
        if (!overlong && text.find_first_not_of(" \t") == std::string::npos) continue;
        ++stats.lines;
        std::optional<LbLogEntry> entry;
        if (overlong) {
            why = fmt::format("longer than {} bytes", kMaxLbLogLineBytes);
        } else {
            entry = parse_lb_log_line(text, why);
        }
        if (entry) {
            ++stats.entries;
            visit(*entry, file, number);
            continue;
        }
        ++stats.malformed;
        if (stats.malformed_examples.size() < kMaxMalformedExamples) {
            stats.malformed_examples.push_back(fmt::format("{}:{}: {}", file, number, why));
        }
    }
    if (!content.problem().empty()) {
        stats.file_errors.push_back(fmt::format("{}: {}", file, content.problem()));
    }
}

}  // namespace

std::optional<int64_t> parse_iso8601_utc(std::string_view text) {
    // YYYY-MM-DDTHH:MM:SS[.fraction]Z
    constexpr std::string_view kShape = "dddd-dd-ddTdd:dd:dd";
    if (text.size() < kShape.size() + 1 || text.back() != 'Z') return std::nullopt;
    for (size_t i = 0; i < kShape.size(); ++i) {
        const bool digit = text[i] >= '0' && text[i] <= '9';
        if (kShape[i] == 'd' ? !digit : text[i] != kShape[i]) return std::nullopt;
    }
    auto number = [&](size_t pos, size_t digits) {
        return *parse_number<int>(text.substr(pos, digits));
    };
    const std::chrono::year_month_day date{std::chrono::year{number(0, 4)},
                                           std::chrono::month{static_cast<unsigned>(number(5, 2))},
                                           std::chrono::day{static_cast<unsigned>(number(8, 2))}};
    const int hour = number(11, 2);
    const int minute = number(14, 2);
    const int second = number(17, 2);
    if (!date.ok() || hour > 23 || minute > 59 || second > 59) return std::nullopt;

    int64_t fraction_ns = 0;
    const std::string_view fraction = text.substr(kShape.size(), text.size() - kShape.size() - 1);
    if (!fraction.empty()) {
        const std::string_view digits = fraction.substr(1);
        if (fraction[0] != '.' || digits.empty() || digits.size() > 9 ||
            digits.find_first_not_of("0123456789") != std::string_view::npos) {
            return std::nullopt;
        }
        fraction_ns = *parse_number<int64_t>(digits);
        for (size_t scale = digits.size(); scale < 9; ++scale) fraction_ns *= 10;
    }
    const int64_t days = std::chrono::sys_days{date}.time_since_epoch().count();
    const int64_t seconds = ((days * 24 + hour) * 60 + minute) * 60 + second;
    return seconds * 1'000'000'000 + fraction_ns;
}

std::optional<LbLogEntry> parse_lb_log_line(std::string_view line, std::string& error) {
    std::vector<Field> fields;
    try {
        fields = split_fields(line);
        if (fields.empty()) throw Malformed{"empty line"};
        const bool classic = !fields[0].quoted && parse_iso8601_utc(fields[0].text).has_value();
        return classic ? parse_classic(fields) : parse_alb(fields);
    } catch (const Malformed& malformed) {
        error = malformed.why + lost_quote_hint(fields);
        return std::nullopt;
    }
}

std::optional<int64_t> dispatch_time_ns(const LbLogEntry& entry) {
    if (entry.request_processing_s < 0) return std::nullopt;
    const int64_t received_ns = entry.request_creation_time_ns.value_or(entry.time_ns);
    return received_ns + std::llround(entry.request_processing_s * 1e9);
}

std::string path_without_query(std::string_view target) {
    const size_t scheme_end = target.find("://");
    if (scheme_end != std::string_view::npos && target.find('/') > scheme_end) {
        const std::string_view after_scheme = target.substr(scheme_end + 3);
        const size_t path_start = after_scheme.find_first_of("/?");
        target = path_start == std::string_view::npos ? std::string_view{}
                                                      : after_scheme.substr(path_start);
    }
    target = target.substr(0, target.find('?'));
    if (target.empty()) return "/";
    return std::string(target);
}

namespace {

// A log line's request, "GET https://h:443/a?x HTTP/1.1", split at its first and last space.
struct RequestLine {
    std::string_view method;
    std::string_view url;
    std::string_view version;  // with the space before it
};

std::optional<RequestLine> split_request_line(std::string_view request) {
    const size_t method_end = request.find(' ');
    const size_t version_start = request.rfind(' ');
    if (method_end == std::string_view::npos || version_start <= method_end) return std::nullopt;
    return RequestLine{request.substr(0, method_end),
                       request.substr(method_end + 1, version_start - method_end - 1),
                       request.substr(version_start)};
}

}  // namespace

std::optional<LoggedRequest> parse_logged_request(std::string_view request) {
    const std::optional<RequestLine> line = split_request_line(request);
    if (!line || line->method.empty() || line->method == "-" || line->url.empty() ||
        line->url == "-") {
        return std::nullopt;
    }
    return LoggedRequest{std::string(line->method), path_without_query(line->url)};
}

std::string public_request(std::string_view request) {
    const std::optional<RequestLine> line = split_request_line(request);
    if (!line) return std::string(http::public_target(request));
    return fmt::format("{} {}{}", line->method, http::public_target(line->url), line->version);
}

std::optional<Endpoint> parse_host_port(std::string_view text) {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    std::string_view host = text.substr(0, colon);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
    }
    const std::optional<uint16_t> port = parse_number<uint16_t>(text.substr(colon + 1));
    if (host.empty() || !port || *port == 0) return std::nullopt;
    return Endpoint{std::string(host), *port};
}

std::string format_host_port(const Endpoint& endpoint) {
    if (endpoint.addr.find(':') != std::string::npos) {
        return fmt::format("[{}]:{}", endpoint.addr, endpoint.port);
    }
    return fmt::format("{}:{}", endpoint.addr, endpoint.port);
}

LbLogReadStats read_lb_logs(const std::vector<std::string>& paths, const LbLogVisitor& visit) {
    LbLogReadStats stats;
    for (const std::string& file : log_files(paths, stats.file_errors)) {
        read_one_file(file, visit, stats);
    }
    return stats;
}

}  // namespace closetrace
