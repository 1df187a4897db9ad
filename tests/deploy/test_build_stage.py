#!/usr/bin/env python3
"""deploy/Dockerfile's build stage run without a container engine, and its runtime stage checked.

There is no Docker engine here, so this stands in for `docker build` as far as a Debian 12 host
allows:
- each stage's Debian packages: apt-get's simulation of the stage's install onto a system with
  only Debian's required packages (what debian:bookworm and bookworm-slim start from);
- the build stage's own commands (its RUN lines after the install) in its shell, with the image's
  PATH and an empty HOME, in a temporary directory holding the build context (`git archive HEAD`
  less what Dockerfile.dockerignore leaves out); run as root, the host's kernel BTF is hidden as
  in an image build, so the committed vmlinux.h is used;
- every program, library and CMake package that configure step found comes from a package of the
  build stage (a tool only this host has fails here: Python 3 did, before it was a build package);
- every shared library the built binary loads (ldd) comes from a package of the runtime stage,
  and the binary starts `record`, `report` and `doctor` (their --help) and reports on a trace.

A full build: several minutes. Run: python3 tests/deploy/test_build_stage.py
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_deploy import DEPLOY, REPO, dockerfile_stages  # noqa: E402

# The PATH of the debian images (docker's default for a Linux container).
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SOURCE_DIR = "/src"  # where the build stage's WORKDIR puts the build context
FIXTURES = REPO / "tests/fixtures"
# Tools CMake looks for on its own and this build never runs (it links through the compiler and
# neither installs nor strips): clang's CMake takes ld.lld for CMAKE_LINKER where it is installed,
# and /usr/bin/ld otherwise.
UNUSED_CMAKE_TOOLS = {"CMAKE_LINKER", "CMAKE_ADDR2LINE", "CMAKE_OBJCOPY", "CMAKE_OBJDUMP",
                      "CMAKE_READELF", "CMAKE_STRIP", "CMAKE_NM", "CMAKE_DLLTOOL",
                      "CMAKE_INSTALL_PREFIX"}


def missing_tools():
    return [tool for tool in ("git", "apt-get", "dpkg", "dpkg-query", "ldd", "tar")
            if not shutil.which(tool)]


def apt_lists_present():
    lists = Path("/var/lib/apt/lists")
    return lists.is_dir() and any("_Packages" in entry.name for entry in lists.iterdir())


def required_packages():
    """Debian's required (and essential) packages, as this Debian 12 host has them."""
    listed = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${Priority} ${Essential}\\n"],
        capture_output=True, text=True, check=True).stdout
    return sorted(fields[0] for fields in (line.split() for line in listed.splitlines())
                  if "required" in fields[1:] or "yes" in fields[1:])


def packages_after_install(packages):
    """Every package on a system of Debian's required packages after
    `apt-get install --no-install-recommends PACKAGES` (simulated from an empty package state)."""
    simulated = subprocess.run(
        ["apt-get", "-s", "-o", "Dir::State::status=/dev/null", "-o", "Debug::NoLocking=1",
         "install", "--no-install-recommends", *required_packages(), *packages],
        capture_output=True, text=True, check=False)
    if simulated.returncode != 0:
        raise AssertionError(f"apt-get cannot install {' '.join(packages)}:\n{simulated.stdout}"
                             f"{simulated.stderr}")
    return {line.split()[1].split(":")[0] for line in simulated.stdout.splitlines()
            if line.startswith("Inst ")}


def package_owners(path):
    """The Debian packages whose files include `path` (as given, resolved, with and without the
    /usr prefix that Debian 12's merged /usr makes interchangeable)."""
    candidates = set()
    for variant in (str(path), os.path.realpath(path)):
        candidates.add(variant)
        for top in ("/bin/", "/sbin/", "/lib/", "/lib64/"):
            if variant.startswith(top):
                candidates.add("/usr" + variant)
            if variant.startswith("/usr" + top):
                candidates.add(variant[len("/usr"):])
    owners = set()
    for candidate in candidates:
        found = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True,
                               check=False).stdout
        for line in found.splitlines():
            if line.startswith("diversion by"):
                continue
            names, _, owned = line.rpartition(": ")
            if owned != candidate:
                continue
            owners.update(name.strip().split(":")[0] for name in names.split(","))
    return owners


