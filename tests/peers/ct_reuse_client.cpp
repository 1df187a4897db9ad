// ct_reuse_client: an HTTP/1.1 client that reuses one keep-alive connection after a delay, as a
// load balancer does with its cached upstream connections: the request that meets a server's idle
// close is the close race behind an ALB's 502.
//
// It connects once, sends --count requests on that connection, waiting --delay-ms after each
// response before the next one. It does not look whether the server has closed before it
// reuses the connection (a busy balancer has not processed the FIN yet either). After the last
// request it keeps the connection --hold-ms (waiting for the server to close it), then closes.
// Prints its local port, one line per request, then one for the end of the connection:
//   connected local_port=51234
//   request 1 200 0.41ms fin_before_send=no
//   request 2 reset 0.12ms fin_before_send=yes     (or: closed, timeout, send-error)
//   connection closed-by-peer 500.3ms               (or: closed-by-us)
// Exit: 0 when every request got a response, 1 when one failed, 2 on usage or connect errors.
//
// No dependencies beyond libc and libstdc++: it builds statically for an initramfs with
//   g++ -std=c++20 -O2 -static -Wall -Wextra -Werror -o ct_reuse_client ct_reuse_client.cpp
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <string_view>

#include "peer_common.h"

namespace {

struct Options {
    std::string host = "127.0.0.1";
    uint16_t port = 0;
    int64_t delay_ms = -1;
    int64_t count = 2;
    int64_t hold_ms = 0;
    int64_t timeout_ms = 5000;
    std::string method = "GET";
    std::string target = "/";
    bool reset_on_close = false;
};

constexpr ct_peer::Usage kUsage{
    "ct_reuse_client",
    "ct_reuse_client --host H --port N --delay-ms MS [--count N] [--method M] [--target T] "
    "[--hold-ms MS] [--timeout-ms MS] [--reset]"};

Options parse_options(int argc, char** argv) {
    Options options;
    ct_peer::Arguments args(kUsage, argc, argv);
    while (args.next()) {
        const std::string_view option = args.option();
        if (option == "--host") {
            options.host = std::string(args.value());
            if (options.host == "localhost") options.host = "127.0.0.1";
        } else if (option == "--port") {
            options.port = args.port();
        } else if (option == "--delay-ms") {
            options.delay_ms = args.number();
        } else if (option == "--count") {
            options.count = args.number();
            if (options.count < 1) kUsage.fail("--count must be at least 1");
        } else if (option == "--hold-ms") {
            options.hold_ms = args.number();
        } else if (option == "--timeout-ms") {
            options.timeout_ms = args.number();
        } else if (option == "--method") {
            options.method = std::string(args.value());
        } else if (option == "--target") {
            options.target = std::string(args.value());
        } else if (option == "--reset") {
            options.reset_on_close = true;
        } else {
            args.help_or_unknown();
        }
    }
    if (options.port == 0) kUsage.fail("--port is required");
    if (options.delay_ms < 0) kUsage.fail("--delay-ms is required");
    return options;
}

using ct_peer::now_ns;

double ms_since(int64_t start) { return static_cast<double>(now_ns() - start) / 1e6; }

// Sleeps until an absolute CLOCK_MONOTONIC time, precisely.
void sleep_until(int64_t when_ns) {
    timespec ts{};
    ts.tv_sec = when_ns / 1'000'000'000;
    ts.tv_nsec = when_ns % 1'000'000'000;
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
    }
}

