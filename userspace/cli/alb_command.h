// `closetrace alb`: which of a load balancer's 502, 504 and 460 lines a backend trace explains.
#pragma once

#include <CLI/CLI.hpp>

namespace closetrace {

void add_alb_command(CLI::App& app);

}  // namespace closetrace