def dockerignore_pattern(pattern):
    """A .dockerignore line as a regular expression over context-relative paths: `*` and `?`
    stay within one path element, `**/` spans any number of them."""
    expression = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            expression += "(?:.*/)?"
            index += 3
            continue
        character = pattern[index]
        expression += {"*": "[^/]*", "?": "[^/]"}.get(character, re.escape(character))
        index += 1
    return re.compile(expression)


def paths_found(cache, own_directory):
    """{path: cache entry} for what a configure step found outside its own directory."""
    found = {}
    for line in Path(cache).read_text().splitlines():
        match = re.match(r"^([\w.+-]+):\w+=(.*)$", line)
        if not match or match.group(1) in UNUSED_CMAKE_TOOLS:
            continue
        for value in match.group(2).split(";"):
            if value.startswith("/") and not value.startswith(str(own_directory)) \
                    and os.path.exists(value):
                found.setdefault(value, match.group(1))
    return found


def foreign_paths(found, installed):
    """What of `found` no package of `installed` provides, as messages."""
    foreign = []
    for path, name in sorted(found.items()):
        owners = package_owners(path)
        if not owners & installed:
            source = ", ".join(sorted(owners)) or "no Debian package"
            foreign.append(f"{name}={path} comes from {source}, which the stage does not install")
    return foreign


def install_words(run):
    """The package arguments of a RUN line's `apt-get install`, or its `"${array[@]}"` word."""
    after = run.split("--no-install-recommends", 1)[1].split("&&")[0]
    return after.split()


