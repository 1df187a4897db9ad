// HTTP/1.x message heads from the first bytes of a message (untrusted wire data), and whole
// responses for closetrace's one HTTP client (the ECS agent's, host/container.cpp): the one HTTP
// parser. Pure; heads are parsed without allocating: results point into the caller's buffer and
// never past it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace closetrace::http {

enum class MessageKind : uint8_t {
    Request,   // request line "METHOD TARGET HTTP/1.x"
    Response,  // status line "HTTP/1.x CODE ..."
    Opaque,    // not HTTP/1.x (TLS, binary, a request body): counted by direction only
    // TLS records that cannot carry an HTTP message: alerts (the close_notify each side sends as
    // a TLS connection closes), and TLS 1.3 records too short for one (its alerts and key
    // updates, encrypted). Neither a request nor a response.
    TlsControl,
};

struct Message {
    MessageKind kind = MessageKind::Opaque;
    std::string_view method;   // Request
    std::string_view target;   // Request, as on the wire (query string included)
    std::string_view version;  // "HTTP/1.1"; empty when the line was cut before it
    int status = 0;            // Response; 0 when the line was cut before the code
    bool line_complete = false;  // the whole request/status line lies within the buffer
    // From the header fields that lie whole within the buffer:
    bool connection_close = false;  // "Connection: close"
    bool keep_alive = false;        // "Connection: keep-alive"
    std::string_view user_agent;    // the User-Agent value; empty when not seen
    // "Keep-Alive: timeout=N": how long, in seconds, the sender keeps an idle connection open
    // (a server's announcement: Node, Apache, nginx with keepalive_timeout's second value).
    std::optional<uint32_t> keep_alive_timeout_s;
};

// The message asks for the connection to close after its exchange: "Connection: close", or
// HTTP/1.0 without "Connection: keep-alive".
bool asks_to_close(const Message& message);

// The known health checkers (load balancers, orchestrators) as their User-Agent starts: AWS
// ELB/ALB/NLB, Route 53, Kubernetes, Google Cloud load balancing, Consul, Envoy's active health
// checks. A checker can be kept as its index here.
inline constexpr std::string_view kHealthCheckers[] = {
    "ELB-HealthChecker", "Amazon-Route53-Health-Check-Service", "kube-probe",
    "GoogleHC",          "Consul Health Check",                 "Envoy/HC",
};

// The name of a known health checker (one of kHealthCheckers) that sends requests with this
// User-Agent ("ELB-HealthChecker/2.0" -> "ELB-HealthChecker"); empty for any other.
std::string_view health_checker(std::string_view user_agent);

// At most this many messages are reported from one buffer (pipelined requests).
inline constexpr std::size_t kMaxMessages = 8;

struct ParseResult {
    Message messages[kMaxMessages];
    std::size_t count = 0;  // >= 1 for a non-empty buffer
};

// Parses every message that starts within `bytes`: the first at offset 0, then each further one
// that begins after a complete head ("\r\n\r\n") and the body its Content-Length announces, where
// both lie within the buffer (pipelined requests). A buffer that does not start with an HTTP/1.x
// request or status line yields one Opaque message. Partial lines (a head cut by the capture
// limit) still yield their method/target or status as far as they are complete. HTTP/2's
// connection preface yields one Request "PRI *" with version "HTTP/2.0" (see is_http2_preface).
// Whole TLS records that cannot carry an HTTP message, and nothing else, yield one TlsControl.
ParseResult parse(std::string_view bytes);

// The request HTTP/2 cleartext (h2c) opens a connection with; its frames are not decoded.
bool is_http2_preface(std::string_view method, std::string_view target);

// The target as default output shows it, without what may hold a secret: cut at its query
// string, fragment or path parameters ("/pay?card=1" -> "/pay", "/a;jsessionid=1" -> "/a"), and
// an absolute-form target with credentials ("http://user:password@host/p") reduced to its path,
// an authority-form one ("user:password@host:443", a CONNECT's) to its host and port.
std::string_view public_target(std::string_view target);

// True for 1xx status codes other than 101: an interim response ("100 Continue") that does not
// answer the request by itself.
bool is_interim_status(int status);

// ---- Whole responses, for a client that reads the body too ----

enum class ReadState { Incomplete, Complete, Malformed };

// A response head and how it frames its body.
struct ResponseHead {
    int status = 0;
    std::size_t body_begin = 0;  // just past the empty line that ends the head
    std::optional<std::size_t> content_length{};
    bool chunked = false;  // Transfer-Encoding: chunked
};

// The response head that starts `bytes`, read by the rules parse() reads heads by: Incomplete
// until its empty line has arrived; Malformed when it is no HTTP/1.x status line and header
// fields, or states its Content-Length twice or invalid.
ReadState read_response_head(std::string_view bytes, ResponseHead& head);

// A chunked body (`bytes` from just past the head) into `body`: Incomplete until the last chunk
// and the trailer's end have arrived; Malformed for a bad chunk or one above `max_chunk` bytes.
ReadState decode_chunked(std::string_view bytes, std::string& body, std::size_t max_chunk);

}  // namespace closetrace::http
