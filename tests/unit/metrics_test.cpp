#include "closetrace/recording_metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace closetrace {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr uint64_t kMs = 1'000'000;
constexpr uint64_t kStartNs = 1'000'000'000'000;
const std::chrono::steady_clock::time_point kT0{std::chrono::hours(1)};

// A server-side connection of node on port 8080: one completed request, then the close its
// verdict names after `idle_ms` (a race's late request after the FIN, an in-flight close's
// request unanswered).
Connection make_conn(Verdict verdict, double idle_ms = 2000, CloseCause cause = CloseCause::IdleTimer) {
    Connection conn;
    conn.local = {"10.0.0.2", 8080};
    conn.remote = {"10.0.0.1", 40000};
    conn.role = Role::Server;
    conn.comm = "node";
    conn.verdict = verdict;
    conn.requests.push_back({.method = "GET",
                             .target = "/a",
                             .status = 200,
                             .request_ns = kStartNs,
                             .response_ns = kStartNs + kMs,
                             .outcome = Outcome::Completed});
    const uint64_t close_ns = kStartNs + kMs + static_cast<uint64_t>(idle_ms * 1e6);
    conn.close.idle_ms = idle_ms;
    conn.close.how = CloseHow::Fin;
    conn.close.cause = cause;
    const bool local = verdict == Verdict::LocalIdleClose || verdict == Verdict::LocalCloseRace ||
                       verdict == Verdict::LocalResetInflight;
    conn.close.initiator = local ? Initiator::Local : Initiator::Peer;
    (local ? conn.close.local_fin_ns : conn.close.peer_fin_ns) = close_ns;
    if (verdict == Verdict::LocalCloseRace) {
        conn.requests.push_back({.method = "POST",
                                 .target = "/pay",
                                 .request_ns = close_ns + kMs / 2,
                                 .outcome = Outcome::AfterLocalClose});
    }
    if (verdict == Verdict::LocalResetInflight || verdict == Verdict::PeerCloseInflight) {
        conn.requests.push_back({.method = "GET",
                                 .target = "/slow",
                                 .request_ns = close_ns - 1500 * kMs,
                                 .outcome = Outcome::UnansweredAtClose});
    }
    return conn;
}

// The value of the series of `family` whose labels include `labels`; nullopt when none has them.
std::optional<double> value_of(const RecordingMetrics& metrics, const std::string& family,
                               const prometheus::Labels& labels) {
    for (const prometheus::MetricFamily& collected : metrics.collect()) {
        if (collected.name != family) continue;
        for (const prometheus::ClientMetric& metric : collected.metric) {
            bool matches = true;
            for (const auto& [name, value] : labels) {
                matches = matches && std::ranges::count(metric.label,
                                                        prometheus::ClientMetric::Label{name, value}) > 0;
            }
            if (!matches) continue;
            switch (collected.type) {
                case prometheus::MetricType::Counter: return metric.counter.value;
                case prometheus::MetricType::Gauge: return metric.gauge.value;
                case prometheus::MetricType::Histogram:
                    return static_cast<double>(metric.histogram.sample_count);
                default: return std::nullopt;
            }
        }
    }
    return std::nullopt;
}

TEST(RecordingMetrics, CountsClosesByVerdictAndCauseAndTheRacesAmongThem) {
    RecordingMetrics metrics;
    for (int i = 0; i < 3; ++i) metrics.add(make_conn(Verdict::LocalIdleClose));
    metrics.add(make_conn(Verdict::LocalCloseRace));
    metrics.add(make_conn(Verdict::PeerIdleClose, 50, CloseCause::ConnectionClose));

    EXPECT_EQ(value_of(metrics, "closetrace_closes_total",
                       {{"verdict", "local_idle_close"}, {"cause", "idle_timer"}}),
              3);
    EXPECT_EQ(value_of(metrics, "closetrace_closes_total",
                       {{"verdict", "peer_idle_close"}, {"cause", "connection_close"}}),
              1);
    EXPECT_EQ(value_of(metrics, "closetrace_close_races_total", {{"closer", "local"}}), 1);
    // There from the first connection on, at zero: increase() sees a first race.
    EXPECT_EQ(value_of(metrics, "closetrace_close_races_total", {{"closer", "peer"}}), 0);
    EXPECT_EQ(value_of(metrics, "closetrace_caught_requests_total",
                       {{"verdict", "local_close_race"}}),
              1);
    EXPECT_EQ(value_of(metrics, "closetrace_requests_total", {{"server_port", "8080"}}), 6);
}

