#include "closetrace/tracker.h"

#include <gtest/gtest.h>

#include <sys/socket.h>

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "closetrace.h"

namespace closetrace {
namespace {

using namespace std::string_view_literals;

constexpr uint64_t kUs = 1'000;
constexpr uint64_t kMs = 1'000'000;
constexpr uint64_t kSec = 1'000'000'000;
constexpr uint64_t kEnd = 1'000 * kSec;  // end of every recording here

constexpr std::string_view kGet = "GET /health HTTP/1.1\r\nHost: backend\r\n\r\n";
constexpr std::string_view kOk = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
constexpr std::string_view kLatePost =
    "POST /pay?card=1 HTTP/1.1\r\nHost: backend\r\nContent-Length: 2\r\n\r\n{}";
constexpr std::string_view kTlsHello = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"sv;
constexpr std::string_view kTlsReply = "\x16\x03\x03\x00\x5a\x02\x00\x00\x56\x03\x03"sv;

Tuple ipv4_tuple(uint16_t local_port, uint16_t remote_port) {
    Tuple tuple;
    tuple.family = AF_INET;
    tuple.laddr = {10, 0, 0, 2};
    tuple.raddr = {10, 0, 0, 1};
    tuple.lport = local_port;
    tuple.rport = remote_port;
    return tuple;
}

// Counters and payload clocks of a socket, as the kernel snapshots them with an event.
SockSnapshot activity(uint64_t last_rx_ns, uint64_t last_tx_ns, uint32_t unread_in = 0) {
    return {.last_rx_ns = last_rx_ns,
            .last_tx_ns = last_tx_ns,
            .bytes_in = 100,
            .bytes_out = 200,
            .segs_in = 5,
            .segs_out = 4,
            .unacked_out = 0,
            .unread_in = unread_in};
}

// One socket on this host and the events the kernel reports for it.
struct Socket {
    uint64_t cookie = 11;
    Role role = Role::Server;
    Tuple tuple = ipv4_tuple(8080, 51234);
    uint32_t netns = 4026531840;

    Event event(EventKind kind, uint64_t ts_ns) const {
        Event event;
        event.kind = kind;
        event.ts_ns = ts_ns;
        event.cookie = cookie;
        event.netns = netns;
        event.tuple = tuple;
        event.role = role;
        return event;
    }

    Event state(uint64_t ts_ns, uint8_t from, uint8_t to,
                SockSnapshot snap = activity(0, 0)) const {
        Event state = event(EventKind::State, ts_ns);
        state.old_state = from;
        state.new_state = to;
        state.snap = snap;
        return state;
    }

    // The passive or active open, by role.
    Event established(uint64_t ts_ns) const {
        Event open =
            state(ts_ns, role == Role::Client ? kTcpSynSent : kTcpSynRecv, kTcpEstablished);
        open.established_ns = ts_ns;
        if (role == Role::Client) {
            open.pid = 77;
            open.comm = "nginx";
        }
        return open;
    }

    Event message(uint64_t ts_ns, Direction direction, std::string_view payload) const {
        Event message = event(EventKind::Message, ts_ns);
        message.direction = direction;
        message.payload = std::string(payload);
        message.payload_len = static_cast<uint32_t>(payload.size());
        return message;
    }

    // A message as the kernel writes it when it counts the others: with the counts of requests
    // and responses before it, and the start of the message before it.
    Event numbered(uint64_t ts_ns, Direction direction, std::string_view payload,
                   uint32_t requests_before, uint32_t responses_before,
                   uint64_t previous_ns) const {
        Event numbered = message(ts_ns, direction, payload);
        numbered.response = payload.starts_with("HTTP/");
        numbered.requests_before = requests_before;
        numbered.responses_before = responses_before;
        numbered.previous_ns = previous_ns;
        return numbered;
    }

    Event reset_received(uint64_t ts_ns) const {
        Event reset = event(EventKind::ResetReceived, ts_ns);
        reset.snap = activity(0, 0);
        return reset;
    }

    // An RST this host sent from its full socket: actively (no trigger) or answering data.
    Event reset_sent(uint64_t ts_ns, std::string reason,
                     std::string_view trigger_payload = {}) const {
        Event reset = event(EventKind::ResetSent, ts_ns);
        reset.rst_reason = std::move(reason);
        reset.sk_state = kTcpClose;
        reset.snap = activity(0, 0);
        if (!trigger_payload.empty()) {
            reset.trigger_flags = CT_TCP_PSH | CT_TCP_ACK;
            reset.payload = std::string(trigger_payload);
            reset.payload_len = static_cast<uint32_t>(trigger_payload.size());
        }
        return reset;
    }

    // The RST a time-wait socket answers a data segment with: no full socket, no snapshot.
    Event time_wait_reset(uint64_t ts_ns, std::string_view payload) const {
        Event reset = reset_sent(ts_ns, "TCP_TIMEWAIT_SOCKET", payload);
        reset.sk_state = kTcpTimeWait;
        reset.role = Role::Unknown;
        reset.snap = {};
        return reset;
    }

    // A segment for no socket at all (cookie 0), answered with RST.
    Event no_socket_reset(uint64_t ts_ns, std::string_view payload) const {
        Event reset = time_wait_reset(ts_ns, payload);
        reset.cookie = 0;
        reset.sk_state = 0;
        reset.rst_reason = "NO_SOCKET";
        return reset;
    }
};

// A server connection that answers one GET and is then closed idle by this host: its owner
// closes it (the orphaned socket goes FIN_WAIT2 -> CLOSE on the ACK of its FIN).
struct IdleServer {
    Socket socket;
    uint64_t open_ns = 1 * kSec;
    uint64_t request_ns = open_ns + 10 * kMs;
    uint64_t response_ns = request_ns + 2 * kMs;
    uint64_t fin_ns = response_ns + 5 * kSec;
    uint64_t closed_ns = fin_ns + 100 * kUs;

    std::vector<Event> until_fin() const {
        Event fin =
            socket.state(fin_ns, kTcpEstablished, kTcpFinWait1, activity(request_ns, response_ns));
        fin.pid = 4242;
        fin.comm = "node";
        return {socket.established(open_ns), socket.message(request_ns, Direction::In, kGet),
                socket.message(response_ns, Direction::Out, kOk), fin};
    }

    // Until its FIN, then data at `late_ns` on the closed socket: the kernel resets the socket
    // itself (tcp_receive_reset), closes it and answers the data with an RST (TCP_ABORT_ON_DATA).
    std::vector<Event> data_after_fin(uint64_t late_ns, std::string_view payload) const {
        std::vector<Event> events = until_fin();
        events.push_back(socket.message(late_ns, Direction::In, payload));
        events.push_back(socket.reset_received(late_ns + 10 * kUs));
        events.push_back(socket.state(late_ns + 11 * kUs, kTcpFinWait1, kTcpClose));
        events.push_back(socket.reset_sent(late_ns + 12 * kUs, "TCP_ABORT_ON_DATA", payload));
        return events;
    }

    std::vector<Event> closed() const {
        std::vector<Event> events = until_fin();
        events.push_back(socket.state(closed_ns - 1 * kUs, kTcpFinWait1, kTcpFinWait2));
        events.push_back(socket.state(closed_ns, kTcpFinWait2, kTcpClose));
        return events;
    }
};

std::vector<Connection> run(const std::vector<Event>& events, TrackerOptions options = {}) {
    ConnTracker tracker(options);
    for (const Event& event : events) tracker.on_event(event);
    return tracker.finish_all(kEnd);
}

Connection run_one(const std::vector<Event>& events, TrackerOptions options = {}) {
    std::vector<Connection> connections = run(events, options);
    EXPECT_EQ(connections.size(), 1u);
    return connections.empty() ? Connection{} : connections.front();
}

template <typename T>
std::string text(const std::optional<T>& value) {
    if (!value) return "null";
    std::ostringstream out;
    out << *value;
    return out.str();
}

// Every member of a record, to compare records whole.
std::string describe(const Connection& conn) {
    std::ostringstream out;
    out << conn.id << ' ' << conn.cookie << ' ' << conn.netns << ' ' << conn.family << ' '
        << conn.local.addr << ':' << conn.local.port << ' ' << conn.remote.addr << ':'
        << conn.remote.port << ' ' << to_string(conn.role) << ' ' << text(conn.pid) << ' '
        << text(conn.comm) << ' ' << text(conn.established_ns) << ' ' << text(conn.closed_ns) << ' '
        << conn.bytes_in << ' ' << conn.bytes_out << ' ' << conn.segs_in << ' ' << conn.segs_out
        << " close " << to_string(conn.close.initiator) << ' '
        << (conn.close.how ? to_string(*conn.close.how) : "null") << ' '
        << text(conn.close.local_fin_ns) << ' ' << text(conn.close.peer_fin_ns) << ' '
        << text(conn.close.local_rst_ns) << ' ' << text(conn.close.peer_rst_ns) << ' '
        << text(conn.close.rst_reason) << ' ' << text(conn.close.idle_ms) << " requests";
    for (const Request& request : conn.requests) {
        out << " [" << text(request.method) << ' ' << text(request.target) << ' ' << request.opaque
            << ' ' << text(request.status) << ' ' << request.request_ns << ' '
            << text(request.response_ns) << ' ' << to_string(request.outcome) << ']';
    }
    out << ' ' << to_string(conn.verdict);
    return out.str();
}

std::vector<Outcome> outcomes(const Connection& conn) {
    std::vector<Outcome> result;
    for (const Request& request : conn.requests) result.push_back(request.outcome);
    return result;
}

// --- verdicts ------------------------------------------------------------------------------

TEST(TrackerVerdict, LocalIdleClose) {
    const IdleServer server;
    const Connection conn = run_one(server.closed());
    EXPECT_EQ(conn.verdict, Verdict::LocalIdleClose);
    EXPECT_EQ(conn.close.initiator, Initiator::Local);
    EXPECT_EQ(conn.close.how, CloseHow::Fin);
    EXPECT_EQ(conn.close.local_fin_ns, server.fin_ns);
    // The ACK of our FIN alone moved the orphaned socket on: no FIN of the peer was seen.
    EXPECT_EQ(conn.close.peer_fin_ns, std::nullopt);
    EXPECT_EQ(conn.close.local_rst_ns, std::nullopt);
    EXPECT_EQ(conn.close.peer_rst_ns, std::nullopt);
    EXPECT_EQ(conn.close.rst_reason, std::nullopt);
    ASSERT_EQ(conn.requests.size(), 1u);
    EXPECT_EQ(conn.requests[0].method, "GET");
    EXPECT_EQ(conn.requests[0].target, "/health");
    EXPECT_EQ(conn.requests[0].status, 200);
    EXPECT_EQ(conn.requests[0].request_ns, server.request_ns);
    EXPECT_EQ(conn.requests[0].response_ns, server.response_ns);
    EXPECT_EQ(conn.requests[0].outcome, Outcome::Completed);
}

TEST(TrackerVerdict, PeerFinAfterOursSeenInFinWait2) {
    // shutdown() rather than close(): the socket waits in FIN_WAIT2 until the peer's FIN, which
    // is the one sequence number left unread when it goes.
    const IdleServer server;
    std::vector<Event> events = server.until_fin();
    const uint64_t peer_fin_ns = server.fin_ns + 3 * kMs;
    events.push_back(server.socket.state(server.fin_ns + 1 * kMs, kTcpFinWait1, kTcpFinWait2));
    events.push_back(server.socket.state(peer_fin_ns, kTcpFinWait2, kTcpClose, activity(0, 0, 1)));
    const Connection conn = run_one(events);
    EXPECT_EQ(conn.close.peer_fin_ns, peer_fin_ns);
    EXPECT_EQ(conn.close.initiator, Initiator::Local);
    EXPECT_EQ(conn.verdict, Verdict::LocalIdleClose);
}

TEST(TrackerVerdict, PeerIdleClose) {
    const Socket socket;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(2 * kSec, Direction::In, kGet),
        socket.message(2 * kSec + kMs, Direction::Out, kOk),
        socket.state(62 * kSec, kTcpEstablished, kTcpCloseWait),
        socket.state(62 * kSec + kMs, kTcpCloseWait, kTcpLastAck),
        socket.state(62 * kSec + 2 * kMs, kTcpLastAck, kTcpClose),
    });
    EXPECT_EQ(conn.verdict, Verdict::PeerIdleClose);
    EXPECT_EQ(conn.close.initiator, Initiator::Peer);
    EXPECT_EQ(conn.close.how, CloseHow::Fin);
    EXPECT_EQ(conn.close.peer_fin_ns, 62 * kSec);
    EXPECT_EQ(conn.close.local_fin_ns, 62 * kSec + kMs);
    EXPECT_EQ(conn.closed_ns, 62 * kSec + 2 * kMs);
    EXPECT_EQ(outcomes(conn), std::vector{Outcome::Completed});
}

TEST(TrackerVerdict, PeerCloseInflight) {
    // The balancer gave up on a request this host was still working on (the ALB's 460).
    const Socket socket;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(2 * kSec, Direction::In, kGet),
        socket.state(3 * kSec, kTcpEstablished, kTcpCloseWait),
        socket.state(4 * kSec, kTcpCloseWait, kTcpLastAck),
        socket.state(4 * kSec + kMs, kTcpLastAck, kTcpClose),
    });
    EXPECT_EQ(conn.verdict, Verdict::PeerCloseInflight);
    EXPECT_EQ(outcomes(conn), std::vector{Outcome::UnansweredAtClose});
}

TEST(TrackerVerdict, PeerReset) {
    const Socket socket;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(2 * kSec, Direction::In, kGet),
        socket.message(2 * kSec + kMs, Direction::Out, kOk),
        socket.reset_received(5 * kSec),
        socket.state(5 * kSec + 5 * kUs, kTcpEstablished, kTcpClose),
    });
    EXPECT_EQ(conn.verdict, Verdict::PeerReset);
    EXPECT_EQ(conn.close.initiator, Initiator::Peer);
    EXPECT_EQ(conn.close.how, CloseHow::Rst);
    EXPECT_EQ(conn.close.peer_rst_ns, 5 * kSec);
    EXPECT_EQ(conn.close.local_rst_ns, std::nullopt);
}

