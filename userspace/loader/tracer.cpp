#include "tracer.h"

#include "closetrace/file_descriptor.h"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/membarrier.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "closetrace.skel.h"
#include "closetrace_portable.skel.h"

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

// An embedded object built for other record layouts than this binary decodes: no fallback
// to the other object helps (both are built with the binary), so it ends the load.
class AbiMismatch : public LoaderError {
public:
    using LoaderError::LoaderError;
};

// The two objects built from bpf/closetrace.bpf.c, behind one interface.
template <typename Skeleton>
struct SkeletonApi;

template <>
struct SkeletonApi<closetrace_bpf> {
    static constexpr auto open = closetrace_bpf__open_opts;
    static constexpr auto load = closetrace_bpf__load;
    static constexpr auto destroy = closetrace_bpf__destroy;
    static constexpr const char* kTracepoint = "tp_btf";
};

template <>
struct SkeletonApi<closetrace_portable_bpf> {
    static constexpr auto open = closetrace_portable_bpf__open_opts;
    static constexpr auto load = closetrace_portable_bpf__load;
    static constexpr auto destroy = closetrace_portable_bpf__destroy;
    static constexpr const char* kTracepoint = "raw_tp";
};

// Whether the object has the reset program that reads the trigger through an skb dynptr.
template <typename Skeleton>
constexpr bool kHasDynptrReset = requires(Skeleton* s) { s->progs.on_reset_sent_dynptr; };

// Whether the object has the iterators that write the messages of the sockets still open at
// the end (iterators need the kernel's BTF: the portable object has none).
template <typename Skeleton>
constexpr bool kHasOpenMessages = requires(Skeleton* s) { s->progs.write_open_messages; };

// The iterator a load includes: over the socket storage (every network namespace), over the TCP
// sockets of the recorder's network namespace, or none.
enum class OpenMessages { StorageMap, Netns, None };

// Which optional programs a load includes.
struct Variant {
    bool dynptr_reset = false;
    OpenMessages open_messages = OpenMessages::None;
};

// Opens the skeleton with the filters in its read-only data and the programs of `variant`.
template <typename Skeleton>
Skeleton* open_configured(const TracerConfig& config, Variant variant) {
    using Api = SkeletonApi<Skeleton>;
    bpf_object_open_opts open_options{};
    open_options.sz = sizeof(open_options);
    const std::string kconfig = kconfig_override();
    if (!kconfig.empty()) open_options.kconfig = kconfig.c_str();
    if (config.btf_path) open_options.btf_custom_path = config.btf_path->c_str();
    Skeleton* skeleton = Api::open(&open_options);
    if (!skeleton) {
        throw LoaderError(fmt::format("cannot open the BPF programs: {} ({})", errno_text(errno),
                                      last_libbpf_message));
    }
    auto* rodata = skeleton->rodata;
    if (auto mismatch = abi_mismatch(rodata->abi_version)) {
        Api::destroy(skeleton);
        throw AbiMismatch(*mismatch);
    }
    for (std::size_t i = 0; i < config.ports.size(); ++i) rodata->filter_ports[i] = config.ports[i];
    rodata->filter_port_count = static_cast<uint32_t>(config.ports.size());
    rodata->filter_netns = config.netns;
    rodata->idle_gap_ns = config.idle_gap_ns;
    rodata->copy_http2_fragments = config.http2_fragments;
    if (config.cgroup_filter_dir) {
        struct stat info{};
        if (stat(config.cgroup_filter_dir->c_str(), &info) != 0) {
            const int err = errno;
            Api::destroy(skeleton);
            throw LoaderError(fmt::format("--cgroup {}: {}", *config.cgroup_filter_dir,
                                          errno_text(err)));
        }
        rodata->filter_cgroup_id = info.st_ino;
        rodata->filter_cgroup_level = config.cgroup_filter_level;
    }
    bpf_map__set_max_entries(skeleton->maps.events, config.ring_buffer_bytes);
    // A wake-up each time a sixteenth of the ring fills (see submit_event in closetrace.bpf.c).
    rodata->wakeup_shift = static_cast<uint32_t>(std::countr_zero(config.ring_buffer_bytes)) - 4;
    if constexpr (kHasDynptrReset<Skeleton>) {
        bpf_program__set_autoload(skeleton->progs.on_reset_sent_dynptr, variant.dynptr_reset);
        bpf_program__set_autoload(skeleton->progs.on_reset_sent, !variant.dynptr_reset);
    }
    if constexpr (kHasOpenMessages<Skeleton>) {
        bpf_program__set_autoload(skeleton->progs.write_open_messages,
                                  variant.open_messages == OpenMessages::StorageMap);
        bpf_program__set_autoload(skeleton->progs.write_open_messages_netns,
                                  variant.open_messages == OpenMessages::Netns);
    }
    if (!config.messages) {
        for (bpf_program* program :
             {skeleton->progs.on_ingress, skeleton->progs.on_egress,
              skeleton->progs.on_ingress_long_head, skeleton->progs.on_egress_long_head}) {
            bpf_program__set_autoload(program, false);
        }
    }
    return skeleton;
}

