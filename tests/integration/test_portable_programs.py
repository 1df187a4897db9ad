"""Issue 9: the portable programs (raw tracepoints, for kernels without BTF) on this host, with
the smallest BTF file that serves them (`bpftool gen min_core_btf`, as BTFHub users make it):
doctor --btf, then the lifecycle and close race checks of tools/vm/vmcheck.sh with --btf. The
6.1 and 5.10 VMs run the same with the kernel's BTF hidden (tests/vm/test_kernels.py)."""
import os
import re
import subprocess
import sys
import unittest

from support import CLOSETRACE, require_bpf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULT_RE = re.compile(r"^  (btf|btf_lifecycle|btf_race)\s+(PASS|FAIL|MISSING)\S*:? ?(.*)$",
                       re.M)


class PortableProgramsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_bpf()
        process = subprocess.run(
            [sys.executable, os.path.join(ROOT, "tools", "vm", "kernel-check"), "--on-host",
             "--checks", "btf", "--closetrace", CLOSETRACE, "--port-base", "18700",
             "--timeout", "240"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300, cwd=ROOT)
        print(process.stdout, file=sys.stderr, flush=True)
        cls.output = process.stdout
        cls.results = {name: (status, detail) for name, status, detail
                       in RESULT_RE.findall(process.stdout)}

    def assert_pass(self, name):
        status, detail = self.results.get(name, ("MISSING", "no result"))
        self.assertEqual(status, "PASS", f"{name}: {detail}\n{self.output[-3000:]}")
        return detail

    def test_min_core_btf_is_small(self):
        match = re.search(r"min_core_btf for the portable programs: ([\d,]+) bytes", self.output)
        self.assertTrue(match, self.output[-3000:])
        self.assertLess(int(match.group(1).replace(",", "")), 64 * 1024)

    def test_doctor_with_btf_file_uses_raw_tracepoints(self):
        self.assertIn("raw_tp/inet_sock_set_state", self.assert_pass("btf"))

    def test_lifecycle(self):
        self.assert_pass("btf_lifecycle")

    def test_close_race(self):
        self.assertIn("server verdict local_close_race", self.assert_pass("btf_race"))


if __name__ == "__main__":
    unittest.main()