TEST(TrackerVerdict, LocalReset) {
    // SO_LINGER 0: the socket closes, then the kernel sends its RST (no trigger segment).
    const Socket socket;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(2 * kSec, Direction::In, kGet),
        socket.message(2 * kSec + kMs, Direction::Out, kOk),
        socket.state(5 * kSec, kTcpEstablished, kTcpClose),
        socket.reset_sent(5 * kSec + 13 * kUs, "TCP_ABORT_ON_CLOSE"),
    });
    EXPECT_EQ(conn.verdict, Verdict::LocalReset);
    EXPECT_EQ(conn.close.initiator, Initiator::Local);
    EXPECT_EQ(conn.close.how, CloseHow::Rst);
    EXPECT_EQ(conn.close.local_rst_ns, 5 * kSec + 13 * kUs);
    EXPECT_EQ(conn.close.rst_reason, "TCP_ABORT_ON_CLOSE");
}

TEST(TrackerVerdict, LocalResetInflightByReset) {
    const Socket socket;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(2 * kSec, Direction::In, kGet),
        socket.state(2 * kSec + 30 * kMs, kTcpEstablished, kTcpClose),
        socket.reset_sent(2 * kSec + 30 * kMs + 10 * kUs, "TCP_ABORT_ON_CLOSE"),
    });
    EXPECT_EQ(conn.verdict, Verdict::LocalResetInflight);
    EXPECT_EQ(conn.close.how, CloseHow::Rst);
    EXPECT_EQ(outcomes(conn), std::vector{Outcome::UnansweredAtClose});
}

TEST(TrackerVerdict, LocalResetInflightByFin) {
    // The owner read a request and closed without answering it.
    const Socket socket;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(2 * kSec, Direction::In, kGet),
        socket.state(3 * kSec, kTcpEstablished, kTcpFinWait1),
        socket.state(3 * kSec + kMs, kTcpFinWait1, kTcpFinWait2),
        socket.state(3 * kSec + kMs, kTcpFinWait2, kTcpClose),
    });
    EXPECT_EQ(conn.verdict, Verdict::LocalResetInflight);
    EXPECT_EQ(conn.close.how, CloseHow::Fin);
    EXPECT_EQ(outcomes(conn), std::vector{Outcome::UnansweredAtClose});
}

TEST(TrackerVerdict, OpenAtEndWithRequestInFlight) {
    const Socket socket;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(2 * kSec, Direction::In, kGet),
        socket.message(2 * kSec + kMs, Direction::Out, kOk),
        socket.message(3 * kSec, Direction::In, kGet),
    });
    EXPECT_EQ(conn.verdict, Verdict::Open);
    EXPECT_EQ(conn.close.initiator, Initiator::Unknown);
    EXPECT_EQ(conn.close.how, std::nullopt);
    EXPECT_EQ(conn.closed_ns, std::nullopt);
    EXPECT_EQ(outcomes(conn), (std::vector{Outcome::Completed, Outcome::InFlight}));
}

TEST(TrackerVerdict, SocketGoneWithNoCloseSeenIsOpenWithUnknownInitiator) {
    // No FIN and no RST on record (events lost, or an abort on a kernel that does not trace
    // active resets): a side would be a guess, so `open`, with closed_ns saying it is gone.
    const Socket socket;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(2 * kSec, Direction::In, kGet),
        socket.state(3 * kSec, kTcpEstablished, kTcpClose),
    });
    EXPECT_EQ(conn.verdict, Verdict::Open);
    EXPECT_EQ(conn.close.initiator, Initiator::Unknown);
    EXPECT_EQ(conn.close.how, std::nullopt);
    EXPECT_EQ(conn.close.idle_ms, std::nullopt);
    EXPECT_EQ(conn.closed_ns, 3 * kSec);
    EXPECT_EQ(outcomes(conn), std::vector{Outcome::UnansweredAtClose});
}

// --- the close race ------------------------------------------------------------------------

TEST(TrackerCloseRace, LateRequestSeenByIngressThenResetAsDataOnClosedSocket) {
    // The request reaches the socket in FIN_WAIT1.
    const IdleServer server;
    const uint64_t late_ns = server.fin_ns + 300 * kUs;

    const Connection conn = run_one(server.data_after_fin(late_ns, kLatePost));
    EXPECT_EQ(conn.verdict, Verdict::LocalCloseRace);
    EXPECT_EQ(conn.close.initiator, Initiator::Local);
    EXPECT_EQ(conn.close.how, CloseHow::Fin);
    EXPECT_EQ(conn.close.peer_rst_ns, std::nullopt) << "the kernel's own reset is not the peer's";
    EXPECT_EQ(conn.close.local_rst_ns, late_ns + 12 * kUs);
    EXPECT_EQ(conn.close.rst_reason, "TCP_ABORT_ON_DATA");
    ASSERT_EQ(conn.requests.size(), 2u) << "no duplicate of the late request";
    EXPECT_EQ(conn.requests[1].method, "POST");
    EXPECT_EQ(conn.requests[1].target, "/pay");
    EXPECT_EQ(conn.requests[1].request_ns, late_ns);
    EXPECT_EQ(conn.requests[1].status, std::nullopt);
    EXPECT_EQ(conn.requests[1].outcome, Outcome::AfterLocalClose);
}

TEST(TrackerCloseRace, LateRequestOnlyInTimeWaitReset) {
    // The socket is already a time-wait socket: no ingress message, only the RST's trigger.
    const IdleServer server;
    std::vector<Event> events = server.closed();
    const uint64_t late_ns = server.closed_ns + 700 * kMs;
    events.push_back(server.socket.time_wait_reset(late_ns, kLatePost));

    const Connection conn = run_one(events);
    EXPECT_EQ(conn.verdict, Verdict::LocalCloseRace);
    EXPECT_EQ(conn.close.how, CloseHow::Fin);
    EXPECT_EQ(conn.close.local_rst_ns, late_ns);
    EXPECT_EQ(conn.close.rst_reason, "TCP_TIMEWAIT_SOCKET");
    ASSERT_EQ(conn.requests.size(), 2u);
    EXPECT_EQ(conn.requests[1].method, "POST");
    EXPECT_EQ(conn.requests[1].request_ns, late_ns);
    EXPECT_EQ(conn.requests[1].outcome, Outcome::AfterLocalClose);
}

// A TLS 1.2 close_notify alert as it travels: type 21, version 3.3, 26 bytes sealed.
const std::string kTlsCloseNotify =
    std::string("\x15\x03\x03\x00\x1a", 5) + std::string(26, '\x5c');

TEST(TrackerTlsClose, TheClientsCloseNotifyAfterTheServersFinIsNoLateRequest) {
    // The client answers the server's idle close with its own close_notify, which reaches the
    // closed socket (TCP_ABORT_ON_DATA), or its time-wait socket later.
    const IdleServer server;
    const uint64_t alert_ns = server.fin_ns + 300 * kUs;
    std::vector<Event> events = server.data_after_fin(alert_ns, kTlsCloseNotify);
    events.push_back(server.socket.time_wait_reset(alert_ns + 700 * kMs, kTlsCloseNotify));

    const Connection conn = run_one(events);
    EXPECT_EQ(conn.verdict, Verdict::LocalIdleClose);
    EXPECT_EQ(conn.close.cause, CloseCause::IdleTimer);
    ASSERT_EQ(conn.requests.size(), 1u) << "the alert is no request";
    EXPECT_EQ(conn.requests[0].outcome, Outcome::Completed);
}

// The client closes at the TLS layer after 5 s idle (an ALB's idle timeout); the server closes
// its socket when it reads that, and its FIN may go before the client's: the client closed.
TEST(TrackerTlsClose, ThePeersCloseNotifyBeforeAnyFinIsThePeersClose) {
    const IdleServer server;
    const Socket& socket = server.socket;
    const uint64_t alert_ns = server.fin_ns - 50 * kUs;
    std::vector<Event> events = server.until_fin();
    events.insert(events.end() - 1, socket.message(alert_ns, Direction::In, kTlsCloseNotify));

    const Connection conn = run_one(events);
    EXPECT_EQ(conn.close.initiator, Initiator::Peer);
    EXPECT_EQ(conn.close.how, CloseHow::Fin);
    EXPECT_EQ(conn.close.cause, CloseCause::IdleTimer);
    EXPECT_NEAR(*conn.close.idle_ms, 4'999.95, 0.001);  // at the alert, not at the FIN
    EXPECT_EQ(conn.verdict, Verdict::PeerIdleClose);
    ASSERT_EQ(conn.requests.size(), 1u);
    EXPECT_EQ(conn.requests[0].outcome, Outcome::Completed);
}

// nginx's idle close over TLS: its close_notify, which the balancer answers with its own
// close_notify and a FIN (or an RST) before nginx's FIN leaves: nginx closed first.
TEST(TrackerTlsClose, ThisHostsCloseNotifyBeforeAnyFinIsItsClose) {
    const Socket socket;
    const uint64_t alert_ns = 4 * kSec;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(2 * kSec, Direction::In, kGet),
        socket.message(2 * kSec + kMs, Direction::Out, kOk),
        socket.message(alert_ns, Direction::Out, kTlsCloseNotify),
        socket.message(alert_ns + 130 * kUs, Direction::In, kTlsCloseNotify),
        socket.state(alert_ns + 130 * kUs, kTcpEstablished, kTcpCloseWait,
                     activity(2 * kSec, 2 * kSec + kMs)),
        socket.state(alert_ns + 200 * kUs, kTcpCloseWait, kTcpLastAck,
                     activity(2 * kSec, 2 * kSec + kMs)),
    });
    EXPECT_EQ(conn.close.initiator, Initiator::Local);
    EXPECT_EQ(conn.close.how, CloseHow::Fin);
    EXPECT_EQ(conn.close.cause, CloseCause::IdleTimer);
    EXPECT_NEAR(*conn.close.idle_ms, 1'999.0, 0.001);
    EXPECT_EQ(conn.verdict, Verdict::LocalIdleClose);
}

TEST(TrackerTlsClose, TheClientsCloseNotifyLeftUnreadAtTheServersAbortIsNoRequest) {
    // The server's idle timer sends its close_notify; the client's arrives, and the server
    // closes with it unread: the kernel resets the connection (TCP_ABORT_ON_CLOSE).
    const Socket socket;
    Event abort = socket.state(4 * kSec + 20 * kUs, kTcpEstablished, kTcpClose,
                               activity(2 * kSec, 2 * kSec + kMs, 31));
    abort.by_owner = true;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(2 * kSec, Direction::In, kGet),
        socket.message(2 * kSec + kMs, Direction::Out, kOk),
        socket.message(4 * kSec, Direction::Out, kTlsCloseNotify),
        socket.message(4 * kSec + 10 * kUs, Direction::In, kTlsCloseNotify),
        abort,
        socket.reset_sent(4 * kSec + 30 * kUs, "TCP_ABORT_ON_CLOSE"),
    });
    EXPECT_EQ(conn.close.unread_bytes, 31u);
    EXPECT_EQ(conn.close.cause, CloseCause::IdleTimer);
    EXPECT_EQ(conn.verdict, Verdict::LocalReset);
    ASSERT_EQ(conn.requests.size(), 1u);
    EXPECT_EQ(conn.requests[0].outcome, Outcome::Completed);
}

TEST(TrackerCloseRace, LateRequestInMessageAndTimeWaitResetCountsOnce) {
    const IdleServer server;
    std::vector<Event> events = server.closed();
    const uint64_t late_ns = server.closed_ns + 5 * kMs;
    events.push_back(server.socket.message(late_ns, Direction::In, kLatePost));
    events.push_back(server.socket.time_wait_reset(late_ns + 40 * kUs, kLatePost));
    // A retransmission of the same segment meets the time-wait socket again.
    events.push_back(server.socket.time_wait_reset(late_ns + 200 * kMs, kLatePost));

    const Connection conn = run_one(events);
    EXPECT_EQ(conn.verdict, Verdict::LocalCloseRace);
    ASSERT_EQ(conn.requests.size(), 2u);
    EXPECT_EQ(conn.requests[1].request_ns, late_ns);
    EXPECT_EQ(conn.requests[1].outcome, Outcome::AfterLocalClose);
}

TEST(TrackerCloseRace, LateRequestInTwoSegmentsAndItsFirstSegmentsResetCountOnce) {
    // The kernel captures the request's head from both its segments; the retransmission of the
    // first that meets the time-wait socket carries only that segment's bytes.
    const IdleServer server;
    std::vector<Event> events = server.closed();
    const uint64_t late_ns = server.closed_ns + 5 * kMs;
    constexpr std::size_t kFirstSegment = 20;
    Event late = server.socket.message(late_ns, Direction::In, kLatePost);
    late.payload_len = kFirstSegment;
    events.push_back(late);
    events.push_back(
        server.socket.time_wait_reset(late_ns + 200 * kMs, kLatePost.substr(0, kFirstSegment)));

    const Connection conn = run_one(events);
    ASSERT_EQ(conn.requests.size(), 2u) << "no duplicate of the late request";
    EXPECT_EQ(conn.requests[1].request_ns, late_ns);
    EXPECT_EQ(conn.requests[1].outcome, Outcome::AfterLocalClose);
}

TEST(TrackerCloseRace, TwoDifferentLateRequestsInResetsCountTwice) {
    const IdleServer server;
    std::vector<Event> events = server.closed();
    events.push_back(server.socket.time_wait_reset(server.closed_ns + kMs, kLatePost));
    events.push_back(server.socket.time_wait_reset(server.closed_ns + 2 * kMs, kGet));
    const Connection conn = run_one(events);
    ASSERT_EQ(conn.requests.size(), 3u);
    EXPECT_EQ(conn.requests[1].method, "POST");
    EXPECT_EQ(conn.requests[2].method, "GET");
}

TEST(TrackerCloseRace, RequestInTheSameNanosecondAsTheFinCountsAfterIt) {
    const IdleServer server;
    std::vector<Event> events = server.closed();
    events.push_back(server.socket.message(server.fin_ns, Direction::In, kLatePost));
    const Connection conn = run_one(events);
    EXPECT_EQ(conn.verdict, Verdict::LocalCloseRace);
    EXPECT_EQ(conn.requests.back().outcome, Outcome::AfterLocalClose);
}

