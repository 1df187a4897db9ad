#include "analysis_text.h"

#include <fmt/format.h>

namespace closetrace::analysis_text {
namespace {

const char* source_text(PeerTimeoutSource source) {
    switch (source) {
        case PeerTimeoutSource::Given: return "given";
        case PeerTimeoutSource::Observed: return "observed";
        case PeerTimeoutSource::AlbDefault: return "assumed: the ALB default";
    }
    return "?";
}

}  // namespace

std::string duration(double ms) {
    // Four significant digits from a second up: enough to tell 2.001 s from 2.010 s.
    const double magnitude = ms < 0 ? -ms : ms;
    if (magnitude >= 100'000) return fmt::format("{:.1f} s", ms / 1000);
    if (magnitude >= 10'000) return fmt::format("{:.2f} s", ms / 1000);
    if (magnitude >= 1000) return fmt::format("{:.3f} s", ms / 1000);
    return fmt::format("{:.1f} ms", ms);
}

std::string count_of(uint64_t count, std::string_view singular, std::string_view plural) {
    return fmt::format("{} {}", count, count == 1 ? singular : plural);
}

std::string peer_timeout_text(const PeerTimeout& timeout) {
    return fmt::format("{} ({})", duration(timeout.ms), source_text(timeout.source));
}

}  // namespace closetrace::analysis_text
