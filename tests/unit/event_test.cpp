#include "closetrace/event.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

extern "C" {
#include "closetrace.h"
}

namespace closetrace {
namespace {

template <typename Record>
std::vector<uint8_t> bytes_of(const Record& record) {
    std::vector<uint8_t> bytes(sizeof(record));
    std::memcpy(bytes.data(), &record, sizeof(record));
    return bytes;
}

ct_event make_header(uint16_t kind, uint16_t size) {
    ct_event header{};
    header.ts_ns = 1'000;
    header.cookie = 42;
    header.netns = 4026531840u;
    header.kind = kind;
    header.size = size;
    header.tuple.family = AF_INET;
    const uint32_t local = htonl(0x0a000002), remote = htonl(0x0a000001);
    std::memcpy(header.tuple.laddr, &local, 4);
    std::memcpy(header.tuple.raddr, &remote, 4);
    header.tuple.lport = 8080;
    header.tuple.rport = 51234;
    return header;
}

TEST(DecodeEvent, StateRecord) {
    ct_state_event record{};
    record.hdr = make_header(CT_EV_STATE, sizeof(record));
    record.snap.last_rx_ns = 500;
    record.snap.bytes_in = 812;
    record.old_state = kTcpEstablished;
    record.new_state = kTcpFinWait1;
    record.role = CT_ROLE_SERVER;
    record.pid = 4242;
    std::memcpy(record.comm, "node", 4);

    std::string error;
    const auto event = decode_event(bytes_of(record), {}, &error);
    ASSERT_TRUE(event) << error;
    EXPECT_EQ(event->kind, EventKind::State);
    EXPECT_EQ(event->ts_ns, 1'000u);
    EXPECT_EQ(event->cookie, 42u);
    EXPECT_EQ(event->role, Role::Server);
    EXPECT_EQ(event->old_state, kTcpEstablished);
    EXPECT_EQ(event->new_state, kTcpFinWait1);
    EXPECT_EQ(event->snap.last_rx_ns, 500u);
    EXPECT_EQ(event->snap.bytes_in, 812u);
    EXPECT_EQ(event->comm, "node");
    EXPECT_EQ(event->pid, 4242u);
    EXPECT_EQ(format_address(event->tuple.family, event->tuple.laddr), "10.0.0.2");
    EXPECT_EQ(format_address(event->tuple.family, event->tuple.raddr), "10.0.0.1");
    EXPECT_EQ(event->tuple.lport, 8080);
}

TEST(DecodeEvent, CommWithoutTerminatorIsBounded) {
    ct_state_event record{};
    record.hdr = make_header(CT_EV_STATE, sizeof(record));
    std::memset(record.comm, 'x', sizeof(record.comm));
    const auto event = decode_event(bytes_of(record), {}, nullptr);
    ASSERT_TRUE(event);
    EXPECT_EQ(event->comm, std::string(CT_COMM_LEN, 'x'));
}

TEST(DecodeEvent, ResetSentNamesTheReasonAndKeepsThePayload) {
    ct_reset_event record{};
    record.hdr = make_header(CT_EV_RESET_SENT, sizeof(record));
    record.reason = 2;
    record.trigger_flags = CT_TCP_PSH | CT_TCP_ACK;
    record.sk_state = kTcpTimeWait;
    record.payload_len = 300;
    const char request[] = "POST /pay HTTP/1.1\r\n";
    std::memcpy(record.payload, request, sizeof(request) - 1);
    record.captured = sizeof(request) - 1;

    const RstReasonNames reasons = {"NOT_SPECIFIED", "NO_SOCKET", "TCP_ABORT_ON_DATA"};
    const auto event = decode_event(bytes_of(record), reasons, nullptr);
    ASSERT_TRUE(event);
    EXPECT_EQ(event->kind, EventKind::ResetSent);
    EXPECT_EQ(event->rst_reason, "TCP_ABORT_ON_DATA");
    EXPECT_EQ(event->payload, "POST /pay HTTP/1.1\r\n");
    EXPECT_EQ(event->payload_len, 300u);
    EXPECT_EQ(event->sk_state, kTcpTimeWait);
    EXPECT_EQ(tcp_flags_string(event->trigger_flags), "P.");
}

TEST(DecodeEvent, ReasonOutsideTheKernelsEnumIsUnknown) {
    ct_reset_event record{};
    record.hdr = make_header(CT_EV_RESET_SENT, sizeof(record));
    record.reason = CT_RST_REASON_UNKNOWN;
    auto event = decode_event(bytes_of(record), {"NOT_SPECIFIED"}, nullptr);
    ASSERT_TRUE(event);
    EXPECT_FALSE(event->rst_reason);
    record.reason = 7;
    event = decode_event(bytes_of(record), {"NOT_SPECIFIED"}, nullptr);
    ASSERT_TRUE(event);
    EXPECT_FALSE(event->rst_reason);
}

TEST(DecodeEvent, CapturedLengthIsClampedToTheBuffer) {
    ct_message_event record{};
    record.hdr = make_header(CT_EV_MESSAGE, sizeof(record));
    record.direction = CT_DIR_OUT;
    record.captured = 60000;  // corrupt: must not read past the payload array
    record.segment_len = 1448;
    const auto event = decode_event(bytes_of(record), {}, nullptr);
    ASSERT_TRUE(event);
    EXPECT_EQ(event->direction, Direction::Out);
    EXPECT_EQ(event->payload.size(), static_cast<std::size_t>(CT_PAYLOAD_MAX));
    EXPECT_EQ(event->payload_len, 1448u);
}

// A response head of `head_len` bytes that outgrew the capture, as the kernel records it: the
// first CT_PAYLOAD_MAX - CT_HEAD_TAIL bytes, then its last CT_HEAD_TAIL (ct_message_event).
ct_message_event long_response(const std::string& head) {
    ct_message_event record{};
    record.hdr = make_header(CT_EV_MESSAGE, sizeof(record));
    record.kind = CT_MESSAGE_RESPONSE;
    record.segment_len = static_cast<uint32_t>(head.size());
    record.captured = CT_PAYLOAD_MAX;
    record.tail_at = CT_PAYLOAD_MAX - CT_HEAD_TAIL;
    std::memcpy(record.payload, head.data(), record.tail_at);
    std::memcpy(record.payload + record.tail_at, head.data() + head.size() - CT_HEAD_TAIL,
                CT_HEAD_TAIL);
    return record;
}

const std::string kStatusLine = "HTTP/1.1 200 OK\r\n";
const std::string kNodesFields =
    "Date: Tue, 08 Dec 2026 01:13:04 GMT\r\nConnection: keep-alive\r\n"
    "Keep-Alive: timeout=5\r\nContent-Length: 11\r\n\r\n";

TEST(DecodeEvent, ALongHeadKeepsItsFirstAndLastWholeLines) {
    const std::string csp = "Content-Security-Policy: " + std::string(400, 'a') + "\r\n";
    const auto event =
        decode_event(bytes_of(long_response(kStatusLine + csp + kNodesFields)), {}, nullptr);
    ASSERT_TRUE(event);
    EXPECT_TRUE(event->head_tail_kept);
    // The CSP line, cut at both ends, is left out; the tail's first whole line is Connection.
    EXPECT_EQ(event->payload, kStatusLine +
                                  "Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
                                  "Content-Length: 11\r\n\r\n");
}

TEST(DecodeEvent, AHeadCutInItsFirstLineKeepsThatLineAlone) {
    // No line ends within the first bytes: nothing whole to join the tail to.
    const std::string head = "HTTP/1.1 200 " + std::string(300, 'x') + "\r\n" + kNodesFields;
    const auto event = decode_event(bytes_of(long_response(head)), {}, nullptr);
    ASSERT_TRUE(event);
    EXPECT_FALSE(event->head_tail_kept);
    EXPECT_EQ(event->payload, head.substr(0, CT_PAYLOAD_MAX - CT_HEAD_TAIL));
}

TEST(DecodeEvent, ATailBeyondTheCaptureIsIgnored) {
    ct_message_event record = long_response(kStatusLine + std::string(400, 'a') + kNodesFields);
    record.captured = record.tail_at;  // corrupt: the tail would lie past what was captured
    const auto event = decode_event(bytes_of(record), {}, nullptr);
    ASSERT_TRUE(event);
    EXPECT_FALSE(event->head_tail_kept);
    EXPECT_EQ(event->payload.size(), static_cast<std::size_t>(record.tail_at));
}

TEST(DecodeEvent, AReusedEventHoldsOnlyTheLatestRecord) {
    ct_reset_event reset{};
    reset.hdr = make_header(CT_EV_RESET_SENT, sizeof(reset));
    reset.reason = 0;
    reset.trigger_flags = CT_TCP_ACK;
    reset.payload_len = 300;
    std::memset(reset.payload, 'x', 100);
    reset.captured = 100;
    ct_state_event state{};
    state.hdr = make_header(CT_EV_STATE, sizeof(state));
    state.new_state = kTcpClose;

    Event event;
    ASSERT_TRUE(decode_event(bytes_of(reset), {"NOT_SPECIFIED"}, event, nullptr));
    EXPECT_EQ(event.rst_reason, "NOT_SPECIFIED");
    ASSERT_TRUE(decode_event(bytes_of(state), {"NOT_SPECIFIED"}, event, nullptr));
    EXPECT_EQ(event.kind, EventKind::State);
    EXPECT_EQ(event.new_state, kTcpClose);
    EXPECT_FALSE(event.rst_reason);
    EXPECT_EQ(event.trigger_flags, 0);
    EXPECT_EQ(event.payload_len, 0u);
    EXPECT_EQ(event.payload, "");
    // The payload's buffer stays for the next record: no allocation per record.
    EXPECT_GE(event.payload.capacity(), 100u);
}

TEST(FormatAddress, Ipv4IsInetNtopsText) {
    for (unsigned byte = 0; byte < 256; ++byte) {
        std::array<uint8_t, 16> addr{};
        addr[0] = static_cast<uint8_t>(byte);
        addr[1] = static_cast<uint8_t>(255 - byte);
        addr[2] = static_cast<uint8_t>(byte / 10);
        addr[3] = static_cast<uint8_t>(byte % 100);
        char expected[INET_ADDRSTRLEN] = {};
        ASSERT_TRUE(inet_ntop(AF_INET, addr.data(), expected, sizeof(expected)));
        EXPECT_EQ(format_address(AF_INET, addr), expected);
    }
}

TEST(DecodeEvent, RejectsRecordsThatDoNotMatchTheAbi) {
    std::string error;
    std::vector<uint8_t> tiny(4);
    EXPECT_FALSE(decode_event(tiny, {}, &error));
    EXPECT_NE(error.find("shorter"), std::string::npos);

    ct_state_event record{};
    record.hdr = make_header(CT_EV_STATE, sizeof(record) + 8);
    EXPECT_FALSE(decode_event(bytes_of(record), {}, &error));
    EXPECT_NE(error.find("size"), std::string::npos);

    record.hdr = make_header(99, sizeof(record));
    EXPECT_FALSE(decode_event(bytes_of(record), {}, &error));
    EXPECT_NE(error.find("kind"), std::string::npos);

    ct_reset_event reset{};
    reset.hdr = make_header(CT_EV_STATE, sizeof(reset));  // a reset's size under a state's kind
    EXPECT_FALSE(decode_event(bytes_of(reset), {}, &error));
}

TEST(DecodeEvent, Ipv6Addresses) {
    ct_state_event record{};
    record.hdr = make_header(CT_EV_STATE, sizeof(record));
    record.hdr.tuple.family = AF_INET6;
    inet_pton(AF_INET6, "fd00::2", record.hdr.tuple.laddr);
    const auto event = decode_event(bytes_of(record), {}, nullptr);
    ASSERT_TRUE(event);
    EXPECT_EQ(format_address(event->tuple.family, event->tuple.laddr), "fd00::2");
}

TEST(TcpNames, StatesAndFlags) {
    EXPECT_STREQ(tcp_state_name(kTcpCloseWait), "CLOSE_WAIT");
    EXPECT_STREQ(tcp_state_name(200), "UNKNOWN");
    EXPECT_EQ(tcp_flags_string(CT_TCP_SYN), "S");
    EXPECT_EQ(tcp_flags_string(CT_TCP_FIN | CT_TCP_ACK), "F.");
    EXPECT_EQ(tcp_flags_string(CT_TCP_RST), "R");
    EXPECT_EQ(tcp_flags_string(0), "");
}

}  // namespace
}  // namespace closetrace
