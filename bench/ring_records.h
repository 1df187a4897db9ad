// bench/ring_records.h: for the harnesses that run the recorder's path without a kernel
// (tracker_churn.cpp, tracker_memory.cpp): ring records laid out as bpf/closetrace.h has them,
// and what the recorder's ring callback does with them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

#include "closetrace/event.h"
#include "closetrace/tracker.h"

namespace closetrace::bench {

// Ring records one after another, as the ring buffer holds them (without its headers).
struct Ring {
    std::vector<uint8_t> bytes;
    std::vector<std::size_t> ends;

    template <typename Record>
    void add(const Record& record) {
        const auto* raw = reinterpret_cast<const uint8_t*>(&record);
        bytes.insert(bytes.end(), raw, raw + sizeof(record));
        ends.push_back(bytes.size());
    }
    void clear() {
        bytes.clear();
        ends.clear();
    }
};

// What the recorder's ring callback and poll loop do with one poll's records
// (userspace/cli/record.cpp): each record decoded into one reused Event and fed to the tracker.
class Recorder {
public:
    void poll(const Ring& ring) {
        std::size_t begin = 0;
        for (const std::size_t end : ring.ends) {
            if (!decode_event(std::span(ring.bytes).subspan(begin, end - begin), {}, event_,
                              nullptr)) {
                std::abort();  // a harness builds its records by the ABI: each one decodes
            }
            tracker.on_event(event_);
            begin = end;
        }
    }

    ConnTracker tracker;

private:
    Event event_;
};

}  // namespace closetrace::bench
