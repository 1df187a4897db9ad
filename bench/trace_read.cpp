// bench/trace_read: reads a trace with closetrace's own TraceReader (closetrace_trace) and does the
// minimum any analysis does with each record (count by type and verdict, sum requests), for
// bench/run's offline part when `closetrace report` is not available. Prints one JSON line.
//
//   trace_read TRACE               TraceReader: every record decoded
//   trace_read --parse-only TRACE  the ceiling under it: each line split and parsed by simdjson
//                                  (DOM), nothing decoded
//   trace_read --walk-only TRACE   the floor of an On-Demand reader: each line split and every
//                                  member and element stepped over by simdjson On-Demand, none
//                                  decoded
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

// Calls parse_line(line) for each line, split with memchr from 1 MiB reads and copied into a
// padded string; false (and stops) when it returns false. Prints the rate as one JSON line.
template <typename ParseLine>
int each_line(const char* path, ParseLine parse_line) {
    std::FILE* file = std::fopen(path, "rb");
    if (!file) {
        std::fprintf(stderr, "trace_read: cannot open %s\n", path);
        return 1;
    }
    const auto start = std::chrono::steady_clock::now();
    std::string pending;
    std::vector<char> block(1 << 20);
    uint64_t lines = 0, conns = 0;
    auto parse = [&](std::string_view line) {
        const simdjson::padded_string padded(line);
        bool conn = false;
        if (!parse_line(padded, conn)) return false;
        ++lines;
        conns += conn ? 1 : 0;
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
                if (!parse(pending)) return 1;
                pending.clear();
            } else if (!parse(data.substr(0, end))) {
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

// Each line parsed into a reused simdjson DOM parser, nothing decoded.
int parse_only(const char* path) {
    simdjson::dom::parser parser;
    return each_line(path, [&](const simdjson::padded_string& line, bool& conn) {
        simdjson::dom::element root;
        if (parser.parse(line).get(root) != simdjson::SUCCESS) return false;
        std::string_view type;
        conn = root["type"].get_string().get(type) == simdjson::SUCCESS && type == "conn";
        return true;
    });
}

// Steps over a value's members and elements, reading none: the least any On-Demand reader of
// every member pays.
bool walk(simdjson::ondemand::value value) {
    simdjson::ondemand::json_type type;
    if (value.type().get(type) != simdjson::SUCCESS) return false;
    if (type == simdjson::ondemand::json_type::object) {
        for (auto field : value.get_object()) {
            simdjson::ondemand::field member;
            if (std::move(field).get(member) != simdjson::SUCCESS || !walk(member.value())) {
                return false;
            }
        }
    } else if (type == simdjson::ondemand::json_type::array) {
        for (auto element : value.get_array()) {
            simdjson::ondemand::value item;
            if (std::move(element).get(item) != simdjson::SUCCESS || !walk(item)) return false;
        }
    }
    return true;
}

// Each line iterated by simdjson On-Demand, every member and element stepped over, none decoded:
// the floor under TraceReader, which reads every member of a line.
int walk_only(const char* path) {
    simdjson::ondemand::parser parser;
    return each_line(path, [&](const simdjson::padded_string& line, bool& conn) {
        simdjson::ondemand::document document;
        simdjson::ondemand::object root;
        if (parser.iterate(line).get(document) != simdjson::SUCCESS ||
            document.get_object().get(root) != simdjson::SUCCESS) {
            return false;
        }
        for (auto field : root) {
            simdjson::ondemand::field member;
            if (std::move(field).get(member) != simdjson::SUCCESS) return false;
            std::string_view key;
            if (member.unescaped_key().get(key) != simdjson::SUCCESS) return false;
            if (key == "type") {
                std::string_view type;
                if (member.value().get_string().get(type) != simdjson::SUCCESS) return false;
                conn = type == "conn";
            } else if (!walk(member.value())) {
                return false;
            }
        }
        return true;
    });
}

}  // namespace

int main(int argc, char** argv) {
    if (argc == 3 && std::string(argv[1]) == "--parse-only") return parse_only(argv[2]);
    if (argc == 3 && std::string(argv[1]) == "--walk-only") return walk_only(argv[2]);
    if (argc != 2) {
        std::fprintf(stderr, "usage: trace_read [--parse-only | --walk-only] TRACE\n");
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
