// libFuzzer target for the trace reader: `report` may be handed any file. Reading may fail only
// with a one-line TraceError; whatever is read must be written back and read again unchanged.
#include "closetrace/trace_io.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>
#include <string_view>

namespace {

using closetrace::TraceError;
using closetrace::TraceReader;
using closetrace::TraceRecord;

void require(bool invariant) {
    if (!invariant) {
        std::abort();
    }
}

bool is_one_ascii_line(std::string_view text) {
    return std::all_of(text.begin(), text.end(), [](char c) { return c >= 0x20 && c < 0x7F; });
}

// Reads back a trace of `header` and one `line`: what the writer made must be readable.
TraceRecord read_back(const std::string& header, const std::string& line) {
    try {
        std::istringstream in(header + "\n" + line + "\n");
        TraceReader reader(in, "round-trip");
        const TraceRecord* record = reader.next();
        require(record != nullptr);
        TraceRecord read = *record;  // the reader's own, until its next()
        require(!reader.next() && reader.warnings().empty());
        return read;
    } catch (const TraceError&) {
        std::abort();
    }
}

void check_header_round_trip(const std::string& header) {
    require(is_one_ascii_line(header));
    try {
        std::istringstream in(header + "\n");
        TraceReader reader(in, "round-trip");
        require(closetrace::header_line(reader.header()) == header && !reader.next());
    } catch (const TraceError&) {
        std::abort();
    }
}

void check_round_trip(const std::string& header, const TraceRecord& record) {
    if (const auto* conn = std::get_if<closetrace::Connection>(&record)) {
        const std::string line = closetrace::conn_line(*conn);
        require(is_one_ascii_line(line));
        require(closetrace::conn_line(std::get<closetrace::Connection>(read_back(header, line))) ==
                line);
    } else if (const auto* summary = std::get_if<closetrace::TraceSummary>(&record)) {
        const std::string line = closetrace::summary_line(*summary);
        require(is_one_ascii_line(line));
        require(closetrace::summary_line(
                    std::get<closetrace::TraceSummary>(read_back(header, line))) == line);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
    try {
        TraceReader reader(in, "fuzz.jsonl");
        const std::string header = closetrace::header_line(reader.header());
        check_header_round_trip(header);
        while (const TraceRecord* record = reader.next()) {
            check_round_trip(header, *record);
        }
        for (const std::string& warning : reader.warnings()) require(is_one_ascii_line(warning));
    } catch (const TraceError& error) {
        require(is_one_ascii_line(error.what()));
    }
    return 0;
}
