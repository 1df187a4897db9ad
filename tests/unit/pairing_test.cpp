#include "closetrace/pairing.h"

#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "closetrace/alb_match.h"
#include "closetrace/analysis.h"
#include "closetrace/report.h"
#include "closetrace/trace_io.h"
#include "test_connections.h"

namespace closetrace {
namespace {

using ::testing::HasSubstr;
using test::closed_by;
using test::kMs;
using test::kNetns;
using test::served_end;

constexpr uint64_t kT0 = 1'000'000'000'000;
const Endpoint kServer{"127.0.0.1", 8080};
const Endpoint kClient{"127.0.0.1", 50000};

// One end of a loopback connection from python3 to node, established at `at_ns` with one
// completed request; open until closed_by().
Connection end_of(Role role, uint64_t at_ns = kT0) { return served_end(role, kServer, kClient, at_ns); }

// A request sent 1.5 s before the close and never answered.
Connection with_request_in_flight(Connection conn) {
    conn.requests.push_back({.method = "POST",
                             .target = "/orders",
                             .request_ns = *conn.established_ns + 500 * kMs,
                             .outcome = Outcome::UnansweredAtClose,
                             .idle_before_ms = 498.0});
    return conn;
}

std::vector<ConnectionStory> pair_all(std::vector<Connection> records) {
    EndPairer pairer;
    std::vector<ConnectionStory> stories;
    for (Connection& conn : records) {
        for (ConnectionStory& story : pairer.add(std::move(conn))) stories.push_back(story);
    }
    for (ConnectionStory& story : pairer.finish()) stories.push_back(story);
    return stories;
}

TraceHeader test_header() {
    TraceHeader header;
    header.host = "ip-10-0-0-2";
    header.start_ns = kT0;
    header.start_wall = "2026-11-25T01:00:00.000000Z";
    header.mono_to_wall_ns = 1'795'567'400'000'000'000;
    return header;
}

TraceAnalysis analyze(std::vector<Connection> records) {
    TraceAnalyzer analyzer("pairs.jsonl", test_header());
    for (Connection& conn : records) analyzer.add(std::move(conn));
    analyzer.add(TraceSummary{});
    return analyzer.finish({});
}

// ---------------------------------------------------------------------------------------------
// EndPairer

TEST(EndPairer, APeerElsewhereGoesOnAtOnce) {
    Connection remote = end_of(Role::Server);
    remote.remote = {"10.0.0.1", 40000};
    EndPairer pairer;
    const std::vector<ConnectionStory> stories = pairer.add(remote);
    ASSERT_EQ(stories.size(), 1u);
    EXPECT_FALSE(stories[0].client_end);
    EXPECT_TRUE(pairer.finish().empty());
}

TEST(EndPairer, ThisHostsOwnAddressIsOnThisHost) {
    Connection conn = end_of(Role::Server);
    conn.local.addr = "10.201.0.6";
    conn.remote.addr = "10.201.0.6";
    EXPECT_TRUE(peer_on_this_host(conn));
    conn.remote.addr = "::ffff:127.0.0.1";
    EXPECT_TRUE(peer_on_this_host(conn));
    conn.remote.addr = "10.201.0.7";
    EXPECT_FALSE(peer_on_this_host(conn));
}

TEST(EndPairer, ATieIsJudgedByTheServerEnd) {
    // Both ends closed at once (FINs crossing): each record says it closed first.
    const Connection server = closed_by(end_of(Role::Server), Initiator::Local, CloseHow::Fin);
    const Connection client = closed_by(end_of(Role::Client), Initiator::Local, CloseHow::Fin);
    for (const bool server_first : {true, false}) {
        const std::vector<ConnectionStory> stories =
            server_first ? pair_all({server, client}) : pair_all({client, server});
        ASSERT_EQ(stories.size(), 1u) << server_first;
        EXPECT_EQ(stories[0].conn.id, server.id);
        EXPECT_EQ(stories[0].conn.verdict, Verdict::LocalIdleClose);
        ASSERT_TRUE(stories[0].client_end);
        EXPECT_EQ(stories[0].client_end->conn_id, client.id);
        EXPECT_EQ(stories[0].client_end->comm, "python3");
        EXPECT_EQ(stories[0].client_end->pid, 3762u);
    }
}

TEST(EndPairer, ADualStackServerSeesItsClientAsMapped) {
    Connection server = closed_by(end_of(Role::Server), Initiator::Local, CloseHow::Fin);
    server.family = "ipv6";
    server.local.addr = "::ffff:127.0.0.1";
    server.remote.addr = "::ffff:127.0.0.1";
    const Connection client = closed_by(end_of(Role::Client), Initiator::Peer, CloseHow::Fin);
    const std::vector<ConnectionStory> stories = pair_all({client, server});
    ASSERT_EQ(stories.size(), 1u);
    EXPECT_TRUE(stories[0].client_end);
}

TEST(EndPairer, AnEndWithoutItsMirrorStaysSingle) {
    const Connection client = closed_by(end_of(Role::Client), Initiator::Local, CloseHow::Fin);
    Connection other_namespace = closed_by(end_of(Role::Server), Initiator::Peer, CloseHow::Fin);
    other_namespace.netns = kNetns + 1;  // another namespace's loopback: another connection
    Connection same_role = closed_by(end_of(Role::Client), Initiator::Local, CloseHow::Fin);
    std::swap(same_role.local, same_role.remote);
    const std::vector<ConnectionStory> stories = pair_all({client, other_namespace, same_role});
    ASSERT_EQ(stories.size(), 3u);
    for (const ConnectionStory& story : stories) EXPECT_FALSE(story.client_end);
}

TEST(EndPairer, APortReusedLaterIsAnotherConnection) {
    // The first client end's server end was not recorded; the same ports carry a second
    // connection later, whose server end must pair with its own client end.
    const Connection first = closed_by(end_of(Role::Client, kT0), Initiator::Local, CloseHow::Fin);
    const uint64_t later = kT0 + 10'000 * kMs;
    const Connection client =
        closed_by(end_of(Role::Client, later), Initiator::Peer, CloseHow::Fin);
    const Connection server =
        closed_by(end_of(Role::Server, later), Initiator::Local, CloseHow::Fin);
    const std::vector<ConnectionStory> stories = pair_all({first, client, server});
    ASSERT_EQ(stories.size(), 2u);
    EXPECT_EQ(stories[0].conn.id, server.id);
    ASSERT_TRUE(stories[0].client_end);
    EXPECT_EQ(stories[0].client_end->conn_id, client.id);
    EXPECT_EQ(stories[1].conn.id, first.id);
    EXPECT_FALSE(stories[1].client_end);
}

// The two ends of a connection across network namespaces (a docker bridge: the client in one
// container, the server in another), as the recorder pairs them: each names the other's socket.
struct AcrossNamespaces {
    Connection server = closed_by(served_end(Role::Server, {"172.17.0.3", 8080},
                                             {"172.17.0.2", 40000}, kT0),
                                  Initiator::Local, CloseHow::Fin);
    Connection client = closed_by(served_end(Role::Client, {"172.17.0.3", 8080},
                                             {"172.17.0.2", 40000}, kT0),
                                  Initiator::Peer, CloseHow::Fin);

