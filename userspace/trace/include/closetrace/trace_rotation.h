// A continuous recording's trace files (docs/trace-format.md#rotated-files): one live file at a
// time, closed when it reaches its size or age (or on request), optionally gzip-compressed once
// closed, and the oldest closed files deleted beyond the retention bounds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "closetrace/trace_io.h"

namespace closetrace {

// "20261125T010203": a trace file's start, UTC, as file names carry it (sortable as text).
std::string trace_file_stamp(int64_t unix_ns);

struct RotationPolicy {
    uint64_t max_file_bytes = 0;  // close the live file at this size; 0: no size limit
    uint64_t max_file_ns = 0;     // close the live file at this age; 0: no age limit
    std::optional<std::size_t> keep_files;  // closed files kept, newest first
    std::optional<uint64_t> keep_bytes;     // bytes of closed files kept, newest first
    bool gzip = false;                      // compress each closed file (.jsonl.gz)
};

// The files of one directory, named closetrace-STAMP-NNNNNN.live.jsonl while written and
// closetrace-STAMP-NNNNNN.jsonl (.jsonl.gz compressed) once closed; STAMP is the file's start
// and NNNNNN counts the files of a recording, so names sort in time order. Only files named so
// are ever renamed, compressed or deleted, and never the live one. The directory is locked
// (flock) while this object lives: one recorder per directory.
class TraceRotation {
public:
    // Creates `dir` if needed and locks it; throws std::system_error (EWOULDBLOCK: another
    // recorder holds it). Live files a recorder that died left behind are closed as they are
    // (a truncated trace is readable) and the retention applied, in the background.
    TraceRotation(std::filesystem::path dir, RotationPolicy policy);
    ~TraceRotation();  // closes the live file, waits for the background work
    TraceRotation(const TraceRotation&) = delete;
    TraceRotation& operator=(const TraceRotation&) = delete;

    // Starts the next live file, started at `unix_ns` (its name) and `mono_ns` (its age), and
    // returns its writer. Throws std::system_error when it cannot be created.
    TraceWriter& open(int64_t unix_ns, uint64_t mono_ns);
    // Whether the live file has reached its size or its age at `mono_ns` (what was written to
    // it counts once flushed).
    bool due(uint64_t mono_ns) const;
    // Flushes the live file (may throw std::system_error), renames it to its closed name and
    // hands it to the background work: compression, then retention.
    void close();
    // Waits for the background work.
    void wait();
    // What the background work could not do (compress, delete), one line each, once each.
    std::vector<std::string> take_problems();

    const std::filesystem::path& directory() const { return dir_; }
    const std::filesystem::path& live_path() const { return live_path_; }
    // The closed files of this naming scheme in `dir`, in the order written (by their number).
    static std::vector<std::filesystem::path> closed_files(const std::filesystem::path& dir);
    // The names a file of this naming scheme takes later, in order: a live file's closed and
    // compressed names, a closed file's compressed name; none for any other file.
    static std::vector<std::filesystem::path> later_names(const std::filesystem::path& file);
    // Whether `file` is named as this scheme names a recorder's live or closed files.
    static bool named_by_rotation(const std::filesystem::path& file);

private:
    void retire_live();
    void start_background();
    void compress(const std::filesystem::path& closed);
    void apply_retention();
    void note_problem(std::string problem);

    std::filesystem::path dir_;
    RotationPolicy policy_;
    int dir_fd_ = -1;  // holds the lock
    uint64_t next_index_ = 1;

    int live_fd_ = -1;
    std::filesystem::path live_path_;
    std::filesystem::path closed_path_;  // the live file's name once closed
    uint64_t live_opened_ns_ = 0;
    std::unique_ptr<TraceWriter> writer_;

    std::thread background_;
    std::mutex problems_mutex_;
    std::vector<std::string> problems_;
};

}  // namespace closetrace
