"""Warm, coverage-selected test runs for cosmic-ray (mutation/run.sh starts and stops it).

A mutant used to cost a cold ``python -m pytest`` over all of its module's test files: several
seconds importing torch and the SageMaker SDK before the first test. This runner pays that once:

    python mutation/warm.py serve --socket S --module FILE --log L TEST_FILE ...
    python mutation/warm.py run --socket S          # cosmic-ray's test-command, once per mutant

``serve`` first runs the module's tests once, unmutated, under coverage with one context per
test (pytest-cov's ``--cov-context=test``): that is the baseline (it must pass) and the map of
which tests execute which line. It then imports the heavy third-party libraries (never the
project's own modules), listens on a Unix socket and, for each ``run``:

1. diffs the module file on disk (cosmic-ray has just written the mutant) against the pristine
   text and finds the changed lines;
2. forks a child, which imports the project fresh from disk (bytecode never written, so a stale
   ``.pyc`` cannot hide a mutant) and runs ``pytest -x`` on only the tests that executed those
   lines;
3. with ``--confirm`` (run.sh's ``CONFIRM=1``), runs the module's whole test list as well
   before calling the mutant a survivor. Coverage sees only the test process: a line that a test
   also runs in a subprocess (a real server, a training job) may have a killer that was not
   selected. Without it, such a mutant counts as a survivor: the error can only lower the
   score, never raise it. Lines with no per-test context at all (module level, or reached only
   in subprocesses) always run the whole list.

Selected tests run quickest first (durations from the baseline run), so a killed mutant costs
the time of its quickest killer.

The exit status is pytest's: 0 (the mutant survived) or not (killed). A run in which one test
takes five times its unmutated duration (plus 10 s), or the run five times its tests' duration
(plus 10 s), is stopped and counts as killed (status 124: the mutant hung the tests). If
cosmic-ray times the client out, the client's socket closes and the server kills the child's
process group.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# Third-party modules the tests import; loaded once in the server so each fork starts warm.
PRELOAD = (
    "numpy", "PIL.Image", "torch", "torchvision", "torchvision.models", "torchvision.transforms",
    "boto3", "botocore", "moto", "sagemaker", "sagemaker.workflow.pipeline",
    "sagemaker.workflow.steps", "sagemaker.pytorch", "sagemaker.tuner", "optuna",
    "sklearn.metrics", "hypothesis", "matplotlib", "pytest", "yaml", "jsonschema",
)
TIMED_OUT = 124  # the exit status timeout(1) gives: the tests ran past their limit
GRACE_SECONDS = 10.0  # added to five times the unmutated duration, for a run and for one test
PYTEST_ARGS = ["-x", "-q", "-p", "no:cacheprovider", "-p", "no:cov"]


COVERAGE_RC = """\
[run]
source = {source}
data_file = {data_file}
parallel = true
sigterm = true
context = ${{WARM_TEST_CONTEXT}}
"""


def coverage_map(module: Path, tests: list[str], data_file: Path) -> tuple[dict[int, set[str]], dict[str, float]]:
    """Run ``tests`` once under coverage, one context per test; map each line of ``module``
    to the test node ids that executed it (an empty string: executed outside any test), and
    each test to its duration in seconds.

    Coverage starts in the pytest process and in every Python subprocess it starts (through
    ``COVERAGE_PROCESS_START``, which coverage's own ``.pth`` file honours). The pytest plugin
    ``coverage_contexts`` (next to this file) switches the pytest process's context to the
    running test and exports the test's id, which the subprocesses' configuration takes as
    their static context: a line run only by a real server started in a test is mapped to that
    test too.
    """
    from coverage import CoverageData

    rcfile = data_file.with_suffix(".coveragerc")
    rcfile.write_text(COVERAGE_RC.format(source=module.parent.resolve(), data_file=data_file.resolve()))
    junit = data_file.with_suffix(".xml")
    here = str(Path(__file__).resolve().parent)
    env = dict(os.environ, COVERAGE_PROCESS_START=str(rcfile.resolve()),
               PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    env.pop("WARM_TEST_CONTEXT", None)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "coverage_contexts",
               f"--junitxml={junit}", *tests]
    started = time.monotonic()
    result = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        sys.exit(f"warm: the unmutated tests fail, so no mutant can be judged:\n"
                 f"{result.stdout[-4000:]}")
    print(f"warm: baseline passed in {time.monotonic() - started:.0f} s", flush=True)
    combined = subprocess.run([sys.executable, "-m", "coverage", "combine", f"--rcfile={rcfile}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if combined.returncode != 0:
        sys.exit(f"warm: coverage combine failed:\n{combined.stdout}")
    data = CoverageData(basename=str(data_file))
    data.read()
    by_line = data.contexts_by_lineno(str(module.resolve())) or {}
    return {line: set(names) for line, names in by_line.items()}, test_durations(junit)


def test_durations(junit: Path) -> dict[str, float]:
    """Seconds per test node id, from pytest's JUnit XML report (trusted: written just now)."""
    import xml.etree.ElementTree as ElementTree

    durations = {}
    for case in ElementTree.parse(junit).iter("testcase"):
        module_path = case.get("classname", "").split(".")
        # classname "tests.test_x" or "tests.test_x.TestClass"; name carries any parameters
        for split in range(len(module_path), 0, -1):
            path = "/".join(module_path[:split]) + ".py"
            if Path(path).is_file():
                node = "::".join([path, *module_path[split:], case.get("name", "")])
                durations[node] = float(case.get("time", 0))
                break
    return durations


def changed_lines(pristine: list[str], current: list[str]) -> set[int]:
    """1-based line numbers of ``pristine`` that differ in ``current``."""
    lines: set[int] = set()
    matcher = difflib.SequenceMatcher(a=pristine, b=current, autojunk=False)
    for tag, start, end, _, _ in matcher.get_opcodes():
        if tag != "equal":
            lines.update(range(start + 1, max(end, start + 1) + 1))
    return lines


def select_tests(lines: set[int], by_line: dict[int, set[str]], tests: list[str],
                 durations: dict[str, float]) -> list[str]:
    """Node ids of the tests that executed the changed lines' code, quickest first; ``tests``
    (the whole list) when a line has no per-test context."""
    chosen: set[str] = set()
    for line in lines:
        contexts = by_line.get(line, set())
        if not contexts or "" in contexts:
            return tests
        chosen |= contexts
    return sorted(chosen, key=lambda node: (durations.get(node, float("inf")), node))


def time_limit(tests: list[str], durations: dict[str, float], whole: list[str]) -> float:
    """Seconds a run of ``tests`` may take: five times their unmutated duration, plus 10 s."""
    if tests == whole:
        return GRACE_SECONDS + 5 * sum(durations.values())
    return GRACE_SECONDS + 5 * sum(durations.get(test, 10.0) for test in tests)


def test_limit(test: str, durations: dict[str, float]) -> float:
    """Seconds one test may take: five times its unmutated duration, plus 10 s."""
    return GRACE_SECONDS + 5 * durations.get(test, 10.0)


def progress_plugin(fd: int) -> object:
    """pytest plugin of the forked child: tells the parent when each test's call phase starts
    (a line with its node id) and ends (an empty line). Setup and teardown are not timed per
    test: the first test to need a session fixture pays for building it."""
    import pytest

    class Progress:
        @pytest.hookimpl(wrapper=True)
        def pytest_runtest_call(self, item: pytest.Item):
            os.write(fd, item.nodeid.encode() + b"\n")
            try:
                return (yield)
            finally:
                os.write(fd, b"\n")

    return Progress()


def run_child(tests: list[str], log: Path, conn: socket.socket, listener: socket.socket,
              limit: float, durations: dict[str, float] | None = None) -> int | None:
    """pytest ``tests`` in a forked child; its exit status, or None if the client went away.

    TIMED_OUT (a mutant that hangs the tests) once the run passes ``limit`` seconds, or once one
    test passes :func:`test_limit` (so a hang in a quick test is caught in seconds, not after the
    whole list's allowance)."""
    durations = durations or {}
    progress_r, progress_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: its own process group, so a timeout can kill what the tests started
        try:
            os.setpgid(0, 0)
            os.close(progress_r)
            conn.close()
            listener.close()
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.dont_write_bytecode = True
            import pytest
            code = int(pytest.main(PYTEST_ARGS + tests, plugins=[progress_plugin(progress_w)]))
        except BaseException:  # noqa: BLE001 - any failure in the child is a failed run
            code = 3
        os._exit(code)
    os.close(progress_w)
    started = time.monotonic()
    deadline, test_deadline, pending = started + limit, float("inf"), b""
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            now = time.monotonic()
            if now > deadline or now > test_deadline:
                return TIMED_OUT
            readable, _, _ = select.select([conn, progress_r], [], [], 0.05)
            if conn in readable and not conn.recv(1, socket.MSG_PEEK):
                return None  # the client was killed (cosmic-ray's timeout)
            if progress_r in readable:
                pending += os.read(progress_r, 65536)
                *events, pending = pending.split(b"\n")
                if events:  # the latest: a test's call began (its id), or ended (empty)
                    test_deadline = (time.monotonic() + test_limit(events[-1].decode(), durations)
                                     if events[-1] else float("inf"))
    finally:
        os.close(progress_r)
        try:
            os.killpg(pid, signal.SIGKILL)  # the child, if still running, and its subprocesses
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def serve(args: argparse.Namespace) -> int:
    module = Path(args.module)
    pristine = module.read_text().splitlines()
    by_line, durations = coverage_map(module, args.tests, Path(args.socket).with_suffix(".coverage"))
    for name in args.preload.split(","):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    listener.bind(args.socket)
    listener.listen(1)
    print(f"warm: serving {module} ({len(by_line)} lines covered)", flush=True)
    while True:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)  # the request carries nothing yet: the mutant is on disk
            lines = changed_lines(pristine, module.read_text().splitlines())
            selected = select_tests(lines, by_line, args.tests, durations) if lines else args.tests
            code = run_child(selected, Path(args.log), conn, listener,
                             time_limit(selected, durations, args.tests), durations)
            if code == 0 and args.confirm and selected != args.tests:
                code = run_child(args.tests, Path(args.log), conn, listener,
                                 time_limit(args.tests, durations, args.tests), durations)
            if code is None:
                continue
            reply = {"code": code, "lines": sorted(lines),
                     "selected": "the whole test list" if selected == args.tests else f"{len(selected)} test(s)"}
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass


def run(args: argparse.Namespace) -> int:
    reply = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(args.socket)
            conn.sendall(b"run\n")
            while not reply.endswith(b"\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError as error:
        print(f"warm: no server at {args.socket}: {error}", file=sys.stderr)
    if not reply.endswith(b"\n"):
        # No verdict. Any non-zero status would count as a kill, so with --stop-parent-on-loss
        # (cosmic-ray's test-command) stop cosmic-ray instead: the mutant stays unrun.
        print("warm: the server gave no verdict", file=sys.stderr)
        if args.stop_parent_on_loss:
            os.kill(os.getppid(), signal.SIGTERM)
        return 3
    answer = json.loads(reply)
    print(f"lines {answer['lines']}: ran {answer['selected']}; pytest exit {answer['code']}")
    return answer["code"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("serve", help="baseline + coverage map, then serve test runs")
    server.add_argument("--socket", required=True, help="Unix socket path")
    server.add_argument("--module", required=True, help="the mutated source file")
    server.add_argument("--log", required=True, help="file the children's pytest output goes to")
    server.add_argument("--preload", default=",".join(PRELOAD),
                        help="comma-separated modules to import before serving (default: the heavy ones)")
    server.add_argument("--confirm", action="store_true",
                        help="run the whole test list before calling a mutant a survivor")
    server.add_argument("tests", nargs="+", help="the module's test files, in run order")
    client = commands.add_parser("run", help="run the tests of the mutant now on disk")
    client.add_argument("--socket", required=True, help="Unix socket path")
    client.add_argument("--stop-parent-on-loss", action="store_true",
                        help="SIGTERM the parent process (cosmic-ray) when the server gives no verdict")
    args = parser.parse_args(argv)
    return serve(args) if args.command == "serve" else run(args)


if __name__ == "__main__":
    sys.exit(main())
