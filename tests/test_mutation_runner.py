"""mutation/warm.py: the warm, coverage-selected test runner behind `make mutation`.

A wrong selection would silently inflate the mutation scores (a mutant "survives" because its
killer never ran), so the selection rules and a whole serve/run round trip are tested here.
"""
from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from scripts import load_script

REPO = Path(__file__).resolve().parents[1]
warm = load_script("imgpipe_mutation_warm", "mutation/warm.py")
recheck = load_script("imgpipe_mutation_recheck", "mutation/recheck.py")
score = load_script("imgpipe_mutation_score", "mutation/score.py")


def test_changed_lines_are_the_pristine_line_numbers_that_differ():
    pristine = ["a = 1", "b = 2", "c = 3", "d = 4"]
    assert warm.changed_lines(pristine, ["a = 1", "b = 0", "c = 3", "d = 4"]) == {2}
    assert warm.changed_lines(pristine, ["a = 1", "b = 2", "c = 3", "d = 5"]) == {4}
    assert warm.changed_lines(pristine, ["a = 1", "c = 3", "d = 4"]) == {2}  # a line removed
    assert warm.changed_lines(pristine, list(pristine)) == set()


def test_selection_takes_every_test_that_ran_the_lines_quickest_first():
    tests = ["tests/test_a.py", "tests/test_b.py"]
    by_line = {10: {"tests/test_b.py::slow", "tests/test_a.py::quick"}, 11: {"tests/test_a.py::other"},
               12: {"", "tests/test_a.py::quick"}}
    durations = {"tests/test_b.py::slow": 3.0, "tests/test_a.py::quick": 0.1, "tests/test_a.py::other": 1.0}
    assert warm.select_tests({10}, by_line, tests, durations) == ["tests/test_a.py::quick", "tests/test_b.py::slow"]
    assert warm.select_tests({10, 11}, by_line, tests, durations) == [
        "tests/test_a.py::quick", "tests/test_a.py::other", "tests/test_b.py::slow"]
    # a line no test ran in-process (module level, or only in a subprocess): every test file
    assert warm.select_tests({10, 99}, by_line, tests, durations) == tests
    assert warm.select_tests({12}, by_line, tests, durations) == tests


TOY = '''def add(a, b):
    return a + b


def doubled(a):
    return a * 2


def untested(a):
    return a - 1
'''
TOY_TESTS = '''import subprocess
import sys

from toy import add


def test_add():
    assert add(2, 3) == 5


def test_add_zero():
    assert add(0, 0) == 0


def test_doubled_in_a_subprocess():
    code = "import toy; assert toy.doubled(2) == 4"
    subprocess.run([sys.executable, "-c", code], check=True)
'''


def test_a_served_run_kills_tested_mutants_and_lets_an_untested_one_survive(tmp_path):
    """Also in a subprocess: a line only a test's subprocess ran selects that test."""
    (tmp_path / "toy.py").write_text(TOY)
    (tmp_path / "test_toy.py").write_text(TOY_TESTS)
    socket_path = tmp_path / "warm.sock"
    server = subprocess.Popen(
        [sys.executable, str(REPO / "mutation" / "warm.py"), "serve", "--socket", str(socket_path),
         "--module", "toy.py", "--log", str(tmp_path / "runs.log"), "--preload", "json", "test_toy.py"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not socket_path.exists():
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "the server never listened"
            time.sleep(0.1)

        def run() -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, str(REPO / "mutation" / "warm.py"), "run", "--socket",
                                   str(socket_path)], capture_output=True, text=True, timeout=120)

        assert run().returncode == 0  # unmutated: the tests pass
        (tmp_path / "toy.py").write_text(TOY.replace("a + b", "a - b"))
        killed = run()
        assert killed.returncode == 1 and "lines [2]: ran 2 test(s)" in killed.stdout
        (tmp_path / "toy.py").write_text(TOY.replace("a * 2", "a * 3"))
        in_subprocess = run()  # only a subprocess of one test ran doubled(): that test is selected
        assert in_subprocess.returncode == 1 and "lines [6]: ran 1 test(s)" in in_subprocess.stdout
        (tmp_path / "toy.py").write_text(TOY.replace("a - 1", "a - 2"))
        survived = run()  # no test ran untested(): the whole list runs, and passes
        assert survived.returncode == 0 and "lines [10]: ran the whole test list" in survived.stdout
        assert "test_add" in (tmp_path / "runs.log").read_text()
    finally:
        server.kill()
        server.wait()


HANGING_TESTS = '''import time


def test_quick():
    assert True


def test_hangs():
    time.sleep(120)
'''


