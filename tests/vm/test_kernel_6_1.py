"""Issue 9: closetrace on the kernel line ECS hosts run. Boots Debian's 6.1 cloud kernel (Amazon
Linux 2023's line) under qemu without KVM, with an initramfs holding busybox, closetrace and the
C++ test peers (tools/vm/kernel-check), and checks what ran inside:
  doctor     every program loads and attaches; the probe set chosen is reported
  lifecycle  server-first, client-first and client-reset connections get the right records
  race       a request reusing a connection the server closed at its idle timeout: the server's
             conn record says local_close_race (the ALB 502), as on the host
  btf        with the kernel's BTF hidden, record refuses in one line naming the fix (--btf FILE);
             with --btf and a copy of the BTF, the portable programs (raw tracepoints) load, and
             the lifecycle and race checks pass again (btf_lifecycle, btf_race)
The VM boots once for all (about 60 s here); skipped, saying why, when not root or when qemu
cannot be installed.

Run: sudo python3 tests/integration/run.py tests/vm/test_kernel_6_1.py
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
    r"^  (doctor|lifecycle|race|btf|btf_lifecycle|btf_race)\s+(PASS|FAIL|SKIP|MISSING)(?: \([\d.]+ s\))?:? ?(.*)$", re.M)


class Kernel61Test(unittest.TestCase):
    outcome = None  # (exit code, output), shared by the tests: the VM boots once

    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("the 6.1 kernel check needs root (apt-get install of qemu, "
                                    "BPF inside the VM is root anyway): run it with sudo")
        if not os.path.exists(CLOSETRACE):
            raise RuntimeError(f"{CLOSETRACE} is not built (tools/build)")
        if Kernel61Test.outcome is None:
            process = subprocess.run(
                [sys.executable, SCRIPT, "--closetrace", CLOSETRACE,
                 "--timeout", str(HARD_LIMIT_S)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                timeout=HARD_LIMIT_S + 240, cwd=ROOT)
            Kernel61Test.outcome = (process.returncode, process.stdout)
            print(process.stdout, file=sys.stderr, flush=True)
        code, out = Kernel61Test.outcome
        if code == 77:
            reason = next((line.split("SKIPPED: ", 1)[1] for line in out.splitlines()
                           if "SKIPPED: " in line), "kernel-check skipped")
            raise unittest.SkipTest(f"cannot boot the 6.1 kernel here: {reason}")
        if code == 2:
            raise RuntimeError(f"tools/vm/kernel-check could not build the VM image:\n{out}")

    def result(self, check):
        code, out = Kernel61Test.outcome
        results = {name: (status, detail.strip())
                   for name, status, detail in RESULT_RE.findall(out)}
        self.assertIn(check, results, f"no result for {check}; the VM output:\n{out[-4000:]}")
        return results[check]

    def assert_pass(self, check):
        status, detail = self.result(check)
        self.assertEqual(status, "PASS", f"{check} on 6.1: {detail}\n(see build-vm/serial.log)")

    def test_0_boots_the_6_1_kernel_and_reports_probes(self):
        _, out = Kernel61Test.outcome
        match = re.search(r"^  kernel:\s+(\S+)", out, re.M)
        self.assertTrue(match, out[-4000:])
        self.assertTrue(match.group(1).startswith("6.1."), f"booted {match.group(1)}, not 6.1")
        probes = re.search(r"^  probes:\s+(.*)$", out, re.M)
        self.assertTrue(probes and "inet_sock_set_state" in probes.group(1), out[-4000:])
        self.assertRegex(out, r"(?m)^  time:\s+.* s total")

    def test_doctor_loads_every_program(self):
        self.assert_pass("doctor")

    def test_lifecycle_records_each_way_of_closing(self):
        self.assert_pass("lifecycle")

    def test_close_race_gets_local_close_race(self):
        self.assert_pass("race")
        _, detail = self.result("race")
        self.assertIn("server verdict local_close_race", detail)

    def test_without_btf_record_refuses_in_one_line_and_doctor_btf_loads_raw_tracepoints(self):
        self.assert_pass("btf")
        _, detail = self.result("btf")
        self.assertIn("hidden BTF", detail)
        self.assertIn("raw_tp/inet_sock_set_state", detail)

    def test_without_btf_lifecycle_with_btf_file(self):
        self.assert_pass("btf_lifecycle")

    def test_without_btf_close_race_with_btf_file(self):
        self.assert_pass("btf_race")
        _, detail = self.result("btf_race")
        self.assertIn("server verdict local_close_race", detail)
        self.assertIn("RST trigger payload captured: yes", detail)


if __name__ == "__main__":
    unittest.main(verbosity=2)