// The programs for a response head longer than the capture, which the cgroup_skb programs reach
// by tail call (on_packet in closetrace.bpf.c). Empty slots leave such heads their first bytes.
template <typename Skeleton>
int fill_long_head_programs(Skeleton* skeleton) {
    const uint32_t slot = 0;
    for (const auto& [programs, program] :
         {std::pair{skeleton->maps.long_head_ingress, skeleton->progs.on_ingress_long_head},
          std::pair{skeleton->maps.long_head_egress, skeleton->progs.on_egress_long_head}}) {
        const int fd = bpf_program__fd(program);
        if (bpf_map__update_elem(programs, &slot, sizeof(slot), &fd, sizeof(fd), BPF_ANY) != 0) {
            return -errno;
        }
    }
    return 0;
}

// What the tracer uses of a loaded object, whichever it is.
struct LoadedObject {
    std::function<void()> destroy;
    bpf_program* state = nullptr;
    bpf_program* reset_sent = nullptr;  // the variant of tcp_send_reset that loaded
    bpf_program* reset_received = nullptr;
    bpf_program* ingress = nullptr;
    bpf_program* egress = nullptr;
    bpf_program* open_messages = nullptr;  // the iterator, when one loaded
    OpenMessages open_messages_kind = OpenMessages::None;
    // Why the iterator over socket storage is not the one loaded: the kernel's refusal, or that
    // the object has none (the portable one).
    std::string storage_iterator_missing{};
    bpf_map* sock_states = nullptr;        // what the iterator walks
    bpf_map* events = nullptr;
    bpf_map* counters = nullptr;
    volatile uint32_t* recording = nullptr;  // the programs' switch (see closetrace.bpf.c)
};

