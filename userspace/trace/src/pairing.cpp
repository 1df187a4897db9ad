#include "closetrace/pairing.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "closetrace/trace_io.h"

namespace closetrace {
namespace {

bool is_loopback(std::string_view addr) { return addr.starts_with("127.") || addr == "::1"; }

// Both sockets existed at once: a port reused after the first connection is another one.
bool lifetimes_overlap(const Connection& a, const Connection& b) {
    constexpr uint64_t kStillOpen = std::numeric_limits<uint64_t>::max();
    return a.established_ns.value_or(0) <= b.closed_ns.value_or(kStillOpen) &&
           b.established_ns.value_or(0) <= a.closed_ns.value_or(kStillOpen);
}

bool names_itself_server(const Connection& end) {
    return end.other_end && end.other_end->server == Initiator::Local;
}

// Ends the recorder paired (they name each other, which the key holds) agreeing on which one
// serves; else, from a trace without `other_end`, server and client, or one of them and an end
// open before the recording (role unknown): two ends of unknown role cannot tell which one serves.
bool ends_of_one_connection(const Connection& a, const Connection& b) {
    if (a.other_end) {
        return names_itself_server(a) != names_itself_server(b) && lifetimes_overlap(a, b);
    }
    return a.role != b.role && lifetimes_overlap(a, b);
}

bool is_server_end(const Connection& end, const Connection& other) {
    if (end.other_end) return names_itself_server(end);
    return end.role == Role::Server || other.role == Role::Client;
}

}  // namespace

bool peer_on_this_host(const Connection& conn) {
    if (conn.other_end) return true;
    const std::string_view remote = plain_address(conn.remote.addr);
    return is_loopback(remote) || remote == plain_address(conn.local.addr);
}

ConnectionStory merge_ends(Connection server, const Connection& client) {
    const bool server_saw_late_request =
        std::ranges::any_of(server.requests, [](const Request& request) {
            return request.outcome == Outcome::AfterLocalClose;
        });
    if (server.close.initiator == Initiator::Local && !server_saw_late_request) {
        bool added = false;
        for (const Request& request : client.requests) {
            if (request.outcome != Outcome::AfterPeerClose) continue;
            Request late = request;
            late.outcome = Outcome::AfterLocalClose;
            server.requests.push_back(std::move(late));
            added = true;
        }
        if (added) {
            // A late request shows the closer's timer ran (not a probe's close): the same rules
            // again, with the one fact the record does not hold.
            const CloseEvidence evidence{.owner_exiting =
                                             server.close.cause == CloseCause::ProcessExit};
            server.close.cause = classify_close(server, evidence);
            server.verdict = judge(server);
        }
    }
    // Only this host's kernel can have reset the client end: the server's socket, or a socket
    // already gone that the server's record does not show.
    if (!server.close.local_rst_ns) server.close.local_rst_ns = client.close.peer_rst_ns;
    // Events lost of either end may have changed the story.
    server.incomplete = server.incomplete || client.incomplete;
    return {std::move(server), ClientEnd{client.id, client.pid, client.comm}};
}

std::vector<ConnectionStory> EndPairer::add(Connection conn) {
    std::vector<ConnectionStory> ready;
    // Ends the recorder could not tell apart (both open before the recording, no request) are
    // not judged by a guessed server end.
    if (!peer_on_this_host(conn) || (conn.other_end && !conn.other_end->server)) {
        ready.push_back({std::move(conn), std::nullopt});
        return ready;
    }
    auto [first, last] = held_.equal_range(key_of(conn, true));
    for (auto held = first; held != last; ++held) {
        Connection& other = held->second.conn;
        if (!ends_of_one_connection(conn, other)) continue;
        ready.push_back(is_server_end(conn, other) ? merge_ends(std::move(conn), other)
                                                   : merge_ends(std::move(other), conn));
        by_arrival_.erase(held->second.arrival);
        held_.erase(held);
        return ready;
    }
    if (held_.size() == kMaxHeld) ready.push_back(release(by_arrival_.begin()->second));
    const uint64_t arrival = arrivals_++;
    Key key = key_of(conn, false);  // before conn is moved: argument order is unspecified
    const auto held = held_.emplace(std::move(key), Held{arrival, std::move(conn)});
    by_arrival_.emplace(arrival, held);
    return ready;
}

std::vector<ConnectionStory> EndPairer::finish() {
    std::vector<ConnectionStory> ready;
    while (!by_arrival_.empty()) ready.push_back(release(by_arrival_.begin()->second));
    return ready;
}

EndPairer::Key EndPairer::key_of(const Connection& conn, bool mirrored) {
    const Endpoint& local = mirrored ? conn.remote : conn.local;
    const Endpoint& remote = mirrored ? conn.local : conn.remote;
    Key key{.netns = conn.netns,
            .local_addr = std::string(plain_address(local.addr)),
            .local_port = local.port,
            .remote_addr = std::string(plain_address(remote.addr)),
            .remote_port = remote.port};
    if (conn.other_end) {
        // Any namespace: the recorder saw both sockets; the cookies make the pair its own.
        key.netns = 0;
        key.local_cookie = mirrored ? conn.other_end->cookie : conn.cookie;
        key.remote_cookie = mirrored ? conn.cookie : conn.other_end->cookie;
    }
    return key;
}

ConnectionStory EndPairer::release(HeldMap::iterator held) {
    ConnectionStory story{std::move(held->second.conn), std::nullopt};
    by_arrival_.erase(held->second.arrival);
    held_.erase(held);
    return story;
}

void HostPairer::add(const TraceHeader& header, std::vector<Connection>& waiting,
                     const OnStory& on_story) {
    first_header_.try_emplace(header.host, &header);
    EndPairer& pairer = pairers_[header.host];
    for (Connection& conn : waiting) {
        for (const ConnectionStory& story : pairer.add(std::move(conn))) on_story(story, header);
    }
}

void HostPairer::finish(const OnStory& on_story) {
    for (auto& [host, pairer] : pairers_) {
        for (const ConnectionStory& story : pairer.finish()) {
            on_story(story, *first_header_.at(host));
        }
    }
}

}  // namespace closetrace
