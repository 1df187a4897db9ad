#include "closetrace/alb_match.h"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <iterator>
#include <limits>
#include <numeric>
#include <variant>

#include <fmt/format.h>

#include "closetrace/pairing.h"
#include "closetrace/wallclock.h"

namespace closetrace {
namespace {

// A dual-stack socket shows an IPv4 peer as ::ffff:a.b.c.d; the load balancer logs a.b.c.d.
bool same_address(std::string_view a, std::string_view b) {
    return plain_address(a) == plain_address(b);
}

bool is_wildcard(std::string_view addr) {
    addr = plain_address(addr);
    return addr == "0.0.0.0" || addr == "::";
}

bool can_explain_some_error(Verdict verdict) {
    return std::ranges::any_of(kLbErrorCodes, [&](int code) {
        return std::ranges::count(verdicts_explaining(code), verdict) > 0;
    });
}

// Whether a request the trace saw can be the one the load balancer logged; `compared` says
// whether there was a request line to compare (there is none when the target speaks TLS).
bool same_request(const std::optional<LoggedRequest>& logged, const Request& seen, bool& compared) {
    compared = logged && !seen.opaque && seen.method && seen.target;
    if (!compared) return true;
    return *seen.method == logged->method && path_without_query(*seen.target) == logged->path;
}

// Maximum bipartite matching by augmenting paths (Kuhn): each line tries its candidates in the
// order given (closest first), taking a free request before displacing another line's.
class Matcher {
public:
    explicit Matcher(const std::vector<std::vector<size_t>>& candidates, size_t requests)
        : candidates_(candidates),
          owner_(requests, kNone),
          visit_stamp_(requests, 0),
          request_of_line_(candidates.size(), kNone) {}

    void assign(size_t line) {
        ++stamp_;
        try_assign(line);
    }
    // The request matched to `line`, or kNone.
    size_t request_of(size_t line) const { return request_of_line_[line]; }

    static constexpr size_t kNone = static_cast<size_t>(-1);

private:
    bool try_assign(size_t line) {
        for (size_t request : candidates_[line]) {
            if (owner_[request] == kNone) {
                link(line, request);
                return true;
            }
        }
        for (size_t request : candidates_[line]) {
            if (visit_stamp_[request] == stamp_) continue;
            visit_stamp_[request] = stamp_;
            if (try_assign(owner_[request])) {
                link(line, request);
                return true;
            }
        }
        return false;
    }

    void link(size_t line, size_t request) {
        owner_[request] = line;
        request_of_line_[line] = request;
    }

