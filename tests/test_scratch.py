"""Crash safety pieces on their own: the parent-death signal, checkpoint sync to the store,
trimming failed jobs' scratch space, and ``imgpipe gc``. Real processes."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipelines.local.checkpoints import CheckpointSync
from pipelines.local.processes import PGID_FILE
from pipelines.local.records import Records
from pipelines.local.scratch import collect_garbage, execution_of, trim_job_dir
from pipelines.settings import Settings
import test_local_jobs
from test_local_jobs import _gone, training_request

env, digits = test_local_jobs.env, test_local_jobs.digits  # their fixtures, used here too

ROOT = Path(__file__).resolve().parents[1]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux's")

PARENT = textwrap.dedent('''
    import sys
    from pathlib import Path
    from pipelines.local.processes import JobControl, run_process
    job = Path(sys.argv[1])
    run_process(["sleep", "120"], cwd=job, env={"PATH": "/usr/bin:/bin"}, log_path=job / "job.log",
                on_line=print, control=JobControl())
''')


@linux_only
def test_job_dies_with_its_killed_parent(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(job)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while not (job / PGID_FILE).is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int((job / PGID_FILE).read_text())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=10)
    assert _gone(child, wait=5)  # prctl(PR_SET_PDEATHSIG): no orphaned job


def test_checkpoint_sync_copies_complete_changed_files_only(tmp_path):
    local, dest = tmp_path / "ckpt", tmp_path / "store" / "ckpt"
    local.mkdir()
    (local / "checkpoint.pt").write_bytes(b"epoch 1")
    (local / "checkpoint.tmp").write_bytes(b"half written")
    sync = CheckpointSync(local, dest)
    assert sync.sync_once() == [Path("checkpoint.pt")]
    assert sync.sync_once() == []  # unchanged
    assert not (dest / "checkpoint.tmp").exists()
    (local / "checkpoint.pt").write_bytes(b"epoch 2!")
    with CheckpointSync(local, dest, interval=0.05):
        time.sleep(0.3)
        assert (dest / "checkpoint.pt").read_bytes() == b"epoch 2!"  # copied while the job runs
        (local / "sub").mkdir()
        (local / "sub" / "last.json").write_text("{}")
    assert (dest / "sub" / "last.json").read_text() == "{}"  # and once more at the end
    assert sorted(p.name for p in dest.iterdir()) == ["checkpoint.pt", "sub"]  # no partial files left


def test_failed_job_keeps_log_and_reason_only(env, digits):
    result = env.api.run_training_job(training_request(env, digits, mode='"fail"'), "train-failed")
    assert result["TrainingJobStatus"] == "Failed" and "no images of class 7" in result["FailureReason"]
    job_dir = env.settings.jobs_root / "train-failed"
    kept = sorted(p.relative_to(job_dir).as_posix() for p in job_dir.rglob("*") if p.is_file())
    assert kept == ["TRIMMED", "job.log", "output/failure"]
    assert "scratch space removed" in (job_dir / "job.log").read_text()


def test_trim_keeps_logs(tmp_path):
    job = tmp_path / "pipelines-abcdefghijkl-Train-0123456789"
    (job / "input" / "data").mkdir(parents=True)
    (job / "input" / "data" / "big.bin").write_bytes(b"x" * 10_000)
    (job / "output").mkdir()
    (job / "output" / "failure").write_text("why")
    (job / "job.log").write_text("log")
    assert trim_job_dir(job) == 10_000
    assert sorted(p.relative_to(job).as_posix() for p in job.rglob("*")) == ["TRIMMED", "job.log", "output", "output/failure"]
    assert execution_of(job.name) == "abcdefghijkl"
    assert execution_of("abcdefghijkl-Tune-0123456789-001-ffff") == "abcdefghijkl"
    assert execution_of("train-1") is None


@linux_only
def test_gc_kills_orphans_and_trims_jobs_of_dead_executions_only(tmp_path):
    settings = Settings(home=tmp_path / "home")
    records = Records(settings.db_path)
    for execution in ("deadexecutio", "liveexecutio"):
        records.create_execution(execution, f"arn:{execution}", "P", {"Steps": []}, {}, time.time())
    with sqlite3.connect(settings.db_path) as conn:  # an engine that died (a pid that does not exist)
        conn.execute("UPDATE exec_executions SET pid=? WHERE id='deadexecutio'", (2**22 + 7,))
    jobs = {}
    for execution in ("deadexecutio", "liveexecutio"):
        job = jobs[execution] = settings.jobs_root / f"pipelines-{execution}-Train-0123456789"
        (job / "input").mkdir(parents=True)
        (job / "input" / "copy.bin").write_bytes(b"x" * 4096)
        (job / "job.log").write_text("log")
    orphan = subprocess.Popen(["sleep", "120"], cwd=jobs["deadexecutio"], start_new_session=True)
    (jobs["deadexecutio"] / PGID_FILE).write_text(str(orphan.pid))
    try:
        out = subprocess.run([sys.executable, "-m", "pipelines.cli", "gc", "--home", str(settings.home)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "trimmed 1 job directory" in out.stdout and "killed leftover processes of 1 job" in out.stdout
        assert orphan.wait(timeout=10) == -signal.SIGKILL
    finally:
        if orphan.poll() is None:
            orphan.kill()
    assert not (jobs["deadexecutio"] / "input").exists() and (jobs["deadexecutio"] / "job.log").is_file()
    assert (jobs["liveexecutio"] / "input" / "copy.bin").is_file()  # its engine (this process) is alive
    assert Records(settings.db_path).get_execution("deadexecutio").status == "Failed"
    report = collect_garbage(settings.jobs_root, running=set())
    assert report.trimmed == [jobs["liveexecutio"].name]  # once no longer running
