// Traces read plain or gzip-compressed (deploy/collect-to-s3.sh uploads them as .gz): the same
// report either way, and a damaged gzip file said so rather than read short in silence.
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "closetrace/file_content.h"
#include "closetrace/report.h"
#include "test_files.h"

namespace closetrace {
namespace {

namespace fs = std::filesystem;

const fs::path kFixtures = CLOSETRACE_FIXTURES;

using test::file_content;
using test::TempDir;
using test::write_file;
using test::write_gzip;

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
        const std::string content = file_content(kFixtures / (std::string(name) + ".jsonl"));
        write_file(plain, content);
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
    write_gzip(whole, file_content(kFixtures / "mismatch.jsonl"));
    const std::string bytes = file_content(whole);
    const fs::path cut = dir.path() / "cut.jsonl.gz";
    write_file(cut, bytes.substr(0, bytes.size() * 2 / 3));
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
    write_file(path, file_content(dir.path() / "a") + file_content(dir.path() / "b") + "third\n");
    InputFile in(path.string());
    std::ostringstream content;
    content << in.rdbuf();
    EXPECT_EQ(content.str(), "first\nsecond\nthird\n");
    EXPECT_NE(in.problem().find("plain text after gzip data"), std::string::npos) << in.problem();
}

// Reads of 16 KiB and more go from a plain file straight into the caller's memory, smaller ones
// through the input buffer: mixed, they give the file's bytes in order.
TEST(FileContent, SmallAndLargeReadsOfAPlainFileGiveItsBytesInOrder) {
    const TempDir dir;
    const fs::path path = dir.path() / "plain.jsonl";
    std::string text;
    for (int line = 0; text.size() < 700 * 1024; ++line) text += std::to_string(line) + "\n";
    write_file(path, text);
    InputFile in(path.string());
    std::string read_back;
    std::vector<char> block(200'000);
    const std::size_t sizes[] = {7, 65'536, 100, 200'000, 16'384, 16'383};
    for (std::size_t i = 0; in; ++i) {
        in.read(block.data(), static_cast<std::streamsize>(sizes[i % std::size(sizes)]));
        read_back.append(block.data(), static_cast<std::size_t>(in.gcount()));
    }
    EXPECT_EQ(read_back.size(), text.size());
    EXPECT_TRUE(read_back == text);
    EXPECT_EQ(in.problem(), "");
}

}  // namespace
}  // namespace closetrace
