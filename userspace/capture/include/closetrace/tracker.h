// ConnTracker: kernel events in, connection records with requests and a verdict out.
// Pure (no I/O, no clocks of its own): time is the events' and the caller's.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "closetrace/event.h"
#include "closetrace/model.h"

namespace closetrace {

struct TrackerOptions {
    // How long a connection is kept after its socket closed, so that a late request reaching its
    // time-wait socket (answered with RST) is still attributed to it.
    uint64_t linger_ns = 2'000'000'000;
    // Keep request targets' query strings (record --full-target).
    bool full_target = false;
    // HTTP/2 header block fragments are recorded (record --http2-names): caught streams are named.
    bool http2_names = false;
    // How far out of time order the events of one socket can reach the tracker: all of them pass
    // through one ring buffer, where records of different CPUs interleave by microseconds. A busy
    // connection's messages older than this (from its newest event) are settled: reduced to the
    // requests its record will list.
    uint64_t reorder_ns = 200'000'000;
    // After the kernel lost events, a connection that shows nothing for this long may have lost
    // its close among them: it is given up (finalised, incomplete, as far as seen) rather than
    // held until the recording ends, which in a continuous recording is days. Longer than the
    // closing timers the kernel runs by default (an orphan's FIN_WAIT2, 60 s) and the idle
    // timeouts of balancers and HTTP servers in common use (ALB 60 s, nginx 75 s).
    uint64_t give_up_after_loss_ns = 300'000'000'000;
    // The ports the recording filters on (record --port): a service's, which tells the server
    // end of a connection with both ends on this host that opened before the recording.
    std::vector<uint16_t> ports{};
};

class ConnTracker {
public:
    explicit ConnTracker(TrackerOptions options = {});
    ~ConnTracker();
    ConnTracker(ConnTracker&&) noexcept;
    ConnTracker& operator=(ConnTracker&&) noexcept;

    // Events may arrive out of time order: a socket's own by up to reorder_ns, a late reset
    // attributed by its tuple by up to the linger.
    void on_event(const Event& event);

    // Connections whose socket closed before `now_ns - linger_ns`, then those given up after a
    // loss (give_up_after_loss_ns), finalised and removed.
    std::vector<Connection> take_finished(uint64_t now_ns);

    // End of recording: every connection still held, finalised (open ones get verdict Open).
    std::vector<Connection> finish_all(uint64_t end_ns);

    // The kernel dropped events stamped in (from_ns, to_ns]: connections alive then (or
    // lingering), whenever they are finalised, are marked incomplete. Calls in time order.
    void on_events_lost(uint64_t from_ns, uint64_t to_ns);

    // Events that belong to no connection (a reset sent with no socket, or a segment for a
    // connection already finalised), in arrival order; removed from the tracker.
    std::vector<Event> take_unattributed();

    // Connections seen alive whose socket has not closed yet.
    std::size_t open_connections() const;

private:
    // Held connections (compact facts, payloads parsed on arrival) and the tuple index; defined
    // in tracker.cpp.
    struct State;

    TrackerOptions options_;
    uint64_t next_id_ = 1;
    std::unique_ptr<State> state_;
};

}  // namespace closetrace
