#include "record.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "closetrace/analysis.h"
#include "closetrace/container.h"
#include "closetrace/event.h"
#include "closetrace/file_descriptor.h"
#include "closetrace/recording_metrics.h"
#include "closetrace/text.h"
#include "closetrace/tracker.h"
#include "closetrace/trace_io.h"
#include "closetrace/trace_rotation.h"
#include "closetrace/wallclock.h"
#include "cli_support.h"
#include "host.h"
#include "kernel_btf.h"
#include "tracer.h"

namespace closetrace {
namespace {

volatile sig_atomic_t stop_requested = 0;
volatile sig_atomic_t rotation_requested = 0;

void request_stop(int) { stop_requested = 1; }
void request_rotation(int) { rotation_requested = 1; }

// Every signal that ends a process by default and can be caught ends the recording cleanly,
// with its summary: Ctrl-C, kill, a dropped SSH session (HUP), Ctrl-\ (QUIT), a closed pipe
// (PIPE, after which writes fail with EPIPE and are reported), a file size limit (XFSZ: writes
// then fail with EFBIG), and the ones no one means for closetrace (USR1, ALRM, real-time ...),
// which would otherwise leave a trace without its summary. A recording into rotated files is a
// daemon's: there HUP closes the live file and starts the next, as logrotate and daemons
// expect. No SA_RESTART, so that polling wakes up.
void install_signal_handlers(bool hangup_rotates) {
    struct sigaction action{};
    action.sa_handler = request_stop;
    sigemptyset(&action.sa_mask);
    for (const int signal : {SIGINT, SIGTERM, SIGQUIT, SIGPIPE, SIGXFSZ, SIGUSR1, SIGUSR2, SIGALRM,
                             SIGVTALRM, SIGPROF, SIGXCPU, SIGIO, SIGPWR, SIGSTKFLT}) {
        sigaction(signal, &action, nullptr);
    }
    for (int signal = SIGRTMIN; signal <= SIGRTMAX; ++signal) sigaction(signal, &action, nullptr);
    action.sa_handler = hangup_rotates ? request_rotation : request_stop;
    sigaction(SIGHUP, &action, nullptr);
}

struct RecordOptions {
    std::vector<uint16_t> ports;
    std::string cgroup;
    std::string netns;
    std::string container;
    uint32_t pid = 0;
    double duration_s = 0;
    std::string output;
    bool quiet = false;
    bool full_target = false;
    bool raw_payloads = false;
    bool force = false;
    bool raw_events = false;
    bool no_messages = false;
    bool http2_names = false;
    double linger_ms = 2000;
    double idle_gap_ms = 500;
    uint32_t ring_mb = 8;
    std::string btf;
    // Rotation: any of these makes --output a directory of rotated files (TraceRotation).
    uint64_t rotate_size = 0;
    double rotate_interval_s = 0;
    std::size_t keep_files = 0;
    uint64_t keep_bytes = 0;
    bool gzip = false;