// Loads the object with the first variant of its optional programs this kernel accepts: the
// reset program reading through an skb dynptr needs 6.15+ (older kernels read page fragments
// through the direct map); of the iterators of the sockets open at the end, the one over socket
// storage, else the one over TCP sockets (some kernels refuse iterators over map elements), else
// none, so that a kernel refusing both still records.
template <typename Skeleton>
LoadedObject load_object(const TracerConfig& config, ProbeSet& probes) {
    using Api = SkeletonApi<Skeleton>;
    const std::string tracepoint = Api::kTracepoint;
    std::string refusal;
    std::string storage_iterator_refusal = "the portable programs, loaded here, have none";
    for (const Variant variant :
         {Variant{.dynptr_reset = true, .open_messages = OpenMessages::StorageMap},
          Variant{.dynptr_reset = true, .open_messages = OpenMessages::Netns},
          Variant{.dynptr_reset = false, .open_messages = OpenMessages::StorageMap},
          Variant{.dynptr_reset = false, .open_messages = OpenMessages::Netns},
          Variant{.dynptr_reset = false, .open_messages = OpenMessages::None}}) {
        if (variant.dynptr_reset && !kHasDynptrReset<Skeleton>) continue;
        if (variant.open_messages != OpenMessages::None && !kHasOpenMessages<Skeleton>) continue;
        Skeleton* skeleton = open_configured<Skeleton>(config, variant);
        const int err = Api::load(skeleton);
        if (err != 0) {
            refusal = fmt::format("{} ({})", errno_text(err), last_libbpf_message);
            if (variant.open_messages == OpenMessages::StorageMap) {
                storage_iterator_refusal = "refused by the kernel: " + errno_text(err);
            }
            Api::destroy(skeleton);
            continue;
        }
        LoadedObject object{.destroy = [skeleton] { Api::destroy(skeleton); },
                            .state = skeleton->progs.on_state_change,
                            .reset_sent = skeleton->progs.on_reset_sent,
                            .reset_received = skeleton->progs.on_reset_received,
                            .ingress = skeleton->progs.on_ingress,
                            .egress = skeleton->progs.on_egress,
                            .sock_states = skeleton->maps.sock_states,
                            .events = skeleton->maps.events,
                            .counters = skeleton->maps.counters,
                            .recording = &skeleton->bss->recording};
        if (variant.open_messages != OpenMessages::StorageMap) {
            object.storage_iterator_missing = storage_iterator_refusal;
        }
        if (config.messages) {
            if (const int unfilled = fill_long_head_programs(skeleton); unfilled != 0) {
                probes.notes.emplace_back(fmt::format(
                    "response heads longer than {} bytes keep their first bytes only (Node's "
                    "Connection and Keep-Alive may be past them): {}",
                    CT_PAYLOAD_MAX, errno_text(unfilled)));
            }
        }
        if constexpr (kHasDynptrReset<Skeleton>) {
            if (variant.dynptr_reset) object.reset_sent = skeleton->progs.on_reset_sent_dynptr;
        }
        if constexpr (kHasOpenMessages<Skeleton>) {
            object.open_messages_kind = variant.open_messages;
            if (variant.open_messages == OpenMessages::StorageMap) {
                object.open_messages = skeleton->progs.write_open_messages;
            } else if (variant.open_messages == OpenMessages::Netns) {
                object.open_messages = skeleton->progs.write_open_messages_netns;
            }
        }
        probes.state = tracepoint + "/inet_sock_set_state";
        probes.reset_sent = tracepoint + "/tcp_send_reset" +
                            (variant.dynptr_reset ? " (skb dynptr)" : " (direct map)");
        probes.reset_received = tracepoint + "/tcp_receive_reset";
        return object;
    }
    throw LoaderError(fmt::format(
        "the kernel refused the BPF programs: {}; run `closetrace doctor`", refusal));
}

}  // namespace

struct Tracer::Impl {
    LoadedObject object;
    std::vector<bpf_link*> links;
    // The iterator over the sockets' state, run once by finish(); null when unavailable. It
    // covers the sockets of this network namespace (inode), or with 0 of every one.
    bpf_link* open_messages = nullptr;
    uint32_t open_messages_netns = 0;
    bool messages = false;  // the cgroup_skb programs, which count messages, are attached
    ring_buffer* ring = nullptr;
    RecordSink sink;
    int possible_cpus = 1;
    // One poll() delivers at most the ring's size in records: libbpf reads on while records
    // keep coming, and a sink no faster than the programs would otherwise never return.
    std::size_t batch_bytes = 0;
    // The delivery under way: its counts, and the exception the sink threw, if it did.
    std::size_t budget_bytes = 0;
    int delivered = 0;
    std::exception_ptr failure;

    ~Impl() {
        if (ring) ring_buffer__free(ring);
        detach();
        if (open_messages) bpf_link__destroy(open_messages);
        if (object.destroy) object.destroy();
    }

