#include "closetrace/recording_metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <optional>
#include <string_view>

#include <fmt/format.h>

#include "closetrace/container_ref.h"
#include "closetrace/text.h"

namespace closetrace {
namespace {

// Idle times at closes (seconds): around the keep-alive timeouts in common use (Node.js 5 s + its
// 1 s buffer, Gunicorn 2 s, Apache 5 s, an ALB's default 60 s, nginx 75 s, an AWS NAT gateway's
// 350 s), so that a timeout below the balancer's shows in the buckets.
const prometheus::Histogram::BucketBoundaries kIdleBuckets{
    0.1, 0.5, 1, 2, 3, 5, 6, 10, 15, 30, 60, 65, 75, 120, 350, 600, 3600};

// ADDR:PORT with a numeric IPv4 address: what civetweb is given (Debian's is built without
// IPv6, and it would read suffixes like "9478s" or lists as other kinds of listening ports).
struct ListenAddress {
    in_addr host{};
    uint16_t port = 0;
};

std::optional<ListenAddress> parse_listen_address(const std::string& text) {
    const std::size_t colon = text.rfind(':');
    if (colon == std::string::npos) return std::nullopt;
    ListenAddress address;
    if (inet_pton(AF_INET, text.substr(0, colon).c_str(), &address.host) != 1) return std::nullopt;
    const char* port_end = text.data() + text.size();
    unsigned port = 0;
    const auto [end, error] = std::from_chars(text.data() + colon + 1, port_end, port);
    if (error != std::errc() || end != port_end || port == 0 || port > 65535) return std::nullopt;
    address.port = static_cast<uint16_t>(port);
    return address;
}

// Why ADDRESS cannot be listened on, as bind(2) tells it (civetweb only says that it failed).
std::string bind_failure(const ListenAddress& address) {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return std::strerror(errno);
    sockaddr_in socket_address{};
    socket_address.sin_family = AF_INET;
    socket_address.sin_port = htons(address.port);
    socket_address.sin_addr = address.host;
    std::string reason = "the HTTP server did not start";
    if (bind(fd, reinterpret_cast<sockaddr*>(&socket_address), sizeof(socket_address)) != 0) {
        reason = std::strerror(errno);
    }
    close(fd);
    return reason;
}

// Waits until the server has answered one request (at most 5 s): civetweb's worker thread
// ignores SIGPIPE process-wide when it starts, which may come after mg_start has returned, so
// the disposition can only be put back once it has surely run.
void await_first_answer(const ListenAddress& address) {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return;
    const timeval timeout{.tv_sec = 5, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
    sockaddr_in server{};
    server.sin_family = AF_INET;
    server.sin_port = htons(address.port);
    // A wildcard listener is reached on loopback.
    server.sin_addr.s_addr =
        address.host.s_addr == htonl(INADDR_ANY) ? htonl(INADDR_LOOPBACK) : address.host.s_addr;
    constexpr std::string_view kRequest = "GET / HTTP/1.0\r\n\r\n";
    char answer[64];
    if (connect(fd, reinterpret_cast<sockaddr*>(&server), sizeof(server)) == 0 &&
        send(fd, kRequest.data(), kRequest.size(), MSG_NOSIGNAL) ==
            static_cast<ssize_t>(kRequest.size())) {
        (void)recv(fd, answer, sizeof(answer), 0);
    }
    close(fd);
}

prometheus::Labels with(prometheus::Labels labels, const std::string& name,
                        const std::string& value) {
    labels.emplace(name, value);
    return labels;
}

}  // namespace

prometheus::Labels connection_labels(const Connection& conn,
                                     std::span<const uint16_t> service_ports) {
    // The server side's port: a backend's own, a proxy's upstream's. Of a connection found open
    // that nothing tells about, the lower port, since the client's is the ephemeral one.
    const std::optional<bool> serves = serves_here(conn, service_ports);
    const uint16_t server_port = !serves ? std::min(conn.local.port, conn.remote.port)
                                 : *serves ? conn.local.port
                                           : conn.remote.port;
    return {{"server_port", std::to_string(server_port)},
            {"comm", printable(conn.comm.value_or(""))},
            {"container", printable(container_label(conn.container))},
            {"role", to_string(conn.role)}};
}

RecordingMetrics::RecordingMetrics(std::vector<uint16_t> service_ports)
    : service_ports_(std::move(service_ports)),
      registry_(std::make_shared<prometheus::Registry>()),
      closes_(prometheus::BuildCounter()
                  .Name("closetrace_closes_total")
                  .Help("Connections closed, by verdict and close cause (incomplete ones apart)")
                  .Register(*registry_)),
      races_(prometheus::BuildCounter()
                 .Name("closetrace_close_races_total")
                 .Help("Close races: a request arrived on (or was left unread in) a connection "
                       "its closer had just closed idle; closer local is the load balancer's 502")
                 .Register(*registry_)),
      inflight_losses_(prometheus::BuildCounter()
                           .Name("closetrace_inflight_losses_total")
                           .Help("Connections closed or reset with a request unanswered, by the "
                                 "side that closed")
                           .Register(*registry_)),
      caught_requests_(prometheus::BuildCounter()
                           .Name("closetrace_caught_requests_total")
                           .Help("Requests caught in a close: a race's late or unread ones, an "
                                 "in-flight close's unanswered ones")
                           .Register(*registry_)),
      requests_(prometheus::BuildCounter()
                    .Name("closetrace_requests_total")
                    .Help("Requests on the connections written, counted at their close")
                    .Register(*registry_)),
      incomplete_(prometheus::BuildCounter()
                      .Name("closetrace_incomplete_connections_total")
                      .Help("Connections open while the kernel lost events (their verdicts may "
                            "be wrong: not counted elsewhere)")
                      .Register(*registry_)),
      idle_seconds_(prometheus::BuildHistogram()
                        .Name("closetrace_idle_before_close_seconds")
                        .Help("Idle time before an idle-timer close (or a race), by the side "
                              "that closed")
                        .Register(*registry_)),
      idle_timeout_(prometheus::BuildGauge()
                        .Name("closetrace_idle_timeout_seconds")
                        .Help("The idle timeout a side's idle-timer closes show: the longest "
                              "idle of their densest cluster")
                        .Register(*registry_)),
      outlasting_peers_(prometheus::BuildGauge()
                            .Name("closetrace_outlasting_peers")
                            .Help("Peer addresses whose idle connections this host closed on its "
                                  "idle timer and which never closed one themselves: they keep "
                                  "idle connections longer than this host (a load balancer)")
                            .Register(*registry_)),
      lost_events_(prometheus::BuildCounter()
                       .Name("closetrace_lost_events_total")
                       .Help("Kernel events lost (ring buffer full) or not decodable")
                       .Register(*registry_)
                       .Add({})) {}

RecordingMetrics::Series& RecordingMetrics::series_of(const Connection& conn) {
    prometheus::Labels labels = connection_labels(conn, service_ports_);
    auto found = series_.find(labels);
    if (found != series_.end()) return found->second;
    Series& series = series_[labels];
    series.labels = labels;
    series.requests = &requests_.Add(labels);
    // At zero from the first connection of these labels on, so that increase() sees the first
    // race (a series born at 1 has no increase).
    for (const Side side : {kLocal, kPeer}) {
        series.races[side] = &races_.Add(with(labels, "closer", kSideNames[side]));
        series.inflight_losses[side] = &inflight_losses_.Add(with(labels, "closer", kSideNames[side]));
    }
    return series;
}

void RecordingMetrics::add(const Connection& conn) {
    Series& series = series_of(conn);
    if (conn.incomplete) {
        if (!series.incomplete) series.incomplete = &incomplete_.Add(series.labels);
        series.incomplete->Increment();
        return;
    }
    series.requests->Increment(static_cast<double>(conn.request_count()));
    if (conn.verdict == Verdict::Open) return;
    const auto verdict = static_cast<std::size_t>(conn.verdict);
    prometheus::Counter*& closes = series.closes[verdict][static_cast<std::size_t>(conn.close.cause)];
    if (!closes) {
        closes = &closes_.Add(with(with(series.labels, "verdict", to_string(conn.verdict)), "cause",
                                   to_string(conn.close.cause)));
    }
    closes->Increment();
    switch (conn.verdict) {
        case Verdict::LocalCloseRace: series.races[kLocal]->Increment(); break;
        case Verdict::PeerCloseRace: series.races[kPeer]->Increment(); break;
        case Verdict::LocalResetInflight: series.inflight_losses[kLocal]->Increment(); break;
        case Verdict::PeerCloseInflight: series.inflight_losses[kPeer]->Increment(); break;
        default: break;
    }
    if (catches_a_request(conn.verdict)) {
        const auto caught = std::ranges::count_if(conn.requests, [&](const Request& request) {
            return is_caught(conn.verdict, request.outcome);
        });
        prometheus::Counter*& counter = series.caught_requests[verdict];
        if (!counter) {
            counter = &caught_requests_.Add(with(series.labels, "verdict", to_string(conn.verdict)));
        }
        counter->Increment(static_cast<double>(caught));
    }
    count_idle_close(series, conn);
}

void RecordingMetrics::count_idle_close(Series& series, const Connection& conn) {
    Side side = kLocal;
    switch (conn.verdict) {
        case Verdict::LocalIdleClose:
        case Verdict::LocalCloseRace: side = kLocal; break;
        case Verdict::PeerIdleClose:
        case Verdict::PeerCloseRace: side = kPeer; break;
        default: return;
    }
    const std::optional<double> idle_ms = timer_idle_ms(conn);
    if (!idle_ms) return;
    if (!series.idle_seconds[side]) {
        series.idle_seconds[side] =
            &idle_seconds_.Add(with(series.labels, "closer", kSideNames[side]), kIdleBuckets);
    }
    series.idle_seconds[side]->Observe(*idle_ms / 1000);
    IdleTimerGeneration& closes = series.generations[0];
    closes.idle_ms[side].add(*idle_ms);
    // The server side's, as report's peer timeout weighs them (resolve_peer_timeout).
    if (conn.role != Role::Client) {
        count_peer_idle_close(closes, std::string(plain_address(conn.remote.addr)), side,
                              *idle_ms);
    }
    series.closes_changed = true;
}

void RecordingMetrics::count_peer_idle_close(IdleTimerGeneration& closes, const std::string& peer,
                                             Side side, double idle_ms) {
    auto found = closes.by_peer.find(peer);
    if (found == closes.by_peer.end()) {
        if (closes.by_peer.size() == kMaxPeersPerSeries) return;
        found = closes.by_peer.emplace(peer, IdleTimerCloses{}).first;
    }
    if (side == kLocal) {
        found->second.count_local(idle_ms);
    } else {
        found->second.count_peer();
    }
}

void RecordingMetrics::refresh(uint64_t lost_events, std::chrono::steady_clock::time_point now) {
    if (lost_events > lost_events_counted_) {
        lost_events_.Increment(static_cast<double>(lost_events - lost_events_counted_));
        lost_events_counted_ = lost_events;
    }
    if (!generation_start_) generation_start_ = now;
    const bool new_generation = now - *generation_start_ >= kGeneration;
    if (new_generation) generation_start_ = now;
    // Finding a timeout sorts up to two generations of idle times: at most once a second.
    if (!new_generation && published_at_ && now - *published_at_ < kPublishEvery) return;
    published_at_ = now;
    for (auto& [labels, series] : series_) {
        if (new_generation) {
            series.generations[1] = std::move(series.generations[0]);
            series.generations[0] = {};
            series.closes_changed = true;
        }
        if (!series.closes_changed) continue;
        series.closes_changed = false;
        publish_gauges(series);
    }
}

// A gauge set from the closes of both generations, or removed where they hold none.
void RecordingMetrics::publish_gauges(Series& series) {
    const auto& [current, previous] = series.generations;
    const auto publish = [](prometheus::Family<prometheus::Gauge>& family,
                            prometheus::Gauge*& gauge, const prometheus::Labels& labels,
                            std::optional<double> value) {
        if (value) {
            if (!gauge) gauge = &family.Add(labels);
            gauge->Set(*value);
        } else if (gauge) {
            family.Remove(gauge);
            gauge = nullptr;
        }
    };
    for (const Side side : {kLocal, kPeer}) {
        IdleHistogram idle_ms = previous.idle_ms[side];
        idle_ms.add(current.idle_ms[side]);
        const auto cluster = idle_ms.densest_cluster();
        publish(idle_timeout_, series.idle_timeout[side],
                with(series.labels, "side", kSideNames[side]),
                cluster ? std::optional(cluster->max_ms / 1000) : std::nullopt);
    }
    // Each peer's closes of both generations.
    std::size_t outlasting = 0;
    for (const auto& [peer, closes] : current.by_peer) {
        IdleTimerCloses both = closes;
        if (const auto before = previous.by_peer.find(peer); before != previous.by_peer.end()) {
            both += before->second;
        }
        if (both.outlasting()) ++outlasting;
    }
    for (const auto& [peer, closes] : previous.by_peer) {
        if (!current.by_peer.contains(peer) && closes.outlasting()) ++outlasting;
    }
    const bool any_peer = !current.by_peer.empty() || !previous.by_peer.empty();
    publish(outlasting_peers_, series.outlasting_peers, series.labels,
            any_peer ? std::optional(static_cast<double>(outlasting)) : std::nullopt);
}

void RecordingMetrics::serve(const std::string& address) {
    const std::optional<ListenAddress> listen = parse_listen_address(address);
    if (!listen) {
        throw MetricsError(fmt::format(
            "--metrics {}: not ADDR:PORT; give a numeric IPv4 address and a port, e.g. "
            "127.0.0.1:9478 or 0.0.0.0:9478",
            address));
    }
    // Serving leaves the process's signals as they were: civetweb ignores SIGPIPE process-wide
    // (its disposition is put back once its worker has started), and its threads start with
    // every signal blocked, so that a stop signal reaches the recorder's own thread and a
    // scraper that hangs up (EPIPE in a civetweb thread) is no SIGPIPE to the recorder.
    struct sigaction pipe_action{};
    sigaction(SIGPIPE, nullptr, &pipe_action);
    sigset_t all_signals, previous_mask;
    sigfillset(&all_signals);
    pthread_sigmask(SIG_SETMASK, &all_signals, &previous_mask);
    std::string failure;
    try {
        exposer_ = std::make_unique<prometheus::Exposer>(address, 1);
        await_first_answer(*listen);
    } catch (const std::exception&) {
        failure = bind_failure(*listen);
    }
    pthread_sigmask(SIG_SETMASK, &previous_mask, nullptr);
    sigaction(SIGPIPE, &pipe_action, nullptr);
    if (!exposer_) {
        throw MetricsError(fmt::format(
            "--metrics {}: cannot listen: {}; give another address or port", address, failure));
    }
    exposer_->RegisterCollectable(registry_);
}

}  // namespace closetrace
