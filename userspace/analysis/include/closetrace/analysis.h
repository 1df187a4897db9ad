// Analysis of a trace: who closes idle keep-alive connections and after how long, the requests
// caught in a close, and what to change; behind `closetrace report`, `diff` and `verify`, whose
// renderings and runs are report.h's. See docs/report-format.md.
//
// "Server side" below means connections this host accepted (role server) or found open (role
// unknown): the keep-alive timeout at stake is that of the server owning them. Connections this
// host opened (role client: a proxy's upstream connections) are counted everywhere but judged
// only by their own race (peer_close_race).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "closetrace/model.h"
#include "closetrace/pairing.h"
#include "closetrace/trace_io.h"

namespace closetrace {

// Idle times (ms) in memory bounded by their range, not their number. The first kExactSamples
// are kept as they are, so that percentiles are exact for any realistic recording; beyond that
// they are folded into log-spaced buckets 0.1 % wide, each keeping the count and sum of its
// samples, and percentiles are within 0.1 %. min and max are always exact.
class IdleHistogram {
public:
    static constexpr std::size_t kExactSamples = 65'536;

    void add(double ms);
    uint64_t count() const { return count_; }
    std::optional<double> min() const;
    std::optional<double> max() const;
    // Nearest rank: the ceil(p/100 * count)-th smallest sample (at least the first); p in
    // [0, 100]. nullopt when empty.
    std::optional<double> percentile(double p) const;
    // Adds every sample of `other` (a trace merged into another: merge_traces).
    void add(const IdleHistogram& other);
    // Samples below `ms` (in bucket mode: by bucket mean inside the bucket that holds `ms`).
    uint64_t count_below(double ms) const;
    // The densest cluster of samples at a consistent value (all within kClusterSpread of its
    // smallest): how a timer shows, whatever stray values lie around it. nullopt when empty.
    struct Cluster {
        uint64_t count = 0;
        double min_ms = 0;
        double max_ms = 0;
    };
    static constexpr double kClusterSpread = 0.10;
    std::optional<Cluster> densest_cluster() const;

private:
    struct Bucket {
        uint64_t count = 0;
        double sum = 0;
    };
    void add_to_bucket(double ms) { add_to_bucket(bucket_of(ms), 1, ms); }
    void add_to_bucket(int32_t index, uint64_t count, double sum);
    void fold_exact_into_buckets();
    static int32_t bucket_of(double ms);
    // Calls visit(index, bucket) for each bucket that holds samples, in ascending order.
    template <typename Visit>
    void each_bucket(Visit visit) const;

    // Sorted lazily by the const queries (a cache: the samples themselves do not change).
    mutable std::vector<double> exact_;
    mutable bool sorted_ = true;
    // Used once exact_ would exceed kExactSamples: the buckets from first_bucket_ on, in one
    // array (a lookup is an index, not a walk down a tree of thousands), and those below
    // kSmallestMs apart. Empty buckets have count 0.
    bool bucketed_ = false;
    Bucket tiny_;
    int32_t first_bucket_ = 0;
    std::vector<Bucket> buckets_;
    uint64_t count_ = 0;
    double min_ = 0;
    double max_ = 0;
};

// One side's idle closes: nullopt members when it had none. Like the records of model.h, the
// records here built with designated initializers give every member a default.
struct IdleFigures {
    uint64_t closes = 0;  // closes with a known idle time
    std::optional<double> min_ms{}, p10_ms{}, median_ms{}, p90_ms{}, max_ms{};
    // Where this side never idle-closed: the longest idle it tolerated, i.e. the longest idle_ms
    // at a close by the other side with nothing in flight (nullopt when there was none).
    std::optional<double> keeps_idle_longer_than_ms{};
};
// `other_side_longest_ms`: the longest idle_ms at a close by the other side.
IdleFigures idle_figures(const IdleHistogram& closes, std::optional<double> other_side_longest_ms);

// The idle time (ms) a close tells of the closer's idle timer: that of an idle-timer close or a
// race (not a shutdown's or a refusal's), not on a health checker's connection; nullopt for any
// other close. What the idle figures
// of one side (local_idle, peer_idle, ...) and the timeout it shows are made of.
std::optional<double> timer_idle_ms(const Connection& conn);

struct VerdictCounts {
    std::array<uint64_t, std::size(kAllVerdicts)> connections{};
    uint64_t& operator[](Verdict verdict) { return connections[static_cast<std::size_t>(verdict)]; }
    uint64_t operator[](Verdict verdict) const {
        return connections[static_cast<std::size_t>(verdict)];
    }
    VerdictCounts& operator+=(const VerdictCounts& other);
};

// Connections by verdict over the recording, for the HTML report's chart: at most kBuckets
// buckets of equal width from `origin_ns`. A connection beyond the last bucket doubles the width
// (neighbours merged), so memory stays fixed however long the recording and counts stay exact.
class VerdictTimeline {
public:
    static constexpr std::size_t kBuckets = 100;
    static constexpr uint64_t kFirstBucketNs = 10'000'000;

