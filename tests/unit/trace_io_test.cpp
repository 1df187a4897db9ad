#include "closetrace/trace_io.h"

#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <limits>
#include <sstream>
#include <streambuf>
#include <system_error>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace closetrace {
namespace {

constexpr uint64_t kMaxU64 = std::numeric_limits<uint64_t>::max();

// ---------------------------------------------------------------------------------------------
// Samples and helpers

TraceHeader sample_header() {
    TraceHeader header;
    header.tool_version = "0.1.0";
    header.host = "ip-10-0-1-17";
    header.kernel = "6.18.44";
    header.start_ns = 123456789;
    header.start_wall = "2026-11-25T01:02:03.123456Z";
    header.mono_to_wall_ns = 1795000000000000000;
    header.filters.ports = {8080, 443};
    header.probes.state = "tp_btf/inet_sock_set_state";
    header.probes.reset_sent = "tp_btf/tcp_send_reset";
    header.probes.reset_received = "tp_btf/tcp_receive_reset";
    header.probes.messages = "cgroup_skb";
    header.probes.rst_reason = true;
    return header;
}

// The conn example of docs/trace-format.md.
Connection sample_connection() {
    Connection conn;
    conn.id = 17;
    conn.cookie = 8231;
    conn.netns = 4026531840;
    conn.family = "ipv4";
    conn.local = {"10.0.0.2", 8080};
    conn.remote = {"10.0.0.1", 51234};
    conn.role = Role::Server;
    conn.pid = 4242;
    conn.comm = "node";
    conn.established_ns = 1000;
    conn.closed_ns = 2000;
    conn.bytes_in = 812;
    conn.bytes_out = 1640;
    conn.segs_in = 9;
    conn.segs_out = 8;
    conn.close = CloseInfo{
        .initiator = Initiator::Local,
        .how = CloseHow::Fin,
        .local_fin_ns = 1900,
        .peer_fin_ns = 1950,
        .local_rst_ns = 1960,
        .peer_rst_ns = std::nullopt,
        .rst_reason = "TCP_TIMEWAIT_SOCKET",
        .idle_ms = 2001.2,
        .cause = CloseCause::IdleTimer,
        .asked_by = std::nullopt,
        .unread_bytes = 0,
    };
    conn.requests = {
        Request{.method = "GET", .target = "/a", .status = 200, .request_ns = 1100,
                .response_ns = 1102, .outcome = Outcome::Completed, .idle_before_ms = 0.1},
        Request{.method = "POST", .target = "/pay", .status = std::nullopt, .request_ns = 1955,
                .response_ns = std::nullopt, .outcome = Outcome::AfterLocalClose,
                .idle_before_ms = 2052.5},
    };
    conn.verdict = Verdict::LocalCloseRace;
    return conn;
}

TraceSummary sample_summary() {
    TraceSummary summary;
    summary.connections = 120;
    summary.open_at_end = 3;
    summary.requests = 900;
    summary.lost_events = 0;
    summary.events = 1400;
    summary.duration_s = 10.02;
    summary.end_ns = 1010000000;
    summary.by_initiator = {{"local", 80}, {"peer", 37}, {"unknown", 3}};
    summary.by_how = {{"fin", 110}, {"rst", 7}, {"none", 3}};
    summary.verdicts = {{"local_idle_close", 70}, {"local_close_race", 2}, {"open", 3}};
    return summary;
}

std::string every_byte() {
    std::string bytes;
    for (int value = 0; value < 256; ++value) bytes += static_cast<char>(value);
    return bytes;
}

// Lines joined, each ending in '\n'.
std::string trace_text(std::initializer_list<std::string> lines) {
    std::string text;
    for (const std::string& line : lines) text += line + "\n";
    return text;
}

std::string replaced(std::string text, std::string_view from, std::string_view to) {
    const std::size_t at = text.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    if (at != std::string::npos) text.replace(at, from.size(), to);
    return text;
}

struct ReadResult {
    TraceHeader header;
    std::vector<TraceRecord> records;
    std::vector<std::string> warnings;
};

ReadResult read_trace(const std::string& text) {
    std::istringstream in(text);
    TraceReader reader(in, "t.jsonl");
    ReadResult result{reader.header(), {}, {}};
    // Copied, not moved: the reader reads the next line into what it holds.
    while (const TraceRecord* record = reader.next()) result.records.push_back(*record);
    result.warnings = reader.warnings();
    return result;
}

// The error reading `text` throws.
TraceError read_error(const std::string& text) {
    try {
        read_trace(text);
    } catch (const TraceError& error) {
        return error;
    }
    ADD_FAILURE() << "no TraceError for:\n" << text;
    return TraceError("", 0, "");
}

// A trace with one conn line, read back.
Connection conn_round_trip(const Connection& conn) {
    const ReadResult result =
        read_trace(trace_text({header_line(sample_header()), conn_line(conn)}));
    EXPECT_EQ(result.records.size(), 1u);
    return std::get<Connection>(result.records.at(0));
}

void expect_same_request(const Request& actual, const Request& expected) {
    EXPECT_EQ(actual.method, expected.method);
    EXPECT_EQ(actual.target, expected.target);
    EXPECT_EQ(actual.opaque, expected.opaque);
    EXPECT_EQ(actual.status, expected.status);
    EXPECT_EQ(actual.request_ns, expected.request_ns);
    EXPECT_EQ(actual.response_ns, expected.response_ns);
    EXPECT_EQ(actual.outcome, expected.outcome);
    EXPECT_EQ(actual.idle_before_ms, expected.idle_before_ms);
    EXPECT_EQ(actual.close_asked, expected.close_asked);
}

// The members of a conn line that no stage reads are not decoded: a record holds their defaults.
void expect_not_decoded(const Connection& read) {
    EXPECT_EQ(read.family, "");
    EXPECT_EQ(read.owner_from, std::nullopt);
    EXPECT_EQ(read.cgroup_id, 0u);
    EXPECT_EQ(read.cgroup, std::nullopt);
    EXPECT_EQ(read.bytes_in, 0u);
    EXPECT_EQ(read.bytes_out, 0u);
    EXPECT_EQ(read.segs_in, 0u);
    EXPECT_EQ(read.segs_out, 0u);
    if (read.container) {
        EXPECT_EQ(read.container->pod_uid, std::nullopt);
        EXPECT_EQ(read.container->ecs, std::nullopt);
    }
}

void expect_same_connection(const Connection& actual, const Connection& expected) {
    EXPECT_EQ(actual.id, expected.id);
    EXPECT_EQ(actual.cookie, expected.cookie);
    EXPECT_EQ(actual.netns, expected.netns);
    EXPECT_EQ(actual.local, expected.local);
    EXPECT_EQ(actual.remote, expected.remote);
    EXPECT_EQ(actual.role, expected.role);
    EXPECT_EQ(actual.pid, expected.pid);
    EXPECT_EQ(actual.comm, expected.comm);
    EXPECT_EQ(actual.established_ns, expected.established_ns);
    EXPECT_EQ(actual.closed_ns, expected.closed_ns);
    expect_not_decoded(actual);
    EXPECT_EQ(actual.close.initiator, expected.close.initiator);
    EXPECT_EQ(actual.close.how, expected.close.how);
    EXPECT_EQ(actual.close.local_fin_ns, expected.close.local_fin_ns);
    EXPECT_EQ(actual.close.peer_fin_ns, expected.close.peer_fin_ns);
    EXPECT_EQ(actual.close.local_rst_ns, expected.close.local_rst_ns);
    EXPECT_EQ(actual.close.peer_rst_ns, expected.close.peer_rst_ns);
    EXPECT_EQ(actual.close.rst_reason, expected.close.rst_reason);
    EXPECT_EQ(actual.close.idle_ms, expected.close.idle_ms);
    EXPECT_EQ(actual.close.cause, expected.close.cause);
    EXPECT_EQ(actual.close.asked_by, expected.close.asked_by);
    EXPECT_EQ(actual.close.unread_bytes, expected.close.unread_bytes);
    EXPECT_EQ(actual.health_check, expected.health_check);
    EXPECT_EQ(actual.keep_alive_timeout_s, expected.keep_alive_timeout_s);
    EXPECT_EQ(actual.incomplete, expected.incomplete);
    EXPECT_EQ(actual.other_end, expected.other_end);
    EXPECT_EQ(actual.requests_lower_bound, expected.requests_lower_bound);
    ASSERT_EQ(actual.requests.size(), expected.requests.size());
    for (std::size_t i = 0; i < expected.requests.size(); ++i) {
        SCOPED_TRACE(testing::Message() << "request " << i);
        expect_same_request(actual.requests[i], expected.requests[i]);
    }
    EXPECT_EQ(actual.verdict, expected.verdict);
}

std::vector<std::string> member_names(const nlohmann::ordered_json& object) {
    std::vector<std::string> names;
    for (const auto& [name, value] : object.items()) names.push_back(name);
    return names;
}

bool is_printable_ascii(std::string_view text) {
    return std::all_of(text.begin(), text.end(), [](char c) { return c >= 0x20 && c < 0x7F; });
}

// Code points of a UTF-8 string (nlohmann's view of a trace string), as bytes when all <= 0xFF.
std::string latin1_from_utf8(const std::string& text) {
    std::string bytes;
    for (std::size_t i = 0; i < text.size(); ++i) {
        const auto lead = static_cast<unsigned char>(text[i]);
        if (lead < 0x80) {
            bytes += text[i];
        } else {
            const auto next = static_cast<unsigned char>(text[++i]);
            bytes += static_cast<char>(((lead & 0x1F) << 6) | (next & 0x3F));
        }
    }
    return bytes;
}

Tuple ipv4_tuple() {
    Tuple tuple;
    tuple.family = AF_INET;
    tuple.laddr = {10, 0, 0, 2};
    tuple.raddr = {10, 0, 0, 1};
    tuple.lport = 8080;
    tuple.rport = 51234;
    return tuple;
}

// The lines of a recording with --raw-payloads: they keep the captured bytes.
constexpr PayloadPolicy kRawPayloads{.raw = true};

TraceEventLine event_round_trip(const Event& event, PayloadPolicy policy = kRawPayloads) {
    const ReadResult result =
        read_trace(trace_text({header_line(sample_header()), event_line(event, policy)}));
    EXPECT_EQ(result.records.size(), 1u);
    return std::get<TraceEventLine>(result.records.at(0));
}

// ---------------------------------------------------------------------------------------------
// Round trips

TEST(TraceIo, HeaderRoundTrips) {
    TraceHeader header = sample_header();
    header.filters.cgroup = "/sys/fs/cgroup/system.slice/api.service";
    header.filters.full_target = true;
    header.filters.raw_payloads = true;
    header.mono_to_wall_ns = std::numeric_limits<int64_t>::min();
    header.start_ns = kMaxU64;
    const TraceHeader read = read_trace(trace_text({header_line(header)})).header;
    EXPECT_EQ(read.schema, "closetrace/5");
    EXPECT_EQ(read.tool_version, header.tool_version);
    EXPECT_EQ(read.host, header.host);
    EXPECT_EQ(read.kernel, header.kernel);
    EXPECT_EQ(read.start_ns, header.start_ns);
    EXPECT_EQ(read.start_wall, header.start_wall);
    EXPECT_EQ(read.mono_to_wall_ns, header.mono_to_wall_ns);
    EXPECT_EQ(read.filters.ports, header.filters.ports);
    EXPECT_EQ(read.filters.cgroup, header.filters.cgroup);
    EXPECT_EQ(read.filters.full_target, header.filters.full_target);
    EXPECT_EQ(read.filters.raw_payloads, header.filters.raw_payloads);
    EXPECT_EQ(read.probes.state, header.probes.state);
    EXPECT_EQ(read.probes.reset_sent, header.probes.reset_sent);
    EXPECT_EQ(read.probes.reset_received, header.probes.reset_received);
    EXPECT_EQ(read.probes.messages, header.probes.messages);
    EXPECT_EQ(read.probes.rst_reason, header.probes.rst_reason);
}

TEST(TraceIo, HeaderHasTheDocumentedMembers) {
    TraceHeader header = sample_header();
    header.probes.messages.reset();
    const auto json = nlohmann::ordered_json::parse(header_line(header));
    EXPECT_EQ(member_names(json),
              (std::vector<std::string>{"type", "schema", "tool_version", "host", "kernel",
                                        "start_ns", "start_wall", "mono_to_wall_ns", "filters",
                                        "probes"}));
    EXPECT_EQ(json["filters"].dump(), R"({"ports":[8080,443],"cgroup":null,"full_target":false,"raw_payloads":false,"netns":null,"container":null,"pid":null})");
    EXPECT_EQ(json["probes"]["messages"], nullptr);
    EXPECT_EQ(member_names(json["probes"]),
              (std::vector<std::string>{"state", "reset_sent", "reset_received", "messages",
                                        "rst_reason"}));
    const TraceHeader read = read_trace(trace_text({header_line(header)})).header;
    EXPECT_EQ(read.probes.messages, std::nullopt);
    EXPECT_EQ(read.filters.cgroup, std::nullopt);
}

TEST(TraceIo, ConnLineIsTheDocumentedExample) {
    EXPECT_EQ(
        conn_line(sample_connection()),
        R"({"type":"conn","id":17,"cookie":8231,"netns":4026531840,"family":"ipv4",)"
        R"("local":{"addr":"10.0.0.2","port":8080},"remote":{"addr":"10.0.0.1","port":51234},)"
        R"("role":"server","pid":4242,"comm":"node",)"
        R"("owner_from":null,"cgroup_id":0,"cgroup":null,"container":null,"health_check":null,)"
        R"("established_ns":1000,"closed_ns":2000,"bytes_in":812,"bytes_out":1640,)"
        R"("segs_in":9,"segs_out":8,)"
        R"("close":{"initiator":"local","how":"fin","local_fin_ns":1900,"peer_fin_ns":1950,)"
        R"("local_rst_ns":1960,"peer_rst_ns":null,"rst_reason":"TCP_TIMEWAIT_SOCKET",)"
        R"("idle_ms":2001.2,"cause":"idle_timer","asked_by":null,"unread_bytes":0},)"
        R"("requests":[{"method":"GET","target":"/a","status":200,"request_ns":1100,)"
        R"("response_ns":1102,"outcome":"completed","idle_before_ms":0.1},)"
        R"({"method":"POST","target":"/pay","status":null,"request_ns":1955,"response_ns":null,)"
        R"("outcome":"after_local_close","idle_before_ms":2052.5}],)"
        R"("requests_omitted":0,"verdict":"local_close_race","incomplete":false,)"
        R"("other_end":null})");
}

TEST(TraceIo, ConnRoundTrips) {
    expect_same_connection(conn_round_trip(sample_connection()), sample_connection());
}

TEST(TraceIo, ConnWithAwkwardValuesRoundTrips) {
    Connection conn;
    conn.id = kMaxU64;
    conn.cookie = kMaxU64;
    conn.netns = std::numeric_limits<uint32_t>::max();
    conn.family = "ipv6";
    conn.local = {"fd00::2", 65535};
    conn.remote = {"2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", 0};
    conn.role = Role::Unknown;
    conn.bytes_in = kMaxU64;
    conn.bytes_out = 0;
    conn.segs_in = kMaxU64;
    conn.segs_out = kMaxU64 - 1;
    conn.verdict = Verdict::Open;
    // Everything optional left empty first.
    expect_same_connection(conn_round_trip(conn), conn);

    conn.pid = std::numeric_limits<uint32_t>::max();
    conn.comm = every_byte();
    // Both ends of the range, in the order a connection has them (closed after established).
    conn.established_ns = 0;
    conn.closed_ns = kMaxU64;
    conn.close.initiator = Initiator::Peer;
    conn.close.how = CloseHow::Rst;
    conn.close.local_fin_ns = kMaxU64;
    conn.close.peer_fin_ns = 0;
    conn.close.local_rst_ns = 1;
    conn.close.peer_rst_ns = kMaxU64;
    conn.close.rst_reason = std::string("\0\"\\\n", 4);
    conn.close.idle_ms = 1e-300;
    for (int i = 0; i < 1000; ++i) {
        Request request;
        request.method = std::string(1, static_cast<char>(i % 256));
        request.target = every_byte().substr(static_cast<std::size_t>(i % 256));
        request.status = i % 2 ? std::optional<int>(INT_MIN + i) : std::optional<int>(INT_MAX - i);
        request.request_ns = kMaxU64 - static_cast<uint64_t>(i);
        if (i % 3) request.response_ns = static_cast<uint64_t>(i);
        request.outcome = static_cast<Outcome>(i % 5);
        conn.requests.push_back(request);
    }
    Request opaque;
    opaque.opaque = true;
    opaque.outcome = Outcome::UnansweredAtClose;
    conn.requests.push_back(opaque);
    expect_same_connection(conn_round_trip(conn), conn);
}

TEST(TraceIo, EveryEnumValueRoundTrips) {
    Connection conn = sample_connection();
    for (const Verdict verdict : kAllVerdicts) {
        conn.verdict = verdict;
        EXPECT_EQ(conn_round_trip(conn).verdict, verdict) << to_string(verdict);
    }
    for (const Initiator initiator : {Initiator::Local, Initiator::Peer, Initiator::Unknown}) {
        conn.close.initiator = initiator;
        EXPECT_EQ(conn_round_trip(conn).close.initiator, initiator);
    }
    for (const Role role : {Role::Server, Role::Client, Role::Unknown}) {
        conn.role = role;
        EXPECT_EQ(conn_round_trip(conn).role, role);
    }
    for (const Outcome outcome : {Outcome::Completed, Outcome::UnansweredAtClose,
                                  Outcome::AfterLocalClose, Outcome::AfterPeerClose,
                                  Outcome::InFlight, Outcome::UnreadAtClose}) {
        conn.requests[0].outcome = outcome;
        EXPECT_EQ(conn_round_trip(conn).requests[0].outcome, outcome);
    }
    for (const CloseCause cause : kAllCloseCauses) {
        conn.close.cause = cause;
        EXPECT_EQ(conn_round_trip(conn).close.cause, cause) << to_string(cause);
    }
    for (const Initiator side : {Initiator::Local, Initiator::Peer}) {
        conn.close.asked_by = side;
        EXPECT_EQ(conn_round_trip(conn).close.asked_by, side);
    }
    for (const CloseAsked asked : {CloseAsked::None, CloseAsked::Request, CloseAsked::Response}) {
        conn.requests[0].close_asked = asked;
        EXPECT_EQ(conn_round_trip(conn).requests[0].close_asked, asked);
    }
}

// Marked by a recorder that lost events; traces written before the mark read as complete.
TEST(TraceIo, IncompleteRoundTripsAndIsFalseWhenAbsent) {
    Connection conn = sample_connection();
    conn.incomplete = true;
    expect_same_connection(conn_round_trip(conn), conn);
    const std::string older = replaced(conn_line(sample_connection()), R"(,"incomplete":false)", "");
    const ReadResult read = read_trace(trace_text({header_line(sample_header()), older}));
    ASSERT_EQ(read.records.size(), 1u);
    EXPECT_FALSE(std::get<Connection>(read.records[0]).incomplete);
}

TEST(TraceIo, OtherEndRoundTripsAndIsNullWhenAbsent) {
    Connection conn = sample_connection();
    conn.other_end = OtherEnd{.cookie = 8232, .server = Initiator::Local};
    EXPECT_NE(conn_line(conn).find(R"(,"other_end":{"cookie":8232,"server":"local"})"),
              std::string::npos);
    expect_same_connection(conn_round_trip(conn), conn);
    conn.other_end->server.reset();
    expect_same_connection(conn_round_trip(conn), conn);
    const std::string older = replaced(conn_line(sample_connection()), R"(,"other_end":null)", "");
    const ReadResult read = read_trace(trace_text({header_line(sample_header()), older}));
    ASSERT_EQ(read.records.size(), 1u);
    EXPECT_EQ(std::get<Connection>(read.records[0]).other_end, std::nullopt);
    read_error(trace_text({header_line(sample_header()),
                           replaced(conn_line(conn), R"("server":null)", R"("server":"unknown")")}));
}

// Written only on a connection open at the end whose held messages the kernel could not hand
// over: absent, the requests are exact.
TEST(TraceIo, RequestsLowerBoundRoundTripsAndIsWrittenOnlyWhenTrue) {
    Connection conn = sample_connection();
    EXPECT_EQ(conn_line(conn).find("requests_lower_bound"), std::string::npos);
    EXPECT_FALSE(conn_round_trip(conn).requests_lower_bound);
    conn.requests_lower_bound = true;
    EXPECT_NE(conn_line(conn).find(R"(,"requests_lower_bound":true)"), std::string::npos);
    expect_same_connection(conn_round_trip(conn), conn);
}

// Since 2026-12-07: written only when a response announced a timeout; absent reads as none.
TEST(TraceIo, KeepAliveTimeoutWrittenOnlyWhenAnnounced) {
    Connection conn = sample_connection();
    EXPECT_EQ(conn_line(conn).find("keep_alive_timeout_s"), std::string::npos);
    EXPECT_EQ(conn_round_trip(conn).keep_alive_timeout_s, std::nullopt);
    conn.keep_alive_timeout_s = 5;
    EXPECT_NE(conn_line(conn).find(R"("health_check":null,"keep_alive_timeout_s":5,)"),
              std::string::npos);
    expect_same_connection(conn_round_trip(conn), conn);
}

TEST(TraceIo, CloseFactsRoundTrip) {
    Connection conn = sample_connection();
    conn.health_check = "ELB-HealthChecker";
    conn.close.unread_bytes = 93;
    conn.requests[1].outcome = Outcome::UnreadAtClose;
    conn.requests[1].idle_before_ms.reset();
    expect_same_connection(conn_round_trip(conn), conn);
}

// A closetrace/1 record has no cause: the reader derives it from what the record holds.
TEST(TraceReading, Schema1RecordsGetACause) {
    std::string header = replaced(header_line(sample_header()), "closetrace/5", "closetrace/1");
    Connection conn = sample_connection();
    conn.requests.pop_back();
    conn.verdict = Verdict::LocalIdleClose;
    std::string line = conn_line(conn);
    for (const std::string_view member :
         {R"(,"cause":"idle_timer","asked_by":null,"unread_bytes":0)", R"(,"idle_before_ms":0.1)",
          R"("health_check":null,)"}) {
        line = replaced(line, member, "");
    }
    const ReadResult read = read_trace(trace_text({header, line}));
    ASSERT_EQ(read.records.size(), 1u);
    const Connection& got = std::get<Connection>(read.records[0]);
    EXPECT_EQ(got.close.cause, CloseCause::IdleTimer);  // idle 2001.2 ms after the exchange
    EXPECT_EQ(got.requests[0].idle_before_ms, std::nullopt);
}

// Recorded before `upgraded` (2026-12-07), a WebSocket's close said what its idle told: read as
// upgraded, as classify_close says now; a process exit stays one.
TEST(TraceReading, WebSocketClosesRecordedBeforeUpgradedReadAsUpgraded) {
    Connection conn = sample_connection();
    conn.requests.pop_back();
    conn.requests[0].status = 101;
    conn.verdict = Verdict::LocalIdleClose;
    const std::string header = header_line(sample_header());
    for (const CloseCause written :
         {CloseCause::IdleTimer, CloseCause::KeepaliveEnded, CloseCause::UnreadRequest,
          CloseCause::ClosedTogether, CloseCause::ProcessExit}) {
        conn.close.cause = written;
        conn.close.asked_by =
            written == CloseCause::KeepaliveEnded ? std::optional(Initiator::Local) : std::nullopt;
        const ReadResult read = read_trace(trace_text({header, conn_line(conn)}));
        ASSERT_EQ(read.records.size(), 1u);
        const CloseInfo& got = std::get<Connection>(read.records[0]).close;
        EXPECT_EQ(got.cause, written == CloseCause::ProcessExit ? CloseCause::ProcessExit
                                                                 : CloseCause::Upgraded)
            << to_string(written);
        EXPECT_EQ(got.asked_by, std::nullopt);
    }
    // A frame that a reset answered after the close was listed as a late request: it is the
    // new protocol's, so no race; a closer not known stays so.
    Connection raced = conn;
    raced.close.cause = CloseCause::IdleTimer;
    raced.requests.push_back({.method = std::nullopt, .opaque = true, .request_ns = 1950,
                              .outcome = Outcome::AfterLocalClose});
    raced.verdict = Verdict::LocalCloseRace;
    const ReadResult read = read_trace(trace_text({header, conn_line(raced)}));
    const Connection& got = std::get<Connection>(read.records.at(0));
    EXPECT_EQ(got.verdict, Verdict::LocalIdleClose);
    EXPECT_EQ(got.close.cause, CloseCause::Upgraded);
    EXPECT_EQ(got.requests.size(), 1u);
    Connection unknown = conn;
    unknown.close = CloseInfo{};
    unknown.verdict = Verdict::Open;
    const ReadResult open = read_trace(trace_text({header, conn_line(unknown)}));
    EXPECT_EQ(std::get<Connection>(open.records.at(0)).close.cause, CloseCause::Unknown);
}

TEST(TraceIo, DoublesRoundTripExactly) {
    Connection conn = sample_connection();
    for (const double idle_ms : {0.1, 2001.2, 1e-300, 5e-324, 1.7976931348623157e308, -0.0, 3.0}) {
        conn.close.idle_ms = idle_ms;
        EXPECT_EQ(conn_round_trip(conn).close.idle_ms, idle_ms);
    }
}

TEST(TraceIo, OpaqueIsWrittenOnlyWhenTrue) {
    Connection conn = sample_connection();
    conn.requests[1] = Request{.method = std::nullopt, .target = std::nullopt, .opaque = true,
                               .status = std::nullopt, .request_ns = 5,
                               .response_ns = std::nullopt, .outcome = Outcome::InFlight};
    const auto json = nlohmann::ordered_json::parse(conn_line(conn));
    EXPECT_EQ(member_names(json["requests"][0]),
              (std::vector<std::string>{"method", "target", "status", "request_ns",
                                        "response_ns", "outcome", "idle_before_ms"}));
    EXPECT_EQ(member_names(json["requests"][1]),
              (std::vector<std::string>{"method", "target", "opaque", "status", "request_ns",
                                        "response_ns", "outcome", "idle_before_ms"}));
    EXPECT_EQ(json["requests"][1]["method"], nullptr);
    expect_same_connection(conn_round_trip(conn), conn);
}

TEST(TraceIo, SummaryRoundTrips) {
    TraceSummary summary = sample_summary();
    summary.lost_events = kMaxU64;
    summary.verdicts[every_byte()] = 1;
    const std::string line = summary_line(summary);
    EXPECT_TRUE(line.starts_with(R"({"type":"summary","connections":120,"open_at_end":3,)"
                                 R"("requests":900,"lost_events":18446744073709551615,)"
                                 R"("events":1400,"duration_s":10.02,"end_ns":1010000000,)"
                                 R"("by_initiator":{"local":80,"peer":37,"unknown":3},)"))
        << line;
    const ReadResult result = read_trace(trace_text({header_line(sample_header()), line}));
    ASSERT_EQ(result.records.size(), 1u);
    const auto& read = std::get<TraceSummary>(result.records[0]);
    EXPECT_EQ(read.connections, summary.connections);
    EXPECT_EQ(read.open_at_end, summary.open_at_end);
    EXPECT_EQ(read.requests, summary.requests);
    EXPECT_EQ(read.lost_events, summary.lost_events);
    EXPECT_EQ(read.events, summary.events);
    EXPECT_EQ(read.duration_s, summary.duration_s);
    EXPECT_EQ(read.end_ns, summary.end_ns);
    EXPECT_EQ(read.by_initiator, summary.by_initiator);
    EXPECT_EQ(read.by_how, summary.by_how);
    EXPECT_EQ(read.verdicts, summary.verdicts);
}

// ---------------------------------------------------------------------------------------------
// Event lines

TEST(TraceIo, StateEventLine) {
    Event event;
    event.kind = EventKind::State;
    event.ts_ns = 1500;
    event.cookie = 8231;
    event.netns = 4026531840;
    event.tuple = ipv4_tuple();
    event.role = Role::Server;
    event.old_state = kTcpEstablished;
    event.new_state = kTcpFinWait1;
    event.comm = "node";  // not a member of the line
    EXPECT_EQ(event_line(event, kRawPayloads),
              R"({"type":"event","kind":"state","ts_ns":1500,"cookie":8231,"netns":4026531840,)"
              R"("family":"ipv4","local":{"addr":"10.0.0.2","port":8080},)"
              R"("remote":{"addr":"10.0.0.1","port":51234},)"
              R"("old_state":"ESTABLISHED","new_state":"FIN_WAIT1","role":"server"})");
    const TraceEventLine read = event_round_trip(event);
    EXPECT_EQ(read.kind, "state");
    EXPECT_EQ(read.ts_ns, 1500u);
    EXPECT_EQ(read.cookie, 8231u);
    EXPECT_EQ(read.netns, 4026531840u);
    EXPECT_EQ(read.family, "ipv4");
    EXPECT_EQ(read.local, (Endpoint{"10.0.0.2", 8080}));
    EXPECT_EQ(read.remote, (Endpoint{"10.0.0.1", 51234}));
    EXPECT_EQ(read.old_state, "ESTABLISHED");
    EXPECT_EQ(read.new_state, "FIN_WAIT1");
    EXPECT_EQ(read.role, Role::Server);
}

TEST(TraceIo, ResetSentEventLine) {
    Event event;
    event.kind = EventKind::ResetSent;
    event.ts_ns = 7;
    event.tuple = ipv4_tuple();
    event.tuple.family = AF_INET6;
    event.tuple.laddr = {0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2};
    event.tuple.raddr = {0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    event.rst_reason.emplace("NO_SOCKET");  // not `= ...`: a false maybe-uninitialized in g++ 12
    event.trigger_flags = 0x18;  // PSH|ACK
    event.sk_state = 0;
    event.payload_len = 1400;
    event.payload = std::string("GET /\0\xff", 7);
    EXPECT_EQ(event_line(event, kRawPayloads),
              R"({"type":"event","kind":"reset_sent","ts_ns":7,"cookie":0,"netns":0,)"
              R"("family":"ipv6","local":{"addr":"fd00::2","port":8080},)"
              R"("remote":{"addr":"fd00::1","port":51234},)"
              R"("rst_reason":"NO_SOCKET","trigger_flags":"P.","sk_state":null,)"
              R"("payload_len":1400,"heads":[{"opaque":true}],"payload":"GET /\u0000\u00ff"})");
    const TraceEventLine read = event_round_trip(event);
    EXPECT_EQ(read.kind, "reset_sent");
    EXPECT_EQ(read.family, "ipv6");
    EXPECT_EQ(read.local, (Endpoint{"fd00::2", 8080}));
    EXPECT_EQ(read.rst_reason, "NO_SOCKET");
    EXPECT_EQ(read.trigger_flags, "P.");
    EXPECT_EQ(read.sk_state, std::nullopt);
    EXPECT_EQ(read.payload_len, 1400u);
    EXPECT_EQ(read.payload, event.payload);
}

TEST(TraceIo, ResetReceivedEventLine) {
    Event event;
    event.kind = EventKind::ResetReceived;
    event.ts_ns = 9;
    event.cookie = 44;
    event.tuple = ipv4_tuple();
    event.trigger_flags = 0x04;
    event.sk_state = kTcpCloseWait;
    const auto json = nlohmann::ordered_json::parse(event_line(event, kRawPayloads));
    EXPECT_EQ(member_names(json),
              (std::vector<std::string>{"type", "kind", "ts_ns", "cookie", "netns", "family",
                                        "local", "remote", "rst_reason", "trigger_flags",
                                        "sk_state", "payload_len", "heads", "payload"}));
    EXPECT_EQ(json["rst_reason"], nullptr);
    EXPECT_EQ(json["sk_state"], "CLOSE_WAIT");
    const TraceEventLine read = event_round_trip(event);
    EXPECT_EQ(read.kind, "reset_received");
    EXPECT_EQ(read.rst_reason, std::nullopt);
    EXPECT_EQ(read.trigger_flags, "R");
    EXPECT_EQ(read.sk_state, "CLOSE_WAIT");
    EXPECT_EQ(read.payload, "");
}

TEST(TraceIo, MessageEventLine) {
    Event event;
    event.kind = EventKind::Message;
    event.ts_ns = 11;
    event.tuple = ipv4_tuple();
    event.direction = Direction::Out;
    event.response = true;
    event.requests_before = 8;
    event.responses_before = 7;
    event.held = true;
    event.payload_len = 5;
    event.payload = "HTTP/";
    EXPECT_EQ(event_line(event, kRawPayloads),
              R"({"type":"event","kind":"message","ts_ns":11,"cookie":0,"netns":0,)"
              R"("family":"ipv4","local":{"addr":"10.0.0.2","port":8080},)"
              R"("remote":{"addr":"10.0.0.1","port":51234},)"
              R"("direction":"out","segment_len":5,"message":"response","requests_before":8,)"
              R"("responses_before":7,"held":true,)"
              R"("heads":[{"opaque":true}],"payload":"HTTP/"})");
    const TraceEventLine read = event_round_trip(event);
    EXPECT_EQ(read.kind, "message");
    EXPECT_EQ(read.direction, Direction::Out);
    EXPECT_TRUE(read.response);
    EXPECT_EQ(read.requests_before, 8u);
    EXPECT_EQ(read.responses_before, 7u);
    EXPECT_TRUE(read.held);
    EXPECT_EQ(read.payload_len, 5u);
    EXPECT_EQ(read.payload, "HTTP/");
}

TEST(TraceIo, AMessageEventLineSaysWhereItsHeadKeptItsLastLines) {
    Event event;
    event.kind = EventKind::Message;
    event.response = true;
    event.payload_len = 900;
    event.payload = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
    EXPECT_EQ(event_line(event, {}).find("head_tail_kept"), std::string::npos);
    event.head_tail_kept = true;
    EXPECT_NE(event_line(event, {}).find(R"("held":false,"head_tail_kept":true,"heads":)"),
              std::string::npos);
}

// The late request of a close race, as the reset it was answered with carries it.
Event late_request_reset() {
    Event event;
    event.kind = EventKind::ResetSent;
    event.tuple = ipv4_tuple();
    event.trigger_flags = 0x18;
    event.payload = "POST /pay?token=SECRET-QUERY HTTP/1.1\r\nHost: b\r\n"
                    "Cookie: session=SECRET-COOKIE\r\nAuthorization: Bearer SECRET-AUTH\r\n\r\n";
    event.payload_len = static_cast<uint32_t>(event.payload.size());
    return event;
}

TEST(TraceIo, EventLinesKeepNoPayloadBytesByDefault) {
    Event message = late_request_reset();
    message.kind = EventKind::Message;
    for (const Event& event : {late_request_reset(), message}) {
        const std::string line = event_line(event, {});
        EXPECT_EQ(line.find("SECRET"), std::string::npos) << line;
        const auto json = nlohmann::ordered_json::parse(line);
        EXPECT_FALSE(json.contains("payload")) << line;
        EXPECT_EQ(json["heads"].dump(), R"([{"method":"POST","target":"/pay"}])");
        EXPECT_EQ(event_round_trip(event, {}).payload, "");
    }
    const std::string response = [] {
        Event event = late_request_reset();
        event.kind = EventKind::Message;
        event.payload = "HTTP/1.1 401 Unauthorized\r\nSet-Cookie: s=SECRET\r\n\r\n";
        return event_line(event, {});
    }();
    EXPECT_EQ(response.find("SECRET"), std::string::npos) << response;
    EXPECT_EQ(nlohmann::json::parse(response)["heads"].dump(), R"([{"status":401}])");
    Event opaque = late_request_reset();
    opaque.payload = "\x16\x03\x01\x02\x00SECRET";
    EXPECT_EQ(nlohmann::json::parse(event_line(opaque, {}))["heads"].dump(),
              R"([{"opaque":true}])");
}

TEST(TraceIo, FullTargetKeepsTheQueryButNoHeader) {
    const std::string line = event_line(late_request_reset(), {.full_target = true});
    EXPECT_EQ(nlohmann::json::parse(line)["heads"][0]["target"], "/pay?token=SECRET-QUERY");
    EXPECT_EQ(line.find("SECRET-COOKIE"), std::string::npos) << line;
    EXPECT_EQ(line.find("SECRET-AUTH"), std::string::npos) << line;
}

TEST(TraceIo, RawPayloadsKeepTheBytes) {
    const Event event = late_request_reset();
    const auto json = nlohmann::json::parse(event_line(event, kRawPayloads));
    EXPECT_EQ(json["payload"], event.payload);
    EXPECT_EQ(json["heads"][0]["target"], "/pay");
    EXPECT_EQ(event_round_trip(event).payload, event.payload);
}

// ---------------------------------------------------------------------------------------------
// Escaping

TEST(TraceIo, EveryByteValueIsEscapedIntoOneAsciiLine) {
    for (int value = 0; value < 256; ++value) {
        Connection conn = sample_connection();
        const std::string byte(1, static_cast<char>(value));
        conn.comm = byte;
        conn.requests[0].target = "/" + byte + "/";
        conn.requests[0].method = byte;
        const std::string line = conn_line(conn);
        ASSERT_TRUE(is_printable_ascii(line)) << "byte " << value << ": " << line;
        const auto json = nlohmann::json::parse(line);
        EXPECT_EQ(latin1_from_utf8(json["comm"]), byte) << value;
        EXPECT_EQ(latin1_from_utf8(json["requests"][0]["target"]), "/" + byte + "/") << value;
        EXPECT_EQ(json["verdict"], "local_close_race");
    }
    Event event;
    event.kind = EventKind::Message;
    event.payload = every_byte() + every_byte();
    const std::string line = event_line(event, kRawPayloads);
    ASSERT_TRUE(is_printable_ascii(line)) << line;
    EXPECT_EQ(latin1_from_utf8(nlohmann::json::parse(line)["payload"]), event.payload);
    EXPECT_EQ(event_round_trip(event).payload, event.payload);
}

// Lines were nlohmann trees dumped with ensure_ascii until they were written directly: each line
// is still exactly that dump of itself (escapes, number text, no spaces), so that traces written
// before and after compare byte for byte.
TEST(TraceIo, LinesAreTheTextNlohmannDumps) {
    const auto expect_dumped = [](const std::string& line) {
        EXPECT_EQ(nlohmann::ordered_json::parse(line).dump(-1, ' ', /*ensure_ascii=*/true), line);
    };
    Connection conn = sample_connection();
    conn.comm = every_byte();
    conn.cgroup = "/system.slice/\x7f\x80\\.service";
    conn.container = ContainerRef{.runtime = "ecs", .id = every_byte(), .name = "api",
                                  .task_id = "5a2c", .pod_uid = std::nullopt,
                                  .ecs = EcsTask{.task_arn = "arn:aws:ecs:task/5a2c",
                                                 .family = "api", .revision = "7"}};
    conn.requests[0].target = every_byte();
    conn.requests[1].status = std::numeric_limits<int>::min();
    conn.requests[1].close_asked = CloseAsked::Response;
    conn.http2 = Http2Connection{.client = Initiator::Peer,
                                 .local_goaway_ns = 1900,
                                 .caught = {{.id = 9, .reset_by = Initiator::Local}}};
    for (const double idle_ms : {0.1, 2001.2, 1e-300, 5e-324, 1.7976931348623157e308, -0.0, 3.0,
                                 1e15, 1e16, 1e21, 123456789012345678.0, 1e-4, 1e-5, 1.0 / 3}) {
        conn.close.idle_ms = idle_ms;
        expect_dumped(conn_line(conn));
    }
    conn.close.idle_ms = std::numeric_limits<double>::quiet_NaN();  // nlohmann's null
    EXPECT_NE(conn_line(conn).find(R"("idle_ms":null,)"), std::string::npos);

    Event event;
    event.tuple = ipv4_tuple();
    event.payload = "GET /a?b HTTP/1.1\r\n\r\n" + every_byte();
    event.rst_reason = every_byte();
    for (const EventKind kind : {EventKind::State, EventKind::ResetSent, EventKind::ResetReceived,
                                 EventKind::Message, EventKind::Http2}) {
        event.kind = kind;
        expect_dumped(event_line(event, kRawPayloads));
        expect_dumped(event_line(event, {}));
    }
    TraceSummary summary = sample_summary();
    summary.verdicts[every_byte()] = 1;
    summary.duration_s = 1e-7;
    expect_dumped(summary_line(summary));
    TraceHeader header = sample_header();
    header.host = every_byte();
    header.filters.netns = 4026531840;
    expect_dumped(header_line(header));
}

TEST(TraceIo, WireBytesCannotInjectMembersOrLines) {
    Connection conn = sample_connection();
    conn.requests[0].target = "/a\",\"verdict\":\"open\"}\n{\"type\":\"conn\"";
    conn.comm = "\xc3\xa9\xed\xa0\x80\xff";  // valid UTF-8, a surrogate, a lone byte
    const std::string line = conn_line(conn);
    ASSERT_TRUE(is_printable_ascii(line));
    const auto json = nlohmann::json::parse(line);
    EXPECT_EQ(json["verdict"], "local_close_race");
    EXPECT_EQ(json["requests"][0]["target"], *conn.requests[0].target);
    // Bytes, not UTF-8 characters: é (c3 a9) becomes two code points.
    EXPECT_NE(line.find(R"("comm":"\u00c3\u00a9\u00ed\u00a0\u0080\u00ff")"), std::string::npos);
    expect_same_connection(conn_round_trip(conn), conn);
}

// ---------------------------------------------------------------------------------------------
// Reader errors and tolerance

TEST(TraceReading, BadJsonMidFileNamesTheLine) {
    const std::string conn = conn_line(sample_connection());
    const TraceError error = read_error(
        trace_text({header_line(sample_header()), conn, conn.substr(0, 40) + "}", conn}));
    EXPECT_EQ(error.file(), "t.jsonl");
    EXPECT_EQ(error.line(), 3u);
    EXPECT_TRUE(std::string_view(error.what()).starts_with("t.jsonl:3: not valid JSON"))
        << error.what();
}

TEST(TraceReading, WrongMemberTypes) {
    const std::string header = header_line(sample_header());
    const std::string conn = conn_line(sample_connection());
    EXPECT_STREQ(
        read_error(trace_text({header, replaced(conn, R"("id":17)", R"("id":"17")")})).what(),
        "t.jsonl:2: conn.id: expected an integer from 0 to 18446744073709551615");
    EXPECT_STREQ(read_error(trace_text({header, replaced(conn, R"("id":17)", R"("id":-1)")}))
                     .what(),
                 "t.jsonl:2: conn.id: expected an integer from 0 to 18446744073709551615");
    EXPECT_STREQ(read_error(trace_text({header, replaced(conn, R"("id":17)", R"("id":17.0)")}))
                     .what(),
                 "t.jsonl:2: conn.id: expected an integer from 0 to 18446744073709551615");
    EXPECT_STREQ(
        read_error(trace_text({header, replaced(conn, R"("port":8080)", R"("port":65536)")}))
            .what(),
        "t.jsonl:2: conn.local.port: expected an integer from 0 to 65535");
    EXPECT_STREQ(
        read_error(trace_text({header, replaced(conn, R"("pid":4242)", R"("pid":true)")}))
            .what(),
        "t.jsonl:2: conn.pid: expected an integer from 0 to 4294967295 or null");
    EXPECT_STREQ(read_error(trace_text({header, replaced(conn, R"("comm":"node")",
                                                         R"("comm":"\u20ac")")}))
                     .what(),
                 "t.jsonl:2: conn.comm: expected a string of code points up to U+00FF or null");
    EXPECT_STREQ(read_error(trace_text({header, replaced(conn, R"("idle_ms":2001.2)",
                                                         R"("idle_ms":"2001.2")")}))
                     .what(),
                 "t.jsonl:2: conn.close.idle_ms: expected a number or null");
    EXPECT_STREQ(read_error(trace_text({header, replaced(conn, R"("status":200)",
                                                         R"("status":4294967296)")}))
                     .what(),
                 "t.jsonl:2: conn.requests[0].status: expected an integer from -2147483648 to "
                 "2147483647 or null");
    EXPECT_STREQ(
        read_error(trace_text({header, replaced(conn, R"("requests":[)", R"("requests":[1,)")}))
            .what(),
        "t.jsonl:2: conn.requests[0]: expected an object");
    EXPECT_STREQ(
        read_error(trace_text({header, replaced(conn, R"("local":{"addr":"10.0.0.2","port":8080})",
                                                R"("local":[])")}))
            .what(),
        "t.jsonl:2: conn.local: expected an object");
}

TEST(TraceReading, UnknownEnumNames) {
    const std::string header = header_line(sample_header());
    const std::string conn = conn_line(sample_connection());
    EXPECT_STREQ(read_error(trace_text({header, replaced(conn, R"("verdict":"local_close_race")",
                                                         R"("verdict":"who_knows")")}))
                     .what(),
                 "t.jsonl:2: conn.verdict: expected \"local_idle_close\", \"peer_idle_close\", "
                 "\"local_close_race\", \"peer_close_race\", \"local_reset_inflight\", "
                 "\"peer_close_inflight\", \"local_reset\", \"peer_reset\" or \"open\"");
    EXPECT_STREQ(
        read_error(trace_text({header, replaced(conn, R"("how":"fin")", R"("how":"FIN")")}))
            .what(),
        "t.jsonl:2: conn.close.how: expected \"fin\", \"rst\" or null");
    EXPECT_STREQ(read_error(trace_text({header, replaced(conn, R"("outcome":"after_local_close")",
                                                         R"("outcome":null)")}))
                     .what(),
                 "t.jsonl:2: conn.requests[1].outcome: expected \"completed\", "
                 "\"unanswered_at_close\", \"after_local_close\", \"after_peer_close\", "
                 "\"in_flight\" or \"unread_at_close\"");
    EXPECT_STREQ(
        read_error(trace_text({header, replaced(conn, R"("role":"server")", R"("role":1)")}))
            .what(),
        "t.jsonl:2: conn.role: expected \"server\", \"client\" or \"unknown\"");
}

// What no stage reads is stepped over, its value unchecked; a required one must still be there.
TEST(TraceReading, MembersNoStageReadsAreNotDecoded) {
    const std::string header = header_line(sample_header());
    Connection conn = sample_connection();
    conn.owner_from = "close";
    conn.cgroup_id = 5126;
    conn.cgroup = "/system.slice/api.service";
    conn.container = ContainerRef{.runtime = "ecs", .id = "9581a69a761a", .pod_uid = "p",
                                  .ecs = EcsTask{.task_arn = "arn", .family = "f", .revision = "1"}};
    std::string line = conn_line(conn);
    for (const auto& [from, to] : std::vector<std::pair<std::string, std::string>>{
             {R"("family":"ipv4")", R"("family":"inet")"},
             {R"("owner_from":"close")", R"("owner_from":[1])"},
             {R"("cgroup_id":5126)", R"("cgroup_id":-1)"},
             {R"("cgroup":"/system.slice/api.service")", R"("cgroup":{"a":2})"},
             {R"("pod_uid":"p")", R"("pod_uid":3)"},
             {R"("ecs":{"task_arn":"arn","family":"f","revision":"1"})", R"("ecs":"x")"},
             {R"("bytes_in":812)", R"("bytes_in":"many")"},
             {R"("segs_out":8)", R"("segs_out":1.5)"}}) {
        line = replaced(line, from, to);
    }
    const ReadResult result = read_trace(trace_text({header, line}));
    ASSERT_EQ(result.records.size(), 1u);
    const Connection& read = std::get<Connection>(result.records[0]);
    expect_not_decoded(read);
    EXPECT_EQ(read.container->id, "9581a69a761a");
    EXPECT_STREQ(read_error(trace_text({header, replaced(line, R"("bytes_in":"many",)", "")}))
                     .what(),
                 "t.jsonl:2: conn.bytes_in: missing");
}

TEST(TraceReading, MissingMember) {
    const std::string conn = conn_line(sample_connection());
    EXPECT_STREQ(read_error(trace_text({header_line(sample_header()),
                                        replaced(conn, R"(,"verdict":"local_close_race")", "")}))
                     .what(),
                 "t.jsonl:2: conn.verdict: missing");
    EXPECT_STREQ(read_error(trace_text({header_line(sample_header()),
                                        replaced(conn, R"("peer_rst_ns":null,)", "")}))
                     .what(),
                 "t.jsonl:2: conn.close.peer_rst_ns: missing");
}

TEST(TraceReading, UnknownSchema) {
    const std::string header =
        replaced(header_line(sample_header()), "closetrace/5", "closetrace/6");
    const TraceError error = read_error(trace_text({header}));
    EXPECT_STREQ(error.what(),
                 "t.jsonl:1: unsupported schema \"closetrace/6\"; this closetrace reads "
                 "closetrace/1, closetrace/2, closetrace/3, closetrace/4 and closetrace/5");
    EXPECT_EQ(error.line(), 1u);
}

TEST(TraceReading, MissingHeader) {
    EXPECT_STREQ(read_error(trace_text({conn_line(sample_connection())})).what(),
                 "t.jsonl:1: not a closetrace trace");
    EXPECT_STREQ(read_error("\n\nGET / HTTP/1.1\r\n").what(), "t.jsonl:3: not a closetrace trace");
    EXPECT_STREQ(read_error(trace_text({"[1,2]"})).what(), "t.jsonl:1: not a closetrace trace");
    EXPECT_STREQ(read_error(trace_text({R"({"schema":"closetrace/1"})"})).what(),
                 "t.jsonl:1: not a closetrace trace");
    EXPECT_STREQ(read_error("{\"type\":\"conn\",\"id\"").what(),
                 "t.jsonl:1: not a closetrace trace");
}

TEST(TraceReading, AFileCutInsideItsHeaderSaysSo) {
    const std::string header = header_line(sample_header());
    for (std::size_t length = 1; length < header.size(); ++length) {
        EXPECT_STREQ(read_error(header.substr(0, length)).what(),
                     "t.jsonl:1: the file ends inside its header line (a recording stopped "
                     "before it had written one line): it holds no connection")
            << length;
    }
    // Whole but for its newline: a trace with no connection.
    EXPECT_EQ(read_trace(header).records.size(), 0u);
}

TEST(TraceReading, EmptyFile) {
    EXPECT_STREQ(read_error("").what(), "t.jsonl: empty file, not a closetrace trace");
    EXPECT_STREQ(read_error("\n \n\r\n").what(), "t.jsonl: empty file, not a closetrace trace");
    EXPECT_EQ(read_error("").line(), 0u);
}

TEST(TraceReading, TruncatedLastLineIsSkippedWithAWarning) {
    const std::string conn = conn_line(sample_connection());
    const ReadResult result = read_trace(trace_text({header_line(sample_header()), conn}) +
                                         conn.substr(0, conn.size() - 1));
    EXPECT_EQ(result.records.size(), 1u);
    EXPECT_EQ(result.warnings,
              std::vector<std::string>{
                  "t.jsonl: line 3 is truncated (recording interrupted?); ignored"});
}

TEST(TraceReading, LastLineWithoutNewlineThatParsesIsRead) {
    const ReadResult result = read_trace(trace_text({header_line(sample_header())}) +
                                         summary_line(sample_summary()));
    EXPECT_EQ(result.records.size(), 1u);
    EXPECT_TRUE(result.warnings.empty());
}

TEST(TraceReading, TruncatedLineFollowedByMoreIsAnError) {
    const std::string conn = conn_line(sample_connection());
    const TraceError error = read_error(
        trace_text({header_line(sample_header()), conn.substr(0, conn.size() - 1), conn}));
    EXPECT_EQ(error.line(), 2u);
}

TEST(TraceReading, CrlfAndBlankLinesAreTolerated) {
    const std::string text = header_line(sample_header()) + "\r\n\r\n" +
                             conn_line(sample_connection()) + "\r\n  \n" +
                             summary_line(sample_summary()) + "\r\n";
    const ReadResult result = read_trace(text);
    ASSERT_EQ(result.records.size(), 2u);
    expect_same_connection(std::get<Connection>(result.records[0]), sample_connection());
    EXPECT_TRUE(std::holds_alternative<TraceSummary>(result.records[1]));
    // Blank lines still count: the bad line below is line 4.
    const TraceError error = read_error(header_line(sample_header()) + "\r\n\r\n" +
                                        conn_line(sample_connection()) + "\r\nnope\r\n");
    EXPECT_EQ(error.line(), 4u);
}

TEST(TraceReading, UnknownAndMisplacedLineTypes) {
    const std::string header = header_line(sample_header());
    EXPECT_STREQ(read_error(trace_text({header, R"({"type":"gossip"})"})).what(),
                 "t.jsonl:2: unknown line type \"gossip\"");
    EXPECT_STREQ(read_error(trace_text({header, R"({"type":"a\nb\u0000"})"})).what(),
                 "t.jsonl:2: unknown line type \"a\\x0ab\\x00\"");
    EXPECT_STREQ(read_error(trace_text({header, R"({"kind":"state"})"})).what(),
                 "t.jsonl:2: type: missing");
    EXPECT_STREQ(read_error(trace_text({header, header})).what(),
                 "t.jsonl:2: a second header: traces concatenated");
    EXPECT_STREQ(read_error(trace_text({header, "[]"})).what(),
                 "t.jsonl:2: expected a JSON object");
    EXPECT_TRUE(std::string_view(
                    read_error(trace_text({header, summary_line(sample_summary()) + " x"})).what())
                    .starts_with("t.jsonl:2: not valid JSON"));
}

TEST(TraceReading, ALineAfterTheSummaryIsAnError) {
    const std::string header = header_line(sample_header());
    const std::string summary = summary_line(sample_summary());
    const std::string conn = conn_line(sample_connection());
    const TraceError concatenated = read_error(trace_text({header, summary, conn, summary}));
    EXPECT_STREQ(concatenated.what(), "t.jsonl:3: a line after the summary: traces concatenated");
    EXPECT_EQ(concatenated.what_to_do(),
              "give the files themselves (gzip files and directories are read as they are)");
    EXPECT_STREQ(read_error(trace_text({header, summary, summary})).what(),
                 "t.jsonl:3: a line after the summary: traces concatenated");
    EXPECT_EQ(read_trace(trace_text({header, conn, summary}) + "\n\n").records.size(), 2u);
}

TEST(TraceReading, ImpossibleValuesAreErrorsWithTheLine) {
    const std::string header = header_line(sample_header());
    Connection reversed = sample_connection();
    reversed.closed_ns = *reversed.established_ns - 1;
    EXPECT_STREQ(read_error(trace_text({header, conn_line(reversed)})).what(),
                 "t.jsonl:2: conn.closed_ns: before conn.established_ns");
    Connection negative_idle = sample_connection();
    negative_idle.close.idle_ms = -0.5;
    EXPECT_STREQ(read_error(trace_text({header, conn_line(sample_connection()),
                                        conn_line(negative_idle)}))
                     .what(),
                 "t.jsonl:3: conn.close.idle_ms: negative");
    TraceSummary summary = sample_summary();
    summary.duration_s = -10;
    EXPECT_STREQ(read_error(trace_text({header, summary_line(summary)})).what(),
                 "t.jsonl:2: summary.duration_s: negative");
    // Open before the recording, or still open at its end: nothing to compare.
    Connection open = sample_connection();
    open.established_ns.reset();
    open.closed_ns = 5;
    EXPECT_EQ(read_trace(trace_text({header, conn_line(open)})).records.size(), 1u);
}

TEST(TraceReading, UnknownMembersAreIgnored) {
    std::string header = header_line(sample_header());
    header = replaced(header, R"("type":"header",)", R"("type":"header","future":{"x":[1]},)");
    header = replaced(header, R"("full_target":false)", R"("full_target":false,"sni":["a"])");
    std::string conn = conn_line(sample_connection());
    conn = replaced(conn, R"("verdict")", R"("tls":true,"verdict")");
    conn = replaced(conn, R"("idle_ms":2001.2)", R"("idle_ms":2001.2,"srtt_us":55)");
    conn = replaced(conn, R"("outcome":"completed")", R"("outcome":"completed","bytes":3)");
    const ReadResult result = read_trace(trace_text({header, conn}));
    ASSERT_EQ(result.records.size(), 1u);
    expect_same_connection(std::get<Connection>(result.records[0]), sample_connection());
}

TEST(TraceReading, MembersInAnyOrder) {
    const std::string conn = R"({"verdict":"open","requests":[],"close":{"idle_ms":null,)"
                             R"("rst_reason":null,"peer_rst_ns":null,"local_rst_ns":null,)"
                             R"("peer_fin_ns":null,"local_fin_ns":null,"how":null,)"
                             R"("initiator":"unknown"},"segs_out":1,"segs_in":2,"bytes_out":3,)"
                             R"("bytes_in":4,"closed_ns":null,"established_ns":null,"comm":null,)"
                             R"("pid":null,"role":"client","remote":{"port":2,"addr":"b"},)"
                             R"("local":{"port":1,"addr":"a"},"family":"ipv6","netns":5,)"
                             R"("cookie":6,"id":7,"type":"conn"})";
    const ReadResult result = read_trace(trace_text({header_line(sample_header()), conn}));
    ASSERT_EQ(result.records.size(), 1u);
    const auto& read = std::get<Connection>(result.records[0]);
    EXPECT_EQ(read.id, 7u);
    EXPECT_EQ(read.remote, (Endpoint{"b", 2}));
    EXPECT_EQ(read.netns, 5u);
    EXPECT_EQ(read.role, Role::Client);
}

TEST(TraceReading, EscapedNamesAndRawUtf8ReadAsTheirText) {
    const std::string conn = replaced(conn_line(sample_connection()), R"("comm":"node")",
                                      R"("c\u006fmm":"n\u006fde")");
    const ReadResult result = read_trace(trace_text({header_line(sample_header()), conn}));
    ASSERT_EQ(result.records.size(), 1u);
    EXPECT_EQ(std::get<Connection>(result.records[0]).comm, "node");
    // Enumerations too, and names matched where they lie in the line otherwise.
    const std::string escaped_enum =
        replaced(replaced(conn_line(sample_connection()), R"("verdict":"local_close_race")",
                          R"("verdict":"local_close_r\u0061ce")"),
                 R"("outcome":"completed")", R"("\u006futcome":"c\u006fmpleted")");
    const ReadResult enums = read_trace(trace_text({header_line(sample_header()), escaped_enum}));
    ASSERT_EQ(enums.records.size(), 1u);
    const Connection& read = std::get<Connection>(enums.records[0]);
    EXPECT_EQ(read.verdict, Verdict::LocalCloseRace);
    EXPECT_EQ(read.requests.at(0).outcome, Outcome::Completed);
    // Another tool may write U+00E9 as UTF-8 rather than \u00e9: the same byte 0xE9.
    const std::string utf8 = replaced(conn_line(sample_connection()), R"("comm":"node")",
                                      "\"comm\":\"caf\xc3\xa9\"");
    const ReadResult raw = read_trace(trace_text({header_line(sample_header()), utf8}));
    ASSERT_EQ(raw.records.size(), 1u);
    EXPECT_EQ(std::get<Connection>(raw.records[0]).comm, "caf\xe9");
}

TEST(TraceReading, TwoObjectsOnOneLineAreNotValidJson) {
    const std::string conn = conn_line(sample_connection());
    const TraceError error = read_error(trace_text({header_line(sample_header()), conn + conn}));
    EXPECT_TRUE(std::string_view(error.what()).starts_with("t.jsonl:2: not valid JSON"))
        << error.what();
}

TEST(TraceReading, LastLineCutInsideALiteralIsTruncated) {
    const std::string conn = conn_line(sample_connection());
    const std::string cut = conn.substr(0, conn.find(R"("peer_rst_ns":null)") + 16);  // ...":nu
    ASSERT_TRUE(cut.ends_with(":nu"));
    const ReadResult result = read_trace(trace_text({header_line(sample_header()), conn}) + cut);
    EXPECT_EQ(result.records.size(), 1u);
    EXPECT_EQ(result.warnings,
              std::vector<std::string>{
                  "t.jsonl: line 3 is truncated (recording interrupted?); ignored"});
}

TEST(TraceReading, EventMembersFollowTheKind) {
    Event event;
    event.kind = EventKind::Message;
    event.tuple = ipv4_tuple();
    event.response = true;
    const std::string header = header_line(sample_header());
    const std::string message = event_line(event, kRawPayloads);
    EXPECT_STREQ(read_error(trace_text({header, replaced(message, R"(,"held":false)", "")})).what(),
                 "t.jsonl:2: event.held: missing");
    // A member of another kind is not this kind's: ignored like any unknown member.
    event.kind = EventKind::State;
    const std::string state =
        replaced(event_line(event, kRawPayloads), R"("role")", R"("payload":5,"role")");
    const ReadResult result = read_trace(trace_text({header, state}));
    ASSERT_EQ(result.records.size(), 1u);
    EXPECT_TRUE(std::get<TraceEventLine>(result.records[0]).payload.empty());
}

TEST(TraceReading, LineLongerThanOneMebibyte) {
    const std::string header = header_line(sample_header());
    const std::string conn = conn_line(sample_connection());
    // Just fits: the line without its '\n' is exactly kMaxTraceLineBytes long.
    const std::string padding_member = R"("pad":"",)";
    const std::size_t fill = kMaxTraceLineBytes - conn.size() - padding_member.size();
    const std::string longest =
        replaced(conn, R"("type":"conn",)", R"("type":"conn","pad":")" + std::string(fill, 'x') +
                                                "\",");
    ASSERT_EQ(longest.size(), kMaxTraceLineBytes);
    EXPECT_EQ(read_trace(trace_text({header, longest, conn})).records.size(), 2u);
    const TraceError error = read_error(trace_text({header, conn, "x" + longest, conn}));
    EXPECT_STREQ(error.what(), "t.jsonl:3: line longer than 1 MiB");
}

// ---------------------------------------------------------------------------------------------
// TraceWriter

class TempFile {
public:
    TempFile() : path_(make_path()) {}
    ~TempFile() { std::remove(path_.c_str()); }
    const std::string& path() const { return path_; }
    std::string contents() const {
        std::ifstream in(path_, std::ios::binary);
        return std::string(std::istreambuf_iterator<char>(in), {});
    }

private:
    static std::string make_path() {
        std::string path = testing::TempDir() + "trace_io_test_XXXXXX";
        const int fd = mkstemp(path.data());
        if (fd >= 0) close(fd);
        return path;
    }
    std::string path_;
};

TEST(TraceWriter, SmallFlushSizeWritesEveryLineWhole) {
    TempFile file;
    const int fd = open(file.path().c_str(), O_WRONLY | O_TRUNC);
    ASSERT_GE(fd, 0);
    {
        TraceWriter writer(fd, 1);
        writer.write_line(header_line(sample_header()));
        EXPECT_EQ(file.contents(), header_line(sample_header()) + "\n");
        for (int i = 0; i < 100; ++i) {
            writer.write_line(conn_line(sample_connection()));
            const std::string written = file.contents();
            ASSERT_EQ(written.back(), '\n');
        }
        writer.write_line(summary_line(sample_summary()));
    }
    close(fd);
    const ReadResult result = read_trace(file.contents());
    EXPECT_EQ(result.records.size(), 101u);
}

TEST(TraceWriter, BuffersUntilFlushAndFlushesOnDestruction) {
    TempFile file;
    const int fd = open(file.path().c_str(), O_WRONLY | O_TRUNC);
    ASSERT_GE(fd, 0);
    {
        TraceWriter writer(fd, 1 << 20);
        writer.write_line("a");
        writer.write_line("b");
        EXPECT_EQ(file.contents(), "");
        writer.flush();
        EXPECT_EQ(file.contents(), "a\nb\n");
        writer.write_line("c");
    }
    EXPECT_EQ(file.contents(), "a\nb\nc\n");
    close(fd);
}

TEST(TraceWriter, NonBlockingPipeWithSlowReader) {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    ASSERT_EQ(fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK), 0);
    std::string received;
    std::thread reader([&] {
        char chunk[4096];
        ssize_t count;
        while ((count = read(fds[0], chunk, sizeof(chunk))) > 0) {
            received.append(chunk, static_cast<std::size_t>(count));
            usleep(50);
        }
    });
    std::string expected;
    {
        TraceWriter writer(fds[1], 256 * 1024);
        for (int i = 0; i < 3000; ++i) {
            const std::string line = conn_line(sample_connection());
            writer.write_line(line);
            expected += line + "\n";
        }
        writer.flush();
    }
    close(fds[1]);
    reader.join();
    close(fds[0]);
    EXPECT_EQ(received.size(), expected.size());
    EXPECT_TRUE(received == expected);
}

