// `closetrace record`: load the kernel programs, track connections, write the trace.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

namespace closetrace {

// --btf of record and doctor.
inline constexpr const char* kBtfOptionHelp =
    "BTF file of this kernel, for kernels built without BTF (BTFHub, or bpftool gen "
    "min_core_btf): loads the portable programs (raw tracepoints)";

// What to do on a kernel without BTF, in one line.
std::string no_kernel_btf_advice();

void add_record_command(CLI::App& app);
void add_doctor_command(CLI::App& app);
void add_demo_command(CLI::App& app);

}  // namespace closetrace
