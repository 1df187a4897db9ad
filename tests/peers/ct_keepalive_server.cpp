// ct_keepalive_server: a small HTTP/1.1 keep-alive server for closetrace's tests.
//
// It answers 200 to every request (reading a Content-Length body first) and closes a keep-alive
// connection that has been idle for exactly --idle-timeout-ms, as Node.js (keepAliveTimeout)
// and nginx (keepalive_timeout) do: the idle clock starts when a response has been written and
// nothing of a next request has arrived. One thread, epoll, one timerfd for every deadline, so
// it handles many connections and keeps the timeout to within the scheduler's precision.
//
// No dependencies beyond libc and libstdc++: it builds statically for an initramfs with
//   g++ -std=c++20 -O2 -static -Wall -Wextra -Werror -o ct_keepalive_server ct_keepalive_server.cpp
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>

#include "peer_common.h"

namespace {

constexpr std::size_t kMaxHead = 64 * 1024;

struct Options {
    std::string bind_address = "0.0.0.0";
    uint16_t port = 0;
    int64_t idle_timeout_ms = -1;
    int64_t response_delay_ms = 0;
    // Bytes of an X-Padding field before Connection and Keep-Alive: a head as long as an
    // application's (Node writes its own fields after the application's).
    int64_t header_padding = 0;
    bool verbose = false;
};

constexpr ct_peer::Usage kUsage{
    "ct_keepalive_server",
    "ct_keepalive_server --port N --idle-timeout-ms MS [--response-delay-ms MS] "
    "[--header-padding BYTES] [--bind ADDR] [--verbose]"};

Options parse_options(int argc, char** argv) {
    Options options;
    ct_peer::Arguments args(kUsage, argc, argv);
    while (args.next()) {
        const std::string_view option = args.option();
        if (option == "--port") {
            options.port = args.port();
        } else if (option == "--idle-timeout-ms") {
            options.idle_timeout_ms = args.number();
        } else if (option == "--response-delay-ms") {
            options.response_delay_ms = args.number();
        } else if (option == "--header-padding") {
            options.header_padding = args.number();
        } else if (option == "--bind") {
            options.bind_address = std::string(args.value());
        } else if (option == "--verbose" || option == "-v") {
            options.verbose = true;
        } else {
            args.help_or_unknown();
        }
    }
    if (options.port == 0) kUsage.fail("--port is required");
    if (options.idle_timeout_ms < 0) kUsage.fail("--idle-timeout-ms is required");
    return options;
}

using ct_peer::now_ns;

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        char x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
        if (x != y) return false;
    }
    return true;
}

std::string_view trim(std::string_view text) {
    while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
    while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\r')) {
        text.remove_suffix(1);
    }
    return text;
}

// What a complete request head says about the message and the connection.
struct RequestHead {
    std::size_t head_bytes = 0;
    std::size_t body_bytes = 0;
    bool keep_alive = true;
    std::string request_line;
};

// Parses a request head if the buffer holds a complete one; nullopt while incomplete;
// sets `bad` for a head that is not HTTP/1.x or too large.
std::optional<RequestHead> parse_head(const std::string& buffer, bool& bad) {
    const std::size_t end = buffer.find("\r\n\r\n");
    if (end == std::string::npos) {
        if (buffer.size() > kMaxHead) bad = true;
        return std::nullopt;
    }
    RequestHead head;
    head.head_bytes = end + 4;
    std::string_view text(buffer.data(), end);
    const std::size_t line_end = text.find("\r\n");
    std::string_view line = text.substr(0, line_end);
    head.request_line = std::string(line);
    const std::size_t version_at = line.rfind(' ');
    if (version_at == std::string_view::npos ||
        !line.substr(version_at + 1).starts_with("HTTP/1.")) {
        bad = true;
        return std::nullopt;
    }
    head.keep_alive = line.substr(version_at + 1) != "HTTP/1.0";
    std::string_view rest = line_end == std::string_view::npos ? "" : text.substr(line_end + 2);
    while (!rest.empty()) {
        const std::size_t next = rest.find("\r\n");
        std::string_view header = rest.substr(0, next);
        rest = next == std::string_view::npos ? "" : rest.substr(next + 2);
        const std::size_t colon = header.find(':');
        if (colon == std::string_view::npos) continue;
        const std::string_view name = trim(header.substr(0, colon));
        const std::string_view value = trim(header.substr(colon + 1));
        if (iequals(name, "content-length")) {
            std::size_t length = 0;
            auto [p, error] = std::from_chars(value.data(), value.data() + value.size(), length);
            if (error != std::errc() || p != value.data() + value.size()) {
                bad = true;
                return std::nullopt;
            }
            head.body_bytes = length;
        } else if (iequals(name, "connection")) {
            if (iequals(value, "close")) head.keep_alive = false;
            if (iequals(value, "keep-alive")) head.keep_alive = true;
        } else if (iequals(name, "transfer-encoding")) {
            bad = true;  // chunked request bodies are not needed by the tests
            return std::nullopt;
        }
    }
    return head;
}

