#pragma once
// What a trace or log file holds, whether it was written plain or gzip-compressed (as
// deploy/collect-to-s3.sh uploads traces and as S3 keeps load balancer logs).
#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <istream>
#include <memory>
#include <streambuf>
#include <string>
#include <string_view>
#include <vector>

namespace closetrace {

// Whether `start`, a file's first bytes, opens gzip data (its magic number).
bool starts_gzip(std::string_view start);

// A file's content read from `fd` (not owned): gzip (one member or several, as concatenated
// files are) or plain, told by its first bytes. zlib's gzread ignores whatever follows the last
// gzip member, so a plain tail would vanish without a word; here it is read as plain, and noted.
class FileContent {
public:
    explicit FileContent(int fd);
    ~FileContent();
    FileContent(const FileContent&) = delete;
    FileContent& operator=(const FileContent&) = delete;

    // Up to `size` bytes of content into `out`; 0 at the end or after an error.
    std::size_t read(char* out, std::size_t size);

    // Why the content is not just the file as given, "" when it is: a read error, corrupt or
    // truncated gzip data, or plain text after gzip data (read all the same).
    const std::string& problem() const { return problem_; }

private:
    bool input_is_gzip() const;
    void fail(std::string why);
    bool refill();
    // Up to `size` bytes of the file itself; 0 at its end or after an error.
    std::size_t read_file(char* out, std::size_t size);
    std::size_t inflate_into(char* out, std::size_t size);
    void next_member();

    int fd_;
    std::vector<Bytef> input_;
    z_stream stream_;
    bool inflating_ = false;
    bool failed_ = false;
    uint64_t offset_ = 0;  // bytes read from the file
    std::string problem_;
};

// A file named on the command line as an input stream (what TraceReader reads), plain or gzip
// alike: "-" is standard input. Throws std::system_error when the file cannot be opened.
class InputFile : public std::istream {
public:
    explicit InputFile(const std::string& path);
    ~InputFile() override;
    InputFile(const InputFile&) = delete;
    InputFile& operator=(const InputFile&) = delete;

    // FileContent::problem() of what was read so far.
    const std::string& problem() const;
    // How messages and reports name it: the path, or "standard input".
    const std::string& name() const { return name_; }

private:
    class Buffer;
    std::string name_;
    int fd_;
    std::unique_ptr<Buffer> buffer_;
};

}  // namespace closetrace
