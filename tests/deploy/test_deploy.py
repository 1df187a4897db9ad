#!/usr/bin/env python3
"""Checks of deploy/ that need no Docker engine and no AWS account.

hadolint is not packaged in Debian 12, so these checks stand in for a Dockerfile linter, and the
image build itself runs only where a Docker engine answers. Run: python3 tests/deploy/test_deploy.py
"""

import configparser
import fcntl
import gzip
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

# What the runtime stage installs, and what debian:bookworm-slim already has (apt needs them).
RUNTIME_PACKAGES = {"libbpf1", "libelf1", "zlib1g", "libfmt9", "libsimdjson14", "libnghttp2-14",
                    "libprometheus-cpp-core1.0", "libprometheus-cpp-pull1.0"}
BASE_IMAGE_PACKAGES = {"libc6", "libstdc++6", "libgcc-s1"}
TRACE_DIR = "/var/log/closetrace"
WHOLE_TRACE = '{"type":"header"}\n{"type":"conn"}\n{"type":"summary","connections":1}\n'


def write_gzip(path, text):
    path.write_bytes(gzip.compress(text.encode()))


def record_options():
    """The long options `closetrace record` declares (from its source, so no build is needed)."""
    source = (REPO / "userspace/cli/record.cpp").read_text()
    return set(re.findall(r'add_(?:option|flag)\(\s*"(--[a-z-]+)', source))


def options_in(arguments):
    return [argument for argument in arguments if argument.startswith("--")]


