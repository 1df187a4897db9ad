"""Runs one integration test module; exits 77 (ctest: skipped) when every test was skipped."""
import os
import sys
import unittest

module_path = sys.argv[1]
sys.path.insert(0, os.path.dirname(module_path))
suite = unittest.defaultTestLoader.discover(os.path.dirname(module_path),
                                            pattern=os.path.basename(module_path))
result = unittest.TextTestRunner(verbosity=2).run(suite)
if not result.wasSuccessful():
    sys.exit(1)
if result.testsRun == 0 and not result.skipped:
    print(f"no tests found in {module_path}")
    sys.exit(1)
if result.skipped and len(result.skipped) >= result.testsRun:
    for _, reason in result.skipped:
        print(f"SKIPPED: {reason}")
    sys.exit(77)
