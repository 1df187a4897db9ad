// `closetrace report`, `diff` and `verify`: what a trace says, whether a change fixed it, and a
// pass/fail for runbooks and pipelines.
#pragma once

#include <CLI/CLI.hpp>

namespace closetrace {

// Registers the three subcommands. A failure throws CLI::RuntimeError with the exit status
// (1: verify found a problem, 2: unusable input) after printing what went wrong.
void add_analysis_commands(CLI::App& app);

}  // namespace closetrace
