#include "closetrace/trace_rotation.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <regex>
#include <system_error>
#include <tuple>
#include <utility>

#include <fmt/format.h>

#include "closetrace/file_descriptor.h"
#include "closetrace/wallclock.h"

namespace closetrace {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kLiveSuffix = ".live.jsonl";
constexpr std::string_view kClosedSuffix = ".jsonl";
constexpr std::string_view kCompressedSuffix = ".jsonl.gz";
constexpr std::string_view kPartialSuffix = ".jsonl.gz.partial";  // being compressed

// A closed file's name with another suffix of the scheme (….jsonl -> ….jsonl.gz).
fs::path with_suffix(const fs::path& closed, std::string_view suffix) {
    std::string name = closed.string();
    name.replace(name.size() - kClosedSuffix.size(), kClosedSuffix.size(), suffix);
    return name;
}

// A name of this naming scheme, taken apart.
struct TraceFileName {
    enum class Kind { Live, Closed, Compressed, Partial };
    std::string stamp;
    uint64_t index = 0;
    Kind kind = Kind::Closed;

    std::string stem() const { return fmt::format("closetrace-{}-{:06}", stamp, index); }
    // In the order written: the index counts on across the recordings of a directory, where a
    // stamp goes back with a clock set back between them.
    bool operator<(const TraceFileName& other) const {
        return std::tie(index, stamp) < std::tie(other.index, other.stamp);
    }
};

std::optional<TraceFileName> parse_name(const std::string& name) {
    static const std::regex pattern(
        R"(closetrace-(\d{8}T\d{6})-(\d{6,18})(\.live\.jsonl|\.jsonl|\.jsonl\.gz|\.jsonl\.gz\.partial))");
    std::smatch match;
    if (!std::regex_match(name, match, pattern)) return std::nullopt;
    const std::string suffix = match[3];
    TraceFileName parsed{.stamp = match[1], .index = std::stoull(match[2]),
                         .kind = TraceFileName::Kind::Closed};
    if (suffix == kLiveSuffix) parsed.kind = TraceFileName::Kind::Live;
    if (suffix == kCompressedSuffix) parsed.kind = TraceFileName::Kind::Compressed;
    if (suffix == kPartialSuffix) parsed.kind = TraceFileName::Kind::Partial;
    return parsed;
}

// This scheme's files in `dir` with their parsed names, in time order.
std::vector<std::pair<TraceFileName, fs::path>> scheme_files(const fs::path& dir) {
    std::vector<std::pair<TraceFileName, fs::path>> files;
    std::error_code error;
    for (const auto& entry : fs::directory_iterator(dir, error)) {
        if (!entry.is_regular_file(error)) continue;
        if (auto name = parse_name(entry.path().filename().string())) {
            files.emplace_back(std::move(*name), entry.path());
        }
    }
    std::sort(files.begin(), files.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    return files;
}

std::system_error system_error(int code, const fs::path& path) {
    return std::system_error(code, std::generic_category(), path.string());
}

}  // namespace

std::string trace_file_stamp(int64_t unix_ns) {
    std::string stamp = iso8601_utc(unix_ns).substr(0, 19);  // 2026-11-25T01:02:03
    std::erase(stamp, '-');
    std::erase(stamp, ':');
    return stamp;
}

TraceRotation::TraceRotation(fs::path dir, RotationPolicy policy)
    : dir_(std::move(dir)), policy_(policy) {
    std::error_code error;
    fs::create_directories(dir_, error);
    if (error) throw system_error(error.value(), dir_);
    dir_fd_ = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd_ < 0) throw system_error(errno, dir_);
    if (flock(dir_fd_, LOCK_EX | LOCK_NB) != 0) {
        const int code = errno;
        ::close(dir_fd_);
        throw system_error(code, dir_);
    }
    // With the lock held no recorder writes here: a live file is one a recorder left when it
    // died, readable up to its last whole line. A partial compression is redone from its file.
    for (const auto& [name, path] : scheme_files(dir_)) {
        // Indexes go on across recordings, so that one started in the same second sorts after.
        next_index_ = std::max(next_index_, name.index + 1);
        if (name.kind == TraceFileName::Kind::Live) {
            fs::rename(path, dir_ / (name.stem() + std::string(kClosedSuffix)), error);
        } else if (name.kind == TraceFileName::Kind::Partial) {
            fs::remove(path, error);
        }
        if (error) note_problem(fmt::format("cannot close {}: {}", path.string(), error.message()));
    }
    start_background();
}

