#include "closetrace/analysis_text.h"

#include <fmt/format.h>

namespace closetrace::analysis_text {
namespace {

// Where the timeout came from, as the text says it: the JSON name but for the default, which
// the reader should know was assumed.
const char* source_wording(PeerTimeoutSource source) {
    return source == PeerTimeoutSource::AlbDefault ? "assumed: the ALB default" : to_string(source);
}

}  // namespace

std::string duration(double ms) {
    // Four significant digits from a second up: enough to tell 2.001 s from 2.010 s.
    const double magnitude = ms < 0 ? -ms : ms;
    if (magnitude >= 100'000) return fmt::format("{:.1f} s", ms / 1000);
    if (magnitude >= 10'000) return fmt::format("{:.2f} s", ms / 1000);
    if (magnitude >= 1000) return fmt::format("{:.3f} s", ms / 1000);
    return fmt::format("{:.1f} ms", ms);
}

std::string count_of(uint64_t count, std::string_view singular, std::string_view plural) {
    return fmt::format("{} {}", count, count == 1 ? singular : plural);
}

std::string peer_timeout_text(const PeerTimeout& timeout) {
    if (timeout.source != PeerTimeoutSource::Outlasted) {
        return fmt::format("{} ({})", duration(timeout.ms), source_wording(timeout.source));
    }
    return fmt::format("{} (assumed: the ALB default, as {}; other peers closed theirs after {})",
                       duration(timeout.ms), outlasting_text(timeout.outlasting),
                       duration(timeout.observed_ms.value_or(0)));
}

std::string outlasting_names(const OutlastingPeers& peers) {
    std::string names = listed_names(peers.named, peers.named.size());
    if (peers.count > peers.named.size()) {
        names += fmt::format(" and {} more", peers.count - peers.named.size());
    }
    return names;
}

std::string listed_names(const std::vector<std::string>& names, std::size_t shown) {
    std::string text;
    for (std::size_t i = 0; i < names.size() && i < shown; ++i) {
        text += (text.empty() ? "" : ", ") + printable(names[i]);
    }
    if (names.size() > shown) text += fmt::format(" and {} more", names.size() - shown);
    return text;
}

std::string outlasting_text(const OutlastingPeers& peers) {
    return fmt::format(
        "{} never closed an idle connection, and {} of {} connections were closed idle after "
        "up to {}",
        outlasting_names(peers), peers.closes, peers.count == 1 ? "its" : "their",
        duration(peers.longest_ms));
}

std::string announced_text(const std::string& comm, const AnnouncedTimeout& announced) {
    const std::string process = comm.empty() ? "a process not seen" : "comm " + printable(comm);
    return fmt::format("{} announces Keep-Alive: timeout={}", process, announced.shortest_s);
}

std::string client_end_text(const ClientEnd& client) {
    const std::string name = client.comm ? printable(*client.comm) : "a process not seen";
    return client.pid ? fmt::format("client on this host: {} (pid {})", name, *client.pid)
                      : "client on this host: " + name;
}

std::string left_out_sentence(const TraceAnalysis& trace) {
    const std::pair<CloseCause, const char*> reasons[] = {
        {CloseCause::ConnectionClose,
         "asked for by the client (Connection: close)"},
        {CloseCause::KeepaliveEnded,
         "keep-alive ended by the server (Connection: close, or a close right after its "
         "response: an HTTPS health check's Connection: close is encrypted)"},
        {CloseCause::ClosedAfterUse, "closed by the client right after use"},
        {CloseCause::Probe, "probes (no request)"},
        {CloseCause::ProcessExit, "process exits"},
        {CloseCause::ClosedTogether, "closed together with other idle ones (a shutdown)"},
        {CloseCause::Refused,
         "refused as they opened (by this host's connection limit, or connects the peer reset)"},
        {CloseCause::Upgraded, "switched protocols (101 Switching Protocols: WebSockets)"},
        {CloseCause::InFlight, "with a request in flight"},
        {CloseCause::UnreadRequest, "with a request unread"},
        {CloseCause::Forgotten, "forgotten in between"},
        {CloseCause::Unknown, "of unknown cause"},
    };
    std::string parts;
    for (const auto& [cause, reason] : reasons) {
        if (const uint64_t count = trace.with_cause(cause)) {
            parts += fmt::format("{}{} {}", parts.empty() ? "" : ", ", count, reason);
        }
    }
    if (trace.health_check_connections > 0) {
        std::string checkers;
        for (const auto& [name, count] : trace.health_checkers) {
            checkers += (checkers.empty() ? "" : ", ") + printable(name);
        }
        parts += fmt::format("{}{} from health checkers ({})", parts.empty() ? "" : "; ",
                             count_of(trace.health_check_connections, "connection", "connections"),
                             checkers);
    }
    if (trace.incomplete > 0) {
        parts += fmt::format("{}{} incomplete (events lost while open)", parts.empty() ? "" : "; ",
                             count_of(trace.incomplete, "connection", "connections"));
    }
    if (parts.empty()) return "Every close with a known idle came from an idle timer.";
    return "Left out of the idle timeouts (not an idle timer's close): " + parts + ".";
}

std::string caught_text(const CaughtConnection& caught) {
    std::string line = caught.request           ? request_line(*caught.request)
                       : !caught.streams.empty() ? stream_line(caught.streams.front())
                                                 : "-";
    if (caught.caught_requests > 1) line += fmt::format(" (+{} more)", caught.caught_requests - 1);
    return line;
}

}  // namespace closetrace::analysis_text