    bool rotates() const {
        return rotate_size != 0 || rotate_interval_s != 0 || keep_files != 0 ||
               keep_bytes != 0 || gzip;
    }
    RotationPolicy rotation() const {
        RotationPolicy policy;
        policy.max_file_bytes = rotate_size;
        policy.max_file_ns = static_cast<uint64_t>(rotate_interval_s * 1e9);
        policy.gzip = gzip;
        if (keep_files != 0) policy.keep_files = keep_files;
        if (keep_bytes != 0) policy.keep_bytes = keep_bytes;
        return policy;
    }
    std::string metrics;
};

// 30 days; without --duration a recording runs until it is stopped.
constexpr double kMaxDurationS = 30 * 24 * 3600;

// --pid: a process that exists now (its descendants are found from it).
CLI::Validator running_process() {
    return CLI::Validator(
        [](std::string& input) -> std::string {
            pid_t pid = 0;
            if (CLI::detail::lexical_cast(input, pid) && pid > 0 &&
                (kill(pid, 0) == 0 || errno == EPERM)) {
                return {};
            }
            return fmt::format("no process has pid {}; give a running process's pid (pgrep NAME)",
                               input);
        },
        "PID");
}

[[noreturn]] void fail(const std::string& message, int exit_code = 1) {
    throw CLI::RuntimeError("closetrace record: " + message, exit_code);
}

std::string default_output_name() {
    const int64_t now = static_cast<int64_t>(monotonic_now_ns()) + mono_to_wall_offset_ns();
    return fmt::format("closetrace-{}.jsonl", trace_file_stamp(now));
}

// Step 0: rotation writes files into a directory: not to standard output, nor to a trace's name.
// Without rotation the trace is plain JSON lines written as they come (a recording cut short
// stays readable): a .gz name would lie about it.
void check_output_options(const RecordOptions& options) {
    if (!options.rotates() && options.output.ends_with(".gz")) {
        fail(fmt::format("--output {}: record writes plain JSON lines as it goes; name it .jsonl "
                         "and gzip it afterwards, or record into a directory with --gzip",
                         options.output),
             2);
    }
    if (!options.rotates()) return;
    // Uncompressed, a closed file is --rotate-size and what one poll wrote past it: a
    // --keep-bytes below twice that would delete files as they close.
    if (options.keep_bytes != 0 && options.keep_bytes < 2 * options.rotate_size &&
        !options.gzip) {
        fail(fmt::format("--keep-bytes {} is below twice --rotate-size {}: files would be "
                         "deleted as they close; give --keep-bytes at least twice --rotate-size, "
                         "or --gzip",
                         options.keep_bytes, options.rotate_size),
             2);
    }
    if (options.output == "-") {
        fail("rotation (--rotate-*, --keep-*, --gzip) writes files: give --output DIR instead of -",
             2);
    }
    if (options.output.ends_with(".jsonl") || options.output.ends_with(".gz") ||
        (std::filesystem::exists(options.output) &&
         !std::filesystem::is_directory(options.output))) {
        fail(fmt::format("--output {}: with rotation, --output is the directory the trace files "
                         "go to (closetrace-DATE-N.jsonl in it); give a directory",
                         options.output),
             2);
    }
}

// Resolves --cgroup (a path in the cgroup v2 hierarchy, absolute or relative to its mount)
// to a directory and its depth below the hierarchy's root.
std::pair<std::string, uint32_t> resolve_cgroup(const std::string& requested,
                                                const std::string& mount) {
    namespace fs = std::filesystem;
    fs::path path(requested);
    const fs::path root = fs::weakly_canonical(mount);
    if (!requested.starts_with(mount)) path = root / path.relative_path();
    std::error_code error;
    path = fs::canonical(path, error);
    if (error || !fs::is_directory(path)) {
        fail(fmt::format("--cgroup {}: no such cgroup under the cgroup v2 mount {}", requested,
                         mount),
             2);
    }
    const fs::path relative = path.lexically_relative(root);
    if (relative.empty() || *relative.begin() == "..") {
        fail(fmt::format("--cgroup {}: not inside the cgroup v2 mount {}", requested, mount), 2);
    }
    uint32_t depth = 0;
    for (const auto& part : relative) {
        if (part != ".") ++depth;
    }
    return {path.string(), depth};
}

class SummaryCounter {
public:
    void add(const Connection& conn) {
        ++summary_.connections;
        if (conn.verdict == Verdict::Open) ++summary_.open_at_end;
        summary_.requests += conn.request_count();
        ++summary_.by_initiator[to_string(conn.close.initiator)];
        ++summary_.by_how[conn.close.how ? to_string(*conn.close.how) : "none"];
        ++summary_.verdicts[to_string(conn.verdict)];
        if (conn.incomplete) ++incomplete_;
    }
    TraceSummary& summary() { return summary_; }
    uint64_t incomplete() const { return incomplete_; }

private:
    TraceSummary summary_;
    uint64_t incomplete_ = 0;
};

// One short line per closed connection on the terminal; notable closes always, the rest at
// most `kRoutinePerSecond` a second, then a count, so churn cannot flood the terminal.
class LiveView {
public:
    LiveView(bool quiet, int64_t mono_to_wall, std::span<const uint16_t> ports)
        : quiet_(quiet), mono_to_wall_(mono_to_wall), ports_(ports) {}

    void show(const Connection& conn) {
        if (quiet_) return;
        const uint64_t at = conn.close.local_fin_ns.value_or(
            conn.close.peer_fin_ns.value_or(conn.closed_ns.value_or(monotonic_now_ns())));
        const uint64_t second = at / 1'000'000'000;
        if (second != current_second_) {
            flush_suppressed();
            current_second_ = second;
            shown_this_second_ = 0;
        }
        const bool notable = catches_a_request(conn.verdict);
        if (!notable && shown_this_second_ >= kRoutinePerSecond) {
            ++suppressed_;
            return;
        }
        if (!notable) ++shown_this_second_;

        // client -> server: this host's end first when it opened the connection. Of one found
        // open that nothing tells about: this host's end <-> the peer's.
        const std::optional<bool> serves = serves_here(conn, ports_);
        const bool local_first = !serves.value_or(false);
        std::string line = fmt::format(
            "{} {}{:<21} {} {} {}", time_of_day_utc(static_cast<int64_t>(at) + mono_to_wall_),
            notable ? "!! " : "   ", to_string(conn.verdict),
            endpoint_text(local_first ? conn.local : conn.remote), serves ? "->" : "<->",
            endpoint_text(local_first ? conn.remote : conn.local));
        if (conn.comm) line += fmt::format(" [{}]", printable(*conn.comm));
        if (conn.container) line += " {" + printable(container_label(conn.container)) + "}";
        if (conn.close.idle_ms) line += fmt::format(" idle {:.1f} ms", *conn.close.idle_ms);
        // Why: an *_idle_close right after an exchange is a one-shot client, not a timeout.
        if (conn.close.cause != CloseCause::Unknown) {
            line += fmt::format(" ({})", to_string(conn.close.cause));
        }
        if (notable) {
            const CaughtConnection caught = caught_connection(conn, mono_to_wall_);
            if (caught.request) line += "  " + request_line(*caught.request);
            if (conn.verdict == Verdict::LocalCloseRace && caught.request_after_close_ms) {
                line += fmt::format(" ({:.3f} ms after this host's FIN)",
                                    *caught.request_after_close_ms);
            }
        }
        std::fprintf(stderr, "%s\n", line.c_str());
    }

