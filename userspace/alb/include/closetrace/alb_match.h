// Joins a load balancer's access log with a backend trace: which of the load balancer's own
// errors (502, 504, 460 with no response from the target) a connection this host recorded
// explains. See docs/alb.md.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "closetrace/alb_log.h"
#include "closetrace/model.h"
#include "closetrace/trace_io.h"

namespace closetrace {

// --map: the load balancer sends to HOSTPORT (on HOSTADDR, when given) what the trace sees
// arrive at the container's CONTAINERPORT (docker bridge networking, ECS dynamic port mapping).
// The address cannot be compared through such a mapping: without HOSTADDR any address matches.
struct PortMapping {
    std::optional<std::string> host_addr;
    uint16_t host_port = 0;
    uint16_t container_port = 0;
};
// "32768=8080", "10.0.1.17:32768=8080", "[fd00::1]:32768=8080"; nullopt when malformed.
std::optional<PortMapping> parse_port_mapping(std::string_view text);

// A request of a connection that may have cost the load balancer a response: a close race or a
// close with the request in flight.
struct CaughtRequest {
    uint64_t conn_id = 0;
    uint64_t cookie = 0;
    Verdict verdict = Verdict::Open;
    Endpoint local;
    Endpoint remote;
    Request request;
    int64_t wall_ns = 0;  // request_ns + mono_to_wall_ns
    std::string host{};   // the trace header's
    // An HTTP/2 connection's caught stream (its id, fate, opening or reset). `request` is then
    // opaque, without names (HPACK is not followed), its request_ns when the stream was opened
    // (else reset), its outcome unanswered_at_close. nullopt for an HTTP/1 request.
    std::optional<Http2Stream> stream{};
    CloseCause cause = CloseCause::Unknown;  // its connection's close.cause
};

// Whether a log line of `type` (the client's protocol to the load balancer) can have gone to its
// target as an HTTP/2 stream: h2 and grpcs. An HTTP/1.1 request (http, https) is not sent to an
// HTTP/2 or gRPC target group (the load balancer answers it 464 itself).
bool lb_type_can_be_http2(std::string_view type);

// The load balancer's own errors that a connection's fate can explain, in report order.
inline constexpr int kLbErrorCodes[] = {502, 504, 460};

// The verdicts whose caught requests can explain a load balancer error with `elb_status_code`:
// 502 (the target closed or reset with a request outstanding) <- local_close_race,
// local_reset_inflight; 504 (the load balancer gave up waiting) and 460 (its client gave up) <-
// peer_close_inflight. Empty for other codes.
std::vector<Verdict> verdicts_explaining(int elb_status_code);

// What the correlation needs from a trace, read in one pass. Memory grows with the caught
// requests, not with the trace.
struct TraceFacts {
    std::string file;
    std::vector<std::string> hosts;  // the trace headers' hosts, each once
    int64_t start_wall_ns = 0;
    int64_t end_wall_ns = 0;   // the summary's end, or the last time recorded without one
    bool has_summary = false;  // false: the recording was cut short
    uint64_t lost_events = 0;
    std::set<Endpoint> local_endpoints;  // of connections this host accepted (or of unknown role)
    std::map<Verdict, uint64_t> caught_connections;  // for each verdict that can explain an error
    std::vector<CaughtRequest> caught_requests;      // their late or unanswered requests
    std::vector<std::string> warnings;               // the reader's
    TraceHeader header;  // of the trace read (of the first, when merged)
    // read_trace_facts_part: records whose other end may be in another trace of the same host
    // (a rotated recording); merge_trace_facts pairs them.
    std::vector<Connection> unpaired_ends;
};
// Reads the rest of the trace; throws TraceError on a malformed one.
TraceFacts read_trace_facts(TraceReader& reader, std::string file);
// As read_trace_facts, for merge_trace_facts: the records still waiting for their other end at
// the end are kept in unpaired_ends instead of being caught alone.
TraceFacts read_trace_facts_part(TraceReader& reader, std::string file);
// Several traces' facts as one (alb given the traces of several hosts, or a host's rotated
// files, read by read_trace_facts_part): every endpoint and caught request (in wall-clock
// order), a host's unpaired ends paired within that host, the recording from the earliest start
// to the latest end; `file` says how many traces of how many hosts.
TraceFacts merge_trace_facts(std::vector<TraceFacts> parts);

// A load balancer error line on one of the trace's endpoints, during the recording.
struct LbErrorLine {
    LbLogEntry entry;
    std::string file;
    uint64_t line = 0;
    int64_t dispatch_ns = 0;  // when the load balancer sent the request to the target
};

struct AlbPair {
    LbErrorLine error;
    CaughtRequest request;
    int64_t delta_ns = 0;        // request.wall_ns - error.dispatch_ns
    bool path_compared = false;  // false: the trace saw no request line (TLS to the target)
};

struct StatusTally {
    uint64_t lines = 0;
    std::map<Verdict, uint64_t> explained;
    uint64_t unexplained = 0;
};

struct AlbCounts {
    uint64_t lb_errors = 0;  // 502, 504, 460 lines with target_status_code "-"
    uint64_t not_sent = 0;   // of those, never sent: target:port "-" or request time -1
    // Of those, the 502s answered during the recording, for no target or this trace's: the load
    // balancer could not reach a target then. Their first and last times (Unix epoch ns).
    uint64_t unreached = 0;
    int64_t unreached_first_ns = 0;
    int64_t unreached_last_ns = 0;
    uint64_t other_targets = 0;
    uint64_t outside_recording = 0;
    uint64_t on_trace = 0;  // on the trace's endpoints during the recording: the ones matched
    uint64_t requests_on_trace = 0;  // lines of any status on the trace's endpoints, in time
};

struct AlbCorrelation {
    AlbCounts counts;
    std::map<int, StatusTally> by_status;           // every code of kLbErrorCodes, lines or not
    std::vector<AlbPair> pairs;                     // in the order of the load balancer's times
    std::vector<LbErrorLine> unexplained;           // likewise
    std::vector<CaughtRequest> unmatched_requests;  // caught requests no line explains
};

// Selects the load balancer errors on the trace's endpoints (through `mappings`) whose dispatch
// time lies within the recording widened by `skew_ns`, and pairs each with a caught request on
// the same endpoint whose time is within `skew_ns` of it, with the same method and path (unless
// the trace could not read the request), and whose verdict can explain its status. Each line and
// each request is used once, in a matching as large as possible; each line tries its closest
// requests first. `trace` must outlive the correlator.
class AlbCorrelator {
public:
    AlbCorrelator(const TraceFacts& trace, std::vector<PortMapping> mappings, int64_t skew_ns);
    void add(const LbLogEntry& entry, const std::string& file, uint64_t line);
    AlbCorrelation finish() const;

private:
    bool on_trace_endpoint(const Endpoint& lb_target) const;
    bool same_socket(const Endpoint& lb_target, const Endpoint& trace_local) const;

    const TraceFacts& trace_;
    std::vector<PortMapping> mappings_;
    int64_t skew_ns_;
    AlbCounts counts_;
    std::vector<LbErrorLine> selected_;
};

// What the correlation means, most important first: one sentence each.
std::vector<std::string> alb_conclusions(const TraceFacts& trace, const AlbCorrelation& result,
                                         int64_t skew_ns);

}  // namespace closetrace
