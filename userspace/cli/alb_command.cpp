#include "alb_command.h"

#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include <fmt/format.h>

#include "cli_support.h"
#include "closetrace/alb_log.h"
#include "closetrace/alb_match.h"
#include "closetrace/alb_render.h"
#include "closetrace/file_content.h"
#include "closetrace/text.h"
#include "closetrace/trace_files.h"
#include "closetrace/trace_io.h"

namespace closetrace {
namespace {

struct AlbOptions {
    std::vector<std::string> traces;  // --trace
    std::vector<std::string> inputs;  // [TRACE] LOGS...: TRACE only when --trace is not given
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

// A trace read alone (read_trace_facts), or one of several (read_trace_facts_part, and a file
// that holds no recording is then thrown on as NoRecordingError, for load_traces to leave out).
TraceFileRead<TraceFacts> load_trace(const std::string& path, bool one_of_several = false) {
    try {
        TraceFileRead<TraceFacts> loaded =
            read_trace_file(path, one_of_several ? read_trace_facts_part : read_trace_facts);
        if (!loaded.result.has_summary) {
            loaded.result.warnings.push_back(
                fmt::format("{} has no summary line (recording cut short): its end is the last "
                            "time it records",
                            loaded.result.file));
        }
        return loaded;
    } catch (const TraceOpenError& error) {
        fail(fmt::format("{}; give a trace file `closetrace record` wrote", error.what()));
    } catch (const NoRecordingError& error) {
        if (one_of_several) throw;
        fail(fmt::format("unusable trace: {}", error.what()));
    } catch (const TraceError& error) {
        fail(fmt::format("unusable trace: {}{}", error.what(),
                         error.what_to_do().empty() ? "" : "; " + error.what_to_do()));
    }
}

// The traces read in parallel and merged; the first unusable one in the order given fails.
TraceFacts load_traces(const std::vector<std::string>& arguments) {
    std::vector<std::string> paths;
    try {
        paths = trace_files(arguments);
    } catch (const TraceArgumentError& error) {
        fail(error.what());
    }
    TracesRead<TraceFileRead<TraceFacts>> read;
    try {
        read = read_traces<TraceFileRead<TraceFacts>>(
            paths, [&](const std::string& path) { return load_trace(path, paths.size() > 1); },
            [](const TraceFileRead<TraceFacts>& part) {
                return RecordingSpan{&part.result.header, part.result.end_wall_ns};
            });
    } catch (const TraceArgumentError& error) {
        fail(error.what());
    }
    for (const std::string& left_out : read.left_out) warn(left_out);
    std::vector<TraceFacts> parts;
    for (TraceFileRead<TraceFacts>& trace : read.parts) {
        if (!trace.problem.empty()) warn(trace.problem);
        parts.push_back(std::move(trace.result));
    }
    return merge_trace_facts(std::move(parts));
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

void run_alb(const AlbOptions& options) {
    std::vector<std::string> traces = options.traces;
    std::vector<std::string> logs = options.inputs;
    if (traces.empty() && !logs.empty()) {
        traces.push_back(logs.front());
        logs.erase(logs.begin());
    }
    if (logs.empty()) {
        fail("give TRACE ALB_LOGS... or --trace TRACE... ALB_LOGS...: no load balancer log given");
    }
    const std::vector<PortMapping> mappings = parse_mappings(options.maps);
    const int64_t skew_ns = std::llround(options.skew_ms * 1e6);
    const TraceFacts trace = load_traces(traces);

    AlbCorrelator correlator(trace, mappings, skew_ns);
    const LbLogReadStats stats =
        read_lb_logs(logs, [&](const LbLogEntry& entry, const std::string& file, uint64_t line) {
            correlator.add(entry, file, line);
        });

    std::vector<std::string> warnings = trace.warnings;
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
        fmt::print("{}", render_alb_json(trace, stats, result, conclusions, options.skew_ms,
                                         options.maps, warnings));
    } else {
        fmt::print("{}", render_alb_text(trace, stats, result, conclusions, skew_ns));
    }
}

}  // namespace

void add_alb_command(CLI::App& app) {
    auto options = std::make_shared<AlbOptions>();
    CLI::App* command = app.add_subcommand(
        "alb",
        "Match a load balancer's 502, 504 and 460 access log lines to a trace's close "
        "races and in-flight closes");
    command
        ->add_option("--trace,-t", options->traces,
                     "Traces recorded on the backends, instead of the first argument: files "
                     "(plain or gzip), directories (their *.jsonl and *.jsonl.gz files), - for "
                     "standard input (repeatable)")
        ->allow_extra_args(false);
    command
        ->add_option("inputs", options->inputs,
                     "TRACE (unless --trace is given: a trace file or directory, - for standard "
                     "input), then ALB or Classic Load Balancer access logs: files (plain or .gz) "
                     "or directories (searched for .log and .gz files)")
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