    void flush_suppressed() {
        if (suppressed_ > 0 && !quiet_) {
            std::fprintf(stderr, "   ... and %llu more routine closes\n",
                         static_cast<unsigned long long>(suppressed_));
        }
        suppressed_ = 0;
    }

private:
    static constexpr int kRoutinePerSecond = 20;

    bool quiet_;
    int64_t mono_to_wall_;
    std::span<const uint16_t> ports_;  // --port: which end serves, of a connection found open
    uint64_t current_second_ = 0;
    int shown_this_second_ = 0;
    uint64_t suppressed_ = 0;
};

// The trace file, readable by its owner only (it names hosts, processes and requests), and
// locked for the whole recording so that a second recorder cannot interleave its lines. An
// existing trace is evidence: it is overwritten only with --force.
int open_output(const std::string& output, bool force) {
    if (output == "-") return STDOUT_FILENO;
    const int fd = open(output.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) fail(fmt::format("cannot write {}: {}", output, std::strerror(errno)));
    const auto give_up = [&](const std::string& message) {
        close(fd);
        fail(message);
    };
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        give_up(errno == EWOULDBLOCK
                    ? fmt::format("{} is being written by another closetrace record; give "
                                  "another --output",
                                  output)
                    : fmt::format("cannot lock {}: {}", output, std::strerror(errno)));
    }
    struct stat file{};
    if (fstat(fd, &file) == 0 && S_ISREG(file.st_mode)) {
        if (file.st_size > 0 && !force) {
            give_up(fmt::format("{} exists ({} bytes); give another --output, or --force to "
                                "overwrite it",
                                output, static_cast<long long>(file.st_size)));
        }
        if (ftruncate(fd, 0) != 0 || fchmod(fd, 0600) != 0) {
            give_up(fmt::format("cannot write {}: {}", output, std::strerror(errno)));
        }
    }
    return fd;
}

// A write to the trace failed: one line, and the lines written before stay valid.
[[noreturn]] void write_failed(const std::string& output_name, const std::system_error& error) {
    const int code = error.code().value();
    fail(fmt::format("cannot write {}: {}; the lines written before are valid{}",
                     output_name, std::strerror(code),
                     code == ENOSPC || code == EDQUOT ? ": free space or give another --output"
                     : code == EPIPE                  ? ""
                                                      : ": give another --output"));
}

// Where the trace goes: one file (or standard output), or with rotation a directory of files,
// each a whole trace.
class TraceOutput {
public:
    explicit TraceOutput(const RecordOptions& options) {
        if (options.rotates()) {
            name_ = options.output.empty() ? "." : options.output;
            open_rotation(options.rotation());
        } else {
            name_ = options.output.empty() ? default_output_name() : options.output;
            const int fd = open_output(name_, options.force);
            fd_.emplace(fd == STDOUT_FILENO ? -1 : fd);
            writer_.emplace(fd);
        }
    }

    // The file that starts at `mono_ns`: the one file, or the next rotated one.
    TraceWriter& open_file(uint64_t mono_ns, int64_t mono_to_wall) {
        if (!rotation_) return *writer_;
        return rotation_->open(static_cast<int64_t>(mono_ns) + mono_to_wall, mono_ns);
    }
    // Whether the live file is to be closed and the next one started.
    bool rotation_due(uint64_t mono_ns) const {
        return rotation_ && (rotation_requested || rotation_->due(mono_ns));
    }
    // Closes a rotated file (once its summary is written); the one file is closed on exit.
    void close_file() {
        rotation_requested = 0;
        if (!rotation_) return;
        rotation_->close();
        report_problems();
    }
    // The background work on the closed files (compression, retention) done.
    void finish() {
        if (!rotation_) return;
        rotation_->wait();
        report_problems();
    }
    // In messages: the file, "standard output", or the directory of rotated files.
    std::string name() const { return name_ == "-" ? "standard output" : name_; }

private:
    void open_rotation(const RotationPolicy& policy) {
        try {
            rotation_.emplace(name_, policy);
        } catch (const std::system_error& error) {
            fail(error.code().value() == EWOULDBLOCK
                     ? fmt::format("{} is being written by another closetrace record; give "
                                   "another --output",
                                   name_)
                     : fmt::format("cannot write into {}: {}; give another --output", name_,
                                   std::strerror(error.code().value())));
        }
    }
    // The closed files' compression and retention keep the recording going when they fail.
    void report_problems() {
        for (const auto& problem : rotation_->take_problems()) {
            std::fprintf(stderr, "closetrace record: warning: %s\n", problem.c_str());
        }
    }