    // Creating the link runs nothing: a failure here is known before the recording starts.
    void attach_open_messages(ProbeSet& probes) {
        switch (object.open_messages_kind) {
            case OpenMessages::StorageMap: {
                bpf_iter_link_info map_info{};
                map_info.map.map_fd = static_cast<uint32_t>(bpf_map__fd(object.sock_states));
                bpf_iter_attach_opts options{};
                options.sz = sizeof(options);
                options.link_info = &map_info;
                options.link_info_len = sizeof(map_info);
                open_messages = bpf_program__attach_iter(object.open_messages, &options);
                if (open_messages) {
                    probes.open_messages = "iter/bpf_sk_storage_map";
                } else {
                    object.storage_iterator_missing = "not attached: " + errno_text(errno);
                }
                return;
            }
            case OpenMessages::Netns: {
                // The TCP iterator walks the namespace of the process that reads it: this one.
                struct stat own{};
                if (stat("/proc/self/ns/net", &own) != 0) return;
                open_messages = bpf_program__attach_iter(object.open_messages, nullptr);
                if (!open_messages) return;
                open_messages_netns = static_cast<uint32_t>(own.st_ino);
                probes.open_messages = "iter/tcp";
                return;
            }
            case OpenMessages::None: return;
        }
    }

    // In the reverse order of attachment.
    void detach() {
        for (auto it = links.rbegin(); it != links.rend(); ++it) bpf_link__destroy(*it);
        links.clear();
    }

    // What the callback returns to end a delivery: libbpf then stops reading, with the record
    // just delivered consumed, and returns this.
    static constexpr int kStop = -ECANCELED;

    static int on_record(void* context, void* data, size_t size) {
        auto* self = static_cast<Impl*>(context);
        // An exception must not unwind through libbpf's C frames: kept, and rethrown by
        // poll() or drain() once libbpf has returned.
        try {
            self->sink(std::span<const uint8_t>(static_cast<const uint8_t*>(data), size));
        } catch (...) {
            self->failure = std::current_exception();
            return kStop;
        }
        ++self->delivered;
        if (size >= self->budget_bytes) return kStop;
        self->budget_bytes -= size;
        return 0;
    }

    // Starts a delivery of at most `bytes` of records.
    void start(std::size_t bytes) {
        budget_bytes = bytes;
        delivered = 0;
    }
    bool stopped(int result) const { return result == kStop; }
    void rethrow_failure() {
        if (failure) std::rethrow_exception(std::exchange(failure, nullptr));
    }

    // With --btf, a tracepoint whose arguments differ from what the file describes is the
    // usual cause: a file made for another kernel build.
    std::string btf_path;

    void attach(bpf_program* program, const char* what) {
        bpf_link* link = bpf_program__attach(program);
        if (!link) {
            const int err = errno;
            const std::string advice =
                btf_path.empty() ? "run `closetrace doctor` to see what this kernel supports"
                                 : fmt::format("is {} this kernel's BTF (uname -r)?", btf_path);
            throw LoaderError(fmt::format("cannot attach {}: {} ({}); {}", what, errno_text(err),
                                          last_libbpf_message, advice));
        }
        links.push_back(link);
    }
};