TEST(RecordingMetrics, InflightLossesCountTheirCaughtRequests) {
    RecordingMetrics metrics;
    metrics.add(make_conn(Verdict::LocalResetInflight, 10, CloseCause::InFlight));
    Connection gave_up = make_conn(Verdict::PeerCloseInflight, 10, CloseCause::InFlight);
    gave_up.requests.push_back({.method = "GET",
                                .target = "/slow2",
                                .request_ns = kStartNs + 2 * kMs,
                                .outcome = Outcome::UnansweredAtClose});
    metrics.add(gave_up);

    EXPECT_EQ(value_of(metrics, "closetrace_inflight_losses_total", {{"closer", "local"}}), 1);
    EXPECT_EQ(value_of(metrics, "closetrace_inflight_losses_total", {{"closer", "peer"}}), 1);
    EXPECT_EQ(value_of(metrics, "closetrace_caught_requests_total",
                       {{"verdict", "peer_close_inflight"}}),
              2);
    EXPECT_EQ(value_of(metrics, "closetrace_close_races_total", {{"closer", "local"}}), 0);
}

TEST(RecordingMetrics, IncompleteAndOpenConnectionsAreNoCloses) {
    RecordingMetrics metrics;
    Connection incomplete = make_conn(Verdict::LocalCloseRace);
    incomplete.incomplete = true;
    metrics.add(incomplete);
    Connection open = make_conn(Verdict::Open);
    metrics.add(open);

    EXPECT_EQ(value_of(metrics, "closetrace_incomplete_connections_total", {}), 1);
    EXPECT_EQ(value_of(metrics, "closetrace_close_races_total", {{"closer", "local"}}), 0);
    EXPECT_EQ(value_of(metrics, "closetrace_closes_total", {}), std::nullopt);
    EXPECT_EQ(value_of(metrics, "closetrace_requests_total", {}), 1);
}

TEST(RecordingMetrics, IdleTimeoutIsTheDensestClusterOfTimerClosesAfterRefresh) {
    RecordingMetrics metrics;
    for (const double idle_ms : {2000.0, 2003.0, 2010.0, 2006.0, 450.0}) {
        metrics.add(make_conn(Verdict::LocalIdleClose, idle_ms));
    }
    // Neither a health check's close nor one asked for tells a timer.
    Connection health_check = make_conn(Verdict::LocalIdleClose, 100);
    health_check.health_check = "ELB-HealthChecker/2.0";
    metrics.add(health_check);
    metrics.add(make_conn(Verdict::LocalIdleClose, 120, CloseCause::ConnectionClose));
    metrics.add(make_conn(Verdict::PeerIdleClose, 3001));

    EXPECT_EQ(value_of(metrics, "closetrace_idle_timeout_seconds", {}), std::nullopt);
    metrics.refresh(0, kT0);
    EXPECT_DOUBLE_EQ(*value_of(metrics, "closetrace_idle_timeout_seconds", {{"side", "local"}}),
                     2.010);
    EXPECT_DOUBLE_EQ(*value_of(metrics, "closetrace_idle_timeout_seconds", {{"side", "peer"}}),
                     3.001);
    EXPECT_EQ(value_of(metrics, "closetrace_idle_before_close_seconds", {{"closer", "local"}}), 5);
    EXPECT_EQ(value_of(metrics, "closetrace_idle_before_close_seconds", {{"closer", "peer"}}), 1);
}