    explicit VerdictTimeline(uint64_t origin_ns = 0) : origin_ns_(origin_ns) {}
    // A time before the origin counts in the first bucket.
    void add(uint64_t at_ns, Verdict verdict, uint64_t connections = 1);
    // Another timeline's counts, its clock `offset_ns` ahead of this one's (monotonic to wall
    // clock for merge_traces): each of its buckets goes where that bucket starts, so a count
    // moves by less than the wider of the two bucket widths.
    void add(const VerdictTimeline& other, int64_t offset_ns);
    uint64_t origin_ns() const { return origin_ns_; }
    uint64_t bucket_ns() const { return bucket_ns_; }
    // From the origin to the last bucket that holds a connection.
    const std::vector<VerdictCounts>& buckets() const { return buckets_; }

private:
    uint64_t origin_ns_;
    uint64_t bucket_ns_ = kFirstBucketNs;
    std::vector<VerdictCounts> buckets_;
};

// Server side: each side's idle-timer closes (timer_idle_ms, races included), and the longest
// idle at which this host closed one. Of a peer address whose connections this host closed idle
// and which never closed one itself: it keeps idle connections longer than this host does,
// whatever other peers' closes show (resolve_peer_timeout).
struct IdleTimerCloses {
    uint64_t local = 0;
    uint64_t peer = 0;
    double longest_local_ms = 0;
    void count_local(double idle_ms);
    void count_peer() { ++peer; }
    // This host closed the peer's idle connections and the peer never closed one.
    bool outlasting() const { return local > 0 && peer == 0; }
    IdleTimerCloses& operator+=(const IdleTimerCloses& other);
};

// Connections and requests of one process or peer address.
struct GroupFigures {
    uint64_t connections = 0;
    uint64_t requests = 0;
    VerdictCounts verdicts;
    // Closes an idle timer made with nothing caught (timer_idle_ms), by the closing side: a
    // health check's or a finished client's close is an *_idle_close verdict, not an idle timeout.
    uint64_t local_idle_timer_closes = 0;
    uint64_t peer_idle_timer_closes = 0;
    IdleTimerCloses server_idle_timers;  // kept for by_peer, the only groups read for it
    GroupFigures& operator+=(const GroupFigures& other);
};

// A TraceAnalysis's groups of one kind (by_comm, by_peer, by_container) found by a hash of the
// name: the std::map keeps the names in order for the report; the index finds one without a
// walk down its tree (hundreds of peer addresses) and without a string built for the search.
class GroupIndex {
public:
    GroupFigures& find(std::map<std::string, GroupFigures>& groups, std::string_view name);

private:
    // Open addressing, at most half full: a lookup reads a slot, then the name and figures it
    // points to (one map node), where a node-based hash table first follows a bucket to a node.
    struct Slot {
        std::size_t hash = 0;
        const std::string* name = nullptr;  // in `groups`; nullptr: an empty slot
        GroupFigures* figures = nullptr;
    };
    void insert(const Slot& slot);  // a name not in the index, with room for it