TEST(TrackerCloseRace, RequestStampedJustBeforeTheFinButResetAsLateCountsAfterIt) {
    // Ingress stamped the segment, then it waited for the socket lock that close() held.
    const IdleServer server;
    const Socket& socket = server.socket;
    std::vector<Event> events = server.until_fin();
    const uint64_t stamped_ns = server.fin_ns - 50 * kUs;
    events.push_back(socket.message(stamped_ns, Direction::In, kLatePost));
    events.push_back(socket.reset_received(server.fin_ns + 20 * kUs));
    events.push_back(socket.state(server.fin_ns + 21 * kUs, kTcpFinWait1, kTcpClose));
    events.push_back(socket.reset_sent(server.fin_ns + 22 * kUs, "TCP_ABORT_ON_DATA", kLatePost));

    const Connection conn = run_one(events);
    EXPECT_EQ(conn.verdict, Verdict::LocalCloseRace);
    ASSERT_EQ(conn.requests.size(), 2u);
    EXPECT_EQ(conn.requests[1].request_ns, stamped_ns);
    EXPECT_EQ(conn.requests[1].outcome, Outcome::AfterLocalClose);
}

TEST(TrackerCloseRace, LateRequestAfterLocalResetMeetsNoSocket) {
    // This host aborted the connection; the request crossing its RST finds no socket (cookie 0)
    // and is attributed by its tuple.
    const Socket socket;
    std::vector<Event> events = {
        socket.established(1 * kSec),
        socket.message(2 * kSec, Direction::In, kGet),
        socket.message(2 * kSec + kMs, Direction::Out, kOk),
        socket.state(5 * kSec, kTcpEstablished, kTcpClose),
        socket.reset_sent(5 * kSec + 10 * kUs, "TCP_ABORT_ON_CLOSE"),
        socket.no_socket_reset(5 * kSec + 80 * kUs, kLatePost),
    };
    ConnTracker tracker;
    for (const Event& event : events) tracker.on_event(event);
    EXPECT_TRUE(tracker.take_unattributed().empty());
    const std::vector<Connection> connections = tracker.finish_all(kEnd);
    ASSERT_EQ(connections.size(), 1u);
    EXPECT_EQ(connections[0].verdict, Verdict::LocalCloseRace);
    EXPECT_EQ(connections[0].close.how, CloseHow::Rst);
    EXPECT_EQ(connections[0].close.rst_reason, "TCP_ABORT_ON_CLOSE");
    EXPECT_EQ(outcomes(connections[0]),
              (std::vector{Outcome::Completed, Outcome::AfterLocalClose}));
}

TEST(TrackerCloseRace, LateRequestAfterAnUntracedAbort) {
    // Kernels before 6.10 do not trace an active reset: the socket just goes. Data meeting no
    // socket after that still proves a request came too late.
    const Socket socket;
    const uint64_t late_ns = 5 * kSec + 80 * kUs;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(2 * kSec, Direction::In, kGet),
        socket.message(2 * kSec + kMs, Direction::Out, kOk),
        socket.state(5 * kSec, kTcpEstablished, kTcpClose),
        socket.no_socket_reset(late_ns, kLatePost),
    });
    EXPECT_EQ(conn.close.initiator, Initiator::Local);
    EXPECT_EQ(conn.close.how, CloseHow::Rst);
    EXPECT_EQ(conn.close.local_rst_ns, late_ns);
    EXPECT_EQ(outcomes(conn), (std::vector{Outcome::Completed, Outcome::AfterLocalClose}));
    EXPECT_EQ(conn.verdict, Verdict::LocalCloseRace);
}

TEST(TrackerCloseRace, ResetWithoutPayloadAfterCloseIsNoRequest) {
    // A stray ACK or FIN to the time-wait socket: an RST, but no request.
    const IdleServer server;
    std::vector<Event> events = server.closed();
    events.push_back(server.socket.time_wait_reset(server.closed_ns + kMs, ""));
    const Connection conn = run_one(events);
    EXPECT_EQ(conn.verdict, Verdict::LocalIdleClose);
    EXPECT_EQ(conn.requests.size(), 1u);
    EXPECT_EQ(conn.close.local_rst_ns, server.closed_ns + kMs);
}

// --- resets --------------------------------------------------------------------------------

TEST(TrackerResets, GenuinePeerResetAfterOurFinIsKept) {
    // An RST from the peer never triggers one from this host, so it stays a peer reset.
    const IdleServer server;
    std::vector<Event> events = server.until_fin();
    events.push_back(server.socket.reset_received(server.fin_ns + 2 * kMs));
    events.push_back(server.socket.state(server.fin_ns + 2 * kMs + kUs, kTcpFinWait1, kTcpClose));
    const Connection conn = run_one(events);
    EXPECT_EQ(conn.close.peer_rst_ns, server.fin_ns + 2 * kMs);
    EXPECT_EQ(conn.close.initiator, Initiator::Local);
    EXPECT_EQ(conn.verdict, Verdict::LocalIdleClose);
}

TEST(TrackerResets, ResetAnsweringAnRstDoesNotHideThePeerReset) {
    const Socket socket;
    Event answer = socket.reset_sent(5 * kSec + 100 * kUs, "NOT_SPECIFIED", "x");
    answer.trigger_flags = CT_TCP_RST | CT_TCP_ACK;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.reset_received(5 * kSec),
        socket.state(5 * kSec + kUs, kTcpEstablished, kTcpClose),
        answer,
    });
    EXPECT_EQ(conn.close.peer_rst_ns, 5 * kSec);
    EXPECT_EQ(conn.verdict, Verdict::PeerReset);
}

TEST(TrackerResets, SelfResetOnlyWithinAMillisecond) {
    const Socket socket;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.reset_received(5 * kSec),
        socket.state(5 * kSec + kUs, kTcpEstablished, kTcpClose),
        socket.reset_sent(5 * kSec + 2 * kMs, "TCP_ABORT_ON_DATA", "late"),
    });
    EXPECT_EQ(conn.close.peer_rst_ns, 5 * kSec);
    EXPECT_EQ(conn.close.initiator, Initiator::Peer);
}

// --- closing at once and ties --------------------------------------------------------------

TEST(TrackerTies, SimultaneousClose) {
    const Socket socket;
    const uint64_t fin_ns = 5 * kSec;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.state(fin_ns, kTcpEstablished, kTcpFinWait1),
        socket.state(fin_ns + 10 * kUs, kTcpFinWait1, kTcpClosing),
        socket.state(fin_ns + 20 * kUs, kTcpClosing, kTcpClose),
    });
    EXPECT_EQ(conn.close.initiator, Initiator::Local);
    EXPECT_EQ(conn.close.local_fin_ns, fin_ns);
    EXPECT_EQ(conn.close.peer_fin_ns, fin_ns + 10 * kUs);
    EXPECT_EQ(conn.verdict, Verdict::LocalIdleClose);
}

TEST(TrackerTies, BothFinsInOneNanosecondFollowTheStateOrderNotArrival) {
    const Socket socket;
    const uint64_t fin_ns = 5 * kSec;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.state(fin_ns, kTcpClosing, kTcpClose),
        socket.state(fin_ns, kTcpFinWait1, kTcpClosing),
        socket.state(fin_ns, kTcpEstablished, kTcpFinWait1),
    });
    EXPECT_EQ(conn.close.initiator, Initiator::Local);
    EXPECT_EQ(conn.close.local_fin_ns, fin_ns);
    EXPECT_EQ(conn.close.peer_fin_ns, fin_ns);
    EXPECT_EQ(conn.closed_ns, fin_ns);

    const Connection peer_first = run_one({
        socket.established(1 * kSec),
        socket.state(fin_ns, kTcpCloseWait, kTcpLastAck),
        socket.state(fin_ns, kTcpEstablished, kTcpCloseWait),
    });
    EXPECT_EQ(peer_first.close.initiator, Initiator::Peer);
}

TEST(TrackerTies, EventsShuffledAcrossCpusGiveTheSameRecord) {
    const IdleServer server;
    std::vector<Event> events = server.data_after_fin(server.fin_ns + 300 * kUs, kLatePost);
    const std::string expected = describe(run_one(events));

    std::mt19937 random(20261125);
    for (int round = 0; round < 200; ++round) {
        // Each event goes to one of three CPUs, which deliver in order but interleaved.
        std::vector<std::vector<Event>> cpus(3);
        for (const Event& event : events) cpus[random() % cpus.size()].push_back(event);
        std::vector<Event> delivered;
        std::vector<std::size_t> next(cpus.size(), 0);
        while (delivered.size() < events.size()) {
            const std::size_t cpu = random() % cpus.size();
            if (next[cpu] < cpus[cpu].size()) delivered.push_back(cpus[cpu][next[cpu]++]);
        }
        EXPECT_EQ(describe(run_one(delivered)), expected) << "round " << round;
    }
}

// --- messages ------------------------------------------------------------------------------

TEST(TrackerMessages, PipelinedRequestsAndResponses) {
    const Socket socket;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(2 * kSec, Direction::In,
                       "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"),
        socket.message(2 * kSec + kMs, Direction::Out,
                       "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"
                       "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
        socket.message(3 * kSec, Direction::In, "GET /c HTTP/1.1\r\nHost: x\r\n\r\n"),
    });
    ASSERT_EQ(conn.requests.size(), 3u);
    EXPECT_EQ(conn.requests[0].target, "/a");
    EXPECT_EQ(conn.requests[1].target, "/b");
    EXPECT_EQ(conn.requests[0].request_ns, 2 * kSec);
    EXPECT_EQ(conn.requests[1].request_ns, 2 * kSec);
    EXPECT_EQ(conn.requests[0].status, 200);
    EXPECT_EQ(conn.requests[1].status, 404);
    EXPECT_EQ(conn.requests[1].response_ns, 2 * kSec + kMs);
    EXPECT_EQ(conn.requests[2].target, "/c");
    EXPECT_EQ(conn.requests[2].outcome, Outcome::InFlight);
}

TEST(TrackerMessages, ResponsesAnswerTheOldestRequestFirst) {
    const Socket socket;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(2 * kSec, Direction::In, "GET /a HTTP/1.1\r\n"),
        socket.message(2 * kSec + 1 * kMs, Direction::Out, kOk),
        socket.message(2 * kSec + 2 * kMs, Direction::In, "GET /b HTTP/1.1\r\n"),
        socket.message(2 * kSec + 3 * kMs, Direction::Out, "HTTP/1.1 503 Service Unavailable\r\n"),
        // A response with no request left to answer is ignored.
        socket.message(2 * kSec + 4 * kMs, Direction::Out, kOk),
    });
    ASSERT_EQ(conn.requests.size(), 2u);
    EXPECT_EQ(conn.requests[0].status, 200);
    EXPECT_EQ(conn.requests[1].status, 503);
    EXPECT_EQ(conn.requests[1].response_ns, 2 * kSec + 3 * kMs);
}

TEST(TrackerMessages, ContinueDoesNotAnswerAndItsBodyIsNoRequest) {
    const Socket socket;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(
            2 * kSec, Direction::In,
            "POST /upload HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n"),
        socket.message(2 * kSec + 1 * kMs, Direction::Out, "HTTP/1.1 100 Continue\r\n\r\n"),
        socket.message(2 * kSec + 2 * kMs, Direction::In, "{\"a\": 1}\n"),
        socket.message(2 * kSec + 9 * kMs, Direction::Out, "HTTP/1.1 201 Created\r\n"),
        socket.message(3 * kSec, Direction::In, kGet),
        socket.message(3 * kSec + kMs, Direction::Out, kOk),
    });
    ASSERT_EQ(conn.requests.size(), 2u);
    EXPECT_EQ(conn.requests[0].method, "POST");
    EXPECT_EQ(conn.requests[0].status, 201);
    EXPECT_EQ(conn.requests[0].response_ns, 2 * kSec + 9 * kMs);
    EXPECT_EQ(conn.requests[1].status, 200);
}

TEST(TrackerMessages, RequestAfterContinueIsStillARequest) {
    // The final response went out in the same burst as the 100 (no message of its own).
    const Socket socket;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(2 * kSec, Direction::In, "POST /a HTTP/1.1\r\nExpect: 100-continue\r\n"),
        socket.message(2 * kSec + 1 * kMs, Direction::Out, "HTTP/1.1 100 Continue\r\n\r\n"),
        socket.message(3 * kSec, Direction::In, kGet),
    });
    ASSERT_EQ(conn.requests.size(), 2u);
    EXPECT_EQ(conn.requests[1].method, "GET");
}

TEST(TrackerMessages, OpaqueMessagesCountByDirection) {
    const Socket socket;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(2 * kSec, Direction::In, kTlsHello),
        socket.message(2 * kSec + kMs, Direction::Out, kTlsReply),
        socket.message(3 * kSec, Direction::In, kTlsHello),
    });
    ASSERT_EQ(conn.requests.size(), 2u);
    EXPECT_TRUE(conn.requests[0].opaque);
    EXPECT_EQ(conn.requests[0].method, std::nullopt);
    EXPECT_EQ(conn.requests[0].target, std::nullopt);
    EXPECT_EQ(conn.requests[0].status, std::nullopt);
    EXPECT_EQ(conn.requests[0].response_ns, 2 * kSec + kMs);
    EXPECT_EQ(conn.requests[0].outcome, Outcome::Completed);
    EXPECT_EQ(conn.requests[1].outcome, Outcome::InFlight);
}

TEST(TrackerMessages, NothingAfterSwitchingProtocolsIsARequest) {
    const Socket socket;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(2 * kSec, Direction::In, "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n"),
        socket.message(2 * kSec + kMs, Direction::Out, "HTTP/1.1 101 Switching Protocols\r\n"),
        socket.message(3 * kSec, Direction::In, "\x81\x85\x37\xfa\x21\x3d"),
        socket.message(3 * kSec + kMs, Direction::Out, "\x81\x05hello"),
        socket.message(4 * kSec, Direction::In, "\x81\x85\x37\xfa\x21\x3d"),
        socket.state(5 * kSec, kTcpEstablished, kTcpFinWait1),
    });
    ASSERT_EQ(conn.requests.size(), 1u);
    EXPECT_EQ(conn.requests[0].status, 101);
    EXPECT_EQ(conn.verdict, Verdict::LocalIdleClose);
}

TEST(TrackerMessages, TargetQueryKeptOnlyWithFullTarget) {
    const Socket socket;
    const std::vector<Event> events = {
        socket.established(1 * kSec),
        socket.message(2 * kSec, Direction::In, "GET /pay?card=1#x HTTP/1.1\r\n"),
    };
    EXPECT_EQ(run_one(events).requests.at(0).target, "/pay");
    EXPECT_EQ(run_one(events, {.full_target = true}).requests.at(0).target, "/pay?card=1#x");
}

