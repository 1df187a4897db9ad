// Load balancer access logs: the Application Load Balancer's format exactly as AWS documents it
// (and the Classic Load Balancer's), read from plain or gzip files, or directories of them.
// See docs/alb.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "closetrace/model.h"

namespace closetrace {

enum class LbKind { Application, Classic };

// One access log line. Text fields keep what the log holds ("-" included); quoted fields are
// stored without their quotes.
struct LbLogEntry {
    LbKind kind = LbKind::Application;
    std::string type;     // http | https | h2 | grpcs | ws | wss; empty for Classic
    int64_t time_ns = 0;  // Unix epoch. ALB: when it answered the client; Classic: when it
                          // received the request
    std::string elb;      // load balancer resource id ("app/my-lb/50dc6c495c0c9188")
    std::optional<Endpoint> client;
    std::optional<Endpoint> target;         // nullopt for "-": not sent to a target
    double request_processing_s = 0;        // -1: not sent to a target
    double target_processing_s = 0;         // -1: no complete response from the target
    double response_processing_s = 0;       // -1: no response to send
    std::optional<int> elb_status_code;     // nullopt for "-"
    std::optional<int> target_status_code;  // nullopt for "-" (Classic: 0): no answer
    uint64_t received_bytes = 0;
    uint64_t sent_bytes = 0;
    std::string request;  // "GET https://example.com:443/path?query HTTP/1.1"
    std::string user_agent;
    std::string ssl_cipher;
    std::string ssl_protocol;

    // Application Load Balancer only (empty or nullopt for Classic).
    std::string target_group_arn;
    std::string trace_id;
    std::string domain_name;
    std::string chosen_cert_arn;
    std::optional<int> matched_rule_priority;         // nullopt for "-"
    std::optional<int64_t> request_creation_time_ns;  // when it received the request
    std::string actions_executed;
    std::string redirect_url;
    std::string error_reason;
    std::string target_port_list;
    std::string target_status_code_list;
    std::string classification;
    std::string classification_reason;
    std::optional<std::string> conn_trace_id;  // nullopt in logs older than the field
};

// Parses one line of either format; they differ in the first field (a type for ALB, a time for
// Classic). Fields after the last documented one are ignored (AWS appends new fields at the end).
// On failure returns nullopt and says why in `error`.
std::optional<LbLogEntry> parse_lb_log_line(std::string_view line, std::string& error);

// "2018-07-02T22:23:00.186641Z" to Unix-epoch nanoseconds; nullopt unless exactly that shape
// (fraction optional, 1-9 digits).
std::optional<int64_t> parse_iso8601_utc(std::string_view text);

// When the load balancer sent the request to the target (Unix epoch): when it received it
// (ALB request_creation_time, Classic time) plus request_processing_time. nullopt when it never
// sent it (request_processing_time -1).
std::optional<int64_t> dispatch_time_ns(const LbLogEntry& entry);

struct LoggedRequest {
    std::string method;
    std::string path;  // without scheme, authority and query
};
// The method and path of a logged request line ("GET https://h:443/a?q HTTP/1.1" -> GET, /a);
// nullopt when the load balancer could not parse the client's request ("- - -" and the like).
std::optional<LoggedRequest> parse_logged_request(std::string_view request);

// The path of a request target or URL, without scheme, authority and query:
// "https://h:443/a/b?x" -> "/a/b", "/a/b?x" -> "/a/b", "https://h:443" -> "/".
std::string path_without_query(std::string_view target);

// A log line's request as default output shows it, its URL cut as the trace's targets are
// (http::public_target: no query string, no credentials): "GET https://h:443/a?x HTTP/1.1" ->
// "GET https://h:443/a HTTP/1.1".
std::string public_request(std::string_view request);

// "10.0.0.1:80", "[fd00::1]:80" or "fd00::1:80" (split at the last colon); nullopt otherwise.
std::optional<Endpoint> parse_host_port(std::string_view text);
// "10.0.0.1:80", "[fd00::1]:80".
std::string format_host_port(const Endpoint& endpoint);

inline constexpr std::size_t kMaxMalformedExamples = 5;
// Longer lines are counted as malformed rather than held in memory.
inline constexpr std::size_t kMaxLbLogLineBytes = 1024 * 1024;

struct LbLogReadStats {
    uint64_t files = 0;                           // files opened
    uint64_t lines = 0;                           // lines that are not blank
    uint64_t entries = 0;                         // lines parsed
    uint64_t malformed = 0;                       // lines that could not be parsed
    std::vector<std::string> malformed_examples;  // "file:line: why", the first few
    // "path: why": missing, unreadable, corrupt, or gzip and plain text mixed in one file
    std::vector<std::string> file_errors;
};

using LbLogVisitor =
    std::function<void(const LbLogEntry& entry, const std::string& file, uint64_t line)>;

// Reads each path: a file as given, a directory's files ending .log or .gz, recursively, in name
// order. Gzip or plain is told by the content (a plain tail after gzip data is read too, and
// reported in file_errors). Every parsed line goes to `visit`; bad input never throws, it is
// counted and described in the returned stats.
LbLogReadStats read_lb_logs(const std::vector<std::string>& paths, const LbLogVisitor& visit);

}  // namespace closetrace
