#include "closetrace/http.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <string_view>

namespace closetrace::http {
namespace {

using namespace std::string_view_literals;

// True when `part` is empty or lies wholly within `whole`: results must never point elsewhere.
bool lies_within(std::string_view part, std::string_view whole) {
    if (part.empty()) {
        return true;
    }
    const std::less_equal<const char*> not_after;
    return not_after(whole.data(), part.data()) &&
           not_after(part.data() + part.size(), whole.data() + whole.size());
}

void expect_views_within(const ParseResult& result, std::string_view bytes) {
    ASSERT_LE(result.count, kMaxMessages);
    for (std::size_t i = 0; i < result.count; ++i) {
        const Message& message = result.messages[i];
        EXPECT_TRUE(lies_within(message.method, bytes)) << "message " << i;
        EXPECT_TRUE(lies_within(message.target, bytes)) << "message " << i;
        EXPECT_TRUE(lies_within(message.version, bytes)) << "message " << i;
    }
}

void expect_opaque(std::string_view bytes) {
    const ParseResult result = parse(bytes);
    ASSERT_EQ(result.count, 1u);
    const Message& message = result.messages[0];
    EXPECT_EQ(message.kind, MessageKind::Opaque);
    EXPECT_TRUE(message.method.empty());
    EXPECT_TRUE(message.target.empty());
    EXPECT_TRUE(message.version.empty());
    EXPECT_EQ(message.status, 0);
    EXPECT_FALSE(message.line_complete);
}

TEST(HttpParse, EmptyBufferYieldsNoMessage) {
    EXPECT_EQ(parse(""sv).count, 0u);
}

TEST(HttpParse, GetRequest) {
    const std::string_view bytes = "GET /health HTTP/1.1\r\nHost: backend\r\n\r\n";
    const ParseResult result = parse(bytes);
    ASSERT_EQ(result.count, 1u);
    const Message& message = result.messages[0];
    EXPECT_EQ(message.kind, MessageKind::Request);
    EXPECT_EQ(message.method, "GET");
    EXPECT_EQ(message.target, "/health");
    EXPECT_EQ(message.version, "HTTP/1.1");
    EXPECT_EQ(message.status, 0);
    EXPECT_TRUE(message.line_complete);
    expect_views_within(result, bytes);
}

TEST(HttpParse, PostRequestKeepsQueryInTarget) {
    const ParseResult result =
        parse("POST /pay?card=1&amount=5 HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
    ASSERT_EQ(result.count, 1u);
    EXPECT_EQ(result.messages[0].method, "POST");
    EXPECT_EQ(result.messages[0].target, "/pay?card=1&amount=5");
    EXPECT_EQ(result.messages[0].version, "HTTP/1.0");
    EXPECT_EQ(public_target(result.messages[0].target), "/pay");
}

TEST(HttpParse, AbsoluteFormTarget) {
    const ParseResult result =
        parse("GET http://api.example.com:8080/orders?id=7 HTTP/1.1\r\nHost: api.example.com\r\n");
    ASSERT_EQ(result.count, 1u);
    EXPECT_EQ(result.messages[0].kind, MessageKind::Request);
    EXPECT_EQ(result.messages[0].target, "http://api.example.com:8080/orders?id=7");
    EXPECT_EQ(public_target(result.messages[0].target), "http://api.example.com:8080/orders");
}

TEST(HttpParse, AuthorityAndAsteriskFormTargets) {
    EXPECT_EQ(parse("CONNECT api.example.com:443 HTTP/1.1\r\n").messages[0].target,
              "api.example.com:443");
    EXPECT_EQ(parse("OPTIONS * HTTP/1.1\r\n").messages[0].target, "*");
}

TEST(HttpParse, EveryStandardMethod) {
    for (const std::string_view method :
         {"GET"sv, "POST"sv, "PUT"sv, "DELETE"sv, "PATCH"sv, "HEAD"sv, "OPTIONS"sv, "CONNECT"sv,
          "TRACE"sv}) {
        const std::string bytes = std::string(method) + " /x HTTP/1.1\r\n\r\n";
        const ParseResult result = parse(bytes);
        ASSERT_EQ(result.count, 1u) << method;
        EXPECT_EQ(result.messages[0].kind, MessageKind::Request) << method;
        EXPECT_EQ(result.messages[0].method, method);
        EXPECT_TRUE(result.messages[0].line_complete) << method;
    }
}

TEST(HttpParse, ExtensionMethodIsAnyTokenUpTo32Characters) {
    EXPECT_EQ(parse("PROPFIND /dav HTTP/1.1\r\n").messages[0].method, "PROPFIND");
    EXPECT_EQ(parse("M-SEARCH * HTTP/1.1\r\n").messages[0].method, "M-SEARCH");

    const std::string longest(32, 'X');
    const std::string at_limit_bytes = longest + " / HTTP/1.1\r\n";  // the views point into it
    const ParseResult at_limit = parse(at_limit_bytes);
    EXPECT_EQ(at_limit.messages[0].kind, MessageKind::Request);
    EXPECT_EQ(at_limit.messages[0].method, longest);

    expect_opaque(longest + "X / HTTP/1.1\r\n");
}

// Methods are case-sensitive tokens: "get" is a token, so a line that ends in HTTP/1.x is a
// request line (the server answers it with 400 or 501, and the tracker must see it), while
// lowercase text without a version is not HTTP at all.
TEST(HttpParse, LowercaseMethodCountsOnlyWithAVersion) {
    const ParseResult lowercase = parse("get /a HTTP/1.1\r\n\r\n");
    ASSERT_EQ(lowercase.count, 1u);
    EXPECT_EQ(lowercase.messages[0].kind, MessageKind::Request);
    EXPECT_EQ(lowercase.messages[0].method, "get");

    expect_opaque("hello world\r\n");
    expect_opaque("get /a http/1.1\r\n");
}

TEST(HttpParse, ResponseWithReason) {
    const std::string_view bytes = "HTTP/1.1 502 Bad Gateway\r\nServer: awselb/2.0\r\n\r\n";
    const ParseResult result = parse(bytes);
    ASSERT_EQ(result.count, 1u);
    const Message& message = result.messages[0];
    EXPECT_EQ(message.kind, MessageKind::Response);
    EXPECT_EQ(message.version, "HTTP/1.1");
    EXPECT_EQ(message.status, 502);
    EXPECT_TRUE(message.method.empty());
    EXPECT_TRUE(message.target.empty());
    EXPECT_TRUE(message.line_complete);
    expect_views_within(result, bytes);
}

TEST(HttpParse, ResponseWithoutReason) {
    for (const std::string_view bytes :
         {"HTTP/1.1 204\r\n\r\n"sv, "HTTP/1.1 204 \r\n\r\n"sv, "HTTP/1.0 204\n\n"sv}) {
        const ParseResult result = parse(bytes);
        ASSERT_EQ(result.count, 1u) << bytes;
        EXPECT_EQ(result.messages[0].kind, MessageKind::Response) << bytes;
        EXPECT_EQ(result.messages[0].status, 204) << bytes;
        EXPECT_TRUE(result.messages[0].line_complete) << bytes;
    }
}

TEST(HttpParse, ReasonMayHoldTabsAndObsText) {
    const ParseResult result = parse("HTTP/1.1 200 Tout\tva \xc3\xa9t\xc3\xa9\r\n\r\n");
    EXPECT_EQ(result.messages[0].status, 200);
    EXPECT_TRUE(result.messages[0].line_complete);
}

TEST(HttpParse, MalformedStatusLinesAreOpaque) {
    expect_opaque("HTTP/1.1 20x OK\r\n");
    expect_opaque("HTTP/1.1 099 Low\r\n");
    expect_opaque("HTTP/1.1 2000 OK\r\n");
    expect_opaque("HTTP/1.1 200OK\r\n");
    expect_opaque("HTTP/1.1  200 OK\r\n");
    expect_opaque("HTTP/2 200\r\n");
    expect_opaque("HTTP/1.1 200 O\x01K\r\n");
}

// A TLS record: content type, version 3.`minor`, and `length` bytes of (sealed) fragment.
std::string tls_record(uint8_t type, std::size_t length, uint8_t minor = 3) {
    std::string record = {static_cast<char>(type), 3, static_cast<char>(minor),
                          static_cast<char>(length >> 8), static_cast<char>(length & 0xff)};
    record.append(length, '\xa7');
    return record;
}

MessageKind kind_of(std::string_view bytes) {
    const ParseResult result = parse(bytes);
    EXPECT_EQ(result.count, 1u);
    return result.messages[0].kind;
}

TEST(HttpParse, TlsRecordsThatCannotCarryAMessageAreTlsControl) {
    constexpr uint8_t kAlert = 21, kApplicationData = 23;
    EXPECT_EQ(kind_of(tls_record(kAlert, 26)), MessageKind::TlsControl);  // TLS 1.2, AES-GCM
    EXPECT_EQ(kind_of(tls_record(kApplicationData, 19)), MessageKind::TlsControl);  // 1.3 alert
    EXPECT_EQ(kind_of(tls_record(kApplicationData, 22)), MessageKind::TlsControl);  // key update
    EXPECT_EQ(kind_of(tls_record(kApplicationData, 19) + tls_record(kAlert, 26)),
              MessageKind::TlsControl);
    // Long enough for an HTTP/2 frame (26) or a request line (35): application data.
    EXPECT_EQ(kind_of(tls_record(kApplicationData, 26)), MessageKind::Opaque);
    EXPECT_EQ(kind_of(tls_record(kApplicationData, 19) + tls_record(kApplicationData, 35)),
              MessageKind::Opaque);
    // A record cut short, bytes after the last whole record, another version or content type.
    EXPECT_EQ(kind_of(tls_record(kAlert, 26).substr(0, 20)), MessageKind::Opaque);
    EXPECT_EQ(kind_of(tls_record(kAlert, 26) + "\x15\x03"), MessageKind::Opaque);
    EXPECT_EQ(kind_of(tls_record(kAlert, 26, 5)), MessageKind::Opaque);
    EXPECT_EQ(kind_of(tls_record(22, 26)), MessageKind::Opaque);  // a handshake
}

TEST(HttpParse, MalformedRequestLinesAreOpaque) {
    expect_opaque("GET  / HTTP/1.1\r\n");       // empty target
    expect_opaque("GET / HTTP/1.1 \r\n");       // trailing space
    expect_opaque("GET / HTTP/1.10\r\n");       // version too long
    expect_opaque("GET / HTTP/1.1\rX\r\n");     // CR without LF
    expect_opaque("GET /\x7f HTTP/1.1\r\n");    // DEL in the target
    expect_opaque("G(T / HTTP/1.1\r\n");        // '(' is no tchar
    expect_opaque(" GET / HTTP/1.1\r\n");
}

TEST(HttpParse, BareLineFeedEndsALine) {
    const ParseResult result = parse("GET /a HTTP/1.1\nHost: x\n\nGET /b HTTP/1.1\n\n");
    ASSERT_EQ(result.count, 2u);
    EXPECT_TRUE(result.messages[0].line_complete);
    EXPECT_EQ(result.messages[1].target, "/b");
}

TEST(HttpParse, LeadingEmptyLinesAreSkipped) {
    const ParseResult result = parse("\r\n\r\nGET /a HTTP/1.1\r\n\r\n");
    ASSERT_EQ(result.count, 1u);
    EXPECT_EQ(result.messages[0].kind, MessageKind::Request);
    EXPECT_EQ(result.messages[0].target, "/a");

    expect_opaque("\r\n\r\n");
}

// The kernel captures the first bytes of a message, so any prefix of a real head may arrive.
TEST(HttpParse, RequestTruncatedAtEveryOffset) {
    const std::string_view full =
        "POST /api/orders?id=7 HTTP/1.1\r\nHost: backend:8080\r\nContent-Length: 2\r\n\r\n{}";
    const std::size_t target_begin = "POST "sv.size();
    const std::size_t target_end = full.find(' ', target_begin);
    const std::size_t version_end = target_end + 1 + "HTTP/1.1"sv.size();
    const std::size_t line_end = full.find('\n') + 1;

    for (std::size_t length = 0; length <= full.size(); ++length) {
        SCOPED_TRACE(length);
        const std::string_view prefix = full.substr(0, length);
        const ParseResult result = parse(prefix);
        expect_views_within(result, prefix);
        if (length == 0) {
            EXPECT_EQ(result.count, 0u);
            continue;
        }
        ASSERT_EQ(result.count, 1u);
        const Message& message = result.messages[0];
        if (length < target_begin) {
            EXPECT_EQ(message.kind, MessageKind::Opaque);
            continue;
        }
        EXPECT_EQ(message.kind, MessageKind::Request);
        EXPECT_EQ(message.method, "POST");
        EXPECT_EQ(message.target, full.substr(target_begin, std::min(length, target_end) -
                                                                target_begin));
        EXPECT_EQ(message.version, length >= version_end ? "HTTP/1.1"sv : ""sv);
        EXPECT_EQ(message.line_complete, length >= line_end);
        EXPECT_EQ(message.status, 0);
    }
}

TEST(HttpParse, ResponseTruncatedAtEveryOffset) {
    const std::string_view full = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\r\n";
    const std::size_t code_begin = "HTTP/1.1 "sv.size();
    const std::size_t code_end = code_begin + 3;
    const std::size_t line_end = full.find('\n') + 1;

    for (std::size_t length = 1; length <= full.size(); ++length) {
        SCOPED_TRACE(length);
        const std::string_view prefix = full.substr(0, length);
        const ParseResult result = parse(prefix);
        expect_views_within(result, prefix);
        ASSERT_EQ(result.count, 1u);
        const Message& message = result.messages[0];
        if (length < code_begin) {
            EXPECT_EQ(message.kind, MessageKind::Opaque);
            continue;
        }
        EXPECT_EQ(message.kind, MessageKind::Response);
        EXPECT_EQ(message.version, "HTTP/1.1");
        EXPECT_EQ(message.status, length >= code_end ? 503 : 0);
        EXPECT_EQ(message.line_complete, length >= line_end);
    }
}

TEST(HttpParse, PartialLinesReportWhatIsComplete) {
    const ParseResult method_only = parse("GET ");
    EXPECT_EQ(method_only.messages[0].kind, MessageKind::Request);
    EXPECT_EQ(method_only.messages[0].method, "GET");
    EXPECT_TRUE(method_only.messages[0].target.empty());

    const ParseResult cut_before_lf = parse("GET /a HTTP/1.1\r");
    EXPECT_EQ(cut_before_lf.messages[0].version, "HTTP/1.1");
    EXPECT_FALSE(cut_before_lf.messages[0].line_complete);

    // Too short to tell what they start: "GET" could be "GETTING STARTED".
    expect_opaque("GET");
    expect_opaque("HTTP/1.1");
    expect_opaque("GET /a HTTP/2");
}

TEST(HttpParse, BufferOf128BytesEndingMidHeader) {
    std::string bytes =
        "GET /v1/payments/callback?ref=8231 HTTP/1.1\r\n"
        "Host: api.internal.example.com\r\n"
        "User-Agent: ELB-HealthChecker/2.0\r\n"
        "X-Forwarded-For: 203.0.113.7, 10.0.1.17\r\n"
        "Connection: keep-alive\r\n\r\n";
    bytes.resize(128);
    ASSERT_EQ(bytes.find("\r\n\r\n"), std::string::npos);  // cut inside the header fields
    ASSERT_NE(bytes.back(), '\n');

    const ParseResult result = parse(bytes);
    ASSERT_EQ(result.count, 1u);
    EXPECT_EQ(result.messages[0].kind, MessageKind::Request);
    EXPECT_EQ(result.messages[0].target, "/v1/payments/callback?ref=8231");
    EXPECT_TRUE(result.messages[0].line_complete);
    expect_views_within(result, bytes);
}

TEST(HttpParse, PipelinedGets) {
    const std::string_view bytes =
        "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
        "GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
        "GET /c?q=1 HTTP/1.1\r\nHost: x\r\n\r\n";
    const ParseResult result = parse(bytes);
    ASSERT_EQ(result.count, 3u);
    EXPECT_EQ(result.messages[0].target, "/a");
    EXPECT_EQ(result.messages[1].target, "/b");
    EXPECT_EQ(result.messages[2].target, "/c?q=1");
    for (std::size_t i = 0; i < result.count; ++i) {
        EXPECT_EQ(result.messages[i].kind, MessageKind::Request);
        EXPECT_TRUE(result.messages[i].line_complete);
    }
    expect_views_within(result, bytes);
}

TEST(HttpParse, PipelinedRequestCutByTheBufferEnd) {
    const ParseResult with_version = parse("GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nHo");
    ASSERT_EQ(with_version.count, 2u);
    EXPECT_EQ(with_version.messages[1].target, "/b");
    EXPECT_TRUE(with_version.messages[1].line_complete);

    const ParseResult without_crlf = parse("GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1");
    ASSERT_EQ(without_crlf.count, 2u);
    EXPECT_FALSE(without_crlf.messages[1].line_complete);

    // A further message must show its version: this could be an unannounced body.
    EXPECT_EQ(parse("GET /a HTTP/1.1\r\n\r\nGET /b HT").count, 1u);
    EXPECT_EQ(parse("GET /a HTTP/1.1\r\n\r\nhello world").count, 1u);
}

TEST(HttpParse, StrayLineBreaksBetweenPipelinedRequests) {
    const ParseResult result = parse("GET /a HTTP/1.1\r\n\r\n\r\nGET /b HTTP/1.1\r\n\r\n\r\n");
    ASSERT_EQ(result.count, 2u);
    EXPECT_EQ(result.messages[1].target, "/b");
}

TEST(HttpParse, PostBodyIsSkippedByContentLength) {
    const std::string_view bytes =
        "POST /pay HTTP/1.1\r\ncontent-LENGTH:  14 \r\n\r\n"
        "GET / HTTP/1.1"  // the body looks like a request line: Content-Length says it is not
        "GET /next HTTP/1.1\r\n\r\n";
    const ParseResult result = parse(bytes);
    ASSERT_EQ(result.count, 2u);
    EXPECT_EQ(result.messages[0].method, "POST");
    EXPECT_EQ(result.messages[1].method, "GET");
    EXPECT_EQ(result.messages[1].target, "/next");
    expect_views_within(result, bytes);
}

TEST(HttpParse, BodyBeyondTheBufferEndsTheParse) {
    const ParseResult result =
        parse("POST /upload HTTP/1.1\r\nContent-Length: 100000000000000000000000\r\n\r\nabc");
    ASSERT_EQ(result.count, 1u);
    EXPECT_EQ(result.messages[0].target, "/upload");

    EXPECT_EQ(parse("POST /a HTTP/1.1\r\nContent-Length: 4\r\n\r\nabc").count, 1u);
}

TEST(HttpParse, UntrustworthyFramingEndsTheParse) {
    const std::string_view next = "GET /b HTTP/1.1\r\n\r\n";
    for (const std::string_view head : {
             "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"sv,
             "POST /a HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n"sv,
             "POST /a HTTP/1.1\r\nContent-Length: 0x0\r\n\r\n"sv,
             "POST /a HTTP/1.1\r\nContent-Length: -1\r\n\r\n"sv,
             "POST /a HTTP/1.1\r\nContent-Length:\r\n\r\n"sv,
             "GET /a HTTP/1.1\r\nNo colon here\r\n\r\n"sv,
             "GET /a HTTP/1.1\r\n: empty name\r\n\r\n"sv,
             "GET /a HTTP/1.1\r\nHost : spaced\r\n\r\n"sv,
             "GET /a HTTP/1.1\r\nX-Folded: a\r\n continued\r\n\r\n"sv,
             "GET /a HTTP/1.1\r\nX-Cr: a\rb\r\n\r\n"sv,
         }) {
        const std::string bytes = std::string(head) + std::string(next);
        const ParseResult result = parse(bytes);
        EXPECT_EQ(result.count, 1u) << head;
        EXPECT_EQ(result.messages[0].kind, MessageKind::Request) << head;
    }
}

TEST(HttpParse, HundredContinueIsAnInterimResponse) {
    const std::string_view bytes =
        "HTTP/1.1 100 Continue\r\n\r\n"
        "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
    const ParseResult result = parse(bytes);
    ASSERT_EQ(result.count, 2u);
    EXPECT_EQ(result.messages[0].kind, MessageKind::Response);
    EXPECT_EQ(result.messages[0].status, 100);
    EXPECT_TRUE(is_interim_status(result.messages[0].status));
    EXPECT_EQ(result.messages[1].status, 201);
    EXPECT_FALSE(is_interim_status(result.messages[1].status));
}

TEST(HttpParse, PipelinedResponses) {
    const ParseResult result = parse(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        "HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n"  // 304 never has a body
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    ASSERT_EQ(result.count, 3u);
    EXPECT_EQ(result.messages[0].status, 200);
    EXPECT_EQ(result.messages[1].status, 304);
    EXPECT_EQ(result.messages[2].status, 404);
}

TEST(HttpParse, ResponseWithoutContentLengthRunsToClose) {
    const ParseResult result =
        parse("HTTP/1.0 200 OK\r\n\r\nHTTP/1.1 200 OK\r\n\r\n");  // the body, until close
    EXPECT_EQ(result.count, 1u);
}

TEST(HttpParse, SwitchingProtocolsIsNotInterimAndEndsHttp) {
    const ParseResult result = parse(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello"sv);
    ASSERT_EQ(result.count, 1u);
    EXPECT_EQ(result.messages[0].status, 101);
    EXPECT_FALSE(is_interim_status(101));
}

TEST(HttpParse, NeverMoreThanMaxMessages) {
    std::string bytes;
    for (int i = 0; i < 12; ++i) {
        bytes += "GET / HTTP/1.1\n\n";
    }
    const ParseResult result = parse(bytes);
    EXPECT_EQ(result.count, kMaxMessages);
    expect_views_within(result, bytes);
}

TEST(HttpParse, TlsClientHelloIsOpaque) {
    constexpr std::array<std::uint8_t, 48> kClientHello = {
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x5b,
        0x1e, 0x9a, 0x44, 0x47, 0x45, 0x54, 0x20, 0x2f, 0x20, 0x48, 0x54, 0x54,
        0x50, 0x2f, 0x31, 0x2e, 0x31, 0x0d, 0x0a, 0x00, 0x00, 0x3e, 0x13, 0x02,
        0x13, 0x03, 0x13, 0x01, 0xc0, 0x2c, 0xc0, 0x30, 0x00, 0x9f, 0xcc, 0xa9,
    };
    expect_opaque({reinterpret_cast<const char*>(kClientHello.data()), kClientHello.size()});
}

// h2c (issue 18): the preface is named, not taken for TLS; the SETTINGS frame after it is not
// a further message.
TEST(HttpParse, Http2PrefaceIsNamed) {
    const ParseResult result =
        parse("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00"sv);
    ASSERT_EQ(result.count, 1u);
    EXPECT_EQ(result.messages[0].kind, MessageKind::Request);
    EXPECT_EQ(result.messages[0].version, "HTTP/2.0");
    EXPECT_TRUE(is_http2_preface(result.messages[0].method, result.messages[0].target));
    EXPECT_FALSE(is_http2_preface("GET", "*"));
    expect_opaque("PRI * HTTP/2.1\r\n\r\n"sv);
}

TEST(HttpParse, RequestBodyIsOpaque) {
    expect_opaque("{\"order\":7,\"amount\":\"5.00\"}");
    expect_opaque("card=4111111111111111&amount=5");
}

TEST(HttpParse, NulBytes) {
    expect_opaque("\0GET / HTTP/1.1\r\n\r\n"sv);
    expect_opaque("GE\0T / HTTP/1.1\r\n\r\n"sv);
    expect_opaque("GET /a\0b HTTP/1.1\r\n\r\n"sv);
    expect_opaque("HTTP/1.1 200 O\0K\r\n\r\n"sv);

    // A NUL in a field value makes the framing untrustworthy; the first request still counts.
    EXPECT_EQ(parse("GET /a HTTP/1.1\r\nX: \0\r\n\r\nGET /b HTTP/1.1\r\n\r\n"sv).count, 1u);
    // A NUL in a body Content-Length announces is just a body byte.
    EXPECT_EQ(parse("POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\n\0\0GET /b HTTP/1.1\r\n\r\n"sv)
                  .count,
              2u);
    // Bytes after a head without Content-Length are not a message unless they are a request.
    EXPECT_EQ(parse("GET /a HTTP/1.1\r\n\r\n\0\x01garbage"sv).count, 1u);
}

TEST(HttpParse, RandomBinaryKeepsEveryInvariant) {
    std::mt19937 generator(20260125);
    std::uniform_int_distribution<int> byte(0, 255);
    std::uniform_int_distribution<std::size_t> length(1, 128);
    for (int round = 0; round < 20000; ++round) {
        std::string bytes(length(generator), '\0');
        for (char& c : bytes) {
            c = static_cast<char>(byte(generator));
        }
        const ParseResult result = parse(bytes);
        ASSERT_GE(result.count, 1u);
        expect_views_within(result, bytes);
    }
    // Binary that cannot start a token is always opaque.
    expect_opaque("\x89PNG\r\n\x1a\n\0\0\0\rIHDR"sv);
    expect_opaque("\xff\xfe\x00\x01\x02"sv);
}

std::optional<uint32_t> announced_timeout(std::string_view bytes) {
    const ParseResult result = parse(bytes);
    EXPECT_EQ(result.count, 1u) << bytes;
    return result.messages[0].keep_alive_timeout_s;
}

TEST(HttpParse, KeepAliveTimeoutAsServersAnnounceIt) {
    // Node's, Apache's and nginx's (keepalive_timeout 75s 60s) forms.
    EXPECT_EQ(announced_timeout("HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n"
                                "Keep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n"),
              5u);
    EXPECT_EQ(announced_timeout("HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5, max=100\r\n\r\n"), 5u);
    EXPECT_EQ(announced_timeout("HTTP/1.1 200 OK\r\nkeep-alive: MAX=99 , Timeout = 60\r\n\r\n"),
              60u);
    EXPECT_EQ(announced_timeout("HTTP/1.1 200 OK\r\nKeep-Alive: timeout=99999999999\r\n\r\n"),
              std::numeric_limits<uint32_t>::max());
}

TEST(HttpParse, KeepAliveWithoutATimeoutAnnouncesNone) {
    for (const std::string_view bytes : {
             "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n"sv,
             "HTTP/1.1 200 OK\r\nKeep-Alive: max=100\r\n\r\n"sv,
             "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=\r\n\r\n"sv,
             "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=-5\r\n\r\n"sv,
             "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5s\r\n\r\n"sv,
             "HTTP/1.1 200 OK\r\nKeep-Alive: timeouts=5\r\n\r\n"sv,
             // Cut by the capture before its line ends: not read.
             "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5"sv,
         }) {
        EXPECT_FALSE(announced_timeout(bytes)) << bytes;
    }
}

TEST(HttpPublicTarget, CutsAtQueryFragmentOrPathParameters) {
    EXPECT_EQ(public_target("/pay?card=1"), "/pay");
    EXPECT_EQ(public_target("/docs#intro"), "/docs");
    EXPECT_EQ(public_target("/a#frag?not-query"), "/a");
    EXPECT_EQ(public_target("/a?q=1#frag"), "/a");
    EXPECT_EQ(public_target("/plain"), "/plain");
    EXPECT_EQ(public_target("?only"), "");
    EXPECT_EQ(public_target(""), "");
    EXPECT_EQ(public_target("http://h:80/p?q"), "http://h:80/p");
    EXPECT_EQ(public_target("/app;jsessionid=0123ABC"), "/app");
    EXPECT_EQ(public_target("/a;v=1/b?q"), "/a");
}

// A request to a proxy may name credentials in its absolute-form target: never in default output.
TEST(HttpPublicTarget, DropsCredentialsOfAnAbsoluteTarget) {
    EXPECT_EQ(public_target("http://user:secret@h:8080/orders?id=7"), "/orders");
    EXPECT_EQ(public_target("http://user:secret@h"), "");
    EXPECT_EQ(public_target("https://h/p@q"), "https://h/p@q");  // '@' in the path: no credentials
    EXPECT_EQ(public_target("/redirect?to=http://u:p@h/"), "/redirect");
    // A password with a ';' or '?' in it is cut whole, not at that character.
    EXPECT_EQ(public_target("http://user:pa;ss@h/orders"), "/orders");
    EXPECT_EQ(public_target("http://user:pa?ss@h/orders"), "/orders");
}

// So may a CONNECT's authority-form target.
TEST(HttpPublicTarget, DropsCredentialsOfAnAuthorityTarget) {
    EXPECT_EQ(public_target("user:secret@example.com:443"), "example.com:443");
    EXPECT_EQ(public_target("user:se;cr@et@example.com:443"), "example.com:443");
    EXPECT_EQ(public_target("example.com:443"), "example.com:443");
    EXPECT_EQ(public_target("*"), "*");
}

TEST(HttpInterimStatus, OnlyInformationalExceptSwitchingProtocols) {
    EXPECT_TRUE(is_interim_status(100));
    EXPECT_TRUE(is_interim_status(102));
    EXPECT_TRUE(is_interim_status(103));
    EXPECT_TRUE(is_interim_status(199));
    EXPECT_FALSE(is_interim_status(101));
    EXPECT_FALSE(is_interim_status(200));
    EXPECT_FALSE(is_interim_status(99));
    EXPECT_FALSE(is_interim_status(0));
    EXPECT_FALSE(is_interim_status(502));
}

}  // namespace
}  // namespace closetrace::http
