"""`closetrace record` and `doctor` as a user meets them: privileges, bad flags, stopping."""
import collections
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import unittest

from support import CLOSETRACE, ChurningTraffic, Recorder, read_trace, report_json, require_bpf


def connection_stories(conns, server_port):
    """The connections of a trace whose both ends are on this host, one per connection: its
    server's end (the one on `server_port`), incomplete when either end is; a socket with no
    partner stays as it is. The recorder must have paired the two (each naming the other's
    socket in `other_end`, the server end as such), whatever their roles (unknown when their
    opening was lost). Ends are paired by the sockets they name, as the report pairs them: the
    ends on one address pair may be those of several connections (a client port reused)."""
    ends = collections.defaultdict(list)
    for conn in conns:
        local = (conn["local"]["addr"], conn["local"]["port"])
        remote = (conn["remote"]["addr"], conn["remote"]["port"])
        ends[frozenset((local, remote))].append(conn)
    stories = []
    for group in ends.values():
        if len(group) == 2:
            # One connection on this address pair: its ends must name each other.
            first, second = group
            assert (first["other_end"] or {}).get("cookie") == second["cookie"], group
        unpaired = {conn["cookie"]: conn for conn in group}
        for conn in group:
            if unpaired.pop(conn["cookie"], None) is None:
                continue  # the partner of an end before it
            partner = unpaired.pop((conn["other_end"] or {}).get("cookie"), None)
            if partner is None:
                stories.append(conn)
                continue
            on_server_port = conn["local"]["port"] == server_port
            server, client = (conn, partner) if on_server_port else (partner, conn)
            assert server["other_end"] == {"cookie": client["cookie"], "server": "local"}, group
            assert client["other_end"] == {"cookie": server["cookie"], "server": "peer"}, group
            stories.append(dict(server, incomplete=server["incomplete"] or client["incomplete"]))
    return stories


def run(*args, user=None, timeout=30):
    command = [CLOSETRACE, *args]
    if user:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


# Runs a command (closetrace) in a mount namespace where /sys/kernel/btf is hidden, as on a kernel
# built without BTF (the kernel itself keeps it; the portable programs do not use it).
WITHOUT_KERNEL_BTF = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                      'mount -t tmpfs -o size=1m none /sys/kernel/btf && exec "$@"', "sh"]


class RecordCliTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_bpf()

    def test_non_root_gets_one_line_naming_the_privilege(self):
        result = run("record", "--duration", "1", "-o", "/tmp/never-written.jsonl", user=65534)
        self.assertNotEqual(result.returncode, 0)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn("CAP_BPF", lines[0])
        self.assertIn("root", lines[0])
        self.assertFalse(os.path.exists("/tmp/never-written.jsonl"))

    def test_unknown_flag_is_one_line_and_exit_2(self):
        result = run("record", "--no-such-flag")
        self.assertEqual(result.returncode, 2)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertIn("--no-such-flag", result.stderr)

    def test_doctor_names_probes_and_why_not_kprobes(self):
        result = run("doctor")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("record will use: tp_btf/inet_sock_set_state", result.stdout)
        self.assertRegex(result.stdout, r"test connection +recorded with its addresses and ports")
        self.assertIn("kprobes", result.stdout)
        self.assertIn("fentry", result.stdout)

    def test_doctor_without_privileges_fails_with_what_to_do(self):
        result = run("doctor", user=65534)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("run as root", result.stdout)

    def run_without_kernel_btf(self, *args):
        return subprocess.run([*WITHOUT_KERNEL_BTF, CLOSETRACE, *args],
                              capture_output=True, text=True, timeout=60)

    def test_without_kernel_btf_record_says_to_give_btf_in_one_line(self):
        result = self.run_without_kernel_btf("record", "--duration", "1", "-o",
                                             "/tmp/never-written.jsonl")
        self.assertEqual(result.returncode, 1, result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn("no BTF", lines[0])
        self.assertIn("--btf FILE", lines[0])
        self.assertFalse(os.path.exists("/tmp/never-written.jsonl"))
        doctor = self.run_without_kernel_btf("doctor")
        self.assertEqual(doctor.returncode, 1, doctor.stdout)
        self.assertIn("NO: record needs --btf FILE", doctor.stdout)

    def record_churn(self, *args, prefix=()):
        """Records churn that runs while the programs attach (connections open between one
        program and the next) and ends before the recording does (none is left open)."""
        with ChurningTraffic() as traffic:
            recorder = Recorder("--port", str(traffic.port), "--quiet", *args, prefix=prefix)
            self.addCleanup(recorder.cleanup)
            with recorder:
                time.sleep(1.5)
                traffic.stop()
        self.assertEqual(recorder.process.returncode, 0, recorder.stderr)
        return recorder.trace()

    def assert_every_request_recorded(self, conns, summary):
        self.assertGreater(len(conns), 10)
        self.assertEqual(summary["lost_events"], 0)
        # Each side closes right after the one exchange: whichever FIN goes first. A connection
        # opened while the programs attached is one first seen mid-life (role unknown).
        servers = [conn for conn in conns if conn["role"] == "server"]
        self.assertGreater(len(servers), 5)
        for conn in servers:
            self.assertIn(conn["verdict"], {"local_idle_close", "peer_idle_close"}, conn)
            self.assertEqual([(r["method"], r["target"], r.get("status"))
                              for r in conn["requests"]], [("GET", "/churn", 200)], conn)

    def test_record_has_every_request_of_churn(self):
        header, conns, _, summary = self.record_churn()
        self.assertTrue(header["probes"]["state"].startswith("tp_btf/"), header["probes"])
        self.assert_every_request_recorded(conns, summary)

    def test_churn_the_recording_ends_in_has_no_request_falsely_in_flight(self):
        """Programs detach one at a time: a connection closing meanwhile must not show its close
        without the answer before it (a request in flight that was answered). Each recording's
        end is one chance to catch that: several short recordings of fast churn."""
        with ChurningTraffic(pause_s=0) as traffic:
            for _ in range(4):
                recorder = Recorder("--port", str(traffic.port), "--quiet")
                self.addCleanup(recorder.cleanup)
                with recorder:
                    time.sleep(0.5)
                self.assertEqual(recorder.process.returncode, 0, recorder.stderr)
                _, conns, _, summary = recorder.trace()
                self.assertEqual(summary["lost_events"], 0)
                # Tracked from their opening and closed while recording: one answered exchange.
                closed = [conn for conn in conns
                          if conn["role"] != "unknown" and conn["verdict"] != "open"]
                self.assertGreater(len(closed), 50)
                for conn in closed:
                    self.assertIn(conn["verdict"], {"local_idle_close", "peer_idle_close"}, conn)
                    self.assertEqual([(r["method"], r["target"], r.get("status"))
                                      for r in conn["requests"]], [("GET", "/churn", 200)], conn)

    def test_without_kernel_btf_record_with_btf_file_records(self):
        with tempfile.TemporaryDirectory() as directory:
            btf = os.path.join(directory, "vmlinux.btf")
            with open("/sys/kernel/btf/vmlinux", "rb") as source, open(btf, "wb") as copy:
                copy.write(source.read())
            header, conns, _, summary = self.record_churn("--btf", btf,
                                                          prefix=WITHOUT_KERNEL_BTF)
        self.assertTrue(header["probes"]["state"].startswith("raw_tp/"), header["probes"])
        self.assert_every_request_recorded(conns, summary)

    def test_lost_events_mark_connections_incomplete_and_stay_out_of_the_report(self):
        """A recorder that stops reading (SIGSTOP) under churn loses events once its smallest ring
        is full: the connections open meanwhile are marked incomplete, every other one is whole,
        and the report judges only those."""
        with ChurningTraffic() as traffic:
            recorder = Recorder("--port", str(traffic.port), "--quiet", "--ring-mb", "1")
            self.addCleanup(recorder.cleanup)
            with recorder:
                traffic.stall(recorder)
        self.assertEqual(recorder.process.returncode, 0, recorder.stderr)
        self.assertIn("marked incomplete", recorder.stderr)
        _, conns, _, summary = recorder.trace()
        self.assertGreater(summary["lost_events"], 0)
        incomplete = [conn for conn in conns if conn["incomplete"]]
        complete = [conn for conn in conns if not conn["incomplete"]]
        self.assertGreater(len(incomplete), 0)
        # Connections seen from their opening (role known) and not marked are whole: one exchange,
        # then whichever FIN goes first.
        whole = [conn for conn in complete if conn["role"] != "unknown"]
        self.assertGreater(len(whole), 10)
        for conn in whole:
            self.assertIn(conn["verdict"], {"local_idle_close", "peer_idle_close"}, conn)
            self.assertEqual([(r["method"], r["target"], r.get("status"))
                              for r in conn["requests"]], [("GET", "/churn", 200)], conn)

        # Both ends are on this host: the report tells each connection once, by its server's
        # end, and a connection is incomplete when either end is.
        stories = connection_stories(conns, traffic.port)
        incomplete_stories = [story for story in stories if story["incomplete"]]
        report = report_json(recorder.path)
        self.assertEqual(report["trace"]["incomplete_connections"], len(incomplete_stories))
        self.assertEqual({verdict: figures["connections"]
                          for verdict, figures in report["verdicts"].items()
                          if figures["connections"]},
                         dict(collections.Counter(story["verdict"] for story in stories
                                                  if not story["incomplete"])))
        # One exchange a connection, closed right after it: no idle timer to tell who closes first.
        self.assertEqual([r["kind"] for r in report["recommendations"]], ["record_longer"])
        self.assertIn(f"{len(incomplete_stories)} connection", report["conclusion"])

    def test_btf_option_rejects_a_file_that_is_not_btf(self):
        result = run("record", "--btf", "/etc/hostname", "--duration", "1", "-o",
                     "/tmp/never-written.jsonl")
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertIn("--btf /etc/hostname: not a BTF file", result.stderr)
        self.assertFalse(os.path.exists("/tmp/never-written.jsonl"))
        missing = run("record", "--btf", "/no/such.btf")
        self.assertEqual(missing.returncode, 2, missing.stderr)
        self.assertIn("/no/such.btf", missing.stderr)

    def stop_midway_and_check(self, stop_signal):
        with ChurningTraffic() as traffic:
            recorder = Recorder("--port", str(traffic.port), "--quiet", linger_ms=100)
            try:
                with recorder:
                    time.sleep(1.5)
                    recorder.process.send_signal(stop_signal)
                    recorder.stop()
                self.assertEqual(recorder.process.returncode, 0, recorder.stderr)
                header, conns, _, summary = recorder.trace()
                self.assertGreater(len(conns), 10)
                self.assertEqual(summary["connections"], len(conns))
                self.assertEqual(summary["lost_events"], 0)
                self.assertGreater(summary["duration_s"], 1.0)
                with open(recorder.path, encoding="ascii") as trace:
                    last = trace.read().splitlines()[-1]
                self.assertEqual(json.loads(last)["type"], "summary")
            finally:
                recorder.cleanup()

    def test_ctrl_c_leaves_a_complete_valid_file(self):
        self.stop_midway_and_check(signal.SIGINT)

    def test_sigterm_leaves_a_complete_valid_file(self):
        self.stop_midway_and_check(signal.SIGTERM)

    def test_sighup_leaves_a_complete_valid_file(self):
        self.stop_midway_and_check(signal.SIGHUP)  # the SSH session dropped

    def test_sigquit_leaves_a_complete_valid_file(self):
        self.stop_midway_and_check(signal.SIGQUIT)

    def test_sigpipe_leaves_a_complete_valid_file(self):
        self.stop_midway_and_check(signal.SIGPIPE)

    def test_sigusr1_leaves_a_complete_valid_file(self):
        self.stop_midway_and_check(signal.SIGUSR1)  # meant for another process

    def test_sigalrm_leaves_a_complete_valid_file(self):
        self.stop_midway_and_check(signal.SIGALRM)

    def test_a_gz_output_name_is_refused(self):
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "t.jsonl.gz")
            result = run("record", "--duration", "1", "--quiet", "-o", path)
            self.assertEqual(result.returncode, 2, result.stderr)
            self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
            self.assertIn("plain JSON lines", result.stderr)
            self.assertFalse(os.path.exists(path))

    def test_bytes_kept_below_one_file_are_refused(self):
        with tempfile.TemporaryDirectory() as directory:
            result = run("record", "--duration", "1", "--quiet", "-o", directory,
                         "--rotate-size", "8K", "--keep-bytes", "6K")
            self.assertEqual(result.returncode, 2, result.stderr)
            self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
            self.assertIn("files would be deleted as they close", result.stderr)
            self.assertEqual(os.listdir(directory), [])

    def test_output_that_cannot_be_written_is_a_failure(self):
        fixture = os.path.join(os.path.dirname(__file__), "..", "fixtures", "mismatch.jsonl")
        for command in (["doctor"], ["report", fixture]):
            with open("/dev/full", "w") as full:
                result = subprocess.run([CLOSETRACE, *command], stdout=full,
                                        stderr=subprocess.PIPE, text=True, check=False)
            self.assertEqual(result.returncode, 2, (command, result.stderr))
            self.assertIn("cannot write standard output: No space left on device", result.stderr)

    def test_a_missing_netns_is_named_once_with_what_to_give(self):
        result = run("record", "--netns", "/no/such/netns", "--duration", "1", "--quiet",
                     "-o", "/tmp/never-written.jsonl")
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertEqual(result.stderr.count("--netns"), 1, result.stderr)
        self.assertIn("/run/netns/NAME", result.stderr)
        self.assertFalse(os.path.exists("/tmp/never-written.jsonl"))

    def test_live_lines_show_client_then_server_and_the_cause(self):
        with ChurningTraffic() as traffic:
            recorder = Recorder("--port", str(traffic.port), "--duration", "1.5")
            try:
                with recorder:
                    _, recorder.stderr = recorder.process.communicate(timeout=20)
                lines = [line for line in recorder.stderr.splitlines() if "_close" in line]
                self.assertGreater(len(lines), 2, recorder.stderr)
                server = f"127.0.0.1:{traffic.port}"
                # A connection found open whose exchange came before the recording has no cause
                # to tell; its two ends, paired on this host by --port, still say who serves.
                _, conns, _, _ = read_trace(recorder.path)
                found_open = {f"127.0.0.1:{end['port']}" for conn in conns
                              if conn["role"] == "unknown"
                              for end in (conn["local"], conn["remote"])
                              if end["port"] != traffic.port}
                for line in lines:
                    # Both the client's socket and the server's: client -> server.
                    self.assertRegex(line, rf" 127\.0\.0\.1:\d+ -> {server}( |$)", line)
                    if line.split(" -> ")[0].split()[-1] in found_open:
                        continue
                    # Right after the exchange: the cause says why, not an idle timeout.
                    self.assertRegex(line, r"\((closed_after_use|connection_close|"
                                           r"keepalive_ended)\)$", line)
            finally:
                recorder.cleanup()

    def test_duration_ends_the_recording(self):
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "t.jsonl")
            started = time.monotonic()
            result = run("record", "--duration", "1", "--quiet", "-o", path)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertLess(time.monotonic() - started, 10)
            header, _, _, summary = read_trace(path)
            self.assertIn("mono_to_wall_ns", header)
            self.assertGreaterEqual(summary["duration_s"], 1.0)


if __name__ == "__main__":
    unittest.main()
