#include "closetrace/alb_log.h"

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "test_files.h"

namespace closetrace {
namespace {

namespace fs = std::filesystem;

const std::string kFixtures = std::string(CLOSETRACE_FIXTURES) + "/alb";

// 2018-07-02T22:23:00.186641Z and 2018-07-02T22:22:48.364Z, the examples' times.
constexpr int64_t kExampleTime = 1530570180186641000;
constexpr int64_t kExampleCreation = 1530570168364000000;

std::vector<std::string> read_lines(const std::string& path) {
    std::ifstream in(path);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
}

LbLogEntry parse_or_fail(const std::string& line) {
    std::string error;
    const std::optional<LbLogEntry> entry = parse_lb_log_line(line, error);
    EXPECT_TRUE(entry.has_value()) << error << "\n" << line;
    return entry.value_or(LbLogEntry{});
}

std::string malformed_reason(const std::string& line) {
    std::string error;
    EXPECT_FALSE(parse_lb_log_line(line, error).has_value()) << line;
    return error;
}

using test::file_content;
using test::TempDir;
using test::write_file;
using test::write_gzip;

struct Collected {
    std::vector<LbLogEntry> entries;
    std::vector<std::string> places;  // "file:line"
    LbLogReadStats stats;
};

Collected read_all(const std::vector<std::string>& paths) {
    Collected collected;
    collected.stats = read_lb_logs(paths, [&](const LbLogEntry& entry, const std::string& file,
                                              uint64_t line) {
        collected.entries.push_back(entry);
        collected.places.push_back(fs::path(file).filename().string() + ":" + std::to_string(line));
    });
    return collected;
}

// ---------------------------------------------------------------------------------------------
// The Application Load Balancer examples AWS documents

TEST(AlbLogParse, HttpExampleEveryField) {
    const LbLogEntry entry = parse_or_fail(read_lines(kFixtures + "/aws_examples.log").at(0));
    EXPECT_EQ(entry.kind, LbKind::Application);
    EXPECT_EQ(entry.type, "http");
    EXPECT_EQ(entry.time_ns, kExampleTime);
    EXPECT_EQ(entry.elb, "app/my-loadbalancer/50dc6c495c0c9188");
    EXPECT_EQ(entry.client, (Endpoint{"192.168.131.39", 2817}));
    EXPECT_EQ(entry.target, (Endpoint{"10.0.0.1", 80}));
    EXPECT_DOUBLE_EQ(entry.request_processing_s, 0.0);
    EXPECT_DOUBLE_EQ(entry.target_processing_s, 0.001);
    EXPECT_DOUBLE_EQ(entry.response_processing_s, 0.0);
    EXPECT_EQ(entry.elb_status_code, 200);
    EXPECT_EQ(entry.target_status_code, 200);
    EXPECT_EQ(entry.received_bytes, 34u);
    EXPECT_EQ(entry.sent_bytes, 366u);
    EXPECT_EQ(entry.request, "GET http://www.example.com:80/ HTTP/1.1");
    EXPECT_EQ(entry.user_agent, "curl/7.46.0");
    EXPECT_EQ(entry.ssl_cipher, "-");
    EXPECT_EQ(entry.ssl_protocol, "-");
    EXPECT_EQ(entry.target_group_arn,
              "arn:aws:elasticloadbalancing:us-east-2:123456789012:targetgroup/my-targets/"
              "73e2d6bc24d8a067");
    EXPECT_EQ(entry.trace_id, "Root=1-58337262-36d228ad5d99923122bbe354");
    EXPECT_EQ(entry.domain_name, "-");
    EXPECT_EQ(entry.chosen_cert_arn, "-");
    EXPECT_EQ(entry.matched_rule_priority, 0);
    EXPECT_EQ(entry.request_creation_time_ns, kExampleCreation);
    EXPECT_EQ(entry.actions_executed, "forward");
    EXPECT_EQ(entry.redirect_url, "-");
    EXPECT_EQ(entry.error_reason, "-");
    EXPECT_EQ(entry.target_port_list, "10.0.0.1:80");
    EXPECT_EQ(entry.target_status_code_list, "200");
    EXPECT_EQ(entry.classification, "-");
    EXPECT_EQ(entry.classification_reason, "-");
    EXPECT_EQ(entry.conn_trace_id, "TID_1234abcd5678ef90");
    EXPECT_EQ(dispatch_time_ns(entry), kExampleCreation);
}

TEST(AlbLogParse, HttpsExample) {
    const LbLogEntry entry = parse_or_fail(read_lines(kFixtures + "/aws_examples.log").at(1));
    EXPECT_EQ(entry.type, "https");
    EXPECT_DOUBLE_EQ(entry.request_processing_s, 0.086);
    EXPECT_DOUBLE_EQ(entry.target_processing_s, 0.048);
    EXPECT_DOUBLE_EQ(entry.response_processing_s, 0.037);
    EXPECT_EQ(entry.received_bytes, 0u);
    EXPECT_EQ(entry.sent_bytes, 57u);
    EXPECT_EQ(entry.ssl_cipher, "ECDHE-RSA-AES128-GCM-SHA256");
    EXPECT_EQ(entry.ssl_protocol, "TLSv1.2");
    EXPECT_EQ(entry.domain_name, "www.example.com");
    EXPECT_EQ(entry.chosen_cert_arn,
              "arn:aws:acm:us-east-2:123456789012:certificate/"
              "12345678-1234-1234-1234-123456789012");
    EXPECT_EQ(entry.matched_rule_priority, 1);
    EXPECT_EQ(entry.actions_executed, "authenticate,forward");
    // Sent to the target 86 ms after the load balancer received it.
    EXPECT_EQ(dispatch_time_ns(entry), kExampleCreation + 86'000'000);
}

TEST(AlbLogParse, Http2Example) {
    const LbLogEntry entry = parse_or_fail(read_lines(kFixtures + "/aws_examples.log").at(2));
    EXPECT_EQ(entry.type, "h2");
    EXPECT_EQ(entry.client, (Endpoint{"10.0.1.252", 48160}));
    EXPECT_EQ(entry.target, (Endpoint{"10.0.0.66", 9000}));
    EXPECT_EQ(entry.request, "GET https://10.0.2.105:773/ HTTP/2.0");
    EXPECT_EQ(entry.actions_executed, "redirect");
    EXPECT_EQ(entry.redirect_url, "https://example.com:80/");
    EXPECT_EQ(entry.target_port_list, "10.0.0.66:9000");
}

TEST(AlbLogParse, WebSocketExamples) {
    const std::vector<std::string> lines = read_lines(kFixtures + "/aws_examples.log");
    const LbLogEntry ws = parse_or_fail(lines.at(3));
    EXPECT_EQ(ws.type, "ws");
    EXPECT_EQ(ws.elb_status_code, 101);
    EXPECT_EQ(ws.target_status_code, 101);
    EXPECT_EQ(ws.user_agent, "-");
    EXPECT_EQ(ws.target, (Endpoint{"10.0.1.192", 8010}));
    const LbLogEntry wss = parse_or_fail(lines.at(4));
    EXPECT_EQ(wss.type, "wss");
    EXPECT_EQ(wss.ssl_protocol, "TLSv1.2");
    EXPECT_EQ(wss.target_status_code_list, "101");
}

TEST(AlbLogParse, ErrorLinesWithNoTarget) {
    const std::vector<std::string> lines = read_lines(kFixtures + "/aws_examples.log");
    const LbLogEntry lambda = parse_or_fail(lines.at(5));
    EXPECT_EQ(lambda.target, std::nullopt);
    EXPECT_EQ(lambda.elb_status_code, 502);
    EXPECT_EQ(lambda.target_status_code, std::nullopt);
    EXPECT_EQ(lambda.error_reason, "LambdaInvalidResponse");
    EXPECT_EQ(lambda.target_port_list, "-");

    const LbLogEntry unsent = parse_or_fail(lines.at(6));
    EXPECT_EQ(unsent.target, std::nullopt);
    EXPECT_EQ(unsent.elb_status_code, 503);
    EXPECT_DOUBLE_EQ(unsent.request_processing_s, -1);
    EXPECT_DOUBLE_EQ(unsent.target_processing_s, -1);
    EXPECT_DOUBLE_EQ(unsent.response_processing_s, -1);
    EXPECT_EQ(unsent.target_group_arn, "-");
    EXPECT_EQ(dispatch_time_ns(unsent), std::nullopt);
}

TEST(AlbLogParse, OlderAndNewerFieldCounts) {
    const std::string line = read_lines(kFixtures + "/aws_examples.log").at(0);
    // Before conn_trace_id existed.
    const LbLogEntry older = parse_or_fail(line.substr(0, line.rfind(' ')));
    EXPECT_EQ(older.conn_trace_id, std::nullopt);
    EXPECT_EQ(older.classification_reason, "-");
    // Fields AWS may append later are ignored.
    const LbLogEntry newer = parse_or_fail(line + " \"future\" 42");
    EXPECT_EQ(newer.conn_trace_id, "TID_1234abcd5678ef90");
}

TEST(AlbLogParse, QuotesInsideQuotedFields) {
    std::string line = read_lines(kFixtures + "/aws_examples.log").at(0);
    const std::string agent = "\"curl/7.46.0\"";
    line.replace(line.find(agent), agent.size(), "\"Mozilla/5.0 \\\"quoted\\\" (x\"y)\"");
    EXPECT_EQ(parse_or_fail(line).user_agent, "Mozilla/5.0 \\\"quoted\\\" (x\"y)");
}

// ---------------------------------------------------------------------------------------------
// Classic Load Balancer

TEST(ClassicLogParse, DocumentedExamples) {
    const std::vector<std::string> lines = read_lines(kFixtures + "/classic_examples.log");
    const LbLogEntry http = parse_or_fail(lines.at(0));
    EXPECT_EQ(http.kind, LbKind::Classic);
    EXPECT_EQ(http.type, "");
    EXPECT_EQ(http.time_ns, 1431560383945958000);
    EXPECT_EQ(http.elb, "my-loadbalancer");
    EXPECT_EQ(http.client, (Endpoint{"192.168.131.39", 2817}));
    EXPECT_EQ(http.target, (Endpoint{"10.0.0.1", 80}));
    EXPECT_DOUBLE_EQ(http.request_processing_s, 0.000073);
    EXPECT_DOUBLE_EQ(http.target_processing_s, 0.001048);
    EXPECT_DOUBLE_EQ(http.response_processing_s, 0.000057);
    EXPECT_EQ(http.elb_status_code, 200);
    EXPECT_EQ(http.target_status_code, 200);
    EXPECT_EQ(http.received_bytes, 0u);
    EXPECT_EQ(http.sent_bytes, 29u);
    EXPECT_EQ(http.request, "GET http://www.example.com:80/ HTTP/1.1");
    EXPECT_EQ(http.user_agent, "curl/7.38.0");
    EXPECT_EQ(http.request_creation_time_ns, std::nullopt);
    // Classic's time is when it received the request.
    EXPECT_EQ(dispatch_time_ns(http), 1431560383945958000 + 73'000);

    EXPECT_EQ(parse_or_fail(lines.at(1)).ssl_cipher, "DHE-RSA-AES128-SHA");

    const LbLogEntry tcp = parse_or_fail(lines.at(2));
    EXPECT_EQ(tcp.elb_status_code, std::nullopt);
    EXPECT_EQ(tcp.request, "- - - ");
    EXPECT_EQ(parse_logged_request(tcp.request), std::nullopt);

    const LbLogEntry timeout = parse_or_fail(lines.at(3));
    EXPECT_EQ(timeout.elb_status_code, 504);
    EXPECT_EQ(timeout.target_status_code, std::nullopt);  // logged as 0
}

// ---------------------------------------------------------------------------------------------
// Malformed lines

TEST(AlbLogParse, MalformedLinesSayWhy) {
    const std::string good = read_lines(kFixtures + "/aws_examples.log").at(0);
    auto replaced = [&](const std::string& from, const std::string& to) {
        std::string line = good;
        line.replace(line.find(from), from.size(), to);
        return line;
    };
    EXPECT_NE(malformed_reason(good.substr(0, good.find("\" \"curl"))).find("no closing quote"),
              std::string::npos);
    // A closing quote lost in the middle swallows the next field.
    EXPECT_NE(malformed_reason(replaced("HTTP/1.1\" \"curl", "HTTP/1.1 \"curl"))
                  .find("closing quote missing"),
              std::string::npos);
    EXPECT_NE(malformed_reason(replaced("\"GET http", "GET http")).find("stray quote"),
              std::string::npos);
    EXPECT_NE(malformed_reason(good.substr(0, good.find(" \"forward\""))).find("fields"),
              std::string::npos);
    EXPECT_NE(malformed_reason(replaced(" 0.001 ", " 0.0x1 ")).find("target_processing_time"),
              std::string::npos);
    EXPECT_NE(malformed_reason(replaced(" 0.001 ", " -2 ")).find("target_processing_time"),
              std::string::npos);
    EXPECT_NE(malformed_reason(replaced(" 200 200 ", " 200 2000 ")).find("target_status_code"),
              std::string::npos);
    EXPECT_NE(malformed_reason(replaced(" 34 366 ", " 34 -366 ")).find("sent_bytes"),
              std::string::npos);
    EXPECT_NE(malformed_reason(replaced("2018-07-02T22:22:48.364000Z", "2018-07-02 22:22:48"))
                  .find("request_creation_time"),
              std::string::npos);
    EXPECT_NE(malformed_reason(replaced("2018-07-02T22:23:00.186641Z", "2018-02-30T22:23:00Z"))
                  .find("time"),
              std::string::npos);
    EXPECT_NE(malformed_reason(replaced("10.0.0.1:80 0.000", "10.0.0.1 0.000")).find("target:port"),
              std::string::npos);
    EXPECT_NE(malformed_reason(replaced("\"forward\"", "forward")).find("actions_executed"),
              std::string::npos);
    EXPECT_NE(
        malformed_reason("2015-05-13T23:39:43.945958Z my-loadbalancer 1.2.3.4:5 -").find("Classic"),
        std::string::npos);
    EXPECT_FALSE(malformed_reason("").empty());
}

TEST(Iso8601, ParsesTheLogsTimes) {
    EXPECT_EQ(parse_iso8601_utc("1970-01-01T00:00:00Z"), 0);
    EXPECT_EQ(parse_iso8601_utc("2018-07-02T22:23:00.186641Z"), kExampleTime);
    EXPECT_EQ(parse_iso8601_utc("2018-07-02T22:23:00.1Z"), kExampleTime - 86641000);
    EXPECT_EQ(parse_iso8601_utc("2018-07-02T22:23:00.186641123Z"), kExampleTime + 123);
    EXPECT_EQ(parse_iso8601_utc("2024-02-29T00:00:00Z"), 1709164800LL * 1'000'000'000);
    for (const char* bad : {"2018-07-02T22:23:00", "2018-07-02T24:00:00Z", "2023-02-29T00:00:00Z",
                            "2018-07-02T22:23:00.Z", "2018-07-02T22:23:00.1234567890Z",
                            "2018-07-02T22:23:00,5Z", "2018-7-02T22:23:00Z", "-"}) {
        EXPECT_EQ(parse_iso8601_utc(bad), std::nullopt) << bad;
    }
}

TEST(LoggedRequest, MethodAndPathWithoutQuery) {
    const auto request =
        parse_logged_request("POST https://shop.example.com:443/pay?order=17 HTTP/1.1");
    ASSERT_TRUE(request.has_value());
    EXPECT_EQ(request->method, "POST");
    EXPECT_EQ(request->path, "/pay");
    EXPECT_EQ(parse_logged_request("GET http://www.example.com:80 HTTP/1.1")->path, "/");
    EXPECT_EQ(parse_logged_request("GET /a/b?c HTTP/1.1")->path, "/a/b");
    EXPECT_EQ(parse_logged_request("- http://www.example.com:80- -"), std::nullopt);
    EXPECT_EQ(parse_logged_request("GET"), std::nullopt);

    EXPECT_EQ(path_without_query("/pay?order=17"), "/pay");
    EXPECT_EQ(path_without_query("/pay"), "/pay");
    EXPECT_EQ(path_without_query("https://h:443/a/b?x=http://y/"), "/a/b");
    EXPECT_EQ(path_without_query("https://h:443?x"), "/");
    EXPECT_EQ(path_without_query("/redirect?to=https://x/y"), "/redirect");
}

// What alb prints of a log line's request: no query string, no credentials, as in a trace.
TEST(LoggedRequest, PublicRequestKeepsNoSecret) {
    EXPECT_EQ(public_request("POST https://shop.example.com:443/pay?token=s3cret HTTP/1.1"),
              "POST https://shop.example.com:443/pay HTTP/1.1");
    EXPECT_EQ(public_request("GET https://user:pw@shop.example.com:443/a HTTP/1.1"),
              "GET /a HTTP/1.1");
    EXPECT_EQ(public_request("- - - "), "- - - ");
    EXPECT_EQ(public_request("junk?token=s3cret"), "junk");
}

TEST(HostPort, Ipv4AndIpv6) {
    EXPECT_EQ(parse_host_port("10.0.0.1:80"), (Endpoint{"10.0.0.1", 80}));
    EXPECT_EQ(parse_host_port("[fd00::1]:8080"), (Endpoint{"fd00::1", 8080}));
    EXPECT_EQ(parse_host_port("2600:1f18::1:443"), (Endpoint{"2600:1f18::1", 443}));
    EXPECT_EQ(format_host_port({"10.0.0.1", 80}), "10.0.0.1:80");
    EXPECT_EQ(format_host_port({"fd00::1", 8080}), "[fd00::1]:8080");
    for (const char* bad :
         {"10.0.0.1", "10.0.0.1:", ":80", "10.0.0.1:0", "10.0.0.1:65536", "10.0.0.1:8x"}) {
        EXPECT_EQ(parse_host_port(bad), std::nullopt) << bad;
    }
}

// ---------------------------------------------------------------------------------------------
// Files

TEST(LbLogFiles, MalformedLinesAreCountedWithPlaces) {
    const Collected collected = read_all({kFixtures + "/race_alb.log"});
    EXPECT_EQ(collected.stats.files, 1u);
    EXPECT_EQ(collected.stats.lines, 9u);
    EXPECT_EQ(collected.stats.entries, 8u);
    EXPECT_EQ(collected.stats.malformed, 1u);
    ASSERT_EQ(collected.stats.malformed_examples.size(), 1u);
    EXPECT_EQ(collected.stats.malformed_examples[0].rfind(kFixtures + "/race_alb.log:4: ", 0), 0u)
        << collected.stats.malformed_examples[0];
    EXPECT_EQ(collected.places.at(3), "race_alb.log:5");
    EXPECT_TRUE(collected.stats.file_errors.empty());
}

TEST(LbLogFiles, ExamplesAreKeptToAFew) {
    TempDir dir;
    std::string content;
    for (int i = 0; i < 12; ++i) content += "not a log line\n";
    content += "\n   \n";  // blank lines are not lines of the log
    write_file(dir.path() / "bad.log", content);
    const Collected collected = read_all({(dir.path() / "bad.log").string()});
    EXPECT_EQ(collected.stats.lines, 12u);
    EXPECT_EQ(collected.stats.malformed, 12u);
    EXPECT_EQ(collected.stats.malformed_examples.size(), kMaxMalformedExamples);
    EXPECT_EQ(collected.stats.entries, 0u);
}

TEST(LbLogFiles, GzipPlainCrlfAndNoFinalNewline) {
    TempDir dir;
    const std::vector<std::string> lines = read_lines(kFixtures + "/aws_examples.log");
    write_gzip(dir.path() / "a.log.gz", lines[0] + "\n" + lines[1] + "\n");
    write_file(dir.path() / "b.log", lines[2] + "\r\n" + lines[3]);
    const Collected collected =
        read_all({(dir.path() / "a.log.gz").string(), (dir.path() / "b.log").string()});
    EXPECT_EQ(collected.stats.files, 2u);
    EXPECT_EQ(collected.stats.entries, 4u);
    EXPECT_EQ(collected.stats.malformed, 0u);
    EXPECT_EQ(collected.places,
              (std::vector<std::string>{"a.log.gz:1", "a.log.gz:2", "b.log:1", "b.log:2"}));
    EXPECT_EQ(collected.entries.at(2).conn_trace_id, "TID_1234abcd5678ef90");  // no '\r'
}

TEST(LbLogFiles, ConcatenatedGzipMembers) {
    TempDir dir;
    const std::vector<std::string> lines = read_lines(kFixtures + "/aws_examples.log");
    write_gzip(dir.path() / "one.gz", lines[0] + "\n");
    write_gzip(dir.path() / "two.gz", lines[1] + "\n");
    write_file(dir.path() / "both.gz", file_content((dir.path() / "one.gz").string()) +
                                           file_content((dir.path() / "two.gz").string()));
    EXPECT_EQ(read_all({(dir.path() / "both.gz").string()}).stats.entries, 2u);
}

// zlib's gzread would end at the gzip data and drop the plain lines after it without a word.
TEST(LbLogFiles, PlainTextAfterGzipIsReadAndReported) {
    TempDir dir;
    const std::vector<std::string> lines = read_lines(kFixtures + "/aws_examples.log");
    write_gzip(dir.path() / "gzip.gz", lines[0] + "\n" + lines[1] + "\n");
    const std::string gzip = file_content((dir.path() / "gzip.gz").string());
    write_file(dir.path() / "mixed.log", gzip + lines[2] + "\n" + lines[3] + "\n");
    const Collected collected = read_all({(dir.path() / "mixed.log").string()});
    EXPECT_EQ(collected.stats.entries, 4u);
    EXPECT_EQ(collected.stats.malformed, 0u);
    ASSERT_EQ(collected.stats.file_errors.size(), 1u);
    EXPECT_EQ(collected.stats.file_errors[0],
              fmt::format("{}: plain text after gzip data (from byte {}), read as plain text; a "
                          "file should be all gzip or all plain",
                          (dir.path() / "mixed.log").string(), gzip.size()));
}

TEST(LbLogFiles, TruncatedGzipKeepsWhatWasRead) {
    TempDir dir;
    const std::string line = read_lines(kFixtures + "/aws_examples.log").at(0);
    std::string content;
    for (int i = 0; i < 2000; ++i) content += line + "\n";
    write_gzip(dir.path() / "full.gz", content);
    const std::string gzip = file_content((dir.path() / "full.gz").string());
    write_file(dir.path() / "cut.gz", gzip.substr(0, gzip.size() / 2));
    const Collected collected = read_all({(dir.path() / "cut.gz").string()});
    EXPECT_GT(collected.stats.entries, 0u);
    EXPECT_LT(collected.stats.entries, 2000u);
    ASSERT_EQ(collected.stats.file_errors.size(), 1u);
    EXPECT_NE(collected.stats.file_errors[0].find("cut.gz: "), std::string::npos);
}

TEST(LbLogFiles, DirectoriesAreWalkedRecursivelyInNameOrder) {
    TempDir dir;
    const std::string line = read_lines(kFixtures + "/aws_examples.log").at(0) + "\n";
    write_file(dir.path() / "2026/11/25/b.log", line);
    write_gzip(dir.path() / "2026/11/24/a.log.gz", line);
    write_gzip(dir.path() / "2026/11/25/c.gz", line);
    write_file(dir.path() / "2026/README.txt", "not a log\n");
    write_file(dir.path() / "notes.log.txt", "not a log\n");
    const Collected collected = read_all({dir.path().string()});
    EXPECT_EQ(collected.stats.files, 3u);
    EXPECT_EQ(collected.stats.malformed, 0u);
    EXPECT_EQ(collected.places, (std::vector<std::string>{"a.log.gz:1", "b.log:1", "c.gz:1"}));
}

TEST(LbLogFiles, MissingPathsAndEmptyDirectoriesAreReported) {
    TempDir dir;
    fs::create_directories(dir.path() / "empty");
    const Collected collected =
        read_all({(dir.path() / "absent.log").string(), (dir.path() / "empty").string()});
    EXPECT_EQ(collected.stats.files, 0u);
    ASSERT_EQ(collected.stats.file_errors.size(), 2u);
    EXPECT_NE(collected.stats.file_errors[0].find("no such file"), std::string::npos);
    EXPECT_NE(collected.stats.file_errors[1].find("no .log or .gz file"), std::string::npos);
}

TEST(LbLogFiles, OverlongLinesAreMalformedNotFatal) {
    TempDir dir;
    const std::string line = read_lines(kFixtures + "/aws_examples.log").at(0);
    write_file(dir.path() / "long.log",
               line + "\n" + std::string(kMaxLbLogLineBytes + 10, 'x') + "\n" + line + "\n");
    const Collected collected = read_all({(dir.path() / "long.log").string()});
    EXPECT_EQ(collected.stats.entries, 2u);
    EXPECT_EQ(collected.stats.malformed, 1u);
    EXPECT_EQ(collected.places, (std::vector<std::string>{"long.log:1", "long.log:3"}));
}

}  // namespace
}  // namespace closetrace