enum class Phase {
    Idle,        // waiting for (the rest of) a request; the idle timer runs only with no bytes
    Delaying,    // a complete request waits for --response-delay-ms
    Writing,     // a response is being written
};

struct Connection {
    int fd = -1;
    std::string peer;
    std::string in;
    std::string out;
    std::size_t out_sent = 0;
    Phase phase = Phase::Idle;
    bool close_after_response = false;
    bool peer_closed = false;
    int64_t deadline_ns = 0;  // 0 = none
    uint64_t requests = 0;
};

class Server {
public:
    explicit Server(const Options& options) : options_(options) {}

    int run() {
        if (!listen_socket()) return 1;
        epoll_ = epoll_create1(EPOLL_CLOEXEC);
        timer_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (epoll_ < 0 || timer_ < 0) {
            std::perror("ct_keepalive_server: epoll/timerfd");
            return 1;
        }
        add(listener_, EPOLLIN);
        add(timer_, EPOLLIN);
        std::printf("listening on %s:%u idle-timeout-ms %lld response-delay-ms %lld\n",
                    options_.bind_address.c_str(), options_.port,
                    static_cast<long long>(options_.idle_timeout_ms),
                    static_cast<long long>(options_.response_delay_ms));
        std::fflush(stdout);

        epoll_event ready[64];
        for (;;) {
            const int n = epoll_wait(epoll_, ready, 64, -1);
            if (n < 0) {
                if (errno == EINTR) continue;
                std::perror("ct_keepalive_server: epoll_wait");
                return 1;
            }
            for (int i = 0; i < n; ++i) {
                const int fd = ready[i].data.fd;
                if (fd == listener_) {
                    accept_all();
                } else if (fd == timer_) {
                    uint64_t expirations = 0;
                    while (read(timer_, &expirations, sizeof(expirations)) > 0) {
                    }
                } else {
                    on_socket(fd, ready[i].events);
                }
            }
            run_deadlines();
        }
    }

private:
    bool listen_socket() {
        listener_ = socket(ct_peer::address_family(options_.bind_address),
                           SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (listener_ < 0) {
            std::perror("ct_keepalive_server: socket");
            return false;
        }
        const int one = 1;
        setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        sockaddr_storage address{};
        const socklen_t length =
            ct_peer::numeric_socket_address(options_.bind_address, options_.port, address);
        if (length == 0) kUsage.fail("--bind is not a numeric address");
        const int result = bind(listener_, reinterpret_cast<sockaddr*>(&address), length);
        if (result != 0 || listen(listener_, 1024) != 0) {
            std::fprintf(stderr, "ct_keepalive_server: cannot listen on %s:%u: %s\n",
                         options_.bind_address.c_str(), options_.port, std::strerror(errno));
            return false;
        }
        return true;
    }

    void add(int fd, uint32_t events) {
        epoll_event event{};
        event.events = events;
        event.data.fd = fd;
        epoll_ctl(epoll_, EPOLL_CTL_ADD, fd, &event);
    }

    // Level-triggered interest: input until the peer's FIN, output while a write is blocked.
    void update_interest(const Connection& conn, bool want_output) {
        epoll_event event{};
        event.events = (conn.peer_closed ? 0u : EPOLLIN | EPOLLRDHUP) |
                       (want_output ? EPOLLOUT : 0u);
        event.data.fd = conn.fd;
        epoll_ctl(epoll_, EPOLL_CTL_MOD, conn.fd, &event);
    }

    void log(const Connection& conn, const char* what) {
        if (!options_.verbose) return;
        std::printf("%.3f %s %s\n", static_cast<double>(now_ns()) / 1e9, conn.peer.c_str(), what);
        std::fflush(stdout);
    }

    void accept_all() {
        for (;;) {
            sockaddr_storage address{};
            socklen_t length = sizeof(address);
            const int fd = accept4(listener_, reinterpret_cast<sockaddr*>(&address), &length,
                                   SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EINTR || errno == ECONNABORTED) continue;
                if (errno != EAGAIN && errno != EWOULDBLOCK) {
                    std::perror("ct_keepalive_server: accept");
                }
                return;
            }
            const int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            Connection& conn = connections_[fd];
            conn.fd = fd;
            conn.peer = describe(address);
            add(fd, EPOLLIN | EPOLLRDHUP);
            log(conn, "accepted");
            // A connection that never sends a request is idle from the start, as in Node.js.
            set_deadline(conn, now_ns() + options_.idle_timeout_ms * 1'000'000);
        }
    }

