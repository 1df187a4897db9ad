// bench/trace_read: reads a trace with closetrace's own TraceReader (closetrace_trace) and does the
// minimum any analysis does with each record (count by type and verdict, sum requests), for
// bench/run's offline part when `closetrace report` is not available. Prints one JSON line.
//
//   trace_read TRACE               TraceReader: every record decoded
//   trace_read --parse-only TRACE  the ceiling under it: each line split and parsed by simdjson
//                                  (DOM), nothing decoded
//   trace_read --walk-only TRACE   the floor of an On-Demand reader of every member: each line
//                                  split and every member and element stepped over by simdjson
//                                  On-Demand, none decoded (one that skips members goes lower)
//   trace_read --find-ordered TRACE  On-Demand looked up in the writer's order: find_field for
//                                  each member `report` reads of a conn line (others skipped),
//                                  its strings as they lie (raw), its numbers as integers
//   trace_read --dom-tape TRACE    the DOM parse, then one pass over every member and element
//                                  of the parsed line, each string and number read
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

// A conn line's members that `report` reads, in the writer's order (closetrace/1, as
// gen_trace.py writes it); the others are skipped by find_field. Each named object's members
// follow it, then an empty name.
enum class Kind { Number, String, Object, Requests };
struct Wanted {
    std::string_view name;
    Kind kind;
    std::vector<Wanted> members = {};
};

const std::vector<Wanted>& conn_members() {
    static const std::vector<Wanted> members = {
        {"id", Kind::Number},
        {"cookie", Kind::Number},
        {"local", Kind::Object, {{"addr", Kind::String}, {"port", Kind::Number}}},
        {"remote", Kind::Object, {{"addr", Kind::String}, {"port", Kind::Number}}},
        {"role", Kind::String},
        {"pid", Kind::Number},
        {"comm", Kind::String},
        {"cgroup", Kind::String},
        {"container", Kind::Object,
         {{"runtime", Kind::String}, {"id", Kind::String}, {"name", Kind::String},
          {"task_id", Kind::String}}},
        {"established_ns", Kind::Number},
        {"closed_ns", Kind::Number},
        {"close", Kind::Object,
         {{"initiator", Kind::String}, {"how", Kind::String}, {"local_fin_ns", Kind::Number},
          {"peer_fin_ns", Kind::Number}, {"local_rst_ns", Kind::Number},
          {"peer_rst_ns", Kind::Number}, {"rst_reason", Kind::String}, {"idle_ms", Kind::Number}}},
        {"requests", Kind::Requests,
         {{"method", Kind::String}, {"target", Kind::String}, {"status", Kind::Number},
          {"request_ns", Kind::Number}, {"response_ns", Kind::Number},
          {"outcome", Kind::String}}},
        {"verdict", Kind::String},
    };
    return members;
}

// Sums what it reads into `sum`, so that nothing read is optimised away.
bool find_members(simdjson::ondemand::object object, const std::vector<Wanted>& members,
                  uint64_t& sum) {
    for (const Wanted& wanted : members) {
        simdjson::ondemand::value value;
        if (object.find_field(wanted.name).get(value) != simdjson::SUCCESS) return false;
        bool null = false;
        if (value.is_null().get(null) != simdjson::SUCCESS) return false;
        if (null) continue;
        switch (wanted.kind) {
            case Kind::Number: {
                uint64_t number = 0;
                double real = 0;
                if (value.get_uint64().get(number) == simdjson::SUCCESS) {
                    sum += number;
                } else if (value.get_double().get(real) == simdjson::SUCCESS) {
                    sum += static_cast<uint64_t>(real);
                } else {
                    return false;
                }
                break;
            }
            case Kind::String: {
                simdjson::ondemand::raw_json_string raw;
                if (value.get_raw_json_string().get(raw) != simdjson::SUCCESS) return false;
                sum += static_cast<unsigned char>(raw.raw()[0]);
                break;
            }
            case Kind::Object: {
                simdjson::ondemand::object inner;
                if (value.get_object().get(inner) != simdjson::SUCCESS ||
                    !find_members(inner, wanted.members, sum)) {
                    return false;
                }
                break;
            }
            case Kind::Requests:
                for (auto element : value.get_array()) {
                    simdjson::ondemand::object request;
                    if (element.get_object().get(request) != simdjson::SUCCESS ||
                        !find_members(request, wanted.members, sum)) {
                        return false;
                    }
                }
                break;
        }
    }
    return true;
}

