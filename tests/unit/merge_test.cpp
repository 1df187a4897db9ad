// Many traces at once: merge_traces (hosts, rotated files, wall clock), the trace arguments of
// the commands (trace_files) and the report of several traces.
#include <algorithm>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "closetrace/alb_match.h"
#include "closetrace/analysis.h"
#include "closetrace/report.h"
#include "closetrace/trace_files.h"
#include "closetrace/trace_io.h"
#include "test_connections.h"
#include "test_files.h"

namespace closetrace {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;
using test::TempDir;
using test::write_file;
using test::write_gzip;

using test::kMs;
constexpr uint64_t kBootNs = 1'000'000'000'000;
// 2026-11-25T01:00:00Z on the wall clock.
constexpr int64_t kWallStartNs = 1'795'568'400'000'000'000;

// A host whose monotonic clock read `boot_ns` at kWallStartNs: hosts booted at different times
// have different monotonic clocks for the same wall time.
TraceHeader header_of(const std::string& host, uint64_t boot_ns = kBootNs) {
    TraceHeader header;
    header.host = host;
    header.start_ns = boot_ns;
    header.start_wall = "2026-11-25T01:00:00.000000Z";
    header.mono_to_wall_ns = kWallStartNs - static_cast<int64_t>(boot_ns);
    return header;
}

TraceSummary summary_at(uint64_t end_ns) {
    TraceSummary summary;
    summary.end_ns = end_ns;
    summary.duration_s = 60;
    return summary;
}

// A connection from `remote` to this host's node, established `at_ns` (monotonic) with one
// answered request, then closed by `initiator` after 2 s idle; a close race when `late` (a
// request 0.5 ms after this host's FIN).
Connection served(uint64_t at_ns, Initiator initiator, Endpoint remote = {"10.0.0.1", 40000},
                  bool late = false) {
    Connection conn = test::served_end(Role::Server, {"10.0.0.2", 8080}, std::move(remote), at_ns);
    if (late) {
        conn.requests.push_back({.method = "POST",
                                 .target = "/pay",
                                 .request_ns = test::close_time(at_ns) + kMs / 2,
                                 .outcome = Outcome::AfterLocalClose});
    }
    return test::closed_by(std::move(conn), initiator, CloseHow::Fin);
}

// One end of a loopback connection from python3 to node, closed by node after 2 s idle.
Connection loopback_end(Role role, uint64_t at_ns) {
    const Initiator initiator = role == Role::Client ? Initiator::Peer : Initiator::Local;
    return test::closed_by(test::served_end(role, {"127.0.0.1", 8080}, {"127.0.0.1", 50000}, at_ns),
                           initiator, CloseHow::Fin);
}

std::string trace_text(const TraceHeader& header, const std::vector<Connection>& conns,
                       bool with_summary = true) {
    std::string text = header_line(header) + "\n";
    for (const Connection& conn : conns) text += conn_line(conn) + "\n";
    if (with_summary) text += summary_line(summary_at(header.start_ns + 60'000 * kMs)) + "\n";
    return text;
}

// What `report` reads for each file, merged.
TraceAnalysis merged(const std::vector<std::pair<TraceHeader, std::vector<Connection>>>& traces) {
    std::vector<TraceAnalysis> parts;
    int index = 0;
    for (const auto& [header, conns] : traces) {
        TraceAnalyzer analyzer("part" + std::to_string(index++) + ".jsonl", header);
        for (const Connection& conn : conns) analyzer.add(conn);
        analyzer.add(summary_at(header.start_ns + 60'000 * kMs));
        parts.push_back(analyzer.finish_part({}));
    }
    return merge_traces(std::move(parts));
}

TEST(MergeTraces, SumsTwoHostsAndKeepsEachConnectionsHost) {
    const TraceAnalysis trace = merged(
        {{header_of("api-1"),
          {served(kBootNs + 1000 * kMs, Initiator::Local, {"10.0.0.1", 40000}, true),
           served(kBootNs + 2000 * kMs, Initiator::Peer)}},
         {header_of("api-2"), {served(kBootNs + 3000 * kMs, Initiator::Local)}}});
    EXPECT_EQ(trace.file, "2 traces of 2 hosts");
    EXPECT_EQ(trace.header.host, "api-1, api-2");
    EXPECT_EQ(trace.host_count(), 2u);
    EXPECT_EQ(trace.connections, 3u);
    EXPECT_EQ(trace.requests, 4u);
    EXPECT_EQ(trace.verdicts[Verdict::LocalCloseRace], 1u);
    EXPECT_EQ(trace.verdicts[Verdict::LocalIdleClose], 1u);
    EXPECT_EQ(trace.verdicts[Verdict::PeerIdleClose], 1u);
    EXPECT_EQ(trace.local_idle.count(), 2u);
    ASSERT_EQ(trace.races.listed.size(), 1u);
    EXPECT_EQ(trace.races.listed[0].host, "api-1");
    ASSERT_EQ(trace.sources.size(), 2u);
    EXPECT_EQ(trace.sources[1].file, "part1.jsonl");
    EXPECT_EQ(trace.sources[1].host, "api-2");
    EXPECT_TRUE(trace.sources[1].complete);
}

TEST(MergeTraces, PerHostFiguresAddUpToTheWhole) {
    const TraceAnalysis trace = merged(
        {{header_of("api-1"),
          {served(kBootNs + 1000 * kMs, Initiator::Local, {"10.0.0.1", 40000}, true),
           served(kBootNs + 2000 * kMs, Initiator::Peer)}},
         {header_of("api-2"), {served(kBootNs + 3000 * kMs, Initiator::Local)}}});
    ASSERT_EQ(trace.by_host.size(), 2u);
    const GroupFigures& first = trace.by_host.at("api-1");
    EXPECT_EQ(first.connections, 2u);
    EXPECT_EQ(first.requests, 3u);
    EXPECT_EQ(first.verdicts[Verdict::LocalCloseRace], 1u);
    EXPECT_EQ(first.verdicts[Verdict::PeerIdleClose], 1u);
    const GroupFigures& second = trace.by_host.at("api-2");
    EXPECT_EQ(second.connections, 1u);
    EXPECT_EQ(second.verdicts[Verdict::LocalIdleClose], 1u);
}

TEST(MergeTraces, PairsASameHostConnectionSplitAcrossRotatedFiles) {
    // The client end closed (and was written) before the rotation, the server end after it.
    const uint64_t at_ns = kBootNs + 1000 * kMs;
    const TraceAnalysis trace =
        merged({{header_of("api-1"), {loopback_end(Role::Client, at_ns)}},
                {header_of("api-1", kBootNs + 30'000 * kMs), {loopback_end(Role::Server, at_ns)}}});
    EXPECT_EQ(trace.host_count(), 1u);
    EXPECT_EQ(trace.connections, 1u);
    EXPECT_EQ(trace.same_host_connections(), 1u);
    EXPECT_EQ(trace.verdicts[Verdict::LocalIdleClose], 1u);
    EXPECT_EQ(trace.by_same_host.at("python3 -> node").connections, 1u);
}

TEST(MergeTraces, PairsEndsInTwoNamespacesSplitAcrossRotatedFiles) {
    // A client container calling a server container over a bridge: each end in its namespace,
    // naming the other's socket; the client end was written before the rotation.
    const uint64_t at_ns = kBootNs + 1000 * kMs;
    Connection server = loopback_end(Role::Server, at_ns);
    Connection client = loopback_end(Role::Client, at_ns);
    server.local.addr = client.remote.addr = "172.17.0.3";
    server.remote.addr = client.local.addr = "172.17.0.2";
    client.netns = server.netns + 1;
    server.cookie = 501;
    client.cookie = 502;
    server.other_end = OtherEnd{.cookie = 502, .server = Initiator::Local};
    client.other_end = OtherEnd{.cookie = 501, .server = Initiator::Peer};
    const TraceAnalysis trace = merged(
        {{header_of("api-1"), {client}}, {header_of("api-1", kBootNs + 30'000 * kMs), {server}}});
    EXPECT_EQ(trace.connections, 1u);
    EXPECT_EQ(trace.same_host_connections(), 1u);
    EXPECT_EQ(trace.verdicts[Verdict::LocalIdleClose], 1u);
    EXPECT_EQ(trace.verdicts[Verdict::PeerIdleClose], 0u);
}

TEST(MergeTraces, NeverPairsEndsOfTwoHosts) {
    // The same loopback addresses on two hosts are two connections.
    const uint64_t at_ns = kBootNs + 1000 * kMs;
    const TraceAnalysis trace = merged({{header_of("api-1"), {loopback_end(Role::Client, at_ns)}},
                                        {header_of("api-2"), {loopback_end(Role::Server, at_ns)}}});
    EXPECT_EQ(trace.connections, 2u);
    EXPECT_EQ(trace.same_host_connections(), 0u);
}

TEST(MergeTraces, PlacesTimesOfHostsByWallClock) {
    // api-2 booted an hour earlier: the same wall time is an hour more on its monotonic clock.
    const uint64_t earlier_boot_ns = kBootNs + 3'600'000 * kMs;
    const TraceAnalysis trace = merged(
        {{header_of("api-1"),
          {served(kBootNs + 5000 * kMs, Initiator::Local, {"10.0.0.1", 40000}, true)}},
         {header_of("api-2", earlier_boot_ns),
          {served(earlier_boot_ns + 1000 * kMs, Initiator::Local, {"10.0.0.3", 40000}, true)}}});
    EXPECT_EQ(trace.header.mono_to_wall_ns, 0);
    EXPECT_EQ(trace.header.start_ns, static_cast<uint64_t>(kWallStartNs));
    // The earliest race by wall clock first, though its monotonic time is an hour later.
    ASSERT_EQ(trace.races.listed.size(), 2u);
    EXPECT_EQ(trace.races.listed[0].host, "api-2");
    EXPECT_EQ(trace.races.listed[1].host, "api-1");
    EXPECT_EQ(trace.races.listed[1].wall_ns - trace.races.listed[0].wall_ns,
              static_cast<int64_t>(4000 * kMs));
    // Both within the first 10 s on one time axis, not an hour apart.
    const VerdictTimeline& timeline = trace.verdicts_over_time;
    EXPECT_EQ(timeline.origin_ns(), static_cast<uint64_t>(kWallStartNs));
    EXPECT_LE(timeline.buckets().size() * timeline.bucket_ns(), 10'000 * kMs);
    // From the earliest start to the latest end, on the wall clock.
    ASSERT_TRUE(trace.summary);
    EXPECT_DOUBLE_EQ(trace.duration_s(), 60);
}

TEST(MergeTraces, ASummaryIsKnownOnlyWhenEveryTraceHasOne) {
    std::vector<TraceAnalysis> parts;
    TraceAnalyzer complete("a.jsonl", header_of("api-1"));
    complete.add(summary_at(kBootNs + 60'000 * kMs));
    parts.push_back(complete.finish_part({}));
    TraceAnalyzer cut_short("b.jsonl", header_of("api-2"));
    cut_short.add(served(kBootNs + 1000 * kMs, Initiator::Local));
    parts.push_back(cut_short.finish_part({}));
    const TraceAnalysis trace = merge_traces(std::move(parts));
    EXPECT_FALSE(trace.summary);
    EXPECT_FALSE(trace.sources[1].complete);
    EXPECT_THAT(trace.warnings, ElementsAre(StartsWith("b.jsonl: no summary line")));
}

TEST(IdleHistogram, AddingAnotherKeepsEverySample) {
    IdleHistogram exact;
    IdleHistogram folded;
    for (int ms = 1; ms <= 10; ++ms) exact.add(ms);
    for (std::size_t i = 0; i <= IdleHistogram::kExactSamples; ++i) folded.add(500);
    exact.add(folded);
    EXPECT_EQ(exact.count(), 10 + IdleHistogram::kExactSamples + 1);
    EXPECT_EQ(exact.min(), 1);
    EXPECT_EQ(exact.max(), 500);
    EXPECT_EQ(exact.count_below(100), 10u);
}

// A loopback connection whose client gave up on a request: the server end's peer closed with
// it in flight, the client end reset it. Both ends can explain a load balancer error alone.
std::pair<Connection, Connection> given_up_pair(uint64_t at_ns) {
    Connection server = loopback_end(Role::Server, at_ns);
    Connection client = loopback_end(Role::Client, at_ns);
    for (Connection* end : {&server, &client}) {
        end->requests.push_back({.method = "POST",
                                 .target = "/orders",
                                 .request_ns = at_ns + 1000 * kMs,
                                 .outcome = Outcome::UnansweredAtClose});
        end->close = {};
        end->close.how = CloseHow::Rst;
        end->close.idle_ms = 1000;
    }
    server.close.initiator = Initiator::Peer;
    server.close.peer_rst_ns = at_ns + 2002 * kMs;
    client.close.initiator = Initiator::Local;
    client.close.local_rst_ns = at_ns + 2002 * kMs;
    for (Connection* end : {&server, &client}) {
        end->close.cause = classify_close(*end, {});
        end->verdict = judge(*end);
    }
    return {server, client};
}

TraceFacts alb_facts(const TraceHeader& header, const Connection& conn, bool part) {
    std::istringstream in(trace_text(header, {conn}));
    TraceReader reader(in, header.host + ".jsonl");
    return part ? read_trace_facts_part(reader, header.host + ".jsonl")
                : read_trace_facts(reader, header.host + ".jsonl");
}

uint64_t caught_connections(const TraceFacts& facts) {
    uint64_t total = 0;
    for (const auto& [verdict, count] : facts.caught_connections) total += count;
    return total;
}

TEST(MergeTraceFacts, CatchesASameHostConnectionSplitAcrossRotatedFilesOnce) {
    const auto [server, client] = given_up_pair(kBootNs + 1000 * kMs);
    ASSERT_EQ(server.verdict, Verdict::PeerCloseInflight);
    // Read alone, each end is a caught connection of its own.
    ASSERT_EQ(caught_connections(alb_facts(header_of("api-1"), client, false)), 1u);
    std::vector<TraceFacts> parts;
    parts.push_back(alb_facts(header_of("api-1"), client, true));
    parts.push_back(alb_facts(header_of("api-1", kBootNs + 30'000 * kMs), server, true));
    const TraceFacts merged = merge_trace_facts(std::move(parts));
    EXPECT_EQ(merged.file, "2 traces of 1 host");
    EXPECT_EQ(caught_connections(merged), 1u);
    EXPECT_EQ(merged.caught_connections.at(Verdict::PeerCloseInflight), 1u);
}

TEST(MergeTraceFacts, KeepsEveryHostsRequestsInWallClockOrder) {
    std::vector<TraceFacts> parts;
    parts.push_back(alb_facts(header_of("api-1"),
                              served(kBootNs + 5000 * kMs, Initiator::Local,
                                     {"10.0.0.1", 40000}, true),
                              true));
    parts.push_back(alb_facts(header_of("api-2", kBootNs + 3'600'000 * kMs),
                              served(kBootNs + 3'601'000 * kMs, Initiator::Local,
                                     {"10.0.0.3", 40000}, true),
                              true));
    const TraceFacts merged = merge_trace_facts(std::move(parts));
    EXPECT_THAT(merged.hosts, ElementsAre("api-1", "api-2"));
    ASSERT_EQ(merged.caught_requests.size(), 2u);
    EXPECT_EQ(merged.caught_requests[0].host, "api-2");
    EXPECT_EQ(merged.caught_requests[1].host, "api-1");
}

// ---------------------------------------------------------------------------------------------
// The commands' trace arguments

TEST(TraceFiles, ADirectoryGivesItsTracesInNameOrder) {
    const TempDir dir;
    write_file(dir.path() / "api-20261125T020000Z.jsonl", "");
    write_file(dir.path() / "api-20261125T010000Z.jsonl.gz", "");
    write_file(dir.path() / "notes.txt", "");
    write_file(dir.path() / "sub" / "deeper.jsonl", "");  // a host's, synced from S3
    EXPECT_THAT(trace_files({dir.path().string(), "other.jsonl"}),
                ElementsAre((dir.path() / "api-20261125T010000Z.jsonl.gz").string(),
                            (dir.path() / "api-20261125T020000Z.jsonl").string(),
                            (dir.path() / "sub" / "deeper.jsonl").string(), "other.jsonl"));
}

TEST(TraceFiles, RefusesStandardInputTwiceAndADirectoryWithoutTraces) {
    const TempDir dir;
    write_file(dir.path() / "notes.txt", "");
    EXPECT_THAT(trace_files({"-"}), ElementsAre("-"));
    EXPECT_THROW(trace_files({"-", "a.jsonl", "-"}), TraceArgumentError);
    try {
        trace_files({dir.path().string()});
        FAIL() << "a directory without traces was accepted";
    } catch (const TraceArgumentError& error) {
        EXPECT_THAT(error.what(), HasSubstr("is a directory without trace files"));
    }
}

// Read twice, a trace's connections would count twice.
TEST(TraceFiles, RefusesAFileNamedTwice) {
    const TempDir dir;
    const std::string trace = (dir.path() / "api-1.jsonl").string();
    write_file(trace, "");
    for (const std::vector<std::string>& arguments :
         {std::vector<std::string>{trace, trace}, {dir.path().string(), trace},
          {trace, (dir.path() / "." / "api-1.jsonl").string()}}) {
        try {
            trace_files(arguments);
            ADD_FAILURE() << "a file named twice was accepted: " << arguments[1];
        } catch (const TraceArgumentError& error) {
            EXPECT_THAT(error.what(), HasSubstr("is given twice"));
            EXPECT_THAT(error.what(), HasSubstr("; give each trace once"));
        }
    }
}

// The wall-clock span of a file of `header` that recorded for `seconds`.
RecordingSpan span_of(const TraceHeader& header, int64_t seconds) {
    return {&header, static_cast<int64_t>(header.start_ns) + header.mono_to_wall_ns +
                         seconds * 1000 * static_cast<int64_t>(kMs)};
}

// A copy of a trace (the .gz beside the plain file) is the same recording under another name:
// its connections would count twice too. A rotated recording's files each start anew.
TEST(TraceFiles, RefusesARecordingReadTwice) {
    const TraceHeader api = header_of("api-1");
    TraceHeader next_file = api;
    next_file.start_ns += 3600 * 1000 * kMs;
    const TraceHeader other_host = header_of("api-2");
    EXPECT_NO_THROW(refuse_a_recording_read_twice(
        {"a", "b", "c"}, {span_of(api, 3600), span_of(next_file, 60), span_of(other_host, 60)}));
    try {
        refuse_a_recording_read_twice(
            {"t.jsonl", "u.jsonl", "t.jsonl.gz"},
            {span_of(api, 60), span_of(other_host, 60), span_of(api, 60)});
        FAIL() << "a copy of a trace was accepted";
    } catch (const TraceArgumentError& error) {
        EXPECT_THAT(error.what(), StartsWith("t.jsonl and t.jsonl.gz hold the same recording "
                                             "(host api-1, from "));
        EXPECT_THAT(error.what(), HasSubstr("; give each trace once"));
    }
}

// A recording started by hand beside a host's daemon, into the same directory: the sockets both
// recorded would count twice. Other ports, or another namespace, are other sockets.
TEST(TraceFiles, RefusesTwoRecordingsOfAHostAtTheSameTime) {
    const TraceHeader daemon = header_of("api-1");
    TraceHeader by_hand = daemon;
    by_hand.start_ns += 600 * 1000 * kMs;
    by_hand.mono_to_wall_ns += 3;  // its own estimate of the wall clock
    try {
        refuse_a_recording_read_twice({"daemon.jsonl", "by-hand.jsonl"},
                                      {span_of(daemon, 3600), span_of(by_hand, 60)});
        FAIL() << "two recordings at the same time were accepted";
    } catch (const TraceArgumentError& error) {
        EXPECT_THAT(error.what(), StartsWith("daemon.jsonl and by-hand.jsonl are two recordings "
                                             "of host api-1 at the same time"));
    }
    TraceHeader other_port = by_hand;
    TraceHeader daemon_port = daemon;
    daemon_port.filters.ports = {8080};
    other_port.filters.ports = {9090};
    EXPECT_NO_THROW(refuse_a_recording_read_twice(
        {"a", "b"}, {span_of(daemon_port, 3600), span_of(other_port, 60)}));
    TraceHeader other_netns = by_hand;
    TraceHeader daemon_netns = daemon;
    daemon_netns.filters.netns = 4026531840;
    other_netns.filters.netns = 4026532001;
    EXPECT_NO_THROW(refuse_a_recording_read_twice(
        {"a", "b"}, {span_of(daemon_netns, 3600), span_of(other_netns, 60)}));
    // One after the other (a recorder restarted): fine, within the two clocks' estimates.
    EXPECT_NO_THROW(refuse_a_recording_read_twice({"a", "b"},
                                                  {span_of(daemon, 600), span_of(by_hand, 60)}));
    RecordingSpan until_just_after = span_of(daemon, 600);
    until_just_after.end_wall_ns += 90 * static_cast<int64_t>(kMs);
    EXPECT_NO_THROW(
        refuse_a_recording_read_twice({"a", "b"}, {until_just_after, span_of(by_hand, 60)}));
    until_just_after.end_wall_ns += 20 * static_cast<int64_t>(kMs);
    EXPECT_THROW(
        refuse_a_recording_read_twice({"a", "b"}, {until_just_after, span_of(by_hand, 60)}),
        TraceArgumentError);
    // A subtree's recording and one of a cgroup below it share that cgroup's sockets.
    TraceHeader subtree = daemon;
    TraceHeader below = by_hand;
    subtree.filters.cgroup = "/system.slice";
    below.filters.cgroup = "/system.slice/nginx.service";
    EXPECT_THROW(refuse_a_recording_read_twice({"a", "b"},
                                               {span_of(subtree, 3600), span_of(below, 60)}),
                 TraceArgumentError);
    below.filters.cgroup = "/system.slice-other";
    EXPECT_NO_THROW(refuse_a_recording_read_twice({"a", "b"},
                                                  {span_of(subtree, 3600), span_of(below, 60)}));
    // A rotation directory's files, a clock set back between its recordings: one recorder at
    // a time wrote them.
    EXPECT_NO_THROW(refuse_a_recording_read_twice(
        {"d/closetrace-20261125T010000-000001.jsonl", "d/closetrace-20261125T005000-000002.jsonl"},
        {span_of(daemon, 3600), span_of(by_hand, 60)}));
}

TEST(TraceFiles, ReadsOneFileAndSaysWhatWasWrongWithItAsAWhole) {
    const TempDir dir;
    const std::string trace = (dir.path() / "api-1.jsonl.gz").string();
    write_gzip(trace, trace_text(header_of("api-1"), {served(kBootNs + 1000 * kMs, Initiator::Peer)}));
    // Read to the end, so that the file's problems are known.
    const auto read_hosts = [](TraceReader& reader, const std::string& name) {
        while (reader.next()) {
        }
        return name + ":" + reader.header().host;
    };
    const TraceFileRead<std::string> whole = read_trace_file(trace, read_hosts);
    EXPECT_EQ(whole.result, trace + ":api-1");
    EXPECT_EQ(whole.problem, "");

    std::filesystem::resize_file(trace, std::filesystem::file_size(trace) - 4);  // the gzip trailer
    EXPECT_EQ(read_trace_file(trace, read_hosts).problem,
              trace + ": unexpected end of file (a truncated gzip file)");
}

TEST(TraceFiles, AFileThatCannotBeOpenedSaysWhy) {
    const TempDir dir;
    const auto nothing = [](TraceReader&, const std::string&) { return 0; };
    try {
        read_trace_file(dir.path().string(), nothing);
        FAIL() << "a directory was read as a trace";
    } catch (const TraceOpenError& error) {
        EXPECT_EQ(error.what(), dir.path().string() + " is a directory");
    }
    try {
        read_trace_file((dir.path() / "missing.jsonl").string(), nothing);
        FAIL() << "a missing file was read as a trace";
    } catch (const TraceOpenError& error) {
        EXPECT_EQ(error.what(), "cannot open " + (dir.path() / "missing.jsonl").string() +
                                    ": No such file or directory");
    }
}

// A directory listed while its recorder rotates: the live file closed (renamed), then
// compressed, since. Read under its later name.
TEST(TraceFiles, AFileRotatedSinceItWasListedIsReadUnderItsLaterName) {
    const TempDir dir;
    const std::string stem = (dir.path() / "closetrace-20261125T010203-000007").string();
    const std::string text =
        trace_text(header_of("api-1"), {served(kBootNs + 1000 * kMs, Initiator::Peer)});
    write_gzip(stem + ".jsonl.gz", text);
    const auto name = [](TraceReader&, const std::string& file) { return file; };
    EXPECT_EQ(read_trace_file(stem + ".live.jsonl", name).result, stem + ".jsonl.gz");
    EXPECT_EQ(read_trace_file(stem + ".jsonl", name).result, stem + ".jsonl.gz");
    write_file(stem + ".jsonl", text);
    EXPECT_EQ(read_trace_file(stem + ".live.jsonl", name).result, stem + ".jsonl");
    // Deleted under every name (retention): no recording, which a set leaves out.
    std::filesystem::remove(stem + ".jsonl");
    std::filesystem::remove(stem + ".jsonl.gz");
    EXPECT_THROW(read_trace_file(stem + ".live.jsonl", name), NoRecordingError);
}

// ---------------------------------------------------------------------------------------------
// report of several traces

TEST(ReportOfSeveralTraces, TheAdviceNamesTheHostsNotThisHost) {
    const TempDir dir;
    const std::string first = (dir.path() / "api-1.jsonl").string();
    const std::string second = (dir.path() / "api-2.jsonl").string();
    write_file(first, trace_text(header_of("api-1"), {served(kBootNs + 1000 * kMs, Initiator::Local,
                                                            {"10.0.0.1", 40000}, true)}));
    write_file(second, trace_text(header_of("api-2"), {served(kBootNs + 2000 * kMs,
                                                             Initiator::Local,
                                                             {"10.0.0.1", 40001}, true)}));
    const CommandOutput verify = run_verify({first, second}, std::nullopt);
    EXPECT_THAT(verify.out, HasSubstr("requests arrived on connections these hosts had just closed"));
    EXPECT_THAT(verify.out, Not(HasSubstr("this host")));
    const CommandOutput alone = run_verify({first}, std::nullopt);
    EXPECT_THAT(alone.out, HasSubstr("requests arrived on connections this host had just closed"));
}

// `verify DIR` of a rotated recording: the report it points at is of the directory, as given,
// not of every file in it.
TEST(ReportOfSeveralTraces, VerifyOfManyFilesNamesTheirDirectory) {
    const TempDir dir;
    std::vector<std::string> files;
    for (int hour = 0; hour < 4; ++hour) {
        TraceHeader header = header_of("api-1");
        header.start_ns += static_cast<uint64_t>(hour) * 3'600'000 * kMs;
        files.push_back((dir.path() / ("closetrace-" + std::to_string(hour) + ".jsonl")).string());
        write_file(files.back(), trace_text(header, {served(header.start_ns + 1000 * kMs,
                                                            Initiator::Local, {"10.0.0.1", 40000},
                                                            true)}));
    }
    const CommandOutput verify = run_verify(files, std::nullopt, {dir.path().string()});
    EXPECT_EQ(verify.exit_code, 1) << verify.err;
    EXPECT_THAT(verify.out, HasSubstr("See `closetrace report " + dir.path().string() +
                                      "` for the fix."));
    // Files named one by one are named so again.
    const CommandOutput some = run_verify({files[0], files[1]}, std::nullopt);
    EXPECT_THAT(some.out, HasSubstr("See `closetrace report " + files[0] + " " + files[1] +
                                    "` for the fix."));
}

TEST(ReportOfSeveralTraces, ReportsBothHostsWithAPerHostBreakdown) {
    const TempDir dir;
    const std::string first = (dir.path() / "api-1.jsonl.gz").string();
    const std::string second = (dir.path() / "api-2.jsonl").string();
    write_gzip(first, trace_text(header_of("api-1"), {served(kBootNs + 1000 * kMs, Initiator::Local,
                                                             {"10.0.0.1", 40000}, true)}));
    write_file(second,
               trace_text(header_of("api-2"), {served(kBootNs + 2000 * kMs, Initiator::Peer)}));

    const CommandOutput text =
        run_report({first, second}, OutputFormat::Text, {Breakdown::Host});
    EXPECT_EQ(text.exit_code, 0) << text.err;
    EXPECT_THAT(text.out,
                StartsWith("closetrace report: 2 traces of 2 hosts\nHosts api-1, api-2,"));
    EXPECT_THAT(text.out, HasSubstr("  api-1: " + first + "\n  api-2: " + second + "\n"));
    EXPECT_THAT(text.out, HasSubstr("POST /pay [host api-1]"));
    EXPECT_THAT(text.out, HasSubstr("\nBy host\n"));
    EXPECT_THAT(text.out,
                HasSubstr("1 request arrived on a connection these hosts had just closed"));

    const CommandOutput json = run_report({first, second}, OutputFormat::Json);
    const nlohmann::json report = nlohmann::json::parse(json.out);
    EXPECT_EQ(report["format"], "closetrace-report/2");
    EXPECT_EQ(report["files"].size(), 2u);
    EXPECT_EQ(report["by_host"]["groups"].size(), 2u);
    EXPECT_EQ(report["races"]["listed"][0]["host"], "api-1");
    EXPECT_EQ(report["trace"]["connections"], 2);
}

// A fleet where one host closes idle connections after 2 s and another after 6 s: the pooled
// median hides the first; each host's timer is named.
TEST(ReportOfSeveralTraces, EachHostsIdleTimerIsShown) {
    const TempDir dir;
    const auto closes_after = [&](const std::string& host, double idle_ms) {
        std::vector<Connection> conns;
        for (uint16_t i = 0; i < 3; ++i) {
            Connection conn = served(kBootNs + i * 10'000 * kMs, Initiator::Local,
                                     {"10.0.0.1", static_cast<uint16_t>(40000 + i)});
            conn.close.idle_ms = idle_ms + i;
            conns.push_back(conn);
        }
        const std::string path = (dir.path() / (host + ".jsonl")).string();
        write_file(path, trace_text(header_of(host), conns));
        return path;
    };
    const std::string first = closes_after("api-1", 6000);
    const std::string second = closes_after("api-2", 2000);
    const CommandOutput text = run_report({first, second}, OutputFormat::Text, {Breakdown::Host});
    EXPECT_EQ(text.exit_code, 0) << text.err;
    EXPECT_THAT(text.out, HasSubstr("(median of 6; by host: api-2 2.001 s, api-1 6.001 s)"));
    EXPECT_THAT(text.out, HasSubstr("gave up  idle timer\n"));
    EXPECT_THAT(text.out, HasSubstr(" 0     2.002 s\n"));
    EXPECT_THAT(text.out, HasSubstr("as these hosts close it"));
    const nlohmann::json report =
        nlohmann::json::parse(run_report({first, second}, OutputFormat::Json).out);
    EXPECT_EQ(report["by_host"]["groups"][0]["idle_timer_ms"], 6002.0);
    EXPECT_EQ(report["by_host"]["groups"][1]["idle_timer_ms"], 2002.0);
    EXPECT_THAT(run_report({first, second}, OutputFormat::Html).out,
                HasSubstr("<td class=\"num\">2.002 s</td></tr>"));
    // verify names the hosts whose closes came too soon, not only the pooled figures.
    const CommandOutput verify = run_verify({first, second}, 4.0);
    EXPECT_EQ(verify.exit_code, 1) << verify.err;
    EXPECT_THAT(verify.out, HasSubstr("3 of 6 idle closes by these hosts came sooner than the "
                                      "peer's idle timeout of 4.000 s (given): the shortest after "
                                      "2.000 s, the median after 2.002 s; on api-2 (3)\n"));
}

TEST(ReportOfSeveralTraces, TheHtmlPageListsTheTracesAndEachHostsFigures) {
    const TempDir dir;
    const std::string first = (dir.path() / "a.jsonl").string();
    const std::string second = (dir.path() / "b.jsonl").string();
    write_file(first, trace_text(header_of("api-1"), {served(kBootNs + 1000 * kMs, Initiator::Local,
                                                            {"10.0.0.1", 40000}, true)}));
    write_file(second,
               trace_text(header_of("api-2"), {served(kBootNs + 2000 * kMs, Initiator::Peer)}));
    const CommandOutput html = run_report({first, second}, OutputFormat::Html);
    EXPECT_EQ(html.exit_code, 0) << html.err;
    EXPECT_THAT(html.out, HasSubstr("hosts <b>api-1, api-2</b>"));
    EXPECT_THAT(html.out, HasSubstr("Traces read: <code>" + first + "</code> (api-1), <code>" +
                                    second + "</code> (api-2)."));
    EXPECT_THAT(html.out, HasSubstr("<tr><td>api-1</td><td class=\"num\">1</td>"));
    EXPECT_THAT(html.out, HasSubstr("<tr><td>api-2</td><td class=\"num\">1</td>"));
    EXPECT_THAT(html.out, HasSubstr("[host api-1]"));
}

TEST(ReportOfSeveralTraces, ADamagedSecondFileIsOneLineNamingIt) {
    const TempDir dir;
    const std::string good = (dir.path() / "a.jsonl").string();
    const std::string damaged = (dir.path() / "b.jsonl").string();
    write_file(good,
               trace_text(header_of("api-1"), {served(kBootNs + 1000 * kMs, Initiator::Local)}));
    write_file(damaged, header_line(header_of("api-2")) + "\n{\"type\":\"conn\"}\n");
    const CommandOutput output = run_report({good, damaged}, OutputFormat::Text);
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_TRUE(output.out.empty());
    EXPECT_THAT(output.err, StartsWith("closetrace report: " + damaged + ":2: "));
    EXPECT_THAT(output.err, HasSubstr("remove the line or record again\n"));
    EXPECT_EQ(std::ranges::count(output.err, '\n'), 1);
}

// An empty file (a recorder killed as it opened it) or one cut inside its header holds no
// recording: left out of a set with a warning, where it failed the whole fleet's report.
TEST(ReportOfSeveralTraces, AFileHoldingNoRecordingIsLeftOutWithAWarning) {
    const TempDir dir;
    const std::string good = (dir.path() / "a.jsonl").string();
    const std::string empty = (dir.path() / "b.jsonl").string();
    const std::string cut = (dir.path() / "c.jsonl").string();
    write_file(good,
               trace_text(header_of("api-1"), {served(kBootNs + 1000 * kMs, Initiator::Local)}));
    write_file(empty, "");
    write_file(cut, header_line(header_of("api-2")).substr(0, 40));
    const CommandOutput output = run_report({good, empty, cut}, OutputFormat::Json);
    EXPECT_EQ(output.exit_code, 0) << output.err;
    EXPECT_EQ(nlohmann::json::parse(output.out)["trace"]["connections"], 1);
    EXPECT_THAT(output.err, HasSubstr("warning: " + empty +
                                      ": empty file, not a closetrace trace; left out\n"));
    EXPECT_THAT(output.err, HasSubstr("warning: " + cut + ":1: the file ends inside its header "
                                      "line"));
    const CommandOutput none = run_report({empty, cut}, OutputFormat::Text);
    EXPECT_EQ(none.exit_code, 2);
    EXPECT_THAT(none.err, HasSubstr("none of the 2 files given holds a recording"));
    EXPECT_EQ(std::ranges::count(none.err, '\n'), 1);
}

TEST(ReportOfSeveralTraces, OneTraceGivenAsASetReportsAsItAlwaysDid) {
    const TempDir dir;
    const std::string path = (dir.path() / "a.jsonl").string();
    write_file(path,
               trace_text(header_of("api-1"), {served(kBootNs + 1000 * kMs, Initiator::Local)}));
    const CommandOutput json = run_report(std::vector{path}, OutputFormat::Json);
    const nlohmann::json report = nlohmann::json::parse(json.out);
    EXPECT_EQ(report["format"], "closetrace-report/1");
    EXPECT_FALSE(report.contains("by_host"));
    EXPECT_FALSE(report.contains("files"));
}

TEST(DiffOfSets, ComparesTheMergedSetsBeforeAndAfter) {
    const TempDir dir;
    auto write = [&](const std::string& name, const std::string& host, bool race) {
        const std::string path = (dir.path() / name).string();
        write_file(path, trace_text(header_of(host), {served(kBootNs + 1000 * kMs, Initiator::Local,
                                                             {"10.0.0.1", 40000}, race)}));
        return path;
    };
    const std::string b1 = write("b1.jsonl", "api-1", true);
    const std::string b2 = write("b2.jsonl", "api-2", false);
    const std::string a1 = write("a1.jsonl", "api-1", false);
    const std::string a2 = write("a2.jsonl", "api-2", false);
    const CommandOutput output = run_diff({b1, b2}, {a1, a2}, OutputFormat::Json);
    EXPECT_EQ(output.exit_code, 0) << output.err;
    const nlohmann::json diff = nlohmann::json::parse(output.out);
    EXPECT_EQ(diff["format"], "closetrace-diff/2");
    EXPECT_EQ(diff["before"]["races"]["total"], 1);
    EXPECT_EQ(diff["after"]["races"]["total"], 0);
    EXPECT_EQ(diff["before"]["by_host"]["groups"].size(), 2u);
}

// A host that raced before and is missing after (its upload failed, it was quiet) is no fix.
TEST(DiffOfSets, JudgesAChangeOnlyOnTheHostsRecordedBothTimes) {
    std::vector<Connection> racing;
    std::vector<Connection> calm;
    for (uint16_t i = 0; i < 3; ++i) {
        racing.push_back(served(kBootNs + i * 10'000 * kMs, Initiator::Local,
                                {"10.0.0.1", static_cast<uint16_t>(40000 + i)}, true));
    }
    for (uint16_t i = 0; i < 30; ++i) {
        calm.push_back(served(kBootNs + i * 1000 * kMs, Initiator::Peer,
                              {"10.0.0.1", static_cast<uint16_t>(41000 + i)}));
    }
    const TraceAnalysis after = merged({{header_of("api-2"), calm}});
    const DiffResult missing =
        diff_traces(merged({{header_of("api-1"), racing}, {header_of("api-2"), calm}}), after);
    EXPECT_EQ(missing.conclusion, DiffConclusion::Inconclusive);
    EXPECT_THAT(missing.explanation,
                HasSubstr("The later recording holds nothing of host api-1, which the earlier "
                          "one shows something to fix on"));

    // A host missing after the change that had nothing to fix: the others judge the change.
    const DiffResult calm_missing =
        diff_traces(merged({{header_of("api-1"), racing}, {header_of("api-2"), calm}}),
                    merged({{header_of("api-1"), calm}}));
    EXPECT_EQ(calm_missing.conclusion, DiffConclusion::Fixed) << calm_missing.explanation;
    EXPECT_THAT(calm_missing.explanation, HasSubstr("Not the same hosts: api-2 only before."));

    // An instance replaced by the deploy: judged, and said.
    const DiffResult replaced = diff_traces(merged({{header_of("api-1"), racing}}), after);
    EXPECT_EQ(replaced.conclusion, DiffConclusion::Fixed);
    EXPECT_THAT(replaced.explanation,
                HasSubstr("Not the same hosts: api-1 only before; api-2 only after."));

    // Both hosts after the change: judged as before.
    const DiffResult both =
        diff_traces(merged({{header_of("api-1"), racing}, {header_of("api-2"), calm}}),
                    merged({{header_of("api-1"), calm}, {header_of("api-2"), calm}}));
    EXPECT_EQ(both.conclusion, DiffConclusion::Fixed) << both.explanation;
}

}  // namespace
}  // namespace closetrace
