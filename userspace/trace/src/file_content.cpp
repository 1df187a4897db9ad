#include "closetrace/file_content.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <system_error>

#include <fmt/format.h>

namespace closetrace {
namespace {

constexpr std::size_t kChunkBytes = 128 * 1024;
// A plain file's read at least this large skips the input buffer: one system call either way.
constexpr std::size_t kDirectReadBytes = 16 * 1024;

// A zero z_stream (as zlib asks before inflateInit2) reading from `input`.
z_stream z_stream_at(Bytef* input) {
    z_stream stream{};
    stream.next_in = input;
    return stream;
}

}  // namespace

FileContent::FileContent(int fd)
    : fd_(fd), input_(kChunkBytes), stream_(z_stream_at(input_.data())) {
    refill();
    if (input_is_gzip()) {
        inflating_ = inflateInit2(&stream_, 16 + MAX_WBITS) == Z_OK;  // 16: gzip wrapper
        if (!inflating_) fail("zlib cannot start");
    }
}

FileContent::~FileContent() {
    if (inflating_) inflateEnd(&stream_);
}

std::size_t FileContent::read(char* out, std::size_t size) {
    if (failed_) return 0;
    if (inflating_) {
        const std::size_t got = inflate_into(out, size);
        if (got > 0 || inflating_) return got;
    }
    // Plain: what is left of the input, then the rest of the file; a large read (TraceReader's)
    // goes from the file straight into `out`, without a copy through the input buffer.
    if (stream_.avail_in == 0 && size >= kDirectReadBytes) return read_file(out, size);
    if (stream_.avail_in == 0) refill();
    const std::size_t got = std::min<std::size_t>(size, stream_.avail_in);
    std::memcpy(out, stream_.next_in, got);
    stream_.next_in += got;
    stream_.avail_in -= static_cast<uInt>(got);
    return got;
}

bool starts_gzip(std::string_view start) { return start.starts_with("\x1f\x8b"); }

bool FileContent::input_is_gzip() const {
    return starts_gzip(
        {reinterpret_cast<const char*>(stream_.next_in), stream_.avail_in});
}

void FileContent::fail(std::string why) {
    problem_ = std::move(why);
    failed_ = true;
}

// Reads more of the file after the input not consumed yet; false when nothing more came.
bool FileContent::refill() {
    std::memmove(input_.data(), stream_.next_in, stream_.avail_in);
    stream_.next_in = input_.data();
    const std::size_t got = read_file(reinterpret_cast<char*>(input_.data()) + stream_.avail_in,
                                      input_.size() - stream_.avail_in);
    stream_.avail_in += static_cast<uInt>(got);
    return got > 0;
}

std::size_t FileContent::read_file(char* out, std::size_t size) {
    const ssize_t got = ::read(fd_, out, size);
    if (got < 0) fail(std::strerror(errno));
    if (got <= 0) return 0;
    offset_ += static_cast<uint64_t>(got);
    return static_cast<std::size_t>(got);
}

std::size_t FileContent::inflate_into(char* out, std::size_t size) {
    stream_.next_out = reinterpret_cast<Bytef*>(out);
    stream_.avail_out = static_cast<uInt>(size);
    while (stream_.avail_out > 0 && inflating_ && !failed_) {
        if (stream_.avail_in == 0 && !refill()) {
            if (!failed_) fail("unexpected end of file (a truncated gzip file)");
            break;
        }
        const int result = inflate(&stream_, Z_NO_FLUSH);
        if (result == Z_STREAM_END) {
            next_member();
        } else if (result != Z_OK && result != Z_BUF_ERROR) {
            fail(stream_.msg ? stream_.msg : "corrupt gzip data");
        }
    }
    return size - stream_.avail_out;
}

// A gzip member ended: another one follows, or the end of the file, or plain text.
void FileContent::next_member() {
    if (stream_.avail_in < 2) refill();
    if (input_is_gzip()) {
        inflateReset(&stream_);
        return;
    }
    inflateEnd(&stream_);
    inflating_ = false;
    if (stream_.avail_in > 0) {
        problem_ = fmt::format("plain text after gzip data (from byte {}), read as plain text; a "
                               "file should be all gzip or all plain",
                               offset_ - stream_.avail_in);
    }
}

class InputFile::Buffer : public std::streambuf {
public:
    explicit Buffer(int fd) : content_(fd) {}
    const std::string& problem() const { return content_.problem(); }

protected:
    // A read larger than what is buffered (TraceReader's are) goes straight from the content into
    // the caller's memory rather than through chunk_.
    std::streamsize xsgetn(char* out, std::streamsize size) override {
        const auto buffered = std::min<std::streamsize>(size, egptr() - gptr());
        if (buffered > 0) {
            std::memcpy(out, gptr(), static_cast<std::size_t>(buffered));
            gbump(static_cast<int>(buffered));
        }
        auto got = static_cast<std::size_t>(buffered);
        const auto wanted = static_cast<std::size_t>(size);
        while (got < wanted) {
            const std::size_t more = content_.read(out + got, wanted - got);
            if (more == 0) break;
            got += more;
        }
        return static_cast<std::streamsize>(got);
    }

    int_type underflow() override {
        const std::size_t got = content_.read(chunk_.data(), chunk_.size());
        if (got == 0) return traits_type::eof();
        setg(chunk_.data(), chunk_.data(), chunk_.data() + got);
        return traits_type::to_int_type(chunk_[0]);
    }

private:
    FileContent content_;
    std::array<char, kChunkBytes> chunk_{};
};

InputFile::InputFile(const std::string& path)
    : std::istream(nullptr),
      name_(path == "-" ? "standard input" : path),
      fd_(path == "-" ? STDIN_FILENO : ::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    if (fd_ < 0) throw std::system_error(errno, std::generic_category(), path);
    buffer_ = std::make_unique<Buffer>(fd_);
    rdbuf(buffer_.get());
}

InputFile::~InputFile() {
    if (fd_ != STDIN_FILENO) ::close(fd_);
}

const std::string& InputFile::problem() const { return buffer_->problem(); }

}  // namespace closetrace