TEST(TrackerMessages, RequestLineCutAfterTheMethodHasNoTarget) {
    const Socket socket;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(2 * kSec, Direction::In, "POST "),
    });
    ASSERT_EQ(conn.requests.size(), 1u);
    EXPECT_EQ(conn.requests[0].method, "POST");
    EXPECT_EQ(conn.requests[0].target, std::nullopt);
    EXPECT_FALSE(conn.requests[0].opaque);
}

// --- client role (a proxy's upstream connection) -------------------------------------------

TEST(TrackerClient, RequestsGoOutAndResponsesComeIn) {
    const Socket socket{.cookie = 21, .role = Role::Client, .tuple = ipv4_tuple(40000, 8080)};
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(2 * kSec, Direction::Out, kGet),
        socket.message(2 * kSec + kMs, Direction::In, kOk),
        socket.state(3 * kSec, kTcpEstablished, kTcpFinWait1),
    });
    EXPECT_EQ(conn.role, Role::Client);
    EXPECT_EQ(conn.pid, 77u);
    EXPECT_EQ(conn.comm, "nginx");
    ASSERT_EQ(conn.requests.size(), 1u);
    EXPECT_EQ(conn.requests[0].status, 200);
    EXPECT_EQ(conn.verdict, Verdict::LocalIdleClose);
}

TEST(TrackerClient, RequestSentAfterThePeersFinIsPeerCloseRace) {
    const Socket socket{.cookie = 21, .role = Role::Client, .tuple = ipv4_tuple(40000, 8080)};
    const uint64_t peer_fin_ns = 7 * kSec;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(2 * kSec, Direction::Out, kGet),
        socket.message(2 * kSec + kMs, Direction::In, kOk),
        socket.state(peer_fin_ns, kTcpEstablished, kTcpCloseWait),
        socket.message(peer_fin_ns + 400 * kUs, Direction::Out, kLatePost),
        socket.reset_received(peer_fin_ns + 500 * kUs),
        socket.state(peer_fin_ns + 501 * kUs, kTcpCloseWait, kTcpClose),
    });
    EXPECT_EQ(conn.close.initiator, Initiator::Peer);
    EXPECT_EQ(conn.close.peer_rst_ns, peer_fin_ns + 500 * kUs);
    EXPECT_EQ(outcomes(conn), (std::vector{Outcome::Completed, Outcome::AfterPeerClose}));
    EXPECT_EQ(conn.verdict, Verdict::PeerCloseRace);
}

TEST(TrackerClient, RequestInFlightWhenThePeerClosesIsPeerCloseInflight) {
    const Socket socket{.cookie = 21, .role = Role::Client, .tuple = ipv4_tuple(40000, 8080)};
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(2 * kSec, Direction::Out, kGet),
        socket.state(3 * kSec, kTcpEstablished, kTcpCloseWait),
    });
    EXPECT_EQ(outcomes(conn), std::vector{Outcome::UnansweredAtClose});
    EXPECT_EQ(conn.verdict, Verdict::PeerCloseInflight);
}

// --- sockets first seen mid-life -----------------------------------------------------------

TEST(TrackerMidLife, ServerSeenFirstByAMessage) {
    Socket socket;
    socket.role = Role::Unknown;
    const Connection conn = run_one({
        socket.message(2 * kSec, Direction::In, kGet),
        socket.message(2 * kSec + kMs, Direction::Out, kOk),
        socket.state(9 * kSec, kTcpEstablished, kTcpFinWait1, activity(2 * kSec, 2 * kSec + kMs)),
        socket.state(9 * kSec + kMs, kTcpFinWait1, kTcpFinWait2),
        socket.state(9 * kSec + kMs, kTcpFinWait2, kTcpClose),
    });
    EXPECT_EQ(conn.role, Role::Unknown);
    EXPECT_EQ(conn.established_ns, std::nullopt);
    EXPECT_EQ(conn.verdict, Verdict::LocalIdleClose);
    EXPECT_EQ(outcomes(conn), std::vector{Outcome::Completed});
    ASSERT_TRUE(conn.close.idle_ms);
    EXPECT_DOUBLE_EQ(*conn.close.idle_ms, 6999.0);
}

TEST(TrackerMidLife, OutgoingRequestLineMakesThisHostTheClient) {
    Socket socket{.cookie = 21, .role = Role::Unknown, .tuple = ipv4_tuple(40000, 8080)};
    const Connection conn = run_one({
        socket.message(2 * kSec, Direction::Out, kGet),
        socket.message(2 * kSec + kMs, Direction::In, kOk),
        socket.state(5 * kSec, kTcpEstablished, kTcpCloseWait),
        socket.message(5 * kSec + kMs, Direction::Out, kLatePost),
    });
    EXPECT_EQ(conn.role, Role::Unknown);
    EXPECT_EQ(outcomes(conn), (std::vector{Outcome::Completed, Outcome::AfterPeerClose}));
    EXPECT_EQ(conn.verdict, Verdict::PeerCloseRace);
}

TEST(TrackerMidLife, FirstSeenAlreadyClosedByThisHost) {
    // Closed before the recording; a late request still meets the FIN_WAIT2 socket.
    Socket socket;
    socket.role = Role::Unknown;
    const uint64_t late_ns = 3 * kSec;
    const Connection conn = run_one({
        socket.message(late_ns, Direction::In, kLatePost),
        socket.reset_received(late_ns + 10 * kUs),
        socket.state(late_ns + 11 * kUs, kTcpFinWait2, kTcpClose),
        socket.reset_sent(late_ns + 12 * kUs, "TCP_ABORT_ON_DATA", kLatePost),
    });
    EXPECT_EQ(conn.close.initiator, Initiator::Local);
    EXPECT_EQ(conn.close.how, CloseHow::Fin);
    EXPECT_EQ(conn.close.local_fin_ns, std::nullopt);
    EXPECT_EQ(conn.close.peer_fin_ns, std::nullopt);
    EXPECT_EQ(conn.close.peer_rst_ns, std::nullopt);
    EXPECT_EQ(conn.close.idle_ms, std::nullopt);
    EXPECT_EQ(outcomes(conn), std::vector{Outcome::AfterLocalClose});
    EXPECT_EQ(conn.verdict, Verdict::LocalCloseRace);
}

TEST(TrackerMidLife, FirstSeenAfterThePeersFin) {
    Socket socket;
    socket.role = Role::Unknown;
    const Connection conn = run_one({
        socket.reset_received(3 * kSec),
        socket.state(3 * kSec + kUs, kTcpLastAck, kTcpClose),
    });
    EXPECT_EQ(conn.close.initiator, Initiator::Peer);
    EXPECT_EQ(conn.close.how, CloseHow::Fin);
    EXPECT_EQ(conn.close.peer_rst_ns, 3 * kSec);
    EXPECT_EQ(conn.verdict, Verdict::PeerIdleClose);
}

// --- linger, attribution -------------------------------------------------------------------

TEST(TrackerLinger, ClosedConnectionWaitsForTheLingerAndTakesALateReset) {
    const IdleServer server;
    ConnTracker tracker({.linger_ns = 2 * kSec});
    for (const Event& event : server.closed()) tracker.on_event(event);
    EXPECT_EQ(tracker.open_connections(), 0u);
    EXPECT_TRUE(tracker.take_finished(server.closed_ns + 2 * kSec).empty());

    tracker.on_event(server.socket.time_wait_reset(server.closed_ns + 1500 * kMs, kLatePost));
    const std::vector<Connection> finished = tracker.take_finished(server.closed_ns + 2 * kSec + 1);
    ASSERT_EQ(finished.size(), 1u);
    EXPECT_EQ(finished[0].id, 1u);
    EXPECT_EQ(finished[0].verdict, Verdict::LocalCloseRace);
    EXPECT_TRUE(tracker.take_unattributed().empty());

    // Too late for the record already written: the event stands alone once the linger passes.
    const Event too_late = server.socket.time_wait_reset(server.closed_ns + 3 * kSec, kLatePost);
    tracker.on_event(too_late);
    EXPECT_TRUE(tracker.take_finished(server.closed_ns + 4 * kSec).empty());
    EXPECT_TRUE(tracker.take_unattributed().empty());
    EXPECT_TRUE(tracker.take_finished(server.closed_ns + 5 * kSec + 1).empty());
    const std::vector<Event> unattributed = tracker.take_unattributed();
    ASSERT_EQ(unattributed.size(), 1u);
    EXPECT_EQ(unattributed[0].ts_ns, too_late.ts_ns);
    EXPECT_EQ(unattributed[0].payload, kLatePost);
}

TEST(TrackerLinger, OpenConnectionsAreHeldUntilTheEnd) {
    const IdleServer closed;
    const Socket open{.cookie = 12, .role = Role::Server, .tuple = ipv4_tuple(8080, 51235)};
    ConnTracker tracker;
    for (const Event& event : closed.closed()) tracker.on_event(event);
    tracker.on_event(open.established(2 * kSec));
    tracker.on_event(open.message(3 * kSec, Direction::In, kGet));
    EXPECT_EQ(tracker.open_connections(), 1u);

    const std::vector<Connection> finished = tracker.take_finished(kEnd);
    ASSERT_EQ(finished.size(), 1u);
    EXPECT_EQ(finished[0].cookie, closed.socket.cookie);
    EXPECT_EQ(tracker.open_connections(), 1u);

    const std::vector<Connection> rest = tracker.finish_all(kEnd);
    ASSERT_EQ(rest.size(), 1u);
    EXPECT_EQ(rest[0].id, 2u);
    EXPECT_EQ(rest[0].verdict, Verdict::Open);
    EXPECT_EQ(outcomes(rest[0]), std::vector{Outcome::InFlight});
    EXPECT_EQ(tracker.open_connections(), 0u);
}

// Events the kernel lost while a connection was alive, or lingering for a late request's reset,
// may be its own: its record is marked incomplete. One wholly outside every loss is complete; one
// first seen mid-life was alive since before the recording.
TEST(TrackerLostEvents, ConnectionsAliveDuringALossAreIncomplete) {
    const IdleServer lingering;  // open from 1 s, closed at 6.012 s, lingers until 8.012 s
    const Socket later{.cookie = 12, .role = Role::Server, .tuple = ipv4_tuple(8080, 51235)};
    const Socket midlife{.cookie = 13, .role = Role::Unknown, .tuple = ipv4_tuple(8080, 51236)};
    const Socket open{.cookie = 14, .role = Role::Server, .tuple = ipv4_tuple(8080, 51237)};
    ConnTracker tracker({.linger_ns = 2 * kSec});
    for (const Event& event : lingering.closed()) tracker.on_event(event);
    tracker.on_events_lost(7 * kSec, 7500 * kMs);
    tracker.on_events_lost(7500 * kMs, 7600 * kMs);  // touching: one span
    for (const Socket* socket : {&later, &open}) tracker.on_event(socket->established(9 * kSec));
    tracker.on_event(later.state(9500 * kMs, kTcpEstablished, kTcpCloseWait));
    tracker.on_event(later.state(9600 * kMs, kTcpCloseWait, kTcpLastAck));
    tracker.on_event(later.state(10 * kSec, kTcpLastAck, kTcpClose));
    tracker.on_event(midlife.message(9 * kSec, Direction::In, kGet));
    tracker.on_event(midlife.state(10 * kSec, kTcpEstablished, kTcpClose));
    tracker.on_events_lost(20 * kSec, 21 * kSec);  // after the later one's linger ended

    std::map<uint64_t, bool> incomplete;
    for (const Connection& conn : tracker.finish_all(kEnd)) incomplete[conn.cookie] = conn.incomplete;
    EXPECT_EQ(incomplete, (std::map<uint64_t, bool>{{lingering.socket.cookie, true},
                                                    {later.cookie, false},
                                                    {midlife.cookie, true},
                                                    {open.cookie, true}}));
}

// A connection whose close may be among lost events is given up once it has shown nothing for the
// bound since the loss: written then, incomplete, as far as seen, instead of held until the end
// (days, in a continuous recording). One whose last event came after every loss is held.
TEST(TrackerLostEvents, SilentConnectionsAfterALossAreGivenUp) {
    constexpr uint64_t kSilence = 60 * kSec;
    const IdleServer closing;  // FIN_WAIT1 at 6.012 s; its FIN_WAIT2 and CLOSE lost
    const Socket idle{.cookie = 12, .role = Role::Server, .tuple = ipv4_tuple(8080, 51235)};
    const Socket busy{.cookie = 13, .role = Role::Server, .tuple = ipv4_tuple(8080, 51236)};
    ConnTracker tracker({.give_up_after_loss_ns = kSilence});
    for (const Event& event : closing.until_fin()) tracker.on_event(event);
    tracker.on_event(idle.established(2 * kSec));
    tracker.on_event(busy.established(3 * kSec));
    tracker.on_events_lost(7 * kSec, 7100 * kMs);
    tracker.on_event(busy.message(30 * kSec, Direction::In, kGet));

    EXPECT_TRUE(tracker.take_finished(closing.fin_ns + kSilence / 2).empty());
    const std::vector<Connection> given_up = tracker.take_finished(closing.fin_ns + kSilence + kSec);
    ASSERT_EQ(given_up.size(), 2u);
    EXPECT_EQ(given_up[0].cookie, closing.socket.cookie);
    EXPECT_TRUE(given_up[0].incomplete);
    EXPECT_FALSE(given_up[0].closed_ns);
    EXPECT_EQ(given_up[0].close.initiator, Initiator::Local);
    EXPECT_EQ(given_up[1].cookie, idle.cookie);
    EXPECT_TRUE(given_up[1].incomplete);
    EXPECT_EQ(given_up[1].verdict, Verdict::Open);
    EXPECT_EQ(tracker.open_connections(), 1u);  // busy: seen after the loss

    // Silent as long again, but nothing was lost after its last event: held.
    EXPECT_TRUE(tracker.take_finished(30 * kSec + 2 * kSilence).empty());
    EXPECT_EQ(tracker.open_connections(), 1u);

    // The given-up socket shows again: what follows is a record of its own, incomplete too.
    tracker.on_event(idle.state(500 * kSec, kTcpEstablished, kTcpCloseWait));
    std::map<uint64_t, bool> incomplete;
    for (const Connection& conn : tracker.finish_all(kEnd)) incomplete[conn.cookie] = conn.incomplete;
    EXPECT_EQ(incomplete, (std::map<uint64_t, bool>{{idle.cookie, true}, {busy.cookie, true}}));
}

