#include "doctor.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "closetrace/event.h"
#include "closetrace/file_descriptor.h"
#include "cli_support.h"
#include "host.h"
#include "kernel_btf.h"
#include "tracer.h"

namespace closetrace {
namespace {

void row(const std::string& what, const std::string& finding) {
    std::printf("  %-30s %s\n", what.c_str(), finding.c_str());
}

bool is_loopback_v4(const std::array<uint8_t, 16>& addr) {
    return addr[0] == 127 && addr[1] == 0 && addr[2] == 0 && addr[3] == 1;
}

// Opens and closes a loopback connection of doctor's own while the programs are attached; the
// records of its two ends must carry its real addresses and ports. Wrong ones mean the programs
// read sockets at wrong offsets: a --btf file made for another kernel build. Returns why not.
std::optional<std::string> traced_connection_failure(Tracer& tracer,
                                                     const std::vector<Event>& seen) {
    FileDescriptor listener(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof(address);
    if (listener.get() < 0 ||
        bind(listener.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
        listen(listener.get(), 1) != 0 ||
        getsockname(listener.get(), reinterpret_cast<sockaddr*>(&address), &length) != 0) {
        return "cannot open a loopback listener for the test connection";
    }
    const uint16_t port = ntohs(address.sin_port);
    {
        FileDescriptor client(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        if (client.get() < 0 ||
            connect(client.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
            return "cannot open the loopback test connection";
        }
        FileDescriptor accepted(accept(listener.get(), nullptr, nullptr));
    }
    auto found = [&](Role role) {
        for (const Event& event : seen) {
            const Tuple& t = event.tuple;
            const uint16_t server_port = role == Role::Server ? t.lport : t.rport;
            if (event.kind == EventKind::State && event.new_state == kTcpEstablished &&
                event.role == role && server_port == port && t.family == AF_INET &&
                is_loopback_v4(t.laddr) && is_loopback_v4(t.raddr)) {
                return true;
            }
        }
        return false;
    };
    for (int i = 0; i < 20 && !(found(Role::Server) && found(Role::Client)); ++i) {
        tracer.poll(50);
    }
    if (found(Role::Server) && found(Role::Client)) return std::nullopt;
    return fmt::format(
        "a loopback test connection (127.0.0.1:{}) was not recorded with its addresses and ports "
        "({} records seen): the programs read sockets wrongly; with --btf, the file is not this "
        "kernel's (uname -r)",
        port, seen.size());
}

// What the host offers, a row each; returns why recording cannot work here, if the host says.
std::optional<std::string> host_rows(const HostFacts& host, const std::string& btf_path) {
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
    return failure;
}

// Loads and attaches the programs as `record` would, a row each, and traces a connection of
// doctor's own; returns why that failed, if it did.
std::optional<std::string> probe_rows(const HostFacts& host, const std::string& btf_path) {
    TracerConfig config;
    config.messages = host.cgroup2_mount.has_value();
    if (host.cgroup2_mount) config.attach_cgroup_dir = *host.cgroup2_mount;
    config.ring_buffer_bytes = 1u << 20;
    if (!btf_path.empty()) config.btf_path = btf_path;
    try {
        std::vector<Event> seen;
        Tracer tracer(config, [&seen](std::span<const uint8_t> record) {
            std::string error;
            if (auto event = decode_event(record, {}, &error)) seen.push_back(*event);
        });
        const ProbeSet& probes = tracer.probes();
        row(probes.state, "loaded and attached");
        row(probes.reset_sent, probes.rst_reason
                                   ? "loaded and attached (reset reasons: yes)"
                                   : "loaded and attached (reset reasons: not in this kernel)");
        row(probes.reset_received, "loaded and attached");
        if (!probes.messages.empty()) {
            row("cgroup_skb ingress/egress", "loaded and attached on " + config.attach_cgroup_dir);
        }
        if (!probes.open_messages.empty()) {
            row(probes.open_messages, "loaded (run when record ends: open connections' messages)");
        }
        const auto traced = traced_connection_failure(tracer, seen);
        row("test connection", traced ? "FAILED" : "recorded with its addresses and ports");
        std::string used = probes.state + ", " + probes.reset_sent + ", " + probes.reset_received;
        if (!probes.messages.empty()) used += ", " + probes.messages;
        if (!probes.open_messages.empty()) used += ", " + probes.open_messages;
        std::printf("record will use: %s\n", used.c_str());
        for (const auto& note : probes.notes) std::printf("note: %s\n", note.c_str());
        std::printf("kprobes and fentry are not used: tracepoints and cgroup hooks give the "
                    "same facts on every kernel\n");
        return traced;
    } catch (const LoaderError& error) {
        return error.what();
    }
}

// Prints what this host supports and which probes `record` will use; throws with exit code 1
// when recording cannot work here.
void doctor(const std::string& btf_path) {
    const HostFacts host = inspect_host();
    std::printf("closetrace doctor\n");
    std::optional<std::string> failure = host_rows(host, btf_path);
    if (!failure) failure = probe_rows(host, btf_path);
    if (failure) {
        throw CLI::RuntimeError("closetrace doctor: recording cannot work here: " + *failure, 1);
    }
    flush_stdout("doctor");
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