    const std::vector<std::vector<size_t>>& candidates_;
    std::vector<size_t> owner_;
    std::vector<uint64_t> visit_stamp_;
    std::vector<size_t> request_of_line_;
    uint64_t stamp_ = 0;
};

std::string plural(uint64_t count, std::string_view noun) {
    return fmt::format("{} {}{}", count, noun, count == 1 ? "" : "s");
}

// "All 12 502s are", "7 of 12 502s are", "1 of 12 502s is", "The 502 is".
std::string subject(uint64_t count, uint64_t total, int status) {
    if (total == 1) return fmt::format("The {} is", status);
    if (count == total) return fmt::format("All {} {}s are", total, status);
    return fmt::format("{} of {} {}s {}", count, total, status, count == 1 ? "is" : "are");
}

// The setting a close race on HTTP/2 points at, to hold above the load balancer's idle timeout.
constexpr std::string_view kHttp2IdleSettings =
    "the server's HTTP/2 idle timeout (Node http2 session.setTimeout, grpc-js "
    "grpc.max_connection_idle_ms and grpc.max_connection_age_ms, Envoy idle_timeout, nginx "
    "keepalive_timeout)";

// What the caught requests explaining some lines were: HTTP/2 streams; close races whose close
// was a shutdown's or a connection limit's rather than the keep-alive timer's; in-flight closes
// of a process exiting.
struct RaceKinds {
    uint64_t streams = 0;
    uint64_t shutdown = 0;  // close.cause closed_together or process_exit
    uint64_t refused = 0;
    uint64_t exits = 0;  // close.cause process_exit
};

std::string untimed_races_sentence(const RaceKinds& kinds) {
    const auto on_connections = [](uint64_t count) {
        return count == 1 ? std::string("One is on a connection")
                          : fmt::format("{} are on connections", count);
    };
    std::string sentence;
    if (kinds.shutdown > 0) {
        sentence += fmt::format(
            " {} the backend closed together with its other idle ones as it stopped (a "
            "shutdown, restart or reload, not its keep-alive timeout): deregister the target and "
            "stop the process only after the deregistration delay.",
            on_connections(kinds.shutdown));
    }
    if (kinds.refused > 0) {
        sentence += fmt::format(
            " {} the backend closed as soon as it accepted {} (a connection limit such as "
            "Node.js server.maxConnections, not its keep-alive timeout): raise the limit or add "
            "capacity.",
            on_connections(kinds.refused), kinds.refused == 1 ? "it" : "them");
    }
    return sentence;
}

std::string close_race_sentence(const std::string& who, uint64_t count, const RaceKinds& kinds) {
    const uint64_t streams = kinds.streams;
    if (kinds.shutdown + kinds.refused == count) {
        return who + " explained by close races, none of them the keep-alive timer's." +
               untimed_races_sentence(kinds);
    }
    if (streams == count) {
        return fmt::format(
            "{} explained by close races on HTTP/2: the backend's GOAWAY or close went out just "
            "as the load balancer opened a stream on the connection. Make {} longer than the "
            "load balancer's idle timeout (ALB default 60 s).",
            who, kHttp2IdleSettings);
    }
    std::string sentence =
        who +
        " explained by close races: the backend closed idle keep-alive connections just as the "
        "load balancer sent a request on them. Make the backend's keep-alive timeout longer "
        "than the load balancer's idle timeout (ALB default 60 s; Node.js: "
        "server.keepAliveTimeout, with server.headersTimeout above it).";
    if (streams > 0) {
        sentence += fmt::format(" {} on HTTP/2: there the setting is {}.",
                                streams == 1 ? std::string("One of them is")
                                             : fmt::format("{} of them are", streams),
                                kHttp2IdleSettings);
    }
    return sentence + untimed_races_sentence(kinds);
}

// `kinds`: what the `count` lines' close races were.
std::string explained_sentence(int status, Verdict verdict, uint64_t count, uint64_t total,
                               const RaceKinds& kinds) {
    const std::string who = subject(count, total, status);
    switch (verdict) {
        case Verdict::LocalCloseRace: return close_race_sentence(who, count, kinds);
        case Verdict::LocalResetInflight:
            if (kinds.exits == count) {
                return who +
                       " explained by the backend's process exiting with the request unanswered "
                       "(a crash, a kill, a deploy without draining), not by load: check why it "
                       "exited then.";
            }
            return who +
                   " explained by in-flight closes: the backend reset or closed the "
                   "connection with the request unanswered (crash, restart, aborted "
                   "handler, overload): look at the backend's health and resources then." +
                   (kinds.exits > 0
                        ? fmt::format(" {} of them came as its process exited.", kinds.exits)
                        : std::string());
        case Verdict::PeerCloseInflight:
            return who + (status == 504
                              ? " explained by the load balancer closing the connection while "
                                "it waited for the response: the backend answered too slowly "
                                "for the load balancer's idle timeout."
                              : " explained by the load balancer closing the connection with "
                                "the request unanswered after its client left: the backend "
                                "answered more slowly than the client would wait.");
        default:
            return fmt::format("{} explained by {} connections.", who, to_string(verdict));
    }
}

std::string unexplained_sentence(const TraceFacts& trace, const AlbCorrelation& result, int status,
                                 uint64_t count, uint64_t total, int64_t skew_ns) {
    const std::vector<Verdict> verdicts = verdicts_explaining(status);
    auto explains = [&](Verdict verdict) { return std::ranges::count(verdicts, verdict) > 0; };
    uint64_t caught = 0;
    for (const auto& [verdict, connections] : trace.caught_connections) {
        if (explains(verdict)) caught += connections;
    }
    const auto unmatched = std::ranges::count_if(
        result.unmatched_requests,
        [&](const CaughtRequest& caught) { return explains(caught.verdict); });
    const std::string who = subject(count, total, status);
    if (caught == 0) {
        if (status == 502) {
            return who +
                   " unexplained while the trace shows no close race or in-flight close: look "
                   "away from the connection lifecycle (target health and deregistration, "
                   "responses the load balancer cannot parse, the load balancer itself).";
        }
        return who +
               " unexplained while the trace shows no connection the load balancer closed in "
               "flight: look away from the connection lifecycle (connections the load balancer "
               "could not open: security groups, a full accept queue, target health).";
    }
    if (unmatched > 0) {
        return fmt::format(
            "{} unexplained although the trace has {} that no line matched: the "
            "clocks may differ by more than --skew ({} ms), or something between "
            "the load balancer and the backend rewrites the path.",
            who, plural(static_cast<uint64_t>(unmatched), "caught request"), skew_ns / 1'000'000);
    }
    return fmt::format(
        "{} unexplained, and every caught request in the trace already explains "
        "another line: look beyond the connection lifecycle for these (target "
        "health, the load balancer itself).",
        who);
}

std::string endpoint_list(const std::set<Endpoint>& endpoints) {
    std::string list;
    for (const Endpoint& endpoint : endpoints) {
        if (!list.empty()) list += ", ";
        list += format_host_port(endpoint);
    }
    return list.empty() ? "none" : list;
}

// A connection's caught requests (those `report` lists), of the verdicts that can explain a load
// balancer error. An incomplete connection's verdict may be wrong: it proves nothing.
void add_caught(TraceFacts& facts, const Connection& conn, const TraceHeader& header) {
    if (conn.incomplete || !can_explain_some_error(conn.verdict)) return;
    ++facts.caught_connections[conn.verdict];
    for (const Request& request : conn.requests) {
        if (!is_caught(conn.verdict, request.outcome)) continue;
        const int64_t wall_ns = static_cast<int64_t>(request.request_ns) + header.mono_to_wall_ns;
        facts.caught_requests.push_back({conn.id, conn.cookie, conn.verdict, conn.local,
                                         conn.remote, request, wall_ns, header.host,
                                         std::nullopt, conn.close.cause});
    }
    if (!conn.http2) return;
    // Its caught streams (those `report` lists), timed by their opening, else their reset; a
    // stream with neither time cannot be paired with a line.
    for (const Http2Stream& stream : conn.http2->caught) {
        const std::optional<uint64_t> when_ns =
            stream.opened_ns ? stream.opened_ns : stream.reset_ns;
        if (!when_ns) continue;
        // Named (record --http2-names): its method and path are compared with the line's.
        const bool named = stream.names == StreamNames::Decoded && stream.method && stream.path;
        Request request;
        request.opaque = !named;
        if (named) {
            request.method = stream.method;
            request.target = stream.path;
        }
        request.request_ns = *when_ns;
        request.outcome = Outcome::UnansweredAtClose;
        const int64_t wall_ns = static_cast<int64_t>(*when_ns) + header.mono_to_wall_ns;
        facts.caught_requests.push_back({conn.id, conn.cookie, conn.verdict, conn.local,
                                         conn.remote, std::move(request), wall_ns, header.host,
                                         stream, conn.close.cause});
    }
}

}  // namespace

std::optional<PortMapping> parse_port_mapping(std::string_view text) {
    const size_t equals = text.find('=');
    if (equals == std::string_view::npos) return std::nullopt;
    auto port = [](std::string_view digits) -> std::optional<uint16_t> {
        uint16_t value = 0;
        const auto [end, error] =
            std::from_chars(digits.data(), digits.data() + digits.size(), value);
        if (error != std::errc{} || end != digits.data() + digits.size() || value == 0)
            return std::nullopt;
        return value;
    };
    const std::string_view host = text.substr(0, equals);
    const std::optional<uint16_t> container_port = port(text.substr(equals + 1));
    if (!container_port) return std::nullopt;
    if (host.find(':') == std::string_view::npos) {
        const std::optional<uint16_t> host_port = port(host);
        if (!host_port) return std::nullopt;
        return PortMapping{std::nullopt, *host_port, *container_port};
    }
    const std::optional<Endpoint> host_endpoint = parse_host_port(host);
    if (!host_endpoint) return std::nullopt;
    return PortMapping{host_endpoint->addr, host_endpoint->port, *container_port};
}

bool lb_type_can_be_http2(std::string_view type) { return type == "h2" || type == "grpcs"; }

std::vector<Verdict> verdicts_explaining(int elb_status_code) {
    switch (elb_status_code) {
        case 502:
            return {Verdict::LocalCloseRace, Verdict::LocalResetInflight};
        case 504:
        case 460:
            return {Verdict::PeerCloseInflight};
        default:
            return {};
    }
}

namespace {

// `keep_unpaired`: read_trace_facts_part's.
TraceFacts read_facts(TraceReader& reader, std::string file, bool keep_unpaired) {
    TraceFacts facts;
    facts.file = std::move(file);
    const TraceHeader& header = reader.header();
    uint64_t last_ns = header.start_ns;
    std::optional<uint64_t> summary_end_ns;
    // A connection with both ends on this host is caught once, by its server end.
    EndPairer pairer;
    while (TraceRecord* record = reader.next()) {
        if (auto* conn = std::get_if<Connection>(record)) {
            last_ns = std::max(last_ns, last_seen_ns(*conn));
            // A client connection's local endpoint is an ephemeral port, never a target.
            if (conn->role != Role::Client) facts.local_endpoints.insert(conn->local);
            for (const ConnectionStory& story : pairer.add(std::move(*conn))) {
                add_caught(facts, story.conn, header);
            }
        } else if (const auto* event = std::get_if<TraceEventLine>(record)) {
            last_ns = std::max(last_ns, event->ts_ns);
        } else if (const auto* summary = std::get_if<TraceSummary>(record)) {
            summary_end_ns = summary->end_ns;
            facts.lost_events = summary->lost_events;
        }
    }
    for (ConnectionStory& story : pairer.finish()) {
        if (keep_unpaired) {
            facts.unpaired_ends.push_back(std::move(story.conn));
        } else {
            add_caught(facts, story.conn, header);
        }
    }
    facts.header = header;
    facts.hosts = {header.host};
    facts.has_summary = summary_end_ns.has_value();
    facts.start_wall_ns = header.start_wall_ns();
    facts.end_wall_ns =
        static_cast<int64_t>(summary_end_ns.value_or(last_ns)) + header.mono_to_wall_ns;
    facts.warnings = reader.warnings();
    return facts;
}

}  // namespace

TraceFacts read_trace_facts(TraceReader& reader, std::string file) {
    return read_facts(reader, std::move(file), false);
}

TraceFacts read_trace_facts_part(TraceReader& reader, std::string file) {
    return read_facts(reader, std::move(file), true);
}

TraceFacts merge_trace_facts(std::vector<TraceFacts> parts) {
    if (parts.size() == 1) return std::move(parts.front());
    TraceFacts merged;
    merged.header = parts.front().header;
    merged.has_summary = true;
    for (std::size_t index = 0; index < parts.size(); ++index) {
        TraceFacts& part = parts[index];
        merged.start_wall_ns =
            index == 0 ? part.start_wall_ns : std::min(merged.start_wall_ns, part.start_wall_ns);
        merged.end_wall_ns = std::max(merged.end_wall_ns, part.end_wall_ns);
        merged.has_summary = merged.has_summary && part.has_summary;
        merged.lost_events += part.lost_events;
        for (std::string& host : part.hosts) {
            if (std::ranges::find(merged.hosts, host) == merged.hosts.end())
                merged.hosts.push_back(std::move(host));
        }
        merged.local_endpoints.merge(part.local_endpoints);
        for (const auto& [verdict, count] : part.caught_connections)
            merged.caught_connections[verdict] += count;
        std::ranges::move(part.caught_requests, std::back_inserter(merged.caught_requests));
        std::ranges::move(part.warnings, std::back_inserter(merged.warnings));
    }
    // A same-host pair split across two of a host's files meets here, never across hosts.
    HostPairer pairer;
    const auto add_story = [&](const ConnectionStory& story, const TraceHeader& header) {
        add_caught(merged, story.conn, header);
    };
    for (TraceFacts& part : parts) pairer.add(part.header, part.unpaired_ends, add_story);
    pairer.finish(add_story);
    std::ranges::stable_sort(merged.caught_requests, {}, &CaughtRequest::wall_ns);
    merged.file = fmt::format("{} traces of {} host{}", parts.size(), merged.hosts.size(),
                              merged.hosts.size() == 1 ? "" : "s");
    return merged;
}

AlbCorrelator::AlbCorrelator(const TraceFacts& trace, std::vector<PortMapping> mappings,
                             int64_t skew_ns)
    : trace_(trace), mappings_(std::move(mappings)), skew_ns_(skew_ns) {}

bool AlbCorrelator::same_socket(const Endpoint& lb_target, const Endpoint& trace_local) const {
    for (const PortMapping& mapping : mappings_) {
        if (mapping.host_port == lb_target.port &&
            (!mapping.host_addr || same_address(*mapping.host_addr, lb_target.addr))) {
            return trace_local.port == mapping.container_port;
        }
    }
    return lb_target.port == trace_local.port &&
           (is_wildcard(trace_local.addr) || same_address(lb_target.addr, trace_local.addr));
}

bool AlbCorrelator::on_trace_endpoint(const Endpoint& lb_target) const {
    return std::ranges::any_of(trace_.local_endpoints, [&](const Endpoint& local) {
        return same_socket(lb_target, local);
    });
}

void AlbCorrelator::add(const LbLogEntry& entry, const std::string& file, uint64_t line) {
    const std::optional<int64_t> dispatch_ns = dispatch_time_ns(entry);
    const bool in_recording = dispatch_ns && *dispatch_ns >= trace_.start_wall_ns - skew_ns_ &&
                              *dispatch_ns <= trace_.end_wall_ns + skew_ns_;
    const bool on_endpoint = entry.target && on_trace_endpoint(*entry.target);
    if (on_endpoint && in_recording) ++counts_.requests_on_trace;

    const bool lb_error = entry.elb_status_code && !entry.target_status_code &&
                          !verdicts_explaining(*entry.elb_status_code).empty();
    if (!lb_error) return;
    ++counts_.lb_errors;
    if (!entry.target || !dispatch_ns) {
        ++counts_.not_sent;
        const bool during = entry.time_ns >= trace_.start_wall_ns - skew_ns_ &&
                            entry.time_ns <= trace_.end_wall_ns + skew_ns_;
        if (*entry.elb_status_code == 502 && (!entry.target || on_endpoint) && during) {
            counts_.unreached_first_ns =
                counts_.unreached == 0 ? entry.time_ns
                                       : std::min(counts_.unreached_first_ns, entry.time_ns);
            counts_.unreached_last_ns = std::max(counts_.unreached_last_ns, entry.time_ns);
            ++counts_.unreached;
        }
    } else if (!on_endpoint) {
        ++counts_.other_targets;
    } else if (!in_recording) {
        ++counts_.outside_recording;
    } else {
        ++counts_.on_trace;
        selected_.push_back({entry, file, line, *dispatch_ns});
    }
}

AlbCorrelation AlbCorrelator::finish() const {
    const std::vector<CaughtRequest>& requests = trace_.caught_requests;
    std::vector<size_t> by_time(requests.size());
    std::iota(by_time.begin(), by_time.end(), 0);
    std::ranges::sort(by_time, {}, [&](size_t i) { return requests[i].wall_ns; });

    // Each line's candidate requests, closest first.
    std::vector<std::vector<size_t>> candidates(selected_.size());
    for (size_t line = 0; line < selected_.size(); ++line) {
        const LbErrorLine& error = selected_[line];
        const std::optional<LoggedRequest> logged = parse_logged_request(error.entry.request);
        const std::vector<Verdict> verdicts = verdicts_explaining(*error.entry.elb_status_code);
        auto first = std::ranges::lower_bound(by_time, error.dispatch_ns - skew_ns_, {},
                                              [&](size_t i) { return requests[i].wall_ns; });
        std::vector<std::pair<int64_t, size_t>> found;  // |delta|, request
        for (auto it = first;
             it != by_time.end() && requests[*it].wall_ns <= error.dispatch_ns + skew_ns_; ++it) {
            const CaughtRequest& caught = requests[*it];
            bool compared = false;
            // Only an h2 or grpcs line can be a stream; an unnamed stream is not compared.
            if (std::ranges::count(verdicts, caught.verdict) == 0 ||
                !same_socket(*error.entry.target, caught.local) ||
                (caught.stream && !lb_type_can_be_http2(error.entry.type)) ||
                !same_request(logged, caught.request, compared)) {
                continue;
            }
            found.emplace_back(std::llabs(caught.wall_ns - error.dispatch_ns), *it);
        }
        std::ranges::sort(found);
        for (const auto& [distance, request] : found) candidates[line].push_back(request);
    }

    // Lines with the closest candidates choose first, so that ties in a burst resolve by time.
    std::vector<size_t> line_order(selected_.size());
    std::iota(line_order.begin(), line_order.end(), 0);
    auto closest = [&](size_t line) -> int64_t {
        if (candidates[line].empty()) return std::numeric_limits<int64_t>::max();
        return std::llabs(requests[candidates[line].front()].wall_ns - selected_[line].dispatch_ns);
    };
    std::ranges::stable_sort(line_order, {}, closest);
    Matcher matcher(candidates, requests.size());
    for (size_t line : line_order) matcher.assign(line);

    AlbCorrelation result;
    result.counts = counts_;
    for (int code : kLbErrorCodes) result.by_status[code];
    std::vector<char> request_used(requests.size(), 0);
    std::vector<size_t> time_order(selected_.size());
    std::iota(time_order.begin(), time_order.end(), 0);
    std::ranges::stable_sort(time_order, {},
                             [&](size_t line) { return selected_[line].dispatch_ns; });
    for (size_t line : time_order) {
        const LbErrorLine& error = selected_[line];
        StatusTally& tally = result.by_status[*error.entry.elb_status_code];
        ++tally.lines;
        const size_t request = matcher.request_of(line);
        if (request == Matcher::kNone) {
            ++tally.unexplained;
            result.unexplained.push_back(error);
            continue;
        }
        const CaughtRequest& caught = requests[request];
        request_used[request] = 1;
        ++tally.explained[caught.verdict];
        bool compared = false;
        same_request(parse_logged_request(error.entry.request), caught.request, compared);
        result.pairs.push_back({error, caught, caught.wall_ns - error.dispatch_ns, compared});
    }
    for (size_t i : by_time) {
        if (!request_used[i]) result.unmatched_requests.push_back(requests[i]);
    }
    return result;
}

std::vector<std::string> alb_conclusions(const TraceFacts& trace, const AlbCorrelation& result,
                                         int64_t skew_ns) {
    std::vector<std::string> sentences;
    const AlbCounts& counts = result.counts;
    uint64_t caught_connections = 0;
    for (const auto& [verdict, connections] : trace.caught_connections) {
        caught_connections += connections;
    }
    if (counts.requests_on_trace == 0) {
        sentences.push_back(fmt::format(
            "No load balancer line is for this trace's endpoints ({}) between {} and {}: check "
            "that the logs come from the load balancer in front of this host and cover the "
            "recording, and give --map HOSTPORT=CONTAINERPORT when the backend listens behind a "
            "published port.",
            endpoint_list(trace.local_endpoints), iso8601_utc(trace.start_wall_ns),
            iso8601_utc(trace.end_wall_ns)));
    } else if (counts.on_trace == 0) {
        std::string sentence = fmt::format(
            "The load balancer logged no 502, 504 or 460 for this trace's endpoints during the "
            "recording ({} to them).",
            plural(counts.requests_on_trace, "request"));
        if (caught_connections > 0) {
            sentence += fmt::format(
                " Yet the trace has {} caught in a close race or an in-flight close: the balancer "
                "may have retried those requests, or its logs do not cover them.",
                plural(caught_connections, "connection"));
        }
        sentences.push_back(std::move(sentence));
    }
    for (int status : kLbErrorCodes) {
        const StatusTally& tally = result.by_status.at(status);
        for (Verdict verdict : kAllVerdicts) {
            const auto explained = tally.explained.find(verdict);
            if (explained == tally.explained.end()) continue;
            RaceKinds kinds;
            for (const AlbPair& pair : result.pairs) {
                if (pair.request.verdict != verdict || pair.error.entry.elb_status_code != status)
                    continue;
                if (pair.request.stream) ++kinds.streams;
                const CloseCause cause = pair.request.cause;
                if (is_shutdown_close(cause)) ++kinds.shutdown;
                if (cause == CloseCause::Refused) ++kinds.refused;
                if (cause == CloseCause::ProcessExit) ++kinds.exits;
            }
            sentences.push_back(
                explained_sentence(status, verdict, explained->second, tally.lines, kinds));
        }
        if (tally.unexplained > 0) {
            sentences.push_back(unexplained_sentence(trace, result, status, tally.unexplained,
                                                     tally.lines, skew_ns));
        }
    }
    if (counts.unreached > 0) {
        const std::string when =
            counts.unreached == 1
                ? "at " + iso8601_utc(counts.unreached_first_ns)
                : fmt::format("between {} and {}", iso8601_utc(counts.unreached_first_ns),
                              iso8601_utc(counts.unreached_last_ns));
        sentences.push_back(fmt::format(
            "{} {} never reached a target (no target or no request time in the line: the load "
            "balancer could not connect to one, a target down, restarting or refusing "
            "connections): no connection in the trace can explain {}; look at the targets' "
            "health and deploys then.",
            counts.unreached == 1 ? std::string("One 502")
                                  : fmt::format("{} 502s", counts.unreached),
            when, counts.unreached == 1 ? "it" : "them"));
    }
    // With unexplained lines, their sentences already speak of the unmatched requests.
    if (counts.on_trace > 0 && result.unexplained.empty() && !result.unmatched_requests.empty()) {
        sentences.push_back(fmt::format(
            "The trace also has {} that no load balancer line matches: a balancer that retries "
            "(nginx does, for idempotent requests) hides them, or the logs do not cover them.",
            plural(result.unmatched_requests.size(), "caught request")));
    }
    if (trace.lost_events > 0) {
        sentences.push_back(fmt::format(
            "The trace lost {} (ring buffer full): some closes may be missing from it, which alone "
            "can leave lines unexplained.",
            plural(trace.lost_events, "event")));
    }
    return sentences;
}

}  // namespace closetrace
