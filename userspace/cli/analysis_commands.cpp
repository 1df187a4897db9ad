#include "analysis_commands.h"

#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "cli_support.h"
#include "closetrace/report.h"
#include "closetrace/text.h"
#include "closetrace/trace_files.h"

namespace closetrace {
namespace {

constexpr const char* kTraceHelp =
    "Traces written by `closetrace record`: files (plain or gzip), directories (their *.jsonl "
    "and *.jsonl.gz files), - for standard input; several are merged, each connection keeping "
    "its host";
constexpr int kExitUnusableInput = 2;

struct AnalysisOptions {
    std::vector<std::string> traces;
    std::vector<std::string> before;  // diff --before
    std::vector<std::string> after;   // diff --after
    std::string format = "text";
    std::string output = "-";
    std::optional<double> peer_idle_timeout_s;
    std::vector<std::string> by;  // report --by
};

std::vector<Breakdown> breakdowns(const std::vector<std::string>& names) {
    if (names.empty()) return kDefaultBreakdowns;
    std::vector<Breakdown> chosen;
    for (const std::string& name : names) {
        chosen.push_back(name == "comm"   ? Breakdown::Comm
                         : name == "peer" ? Breakdown::Peer
                         : name == "host" ? Breakdown::Host
                                          : Breakdown::Container);
    }
    return chosen;
}

OutputFormat output_format(const std::string& name) {
    if (name == "html") return OutputFormat::Html;
    return name == "json" ? OutputFormat::Json : OutputFormat::Text;
}

// --format, and --output for the file it goes to.
void add_output_options(CLI::App* command, AnalysisOptions& options) {
    command->add_option("--format", options.format, "Output format")
        ->check(CLI::IsMember({"text", "json", "html"}))
        ->capture_default_str();
    command->add_option("--output,-o", options.output,
                        "Write to FILE instead of standard output (e.g. report.html)");
}

// The messages are complete on stderr already: the exception only carries the status.
void finish(const CommandOutput& output, const char* command) {
    std::fputs(output.out.c_str(), stdout);
    std::fputs(output.err.c_str(), stderr);
    flush_stdout(command);
    if (output.exit_code != 0) throw CLI::RuntimeError("", output.exit_code);
}

// Runs `run` on the trace files the arguments name, or fails with what to give instead.
template <typename Run>
CommandOutput on_trace_files(const char* command, const std::vector<std::vector<std::string>>& sets,
                             const Run& run) {
    std::vector<std::vector<std::string>> files;
    try {
        for (const std::vector<std::string>& arguments : sets) {
            files.push_back(trace_files(arguments));
        }
    } catch (const TraceArgumentError& error) {
        return {.err = fmt::format("closetrace {}: {}\n", command, printable(error.what())),
                .exit_code = kExitUnusableInput};
    }
    return run(files);
}

// diff's two sets: BEFORE AFTER, or --before ... --after ...
std::vector<std::vector<std::string>> diff_sets(const AnalysisOptions& options) {
    const bool named = !options.before.empty() || !options.after.empty();
    if (named && options.traces.empty() && !options.before.empty() && !options.after.empty()) {
        return {options.before, options.after};
    }
    if (!named && options.traces.size() == 2) return {{options.traces[0]}, {options.traces[1]}};
    throw CLI::RuntimeError(
        "closetrace diff: give BEFORE AFTER (two traces or two directories of traces) or "
        "--before TRACE... --after TRACE...",
        kExitUnusableInput);
}

}  // namespace

void add_analysis_commands(CLI::App& app) {
    auto options = std::make_shared<AnalysisOptions>();

    CLI::App* report = app.add_subcommand(
        "report",
        "Who closes idle keep-alive connections and after how long, the requests caught "
        "in a close, and the setting to change");
    report->add_option("traces", options->traces, kTraceHelp)->required();
    add_output_options(report, *options);
    report->add_option("--by", options->by,
                       "Break the figures down by comm, peer, container or host (repeatable; "
                       "default: comm and peer)")
        ->check(CLI::IsMember({"comm", "peer", "container", "host"}));
    report->callback([options] {
        const CommandOutput output = on_trace_files(
            "report", {options->traces}, [&](const std::vector<std::vector<std::string>>& files) {
                return run_report(files[0], output_format(options->format),
                                  breakdowns(options->by));
            });
        finish(write_output(output, options->output, "report"), "report");
    });

    CLI::App* diff = app.add_subcommand(
        "diff",
        "Compare recordings before a change with recordings after it: fixed, not fixed or "
        "inconclusive (exit 0 for each)");
    diff->add_option("before_after", options->traces,
                     "BEFORE AFTER: the trace recorded before the change and the one after it "
                     "(plain or gzip; - for standard input), or two directories of traces")
        ->expected(0, 2);
    diff->add_option("--before", options->before,
                     "Traces recorded before the change, across hosts (files, directories, -)");
    diff->add_option("--after", options->after,
                     "Traces recorded after the change, across hosts (files, directories, -)");
    add_output_options(diff, *options);
    diff->callback([options] {
        const CommandOutput output = on_trace_files(
            "diff", diff_sets(*options), [&](const std::vector<std::vector<std::string>>& files) {
                return run_diff(files[0], files[1], output_format(options->format));
            });
        finish(write_output(output, options->output, "diff"), "diff");
    });

    CLI::App* verify = app.add_subcommand(
        "verify",
        "Exit 0 when this host neither races nor idle-closes before its peer, 1 with the "
        "reasons otherwise, 3 when no idle close by either side shows who closes first (record "
        "longer), 2 on unusable input");
    verify->add_option("traces", options->traces, kTraceHelp)->required();
    verify->add_option("--peer-idle-timeout", options->peer_idle_timeout_s,
                       "The peer's idle timeout in seconds (default: the longest idle close the "
                       "peer made in the traces, else the ALB default of 60)");
    verify->callback([options] {
        finish(on_trace_files("verify", {options->traces},
                              [&](const std::vector<std::vector<std::string>>& files) {
                                  return run_verify(files[0], options->peer_idle_timeout_s,
                                                    options->traces);
                              }),
               "verify");
    });
}

}  // namespace closetrace