TEST(TraceWriter, WriteErrorThrowsWithErrno) {
    const int fd = open("/dev/full", O_WRONLY);
    ASSERT_GE(fd, 0);
    {
        TraceWriter writer(fd, 1 << 20);
        writer.write_line(conn_line(sample_connection()));
        try {
            writer.flush();
            ADD_FAILURE() << "flush() did not throw";
        } catch (const std::system_error& error) {
            EXPECT_EQ(error.code(), std::error_code(ENOSPC, std::generic_category()));
            EXPECT_NE(std::string_view(error.what()).find("writing the trace"),
                      std::string_view::npos);
        }
    }  // The destructor's flush fails again, silently.
    close(fd);
}

// A file that fills up mid-line (a full disk; here a file size limit, in a child process of its
// own) keeps whole lines only: a reader would otherwise meet a cut last line.
TEST(TraceWriter, AFailedWriteLeavesWholeLines) {
    TempFile file;
    const std::string line = conn_line(sample_connection());
    const rlim_t limit = line.size() * 2 + line.size() / 2;  // two lines and half a third
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        signal(SIGXFSZ, SIG_IGN);  // the write fails with EFBIG instead
        const rlimit size{.rlim_cur = limit, .rlim_max = limit};
        const int fd = open(file.path().c_str(), O_WRONLY | O_TRUNC);
        if (fd < 0 || setrlimit(RLIMIT_FSIZE, &size) != 0) _exit(2);
        TraceWriter writer(fd, 1 << 20);
        for (int i = 0; i < 4; ++i) writer.write_line(line);
        try {
            writer.flush();
        } catch (const std::system_error& error) {
            _exit(error.code().value() == EFBIG ? 0 : 3);
        }
        _exit(4);
    }
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status));
    ASSERT_EQ(WEXITSTATUS(status), 0);
    EXPECT_EQ(file.contents(), line + "\n" + line + "\n");
}