    std::string name_;
    std::optional<FileDescriptor> fd_;  // closes the file (and releases its lock) on exit
    std::optional<TraceWriter> writer_;
    std::optional<TraceRotation> rotation_;
};

// Step 1: this host can record (privileges, and BTF for the programs).
HostFacts check_host(const RecordOptions& options) {
    HostFacts host = inspect_host();
    if (const std::string missing = missing_privileges(host); !missing.empty()) {
        fail(fmt::format("missing privilege {}: run it as root (sudo closetrace record ...)",
                         missing));
    }
    if (!host.kernel_btf && options.btf.empty()) fail(no_kernel_btf_advice());
    return host;
}

// Step 2a: what the kernel programs filter on and capture, but the cgroup.
TracerConfig kernel_config(const RecordOptions& options, const HostFacts& host) {
    TracerConfig config;
    if (!options.btf.empty()) config.btf_path = options.btf;
    config.ports = options.ports;
    if (!options.netns.empty()) {
        std::string error;
        const auto inode = netns_inode(options.netns, &error);
        if (!inode) fail(error, 2);  // names --netns and its value
        config.netns = *inode;
    }
    config.ring_buffer_bytes = options.ring_mb << 20;
    config.messages = !options.no_messages;
    config.idle_gap_ns = static_cast<uint64_t>(options.idle_gap_ms * 1e6);
    config.http2_fragments = options.http2_names;
    if (!host.cgroup2_mount && (config.messages || !options.cgroup.empty())) {
        if (!options.cgroup.empty()) fail("--cgroup needs a cgroup v2 mount; none is mounted");
        std::fprintf(stderr,
                     "closetrace record: warning: no cgroup v2 mount, so HTTP requests are not "
                     "seen; mount one (mount -t cgroup2 none /sys/fs/cgroup/unified) for "
                     "verdicts on requests\n");
        config.messages = false;
    }
    return config;
}

ContainerAttributor host_attributor(const HostFacts& host) {
    AttributorOptions attributor_options;
    if (host.cgroup2_mount) attributor_options.cgroup2_mount = *host.cgroup2_mount;
    return ContainerAttributor(attributor_options);
}

// The cgroup the kernel filters on: --cgroup, or the cgroup of the one --container; "" for
// none (then --container, if given, is applied in userspace).
std::string cgroup_filter(const RecordOptions& options, const HostFacts& host,
                          ContainerAttributor& attributor) {
    if (options.container.empty()) return options.cgroup;
    if (!options.cgroup.empty()) fail("--container and --cgroup cannot be combined", 2);
    std::vector<RunningContainer> matches;
    for (auto& running : attributor.running_containers()) {
        if (container_matches(running.container, options.container)) {
            matches.push_back(std::move(running));
        }
    }
    if (matches.empty()) {
        fail(fmt::format("--container {}: no running container has that id or name",
                         options.container),
             2);
    }
    // One container with its own cgroup: filter in the kernel. Otherwise (several matches,
    // cgroup v1 hosts) every socket reaches userspace and is filtered there.
    if (matches.size() == 1 && matches.front().cgroup && host.cgroup2_mount) {
        return matches.front().cgroup->path;
    }
    if (!options.quiet) {
        std::fprintf(stderr,
                     "closetrace record: note: --container %s is applied in userspace (%zu "
                     "matches); on a busy host narrow it with --port\n",
                     options.container.c_str(), matches.size());
    }
    return {};
}

// Step 2b: the cgroup the programs filter on and attach to.
void narrow_to_cgroup(TracerConfig& config, const RecordOptions& options, const HostFacts& host,
                      ContainerAttributor& attributor) {
    if (const std::string filter = cgroup_filter(options, host, attributor); !filter.empty()) {
        auto [dir, level] = resolve_cgroup(filter, *host.cgroup2_mount);
        config.cgroup_filter_dir = dir;
        config.cgroup_filter_level = level;
        config.attach_cgroup_dir = dir;
    } else if (host.cgroup2_mount) {
        config.attach_cgroup_dir = *host.cgroup2_mount;
    }
}

// The tracker, and what the tracer's callback does with each record: decodes it into one
// reused Event (no allocation per record) and hands it on at once, so that no batch of decoded
// events builds up between two polls (glibc would keep its peak).
struct Capture {
    explicit Capture(const RecordOptions& options) : tracker(tracker_options(options)) {}

