// `closetrace demo`: the 502 race reproduced in network namespaces, recorded and reported.
#pragma once

#include <CLI/CLI.hpp>

namespace closetrace {

void add_demo_command(CLI::App& app);

}  // namespace closetrace