    static std::string describe(const sockaddr_storage& address) {
        char text[INET6_ADDRSTRLEN] = "?";
        uint16_t port = 0;
        if (address.ss_family == AF_INET) {
            const auto* v4 = reinterpret_cast<const sockaddr_in*>(&address);
            inet_ntop(AF_INET, &v4->sin_addr, text, sizeof(text));
            port = ntohs(v4->sin_port);
        } else if (address.ss_family == AF_INET6) {
            const auto* v6 = reinterpret_cast<const sockaddr_in6*>(&address);
            inet_ntop(AF_INET6, &v6->sin6_addr, text, sizeof(text));
            port = ntohs(v6->sin6_port);
        }
        return std::string(text) + ":" + std::to_string(port);
    }

    void set_deadline(Connection& conn, int64_t deadline) {
        if (conn.deadline_ns) deadlines_.erase({conn.deadline_ns, conn.fd});
        conn.deadline_ns = deadline;
        if (deadline) deadlines_.insert({deadline, conn.fd});
        arm_timer();
    }

    void arm_timer() {
        itimerspec spec{};
        if (!deadlines_.empty()) {
            const int64_t when = std::max<int64_t>(deadlines_.begin()->first, 1);
            spec.it_value.tv_sec = when / 1'000'000'000;
            spec.it_value.tv_nsec = when % 1'000'000'000;
        }
        timerfd_settime(timer_, TFD_TIMER_ABSTIME, &spec, nullptr);
    }

