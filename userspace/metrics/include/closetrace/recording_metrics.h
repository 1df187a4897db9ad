// Prometheus metrics of a running recording (`closetrace record --metrics ADDR:PORT`): the
// connections the recorder writes counted by verdict and close cause, the races and in-flight
// losses among them and the requests they caught, the requests they carried, the events the
// kernel lost; each side's idle time at its idle-timer closes and the idle timeout that shows,
// and the peers that never closed an idle connection this host closed.
// Names, meanings and labels: docs/metrics.md.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/labels.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>

#include "closetrace/analysis.h"
#include "closetrace/model.h"

namespace closetrace {

// The metrics endpoint cannot be served: the message says why and what to give instead.
class MetricsError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// The labels every per-connection series carries; bounded by the servers and containers on this
// host, never by the peers: the server side's port, the owning process, its container, the role.
// `service_ports`: the recording's --port, which tell the server side of a connection found open.
prometheus::Labels connection_labels(const Connection& conn,
                                     std::span<const uint16_t> service_ports = {});

class RecordingMetrics {
public:
    explicit RecordingMetrics(std::vector<uint16_t> service_ports = {});

    // Counts a connection as the recorder writes it.
    void add(const Connection& conn);
    // Once per loop of the recorder: the kernel's lost events so far, and, at most every
    // kPublishEvery, the idle timeouts and outlasting peers of the series whose idle-timer
    // closes changed since, or aged out by `now` (a timeout is the densest cluster of their idle
    // times, too costly to find again at every close of a busy host).
    void refresh(uint64_t lost_events, std::chrono::steady_clock::time_point now);

    // The gauges show the idle-timer closes of the last hour at most: this generation's and the
    // one before, each half an hour. A timeout fixed, or a container gone, stops showing.
    static constexpr std::chrono::minutes kGeneration{30};
    // The gauges are found again at most this often (Prometheus scrapes every 15 s or so).
    static constexpr std::chrono::seconds kPublishEvery{1};

    // Serves the metrics at http://ADDRESS/metrics ("127.0.0.1:9478", "0.0.0.0:9478") until
    // destroyed; throws MetricsError when ADDRESS is malformed or cannot be listened on.
    void serve(const std::string& address);

    // What a scrape returns.
    std::vector<prometheus::MetricFamily> collect() const { return registry_->Collect(); }

private:
    enum Side { kLocal, kPeer };
    static constexpr std::array<const char*, 2> kSideNames{"local", "peer"};

    // Idle-timer closes of one generation, by the side that closed: their idle times, and the
    // server side's by peer address (the addresses stay in here, never in a label).
    struct IdleTimerGeneration {
        std::array<IdleHistogram, 2> idle_ms;
        std::unordered_map<std::string, IdleTimerCloses> by_peer;
    };

    // One set of labels' series (those that need a further label made at their first use), and
    // the idle times behind its timeouts: a connection's count is a few increments.
    struct Series {
        prometheus::Counter* requests = nullptr;
        prometheus::Counter* incomplete = nullptr;
        std::array<std::array<prometheus::Counter*, std::size(kAllCloseCauses)>,
                   std::size(kAllVerdicts)>
            closes{};
        std::array<prometheus::Counter*, std::size(kAllVerdicts)> caught_requests{};
        std::array<prometheus::Counter*, 2> races{};
        std::array<prometheus::Counter*, 2> inflight_losses{};
        std::array<prometheus::Histogram*, 2> idle_seconds{};
        // The gauges' closes: generations[0] this generation's, [1] the one before.
        std::array<IdleTimerGeneration, 2> generations;
        bool closes_changed = false;
        std::array<prometheus::Gauge*, 2> idle_timeout{};
        prometheus::Gauge* outlasting_peers = nullptr;
        prometheus::Labels labels;
    };
    // Peer addresses kept per generation of a series: a server's balancer nodes and clients.
    // Beyond it, new addresses are not counted (a few hundred KiB at most).
    static constexpr std::size_t kMaxPeersPerSeries = 4096;

    Series& series_of(const Connection& conn);
    void count_idle_close(Series& series, const Connection& conn);
    static void count_peer_idle_close(IdleTimerGeneration& closes, const std::string& peer,
                                      Side side, double idle_ms);
    void publish_gauges(Series& series);

    std::vector<uint16_t> service_ports_;  // see connection_labels

    std::shared_ptr<prometheus::Registry> registry_;
    prometheus::Family<prometheus::Counter>& closes_;
    prometheus::Family<prometheus::Counter>& races_;
    prometheus::Family<prometheus::Counter>& inflight_losses_;
    prometheus::Family<prometheus::Counter>& caught_requests_;
    prometheus::Family<prometheus::Counter>& requests_;
    prometheus::Family<prometheus::Counter>& incomplete_;
    prometheus::Family<prometheus::Histogram>& idle_seconds_;
    prometheus::Family<prometheus::Gauge>& idle_timeout_;
    prometheus::Family<prometheus::Gauge>& outlasting_peers_;
    prometheus::Counter& lost_events_;
    uint64_t lost_events_counted_ = 0;
    std::optional<std::chrono::steady_clock::time_point> generation_start_;  // at the first refresh
    std::optional<std::chrono::steady_clock::time_point> published_at_;
    std::map<prometheus::Labels, Series> series_;
    std::unique_ptr<prometheus::Exposer> exposer_;
};

}  // namespace closetrace
