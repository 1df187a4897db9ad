// Facts about the running host that decide whether and how closetrace can record.
#pragma once

#include <optional>
#include <string>

namespace closetrace {

struct HostFacts {
    std::string kernel_release;
    bool kernel_btf = false;                   // /sys/kernel/btf/vmlinux
    std::optional<std::string> cgroup2_mount;  // from /proc/mounts
    std::optional<std::string> tracefs_mount;
    bool has_cap_bpf = false;      // CAP_BPF or CAP_SYS_ADMIN
    bool has_cap_perfmon = false;  // CAP_PERFMON or CAP_SYS_ADMIN
    bool has_cap_net_admin = false;
    bool kprobe_pmu = false;  // /sys/bus/event_source/devices/kprobe
    std::string libbpf_version;
};

HostFacts inspect_host();

// The privileges recording needs that this process lacks, as one phrase ("" when none).
std::string missing_privileges(const HostFacts& facts);

}  // namespace closetrace
