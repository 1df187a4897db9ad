// `closetrace doctor`: what this host supports, and which probes `record` would use.
#pragma once

#include <CLI/CLI.hpp>

namespace closetrace {

void add_doctor_command(CLI::App& app);

}  // namespace closetrace