    std::vector<Slot> slots_;  // a power of two of them
    std::size_t used_ = 0;
    // The group found last, tried first: a host's records come from a few processes and
    // containers, in runs, and a name compared costs less than one hashed.
    Slot last_;
};

// The indexes of one TraceAnalysis's by_comm, by_peer and by_container.
struct GroupIndexes {
    GroupIndex by_comm, by_peer, by_container;
    std::string label;  // the container label of the record being counted: its storage reused
};

// A connection whose close caught a request: a race, an in-flight reset, or a request the peer
// gave up on.
struct CaughtConnection {
    std::string host{};  // the trace header's: which host it was, in a report of several
    uint64_t conn_id = 0;
    Verdict verdict = Verdict::Open;
    Role role = Role::Unknown;
    Endpoint local{};
    Endpoint remote{};
    std::optional<uint32_t> pid{};
    std::optional<std::string> comm{};
    std::optional<ClientEnd> client_end{};  // the client's process when it is on this host too
    std::optional<Request> request{};       // the first caught request
    std::vector<Http2Stream> streams{};     // an HTTP/2 connection's caught streams, by id
    uint64_t caught_requests = 0;  // late (race) or unanswered (in flight) requests or streams
    int64_t wall_ns = 0;  // Unix-epoch time of the request (of the close without one)
    std::optional<double> idle_ms{};  // the connection's idle time when it was closed
    // The request's time minus the closing side's first FIN or RST (an HTTP/2 connection's: the
    // first stream's opening minus the closer's first GOAWAY, else FIN or RST): positive for a
    // race (how late the request came), negative for an in-flight close (how long the request
    // had waited).
    std::optional<double> request_after_close_ms{};
    std::optional<CloseHow> how{};
    std::optional<std::string> rst_reason{};
    // For the timeline of the close (monotonic ns; nullopt where none): the request answered
    // last before the caught one, and each side's first FIN and RST.
    std::optional<Request> last_answered{};
    std::optional<uint64_t> local_fin_ns{}, peer_fin_ns{}, local_rst_ns{}, peer_rst_ns{};
    std::optional<uint64_t> local_goaway_ns{}, peer_goaway_ns{};  // an HTTP/2 connection's first
};

// The caught request of such a connection (the first late or unanswered one) and its timing;
// what `report` lists and `record` shows live.
CaughtConnection caught_connection(const Connection& conn, int64_t mono_to_wall_ns);

// The first kMaxListed caught connections of a kind, and how many there were.
struct CaughtList {
    static constexpr std::size_t kMaxListed = 50;
    uint64_t total = 0;
    std::vector<CaughtConnection> listed;
    // In-flight kinds: the longest a caught request had waited unanswered when the connection
    // closed, over all of them (listed or not).
    std::optional<double> longest_unanswered_ms;
};

// A trace merged into a report of several (merge_traces), in the order given.
struct TraceSource {
    std::string file;
    std::string host;       // the header's
    bool complete = false;  // it has its summary line
};

// Server side, one host's word on keep-alive: HTTP/1 connections it ended by answering their
// one request with `Connection: close`, and connections it kept open after an answer.
struct KeepAliveUse {
    uint64_t closed_after_one_answer = 0;
    uint64_t kept_alive = 0;
};

// The idle timeout a process announced in its responses (Keep-Alive: timeout=N).
struct AnnouncedTimeout {
    uint32_t shortest_s = 0;   // the shortest it announced, in seconds
    uint64_t connections = 0;  // connections on which it announced one

