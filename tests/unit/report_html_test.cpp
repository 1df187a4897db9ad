// The HTML report and diff: one self-contained page, every trace string escaped, the figures
// those of the JSON report, bounded in size; and what the analysis collects for it (verdicts
// over time, the timeline of each race), and `--output`.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "closetrace/analysis.h"
#include "closetrace/report.h"

namespace closetrace {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;
using json = nlohmann::json;

const fs::path kFixtures = CLOSETRACE_FIXTURES;
constexpr uint64_t kMs = 1'000'000;
constexpr uint64_t kStartNs = 1'000'000'000'000;

std::string fixture(const std::string& name) { return (kFixtures / name).string(); }

std::string unescaped(std::string html) {
    for (const auto& [entity, character] : std::vector<std::pair<std::string, std::string>>{
             {"&lt;", "<"}, {"&gt;", ">"}, {"&quot;", "\""}, {"&#39;", "'"}, {"&amp;", "&"}}) {
        for (std::size_t at = html.find(entity); at != std::string::npos;
             at = html.find(entity, at + character.size())) {
            html.replace(at, entity.size(), character);
        }
    }
    return html;
}

// A figure on the page: the JSON member it shows, data-value (when given) and its text.
struct Figure {
    std::string member;
    std::optional<std::string> value;
    std::string text;
};

std::vector<Figure> figures(const std::string& html) {
    static const std::regex kFigure(
        R"re(<[a-z]+[^>]*? data-json="([^"]+)"(?: data-value="([^"]*)")?[^>]*>([^<]*))re");
    std::vector<Figure> found;
    for (auto match = std::sregex_iterator(html.begin(), html.end(), kFigure);
         match != std::sregex_iterator(); ++match) {
        const std::smatch& m = *match;
        found.push_back({m[1].str(), m[2].matched ? std::optional(m[2].str()) : std::nullopt,
                         unescaped(m[3].str())});
    }
    return found;
}

json member_of(const json& document, const std::string& dotted) {
    std::string pointer = "/" + dotted;
    std::ranges::replace(pointer, '.', '/');
    return document.at(json::json_pointer(pointer));
}

// Every figure on the page equals the member of the JSON report it names; returns the members.
std::set<std::string> expect_figures_match(const std::string& html, const json& document) {
    std::set<std::string> members;
    for (const Figure& figure : figures(html)) {
        SCOPED_TRACE(figure.member);
        members.insert(figure.member);
        const json expected = member_of(document, figure.member);
        if (figure.value) {
            if (*figure.value == "null") {
                EXPECT_TRUE(expected.is_null());
            } else {
                // Both are milliseconds to the microsecond; the roundings may differ by one.
                EXPECT_TRUE(expected.is_number() &&
                            std::abs(std::stod(*figure.value) - expected.get<double>()) < 0.0011)
                    << *figure.value << " != " << expected;
            }
        } else if (expected.is_string()) {
            EXPECT_EQ(figure.text, expected.get<std::string>());
        } else {
            EXPECT_EQ(figure.text, expected.dump());
        }
    }
    return members;
}

// Every tag on the page is one the renderer writes, and none has an event handler: anything
// from the trace came through as text.
void expect_only_our_markup(const std::string& html) {
    static const std::set<std::string> kTags = {
        "!DOCTYPE", "html",   "head",   "meta",       "title", "style", "body", "h1",   "h2",
        "h3",       "p",      "code",   "b",          "span",  "ol",    "ul",   "li",   "section",
        "table",    "tr",     "th",     "td",         "div",   "svg",   "g",    "rect", "line",
        "text",     "circle", "figure", "figcaption", "time",  "footer"};
    static const std::regex kTag(R"(<(/?)([!A-Za-z][A-Za-z0-9]*)([^>]*)>)");
    static const std::regex kHandler(R"(\son[a-z]+\s*=)", std::regex::icase);
    for (auto match = std::sregex_iterator(html.begin(), html.end(), kTag);
         match != std::sregex_iterator(); ++match) {
        EXPECT_TRUE(kTags.contains((*match)[2].str())) << (*match)[0].str();
        EXPECT_FALSE(std::regex_search((*match)[3].str(), kHandler)) << (*match)[0].str();
    }
    EXPECT_THAT(html, Not(HasSubstr("<script")));
    for (const char c : html) {
        const auto byte = static_cast<unsigned char>(c);
        EXPECT_TRUE(c == '\n' || (byte >= 0x20 && byte < 0x7f)) << "byte " << int(byte);
    }
}

std::size_t occurrences(const std::string& text, const std::string& part) {
    std::size_t count = 0;
    for (std::size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1))
        ++count;
    return count;
}

CommandOutput html_report(const std::string& path) { return run_report(path, OutputFormat::Html); }

json json_report(const std::string& path) {
    return json::parse(run_report(path, OutputFormat::Json).out);
}

// ---------------------------------------------------------------------------------------------
// The page

TEST(ReportHtml, IsOneSelfContainedPage) {
    const CommandOutput output = html_report(fixture("mismatch.jsonl"));
    ASSERT_EQ(output.exit_code, 0) << output.err;
    const std::string& html = output.out;
    EXPECT_TRUE(html.starts_with("<!DOCTYPE html>\n"));
    EXPECT_TRUE(html.ends_with("</html>\n"));
    EXPECT_THAT(html, HasSubstr("Content-Security-Policy\" content=\"default-src 'none'"));
    // Nothing to fetch, nothing to run.
    for (const char* external :
         {"<script", "src=", "href=", "url(", "@import", "http://", "https://"}) {
        EXPECT_THAT(html, Not(HasSubstr(external)));
    }
    EXPECT_EQ(occurrences(html, "<svg class=\"idle-histogram\""), 1u);
    EXPECT_EQ(occurrences(html, "<svg class=\"verdicts-over-time\""), 1u);
    const json report = json_report(fixture("mismatch.jsonl"));
    EXPECT_EQ(occurrences(html, "<figure class=\"timeline\""), report["races"]["listed"].size());
    EXPECT_GT(report["races"]["listed"].size(), 0u);
    expect_only_our_markup(html);
}

TEST(ReportHtml, SaysWhatTheTextReportSays) {
    const json report = json_report(fixture("mismatch.jsonl"));
    const std::string html = html_report(fixture("mismatch.jsonl")).out;
    std::map<std::string, std::string> shown;
    for (const Figure& figure : figures(html)) shown[figure.member] = figure.text;
    EXPECT_EQ(shown["conclusion"], report["conclusion"].get<std::string>());
    const json& recommendations = report["recommendations"];
    ASSERT_FALSE(recommendations.empty());
    for (std::size_t index = 0; index < recommendations.size(); ++index) {
        EXPECT_EQ(shown["recommendations." + std::to_string(index) + ".text"],
                  recommendations[index]["text"].get<std::string>());
    }
}

TEST(ReportHtml, ShowsTheFiguresOfTheJsonReport) {
    std::vector<std::string> traces = {fixture("html/injected.jsonl")};
    for (const fs::directory_entry& entry : fs::directory_iterator(kFixtures)) {
        if (entry.path().extension() == ".jsonl") traces.push_back(entry.path().string());
    }
    for (const std::string& trace : traces) {
        SCOPED_TRACE(trace);
        const CommandOutput html = html_report(trace);
        const CommandOutput text = run_report(trace, OutputFormat::Text);
        EXPECT_EQ(html.exit_code, text.exit_code);
        EXPECT_EQ(html.err, text.err);
        if (html.exit_code != 0) continue;
        const std::set<std::string> members = expect_figures_match(html.out, json_report(trace));
        for (const Verdict verdict : kAllVerdicts) {
            EXPECT_TRUE(
                members.contains(std::string("verdicts.") + to_string(verdict) + ".connections"));
        }
        for (const char* member :
             {"trace.connections", "trace.requests", "trace.duration_s", "trace.lost_events",
              "idle.this_host.closes", "idle.this_host.median_ms", "idle.peer.closes",
              "idle.peer.max_ms", "idle.peer.keeps_idle_longer_than_ms", "peer_idle_timeout.ms",
              "early_idle_closes", "races.total", "inflight_resets.total", "peer_gave_up.total",
              "conclusion", "recommendations.0.text"}) {
            EXPECT_TRUE(members.contains(member)) << member;
        }
    }
}

// The bars' counts (data-count) of a part of the page, by the text before each.
std::map<std::string, uint64_t> bar_counts(const std::string& html, const std::regex& bar) {
    std::map<std::string, uint64_t> counts;
    for (auto match = std::sregex_iterator(html.begin(), html.end(), bar);
         match != std::sregex_iterator(); ++match) {
        counts[(*match)[1].str()] += std::stoull((*match)[2].str());
    }
    return counts;
}

TEST(ReportHtml, BarsAddUpToTheFigures) {
    for (const char* name : {"mismatch.jsonl", "fixed.jsonl", "overload.jsonl"}) {
        SCOPED_TRACE(name);
        const json report = json_report(fixture(name));
        const std::string html = html_report(fixture(name)).out;
        // Idle histograms: each panel's bars hold that side's idle closes.
        for (const char* side : {"this_host", "peer"}) {
            const std::string opening = std::string("<g class=\"idle-panel\" data-side=\"") + side;
            const std::size_t begin = html.find(opening);
            ASSERT_NE(begin, std::string::npos);
            const std::string panel = html.substr(begin, html.find("</g>", begin) - begin);
            const std::map<std::string, uint64_t> bars =
                bar_counts(panel, std::regex(R"re(()data-count="(\d+)")re"));
            EXPECT_EQ(bars.empty() ? 0 : bars.at(""),
                      report["idle"][side]["closes"].get<uint64_t>());
        }
        // Verdicts over time: the bars of each verdict hold its connections.
        const std::map<std::string, uint64_t> over_time =
            bar_counts(html, std::regex(R"re(data-verdict="([a-z_]+)" data-count="(\d+)")re"));
        for (const Verdict verdict : kAllVerdicts) {
            const auto found = over_time.find(to_string(verdict));
            EXPECT_EQ(found == over_time.end() ? 0 : found->second,
                      report["verdicts"][to_string(verdict)]["connections"].get<uint64_t>())
                << to_string(verdict);
        }
    }
}

TEST(ReportHtml, MarksEachRaceOnATimelineWithItsRequestLine) {
    const std::string html = html_report(fixture("mismatch.jsonl")).out;
    const json races = json_report(fixture("mismatch.jsonl"))["races"]["listed"];
    for (std::size_t index = 0; index < races.size(); ++index) {
        const std::string member = "races.listed." + std::to_string(index) + ".conn_id";
        const std::size_t id = html.find("data-json=\"" + member + "\"");
        ASSERT_NE(id, std::string::npos) << member;
        const std::size_t begin = html.rfind("<figure class=\"timeline\">", id);
        const std::string timeline = html.substr(begin, html.find("</figure>", begin) - begin);
        const std::string request_line = races[index]["method"].get<std::string>() + " " +
                                         races[index]["target"].get<std::string>();
        EXPECT_THAT(timeline, HasSubstr("<code class=\"request\">" + request_line));
        for (const char* event : {"FIN (this host)", "late request", "last request", "idle "}) {
            EXPECT_THAT(timeline, HasSubstr(event));
        }
        EXPECT_THAT(timeline, HasSubstr("class=\"gap window\""));
    }
}

// grpc_race.jsonl: a real grpc-js server's idle GOAWAY and a stream the client opened after it
// (tests/integration/test_grpc_race.py's race, recorded).
TEST(ReportHtml, TimelinesOfHttp2RacesShowTheGoawayAndTheLateStream) {
    const std::string html = html_report(fixture("grpc_race.jsonl")).out;
    const json races = json_report(fixture("grpc_race.jsonl"))["races"]["listed"];
    ASSERT_EQ(races.size(), 1u);
    EXPECT_EQ(occurrences(html, "<figure class=\"timeline\""), 1u);
    const std::size_t begin = html.find("<figure class=\"timeline\">");
    const std::string timeline = html.substr(begin, html.find("</figure>", begin) - begin);
    const std::string stream = std::to_string(races[0]["streams"][0]["id"].get<int>());
    EXPECT_THAT(timeline, HasSubstr("<code class=\"request\">HTTP/2 stream " + stream +
                                    " after_goaway (names not recorded)"));
    for (const std::string& event : std::vector<std::string>{
             "GOAWAY (this host)", "FIN (this host)", "late stream", "stream " + stream}) {
        EXPECT_THAT(timeline, HasSubstr(event));
    }
    // The race window runs from the GOAWAY to the stream: its lateness is labelled.
    EXPECT_THAT(timeline, HasSubstr("class=\"gap window\""));
    EXPECT_FALSE(races[0]["request_after_close_ms"].is_null());
    expect_only_our_markup(html);
}

// Each process' announced idle timeout, in every rendering; a comm from the wire escaped.
TEST(ReportRendering, ListsEveryAnnouncedTimeout) {
    TraceHeader header;
    header.start_ns = kStartNs;
    TraceAnalyzer analyzer("node.jsonl", header);
    for (const char* comm : {"node", "<b>x"}) {
        Connection conn;
        conn.role = Role::Server;
        conn.comm = comm;
        conn.keep_alive_timeout_s = 5;
        analyzer.add(conn);
    }
    const TraceAnalysis trace = analyzer.finish({});
    const Assessment assessment = assess(trace, resolve_peer_timeout({&trace}, std::nullopt));
    EXPECT_THAT(render_report(trace, assessment, OutputFormat::Text),
                HasSubstr("comm node announces Keep-Alive: timeout=5 (the shortest, on 1 "
                          "connection)."));
    const std::string html = render_report_html(trace, assessment);
    EXPECT_THAT(html, HasSubstr("<p>comm node announces Keep-Alive: timeout=5 in its responses "
                                "(the shortest, on 1 connection).</p>\n</section>"));
    EXPECT_THAT(html, HasSubstr("comm &lt;b&gt;x announces"));
    expect_only_our_markup(html);
    const nlohmann::json report =
        nlohmann::json::parse(render_report(trace, assessment, OutputFormat::Json));
    EXPECT_EQ(report["announced_keepalive"].size(), 2u);
    EXPECT_EQ(report["announced_keepalive"][1]["comm"], "node");
    EXPECT_EQ(report["announced_keepalive"][1]["timeout_s"], 5);
    EXPECT_EQ(report["announced_keepalive"][1]["below_peer"], true);
    const DiffResult diff = diff_traces(trace, trace);
    EXPECT_THAT(render_diff(trace, trace, diff, OutputFormat::Text),
                HasSubstr("  Keep-Alive: timeout announced (min)                 5 s"));
}

TEST(ReportHtml, TimelinesOfUpstreamRacesShowThePeersClose) {
    TraceHeader header;
    header.start_ns = kStartNs;
    TraceAnalyzer analyzer("proxy.jsonl", header);
    Connection conn;
    conn.remote = {"10.0.0.9", 3000};
    conn.role = Role::Client;
    conn.comm = "nginx";
    conn.verdict = Verdict::PeerCloseRace;
    conn.requests = {{.method = "GET",
                      .target = "/a",
                      .status = 200,
                      .request_ns = kStartNs + kMs,
                      .response_ns = kStartNs + 2 * kMs,
                      .outcome = Outcome::Completed},
                     {.method = "GET",
                      .target = "/b",
                      .request_ns = kStartNs + 5002 * kMs + 300'000,
                      .outcome = Outcome::AfterPeerClose}};
    conn.close = {.initiator = Initiator::Peer,
                  .how = CloseHow::Fin,
                  .peer_fin_ns = kStartNs + 5002 * kMs,
                  .peer_rst_ns = kStartNs + 5002 * kMs + 350'000,
                  .idle_ms = 5000};
    analyzer.add(conn);
    const TraceAnalysis trace = analyzer.finish({});
    const std::string html =
        render_report_html(trace, assess(trace, resolve_peer_timeout({&trace}, std::nullopt)));
    EXPECT_THAT(html, HasSubstr("<code class=\"request\">GET /b</code> sent by this host to "
                                "10.0.0.9:3000 (nginx) went out <span"));
    EXPECT_THAT(html, HasSubstr(">+300 &#181;s</span> after the peer closed"));
    for (const char* event :
         {">FIN (peer)<", ">late request (sent)<", ">RST (peer)<", ">idle 5.000 s<"}) {
        EXPECT_THAT(html, HasSubstr(event));
    }
    EXPECT_THAT(html, Not(HasSubstr("FIN (this host)")));
}

TEST(ReportHtml, EscapesTheInjectedTargetOfTheFixture) {
    const std::string html = html_report(fixture("html/injected.jsonl")).out;
    EXPECT_THAT(html, HasSubstr("POST /pay&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"));
    EXPECT_THAT(html, HasSubstr("/orders&#39;&gt;&lt;img src=x onerror=alert(2)&gt;"));
    EXPECT_THAT(html, HasSubstr("&lt;b&gt;node&lt;/b&gt;"));
    EXPECT_THAT(html, Not(HasSubstr("<img")));
    EXPECT_THAT(html, Not(HasSubstr("<b>node")));
    expect_only_our_markup(html);
}

TEST(ReportHtml, EscapesEveryStringFromTheTrace) {
    const std::string markup = "<img src=x onerror=alert(1)>\"'&\x1b[31m\xc3\xa9";
    TraceHeader header;
    header.host = "host" + markup;
    header.kernel = "kernel" + markup;
    header.tool_version = "v" + markup;
    header.start_wall = "wall" + markup;
    header.start_ns = kStartNs;
    TraceAnalyzer analyzer("file" + markup, header);
    Connection conn;
    conn.id = 1;
    conn.local = {"local" + markup, 8080};
    conn.remote = {"remote" + markup, 40000};
    conn.role = Role::Server;
    conn.comm = "comm" + markup;
    conn.verdict = Verdict::LocalCloseRace;
    conn.requests = {{.method = "GET",
                      .target = "/answered" + markup,
                      .status = 200,
                      .request_ns = kStartNs + kMs,
                      .response_ns = kStartNs + 2 * kMs,
                      .outcome = Outcome::Completed},
                     {.method = "METHOD" + markup,
                      .target = "/late" + markup,
                      .request_ns = kStartNs + 5003 * kMs,
                      .outcome = Outcome::AfterLocalClose}};
    conn.close = {.initiator = Initiator::Local,
                  .how = CloseHow::Fin,
                  .local_fin_ns = kStartNs + 5002 * kMs,
                  .local_rst_ns = kStartNs + 5004 * kMs,
                  .rst_reason = "REASON" + markup,
                  .idle_ms = 5000};
    analyzer.add(conn);
    conn.verdict = Verdict::LocalResetInflight;
    conn.requests[1].outcome = Outcome::UnansweredAtClose;
    analyzer.add(conn);
    const TraceAnalysis trace = analyzer.finish({"reader warning" + markup});
    const Assessment assessment = assess(trace, resolve_peer_timeout({&trace}, std::nullopt));
    const std::string report = render_report_html(trace, assessment);
    const std::string diff = render_diff_html(trace, trace, diff_traces(trace, trace));
    for (const std::string* html : {&report, &diff}) {
        EXPECT_THAT(*html, Not(HasSubstr("<img")));
        EXPECT_THAT(*html, HasSubstr("&lt;img src=x onerror=alert(1)&gt;&quot;&#39;&amp;?[31m??"));
        expect_only_our_markup(*html);
    }
    for (const char* shown : {"host&lt;img", "kernel&lt;img", "v&lt;img", "wall&lt;img",
                              "file&lt;img", "remote&lt;img", "comm&lt;img", "/answered&lt;img",
                              "METHOD&lt;img", "/late&lt;img", "REASON&lt;img", "warning&lt;img"}) {
        EXPECT_THAT(report, HasSubstr(shown));
    }
}

TEST(DiffHtml, PutsTheRecordingsSideBySide) {
    const CommandOutput html =
        run_diff(fixture("mismatch.jsonl"), fixture("fixed.jsonl"), OutputFormat::Html);
    ASSERT_EQ(html.exit_code, 0) << html.err;
    EXPECT_EQ(occurrences(html.out, "<div class=\"side-by-side\">"), 1u);
    EXPECT_EQ(occurrences(html.out, "<div class=\"recording"), 2u);
    EXPECT_EQ(occurrences(html.out, "<svg class=\"idle-histogram\""), 2u);
    EXPECT_EQ(occurrences(html.out, "<svg class=\"verdicts-over-time\""), 2u);
    EXPECT_LT(html.out.find("Before: <code>"), html.out.find("After: <code>"));
    const json diff = json::parse(
        run_diff(fixture("mismatch.jsonl"), fixture("fixed.jsonl"), OutputFormat::Json).out);
    const std::set<std::string> members = expect_figures_match(html.out, diff);
    for (const char* member :
         {"conclusion", "explanation", "peer_idle_timeout.ms", "before.races.total",
          "after.races.total", "before.conclusion", "after.conclusion",
          "before.idle.this_host.closes", "after.verdicts.local_close_race.connections"}) {
        EXPECT_TRUE(members.contains(member)) << member;
    }
    expect_only_our_markup(html.out);
}

TEST(DiffHtml, ShowsTheCaughtHttp2StreamAndItsFix) {
    const CommandOutput html =
        run_diff(fixture("grpc_race.jsonl"), fixture("grpc_fixed.jsonl"), OutputFormat::Html);
    ASSERT_EQ(html.exit_code, 0) << html.err;
    EXPECT_THAT(html.out, HasSubstr("after_goaway (names not recorded)"));
    EXPECT_THAT(html.out, HasSubstr("GOAWAY (this host)"));
    EXPECT_THAT(html.out, HasSubstr("grpc.max_connection_idle_ms"));
}

// ---------------------------------------------------------------------------------------------
// Size: a day's worth of a busy host

// Connection `index` of a synthetic million: mostly idle closes by either side, 1 % races,
// 0.5 % in-flight resets and as many requests the peer gave up on, over an hour, from a
// thousand peers and twenty processes, with long targets.
Connection synthetic_conn(uint64_t index) {
    Connection conn;
    conn.id = index;
    conn.family = "ipv4";
    conn.local = {"10.0.0.2", 8080};
    conn.remote = {"10.1." + std::to_string(index % 1000 / 250) + "." + std::to_string(index % 250),
                   static_cast<uint16_t>(30000 + index % 30000)};
    conn.role = Role::Server;
    conn.comm = index % 20 == 0 ? "node" : "worker-" + std::to_string(index % 20);
    const uint64_t at_ns = kStartNs + index * 3'600'000;  // a million in an hour
    const std::string target = "/api/v1/orders/" + std::to_string(index) + std::string(180, 'x');
    conn.established_ns = at_ns - kMs;
    conn.requests.push_back({.method = "GET",
                             .target = target,
                             .status = 200,
                             .request_ns = at_ns,
                             .response_ns = at_ns + kMs,
                             .outcome = Outcome::Completed});
    const double idle_ms = 5000 + static_cast<double>(index % 997) / 100;
    const uint64_t close_ns = at_ns + kMs + static_cast<uint64_t>(idle_ms * 1e6);
    conn.close = {.initiator = Initiator::Local,
                  .how = CloseHow::Fin,
                  .local_fin_ns = close_ns,
                  .idle_ms = idle_ms};
    switch (index % 200) {
        case 0:
        case 1:
            conn.verdict = Verdict::LocalCloseRace;
            conn.requests.push_back({.method = "POST",
                                     .target = target,
                                     .request_ns = close_ns + 400'000,
                                     .outcome = Outcome::AfterLocalClose});
            conn.close.local_rst_ns = close_ns + 450'000;
            conn.close.rst_reason = "TCP_ABORT_ON_DATA";
            break;
        case 2:
            conn.verdict = Verdict::LocalResetInflight;
            conn.requests.push_back({.method = "POST",
                                     .target = target,
                                     .request_ns = close_ns - 1500 * kMs,
                                     .outcome = Outcome::UnansweredAtClose});
            conn.close.how = CloseHow::Rst;
            conn.close.local_rst_ns = close_ns;
            break;
        case 3:
            conn.verdict = Verdict::PeerCloseInflight;
            conn.requests.push_back({.method = "POST",
                                     .target = target,
                                     .request_ns = close_ns - 30'000 * kMs,
                                     .outcome = Outcome::UnansweredAtClose});
            conn.close.initiator = Initiator::Peer;
            conn.close.local_fin_ns.reset();
            conn.close.peer_fin_ns = close_ns;
            break;
        default:
            if (index % 2 == 0) {
                conn.verdict = Verdict::LocalIdleClose;
            } else {
                conn.verdict = Verdict::PeerIdleClose;
                conn.close.initiator = Initiator::Peer;
                conn.close.idle_ms = 55'000 + idle_ms;
                conn.close.local_fin_ns.reset();
                conn.close.peer_fin_ns = close_ns;
            }
    }
    return conn;
}

TEST(ReportHtml, AMillionConnectionsMakeAPageUnderFiveMegabytes) {
    constexpr uint64_t kConnections = 1'000'000;
    TraceHeader header;
    header.host = "busy";
    header.start_ns = kStartNs;
    TraceAnalyzer analyzer("busy.jsonl", header);
    for (uint64_t index = 0; index < kConnections; ++index) analyzer.add(synthetic_conn(index));
    const TraceAnalysis trace = analyzer.finish({});
    ASSERT_EQ(trace.connections, kConnections);
    ASSERT_EQ(trace.races.total, kConnections / 100);

    const Assessment assessment = assess(trace, resolve_peer_timeout({&trace}, std::nullopt));
    const std::string report = render_report_html(trace, assessment);
    EXPECT_LT(report.size(), 5'000'000u);
    EXPECT_EQ(occurrences(report, "<figure class=\"timeline\""), CaughtList::kMaxListed);
    const std::string diff = render_diff_html(trace, trace, diff_traces(trace, trace));
    EXPECT_LT(diff.size(), 5'000'000u);

    EXPECT_LE(trace.verdicts_over_time.buckets().size(), VerdictTimeline::kBuckets);
    const std::map<std::string, uint64_t> over_time =
        bar_counts(report, std::regex(R"re(data-verdict="([a-z_]+)" data-count="(\d+)")re"));
    EXPECT_EQ(over_time.at("local_close_race"), trace.verdicts[Verdict::LocalCloseRace]);
    EXPECT_EQ(over_time.at("local_idle_close"), trace.verdicts[Verdict::LocalIdleClose]);
}

// ---------------------------------------------------------------------------------------------
// What the analysis collects for the page

uint64_t total(const VerdictTimeline& timeline, Verdict verdict) {
    uint64_t sum = 0;
    for (const VerdictCounts& bucket : timeline.buckets()) sum += bucket[verdict];
    return sum;
}

TEST(VerdictTimeline, BucketsStartSmall) {
    VerdictTimeline timeline(kStartNs);
    timeline.add(kStartNs + 5 * kMs, Verdict::LocalIdleClose);
    timeline.add(kStartNs + 995 * kMs, Verdict::LocalCloseRace);
    EXPECT_EQ(timeline.bucket_ns(), VerdictTimeline::kFirstBucketNs);
    ASSERT_EQ(timeline.buckets().size(), 100u);
    EXPECT_EQ(timeline.buckets()[0][Verdict::LocalIdleClose], 1u);
    EXPECT_EQ(timeline.buckets()[99][Verdict::LocalCloseRace], 1u);
}

TEST(VerdictTimeline, DoublesTheWidthToKeepAHundredBucketsAndEveryCount) {
    VerdictTimeline timeline(kStartNs);
    timeline.add(kStartNs + 5 * kMs, Verdict::LocalIdleClose);
    timeline.add(kStartNs + 995 * kMs, Verdict::LocalCloseRace);
    timeline.add(kStartNs + 1500 * kMs, Verdict::PeerIdleClose);  // needs 20 ms buckets
    EXPECT_EQ(timeline.bucket_ns(), 2 * VerdictTimeline::kFirstBucketNs);
    ASSERT_EQ(timeline.buckets().size(), 76u);
    EXPECT_EQ(timeline.buckets()[0][Verdict::LocalIdleClose], 1u);
    EXPECT_EQ(timeline.buckets()[49][Verdict::LocalCloseRace], 1u);
    EXPECT_EQ(timeline.buckets()[75][Verdict::PeerIdleClose], 1u);

    // A day later, and at the end of time: still at most a hundred buckets, nothing lost.
    timeline.add(kStartNs + 86'400'000 * kMs, Verdict::Open);
    timeline.add(UINT64_MAX, Verdict::PeerReset);
    EXPECT_LE(timeline.buckets().size(), VerdictTimeline::kBuckets);
    for (const Verdict verdict : {Verdict::LocalIdleClose, Verdict::LocalCloseRace,
                                  Verdict::PeerIdleClose, Verdict::Open, Verdict::PeerReset}) {
        EXPECT_EQ(total(timeline, verdict), 1u) << to_string(verdict);
    }
}

TEST(VerdictTimeline, TimesBeforeTheStartCountFirst) {
    VerdictTimeline timeline(kStartNs);
    timeline.add(kStartNs - 5000 * kMs, Verdict::LocalReset);
    ASSERT_EQ(timeline.buckets().size(), 1u);
    EXPECT_EQ(timeline.buckets()[0][Verdict::LocalReset], 1u);
}

TEST(TraceAnalyzer, PlacesEachConnectionAtItsFirstFinOrRst) {
    TraceHeader header;
    header.start_ns = kStartNs;
    TraceAnalyzer analyzer("t.jsonl", header);
    Connection closed;
    closed.verdict = Verdict::PeerReset;
    closed.close.peer_rst_ns = kStartNs + 905 * kMs;
    closed.close.local_fin_ns = kStartNs + 915 * kMs;
    closed.closed_ns = kStartNs + 985 * kMs;
    analyzer.add(closed);
    Connection open;
    open.verdict = Verdict::Open;
    open.requests.push_back({.request_ns = kStartNs + 25 * kMs});
    analyzer.add(open);
    const TraceAnalysis trace = analyzer.finish({});
    const std::vector<VerdictCounts>& buckets = trace.verdicts_over_time.buckets();
    ASSERT_EQ(buckets.size(), 91u);
    EXPECT_EQ(buckets[90][Verdict::PeerReset], 1u);
    EXPECT_EQ(buckets[2][Verdict::Open], 1u);  // an open one where it was last seen
}

TEST(TraceAnalyzer, KeepsWhatTheTimelineOfARaceNeeds) {
    TraceHeader header;
    header.start_ns = kStartNs;
    TraceAnalyzer analyzer("t.jsonl", header);
    Connection conn;
    conn.verdict = Verdict::LocalCloseRace;
    conn.role = Role::Server;
    conn.requests = {
        {.method = "GET",
         .target = "/first",
         .request_ns = 1,
         .response_ns = 2,
         .outcome = Outcome::Completed},
        {.method = "GET",
         .target = "/last",
         .request_ns = 3,
         .response_ns = 4,
         .outcome = Outcome::Completed},
        {.method = "POST",
         .target = "/late",
         .request_ns = 11,
         .outcome = Outcome::AfterLocalClose},
    };
    conn.close = {.initiator = Initiator::Local,
                  .how = CloseHow::Fin,
                  .local_fin_ns = 10,
                  .peer_fin_ns = 13,
                  .local_rst_ns = 12,
                  .peer_rst_ns = 14};
    analyzer.add(conn);
    const TraceAnalysis trace = analyzer.finish({});
    ASSERT_EQ(trace.races.listed.size(), 1u);
    const CaughtConnection& caught = trace.races.listed[0];
    ASSERT_TRUE(caught.last_answered);
    EXPECT_EQ(caught.last_answered->target, "/last");
    EXPECT_EQ(caught.request->target, "/late");
    EXPECT_EQ(caught.local_fin_ns, 10u);
    EXPECT_EQ(caught.local_rst_ns, 12u);
    EXPECT_EQ(caught.peer_fin_ns, 13u);
    EXPECT_EQ(caught.peer_rst_ns, 14u);
}

// ---------------------------------------------------------------------------------------------
// --output

class WriteOutput : public ::testing::Test {
protected:
    void SetUp() override {
        directory_ = fs::temp_directory_path() / ("closetrace-html-" + std::to_string(getpid()));
        fs::create_directories(directory_);
    }
    void TearDown() override { fs::remove_all(directory_); }
    fs::path directory_;
};

std::string read_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST_F(WriteOutput, WritesTheFileAndKeepsTheWarnings) {
    const fs::path path = directory_ / "report.html";
    const CommandOutput output =
        write_output({.out = "<!DOCTYPE html>\n", .err = "warning\n"}, path.string(), "report");
    EXPECT_EQ(output.exit_code, 0);
    EXPECT_EQ(output.out, "");
    EXPECT_EQ(output.err, "warning\n");
    EXPECT_EQ(read_file(path), "<!DOCTYPE html>\n");
}

TEST_F(WriteOutput, DashIsStandardOutput) {
    const CommandOutput output = write_output({.out = "text\n"}, "-", "report");
    EXPECT_EQ(output.out, "text\n");
}

TEST_F(WriteOutput, AFailedCommandWritesNoFile) {
    const fs::path path = directory_ / "report.html";
    const CommandOutput output =
        write_output(html_report((directory_ / "missing.jsonl").string()), path.string(), "report");
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_FALSE(fs::exists(path));
}

// A trace given as the output by mistake (the input itself, or another recording) is evidence.
TEST_F(WriteOutput, NeverReplacesATrace) {
    for (const std::string_view trace :
         {R"({"type":"header","schema":"closetrace/5"})" "\n", "\x1f\x8b\x08\x00"}) {
        const fs::path path = directory_ / "trace.jsonl";
        std::ofstream(path, std::ios::binary) << trace;
        const CommandOutput output = write_output({.out = "<html>"}, path.string(), "report");
        EXPECT_EQ(output.exit_code, 2);
        EXPECT_THAT(output.err, HasSubstr("is a trace; a report never replaces one"));
        EXPECT_EQ(read_file(path), trace);
    }
    // Any other file, an earlier report, is replaced; a new one is its owner's only.
    const fs::path report = directory_ / "report.html";
    std::ofstream(report) << "old report";
    EXPECT_EQ(write_output({.out = "new"}, report.string(), "report").exit_code, 0);
    EXPECT_EQ(read_file(report), "new");
    const fs::path fresh = directory_ / "fresh.html";
    EXPECT_EQ(write_output({.out = "x"}, fresh.string(), "report").exit_code, 0);
    EXPECT_EQ(fs::status(fresh).permissions() & fs::perms::all,
              fs::perms::owner_read | fs::perms::owner_write);
}

TEST_F(WriteOutput, AnUnwritablePathIsUnusable) {
    const fs::path path = directory_ / "no-such-directory" / "report.html";
    const CommandOutput output =
        write_output({.out = "x", .err = "warning\n"}, path.string(), "diff");
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_EQ(output.out, "");
    EXPECT_THAT(output.err, HasSubstr("warning\nclosetrace diff: cannot write "));
    EXPECT_THAT(output.err, HasSubstr("No such file or directory"));
}

}  // namespace
}  // namespace closetrace
