#include "host.h"

#include "closetrace/container.h"

#include <bpf/libbpf.h>
#include <linux/capability.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

namespace closetrace {
namespace {

bool has_capability(const __user_cap_data_struct (&caps)[2], int capability) {
    if (capability > CAP_LAST_CAP) return false;
    return caps[capability / 32].effective & (1u << (capability % 32));
}

// The mount point of the first file system of this type in /proc/mounts (never assumed).
std::optional<std::string> find_mount(std::string_view fs_type) {
    std::ifstream mounts("/proc/mounts");
    std::string line;
    while (std::getline(mounts, line)) {
        std::istringstream fields(line);
        std::string device, mount_point, type;
        if (fields >> device >> mount_point >> type && type == fs_type) return mount_point;
    }
    return std::nullopt;
}

}  // namespace

HostFacts inspect_host() {
    HostFacts facts;
    utsname names{};
    if (uname(&names) == 0) facts.kernel_release = names.release;
    facts.kernel_btf = std::filesystem::exists("/sys/kernel/btf/vmlinux");
    if (auto mount = find_cgroup2_mount()) facts.cgroup2_mount = mount->string();
    facts.tracefs_mount = find_mount("tracefs");
    facts.kprobe_pmu = std::filesystem::exists("/sys/bus/event_source/devices/kprobe/type");
    facts.libbpf_version = libbpf_version_string();

    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct caps[2] = {};
    if (syscall(SYS_capget, &header, caps) == 0) {
        const bool admin = has_capability(caps, CAP_SYS_ADMIN);
#ifdef CAP_BPF
        facts.has_cap_bpf = admin || has_capability(caps, CAP_BPF);
        facts.has_cap_perfmon = admin || has_capability(caps, CAP_PERFMON);
#else
        facts.has_cap_bpf = admin;
        facts.has_cap_perfmon = admin;
#endif
        facts.has_cap_net_admin = has_capability(caps, CAP_NET_ADMIN);
    }
    return facts;
}

std::string missing_privileges(const HostFacts& facts) {
    std::vector<std::string> missing;
    if (!facts.has_cap_bpf) missing.emplace_back("CAP_BPF");
    if (!facts.has_cap_perfmon) missing.emplace_back("CAP_PERFMON");
    if (!facts.has_cap_net_admin) missing.emplace_back("CAP_NET_ADMIN");
    std::string phrase;
    for (const auto& name : missing) {
        if (!phrase.empty()) phrase += ", ";
        phrase += name;
    }
    return phrase;
}

}  // namespace closetrace