TEST(TrackerLostEvents, WithoutALossSilentConnectionsAreHeld) {
    const IdleServer server;
    ConnTracker tracker({.give_up_after_loss_ns = 60 * kSec});
    for (const Event& event : server.until_fin()) tracker.on_event(event);
    EXPECT_TRUE(tracker.take_finished(kEnd).empty());
    const std::vector<Connection> rest = tracker.finish_all(kEnd);
    ASSERT_EQ(rest.size(), 1u);
    EXPECT_FALSE(rest[0].incomplete);
}

TEST(TrackerLostEvents, NoLossNoMark) {
    const IdleServer server;
    EXPECT_FALSE(run_one(server.closed()).incomplete);
}

TEST(TrackerAttribution, ResetWithNoSocketAndUnknownTupleIsUnattributed) {
    const IdleServer server;
    Socket stranger = server.socket;
    stranger.tuple = ipv4_tuple(8080, 60000);
    ConnTracker tracker;
    for (const Event& event : server.closed()) tracker.on_event(event);
    tracker.on_event(stranger.no_socket_reset(9 * kSec, kGet));
    Socket other_namespace = server.socket;
    other_namespace.netns = 4026532000;
    tracker.on_event(other_namespace.no_socket_reset(9 * kSec + kMs, kGet));

    const std::vector<Event> unattributed = tracker.take_unattributed();
    ASSERT_EQ(unattributed.size(), 2u);
    EXPECT_EQ(unattributed[0].tuple.rport, 60000);
    EXPECT_EQ(unattributed[1].netns, 4026532000u);
    const std::vector<Connection> connections = tracker.finish_all(kEnd);
    ASSERT_EQ(connections.size(), 1u);
    EXPECT_EQ(connections[0].close.local_rst_ns, std::nullopt);
}

TEST(TrackerAttribution, ResetWithNoSocketGoesToTheNewestSocketOfItsTuple) {
    const Socket older{.cookie = 31};
    const Socket newer{.cookie = 32};
    ConnTracker tracker;
    tracker.on_event(older.established(1 * kSec));
    tracker.on_event(older.state(2 * kSec, kTcpEstablished, kTcpFinWait1));
    tracker.on_event(newer.established(3 * kSec));
    tracker.on_event(newer.no_socket_reset(4 * kSec, ""));
    const std::vector<Connection> connections = tracker.finish_all(kEnd);
    ASSERT_EQ(connections.size(), 2u);
    EXPECT_EQ(connections[0].cookie, 31u);
    EXPECT_EQ(connections[0].close.local_rst_ns, std::nullopt);
    EXPECT_EQ(connections[1].cookie, 32u);
    EXPECT_EQ(connections[1].close.local_rst_ns, 4 * kSec);
    EXPECT_EQ(connections[1].close.rst_reason, "NO_SOCKET");
}

