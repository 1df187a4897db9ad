// What `record` and `doctor` say about the kernel's BTF: the --btf option and the advice for a
// kernel without BTF.
#pragma once

#include <string>

namespace closetrace {

// --btf of record and doctor.
inline constexpr const char* kBtfOptionHelp =
    "BTF file of this kernel, for kernels built without BTF (BTFHub, or bpftool gen "
    "min_core_btf): loads the portable programs (raw tracepoints)";

// What to do on a kernel without BTF, in one line.
inline std::string no_kernel_btf_advice() {
    return "this kernel has no BTF (/sys/kernel/btf/vmlinux; built without "
           "CONFIG_DEBUG_INFO_BTF): give its BTF with --btf FILE (from BTFHub, "
           "https://github.com/aquasecurity/btfhub-archive, for this kernel release), or run on a "
           "kernel with BTF (Amazon Linux 2023, Amazon Linux 2 with kernel 5.10)";
}

}  // namespace closetrace
