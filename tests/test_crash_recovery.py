"""A ``kill -9`` of ``imgpipe run`` mid-training: no job outlives it, the checkpoint already in
the object store is what ``imgpipe executions retry`` resumes from, and the killed job's
scratch space is trimmed (log kept). Real processes: the engine, the real train.py."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from crash_job import (
    cli_env,
    epochs_logged,
    imgpipe,
    stored_checkpoint_epoch,
    training_definition,
    wait_for_checkpoint,
    wait_until_no_processes,
)
from pipelines.local.records import Records
from pipelines.settings import Settings

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; parent-death signal is Linux's")

EPOCHS = 6


def test_kill_9_mid_training_then_retry_resumes_at_the_next_epoch(tmp_path):
    home = tmp_path / "home"
    definition = training_definition(home, tmp_path, epochs=EPOCHS)
    engine = subprocess.Popen(imgpipe(home, "run", "--definition", str(definition)), env=cli_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = wait_for_checkpoint(home, engine)
    os.kill(engine.pid, signal.SIGKILL)
    engine.wait(timeout=30)
    jobs_root = Settings(home=home).jobs_root

    assert wait_until_no_processes(jobs_root) == []  # train.py died with its engine
    saved = stored_checkpoint_epoch(home) or saved  # an epoch may have been synced as it died
    assert 1 <= saved < EPOCHS
    killed_job = next(jobs_root.iterdir())
    assert (killed_job / "job.pgid").is_file()  # the dead engine could not clean up

    execution = Records(Settings(home=home).db_path).list_executions()[0].id
    retry = subprocess.run(imgpipe(home, "executions", "retry", execution), env=cli_env(),
                           capture_output=True, text=True, timeout=600)
    assert retry.returncode == 0, retry.stdout + retry.stderr

    record = Records(Settings(home=home).db_path).get_execution(execution)
    assert record.status == "Succeeded" and record.attempt == 2
    resumed_log = Path(record.steps[0].log_path).read_text()
    assert f"resumed from checkpoint after epoch {saved}" in resumed_log
    assert epochs_logged(resumed_log) == list(range(saved + 1, EPOCHS + 1))  # no epoch trained twice
    assert stored_checkpoint_epoch(home) == EPOCHS

    # the killed job's directory was trimmed by the retrying engine: log kept, scratch gone
    assert (killed_job / "job.log").is_file() and epochs_logged((killed_job / "job.log").read_text())
    assert not (killed_job / "input").exists() and not (killed_job / "checkpoints").exists()
    assert not (killed_job / "job.pgid").exists()