    static TrackerOptions tracker_options(const RecordOptions& options) {
        TrackerOptions tracker_options;
        tracker_options.linger_ns = static_cast<uint64_t>(options.linger_ms * 1e6);
        tracker_options.full_target = options.full_target;
        tracker_options.http2_names = options.http2_names;
        tracker_options.ports = options.ports;
        return tracker_options;
    }

    void take(std::span<const uint8_t> record) {
        if (decode_event(record, reasons, event, nullptr)) {
            consume(event);
        } else {
            ++undecodable;
        }
    }

    ConnTracker tracker;
    Event event;
    std::function<void(const Event&)> consume;  // the Recorder's, set before the first poll
    uint64_t undecodable = 0;
    RstReasonNames reasons;
};

// Step 3: load and attach the programs, which feed `capture` (it must outlive the tracer).
std::unique_ptr<Tracer> start_tracer(const TracerConfig& config, Capture& capture) {
    std::unique_ptr<Tracer> tracer;
    try {
        tracer = std::make_unique<Tracer>(
            config, [&capture](std::span<const uint8_t> record) { capture.take(record); });
    } catch (const LoaderError& error) {
        fail(error.what());
    }
    capture.reasons = tracer->rst_reasons();
    return tracer;
}

// Step 4: the trace's first line: this host, the clock, the filters and the probes.
TraceHeader trace_header(const RecordOptions& options, const HostFacts& host,
                         const TracerConfig& config, const ProbeSet& probes, uint64_t start_ns,
                         int64_t mono_to_wall) {
    TraceHeader header;
    header.tool_version = CLOSETRACE_VERSION;
    char host_name[256] = {};
    gethostname(host_name, sizeof(host_name) - 1);
    header.host = host_name;
    header.kernel = host.kernel_release;
    header.start_ns = start_ns;
    header.start_wall = iso8601_utc(static_cast<int64_t>(start_ns) + mono_to_wall);
    header.mono_to_wall_ns = mono_to_wall;
    header.filters.ports = options.ports;
    if (config.cgroup_filter_dir) header.filters.cgroup = config.cgroup_filter_dir;
    header.filters.full_target = options.full_target;
    header.filters.raw_payloads = options.raw_payloads;
    if (config.netns != 0) header.filters.netns = config.netns;
    if (!options.container.empty()) header.filters.container = options.container;
    if (options.pid != 0) header.filters.pid = options.pid;
    header.probes.state = probes.state;
    header.probes.reset_sent = probes.reset_sent;
    header.probes.reset_received = probes.reset_received;
    if (!probes.messages.empty()) header.probes.messages = probes.messages;
    header.probes.rst_reason = probes.rst_reason;
    return header;
}

// What is recorded where, on the terminal.
void announce(const RecordOptions& options, const TraceOutput& output, const ProbeSet& probes) {
    if (options.quiet) return;
    std::string filters = options.ports.empty() ? "all TCP ports" : "port";
    for (uint16_t port : options.ports) filters += fmt::format(" {}", port);
    std::fprintf(stderr, "closetrace: recording %s to %s%s; Ctrl-C to stop\n", filters.c_str(),
                 output.name().c_str(),
                 options.duration_s > 0 ? fmt::format(" for {:g} s", options.duration_s).c_str()
                                        : "");
    for (const auto& note : probes.notes) std::fprintf(stderr, "closetrace: note: %s\n", note.c_str());
}

// Step 5: the loop that drains the tracer's records into the tracker, and the connections it
// finishes into the trace (after the userspace filters) and onto the terminal. Each file of the
// trace starts with its header and ends with the summary of its own span.
class Recorder {
public:
    Recorder(const RecordOptions& options, const TracerConfig& config,
             ContainerAttributor& attributor, Capture& capture, Tracer& tracer,
             TraceOutput& output, const TraceHeader& header, RecordingMetrics* metrics)
        : options_(options),
          config_(config),
          attributor_(attributor),
          capture_(capture),
          tracer_(tracer),
          output_(output),
          header_(header),
          payloads_{.raw = options.raw_payloads, .full_target = options.full_target},
          // Filters that need a full socket cannot be checked for a reset without one: leave
          // those out; the netns of such a reset is known, so --netns keeps its own.
          keep_unattributed_(options.cgroup.empty() && options.container.empty() &&
                             options.pid == 0),
          live_(options.quiet, header.mono_to_wall_ns, options.ports),
          metrics_(metrics) {
        if (options.pid != 0) family_.emplace(options.pid);
        capture_.consume = [this](const Event& event) { take(event); };
    }

    // A file of the trace begins at `start_ns`: its header line, written at once.
    void start_file(uint64_t start_ns) {
        writer_ = &output_.open_file(start_ns, header_.mono_to_wall_ns);
        TraceHeader header = header_;
        header.start_ns = start_ns;
        header.start_wall = iso8601_utc(header.start_wall_ns());
        writer_->write_line(header_line(header));
        writer_->flush();
        file_ = FileSpan{.start_ns = start_ns, .events_before = events_, .lost_before = lost_seen_};
    }

