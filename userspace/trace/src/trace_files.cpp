#include "closetrace/trace_files.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <system_error>
#include <tuple>
#include <utility>

#include <fmt/format.h>

#include "closetrace/text.h"
#include "closetrace/trace_rotation.h"

namespace closetrace {

std::unique_ptr<InputFile> open_trace_file(const std::string& path) {
    std::error_code ignored;
    if (std::filesystem::is_directory(path, ignored)) {
        throw TraceOpenError(fmt::format("{} is a directory", path));
    }
    try {
        return std::make_unique<InputFile>(path);
    } catch (const std::system_error& error) {
        // A recorder rotating files in its directory has closed or compressed it since it was
        // listed: the same trace under its later name. Under none, its retention deleted it.
        const std::vector<std::filesystem::path> later_names = TraceRotation::later_names(path);
        if (error.code().value() == ENOENT && !later_names.empty()) {
            for (const std::filesystem::path& later : later_names) {
                try {
                    return std::make_unique<InputFile>(later.string());
                } catch (const std::system_error&) {
                    // gone from that name too: the next one
                }
            }
            throw NoRecordingError(path, 0,
                                   "no such file (deleted since it was listed: the retention of "
                                   "the recorder writing there?)",
                                   "give the files that remain");
        }
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

namespace {

// Whether one cgroup path is the other or below it (a subtree selects its descendants).
bool nested(const std::string& a, const std::string& b) {
    const auto below = [](const std::string& path, const std::string& top) {
        return path.starts_with(top) && (path.size() == top.size() || top.ends_with('/') ||
                                         path[top.size()] == '/');
    };
    return below(a, b) || below(b, a);
}

// Could two recordings' filters select one socket? Not where a filter given to both tells them
// apart (other ports, another namespace, container, process, or cgroups apart).
bool may_share_sockets(const TraceFilters& a, const TraceFilters& b) {
    const auto differ = [](const auto& x, const auto& y) { return x && y && *x != *y; };
    const bool other_ports = !a.ports.empty() && !b.ports.empty() &&
                             std::ranges::none_of(a.ports, [&](uint16_t port) {
                                 return std::ranges::find(b.ports, port) != b.ports.end();
                             });
    const bool other_cgroups = a.cgroup && b.cgroup && !nested(*a.cgroup, *b.cgroup);
    return !other_ports && !other_cgroups && !differ(a.netns, b.netns) &&
           !differ(a.container, b.container) && !differ(a.pid, b.pid);
}

// Two files of one rotation directory: one recorder at a time writes there (it holds the
// directory's lock), so they never overlap, even where a clock set back makes them seem to.
bool one_rotation_directory(const std::string& a, const std::string& b) {
    const std::filesystem::path first(a);
    const std::filesystem::path second(b);
    return first.parent_path() == second.parent_path() &&
           TraceRotation::named_by_rotation(first) && TraceRotation::named_by_rotation(second);
}

// Two recorders' estimates of the wall clock differ by far less.
constexpr int64_t kClockSlackNs = 100'000'000;

}  // namespace

void refuse_a_recording_read_twice(const std::vector<std::string>& files,
                                   const std::vector<RecordingSpan>& spans) {
    std::map<std::tuple<std::string_view, uint64_t, int64_t>, std::size_t> seen;
    for (std::size_t i = 0; i < spans.size(); ++i) {
        const TraceHeader& header = *spans[i].header;
        const auto [it, added] =
            seen.try_emplace({header.host, header.start_ns, header.mono_to_wall_ns}, i);
        if (!added) {
            throw TraceArgumentError(fmt::format(
                "{} and {} hold the same recording (host {}, from {}); give each trace once",
                files[it->second], files[i], printable(header.host), printable(header.start_wall)));
        }
    }
    // Each host's files by start, each held against the earlier ones still recording then.
    std::map<std::string_view, std::vector<std::size_t>> by_host;
    for (std::size_t i = 0; i < spans.size(); ++i) by_host[spans[i].header->host].push_back(i);
    for (auto& [host, indexes] : by_host) {
        std::ranges::stable_sort(
            indexes, {}, [&](std::size_t i) { return spans[i].header->start_wall_ns(); });
        std::vector<std::size_t> still_recording;
        for (const std::size_t later : indexes) {
            const TraceHeader& header = *spans[later].header;
            const int64_t start = header.start_wall_ns();
            std::erase_if(still_recording, [&](std::size_t earlier) {
                return spans[earlier].end_wall_ns - start <= kClockSlackNs;
            });
            for (const std::size_t earlier : still_recording) {
                if (!may_share_sockets(spans[earlier].header->filters, header.filters) ||
                    one_rotation_directory(files[earlier], files[later])) {
                    continue;
                }
                throw TraceArgumentError(fmt::format(
                    "{} and {} are two recordings of host {} at the same time (the later from "
                    "{}): their connections would count twice; give one of them",
                    files[earlier], files[later], printable(header.host),
                    printable(header.start_wall)));
            }
            still_recording.push_back(later);
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
        // Its subdirectories too: a fleet's traces synced from S3 lie in one per host.
        std::vector<std::string> traces;
        std::filesystem::recursive_directory_iterator entry(argument, error);
        for (; !error && entry != std::filesystem::recursive_directory_iterator();
             entry.increment(error)) {
            const std::string name = entry->path().filename().string();
            std::error_code type_error;
            if ((name.ends_with(".jsonl") || name.ends_with(".jsonl.gz")) &&
                !entry->is_directory(type_error)) {
                traces.push_back(entry->path().string());
            }
        }
        if (error) {
            throw TraceArgumentError(fmt::format("cannot read the directory {}: {}", argument,
                                                 error.message()));
        }
        if (traces.empty()) {
            throw TraceArgumentError(fmt::format(
                "{} is a directory without trace files (*.jsonl, *.jsonl.gz, in it or below "
                "it); give trace files or a directory of them",
                argument));
        }
        std::ranges::sort(traces);
        files.insert(files.end(), traces.begin(), traces.end());
    }
    refuse_a_file_named_twice(files);
    return files;
}

}  // namespace closetrace