// ---------------------------------------------------------------------------------------------
// Constant memory

// A header, then `count` conn lines and a summary, made as they are read.
class GeneratedTrace : public std::streambuf {
public:
    explicit GeneratedTrace(std::size_t count)
        : count_(count), chunk_(header_line(sample_header()) + "\n") {
        setg(chunk_.data(), chunk_.data(), chunk_.data() + chunk_.size());
    }

protected:
    int_type underflow() override {
        if (made_ > count_) return traits_type::eof();
        Connection conn = sample_connection();
        conn.id = made_;
        chunk_ = (made_ < count_ ? conn_line(conn) : summary_line(sample_summary())) + "\n";
        ++made_;
        setg(chunk_.data(), chunk_.data(), chunk_.data() + chunk_.size());
        return traits_type::to_int_type(chunk_[0]);
    }

private:
    std::size_t count_;
    std::size_t made_ = 0;
    std::string chunk_;
};

TEST(TraceReading, HundredThousandLinesInConstantMemory) {
    constexpr std::size_t kLines = 100'000;
    GeneratedTrace source(kLines);
    std::istream in(&source);
    TraceReader reader(in, "generated.jsonl");
    std::size_t connections = 0;
    std::size_t heap_after_warmup = 0;
    while (const TraceRecord* record = reader.next()) {
        if (const auto* conn = std::get_if<Connection>(record)) {
            ASSERT_EQ(conn->id, connections);
            ++connections;
        }
        if (connections == 1000) heap_after_warmup = mallinfo2().uordblks;
    }
    const std::size_t heap_at_end = mallinfo2().uordblks;
    EXPECT_EQ(connections, kLines);
    EXPECT_TRUE(reader.warnings().empty());
    // Nothing is kept per line: the heap does not grow with the lines read (mallinfo2 reports 0
    // under sanitizers, where this check passes trivially).
    EXPECT_LT(heap_at_end, heap_after_warmup + 64 * 1024);
}

