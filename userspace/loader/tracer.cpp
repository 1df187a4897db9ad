#include "tracer.h"

#include "closetrace/file_descriptor.h"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "closetrace.skel.h"

extern "C" {
#include "closetrace.h"
}

namespace closetrace {
namespace {

// libbpf's own diagnostics are for developers; keep the last warning for the error message.
thread_local std::string last_libbpf_message;

// CLOSETRACE_LIBBPF_DEBUG=1: all of libbpf's log on stderr, the verifier's log included (what
// tools/vm/kernel-check --libbpf-debug shows from inside a VM).
int capture_libbpf_print(enum libbpf_print_level level, const char* format, va_list args) {
    if (std::getenv("CLOSETRACE_LIBBPF_DEBUG")) {
        va_list copy;
        va_copy(copy, args);
        vfprintf(stderr, format, copy);
        va_end(copy);
    }
    if (level == LIBBPF_DEBUG) return 0;
    char text[512];
    vsnprintf(text, sizeof(text), format, args);
    std::string_view line(text);
    while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.remove_suffix(1);
    if (!line.empty()) last_libbpf_message = std::string(line);
    return 0;
}

std::string errno_text(int err) { return std::strerror(err < 0 ? -err : err); }

// "now at N nsecs" (CLOCK_MONOTONIC) and the first "jiffies: N" of /proc/timer_list.
std::optional<std::pair<uint64_t, uint64_t>> sample_jiffies() {
    std::ifstream list("/proc/timer_list");
    std::string line;
    std::optional<uint64_t> now_ns;
    while (std::getline(list, line)) {
        unsigned long long value = 0;
        if (!now_ns && std::sscanf(line.c_str(), "now at %llu nsecs", &value) == 1) now_ns = value;
        if (now_ns && std::sscanf(line.c_str(), "jiffies: %llu", &value) == 1) {
            return std::make_pair(*now_ns, static_cast<uint64_t>(value));
        }
    }
    return std::nullopt;
}

// The kernel's HZ from the pace of its jiffies over 200 ms; 0 when it cannot be told.
unsigned measure_hz() {
    const auto first = sample_jiffies();
    usleep(200 * 1000);
    const auto second = sample_jiffies();
    if (!first || !second || second->first <= first->first) return 0;
    const double rate = static_cast<double>(second->second - first->second) * 1e9 /
                        static_cast<double>(second->first - first->first);
    for (const unsigned hz : {100u, 250u, 300u, 1000u}) {
        if (rate > hz * 0.9 && rate < hz * 1.1) return hz;
    }
    return 0;
}

// CONFIG_HZ for the programs' `__kconfig` extern, when libbpf cannot read it itself: it looks
// in /boot/config-RELEASE and /proc/config.gz only, and refuses to load anything when neither
// is there (a container that does not mount /boot; Debian and AL2023 kernels have no
// /proc/config.gz). Empty when libbpf will find the kernel's config.
std::string kconfig_override() {
    utsname names{};
    if (uname(&names) == 0 &&
        access((std::string("/boot/config-") + names.release).c_str(), R_OK) == 0) {
        return {};
    }
    if (access("/proc/config.gz", R_OK) == 0) return {};
    static const std::string measured = fmt::format("CONFIG_HZ={}\n", measure_hz());
    return measured;
}

// Opens the skeleton with the filters in its read-only data and one reset program variant.
closetrace_bpf* open_configured(const TracerConfig& config, bool dynptr_reset) {
    bpf_object_open_opts open_options{};
    open_options.sz = sizeof(open_options);
    const std::string kconfig = kconfig_override();
    if (!kconfig.empty()) open_options.kconfig = kconfig.c_str();
    closetrace_bpf* skeleton = closetrace_bpf__open_opts(&open_options);
    if (!skeleton) {
        throw LoaderError(fmt::format("cannot open the BPF programs: {} ({})", errno_text(errno),
                                      last_libbpf_message));
    }
    auto* rodata = skeleton->rodata;
    for (std::size_t i = 0; i < config.ports.size(); ++i) rodata->filter_ports[i] = config.ports[i];
    rodata->filter_port_count = static_cast<uint32_t>(config.ports.size());
    rodata->filter_netns = config.netns;
    if (config.cgroup_filter_dir) {
        struct stat info{};
        if (stat(config.cgroup_filter_dir->c_str(), &info) != 0) {
            const int err = errno;
            closetrace_bpf__destroy(skeleton);
            throw LoaderError(fmt::format("--cgroup {}: {}", *config.cgroup_filter_dir,
                                          errno_text(err)));
        }
        rodata->filter_cgroup_id = info.st_ino;
        rodata->filter_cgroup_level = config.cgroup_filter_level;
    }
    bpf_map__set_max_entries(skeleton->maps.events, config.ring_buffer_bytes);
    // A wake-up each time a sixteenth of the ring fills (see submit_event in closetrace.bpf.c).
    rodata->wakeup_shift = static_cast<uint32_t>(std::countr_zero(config.ring_buffer_bytes)) - 4;
    bpf_program__set_autoload(skeleton->progs.on_reset_sent_dynptr, dynptr_reset);
    bpf_program__set_autoload(skeleton->progs.on_reset_sent, !dynptr_reset);
    if (!config.messages) {
        bpf_program__set_autoload(skeleton->progs.on_ingress, false);
        bpf_program__set_autoload(skeleton->progs.on_egress, false);
    }
    return skeleton;
}

}  // namespace

struct Tracer::Impl {
    closetrace_bpf* skeleton = nullptr;
    bpf_program* reset_sent = nullptr;  // the variant of tcp_send_reset that loaded
    std::vector<bpf_link*> links;
    ring_buffer* ring = nullptr;
    RecordSink sink;
    int possible_cpus = 1;

