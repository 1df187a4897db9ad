#include "alb_command.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli_support.h"
#include "closetrace/alb_log.h"
#include "closetrace/alb_match.h"
#include "closetrace/text.h"
#include "closetrace/trace_io.h"
#include "closetrace/wallclock.h"

namespace closetrace {
namespace {

// Members in the order docs/alb.md lists them.
using json = nlohmann::ordered_json;

struct AlbOptions {
    std::string trace;
    std::vector<std::string> logs;
    double skew_ms = 1000;
    std::string format = "text";
    std::vector<std::string> maps;
};

// Unusable input: exit status 2.
[[noreturn]] void fail(const std::string& message) {
    throw CLI::RuntimeError("closetrace alb: " + message, 2);
}

void warn(const std::string& message) {
    std::fprintf(stderr, "closetrace alb: warning: %s\n", message.c_str());
}

double to_ms(int64_t ns) { return static_cast<double>(ns) / 1e6; }

TraceFacts load_trace(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(fmt::format("cannot open the trace {}: {}", path, std::strerror(errno)));
    try {
        TraceReader reader(in, path);
        return read_trace_facts(reader, path);
    } catch (const TraceError& error) {
        fail(fmt::format("unusable trace: {}", error.what()));
    }
}

std::vector<PortMapping> parse_mappings(const std::vector<std::string>& texts) {
    std::vector<PortMapping> mappings;
    for (const std::string& text : texts) {
        const std::optional<PortMapping> mapping = parse_port_mapping(text);
        if (!mapping) {
            fail(
                fmt::format("--map {}: expected HOSTPORT=CONTAINERPORT or "
                            "HOSTADDR:HOSTPORT=CONTAINERPORT (ports 1-65535)",
                            text));
        }
        mappings.push_back(*mapping);
    }
    return mappings;
}

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

// ---------------------------------------------------------------------------------------------
// Text

// What was read: the trace, the logs, and how lines are matched.
void print_text_inputs(const TraceFacts& trace, const LbLogReadStats& stats,
                       const AlbCorrelation& result, int64_t skew_ns) {
    std::string endpoints;
    for (const Endpoint& endpoint : trace.local_endpoints) {
        endpoints += (endpoints.empty() ? "" : ", ") + format_host_port(endpoint);
    }
    fmt::print("trace     {}: {} .. {} ({:.1f} s){}\n", printable(trace.file),
               iso8601_utc(trace.start_wall_ns), iso8601_utc(trace.end_wall_ns),
               static_cast<double>(trace.end_wall_ns - trace.start_wall_ns) / 1e9,
               trace.has_summary ? "" : ", cut short");
    fmt::print("          endpoints {}; caught connections: {}\n",
               endpoints.empty() ? "none" : endpoints, caught_summary(trace));
    fmt::print("logs      {} file{}, {} lines, {} malformed\n", stats.files,
               stats.files == 1 ? "" : "s", stats.lines, stats.malformed);
    const AlbCounts& counts = result.counts;
    fmt::print(
        "          {} load balancer errors (502/504/460, no target response): {} on this "
        "trace's endpoints during the recording, {} for other targets, {} outside the "
        "recording, {} never sent to a target\n",
        counts.lb_errors, counts.on_trace, counts.other_targets, counts.outside_recording,
        counts.not_sent);
    std::string matching =
        fmt::format("within {} ms; same endpoint, method and path; a verdict that fits the status",
                    to_ms(skew_ns));
    if (const std::optional<int64_t> median = median_delta_ns(result.pairs)) {
        matching += fmt::format("; trace minus balancer time: median {:+.1f} ms", to_ms(*median));
    }
    fmt::print("matching  {}\n\n", matching);
}

// Each error status: its lines, how many the trace explains, and by which verdicts.
void print_status_table(const AlbCorrelation& result) {
    fmt::print("status  lines  explained  unexplained\n");
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
        fmt::print("{:<6}  {:>5}  {:>9}  {:>11}{}\n", status, tally.lines, explained,
                   tally.unexplained, verdicts);
    }
}

// The balancer's error lines, explained (with the request the trace caught) or not.
void print_error_lines(const AlbCorrelation& result) {
    if (!result.pairs.empty()) fmt::print("\nexplained\n");
    for (const AlbPair& pair : result.pairs) {
        fmt::print("  {} {} {} -> {}  conn {} {}  {:+.1f} ms{}  ({}:{})\n",
                   iso8601_utc(pair.error.dispatch_ns), *pair.error.entry.elb_status_code,
                   request_line(pair.request.request),
                   format_host_port(*pair.error.entry.target), pair.request.conn_id,
                   to_string(pair.request.verdict), to_ms(pair.delta_ns),
                   pair.path_compared ? "" : ", path not compared", printable(pair.error.file),
                   pair.error.line);
    }
    if (!result.unexplained.empty()) fmt::print("\nunexplained\n");
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
        fmt::print("  {} {} \"{}\" -> {}{}  ({}:{})\n", iso8601_utc(error.dispatch_ns),
                   *entry.elb_status_code, printable(entry.request),
                   format_host_port(*entry.target), printable(reasons), printable(error.file),
                   error.line);
    }
}