// The tuple index through churn: three generations of sockets on the same 1,000 tuples, the
// newest one's even ports closed and finalised (their entries leave the index as it grew
// around them). A reset with no socket finds the newest socket still held of its tuple.
TEST(TrackerAttribution, ResetWithNoSocketFindsItsSocketThroughChurn) {
    constexpr uint64_t kPorts = 1'000;
    const auto socket = [](uint64_t generation, uint64_t port) {
        return Socket{.cookie = 100 + generation * kPorts + port,
                      .tuple = ipv4_tuple(8080, static_cast<uint16_t>(40'000 + port))};
    };
    ConnTracker tracker({.linger_ns = kSec});
    for (uint64_t generation = 0; generation < 3; ++generation) {
        for (uint64_t port = 0; port < kPorts; ++port) {
            const uint64_t open_ns = (1 + generation) * kSec + port * kUs;
            tracker.on_event(socket(generation, port).established(open_ns));
            if (generation == 2 && port % 2 == 0) {
                tracker.on_event(
                    socket(generation, port).state(open_ns + 1, kTcpEstablished, kTcpClose));
            }
        }
    }
    EXPECT_EQ(tracker.take_finished(5 * kSec).size(), kPorts / 2);
    const uint64_t reset_ns = 6 * kSec;
    for (uint64_t port = 0; port < kPorts; ++port) {
        tracker.on_event(socket(2, port).no_socket_reset(reset_ns, ""));
    }
    EXPECT_TRUE(tracker.take_unattributed().empty());
    std::set<uint64_t> reset;
    for (const Connection& conn : tracker.finish_all(kEnd)) {
        if (conn.close.local_rst_ns == reset_ns) reset.insert(conn.cookie);
    }
    ASSERT_EQ(reset.size(), kPorts);
    for (uint64_t port = 0; port < kPorts; ++port) {
        EXPECT_TRUE(reset.contains(socket(port % 2 == 0 ? 1 : 2, port).cookie)) << port;
    }
}

TEST(TrackerAttribution, ResetOfASocketNeverSeenAliveIsUnattributedAfterTheLinger) {
    // A time-wait socket of a connection closed before the recording.
    const Socket socket{.cookie = 41};
    ConnTracker tracker({.linger_ns = 2 * kSec});
    tracker.on_event(socket.time_wait_reset(5 * kSec, kLatePost));
    EXPECT_EQ(tracker.open_connections(), 0u);
    EXPECT_TRUE(tracker.take_finished(6 * kSec).empty());
    EXPECT_TRUE(tracker.take_unattributed().empty());
    EXPECT_TRUE(tracker.take_finished(7 * kSec + 1).empty());
    EXPECT_EQ(tracker.take_unattributed().size(), 1u);

    tracker.on_event(socket.time_wait_reset(8 * kSec, kLatePost));
    EXPECT_TRUE(tracker.finish_all(kEnd).empty());
    EXPECT_EQ(tracker.take_unattributed().size(), 1u);
}

TEST(TrackerAttribution, ResetDeliveredBeforeItsSocketsFirstEventIsKept) {
    // Accepted and aborted at once; the RST's CPU delivered first.
    const Socket socket;
    const Connection conn = run_one({
        socket.reset_sent(1 * kSec + 20 * kUs, "TCP_ABORT_ON_CLOSE"),
        socket.established(1 * kSec),
        socket.state(1 * kSec + 10 * kUs, kTcpEstablished, kTcpClose),
    });
    EXPECT_EQ(conn.verdict, Verdict::LocalReset);
    EXPECT_EQ(conn.close.local_rst_ns, 1 * kSec + 20 * kUs);
}

// --- the record's other members ------------------------------------------------------------

TEST(TrackerRecord, IdentityCountersAndIds) {
    Socket socket{.cookie = 8231};
    socket.tuple.family = AF_INET6;
    socket.tuple.laddr = {0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2};
    socket.tuple.raddr = {0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    const IdleServer server{.socket = socket};
    std::vector<Event> events = server.closed();
    SockSnapshot final_counters = activity(0, 0);
    final_counters.bytes_in = 812;
    final_counters.bytes_out = 1640;
    final_counters.segs_in = 9;
    final_counters.segs_out = 8;
    events.back().snap = final_counters;
    const Socket second{.cookie = 8232, .tuple = ipv4_tuple(8080, 51300)};
    events.push_back(second.established(2 * kSec));

    const std::vector<Connection> connections = run(events);
    ASSERT_EQ(connections.size(), 2u);
    const Connection& conn = connections[0];
    EXPECT_EQ(conn.id, 1u);
    EXPECT_EQ(connections[1].id, 2u);
    EXPECT_EQ(conn.cookie, 8231u);
    EXPECT_EQ(conn.netns, 4026531840u);
    EXPECT_EQ(conn.family, "ipv6");
    EXPECT_EQ(conn.local, (Endpoint{"fd00::2", 8080}));
    EXPECT_EQ(conn.remote, (Endpoint{"fd00::1", 51234}));
    EXPECT_EQ(conn.role, Role::Server);
    EXPECT_EQ(conn.pid, 4242u);  // the accepted socket's owner shows first when it closes
    EXPECT_EQ(conn.comm, "node");
    EXPECT_EQ(conn.established_ns, server.open_ns);
    EXPECT_EQ(conn.closed_ns, server.closed_ns);
    EXPECT_EQ(conn.bytes_in, 812u);
    EXPECT_EQ(conn.bytes_out, 1640u);
    EXPECT_EQ(conn.segs_in, 9u);
    EXPECT_EQ(conn.segs_out, 8u);
    EXPECT_EQ(connections[1].family, "ipv4");
    EXPECT_EQ(connections[1].local, (Endpoint{"10.0.0.2", 8080}));
    EXPECT_EQ(connections[1].pid, std::nullopt);
    EXPECT_EQ(connections[1].comm, std::nullopt);
}

// --- both ends on this host ----------------------------------------------------------------

// The socket at the other end of `socket`'s connection, on this host too.
Socket other_end_of(const Socket& socket, uint64_t cookie, Role role) {
    Socket other{.cookie = cookie, .role = role, .tuple = socket.tuple, .netns = socket.netns};
    std::swap(other.tuple.laddr, other.tuple.raddr);
    std::swap(other.tuple.lport, other.tuple.rport);
    return other;
}

// One GET answered, as each end's socket sees it.
std::vector<Event> one_exchange(const Socket& server, const Socket& client, uint64_t at_ns) {
    return {client.message(at_ns, Direction::Out, kGet), server.message(at_ns, Direction::In, kGet),
            server.message(at_ns + kMs, Direction::Out, kOk),
            client.message(at_ns + kMs, Direction::In, kOk)};
}

// A connection's two sockets closed by the client at `at_ns`.
std::vector<Event> closed_at(const Socket& server, const Socket& client, uint64_t at_ns) {
    return {client.state(at_ns, kTcpEstablished, kTcpFinWait1),
            server.state(at_ns, kTcpEstablished, kTcpCloseWait),
            server.state(at_ns + kMs, kTcpLastAck, kTcpClose),
            client.state(at_ns + kMs, kTcpFinWait1, kTcpClose)};
}

const Connection& record_of(const std::vector<Connection>& connections, uint64_t cookie) {
    const auto it = std::ranges::find(connections, cookie, &Connection::cookie);
    EXPECT_NE(it, connections.end()) << cookie;
    return it == connections.end() ? connections.front() : *it;
}

std::optional<OtherEnd> other_end_of_record(const std::vector<Connection>& connections,
                                            uint64_t cookie) {
    return record_of(connections, cookie).other_end;
}

TEST(TrackerOtherEnd, EndsInTwoNamespacesNameEachOther) {
    // A docker bridge: the client container's netns and the server container's.
    Socket server{.cookie = 11, .role = Role::Server, .tuple = ipv4_tuple(8080, 40000)};
    server.tuple.laddr = {172, 17, 0, 3};
    server.tuple.raddr = {172, 17, 0, 2};
    Socket client = other_end_of(server, 12, Role::Client);
    client.netns = server.netns + 1;
    const Socket elsewhere{.cookie = 13, .role = Role::Server, .tuple = ipv4_tuple(8080, 40001)};
    std::vector<Event> events = {client.established(1 * kSec), server.established(1 * kSec),
                                 elsewhere.established(1 * kSec)};
    std::ranges::copy(one_exchange(server, client, 2 * kSec), std::back_inserter(events));
    std::ranges::copy(closed_at(server, client, 3 * kSec), std::back_inserter(events));
    // Finalised one at a time, as a recording does: the server end after the linger.
    ConnTracker tracker;
    for (const Event& event : events) tracker.on_event(event);
    std::vector<Connection> connections = tracker.take_finished(6 * kSec);
    ASSERT_EQ(connections.size(), 2u);
    std::ranges::copy(tracker.finish_all(kEnd), std::back_inserter(connections));
    EXPECT_EQ(other_end_of_record(connections, 11),
              (OtherEnd{.cookie = 12, .server = Initiator::Local}));
    EXPECT_EQ(other_end_of_record(connections, 12),
              (OtherEnd{.cookie = 11, .server = Initiator::Peer}));
    EXPECT_EQ(other_end_of_record(connections, 13), std::nullopt);
}

TEST(TrackerOtherEnd, EndsOpenBeforeTheRecordingAreToldApartByTheirRequests) {
    // Seen first mid-life (role unknown): the end that received the request serves.
    const Socket server{.cookie = 11, .role = Role::Unknown};
    const Socket client = other_end_of(server, 12, Role::Unknown);
    const std::vector<Connection> connections = run(one_exchange(server, client, 2 * kSec));
    ASSERT_EQ(connections.size(), 2u);
    EXPECT_EQ(other_end_of_record(connections, 11),
              (OtherEnd{.cookie = 12, .server = Initiator::Local}));
    EXPECT_EQ(other_end_of_record(connections, 12),
              (OtherEnd{.cookie = 11, .server = Initiator::Peer}));
}

TEST(TrackerOtherEnd, EndsWithoutARequestAreToldApartByTheFilteredPortOrNot) {
    const Socket server{.cookie = 11, .role = Role::Unknown};
    const Socket client = other_end_of(server, 12, Role::Unknown);
    const std::vector<Event> events = closed_at(server, client, 3 * kSec);
    std::vector<Connection> connections = run(events, {.ports = {8080}});
    ASSERT_EQ(connections.size(), 2u);
    EXPECT_EQ(other_end_of_record(connections, 11),
              (OtherEnd{.cookie = 12, .server = Initiator::Local}));
    EXPECT_EQ(serves_here(record_of(connections, 11)), true);
    EXPECT_EQ(serves_here(record_of(connections, 12)), false);
    // Nothing tells: named, but neither is said to serve.
    connections = run(events);
    EXPECT_EQ(serves_here(record_of(connections, 11)), std::nullopt);
    // Alone (its other end on another host), by the port the recording filters on.
    Connection alone = record_of(connections, 11);
    alone.other_end.reset();
    const uint16_t service[] = {8080};
    EXPECT_EQ(serves_here(alone, service), true);
    std::swap(alone.local, alone.remote);
    EXPECT_EQ(serves_here(alone, service), false);
    EXPECT_EQ(serves_here(alone), std::nullopt);
    EXPECT_EQ(other_end_of_record(connections, 11),
              (OtherEnd{.cookie = 12, .server = std::nullopt}));
    EXPECT_EQ(other_end_of_record(connections, 12),
              (OtherEnd{.cookie = 11, .server = std::nullopt}));
}

TEST(TrackerOtherEnd, LoopbackStaysInItsNamespace) {
    Socket server{.cookie = 11, .role = Role::Server, .tuple = ipv4_tuple(8080, 40000)};
    server.tuple.laddr = {127, 0, 0, 1};
    server.tuple.raddr = {127, 0, 0, 1};
    Socket client = other_end_of(server, 12, Role::Client);
    client.netns = server.netns + 1;
    std::vector<Connection> connections =
        run({server.established(1 * kSec), client.established(1 * kSec)});
    EXPECT_EQ(other_end_of_record(connections, 11), std::nullopt);
    EXPECT_EQ(other_end_of_record(connections, 12), std::nullopt);
    client.netns = server.netns;
    connections = run({server.established(1 * kSec), client.established(1 * kSec)});
    EXPECT_EQ(other_end_of_record(connections, 11),
              (OtherEnd{.cookie = 12, .server = Initiator::Local}));
}

TEST(TrackerOtherEnd, ADualStackServerFindsItsIpv4Client) {
    Socket server{.cookie = 11, .role = Role::Server, .tuple = ipv4_tuple(8080, 40000)};
    server.tuple.family = AF_INET6;
    server.tuple.laddr = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1};
    server.tuple.raddr = server.tuple.laddr;
    Socket client{.cookie = 12, .role = Role::Client, .tuple = ipv4_tuple(40000, 8080)};
    client.tuple.laddr = {127, 0, 0, 1};
    client.tuple.raddr = {127, 0, 0, 1};
    const std::vector<Connection> connections =
        run({server.established(1 * kSec), client.established(1 * kSec)});
    EXPECT_EQ(other_end_of_record(connections, 11),
              (OtherEnd{.cookie = 12, .server = Initiator::Local}));
    EXPECT_EQ(other_end_of_record(connections, 12),
              (OtherEnd{.cookie = 11, .server = Initiator::Peer}));
}

TEST(TrackerOtherEnd, PortsReusedLaterAreAnotherConnection) {
    // The first connection's sockets are closed (lingering) when the second reuses the tuples.
    const Socket first_server{.cookie = 11, .role = Role::Server};
    const Socket first_client = other_end_of(first_server, 12, Role::Client);
    const Socket server{.cookie = 21, .role = Role::Server};
    const Socket client = other_end_of(server, 22, Role::Client);
    std::vector<Event> events = {first_client.established(1 * kSec),
                                 first_server.established(1 * kSec)};
    std::ranges::copy(closed_at(first_server, first_client, 2 * kSec),
                      std::back_inserter(events));
    events.push_back(client.established(2500 * kMs));
    events.push_back(server.established(2500 * kMs));
    const std::vector<Connection> connections = run(events);
    ASSERT_EQ(connections.size(), 4u);
    EXPECT_EQ(other_end_of_record(connections, 11)->cookie, 12u);
    EXPECT_EQ(other_end_of_record(connections, 12)->cookie, 11u);
    EXPECT_EQ(other_end_of_record(connections, 21)->cookie, 22u);
    EXPECT_EQ(other_end_of_record(connections, 22)->cookie, 21u);
}

TEST(TrackerRecord, IdleIsTheTimeSinceTheLastPayloadAtTheFirstClose) {
    const IdleServer server;
    const Connection conn = run_one(server.closed());
    ASSERT_TRUE(conn.close.idle_ms);
    EXPECT_DOUBLE_EQ(*conn.close.idle_ms, 5000.0);
}

TEST(TrackerRecord, IdleUnknownWithoutPayloadClocksAndNeverNegative) {
    const Socket socket;
    const Connection unknown = run_one({
        socket.established(1 * kSec),
        socket.state(5 * kSec, kTcpEstablished, kTcpCloseWait, activity(0, 0)),
    });
    EXPECT_EQ(unknown.close.idle_ms, std::nullopt);

    const Connection skewed = run_one({
        socket.established(1 * kSec),
        socket.state(5 * kSec, kTcpEstablished, kTcpCloseWait, activity(5 * kSec + kUs, 0)),
    });
    EXPECT_EQ(skewed.close.idle_ms, 0.0);

    const Connection by_reset = run_one({
        socket.established(1 * kSec),
        socket.reset_received(5 * kSec),
    });
    EXPECT_EQ(by_reset.close.idle_ms, std::nullopt);
}


namespace closetrace {
namespace {

Connection connection_with_requests(std::size_t count, std::size_t unanswered_index) {
    Connection conn;
    for (std::size_t i = 0; i < count; ++i) {
        Request request;
        request.method = "GET";
        request.target = "/r" + std::to_string(i);
        request.request_ns = i;
        request.outcome = i == unanswered_index ? Outcome::UnansweredAtClose : Outcome::Completed;
        conn.requests.push_back(request);
    }
    return conn;
}

TEST(TrackerRecordBound, ShortListsAreKeptWhole) {
    Connection conn = connection_with_requests(kListedFirstRequests + kListedLastRequests, 99);
    bound_request_list(conn);
    EXPECT_EQ(conn.requests.size(), kListedFirstRequests + kListedLastRequests);
    EXPECT_EQ(conn.requests_omitted, 0u);
}

TEST(TrackerRecordBound, LongListsKeepTheEndsAndEveryRequestThatWasNotCompleted) {
    Connection conn = connection_with_requests(10'000, 5'000);
    bound_request_list(conn);
    EXPECT_EQ(conn.requests.size(), kListedFirstRequests + kListedLastRequests + 1);
    EXPECT_EQ(conn.request_count(), 10'000u);
    EXPECT_EQ(conn.requests.front().target, "/r0");
    EXPECT_EQ(conn.requests.back().target, "/r9999");
    EXPECT_EQ(conn.requests[kListedFirstRequests].target, "/r5000");
    EXPECT_EQ(conn.requests[kListedFirstRequests].outcome, Outcome::UnansweredAtClose);
}

}  // namespace
}  // namespace closetrace

// --- long keep-alive connections ------------------------------------------------------------

// A keep-alive connection that served `count` requests, one every `every_ns`, delivered with
// neighbouring events swapped (two CPUs), then closed idle by this host while a late POST arrived.
std::vector<Event> long_connection(const Socket& socket, int count, uint64_t every_ns) {
    std::vector<Event> events{socket.established(1 * kSec)};
    uint64_t ts = 1 * kSec;
    for (int i = 0; i < count; ++i) {
        ts += every_ns;
        const std::string request = "GET /r" + std::to_string(i) + " HTTP/1.1\r\n\r\n";
        events.push_back(socket.message(ts, Direction::In, request));
        events.push_back(socket.message(ts + every_ns / 2, Direction::Out, kOk));
    }
    for (std::size_t i = 2; i + 1 < events.size(); i += 7) std::swap(events[i], events[i + 1]);
    const uint64_t fin_ns = ts + 5 * kSec;
    events.push_back(socket.state(fin_ns, kTcpEstablished, kTcpFinWait1, activity(ts, ts)));
    events.push_back(socket.state(fin_ns + 10 * kUs, kTcpFinWait1, kTcpFinWait2));
    events.push_back(socket.state(fin_ns + 20 * kUs, kTcpFinWait2, kTcpClose));
    events.push_back(socket.time_wait_reset(fin_ns + 70 * kMs, kLatePost));
    return events;
}

TEST(TrackerLongConnection, SettlingMessagesOnTheWayGivesTheRecordOfHoldingThemAll) {
    for (const Role role : {Role::Server, Role::Unknown}) {
        Socket socket;
        socket.role = role;
        const std::vector<Event> events = long_connection(socket, 5'000, 2 * kMs);  // 10 s
        const Connection settled = run_one(events);
        const Connection held =
            run_one(events, {.linger_ns = 2 * kSec, .full_target = false, .reorder_ns = kEnd});
        EXPECT_EQ(describe(settled), describe(held));
        EXPECT_EQ(settled.requests_omitted, held.requests_omitted);
        EXPECT_EQ(settled.request_count(), 5'001u);
        EXPECT_EQ(settled.requests.size(), kListedFirstRequests + kListedLastRequests);
        EXPECT_EQ(settled.requests.front().target, "/r0");
        EXPECT_EQ(settled.requests.back().method, "POST");
        EXPECT_EQ(settled.requests.back().outcome, Outcome::AfterLocalClose);
        EXPECT_EQ(settled.verdict, Verdict::LocalCloseRace);
    }
}

TEST(TrackerLongConnection, BusyConnectionsStillListTheLastRequestsBeforeTheClose) {
    Socket socket;
    const std::vector<Event> events = long_connection(socket, 100'000, 50 * kUs);  // 5 s
    const Connection conn = run_one(events);
    EXPECT_EQ(conn.request_count(), 100'001u);
    ASSERT_GE(conn.requests.size(), 2u);
    EXPECT_EQ(conn.requests[conn.requests.size() - 2].target, "/r99999");
    EXPECT_EQ(conn.requests[conn.requests.size() - 2].outcome, Outcome::Completed);
}


// --- close causes --------------------------------------------------------------------------

constexpr std::string_view kHealthCheck =
    "GET /health HTTP/1.1\r\nHost: 10.0.0.2:8080\r\nConnection: close\r\n"
    "User-Agent: ELB-HealthChecker/2.0\r\nAccept-Encoding: gzip, compressed\r\n\r\n";
constexpr std::string_view kOkClose =
    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";

// This host's owner closing the socket: a FIN, or with unread bytes an abort straight to CLOSE.
Event owner_close(const Socket& socket, uint64_t ts_ns, SockSnapshot snap, bool abort,
                  bool exiting = false) {
    Event close = socket.state(ts_ns, kTcpEstablished, abort ? kTcpClose : kTcpFinWait1, snap);
    close.pid = 4242;
    close.comm = "node";
    close.owner_from = "close";
    close.by_owner = true;
    close.owner_exiting = exiting;
    return close;
}

TEST(TrackerCause, IdleTimer) {
    const Connection conn = run_one(IdleServer{}.closed());
    EXPECT_EQ(conn.close.cause, CloseCause::IdleTimer);
    EXPECT_EQ(conn.close.asked_by, std::nullopt);
    EXPECT_EQ(conn.health_check, std::nullopt);
    EXPECT_EQ(conn.requests[0].idle_before_ms, 10.0);  // since the connection was established
}

TEST(TrackerCause, HealthCheckAsksForTheClose) {
    const Socket socket;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(1 * kSec + kMs, Direction::In, kHealthCheck),
        socket.message(1 * kSec + 2 * kMs, Direction::Out, kOkClose),
        owner_close(socket, 1 * kSec + 2 * kMs + 200 * kUs,
                    activity(1 * kSec + kMs, 1 * kSec + 2 * kMs), false),
    });
    EXPECT_EQ(conn.verdict, Verdict::LocalIdleClose);
    EXPECT_EQ(conn.close.cause, CloseCause::ConnectionClose);
    EXPECT_EQ(conn.close.asked_by, Initiator::Peer);
    EXPECT_EQ(conn.health_check, "ELB-HealthChecker");
    EXPECT_EQ(conn.requests[0].close_asked, CloseAsked::Request);
}

// Node's response: it announces the idle timeout (keepAliveTimeout / 1000) on every one.
constexpr std::string_view kOkNode =
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n"
    "Keep-Alive: timeout=5\r\n\r\nok";

TEST(TrackerKeepAliveTimeout, TheServersLatestAnnouncementEitherSide) {
    for (const Role role : {Role::Server, Role::Client}) {
        const Socket socket{.role = role};
        const Direction request = role == Role::Server ? Direction::In : Direction::Out;
        const Direction response = role == Role::Server ? Direction::Out : Direction::In;
        const std::string_view later =
            "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=80, max=1000\r\nContent-Length: 0\r\n\r\n";
        const Connection conn = run_one({
            socket.established(1 * kSec),
            socket.message(1 * kSec + kMs, request, kGet),
            socket.message(1 * kSec + 2 * kMs, response, kOkNode),
            // After an idle gap, so that the kernel writes the exchange.
            socket.message(3 * kSec, request, kGet),
            socket.message(3 * kSec + kMs, response, later),
            // A response without the header changes nothing.
            socket.message(6 * kSec, request, kGet),
            socket.message(6 * kSec + kMs, response, kOk),
        });
        EXPECT_EQ(conn.keep_alive_timeout_s, 80u) << to_string(role);
    }
}

TEST(TrackerKeepAliveTimeout, NoneWithoutTheHeaderNorFromARequest) {
    const Socket socket;
    const std::string_view http10_request =
        "GET / HTTP/1.0\r\nConnection: keep-alive\r\nKeep-Alive: timeout=30\r\n\r\n";
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(1 * kSec + kMs, Direction::In, http10_request),
        socket.message(1 * kSec + 2 * kMs, Direction::Out, kOk),
    });
    EXPECT_EQ(conn.keep_alive_timeout_s, std::nullopt);
}

TEST(TrackerCause, ServerEndsKeepAliveByItsResponse) {
    const Socket socket;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(1 * kSec + kMs, Direction::In, kGet),
        socket.message(1 * kSec + 2 * kMs, Direction::Out, kOkClose),
        owner_close(socket, 1 * kSec + 3 * kMs, activity(1 * kSec + kMs, 1 * kSec + 2 * kMs),
                    false),
    });
    EXPECT_EQ(conn.close.cause, CloseCause::KeepaliveEnded);
    EXPECT_EQ(conn.close.asked_by, Initiator::Local);
    EXPECT_EQ(conn.requests[0].close_asked, CloseAsked::Response);
}

TEST(TrackerCause, ClientClosesRightAfterUse) {
    const Socket socket;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(1 * kSec + kMs, Direction::In, kGet),
        socket.message(1 * kSec + 2 * kMs, Direction::Out, kOk),
        socket.state(1 * kSec + 9 * kMs, kTcpEstablished, kTcpCloseWait,
                     activity(1 * kSec + kMs, 1 * kSec + 2 * kMs)),
    });
    EXPECT_EQ(conn.verdict, Verdict::PeerIdleClose);
    EXPECT_EQ(conn.close.cause, CloseCause::ClosedAfterUse);
}

TEST(TrackerCause, ProbeWithoutARequest) {
    const Socket socket;
    // The socket counts sequence numbers: the client's FIN is the one byte in.
    SockSnapshot silent = activity(0, 0);
    silent.bytes_in = 1;
    silent.bytes_out = 1;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.state(1 * kSec + kMs, kTcpEstablished, kTcpCloseWait, silent),
    });
    EXPECT_EQ(conn.close.cause, CloseCause::Probe);
}

