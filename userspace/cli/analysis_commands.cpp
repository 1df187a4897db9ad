#include "analysis_commands.h"

#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli_support.h"
#include "closetrace/report.h"

namespace closetrace {
namespace {

constexpr const char* kTraceHelp =
    "Trace written by `closetrace record` (plain or gzip; - for standard input)";

struct AnalysisOptions {
    std::string trace;
    std::string later_trace;  // diff's AFTER
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

}  // namespace

void add_analysis_commands(CLI::App& app) {
    auto options = std::make_shared<AnalysisOptions>();

    CLI::App* report = app.add_subcommand(
        "report",
        "Who closes idle keep-alive connections and after how long, the requests caught "
        "in a close, and the setting to change");
    report->add_option("trace", options->trace, kTraceHelp)->required();
    add_output_options(report, *options);
    report->add_option("--by", options->by,
                       "Break the figures down by comm, peer or container (repeatable; default: "
                       "comm and peer)")
        ->check(CLI::IsMember({"comm", "peer", "container"}));
    report->callback([options] {
        finish(write_output(run_report(options->trace, output_format(options->format),
                                       breakdowns(options->by)),
                            options->output, "report"),
               "report");
    });

    CLI::App* diff = app.add_subcommand(
        "diff",
        "Compare a recording before a change with one after it: fixed, not fixed or "
        "inconclusive (exit 0 for each)");
    diff->add_option("before", options->trace, "Trace recorded before the change (plain or gzip; - for standard input)")->required();
    diff->add_option("after", options->later_trace, "Trace recorded after the change (plain or gzip; - for standard input)")->required();
    add_output_options(diff, *options);
    diff->callback([options] {
        finish(write_output(
            run_diff(options->trace, options->later_trace, output_format(options->format)),
            options->output, "diff"),
            "diff");
    });

    CLI::App* verify = app.add_subcommand(
        "verify",
        "Exit 0 when this host neither races nor idle-closes before its peer, 1 with the "
        "reasons otherwise, 2 on unusable input");
    verify->add_option("trace", options->trace, kTraceHelp)->required();
    verify->add_option("--peer-idle-timeout", options->peer_idle_timeout_s,
                       "The peer's idle timeout in seconds (default: the longest idle close the "
                       "peer made in the trace, else the ALB default of 60)");
    verify->callback(
        [options] { finish(run_verify(options->trace, options->peer_idle_timeout_s), "verify"); });
}

}  // namespace closetrace
