// Traces read plain or gzip-compressed (deploy/collect-to-s3.sh uploads them as .gz): the same
// report either way, and a damaged gzip file said so rather than read short in silence.
#include <zlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "closetrace/file_content.h"
#include "closetrace/report.h"

namespace closetrace {
namespace {

namespace fs = std::filesystem;

const fs::path kFixtures = CLOSETRACE_FIXTURES;

std::string read_all(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream content;
    content << in.rdbuf();
    return content.str();
}

void write_gzip(const fs::path& path, const std::string& content) {
    gzFile file = gzopen(path.c_str(), "wb");
    ASSERT_NE(file, nullptr);
    ASSERT_EQ(gzwrite(file, content.data(), static_cast<unsigned>(content.size())),
              static_cast<int>(content.size()));
    ASSERT_EQ(gzclose(file), Z_OK);
}

class TempDir {
public:
    TempDir() {
        std::string pattern = (fs::temp_directory_path() / "closetrace-gz-XXXXXX").string();
        path_ = mkdtemp(pattern.data());
    }
    ~TempDir() { fs::remove_all(path_); }
    const fs::path& path() const { return path_; }

private:
    fs::path path_;
};

// `text` with every `from` replaced by `to`.
std::string replaced(std::string text, const std::string& from, const std::string& to) {
    for (std::size_t at = text.find(from); at != std::string::npos; at = text.find(from, at)) {
        text.replace(at, from.size(), to);
        at += to.size();
    }
    return text;
}

TEST(FileContent, AGzippedTraceGivesTheSameReport) {
    const TempDir dir;
    for (const char* name : {"mismatch", "fixed", "overload"}) {
        const fs::path plain = dir.path() / (std::string(name) + ".jsonl");
        const fs::path gzipped = dir.path() / (std::string(name) + ".jsonl.gz");
        const std::string content = read_all(kFixtures / (std::string(name) + ".jsonl"));
        std::ofstream(plain, std::ios::binary) << content;
        write_gzip(gzipped, content);
        for (const OutputFormat format : {OutputFormat::Text, OutputFormat::Json}) {
            const CommandOutput expected = run_report(plain.string(), format);
            const CommandOutput read = run_report(gzipped.string(), format);
            EXPECT_EQ(read.exit_code, expected.exit_code) << name;
            EXPECT_EQ(replaced(read.out, gzipped.string(), plain.string()), expected.out) << name;
            EXPECT_EQ(read.err, expected.err) << name;
        }
    }
}

TEST(FileContent, ATruncatedGzipTraceIsSaidToBe) {
    const TempDir dir;
    const fs::path whole = dir.path() / "whole.jsonl.gz";
    write_gzip(whole, read_all(kFixtures / "mismatch.jsonl"));
    const std::string bytes = read_all(whole);
    const fs::path cut = dir.path() / "cut.jsonl.gz";
    std::ofstream(cut, std::ios::binary) << bytes.substr(0, bytes.size() * 2 / 3);
    const CommandOutput output = run_report(cut.string(), OutputFormat::Text);
    EXPECT_NE(output.err.find(cut.string() + ": unexpected end of file (a truncated gzip file)"),
              std::string::npos)
        << output.err;
}

TEST(FileContent, AMissingFileIsOneLineThatSaysWhatToGive) {
    const CommandOutput output = run_report("/no/such/trace.jsonl.gz", OutputFormat::Text);
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_EQ(output.err,
              "closetrace report: cannot open /no/such/trace.jsonl.gz: No such file or directory; "
              "give the trace file `closetrace record --output` wrote\n");
}

TEST(FileContent, ContentIsReadAcrossGzipMembersAndAPlainTail) {
    const TempDir dir;
    const fs::path path = dir.path() / "members";
    write_gzip(dir.path() / "a", "first\n");
    write_gzip(dir.path() / "b", "second\n");
    std::ofstream(path, std::ios::binary)
        << read_all(dir.path() / "a") << read_all(dir.path() / "b") << "third\n";
    InputFile in(path.string());
    std::ostringstream content;
    content << in.rdbuf();
    EXPECT_EQ(content.str(), "first\nsecond\nthird\n");
    EXPECT_NE(in.problem().find("plain text after gzip data"), std::string::npos) << in.problem();
}

}  // namespace
}  // namespace closetrace