class BuildStage:
    """The build stage, run once for all the tests below."""

    def __init__(self):
        build, runtime = dockerfile_stages()
        self.build_instructions = build["instructions"]
        self.runtime_instructions = runtime["instructions"]
        self.directory = Path(tempfile.mkdtemp(prefix="closetrace-build-stage-"))
        self.source = self.directory / SOURCE_DIR.lstrip("/")
        self.log = self.directory / "build-stage.log"
        self.btf_hidden = False
        self.result = None

    def cleanup(self):
        shutil.rmtree(self.directory, ignore_errors=True)

    # The packages of each stage -----------------------------------------------------------

    def build_packages(self):
        runs = [arguments for keyword, arguments in self.build_instructions if keyword == "RUN"]
        install = next(run for run in runs if "apt-get install" in run)
        extraction = re.search(r'eval "\$\(.*?tools/setup\)"', install).group(0)
        array = re.search(r'"\$\{(\w+)\[@\]\}"', install).group(1)
        return subprocess.run(
            ["bash", "-c", f'{extraction}; printf "%s\\n" "${{{array}[@]}}"'],
            cwd=REPO, capture_output=True, text=True, check=True).stdout.split()

    def runtime_packages(self):
        install = next(arguments for keyword, arguments in self.runtime_instructions
                       if keyword == "RUN" and "apt-get install" in arguments)
        return install_words(install)

    # The build context and the stage's commands ------------------------------------------

    def make_context(self):
        """`git archive HEAD` less what Dockerfile.dockerignore leaves out of the context."""
        self.source.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "HEAD"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(self.source)], input=archive, check=True)
        patterns = [dockerignore_pattern(line.strip()) for line in
                    (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
        for path in sorted(self.source.rglob("*")):
            relative = path.relative_to(self.source).as_posix()
            if not (path.exists() or path.is_symlink()):
                continue  # in a directory already left out
            if any(pattern.fullmatch(relative) for pattern in patterns):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()

    def stage_commands(self):
        """The RUN lines of the build stage after its package install, in its SHELL."""
        shell = ["/bin/sh", "-c"]
        commands = []
        for keyword, arguments in self.build_instructions:
            if keyword == "SHELL":
                shell = json.loads(arguments)
            elif keyword == "WORKDIR":
                assert arguments == SOURCE_DIR, f"the build stage works in {arguments}"
            elif keyword == "RUN" and "apt-get install" not in arguments:
                commands.append(arguments)
        return shell, commands

    def run(self):
        self.make_context()
        shell, commands = self.stage_commands()
        home = self.directory / "home"
        home.mkdir()
        environment = {"PATH": IMAGE_PATH, "HOME": str(home), "LANG": "C.UTF-8"}
        script = " && ".join(f"( {command} )" for command in commands)
        argv = [*shell, script]
        if os.geteuid() == 0 and shutil.which("unshare") and Path("/sys/kernel/btf").is_dir():
            # A mount namespace of its own, with nothing at /sys/kernel/btf (an image build
            # sees no kernel BTF, so the build takes the committed vmlinux.h).
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'mount -t tmpfs closetrace-no-btf /sys/kernel/btf && exec "$@"', "sh", *argv]
            self.btf_hidden = True
        with self.log.open("w") as log:
            log.write(f"$ {' '.join(argv)}\n")
            log.flush()
            self.result = subprocess.run(argv, cwd=self.source, env=environment, stdout=log,
                                         stderr=subprocess.STDOUT, timeout=3000, check=False)
        self.commands = commands

    def log_tail(self, lines=60):
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def built_binary(self):
        """The runtime stage's COPY --from=build source, in the temporary build stage."""
        copy = next(arguments for keyword, arguments in self.runtime_instructions
                    if keyword == "COPY" and arguments.startswith("--from=build "))
        return self.directory / copy.split()[1].lstrip("/")


STAGE = None


def setUpModule():
    global STAGE
    missing = missing_tools()
    if missing:
        raise unittest.SkipTest(f"needs {', '.join(missing)}")
    if not (REPO / ".git").exists():
        raise unittest.SkipTest("not a git checkout: the build context is `git archive HEAD`")
    if not apt_lists_present():
        raise unittest.SkipTest("no apt package lists (apt-get update) to simulate the installs")
    STAGE = BuildStage()
    STAGE.run()


def tearDownModule():
    if STAGE is not None:
        STAGE.cleanup()


class BuildStageTest(unittest.TestCase):
    def test_commands_succeed_on_a_clean_tree(self):
        self.assertTrue(STAGE.commands, "the build stage runs commands after its install")
        self.assertEqual(STAGE.result.returncode, 0,
                         f"the build stage's commands failed:\n{STAGE.log_tail()}")
        if not STAGE.btf_hidden:
            print("note: not root: the build saw this host's kernel BTF", file=sys.stderr)

    def test_configure_found_only_what_the_build_stage_installs(self):
        cache = STAGE.source / "build/CMakeCache.txt"
        self.assertTrue(cache.exists(), f"no {cache}:\n{STAGE.log_tail()}")
        found = paths_found(cache, STAGE.directory)
        self.assertIn("/usr/bin/clang", found)
        self.assertTrue(any("python3" in path for path in found), "Python 3 is found")
        self.assertEqual(foreign_paths(found, packages_after_install(STAGE.build_packages())), [])

    def test_runtime_stage_has_the_binarys_shared_libraries(self):
        binary = STAGE.built_binary()
        self.assertTrue(binary.exists(), f"no {binary}:\n{STAGE.log_tail()}")
        installed = packages_after_install(STAGE.runtime_packages())
        linked = subprocess.run(["ldd", str(binary)], capture_output=True, text=True,
                                check=True).stdout
        libraries = []
        for line in linked.splitlines():
            self.assertNotIn("not found", line)
            match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if match:
                libraries.append(match.group(1))
        self.assertTrue(any("libbpf" in library for library in libraries), linked)
        for library in libraries:
            owners = package_owners(library)
            self.assertTrue(owners & installed,
                            f"{library} comes from {owners or 'no Debian package'}, which the "
                            "runtime stage does not install")

    def test_binary_runs_record_report_and_doctor(self):
        binary = STAGE.built_binary()
        self.assertTrue(binary.exists(), f"no {binary}:\n{STAGE.log_tail()}")
        environment = {"PATH": IMAGE_PATH, "HOME": str(STAGE.directory / "home")}

        def closetrace(*arguments):
            return subprocess.run([str(binary), *arguments], capture_output=True, text=True,
                                  env=environment, timeout=120, check=False)

        self.assertIn("0.", closetrace("--version").stdout)
        for command in ("record", "report", "doctor"):
            shown = closetrace(command, "--help")
            self.assertEqual(shown.returncode, 0, shown.stderr)
        report = closetrace("report", str(FIXTURES / "mismatch.jsonl"), "--format", "json")
        self.assertEqual(report.returncode, 0, report.stderr)
        self.assertIn("races", json.loads(report.stdout))


if __name__ == "__main__":
    unittest.main()