    // An early announcement: below the peer's idle timeout, so the process closes first.
    bool below(double peer_timeout_ms) const { return shortest_s * 1000.0 < peer_timeout_ms; }
};

// Everything `report`, `diff` and `verify` need from one trace, read in one pass in memory
// bounded by the distinct processes and peer addresses (not by the number of lines).
struct TraceAnalysis {
    // For several traces merged (merge_traces): file says how many, of how many hosts; the
    // header's times are wall clock (mono_to_wall_ns 0) and its host names them all; the
    // summary's figures are summed, its duration spans them all, and it is nullopt unless
    // every trace had one.
    std::string file;
    TraceHeader header;
    std::optional<TraceSummary> summary;  // nullopt: the recording was cut short
    std::vector<TraceSource> sources;     // the traces merged; empty for a single trace
    // About the trace: the reader's (a truncated last line), a missing summary, lost events.
    std::vector<std::string> warnings;
    // Every connection, the incomplete ones included; one with both ends on this host counts once.
    uint64_t connections = 0;
    // Connections marked incomplete (events of them were lost): left out of everything below,
    // since their verdicts may be wrong.
    uint64_t incomplete = 0;
    uint64_t requests = 0;     // requests over the connections judged (not incomplete)
    // Of those connections, the ones whose requests were opaque (TLS): counted by turns of the
    // conversation, the handshake's among them.
    uint64_t opaque_connections = 0;
    uint64_t event_lines = 0;  // `event` lines (informational)
    uint64_t last_ns = 0;      // the latest monotonic time any conn line records
    VerdictCounts verdicts;
    // Server side, idle_ms of local_idle_close + local_close_race and of peer_idle_close +
    // peer_close_race.
    IdleHistogram local_idle;
    IdleHistogram peer_idle;
    // local_idle of each host (the trace header's): which hosts of a fleet close early.
    std::map<std::string, IdleHistogram> local_idle_by_host;
    // The idle timeout a host's closes show (its densest cluster's longest); nullopt for none.
    std::optional<double> host_idle_timer_ms(const std::string& host) const;
    // Server side, the longest idle_ms at a close by this host / by the peer with nothing in
    // flight: the bound on how long the other side keeps idle connections.
    std::optional<double> longest_idle_at_local_close_ms;
    std::optional<double> longest_idle_at_peer_close_ms;
    // Client side: idle_ms of the peer's idle closes (how soon upstream servers close).
    IdleHistogram upstream_peer_idle;
    // Only idle-timer closes feed the figures above; the others, by cause (health checks apart).
    std::array<uint64_t, std::size(kAllCloseCauses)> causes{};
    uint64_t health_check_connections = 0;
    std::map<std::string, uint64_t> health_checkers;  // by name
    CaughtList races;                             // local_close_race, peer_close_race
    // local_close_race by the close's cause: a shutdown's (closed_together, process_exit); a
    // connection refused as it opened; the others (timer_close_races()), the keep-alive fix's.
    CaughtList shutdown_races;
    CaughtList refused_races;
    CaughtList inflight_resets;                   // local_reset_inflight but process exits
    CaughtList process_exits;                     // local_reset_inflight: the owner exited
    CaughtList peer_gave_up;                      // peer_close_inflight but forgotten
    CaughtList forgotten;                         // peer_close_inflight: a NAT forgot it
    std::map<std::string, GroupFigures> by_comm;  // "" for an unknown process
    std::map<std::string, GroupFigures> by_peer;  // by remote address
    // By container_label(): "docker:9581a69a761a", "ecs:api (task …)", "-" for a host process.
    std::map<std::string, GroupFigures> by_container;
    std::map<std::string, GroupFigures> by_host;  // by the trace header's host
    // Connections with both ends on this host, by "client comm -> server comm" (counted also
    // above, by their server end).
    std::map<std::string, GroupFigures> by_same_host;
    // Server side: who idle-closed (local_idle_close + local_close_race) by comm; client side:
    // who sent requests on connections the peer's idle timer had closed (peer_close_race).
    std::map<std::string, uint64_t> local_idle_closers;
    // Those of them whose idle-closed connections spoke HTTP/2: their fix is another setting.
    std::set<std::string> http2_idle_closers;
    std::map<std::string, uint64_t> upstream_racers;
    // Server side, whether each host keeps connections alive at all (count_keepalive_use), and
    // the processes that ended connections after one answer (for the setting that turns
    // keep-alive on).
    std::map<std::string, KeepAliveUse> keepalive_use_by_host;
    std::map<std::string, uint64_t> closed_after_one_answer_by_comm;
    // In-flight resets whose request was read and left unanswered (cause in_flight), by the
    // process that closed: the shortest such request's wait. A server's own timeout (Gunicorn's
    // --timeout) closes that long after the request it kills.
    std::map<std::string, double> shortest_unanswered_ms_by_comm;
    // Server side, by comm: the idle timeout each process announced in its responses
    // (Connection::keep_alive_timeout_s). It tells how soon the process closes idle connections
    // also where the recording saw it close none.
    std::map<std::string, AnnouncedTimeout> announced_keepalive_by_comm;
    // Each connection at its first FIN or RST (else when it was last seen), from the header's
    // start.
    VerdictTimeline verdicts_over_time;
    // Records whose other end may be in another trace of the same host (a rotated recording),
    // kept by analyze_trace_part for merge_traces to pair; empty otherwise.
    std::vector<Connection> unpaired_ends;

