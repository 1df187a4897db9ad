// Many traces at once (report, diff, verify and alb given several): which files the command
// line names, and reading them in parallel, a thread each up to the machine's cores.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "closetrace/file_content.h"
#include "closetrace/trace_io.h"

namespace closetrace {

// A command line's trace arguments that name no usable set of traces.
class TraceArgumentError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;  // what(): one line that says what to give
};

// A trace file that cannot be opened: missing, unreadable, or a directory.
class TraceOpenError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;  // what(): "cannot open PATH: REASON", "PATH is a directory"
};

// What read_trace_file made of a file, and what was wrong with the file as a whole
// (FileContent::problem(), e.g. a gzip stream cut short: "NAME: PROBLEM"), empty if nothing.
template <typename Result>
struct TraceFileRead {
    Result result;
    std::string problem;
};

// A trace file (plain, gzip, or "-" for standard input), opened. Throws TraceOpenError.
std::unique_ptr<InputFile> open_trace_file(const std::string& path);

// Reads one trace file with read(reader, name), which returns what it makes of the trace.
// Throws TraceOpenError, and TraceError from the reader.
template <typename Read>
auto read_trace_file(const std::string& path, const Read& read) {
    const std::unique_ptr<InputFile> in = open_trace_file(path);
    TraceReader reader(*in, in->name());
    TraceFileRead<std::invoke_result_t<const Read&, TraceReader&, std::string>> done{
        read(reader, in->name()), {}};
    if (!in->problem().empty()) done.problem = in->name() + ": " + in->problem();
    return done;
}

// The trace files that command-line arguments name: files as given, a directory's *.jsonl and
// *.jsonl.gz files, its subdirectories' too, in path order (the rotated files of a recorder in
// the order written), "-" (standard input) at most once. Throws TraceArgumentError.
std::vector<std::string> trace_files(const std::vector<std::string>& arguments);

// What a file recorded: its header, and when it ended on the wall clock (the summary's end, or
// the last time recorded without one).
struct RecordingSpan {
    const TraceHeader* header = nullptr;
    int64_t end_wall_ns = 0;
};

// Two files holding one recording's file (a copy, or the .gz beside the plain one: the same
// host, start and clock), or two recordings of one host that overlap in time and may have
// recorded the same sockets (a daemon's and one started by hand into the same directory), would
// count connections twice. Throws TraceArgumentError naming the first two; `files[i]` holds the
// trace of `spans[i]`. A rotated recording's files follow each other: they never overlap.
void refuse_a_recording_read_twice(const std::vector<std::string>& files,
                                   const std::vector<RecordingSpan>& spans);

// Several traces read in parallel: those that hold a recording, and why each other was left
// out ("FILE: empty file, …; left out").
template <typename Part>
struct TracesRead {
    std::vector<Part> parts;
    std::vector<std::string> left_out;
};

// Reads each of `paths` with read(path), which throws NoRecordingError for a file that holds
// no recording: such files are left out. span_of(part) is a part's RecordingSpan. Throws
// TraceArgumentError where no file holds a recording, or two hold the same sockets at once
// (refuse_a_recording_read_twice); read's own exceptions, the first in the order given.
template <typename Part, typename Read, typename SpanOf>
TracesRead<Part> read_traces(const std::vector<std::string>& paths, const Read& read,
                             const SpanOf& span_of);

// Calls read(index) once for each index in [0, count), on up to hardware_concurrency() threads;
// `read` writes its result to a slot of its own. After all have run, rethrows the exception of
// the lowest index that threw, so that the error reported does not depend on timing.
template <typename Read>
void read_in_parallel(std::size_t count, const Read& read) {
    std::vector<std::exception_ptr> failures(count);
    std::atomic<std::size_t> next{0};
    auto worker = [&] {
        for (std::size_t index; (index = next++) < count;) {
            try {
                read(index);
            } catch (...) {
                failures[index] = std::current_exception();
            }
        }
    };
    const std::size_t threads = std::clamp<std::size_t>(std::thread::hardware_concurrency(), 1,
                                                         std::max<std::size_t>(count, 1));
    {
        std::vector<std::jthread> workers;
        for (std::size_t thread = 0; thread < threads; ++thread) workers.emplace_back(worker);
    }
    for (const std::exception_ptr& failure : failures) {
        if (failure) std::rethrow_exception(failure);
    }
}

template <typename Part, typename Read, typename SpanOf>
TracesRead<Part> read_traces(const std::vector<std::string>& paths, const Read& read,
                             const SpanOf& span_of) {
    std::vector<Part> loaded(paths.size());
    std::vector<std::string> no_recording(paths.size());
    read_in_parallel(paths.size(), [&](std::size_t index) {
        try {
            loaded[index] = read(paths[index]);
        } catch (const NoRecordingError& error) {
            no_recording[index] = error.what();
        }
    });
    TracesRead<Part> traces;
    std::vector<std::string> part_paths;
    std::vector<RecordingSpan> spans;
    for (std::size_t index = 0; index < paths.size(); ++index) {
        if (!no_recording[index].empty()) {
            traces.left_out.push_back(no_recording[index] + "; left out");
            continue;
        }
        traces.parts.push_back(std::move(loaded[index]));
        part_paths.push_back(paths[index]);
    }
    if (traces.parts.empty()) {
        throw TraceArgumentError(no_recording.front() + "; none of the " +
                                 std::to_string(paths.size()) + " files given holds a recording");
    }
    for (const Part& part : traces.parts) spans.push_back(span_of(part));
    refuse_a_recording_read_twice(part_paths, spans);
    return traces;
}

}  // namespace closetrace