    // Until a stop signal, or `deadline` (0: none).
    void run(uint64_t deadline) {
        while (!stop_requested) {
            const uint64_t now = monotonic_now_ns();
            if (deadline && now >= deadline) break;
            int timeout_ms = 100;
            if (deadline) timeout_ms = static_cast<int>(std::min<uint64_t>(100, (deadline - now) / 1'000'000 + 1));
            tracer_.poll(timeout_ms);
            write_connections(capture_.tracker.take_finished(note_losses()));
            write_unattributed();
            writer_->flush();
            if (metrics_) metrics_->refresh(lost_seen_, std::chrono::steady_clock::now());
            if (output_.rotation_due(monotonic_now_ns())) rotate();
        }
    }

    // Step 6: what is left in the ring buffer and the tracker, then the last file's summary.
    // Returns the recording's.
    TraceSummary finish() {
        const OpenHandover handover = tracer_.finish();
        const uint64_t end_ns = note_losses();
        std::vector<Connection> left = capture_.tracker.finish_all(end_ns);
        // What the kernel counted of connections still open that it could not hand over (an
        // HTTP/1 connection's latest messages, an HTTP/2 connection's counts).
        for (Connection& conn : left) {
            conn.requests_lower_bound = conn.verdict == Verdict::Open && !conn.closed_ns &&
                                        !handover.exact_in(conn.netns);
        }
        write_connections(std::move(left));
        write_unattributed();
        live_.flush_suppressed();
        end_file(end_ns);

        TraceSummary summary = recording_.summary();
        summary.lost_events = lost_seen_;
        summary.events = events_;
        summary.duration_s = static_cast<double>(end_ns - header_.start_ns) / 1e9;
        summary.end_ns = end_ns;
        return summary;
    }

    // Connections written that were open while events were lost.
    uint64_t incomplete() const { return recording_.incomplete(); }

private:
    // What a file's summary counts from: its start, and the recording's counts then.
    struct FileSpan {
        uint64_t start_ns = 0;
        uint64_t events_before = 0;
        uint64_t lost_before = 0;
    };

    // Between two polls: every connection written so far is in the file that ends here, every
    // later one in the next.
    void rotate() {
        const uint64_t now = monotonic_now_ns();
        end_file(now);
        output_.close_file();
        start_file(now);
    }

    // The file's summary line: its connections, and the events and losses of its span.
    void end_file(uint64_t end_ns) {
        TraceSummary summary = std::exchange(file_counter_, {}).summary();
        summary.lost_events = lost_seen_ - file_.lost_before;
        summary.events = events_ - file_.events_before;
        summary.duration_s = static_cast<double>(end_ns - file_.start_ns) / 1e9;
        summary.end_ns = end_ns;
        writer_->write_line(summary_line(summary));
        writer_->flush();
    }

    // Each record, from within the tracer's poll or drain.
    void take(const Event& event) {
        ++events_;
        // Header block fragments stay out of the trace (they hold cookies and credentials).
        if (options_.raw_events && event.kind != EventKind::Http2Fragment) {
            writer_->write_event(event, payloads_);
        }
        // While the process and its container still exist: the answer is cached for later.
        if (event.kind == EventKind::State && (event.cgroup_id != 0 || event.pid != 0)) {
            attributor_.container_of(event.cgroup_id, event.pid ? std::optional<uint32_t>(event.pid)
                                                                : std::nullopt);
        }
        capture_.tracker.on_event(event);
    }

    void write_connections(std::vector<Connection> finished) {
        for (auto& conn : finished) {
            attribute(conn);
            if (!selected(conn)) continue;
            recording_.add(conn);
            file_counter_.add(conn);
            if (metrics_) metrics_->add(conn);
            writer_->write_conn(conn);
            live_.show(conn);
        }
    }

    void write_unattributed() {
        for (const auto& event : capture_.tracker.take_unattributed()) {
            if (!keep_unattributed_ || options_.raw_events) continue;
            if (config_.netns != 0 && event.netns != config_.netns) continue;
            writer_->write_event(event, payloads_);
        }
    }

    void attribute(Connection& conn) {
        if (conn.cgroup_id != 0) conn.cgroup = attributor_.cgroup_path(conn.cgroup_id);
        if (auto found = attributor_.container_of(conn.cgroup_id, conn.pid)) {
            conn.container = found->container;
        }
    }

    // The filters applied in userspace: --container (when not by cgroup) and --pid.
    bool selected(const Connection& conn) {
        if (!options_.container.empty() &&
            !(conn.container && container_matches(*conn.container, options_.container))) {
            return false;
        }
        return !family_ || (conn.pid && family_->contains(*conn.pid));
    }

