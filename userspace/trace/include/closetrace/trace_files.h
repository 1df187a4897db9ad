// Many traces at once (report, diff, verify and alb given several): which files the command
// line names, and reading them in parallel, a thread each up to the machine's cores.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace closetrace {

// A command line's trace arguments that name no usable set of traces.
class TraceArgumentError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;  // what(): one line that says what to give
};

// The trace files that command-line arguments name: files as given, a directory's *.jsonl and
// *.jsonl.gz files in name order (the rotated files of a recorder in the order written), "-"
// (standard input) at most once. Throws TraceArgumentError.
std::vector<std::string> trace_files(const std::vector<std::string>& arguments);

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

}  // namespace closetrace
