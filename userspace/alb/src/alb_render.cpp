#include "closetrace/alb_render.h"

#include <algorithm>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "closetrace/text.h"
#include "closetrace/wallclock.h"

namespace closetrace {
namespace {

// Members in the order docs/alb.md lists them.
using json = nlohmann::ordered_json;

double to_ms(int64_t ns) { return static_cast<double>(ns) / 1e6; }

// Middle of the trace-minus-balancer time differences: how far the clocks (plus the network)
// are apart, which tells whether --skew is comfortable.
std::optional<int64_t> median_delta_ns(const std::vector<AlbPair>& pairs) {
    if (pairs.empty()) return std::nullopt;
    std::vector<int64_t> deltas;
    for (const AlbPair& pair : pairs) deltas.push_back(pair.delta_ns);
    std::ranges::nth_element(deltas, deltas.begin() + static_cast<long>(deltas.size() / 2));
    return deltas[deltas.size() / 2];
}

std::string caught_summary(const TraceFacts& trace) {
    std::string text;
    for (const auto& [verdict, connections] : trace.caught_connections) {
        text += fmt::format("{}{} {}", text.empty() ? "" : ", ", connections, to_string(verdict));
    }
    return text.empty() ? "none" : text;
}

json optional_json(const auto& value) {
    if (!value) return nullptr;
    return *value;
}

json lb_line_json(const LbErrorLine& error) {
    const LbLogEntry& entry = error.entry;
    return {
        {"file", error.file},
        {"line", error.line},
        {"format", entry.kind == LbKind::Application ? "application" : "classic"},
        {"type", entry.type},
        {"time", iso8601_utc(entry.time_ns)},
        {"dispatch_time", iso8601_utc(error.dispatch_ns)},
        {"elb_status_code", optional_json(entry.elb_status_code)},
        {"target_status_code", optional_json(entry.target_status_code)},
        {"target", format_host_port(*entry.target)},
        {"client", entry.client ? json(format_host_port(*entry.client)) : json(nullptr)},
        {"request", public_request(entry.request)},
        {"request_processing_time", entry.request_processing_s},
        {"target_processing_time", entry.target_processing_s},
        {"response_processing_time", entry.response_processing_s},
        {"error_reason", entry.error_reason},
        {"classification", entry.classification},
        {"classification_reason", entry.classification_reason},
        {"trace_id", entry.trace_id},
        {"conn_trace_id", optional_json(entry.conn_trace_id)},
    };
}

// `name_host`: the trace facts are of several hosts.
json caught_json(const CaughtRequest& caught, bool name_host) {
    const Request& request = caught.request;
    json member = {
        {"conn_id", caught.conn_id},
        {"cookie", caught.cookie},
        {"verdict", to_string(caught.verdict)},
        {"local", format_host_port(caught.local)},
        {"remote", format_host_port(caught.remote)},
        {"method", optional_json(request.method)},
        {"target", optional_json(request.target)},
        {"opaque", request.opaque},
        {"outcome", caught.stream ? json(nullptr) : json(to_string(request.outcome))},
        {"request_ns", request.request_ns},
        {"request_time", iso8601_utc(caught.wall_ns)},
    };
    if (name_host) member["host"] = caught.host;
    if (caught.stream) {
        member["stream"] = {{"id", caught.stream->id},
                            {"fate", to_string(caught.stream->fate)},
                            {"opened_by", to_string(caught.stream->opened_by)},
                            {"names", to_string(caught.stream->names)}};
    }
    return member;
}

// What was read: the trace, the logs, and how lines are matched.
std::string inputs_text(const TraceFacts& trace, const LbLogReadStats& stats,
                        const AlbCorrelation& result, int64_t skew_ns) {
    std::string out;
    std::string endpoints;
    for (const Endpoint& endpoint : trace.local_endpoints) {
        endpoints += (endpoints.empty() ? "" : ", ") + format_host_port(endpoint);
    }
    out += fmt::format("trace     {}: {} .. {} ({:.1f} s){}\n", printable(trace.file),
                       iso8601_utc(trace.start_wall_ns), iso8601_utc(trace.end_wall_ns),
                       static_cast<double>(trace.end_wall_ns - trace.start_wall_ns) / 1e9,
                       trace.has_summary ? "" : ", cut short");
    out += fmt::format("          endpoints {}; caught connections: {}\n",
                       endpoints.empty() ? "none" : endpoints, caught_summary(trace));
    out += fmt::format("logs      {} file{}, {} lines, {} malformed{}\n", stats.files,
                       stats.files == 1 ? "" : "s", stats.lines, stats.malformed,
                       stats.file_errors.empty()
                           ? ""
                           : fmt::format("; {} not read whole (below)", stats.file_errors.size()));
    const AlbCounts& counts = result.counts;
    out += fmt::format(
        "          {} load balancer errors (502/504/460, no target response): {} on this "
        "trace's endpoints during the recording, {} for other targets, {} outside the "
        "recording, {} never sent to a target\n",
        counts.lb_errors, counts.on_trace, counts.other_targets, counts.outside_recording,
        counts.not_sent);
    std::string matching =
        fmt::format("within {} ms; same endpoint, method and path; a verdict that fits the status",
                    to_ms(skew_ns));
    const auto is_stream = [](const CaughtRequest& caught) { return caught.stream.has_value(); };
    if (std::ranges::any_of(trace.caught_requests, is_stream)) {
        matching += "; HTTP/2 streams: h2 and grpcs lines, by endpoint and time (and method and "
                    "path when named)";
    }
    if (const std::optional<int64_t> median = median_delta_ns(result.pairs)) {
        matching += fmt::format("; trace minus balancer time: median {:+.1f} ms", to_ms(*median));
    }
    out += fmt::format("matching  {}\n\n", matching);
    return out;
}

// Each error status: its lines, how many the trace explains, and by which verdicts.
std::string status_table_text(const AlbCorrelation& result) {
    std::string out = "status  lines  explained  unexplained\n";
    for (int status : kLbErrorCodes) {
        const StatusTally& tally = result.by_status.at(status);
        std::string verdicts;
        uint64_t explained = 0;
        for (const auto& [verdict, count] : tally.explained) {
            verdicts +=
                fmt::format("{}{} {}", verdicts.empty() ? "  (" : ", ", to_string(verdict), count);
            explained += count;
        }
        if (!verdicts.empty()) verdicts += ")";
        out += fmt::format("{:<6}  {:>5}  {:>9}  {:>11}{}\n", status, tally.lines, explained,
                           tally.unexplained, verdicts);
    }
    return out;
}

// What the trace caught: the request line, or an HTTP/2 stream (named when recorded so).
std::string caught_text(const CaughtRequest& caught) {
    return caught.stream ? stream_line(*caught.stream) : request_line(caught.request);
}

// The balancer's error lines, explained (with the request the trace caught) or not.
std::string error_lines_text(const AlbCorrelation& result, bool name_hosts) {
    std::string out;
    if (!result.pairs.empty()) out += "\nexplained\n";
    for (const AlbPair& pair : result.pairs) {
        const std::string host =
            name_hosts ? " on host " + printable(pair.request.host) : std::string();
        out += fmt::format("  {} {} {} -> {}  conn {}{} {}  {:+.1f} ms{}  ({}:{})\n",
                           iso8601_utc(pair.error.dispatch_ns), *pair.error.entry.elb_status_code,
                           caught_text(pair.request),
                           format_host_port(*pair.error.entry.target), pair.request.conn_id, host,
                           to_string(pair.request.verdict), to_ms(pair.delta_ns),
                           pair.path_compared || pair.request.stream ? "" : ", path not compared",
                           printable(pair.error.file), pair.error.line);
    }
    if (!result.unexplained.empty()) out += fmt::format("\nunexplained\n");
    for (const LbErrorLine& error : result.unexplained) {
        const LbLogEntry& entry = error.entry;
        // Classic Load Balancer lines have neither field.
        std::string reasons;
        if (entry.kind == LbKind::Application) {
            reasons = fmt::format("  error_reason {}  classification {}", entry.error_reason,
                                  entry.classification);
            if (entry.classification_reason != "-")
                reasons += " (" + entry.classification_reason + ")";
        }
        out += fmt::format("  {} {} \"{}\" -> {}{}  ({}:{})\n", iso8601_utc(error.dispatch_ns),
                           *entry.elb_status_code, printable(public_request(entry.request)),
                           format_host_port(*entry.target), printable(reasons),
                           printable(error.file), error.line);
    }
    return out;
}

// The trace's facts as alb's JSON report names them.
json trace_json(const TraceFacts& trace) {
    json endpoints = json::array();
    for (const Endpoint& endpoint : trace.local_endpoints) {
        endpoints.push_back(format_host_port(endpoint));
    }
    json caught = json::object();
    for (const auto& [verdict, count] : trace.caught_connections) {
        caught[to_string(verdict)] = count;
    }
    json facts = {{"file", trace.file},
            {"start", iso8601_utc(trace.start_wall_ns)},
            {"end", iso8601_utc(trace.end_wall_ns)},
            {"complete", trace.has_summary},
            {"lost_events", trace.lost_events},
            {"endpoints", endpoints},
            {"caught_connections", caught},
            {"caught_requests", trace.caught_requests.size()}};
    if (trace.hosts.size() > 1) facts["hosts"] = trace.hosts;
    return facts;
}

json by_status_json(const AlbCorrelation& result) {
    json by_status = json::object();
    for (int status : kLbErrorCodes) {
        const StatusTally& tally = result.by_status.at(status);
        json explained = json::object();
        for (const auto& [verdict, count] : tally.explained) explained[to_string(verdict)] = count;
        by_status[std::to_string(status)] = {
            {"lines", tally.lines}, {"explained", explained}, {"unexplained", tally.unexplained}};
    }
    return by_status;
}

}  // namespace

std::string render_alb_text(const TraceFacts& trace, const LbLogReadStats& stats,
                            const AlbCorrelation& result,
                            const std::vector<std::string>& conclusions, int64_t skew_ns) {
    std::string out = inputs_text(trace, stats, result, skew_ns) + status_table_text(result) +
                      error_lines_text(result, trace.hosts.size() > 1);
    if (!stats.malformed_examples.empty()) {
        out += fmt::format("\nmalformed lines (first {} of {})\n", stats.malformed_examples.size(),
                           stats.malformed);
        for (const std::string& example : stats.malformed_examples) {
            out += fmt::format("  {}\n", printable(example));
        }
    }
    if (!stats.file_errors.empty()) {
        // Pasted into a ticket without stderr, the figures must still say they may miss lines.
        out += "\nlogs not read whole (the figures count their lines up to the fault)\n";
        for (const std::string& error : stats.file_errors) {
            out += fmt::format("  {}\n", printable(error));
        }
    }
    out += fmt::format("\nwhat it means\n");
    for (const std::string& sentence : conclusions) out += fmt::format("  - {}\n", sentence);
    return out;
}

std::string render_alb_json(const TraceFacts& trace, const LbLogReadStats& stats,
                            const AlbCorrelation& result,
                            const std::vector<std::string>& conclusions, double skew_ms,
                            const std::vector<std::string>& maps,
                            const std::vector<std::string>& warnings) {
    const bool name_hosts = trace.hosts.size() > 1;
    json pairs = json::array();
    for (const AlbPair& pair : result.pairs) {
        pairs.push_back({{"lb", lb_line_json(pair.error)},
                         {"trace", caught_json(pair.request, name_hosts)},
                         {"delta_ms", to_ms(pair.delta_ns)},
                         {"path_compared", pair.path_compared}});
    }
    json unexplained = json::array();
    for (const LbErrorLine& error : result.unexplained) unexplained.push_back(lb_line_json(error));
    json unmatched = json::array();
    for (const CaughtRequest& request : result.unmatched_requests) {
        unmatched.push_back(caught_json(request, name_hosts));
    }
    const AlbCounts& counts = result.counts;
    const std::optional<int64_t> median = median_delta_ns(result.pairs);

    const json report = {
        {"trace", trace_json(trace)},
        {"logs",
         {{"files", stats.files},
          {"lines", stats.lines},
          {"entries", stats.entries},
          {"malformed", stats.malformed},
          {"malformed_examples", stats.malformed_examples},
          {"file_errors", stats.file_errors}}},
        {"selection",
         {{"lb_errors", counts.lb_errors},
          {"on_trace", counts.on_trace},
          {"other_targets", counts.other_targets},
          {"outside_recording", counts.outside_recording},
          {"not_sent", counts.not_sent},
          {"unreached", counts.unreached},
          {"requests_on_trace", counts.requests_on_trace}}},
        {"skew_ms", skew_ms},
        {"maps", maps},
        {"median_delta_ms", median ? json(to_ms(*median)) : json(nullptr)},
        {"by_status", by_status_json(result)},
        {"pairs", pairs},
        {"unexplained", unexplained},
        {"unmatched_trace_requests", unmatched},
        {"conclusions", conclusions},
        {"warnings", warnings},
    };
    // Log and wire bytes need not be UTF-8: replace what is not rather than fail.
    return report.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

}  // namespace closetrace
