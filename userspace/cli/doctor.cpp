#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include <fmt/format.h>

#include "host.h"
#include "record.h"
#include "tracer.h"

namespace closetrace {
namespace {

void row(const std::string& what, const std::string& finding) {
    std::printf("  %-30s %s\n", what.c_str(), finding.c_str());
}

// Prints what this host supports and which probes `record` will use; throws with exit code 1
// when recording cannot work here.
void doctor(const std::string& btf_path) {
    const HostFacts host = inspect_host();
    std::printf("closetrace doctor\n");
    row("kernel", host.kernel_release);
    row("libbpf", host.libbpf_version);
    if (host.kernel_btf) {
        row("kernel BTF", "yes (/sys/kernel/btf/vmlinux)");
    } else {
        row("kernel BTF", btf_path.empty() ? "NO: record needs --btf FILE"
                                           : "NO: using --btf " + btf_path);
    }
    const std::string missing = missing_privileges(host);
    row("privileges", missing.empty() ? "ok (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN)"
                                      : "MISSING " + missing + ": run as root");
    row("cgroup v2", host.cgroup2_mount ? *host.cgroup2_mount
                                        : "not mounted: no HTTP requests (mount -t cgroup2 none DIR)");
    row("tracefs", host.tracefs_mount ? *host.tracefs_mount
                                      : "not mounted (not needed: BTF tracepoints attach without it)");
    row("kprobes", host.kprobe_pmu ? "available (not needed)"
                                   : "not available: no kprobe PMU in this kernel (not needed)");

    std::optional<std::string> failure;
    if (!missing.empty()) failure = "missing privileges " + missing;
    if (!host.kernel_btf && btf_path.empty()) failure = no_kernel_btf_advice();

    if (missing.empty()) {
        const auto fentry = fentry_unavailable_reason();
        row("fentry/fexit", fentry ? "not available: " + *fentry + " (not needed)"
                                   : "available (not needed)");
    } else {
        row("fentry/fexit", "not checked without privileges");
    }

    if (!failure) {
        TracerConfig config;
        config.messages = host.cgroup2_mount.has_value();
        if (host.cgroup2_mount) config.attach_cgroup_dir = *host.cgroup2_mount;
        config.ring_buffer_bytes = 1u << 20;
        if (!btf_path.empty()) config.btf_path = btf_path;
        try {
            Tracer tracer(config, [](std::span<const uint8_t>) {});
            const ProbeSet& probes = tracer.probes();
            row(probes.state, "loaded and attached");
            row(probes.reset_sent, probes.rst_reason
                                       ? "loaded and attached (reset reasons: yes)"
                                       : "loaded and attached (reset reasons: not in this kernel)");
            row(probes.reset_received, "loaded and attached");
            if (!probes.messages.empty()) {
                row("cgroup_skb ingress/egress", "loaded and attached on " + config.attach_cgroup_dir);
            }
            std::string used = probes.state + ", " + probes.reset_sent + ", " + probes.reset_received;
            if (!probes.messages.empty()) used += ", " + probes.messages;
            std::printf("record will use: %s\n", used.c_str());
            for (const auto& note : probes.notes) std::printf("note: %s\n", note.c_str());
            std::printf("kprobes and fentry are not used: tracepoints and cgroup hooks give the "
                        "same facts on every kernel\n");
        } catch (const LoaderError& error) {
            failure = error.what();
        }
    }
    if (failure) {
        throw CLI::RuntimeError("closetrace doctor: recording cannot work here: " + *failure, 1);
    }
}

}  // namespace

void add_doctor_command(CLI::App& app) {
    auto btf_path = std::make_shared<std::string>();
    CLI::App* command = app.add_subcommand(
        "doctor", "Check what this host supports and which probes record will use");
    command->add_option("--btf", *btf_path, kBtfOptionHelp)->check(CLI::ExistingFile);
    command->callback([btf_path] { doctor(*btf_path); });
}

}  // namespace closetrace