Tracer::Tracer(const TracerConfig& config, RecordSink sink) : impl_(std::make_unique<Impl>()) {
    libbpf_set_print(capture_libbpf_print);
    impl_->sink = std::move(sink);
    impl_->batch_bytes = config.ring_buffer_bytes;
    impl_->possible_cpus = libbpf_num_possible_cpus();

    if (config.ports.size() > CT_MAX_PORTS) {
        throw LoaderError(fmt::format("at most {} --port filters are supported", CT_MAX_PORTS));
    }

    if (config.btf_path) {
        btf* types = btf__parse(config.btf_path->c_str(), nullptr);
        if (!types) {
            // libbpf's own codes ("Unknown error 4001") say only that the content is not BTF.
            const int err = errno;
            const std::string why =
                err > 0 && err < __LIBBPF_ERRNO__START ? " (" + errno_text(err) + ")" : "";
            throw LoaderError(fmt::format("--btf {}: not a BTF file{}; give this kernel's BTF "
                                          "(from BTFHub, or bpftool gen min_core_btf)",
                                          *config.btf_path, why));
        }
        btf__free(types);
        impl_->btf_path = *config.btf_path;
        impl_->object = load_object<closetrace_portable_bpf>(config, probes_);
        probes_.notes.push_back(fmt::format(
            "portable programs with BTF from {} (`closetrace doctor --btf` checks that it is this "
            "kernel's): connections are told apart by closetrace's own identities, and resets "
            "from time-wait sockets by their addresses",
            *config.btf_path));
    } else {
        try {
            impl_->object = load_object<closetrace_bpf>(config, probes_);
        } catch (const AbiMismatch&) {
            throw;
        } catch (const LoaderError& refused) {
            // Kernels before 5.11 have BTF but no socket storage in BTF tracepoints (Amazon
            // Linux 2's 5.10): the portable programs, relocated against the kernel's own BTF.
            try {
                impl_->object = load_object<closetrace_portable_bpf>(config, probes_);
            } catch (const LoaderError& also_refused) {
                throw LoaderError(fmt::format("{}; the portable programs too: {}", refused.what(),
                                              also_refused.what()));
            }
            probes_.notes.emplace_back(
                "this kernel refused the BTF tracepoint programs (as kernels before 5.11 do: no "
                "socket storage in tracing programs): using the portable ones (raw tracepoints)");
        }
    }
    if (!config.messages) {
        probes_.notes.emplace_back("cgroup_skb not attached: no HTTP heads; idle times in jiffies");
    }

    impl_->attach(impl_->object.state, probes_.state.c_str());
    impl_->attach(impl_->object.reset_sent, probes_.reset_sent.c_str());
    impl_->attach(impl_->object.reset_received, probes_.reset_received.c_str());

    std::optional<FileDescriptor> cgroup_fd;
    if (config.messages) {
        const std::string& dir = config.attach_cgroup_dir;
        cgroup_fd.emplace(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        if (cgroup_fd->get() < 0) {
            throw LoaderError(fmt::format("cannot open cgroup {}: {}", dir, errno_text(errno)));
        }
        for (auto* program : {impl_->object.ingress, impl_->object.egress}) {
            bpf_link* link = bpf_program__attach_cgroup(program, cgroup_fd->get());
            if (!link) {
                throw LoaderError(fmt::format("cannot attach cgroup_skb to {}: {} ({})", dir,
                                              errno_text(errno), last_libbpf_message));
            }
            impl_->links.push_back(link);
        }
        probes_.messages = "cgroup_skb";
    }

    impl_->attach_open_messages(probes_);
    impl_->messages = config.messages;
    if (config.messages && probes_.open_messages != "iter/bpf_sk_storage_map") {
        probes_.notes.emplace_back(fmt::format(
            "the kernel cannot hand over at the end what it holds of the connections still open{} "
            "(the iterator over socket storage: {}): their requests are lower bounds "
            "(requests_lower_bound)",
            probes_.open_messages.empty() ? "" : " outside this network namespace",
            impl_->object.storage_iterator_missing));
    }

    rst_reasons_ = load_rst_reason_names(config.btf_path);
    probes_.rst_reason = !rst_reasons_.empty();
    if (!probes_.rst_reason) {
        probes_.notes.emplace_back("this kernel does not say why it sends resets (< 6.10)");
    }

    impl_->ring = ring_buffer__new(bpf_map__fd(impl_->object.events), &Impl::on_record,
                                   impl_.get(), nullptr);
    if (!impl_->ring) {
        throw LoaderError(fmt::format("cannot map the ring buffer: {}", errno_text(errno)));
    }
    // Only now, with every program attached, do sockets get tracked.
    *impl_->object.recording = 1;
}

Tracer::~Tracer() = default;

int Tracer::poll(int timeout_ms) {
    impl_->start(impl_->batch_bytes);
    const int result = ring_buffer__poll(impl_->ring, timeout_ms);
    impl_->rethrow_failure();
    if (result < 0 && result != -EINTR && !impl_->stopped(result)) {
        throw LoaderError(fmt::format("reading the ring buffer failed: {}", errno_text(result)));
    }
    // The programs wake us only when a batch is waiting: also take what is there below it.
    if (!impl_->stopped(result)) {
        ring_buffer__consume(impl_->ring);
        impl_->rethrow_failure();
    }
    return impl_->delivered;
}

int Tracer::drain() {
    impl_->start(std::numeric_limits<std::size_t>::max());
    ring_buffer__consume(impl_->ring);
    impl_->rethrow_failure();
    return impl_->delivered;
}

OpenHandover Tracer::finish() {
    // Every program stops at once, before any is detached: a connection that closed while some
    // were still attached would show its close without the messages before it. No program may
    // change a socket's messages while the iterator writes them: a packet racing it could
    // write a message twice or tear a held one. Programs still running on another CPU are done
    // after an RCU grace period, which membarrier's global command waits for (refused on
    // nohz_full kernels: then only that instant's packets could race).
    *impl_->object.recording = 0;
    impl_->detach();
    syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0);
    drain();
    if (!impl_->messages) return {.every_netns = true};  // no message counted, none held
    if (!impl_->open_messages) return {};
    const FileDescriptor iterator(bpf_iter_create(bpf_link__fd(impl_->open_messages)));
    if (iterator.get() < 0) return {};
    // The iterator writes one byte per socket: a read of this many visits as many sockets, whose
    // messages (two each at most) take at most half of the ring, drained after each read.
    const std::size_t sockets_per_read =
        std::max<std::size_t>(1, impl_->batch_bytes / (4 * (sizeof(ct_message_event) + 8)));
    std::vector<char> visited(sockets_per_read);
    for (;;) {
        const ssize_t n = read(iterator.get(), visited.data(), visited.size());
        if (n < 0 && errno == EINTR) continue;
        drain();
        if (n < 0) return {};
        if (n == 0) {
            return {.every_netns = impl_->open_messages_netns == 0,
                    .netns = impl_->open_messages_netns};
        }
    }
}

