"""closetrace demo: the field report's 502 race reproduced between real servers, traced,
reported; then the fix, recorded again and verified. Run through `closetrace demo`.

Network namespaces stand in for hosts (client -> nginx balancer -> Node.js backend); everything
it starts is removed at the end, also after Ctrl-C. The traces are kept in --output-dir."""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import netns  # noqa: E402
import scenarios  # noqa: E402

STEPS = 5


def step(number, text):
    print(f"\n[{number}/{STEPS}] {text}", flush=True)


def fail(message):
    print(f"closetrace demo: {message}", file=sys.stderr)
    sys.exit(1)


def run_closetrace(closetrace, *args):
    result = subprocess.run([closetrace, *args], capture_output=True, text=True)
    output = result.stdout + result.stderr
    print(output.rstrip(), flush=True)
    return result.returncode


def keep(trace, output_dir, name):
    if not trace or not os.path.exists(trace):
        fail(f"the {name} recording wrote no trace; run `closetrace doctor`")
    destination = os.path.join(output_dir, f"{name}.jsonl")
    shutil.copyfile(trace, destination)
    return destination


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--closetrace", required=True, help="the closetrace binary")
    parser.add_argument("--output-dir", default="closetrace-demo",
                        help="where the two traces are kept (default: ./closetrace-demo)")
    options = parser.parse_args()

    if os.geteuid() != 0:
        fail("needs root (network namespaces and BPF): run it with sudo")
    missing = [tool for tool in ("ip", "nsenter", "node", "nginx", "tcpdump", "tshark")
               if not shutil.which(tool)]
    if missing:
        fail(f"missing {', '.join(missing)}: run tools/setup first")
    closetrace = os.path.abspath(options.closetrace)
    output_dir = os.path.abspath(options.output_dir)
    os.makedirs(output_dir, exist_ok=True)
    netns.cleanup_stale()
    started = time.monotonic()

    with tempfile.TemporaryDirectory(prefix="closetrace-demo-") as work:
        step(1, "The incident: a Node.js backend (keepAliveTimeout 1 s; Node closes an idle "
                "connection about 1 s after it) behind an nginx "
                "balancer that keeps idle upstream connections for 3 s. Recording the "
                "backend's port 8080 while a client sends traffic and, three times, a POST "
                "just as the backend closes an idle connection (about 15 s) ...")
        before = scenarios.mismatch(recorder=scenarios.backend_recorder(closetrace),
                                    recorder_ns="backend",
                                    workdir=os.path.join(work, "mismatch"), races=3)
        before_trace = keep(before.trace, output_dir, "before")
        statuses = before.measured.get("race_statuses", [])
        print(f"nginx answered the late POSTs with {statuses} "
              f"({statuses.count(502)} x 502 Bad Gateway)", flush=True)

        step(2, f"closetrace report {os.path.relpath(before_trace)}")
        run_closetrace(closetrace, "report", before_trace)

        step(3, "The fix: backend keepAliveTimeout 5 s, above the balancer's 3 s. Recording "
                "the same traffic again (about 15 s) ...")
        after = scenarios.fixed(recorder=scenarios.backend_recorder(closetrace),
                                recorder_ns="backend",
                                workdir=os.path.join(work, "fixed"), races=2,
                                normal_requests=25)
        after_trace = keep(after.trace, output_dir, "after")
        print("nginx answered the POSTs sent at the same moment of idle (when the old timeout "
              f"closed the connection) with {after.measured.get('race_statuses', [])}", flush=True)

        step(4, f"closetrace diff {os.path.relpath(before_trace)} {os.path.relpath(after_trace)}")
        run_closetrace(closetrace, "diff", before_trace, after_trace)
        print("(The report could only assume an ALB's default idle timeout: the balancer never "
              "closed an idle connection before the fix. After it, the balancer closes them at "
              "3 s, so the diff's recommendation for the before trace starts from what it saw.)",
              flush=True)

        step(5, f"closetrace verify {os.path.relpath(after_trace)} --peer-idle-timeout 3")
        code = run_closetrace(closetrace, "verify", after_trace, "--peer-idle-timeout", "3")
        print(f"(exit code {code}: {'verified' if code == 0 else 'not verified'})", flush=True)

    print(f"\nDone in {time.monotonic() - started:.0f} s. Traces kept in {output_dir}; "
          "the namespaces and servers are gone.", flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("\nclosetrace demo: interrupted; everything it started has been removed",
              file=sys.stderr)
        sys.exit(130)