TraceRotation::~TraceRotation() {
    if (writer_) {
        writer_.reset();  // flushes what it can
        retire_live();
        start_background();
    }
    wait();
    ::close(dir_fd_);
}

TraceWriter& TraceRotation::open(int64_t unix_ns, uint64_t mono_ns) {
    const std::string stamp = trace_file_stamp(unix_ns);
    for (;; ++next_index_) {
        const TraceFileName name{
            .stamp = stamp, .index = next_index_, .kind = TraceFileName::Kind::Live};
        const std::string stem = name.stem();
        const fs::path live = dir_ / (stem + std::string(kLiveSuffix));
        live_fd_ = ::open(live.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (live_fd_ < 0 && errno == EEXIST) continue;
        if (live_fd_ < 0) throw system_error(errno, live);
        live_path_ = live;
        closed_path_ = dir_ / (stem + std::string(kClosedSuffix));
        break;
    }
    ++next_index_;
    live_opened_ns_ = mono_ns;
    writer_ = std::make_unique<TraceWriter>(live_fd_);
    return *writer_;
}

bool TraceRotation::due(uint64_t mono_ns) const {
    if (live_fd_ < 0) return false;
    if (policy_.max_file_ns != 0 && mono_ns - live_opened_ns_ >= policy_.max_file_ns) return true;
    struct stat file{};
    return policy_.max_file_bytes != 0 && fstat(live_fd_, &file) == 0 &&
           static_cast<uint64_t>(file.st_size) >= policy_.max_file_bytes;
}

void TraceRotation::close() {
    if (!writer_) return;
    writer_->flush();
    writer_.reset();
    retire_live();
    start_background();
}

void TraceRotation::retire_live() {
    ::close(live_fd_);
    live_fd_ = -1;
    wait();  // the background work never sees a file half renamed
    std::error_code error;
    fs::rename(live_path_, closed_path_, error);
    if (error) {
        note_problem(fmt::format("cannot rename {} to {}: {}", live_path_.string(),
                                 closed_path_.string(), error.message()));
    }
    live_path_.clear();
}

void TraceRotation::wait() {
    if (background_.joinable()) background_.join();
}

std::vector<std::string> TraceRotation::take_problems() {
    const std::lock_guard lock(problems_mutex_);
    return std::exchange(problems_, {});
}

std::vector<fs::path> TraceRotation::closed_files(const fs::path& dir) {
    std::vector<fs::path> closed;
    for (auto& [name, path] : scheme_files(dir)) {
        if (name.kind == TraceFileName::Kind::Closed ||
            name.kind == TraceFileName::Kind::Compressed) {
            closed.push_back(std::move(path));
        }
    }
    return closed;
}

std::vector<fs::path> TraceRotation::later_names(const fs::path& file) {
    const std::optional<TraceFileName> name = parse_name(file.filename().string());
    if (!name || (name->kind != TraceFileName::Kind::Live &&
                  name->kind != TraceFileName::Kind::Closed)) {
        return {};
    }
    const fs::path closed = file.parent_path() / (name->stem() + std::string(kClosedSuffix));
    std::vector<fs::path> later;
    if (name->kind == TraceFileName::Kind::Live) later.push_back(closed);
    later.push_back(with_suffix(closed, kCompressedSuffix));
    return later;
}

bool TraceRotation::named_by_rotation(const fs::path& file) {
    const std::optional<TraceFileName> name = parse_name(file.filename().string());
    return name && name->kind != TraceFileName::Kind::Partial;
}

// Compression and deletion take seconds for large files: off the recording loop, which must
// keep draining the ring buffer.
void TraceRotation::start_background() {
    wait();
    background_ = std::thread([this] {
        if (policy_.gzip) {
            for (const auto& path : closed_files(dir_)) {
                if (path.extension() == kClosedSuffix) compress(path);
            }
        }
        apply_retention();
    });
}

// closetrace-….jsonl becomes closetrace-….jsonl.gz, through a .partial file so that a
// compression cut short is never taken for a whole one.
void TraceRotation::compress(const fs::path& plain) {
    const fs::path partial = with_suffix(plain, kPartialSuffix);
    const fs::path compressed = with_suffix(plain, kCompressedSuffix);
    const auto give_up = [&](const std::string& why) {
        std::error_code ignored;
        fs::remove(partial, ignored);
        note_problem(fmt::format("cannot compress {}: {}; it stays uncompressed", plain.string(),
                                 why));
    };
    // An empty file beside the compressed one of its name is no recording (another tool made it,
    // as collect-to-s3.sh once did): compressed, it would replace the recording. A whole one
    // there is this recording's, left by a crash between the rename below and the removal.
    std::error_code status_error;
    if (fs::exists(compressed, status_error) && fs::file_size(plain, status_error) == 0) {
        fs::remove(plain, status_error);
        return;
    }
    const FileDescriptor in(::open(plain.c_str(), O_RDONLY | O_CLOEXEC));
    if (in.get() < 0) return give_up(std::strerror(errno));
    const int out = ::open(partial.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0) return give_up(std::strerror(errno));
    gzFile gz = gzdopen(out, "wb6");
    if (gz == nullptr) {
        ::close(out);
        return give_up("out of memory");
    }
    std::array<char, 64 * 1024> buffer{};
    ssize_t count = 0;
    bool written = true;
    while ((count = ::read(in.get(), buffer.data(), buffer.size())) > 0 && written) {
        written = gzwrite(gz, buffer.data(), static_cast<unsigned>(count)) == count;
    }
    const int read_error = count < 0 ? errno : 0;
    const int close_result = gzclose(gz);
    if (read_error != 0) return give_up(std::strerror(read_error));
    if (!written || close_result != Z_OK) {
        return give_up(close_result == Z_ERRNO ? std::strerror(errno) : "write error");
    }
    std::error_code error;
    fs::rename(partial, compressed, error);
    if (error) return give_up(error.message());
    fs::remove(plain, error);
}

// The newest closed files that fit both bounds stay; every older one goes.
void TraceRotation::apply_retention() {
    if (!policy_.keep_files && !policy_.keep_bytes) return;
    const std::vector<fs::path> closed = closed_files(dir_);
    std::size_t kept_files = 0;
    uint64_t kept_bytes = 0;
    bool full = false;
    for (auto file = closed.rbegin(); file != closed.rend(); ++file) {
        std::error_code error;
        const uint64_t size = fs::file_size(*file, error);
        if (error) continue;  // gone meanwhile
        full = full || (policy_.keep_files && kept_files + 1 > *policy_.keep_files) ||
               (policy_.keep_bytes && kept_bytes + size > *policy_.keep_bytes);
        if (!full) {
            ++kept_files;
            kept_bytes += size;
        } else if (fs::remove(*file, error); error) {
            note_problem(fmt::format("cannot delete {}: {}", file->string(), error.message()));
        } else if (kept_files == 0) {
            note_problem(fmt::format("deleted {} as it closed: its {} bytes exceed --keep-bytes "
                                     "{}; give a larger --keep-bytes",
                                     file->string(), size, *policy_.keep_bytes));
        }
    }
}

void TraceRotation::note_problem(std::string problem) {
    const std::lock_guard lock(problems_mutex_);
    problems_.push_back(std::move(problem));
}

}  // namespace closetrace
