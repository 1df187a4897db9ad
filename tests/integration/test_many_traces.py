"""Many traces at once, as the fleet workflow gives them (issue 16): `report host1.jsonl.gz
host2.jsonl` reports both hosts with a per-host breakdown, a directory of traces reads as its
files, diff compares two sets, alb takes several traces, and a damaged file among them is one
line and exit 2. Offline: no privileges needed. The inputs are the fixtures with their header's
host rewritten."""
import gzip
import json
import os
import shutil
import subprocess
import tempfile
import unittest

from support import CLOSETRACE

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")


def run(*args):
    return subprocess.run([CLOSETRACE, *args], capture_output=True, text=True, timeout=120)


def as_host(fixture, host, path):
    """The fixture trace with its header's host set to `host`, written to `path` (.gz: gzip)."""
    with open(os.path.join(FIXTURE, fixture), encoding="ascii") as trace:
        lines = trace.read().splitlines(keepends=True)
    header = json.loads(lines[0])
    header["host"] = host
    content = (json.dumps(header, separators=(",", ":")) + "\n" + "".join(lines[1:])).encode()
    with (gzip.open if path.endswith(".gz") else open)(path, "wb") as out:
        out.write(content)
    return path


def report_json(*args):
    result = run("report", *args, "--format", "json")
    if result.returncode != 0:
        raise AssertionError(result.stderr)
    return json.loads(result.stdout)


class ManyTracesTest(unittest.TestCase):
    def setUp(self):
        directory = tempfile.TemporaryDirectory(prefix="closetrace-many-")
        self.addCleanup(directory.cleanup)
        self.directory = directory.name
        self.host1 = as_host("mismatch.jsonl", "host1", os.path.join(self.directory, "host1.jsonl.gz"))
        self.host2 = as_host("overload.jsonl", "host2", os.path.join(self.directory, "host2.jsonl"))

    def test_report_of_two_hosts_breaks_the_figures_down_by_host(self):
        alone = {"host1": report_json(self.host1), "host2": report_json(self.host2)}
        merged = report_json(self.host1, self.host2)
        self.assertEqual(merged["format"], "closetrace-report/2")
        self.assertEqual([(f["file"], f["host"]) for f in merged["files"]],
                         [(self.host1, "host1"), (self.host2, "host2")])
        by_host = {group["host"]: group for group in merged["by_host"]["groups"]}
        self.assertEqual(sorted(by_host), ["host1", "host2"])
        for host, report in alone.items():
            judged = report["trace"]["connections"] - report["trace"]["incomplete_connections"]
            self.assertEqual(by_host[host]["connections"], judged, host)
            self.assertEqual(by_host[host]["requests"], report["trace"]["requests"], host)
            for verdict, figures in report["verdicts"].items():
                self.assertEqual(by_host[host]["verdicts"][verdict], figures["connections"],
                                 (host, verdict))
        for member in ("races", "inflight_resets", "peer_gave_up"):
            self.assertEqual(merged[member]["total"],
                             sum(report[member]["total"] for report in alone.values()), member)
            for caught in merged[member]["listed"]:
                self.assertIn(caught["host"], ("host1", "host2"))

        text = run("report", self.host1, self.host2, "--by", "host")
        self.assertEqual(text.returncode, 0, text.stderr)
        self.assertTrue(text.stdout.startswith("closetrace report: 2 traces of 2 hosts\n"))
        section = text.stdout.split("\nBy host\n")[1].split("\n\n")[0].splitlines()
        self.assertEqual(sorted(line.split()[0] for line in section[1:]), ["host1", "host2"])
        self.assertIn("[host host1]", text.stdout)

    def test_a_directory_reads_as_its_trace_files_in_name_order(self):
        with open(os.path.join(self.directory, "notes.txt"), "w") as notes:
            notes.write("not a trace\n")
        self.assertEqual(report_json(self.directory), report_json(self.host1, self.host2))

    def test_diff_compares_two_sets(self):
        before = os.path.join(self.directory, "before")
        after = os.path.join(self.directory, "after")
        os.makedirs(before)
        os.makedirs(after)
        as_host("mismatch.jsonl", "host1", os.path.join(before, "host1.jsonl"))
        as_host("mismatch.jsonl", "host2", os.path.join(before, "host2.jsonl"))
        as_host("fixed.jsonl", "host1", os.path.join(after, "host1.jsonl"))
        as_host("fixed.jsonl", "host2", os.path.join(after, "host2.jsonl"))
        by_directory = run("diff", before, after, "--format", "json")
        self.assertEqual(by_directory.returncode, 0, by_directory.stderr)
        diff = json.loads(by_directory.stdout)
        self.assertEqual(diff["conclusion"], "fixed")
        self.assertEqual(len(diff["before"]["files"]), 2)
        by_option = run("diff", "--before", os.path.join(before, "host1.jsonl"),
                        os.path.join(before, "host2.jsonl"), "--after", after, "--format", "json")
        self.assertEqual(by_option.returncode, 0, by_option.stderr)
        self.assertEqual(json.loads(by_option.stdout), diff)
        # Two files: the diff of today.
        single = run("diff", os.path.join(FIXTURE, "mismatch.jsonl"),
                     os.path.join(FIXTURE, "fixed.jsonl"), "--format", "json")
        self.assertEqual(json.loads(single.stdout)["format"], "closetrace-diff/1")

    def test_alb_takes_several_traces(self):
        trace = os.path.join(FIXTURE, "alb", "race_trace.jsonl")
        log = os.path.join(FIXTURE, "alb", "race_alb.log")
        alone = run("alb", trace, log, "--format", "json")
        self.assertEqual(alone.returncode, 0, alone.stderr)
        other = as_host("overload.jsonl", "host2", os.path.join(self.directory, "other.jsonl"))
        both = run("alb", "--trace", trace, "--trace", other, log, "--format", "json")
        self.assertEqual(both.returncode, 0, both.stderr)
        # The other host's endpoints are not the balancer's targets: the same lines match, each
        # naming the host of its request.
        pairs = json.loads(both.stdout)["pairs"]
        self.assertEqual({pair["trace"].pop("host") for pair in pairs}, {"ip-10-0-1-17"})
        self.assertEqual(pairs, json.loads(alone.stdout)["pairs"])

    def test_a_damaged_second_file_is_one_line_and_exit_2(self):
        damaged = os.path.join(self.directory, "host3.jsonl")
        shutil.copy(self.host2, damaged)
        with open(damaged, "a", encoding="ascii") as out:
            out.write('{"type":"conn"}\n')
        for command in (["report", self.host1, damaged], ["verify", self.host1, damaged],
                        ["diff", "--before", self.host1, "--after", damaged],
                        ["alb", "--trace", self.host1, "--trace", damaged,
                         os.path.join(FIXTURE, "alb", "race_alb.log")]):
            result = run(*command)
            self.assertEqual(result.returncode, 2, (command, result.stderr))
            lines = result.stderr.strip().splitlines()
            self.assertEqual(len(lines), 1, (command, result.stderr))
            self.assertIn(damaged, lines[0])
            self.assertEqual(result.stdout, "", command)


if __name__ == "__main__":
    unittest.main()
