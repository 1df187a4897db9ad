// The analysis rendered (text, JSON, HTML), and `report`, `diff` and `verify` as the CLI runs
// them. See docs/report-format.md.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "closetrace/analysis.h"

namespace closetrace {

// Rendering (report_render.cpp)

// Html: render_report_html and render_diff_html (report_html.cpp), which run_report and run_diff
// call for it.
enum class OutputFormat { Text, Json, Html };

// The breakdowns the text report shows (`report --by`); the JSON report has all of them.
enum class Breakdown { Comm, Peer, Container, Host };
inline const std::vector<Breakdown> kDefaultBreakdowns = {Breakdown::Comm, Breakdown::Peer};

std::string render_report(const TraceAnalysis& trace, const Assessment& assessment,
                          OutputFormat format,
                          const std::vector<Breakdown>& breakdowns = kDefaultBreakdowns);
std::string render_diff(const TraceAnalysis& before, const TraceAnalysis& after,
                        const DiffResult& result, OutputFormat format);
// `traces_given`: the traces as the command line named them, for the `closetrace report` it
// points at (none: the trace's file).
std::string render_verify(const TraceAnalysis& trace, const VerifyResult& result,
                          const std::vector<std::string>& traces_given = {});

// One self-contained page (inline CSS and SVG, no script, no fetches) with the same conclusion
// and recommendations, the idle times of each side as histograms, the verdicts over time and a
// timeline of each listed race; the diff puts the two recordings side by side.
std::string render_report_html(const TraceAnalysis& trace, const Assessment& assessment);
std::string render_diff_html(const TraceAnalysis& before, const TraceAnalysis& after,
                             const DiffResult& result);

// ---------------------------------------------------------------------------------------------
// The commands, as the CLI runs them: what goes to stdout and stderr and the exit status
// (0 done, 1 verify failed, 2 unusable input). Messages on stderr start "closetrace COMMAND: ".

struct CommandOutput {
    std::string out{};
    std::string err{};
    int exit_code = 0;
};

// Each takes trace files (plain, gzip or "-"); several are read in parallel and merged into one
// analysis (merge_traces): the report covers them all, by host with Breakdown::Host.
CommandOutput run_report(const std::vector<std::string>& paths, OutputFormat format,
                         const std::vector<Breakdown>& breakdowns = kDefaultBreakdowns);
CommandOutput run_diff(const std::vector<std::string>& before_paths,
                       const std::vector<std::string>& after_paths, OutputFormat format);
// `traces_given`: as render_verify's (none: `paths`).
CommandOutput run_verify(const std::vector<std::string>& paths,
                         std::optional<double> peer_idle_timeout_s,
                         const std::vector<std::string>& traces_given = {});
// One trace each.
inline CommandOutput run_report(const std::string& path, OutputFormat format,
                                const std::vector<Breakdown>& breakdowns = kDefaultBreakdowns) {
    return run_report(std::vector{path}, format, breakdowns);
}
inline CommandOutput run_diff(const std::string& before_path, const std::string& after_path,
                              OutputFormat format) {
    return run_diff(std::vector{before_path}, std::vector{after_path}, format);
}
inline CommandOutput run_verify(const std::string& path,
                                std::optional<double> peer_idle_timeout_s) {
    return run_verify(std::vector{path}, peer_idle_timeout_s);
}
// `--output FILE`: writes a successful command's stdout to `path` instead ("-": stdout). A file
// that cannot be written fails with exit 2.
CommandOutput write_output(CommandOutput output, const std::string& path, const char* command);

}  // namespace closetrace
