// Monotonic-to-wall time conversion and formatting for traces and live lines.
#pragma once

#include <cstdint>
#include <string>

namespace closetrace {

uint64_t monotonic_now_ns();
// CLOCK_REALTIME - CLOCK_MONOTONIC, sampled where the two reads are closest together.
int64_t mono_to_wall_offset_ns();
// "2026-11-25T01:02:03.123456Z"
std::string iso8601_utc(int64_t unix_ns);
// "01:02:03.123" (UTC)
std::string time_of_day_utc(int64_t unix_ns);

}  // namespace closetrace