void print_text(const TraceFacts& trace, const LbLogReadStats& stats, const AlbCorrelation& result,
                const std::vector<std::string>& conclusions, int64_t skew_ns) {
    print_text_inputs(trace, stats, result, skew_ns);
    print_status_table(result);
    print_error_lines(result);
    if (!stats.malformed_examples.empty()) {
        fmt::print("\nmalformed lines (first {} of {})\n", stats.malformed_examples.size(),
                   stats.malformed);
        for (const std::string& example : stats.malformed_examples) {
            fmt::print("  {}\n", printable(example));
        }
    }
    fmt::print("\nwhat it means\n");
    for (const std::string& sentence : conclusions) fmt::print("  - {}\n", sentence);
}

// ---------------------------------------------------------------------------------------------
// JSON

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
        {"request", entry.request},
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

json caught_json(const CaughtRequest& caught) {
    const Request& request = caught.request;
    return {
        {"conn_id", caught.conn_id},
        {"cookie", caught.cookie},
        {"verdict", to_string(caught.verdict)},
        {"local", format_host_port(caught.local)},
        {"remote", format_host_port(caught.remote)},
        {"method", optional_json(request.method)},
        {"target", optional_json(request.target)},
        {"opaque", request.opaque},
        {"outcome", to_string(request.outcome)},
        {"request_ns", request.request_ns},
        {"request_time", iso8601_utc(caught.wall_ns)},
    };
}

json trace_json(const TraceFacts& trace) {
    json endpoints = json::array();
    for (const Endpoint& endpoint : trace.local_endpoints) {
        endpoints.push_back(format_host_port(endpoint));
    }
    json caught = json::object();
    for (const auto& [verdict, count] : trace.caught_connections) {
        caught[to_string(verdict)] = count;
    }
    return {{"file", trace.file},
            {"start", iso8601_utc(trace.start_wall_ns)},
            {"end", iso8601_utc(trace.end_wall_ns)},
            {"complete", trace.has_summary},
            {"lost_events", trace.lost_events},
            {"endpoints", endpoints},
            {"caught_connections", caught},
            {"caught_requests", trace.caught_requests.size()}};
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

void print_json(const TraceFacts& trace, const LbLogReadStats& stats, const AlbCorrelation& result,
                const std::vector<std::string>& conclusions, const AlbOptions& options,
                const std::vector<std::string>& warnings) {
    json pairs = json::array();
    for (const AlbPair& pair : result.pairs) {
        pairs.push_back({{"lb", lb_line_json(pair.error)},
                         {"trace", caught_json(pair.request)},
                         {"delta_ms", to_ms(pair.delta_ns)},
                         {"path_compared", pair.path_compared}});
    }
    json unexplained = json::array();
    for (const LbErrorLine& error : result.unexplained) unexplained.push_back(lb_line_json(error));
    json unmatched = json::array();
    for (const CaughtRequest& request : result.unmatched_requests) {
        unmatched.push_back(caught_json(request));
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
          {"requests_on_trace", counts.requests_on_trace}}},
        {"skew_ms", options.skew_ms},
        {"maps", options.maps},
        {"median_delta_ms", median ? json(to_ms(*median)) : json(nullptr)},
        {"by_status", by_status_json(result)},
        {"pairs", pairs},
        {"unexplained", unexplained},
        {"unmatched_trace_requests", unmatched},
        {"conclusions", conclusions},
        {"warnings", warnings},
    };
    // Log and wire bytes need not be UTF-8: replace what is not rather than fail.
    fmt::print("{}\n", report.dump(2, ' ', false, json::error_handler_t::replace));
}