int connect_to(const Options& options) {
    const int fd = socket(ct_peer::address_family(options.host), SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        std::perror("ct_reuse_client: socket");
        std::exit(2);
    }
    sockaddr_storage address{};
    const socklen_t length = ct_peer::numeric_socket_address(options.host, options.port, address);
    if (length == 0) kUsage.fail("--host must be a numeric address (or localhost)");
    const int result = connect(fd, reinterpret_cast<sockaddr*>(&address), length);
    if (result != 0) {
        std::fprintf(stderr, "ct_reuse_client: cannot connect to %s:%u: %s\n",
                     options.host.c_str(), options.port, std::strerror(errno));
        std::exit(2);
    }
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

// Has the peer's FIN (or RST) arrived? Looks without consuming anything.
bool peer_has_closed(int fd) {
    pollfd entry{fd, POLLRDHUP, 0};
    return poll(&entry, 1, 0) == 1 && (entry.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

std::string build_request(const Options& options, int64_t number) {
    std::string body;
    if (options.method == "POST" || options.method == "PUT" || options.method == "PATCH") {
        body = "{\"request\":" + std::to_string(number) + ",\"amount\":42}";
    }
    std::string request = options.method + " " + options.target + " HTTP/1.1\r\nHost: " +
                          options.host + "\r\nUser-Agent: ct_reuse_client\r\n";
    if (!body.empty() || options.method == "POST") {
        request += "Content-Type: application/json\r\nContent-Length: " +
                   std::to_string(body.size()) + "\r\n";
    }
    request += "\r\n" + body;
    return request;
}

// Reads one response; returns its status as text, or the error: reset, closed, timeout.
std::string read_response(int fd, const Options& options) {
    std::string in;
    std::size_t needed = std::string::npos;  // total bytes once the head is known
    std::string status;
    const int64_t deadline = now_ns() + options.timeout_ms * 1'000'000;
    char chunk[16 * 1024];
    for (;;) {
        if (needed != std::string::npos && in.size() >= needed) return status;
        const int64_t left_ms = (deadline - now_ns()) / 1'000'000;
        if (left_ms <= 0) return "timeout";
        pollfd entry{fd, POLLIN, 0};
        const int ready = poll(&entry, 1, static_cast<int>(left_ms));
        if (ready < 0 && errno == EINTR) continue;
        if (ready == 0) return "timeout";
        const ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            if (errno == ECONNRESET || errno == EPIPE) return "reset";
            return std::string("error-") + std::strerror(errno);
        }
        if (n == 0) return "closed";
        in.append(chunk, static_cast<std::size_t>(n));
        if (needed != std::string::npos) continue;
        const std::size_t head_end = in.find("\r\n\r\n");
        if (head_end == std::string::npos) continue;
        // "HTTP/1.1 200 OK"
        if (in.size() < 12 || !in.starts_with("HTTP/1.")) return "bad-response";
        status = in.substr(9, 3);
        std::size_t length = 0;
        std::string_view head(in.data(), head_end);
        for (std::size_t at = head.find("\r\n"); at != std::string_view::npos;) {
            const std::size_t next = head.find("\r\n", at + 2);
            std::string_view line = head.substr(at + 2, next == std::string_view::npos
                                                            ? std::string_view::npos
                                                            : next - at - 2);
            constexpr std::string_view kLength = "content-length:";
            if (line.size() > kLength.size()) {
                std::string lower(line.substr(0, kLength.size()));
                for (char& c : lower) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
                if (lower == kLength) {
                    std::string_view value = line.substr(kLength.size());
                    while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
                    std::from_chars(value.data(), value.data() + value.size(), length);
                }
            }
            at = next;
        }
        needed = head_end + 4 + length;
    }
}

}  // namespace

int main(int argc, char** argv) {
    const Options options = parse_options(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, nullptr, _IOLBF, 0);

    const int fd = connect_to(options);
    sockaddr_storage local{};
    socklen_t local_length = sizeof(local);
    getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_length);
    const uint16_t local_port = ntohs(local.ss_family == AF_INET6
                                          ? reinterpret_cast<sockaddr_in6*>(&local)->sin6_port
                                          : reinterpret_cast<sockaddr_in*>(&local)->sin_port);
    std::printf("connected local_port=%u\n", local_port);
    bool all_ok = true;
    bool connection_dead = false;
    int64_t last_response_ns = now_ns();
    for (int64_t number = 1; number <= options.count; ++number) {
        if (number > 1) sleep_until(last_response_ns + options.delay_ms * 1'000'000);
        const bool fin_before = peer_has_closed(fd);
        const std::string request = build_request(options, number);
        const int64_t start = now_ns();
        std::string result;
        const ssize_t sent = send(fd, request.data(), request.size(), MSG_NOSIGNAL);
        if (sent != static_cast<ssize_t>(request.size())) {
            result = (sent < 0 && (errno == ECONNRESET || errno == EPIPE)) ? "reset" : "send-error";
        } else {
            result = read_response(fd, options);
        }
        last_response_ns = now_ns();
        std::printf("request %lld %s %.2fms fin_before_send=%s\n", static_cast<long long>(number),
                    result.c_str(), ms_since(start), fin_before ? "yes" : "no");
        if (result.size() != 3 || result[0] < '1' || result[0] > '5') {
            all_ok = false;
            connection_dead = true;
            break;  // the connection is gone: nothing more to reuse
        }
    }

    if (!connection_dead) {
        // Keep the connection up to --hold-ms, so that a server's idle close comes first.
        const int64_t hold_start = now_ns();
        bool peer_closed = false;
        while (options.hold_ms > 0) {
            const int64_t left_ms = options.hold_ms - (now_ns() - hold_start) / 1'000'000;
            if (left_ms <= 0) break;
            pollfd entry{fd, POLLIN | POLLRDHUP, 0};
            const int ready = poll(&entry, 1, static_cast<int>(left_ms));
            if (ready < 0 && errno == EINTR) continue;
            if (ready > 0) {
                peer_closed = true;
                break;
            }
        }
        if (peer_closed) {
            std::printf("connection closed-by-peer %.1fms\n", ms_since(hold_start));
        } else {
            std::printf("connection closed-by-us%s\n", options.reset_on_close ? " (reset)" : "");
        }
    }
    if (options.reset_on_close) {
        // close() with SO_LINGER 0: the kernel resets the connection.
        const linger abort_on_close{1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof(abort_on_close));
    }
    close(fd);
    return all_ok ? 0 : 1;
}