// A balancer this host closes on (10.0.0.1, 10.0.0.3) behind internal clients that close
// first (10.0.0.9): the peer side's timer is the clients', the balancer's addresses outlast it.
TEST(RecordingMetrics, OutlastingPeersCountTheAddressesThatNeverClosedAnIdleOne) {
    RecordingMetrics metrics;
    const auto from = [](std::string addr, Connection conn) {
        conn.remote.addr = std::move(addr);
        return conn;
    };
    metrics.add(from("10.0.0.1", make_conn(Verdict::LocalIdleClose, 2000)));
    metrics.add(from("10.0.0.3", make_conn(Verdict::LocalCloseRace, 2001)));
    metrics.add(from("10.0.0.9", make_conn(Verdict::LocalIdleClose, 2002)));
    metrics.add(from("10.0.0.9", make_conn(Verdict::PeerIdleClose, 1000)));
    // A health check's close and an upstream connection's are no peer's idle timer.
    Connection health_check = from("10.0.0.4", make_conn(Verdict::LocalIdleClose, 5));
    health_check.health_check = "ELB-HealthChecker/2.0";
    metrics.add(health_check);
    Connection upstream = from("10.0.0.5", make_conn(Verdict::LocalIdleClose, 2000));
    upstream.role = Role::Client;
    metrics.add(upstream);

    EXPECT_EQ(value_of(metrics, "closetrace_outlasting_peers", {}), std::nullopt);
    metrics.refresh(0, kT0);
    EXPECT_EQ(value_of(metrics, "closetrace_outlasting_peers", {{"role", "server"}}), 2);
    EXPECT_EQ(value_of(metrics, "closetrace_outlasting_peers", {{"role", "client"}}),
              std::nullopt);
    // Once it closes one itself, a peer no longer outlasts this host.
    metrics.add(from("10.0.0.1", make_conn(Verdict::PeerIdleClose, 3000)));
    metrics.refresh(0, kT0 + std::chrono::milliseconds(500));  // not yet: once a second
    EXPECT_EQ(value_of(metrics, "closetrace_outlasting_peers", {{"role", "server"}}), 2);
    metrics.refresh(0, kT0 + RecordingMetrics::kPublishEvery);
    EXPECT_EQ(value_of(metrics, "closetrace_outlasting_peers", {{"role", "server"}}), 1);
}

// A timeout fixed, or a container gone: its closes stop showing after one to two generations.
TEST(RecordingMetrics, GaugesShowTheClosesOfTheLastTwoGenerations) {
    using std::chrono::minutes;
    RecordingMetrics metrics;
    metrics.add(make_conn(Verdict::LocalIdleClose, 5000));
    metrics.refresh(0, kT0);
    EXPECT_DOUBLE_EQ(*value_of(metrics, "closetrace_idle_timeout_seconds", {{"side", "local"}}), 5);
    EXPECT_EQ(value_of(metrics, "closetrace_outlasting_peers", {}), 1);

    metrics.refresh(0, kT0 + RecordingMetrics::kGeneration);  // the one before now
    metrics.add(make_conn(Verdict::PeerIdleClose, 60'000));
    metrics.refresh(0, kT0 + RecordingMetrics::kGeneration + minutes(1));
    EXPECT_DOUBLE_EQ(*value_of(metrics, "closetrace_idle_timeout_seconds", {{"side", "local"}}), 5);
    EXPECT_DOUBLE_EQ(*value_of(metrics, "closetrace_idle_timeout_seconds", {{"side", "peer"}}), 60);
    EXPECT_EQ(value_of(metrics, "closetrace_outlasting_peers", {}), 0);

    metrics.refresh(0, kT0 + 2 * RecordingMetrics::kGeneration + minutes(1));
    EXPECT_EQ(value_of(metrics, "closetrace_idle_timeout_seconds", {{"side", "local"}}),
              std::nullopt);
    EXPECT_DOUBLE_EQ(*value_of(metrics, "closetrace_idle_timeout_seconds", {{"side", "peer"}}), 60);
    EXPECT_EQ(value_of(metrics, "closetrace_outlasting_peers", {}), 0);

    metrics.refresh(0, kT0 + 3 * RecordingMetrics::kGeneration + minutes(2));
    EXPECT_EQ(value_of(metrics, "closetrace_idle_timeout_seconds", {}), std::nullopt);
    EXPECT_EQ(value_of(metrics, "closetrace_outlasting_peers", {}), std::nullopt);
    // The counters stay: they count every close since the recorder started.
    EXPECT_EQ(value_of(metrics, "closetrace_closes_total", {{"verdict", "local_idle_close"}}), 1);
}

TEST(RecordingMetrics, LostEventsFollowTheRecordersCount) {
    RecordingMetrics metrics;
    metrics.refresh(3, kT0);
    metrics.refresh(3, kT0);
    metrics.refresh(5, kT0);
    EXPECT_EQ(value_of(metrics, "closetrace_lost_events_total", {}), 5);
}

TEST(RecordingMetrics, LabelsNameTheServerSideNeverThePeer) {
    Connection upstream = make_conn(Verdict::PeerIdleClose);
    upstream.role = Role::Client;
    upstream.local = {"10.0.0.2", 51234};
    upstream.remote = {"10.0.0.9", 3000};
    upstream.comm = std::string("ngi\x1bnx");
    const prometheus::Labels labels = connection_labels(upstream);
    EXPECT_EQ(labels.at("server_port"), "3000");
    EXPECT_EQ(labels.at("role"), "client");
    EXPECT_EQ(labels.at("comm"), "ngi?nx");
    EXPECT_EQ(labels.at("container"), "-");
    for (const auto& [name, value] : labels) {
        EXPECT_THAT(value, Not(HasSubstr("10.0.0.9")));
        EXPECT_THAT(value, Not(HasSubstr("51234")));
    }
    Connection found_open = upstream;
    found_open.role = Role::Unknown;
    EXPECT_EQ(connection_labels(found_open).at("server_port"), "3000");
    // Paired with its other end on this host, which serves: a service on a high port.
    found_open.remote.port = 60163;
    found_open.other_end = OtherEnd{.cookie = 7, .server = Initiator::Peer};
    EXPECT_EQ(connection_labels(found_open).at("server_port"), "60163");
    // Alone, by the port the recording filters on.
    found_open.other_end.reset();
    const uint16_t service[] = {60163};
    EXPECT_EQ(connection_labels(found_open, service).at("server_port"), "60163");
}

// A free port below the kernel's ephemeral range (32768 and up by default): a port the kernel
// handed out could be taken, before the test listens on it, as the source port of a connection
// another test opens meanwhile.
uint16_t free_port() {
    static std::minstd_rand random(static_cast<unsigned>(getpid()));
    for (;;) {
        const auto port = static_cast<uint16_t>(20000 + random() % 12000);
        const int fd = socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        address.sin_port = htons(port);
        const bool free = bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
        close(fd);
        if (free) return port;
    }
}

std::string http_get(uint16_t port, const std::string& path) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
        close(fd);
        return "";
    }
    const std::string request = "GET " + path + " HTTP/1.0\r\nHost: test\r\n\r\n";
    if (write(fd, request.data(), request.size()) < 0) return "";
    std::string response;
    char buffer[4096];
    for (ssize_t got; (got = read(fd, buffer, sizeof(buffer))) > 0;) response.append(buffer, got);
    close(fd);
    return response;
}

