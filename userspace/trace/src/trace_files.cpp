#include "closetrace/trace_files.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <system_error>
#include <tuple>
#include <utility>

#include <fmt/format.h>

#include "closetrace/text.h"

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

namespace {

// A file read twice would count its connections twice: "t.jsonl t.jsonl", or "DIR DIR/t.jsonl".
void refuse_a_file_named_twice(const std::vector<std::string>& files) {
    std::map<std::pair<dev_t, ino_t>, const std::string*> seen;
    for (const std::string& file : files) {
        struct stat status{};
        if (file == "-" || stat(file.c_str(), &status) != 0) continue;  // opening it will say why
        const auto [it, added] = seen.try_emplace({status.st_dev, status.st_ino}, &file);
        if (!added) {
            const std::string also =
                file == *it->second ? "" : fmt::format(" (also as {})", *it->second);
            throw TraceArgumentError(
                fmt::format("{} is given twice{}; give each trace once", file, also));
        }
    }
}

}  // namespace

void refuse_a_recording_read_twice(const std::vector<std::string>& files,
                                   const std::vector<const TraceHeader*>& headers) {
    std::map<std::tuple<std::string_view, uint64_t, int64_t>, std::size_t> seen;
    for (std::size_t i = 0; i < headers.size(); ++i) {
        const TraceHeader& header = *headers[i];
        const auto [it, added] =
            seen.try_emplace({header.host, header.start_ns, header.mono_to_wall_ns}, i);
        if (!added) {
            throw TraceArgumentError(fmt::format(
                "{} and {} hold the same recording (host {}, from {}); give each trace once",
                files[it->second], files[i], printable(header.host), printable(header.start_wall)));
        }
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
    refuse_a_file_named_twice(files);
    return files;
}

}  // namespace closetrace