    // Each look at the lost-event counters that finds more tells the tracker that events were
    // lost since the previous look (since the programs started, for the first): the
    // connections alive then get marked incomplete. Returns the time of the look.
    uint64_t note_losses() {
        const uint64_t now = monotonic_now_ns();
        const uint64_t lost = tracer_.counters().lost + capture_.undecodable;
        if (lost > lost_seen_) capture_.tracker.on_events_lost(looked_ns_, now);
        lost_seen_ = lost;
        looked_ns_ = now;
        return now;
    }

    const RecordOptions& options_;
    const TracerConfig& config_;
    ContainerAttributor& attributor_;
    Capture& capture_;
    Tracer& tracer_;
    TraceOutput& output_;
    const TraceHeader header_;  // the recording's; each file's has its own start
    TraceWriter* writer_ = nullptr;  // the file being written
    const PayloadPolicy payloads_;
    const bool keep_unattributed_;
    std::optional<ProcessFamily> family_;
    SummaryCounter recording_;
    SummaryCounter file_counter_;
    FileSpan file_;
    LiveView live_;
    RecordingMetrics* metrics_;  // null without --metrics
    uint64_t events_ = 0;
    uint64_t lost_seen_ = 0;
    uint64_t looked_ns_ = 0;
};

// The summary on the terminal, and a warning when events were lost.
void print_summary(const RecordOptions& options, const TraceOutput& output,
                   const TraceSummary& summary, uint64_t incomplete) {
    if (!options.quiet) {
        std::fprintf(stderr, "closetrace: %llu connections, %llu events, %llu lost; trace in %s\n",
                     static_cast<unsigned long long>(summary.connections),
                     static_cast<unsigned long long>(summary.events),
                     static_cast<unsigned long long>(summary.lost_events), output.name().c_str());
    }
    if (summary.lost_events > 0) {
        std::fprintf(stderr,
                     "closetrace record: warning: %llu events were lost (ring buffer full); "
                     "%llu connections open then are marked incomplete and left out of the "
                     "report's conclusions: raise --ring-mb or narrow --port\n",
                     static_cast<unsigned long long>(summary.lost_events),
                     static_cast<unsigned long long>(incomplete));
    }
}

// --metrics: served from before the programs are attached, so that a bad address or a port in
// use stops the recording before it starts. Null without --metrics.
std::unique_ptr<RecordingMetrics> serve_metrics(const RecordOptions& options) {
    if (options.metrics.empty()) return nullptr;
    auto metrics = std::make_unique<RecordingMetrics>(options.ports);
    try {
        metrics->serve(options.metrics);
    } catch (const MetricsError& error) {
        fail(error.what(), 2);
    }
    return metrics;
}

// The steps in order. Every way out (a failure, a signal, the deadline) unwinds through the
// destructors: the writer flushes, the file is closed and unlocked, the programs detach.
void record(const RecordOptions& options) {
    check_output_options(options);
    install_signal_handlers(options.rotates());
    const std::unique_ptr<RecordingMetrics> metrics = serve_metrics(options);
    const HostFacts host = check_host(options);
    TracerConfig config = kernel_config(options, host);
    ContainerAttributor attributor = host_attributor(host);
    narrow_to_cgroup(config, options, host, attributor);

    Capture capture(options);
    const std::unique_ptr<Tracer> tracer = start_tracer(config, capture);
    // Closes the file (or the live rotated file, and releases its lock) however the recording
    // ends.
    TraceOutput output(options);
    const int64_t mono_to_wall = mono_to_wall_offset_ns();
    const uint64_t start_ns = monotonic_now_ns();
    Recorder recorder(options, config, attributor, capture, *tracer, output,
                      trace_header(options, host, config, tracer->probes(), start_ns, mono_to_wall),
                      metrics.get());
    try {
        recorder.start_file(start_ns);
    } catch (const std::system_error& error) {
        write_failed(output.name(), error);
    }
    announce(options, output, tracer->probes());

    const uint64_t deadline =
        options.duration_s > 0 ? start_ns + static_cast<uint64_t>(options.duration_s * 1e9) : 0;
    try {
        recorder.run(deadline);
        const TraceSummary summary = recorder.finish();
        output.close_file();
        output.finish();
        print_summary(options, output, summary, recorder.incomplete());
    } catch (const std::system_error& error) {
        write_failed(output.name(), error);
    } catch (const LoaderError& error) {
        fail(error.what());
    }
}

// A size such as 100M or 2G (after CLI::AsSizeValue: bytes), at least 4 KiB: a trace file holds
// at least its header and summary.
CLI::Validator file_size() {
    return CLI::Validator(
        [](std::string& input) -> std::string {
            uint64_t bytes = 0;
            if (CLI::detail::lexical_cast(input, bytes) && bytes >= 4096) return {};
            return fmt::format("{} bytes is too small for a trace file; give at least 4K", input);
        },
        "SIZE");
}

// Continuous recording: files rotated by size and time, kept by count and bytes
// (docs/trace-format.md#rotated-files).
void add_rotation_options(CLI::App& command, RecordOptions& options) {
    const std::string group = "Rotation (--output is then a directory; SIGHUP rotates)";
    command.add_option("--rotate-size", options.rotate_size,
                       "Start a new trace file when the live one reaches this size (e.g. 100M)")
        ->transform(CLI::AsSizeValue(false))
        ->check(file_size())
        ->group(group);
    command.add_option("--rotate-interval", options.rotate_interval_s,
                       "Start a new trace file when the live one is this old (e.g. 1h, 30m, 90s)")
        ->transform(CLI::AsNumberWithUnit(std::map<std::string, double>{
            {"s", 1}, {"m", 60}, {"h", 3600}, {"d", 86400}}))
        ->check(finite_range(1, kMaxDurationS, "seconds"))
        ->group(group);
    command.add_option("--keep-files", options.keep_files,
                       "Keep the newest N closed trace files, delete older ones")
        ->check(CLI::Range(std::size_t{1}, std::size_t{1'000'000}))
        ->group(group);
    command.add_option("--keep-bytes", options.keep_bytes,
                       "Keep the newest closed trace files that fit in this size (e.g. 2G), "
                       "delete older ones")
        ->transform(CLI::AsSizeValue(false))
        ->check(file_size())
        ->group(group);
    command.add_flag("--gzip", options.gzip, "Compress each closed trace file (.jsonl.gz)")
        ->group(group);
}

}  // namespace

