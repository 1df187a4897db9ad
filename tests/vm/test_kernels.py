"""Issue 9: closetrace on the kernel lines ECS hosts run, each booted under qemu without KVM with
an initramfs holding busybox, closetrace and the C++ test peers (tools/vm/kernel-check):
  6.1   Debian 12's cloud kernel, Amazon Linux 2023's line: the BTF tracepoint programs
  5.10  Debian 11's cloud kernel, Amazon Linux 2's line: it refuses those (no socket storage in
        tracing programs before 5.11), so closetrace falls back to the portable programs
and checks, inside each:
  doctor     every program loads and attaches; the probe set chosen is reported
  lifecycle  server-first, client-first and client-reset connections get the right records
  race       a request reusing a connection the server closed at its idle timeout: the server's
             conn record says local_close_race (the ALB 502), as on the host
  btf        with the kernel's BTF hidden, record refuses in one line naming the fix (--btf FILE);
             with --btf and a copy of the BTF, the portable programs (raw tracepoints) load, and
             the lifecycle and race checks pass again (btf_lifecycle, btf_race)
Each VM boots once for all its checks (about 45-60 s here); skipped, saying why, when not root,
when qemu cannot be installed or when the kernel cannot be fetched.

Run: sudo python3 tests/integration/run.py tests/vm/test_kernels.py
     (CLOSETRACE=path/to/closetrace to test another build than build/closetrace)
"""
import os
import re
import subprocess
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tools", "vm", "kernel-check")
CLOSETRACE = os.environ.get("CLOSETRACE", os.path.join(ROOT, "build", "closetrace"))
HARD_LIMIT_S = 480  # the script kills qemu after this; the test allows a little more
RESULT_RE = re.compile(
    r"^  (doctor|lifecycle|race|open_end|btf|btf_lifecycle|btf_race)\s+(PASS|FAIL|SKIP|MISSING)"
    r"(?: \([\d.]+ s\))?:? ?(.*)$", re.M)


class KernelChecks:
    """The checks of one kernel; subclasses name it and the probes it must get."""
    kernel = None
    probes = None  # the state probe doctor must report
    open_end = None  # what the open_end check must say of the connection open at the end
    outcomes = {}  # kernel -> (exit code, output): each VM boots once

    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest(f"the {cls.kernel} kernel check needs root (apt-get install "
                                    "of qemu, BPF inside the VM is root anyway): run it with sudo")
        if not os.path.exists(CLOSETRACE):
            raise RuntimeError(f"{CLOSETRACE} is not built (tools/build)")
        if cls.kernel not in KernelChecks.outcomes:
            process = subprocess.run(
                [sys.executable, SCRIPT, "--closetrace", CLOSETRACE, "--kernel", cls.kernel,
                 "--timeout", str(HARD_LIMIT_S)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                timeout=HARD_LIMIT_S + 240, cwd=ROOT)
            KernelChecks.outcomes[cls.kernel] = (process.returncode, process.stdout)
            print(process.stdout, file=sys.stderr, flush=True)
        code, out = KernelChecks.outcomes[cls.kernel]
        if code == 77:
            reason = next((line.split("SKIPPED: ", 1)[1] for line in out.splitlines()
                           if "SKIPPED: " in line), "kernel-check skipped")
            raise unittest.SkipTest(f"cannot boot the {cls.kernel} kernel here: {reason}")
        if code == 2:
            raise RuntimeError(f"tools/vm/kernel-check could not build the VM image:\n{out}")

    def output(self):
        return KernelChecks.outcomes[self.kernel][1]

    def result(self, check):
        results = {name: (status, detail.strip())
                   for name, status, detail in RESULT_RE.findall(self.output())}
        self.assertIn(check, results,
                      f"no result for {check}; the VM output:\n{self.output()[-4000:]}")
        return results[check]

    def assert_pass(self, check):
        status, detail = self.result(check)
        self.assertEqual(status, "PASS",
                         f"{check} on {self.kernel}: {detail}\n(see build-vm/serial.log)")

    def test_0_boots_the_kernel_and_reports_probes(self):
        out = self.output()
        match = re.search(r"^  kernel:\s+(\S+)", out, re.M)
        self.assertTrue(match, out[-4000:])
        self.assertTrue(match.group(1).startswith(self.kernel + "."),
                        f"booted {match.group(1)}, not {self.kernel}")
        probes = re.search(r"^  probes:\s+(.*)$", out, re.M)
        self.assertTrue(probes and probes.group(1).startswith(self.probes), out[-4000:])
        self.assertRegex(out, r"(?m)^  time:\s+.* s total")

    def test_doctor_loads_every_program(self):
        self.assert_pass("doctor")

    def test_lifecycle_records_each_way_of_closing(self):
        self.assert_pass("lifecycle")

    def test_a_connection_open_at_the_end_counts_every_request(self):
        self.assert_pass("open_end")
        self.assertIn(self.open_end, self.result("open_end")[1])

    def assert_race_request_seen(self, detail):
        """The late request is in the trace: in the segment the kernel answered with RST, or,
        sent before the server's FIN and never read, as the server's unread request."""
        self.assertIn("server verdict local_close_race", detail)
        self.assertRegex(detail, r"RST trigger payload captured: (yes|none, request unread at "
                                 r"close)$")

    def test_close_race_gets_local_close_race(self):
        self.assert_pass("race")
        _, detail = self.result("race")
        self.assert_race_request_seen(detail)

    def test_without_btf_record_refuses_in_one_line_and_doctor_btf_loads_raw_tracepoints(self):
        self.assert_pass("btf")
        _, detail = self.result("btf")
        self.assertIn("hidden BTF", detail)
        self.assertIn("another kernel's BTF fails", detail)
        self.assertIn("raw_tp/inet_sock_set_state", detail)

    def test_without_btf_lifecycle_with_btf_file(self):
        self.assert_pass("btf_lifecycle")

    def test_without_btf_close_race_with_btf_file(self):
        self.assert_pass("btf_race")
        _, detail = self.result("btf_race")
        self.assert_race_request_seen(detail)


class Kernel61Test(KernelChecks, unittest.TestCase):
    kernel = "6.1"
    probes = "tp_btf/inet_sock_set_state"
    open_end = "both records count 30 completed"


class Kernel510Test(KernelChecks, unittest.TestCase):
    kernel = "5.10"
    probes = "raw_tp/inet_sock_set_state"
    # The portable programs cannot hand over an open connection's messages.
    open_end = "both records say requests_lower_bound"


if __name__ == "__main__":
    unittest.main(verbosity=2)