    AcrossNamespaces() {
        server.cookie = 501;
        client.cookie = 502;
        client.netns = kNetns + 1;
        server.other_end = OtherEnd{.cookie = client.cookie, .server = Initiator::Local};
        client.other_end = OtherEnd{.cookie = server.cookie, .server = Initiator::Peer};
    }
};

TEST(EndPairer, EndsTheRecorderPairedAcrossNamespacesAreOneConnection) {
    const AcrossNamespaces ends;
    for (const bool server_first : {true, false}) {
        const std::vector<ConnectionStory> stories = server_first
                                                         ? pair_all({ends.server, ends.client})
                                                         : pair_all({ends.client, ends.server});
        ASSERT_EQ(stories.size(), 1u) << server_first;
        EXPECT_EQ(stories[0].conn.id, ends.server.id);
        EXPECT_EQ(stories[0].conn.verdict, Verdict::LocalIdleClose);
        ASSERT_TRUE(stories[0].client_end);
        EXPECT_EQ(stories[0].client_end->conn_id, ends.client.id);
    }
}

TEST(EndPairer, EndsOpenBeforeTheRecordingAreJudgedByTheServerTheRecorderNamed) {
    AcrossNamespaces ends;
    ends.server.role = Role::Unknown;
    ends.client.role = Role::Unknown;
    std::vector<ConnectionStory> stories = pair_all({ends.server, ends.client});
    ASSERT_EQ(stories.size(), 1u);
    EXPECT_EQ(stories[0].conn.id, ends.server.id);
    ASSERT_TRUE(stories[0].client_end);
    EXPECT_EQ(stories[0].client_end->comm, "python3");

    // On loopback in one namespace too: two unknown roles no longer stay apart.
    for (Connection* end : {&ends.server, &ends.client}) {
        end->netns = kNetns;
        end->local.addr = "127.0.0.1";
        end->remote.addr = "127.0.0.1";
    }
    stories = pair_all({ends.client, ends.server});
    ASSERT_EQ(stories.size(), 1u);
    EXPECT_EQ(stories[0].conn.id, ends.server.id);
}

TEST(EndPairer, EndsTheRecorderCouldNotTellApartStayApart) {
    AcrossNamespaces ends;
    ends.server.other_end->server.reset();
    ends.client.other_end->server.reset();
    EXPECT_EQ(pair_all({ends.server, ends.client}).size(), 2u);
}

TEST(EndPairer, AnEndPairsOnlyWithTheSocketItNames) {
    AcrossNamespaces ends;
    Connection stranger = ends.client;
    stranger.cookie = 503;  // the same tuple in a third namespace, naming the server too
    ends.server.other_end->cookie = 503;
    ends.client.other_end->cookie = 504;
    const std::vector<ConnectionStory> stories = pair_all({ends.client, ends.server, stranger});
    ASSERT_EQ(stories.size(), 2u);
    EXPECT_EQ(stories[0].conn.id, ends.server.id);
    ASSERT_TRUE(stories[0].client_end);
    EXPECT_EQ(stories[0].client_end->conn_id, stranger.id);
    EXPECT_EQ(stories[1].conn.id, ends.client.id);
    EXPECT_FALSE(stories[1].client_end);
}

TEST(EndPairer, HoldsAtMostItsBound) {
    EndPairer pairer;
    std::vector<uint64_t> released;
    for (uint16_t port = 1; port <= EndPairer::kMaxHeld + 1; ++port) {
        Connection conn = end_of(Role::Client);
        conn.local.port = port;
        for (const ConnectionStory& story : pairer.add(conn)) released.push_back(story.conn.id);
    }
    // The longest waiting went on alone to make room.
    ASSERT_EQ(released.size(), 1u);
    EXPECT_EQ(pairer.finish().size(), EndPairer::kMaxHeld);
}

// ---------------------------------------------------------------------------------------------
// merge_ends

TEST(MergeEnds, TheClientsResetRequestMakesTheServersCloseARace) {
    // The server's timer closed; the client sent a request after the FIN and got a reset from a
    // socket the server's record no longer covers.
    const Connection server = closed_by(end_of(Role::Server), Initiator::Local, CloseHow::Fin);
    Connection client = end_of(Role::Client);
    const uint64_t fin_ns = *server.close.local_fin_ns;
    client.requests.push_back({.method = "POST",
                               .target = "/pay",
                               .request_ns = fin_ns + kMs / 2,
                               .outcome = Outcome::AfterPeerClose,
                               .idle_before_ms = 2000.5});
    client = closed_by(client, Initiator::Peer, CloseHow::Fin);
    client.close.peer_rst_ns = fin_ns + kMs;
    ASSERT_EQ(server.verdict, Verdict::LocalIdleClose);
    ASSERT_EQ(client.verdict, Verdict::PeerCloseRace);

    const ConnectionStory story = merge_ends(server, client);
    EXPECT_EQ(story.conn.verdict, Verdict::LocalCloseRace);
    ASSERT_EQ(story.conn.requests.size(), 2u);
    EXPECT_EQ(story.conn.requests[1].target, "/pay");
    EXPECT_EQ(story.conn.requests[1].outcome, Outcome::AfterLocalClose);
    EXPECT_EQ(story.conn.close.local_rst_ns, fin_ns + kMs);
    EXPECT_EQ(story.conn.close.cause, CloseCause::IdleTimer);

    const TraceAnalysis trace = analyze({server, client});
    EXPECT_EQ(trace.connections, 1u);
    EXPECT_EQ(trace.verdicts[Verdict::LocalCloseRace], 1u);
    EXPECT_EQ(trace.verdicts[Verdict::PeerCloseRace], 0u);
    ASSERT_EQ(trace.races.total, 1u);
    EXPECT_EQ(trace.races.listed[0].comm, "node");
    ASSERT_TRUE(trace.races.listed[0].client_end);
    EXPECT_EQ(trace.races.listed[0].client_end->comm, "python3");
    EXPECT_TRUE(trace.upstream_racers.empty());
}

TEST(MergeEnds, ALateFirstRequestIsNoProbe) {
    // A pooled connection idle from its start: the server's record alone is a probe's close.
    Connection server = end_of(Role::Server);
    server.requests.clear();
    server = closed_by(server, Initiator::Local, CloseHow::Fin);
    ASSERT_EQ(server.close.cause, CloseCause::Probe);
    Connection client = end_of(Role::Client);
    client.requests = {{.method = "GET",
                        .target = "/a",
                        .request_ns = *server.close.local_fin_ns + kMs / 2,
                        .outcome = Outcome::AfterPeerClose}};
    client = closed_by(client, Initiator::Peer, CloseHow::Fin);
    const ConnectionStory story = merge_ends(server, client);
    EXPECT_EQ(story.conn.verdict, Verdict::LocalCloseRace);
    EXPECT_EQ(story.conn.close.cause, CloseCause::IdleTimer);
}

TEST(MergeEnds, ARequestTheServerSawStaysItsOwn) {
    Connection server = end_of(Role::Server);
    server.requests.push_back({.method = "POST",
                               .target = "/pay",
                               .request_ns = kT0 + 2003 * kMs,
                               .outcome = Outcome::AfterLocalClose});
    server = closed_by(server, Initiator::Local, CloseHow::Fin);
    Connection client = end_of(Role::Client);
    client.requests.push_back({.method = "POST",
                               .target = "/pay",
                               .request_ns = kT0 + 2003 * kMs,
                               .outcome = Outcome::AfterPeerClose});
    client = closed_by(client, Initiator::Peer, CloseHow::Fin);
    const ConnectionStory story = merge_ends(server, client);
    EXPECT_EQ(story.conn.requests.size(), 2u);
    EXPECT_EQ(story.conn.verdict, Verdict::LocalCloseRace);
}

// ---------------------------------------------------------------------------------------------
// Counted once

TEST(SameHostAnalysis, ATieCountsOnceAsTheServersClose) {
    // The server's idle timer; the client's record says the peer closed.
    const TraceAnalysis trace =
        analyze({closed_by(end_of(Role::Client), Initiator::Peer, CloseHow::Fin),
                 closed_by(end_of(Role::Server), Initiator::Local, CloseHow::Fin)});
    EXPECT_EQ(trace.connections, 1u);
    EXPECT_EQ(trace.requests, 1u);
    EXPECT_EQ(trace.verdicts[Verdict::LocalIdleClose], 1u);
    EXPECT_EQ(trace.verdicts[Verdict::PeerIdleClose], 0u);
    EXPECT_EQ(trace.local_idle.count(), 1u);
    EXPECT_EQ(trace.upstream_peer_idle.count(), 0u);
    EXPECT_EQ(trace.by_comm.size(), 1u);
    EXPECT_EQ(trace.by_comm.at("node").connections, 1u);
    EXPECT_EQ(trace.same_host_connections(), 1u);
    EXPECT_EQ(trace.by_same_host.at("python3 -> node").verdicts[Verdict::LocalIdleClose], 1u);
}

TEST(SameHostAnalysis, AConnectionAcrossNamespacesCountsOnceAsTheServersClose) {
    const AcrossNamespaces ends;
    const TraceAnalysis trace = analyze({ends.client, ends.server});
    EXPECT_EQ(trace.connections, 1u);
    EXPECT_EQ(trace.verdicts[Verdict::LocalIdleClose], 1u);
    EXPECT_EQ(trace.verdicts[Verdict::PeerIdleClose], 0u);
    EXPECT_EQ(trace.upstream_peer_idle.count(), 0u);
    EXPECT_EQ(trace.by_comm.size(), 1u);
    EXPECT_EQ(trace.by_comm.at("node").connections, 1u);
    EXPECT_EQ(trace.same_host_connections(), 1u);
}

TEST(SameHostAnalysis, ACrashSeenFromBothEndsIsAProcessExitOnly) {
    const Connection server = closed_by(with_request_in_flight(end_of(Role::Server)),
                                        Initiator::Local, CloseHow::Rst, {.owner_exiting = true});
    const Connection client =
        closed_by(with_request_in_flight(end_of(Role::Client)), Initiator::Peer, CloseHow::Rst);
    ASSERT_EQ(server.close.cause, CloseCause::ProcessExit);
    ASSERT_EQ(client.verdict, Verdict::PeerCloseInflight);

    const TraceAnalysis trace = analyze({server, client});
    EXPECT_EQ(trace.connections, 1u);
    EXPECT_EQ(trace.process_exits.total, 1u);
    EXPECT_EQ(trace.peer_gave_up.total, 0u);
    const Assessment a = assess(trace, resolve_peer_timeout({&trace}, std::nullopt));
    EXPECT_EQ(a.dominant, FailureKind::ProcessExits);
    EXPECT_EQ(a.peer_gave_up, 0u);

    const std::string text = render_report(trace, a, OutputFormat::Text);
    EXPECT_THAT(text, HasSubstr("1 connection (1 with both ends on this host, each counted once)"));
    EXPECT_THAT(text, HasSubstr("[client on this host: python3 (pid 3762)]"));
    EXPECT_THAT(text, HasSubstr("python3 -> node"));
    const auto json = nlohmann::json::parse(render_report(trace, a, OutputFormat::Json));
    EXPECT_EQ(json["trace"]["same_host_connections"], 1);
    EXPECT_EQ(json["process_exits"]["listed"][0]["client_end"]["comm"], "python3");
    EXPECT_EQ(json["by_same_host"]["groups"][0]["processes"], "python3 -> node");
}

TEST(SameHostAnalysis, TheLoadBalancerCorrelationCatchesTheCrashOnce) {
    const Connection server = closed_by(with_request_in_flight(end_of(Role::Server)),
                                        Initiator::Local, CloseHow::Rst, {.owner_exiting = true});
    const Connection client =
        closed_by(with_request_in_flight(end_of(Role::Client)), Initiator::Peer, CloseHow::Rst);
    std::stringstream trace;
    trace << header_line(test_header()) << "\n"
          << conn_line(client) << "\n"
          << conn_line(server) << "\n"
          << summary_line(TraceSummary{}) << "\n";
    TraceReader reader(trace, "pairs.jsonl");
    const TraceFacts facts = read_trace_facts(reader, "pairs.jsonl");
    EXPECT_EQ(facts.caught_connections,
              (std::map<Verdict, uint64_t>{{Verdict::LocalResetInflight, 1}}));
    ASSERT_EQ(facts.caught_requests.size(), 1u);
    EXPECT_EQ(facts.caught_requests[0].conn_id, server.id);
}

}  // namespace
}  // namespace closetrace