def test_a_test_that_hangs_is_stopped_at_its_own_limit_not_the_whole_runs(tmp_path, monkeypatch):
    """A mutant that hangs a quick test is a kill within that test's allowance (5x its unmutated
    duration plus the grace), long before the whole run's allowance runs out."""
    (tmp_path / "test_hang.py").write_text(HANGING_TESTS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(warm, "GRACE_SECONDS", 1.0)
    durations = {"test_hang.py::test_quick": 0.01, "test_hang.py::test_hangs": 0.01}
    client, server_end = socket.socketpair()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with client, server_end, listener:
        started = time.monotonic()
        code = warm.run_child(["test_hang.py"], tmp_path / "runs.log", server_end, listener, 60.0, durations)
        elapsed = time.monotonic() - started
        assert code == warm.TIMED_OUT and elapsed < 20, elapsed
        # a test within its allowance passes
        assert warm.run_child(["test_hang.py::test_quick"], tmp_path / "runs.log", server_end, listener,
                              60.0, durations) == 0


def test_without_a_server_the_client_stops_its_parent_instead_of_reporting_a_kill(tmp_path):
    """Any non-zero status counts as a killed mutant: a lost server must stop cosmic-ray."""
    client = f"{sys.executable} {REPO / 'mutation' / 'warm.py'} run --socket {tmp_path / 'gone.sock'}"
    plain = subprocess.run(["bash", "-c", f"{client}; echo parent-went-on"], capture_output=True, text=True,
                           timeout=60)
    assert "parent-went-on" in plain.stdout and "no server at" in plain.stderr
    stopping = subprocess.run(["bash", "-c", f"{client} --stop-parent-on-loss; echo parent-went-on"],
                              capture_output=True, text=True, timeout=60)
    assert stopping.returncode == -15 and "parent-went-on" not in stopping.stdout


def toy_session(tmp_path: Path) -> Path:
    """A cosmic-ray session of TOY's mutants, none run yet."""
    (tmp_path / "toy.py").write_text(TOY)
    (tmp_path / "cr.toml").write_text('[cosmic-ray]\nmodule-path = "toy.py"\ntimeout = 10\n'
                                      'excluded-modules = []\ntest-command = "true"\n'
                                      '[cosmic-ray.distributor]\nname = "local"\n')
    session = tmp_path / "toy.sqlite"
    subprocess.run([str(Path(sys.executable).parent / "cosmic-ray"), "init", "cr.toml", str(session)],
                   cwd=tmp_path, check=True, capture_output=True)
    return session


def test_a_recheck_reruns_survivors_and_leaves_unrun_mutants_for_later(tmp_path):
    """A session stopped part-way: RECHECK re-runs its survivors only, then its unrun mutants are
    pending again (parking them must not drop them from the score for good)."""
    session = toy_session(tmp_path)
    with sqlite3.connect(session) as conn:
        jobs = [row[0] for row in conn.execute("SELECT job_id FROM work_items ORDER BY job_id")]
        assert len(jobs) >= 4
        for job, outcome in zip(jobs, ["KILLED", "SURVIVED"]):
            conn.execute("INSERT INTO work_results (job_id, worker_outcome, output, test_outcome, diff) "
                         "VALUES (?, 'NORMAL', '', ?, '')", (job, outcome))
    unrun = len(jobs) - 2
    assert score.score(session) == {"killed": 1, "survived": 1, "incompetent": 0, "pending": unrun}
    with sqlite3.connect(session) as conn:
        assert recheck.begin(conn) == f"1 survivors to re-run ({unrun} unrun mutants left for a later run)"
    assert score.score(session) == {"killed": 1, "survived": 0, "incompetent": 0, "pending": 1}
    with sqlite3.connect(session) as conn:
        assert recheck.end(conn) == f"{unrun} unrun mutants pending again"
    assert score.score(session) == {"killed": 1, "survived": 0, "incompetent": 0, "pending": unrun + 1}


def test_a_recheck_of_some_lines_reruns_only_the_survivors_on_them(tmp_path):
    session = toy_session(tmp_path)
    with sqlite3.connect(session) as conn:
        rows = conn.execute("SELECT job_id, start_pos_row FROM mutation_specs ORDER BY start_pos_row").fetchall()
        on_line_2 = [job for job, row in rows if row == 2]
        assert on_line_2 and any(row != 2 for _, row in rows)
        conn.executemany("INSERT INTO work_results (job_id, worker_outcome, output, test_outcome, diff) "
                         "VALUES (?, 'NORMAL', '', 'SURVIVED', '')", [(job,) for job, _ in rows])
        assert recheck.begin(conn, {2}) == f"{len(on_line_2)} survivors to re-run (0 unrun mutants left for a later run)"
    assert score.score(session) == {"killed": 0, "survived": len(rows) - len(on_line_2), "incompetent": 0,
                                    "pending": len(on_line_2)}


def test_scoring_a_session_that_does_not_exist_is_an_error_and_creates_nothing(tmp_path):
    """A mistyped session must not become an empty file: run.sh would take it for a session
    and never initialise it."""
    missing = tmp_path / "inference.sqlite"
    for script in ("score.py", "survivors.py"):
        result = subprocess.run([sys.executable, str(REPO / "mutation" / script), str(missing)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and "no such session" in result.stderr, script
        assert not missing.exists()