TEST(RecordingMetrics, ServesTheRegistryOverHttp) {
    RecordingMetrics metrics;
    metrics.add(make_conn(Verdict::LocalCloseRace));
    const uint16_t port = free_port();
    metrics.serve("127.0.0.1:" + std::to_string(port));
    EXPECT_THAT(http_get(port, "/metrics"),
                HasSubstr("closetrace_close_races_total{closer=\"local\",comm=\"node\","
                          "container=\"-\",role=\"server\",server_port=\"8080\"} 1"));
}

void note_signal(int) {}

// civetweb ignores SIGPIPE for the whole process when it starts: serving must not change how a
// recorder stops on a closed output pipe.
TEST(RecordingMetrics, ServingLeavesTheSignalHandlersAsTheyWere) {
    struct sigaction handler{};
    handler.sa_handler = note_signal;
    sigemptyset(&handler.sa_mask);
    struct sigaction original{};
    sigaction(SIGPIPE, &handler, &original);
    RecordingMetrics metrics;
    metrics.serve("127.0.0.1:" + std::to_string(free_port()));
    struct sigaction after{};
    sigaction(SIGPIPE, &original, &after);
    EXPECT_EQ(after.sa_handler, &note_signal);
}

TEST(RecordingMetrics, RefusesAMalformedAddressOrAPortInUse) {
    RecordingMetrics metrics;
    for (const std::string bad : {"9478", "localhost:9478", "127.0.0.1:", "127.0.0.1:0",
                                  "127.0.0.1:70000", "127.0.0.1:9478s", "[::1]:9478"}) {
        try {
            metrics.serve(bad);
            ADD_FAILURE() << bad << " was accepted";
        } catch (const MetricsError& error) {
            EXPECT_THAT(error.what(), HasSubstr("give a numeric IPv4 address")) << bad;
        }
    }
    const uint16_t port = free_port();
    RecordingMetrics first;
    first.serve("127.0.0.1:" + std::to_string(port));
    try {
        metrics.serve("127.0.0.1:" + std::to_string(port));
        ADD_FAILURE() << "a port in use was accepted";
    } catch (const MetricsError& error) {
        EXPECT_THAT(error.what(), HasSubstr("Address already in use"));
    }
}

}  // namespace
}  // namespace closetrace
