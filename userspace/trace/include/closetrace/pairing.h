// Both ends on this host: a sidecar proxy and its application, or any loopback hop, give one TCP
// connection two `conn` records (the client's socket and the server's). The analysis pairs them
// and tells the connection once, from its server end. See docs/report-format.md, "Both ends on
// this host".
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "closetrace/model.h"

namespace closetrace {

// The client end of a connection whose server end is on this host too.
struct ClientEnd {
    uint64_t conn_id = 0;
    std::optional<uint32_t> pid;
    std::optional<std::string> comm;
};

// A connection as the analysis counts it: one record, or a same-host connection's two records
// merged into its server end's view.
struct ConnectionStory {
    Connection conn;
    std::optional<ClientEnd> client_end;  // set when both ends are on this host
};

// Whether the record's other end may be on this host: the recorder found it (`other_end`, in
// any network namespace), or the peer is visibly this host: a loopback address, or its own
// address (a connection to one of this host's addresses leaves from that address).
bool peer_on_this_host(const Connection& conn);

// The server end's record, judged again with what only the client end saw: requests the client
// sent after the server's close that the server's record lacks (a late request reset from a
// socket already written), and the reset the client received.
ConnectionStory merge_ends(Connection server, const Connection& client);

// Pairs records as they are read. A record whose peer is on this host waits for its other end:
// the mirrored addresses and ports and a lifetime that overlaps its own (a port reused later is
// another connection), and either the socket its `other_end` names (any network namespace; the
// server end as the recorder says, and alone when it could not say), or, for a trace without
// `other_end`, the same network namespace and the other role. At most kMaxHeld wait; the
// longest waiting then goes on alone, as does every one still waiting at the end.
class EndPairer {
public:
    static constexpr std::size_t kMaxHeld = 4096;

    // The stories `conn` completes, in order: none while it waits, its pair when it is the
    // second end, the record itself when its peer is elsewhere (and one waiting too long).
    std::vector<ConnectionStory> add(Connection conn);
    // The records still waiting, each alone.
    std::vector<ConnectionStory> finish();

private:
    struct Key {
        uint32_t netns = 0;
        std::string local_addr;
        uint16_t local_port = 0;
        std::string remote_addr;
        uint16_t remote_port = 0;
        // The cookies of the local and remote ends' sockets, when the recorder paired them.
        uint64_t local_cookie = 0;
        uint64_t remote_cookie = 0;
        auto operator<=>(const Key&) const = default;
    };
    struct Held {
        uint64_t arrival = 0;
        Connection conn;
    };
    using HeldMap = std::multimap<Key, Held>;

    static Key key_of(const Connection& conn, bool mirrored);
    ConnectionStory release(HeldMap::iterator held);

    HeldMap held_;
    std::map<uint64_t, HeldMap::iterator> by_arrival_;  // the longest waiting first
    uint64_t arrivals_ = 0;
};

struct TraceHeader;

// Pairs the records several traces left waiting, host by host: one host's traces share its
// monotonic clock, and a rotation may split a pair between two of its files; the same addresses
// on another host are another connection.
class HostPairer {
public:
    // Each story, with the header of the trace that places it in time.
    using OnStory = std::function<void(const ConnectionStory&, const TraceHeader&)>;

    // The records a trace of `header`'s host left waiting; `header` must outlive the pairer.
    void add(const TraceHeader& header, std::vector<Connection>& waiting, const OnStory& on_story);
    // The records still waiting, each alone, placed by its host's first trace.
    void finish(const OnStory& on_story);

private:
    std::map<std::string, EndPairer> pairers_;
    std::map<std::string, const TraceHeader*> first_header_;
};

}  // namespace closetrace
