// `closetrace demo`: the scenario harness (tools/scenario/demo.py) drives real servers in
// network namespaces; this command hands it our own binary to record with.
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "demo.h"

namespace closetrace {
namespace {

std::filesystem::path demo_script() {
    // Next to the sources this binary was built from; CLOSETRACE_DEMO overrides it.
    if (const char* override_path = std::getenv("CLOSETRACE_DEMO")) return override_path;
    return std::filesystem::path(CLOSETRACE_SOURCE_DIR) / "tools" / "scenario" / "demo.py";
}

void run_demo(const std::string& output_dir) {
    const auto script = demo_script();
    if (!std::filesystem::exists(script)) {
        throw CLI::RuntimeError(
            fmt::format("closetrace demo: {} not found: run the demo from a source checkout "
                        "(or set CLOSETRACE_DEMO to tools/scenario/demo.py)",
                        script.string()),
            1);
    }
    std::error_code error;
    const auto self = std::filesystem::read_symlink("/proc/self/exe", error);
    std::vector<std::string> args = {"python3", script.string(), "--closetrace",
                                     error ? std::string("closetrace") : self.string(),
                                     "--output-dir", output_dir};
    std::vector<char*> argv;
    for (auto& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    execvp("python3", argv.data());
    throw CLI::RuntimeError(
        fmt::format("closetrace demo: cannot run python3: {}; run tools/setup",
                    std::strerror(errno)),
        1);
}

}  // namespace

void add_demo_command(CLI::App& app) {
    auto output_dir = std::make_shared<std::string>("closetrace-demo");
    CLI::App* command = app.add_subcommand(
        "demo", "Reproduce the keep-alive 502 race between real servers, trace it, report it, "
                "then verify the fix (needs root; about a minute)");
    command->add_option("--output-dir", *output_dir, "Where the two traces are kept");
    command->callback([output_dir] { run_demo(*output_dir); });
}

}  // namespace closetrace