def dockerfile_instructions():
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    instructions = []
    for line in logical:
        keyword, _, arguments = line.strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def dockerfile_stages():
    """Per FROM: its arguments and the instructions that follow it."""
    stages = []
    for keyword, arguments in dockerfile_instructions():
        if keyword == "FROM":
            stages.append({"from": arguments, "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((keyword, arguments))
    return stages


def global_build_args():
    args = {}
    for keyword, arguments in dockerfile_instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in arguments:
            name, _, value = arguments.partition("=")
            args[name] = value
    return args


def docker_engine_available():
    if not shutil.which("docker"):
        return False
    probe = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                           capture_output=True, text=True, timeout=30, check=False)
    return probe.returncode == 0


class DockerfileTest(unittest.TestCase):
    def test_two_stages_on_pinned_debian_releases(self):
        stages = dockerfile_stages()
        self.assertEqual(len(stages), 2)
        args = global_build_args()
        self.assertEqual(args.get("DEBIAN_RELEASE"), "bookworm")
        images = []
        for stage in stages:
            image = stage["from"].split()[0]
            for name, value in args.items():
                image = image.replace("${%s}" % name, value)
            images.append(image)
            self.assertIn(":", image, "every base image names its tag")
            self.assertNotIn("latest", image.split(":", 1)[1])
        self.assertEqual(images, ["debian:bookworm", "debian:bookworm-slim"])
        self.assertRegex(stages[0]["from"], r"\bAS build$")

    def test_build_stage_installs_the_build_packages_of_tools_setup(self):
        runs = [arguments for keyword, arguments in dockerfile_stages()[0]["instructions"]
                if keyword == "RUN"]
        installs = [run for run in runs if "apt-get install" in run]
        self.assertEqual(len(installs), 1)
        extraction = re.search(r'eval "\$\(.*?tools/setup\)"', installs[0])
        self.assertTrue(extraction, "the package list comes from tools/setup")
        listed = subprocess.run(
            ["bash", "-c", extraction.group(0) + '; printf "%s\\n" "${build_packages[@]}"'],
            cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
        for package in ("cmake", "clang", "g++", "python3", "libbpf-dev", "bpftool",
                        "libsimdjson-dev"):
            self.assertIn(package, listed)
        self.assertIn("--no-install-recommends", installs[0])
        self.assertIn("rm -rf /var/lib/apt/lists/*", installs[0])
        self.assertTrue(any(run.startswith("tools/build") for run in runs))

    def test_runtime_stage_installs_only_the_runtime_libraries(self):
        runtime = dockerfile_stages()[1]["instructions"]
        installs = [arguments for keyword, arguments in runtime
                    if keyword == "RUN" and "apt-get install" in arguments]
        self.assertEqual(len(installs), 1)
        words = installs[0].split("--no-install-recommends", 1)[1].split("&&")[0].split()
        self.assertEqual(set(words), RUNTIME_PACKAGES)
        self.assertIn("rm -rf /var/lib/apt/lists/*", installs[0])
        copies = [arguments for keyword, arguments in runtime if keyword == "COPY"]
        self.assertEqual(copies, ["--from=build /src/build/closetrace /usr/local/bin/closetrace"])

    def test_runtime_packages_exist_in_debian(self):
        if not shutil.which("apt-cache"):
            self.skipTest("no apt-cache here to ask Debian's package lists")
        for package in sorted(RUNTIME_PACKAGES):
            shown = subprocess.run(["apt-cache", "show", "--no-all-versions", package],
                                   capture_output=True, text=True, check=False)
            self.assertEqual(shown.returncode, 0, f"{package}: {shown.stderr.strip()}")
            self.assertIn(f"Package: {package}", shown.stdout)

    def test_runtime_packages_cover_the_binarys_libraries(self):
        binary = Path(os.environ.get("CLOSETRACE", REPO / "build/closetrace"))
        if not binary.exists():
            self.skipTest(f"{binary} is not built (tools/build)")
        if not (shutil.which("readelf") and shutil.which("dpkg")):
            self.skipTest("needs readelf and dpkg")
        dynamic = subprocess.run(["readelf", "-d", str(binary)], capture_output=True,
                                 text=True, check=True).stdout
        for soname in re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dynamic):
            owners = subprocess.run(["dpkg", "-S", "*/" + soname], capture_output=True,
                                    text=True, check=False).stdout
            packages = {line.split(":")[0] for line in owners.splitlines()
                        if line.rsplit("/", 1)[-1] == soname}
            self.assertTrue(packages & (RUNTIME_PACKAGES | BASE_IMAGE_PACKAGES),
                            f"{soname} comes from {packages or 'no package'}, not installed "
                            "in the runtime stage")

    def test_entrypoint_is_closetrace_and_the_default_command_records(self):
        runtime = dict(dockerfile_stages()[1]["instructions"])
        self.assertEqual(json.loads(runtime["ENTRYPOINT"]), ["/usr/local/bin/closetrace"])
        command = json.loads(runtime["CMD"])
        self.assertEqual(command[0], "record")
        self.assertLessEqual(set(options_in(command)), record_options())
        self.assertEqual(runtime["WORKDIR"], TRACE_DIR)

    def test_copied_sources_exist(self):
        for stage in dockerfile_stages():
            for keyword, arguments in stage["instructions"]:
                if keyword == "COPY" and not arguments.startswith("--from"):
                    source = arguments.split()[0]
                    self.assertTrue((REPO / source).exists(), source)

    def test_build_context_leaves_out_local_build_trees(self):
        ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
        self.assertIn("build*", ignored)
        self.assertIn(".git", ignored)

    def test_hadolint(self):
        if not shutil.which("hadolint"):
            self.skipTest("hadolint is not packaged in Debian 12; the checks above stand in")
        subprocess.run(["hadolint", str(DEPLOY / "Dockerfile")], check=True)

    def test_image_builds(self):
        if not docker_engine_available():
            self.skipTest("no Docker engine on this machine (docker CLI only): the image build "
                          "runs where one answers")
        subprocess.run(["docker", "build", "-f", str(DEPLOY / "Dockerfile"), "-t",
                        "closetrace:test", str(REPO)], check=True, timeout=3600)
        version = subprocess.run(["docker", "run", "--rm", "closetrace:test", "--version"],
                                 capture_output=True, text=True, check=True, timeout=120)
        self.assertIn("0.", version.stdout + version.stderr)


class EcsTaskDefinitionTest(unittest.TestCase):
    def setUp(self):
        self.definition = json.loads((DEPLOY / "ecs-task-definition.json").read_text())
        self.container = self.definition["containerDefinitions"][0]
        self.volumes = {volume["name"]: volume for volume in self.definition["volumes"]}

    def test_host_modes_on_ec2(self):
        for key in ("family", "containerDefinitions", "volumes", "networkMode", "pidMode"):
            self.assertIn(key, self.definition)
        self.assertEqual(self.definition["networkMode"], "host")
        self.assertEqual(self.definition["pidMode"], "host")
        self.assertEqual(self.definition["requiresCompatibilities"], ["EC2"])
        self.assertEqual(len(self.definition["containerDefinitions"]), 1)

    def test_privileged_recorder(self):
        for key in ("name", "image", "essential", "command", "mountPoints"):
            self.assertIn(key, self.container)
        self.assertIs(self.container["privileged"], True)
        self.assertIs(self.container["essential"], True)
        image = self.container["image"]
        self.assertRegex(image, r":[\w][\w.-]*$", "the image names its tag")
        self.assertFalse(image.endswith(":latest"))
        command = self.container["command"]
        self.assertEqual(command[0], "record")
        self.assertLessEqual(set(options_in(command)), record_options())
        self.assertIn({"name": "memlock", "softLimit": -1, "hardLimit": -1},
                      self.container["ulimits"])
        # Enough for closetrace to write its summary after SIGTERM.
        self.assertGreaterEqual(self.container["stopTimeout"], 10)

    def test_one_continuous_recording_bounded_on_disk(self):
        options = set(options_in(self.container["command"]))
        self.assertNotIn("--duration", options, "the daemon records for as long as it runs")
        self.assertTrue(options & {"--rotate-interval", "--rotate-size"})
        self.assertTrue(options & {"--keep-files", "--keep-bytes"})
        self.assertIn("--gzip", options)
        self.assertNotIn("--output", options, "the files go to the working directory")

    def test_metrics_served_on_the_mapped_port(self):
        command = self.container["command"]
        self.assertIn("--metrics", command)
        address = command[command.index("--metrics") + 1]
        host, _, port = address.rpartition(":")
        self.assertEqual(host, "0.0.0.0", "Prometheus scrapes the host's address")
        mapped = {(mapping["containerPort"], mapping["hostPort"])
                  for mapping in self.container["portMappings"]}
        self.assertIn((int(port), int(port)), mapped, "host network mode: the same port")

    def test_logs_go_to_cloudwatch(self):
        logging = self.container["logConfiguration"]
        self.assertEqual(logging["logDriver"], "awslogs")
        self.assertLessEqual({"awslogs-group", "awslogs-region", "awslogs-stream-prefix"},
                             set(logging["options"]))

    def test_mounts(self):
        mounts = {mount["containerPath"]: mount for mount in self.container["mountPoints"]}
        self.assertEqual(set(mounts), {"/sys/kernel/btf", "/sys/fs/cgroup", TRACE_DIR})
        self.assertIs(mounts["/sys/kernel/btf"]["readOnly"], True)
        self.assertIs(mounts["/sys/fs/cgroup"]["readOnly"], True)
        self.assertIs(mounts[TRACE_DIR]["readOnly"], False)
        self.assertEqual(self.container["workingDirectory"], TRACE_DIR)
        for path, mount in mounts.items():
            volume = self.volumes[mount["sourceVolume"]]
            self.assertEqual(volume["host"]["sourcePath"], path)

    def test_no_tracefs_because_no_program_needs_it(self):
        sections = re.findall(r'SEC\("([^"]+)"\)', (REPO / "bpf/closetrace.bpf.c").read_text())
        programs = [section for section in sections if section not in ("license", ".maps")]
        self.assertTrue(programs)
        for program in programs:
            # Iterators attach through a BPF link, as tp_btf programs do: no tracefs either.
            self.assertRegex(program, r"^(tp_btf|cgroup_skb|iter)/",
                             "a program that needs tracefs?")
        paths = {mount["containerPath"] for mount in self.container["mountPoints"]}
        self.assertFalse(paths & {"/sys/kernel/tracing", "/sys/kernel/debug"})


class SystemdUnitTest(unittest.TestCase):
    UNIT = DEPLOY / "closetrace-record.service"

    def setUp(self):
        parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
        parser.optionxform = str
        parser.read_string(self.UNIT.read_text())
        self.service = parser["Service"]
        self.unit = parser["Unit"]

    def test_bounded_recording_into_the_trace_directory(self):
        self.assertTrue(self.unit["Description"])
        self.assertEqual(self.service["ExecStart"].split()[:2],
                         ["/usr/local/bin/closetrace", "record"])
        self.assertEqual(self.service["WorkingDirectory"], TRACE_DIR)
        self.assertEqual(self.service["LogsDirectory"], Path(TRACE_DIR).name)
        self.assertEqual(self.service["KillSignal"], "SIGTERM")
        environment = self.service["Environment"].strip('"')
        name, _, arguments = environment.partition("=")
        self.assertEqual(name, "CLOSETRACE_RECORD_ARGS")
        self.assertIn("$" + name, self.service["ExecStart"])
        self.assertIn("--duration", arguments.split())
        self.assertLessEqual(set(options_in(arguments.split())), record_options())

    def test_systemd_accepts_it(self):
        if not shutil.which("systemd-analyze"):
            self.skipTest("no systemd-analyze here")
        with tempfile.TemporaryDirectory() as directory:
            # The same unit with an executable that exists here, so that only the unit is judged.
            unit = Path(directory) / self.UNIT.name
            unit.write_text(self.UNIT.read_text().replace("/usr/local/bin/closetrace",
                                                          shutil.which("true")))
            verified = subprocess.run(["systemd-analyze", "verify", str(unit)],
                                      capture_output=True, text=True, check=False)
            self.assertEqual(verified.returncode, 0, verified.stderr)
            self.assertEqual(verified.stderr.strip(), "")

    # `systemd-analyze security` rated the unit 9.0 UNSAFE before it was sandboxed; 2.3 since.
    MAX_EXPOSURE = 2.5

    def test_sandboxed_to_a_low_exposure(self):
        if not shutil.which("systemd-analyze"):
            self.skipTest("no systemd-analyze here")
        analyzed = subprocess.run(["systemd-analyze", "security", "--offline=yes",
                                   "--no-pager", str(self.UNIT)],
                                  capture_output=True, text=True, check=False)
        level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", analyzed.stdout)
        self.assertIsNotNone(level, analyzed.stdout + analyzed.stderr)
        failed = [line for line in analyzed.stdout.splitlines() if line.startswith("\u2717")]
        self.assertLessEqual(float(level.group(1)), self.MAX_EXPOSURE, "\n".join(failed))

    def test_capabilities_are_those_recording_needs(self):
        self.assertEqual(set(self.service["CapabilityBoundingSet"].split()),
                         {"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_RESOURCE"})
        self.assertEqual(self.service["ProtectSystem"], "strict")
        self.assertEqual(self.service["UMask"], "0077")


class CollectToS3Test(unittest.TestCase):
    SCRIPT = DEPLOY / "collect-to-s3.sh"

    def setUp(self):
        self.work = Path(tempfile.mkdtemp(prefix="closetrace-deploy-"))
        self.addCleanup(shutil.rmtree, self.work)
        self.traces = self.work / "traces"
        self.traces.mkdir()
        # A stand-in for the AWS CLI: records its arguments and what it read, sends nothing.
        bin_dir = self.work / "bin"
        bin_dir.mkdir()
        stub = bin_dir / "aws"
        # With AWS_STUB_DELETE, it deletes that file first (retention while a copy runs).
        stub.write_text('#!/bin/sh\nn=$(ls "$AWS_STUB_LOG" | grep -c args)\n'
                        'if [ -n "$AWS_STUB_DELETE" ]; then rm -f "$AWS_STUB_DELETE"; fi\n'
                        'printf "%s\\n" "$@" > "$AWS_STUB_LOG/$n.args"\n'
                        'cat > "$AWS_STUB_LOG/$n.body"\n')
        stub.chmod(0o755)
        self.calls = self.work / "calls"
        self.calls.mkdir()
        self.environment = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}",
                                AWS_STUB_LOG=str(self.calls))

    def run_script(self, *arguments):
        return subprocess.run([str(self.SCRIPT), *arguments], capture_output=True, text=True,
                              env=self.environment, timeout=60, check=False)

    def test_is_a_valid_executable_script(self):
        self.assertTrue(self.SCRIPT.stat().st_mode & stat.S_IXUSR)
        subprocess.run(["bash", "-n", str(self.SCRIPT)], check=True)
        if shutil.which("shellcheck"):
            subprocess.run(["shellcheck", str(self.SCRIPT)], check=True)

    def uploads(self):
        """{S3 key: the trace it received, decompressed}, in the order they were sent."""
        sent = {}
        for number in range(len(list(self.calls.glob("*.args")))):
            arguments = (self.calls / f"{number}.args").read_text().split("\n")
            self.assertEqual(arguments[:3], ["s3", "cp", "-"])
            body = gzip.decompress((self.calls / f"{number}.body").read_bytes()).decode()
            sent[arguments[3]] = body
        return sent

    def host(self):
        return subprocess.run(["hostname"], capture_output=True, text=True,
                              check=True).stdout.strip()

    def test_copies_a_finished_recording_under_the_host_name(self):
        finished = self.traces / "closetrace-20261125T010203.jsonl"
        finished.write_text(WHOLE_TRACE)
        result = self.run_script("s3://bucket/closetrace/incident-1/", str(self.traces))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(self.uploads(), {
            f"s3://bucket/closetrace/incident-1/{self.host()}/closetrace-20261125T010203.jsonl.gz":
                WHOLE_TRACE})

    def test_copies_rotated_files_once_each_and_never_the_live_one(self):
        stem = "closetrace-20261125T0102{:02}-{:06}"
        write_gzip(self.traces / (stem.format(3, 1) + ".jsonl.gz"), WHOLE_TRACE)
        (self.traces / (stem.format(4, 2) + ".jsonl")).write_text(WHOLE_TRACE)  # not compressed yet
        truncated = '{"type":"header"}\n{"type":"conn"}\n{"type":"co'  # its recorder died
        (self.traces / (stem.format(5, 3) + ".jsonl")).write_text(truncated)
        (self.traces / (stem.format(6, 4) + ".live.jsonl")).write_text('{"type":"header"}\n')
        (self.traces / (stem.format(6, 4) + ".jsonl.gz.partial")).write_text("being compressed")
        first = self.run_script("s3://bucket/prefix", str(self.traces))
        self.assertEqual(first.returncode, 0, first.stderr)
        prefix = f"s3://bucket/prefix/{self.host()}/"
        self.assertEqual(self.uploads(), {
            prefix + stem.format(3, 1) + ".jsonl.gz": WHOLE_TRACE,
            prefix + stem.format(4, 2) + ".jsonl.gz": WHOLE_TRACE,
            prefix + stem.format(5, 3) + ".jsonl.gz": truncated})

        # The recorder compresses the second file meanwhile: the same file, not copied again.
        (self.traces / (stem.format(4, 2) + ".jsonl")).unlink()
        write_gzip(self.traces / (stem.format(4, 2) + ".jsonl.gz"), WHOLE_TRACE)
        again = self.run_script("s3://bucket/prefix", str(self.traces))
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertIn("0 trace(s) copied", again.stdout)
        self.assertEqual(len(self.uploads()), 3)
        # Another destination gets them all.
        self.assertEqual(self.run_script("s3://other/prefix", str(self.traces)).returncode, 0)
        self.assertEqual(len(self.uploads()), 6)

    def test_forgets_files_retention_deleted(self):
        trace = self.traces / "closetrace-20261125T010203-000001.jsonl.gz"
        write_gzip(trace, WHOLE_TRACE)
        self.assertEqual(self.run_script("s3://bucket/prefix", str(self.traces)).returncode, 0)
        trace.unlink()
        self.assertEqual(self.run_script("s3://bucket/prefix", str(self.traces)).returncode, 0)
        self.assertEqual((self.traces / ".collected-to-s3").read_text(), "")

    def test_leaves_a_recording_its_recorder_holds(self):
        trace = self.traces / "closetrace-20261125T010203.jsonl"
        trace.write_text('{"type":"header"}\n')
        with open(trace) as held:
            fcntl.flock(held, fcntl.LOCK_EX)  # as closetrace record does while it writes
            result = self.run_script("s3://bucket/prefix", str(self.traces))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("still being recorded", result.stderr)
        self.assertEqual(self.uploads(), {})

    def test_nothing_to_copy_is_not_an_error(self):
        result = self.run_script("s3://bucket/prefix", str(self.traces))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("0 trace(s) copied", result.stdout)
        self.assertEqual(list(self.calls.iterdir()), [])

    def test_a_file_deleted_while_another_is_copied_is_not_copied(self):
        stem = "closetrace-20261125T0102{:02}-{:06}.jsonl"
        first, second = (self.traces / stem.format(3, 1)), (self.traces / stem.format(4, 2))
        first.write_text(WHOLE_TRACE)
        second.write_text(WHOLE_TRACE)
        self.environment["AWS_STUB_DELETE"] = str(second)
        result = self.run_script("s3://bucket/prefix", str(self.traces))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(list(self.uploads().values()), [WHOLE_TRACE])
        self.assertFalse(second.exists(), "an empty file was left in its place")

    def test_skips_empty_files_and_names_the_live_file(self):
        (self.traces / "closetrace-20261125T010203.jsonl").write_text("")
        live = self.traces / "closetrace-20261125T010204-000002.live.jsonl"
        live.write_text('{"type":"header"}\n')
        result = self.run_script("s3://bucket/prefix", str(self.traces))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("empty", result.stderr)
        self.assertIn(f"skipping {live}: being written", result.stdout)
        self.assertEqual(self.uploads(), {})

    def test_a_run_while_another_copies_does_nothing(self):
        (self.traces / "closetrace-20261125T010203.jsonl").write_text(WHOLE_TRACE)
        with open(self.traces / ".collect-to-s3.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            result = self.run_script("s3://bucket/prefix", str(self.traces))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("another run is copying", result.stdout)
        self.assertEqual(self.uploads(), {})

    def test_refuses_bad_arguments_without_calling_aws(self):
        self.assertNotEqual(self.run_script().returncode, 0)
        self.assertEqual(self.run_script("/tmp/not-s3", str(self.traces)).returncode, 2)
        not_a_directory = self.run_script("s3://bucket/prefix", str(self.SCRIPT))
        self.assertEqual(not_a_directory.returncode, 2)
        self.assertIn("not a directory", not_a_directory.stderr)
        self.assertEqual(list(self.calls.iterdir()), [])

    def test_a_host_with_no_trace_directory_yet_has_nothing_to_copy(self):
        missing = self.run_script("s3://bucket/prefix", str(self.work / "missing"))
        self.assertEqual(missing.returncode, 0, missing.stderr)
        self.assertIn("nothing to copy", missing.stdout)
        self.assertEqual(list(self.calls.iterdir()), [])


class PrometheusFilesTest(unittest.TestCase):
    """deploy/prometheus/: the alert rules pass promtool, the dashboard's queries parse, and both
    use only the metrics closetrace exports, each documented in docs/metrics.md."""

    RULES = DEPLOY / "prometheus" / "closetrace-rules.yml"
    DASHBOARD = DEPLOY / "prometheus" / "closetrace-dashboard.json"
    METRIC = re.compile(r"\b(closetrace_[a-z_]+?)(?:_bucket|_sum|_count)?\b")

    def exported_metrics(self):
        source = (REPO / "userspace/metrics/src/recording_metrics.cpp").read_text()
        return set(re.findall(r'\.Name\("(closetrace_[a-z_]+)"\)', source))

    def dashboard_queries(self):
        dashboard = json.loads(self.DASHBOARD.read_text())
        return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]

    def promtool_check(self, rules_file):
        if not shutil.which("promtool"):
            self.skipTest("promtool is missing: run tools/setup (Debian's prometheus)")
        return subprocess.run(["promtool", "check", "rules", str(rules_file)],
                              capture_output=True, text=True, check=False)

    def test_promtool_accepts_the_rules(self):
        checked = self.promtool_check(self.RULES)
        self.assertEqual(checked.returncode, 0, checked.stdout + checked.stderr)

    def test_dashboard_queries_parse(self):
        # As recording rules, with Grafana's variables given values, so that promtool parses them.
        grafana_variables = {"$__rate_interval": "5m", "$instance": ".*", "$comm": ".*",
                             "$server_port": ".*"}
        rules = []
        for index, query in enumerate(self.dashboard_queries()):
            for variable, value in grafana_variables.items():
                query = query.replace(variable, value)
            self.assertNotIn("$", query)
            rules.append({"record": f"closetrace:dashboard_query_{index}", "expr": query})
        with tempfile.NamedTemporaryFile("w", suffix=".yml") as rules_file:
            # JSON is YAML: promtool reads it as a rules file.
            json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, rules_file)
            rules_file.flush()
            checked = self.promtool_check(rules_file.name)
        self.assertEqual(checked.returncode, 0, checked.stdout + checked.stderr)

    def test_rules_and_dashboard_use_exported_documented_metrics(self):
        exported = self.exported_metrics()
        self.assertIn("closetrace_close_races_total", exported)
        used = set(self.METRIC.findall(self.RULES.read_text()))
        for query in self.dashboard_queries():
            used |= set(self.METRIC.findall(query))
        self.assertLessEqual(used, exported)
        documented = set(re.findall(r"^### `(closetrace_[a-z_]+)`", (REPO / "docs/metrics.md")
                                    .read_text(), re.M))
        self.assertEqual(documented, exported)


class DocumentedFilesTest(unittest.TestCase):
    """Every repository file that README.md and deploy/README.md name exists."""

    DOCUMENTS = [REPO / "README.md", DEPLOY / "README.md"]
    # Paths in commands and prose, taken from the repository root.
    REPOSITORY_PATH = re.compile(
        r"(?<![\w./-])((?:bpf|deploy|docs|tests|tools|userspace)/[\w.-]+(?:/[\w.-]+)*)")
    LINK = re.compile(r"\]\(([^)\s]+)\)")

    def test_links_resolve(self):
        for document in self.DOCUMENTS:
            for target in self.LINK.findall(document.read_text()):
                if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                    continue
                # Links out of the repository ("if you have it") are not the repository's files.
                if target.startswith("../"):
                    continue
                path = (document.parent / target.split("#")[0]).resolve()
                self.assertTrue(path.exists(), f"{document.name} links to missing {target}")

    def test_named_paths_exist(self):
        for document in self.DOCUMENTS:
            for path in self.REPOSITORY_PATH.findall(document.read_text()):
                path = path.rstrip(".")
                self.assertTrue((REPO / path).exists(), f"{document.name} names missing {path}")


if __name__ == "__main__":
    unittest.main()