// closetrace/3: an HTTP/2 connection's counts and caught streams come back as written.
TEST(TraceIo, Http2MemberRoundTrips) {
    Connection conn = sample_connection();
    conn.http2 = Http2Connection{
        .client = Initiator::Peer,
        .local = {.last_frame_ns = 9, .streams_answered = 3, .goaway_count = 1,
                  .goaway_last_stream_id = 5, .goaway_error = 0},
        .peer = {.last_frame_ns = 8, .streams_opened = 4, .last_stream_id = 7, .rst_count = 1,
                 .rst_last_error = 8, .ping_count = 2, .settings_count = 1},
        .local_goaway_ns = 1900,
        .peer_goaway_ns = std::nullopt,
        .lost = true,
        .pending_overflow = false,
        .counted_at_close = true,
        .caught = {{.id = 7, .opened_by = Initiator::Peer, .opened_ns = 1950,
                    .fate = StreamFate::AfterGoaway, .names = StreamNames::Decoded,
                    .method = "POST", .path = "/p\"\x01\xff", .grpc_status = 14},
                   {.id = 9, .opened_by = Initiator::Peer, .reset_by = Initiator::Local,
                    .reset_ns = 1960, .fate = StreamFate::Refused,
                    .names = StreamNames::NotDecodable}},
        .names_undecodable_from = 9,
    };
    EXPECT_EQ(conn_round_trip(conn).http2, conn.http2);
    // An HTTP/1 connection's line has no such member.
    EXPECT_EQ(conn_line(sample_connection()).find("http2"), std::string::npos);
}

