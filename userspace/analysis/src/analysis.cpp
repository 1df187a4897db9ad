#include "closetrace/analysis.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <iterator>
#include <set>
#include <string_view>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "closetrace/analysis_text.h"
#include "closetrace/container_ref.h"
#include "closetrace/wallclock.h"

namespace closetrace {
namespace {

using analysis_text::count_of;
using analysis_text::duration;

// Bucket i holds [kBucketGrowth^i, kBucketGrowth^(i+1)) ms; below kSmallestMs (a nanosecond)
// everything shares one bucket.
constexpr double kBucketGrowth = 1.001;
constexpr double kSmallestMs = 1e-6;
constexpr int32_t kTinyBucket = std::numeric_limits<int32_t>::min();

void raise_to(std::optional<double>& longest, double ms) {
    longest = longest ? std::max(*longest, ms) : ms;
}

// Where a connection goes on the verdicts over time: its first FIN or RST, else when last seen.
uint64_t verdict_time(const Connection& conn) {
    const CloseInfo& close = conn.close;
    const std::optional<uint64_t> first_close =
        earliest(earliest(close.local_fin_ns, close.peer_fin_ns),
                 earliest(close.local_rst_ns, close.peer_rst_ns));
    return first_close.value_or(last_seen_ns(conn));
}

// A close of an idle connection: its idle time is how long the other side kept it idle. (With a
// request in flight the connection was not idle, only silent.)
bool nothing_in_flight_at_close(Verdict verdict) {
    switch (verdict) {
        case Verdict::LocalIdleClose:
        case Verdict::LocalCloseRace:
        case Verdict::LocalReset:
        case Verdict::PeerIdleClose:
        case Verdict::PeerCloseRace:
        case Verdict::PeerReset: return true;
        default: return false;
    }
}

void list_caught(CaughtList& list, const Connection& conn,
                 const std::optional<ClientEnd>& client_end, const TraceHeader& source) {
    ++list.total;
    CaughtConnection caught = caught_connection(conn, source.mono_to_wall_ns);
    caught.host = source.host;
    caught.client_end = client_end;
    if (caught.request_after_close_ms && *caught.request_after_close_ms < 0) {
        raise_to(list.longest_unanswered_ms, -*caught.request_after_close_ms);
    }
    // The earliest kMaxListed by wall clock (a trace has them in the order they ended): a later
    // one takes the place of the latest listed.
    if (list.listed.size() < CaughtList::kMaxListed) {
        list.listed.push_back(std::move(caught));
        return;
    }
    const auto latest = std::ranges::max_element(list.listed, {}, &CaughtConnection::wall_ns);
    if (caught.wall_ns < latest->wall_ns) *latest = std::move(caught);
}

void keep_shortest(std::map<std::string, double>& shortest, const std::string& key, double ms) {
    const auto [it, added] = shortest.try_emplace(key, ms);
    if (!added) it->second = std::min(it->second, ms);
}

// Into TraceAnalysis::announced_keepalive_by_comm: `announced` of one connection or of a trace.
void note_announcement(std::map<std::string, AnnouncedTimeout>& by_comm, const std::string& comm,
                       const AnnouncedTimeout& announced) {
    const auto [it, added] = by_comm.try_emplace(comm, announced);
    if (added) return;
    it->second.shortest_s = std::min(it->second.shortest_s, announced.shortest_s);
    it->second.connections += announced.connections;
}

// See TraceAnalysis::shortest_unanswered_ms_by_comm.
void note_unanswered_wait(TraceAnalysis& a, const Connection& conn, std::string_view comm) {
    const auto unanswered = std::ranges::find(conn.requests, Outcome::UnansweredAtClose,
                                              &Request::outcome);
    const std::optional<uint64_t> closed_ns =
        earliest(conn.close.local_fin_ns, conn.close.local_rst_ns);
    if (unanswered == conn.requests.end() || !closed_ns || *closed_ns < unanswered->request_ns) {
        return;
    }
    keep_shortest(a.shortest_unanswered_ms_by_comm, std::string(comm),
                  static_cast<double>(*closed_ns - unanswered->request_ns) / 1e6);
}

// The requests a connection carried: its HTTP/1 requests, or the streams its HTTP/2 client
// opened (each stream is one request; their names are not decoded).
uint64_t requests_of(const Connection& conn) {
    if (!conn.http2) return conn.request_count();
    const Http2Connection& h2 = *conn.http2;
    return (h2.client == Initiator::Local ? h2.local : h2.peer).streams_opened;
}

// Its requests were not HTTP (TLS): counted by turns of the conversation, headers unseen.
bool is_opaque(const Connection& conn) {
    return !conn.http2 && !conn.requests.empty() && conn.requests.front().opaque;
}

void count_in(GroupFigures& group, const Connection& conn) {
    ++group.connections;
    group.requests += requests_of(conn);
    ++group.verdicts[conn.verdict];
    if (!timer_idle_ms(conn)) return;
    if (conn.verdict == Verdict::LocalIdleClose) ++group.local_idle_timer_closes;
    if (conn.verdict == Verdict::PeerIdleClose) ++group.peer_idle_timer_closes;
}

// Server side, one connection's word on whether `host` keeps connections alive. It does where a
// connection stayed open after an answer: an idle timer closed it (TLS too), a second request
// came, it spoke HTTP/2, or it was still open at the end (not a WebSocket opened by its one
// request: that is the new protocol's). It does not where it answered its one
// request with `Connection: close` and closed (a close after the answer without that header
// could be an idle timer's). A TLS connection says nothing more: its headers are not seen, and
// its handshake's turns count as requests.
void count_keepalive_use(TraceAnalysis& a, const Connection& conn, std::string_view comm,
                         const std::string& host) {
    KeepAliveUse& use = a.keepalive_use_by_host[host];
    const uint64_t requests = requests_of(conn);
    const Request* last = conn.http2 || conn.requests.empty() ? nullptr : &conn.requests.back();
    if (timer_idle_ms(conn)) {
        ++use.kept_alive;
    } else if (requests == 0 || is_opaque(conn) || (requests == 1 && switched_protocols(conn))) {
        // Nothing told; a WebSocket opened by the connection's one request stays open as the
        // new protocol's.
        return;
    } else if (conn.http2 || requests > 1 ||
               (conn.verdict == Verdict::Open && last && last->outcome == Outcome::Completed &&
                last->close_asked == CloseAsked::None)) {
        ++use.kept_alive;
    } else if (last && conn.verdict != Verdict::Open &&
               conn.close.cause == CloseCause::KeepaliveEnded &&
               last->close_asked == CloseAsked::Response) {
        ++use.closed_after_one_answer;
        ++a.closed_after_one_answer_by_comm[std::string(comm)];
    }
}

// Counts one connection into `a`, whose groups `indexes` finds; `client_end` when both ends
// are on this host (EndPairer); `source` is the header of the trace it was read from (for a
// merged analysis, whose clock is the wall clock, not `a`'s own).
void count_connection(TraceAnalysis& a, GroupIndexes& indexes, const Connection& conn,
                      const std::optional<ClientEnd>& client_end, const TraceHeader& source) {
    const uint64_t to_clock_of_a =
        static_cast<uint64_t>(source.mono_to_wall_ns - a.header.mono_to_wall_ns);
    ++a.connections;
    a.last_ns = std::max(a.last_ns, last_seen_ns(conn) + to_clock_of_a);
    if (conn.incomplete) {
        ++a.incomplete;
        return;
    }
    a.requests += requests_of(conn);
    if (is_opaque(conn)) ++a.opaque_connections;
    ++a.verdicts[conn.verdict];
    a.verdicts_over_time.add(verdict_time(conn) + to_clock_of_a, conn.verdict);
    const std::string_view comm = conn.comm ? std::string_view(*conn.comm) : std::string_view();
    count_in(indexes.by_comm.find(a.by_comm, comm), conn);
    GroupFigures& peer = indexes.by_peer.find(a.by_peer, plain_address(conn.remote.addr));
    count_in(peer, conn);
    container_label(conn.container, indexes.label);
    count_in(indexes.by_container.find(a.by_container, indexes.label), conn);
    count_in(a.by_host[source.host], conn);
    if (client_end) {
        count_in(a.by_same_host[fmt::format("{} -> {}", client_end->comm.value_or("?"),
                                            conn.comm.value_or("?"))],
                 conn);
    }

    if (conn.verdict != Verdict::Open) ++a.causes[static_cast<std::size_t>(conn.close.cause)];
    if (conn.health_check) {
        ++a.health_check_connections;
        ++a.health_checkers[*conn.health_check];
    }

    const bool server_side = conn.role != Role::Client;
    if (server_side) count_keepalive_use(a, conn, comm, source.host);
    if (server_side && conn.keep_alive_timeout_s) {
        note_announcement(a.announced_keepalive_by_comm, std::string(comm),
                          {.shortest_s = *conn.keep_alive_timeout_s, .connections = 1});
    }
    const std::optional<double> idle_ms = timer_idle_ms(conn);
    if (server_side && idle_ms && nothing_in_flight_at_close(conn.verdict)) {
        if (conn.close.initiator == Initiator::Local)
            raise_to(a.longest_idle_at_local_close_ms, *idle_ms);
        if (conn.close.initiator == Initiator::Peer)
            raise_to(a.longest_idle_at_peer_close_ms, *idle_ms);
    }
    switch (conn.verdict) {
        case Verdict::LocalCloseRace:
            list_caught(a.races, conn, client_end, source);
            if (is_shutdown_close(conn.close.cause)) {
                list_caught(a.shutdown_races, conn, client_end, source);
            } else if (conn.close.cause == CloseCause::Refused) {
                list_caught(a.refused_races, conn, client_end, source);
            }
            [[fallthrough]];
        case Verdict::LocalIdleClose:
            if (!server_side || !idle_ms) break;
            ++a.local_idle_closers[std::string(comm)];
            if (conn.http2) a.http2_idle_closers.emplace(comm);
            a.local_idle.add(*idle_ms);
            a.local_idle_by_host[source.host].add(*idle_ms);
            peer.server_idle_timers.count_local(*idle_ms);
            break;
        case Verdict::PeerCloseRace:
            list_caught(a.races, conn, client_end, source);
            // A shutdown of the upstream asks for no shorter idle timeout here.
            if (!is_shutdown_or_refusal(conn.close.cause)) ++a.upstream_racers[std::string(comm)];
            [[fallthrough]];
        case Verdict::PeerIdleClose:
            if (!idle_ms) break;
            (server_side ? a.peer_idle : a.upstream_peer_idle).add(*idle_ms);
            if (server_side) peer.server_idle_timers.count_peer();
            break;
        case Verdict::LocalResetInflight:
            list_caught(conn.close.cause == CloseCause::ProcessExit ? a.process_exits
                                                                     : a.inflight_resets,
                        conn, client_end, source);
            if (conn.close.cause == CloseCause::InFlight) note_unanswered_wait(a, conn, comm);
            break;
        case Verdict::PeerCloseInflight:
            list_caught(conn.close.cause == CloseCause::Forgotten ? a.forgotten : a.peer_gave_up,
                        conn, client_end, source);
            break;
        case Verdict::LocalReset:
        case Verdict::PeerReset:
        case Verdict::Open: break;
    }
}

// Comms by how often they appear, most first (ties by name).
std::vector<std::pair<std::string, uint64_t>> by_count(
    const std::map<std::string, uint64_t>& counts) {
    std::vector<std::pair<std::string, uint64_t>> sorted(counts.begin(), counts.end());
    std::ranges::stable_sort(sorted,
                             [](const auto& a, const auto& b) { return a.second > b.second; });
    return sorted;
}

// ---------------------------------------------------------------------------------------------
// Recommendations

std::string keepalive_basis(const PeerTimeout& peer, uint64_t value_s) {
    switch (peer.source) {
        case PeerTimeoutSource::Observed:
            return fmt::format("{} s: the peer's longest observed idle close ({}) plus {} s",
                               value_s, duration(peer.ms), kKeepAliveMarginMs / 1000);
        case PeerTimeoutSource::Given:
            return fmt::format("{} s: the given peer idle timeout ({}) plus {} s", value_s,
                               duration(peer.ms), kKeepAliveMarginMs / 1000);
        case PeerTimeoutSource::Outlasted:
            return fmt::format(
                "{} s assumes {} (never closing an idle connection here) {} an ALB with the "
                "default idle timeout of {} s: use the load balancer's actual idle timeout plus "
                "{} s (a client pool that never closes idle connections needs an idle timeout "
                "shorter than this host's instead)",
                value_s, analysis_text::outlasting_names(peer.outlasting),
                peer.outlasting.count == 1 ? "is" : "are", kAlbDefaultIdleTimeoutMs / 1000,
                kKeepAliveMarginMs / 1000);
        case PeerTimeoutSource::AlbDefault: break;
    }
    return fmt::format(
        "{} s assumes the peer is an ALB with the default idle timeout of {} s (the "
        "peer never closed an idle connection in this recording): use the load "
        "balancer's actual idle timeout plus {} s",
        value_s, kAlbDefaultIdleTimeoutMs / 1000, kKeepAliveMarginMs / 1000);
}

Recommendation keepalive_recommendation(const std::optional<std::string>& comm, bool http2,
                                        const Assessment& a) {
    const uint64_t value_s = a.recommended_keepalive_s;
    const std::string fix = comm ? (http2 ? http2_idle_fix(*comm, value_s)
                                          : keepalive_fix(*comm, value_s))
                                 : fmt::format(
                                       "the server owning these connections (its process "
                                       "was not seen): raise its idle keep-alive timeout to "
                                       "{} s (Go: http.Server.IdleTimeout)",
                                       value_s);
    return {.kind = RecommendationKind::KeepAliveTimeout,
            .comm = comm,
            .value_s = value_s,
            .text = fmt::format("{}; {}.", fix, keepalive_basis(a.peer_timeout, value_s))};
}

// "It announces Keep-Alive: timeout=5 in its responses (on 12 connections).": what an early
// announcement adds to the process' advice, whose basis names the peer's timeout.
std::string announcement_sentence(const AnnouncedTimeout& announced) {
    return fmt::format("It announces Keep-Alive: timeout={} in its responses (on {}).",
                       announced.shortest_s,
                       count_of(announced.connections, "connection", "connections"));
}

// How the conclusion and the advice name what they are about: this host, or the hosts of
// several traces merged.
struct HostWords {
    const char* subject;  // "This host"
    const char* object;   // "this host"
    const char* its;
    const char* possessive;  // "this host's"
    const char* verb_s;      // a verb's ending after it: "closes", "close"
};

HostWords host_words(const TraceAnalysis& trace) {
    if (trace.host_count() > 1) {
        return {"These hosts", "these hosts", "their", "these hosts'", ""};
    }
    return {"This host", "this host", "its", "this host's", "s"};
}

// Hosts named in a sentence, the rest counted.
constexpr std::size_t kHostsNamed = 5;

Recommendation upstream_recommendation(const std::string& comm, uint64_t races,
                                       const IdleHistogram& upstream_peer_idle,
                                       const HostWords& host) {
    const std::optional<double> shortest = upstream_peer_idle.min();
    // A whole second below the shortest close the upstream made, where that leaves one.
    std::optional<uint64_t> value_s;
    if (shortest && *shortest >= 2000) value_s = static_cast<uint64_t>(*shortest / 1000) - 1;
    const std::string bound =
        shortest
            ? fmt::format("its shortest idle close here was {}", duration(*shortest))
            : std::string("it never closed an idle one here; Node.js closes after 5 s by default");
    const std::string who = comm.empty()
                                ? fmt::format("{} (process not seen)", host.object)
                                : fmt::format("{} (comm {})", analysis_text::printable(comm),
                                              analysis_text::printable(comm));
    std::string text = fmt::format(
        "{} sent {} on upstream connections its peer had just closed: close idle upstream "
        "connections sooner than the upstream server does ({})",
        who, count_of(races, "request", "requests"), bound);
    if (comm == "nginx") {
        text += value_s ? fmt::format("; nginx: keepalive_timeout {}s; inside the upstream block",
                                      *value_s)
                        : std::string("; nginx: keepalive_timeout inside the upstream block");
    } else if (value_s) {
        text += fmt::format(", e.g. a pool idle timeout of {} s", *value_s);
    }
    return {.kind = RecommendationKind::UpstreamIdleTimeout,
            .comm = comm.empty() ? std::nullopt : std::optional(comm),
            .value_s = value_s,
            .text = text + "."};
}

// Fewer in-flight resets than this do not point at load by themselves: one may be a request
// the server refused.
constexpr uint64_t kFewInflightResets = 3;

// For the processes that closed in-flight connections as a server does on a timeout of its own
// (TraceAnalysis::shortest_unanswered_ms_by_comm): " Also, for comm gunicorn: Gunicorn's
// arbiter kills ...". Empty when none did.
std::string request_timeout_hint(const TraceAnalysis& trace);
// Server timeouts that kill a request are whole seconds.
constexpr double kRequestTimeoutMinMs = 1'000;

Recommendation load_recommendation(const TraceAnalysis& trace, const Assessment& a) {
    const HostWords host = host_words(trace);
    const uint64_t races = a.races + a.upstream_races;
    std::string text;
    if (a.dominant == FailureKind::InflightResets && a.inflight_resets < kFewInflightResets) {
        text = fmt::format(
            "In-flight resets ({}) outnumber close races ({}), but {} too few to point at load: "
            "a server also closes on a request it refuses (a method it does not serve, a "
            "malformed or oversized head); see the listed {}. If more come, check {} load "
            "(CPU, memory, the number of tasks or instances) around their times.",
            a.inflight_resets, races, count_of(a.inflight_resets, "is", "are"),
            a.inflight_resets == 1 ? "request" : "requests", host.possessive);
    } else if (a.dominant == FailureKind::InflightResets) {
        text = fmt::format(
            "In-flight resets ({}) outnumber close races ({}): the connection lifecycle is not the "
            "cause. {} reset or closed connections with requests unanswered, which points "
            "at load: check CPU, memory and the number of tasks or instances around the listed "
            "times, and scale out (the field report's third step).",
            a.inflight_resets, races, host.subject);
    } else {
        text = fmt::format(
            "{} also: if they remain after the keep-alive fix, check {} load (CPU, "
            "memory, scaling) around the listed times.",
            count_of(a.inflight_resets, "in-flight reset", "in-flight resets"), host.possessive);
    }
    return {.kind = RecommendationKind::Load,
            .text = text + request_timeout_hint(trace)};
}

// The processes named by a caught list (its listed connections), for a sentence.
std::string processes_of(const CaughtList& list) {
    std::map<std::string, uint64_t> comms;
    for (const CaughtConnection& caught : list.listed) ++comms[caught.comm.value_or("")];
    std::string names;
    for (const auto& [comm, count] : by_count(comms)) {
        names += (names.empty() ? "" : ", ") +
                 (comm.empty() ? std::string("a process not seen") : analysis_text::printable(comm));
    }
    return names;
}

Recommendation process_exit_recommendation(const TraceAnalysis& trace) {
    const CaughtList& exits = trace.process_exits;
    return {.kind = RecommendationKind::ProcessExit,
            .text = fmt::format(
                "{} closed by their process exiting ({}) with requests unanswered: the "
                "connection lifecycle is not the cause, nor load by itself: a crash or a kill "
                "(the OOM killer, a deploy without draining). Check why the process exited "
                "around the listed times (exit codes, OOM kills in the kernel log, deploys), and "
                "drain connections before stopping it.",
                count_of(exits.total, "connection was", "connections were"),
                processes_of(exits))};
}

Recommendation drain_recommendation(const TraceAnalysis& trace) {
    const CaughtList& races = trace.shutdown_races;
    const HostWords host = host_words(trace);
    return {.kind = RecommendationKind::Drain,
            .text = fmt::format(
                "{} on connections {} closed while stopping ({}; the first at {}): a shutdown, "
                "restart or reload closing keep-alive connections the load balancer still used "
                "(all its idle ones at once, or as the process exited), not a keep-alive "
                "timeout. Drain before stopping: "
                "deregister the target first and stop the process only after the load "
                "balancer's deregistration delay, keeping idle connections open until then.",
                count_of(races.total, "request arrived", "requests arrived"), host.object,
                processes_of(races), iso8601_utc(races.listed.front().wall_ns))};
}

Recommendation connection_limit_recommendation(const TraceAnalysis& trace) {
    const CaughtList& races = trace.refused_races;
    const HostWords host = host_words(trace);
    return {.kind = RecommendationKind::ConnectionLimit,
            .text = fmt::format(
                "{} on connections {} closed as soon as it accepted them, before any request "
                "({}): a connection limit or a server refusing work (Node.js "
                "server.maxConnections, nginx worker_connections), not a keep-alive timeout. "
                "Raise the limit, or add capacity so that it is not reached.",
                count_of(races.total, "request arrived", "requests arrived"), host.object,
                processes_of(races))};
}

// AWS NAT gateways drop flows idle this long (documented).
constexpr uint64_t kNatGatewayIdleS = 350;

Recommendation pool_recommendation(const TraceAnalysis& trace) {
    const CaughtList& forgotten = trace.forgotten;
    std::optional<double> shortest_idle;
    for (const CaughtConnection& caught : forgotten.listed) {
        if (caught.request && caught.request->idle_before_ms) {
            shortest_idle = shortest_idle ? std::min(*shortest_idle, *caught.request->idle_before_ms)
                                          : *caught.request->idle_before_ms;
        }
    }
    const std::string idle = shortest_idle
                                 ? fmt::format(" after {} idle", duration(*shortest_idle))
                                 : std::string();
    return {.kind = RecommendationKind::PoolIdleTimeout,
            .text = fmt::format(
                "{} reset at the first request{}, with no FIN before: something between the two "
                "hosts (a NAT gateway, a firewall's conntrack) forgot the idle connection. Close "
                "idle pooled connections sooner than it forgets them (an AWS NAT gateway: {} s) "
                "or enable TCP keep-alive on them ({}).",
                count_of(forgotten.total, "pooled connection was", "pooled connections were"),
                idle, kNatGatewayIdleS, processes_of(forgotten))};
}

Recommendation client_timeout_recommendation(const Assessment& a, const TraceAnalysis& trace,
                                             const HostWords& host) {
    const std::optional<double> longest = trace.peer_gave_up.longest_unanswered_ms;
    const std::string wait =
        longest ? fmt::format("; the longest had waited {}", duration(*longest)) : std::string();
    std::string text;
    if (a.dominant == FailureKind::PeerGaveUp) {
        text = fmt::format(
            "The peer gave up on {} before {} answered{}: the client side times out (the "
            "ALB's 460 when its client closes, or a proxy's read timeout), not {} "
            "keep-alive. Compare the client's and proxy's timeouts (nginx proxy_read_timeout, the "
            "ALB's idle timeout) with {} response times.",
            count_of(a.peer_gave_up, "request", "requests"), host.object, wait, host.possessive,
            host.possessive);
    } else {
        text = fmt::format(
            "The peer also gave up on {} before {} answered{}: if that persists, compare "
            "the client's timeouts with {} response times.",
            count_of(a.peer_gave_up, "request", "requests"), host.object, wait, host.possessive);
    }
    return {.kind = RecommendationKind::ClientTimeout, .text = text};
}

// A server with keep-alive off leaves the peer no idle connection to reuse, so nothing to race;
// what it costs, and how to keep connections alive safely, for whoever wants that instead.
Recommendation keepalive_off_recommendation(const TraceAnalysis& trace, const Assessment& a) {
    const std::string comm = by_count(trace.closed_after_one_answer_by_comm).front().first;
    const uint64_t value_s = a.recommended_keepalive_s;
    const std::string fix =
        comm.empty() ? fmt::format("the server owning these connections (its process was not "
                                   "seen): an idle keep-alive timeout of {} s",
                                   value_s)
                     : keepalive_on_fix(comm, value_s);
    return {.kind = RecommendationKind::NothingToFix,
            .comm = comm.empty() ? std::nullopt : std::optional(comm),
            .value_s = value_s,
            .text = fmt::format(
                "Nothing to fix in the connection lifecycle: {}. Each request costs a new "
                "connection; to keep connections alive instead, with a timeout above the "
                "peer's idle timeout of {}: {}.",
                keeps_no_connection_alive_text(trace),
                analysis_text::peer_timeout_text(a.peer_timeout), fix)};
}

// ---------------------------------------------------------------------------------------------
// The conclusion paragraph

// "; by host: api-2 2.002 s, api-1 6.000 s": each host's median, shortest first, where the
// idle closes are of several hosts (a fleet whose hosts differ hides behind one median).
std::string medians_by_host(const TraceAnalysis& trace) {
    if (trace.local_idle_by_host.size() < 2) return "";
    std::vector<std::pair<double, std::string>> medians;
    for (const auto& [name, idle] : trace.local_idle_by_host) {
        medians.emplace_back(*idle.percentile(50), name);
    }
    std::ranges::sort(medians);
    std::vector<std::string> named;
    for (const auto& [median, name] : medians) {
        named.push_back(fmt::format("{} {}", name, duration(median)));
    }
    return "; by host: " + analysis_text::listed_names(named, kHostsNamed);
}

// "; on api-2 (5), api-1 (1)": the hosts whose idle closes came sooner than `peer_ms`, most such
// closes first, where the idle closes are of several hosts.
std::string early_closes_by_host(const TraceAnalysis& trace, double peer_ms) {
    if (trace.local_idle_by_host.size() < 2) return "";
    std::vector<std::pair<uint64_t, std::string>> early;
    for (const auto& [name, idle] : trace.local_idle_by_host) {
        if (const uint64_t count = idle.count_below(peer_ms); count > 0) {
            early.emplace_back(count, name);
        }
    }
    std::ranges::sort(early, [](const auto& a, const auto& b) {
        return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
    std::vector<std::string> named;
    for (const auto& [count, name] : early) named.push_back(fmt::format("{} ({})", name, count));
    return "; on " + analysis_text::listed_names(named, kHostsNamed);
}

std::string idle_sentence(const TraceAnalysis& trace, const HostWords& host) {
    const IdleHistogram& local = trace.local_idle;
    const IdleHistogram& peer = trace.peer_idle;
    if (local.count() > 0) {
        std::string sentence =
            fmt::format("{} closed idle keep-alive connections after {} (median of {}{})",
                        host.subject, duration(*local.percentile(50)), local.count(),
                        medians_by_host(trace));
        if (peer.count() > 0) {
            sentence += fmt::format(" and {} peer after {} (median of {})", host.its,
                                    duration(*peer.percentile(50)), peer.count());
        } else if (trace.longest_idle_at_local_close_ms) {
            sentence += fmt::format(" while {} peer kept them longer than {}", host.its,
                                    duration(*trace.longest_idle_at_local_close_ms));
        }
        return sentence + ".";
    }
    if (peer.count() > 0) {
        std::string sentence =
            fmt::format("The peer closed idle keep-alive connections after {} (median of {})",
                        duration(*peer.percentile(50)), peer.count());
        if (trace.longest_idle_at_peer_close_ms) {
            sentence += fmt::format(" and {} kept them longer than {}", host.object,
                                    duration(*trace.longest_idle_at_peer_close_ms));
        }
        return sentence + ".";
    }
    return "Neither side closed an idle keep-alive connection in this recording.";
}

std::string conclusion(const TraceAnalysis& trace, const Assessment& a) {
    const HostWords host = host_words(trace);
    std::vector<std::string> sentences{idle_sentence(trace, host)};
    if (a.races > 0) {
        sentences.push_back(
            fmt::format("{} {} had just closed (close races: the load balancer's 502).",
                        a.races == 1 ? std::string("1 request arrived on a connection")
                                     : fmt::format("{} requests arrived on connections", a.races),
                        host.object));
    } else if (a.early_idle_closes > 0) {
        sentences.push_back(fmt::format(
            "{} came sooner than the peer's idle timeout of {}: a request can arrive on a "
            "connection as {} close{} it (a close race, the load balancer's 502).",
            fmt::format("{} of {} idle closes", a.early_idle_closes, host.its),
            analysis_text::peer_timeout_text(a.peer_timeout), host.object, host.verb_s));
    } else if (!a.early_announcements.empty()) {
        std::vector<std::string> said;
        for (const auto& [comm, announced] : a.early_announcements) {
            said.push_back(analysis_text::announced_text(comm, announced));
        }
        sentences.push_back(fmt::format(
            "On {}, {} in its responses, below the peer's idle timeout of {}: {} close{} idle "
            "connections first, and a request can arrive on one as it closes (a close race, the "
            "load balancer's 502).",
            host.object, fmt::join(said, "; "), analysis_text::peer_timeout_text(a.peer_timeout),
            host.object, host.verb_s));
    }
    if (a.upstream_races > 0) {
        sentences.push_back(fmt::format(
            "{} sent {} on upstream connections {} peer had just closed (close races on "
            "{} client side).",
            host.subject, count_of(a.upstream_races, "request", "requests"), host.its, host.its));
    }
    // The dominant failure gets no sentence here: its recommendation, first, tells it.
    if (a.inflight_resets > 0 && a.dominant != FailureKind::InflightResets) {
        sentences.push_back(fmt::format(
            "{} reset or closed {} with a request unanswered (in-flight resets).", host.subject,
            count_of(a.inflight_resets, "connection", "connections")));
    }
    if (a.peer_gave_up > 0 && a.dominant != FailureKind::PeerGaveUp) {
        sentences.push_back(fmt::format("The peer gave up on {} before {} answered.",
                                        count_of(a.peer_gave_up, "request", "requests"),
                                        host.object));
    }
    const Recommendation& first = a.recommendations.front();
    const bool is_fix = first.kind == RecommendationKind::KeepAliveTimeout ||
                        first.kind == RecommendationKind::UpstreamIdleTimeout;
    const bool is_next_step =
        first.kind == RecommendationKind::Load || first.kind == RecommendationKind::ClientTimeout;
    sentences.push_back(is_fix         ? "Fix: " + first.text
                        : is_next_step ? "Next: " + first.text
                                       : first.text);
    if (!trace.summary) {
        sentences.push_back("The recording was cut short (no summary line).");
    } else if (trace.incomplete > 0) {
        sentences.push_back(fmt::format(
            "{} left out of all this: the kernel lost {} while they were open, so their "
            "records may be incomplete.",
            count_of(trace.incomplete, "connection was", "connections were"),
            count_of(trace.lost_events(), "event", "events")));
    } else if (trace.lost_events() > 0) {
        sentences.push_back(fmt::format("Some connections may be incomplete: the kernel lost {}.",
                                        count_of(trace.lost_events(), "event", "events")));
    }
    std::string paragraph;
    for (const std::string& sentence : sentences) {
        paragraph += (paragraph.empty() ? "" : " ") + sentence;
    }
    return paragraph;
}

}  // namespace

CaughtConnection caught_connection(const Connection& conn, int64_t mono_to_wall_ns) {
    CaughtConnection caught{.conn_id = conn.id,
                            .verdict = conn.verdict,
                            .role = conn.role,
                            .local = conn.local,
                            .remote = conn.remote,
                            .pid = conn.pid,
                            .comm = conn.comm,
                            .idle_ms = conn.close.idle_ms,
                            .how = conn.close.how,
                            .rst_reason = conn.close.rst_reason,
                            .local_fin_ns = conn.close.local_fin_ns,
                            .peer_fin_ns = conn.close.peer_fin_ns,
                            .local_rst_ns = conn.close.local_rst_ns,
                            .peer_rst_ns = conn.close.peer_rst_ns};
    for (const Request& request : conn.requests) {
        if (!caught.request && request.outcome == Outcome::Completed)
            caught.last_answered = request;
        if (!is_caught(conn.verdict, request.outcome)) continue;
        if (!caught.request) caught.request = request;
        ++caught.caught_requests;
    }
    if (conn.http2) {
        caught.streams = conn.http2->caught;
        caught.caught_requests += caught.streams.size();
        caught.local_goaway_ns = conn.http2->local_goaway_ns;
        caught.peer_goaway_ns = conn.http2->peer_goaway_ns;
    }
    const bool local_closed =
        conn.verdict == Verdict::LocalCloseRace || conn.verdict == Verdict::LocalResetInflight;
    // An HTTP/2 connection's close begins with the closer's GOAWAY, where it sent one.
    const std::optional<uint64_t> close_ns =
        local_closed
            ? earliest(caught.local_goaway_ns,
                       earliest(conn.close.local_fin_ns, conn.close.local_rst_ns))
            : earliest(caught.peer_goaway_ns,
                       earliest(conn.close.peer_fin_ns, conn.close.peer_rst_ns));
    // The caught request's time, or the first caught stream's opening (else its reset).
    std::optional<uint64_t> caught_ns;
    if (caught.request) {
        caught_ns = caught.request->request_ns;
    } else if (!caught.streams.empty()) {
        const Http2Stream& first = caught.streams.front();
        caught_ns = first.opened_ns ? first.opened_ns : first.reset_ns;
    }
    if (caught_ns && close_ns) {
        caught.request_after_close_ms =
            (static_cast<double>(*caught_ns) - static_cast<double>(*close_ns)) / 1e6;
    }
    const uint64_t when_ns = caught_ns.value_or(close_ns.value_or(conn.closed_ns.value_or(0)));
    caught.wall_ns = static_cast<int64_t>(when_ns) + mono_to_wall_ns;
    return caught;
}

// ---------------------------------------------------------------------------------------------
// GroupIndex

GroupFigures& GroupIndex::find(std::map<std::string, GroupFigures>& groups,
                               std::string_view name) {
    if (last_.name && *last_.name == name) return *last_.figures;
    const std::size_t hash = std::hash<std::string_view>{}(name);
    const std::size_t mask = slots_.size() - 1;
    for (std::size_t i = hash & mask; !slots_.empty() && slots_[i].name; i = (i + 1) & mask) {
        if (slots_[i].hash == hash && *slots_[i].name == name) {
            last_ = slots_[i];
            return *last_.figures;
        }
    }
    if (2 * (used_ + 1) > slots_.size()) {
        std::vector<Slot> old = std::exchange(slots_, std::vector<Slot>(std::max<std::size_t>(
                                                          16, 2 * slots_.size())));
        used_ = 0;
        for (const Slot& slot : old) {
            if (slot.name) insert(slot);
        }
    }
    auto& [key, figures] = *groups.try_emplace(std::string(name)).first;
    last_ = {.hash = hash, .name = &key, .figures = &figures};
    insert(last_);
    return figures;
}

void GroupIndex::insert(const Slot& slot) {
    const std::size_t mask = slots_.size() - 1;
    std::size_t i = slot.hash & mask;
    while (slots_[i].name) i = (i + 1) & mask;
    slots_[i] = slot;
    ++used_;
}

// ---------------------------------------------------------------------------------------------
// IdleHistogram

void IdleHistogram::add(double ms) {
    min_ = count_ == 0 ? ms : std::min(min_, ms);
    max_ = count_ == 0 ? ms : std::max(max_, ms);
    ++count_;
    if (!bucketed_ && exact_.size() < kExactSamples) {
        sorted_ = sorted_ && (exact_.empty() || exact_.back() <= ms);
        exact_.push_back(ms);
        return;
    }
    fold_exact_into_buckets();
    add_to_bucket(ms);
}

void IdleHistogram::fold_exact_into_buckets() {
    bucketed_ = true;
    for (const double sample : exact_) add_to_bucket(sample);
    exact_ = {};
}

int32_t IdleHistogram::bucket_of(double ms) {
    if (!(ms >= kSmallestMs)) return kTinyBucket;
    return static_cast<int32_t>(std::floor(std::log(ms) / std::log(kBucketGrowth)));
}

template <typename Visit>
void IdleHistogram::each_bucket(Visit visit) const {
    if (tiny_.count > 0) visit(kTinyBucket, tiny_);
    for (std::size_t offset = 0; offset < buckets_.size(); ++offset) {
        if (buckets_[offset].count > 0) {
            visit(first_bucket_ + static_cast<int32_t>(offset), buckets_[offset]);
        }
    }
}

void IdleHistogram::add(const IdleHistogram& other) {
    if (!other.bucketed_) {
        for (const double sample : other.exact_) add(sample);
        return;
    }
    if (other.count_ == 0) return;
    min_ = count_ == 0 ? other.min_ : std::min(min_, other.min_);
    max_ = count_ == 0 ? other.max_ : std::max(max_, other.max_);
    count_ += other.count_;
    fold_exact_into_buckets();
    other.each_bucket([this](int32_t index, const Bucket& bucket) {
        add_to_bucket(index, bucket.count, bucket.sum);
    });
}

void IdleHistogram::add_to_bucket(int32_t index, uint64_t count, double sum) {
    Bucket* bucket = &tiny_;
    if (index != kTinyBucket) {
        if (buckets_.empty()) {
            first_bucket_ = index;
        } else if (index < first_bucket_) {
            // At least doubled, as at the end: samples in descending order cost no more.
            const std::size_t added = std::max(static_cast<std::size_t>(first_bucket_ - index),
                                               buckets_.size());
            buckets_.insert(buckets_.begin(), added, Bucket{});
            first_bucket_ -= static_cast<int32_t>(added);
        }
        const auto offset = static_cast<std::size_t>(index - first_bucket_);
        if (offset >= buckets_.size()) buckets_.resize(offset + 1);
        bucket = &buckets_[offset];
    }
    bucket->count += count;
    bucket->sum += sum;
}

std::optional<double> IdleHistogram::min() const {
    if (count_ == 0) return std::nullopt;
    return min_;
}

std::optional<double> IdleHistogram::max() const {
    if (count_ == 0) return std::nullopt;
    return max_;
}

std::optional<double> IdleHistogram::percentile(double p) const {
    if (count_ == 0) return std::nullopt;
    const auto wanted = static_cast<uint64_t>(
        std::ceil(std::clamp(p, 0.0, 100.0) / 100 * static_cast<double>(count_)));
    const uint64_t rank = std::clamp<uint64_t>(wanted, 1, count_);
    // The extremes are known exactly, whatever the buckets hold.
    if (rank == 1) return min_;
    if (rank == count_) return max_;
    if (!bucketed_) {
        if (!sorted_) std::ranges::sort(exact_);
        sorted_ = true;
        return exact_[rank - 1];
    }
    uint64_t seen = 0;
    std::optional<double> found;
    each_bucket([&](int32_t, const Bucket& bucket) {
        if (found) return;
        seen += bucket.count;
        if (seen >= rank) {
            found = std::clamp(bucket.sum / static_cast<double>(bucket.count), min_, max_);
        }
    });
    return found.value_or(max_);
}

uint64_t IdleHistogram::count_below(double ms) const {
    if (!bucketed_) {
        return static_cast<uint64_t>(
            std::ranges::count_if(exact_, [ms](double sample) { return sample < ms; }));
    }
    const int32_t limit = bucket_of(ms);
    uint64_t below = 0;
    each_bucket([&](int32_t index, const Bucket& bucket) {
        const bool below_ms =
            index < limit ||
            (index == limit && bucket.sum / static_cast<double>(bucket.count) < ms);
        if (below_ms) below += bucket.count;
    });
    return below;
}

std::optional<IdleHistogram::Cluster> IdleHistogram::densest_cluster() const {
    if (count_ == 0) return std::nullopt;
    // (value, count) in ascending order: the samples, or the buckets by their mean.
    std::vector<std::pair<double, uint64_t>> values;
    if (!bucketed_) {
        if (!sorted_) std::ranges::sort(exact_);
        sorted_ = true;
        for (const double sample : exact_) values.emplace_back(sample, 1);
    } else {
        each_bucket([&](int32_t, const Bucket& bucket) {
            values.emplace_back(bucket.sum / static_cast<double>(bucket.count), bucket.count);
        });
    }
    Cluster best;
    uint64_t in_window = 0;
    std::size_t end = 0;
    for (std::size_t begin = 0; begin < values.size(); ++begin) {
        const double limit = values[begin].first * (1 + kClusterSpread);
        while (end < values.size() && values[end].first <= limit) in_window += values[end++].second;
        // Ties go to the longer idle: the timer is the longest a side waits.
        if (in_window >= best.count) {
            best = {in_window, values[begin].first, values[end - 1].first};
        }
        in_window -= values[begin].second;
    }
    return best;
}

IdleFigures idle_figures(const IdleHistogram& closes, std::optional<double> other_side_longest_ms) {
    IdleFigures figures{.closes = closes.count(),
                        .min_ms = closes.min(),
                        .p10_ms = closes.percentile(10),
                        .median_ms = closes.percentile(50),
                        .p90_ms = closes.percentile(90),
                        .max_ms = closes.max()};
    if (closes.count() == 0) figures.keeps_idle_longer_than_ms = other_side_longest_ms;
    return figures;
}

VerdictCounts& VerdictCounts::operator+=(const VerdictCounts& other) {
    for (const Verdict verdict : kAllVerdicts) (*this)[verdict] += other[verdict];
    return *this;
}

void IdleTimerCloses::count_local(double idle_ms) {
    ++local;
    longest_local_ms = std::max(longest_local_ms, idle_ms);
}

IdleTimerCloses& IdleTimerCloses::operator+=(const IdleTimerCloses& other) {
    local += other.local;
    peer += other.peer;
    longest_local_ms = std::max(longest_local_ms, other.longest_local_ms);
    return *this;
}

GroupFigures& GroupFigures::operator+=(const GroupFigures& other) {
    connections += other.connections;
    requests += other.requests;
    verdicts += other.verdicts;
    local_idle_timer_closes += other.local_idle_timer_closes;
    peer_idle_timer_closes += other.peer_idle_timer_closes;
    server_idle_timers += other.server_idle_timers;
    return *this;
}

void VerdictTimeline::add(uint64_t at_ns, Verdict verdict, uint64_t connections) {
    const uint64_t offset_ns = at_ns > origin_ns_ ? at_ns - origin_ns_ : 0;
    while (offset_ns / bucket_ns_ >= kBuckets) {
        std::vector<VerdictCounts> merged((buckets_.size() + 1) / 2);
        for (std::size_t index = 0; index < buckets_.size(); ++index) {
            merged[index / 2] += buckets_[index];
        }
        buckets_ = std::move(merged);
        bucket_ns_ *= 2;
    }
    const std::size_t index = offset_ns / bucket_ns_;
    if (buckets_.size() <= index) buckets_.resize(index + 1);
    buckets_[index][verdict] += connections;
}

void VerdictTimeline::add(const VerdictTimeline& other, int64_t offset_ns) {
    for (std::size_t index = 0; index < other.buckets_.size(); ++index) {
        const uint64_t start_ns =
            other.origin_ns_ + index * other.bucket_ns_ + static_cast<uint64_t>(offset_ns);
        for (const Verdict verdict : kAllVerdicts) {
            const uint64_t count = other.buckets_[index][verdict];
            if (count > 0) add(start_ns, verdict, count);
        }
    }
}

std::optional<double> timer_idle_ms(const Connection& conn) {
    // Only a timer tells a side's idle timeout: a close asked for, a client done with its
    // connection, a probe, a process exit or a WebSocket's close does not, nor does anything on
    // a health checker's connection. A race's close is the closer's timer whatever the late
    // request did, unless it was a shutdown's or a refusal.
    const bool race = (conn.verdict == Verdict::LocalCloseRace ||
                       conn.verdict == Verdict::PeerCloseRace) &&
                      !is_shutdown_or_refusal(conn.close.cause);
    if ((is_timer_close(conn) || race) && !conn.health_check) return conn.close.idle_ms;
    return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// TraceAnalysis, TraceAnalyzer

double TraceAnalysis::duration_s() const {
    if (summary) return summary->duration_s;
    if (last_ns <= header.start_ns) return 0;
    return static_cast<double>(last_ns - header.start_ns) / 1e9;
}

std::optional<double> TraceAnalysis::host_idle_timer_ms(const std::string& host) const {
    const auto found = local_idle_by_host.find(host);
    if (found == local_idle_by_host.end()) return std::nullopt;
    const std::optional<IdleHistogram::Cluster> cluster = found->second.densest_cluster();
    if (!cluster) return std::nullopt;
    return cluster->max_ms;
}

int64_t TraceAnalysis::end_wall_ns() const {
    const uint64_t end_ns =
        summary && summary->end_ns ? summary->end_ns : std::max(last_ns, header.start_ns);
    return static_cast<int64_t>(end_ns) + header.mono_to_wall_ns;
}

std::set<std::string> TraceAnalysis::hosts() const {
    if (sources.empty()) return {header.host};
    std::set<std::string> hosts;
    for (const TraceSource& source : sources) hosts.insert(source.host);
    return hosts;
}

uint64_t TraceAnalysis::same_host_connections() const {
    uint64_t connections = 0;
    for (const auto& [processes, figures] : by_same_host) connections += figures.connections;
    return connections;
}

uint64_t TraceAnalysis::connections_closed_after_one_answer() const {
    uint64_t connections = 0;
    for (const auto& [host, use] : keepalive_use_by_host) {
        connections += use.closed_after_one_answer;
    }
    return connections;
}

bool TraceAnalysis::keeps_no_connection_alive() const {
    return std::ranges::all_of(hosts(), [&](const std::string& host) {
        const auto use = keepalive_use_by_host.find(host);
        return use != keepalive_use_by_host.end() && use->second.kept_alive == 0 &&
               use->second.closed_after_one_answer >= kMinRequestsToConclude;
    });
}

TraceAnalyzer::TraceAnalyzer(std::string file, TraceHeader header) {
    analysis_.file = std::move(file);
    analysis_.header = std::move(header);
    analysis_.verdicts_over_time = VerdictTimeline(analysis_.header.start_ns);
}

void TraceAnalyzer::add(const Connection& conn) {
    // Most records' peers are elsewhere: counted at once (count_connection() takes in their last
    // time), without the pairer's list of stories.
    if (!peer_on_this_host(conn)) {
        return count_connection(analysis_, indexes_, conn, std::nullopt, analysis_.header);
    }
    // Of every record: the client end of a pair may be the last one seen.
    analysis_.last_ns = std::max(analysis_.last_ns, last_seen_ns(conn));
    for (const ConnectionStory& story : pairer_.add(conn)) {
        count_connection(analysis_, indexes_, story.conn, story.client_end, analysis_.header);
    }
}

void TraceAnalyzer::add(const TraceEventLine&) { ++analysis_.event_lines; }

void TraceAnalyzer::add(const TraceSummary& summary) { analysis_.summary = summary; }

namespace {

// In time order, the earliest kMaxListed of them (of several traces' lists, each its earliest).
void keep_earliest(CaughtList& list) {
    std::ranges::stable_sort(list.listed, {}, &CaughtConnection::wall_ns);
    if (list.listed.size() > CaughtList::kMaxListed) list.listed.resize(CaughtList::kMaxListed);
}

void keep_earliest_of_each(TraceAnalysis& a) {
    for (CaughtList* list :
         {&a.races, &a.shutdown_races, &a.refused_races, &a.inflight_resets, &a.process_exits,
          &a.peer_gave_up, &a.forgotten}) {
        keep_earliest(*list);
    }
}

}  // namespace

TraceAnalysis TraceAnalyzer::finish(std::vector<std::string> reader_warnings) {
    for (const ConnectionStory& story : pairer_.finish()) {
        count_connection(analysis_, indexes_, story.conn, story.client_end, analysis_.header);
    }
    keep_earliest_of_each(analysis_);
    return finish_part(std::move(reader_warnings));
}

TraceAnalysis TraceAnalyzer::finish_part(std::vector<std::string> reader_warnings) {
    for (ConnectionStory& story : pairer_.finish()) {
        analysis_.unpaired_ends.push_back(std::move(story.conn));
    }
    TraceAnalysis& a = analysis_;
    a.warnings = std::move(reader_warnings);
    if (!a.summary) {
        a.warnings.push_back(fmt::format(
            "{}: no summary line (recording cut short): lost events are unknown and connections "
            "still open at the end are missing",
            a.file));
    } else if (a.summary->lost_events > 0) {
        a.warnings.push_back(fmt::format(
            "{}: the kernel lost {} (ring buffer full): {}", a.file,
            count_of(a.summary->lost_events, "event", "events"),
            a.incomplete > 0 ? fmt::format("{} open then left out (incomplete)",
                                           count_of(a.incomplete, "connection", "connections"))
                             : std::string("some connections may be incomplete")));
    }
    if (a.opaque_connections > 0) {
        a.warnings.push_back(fmt::format(
            "{}: {} carried no readable HTTP (TLS, or another protocol): {} requests are "
            "counted by the turns of the conversation, a TLS handshake's one or two among them, "
            "so figures per 1,000 requests run low for them",
            a.file, count_of(a.opaque_connections, "connection", "connections"),
            a.opaque_connections == 1 ? "its" : "their"));
    }
    return std::move(analysis_);
}

namespace {

void read_into(TraceAnalyzer& analyzer, TraceReader& reader) {
    while (const TraceRecord* record = reader.next()) {
        std::visit([&](const auto& line) { analyzer.add(line); }, *record);
    }
}

}  // namespace

TraceAnalysis analyze_trace(TraceReader& reader, std::string file) {
    TraceAnalyzer analyzer(std::move(file), reader.header());
    read_into(analyzer, reader);
    return analyzer.finish(reader.warnings());
}

TraceAnalysis analyze_trace_part(TraceReader& reader, std::string file) {
    TraceAnalyzer analyzer(std::move(file), reader.header());
    read_into(analyzer, reader);
    return analyzer.finish_part(reader.warnings());
}

// ---------------------------------------------------------------------------------------------
// Several traces as one

namespace {

template <typename Count>
void add_counts(std::map<std::string, Count>& into, const std::map<std::string, Count>& from) {
    for (const auto& [key, count] : from) into[key] += count;
}

void add_caught(CaughtList& into, const CaughtList& from) {
    into.total += from.total;
    if (from.longest_unanswered_ms) {
        raise_to(into.longest_unanswered_ms, *from.longest_unanswered_ms);
    }
    into.listed.insert(into.listed.end(), from.listed.begin(), from.listed.end());
}

// Each distinct value of `member` over the parts, in the order first seen, joined by ", ".
std::string distinct_joined(const std::vector<TraceAnalysis>& parts,
                            std::string TraceHeader::*member) {
    std::vector<std::string_view> seen;
    std::string joined;
    for (const TraceAnalysis& part : parts) {
        const std::string& value = part.header.*member;
        if (std::ranges::find(seen, value) != seen.end()) continue;
        seen.push_back(value);
        joined += (joined.empty() ? "" : ", ") + value;
    }
    return joined;
}

// The merged analysis before any part is added: its header on the wall clock, from the earliest
// start.
TraceAnalysis merged_shell(const std::vector<TraceAnalysis>& parts) {
    const TraceAnalysis& earliest = *std::ranges::min_element(
        parts, {}, [](const TraceAnalysis& part) { return part.header.start_wall_ns(); });
    TraceAnalysis merged;
    merged.header = earliest.header;
    merged.header.host = distinct_joined(parts, &TraceHeader::host);
    merged.header.kernel = distinct_joined(parts, &TraceHeader::kernel);
    merged.header.start_ns = static_cast<uint64_t>(earliest.header.start_wall_ns());
    merged.header.mono_to_wall_ns = 0;
    merged.verdicts_over_time = VerdictTimeline(merged.header.start_ns);
    return merged;
}

void add_part(TraceAnalysis& merged, const TraceAnalysis& part) {
    TraceAnalysis& m = merged;
    m.sources.push_back({.file = part.file, .host = part.header.host,
                         .complete = part.summary.has_value()});
    m.warnings.insert(m.warnings.end(), part.warnings.begin(), part.warnings.end());
    m.connections += part.connections;
    m.incomplete += part.incomplete;
    m.requests += part.requests;
    m.opaque_connections += part.opaque_connections;
    m.event_lines += part.event_lines;
    m.last_ns = std::max(m.last_ns, static_cast<uint64_t>(part.end_wall_ns()));
    m.verdicts += part.verdicts;
    m.local_idle.add(part.local_idle);
    for (const auto& [host, idle] : part.local_idle_by_host) m.local_idle_by_host[host].add(idle);
    m.peer_idle.add(part.peer_idle);
    m.upstream_peer_idle.add(part.upstream_peer_idle);
    if (part.longest_idle_at_local_close_ms)
        raise_to(m.longest_idle_at_local_close_ms, *part.longest_idle_at_local_close_ms);
    if (part.longest_idle_at_peer_close_ms)
        raise_to(m.longest_idle_at_peer_close_ms, *part.longest_idle_at_peer_close_ms);
    for (std::size_t cause = 0; cause < m.causes.size(); ++cause) {
        m.causes[cause] += part.causes[cause];
    }
    m.health_check_connections += part.health_check_connections;
    add_counts(m.health_checkers, part.health_checkers);
    add_caught(m.races, part.races);
    add_caught(m.shutdown_races, part.shutdown_races);
    add_caught(m.refused_races, part.refused_races);
    add_caught(m.inflight_resets, part.inflight_resets);
    add_caught(m.process_exits, part.process_exits);
    add_caught(m.peer_gave_up, part.peer_gave_up);
    add_caught(m.forgotten, part.forgotten);
    add_counts(m.by_comm, part.by_comm);
    add_counts(m.by_peer, part.by_peer);
    add_counts(m.by_container, part.by_container);
    add_counts(m.by_host, part.by_host);
    add_counts(m.by_same_host, part.by_same_host);
    add_counts(m.local_idle_closers, part.local_idle_closers);
    m.http2_idle_closers.insert(part.http2_idle_closers.begin(), part.http2_idle_closers.end());
    add_counts(m.upstream_racers, part.upstream_racers);
    for (const auto& [host, use] : part.keepalive_use_by_host) {
        KeepAliveUse& merged_use = m.keepalive_use_by_host[host];
        merged_use.closed_after_one_answer += use.closed_after_one_answer;
        merged_use.kept_alive += use.kept_alive;
    }
    add_counts(m.closed_after_one_answer_by_comm, part.closed_after_one_answer_by_comm);
    for (const auto& [comm, announced] : part.announced_keepalive_by_comm) {
        note_announcement(m.announced_keepalive_by_comm, comm, announced);
    }
    for (const auto& [comm, waited_ms] : part.shortest_unanswered_ms_by_comm) {
        keep_shortest(m.shortest_unanswered_ms_by_comm, comm, waited_ms);
    }
    m.verdicts_over_time.add(part.verdicts_over_time, part.header.mono_to_wall_ns);
}

// Summed, spanning every part; nullopt unless every part has its summary.
std::optional<TraceSummary> merged_summary(const std::vector<TraceAnalysis>& parts,
                                           const TraceHeader& merged_header) {
    TraceSummary merged;
    int64_t end_wall_ns = 0;
    for (const TraceAnalysis& part : parts) {
        if (!part.summary) return std::nullopt;
        const TraceSummary& s = *part.summary;
        merged.connections += s.connections;
        merged.open_at_end += s.open_at_end;
        merged.requests += s.requests;
        merged.lost_events += s.lost_events;
        merged.events += s.events;
        add_counts(merged.by_initiator, s.by_initiator);
        add_counts(merged.by_how, s.by_how);
        add_counts(merged.verdicts, s.verdicts);
        end_wall_ns = std::max(end_wall_ns, part.end_wall_ns());
    }
    merged.end_ns = static_cast<uint64_t>(std::max<int64_t>(end_wall_ns, 0));
    merged.duration_s =
        static_cast<double>(merged.end_ns - std::min(merged.end_ns, merged_header.start_ns)) / 1e9;
    return merged;
}

}  // namespace

TraceAnalysis merge_traces(std::vector<TraceAnalysis> parts) {
    if (parts.empty()) return TraceAnalysis();
    TraceAnalysis merged = merged_shell(parts);
    // A pair split across two files of one host (rotation between its two records) meets here;
    // each host has its own pairer, so addresses reused on another host never pair. Counted
    // before the parts are added, so that its caught request is listed even when the parts'
    // lists are full (keep_earliest then keeps the earliest of all).
    HostPairer pairer;
    GroupIndexes indexes;
    const auto count_in_merged = [&](const ConnectionStory& story, const TraceHeader& header) {
        count_connection(merged, indexes, story.conn, story.client_end, header);
    };
    for (TraceAnalysis& part : parts) pairer.add(part.header, part.unpaired_ends, count_in_merged);
    pairer.finish(count_in_merged);
    for (const TraceAnalysis& part : parts) add_part(merged, part);
    keep_earliest_of_each(merged);
    merged.summary = merged_summary(parts, merged.header);
    merged.file = fmt::format("{} traces of {}", parts.size(),
                              count_of(merged.host_count(), "host", "hosts"));
    return merged;
}

// ---------------------------------------------------------------------------------------------
// Judgement

namespace {

// The peers of `traces` (the same peer in each: diff's two recordings) that never closed an
// idle connection while this host closed theirs.
OutlastingPeers outlasting_peers(const std::vector<const TraceAnalysis*>& traces) {
    std::map<std::string, IdleTimerCloses> by_peer;
    for (const TraceAnalysis* trace : traces) {
        for (const auto& [peer, figures] : trace->by_peer) {
            by_peer[peer] += figures.server_idle_timers;
        }
    }
    std::map<std::string, uint64_t> closes;
    OutlastingPeers outlasting;
    for (const auto& [peer, timers] : by_peer) {
        if (!timers.outlasting()) continue;
        closes[peer] = timers.local;
        outlasting.closes += timers.local;
        outlasting.longest_ms = std::max(outlasting.longest_ms, timers.longest_local_ms);
    }
    outlasting.count = closes.size();
    for (const auto& [peer, count] : by_count(closes)) {
        if (outlasting.named.size() == OutlastingPeers::kMaxNamed) break;
        outlasting.named.push_back(peer);
    }
    return outlasting;
}

}  // namespace

PeerTimeout resolve_peer_timeout(const std::vector<const TraceAnalysis*>& traces,
                                 std::optional<double> given_ms) {
    if (given_ms) return {*given_ms, PeerTimeoutSource::Given};
    std::optional<IdleHistogram::Cluster> timer;
    for (const TraceAnalysis* trace : traces) {
        const std::optional<IdleHistogram::Cluster> cluster = trace->peer_idle.densest_cluster();
        if (cluster && (!timer || cluster->count > timer->count ||
                        (cluster->count == timer->count && cluster->max_ms > timer->max_ms))) {
            timer = cluster;
        }
    }
    if (!timer) return {};
    const PeerTimeout observed{timer->max_ms, PeerTimeoutSource::Observed};
    // A peer that never closed one kept idle connections at least as long as the timer shows:
    // the timer is other peers'. Held to the ALB default instead, as where no peer closes; a
    // timer at or above it stands.
    OutlastingPeers outlasting = outlasting_peers(traces);
    if (outlasting.count == 0 || outlasting.longest_ms < timer->max_ms ||
        timer->max_ms >= kAlbDefaultIdleTimeoutMs) {
        return observed;
    }
    return {.source = PeerTimeoutSource::Outlasted,
            .outlasting = std::move(outlasting),
            .observed_ms = timer->max_ms};
}

namespace {

// A race, or an idle close sooner than the peer's timeout, on `host` in `trace`.
bool had_something_to_fix(const TraceAnalysis& trace, const std::string& host,
                          const PeerTimeout& peer_timeout) {
    const auto figures = trace.by_host.find(host);
    if (figures != trace.by_host.end()) {
        const VerdictCounts& v = figures->second.verdicts;
        if (v[Verdict::LocalCloseRace] + v[Verdict::PeerCloseRace] > 0) return true;
    }
    const auto idle = trace.local_idle_by_host.find(host);
    return idle != trace.local_idle_by_host.end() && idle->second.count_below(peer_timeout.ms) > 0;
}

using FixText = std::string (*)(const std::string& comm, uint64_t value_s);

// What one server calls its idle timeouts: the HTTP/1 keep-alive timeout, and the HTTP/2 idle
// timeout (the one that sends GOAWAY); nullptr where it has none we know, which gets the
// generic advice.
struct ServerSettings {
    // The names its closing thread has (comm): the process's, a setproctitle'd one ("gunicorn:
    // worke"), or a thread's own (Tomcat's "http-nio-8080-e"); "python*" is a prefix.
    std::string_view comms[4];
    FixText keepalive;
    FixText http2_idle;
    // What turns keep-alive on where it is off, if more than the timeout does.
    std::string_view keepalive_on = {};
    // How it closes a connection with its request unanswered on a timeout of its own, a
    // sentence that names the server.
    std::string_view request_timeout = {};
};

const ServerSettings kServerSettings[] = {
    {{"node", "nodejs"},
     [](const std::string& comm, uint64_t value_s) {
         return fmt::format(
             "Node.js (comm {}): set server.keepAliveTimeout = {} and "
             "server.headersTimeout = {} (milliseconds; headersTimeout must exceed "
             "keepAliveTimeout)",
             analysis_text::printable(comm), value_s * 1000, value_s * 1000 + 1000);
     },
     [](const std::string& comm, uint64_t value_s) {
         return fmt::format(
             "Node.js HTTP/2 (comm {}): the session timeout, server.setTimeout({}) on "
             "http2.createServer() (or session.setTimeout); grpc-js: "
             "grpc.max_connection_idle_ms = {} and grpc.max_connection_age_ms no shorter",
             analysis_text::printable(comm), value_s * 1000, value_s * 1000);
     }},
    {{"nginx"},
     [](const std::string&, uint64_t value_s) {
         return fmt::format("nginx (comm nginx): keepalive_timeout {}s; in the http or server block",
                            value_s);
     },
     [](const std::string&, uint64_t value_s) {
         return fmt::format(
             "nginx (comm nginx): keepalive_timeout {}s (it idles HTTP/2 connections out too); "
             "in the http or server block",
             value_s);
     }},
    {{"envoy"}, nullptr,
     [](const std::string&, uint64_t value_s) {
         return fmt::format(
             "Envoy (comm envoy): common_http_protocol_options.idle_timeout: {}s on the HTTP "
             "connection manager (and max_connection_duration no shorter)",
             value_s);
     }},
    {{"gunicorn*"},
     [](const std::string& comm, uint64_t value_s) {
         return fmt::format("Gunicorn (comm {}): --keep-alive {}", analysis_text::printable(comm),
                            value_s);
     },
     nullptr,
     "with a worker class that keeps connections alive, such as gthread (the default sync "
     "worker never does)",
     "Gunicorn's arbiter kills a worker busy on one request for longer than --timeout (30 s "
     "by default; its log says WORKER TIMEOUT), which closes that request's connection "
     "unanswered"},
    {{"uvicorn"},
     [](const std::string&, uint64_t value_s) {
         return fmt::format("uvicorn (comm uvicorn): --timeout-keep-alive {}", value_s);
     },
     nullptr},
    {{"python*"},
     [](const std::string& comm, uint64_t value_s) {
         return fmt::format(
             "Python (comm {}): Gunicorn --keep-alive {} or uvicorn "
             "--timeout-keep-alive {}, whichever serves these connections",
             analysis_text::printable(comm), value_s, value_s);
     },
     nullptr,
     "for Gunicorn with a worker class that keeps connections alive, such as gthread (the "
     "default sync worker never does)",
     "if Gunicorn serves these, its arbiter kills a worker busy on one request for longer than "
     "--timeout (30 s by default; its log says WORKER TIMEOUT), which closes that request's "
     "connection unanswered"},
    {{"puma", "ruby"},
     [](const std::string& comm, uint64_t value_s) {
         return fmt::format("Puma (comm {}): persistent_timeout {} in config/puma.rb",
                            analysis_text::printable(comm), value_s);
     },
     nullptr},
    {{"java", "http-nio*", "https-jsse*", "https-openssl*"},
     [](const std::string& comm, uint64_t value_s) {
         return fmt::format(
             "Tomcat (comm {}): keepAliveTimeout=\"{}\" on the Connector (Spring "
             "Boot: server.tomcat.keep-alive-timeout={}s)",
             analysis_text::printable(comm), value_s * 1000, value_s);
     },
     nullptr,
     "and maxKeepAliveRequests not 1 (1 turns keep-alive off; Spring Boot: "
     "server.tomcat.max-keep-alive-requests)"},
    {{"httpd", "apache2"},
     [](const std::string& comm, uint64_t value_s) {
         return fmt::format("Apache httpd (comm {}): KeepAliveTimeout {}",
                            analysis_text::printable(comm), value_s);
     },
     nullptr,
     "with KeepAlive On"},
    {{"haproxy"},
     [](const std::string&, uint64_t value_s) {
         return fmt::format("HAProxy (comm haproxy): timeout http-keep-alive {}s", value_s);
     },
     nullptr,
     "without option httpclose, which closes after each response"},
};

// The settings of the server `comm` runs, if it is one we know.
const ServerSettings* server_settings(const std::string& comm) {
    for (const ServerSettings& server : kServerSettings) {
        for (const std::string_view name : server.comms) {
            const bool prefix = name.ends_with('*');
            if (prefix ? comm.starts_with(name.substr(0, name.size() - 1))
                       : !name.empty() && comm == name) {
                return &server;
            }
        }
    }
    return nullptr;
}

std::string request_timeout_hint(const TraceAnalysis& trace) {
    // Each such server once, by its first closing process, with that process' shortest wait;
    // its timeout is whole seconds, so a shorter wait was some other close.
    std::vector<const ServerSettings*> named;
    std::string hint;
    for (const auto& [comm, shortest_ms] : trace.shortest_unanswered_ms_by_comm) {
        const ServerSettings* server = server_settings(comm);
        if (!server || server->request_timeout.empty() || shortest_ms < kRequestTimeoutMinMs ||
            std::ranges::find(named, server) != named.end()) {
            continue;
        }
        named.push_back(server);
        hint += fmt::format(
            " Also, for comm {}: {}. Its requests here had waited {} or more when their "
            "connections closed: if that is the timeout, raise it above the slowest request.",
            analysis_text::printable(comm), server->request_timeout,
            analysis_text::duration(shortest_ms));
    }
    return hint;
}

}  // namespace

std::string keepalive_fix(const std::string& comm, uint64_t value_s) {
    const ServerSettings* server = server_settings(comm);
    if (server && server->keepalive) return server->keepalive(comm, value_s);
    return fmt::format(
        "{} (comm {}): raise its idle keep-alive timeout to {} s (Go: "
        "http.Server.IdleTimeout = {} * time.Second; other servers: their "
        "keep-alive or idle timeout setting)",
        analysis_text::printable(comm), analysis_text::printable(comm), value_s, value_s);
}

std::string keepalive_on_fix(const std::string& comm, uint64_t value_s) {
    const ServerSettings* server = server_settings(comm);
    const std::string fix = keepalive_fix(comm, value_s);
    return server && !server->keepalive_on.empty()
               ? fmt::format("{}, {}", fix, server->keepalive_on)
               : fix;
}

std::string keeps_no_connection_alive_text(const TraceAnalysis& trace) {
    const HostWords host = host_words(trace);
    return fmt::format("{} keep{} no connection alive ({} ended after one request, answered with "
                       "Connection: close, and none stayed open after an answer), so the peer "
                       "has no idle connection to reuse and none can race",
                       host.object, host.verb_s,
                       count_of(trace.connections_closed_after_one_answer(), "connection",
                                "connections"));
}

std::string http2_idle_fix(const std::string& comm, uint64_t value_s) {
    const ServerSettings* server = server_settings(comm);
    if (server && server->http2_idle) return server->http2_idle(comm, value_s);
    return fmt::format(
        "{} (comm {}): raise its HTTP/2 idle timeout (the one that sends GOAWAY; grpc-go: "
        "keepalive.ServerParameters.MaxConnectionIdle) to {} s",
        analysis_text::printable(comm), analysis_text::printable(comm), value_s);
}

namespace {

// What a recording with too few requests or idle closes lacks ("N requests and M idle closes by
// either side: ..."), and how to record one that tells.
std::string too_little_to_tell(const TraceAnalysis& trace, const PeerTimeout& peer_timeout) {
    std::string text = fmt::format(
        "{} and {} by either side: too little to tell who closes first. Record for longer than "
        "the peer's idle timeout ({}) with traffic (at least {} requests), so that idle "
        "connections get closed.",
        count_of(trace.requests, "request", "requests"),
        count_of(trace.idle_timer_closes(), "idle close", "idle closes"),
        duration(peer_timeout.ms), kMinRequestsToConclude);
    // Called where no announcement is early: any there is says the same as the fix.
    for (const auto& [comm, announced] : trace.announced_keepalive_by_comm) {
        text += fmt::format(" {}, not below the peer's idle timeout: what a fix says, which an "
                            "idle close would confirm.",
                            analysis_text::announced_text(comm, announced));
    }
    return text;
}

}  // namespace

Assessment assess(const TraceAnalysis& trace, const PeerTimeout& peer_timeout) {
    Assessment a;
    a.peer_timeout = peer_timeout;
    a.races = trace.verdicts[Verdict::LocalCloseRace];
    a.upstream_races = trace.verdicts[Verdict::PeerCloseRace];
    a.inflight_resets = trace.inflight_resets.total;
    a.process_exits = trace.process_exits.total;
    a.peer_gave_up = trace.peer_gave_up.total;
    a.forgotten = trace.forgotten.total;
    a.early_idle_closes = trace.local_idle.count_below(peer_timeout.ms);
    for (const auto& [comm, announced] : trace.announced_keepalive_by_comm) {
        if (announced.below(peer_timeout.ms)) {
            a.early_announcements.emplace_back(comm, announced);
        }
    }
    const bool seen_closing_first = trace.timer_close_races() > 0 || a.early_idle_closes > 0;
    a.closes_before_peer = seen_closing_first || !a.early_announcements.empty();
    a.recommended_keepalive_s =
        static_cast<uint64_t>(std::ceil((peer_timeout.ms + kKeepAliveMarginMs) / 1000));

    const uint64_t all_races = a.races + a.upstream_races;
    // In order: ties go to the first.
    const std::pair<FailureKind, uint64_t> failures[] = {
        {FailureKind::CloseRaces, all_races},
        {FailureKind::InflightResets, a.inflight_resets},
        {FailureKind::ProcessExits, a.process_exits},
        {FailureKind::PeerGaveUp, a.peer_gave_up},
    };
    for (const auto& [kind, count] : failures) {
        if (count == 0) continue;
        if (a.dominant == FailureKind::None) {
            a.dominant = kind;
            continue;
        }
        const auto current = std::ranges::find(failures, a.dominant,
                                               &std::pair<FailureKind, uint64_t>::first);
        if (count > current->second) a.dominant = kind;
    }

    std::vector<Recommendation> lifecycle;
    if (seen_closing_first) {
        if (trace.local_idle_closers.empty())
            lifecycle.push_back(keepalive_recommendation(std::nullopt, false, a));
        for (const auto& [comm, closes] : by_count(trace.local_idle_closers)) {
            lifecycle.push_back(
                keepalive_recommendation(comm.empty() ? std::nullopt : std::optional(comm),
                                         trace.http2_idle_closers.contains(comm), a));
        }
    }
    // A process seen closing first gets its announcement in its advice; one only announcing it
    // gets advice that follows every other: it foretells races, the rest explains those seen.
    std::vector<Recommendation> announced_only;
    for (const auto& [comm, announced] : a.early_announcements) {
        const std::optional<std::string> process = comm.empty() ? std::nullopt : std::optional(comm);
        auto advised = std::ranges::find(lifecycle, process, &Recommendation::comm);
        if (advised == lifecycle.end()) {
            advised = announced_only.insert(announced_only.end(),
                                            keepalive_recommendation(process, false, a));
        }
        advised->text += " " + announcement_sentence(announced);
    }
    for (const auto& [comm, races] : by_count(trace.upstream_racers)) {
        lifecycle.push_back(
            upstream_recommendation(comm, races, trace.upstream_peer_idle, host_words(trace)));
    }
    if (a.forgotten > 0) lifecycle.push_back(pool_recommendation(trace));
    // Keep-alive off answers the lifecycle's question also beside other advice (a client that
    // gave up on a request says nothing of it).
    if (lifecycle.empty() && trace.keeps_no_connection_alive()) {
        lifecycle.push_back(keepalive_off_recommendation(trace, a));
    }
    std::vector<Recommendation> elsewhere;
    if (trace.shutdown_races.total > 0) elsewhere.push_back(drain_recommendation(trace));
    if (trace.refused_races.total > 0) elsewhere.push_back(connection_limit_recommendation(trace));
    if (a.inflight_resets > 0) elsewhere.push_back(load_recommendation(trace, a));
    if (a.process_exits > 0) {
        const auto position =
            a.dominant == FailureKind::ProcessExits ? elsewhere.begin() : elsewhere.end();
        elsewhere.insert(position, process_exit_recommendation(trace));
    }
    if (a.peer_gave_up > 0) {
        const auto position =
            a.dominant == FailureKind::PeerGaveUp ? elsewhere.begin() : elsewhere.end();
        elsewhere.insert(position, client_timeout_recommendation(a, trace, host_words(trace)));
    }
    // The dominant cause's advice first; too few in-flight resets to point at load do not put
    // a keep-alive fix second.
    const bool few_resets =
        a.dominant == FailureKind::InflightResets && a.inflight_resets < kFewInflightResets;
    const bool lifecycle_first = a.dominant == FailureKind::CloseRaces ||
                                 a.dominant == FailureKind::None ||
                                 (few_resets && !lifecycle.empty());
    std::vector<Recommendation>& first = lifecycle_first ? lifecycle : elsewhere;
    std::vector<Recommendation>& second = lifecycle_first ? elsewhere : lifecycle;
    a.recommendations = std::move(first);
    a.recommendations.insert(a.recommendations.end(), second.begin(), second.end());
    a.recommendations.insert(a.recommendations.end(), announced_only.begin(),
                             announced_only.end());
    if (a.recommendations.empty() && trace.idle_timer_closes() == 0) {
        // As verify: a host whose timer is the shorter one shows nothing wrong until one fires.
        a.recommendations.push_back(
            {.kind = RecommendationKind::RecordLonger,
             .text = "Nothing caught, but " + too_little_to_tell(trace, peer_timeout)});
    }
    if (a.recommendations.empty()) {
        a.recommendations.push_back(
            {.kind = RecommendationKind::NothingToFix,
             .text = fmt::format(
                 "Nothing to fix in the connection lifecycle: no close race, no in-flight reset, "
                 "no process exit with requests in flight, no request the peer gave up on, and no "
                 "idle close by {} sooner than the peer's idle timeout of {}.",
                 host_words(trace).object, analysis_text::peer_timeout_text(peer_timeout))});
    }
    a.conclusion = conclusion(trace, a);
    return a;
}

const char* to_string(PeerTimeoutSource source) {
    switch (source) {
        case PeerTimeoutSource::Given: return "given";
        case PeerTimeoutSource::Observed: return "observed";
        case PeerTimeoutSource::AlbDefault: return "alb_default";
        case PeerTimeoutSource::Outlasted: return "outlasted";
    }
    return "?";
}

const char* to_string(DiffConclusion conclusion) {
    switch (conclusion) {
        case DiffConclusion::Fixed: return "fixed";
        case DiffConclusion::NotFixed: return "not fixed";
        case DiffConclusion::Inconclusive: return "inconclusive";
    }
    return "?";
}


DiffResult diff_traces(const TraceAnalysis& before, const TraceAnalysis& after) {
    DiffResult result;
    // The same peer in both recordings: whichever saw it idle-close tells its timeout.
    result.peer_timeout = resolve_peer_timeout({&before, &after}, std::nullopt);
    result.before = assess(before, result.peer_timeout);
    result.after = assess(after, result.peer_timeout);
    const Assessment& b = result.before;
    const Assessment& a = result.after;
    const std::string timeout = analysis_text::peer_timeout_text(result.peer_timeout);
    const uint64_t after_idle_closes = after.idle_timer_closes();
    const HostWords before_hosts = host_words(before);
    const HostWords after_hosts = host_words(after);
    // A change is judged on the hosts recorded both times. Hosts only after are replacements
    // (instances of a fleet come and go); beyond them, a host missing after the change that had
    // something to fix before (a race, an early idle close) is data missing.
    const std::set<std::string> hosts_before = before.hosts();
    const std::set<std::string> hosts_after = after.hosts();
    std::vector<std::string> only_before;
    std::vector<std::string> only_after;
    std::ranges::set_difference(hosts_before, hosts_after, std::back_inserter(only_before));
    std::ranges::set_difference(hosts_after, hosts_before, std::back_inserter(only_after));
    std::vector<std::string> missing;
    std::ranges::copy_if(only_before, std::back_inserter(missing), [&](const std::string& host) {
        return had_something_to_fix(before, host, result.peer_timeout);
    });

    if (missing.size() > only_after.size() && !a.closes_before_peer && a.upstream_races == 0) {
        result.conclusion = DiffConclusion::Inconclusive;
        result.explanation = fmt::format(
            "The later recording holds nothing of {} {}, which the earlier one shows something "
            "to fix on: the change cannot be judged there. Record {} after the change too, or "
            "compare only the hosts recorded both times.",
            missing.size() == 1 ? "host" : "hosts",
            analysis_text::listed_names(missing, kHostsNamed), missing.size() == 1 ? "it" : "them");
        return result;
    }
    if (a.closes_before_peer || a.upstream_races > 0) {
        std::vector<std::string> remaining;
        if (after.timer_close_races() > 0) {
            remaining.push_back(count_of(after.timer_close_races(), "close race", "close races"));
        }
        if (a.upstream_races > 0) {
            remaining.push_back(
                count_of(a.upstream_races, "upstream close race", "upstream close races"));
        }
        if (a.early_idle_closes > 0) {
            remaining.push_back(
                fmt::format("{} by {} sooner than the peer's idle timeout of {} (median {})",
                            count_of(a.early_idle_closes, "idle close", "idle closes"),
                            after_hosts.object, timeout,
                            duration(*after.local_idle.percentile(50))));
        }
        for (const auto& [comm, announced] : a.early_announcements) {
            remaining.push_back(fmt::format("{}, below the peer's idle timeout of {}",
                                            analysis_text::announced_text(comm, announced),
                                            timeout));
        }
        std::string joined;
        for (const std::string& part : remaining) joined += (joined.empty() ? "" : "; ") + part;
        result.conclusion = DiffConclusion::NotFixed;
        result.explanation =
            fmt::format("After the change {} still close{} first: {}.", after_hosts.object,
                        after_hosts.verb_s, joined);
    } else if ((after.requests < kMinRequestsToConclude || after_idle_closes == 0) &&
               !after.keeps_no_connection_alive()) {
        result.conclusion = DiffConclusion::Inconclusive;
        result.explanation = "The later recording has " + too_little_to_tell(after, result.peer_timeout);
    } else if (!b.closes_before_peer && b.upstream_races == 0) {
        result.conclusion = DiffConclusion::Inconclusive;
        result.explanation = fmt::format(
            "The earlier recording shows no close race and no idle close by {} sooner "
            "than the peer's idle timeout of {}: there is nothing the change could have fixed. "
            "Record the earlier state while the problem happens.",
            before_hosts.object, timeout);
    } else {
        result.conclusion = DiffConclusion::Fixed;
        const std::string over =
            after.keeps_no_connection_alive()
                ? keeps_no_connection_alive_text(after)
                : fmt::format("over {} and {}", count_of(after.requests, "request", "requests"),
                              count_of(after_idle_closes, "idle close", "idle closes"));
        std::string announced_before;
        for (const auto& [comm, announced] : b.early_announcements) {
            announced_before += "; " + analysis_text::announced_text(comm, announced);
        }
        result.explanation = fmt::format(
            "Before: {} and {} by {} sooner than the peer's idle timeout of {}{}. After: none, "
            "{}.",
            count_of(b.races + b.upstream_races, "close race", "close races"),
            count_of(b.early_idle_closes, "idle close", "idle closes"), before_hosts.object,
            timeout, announced_before, over);
        if (a.inflight_resets > 0) {
            result.explanation +=
                fmt::format(" {} remain: not a keep-alive problem (see the report).",
                            count_of(a.inflight_resets, "in-flight reset", "in-flight resets"));
        }
    }
    if (!only_before.empty() || !only_after.empty()) {
        std::vector<std::string> parts;
        if (!only_before.empty()) {
            parts.push_back(analysis_text::listed_names(only_before, kHostsNamed) + " only before");
        }
        if (!only_after.empty()) {
            parts.push_back(analysis_text::listed_names(only_after, kHostsNamed) + " only after");
        }
        result.explanation += fmt::format(" Not the same hosts: {}.", fmt::join(parts, "; "));
    }
    return result;
}

namespace {

// "; 2 of them closed together with other idle ones (a shutdown ...)": the close races no
// keep-alive timeout made, which verify still fails (they are 502s).
std::string untimed_races_text(const TraceAnalysis& trace) {
    const auto of_them = [](uint64_t count) {
        return count == 1 ? std::string("1 of them") : fmt::format("{} of them", count);
    };
    std::string text;
    if (const uint64_t shutdown = trace.shutdown_races.total) {
        text += fmt::format("; {} closed by a server stopping (a shutdown, restart or "
                            "reload: drain before stopping)",
                            of_them(shutdown));
    }
    if (const uint64_t refused = trace.refused_races.total) {
        text += fmt::format("; {} closed as soon as it opened (a connection limit)",
                            of_them(refused));
    }
    return text;
}

}  // namespace

VerifyResult verify_trace(const TraceAnalysis& trace, std::optional<double> peer_timeout_ms) {
    VerifyResult result;
    result.peer_timeout = resolve_peer_timeout({&trace}, peer_timeout_ms);
    const Assessment a = assess(trace, result.peer_timeout);
    const HostWords host = host_words(trace);
    auto first_race = [&](Verdict verdict) -> std::string {
        for (const CaughtConnection& caught : trace.races.listed) {
            if (caught.verdict != verdict || (!caught.request && caught.streams.empty())) continue;
            const std::string client =
                caught.client_end
                    ? " (" + analysis_text::client_end_text(*caught.client_end) + ")"
                    : std::string();
            const std::string host =
                trace.host_count() > 1 ? " on host " + analysis_text::printable(caught.host)
                                       : std::string();
            const std::string first = caught.request
                                          ? analysis_text::request_line(*caught.request)
                                          : analysis_text::stream_line(caught.streams.front());
            return fmt::format("; the first: {} {} from {}{}{}", iso8601_utc(caught.wall_ns),
                               first, endpoint_text(caught.remote), host, client);
        }
        return "";
    };
    if (a.races > 0) {
        result.reasons.push_back(fmt::format(
            "{} (local_close_race): requests arrived on connections {} had just closed{}{}",
            count_of(a.races, "close race", "close races"), host.object,
            first_race(Verdict::LocalCloseRace), untimed_races_text(trace)));
    }
    if (a.upstream_races > 0) {
        result.reasons.push_back(fmt::format(
            "{} (peer_close_race): {} sent requests on upstream connections {} peer had "
            "just closed{}",
            count_of(a.upstream_races, "upstream close race", "upstream close races"),
            host.object, host.its,
            first_race(Verdict::PeerCloseRace)));
    }
    if (trace.incomplete > 0) {
        result.reasons.push_back(fmt::format(
            "{} cannot be vouched for: the kernel lost events while they were open (record "
            "again with a larger --ring-mb)",
            count_of(trace.incomplete, "incomplete connection", "incomplete connections")));
    }
    // Where the peer's timeout is assumed, the reasons held against it say how to give it.
    const std::string hint =
        result.peer_timeout.assumed()
            ? "; pass --peer-idle-timeout with the load balancer's idle timeout"
            : "";
    if (a.early_idle_closes > 0) {
        result.reasons.push_back(fmt::format(
            "{} of {} by {} came sooner than the peer's idle timeout of {}: the shortest "
            "after {}, the median after {}{}{}",
            a.early_idle_closes, count_of(trace.local_idle.count(), "idle close", "idle closes"),
            host.object, analysis_text::peer_timeout_text(result.peer_timeout),
            duration(*trace.local_idle.min()), duration(*trace.local_idle.percentile(50)),
            early_closes_by_host(trace, result.peer_timeout.ms), hint));
    }
    for (const auto& [comm, announced] : a.early_announcements) {
        result.reasons.push_back(fmt::format(
            "{} in its responses (on {}), below the peer's idle timeout of {}: it closes idle "
            "connections before the peer does{}",
            analysis_text::announced_text(comm, announced),
            count_of(announced.connections, "connection", "connections"),
            analysis_text::peer_timeout_text(result.peer_timeout), hint));
    }
    if (!result.reasons.empty()) {
        result.conclusion = VerifyConclusion::Failed;
    } else if (trace.idle_timer_closes() == 0 && !trace.keeps_no_connection_alive()) {
        // Not a pass: a recording shorter than either side's idle timeout, or without traffic,
        // shows no timer at all, and a host whose timer is the shorter one would pass. A host
        // with keep-alive off has no timer to show.
        result.conclusion = VerifyConclusion::Inconclusive;
        result.too_little = "The recording has " + too_little_to_tell(trace, result.peer_timeout);
    } else {
        result.conclusion = VerifyConclusion::Passed;
        result.keeps_no_connection_alive = trace.keeps_no_connection_alive();
    }
    return result;
}

}  // namespace closetrace
