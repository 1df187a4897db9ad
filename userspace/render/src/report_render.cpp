// Text and JSON renderings of report, diff and verify. The JSON members are documented in
// docs/report-format.md: keep the two in step.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <string_view>
#include <tuple>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "closetrace/analysis_text.h"
#include "closetrace/report.h"
#include "closetrace/wallclock.h"

namespace closetrace {
namespace {

using analysis_text::count_of;
using analysis_text::duration;
using analysis_text::printable;
using json = nlohmann::ordered_json;

// Groups listed by process and by peer address; the rest are summed up.
constexpr std::size_t kTopGroups = 10;

std::optional<double> per_1000_requests(uint64_t connections, uint64_t requests) {
    if (requests == 0) return std::nullopt;
    return static_cast<double>(connections) * 1000 / static_cast<double>(requests);
}

// Microseconds are the trace's precision; more digits would only be float noise.
double round_us(double ms) { return std::round(ms * 1000) / 1000; }

json optional_ms(std::optional<double> ms) {
    if (!ms) return nullptr;
    return round_us(*ms);
}

json optional_string(const std::optional<std::string>& text) {
    if (!text) return nullptr;
    return *text;
}

struct RankedGroup {
    std::string key;
    GroupFigures figures;
};

struct RankedGroups {
    std::vector<RankedGroup> top;  // most connections first (ties by key)
    uint64_t omitted_groups = 0;
    GroupFigures omitted;
};

RankedGroups rank(const std::map<std::string, GroupFigures>& groups) {
    std::vector<RankedGroup> all;
    for (const auto& [key, figures] : groups) all.push_back({key, figures});
    std::ranges::stable_sort(all, [](const RankedGroup& a, const RankedGroup& b) {
        return a.figures.connections > b.figures.connections;
    });
    RankedGroups ranked;
    for (RankedGroup& group : all) {
        if (ranked.top.size() < kTopGroups) {
            ranked.top.push_back(std::move(group));
            continue;
        }
        ++ranked.omitted_groups;
        ranked.omitted += group.figures;
    }
    return ranked;
}

const char* kind_name(RecommendationKind kind) {
    switch (kind) {
        case RecommendationKind::KeepAliveTimeout: return "keepalive_timeout";
        case RecommendationKind::UpstreamIdleTimeout: return "upstream_idle_timeout";
        case RecommendationKind::Load: return "load";
        case RecommendationKind::ProcessExit: return "process_exit";
        case RecommendationKind::Drain: return "drain";
        case RecommendationKind::ConnectionLimit: return "connection_limit";
        case RecommendationKind::ClientTimeout: return "client_timeout";
        case RecommendationKind::PoolIdleTimeout: return "pool_idle_timeout";
        case RecommendationKind::NothingToFix: return "nothing_to_fix";
        case RecommendationKind::RecordLonger: return "record_longer";
    }
    return "?";
}

const char* failure_name(FailureKind kind) {
    switch (kind) {
        case FailureKind::None: return "none";
        case FailureKind::CloseRaces: return "close_races";
        case FailureKind::InflightResets: return "inflight_resets";
        case FailureKind::ProcessExits: return "process_exits";
        case FailureKind::PeerGaveUp: return "peer_gave_up";
    }
    return "?";
}

// ---------------------------------------------------------------------------------------------
// JSON

json causes_json(const TraceAnalysis& trace) {
    json causes = json::object();
    for (const CloseCause cause : kAllCloseCauses) causes[to_string(cause)] = trace.with_cause(cause);
    return causes;
}

json verdicts_json(const VerdictCounts& counts) {
    json verdicts = json::object();
    for (const Verdict verdict : kAllVerdicts) verdicts[to_string(verdict)] = counts[verdict];
    return verdicts;
}

json idle_json(const IdleFigures& figures) {
    return {{"closes", figures.closes},
            {"min_ms", optional_ms(figures.min_ms)},
            {"p10_ms", optional_ms(figures.p10_ms)},
            {"median_ms", optional_ms(figures.median_ms)},
            {"p90_ms", optional_ms(figures.p90_ms)},
            {"max_ms", optional_ms(figures.max_ms)},
            {"keeps_idle_longer_than_ms", optional_ms(figures.keeps_idle_longer_than_ms)}};
}

json client_end_json(const std::optional<ClientEnd>& client) {
    if (!client) return nullptr;
    return {{"conn_id", client->conn_id},
            {"comm", optional_string(client->comm)},
            {"pid", client->pid ? json(*client->pid) : json(nullptr)}};
}

json streams_json(const std::vector<Http2Stream>& streams) {
    json list = json::array();
    for (const Http2Stream& stream : streams) {
        const bool named = stream.names == StreamNames::Decoded;
        list.push_back({{"id", stream.id},
                        {"fate", to_string(stream.fate)},
                        {"opened_by", to_string(stream.opened_by)},
                        {"names", named ? json{{"method", optional_string(stream.method)},
                                               {"path", optional_string(stream.path)},
                                               {"grpc_status", stream.grpc_status
                                                                   ? json(*stream.grpc_status)
                                                                   : json(nullptr)}}
                                        : json(nullptr)},
                        {"names_missing", named ? json(nullptr) : json(to_string(stream.names))}});
    }
    return list;
}

// `name_host`: the report covers several hosts.
json caught_json(const CaughtConnection& caught, bool name_host) {
    const std::optional<Request>& request = caught.request;
    json entry = {{"conn_id", caught.conn_id},
            {"verdict", to_string(caught.verdict)},
            {"role", to_string(caught.role)},
            {"time", iso8601_utc(caught.wall_ns)},
            {"wall_ns", caught.wall_ns},
            {"local", endpoint_text(caught.local)},
            {"remote", endpoint_text(caught.remote)},
            {"comm", optional_string(caught.comm)},
            {"pid", caught.pid ? json(*caught.pid) : json(nullptr)},
            {"client_end", client_end_json(caught.client_end)},
            {"method", request ? optional_string(request->method) : json(nullptr)},
            {"target", request ? optional_string(request->target) : json(nullptr)},
            {"opaque", request && request->opaque},
            {"caught_requests", caught.caught_requests},
            {"idle_ms", optional_ms(caught.idle_ms)},
            {"request_after_close_ms", optional_ms(caught.request_after_close_ms)},
            {"how", caught.how ? json(to_string(*caught.how)) : json(nullptr)},
            {"rst_reason", optional_string(caught.rst_reason)}};
    if (name_host) entry["host"] = caught.host;
    // An HTTP/2 connection's caught streams; absent for HTTP/1.
    if (!caught.streams.empty()) entry["streams"] = streams_json(caught.streams);
    return entry;
}

json caught_list_json(const CaughtList& list, bool name_hosts) {
    json listed = json::array();
    for (const CaughtConnection& caught : list.listed)
        listed.push_back(caught_json(caught, name_hosts));
    return {{"total", list.total},
            {"listed", listed},
            {"longest_unanswered_ms", optional_ms(list.longest_unanswered_ms)}};
}

// `hosts_of` (by_host): the trace whose hosts' idle timers each group also gets.
json groups_json(const std::map<std::string, GroupFigures>& groups, const char* key_name,
                 const TraceAnalysis* hosts_of = nullptr) {
    const RankedGroups ranked = rank(groups);
    json listed = json::array();
    for (const RankedGroup& group : ranked.top) {
        // An unknown process has the empty key: null, as in the trace.
        const json key = group.key.empty() ? json(nullptr) : json(group.key);
        listed.push_back({{key_name, key},
                          {"connections", group.figures.connections},
                          {"requests", group.figures.requests},
                          {"verdicts", verdicts_json(group.figures.verdicts)}});
        if (hosts_of) {
            const std::optional<double> timer_ms = hosts_of->host_idle_timer_ms(group.key);
            listed.back()["idle_timer_ms"] = timer_ms ? json(round_us(*timer_ms)) : json(nullptr);
        }
    }
    return {{"groups", listed},
            {"omitted",
             {{"groups", ranked.omitted_groups},
              {"connections", ranked.omitted.connections},
              {"requests", ranked.omitted.requests}}}};
}

json peer_timeout_json(const PeerTimeout& timeout) {
    json out = {{"ms", round_us(timeout.ms)}, {"source", to_string(timeout.source)}};
    if (timeout.source == PeerTimeoutSource::Outlasted) {
        const OutlastingPeers& peers = timeout.outlasting;
        out["outlasting_peers"] = {{"named", peers.named},
                                   {"count", peers.count},
                                   {"closes", peers.closes},
                                   {"longest_ms", round_us(peers.longest_ms)}};
        out["observed_ms"] = round_us(timeout.observed_ms.value_or(0));
    }
    return out;
}

// The traces a merged report read, in the order given.
json sources_json(const TraceAnalysis& trace) {
    json files = json::array();
    for (const TraceSource& source : trace.sources) {
        files.push_back(
            {{"file", source.file}, {"host", source.host}, {"complete", source.complete}});
    }
    return files;
}

json announced_json(const TraceAnalysis& trace, const Assessment& assessment) {
    json announced = json::array();
    for (const auto& [comm, timeout] : trace.announced_keepalive_by_comm) {
        announced.push_back(
            {{"comm", comm},
             {"timeout_s", timeout.shortest_s},
             {"connections", timeout.connections},
             {"below_peer", timeout.below(assessment.peer_timeout.ms)}});
    }
    return announced;
}

json report_json(const TraceAnalysis& trace, const Assessment& assessment) {
    json verdicts = json::object();
    for (const Verdict verdict : kAllVerdicts) {
        const uint64_t connections = trace.verdicts[verdict];
        const std::optional<double> rate = per_1000_requests(connections, trace.requests);
        verdicts[to_string(verdict)] = {{"connections", connections},
                                        {"per_1000_requests", optional_ms(rate)}};
    }
    json recommendations = json::array();
    for (const Recommendation& recommendation : assessment.recommendations) {
        recommendations.push_back(
            {{"kind", kind_name(recommendation.kind)},
             {"comm", optional_string(recommendation.comm)},
             {"value_s", recommendation.value_s ? json(*recommendation.value_s) : json(nullptr)},
             {"text", recommendation.text}});
    }
    const TraceHeader& header = trace.header;
    const bool names_hosts = trace.host_count() > 1;
    json report = {
        {"format", trace.sources.empty() ? "closetrace-report/1" : "closetrace-report/2"},
        {"file", trace.file},
        {"trace",
         {{"host", header.host},
          {"kernel", header.kernel},
          {"tool_version", header.tool_version},
          {"start_wall", header.start_wall},
          {"duration_s", round_us(trace.duration_s())},
          {"complete", trace.summary.has_value()},
          {"lost_events", trace.summary ? json(trace.summary->lost_events) : json(nullptr)},
          {"connections", trace.connections},
          {"same_host_connections", trace.same_host_connections()},
          {"incomplete_connections", trace.incomplete},
          {"requests", trace.requests},
          {"event_lines", trace.event_lines}}},
        {"verdicts", verdicts},
        {"causes", causes_json(trace)},
        {"health_checks", {{"connections", trace.health_check_connections},
                           {"by_checker", trace.health_checkers}}},
        {"idle",
         {{"this_host",
           idle_json(idle_figures(trace.local_idle, trace.longest_idle_at_peer_close_ms))},
          {"peer", idle_json(idle_figures(trace.peer_idle, trace.longest_idle_at_local_close_ms))},
          {"upstream_peer", idle_json(idle_figures(trace.upstream_peer_idle, std::nullopt))}}},
        {"peer_idle_timeout", peer_timeout_json(assessment.peer_timeout)},
        {"early_idle_closes", assessment.early_idle_closes},
        {"announced_keepalive", announced_json(trace, assessment)},
        {"closes_before_peer", assessment.closes_before_peer},
        {"dominant", failure_name(assessment.dominant)},
        {"races", caught_list_json(trace.races, names_hosts)},
        {"inflight_resets", caught_list_json(trace.inflight_resets, names_hosts)},
        {"process_exits", caught_list_json(trace.process_exits, names_hosts)},
        {"peer_gave_up", caught_list_json(trace.peer_gave_up, names_hosts)},
        {"forgotten", caught_list_json(trace.forgotten, names_hosts)},
        {"by_comm", groups_json(trace.by_comm, "comm")},
        {"by_peer", groups_json(trace.by_peer, "addr")},
        {"by_container", groups_json(trace.by_container, "container")},
        {"by_same_host", groups_json(trace.by_same_host, "processes")},
        {"recommended_keepalive_s", assessment.recommended_keepalive_s},
        {"recommendations", recommendations},
        {"conclusion", assessment.conclusion},
        {"warnings", trace.warnings},
    };
    if (!trace.sources.empty()) {
        report["files"] = sources_json(trace);
        report["by_host"] = groups_json(trace.by_host, "host", &trace);
    }
    return report;
}

// Wire bytes need not be UTF-8: replaced rather than failing the whole report.
std::string dump(const json& document) {
    return document.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

// ---------------------------------------------------------------------------------------------
// Text

std::string optional_duration(std::optional<double> ms) { return ms ? duration(*ms) : "-"; }

std::string rate_text(uint64_t connections, uint64_t requests) {
    const std::optional<double> rate = per_1000_requests(connections, requests);
    return rate ? fmt::format("{:.1f}", *rate) : "-";
}

void idle_row(std::string& out, const char* side, const IdleFigures& figures) {
    if (figures.closes == 0) {
        const std::string bound = figures.keeps_idle_longer_than_ms
                                      ? fmt::format("; keeps idle connections longer than {}",
                                                    duration(*figures.keeps_idle_longer_than_ms))
                                      : std::string();
        out += fmt::format("  {:<14} {:>6}  never idle-closed{}\n", side, 0, bound);
        return;
    }
    out += fmt::format("  {:<14} {:>6}  {:>9} {:>9} {:>9} {:>9} {:>9}\n", side, figures.closes,
                       optional_duration(figures.min_ms), optional_duration(figures.p10_ms),
                       optional_duration(figures.median_ms), optional_duration(figures.p90_ms),
                       optional_duration(figures.max_ms));
}

// `timing` says how the request stood to the close, in that list's terms.
// `name_host`: the report covers several hosts.
void caught_section(std::string& out, const char* title, const CaughtList& list,
                    const char* timing_header, bool name_host,
                    const std::function<std::string(double request_after_close_ms)>& timing) {
    out += fmt::format("\n{} ({})\n", title, list.total);
    if (list.total == 0) {
        out += "  none\n";
        return;
    }
    // As wide as the longest peer listed: an IPv6 one is longer than the usual 20.
    std::size_t peer_width = 20;
    for (const CaughtConnection& caught : list.listed) {
        peer_width = std::max(peer_width, endpoint_text(caught.remote).size());
    }
    out += fmt::format("  {:<27}  {:<{}}  {:>9}  {:>12}  {:<8}  {:<26}  {}\n",
                       "request time (UTC)", "peer", peer_width, "idle", timing_header, "comm",
                       "close", "request");
    for (const CaughtConnection& caught : list.listed) {
        std::string request = analysis_text::caught_text(caught);
        if (caught.verdict == Verdict::PeerCloseRace) request += " [upstream: peer_close_race]";
        if (caught.client_end) {
            request += " [" + analysis_text::client_end_text(*caught.client_end) + "]";
        }
        if (name_host) request += fmt::format(" [host {}]", printable(caught.host));
        // "fin, rst TCP_ABORT_ON_DATA": the close, then the reset this host sent (its reason).
        std::string close = caught.how ? to_string(*caught.how) : "-";
        if (caught.rst_reason) {
            close += (caught.how == CloseHow::Rst ? " " : ", rst ") + printable(*caught.rst_reason);
        }
        out += fmt::format(
            "  {:<27}  {:<{}}  {:>9}  {:>12}  {:<8}  {:<26}  {}\n", iso8601_utc(caught.wall_ns),
            endpoint_text(caught.remote), peer_width, optional_duration(caught.idle_ms),
            caught.request_after_close_ms ? timing(*caught.request_after_close_ms) : "-",
            printable(caught.comm.value_or("?")), close, request);
    }
    if (list.total > list.listed.size()) {
        out += fmt::format("  ... and {} more (the first {} are listed)\n",
                           list.total - list.listed.size(), list.listed.size());
    }
}

// `timer`: the group's idle timer column, where the section has one.
void group_row(std::string& out, const std::string& name, const GroupFigures& figures,
               const std::optional<std::string>& timer) {
    const VerdictCounts& v = figures.verdicts;
    out += fmt::format("  {:<20} {:>11} {:>9} {:>11} {:>10} {:>6} {:>10} {:>8}", name,
                       figures.connections, figures.requests, figures.local_idle_timer_closes,
                       figures.peer_idle_timer_closes,
                       v[Verdict::LocalCloseRace] + v[Verdict::PeerCloseRace],
                       v[Verdict::LocalResetInflight], v[Verdict::PeerCloseInflight]);
    out += timer ? fmt::format(" {:>11}\n", *timer) : "\n";
}

// `hosts_of` (By host): the trace whose hosts' idle timers make a column.
void groups_section(std::string& out, const char* title, const char* key_header,
                    const std::map<std::string, GroupFigures>& groups, const char* unknown_key,
                    const TraceAnalysis* hosts_of = nullptr) {
    const RankedGroups ranked = rank(groups);
    out += fmt::format("\n{}\n", title);
    out += fmt::format("  {:<20} {:>11} {:>9} {:>11} {:>10} {:>6} {:>10} {:>8}", key_header,
                       "connections", "requests", "local idle", "peer idle", "races", "in-flight",
                       "gave up");
    out += hosts_of ? fmt::format(" {:>11}\n", "idle timer") : "\n";
    const auto timer = [&](const std::string& key) -> std::optional<std::string> {
        if (!hosts_of) return std::nullopt;
        const std::optional<double> timer_ms = hosts_of->host_idle_timer_ms(key);
        return timer_ms ? duration(*timer_ms) : "-";
    };
    for (const RankedGroup& group : ranked.top) {
        group_row(out, group.key.empty() ? unknown_key : printable(group.key), group.figures,
                  timer(group.key));
    }
    if (ranked.omitted_groups > 0) {
        group_row(out, fmt::format("({} more)", ranked.omitted_groups), ranked.omitted,
                  hosts_of ? std::optional<std::string>("-") : std::nullopt);
    }
}

std::string race_timing(double request_after_close_ms) {
    return fmt::format("{:+.3f} ms", request_after_close_ms);
}

std::string wait_timing(double request_after_close_ms) { return duration(-request_after_close_ms); }

// The traces a merged report read.
std::string sources_text(const TraceAnalysis& trace) {
    std::string out = "Traces read:\n";
    for (const TraceSource& source : trace.sources) {
        out += fmt::format("  {}: {}{}\n", printable(source.host), printable(source.file),
                           source.complete ? "" : " (no summary: cut short)");
    }
    return out;
}

std::string report_text(const TraceAnalysis& trace, const Assessment& a,
                        const std::vector<Breakdown>& breakdowns) {
    const bool names_hosts = trace.host_count() > 1;
    std::string out = fmt::format("closetrace report: {}\n", printable(trace.file));
    std::string connections = count_of(trace.connections, "connection", "connections");
    if (const uint64_t same_host = trace.same_host_connections()) {
        connections += fmt::format(" ({} with both ends on {} host, each counted once)", same_host,
                                   names_hosts ? "one" : "this");
    }
    if (trace.incomplete > 0) connections += fmt::format(" ({} incomplete, left out)", trace.incomplete);
    out += fmt::format("{} {}, recorded from {} for {:.1f} s: {}, {}, {}.\n",
                       names_hosts ? "Hosts" : "Host", printable(trace.header.host),
                       printable(trace.header.start_wall),
                       trace.duration_s(), connections,
                       count_of(trace.requests, "request", "requests"),
                       trace.summary ? count_of(trace.lost_events(), "lost event", "lost events")
                                     : std::string("lost events unknown (no summary)"));
    if (!trace.sources.empty()) out += sources_text(trace);
    out += "\n" + a.conclusion + "\n";

    out += "\nVerdicts\n";
    out += fmt::format("  {:<22} {:>11}  {:>18}\n", "verdict", "connections", "per 1,000 requests");
    for (const Verdict verdict : kAllVerdicts) {
        out += fmt::format("  {:<22} {:>11}  {:>18}\n", to_string(verdict), trace.verdicts[verdict],
                           rate_text(trace.verdicts[verdict], trace.requests));
    }

    out += "\nIdle before the close (connections this host accepted or found open)\n";
    out += fmt::format("  {:<14} {:>6}  {:>9} {:>9} {:>9} {:>9} {:>9}\n", "side", "closes", "min",
                       "p10", "median", "p90", "max");
    idle_row(out, "this host", idle_figures(trace.local_idle, trace.longest_idle_at_peer_close_ms));
    idle_row(out, "peer", idle_figures(trace.peer_idle, trace.longest_idle_at_local_close_ms));
    if (trace.upstream_peer_idle.count() > 0) {
        idle_row(out, "upstream peer", idle_figures(trace.upstream_peer_idle, std::nullopt));
    }
    out += fmt::format("  Held against the peer's idle timeout of {}: {} by this host sooner.\n",
                       analysis_text::peer_timeout_text(a.peer_timeout),
                       count_of(a.early_idle_closes, "idle close", "idle closes"));
    for (const auto& [comm, announced] : trace.announced_keepalive_by_comm) {
        out += fmt::format("  {} (the shortest, on {}).\n",
                           analysis_text::announced_text(comm, announced),
                           count_of(announced.connections, "connection", "connections"));
    }
    out += "  " + analysis_text::left_out_sentence(trace) + "\n";

    out += "\nWhy connections closed\n";
    out += fmt::format("  {:<18} {:>11}\n", "cause", "connections");
    for (const CloseCause cause : kAllCloseCauses) {
        if (trace.with_cause(cause) > 0) {
            out += fmt::format("  {:<18} {:>11}\n", to_string(cause), trace.with_cause(cause));
        }
    }

    caught_section(out, "Close races", trace.races, "after close", names_hosts, race_timing);
    caught_section(out, "In-flight resets", trace.inflight_resets, "waited", names_hosts,
                   wait_timing);
    // Kinds that closetrace/1 traces never have: listed only when there are some.
    if (trace.process_exits.total > 0) {
        caught_section(out, "Process exits with requests in flight", trace.process_exits,
                       "waited", names_hosts, wait_timing);
    }
    caught_section(out, "Requests the peer gave up on", trace.peer_gave_up, "waited", names_hosts,
                   wait_timing);
    if (trace.forgotten.total > 0) {
        caught_section(out, "Pooled connections forgotten in between", trace.forgotten, "waited",
                       names_hosts, wait_timing);
    }

    for (const Breakdown breakdown : breakdowns) {
        switch (breakdown) {
            case Breakdown::Comm:
                groups_section(out, "By process (comm)", "comm", trace.by_comm, "(unknown)");
                break;
            case Breakdown::Peer:
                groups_section(out, "By peer address", "peer", trace.by_peer, "(unknown)");
                break;
            case Breakdown::Container:
                groups_section(out, "By container ('-': host processes)", "container",
                               trace.by_container, "-");
                break;
            case Breakdown::Host:
                groups_section(out, "By host", "host", trace.by_host, "(unknown)",
                               &trace);
                break;
        }
    }

    if (!trace.by_same_host.empty()) {
        groups_section(out, "Both ends on this host (judged by the server end)", "client -> server",
                       trace.by_same_host, "?");
    }

    out += "\nRecommendations\n";
    for (const Recommendation& recommendation : a.recommendations) {
        out += "  - " + recommendation.text + "\n";
    }
    return out;
}

void diff_row(std::string& out, const std::string& label, const std::string& before,
              const std::string& after) {
    out += fmt::format("  {:<40} {:>16} {:>16}\n", label, before, after);
}

std::string diff_text(const TraceAnalysis& before, const TraceAnalysis& after,
                      const DiffResult& result) {
    std::string out =
        fmt::format("closetrace diff: {} -> {}\n\n", printable(before.file), printable(after.file));
    out += fmt::format("Conclusion: {}. {}\n\n", to_string(result.conclusion), result.explanation);
    diff_row(out, "", "before", "after");
    auto both = [&](const std::string& label, const auto& figure) {
        diff_row(out, label, figure(before, result.before), figure(after, result.after));
    };
    both("recorded for", [](const TraceAnalysis& t, const Assessment&) {
        return fmt::format("{:.1f} s", t.duration_s());
    });
    both("connections",
         [](const TraceAnalysis& t, const Assessment&) { return std::to_string(t.connections); });
    both("requests",
         [](const TraceAnalysis& t, const Assessment&) { return std::to_string(t.requests); });
    both("lost events", [](const TraceAnalysis& t, const Assessment&) {
        return t.summary ? std::to_string(t.lost_events()) : std::string("unknown");
    });
    out += "  verdicts: connections (per 1,000 requests)\n";
    for (const Verdict verdict : kAllVerdicts) {
        both(fmt::format("  {}", to_string(verdict)),
             [verdict](const TraceAnalysis& t, const Assessment&) {
                 return fmt::format("{} ({})", t.verdicts[verdict],
                                    rate_text(t.verdicts[verdict], t.requests));
             });
    }
    out += "  idle before the close\n";
    both("  this host: closes", [](const TraceAnalysis& t, const Assessment&) {
        return std::to_string(t.local_idle.count());
    });
    both("  this host: median", [](const TraceAnalysis& t, const Assessment&) {
        return optional_duration(t.local_idle.percentile(50));
    });
    both("  this host: min", [](const TraceAnalysis& t, const Assessment&) {
        return optional_duration(t.local_idle.min());
    });
    both("  peer: closes", [](const TraceAnalysis& t, const Assessment&) {
        return std::to_string(t.peer_idle.count());
    });
    both("  peer: median", [](const TraceAnalysis& t, const Assessment&) {
        return optional_duration(t.peer_idle.percentile(50));
    });
    both("  peer: max", [](const TraceAnalysis& t, const Assessment&) {
        return optional_duration(t.peer_idle.max());
    });
    out += fmt::format("  held against the peer's idle timeout of {}\n",
                       analysis_text::peer_timeout_text(result.peer_timeout));
    both("  idle closes by this host sooner", [](const TraceAnalysis&, const Assessment& a) {
        return std::to_string(a.early_idle_closes);
    });
    both("  Keep-Alive: timeout announced (min)", [](const TraceAnalysis& t, const Assessment&) {
        const auto shortest = std::ranges::min_element(
            t.announced_keepalive_by_comm, {},
            [](const auto& entry) { return entry.second.shortest_s; });
        return shortest == t.announced_keepalive_by_comm.end()
                   ? std::string("-")
                   : fmt::format("{} s", shortest->second.shortest_s);
    });
    out += fmt::format("\nBefore: {}\n\nAfter: {}\n", result.before.conclusion,
                       result.after.conclusion);
    return out;
}

}  // namespace

std::string render_report(const TraceAnalysis& trace, const Assessment& assessment,
                          OutputFormat format, const std::vector<Breakdown>& breakdowns) {
    if (format == OutputFormat::Json) return dump(report_json(trace, assessment));
    if (format == OutputFormat::Html) return render_report_html(trace, assessment);
    return report_text(trace, assessment, breakdowns);
}

std::string render_diff(const TraceAnalysis& before, const TraceAnalysis& after,
                        const DiffResult& result, OutputFormat format) {
    if (format == OutputFormat::Text) return diff_text(before, after, result);
    if (format == OutputFormat::Html) return render_diff_html(before, after, result);
    const bool merged = !before.sources.empty() || !after.sources.empty();
    return dump({{"format", merged ? "closetrace-diff/2" : "closetrace-diff/1"},
                 {"conclusion", to_string(result.conclusion)},
                 {"explanation", result.explanation},
                 {"peer_idle_timeout", peer_timeout_json(result.peer_timeout)},
                 {"before", report_json(before, result.before)},
                 {"after", report_json(after, result.after)}});
}

namespace {

// `closetrace report` of the traces as the command line gave them ("DIR", "a.jsonl b.jsonl").
std::string report_command(const std::vector<std::string>& traces_given) {
    std::string command = "closetrace report";
    for (const std::string& trace : traces_given) command += " " + printable(trace);
    return command;
}

}  // namespace

namespace {

// Not keep-alive problems, so they do not fail verify; but nobody should miss them.
std::string other_problems(const TraceAnalysis& trace, const std::string& report) {
    // Named as the report's sections name them.
    const std::tuple<const CaughtList&, std::string_view, std::string_view> lists[] = {
        {trace.inflight_resets, "in-flight reset", "in-flight resets"},
        {trace.process_exits, "process exit with requests in flight",
         "process exits with requests in flight"},
        {trace.peer_gave_up, "request the peer gave up on", "requests the peer gave up on"},
        {trace.forgotten, "pooled connection forgotten in between",
         "pooled connections forgotten in between"},
    };
    std::vector<std::string> others;
    for (const auto& [list, singular, plural] : lists) {
        if (list.total > 0) others.push_back(count_of(list.total, singular, plural));
    }
    if (others.empty()) return "";
    return fmt::format("Not keep-alive problems, but see `{}`: {}.\n", report,
                       fmt::join(others, " and "));
}

}  // namespace

std::string render_verify(const TraceAnalysis& trace, const VerifyResult& result,
                          const std::vector<std::string>& traces_given) {
    const std::string report =
        report_command(traces_given.empty() ? std::vector{trace.file} : traces_given);
    switch (result.conclusion) {
        case VerifyConclusion::Passed: {
            const std::string why =
                result.keeps_no_connection_alive
                    ? keeps_no_connection_alive_text(trace)
                    : fmt::format("no idle close by this host sooner than the peer's idle "
                                  "timeout of {}",
                                  analysis_text::peer_timeout_text(result.peer_timeout));
            return fmt::format("closetrace verify: {}: OK: no close race, and {}; {}, {}, {} by "
                               "this host.\n",
                               printable(trace.file), why,
                               count_of(trace.connections, "connection", "connections"),
                               count_of(trace.requests, "request", "requests"),
                               count_of(trace.local_idle.count(), "idle close", "idle closes")) +
                   other_problems(trace, report);
        }
        case VerifyConclusion::Inconclusive:
            return fmt::format("closetrace verify: {}: INCONCLUSIVE\n  - {}\n",
                               printable(trace.file), result.too_little) +
                   other_problems(trace, report);
        case VerifyConclusion::Failed: break;
    }
    std::string out = fmt::format("closetrace verify: {}: FAIL\n", printable(trace.file));
    for (const std::string& reason : result.reasons) out += "  - " + reason + "\n";
    out += fmt::format("See `{}` for the fix.\n", report);
    return out;
}

}  // namespace closetrace