// A connect() answered with a reset (nothing listens on the port): the kernel writes the reset
// and the move from SYN_SENT to CLOSE, and no ESTABLISHED. Refused, not a probe.
TEST(TrackerCause, ConnectAnsweredWithAResetIsRefused) {
    Socket socket;
    socket.role = Role::Client;
    SockSnapshot nothing = activity(0, 0);
    nothing.bytes_in = 0;
    nothing.bytes_out = 0;
    Event closed = socket.state(1 * kSec + 20 * kUs, kTcpSynSent, kTcpClose, nothing);
    closed.pid = 77;
    closed.comm = "nginx";
    const Connection conn = run_one({socket.reset_received(1 * kSec + 10 * kUs), closed});
    EXPECT_EQ(conn.close.initiator, Initiator::Peer);
    EXPECT_EQ(conn.close.how, CloseHow::Rst);
    EXPECT_EQ(conn.close.cause, CloseCause::Refused);
    EXPECT_EQ(conn.verdict, Verdict::PeerReset);
    // Established first: a reset is no refusal.
    const Connection established = run_one({socket.established(1 * kSec),
                                            socket.reset_received(1 * kSec + 10 * kMs),
                                            socket.state(1 * kSec + 11 * kMs, kTcpEstablished,
                                                         kTcpClose, nothing)});
    EXPECT_EQ(established.close.initiator, Initiator::Peer);
    EXPECT_NE(established.close.cause, CloseCause::Refused);
}

// The client sent bytes (the socket counts them) that no message record shows: no probe. Its
// idle at the close says what it can.
TEST(TrackerCause, BytesWithoutMessagesAreNoProbe) {
    const Socket socket;
    SockSnapshot sent = activity(1 * kSec + kMs, 1 * kSec + 2 * kMs);
    sent.bytes_out = 0;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.state(1 * kSec + 9 * kMs, kTcpEstablished, kTcpCloseWait, sent),
    });
    EXPECT_EQ(conn.close.cause, CloseCause::ClosedAfterUse);
    SockSnapshot unknown_idle = activity(0, 0);
    const Connection idle_unknown = run_one({
        socket.established(1 * kSec),
        socket.state(1 * kSec + 9 * kMs, kTcpEstablished, kTcpCloseWait, unknown_idle),
    });
    EXPECT_EQ(idle_unknown.close.cause, CloseCause::Unknown);
}

// The keep-alive timer closes the socket while a request that came after the idle waits unread:
// the kernel resets the connection (TCP_ABORT_ON_CLOSE). A close race, not an in-flight loss.
TEST(TrackerCause, UnreadRequestAfterIdleIsARace) {
    const Socket socket;
    const uint64_t response_ns = 1 * kSec + 2 * kMs;
    const uint64_t late_ns = response_ns + 2 * kSec;
    const uint64_t close_ns = late_ns + 300 * kUs;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(1 * kSec + kMs, Direction::In, kGet),
        socket.message(response_ns, Direction::Out, kOk),
        socket.message(late_ns, Direction::In, kLatePost),
        owner_close(socket, close_ns, activity(late_ns, response_ns, 70), true),
        socket.reset_sent(close_ns, "TCP_ABORT_ON_CLOSE"),
    });
    EXPECT_EQ(conn.verdict, Verdict::LocalCloseRace);
    EXPECT_EQ(conn.close.cause, CloseCause::UnreadRequest);
    EXPECT_EQ(conn.close.unread_bytes, 70u);
    EXPECT_EQ(conn.comm, "node");
    ASSERT_EQ(conn.requests.size(), 2u);
    EXPECT_EQ(conn.requests[1].outcome, Outcome::UnreadAtClose);
    EXPECT_EQ(conn.requests[1].idle_before_ms, 2000.0);
    // Idle since the last completed exchange, not since the late request.
    EXPECT_NEAR(*conn.close.idle_ms, 2000.3, 1e-6);
}

TEST(TrackerCause, UnreadRequestWithoutIdleIsAnInflightLoss) {
    const Socket socket;
    const uint64_t response_ns = 1 * kSec + 2 * kMs;
    const uint64_t next_ns = response_ns + 1 * kMs;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(1 * kSec + kMs, Direction::In, kGet),
        socket.message(response_ns, Direction::Out, kOk),
        socket.message(next_ns, Direction::In, kLatePost),
        owner_close(socket, next_ns + 5 * kMs, activity(next_ns, response_ns, 70), true),
        socket.reset_sent(next_ns + 5 * kMs, "TCP_ABORT_ON_CLOSE"),
    });
    EXPECT_EQ(conn.verdict, Verdict::LocalResetInflight);
    EXPECT_EQ(conn.close.cause, CloseCause::UnreadRequest);
    EXPECT_EQ(conn.requests[1].outcome, Outcome::UnreadAtClose);
}

constexpr std::string_view kUpgrade =
    "GET /ws HTTP/1.1\r\nHost: backend\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
constexpr std::string_view kSwitched =
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
// A masked WebSocket text frame from the client, an unmasked one from the server.
constexpr std::string_view kClientFrame = "\x81\x85" "abcd" "\x09\x07\x0f\x08\x0e";
constexpr std::string_view kServerFrame = "\x81\x05hello";

// A WebSocket's application (its heartbeat giving up on a silent client) closes it 2 s after the
// last frame: no keep-alive timer, whatever the idle; a frame crossing the close is no request.
TEST(TrackerCause, WebSocketClosedByItsApplicationIsUpgraded) {
    const Socket socket;
    const uint64_t frames_ns = 1 * kSec + 3 * kMs;
    const uint64_t close_ns = frames_ns + 2 * kSec;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(1 * kSec + kMs, Direction::In, kUpgrade),
        socket.message(1 * kSec + 2 * kMs, Direction::Out, kSwitched),
        socket.message(frames_ns, Direction::In, kClientFrame),
        socket.message(frames_ns + kMs, Direction::Out, kServerFrame),
        owner_close(socket, close_ns, activity(frames_ns, frames_ns + kMs), false),
        socket.message(close_ns + kMs, Direction::In, kClientFrame),
        socket.reset_sent(close_ns + kMs, "TCP_CLOSE", kClientFrame),
    });
    EXPECT_EQ(conn.verdict, Verdict::LocalIdleClose);
    EXPECT_EQ(conn.close.cause, CloseCause::Upgraded);
    ASSERT_EQ(conn.requests.size(), 1u);
    EXPECT_EQ(conn.requests[0].status, 101);
    EXPECT_EQ(conn.requests[0].outcome, Outcome::Completed);
    EXPECT_EQ(conn.requests_omitted, 0u);
}

// An upgrade on a connection that served requests before: the kernel counts the earlier ones
// and writes the upgrade with its 101; bytes behind the upgrade request (pipelined) are the new
// protocol's.
TEST(TrackerCause, WebSocketOnAReusedConnectionIsUpgraded) {
    const Socket socket;
    const uint64_t upgrade_ns = 1 * kSec + 10 * kMs;
    const std::string pipelined = std::string(kUpgrade) + "GET /not-http HTTP/1.1\r\n\r\n";
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(1 * kSec + kMs, Direction::In, kGet),
        socket.message(1 * kSec + 2 * kMs, Direction::Out, kOk),
        socket.numbered(upgrade_ns, Direction::In, pipelined, 3, 3, 1 * kSec + 5 * kMs),
        socket.numbered(upgrade_ns + kMs, Direction::Out, kSwitched, 4, 3, upgrade_ns),
        owner_close(socket, upgrade_ns + 3 * kSec, activity(upgrade_ns, upgrade_ns + kMs),
                    false),
    });
    EXPECT_EQ(conn.verdict, Verdict::LocalIdleClose);
    EXPECT_EQ(conn.close.cause, CloseCause::Upgraded);
    ASSERT_EQ(conn.requests.size(), 2u);
    EXPECT_EQ(conn.requests[1].target, "/ws");
    EXPECT_EQ(conn.requests[1].status, 101);
    EXPECT_EQ(conn.requests_omitted, 2u);  // the two exchanges counted between the listed ones
}

// Frames left unread when the application closes reset the connection: no request was unread.
TEST(TrackerCause, WebSocketResetWithFramesUnreadIsUpgraded) {
    const Socket socket;
    const uint64_t frame_ns = 1 * kSec + 3 * kMs;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(1 * kSec + kMs, Direction::In, kUpgrade),
        socket.message(1 * kSec + 2 * kMs, Direction::Out, kSwitched),
        socket.message(frame_ns, Direction::In, kClientFrame),
        owner_close(socket, frame_ns + kMs, activity(frame_ns, 1 * kSec + 2 * kMs, 11), true),
        socket.reset_sent(frame_ns + kMs, "TCP_ABORT_ON_CLOSE"),
    });
    EXPECT_EQ(conn.verdict, Verdict::LocalReset);
    EXPECT_EQ(conn.close.cause, CloseCause::Upgraded);
}

TEST(TrackerCause, CrashWithARequestReadIsAProcessExit) {
    const Socket socket;
    const uint64_t request_ns = 1 * kSec + kMs;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(request_ns, Direction::In, kLatePost),
        owner_close(socket, request_ns + 600 * kMs, activity(request_ns, 0), false, true),
    });
    EXPECT_EQ(conn.verdict, Verdict::LocalResetInflight);
    EXPECT_EQ(conn.close.cause, CloseCause::ProcessExit);
    EXPECT_EQ(conn.requests[0].outcome, Outcome::UnansweredAtClose);
}

// A keep-alive connection, idle since `idle_from_ns`, that this host's process closes at
// `close_ns`; with `late`, a request comes just after the close.
std::vector<Event> closed_idle(const Socket& socket, uint64_t idle_from_ns, uint64_t close_ns,
                               bool late = false) {
    std::vector<Event> events{
        socket.established(idle_from_ns - 2 * kMs),
        socket.message(idle_from_ns - kMs, Direction::In, kGet),
        socket.message(idle_from_ns, Direction::Out, kOk),
        owner_close(socket, close_ns, activity(idle_from_ns - kMs, idle_from_ns), false),
    };
    if (late) events.push_back(socket.message(close_ns + 300 * kUs, Direction::In, kLatePost));
    return events;
}

Socket other_socket(uint64_t cookie) {
    Socket socket;
    socket.cookie = cookie;
    socket.tuple = ipv4_tuple(8080, static_cast<uint16_t>(51000 + cookie));
    return socket;
}

std::vector<Event> joined(std::initializer_list<std::vector<Event>> parts) {
    std::vector<Event> events;
    for (const std::vector<Event>& part : parts) {
        events.insert(events.end(), part.begin(), part.end());
    }
    std::ranges::stable_sort(events, {}, &Event::ts_ns);
    return events;
}