// PING and SETTINGS counts came with closetrace/4: a closetrace/3 line reads as 0, and a line
// with only one of them is refused (they are written together).
TEST(TraceReading, Http2LinesBeforePingAndSettingsCountsReadAsZero) {
    Connection conn = sample_connection();
    conn.http2 = Http2Connection{.client = Initiator::Peer,
                                 .local = {.ping_count = 4, .settings_count = 5},
                                 .peer = {.ping_count = 3, .settings_count = 2}};
    const std::string line = conn_line(conn);
    const std::string before =
        replaced(replaced(line, ",\"ping_count\":4,\"settings_count\":5", ""),
                 ",\"ping_count\":3,\"settings_count\":2", "");
    ASSERT_EQ(before.find("ping_count"), std::string::npos) << before;
    const std::string v3_header =
        replaced(header_line(sample_header()), "closetrace/5", "closetrace/3");
    const ReadResult result = read_trace(trace_text({v3_header, before}));
    ASSERT_EQ(result.records.size(), 1u);
    const Http2Side& peer = std::get<Connection>(result.records.at(0)).http2->peer;
    EXPECT_EQ(peer.ping_count, 0u);
    EXPECT_EQ(peer.settings_count, 0u);

    const std::string half = replaced(line, ",\"settings_count\":2", "");
    const std::string error = read_error(trace_text({header_line(sample_header()), half})).what();
    EXPECT_NE(error.find("settings_count"), std::string::npos) << error;
}

