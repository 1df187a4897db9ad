// Writing and reading traces (docs/trace-format.md): JSON Lines with header, conn, event and
// summary objects.
#pragma once

#include <cstddef>
#include <cstdint>
#include <istream>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "closetrace/event.h"
#include "closetrace/model.h"

namespace closetrace {

// What this closetrace writes; it reads this and every earlier schema (docs/trace-format.md).
inline constexpr std::string_view kTraceSchema = "closetrace/5";
// Before HTTP/2 stream names (record --http2-names).
inline constexpr std::string_view kTraceSchemaV4 = "closetrace/4";
// Before HTTP/2 PING and SETTINGS counts and the HTTP/2 close causes of a bare FIN and of a
// GOAWAY right after use.
inline constexpr std::string_view kTraceSchemaV3 = "closetrace/3";
// Before HTTP/2: conn records without `http2`.
inline constexpr std::string_view kTraceSchemaV2 = "closetrace/2";
// Before close causes: conn records without close.cause, idle_ms from the last payload.
inline constexpr std::string_view kTraceSchemaV1 = "closetrace/1";

struct TraceFilters {
    std::vector<uint16_t> ports;
    std::optional<std::string> cgroup;
    bool full_target = false;
    bool raw_payloads = false;             // --raw-payloads
    std::optional<uint32_t> netns;         // --netns inode
    std::optional<std::string> container;  // --container
    std::optional<uint32_t> pid;           // --pid
};

struct TraceProbes {
    std::optional<std::string> state;           // e.g. "tp_btf/inet_sock_set_state"
    std::optional<std::string> reset_sent;      // e.g. "tp_btf/tcp_send_reset"
    std::optional<std::string> reset_received;  // e.g. "tp_btf/tcp_receive_reset"
    std::optional<std::string> messages;        // e.g. "cgroup_skb"
    bool rst_reason = false;
};

struct TraceHeader {
    std::string schema{kTraceSchema};
    std::string tool_version;
    std::string host;
    std::string kernel;
    uint64_t start_ns = 0;
    std::string start_wall;       // ISO 8601 UTC
    int64_t mono_to_wall_ns = 0;  // monotonic ns + this = Unix-epoch ns
    TraceFilters filters;
    TraceProbes probes;

    // When the recording (or this file of it) began, on the wall clock: Unix-epoch ns.
    int64_t start_wall_ns() const { return static_cast<int64_t>(start_ns) + mono_to_wall_ns; }
};

struct TraceSummary {
    uint64_t connections = 0;
    uint64_t open_at_end = 0;
    uint64_t requests = 0;
    uint64_t lost_events = 0;
    uint64_t events = 0;
    double duration_s = 0;
    uint64_t end_ns = 0;
    std::map<std::string, uint64_t> by_initiator;
    std::map<std::string, uint64_t> by_how;
    std::map<std::string, uint64_t> verdicts;
};

// Serialises one trace line each (no trailing newline). Every string is taken as bytes: each
// byte becomes the code point of the same value (0-255), escaped as \u00XX unless printable
// ASCII, so any byte string round-trips and every line is pure ASCII JSON.
std::string header_line(const TraceHeader& header);
std::string conn_line(const Connection& conn);
// The same line appended to `out`: a recorder writes every line into one reused buffer.
void append_conn_line(std::string& out, const Connection& conn);

// What an event line keeps of the payload it captured. Wire bytes hold query strings, cookies
// and Authorization headers, and traces are uploaded and attached to tickets: by default a line
// names the HTTP messages only (`heads`: method and target without its query, or status).
struct PayloadPolicy {
    bool raw = false;          // also the captured bytes (`payload`): record --raw-payloads
    bool full_target = false;  // targets with their query string: record --full-target
};
std::string event_line(const Event& event, PayloadPolicy policy);
void append_event_line(std::string& out, const Event& event, PayloadPolicy policy);
std::string summary_line(const TraceSummary& summary);

// Appends whole lines to a file descriptor: a reader never sees half a line unless the process
// dies inside write(2). Buffers up to `flush_bytes`, then writes.
class TraceWriter {
public:
    explicit TraceWriter(int fd, std::size_t flush_bytes = 64 * 1024);
    ~TraceWriter();  // flushes, ignoring errors: call flush() first to see them
    TraceWriter(const TraceWriter&) = delete;
    TraceWriter& operator=(const TraceWriter&) = delete;

