#include "closetrace/alb_match.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "closetrace/alb_render.h"
#include "closetrace/trace_io.h"
#include "closetrace/wallclock.h"

namespace closetrace {
namespace {

constexpr int64_t kMs = 1'000'000;
constexpr int64_t kSecond = 1'000'000'000;
constexpr int64_t kSkew = 1000 * kMs;
constexpr int64_t kStart = 1'795'568'400 * kSecond;  // 2026-11-25T01:00:00Z
const Endpoint kBackend{"10.0.1.17", 8080};

// A 502 (or other) line as an Application Load Balancer writes it for a request it received at
// `received_ns` and sent to `target` after `request_processing_s`.
std::string alb_line(int status, const std::string& target, int64_t received_ns,
                     const std::string& request, double request_processing_s = 0,
                     const std::string& target_status = "-") {
    return fmt::format(
        "http {} app/shop-alb/50dc6c495c0c9188 10.0.0.99:50001 {} {:.3f} 0.001 -1 {} {} 512 0 "
        "\"{}\" \"client/1.0\" - - arn:aws:elasticloadbalancing:us-east-1:123456789012:"
        "targetgroup/shop-api/73e2d6bc24d8a067 \"Root=1-6744cc00-000000000000000000000001\" "
        "\"-\" \"-\" 1 {} \"forward\" \"-\" \"-\" \"{}\" \"{}\" \"-\" \"-\" TID_01",
        iso8601_utc(received_ns + 2 * kMs), target, request_processing_s, status, target_status,
        request, iso8601_utc(received_ns), target, target_status);
}

std::string alb_502(int64_t received_ns, const std::string& request,
                    const std::string& target = "10.0.1.17:8080") {
    return alb_line(502, target, received_ns, request);
}

CaughtRequest caught(uint64_t conn_id, Verdict verdict, int64_t wall_ns, std::string method,
                     std::string target, Endpoint local = kBackend) {
    CaughtRequest request;
    request.conn_id = conn_id;
    request.verdict = verdict;
    request.local = std::move(local);
    request.remote = {"10.0.0.5", static_cast<uint16_t>(40000 + conn_id)};
    request.request.method = std::move(method);
    request.request.target = std::move(target);
    request.request.outcome =
        verdict == Verdict::LocalCloseRace ? Outcome::AfterLocalClose : Outcome::UnansweredAtClose;
    request.wall_ns = wall_ns;
    return request;
}

CaughtRequest race(uint64_t conn_id, int64_t wall_ns, std::string method = "GET",
                   std::string target = "/orders") {
    return caught(conn_id, Verdict::LocalCloseRace, wall_ns, std::move(method), std::move(target));
}

TraceFacts facts_with(std::vector<CaughtRequest> requests,
                      std::set<Endpoint> endpoints = {kBackend}) {
    TraceFacts facts;
    facts.file = "trace.jsonl";
    facts.start_wall_ns = kStart;
    facts.end_wall_ns = kStart + 600 * kSecond;
    facts.has_summary = true;
    facts.local_endpoints = std::move(endpoints);
    for (const CaughtRequest& request : requests) ++facts.caught_connections[request.verdict];
    facts.caught_requests = std::move(requests);
    return facts;
}

AlbCorrelation correlate(const TraceFacts& facts, const std::vector<std::string>& lines,
                         std::vector<PortMapping> mappings = {}, int64_t skew_ns = kSkew) {
    AlbCorrelator correlator(facts, std::move(mappings), skew_ns);
    for (size_t i = 0; i < lines.size(); ++i) {
        std::string error;
        const std::optional<LbLogEntry> entry = parse_lb_log_line(lines[i], error);
        EXPECT_TRUE(entry.has_value()) << error << "\n" << lines[i];
        if (entry) correlator.add(*entry, "alb.log", i + 1);
    }
    return correlator.finish();
}

std::string joined(const std::vector<std::string>& sentences) {
    std::string text;
    for (const std::string& sentence : sentences) text += sentence + "\n";
    return text;
}

// ---------------------------------------------------------------------------------------------
// Matching

// 502s of a deploy without draining (the backend closing every idle connection as it stopped)
// and of a connection limit are close races too, but no keep-alive timeout would have helped.
TEST(AlbMatch, RacesOfAShutdownOrALimitDoNotAskForALongerKeepAlive) {
    const int64_t t = kStart + 65 * kSecond;
    CaughtRequest shutdown = race(2, t, "POST", "/pay");
    shutdown.cause = CloseCause::ClosedTogether;
    CaughtRequest refused = race(3, t + 5 * kSecond, "POST", "/pay");
    refused.cause = CloseCause::Refused;
    const TraceFacts facts = facts_with({shutdown, refused});
    const std::string pay = "POST https://shop.example.com:443/pay HTTP/1.1";
    const AlbCorrelation result =
        correlate(facts, {alb_502(t, pay), alb_502(t + 5 * kSecond, pay)});
    ASSERT_EQ(result.pairs.size(), 2u);
    const std::string conclusions = joined(alb_conclusions(facts, result, kSkew));
    EXPECT_NE(conclusions.find("All 2 502s are explained by close races, none of them the "
                               "keep-alive timer's. One is on a connection the backend closed "
                               "together with its other idle ones as it stopped"),
              std::string::npos)
        << conclusions;
    EXPECT_NE(conclusions.find("One is on a connection the backend closed as soon as it accepted "
                               "it (a connection limit"),
              std::string::npos)
        << conclusions;
    EXPECT_EQ(conclusions.find("keepAliveTimeout"), std::string::npos) << conclusions;
}

TEST(AlbMatch, ExactMatch) {
    const int64_t t = kStart + 65 * kSecond;
    const TraceFacts facts = facts_with({race(2, t, "POST", "/pay")});
    const AlbCorrelation result =
        correlate(facts, {alb_502(t, "POST https://shop.example.com:443/pay HTTP/1.1")});
    ASSERT_EQ(result.pairs.size(), 1u);
    const AlbPair& pair = result.pairs[0];
    EXPECT_EQ(pair.request.conn_id, 2u);
    EXPECT_EQ(pair.delta_ns, 0);
    EXPECT_TRUE(pair.path_compared);
    EXPECT_EQ(pair.error.line, 1u);
    EXPECT_EQ(pair.error.dispatch_ns, t);
    EXPECT_TRUE(result.unexplained.empty());
    EXPECT_TRUE(result.unmatched_requests.empty());
    const StatusTally& tally = result.by_status.at(502);
    EXPECT_EQ(tally.lines, 1u);
    EXPECT_EQ(tally.unexplained, 0u);
    EXPECT_EQ(tally.explained, (std::map<Verdict, uint64_t>{{Verdict::LocalCloseRace, 1}}));
    EXPECT_EQ(result.counts.on_trace, 1u);
    EXPECT_NE(
        joined(alb_conclusions(facts, result, kSkew)).find("The 502 is explained by close races"),
        std::string::npos);
}

TEST(AlbMatch, DispatchTimeAddsRequestProcessingTime) {
    const int64_t received = kStart + 65 * kSecond;
    // Sent to the target 800 ms after the load balancer received it: the request the trace saw
    // 1.5 s after `received` is 0.7 s after the dispatch, within the skew.
    const TraceFacts facts = facts_with({race(1, received + 1500 * kMs)});
    const AlbCorrelation result = correlate(
        facts,
        {alb_line(502, "10.0.1.17:8080", received, "GET https://h:443/orders HTTP/1.1", 0.8)});
    ASSERT_EQ(result.pairs.size(), 1u);
    EXPECT_EQ(result.pairs[0].error.dispatch_ns, received + 800 * kMs);
    EXPECT_EQ(result.pairs[0].delta_ns, 700 * kMs);
}

TEST(AlbMatch, SkewBoundaries) {
    const int64_t t = kStart + 65 * kSecond;
    const std::string request = "GET https://h:443/orders HTTP/1.1";
    for (const int64_t offset : {kSkew, -kSkew}) {
        const AlbCorrelation inside =
            correlate(facts_with({race(1, t + offset)}), {alb_502(t, request)});
        EXPECT_EQ(inside.pairs.size(), 1u) << offset;
    }
    // The log's times have microseconds: one more is outside.
    for (const int64_t offset : {kSkew + 1000, -kSkew - 1000}) {
        const AlbCorrelation outside =
            correlate(facts_with({race(1, t + offset)}), {alb_502(t, request)});
        EXPECT_TRUE(outside.pairs.empty()) << offset;
        EXPECT_EQ(outside.unexplained.size(), 1u);
        EXPECT_EQ(outside.unmatched_requests.size(), 1u);
    }
    const AlbCorrelation narrow =
        correlate(facts_with({race(1, t + 5 * kMs)}), {alb_502(t, request)}, {}, 4 * kMs);
    EXPECT_TRUE(narrow.pairs.empty());
}

TEST(AlbMatch, TwoErrorsOneRaceLeavesOneUnexplained) {
    const int64_t t = kStart + 65 * kSecond;
    const TraceFacts facts = facts_with({race(1, t + 300 * kMs)});
    const AlbCorrelation result =
        correlate(facts, {alb_502(t, "GET https://h:443/orders HTTP/1.1"),
                          alb_502(t + 400 * kMs, "GET https://h:443/orders HTTP/1.1")});
    ASSERT_EQ(result.pairs.size(), 1u);
    EXPECT_EQ(result.pairs[0].error.line, 2u);  // the closer one
    ASSERT_EQ(result.unexplained.size(), 1u);
    EXPECT_EQ(result.unexplained[0].line, 1u);
    const StatusTally& tally = result.by_status.at(502);
    EXPECT_EQ(tally.lines, 2u);
    EXPECT_EQ(tally.unexplained, 1u);
    const std::string conclusions = joined(alb_conclusions(facts, result, kSkew));
    EXPECT_NE(conclusions.find("1 of 2 502s is explained by close races"), std::string::npos)
        << conclusions;
    EXPECT_NE(conclusions.find("1 of 2 502s is unexplained, and every caught request"),
              std::string::npos)
        << conclusions;
}

TEST(AlbMatch, PathWithQueryAgainstStrippedAndFullTargets) {
    const int64_t t = kStart + 65 * kSecond;
    const std::string logged = "POST https://shop.example.com:443/pay?order=17&x=%20 HTTP/1.1";
    for (const char* target : {"/pay", "/pay?order=17&x=%20", "/pay?other"}) {
        const AlbCorrelation result =
            correlate(facts_with({race(1, t, "POST", target)}), {alb_502(t, logged)});
        EXPECT_EQ(result.pairs.size(), 1u) << target;
    }
    for (const auto& [method, target] : std::vector<std::pair<std::string, std::string>>{
             {"POST", "/pay/"}, {"POST", "/"}, {"GET", "/pay"}}) {
        const AlbCorrelation result =
            correlate(facts_with({race(1, t, method, target)}), {alb_502(t, logged)});
        EXPECT_TRUE(result.pairs.empty()) << method << " " << target;
    }
}

TEST(AlbMatch, OpaqueRequestsMatchByEndpointAndTimeOnly) {
    const int64_t t = kStart + 65 * kSecond;
    CaughtRequest tls = race(1, t + 2 * kMs);
    tls.request.method.reset();
    tls.request.target.reset();
    tls.request.opaque = true;
    const AlbCorrelation result =
        correlate(facts_with({tls}), {alb_502(t, "POST https://h:443/pay HTTP/1.1")});
    ASSERT_EQ(result.pairs.size(), 1u);
    EXPECT_FALSE(result.pairs[0].path_compared);
}

TEST(AlbMatch, PortMappingTranslatesTheHostPort) {
    const int64_t t = kStart + 65 * kSecond;
    const Endpoint container{"172.17.0.2", 8080};
    const TraceFacts facts = facts_with(
        {caught(1, Verdict::LocalCloseRace, t, "GET", "/orders", container)}, {container});
    const std::vector<std::string> lines = {
        alb_502(t, "GET https://h:443/orders HTTP/1.1", "10.0.1.17:32768")};

    const AlbCorrelation unmapped = correlate(facts, lines);
    EXPECT_TRUE(unmapped.pairs.empty());
    EXPECT_EQ(unmapped.counts.other_targets, 1u);
    EXPECT_NE(joined(alb_conclusions(facts, unmapped, kSkew)).find("--map"), std::string::npos);

    const AlbCorrelation mapped = correlate(facts, lines, {*parse_port_mapping("32768=8080")});
    EXPECT_EQ(mapped.pairs.size(), 1u);

    const AlbCorrelation same_host =
        correlate(facts, lines, {*parse_port_mapping("10.0.1.17:32768=8080")});
    EXPECT_EQ(same_host.pairs.size(), 1u);

    // Another instance's 32768 is not this container.
    const AlbCorrelation other_host =
        correlate(facts, lines, {*parse_port_mapping("10.0.1.99:32768=8080")});
    EXPECT_TRUE(other_host.pairs.empty());
    EXPECT_EQ(other_host.counts.other_targets, 1u);

    const AlbCorrelation wrong_port = correlate(facts, lines, {*parse_port_mapping("32768=9090")});
    EXPECT_EQ(wrong_port.counts.other_targets, 1u);
}

TEST(AlbMatch, WildcardAndMappedAddresses) {
    const int64_t t = kStart + 65 * kSecond;
    const std::string request = "GET https://h:443/orders HTTP/1.1";
    const Endpoint wildcard{"0.0.0.0", 8080};
    const AlbCorrelation any = correlate(
        facts_with({caught(1, Verdict::LocalCloseRace, t, "GET", "/orders", wildcard)}, {wildcard}),
        {alb_502(t, request, "10.9.9.9:8080")});
    EXPECT_EQ(any.pairs.size(), 1u);
    const AlbCorrelation wrong_port = correlate(
        facts_with({caught(1, Verdict::LocalCloseRace, t, "GET", "/orders", wildcard)}, {wildcard}),
        {alb_502(t, request, "10.9.9.9:8081")});
    EXPECT_EQ(wrong_port.counts.other_targets, 1u);

    const Endpoint dual_stack{"::ffff:10.0.1.17", 8080};
    const AlbCorrelation mapped =
        correlate(facts_with({caught(1, Verdict::LocalCloseRace, t, "GET", "/orders", dual_stack)},
                             {dual_stack}),
                  {alb_502(t, request)});
    EXPECT_EQ(mapped.pairs.size(), 1u);
}

TEST(AlbMatch, NoDoubleMatching) {
    const int64_t t = kStart + 65 * kSecond;
    const std::string request = "GET https://h:443/orders HTTP/1.1";
    // Two lines at the same instant, one race.
    const AlbCorrelation two_lines =
        correlate(facts_with({race(1, t)}), {alb_502(t, request), alb_502(t, request)});
    EXPECT_EQ(two_lines.pairs.size(), 1u);
    EXPECT_EQ(two_lines.unexplained.size(), 1u);
    // Two races, one line.
    const AlbCorrelation two_races =
        correlate(facts_with({race(1, t + 1 * kMs), race(2, t + 2 * kMs)}), {alb_502(t, request)});
    ASSERT_EQ(two_races.pairs.size(), 1u);
    EXPECT_EQ(two_races.pairs[0].request.conn_id, 1u);
    EXPECT_EQ(two_races.unmatched_requests.size(), 1u);
}

TEST(AlbMatch, AsManyPairsAsPossible) {
    // Line A is closest to race X, but line B can only be X: A takes Y so that both explain.
    const int64_t a = kStart + 65 * kSecond;
    const int64_t b = a - 500 * kMs;
    const int64_t x = a - 100 * kMs;
    const int64_t y = a + 200 * kMs;  // 700 ms from b: beyond the 600 ms skew
    const std::string request = "GET https://h:443/orders HTTP/1.1";
    const AlbCorrelation result =
        correlate(facts_with({race(1, x), race(2, y)}), {alb_502(a, request), alb_502(b, request)},
                  {}, 600 * kMs);
    ASSERT_EQ(result.pairs.size(), 2u);
    EXPECT_TRUE(result.unexplained.empty());
    for (const AlbPair& pair : result.pairs) {
        EXPECT_EQ(pair.request.conn_id, pair.error.dispatch_ns == a ? 2u : 1u);
    }
}

TEST(AlbMatch, StatusMustFitTheVerdict) {
    const int64_t t = kStart + 65 * kSecond;
    const std::string request = "GET https://h:443/report HTTP/1.1";
    const TraceFacts race_only = facts_with({race(1, t, "GET", "/report")});
    const AlbCorrelation timeout =
        correlate(race_only, {alb_line(504, "10.0.1.17:8080", t, request)});
    EXPECT_TRUE(timeout.pairs.empty());
    EXPECT_EQ(timeout.by_status.at(504).unexplained, 1u);
    EXPECT_NE(joined(alb_conclusions(race_only, timeout, kSkew))
                  .find("unexplained while the trace shows no connection the load balancer closed"),
              std::string::npos);

    const TraceFacts peer_closed =
        facts_with({caught(1, Verdict::PeerCloseInflight, t, "GET", "/report")});
    const AlbCorrelation explained =
        correlate(peer_closed, {alb_line(504, "10.0.1.17:8080", t, request)});
    ASSERT_EQ(explained.pairs.size(), 1u);
    EXPECT_EQ(explained.by_status.at(504).explained.at(Verdict::PeerCloseInflight), 1u);
    const AlbCorrelation client_left =
        correlate(peer_closed, {alb_line(460, "10.0.1.17:8080", t, request)});
    EXPECT_EQ(client_left.pairs.size(), 1u);
    const AlbCorrelation bad_gateway = correlate(peer_closed, {alb_502(t, request)});
    EXPECT_TRUE(bad_gateway.pairs.empty());

    const TraceFacts reset =
        facts_with({caught(1, Verdict::LocalResetInflight, t, "GET", "/report")});
    const AlbCorrelation in_flight = correlate(reset, {alb_502(t, request)});
    ASSERT_EQ(in_flight.pairs.size(), 1u);
    EXPECT_NE(joined(alb_conclusions(reset, in_flight, kSkew)).find("in-flight closes"),
              std::string::npos);
    // A process exit is said as such: no load to look for.
    CaughtRequest exit = caught(1, Verdict::LocalResetInflight, t, "GET", "/report");
    exit.cause = CloseCause::ProcessExit;
    const TraceFacts exited = facts_with({exit});
    const AlbCorrelation crash = correlate(exited, {alb_502(t, request)});
    EXPECT_NE(joined(alb_conclusions(exited, crash, kSkew))
                  .find("The 502 is explained by the backend's process exiting with the request "
                        "unanswered"),
              std::string::npos);
}

TEST(AlbMatch, SelectionCounts) {
    const int64_t t = kStart + 65 * kSecond;
    const std::string request = "GET https://h:443/orders HTTP/1.1";
    const TraceFacts facts = facts_with({});
    const AlbCorrelation result = correlate(
        facts, {
                   alb_line(200, "10.0.1.17:8080", t, request, 0, "200"),
                   alb_line(502, "10.0.1.17:8080", t, request, 0, "502"),  // the target's own 502
                   alb_502(t, request, "10.0.1.23:8080"),
                   alb_502(kStart - 2 * kSecond, request),
                   alb_502(kStart + 602 * kSecond, request),
                   alb_502(kStart + 600 * kSecond + kSkew, request),  // within the skew of the end
                   alb_line(502, "-", t, request, -1),
                   alb_line(503, "10.0.1.17:8080", t, request),
                   alb_502(t + kSecond, request),
               });
    EXPECT_EQ(result.counts.lb_errors, 6u);
    EXPECT_EQ(result.counts.other_targets, 1u);
    EXPECT_EQ(result.counts.outside_recording, 2u);
    EXPECT_EQ(result.counts.not_sent, 1u);
    EXPECT_EQ(result.counts.on_trace, 2u);
    EXPECT_EQ(result.counts.requests_on_trace, 5u);
    ASSERT_EQ(result.unexplained.size(), 2u);
    EXPECT_EQ(result.unexplained[0].line, 9u);  // in time order
    EXPECT_EQ(result.unexplained[1].line, 6u);
    EXPECT_EQ(result.by_status.at(502).lines, 2u);
    EXPECT_EQ(result.by_status.at(504).lines, 0u);
    EXPECT_NE(joined(alb_conclusions(facts, result, kSkew))
                  .find("All 2 502s are unexplained while the trace shows no close race or "
                        "in-flight close: look away from the connection lifecycle"),
              std::string::npos);
    // The one never sent is said too: the load balancer could not reach a target.
    EXPECT_EQ(result.counts.unreached, 1u);
    EXPECT_NE(joined(alb_conclusions(facts, result, kSkew))
                  .find("One 502 at " + iso8601_utc(t + 2 * kMs) +
                        " never reached a target (no target or no request time in the line"),
              std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Conclusions

TEST(AlbConclusions, NoErrorsSaySo) {
    const int64_t t = kStart + 65 * kSecond;
    const TraceFacts quiet = facts_with({});
    const std::string none = joined(alb_conclusions(
        quiet,
        correlate(quiet,
                  {alb_line(200, "10.0.1.17:8080", t, "GET https://h:443/ HTTP/1.1", 0, "200")}),
        kSkew));
    EXPECT_NE(none.find("logged no 502, 504 or 460 for this trace's endpoints during the recording "
                        "(1 request to them)."),
              std::string::npos)
        << none;

    const TraceFacts racing = facts_with({race(1, t)});
    const std::string hidden = joined(alb_conclusions(
        racing,
        correlate(racing,
                  {alb_line(200, "10.0.1.17:8080", t, "GET https://h:443/ HTTP/1.1", 0, "200")}),
        kSkew));
    EXPECT_NE(hidden.find("Yet the trace has 1 connection caught"), std::string::npos) << hidden;

    const std::string elsewhere = joined(alb_conclusions(
        quiet, correlate(quiet, {alb_502(t, "GET https://h:443/ HTTP/1.1", "10.0.1.23:8080")}),
        kSkew));
    EXPECT_NE(
        elsewhere.find("No load balancer line is for this trace's endpoints (10.0.1.17:8080)"),
        std::string::npos)
        << elsewhere;
}

TEST(AlbConclusions, UnmatchedRacesPointAtTheSkew) {
    const int64_t t = kStart + 65 * kSecond;
    const TraceFacts facts = facts_with({race(1, t + 3 * kSecond)});
    const AlbCorrelation result =
        correlate(facts, {alb_502(t, "GET https://h:443/orders HTTP/1.1")});
    const std::string text = joined(alb_conclusions(facts, result, kSkew));
    EXPECT_NE(text.find("The 502 is unexplained although the trace has 1 caught request that no "
                        "line matched: the clocks may differ by more than --skew (1000 ms)"),
              std::string::npos)
        << text;
}

TEST(AlbConclusions, LostEventsAreMentioned) {
    TraceFacts facts = facts_with({});
    facts.lost_events = 7;
    const AlbCorrelation result =
        correlate(facts, {alb_502(kStart + kSecond, "GET https://h:443/ HTTP/1.1")});
    EXPECT_NE(joined(alb_conclusions(facts, result, kSkew)).find("The trace lost 7 events"),
              std::string::npos);
}

// The text a user pastes into a ticket (stdout, without the warnings on stderr) says which logs
// were not read whole.
TEST(AlbRender, LogsNotReadWholeAreInTheText) {
    const TraceFacts facts = facts_with({});
    const AlbCorrelation result =
        correlate(facts, {alb_502(kStart + kSecond, "GET https://h:443/ HTTP/1.1")});
    LbLogReadStats stats;
    stats.files = 2;
    stats.lines = 1;
    stats.file_errors = {"logs/b.log.gz: gzip data cut short"};
    const std::string text =
        render_alb_text(facts, stats, result, alb_conclusions(facts, result, kSkew), kSkew);
    EXPECT_NE(text.find("logs      2 files, 1 lines, 0 malformed; 1 not read whole (below)\n"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("\nlogs not read whole (the figures count their lines up to the fault)\n"
                        "  logs/b.log.gz: gzip data cut short\n"),
              std::string::npos)
        << text;
    stats.file_errors.clear();
    EXPECT_EQ(render_alb_text(facts, stats, result, {}, kSkew).find("not read whole"),
              std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Port mappings and the trace

TEST(PortMappingParse, Forms) {
    const auto plain = parse_port_mapping("32768=8080");
    ASSERT_TRUE(plain.has_value());
    EXPECT_EQ(plain->host_addr, std::nullopt);
    EXPECT_EQ(plain->host_port, 32768);
    EXPECT_EQ(plain->container_port, 8080);
    EXPECT_EQ(parse_port_mapping("10.0.1.17:32768=80")->host_addr, "10.0.1.17");
    EXPECT_EQ(parse_port_mapping("[fd00::1]:32768=80")->host_addr, "fd00::1");
    for (const char* bad :
         {"", "32768", "=80", "32768=", "0=80", "32768=70000", "a=b", "32768=80=1", ":32768=80"}) {
        EXPECT_EQ(parse_port_mapping(bad), std::nullopt) << bad;
    }
}

TEST(TraceFactsRead, KeepsEndpointsAndCaughtRequests) {
    const std::string path = std::string(CLOSETRACE_FIXTURES) + "/alb/race_trace.jsonl";
    std::ifstream in(path);
    TraceReader reader(in, path);
    const TraceFacts facts = read_trace_facts(reader, path);
    EXPECT_EQ(facts.file, path);
    EXPECT_EQ(facts.start_wall_ns, kStart);
    EXPECT_EQ(facts.end_wall_ns, kStart + 180 * kSecond);
    EXPECT_TRUE(facts.has_summary);
    // The client connection to the database is not a target.
    EXPECT_EQ(facts.local_endpoints, (std::set<Endpoint>{kBackend}));
    EXPECT_EQ(facts.caught_connections,
              (std::map<Verdict, uint64_t>{{Verdict::LocalCloseRace, 2}}));
    ASSERT_EQ(facts.caught_requests.size(), 2u);
    EXPECT_EQ(facts.caught_requests[0].conn_id, 2u);
    EXPECT_EQ(facts.caught_requests[0].request.target, "/pay");
    EXPECT_EQ(facts.caught_requests[0].wall_ns, kStart + 65 * kSecond + 400'000);
    EXPECT_EQ(facts.caught_requests[1].request.outcome, Outcome::AfterLocalClose);
}

TEST(TraceFactsRead, IncompleteConnectionsProveNothing) {
    const std::string path = std::string(CLOSETRACE_FIXTURES) + "/alb/race_trace.jsonl";
    std::ifstream file(path);
    std::stringstream marked;
    bool first_race = true;
    for (std::string line; std::getline(file, line);) {
        const std::string race = R"("verdict":"local_close_race")";
        if (const std::size_t at = line.find(race); at != std::string::npos && first_race) {
            line.insert(at + race.size(), R"(,"incomplete":true)");
            first_race = false;
        }
        marked << line << "\n";
    }
    TraceReader reader(marked, "marked.jsonl");
    const TraceFacts facts = read_trace_facts(reader, "marked.jsonl");
    EXPECT_EQ(facts.caught_connections,
              (std::map<Verdict, uint64_t>{{Verdict::LocalCloseRace, 1}}));
    ASSERT_EQ(facts.caught_requests.size(), 1u);
    EXPECT_NE(facts.caught_requests[0].conn_id, 2u);
}

TEST(TraceFactsRead, WithoutSummaryTheEndIsTheLastTime) {
    const std::string path = std::string(CLOSETRACE_FIXTURES) + "/alb/race_trace.jsonl";
    std::ifstream file(path);
    std::stringstream cut;
    for (std::string line; std::getline(file, line);) {
        if (line.find("\"type\":\"summary\"") == std::string::npos) cut << line << "\n";
    }
    TraceReader reader(cut, "cut.jsonl");
    const TraceFacts facts = read_trace_facts(reader, "cut.jsonl");
    EXPECT_FALSE(facts.has_summary);
    EXPECT_EQ(facts.end_wall_ns, kStart + 170 * kSecond + 100'000);  // the database FIN
}


// ---------------------------------------------------------------------------------------------
// HTTP/2: a connection's caught streams

const Endpoint kBackendH2{"10.0.1.17", 9090};
constexpr uint64_t kMonoStart = 1000 * kSecond;

// The same line with another first field (the client's protocol to the load balancer).
std::string with_type(std::string line, const std::string& type) {
    return type + line.substr(line.find(' '));
}

// A server connection on `local` that this host closed with a GOAWAY, catching stream 7 opened
// `opened_after_start_ns` after the recording's start.
Connection h2_race(uint64_t id, const Endpoint& local, uint64_t opened_after_start_ns) {
    const uint64_t opened_ns = kMonoStart + opened_after_start_ns;
    Connection conn;
    conn.id = id;
    conn.cookie = 9000 + id;
    conn.family = "ipv4";
    conn.local = local;
    conn.remote = {"10.0.0.5", static_cast<uint16_t>(41000 + id)};
    conn.role = Role::Server;
    conn.established_ns = kMonoStart + kSecond;
    conn.closed_ns = opened_ns + kMs;
    conn.close = CloseInfo{.initiator = Initiator::Local,
                           .how = CloseHow::Fin,
                           .local_fin_ns = opened_ns + kMs / 2};
    conn.http2 = Http2Connection{
        .client = Initiator::Peer,
        .local = {.last_frame_ns = opened_ns - kMs, .goaway_count = 1, .goaway_last_stream_id = 5},
        .peer = {.last_frame_ns = opened_ns, .streams_opened = 4, .last_stream_id = 7},
        .local_goaway_ns = opened_ns - kMs,
        .counted_at_close = true,
        .caught = {{.id = 7, .opened_by = Initiator::Peer, .opened_ns = opened_ns,
                    .fate = StreamFate::AfterGoaway}},
    };
    conn.verdict = Verdict::LocalCloseRace;
    return conn;
}

// The facts of a trace (written and read back) holding `conns`, from kStart for 600 s.
TraceFacts h2_facts(const std::vector<Connection>& conns) {
    TraceHeader header;
    header.host = "ip-10-0-1-17";
    header.start_ns = kMonoStart;
    header.start_wall = iso8601_utc(kStart);
    header.mono_to_wall_ns = kStart - static_cast<int64_t>(kMonoStart);
    std::stringstream trace;
    trace << header_line(header) << "\n";
    for (const Connection& conn : conns) trace << conn_line(conn) << "\n";
    TraceSummary summary;
    summary.connections = conns.size();
    summary.end_ns = kMonoStart + 600 * kSecond;
    trace << summary_line(summary) << "\n";
    TraceReader reader(trace, "h2.jsonl");
    return read_trace_facts(reader, "h2.jsonl");
}

TEST(AlbHttp2, CaughtStreamsAreCaughtRequests) {
    const TraceFacts facts = h2_facts({h2_race(3, kBackendH2, 65 * kSecond)});
    EXPECT_EQ(facts.local_endpoints, (std::set<Endpoint>{kBackendH2}));
    EXPECT_EQ(facts.caught_connections,
              (std::map<Verdict, uint64_t>{{Verdict::LocalCloseRace, 1}}));
    ASSERT_EQ(facts.caught_requests.size(), 1u);
    const CaughtRequest& caught = facts.caught_requests[0];
    EXPECT_EQ(caught.conn_id, 3u);
    ASSERT_TRUE(caught.stream.has_value());
    EXPECT_EQ(caught.stream->id, 7u);
    EXPECT_EQ(caught.stream->fate, StreamFate::AfterGoaway);
    EXPECT_EQ(caught.wall_ns, kStart + 65 * kSecond);
    EXPECT_TRUE(caught.request.opaque);
    EXPECT_EQ(caught.request.method, std::nullopt);
}

TEST(AlbHttp2, H2LineMatchesTheStreamByEndpointAndTime) {
    const int64_t t = kStart + 65 * kSecond;
    const TraceFacts facts = h2_facts({h2_race(3, kBackendH2, 65 * kSecond)});
    // The path is not compared: the stream's names were not recorded.
    for (const std::string type : {"h2", "grpcs"}) {
        const AlbCorrelation result = correlate(
            facts, {with_type(alb_502(t - 300 * kMs,
                                      "POST https://api.example.com:443/shop.Orders/Pay HTTP/2.0",
                                      "10.0.1.17:9090"),
                              type)});
        ASSERT_EQ(result.pairs.size(), 1u) << type;
        const AlbPair& pair = result.pairs[0];
        EXPECT_EQ(pair.request.conn_id, 3u);
        ASSERT_TRUE(pair.request.stream.has_value());
        EXPECT_EQ(pair.request.stream->id, 7u);
        EXPECT_EQ(pair.delta_ns, 300 * kMs);
        EXPECT_FALSE(pair.path_compared);
        EXPECT_EQ(result.by_status.at(502).explained,
                  (std::map<Verdict, uint64_t>{{Verdict::LocalCloseRace, 1}}));
        const std::vector<std::string> conclusions = alb_conclusions(facts, result, kSkew);
        // Every explained line is a stream: the HTTP/2 setting, not HTTP/1's keep-alive.
        EXPECT_NE(joined(conclusions).find("The 502 is explained by close races on HTTP/2"),
                  std::string::npos)
            << joined(conclusions);
        EXPECT_NE(joined(conclusions).find("grpc.max_connection_idle_ms"), std::string::npos);
        EXPECT_EQ(joined(conclusions).find("keepAliveTimeout"), std::string::npos);

        const std::string text = render_alb_text(facts, {}, result, conclusions, kSkew);
        EXPECT_NE(text.find("HTTP/2 stream 7 after_goaway (names not recorded) -> 10.0.1.17:9090  "
                            "conn 3 local_close_race  +300.0 ms  (alb.log:1)"),
                  std::string::npos)
            << text;
        const std::string json = render_alb_json(facts, {}, result, conclusions, 1000, {}, {});
        EXPECT_NE(json.find("\"stream\": {\n          \"id\": 7,\n          \"fate\": "
                            "\"after_goaway\",\n          \"opened_by\": \"peer\",\n          \"names\": \"not_recorded\"\n        }"),
                  std::string::npos)
            << json;
        EXPECT_NE(json.find(R"("outcome": null)"), std::string::npos);
    }
}

TEST(AlbHttp2, ANamedStreamMatchesOnlyALineOfItsMethodAndPath) {
    const int64_t t = kStart + 65 * kSecond;
    Connection conn = h2_race(3, kBackendH2, 65 * kSecond);
    Http2Stream& stream = conn.http2->caught[0];
    stream.names = StreamNames::Decoded;
    stream.method = "POST";
    stream.path = "/shop.Orders/Pay";
    const TraceFacts facts = h2_facts({conn});
    const auto line = [&](const std::string& path) {
        return with_type(alb_502(t - 300 * kMs,
                                 "POST https://api.example.com:443" + path + " HTTP/2.0",
                                 "10.0.1.17:9090"),
                         "grpcs");
    };
    EXPECT_TRUE(correlate(facts, {line("/shop.Orders/Refund")}).pairs.empty());
    const AlbCorrelation result = correlate(facts, {line("/shop.Orders/Pay")});
    ASSERT_EQ(result.pairs.size(), 1u);
    EXPECT_TRUE(result.pairs[0].path_compared);
    const std::string text =
        render_alb_text(facts, {}, result, alb_conclusions(facts, result, kSkew), kSkew);
    EXPECT_NE(text.find("HTTP/2 stream 7 POST /shop.Orders/Pay after_goaway -> 10.0.1.17:9090"),
              std::string::npos)
        << text;
}

TEST(AlbHttp2, RacesOnBothProtocolsNameBothSettings) {
    const int64_t t = kStart + 65 * kSecond;
    TraceFacts facts = h2_facts({h2_race(3, kBackendH2, 65 * kSecond)});
    facts.local_endpoints.insert(kBackend);
    facts.caught_requests.push_back(race(2, t + 10 * kSecond, "POST", "/pay"));
    ++facts.caught_connections[Verdict::LocalCloseRace];
    const AlbCorrelation result = correlate(
        facts, {with_type(alb_502(t - 300 * kMs, "POST https://api.example.com:443/a HTTP/2.0",
                                  "10.0.1.17:9090"),
                          "h2"),
                alb_502(t + 10 * kSecond, "POST https://shop.example.com:443/pay HTTP/1.1")});
    ASSERT_EQ(result.pairs.size(), 2u);
    const std::string conclusions = joined(alb_conclusions(facts, result, kSkew));
    EXPECT_NE(conclusions.find("All 2 502s are explained by close races: the backend closed idle "
                               "keep-alive connections"),
              std::string::npos)
        << conclusions;
    EXPECT_NE(conclusions.find("keepAliveTimeout"), std::string::npos);
    EXPECT_NE(conclusions.find("One of them is on HTTP/2: there the setting is the server's "
                               "HTTP/2 idle timeout"),
              std::string::npos)
        << conclusions;
}

TEST(AlbHttp2, StreamsDoNotExplainOtherLines) {
    const int64_t t = kStart + 65 * kSecond;
    const TraceFacts facts = h2_facts(
        {h2_race(3, kBackendH2, 65 * kSecond), h2_race(4, {"10.0.1.17", 9091}, 200 * kSecond)});
    const std::string request = "POST https://api.example.com:443/shop.Orders/Pay HTTP/2.0";
    const AlbCorrelation result = correlate(
        facts, {
                   // An HTTP/1.1 request never goes to an HTTP/2 target as a stream.
                   alb_502(t, "POST https://api.example.com:443/pay HTTP/1.1", "10.0.1.17:9090"),
                   with_type(alb_502(t, "POST https://api.example.com:443/pay HTTP/1.1",
                                     "10.0.1.17:9090"),
                             "https"),
                   // Outside the skew of stream 7.
                   with_type(alb_502(t - kSkew - kMs, request, "10.0.1.17:9090"), "h2"),
                   with_type(alb_502(t + kSkew + kMs, request, "10.0.1.17:9090"), "h2"),
                   // Another connection's endpoint: conn 4's stream is at 200 s, not now.
                   with_type(alb_502(t, request, "10.0.1.17:9091"), "h2"),
               });
    EXPECT_TRUE(result.pairs.empty());
    EXPECT_EQ(result.unexplained.size(), 5u);
    EXPECT_EQ(result.unmatched_requests.size(), 2u);
    EXPECT_EQ(result.counts.on_trace, 5u);
}

TEST(AlbHttp2, StreamWithinTheSkewOnTheOtherConnection) {
    // Two connections, two endpoints: each line pairs with the stream on its own endpoint.
    const int64_t t = kStart + 65 * kSecond;
    const TraceFacts facts = h2_facts(
        {h2_race(3, kBackendH2, 65 * kSecond), h2_race(4, {"10.0.1.17", 9091}, 65 * kSecond)});
    const std::string request = "POST https://api.example.com:443/shop.Orders/Pay HTTP/2.0";
    const AlbCorrelation result =
        correlate(facts, {with_type(alb_502(t, request, "10.0.1.17:9091"), "h2")});
    ASSERT_EQ(result.pairs.size(), 1u);
    EXPECT_EQ(result.pairs[0].request.conn_id, 4u);
    ASSERT_EQ(result.unmatched_requests.size(), 1u);
    EXPECT_EQ(result.unmatched_requests[0].conn_id, 3u);
}

}  // namespace
}  // namespace closetrace