    ~Impl() {
        if (ring) ring_buffer__free(ring);
        for (auto it = links.rbegin(); it != links.rend(); ++it) bpf_link__destroy(*it);
        if (skeleton) closetrace_bpf__destroy(skeleton);
    }

    static int on_record(void* context, void* data, size_t size) {
        auto* self = static_cast<Impl*>(context);
        self->sink(std::span<const uint8_t>(static_cast<const uint8_t*>(data), size));
        return 0;
    }

    void attach(bpf_program* program, const char* what) {
        bpf_link* link = bpf_program__attach(program);
        if (!link) {
            const int err = errno;
            throw LoaderError(fmt::format(
                "cannot attach {}: {} ({}); run `closetrace doctor` to see what this kernel "
                "supports",
                what, errno_text(err), last_libbpf_message));
        }
        links.push_back(link);
    }
};

Tracer::Tracer(const TracerConfig& config, RecordSink sink) : impl_(std::make_unique<Impl>()) {
    libbpf_set_print(capture_libbpf_print);
    impl_->sink = std::move(sink);
    impl_->possible_cpus = libbpf_num_possible_cpus();

    if (config.ports.size() > CT_MAX_PORTS) {
        throw LoaderError(fmt::format("at most {} --port filters are supported", CT_MAX_PORTS));
    }

    // The reset program that reads page fragments through an skb dynptr needs 6.15+; older
    // kernels get the variant that reads them through the direct map.
    std::string refusal;
    for (const bool dynptr : {true, false}) {
        impl_->skeleton = open_configured(config, dynptr);
        const int err = closetrace_bpf__load(impl_->skeleton);
        if (err == 0) {
            probes_.reset_sent = dynptr ? "tp_btf/tcp_send_reset (skb dynptr)"
                                        : "tp_btf/tcp_send_reset (direct map)";
            impl_->reset_sent = dynptr ? impl_->skeleton->progs.on_reset_sent_dynptr
                                       : impl_->skeleton->progs.on_reset_sent;
            break;
        }
        refusal = fmt::format("{} ({})", errno_text(err), last_libbpf_message);
        closetrace_bpf__destroy(impl_->skeleton);
        impl_->skeleton = nullptr;
    }
    if (!impl_->skeleton) {
        throw LoaderError(fmt::format(
            "the kernel refused the BPF programs: {}; run `closetrace doctor`", refusal));
    }
    probes_.state = "tp_btf/inet_sock_set_state";
    probes_.reset_received = "tp_btf/tcp_receive_reset";
    if (!config.messages) {
        probes_.notes.emplace_back("cgroup_skb not attached: no HTTP heads; idle times in jiffies");
    }

    impl_->attach(impl_->skeleton->progs.on_state_change, "tp_btf/inet_sock_set_state");
    impl_->attach(impl_->reset_sent, "tp_btf/tcp_send_reset");
    impl_->attach(impl_->skeleton->progs.on_reset_received, "tp_btf/tcp_receive_reset");

    std::optional<FileDescriptor> cgroup_fd;
    if (config.messages) {
        const std::string& dir = config.attach_cgroup_dir;
        cgroup_fd.emplace(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (cgroup_fd->get() < 0) {
            throw LoaderError(fmt::format("cannot open cgroup {}: {}", dir, errno_text(errno)));
        }
        for (auto* program : {impl_->skeleton->progs.on_ingress, impl_->skeleton->progs.on_egress}) {
            bpf_link* link = bpf_program__attach_cgroup(program, cgroup_fd->get());
            if (!link) {
                throw LoaderError(fmt::format("cannot attach cgroup_skb to {}: {} ({})", dir,
                                              errno_text(errno), last_libbpf_message));
            }
            impl_->links.push_back(link);
        }
        probes_.messages = "cgroup_skb";
    }

    rst_reasons_ = load_rst_reason_names();
    probes_.rst_reason = !rst_reasons_.empty();
    if (!probes_.rst_reason) {
        probes_.notes.emplace_back("this kernel does not say why it sends resets (< 6.10)");
    }

    impl_->ring = ring_buffer__new(bpf_map__fd(impl_->skeleton->maps.events), &Impl::on_record,
                                   impl_.get(), nullptr);
    if (!impl_->ring) {
        throw LoaderError(fmt::format("cannot map the ring buffer: {}", errno_text(errno)));
    }
}

Tracer::~Tracer() = default;

int Tracer::poll(int timeout_ms) {
    int delivered = ring_buffer__poll(impl_->ring, timeout_ms);
    if (delivered == -EINTR) delivered = 0;
    if (delivered < 0) {
        throw LoaderError(fmt::format("reading the ring buffer failed: {}", errno_text(delivered)));
    }
    // The programs wake us only when a batch is waiting: also take what is there below it.
    const int more = ring_buffer__consume(impl_->ring);
    return delivered + (more > 0 ? more : 0);
}

int Tracer::drain() {
    const int delivered = ring_buffer__consume(impl_->ring);
    return delivered < 0 ? 0 : delivered;
}

TracerCounters Tracer::counters() const {
    TracerCounters totals;
    std::vector<uint64_t> per_cpu(impl_->possible_cpus);
    const int fd = bpf_map__fd(impl_->skeleton->maps.counters);
    for (uint32_t key : {uint32_t{CT_COUNTER_EMITTED}, uint32_t{CT_COUNTER_LOST}}) {
        if (bpf_map_lookup_elem(fd, &key, per_cpu.data()) != 0) continue;
        uint64_t sum = 0;
        for (uint64_t value : per_cpu) sum += value;
        (key == CT_COUNTER_EMITTED ? totals.emitted : totals.lost) = sum;
    }
    return totals;
}

RstReasonNames load_rst_reason_names() {
    btf* types = btf__load_vmlinux_btf();
    if (!types) return {};
    RstReasonNames names;
    const int id = btf__find_by_name_kind(types, "sk_rst_reason", BTF_KIND_ENUM);
    if (id > 0) {
        const btf_type* type = btf__type_by_id(types, id);
        const struct btf_enum* values = btf_enum(type);
        constexpr std::string_view kPrefix = "SK_RST_REASON_";
        for (int i = 0; i < btf_vlen(type); ++i) {
            std::string_view name = btf__name_by_offset(types, values[i].name_off);
            if (name.starts_with(kPrefix)) name.remove_prefix(kPrefix.size());
            const auto value = static_cast<std::size_t>(values[i].val);
            if (value > 1024) continue;  // not an index-like enum: ignore rather than allocate
            if (names.size() <= value) names.resize(value + 1);
            names[value] = std::string(name);
        }
    }
    btf__free(types);
    return names;
}

std::optional<std::string> fentry_unavailable_reason() {
    libbpf_set_print(capture_libbpf_print);  // not libbpf's own stderr lines in doctor's table
    btf* types = btf__load_vmlinux_btf();
    if (!types) return std::string("no kernel BTF");
    const int target = btf__find_by_name_kind(types, "tcp_close", BTF_KIND_FUNC);
    btf__free(types);
    if (target <= 0) return std::string("tcp_close not found in kernel BTF");

    const bpf_insn program[] = {
        {BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 0},
        {BPF_JMP | BPF_EXIT, 0, 0, 0, 0},
    };
    bpf_prog_load_opts options{};
    options.sz = sizeof(options);
    options.expected_attach_type = BPF_TRACE_FENTRY;
    options.attach_btf_id = static_cast<uint32_t>(target);
    const int fd = bpf_prog_load(BPF_PROG_TYPE_TRACING, "ct_fentry_probe", "GPL", program, 2,
                                 &options);
    if (fd < 0) return fmt::format("loading an fentry program fails: {}", errno_text(errno));
    close(fd);
    return std::nullopt;
}

}  // namespace closetrace