    void run_deadlines() {
        const int64_t now = now_ns();
        while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
            const int fd = deadlines_.begin()->second;
            deadlines_.erase(deadlines_.begin());
            auto it = connections_.find(fd);
            if (it == connections_.end()) continue;
            Connection& conn = it->second;
            conn.deadline_ns = 0;
            if (conn.phase == Phase::Delaying) {
                respond(conn);
            } else if (conn.phase == Phase::Idle && conn.in.empty()) {
                log(conn, "idle timeout: closing");
                close_connection(fd);
            }
        }
        arm_timer();
    }

    void close_connection(int fd) {
        auto it = connections_.find(fd);
        if (it == connections_.end()) return;
        if (it->second.deadline_ns) deadlines_.erase({it->second.deadline_ns, fd});
        epoll_ctl(epoll_, EPOLL_CTL_DEL, fd, nullptr);
        close(fd);
        connections_.erase(it);
    }

    void on_socket(int fd, uint32_t events) {
        auto it = connections_.find(fd);
        if (it == connections_.end()) return;
        Connection& conn = it->second;
        if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
            if (!read_input(conn)) {
                close_connection(fd);
                return;
            }
        }
        if ((events & EPOLLOUT) && conn.phase == Phase::Writing) {
            if (!write_output(conn)) {
                close_connection(fd);
                return;
            }
        }
        if (!advance(conn)) close_connection(fd);
    }

    // Reads what is there; false when the connection is to be closed (error, or the peer
    // closed with nothing left to answer).
    bool read_input(Connection& conn) {
        char chunk[16 * 1024];
        for (;;) {
            const ssize_t n = read(conn.fd, chunk, sizeof(chunk));
            if (n > 0) {
                if (conn.phase == Phase::Idle && conn.in.empty()) {
                    set_deadline(conn, 0);  // a request is arriving: no longer idle
                }
                conn.in.append(chunk, static_cast<std::size_t>(n));
                continue;
            }
            if (n == 0) {
                conn.peer_closed = true;
                log(conn, "peer closed");
                break;
            }
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            log(conn, "read error");
            return false;
        }
        if (conn.peer_closed) {
            // Like Node.js: a half-closed client still gets the answer it is waiting for.
            update_interest(conn, conn.phase == Phase::Writing);
            return conn.phase != Phase::Idle || !conn.in.empty();
        }
        return true;
    }

    bool write_output(Connection& conn) {
        while (conn.out_sent < conn.out.size()) {
            const ssize_t n = send(conn.fd, conn.out.data() + conn.out_sent,
                                   conn.out.size() - conn.out_sent, MSG_NOSIGNAL);
            if (n > 0) {
                conn.out_sent += static_cast<std::size_t>(n);
                continue;
            }
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                update_interest(conn, true);
                return true;
            }
            log(conn, "write error");
            return false;
        }
        // Response written: idle again (or closing).
        conn.out.clear();
        conn.out_sent = 0;
        conn.phase = Phase::Idle;
        if (conn.close_after_response || conn.peer_closed) {
            log(conn, "closing after response");
            return false;
        }
        update_interest(conn, false);
        return true;
    }

    // Moves a connection forward: a complete request starts its (delayed) response; a
    // connection idle with nothing buffered gets its idle deadline. False = close it.
    bool advance(Connection& conn) {
        if (conn.phase != Phase::Idle) return true;
        bool bad = false;
        std::optional<RequestHead> head = parse_head(conn.in, bad);
        if (bad) {
            static constexpr std::string_view kBad =
                "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            conn.out.assign(kBad);
            conn.close_after_response = true;
            conn.phase = Phase::Writing;
            conn.in.clear();
            return write_output(conn);
        }
        if (!head) {
            if (conn.peer_closed) return false;
            if (conn.in.empty() && conn.deadline_ns == 0) {
                set_deadline(conn, now_ns() + options_.idle_timeout_ms * 1'000'000);
            }
            return true;
        }
        if (conn.in.size() < head->head_bytes + head->body_bytes) {
            return !conn.peer_closed;  // body still arriving
        }
        conn.in.erase(0, head->head_bytes + head->body_bytes);
        ++conn.requests;
        if (!head->keep_alive) conn.close_after_response = true;
        if (options_.verbose) log(conn, head->request_line.c_str());
        if (options_.response_delay_ms > 0) {
            conn.phase = Phase::Delaying;
            set_deadline(conn, now_ns() + options_.response_delay_ms * 1'000'000);
            return true;
        }
        return respond(conn);
    }

    bool respond(Connection& conn) {
        static constexpr std::string_view kBody = "ok\n";
        conn.out = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " +
                   std::to_string(kBody.size()) + "\r\n";
        if (options_.header_padding > 0) {
            conn.out += "X-Padding: " +
                        std::string(static_cast<std::size_t>(options_.header_padding), 'p') +
                        "\r\n";
        }
        if (conn.close_after_response) {
            conn.out += "Connection: close\r\n";
        } else {
            conn.out += "Connection: keep-alive\r\nKeep-Alive: timeout=" +
                        std::to_string(options_.idle_timeout_ms / 1000) + "\r\n";
        }
        conn.out += "\r\n";
        conn.out += kBody;
        conn.out_sent = 0;
        conn.phase = Phase::Writing;
        if (!write_output(conn)) {
            close_connection(conn.fd);
            return false;
        }
        // Pipelined requests already buffered are answered in order.
        if (conn.phase == Phase::Idle && !conn.in.empty()) return advance(conn);
        if (conn.phase == Phase::Idle) {
            set_deadline(conn, now_ns() + options_.idle_timeout_ms * 1'000'000);
        }
        return true;
    }

    Options options_;
    int listener_ = -1;
    int epoll_ = -1;
    int timer_ = -1;
    std::map<int, Connection> connections_;
    std::set<std::pair<int64_t, int>> deadlines_;
};

}  // namespace

int main(int argc, char** argv) {
    const Options options = parse_options(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    Server server(options);
    return server.run();
}
