// bench/trace_read: reads a trace with closetrace's own TraceReader (closetrace_trace) and does the
// minimum any analysis does with each record (count by type and verdict, sum requests), for
// bench/run's offline part when `closetrace report` is not available. Prints one JSON line.
//
//   trace_read TRACE               TraceReader: every record decoded
//   trace_read --parse-only TRACE  the ceiling under it: each line split and parsed by simdjson
//                                  (DOM), nothing decoded
//
// Built by bench/run against the build tree's libclosetrace_trace.a and
// libclosetrace_capture.a.
#include <chrono>
#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <variant>
#include <vector>

#include <simdjson.h>

#include "closetrace/file_content.h"
#include "closetrace/model.h"
#include "closetrace/trace_io.h"

namespace {

// Lines split with memchr from 1 MiB reads; each parsed into a reused simdjson DOM parser.
int parse_only(const char* path) {
    std::FILE* file = std::fopen(path, "rb");
    if (!file) {
        std::fprintf(stderr, "trace_read: cannot open %s\n", path);
        return 1;
    }
    const auto start = std::chrono::steady_clock::now();
    simdjson::dom::parser parser;
    std::string pending;
    std::vector<char> block(1 << 20);
    uint64_t lines = 0, conns = 0;
    auto parse_line = [&](std::string_view line) {
        simdjson::padded_string padded(line);
        simdjson::dom::element root;
        if (parser.parse(padded).get(root) != simdjson::SUCCESS) return false;
        std::string_view type;
        if (root["type"].get_string().get(type) == simdjson::SUCCESS && type == "conn") ++conns;
        ++lines;
        return true;
    };
    std::size_t got;
    while ((got = std::fread(block.data(), 1, block.size(), file)) > 0) {
        std::string_view data(block.data(), got);
        while (!data.empty()) {
            const auto end = data.find('\n');
            if (end == std::string_view::npos) {
                pending.append(data);
                break;
            }
            if (!pending.empty()) {
                pending.append(data.substr(0, end));
                if (!parse_line(pending)) return 1;
                pending.clear();
            } else if (!parse_line(data.substr(0, end))) {
                return 1;
            }
            data.remove_prefix(end + 1);
        }
    }
    std::fclose(file);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("{\"records\":%llu,\"conns\":%llu,\"seconds\":%.6f,\"records_per_s\":%.0f}\n",
                static_cast<unsigned long long>(lines), static_cast<unsigned long long>(conns),
                seconds, seconds > 0 ? static_cast<double>(lines) / seconds : 0.0);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc == 3 && std::string(argv[1]) == "--parse-only") return parse_only(argv[2]);
    if (argc != 2) {
        std::fprintf(stderr, "usage: trace_read [--parse-only] TRACE\n");
        return 2;
    }
    // As `closetrace report` opens it: plain or gzip, "-" for standard input.
    std::optional<closetrace::InputFile> in;
    try {
        in.emplace(argv[1]);
    } catch (const std::system_error& error) {
        std::fprintf(stderr, "trace_read: %s\n", error.what());
        return 1;
    }
    const auto start = std::chrono::steady_clock::now();
    uint64_t conns = 0, events = 0, summaries = 0, requests = 0, races = 0;
    std::map<closetrace::Verdict, uint64_t> verdicts;
    try {
        closetrace::TraceReader reader(*in, in->name());
        while (auto record = reader.next()) {
            if (auto* conn = std::get_if<closetrace::Connection>(&*record)) {
                ++conns;
                requests += conn->requests.size();
                ++verdicts[conn->verdict];
                if (conn->verdict == closetrace::Verdict::LocalCloseRace) ++races;
            } else if (std::holds_alternative<closetrace::TraceEventLine>(*record)) {
                ++events;
            } else {
                ++summaries;
            }
        }
    } catch (const std::exception& error) {
        std::fprintf(stderr, "trace_read: %s\n", error.what());
        return 1;
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const uint64_t records = conns + events + summaries;
    std::printf("{\"records\":%llu,\"conns\":%llu,\"events\":%llu,\"requests\":%llu,"
                "\"races\":%llu,\"verdict_kinds\":%zu,\"seconds\":%.6f,\"records_per_s\":%.0f}\n",
                static_cast<unsigned long long>(records), static_cast<unsigned long long>(conns),
                static_cast<unsigned long long>(events), static_cast<unsigned long long>(requests),
                static_cast<unsigned long long>(races), verdicts.size(), seconds,
                seconds > 0 ? static_cast<double>(records) / seconds : 0.0);
    return 0;
}
