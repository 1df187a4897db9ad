// report, diff and verify as commands: reading the files (several in parallel), turning
// unusable input into one line that says what is wrong and what to do, and the exit status.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <string_view>
#include <optional>

#include <fmt/format.h>

#include "closetrace/analysis_text.h"
#include "closetrace/file_content.h"
#include "closetrace/trace_files.h"
#include "closetrace/trace_io.h"
#include "closetrace/report.h"

namespace closetrace {
namespace {

constexpr int kExitUnusableInput = 2;
constexpr int kExitVerifyFailed = 1;
constexpr int kExitVerifyInconclusive = 3;

int verify_exit_code(VerifyConclusion conclusion) {
    switch (conclusion) {
        case VerifyConclusion::Passed: return 0;
        case VerifyConclusion::Failed: return kExitVerifyFailed;
        case VerifyConclusion::Inconclusive: return kExitVerifyInconclusive;
    }
    return kExitVerifyFailed;
}

struct UnusableInput {
    std::string message;
};

std::string trace_error_message(const TraceError& error) {
    if (!error.what_to_do().empty()) return fmt::format("{}; {}", error.what(), error.what_to_do());
    // The header line decides whether the file is a trace at all.
    if (error.line() <= 1) {
        return fmt::format("{}; give a trace written by `closetrace record` of this version",
                           error.what());
    }
    return fmt::format("{}; the trace is damaged at that line: remove the line or record again",
                       error.what());
}

// A trace read alone (analyze_trace), or one of several (analyze_trace_part, and a file that
// holds no recording is then thrown on as NoRecordingError, for load_all to leave out).
TraceAnalysis load(const std::string& path, bool one_of_several = false) {
    try {
        auto [trace, problem] =
            read_trace_file(path, one_of_several ? analyze_trace_part : analyze_trace);
        if (!problem.empty()) trace.warnings.push_back(problem);
        return trace;
    } catch (const TraceOpenError& error) {
        throw UnusableInput{fmt::format("{}; give the trace file `closetrace record --output` wrote",
                                        error.what())};
    } catch (const NoRecordingError& error) {
        if (one_of_several) throw;
        throw UnusableInput{trace_error_message(error)};
    } catch (const TraceError& error) {
        throw UnusableInput{trace_error_message(error)};
    }
}

// One trace as today; several read in parallel, each with its own reader and analyzer, then
// merged. A file that holds no recording is left out with a warning; otherwise the first
// unusable file in the order given is the error.
TraceAnalysis load_all(const std::vector<std::string>& paths) {
    if (paths.size() == 1) return load(paths.front());
    TracesRead<TraceAnalysis> read;
    try {
        read = read_traces<TraceAnalysis>(
            paths, [](const std::string& path) { return load(path, true); },
            [](const TraceAnalysis& part) {
                return RecordingSpan{&part.header, part.end_wall_ns()};
            });
    } catch (const TraceArgumentError& error) {
        throw UnusableInput{error.what()};
    }
    TraceAnalysis merged = merge_traces(std::move(read.parts));
    merged.warnings.insert(merged.warnings.begin(), read.left_out.begin(), read.left_out.end());
    return merged;
}

std::string warnings_text(const char* command, const TraceAnalysis& trace) {
    std::string text;
    for (const std::string& warning : trace.warnings) {
        text +=
            fmt::format("closetrace {}: warning: {}\n", command, analysis_text::printable(warning));
    }
    return text;
}

CommandOutput unusable(const char* command, const UnusableInput& input) {
    return {
        .out = "",
        .err = fmt::format("closetrace {}: {}\n", command, analysis_text::printable(input.message)),
        .exit_code = kExitUnusableInput};
}

}  // namespace

CommandOutput run_report(const std::vector<std::string>& paths, OutputFormat format,
                         const std::vector<Breakdown>& breakdowns) {
    try {
        const TraceAnalysis trace = load_all(paths);
        const Assessment assessment = assess(trace, resolve_peer_timeout({&trace}, std::nullopt));
        return {.out = render_report(trace, assessment, format, breakdowns),
                .err = warnings_text("report", trace)};
    } catch (const UnusableInput& input) {
        return unusable("report", input);
    }
}

CommandOutput run_diff(const std::vector<std::string>& before_paths,
                       const std::vector<std::string>& after_paths, OutputFormat format) {
    try {
        const TraceAnalysis before = load_all(before_paths);
        const TraceAnalysis after = load_all(after_paths);
        const DiffResult result = diff_traces(before, after);
        return {.out = render_diff(before, after, result, format),
                .err = warnings_text("diff", before) + warnings_text("diff", after)};
    } catch (const UnusableInput& input) {
        return unusable("diff", input);
    }
}

CommandOutput run_verify(const std::vector<std::string>& paths,
                         std::optional<double> peer_idle_timeout_s,
                         const std::vector<std::string>& traces_given) {
    try {
        if (peer_idle_timeout_s &&
            !(std::isfinite(*peer_idle_timeout_s) && *peer_idle_timeout_s > 0)) {
            throw UnusableInput{
                fmt::format("--peer-idle-timeout {}: expected a positive number of "
                            "seconds (an ALB's idle timeout, 60 by default)",
                            *peer_idle_timeout_s)};
        }
        const TraceAnalysis trace = load_all(paths);
        std::optional<double> given_ms;
        if (peer_idle_timeout_s) given_ms = *peer_idle_timeout_s * 1000;
        const VerifyResult result = verify_trace(trace, given_ms);
        return {.out = render_verify(trace, result, traces_given.empty() ? paths : traces_given),
                .err = warnings_text("verify", trace),
                .exit_code = verify_exit_code(result.conclusion)};
    } catch (const UnusableInput& input) {
        return unusable("verify", input);
    }
}

namespace {

// Whether `path` holds a trace, plain (its header line) or gzip-compressed: the evidence a report
// must never replace, as when a trace is given as the output by mistake.
bool holds_trace(const std::string& path) {
    std::ifstream file(path, std::ios::binary);
    std::string start(16, '\0');
    file.read(start.data(), static_cast<std::streamsize>(start.size()));
    start.resize(static_cast<std::size_t>(file.gcount()));
    return starts_gzip(start) || start.starts_with(R"({"type":"header")");
}

// The output, readable by its owner only, as the trace is: it names hosts and requests.
bool write_file(const std::string& path, std::string_view content) {
    const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return false;
    std::size_t written = 0;
    const int error = write_all(fd, content, written);
    if (close(fd) != 0 && error == 0) return false;
    errno = error;
    return error == 0;
}

}  // namespace

CommandOutput write_output(CommandOutput output, const std::string& path, const char* command) {
    if (output.exit_code != 0 || path == "-") return output;
    std::string problem;
    if (holds_trace(path)) {
        problem = fmt::format("{} is a trace; a report never replaces one: give another --output",
                              path);
    } else if (!write_file(path, output.out)) {
        problem = fmt::format("cannot write {}: {}; give a writable --output path", path,
                              std::strerror(errno));
    }
    if (!problem.empty()) {
        CommandOutput failed = unusable(command, UnusableInput{problem});
        failed.err = output.err + failed.err;
        return failed;
    }
    output.out.clear();
    return output;
}

}  // namespace closetrace