// On-Demand, each conn line's members looked up in the writer's order (find_field), strings
// left where they lie: the shape of a reader that skips what `report` does not read.
int find_ordered(const char* path) {
    simdjson::ondemand::parser parser;
    uint64_t sum = 0;
    const int status = each_line(path, [&](const simdjson::padded_string& line, bool& conn) {
        simdjson::ondemand::document document;
        simdjson::ondemand::object root;
        std::string_view type;
        if (parser.iterate(line).get(document) != simdjson::SUCCESS ||
            document.get_object().get(root) != simdjson::SUCCESS ||
            root.find_field("type").get_string().get(type) != simdjson::SUCCESS) {
            return false;
        }
        conn = type == "conn";
        return !conn || find_members(root, conn_members(), sum);
    });
    std::fprintf(stderr, "checksum %llu\n", static_cast<unsigned long long>(sum));
    return status;
}

// Reads every string and number of a parsed DOM element, members and elements within.
void read_tape(simdjson::dom::element element, uint64_t& sum) {
    switch (element.type()) {
        case simdjson::dom::element_type::OBJECT:
            for (const simdjson::dom::key_value_pair member : simdjson::dom::object(element)) {
                sum += member.key.size();
                read_tape(member.value, sum);
            }
            break;
        case simdjson::dom::element_type::ARRAY:
            for (const simdjson::dom::element item : simdjson::dom::array(element)) {
                read_tape(item, sum);
            }
            break;
        case simdjson::dom::element_type::STRING:
            sum += std::string_view(element).size();
            break;
        case simdjson::dom::element_type::UINT64: sum += uint64_t(element); break;
        case simdjson::dom::element_type::INT64: sum += static_cast<uint64_t>(int64_t(element)); break;
        case simdjson::dom::element_type::DOUBLE: sum += static_cast<uint64_t>(double(element)); break;
        case simdjson::dom::element_type::BOOL: sum += bool(element) ? 1 : 0; break;
        case simdjson::dom::element_type::NULL_VALUE: break;
    }
}

// Each line parsed by the DOM parser, then one pass over its tape reading every value.
int dom_tape(const char* path) {
    simdjson::dom::parser parser;
    uint64_t sum = 0;
    const int status = each_line(path, [&](const simdjson::padded_string& line, bool& conn) {
        simdjson::dom::element root;
        if (parser.parse(line).get(root) != simdjson::SUCCESS) return false;
        std::string_view type;
        conn = root["type"].get_string().get(type) == simdjson::SUCCESS && type == "conn";
        read_tape(root, sum);
        return true;
    });
    std::fprintf(stderr, "checksum %llu\n", static_cast<unsigned long long>(sum));
    return status;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc == 3 && std::string(argv[1]) == "--parse-only") return parse_only(argv[2]);
    if (argc == 3 && std::string(argv[1]) == "--walk-only") return walk_only(argv[2]);
    if (argc == 3 && std::string(argv[1]) == "--find-ordered") return find_ordered(argv[2]);
    if (argc == 3 && std::string(argv[1]) == "--dom-tape") return dom_tape(argv[2]);
    if (argc != 2) {
        std::fprintf(stderr, "usage: trace_read [--parse-only | --walk-only | --find-ordered | "
                             "--dom-tape] TRACE\n");
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
        while (const closetrace::TraceRecord* record = reader.next()) {
            if (const auto* conn = std::get_if<closetrace::Connection>(record)) {
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