    double duration_s() const;  // the summary's, or from the header's start to last_ns
    // When a trace read alone ended on the wall clock: its summary's end, or last_ns.
    int64_t end_wall_ns() const;
    uint64_t with_cause(CloseCause cause) const {
        return causes[static_cast<std::size_t>(cause)];
    }
    uint64_t lost_events() const { return summary ? summary->lost_events : 0; }
    // local_close_race whose close a timer made: neither a shutdown's nor a refusal.
    uint64_t timer_close_races() const {
        return verdicts[Verdict::LocalCloseRace] - shutdown_races.total - refused_races.total;
    }
    // Server side, by either side: what tells who closes first.
    uint64_t idle_timer_closes() const { return local_idle.count() + peer_idle.count(); }
    // Keep-alive off on every host: enough connections closed after one answer, and none kept
    // open after one.
    bool keeps_no_connection_alive() const;
    uint64_t connections_closed_after_one_answer() const;
    uint64_t same_host_connections() const;
    std::set<std::string> hosts() const;  // the headers' of the traces merged, or the one's
    std::size_t host_count() const { return hosts().size(); }
};

// Accumulates a trace's records; analyze_trace() drives it from a reader. The two records of a
// connection with both ends on this host are counted once (EndPairer): a record may be counted
// only when its other end arrives, or at finish().
class TraceAnalyzer {
public:
    TraceAnalyzer(std::string file, TraceHeader header);
    // Not copied: indexes_ points into analysis_.
    TraceAnalyzer(const TraceAnalyzer&) = delete;
    TraceAnalyzer& operator=(const TraceAnalyzer&) = delete;
    void add(const Connection& conn);  // copied only when kept for its other end
    void add(const TraceEventLine& event);
    void add(const TraceSummary& summary);
    TraceAnalysis finish(std::vector<std::string> reader_warnings);
    // As finish(), but the records still waiting for their other end go to unpaired_ends
    // instead of being counted alone.
    TraceAnalysis finish_part(std::vector<std::string> reader_warnings);

private:
    EndPairer pairer_;
    TraceAnalysis analysis_;
    GroupIndexes indexes_;  // into analysis_'s maps
};

// Reads the rest of the trace; throws TraceError on a malformed one.
TraceAnalysis analyze_trace(TraceReader& reader, std::string file);
// As analyze_trace, for merge_traces: records waiting for their other end at the end of the
// file are kept (unpaired_ends), since the next file of a rotated recording may hold it.
TraceAnalysis analyze_trace_part(TraceReader& reader, std::string file);

// Several traces (analyze_trace_part's, in the order given: a host's rotated files in the order
// written) as one analysis: figures summed, connections still counted once per host (the
// unpaired ends of one host's traces paired with each other, never across hosts), everything
// on a time axis by wall clock, since monotonic clocks are per host. Caught connections keep the
// earliest kMaxListed by wall clock.
TraceAnalysis merge_traces(std::vector<TraceAnalysis> parts);

// ---------------------------------------------------------------------------------------------
// Judgement

inline constexpr double kAlbDefaultIdleTimeoutMs = 60'000;
// Added to the peer's idle timeout for the recommended keep-alive timeout of this host.
inline constexpr double kKeepAliveMarginMs = 5'000;
// diff needs at least this many requests in the later recording to conclude.
inline constexpr uint64_t kMinRequestsToConclude = 20;

enum class PeerTimeoutSource { Given, Observed, AlbDefault, Outlasted };
// "given", "observed", "alb_default", "outlasted": the JSON report's names.
const char* to_string(PeerTimeoutSource source);

// Peers that never closed an idle connection while this host closed theirs (server side): they
// keep idle connections longer than this host does.
struct OutlastingPeers {
    static constexpr std::size_t kMaxNamed = 3;
    std::vector<std::string> named{};  // addresses, most closes by this host first
    std::size_t count = 0;
    uint64_t closes = 0;    // this host's idle closes of their connections
    double longest_ms = 0;  // the longest idle one of them kept without closing it
};

// The peer's idle timeout that this host's idle closes are held against.
struct PeerTimeout {
    double ms = kAlbDefaultIdleTimeoutMs;
    PeerTimeoutSource source = PeerTimeoutSource::AlbDefault;
    // Outlasted: the peers that outlasted the timer other peers' closes show (`observed_ms`).
    OutlastingPeers outlasting{};
    std::optional<double> observed_ms{};
    // Not seen: the ALB default, where no peer's close showed the timeout to exceed.
    bool assumed() const {
        return source == PeerTimeoutSource::AlbDefault || source == PeerTimeoutSource::Outlasted;
    }
};
// `given_ms`, else the peer's idle timer as its idle-timer closes show it in `traces` (server
// side: the densest cluster's longest), else ALB's default. Where that timer is below the ALB
// default and some peer kept an idle connection at least that long without ever closing one
// (OutlastingPeers), the timer is other peers': the ALB default then (Outlasted), as where no
// peer closes.
PeerTimeout resolve_peer_timeout(const std::vector<const TraceAnalysis*>& traces,
                                 std::optional<double> given_ms);

enum class FailureKind { None, CloseRaces, InflightResets, ProcessExits, PeerGaveUp };

enum class RecommendationKind {
    KeepAliveTimeout,
    UpstreamIdleTimeout,
    Load,
    ProcessExit,
    Drain,            // close races of a shutdown: connections closed while still in use
    ConnectionLimit,  // close races of connections refused as they opened
    ClientTimeout,
    PoolIdleTimeout,  // connections forgotten by a NAT or conntrack in between
    NothingToFix,
    RecordLonger  // nothing caught, and no idle close by either side: too little to tell
};

struct Recommendation {
    RecommendationKind kind = RecommendationKind::NothingToFix;
    std::optional<std::string> comm{};  // the process it is for, where it names one
    std::optional<uint64_t> value_s{};  // the timeout it recommends, where it names one
    std::string text{};
};

struct Assessment {
    PeerTimeout peer_timeout;
    uint64_t races = 0;              // local_close_race
    uint64_t upstream_races = 0;     // peer_close_race
    uint64_t early_idle_closes = 0;  // server-side idle closes by this host sooner than the peer's
    uint64_t inflight_resets = 0;    // local_reset_inflight but process exits
    uint64_t process_exits = 0;      // local_reset_inflight with cause process_exit
    uint64_t peer_gave_up = 0;       // peer_close_inflight but forgotten
    uint64_t forgotten = 0;          // peer_close_inflight with cause forgotten
    // Server side, the processes that announce an idle timeout shorter than the peer's: they
    // close idle connections first, whether or not the recording saw them do it.
    std::vector<std::pair<std::string, AnnouncedTimeout>> early_announcements;
    // This host closes idle connections before its peer: races, early idle closes, or an
    // early announcement.
    bool closes_before_peer = false;
    // The most frequent of races, in-flight resets, process exits and requests the peer gave up
    // on (ties in that order); None when there were none.
    FailureKind dominant = FailureKind::None;
    uint64_t recommended_keepalive_s = 0;  // above the peer's timeout by the margin
    std::vector<Recommendation> recommendations;
    std::string conclusion;  // a short paragraph for humans
};

Assessment assess(const TraceAnalysis& trace, const PeerTimeout& peer_timeout);

// The setting that raises the keep-alive timeout of the server `comm` to `value_s`.
std::string keepalive_fix(const std::string& comm, uint64_t value_s);
// The same for a server that keeps no connection alive: also what turns keep-alive on.
std::string keepalive_on_fix(const std::string& comm, uint64_t value_s);
// "this host keeps no connection alive (N connections ended after one request, ...), so ...
// none can race": why a recording that keeps_no_connection_alive() has nothing to race.
std::string keeps_no_connection_alive_text(const TraceAnalysis& trace);
// The same for a server whose HTTP/2 connections close idle: its session or connection idle
// timeout, which closes with a GOAWAY.
std::string http2_idle_fix(const std::string& comm, uint64_t value_s);

enum class DiffConclusion { Fixed, NotFixed, Inconclusive };
const char* to_string(DiffConclusion conclusion);

struct DiffResult {
    PeerTimeout peer_timeout;  // observed in either recording (the peer is the same), or default
    Assessment before;
    Assessment after;
    DiffConclusion conclusion = DiffConclusion::Inconclusive;
    std::string explanation;  // why, and for inconclusive what would make it conclusive
};
DiffResult diff_traces(const TraceAnalysis& before, const TraceAnalysis& after);

enum class VerifyConclusion {
    Passed,
    Failed,
    Inconclusive,  // no idle close by either side: nothing shows who closes idle connections first
};

struct VerifyResult {
    PeerTimeout peer_timeout;
    VerifyConclusion conclusion = VerifyConclusion::Failed;
    std::vector<std::string> reasons;  // why it failed; empty otherwise
    std::string too_little;            // why it is inconclusive; empty otherwise
    // Passed with keep-alive off: no idle timer to show (TraceAnalysis::keeps_no_connection_alive).
    bool keeps_no_connection_alive = false;
};
VerifyResult verify_trace(const TraceAnalysis& trace, std::optional<double> peer_timeout_ms);

}  // namespace closetrace