TracerCounters Tracer::counters() const {
    TracerCounters totals;
    std::vector<uint64_t> per_cpu(impl_->possible_cpus);
    const int fd = bpf_map__fd(impl_->object.counters);
    for (uint32_t key : {uint32_t{CT_COUNTER_EMITTED}, uint32_t{CT_COUNTER_LOST}}) {
        if (bpf_map_lookup_elem(fd, &key, per_cpu.data()) != 0) continue;
        uint64_t sum = 0;
        for (uint64_t value : per_cpu) sum += value;
        (key == CT_COUNTER_EMITTED ? totals.emitted : totals.lost) = sum;
    }
    return totals;
}

RstReasonNames load_rst_reason_names(const std::optional<std::string>& btf_path) {
    btf* types = btf_path ? btf__parse(btf_path->c_str(), nullptr) : btf__load_vmlinux_btf();
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

std::optional<std::string> abi_mismatch(uint32_t built) {
    if (built == CT_ABI_VERSION) return std::nullopt;
    return fmt::format("the BPF programs were built for kernel ABI version {}, this binary for "
                       "version {}: the BPF objects and the binary disagree; rebuild closetrace "
                       "(tools/build)",
                       built, CT_ABI_VERSION);
}

namespace {

template <typename Skeleton>
uint32_t embedded_abi_version() {
    using Api = SkeletonApi<Skeleton>;
    Skeleton* skeleton = Api::open(nullptr);
    if (!skeleton) {
        throw LoaderError(fmt::format("cannot open the BPF programs: {} ({})", errno_text(errno),
                                      last_libbpf_message));
    }
    const uint32_t version = skeleton->rodata->abi_version;
    Api::destroy(skeleton);
    return version;
}

}  // namespace

std::vector<uint32_t> embedded_abi_versions() {
    return {embedded_abi_version<closetrace_bpf>(),
            embedded_abi_version<closetrace_portable_bpf>()};
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
