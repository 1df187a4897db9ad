// Golden tests: report, diff and verify on the traces in tests/fixtures, compared with the
// expected outputs stored next to them.
//
//   NAME.jsonl                      a trace (every one needs at least NAME.expected.txt)
//   NAME.expected.txt               `closetrace report NAME.jsonl`
//   NAME.expected.json              `closetrace report NAME.jsonl --format json` (stdout only)
//   NAME.verify.expected.txt        `closetrace verify NAME.jsonl`
//   A--B.diff.expected.txt, .json   `closetrace diff A.jsonl B.jsonl`
//
// A .txt file holds stdout, then "--- stderr ---" and stderr when there is any, then
// "--- exit status N ---". The commands run as library calls from inside tests/fixtures, so that
// file names in the outputs are the bare names.
//
// To regenerate after a deliberate change (then review the diff of tests/fixtures):
//   CLOSETRACE_UPDATE_GOLDEN=1 build/tests/unit_tests --gtest_filter='*Golden*'
// It rewrites every expected file, and writes the report's (text, and JSON unless the report
// fails) and verify's for a trace that has none. A new diff pair: create an empty
// A--B.diff.expected.txt (and .json) and regenerate.
#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "closetrace/analysis.h"
#include "closetrace/report.h"

namespace closetrace {
namespace {

namespace fs = std::filesystem;

const fs::path kFixtures = CLOSETRACE_FIXTURES;

bool updating() {
    const char* update = std::getenv("CLOSETRACE_UPDATE_GOLDEN");
    return update && *update && std::string(update) != "0";
}

std::string document(const CommandOutput& output, bool with_status) {
    if (!with_status) return output.out;
    std::string text = output.out;
    if (!output.err.empty()) text += "--- stderr ---\n" + output.err;
    return text + "--- exit status " + std::to_string(output.exit_code) + " ---\n";
}

std::string read_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Runs `command` from inside the fixtures directory, restoring the working directory after.
CommandOutput in_fixtures(const std::function<CommandOutput()>& command) {
    const fs::path previous = fs::current_path();
    fs::current_path(kFixtures);
    CommandOutput output = command();
    fs::current_path(previous);
    return output;
}

// Compares with `expected` (or, when updating, writes it). With `create`, a missing expected
// file is written when updating and a failure otherwise.
void check(const fs::path& expected, const std::string& actual, bool create) {
    const bool exists = fs::exists(expected);
    if (updating() && (exists || create)) {
        std::ofstream(expected, std::ios::binary) << actual;
        return;
    }
    if (!exists) {
        if (create) {
            ADD_FAILURE() << expected
                          << " is missing: run with CLOSETRACE_UPDATE_GOLDEN=1 and "
                             "review it (see the top of golden_test.cpp)";
        }
        return;
    }
    EXPECT_EQ(read_file(expected), actual)
        << "output differs from " << expected << "; if the change is deliberate, regenerate "
        << "with CLOSETRACE_UPDATE_GOLDEN=1 (see the top of golden_test.cpp)";
}

bool ends_with(const std::string& text, const std::string& suffix) {
    return text.size() >= suffix.size() &&
           text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string without_suffix(const std::string& text, const std::string& suffix) {
    return text.substr(0, text.size() - suffix.size());
}

std::vector<std::string> traces() {
    std::vector<std::string> names;
    for (const fs::directory_entry& entry : fs::directory_iterator(kFixtures)) {
        const std::string file = entry.path().filename().string();
        if (entry.is_regular_file() && ends_with(file, ".jsonl"))
            names.push_back(without_suffix(file, ".jsonl"));
    }
    std::ranges::sort(names);
    return names;
}

// "A--B" for every A--B.diff.expected.txt or .json.
std::vector<std::string> diff_pairs() {
    std::vector<std::string> pairs;
    for (const fs::directory_entry& entry : fs::directory_iterator(kFixtures)) {
        const std::string file = entry.path().filename().string();
        for (const char* suffix : {".diff.expected.txt", ".diff.expected.json"}) {
            if (ends_with(file, suffix)) pairs.push_back(without_suffix(file, suffix));
        }
    }
    std::ranges::sort(pairs);
    pairs.erase(std::unique(pairs.begin(), pairs.end()), pairs.end());
    return pairs;
}

// gtest parameter names: letters, digits and underscores.
std::string test_name(const ::testing::TestParamInfo<std::string>& info) {
    std::string name = info.param;
    for (char& c : name) {
        if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
    }
    return name;
}

class GoldenTrace : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTrace, Report) {
    const std::string trace = GetParam() + ".jsonl";
    const CommandOutput text = in_fixtures([&] { return run_report(trace, OutputFormat::Text); });
    check(kFixtures / (GetParam() + ".expected.txt"), document(text, true), true);
    const CommandOutput json = in_fixtures([&] { return run_report(trace, OutputFormat::Json); });
    EXPECT_EQ(json.exit_code, text.exit_code);
    check(kFixtures / (GetParam() + ".expected.json"), document(json, false), json.exit_code == 0);
}

TEST_P(GoldenTrace, Verify) {
    const std::string trace = GetParam() + ".jsonl";
    const CommandOutput output = in_fixtures([&] { return run_verify(trace, std::nullopt); });
    check(kFixtures / (GetParam() + ".verify.expected.txt"), document(output, true), true);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenTrace, ::testing::ValuesIn(traces()), test_name);

class GoldenDiff : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenDiff, Diff) {
    const std::string pair = GetParam();
    const std::size_t separator = pair.find("--");
    ASSERT_NE(separator, std::string::npos) << pair << ": name diff expectations BEFORE--AFTER";
    const std::string before = pair.substr(0, separator) + ".jsonl";
    const std::string after = pair.substr(separator + 2) + ".jsonl";
    const CommandOutput text =
        in_fixtures([&] { return run_diff(before, after, OutputFormat::Text); });
    check(kFixtures / (pair + ".diff.expected.txt"), document(text, true), false);
    const CommandOutput json =
        in_fixtures([&] { return run_diff(before, after, OutputFormat::Json); });
    check(kFixtures / (pair + ".diff.expected.json"), document(json, false), false);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenDiff, ::testing::ValuesIn(diff_pairs()), test_name);
// Without diff expectations the suite is empty, which is not a failure.
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(GoldenDiff);

}  // namespace
}  // namespace closetrace
