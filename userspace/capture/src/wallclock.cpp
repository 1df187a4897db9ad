#include "closetrace/wallclock.h"

#include <ctime>

#include <fmt/format.h>

namespace closetrace {
namespace {

int64_t read_clock_ns(clockid_t clock) {
    timespec now{};
    clock_gettime(clock, &now);
    return static_cast<int64_t>(now.tv_sec) * 1'000'000'000 + now.tv_nsec;
}

std::tm utc_fields(int64_t unix_ns) {
    const time_t seconds = static_cast<time_t>(unix_ns / 1'000'000'000);
    std::tm fields{};
    gmtime_r(&seconds, &fields);
    return fields;
}

}  // namespace

uint64_t monotonic_now_ns() { return static_cast<uint64_t>(read_clock_ns(CLOCK_MONOTONIC)); }

int64_t mono_to_wall_offset_ns() {
    int64_t best_offset = 0;
    int64_t best_window = INT64_MAX;
    for (int attempt = 0; attempt < 5; ++attempt) {
        const int64_t before = read_clock_ns(CLOCK_MONOTONIC);
        const int64_t wall = read_clock_ns(CLOCK_REALTIME);
        const int64_t after = read_clock_ns(CLOCK_MONOTONIC);
        if (after - before < best_window) {
            best_window = after - before;
            best_offset = wall - (before + (after - before) / 2);
        }
    }
    return best_offset;
}

std::string iso8601_utc(int64_t unix_ns) {
    const std::tm f = utc_fields(unix_ns);
    return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z", f.tm_year + 1900,
                       f.tm_mon + 1, f.tm_mday, f.tm_hour, f.tm_min, f.tm_sec,
                       (unix_ns % 1'000'000'000) / 1000);
}

std::string time_of_day_utc(int64_t unix_ns) {
    const std::tm f = utc_fields(unix_ns);
    return fmt::format("{:02}:{:02}:{:02}.{:03}", f.tm_hour, f.tm_min, f.tm_sec,
                       (unix_ns % 1'000'000'000) / 1'000'000);
}

}  // namespace closetrace