void run_alb(const AlbOptions& options) {
    const std::vector<PortMapping> mappings = parse_mappings(options.maps);
    const int64_t skew_ns = std::llround(options.skew_ms * 1e6);
    const TraceFacts trace = load_trace(options.trace);

    AlbCorrelator correlator(trace, mappings, skew_ns);
    const LbLogReadStats stats =
        read_lb_logs(options.logs, [&](const LbLogEntry& entry, const std::string& file,
                                       uint64_t line) { correlator.add(entry, file, line); });

    std::vector<std::string> warnings = trace.warnings;
    if (!trace.has_summary) {
        warnings.push_back(fmt::format(
            "{} has no summary line (recording cut short): its end is the last time it records",
            trace.file));
    }
    warnings.insert(warnings.end(), stats.file_errors.begin(), stats.file_errors.end());
    for (const std::string& warning : warnings) warn(printable(warning));

    if (stats.entries == 0) {
        std::string why = stats.lines > 0 ? fmt::format("all {} lines are malformed", stats.lines)
                                          : "no lines read";
        if (!stats.malformed_examples.empty()) why += ", e.g. " + stats.malformed_examples.front();
        fail(printable(fmt::format("no readable load balancer log line ({})", why)));
    }

    const AlbCorrelation result = correlator.finish();
    const std::vector<std::string> conclusions = alb_conclusions(trace, result, skew_ns);
    if (options.format == "json") {
        print_json(trace, stats, result, conclusions, options, warnings);
    } else {
        print_text(trace, stats, result, conclusions, skew_ns);
    }
}

}  // namespace

void add_alb_command(CLI::App& app) {
    auto options = std::make_shared<AlbOptions>();
    CLI::App* command = app.add_subcommand(
        "alb",
        "Match a load balancer's 502, 504 and 460 access log lines to a trace's close "
        "races and in-flight closes");
    command->add_option("trace", options->trace, "Trace recorded on the backend (JSON Lines)")
        ->required();
    command
        ->add_option("logs", options->logs,
                     "ALB or Classic Load Balancer access logs: files (plain or .gz) or "
                     "directories (searched for .log and .gz files)")
        ->required();
    command
        ->add_option("--skew", options->skew_ms,
                     "Largest difference in ms between the balancer's and the trace's time of "
                     "a request (clock skew plus network)")
        ->check(finite_range(0, 3'600'000, "ms"))
        ->capture_default_str();
    command->add_option("--format", options->format, "Output format")
        ->check(CLI::IsMember({"text", "json"}))
        ->capture_default_str();
    command->add_option("--map", options->maps,
                        "HOSTPORT=CONTAINERPORT or HOSTADDR:HOSTPORT=CONTAINERPORT: the balancer "
                        "targets HOSTPORT, the trace sees the container's port (repeatable)");
    command->callback([options] {
        try {
            run_alb(*options);
        } catch (const std::system_error&) {
            flush_stdout("alb");  // fmt::print's failed write is standard output's error
            throw;
        }
        flush_stdout("alb");
    });
}

}  // namespace closetrace
