#include "closetrace/trace_files.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <utility>

#include <fmt/format.h>

namespace closetrace {

std::unique_ptr<InputFile> open_trace_file(const std::string& path) {
    std::error_code ignored;
    if (std::filesystem::is_directory(path, ignored)) {
        throw TraceOpenError(fmt::format("{} is a directory", path));
    }
    try {
        return std::make_unique<InputFile>(path);
    } catch (const std::system_error& error) {
        throw TraceOpenError(
            fmt::format("cannot open {}: {}", path, std::strerror(error.code().value())));
    }
}

std::vector<std::string> trace_files(const std::vector<std::string>& arguments) {
    std::vector<std::string> files;
    bool standard_input = false;
    for (const std::string& argument : arguments) {
        std::error_code error;
        if (!std::filesystem::is_directory(argument, error)) {
            if (argument == "-" && std::exchange(standard_input, true)) {
                throw TraceArgumentError("- (standard input) is given twice; give it at most once");
            }
            files.push_back(argument);
            continue;
        }
        std::vector<std::string> traces;
        for (const auto& entry : std::filesystem::directory_iterator(argument, error)) {
            const std::string name = entry.path().filename().string();
            if ((name.ends_with(".jsonl") || name.ends_with(".jsonl.gz")) &&
                !entry.is_directory(error)) {
                traces.push_back(entry.path().string());
            }
        }
        if (error) {
            throw TraceArgumentError(fmt::format("cannot read the directory {}: {}", argument,
                                                 error.message()));
        }
        if (traces.empty()) {
            throw TraceArgumentError(fmt::format(
                "{} is a directory without trace files (*.jsonl, *.jsonl.gz); give trace files "
                "or a directory of them",
                argument));
        }
        std::ranges::sort(traces);
        files.insert(files.end(), traces.begin(), traces.end());
    }
    return files;
}

}  // namespace closetrace