    void write_line(std::string_view line);  // adds the '\n'; may flush (and throw)
    // conn_line and event_line, written straight into the buffer.
    void write_conn(const Connection& conn);
    void write_event(const Event& event, PayloadPolicy policy);
    // Throws std::system_error with the errno on a write error; what could not be written stays
    // buffered, so a later flush() continues where this one stopped. A file keeps whole lines:
    // the start of a line cut by the error (a full disk) is taken back where the file allows.
    void flush();

private:
    void end_line();  // the '\n' after a line appended to the buffer
    // After a failed write of `written` bytes: truncates the file back to its last whole line
    // and lowers `written` to match, when the file can be truncated.
    void take_back_cut_line(std::size_t& written);

    int fd_;
    std::size_t flush_bytes_;
    std::string buffer_;
};

// Writes all of `data` to `fd`, waiting while a non-blocking descriptor is full. Returns 0, or
// the errno of the write that failed; `written` says how much went out either way.
int write_all(int fd, std::string_view data, std::size_t& written);

// A problem with a trace file: names the file and the 1-based line (0: the file as a whole).
// what() is one line: "trace.jsonl:17: conn.close.how: expected \"fin\", \"rst\" or null".
class TraceError : public std::runtime_error {
public:
    TraceError(const std::string& file, uint64_t line, const std::string& what,
               std::string what_to_do = {});
    const std::string& file() const { return file_; }
    uint64_t line() const { return line_; }
    // What to do where it is not the usual (another trace, or the line removed); else empty.
    const std::string& what_to_do() const { return what_to_do_; }

private:
    std::string what_to_do_;
    std::string file_;
    uint64_t line_;
};

// A file that holds no recording at all: empty, or ended inside its header line (a recorder
// stopped as it began). Among several traces it is left out with a warning: nothing is lost.
class NoRecordingError : public TraceError {
public:
    using TraceError::TraceError;
};

// A trace `event` line, kept as read (its members are informational for analysis). Members that
// do not apply to `kind` keep their defaults.
struct TraceEventLine {
    std::string kind;  // "state" | "reset_sent" | "reset_received" | "message"
    uint64_t ts_ns = 0;
    uint64_t cookie = 0;
    uint32_t netns = 0;
    std::string family;  // "ipv4" | "ipv6"
    Endpoint local;
    Endpoint remote;

    // state
    std::string old_state;  // e.g. "ESTABLISHED"
    std::string new_state;
    Role role = Role::Unknown;

    // reset_sent, reset_received
    std::optional<std::string> rst_reason;
    std::string trigger_flags;            // e.g. "P."
    std::optional<std::string> sk_state;  // nullopt when the kernel had no socket

    // message
    Direction direction = Direction::In;
    bool response = false;  // the kernel's kind (`message`); requests and responses numbered apart
    uint32_t requests_before = 0;
    uint32_t responses_before = 0;
    bool held = false;      // written when the connection began to close

    // reset_* (`payload_len`) and message (`segment_len`): bytes on the wire in that segment
    uint32_t payload_len = 0;
    std::string payload;  // first bytes captured (raw bytes); empty unless --raw-payloads
};

using TraceRecord = std::variant<Connection, TraceEventLine, TraceSummary>;

// Longest line a reader accepts (without its '\n').
inline constexpr std::size_t kMaxTraceLineBytes = 1024 * 1024;

// Streaming, strict reader: constant memory in the number of lines. The header is read by the
// constructor. A malformed line throws TraceError naming the file and line; an unknown schema
// throws; a truncated last line (no '\n', not valid JSON) is skipped with a warning. Blank lines
// are skipped and CRLF line ends are accepted. Unknown members are ignored. Every member a stage
// of closetrace reads is checked (its type, range, enumeration, presence); the members of a conn
// line that none reads (family, owner_from, cgroup_id, cgroup, bytes_in, bytes_out, segs_in,
// segs_out, container.pod_uid, container.ecs) are stepped over, not decoded: a required one must
// still be there, but of its value, as of an unknown member's, only the brackets and strings are
// checked, and a record holds their defaults (docs/trace-format.md).
class TraceReader {
public:
    TraceReader(std::istream& in, std::string file_name);
    ~TraceReader();
    TraceReader(const TraceReader&) = delete;
    TraceReader& operator=(const TraceReader&) = delete;

    const TraceHeader& header() const;
    // The next record after the header; nullptr at the end of the file. The record is the
    // reader's and valid until the next call, which reads the next line into it (reusing the
    // storage of its strings and vectors): a caller keeps what it needs by copying or moving it.
    TraceRecord* next();
    const std::vector<std::string>& warnings() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace closetrace