// Stream names came with closetrace/5: a closetrace/4 line's caught streams read as not
// recorded.
TEST(TraceReading, Http2StreamsBeforeNamesReadAsNotRecorded) {
    Connection conn = sample_connection();
    conn.http2 = Http2Connection{.client = Initiator::Peer,
                                 .caught = {{.id = 3, .fate = StreamFate::AfterGoaway,
                                             .names = StreamNames::Decoded, .method = "POST",
                                             .path = "/a"}}};
    const std::string line = conn_line(conn);
    const std::string before = replaced(
        replaced(line, ",\"names\":\"decoded\",\"method\":\"POST\",\"path\":\"/a\",\"grpc_status\":null",
                 ""),
        ",\"names_undecodable_from\":null", "");
    const std::string v4_header =
        replaced(header_line(sample_header()), "closetrace/5", "closetrace/4");
    const ReadResult result = read_trace(trace_text({v4_header, before}));
    ASSERT_EQ(result.records.size(), 1u);
    const Http2Stream& stream = std::get<Connection>(result.records.at(0)).http2->caught.at(0);
    EXPECT_EQ(stream.names, StreamNames::NotRecorded);
    EXPECT_EQ(stream.path, std::nullopt);
}

// The reader reads every conn line into one record, whose storage it keeps: a line whose
// optional members are null or left out, or that has fewer requests or caught streams than the
// line before it, reads as it does alone.
TEST(TraceReading, ConnLinesReadIntoOneRecordReadAsAlone) {
    Connection full = sample_connection();
    full.owner_from = "close";
    full.cgroup_id = 5126;
    full.cgroup = "/system.slice/docker-9581a69a761a0000000000000000000000000000.scope";
    full.container = ContainerRef{
        .runtime = "ecs",
        .id = "9581a69a761a0000000000000000000000000000000000000000000000000004",
        .name = "ecs-shop-api-12-web-9581a69a",
        .task_id = "7f3c9a1e5b2d4c6e8f0a1b2c3d4e5f60",
        .ecs = EcsTask{.task_arn = "arn:aws:ecs:us-west-2:012345678910:task/default/7f3c",
                       .family = "shop-api", .revision = "12"}};
    full.health_check = "ELB-HealthChecker";
    full.keep_alive_timeout_s = 5;
    full.close.cause = CloseCause::ConnectionClose;
    full.close.asked_by = Initiator::Peer;
    full.close.unread_bytes = 12;
    full.requests.push_back(Request{.method = "GET", .target = "/a/rather/long/target/path",
                                    .opaque = true, .status = 200, .request_ns = 1990,
                                    .close_asked = CloseAsked::Request});
    full.requests_omitted = 40;
    full.incomplete = true;
    full.other_end = OtherEnd{.cookie = 8232, .server = Initiator::Peer};
    full.http2 = Http2Connection{
        .client = Initiator::Peer,
        .local = {.ping_count = 4, .settings_count = 5},
        .caught = {{.id = 7, .names = StreamNames::Decoded, .method = "POST",
                    .path = "/a/rather/long/grpc/path", .grpc_status = 14},
                   {.id = 9, .reset_by = Initiator::Local, .names = StreamNames::NotDecodable}},
        .names_undecodable_from = 9};
    Connection fewer = full;
    fewer.requests.resize(1);
    fewer.container->name.reset();
    fewer.container->ecs.reset();
    fewer.http2->caught.resize(1);
    fewer.http2->caught[0].path.reset();
    Connection nulls = sample_connection();
    nulls.requests.resize(1);
    // Members a line may leave out, left out: they read as their defaults.
    const std::string bare = replaced(
        replaced(replaced(replaced(conn_line(nulls),
                                   R"("owner_from":null,"cgroup_id":0,"cgroup":null,)", ""),
                          R"(,"other_end":null)", ""),
                 R"(,"cause":"idle_timer","asked_by":null,"unread_bytes":0)", ""),
        R"(,"requests_omitted":0)", "");
    const std::vector<std::string> lines = {conn_line(full), conn_line(fewer), conn_line(nulls),
                                            bare, conn_line(full)};
    const std::string header = header_line(sample_header());
    std::istringstream in(header + "\n" + lines[0] + "\n" + lines[1] + "\n" + lines[2] + "\n" +
                          lines[3] + "\n" + lines[4] + "\n");
    TraceReader reader(in, "t.jsonl");
    for (const std::string& line : lines) {
        const TraceRecord* record = reader.next();
        ASSERT_NE(record, nullptr);
        const ReadResult alone = read_trace(trace_text({header, line}));
        ASSERT_EQ(alone.records.size(), 1u);
        EXPECT_EQ(conn_line(std::get<Connection>(*record)),
                  conn_line(std::get<Connection>(alone.records[0])));
    }
    EXPECT_EQ(reader.next(), nullptr);
}

TEST(TraceReading, Schema2ConnectionsHaveNoHttp2) {
    const std::string header = replaced(header_line(sample_header()), "closetrace/5", "closetrace/2");
    const ReadResult result = read_trace(trace_text({header, conn_line(sample_connection())}));
    ASSERT_EQ(result.records.size(), 1u);
    EXPECT_FALSE(std::get<Connection>(result.records.at(0)).http2);
}

}  // namespace
}  // namespace closetrace