void add_record_command(CLI::App& app) {
    auto options = std::make_shared<RecordOptions>();
    CLI::App* command = app.add_subcommand(
        "record", "Record TCP connection lifecycles and HTTP requests to a JSON Lines trace");
    command->add_option("--port,-p", options->ports,
                        "Only connections with this local or remote port (repeatable)")
        ->check(CLI::Range(1, 65535));
    command->add_option("--cgroup", options->cgroup,
                        "Only sockets of this cgroup v2 subtree (path, absolute or below the mount)");
    command->add_option("--netns", options->netns,
                        "Only sockets of this network namespace: /proc/PID/ns/net, "
                        "/run/netns/NAME or an inode number");
    command->add_option("--container", options->container,
                        "Only sockets of this container: its name (ECS container, systemd "
                        "unit) or at least 12 hex digits of its id or ECS task id");
    command->add_option("--pid", options->pid,
                        "Only sockets owned by this process or its descendants")
        ->check(running_process());
    command->add_option("--duration,-d", options->duration_s, "Stop after this many seconds")
        ->check(finite_range(0.001, kMaxDurationS, "seconds"));
    command->add_option("--output,-o", options->output,
                        "Trace file, or - for standard output (default: closetrace-DATE.jsonl); "
                        "with rotation, the directory of the trace files (default: .)");
    command->add_flag("--quiet,-q", options->quiet, "No live lines on the terminal");
    command->add_flag("--force", options->force, "Overwrite an existing trace file");
    command->add_flag("--full-target", options->full_target,
                      "Keep request targets' query strings (they may hold secrets)");
    command->add_flag("--raw-payloads", options->raw_payloads,
                      "Write the captured bytes of event lines: whole request heads with their "
                      "cookies and Authorization headers (secrets)");
    command->add_flag("--events", options->raw_events,
                      "Also write every kernel event (its HTTP heads; bytes only with "
                      "--raw-payloads)");
    command->add_flag("--no-messages", options->no_messages,
                      "Do not attach the cgroup_skb programs (no HTTP requests)");
    command->add_flag("--http2-names", options->http2_names,
                      "Name the HTTP/2 streams a close caught (:method, :path, grpc-status): "
                      "the kernel copies every HTTP/2 header block, a ring record each");
    command->add_option("--linger-ms", options->linger_ms,
                        "How long a closed connection waits for a late request before it is written")
        ->check(finite_range(0, 120000, "ms"));
    command->add_option("--idle-gap-ms", options->idle_gap_ms,
                        "List a request that follows this much silence on its connection (the "
                        "others in between are counted); well below any keep-alive timeout")
        ->check(finite_range(1, 60000, "ms"));
    command->add_option("--metrics", options->metrics,
                        "Serve Prometheus metrics at http://ADDR:PORT/metrics while recording "
                        "(e.g. 127.0.0.1:9478; docs/metrics.md)");
    command->add_option("--btf", options->btf, kBtfOptionHelp)->check(CLI::ExistingFile);
    command->add_option("--ring-mb", options->ring_mb, "Ring buffer size in MiB (power of two)")
        ->check(CLI::IsMember({1, 2, 4, 8, 16, 32, 64, 128, 256}));
    add_rotation_options(*command, *options);
    command->callback([options] { record(*options); });
}

}  // namespace closetrace
