// What the commands share: option checks, and standard output's errors.
#pragma once

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

namespace closetrace {

// A finite number from `min` to `max` (`unit`: "seconds", "ms"). CLI11's Range and
// PositiveNumber let nan and inf through, since every comparison with nan is false: a
// `--duration nan` never ended.
inline CLI::Validator finite_range(double min, double max, const std::string& unit) {
    return CLI::Validator(
        [=](std::string& input) -> std::string {
            double value = 0;
            const bool number = CLI::detail::lexical_cast(input, value);
            if (number && std::isfinite(value) && value >= min && value <= max) return {};
            return fmt::format("{} is not a number of {} from {:.12g} to {:.12g}", input, unit,
                               min, max);
        },
        fmt::format("NUMBER in [{:.12g}, {:.12g}]", min, max));
}

// As for an unwritable --output FILE: the command could not do its job (verify's 1 means "not
// fixed").
inline constexpr int kExitOutputFailed = 2;

// Flushes standard output and fails with one line if anything written to it was lost (a full
// disk, a closed pipe): a report that never arrived must not exit 0.
inline void flush_stdout(const char* command) {
    if (std::fflush(stdout) == 0 && !std::ferror(stdout)) return;
    const int error = errno;
    throw CLI::RuntimeError(fmt::format("closetrace {}: cannot write standard output: {}{}",
                                        command, std::strerror(error),
                                        error == EPIPE ? "" : "; send it somewhere writable"),
                            kExitOutputFailed);
}

}  // namespace closetrace