// Node's server.close() closes every idle keep-alive connection at once, however long each was
// idle: no timer, and a request sent on one of them meanwhile is a shutdown's 502.
TEST(TrackerCause, IdleConnectionsClosedTogetherAreAShutdown) {
    const uint64_t close_ns = 5'340 * kMs;
    const std::vector<Connection> conns = run(joined({
        closed_idle(other_socket(1), 1 * kSec, close_ns, true),
        closed_idle(other_socket(2), 1 * kSec, close_ns + 40 * kUs),
        closed_idle(other_socket(3), 4'700 * kMs, close_ns + 80 * kUs),
    }));
    ASSERT_EQ(conns.size(), 3u);
    for (const Connection& conn : conns) {
        EXPECT_EQ(conn.close.cause, CloseCause::ClosedTogether) << conn.remote.port;
    }
    EXPECT_EQ(conns[0].verdict, Verdict::LocalCloseRace);
    EXPECT_EQ(conns[1].verdict, Verdict::LocalIdleClose);
}

// Live, connections are finalised at the poll after their linger, however late it comes: the
// closes they were at once with are decided by then.
TEST(TrackerCause, ClosedTogetherAlsoWhenFinalisedLive) {
    const uint64_t close_ns = 5'340 * kMs;
    ConnTracker tracker;
    for (const Event& event : joined({
             closed_idle(other_socket(1), 1 * kSec, close_ns, true),
             closed_idle(other_socket(2), 4'700 * kMs, close_ns + 40 * kUs),
         })) {
        tracker.on_event(event);
    }
    EXPECT_TRUE(tracker.take_finished(close_ns + 100 * kMs).empty());  // still open
    // Their sockets gone (time-wait), and the poll after the linger late by half a second.
    tracker.on_event(other_socket(1).state(close_ns + kMs, kTcpFinWait1, kTcpClose));
    tracker.on_event(other_socket(2).state(close_ns + kMs, kTcpFinWait1, kTcpClose));
    const std::vector<Connection> conns = tracker.take_finished(close_ns + 2'500 * kMs);
    ASSERT_EQ(conns.size(), 2u);
    for (const Connection& conn : conns) {
        EXPECT_EQ(conn.close.cause, CloseCause::ClosedTogether) << conn.remote.port;
    }
}

// A balancer reloading (nginx -s reload) closes its idle upstream connections at once: the peer's
// FINs tell no idle timeout of the peer.
TEST(TrackerCause, PeerClosesTogetherAreARestartNotItsTimer) {
    const uint64_t close_ns = 5'340 * kMs;
    const auto peer_closes = [&](const Socket& socket, uint64_t idle_from_ns, uint64_t at_ns) {
        return std::vector<Event>{
            socket.established(idle_from_ns - 2 * kMs),
            socket.message(idle_from_ns - kMs, Direction::In, kGet),
            socket.message(idle_from_ns, Direction::Out, kOk),
            socket.state(at_ns, kTcpEstablished, kTcpCloseWait,
                         activity(idle_from_ns - kMs, idle_from_ns)),
        };
    };
    Socket elsewhere = other_socket(3);
    elsewhere.tuple.raddr[3] = 9;  // another peer closing at that moment
    const std::vector<Connection> conns = run(joined({
        peer_closes(other_socket(1), 1 * kSec, close_ns),
        peer_closes(other_socket(2), 4'700 * kMs, close_ns + 30 * kUs),
        peer_closes(elsewhere, 3 * kSec, close_ns + 60 * kUs),
    }));
    ASSERT_EQ(conns.size(), 3u);
    std::map<std::string, CloseCause> by_peer;
    for (const Connection& conn : conns) {
        by_peer[conn.remote.addr + ":" + std::to_string(conn.remote.port)] = conn.close.cause;
        EXPECT_EQ(conn.verdict, Verdict::PeerIdleClose);
    }
    EXPECT_EQ(by_peer, (std::map<std::string, CloseCause>{
                           {"10.0.0.1:51001", CloseCause::ClosedTogether},
                           {"10.0.0.1:51002", CloseCause::ClosedTogether},
                           {"10.0.0.9:51003", CloseCause::IdleTimer}}));
}

// A timer closes at once only connections idle since the same moment; and another process's
// close at that moment is not this one's.
TEST(TrackerCause, TimerClosesAtOnceStayTimers) {
    const uint64_t close_ns = 6 * kSec;
    std::vector<Event> other_process =
        closed_idle(other_socket(3), 5'500 * kMs, close_ns + 20 * kUs);
    other_process.back().pid = 777;
    const std::vector<Connection> conns = run(joined({
        closed_idle(other_socket(1), 1 * kSec, close_ns, true),
        closed_idle(other_socket(2), 1 * kSec + 200 * kUs, close_ns + 200 * kUs),
        other_process,
    }));
    ASSERT_EQ(conns.size(), 3u);
    EXPECT_EQ(conns[0].close.cause, CloseCause::IdleTimer);
    EXPECT_EQ(conns[0].verdict, Verdict::LocalCloseRace);
    EXPECT_EQ(conns[1].close.cause, CloseCause::IdleTimer);
    EXPECT_EQ(conns[2].close.cause, CloseCause::KeepaliveEnded);  // 0.5 s after its response
}

// Node's server.maxConnections: a connection over the limit is closed as soon as it is accepted,
// and the balancer's request on it meets the close.
TEST(TrackerCause, ClosedAsItOpenedIsRefused) {
    const Socket socket;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        owner_close(socket, 1 * kSec + 1'200 * kUs, activity(1 * kSec, 1 * kSec), false),
        socket.message(1 * kSec + 1'500 * kUs, Direction::In, kLatePost),
    });
    EXPECT_EQ(conn.verdict, Verdict::LocalCloseRace);
    EXPECT_EQ(conn.close.cause, CloseCause::Refused);
}

TEST(TrackerCause, PooledConnectionForgottenInBetween) {
    Socket socket;
    socket.role = Role::Client;
    const uint64_t request_ns = 1 * kSec + kMs;
    const uint64_t reused_ns = request_ns + 5 * kSec;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(request_ns, Direction::Out, kGet),
        socket.message(request_ns + kMs, Direction::In, kOk),
        socket.message(reused_ns, Direction::Out, kGet),
        socket.reset_received(reused_ns + 70 * kUs),
    });
    EXPECT_EQ(conn.verdict, Verdict::PeerCloseInflight);
    EXPECT_EQ(conn.close.cause, CloseCause::Forgotten);
}

// Three requests in one segment, the three responses each in its own (the kernel reports every
// segment that opens a response).
TEST(TrackerCause, PipelinedRequestsEachMatchTheirResponse) {
    const Socket socket;
    const std::string three = std::string(kGet) + std::string(kGet) + std::string(kGet);
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.message(1 * kSec + kMs, Direction::In, three),
        socket.message(1 * kSec + 2 * kMs, Direction::Out, kOk),
        socket.message(1 * kSec + 3 * kMs, Direction::Out, kOk),
        socket.message(1 * kSec + 4 * kMs, Direction::Out, kOk),
        socket.state(1 * kSec + 15 * kMs, kTcpEstablished, kTcpCloseWait,
                     activity(1 * kSec + kMs, 1 * kSec + 4 * kMs)),
    });
    EXPECT_EQ(outcomes(conn), (std::vector<Outcome>(3, Outcome::Completed)));
    EXPECT_EQ(conn.verdict, Verdict::PeerIdleClose);
    EXPECT_EQ(conn.close.cause, CloseCause::ClosedAfterUse);
}

// --- messages the kernel only counted --------------------------------------------------------

// A busy keep-alive connection: the kernel wrote its first exchange and, at the close, its last
// one; the nine exchanges between are known by their numbers.
TEST(TrackerCounted, ExchangesBetweenWrittenOnesAreCountedAsCompleted) {
    const Socket socket;
    const uint64_t last_request_ns = 2 * kSec;
    const uint64_t last_response_ns = last_request_ns + kMs;
    const uint64_t fin_ns = last_response_ns + 5 * kSec;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.numbered(1 * kSec + kMs, Direction::In, kGet, 0, 0, 0),
        socket.numbered(1 * kSec + 2 * kMs, Direction::Out, kOk, 1, 0, 1 * kSec + kMs),
        socket.numbered(last_request_ns, Direction::In, kGet, 10, 10, last_request_ns - 3 * kMs),
        socket.numbered(last_response_ns, Direction::Out, kOk, 11, 10, last_request_ns),
        socket.state(fin_ns, kTcpEstablished, kTcpFinWait1,
                     activity(last_request_ns, last_response_ns)),
    });
    EXPECT_EQ(conn.request_count(), 11u);
    EXPECT_EQ(conn.requests_omitted, 9u);
    ASSERT_EQ(conn.requests.size(), 2u);
    EXPECT_EQ(outcomes(conn), (std::vector<Outcome>(2, Outcome::Completed)));
    EXPECT_EQ(conn.requests.back().response_ns, last_response_ns);
    // From the kernel's previous message, not from the last message written.
    EXPECT_EQ(conn.requests.back().idle_before_ms, 3.0);
    EXPECT_EQ(conn.verdict, Verdict::LocalIdleClose);
    EXPECT_EQ(conn.close.cause, CloseCause::IdleTimer);
}

// The same connection still open when the recording ends: the kernel writes its held messages
// then (record's iterator), with no close after them. Every exchange is counted and answered:
// none is left in flight.
TEST(TrackerCounted, MessagesHeldUntilTheEndOfAnOpenConnectionAreCountedAndAnswered) {
    const Socket socket;
    const uint64_t last_request_ns = 2 * kSec;
    const uint64_t last_response_ns = last_request_ns + kMs;
    Event held_request =
        socket.numbered(last_request_ns, Direction::In, kGet, 10, 10, last_request_ns - 3 * kMs);
    Event held_response =
        socket.numbered(last_response_ns, Direction::Out, kOk, 11, 10, last_request_ns);
    held_request.held = held_response.held = true;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.numbered(1 * kSec + kMs, Direction::In, kGet, 0, 0, 0),
        socket.numbered(1 * kSec + 2 * kMs, Direction::Out, kOk, 1, 0, 1 * kSec + kMs),
        held_request,
        held_response,
    });
    EXPECT_EQ(conn.request_count(), 11u);
    EXPECT_EQ(outcomes(conn), (std::vector<Outcome>(2, Outcome::Completed)));
    EXPECT_EQ(conn.verdict, Verdict::Open);
    EXPECT_FALSE(conn.closed_ns);
}

// The client gives up on a request the kernel held until the close: it is the one listed as
// unanswered, after the requests only counted, all answered.
TEST(TrackerCounted, RequestHeldUntilTheCloseIsTheOneInFlight) {
    const Socket socket;
    const uint64_t answered_ns = 3 * kSec;
    const uint64_t stuck_ns = answered_ns + 100 * kMs;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.numbered(1 * kSec + kMs, Direction::In, kGet, 0, 0, 0),
        socket.numbered(1 * kSec + 2 * kMs, Direction::Out, kOk, 1, 0, 1 * kSec + kMs),
        socket.numbered(answered_ns, Direction::Out, kOk, 5, 4, answered_ns - kMs),
        socket.numbered(stuck_ns, Direction::In, kLatePost, 5, 5, answered_ns),
        socket.state(stuck_ns + 30 * kSec, kTcpEstablished, kTcpCloseWait,
                     activity(stuck_ns, answered_ns)),
    });
    EXPECT_EQ(conn.request_count(), 6u);
    ASSERT_EQ(conn.requests.size(), 2u);
    EXPECT_EQ(conn.requests.back().method, "POST");
    EXPECT_EQ(conn.requests.back().idle_before_ms, 100.0);
    EXPECT_EQ(outcomes(conn),
              (std::vector<Outcome>{Outcome::Completed, Outcome::UnansweredAtClose}));
    EXPECT_EQ(conn.verdict, Verdict::PeerCloseInflight);
}

// A request after an idle gap is written with the response that answers it, between requests
// only counted: it is listed with its own status.
TEST(TrackerCounted, RequestAfterAnIdleGapMatchesItsOwnResponse) {
    const Socket socket;
    const uint64_t gap_request_ns = 10 * kSec;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.numbered(1 * kSec + kMs, Direction::In, kGet, 0, 0, 0),
        socket.numbered(1 * kSec + 2 * kMs, Direction::Out, kOk, 1, 0, 1 * kSec + kMs),
        socket.numbered(gap_request_ns, Direction::In, kLatePost, 3, 3, 2 * kSec),
        socket.numbered(gap_request_ns + kMs, Direction::Out, "HTTP/1.1 201 Created\r\n\r\n", 4, 3,
                        gap_request_ns),
        socket.state(gap_request_ns + 6 * kSec, kTcpEstablished, kTcpFinWait1,
                     activity(gap_request_ns, gap_request_ns + kMs)),
    });
    EXPECT_EQ(conn.request_count(), 4u);
    ASSERT_EQ(conn.requests.size(), 2u);
    EXPECT_EQ(conn.requests.back().status, 201);
    EXPECT_EQ(conn.requests.back().idle_before_ms, 8000.0);
    EXPECT_EQ(outcomes(conn), (std::vector<Outcome>(2, Outcome::Completed)));
}

// The client sends its last request with its FIN: the kernel writes the held request and the
// older held response as the connection begins to close, then the response after the FIN. The
// counts each record carries of both kinds place every response on its own request.
TEST(TrackerCounted, ResponsesHeldAndWrittenAfterTheFinAnswerTheirOwnRequests) {
    const Socket socket;
    const uint64_t last_ns = 5 * kSec;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.numbered(1 * kSec + kMs, Direction::In, kGet, 0, 0, 0),
        socket.numbered(1 * kSec + 2 * kMs, Direction::Out, kOk, 1, 0, 1 * kSec + kMs),
        socket.numbered(last_ns - kMs, Direction::Out, kOk, 5, 4, last_ns - 2 * kMs),
        socket.numbered(last_ns, Direction::In, kGet, 5, 5, last_ns - kMs),
        socket.state(last_ns + 10 * kUs, kTcpEstablished, kTcpCloseWait, activity(last_ns, 0)),
        socket.numbered(last_ns + kMs, Direction::Out, kOk, 6, 5, last_ns),
        socket.state(last_ns + 2 * kMs, kTcpCloseWait, kTcpLastAck,
                     activity(last_ns, last_ns + kMs)),
    });
    EXPECT_EQ(conn.request_count(), 6u);
    EXPECT_EQ(outcomes(conn), (std::vector<Outcome>(2, Outcome::Completed)));
    EXPECT_EQ(conn.requests.back().response_ns, last_ns + kMs);
    EXPECT_EQ(conn.verdict, Verdict::PeerIdleClose);
}

// The balancer gives up on the request in flight (its client left: 460) and closes; this host
// answers after that FIN, and the balancer's socket, gone, answers the response with an RST.
// The response answered no one: the request was in flight when the peer closed.
TEST(TrackerCounted, AResponseThePeerResetsAfterItsFinAnswersNoOne) {
    const Socket socket;
    const uint64_t last_ns = 5 * kSec, fin_ns = last_ns + 3 * kMs;
    const Connection conn = run_one({
        socket.established(1 * kSec),
        socket.numbered(1 * kSec + kMs, Direction::In, kGet, 0, 0, 0),
        socket.numbered(1 * kSec + 2 * kMs, Direction::Out, kOk, 1, 0, 1 * kSec + kMs),
        socket.numbered(last_ns, Direction::In, kGet, 1, 1, 1 * kSec + 2 * kMs),
        socket.state(fin_ns, kTcpEstablished, kTcpCloseWait, activity(last_ns, 0)),
        socket.numbered(fin_ns + 200 * kUs, Direction::Out, kOk, 2, 1, last_ns),
        socket.reset_received(fin_ns + 220 * kUs),
        socket.state(fin_ns + 220 * kUs, kTcpCloseWait, kTcpClose),
    });
    EXPECT_EQ(outcomes(conn),
              (std::vector<Outcome>{Outcome::Completed, Outcome::UnansweredAtClose}));
    EXPECT_FALSE(conn.requests.back().status);
    EXPECT_FALSE(conn.requests.back().response_ns);
    EXPECT_EQ(conn.verdict, Verdict::PeerCloseInflight);
}

// An h2c connection whose server (this host) sent GOAWAY after idle and closed, and whose
// client's next stream reached the time-wait socket: the HTTP/2 records make the verdict, the
// late stream is read from the reset it met, and the opaque HTTP/1 view is dropped.
TEST(TrackerHttp2, TheGoawayRaceIsJudgedByTheFrames) {
    const Socket socket;
    const uint64_t goaway_ns = 2'000'000'000, fin_ns = goaway_ns + 100'000;
    Event goaway = socket.event(EventKind::Http2, goaway_ns);
    goaway.http2.direction = Direction::Out;
    goaway.http2.frame_type = CT_HTTP2_GOAWAY;
    goaway.http2.local = {.goaway_count = 1, .goaway_last_stream_id = 1};
    goaway.http2.peer = {.last_frame_ns = 1'000'000'000, .streams_opened = 1, .last_stream_id = 1};
    Event counts = goaway;
    counts.ts_ns = fin_ns + 200'000;
    counts.http2.kind = Http2RecordKind::Close;
    const std::string late_headers("\x00\x00\x02\x01\x04\x00\x00\x00\x03hp", 11);
    const Connection conn = run_one({
        socket.established(1'000),
        socket.message(1'000'000, Direction::In, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        goaway,
        socket.state(fin_ns, kTcpEstablished, kTcpFinWait1),
        counts,
        socket.state(fin_ns + 200'000, kTcpFinWait2, kTcpClose),
        socket.time_wait_reset(fin_ns + 500'000'000, late_headers),
    });
    ASSERT_TRUE(conn.http2);
    ASSERT_EQ(conn.http2->caught.size(), 1u);
    EXPECT_EQ(conn.http2->caught[0].id, 3u);
    EXPECT_EQ(conn.http2->caught[0].fate, StreamFate::AfterGoaway);
    EXPECT_EQ(conn.verdict, Verdict::LocalCloseRace);
    EXPECT_EQ(conn.close.cause, CloseCause::IdleTimer);
    EXPECT_TRUE(conn.requests.empty());
}

}  // namespace
}  // namespace closetrace
