// A continuous recording's files (TraceRotation): rotated by size and by age, the retention
// bounds by count and by bytes, gzip output the trace readers read, and only this naming
// scheme's closed files ever deleted.
#include <sys/file.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include <gtest/gtest.h>

#include "closetrace/file_content.h"
#include "closetrace/trace_rotation.h"
#include "test_files.h"

namespace closetrace {
namespace {

namespace fs = std::filesystem;

using test::file_content;
using test::TempDir;
using test::write_file;

constexpr int64_t kUnixNs = 1'795'000'000'000'000'000;
constexpr uint64_t kSecondNs = 1'000'000'000;

std::vector<std::string> names(const std::vector<fs::path>& paths) {
    std::vector<std::string> result;
    for (const auto& path : paths) result.push_back(path.filename().string());
    return result;
}

std::vector<std::string> directory_names(const fs::path& dir) {
    std::vector<std::string> result;
    for (const auto& entry : fs::directory_iterator(dir)) {
        result.push_back(entry.path().filename().string());
    }
    std::sort(result.begin(), result.end());
    return result;
}

std::string read_whole(const fs::path& path) {
    InputFile in(path.string());
    return {std::istreambuf_iterator<char>(in), {}};
}

// One file of `lines` lines, started `offset_s` seconds after kUnixNs.
void write_trace_file(TraceRotation& files, int offset_s, int lines) {
    TraceWriter& writer = files.open(kUnixNs + offset_s * static_cast<int64_t>(kSecondNs),
                                     static_cast<uint64_t>(offset_s) * kSecondNs);
    for (int line = 0; line < lines; ++line) writer.write_line(R"({"type":"conn"})");
    files.close();
}

TEST(TraceRotation, TheLiveFileIsNamedAsLiveAndRenamedWhenClosed) {
    const TempDir dir;
    TraceRotation files(dir.path(), {});
    TraceWriter& writer = files.open(kUnixNs, 0);
    writer.write_line("first");
    writer.flush();
    const std::string stamp = trace_file_stamp(kUnixNs);
    EXPECT_EQ(files.live_path().filename(), "closetrace-" + stamp + "-000001.live.jsonl");
    EXPECT_TRUE(TraceRotation::closed_files(dir.path()).empty());
    files.close();
    files.wait();
    EXPECT_EQ(names(TraceRotation::closed_files(dir.path())),
              std::vector<std::string>{"closetrace-" + stamp + "-000001.jsonl"});
    EXPECT_EQ(file_content(dir.path() / ("closetrace-" + stamp + "-000001.jsonl")), "first\n");
    EXPECT_EQ(fs::status(dir.path() / ("closetrace-" + stamp + "-000001.jsonl")).permissions() &
                  fs::perms::all,
              fs::perms::owner_read | fs::perms::owner_write);
}

TEST(TraceRotation, DueAtItsSizeOnceFlushed) {
    const TempDir dir;
    RotationPolicy policy;
    policy.max_file_bytes = 100;
    TraceRotation files(dir.path(), policy);
    TraceWriter& writer = files.open(kUnixNs, 0);
    writer.write_line(std::string(98, 'x'));
    writer.flush();
    EXPECT_FALSE(files.due(0));  // 99 bytes
    writer.write_line("");
    EXPECT_FALSE(files.due(0));  // still buffered
    writer.flush();
    EXPECT_TRUE(files.due(0));
}

TEST(TraceRotation, DueAtItsAge) {
    const TempDir dir;
    RotationPolicy policy;
    policy.max_file_ns = 60 * kSecondNs;
    TraceRotation files(dir.path(), policy);
    files.open(kUnixNs, 1000 * kSecondNs);
    EXPECT_FALSE(files.due(1059 * kSecondNs));
    EXPECT_TRUE(files.due(1060 * kSecondNs));
}

TEST(TraceRotation, WithoutLimitsNeverDue) {
    const TempDir dir;
    TraceRotation files(dir.path(), {});
    TraceWriter& writer = files.open(kUnixNs, 0);
    writer.write_line(std::string(100000, 'x'));
    writer.flush();
    EXPECT_FALSE(files.due(1'000'000 * kSecondNs));
}

TEST(TraceRotation, NamesSortInTimeOrderAcrossRecordings) {
    const TempDir dir;
    {
        TraceRotation files(dir.path(), {});
        write_trace_file(files, 0, 1);
        write_trace_file(files, 0, 1);  // the same second: the index tells them apart
        write_trace_file(files, 1, 1);
    }
    {
        TraceRotation files(dir.path(), {});  // a later recording, in the same second
        write_trace_file(files, 1, 1);
    }
    const std::vector<std::string> closed = names(TraceRotation::closed_files(dir.path()));
    const std::string first = "closetrace-" + trace_file_stamp(kUnixNs);
    const std::string second = "closetrace-" + trace_file_stamp(kUnixNs + kSecondNs);
    EXPECT_EQ(closed, (std::vector<std::string>{first + "-000001.jsonl", first + "-000002.jsonl",
                                                second + "-000003.jsonl",
                                                second + "-000004.jsonl"}));
    EXPECT_EQ(directory_names(dir.path()), closed);  // a shell glob's order
}

TEST(TraceRotation, KeepsTheNewestFilesByCount) {
    const TempDir dir;
    RotationPolicy policy;
    policy.keep_files = 2;
    TraceRotation files(dir.path(), policy);
    for (int file = 0; file < 5; ++file) write_trace_file(files, file, 1);
    files.wait();
    const std::vector<fs::path> closed = TraceRotation::closed_files(dir.path());
    ASSERT_EQ(closed.size(), 2u);
    EXPECT_EQ(closed[0].filename().string().substr(11, 15), trace_file_stamp(kUnixNs + 3 * kSecondNs));
    EXPECT_EQ(closed[1].filename().string().substr(11, 15), trace_file_stamp(kUnixNs + 4 * kSecondNs));
}

TEST(TraceRotation, KeepsTheNewestFilesThatFitInTheBytes) {
    const TempDir dir;
    // 16 bytes a line: files of 160, 16, 160, 16 bytes, newest last.
    RotationPolicy policy;
    policy.keep_bytes = 180;
    TraceRotation files(dir.path(), policy);
    write_trace_file(files, 0, 10);
    write_trace_file(files, 1, 1);
    write_trace_file(files, 2, 10);
    write_trace_file(files, 3, 1);
    files.wait();
    const std::vector<fs::path> closed = TraceRotation::closed_files(dir.path());
    ASSERT_EQ(closed.size(), 2u);  // 16 + 160; the older 16-byte one would fit, but not in order
    EXPECT_EQ(fs::file_size(closed[0]), 160u);
    EXPECT_EQ(fs::file_size(closed[1]), 16u);
}

TEST(TraceRotation, AFileLargerThanTheBytesKeptIsDeletedWithAWarning) {
    const TempDir dir;
    RotationPolicy policy;
    policy.keep_bytes = 100;
    TraceRotation files(dir.path(), policy);
    write_trace_file(files, 0, 10);  // 160 bytes
    files.wait();
    EXPECT_TRUE(TraceRotation::closed_files(dir.path()).empty());
    const std::vector<std::string> problems = files.take_problems();
    ASSERT_EQ(problems.size(), 1u);
    EXPECT_NE(problems[0].find("as it closed: its 160 bytes exceed --keep-bytes 100"),
              std::string::npos)
        << problems[0];
}

// The clock set back between two recordings: the later files have earlier stamps, and are
// still the newest kept.
TEST(TraceRotation, RetentionKeepsTheFilesWrittenLastWhateverTheirStamps) {
    const TempDir dir;
    {
        TraceRotation files(dir.path(), {});
        write_trace_file(files, 3600, 1);
        write_trace_file(files, 3601, 1);
    }
    RotationPolicy policy;
    policy.keep_files = 2;
    TraceRotation files(dir.path(), policy);
    write_trace_file(files, 0, 1);
    write_trace_file(files, 1, 1);
    files.wait();
    const std::vector<fs::path> closed = TraceRotation::closed_files(dir.path());
    ASSERT_EQ(closed.size(), 2u);
    EXPECT_EQ(closed[0].filename().string().substr(11, 15), trace_file_stamp(kUnixNs));
    EXPECT_EQ(closed[1].filename().string().substr(11, 15), trace_file_stamp(kUnixNs + kSecondNs));
}

TEST(TraceRotation, NeverDeletesTheLiveFileNorOtherFiles) {
    const TempDir dir;
    write_file(dir.path() / "closetrace-20261125T010203.jsonl", "a single recording\n");
    write_file(dir.path() / "notes.jsonl", "mine\n");
    write_file(dir.path() / "closetrace-20200101T000000-000001.jsonl.bak", "a copy\n");
    RotationPolicy policy;
    policy.keep_files = 0;
    TraceRotation files(dir.path(), policy);
    write_trace_file(files, 0, 1);
    TraceWriter& live = files.open(kUnixNs + kSecondNs, kSecondNs);
    live.write_line("live");
    live.flush();
    files.wait();
    EXPECT_TRUE(TraceRotation::closed_files(dir.path()).empty());
    std::vector<std::string> expected{"closetrace-20200101T000000-000001.jsonl.bak",
                                      "closetrace-20261125T010203.jsonl",
                                      files.live_path().filename().string(), "notes.jsonl"};
    std::sort(expected.begin(), expected.end());
    EXPECT_EQ(directory_names(dir.path()), expected);
}

TEST(TraceRotation, GzipFilesReadAsTheyWereWritten) {
    const TempDir dir;
    RotationPolicy policy;
    policy.gzip = true;
    TraceRotation files(dir.path(), policy);
    TraceWriter& writer = files.open(kUnixNs, 0);
    std::string expected;
    for (int line = 0; line < 5000; ++line) {
        const std::string text = R"({"type":"conn","id":)" + std::to_string(line) + "}";
        writer.write_line(text);
        expected += text + "\n";
    }
    files.close();
    files.wait();
    const std::vector<fs::path> closed = TraceRotation::closed_files(dir.path());
    ASSERT_EQ(closed.size(), 1u);
    EXPECT_EQ(closed[0].extension(), ".gz");
    EXPECT_LT(fs::file_size(closed[0]), expected.size() / 4);
    EXPECT_EQ(read_whole(closed[0]), expected);
    EXPECT_EQ(fs::status(closed[0]).permissions() & fs::perms::all,
              fs::perms::owner_read | fs::perms::owner_write);
    EXPECT_TRUE(files.take_problems().empty());
}

TEST(TraceRotation, ALiveFileLeftByADeadRecorderIsClosedAndKept) {
    const TempDir dir;
    const std::string stem = "closetrace-20261125T010203-000007";
    write_file(dir.path() / (stem + ".live.jsonl"), "{\"type\":\"header\"}\n{\"type\":\"co");
    write_file(dir.path() / (stem + ".jsonl.gz.partial"), "cut short");
    {
        RotationPolicy policy;
        policy.gzip = true;
        TraceRotation files(dir.path(), policy);
    }
    EXPECT_EQ(directory_names(dir.path()), std::vector<std::string>{stem + ".jsonl.gz"});
    EXPECT_EQ(read_whole(dir.path() / (stem + ".jsonl.gz")),
              "{\"type\":\"header\"}\n{\"type\":\"co");
}

// An empty plain file beside a compressed one of its name (another tool made it) is removed:
// compressed, it would replace the recording.
TEST(TraceRotation, NeverCompressesAnEmptyFileOverACompressedOne) {
    const TempDir dir;
    RotationPolicy policy;
    policy.gzip = true;
    {
        TraceRotation files(dir.path(), policy);
        write_trace_file(files, 0, 3);
    }
    const fs::path compressed = TraceRotation::closed_files(dir.path()).at(0);
    const fs::path stray = fs::path(compressed).replace_extension();
    write_file(stray, "");
    TraceRotation files(dir.path(), policy);
    write_trace_file(files, 1, 1);
    files.wait();
    EXPECT_TRUE(files.take_problems().empty());
    EXPECT_EQ(read_whole(compressed), std::string(R"({"type":"conn"})" "\n").append(
                                          R"({"type":"conn"})" "\n" R"({"type":"conn"})" "\n"));
    EXPECT_FALSE(fs::exists(stray));
}

TEST(TraceRotation, OneRecorderPerDirectory) {
    const TempDir dir;
    TraceRotation files(dir.path(), {});
    try {
        TraceRotation second(dir.path(), {});
        FAIL() << "a second recorder locked the same directory";
    } catch (const std::system_error& error) {
        EXPECT_EQ(error.code().value(), EWOULDBLOCK);
    }
}

TEST(TraceRotation, TheLastFileIsClosedWhenTheRecordingUnwinds) {
    const TempDir dir;
    {
        TraceRotation files(dir.path(), {});
        files.open(kUnixNs, 0).write_line("buffered");
    }
    const std::vector<fs::path> closed = TraceRotation::closed_files(dir.path());
    ASSERT_EQ(closed.size(), 1u);
    EXPECT_EQ(file_content(closed[0]), "buffered\n");
}

}  // namespace
}  // namespace closetrace
