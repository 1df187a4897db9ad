"""Where `record` writes, as an unlucky operator meets it: a failing write (a full device or
filesystem, a closed pipe) is one line and a non-zero exit that loses nothing already written;
a trace has one writer and is not overwritten unless asked; bad option values are one short line.
The offline commands fail the same way when their standard output cannot be written."""
import gzip
import json
import os
import subprocess
import tempfile
import time
import unittest

from support import CLOSETRACE, ChurningTraffic, Recorder, read_trace, require_bpf, wait_for

FIXTURE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")


def run(*args, timeout=60, **kwargs):
    return subprocess.run([CLOSETRACE, *args], capture_output=True, text=True, timeout=timeout,
                          **kwargs)


def one_line(test, result):
    lines = result.stderr.strip().splitlines()
    test.assertEqual(len(lines), 1, result.stderr)
    test.assertNotIn("terminate called", result.stderr)
    return lines[0]


def complete_lines(path):
    """Every line of a trace up to its last '\\n' parses; returns the records."""
    with open(path, encoding="ascii") as trace:
        text = trace.read()
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]


class RecordOutputTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_bpf()

    def setUp(self):
        directory = tempfile.TemporaryDirectory(prefix="closetrace-output-")
        self.addCleanup(directory.cleanup)
        self.directory = directory.name

    def assert_failed_cleanly(self, result):
        """Exited (its programs are BPF links, detached when the process ends) with one line."""
        self.assertEqual(result.returncode, 1, result.stderr)
        line = one_line(self, result)
        self.assertIn("cannot write", line)
        return line

    def test_dev_full_is_one_line_and_exit_1(self):
        result = run("record", "--duration", "5", "-o", "/dev/full")
        line = self.assert_failed_cleanly(result)
        self.assertIn("No space left on device", line)

    def test_full_filesystem_keeps_the_lines_written_before(self):
        # A 64 KiB tmpfs in a mount namespace of its own fills up while churn is recorded.
        small = os.path.join(self.directory, "small")
        path = os.path.join(small, "t.jsonl")
        kept = os.path.join(self.directory, "kept.jsonl")
        os.mkdir(small)
        script = (f'mount -t tmpfs -o size=64k none {small} && '
                  f'{{ "$@"; status=$?; cp {path} {kept}; exit $status; }}')
        with ChurningTraffic() as traffic:
            result = subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                 CLOSETRACE, "record", "--port", str(traffic.port), "--quiet", "--events",
                 "--duration", "60", "-o", path],
                capture_output=True, text=True, timeout=120)
        self.assert_failed_cleanly(result)
        with open(kept, "rb") as trace:
            self.assertTrue(trace.read().endswith(b"\n"), "the file ends in a cut line")
        records = complete_lines(kept)
        self.assertEqual(records[0]["type"], "header")
        self.assertGreater(len(records), 10)

    def test_closed_pipe_is_one_line_and_exit_1(self):
        process = subprocess.Popen([CLOSETRACE, "record", "--duration", "5", "-o", "-"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        process.stdout.close()  # nobody reads the trace
        _, err = process.communicate(timeout=60)
        result = subprocess.CompletedProcess(process.args, process.returncode, "", err)
        self.assert_failed_cleanly(result)
        self.assertIn("standard output", err)

    def test_a_second_recorder_on_the_same_file_is_refused(self):
        recorder = Recorder("--quiet", "--port", "9")
        self.addCleanup(recorder.cleanup)
        with recorder:
            second = run("record", "--quiet", "--duration", "1", "-o", recorder.path)
            self.assertEqual(second.returncode, 1, second.stderr)
            line = one_line(self, second)
            self.assertIn("another closetrace record", line)
            self.assertIn("--output", line)
            self.assertIsNone(recorder.process.poll())
        self.assertEqual(recorder.process.returncode, 0, recorder.stderr)
        header, _, _, summary = recorder.trace()  # one writer: one header, one summary
        self.assertEqual(summary["connections"], 0)
        self.assertEqual(os.stat(recorder.path).st_mode & 0o777, 0o600)

    def test_an_existing_trace_is_kept_unless_forced(self):
        path = os.path.join(self.directory, "evidence.jsonl")
        with open(path, "w") as evidence:
            evidence.write("evidence\n")
        os.chmod(path, 0o644)
        refused = run("record", "--quiet", "--duration", "1", "-o", path)
        self.assertEqual(refused.returncode, 1, refused.stderr)
        self.assertIn("--force", one_line(self, refused))
        with open(path) as evidence:
            self.assertEqual(evidence.read(), "evidence\n")
        forced = run("record", "--quiet", "--duration", "1", "--force", "-o", path)
        self.assertEqual(forced.returncode, 0, forced.stderr)
        read_trace(path)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)

    def test_option_values_are_checked_in_one_short_line(self):
        for args in (["--duration", "nan"], ["--duration", "inf"], ["--duration", "0"],
                     ["--duration", "-1"], ["--linger-ms", "nan"]):
            result = run("record", *args, "-o", os.path.join(self.directory, "never.jsonl"))
            self.assertEqual(result.returncode, 2, (args, result.stderr))
            line = one_line(self, result)
            self.assertIn(args[0], line)
            self.assertIn("is not a number of", line)
            self.assertLess(len(line), 160, line)
        pid = 4_000_000
        while os.path.exists(f"/proc/{pid}"):
            pid += 1
        result = run("record", "--pid", str(pid), "--duration", "1")
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn(f"no process has pid {pid}", one_line(self, result))
        result = run("record", "--btf", "/etc/passwd", "--duration", "1", "-o",
                     os.path.join(self.directory, "never.jsonl"))
        self.assertEqual(result.returncode, 1, result.stderr)
        line = one_line(self, result)
        self.assertIn("--btf /etc/passwd: not a BTF file", line)
        self.assertNotIn("Unknown error", line)
        self.assertFalse(os.listdir(self.directory))


class OfflineOutputTest(unittest.TestCase):
    """No privileges needed: report, diff, verify and alb on a stored trace."""

    TRACE = os.path.join(FIXTURE, "alb", "race_trace.jsonl")
    ALB_LOG = os.path.join(FIXTURE, "alb", "race_alb.log")

    def test_a_full_standard_output_is_one_line_and_exit_2(self):
        commands = [["report", self.TRACE], ["report", self.TRACE, "--format", "html"],
                    ["diff", self.TRACE, self.TRACE], ["verify", self.TRACE],
                    ["alb", self.TRACE, self.ALB_LOG]]
        for command in commands:
            with open("/dev/full", "w") as full:
                result = subprocess.run([CLOSETRACE, *command], stdout=full,
                                        stderr=subprocess.PIPE, text=True, timeout=60)
            self.assertEqual(result.returncode, 2, (command, result.stderr))
            line = one_line(self, result)
            self.assertIn("cannot write standard output: No space left on device", line)

    def test_a_trace_on_standard_input_or_gzipped_reads_as_the_file(self):
        """`report -` (what `record -o -` pipes) and a .gz trace (what collect-to-s3.sh
        uploads) give the report of the plain file."""
        with open(self.TRACE, "rb") as trace:
            content = trace.read()
        with tempfile.TemporaryDirectory() as directory:
            gzipped = os.path.join(directory, "race_trace.jsonl.gz")
            with gzip.open(gzipped, "wb") as out:
                out.write(content)
            for command in (["report", "{}", "--format", "json"], ["verify", "{}"],
                            ["diff", self.TRACE, "{}"], ["alb", "{}", self.ALB_LOG]):
                expected = run(*[self.TRACE if arg == "{}" else arg for arg in command])
                piped = subprocess.run([CLOSETRACE, *["-" if arg == "{}" else arg
                                                      for arg in command]],
                                       input=content, capture_output=True, timeout=60)
                compressed = run(*[gzipped if arg == "{}" else arg for arg in command])
                for result, name in ((piped, "standard input"), (compressed, gzipped)):
                    stdout = result.stdout if isinstance(result.stdout, str) else \
                        result.stdout.decode()
                    self.assertEqual(result.returncode, expected.returncode, (command, name))
                    # verify points at `closetrace report` of the trace as given: `-` piped.
                    stdout = stdout.replace(name, self.TRACE).replace(
                        "closetrace report -`", f"closetrace report {self.TRACE}`")
                    self.assertEqual(stdout, expected.stdout, (command, name))

    def test_alb_skew_must_be_a_finite_number(self):
        result = run("alb", self.TRACE, self.ALB_LOG, "--skew", "nan")
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn("--skew: nan is not a number of ms", one_line(self, result))


if __name__ == "__main__":
    unittest.main()
