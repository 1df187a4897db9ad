// `closetrace alb`'s report of a correlation, as text or JSON (docs/alb.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "closetrace/alb_log.h"
#include "closetrace/alb_match.h"

namespace closetrace {

std::string render_alb_text(const TraceFacts& trace, const LbLogReadStats& stats,
                            const AlbCorrelation& result,
                            const std::vector<std::string>& conclusions, int64_t skew_ns);
// `skew_ms` and `maps` as given on the command line; `warnings` about the trace and the logs.
std::string render_alb_json(const TraceFacts& trace, const LbLogReadStats& stats,
                            const AlbCorrelation& result,
                            const std::vector<std::string>& conclusions, double skew_ms,
                            const std::vector<std::string>& maps,
                            const std::vector<std::string>& warnings);

}  // namespace closetrace
