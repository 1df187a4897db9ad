// Loads and attaches the kernel programs (bpf/closetrace.bpf.c) and hands their ring buffer
// records to a callback. Everything attached is detached by the destructor.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "closetrace/event.h"

namespace closetrace {

struct TracerConfig {
    std::vector<uint16_t> ports;
    uint32_t netns = 0;  // only sockets of this network namespace (inode); 0 = any
    // --cgroup: a cgroup v2 directory and its depth below the hierarchy's root (root = 0).
    std::optional<std::string> cgroup_filter_dir;
    uint32_t cgroup_filter_level = 0;
    // Where the cgroup_skb programs attach: the filter cgroup, or the cgroup v2 root.
    std::string attach_cgroup_dir;
    uint32_t ring_buffer_bytes = 8u << 20;
    bool messages = true;  // attach the cgroup_skb programs (HTTP heads, exact idle times)
    // A request after this much silence on its socket is written whole; others are counted.
    uint64_t idle_gap_ns = 500'000'000;
    // record --http2-names: every HTTP/2 header block fragment is copied, a ring record each.
    bool http2_fragments = false;
    // record --btf: the portable programs (raw tracepoints), relocated against this BTF file
    // instead of the kernel's own (which kernels built without CONFIG_DEBUG_INFO_BTF lack).
    std::optional<std::string> btf_path;
};

// Which kernel hook feeds each kind of event ("" where none is attached).
struct ProbeSet {
    std::string state;
    std::string reset_sent;
    std::string reset_received;
    std::string messages;
    bool rst_reason = false;
    // How the kernel hands over at the end what it holds of the connections still open (see
    // Tracer::finish): "iter/bpf_sk_storage_map" (every network namespace), "iter/tcp" (the
    // recorder's only), "" (not at all: the portable programs, a kernel refusing both).
    std::string open_messages;
    std::vector<std::string> notes;  // why a probe is missing or degraded
};

// Whose requests Tracer::finish made exact among the connections still open.
struct OpenHandover {
    bool every_netns = false;
    uint32_t netns = 0;  // else only those of this network namespace (inode); 0 none

    bool exact_in(uint32_t conn_netns) const {
        return every_netns || (netns != 0 && conn_netns == netns);
    }
};

struct TracerCounters {
    uint64_t emitted = 0;  // records the kernel handed to the ring buffer
    uint64_t lost = 0;     // records the kernel dropped (ring buffer full)
};

// A failure to load or attach: `what()` is one line that says what to do.
class LoaderError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Called for each record, only from within poll() and drain(), which rethrow what it throws
// (delivery stops there; that record counts as read).
using RecordSink = std::function<void(std::span<const uint8_t>)>;

class Tracer {
public:
    // Opens, configures, loads and attaches; throws LoaderError.
    Tracer(const TracerConfig& config, RecordSink sink);
    ~Tracer();
    Tracer(const Tracer&) = delete;
    Tracer& operator=(const Tracer&) = delete;

    // Waits up to timeout_ms for records and delivers them, at most the ring buffer's size of
    // them; returns the number delivered. Interrupted by a signal, returns 0.
    int poll(int timeout_ms);
    // Delivers every record already in the ring buffer.
    int drain();
    // The end of the recording: detaches every program, has the kernel write what it holds of
    // the connections still open (the messages their close would have written: the latest
    // request and response, and with them the counts) and delivers every record left. Returns
    // whose requests are then exact; the others' are lower bounds (the portable programs, a
    // kernel refusing the iterators, a failure). Only drain() may follow.
    OpenHandover finish();

    TracerCounters counters() const;
    const ProbeSet& probes() const { return probes_; }
    const RstReasonNames& rst_reasons() const { return rst_reasons_; }

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
    ProbeSet probes_;
    RstReasonNames rst_reasons_;
};

// The kernel's names for enum sk_rst_reason, indexed by value, prefix removed; empty when the
// kernel has no such enum. From the kernel's BTF, or from the file given.
RstReasonNames load_rst_reason_names(const std::optional<std::string>& btf_path = std::nullopt);

// The kernel ABI: the record layouts of bpf/closetrace.h, versioned by CT_ABI_VERSION. The
// embedded BPF objects carry the version they were built with (their read-only `abi_version`);
// the tracer refuses to load one that disagrees with this binary's. This returns that refusal,
// one line, for an object built with `built`; nullopt when they agree.
std::optional<std::string> abi_mismatch(uint32_t built);
// The version each embedded object (the BTF one, then the portable one) was built with, read
// from its read-only data without loading it (no privileges needed).
std::vector<uint32_t> embedded_abi_versions();

// Whether an fentry program can be loaded here (for `doctor`); on failure, why.
std::optional<std::string> fentry_unavailable_reason();

}  // namespace closetrace
