// `closetrace record`: load the kernel programs, track connections, write the trace.
#pragma once

#include <CLI/CLI.hpp>

namespace closetrace {

void add_record_command(CLI::App& app);

}  // namespace closetrace
