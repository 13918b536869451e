"""kill -9 recovery of the local engine: time to resume and epochs re-run.

Runs ``imgpipe run`` on a one-step definition that trains the real train.py (digits, small
MobileNetV3) for N epochs with a CheckpointConfig, SIGKILLs the engine as soon as a checkpoint
reached the object store, then ``imgpipe executions retry``. Prints: the epoch the store held,
orphaned job processes left, seconds from the retry's start to its first epoch line (time to
resume), epochs re-run (epochs the retry trained that the killed run had already logged), and
the killed job's directory size after trimming. Baseline in the same run: an uninterrupted
``imgpipe run`` of the same definition (its start to first epoch).

    PYTHONPATH=.:training:tests python bench/kill_recovery.py --epochs 8
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from crash_job import (  # noqa: E402
    EPOCH_RE, cli_env, epochs_logged, imgpipe, stored_checkpoint_epoch, training_definition,
    wait_for_checkpoint, wait_until_no_processes,
)
from pipelines.local.records import Records  # noqa: E402
from pipelines.settings import Settings  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imgpipe-kill-"))
    home = work / "home"
    definition = training_definition(home, work, epochs=args.epochs)

    engine = subprocess.Popen(imgpipe(home, "run", "--definition", str(definition)), env=cli_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = wait_for_checkpoint(home, engine)
    killed_at = time.monotonic()
    os.kill(engine.pid, signal.SIGKILL)
    engine.wait()
    orphans = wait_until_no_processes(Settings(home=home).jobs_root, timeout=10)
    gone_after = time.monotonic() - killed_at
    saved = stored_checkpoint_epoch(home) or saved
    killed_job = next(Settings(home=home).jobs_root.iterdir())
    logged_before = epochs_logged((killed_job / "job.log").read_text())

    execution = Records(Settings(home=home).db_path).list_executions()[0].id
    retry_started = time.time()
    t0 = time.monotonic()
    proc = subprocess.Popen(imgpipe(home, "executions", "retry", execution), env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_epoch = None
    while proc.poll() is None or first_epoch is None:
        logs = [p for p in Settings(home=home).jobs_root.glob("*/job.log") if p.parent != killed_job]
        if first_epoch is None and any(EPOCH_RE.search(p.read_text(errors="replace")) for p in logs):
            first_epoch = time.monotonic() - t0
        if proc.poll() is not None and first_epoch is None:
            break
        time.sleep(0.1)
    proc.wait()
    retry_total = time.monotonic() - t0
    record = Records(Settings(home=home).db_path).get_execution(execution)
    resumed_log = Path(record.steps[0].log_path).read_text()
    rerun = sorted(set(epochs_logged(resumed_log)) & set(logged_before))
    size = sum(p.stat().st_size for p in killed_job.rglob("*") if p.is_file())
    print(f"epochs: {args.epochs}; killed after the store held the checkpoint of epoch {saved} "
          f"(the killed job had logged epochs {logged_before})")
    print(f"orphaned job processes after kill -9: {len(orphans)} (all gone {gone_after:.2f} s after the kill)")
    print(f"retry: {record.status}, resumed at epoch {epochs_logged(resumed_log)[:1]}, "
          f"epochs re-run: {len(rerun)} {rerun}; first epoch line {first_epoch:.1f} s after the retry started; "
          f"retry total {retry_total:.1f} s (started {time.strftime('%H:%M:%S', time.localtime(retry_started))})")
    print(f"killed job's directory after trimming: {size} bytes ({sorted(p.name for p in killed_job.rglob('*'))})")

    base_home = work / "baseline"
    (work / "b").mkdir()
    base_def = training_definition(base_home, work / "b", epochs=args.epochs)
    t0 = time.monotonic()
    base = subprocess.Popen(imgpipe(base_home, "run", "--definition", str(base_def)), env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_first = None
    while base.poll() is None:
        if base_first is None and any(EPOCH_RE.search(p.read_text(errors="replace"))
                                      for p in Settings(home=base_home).jobs_root.glob("*/job.log")):
            base_first = time.monotonic() - t0
        time.sleep(0.1)
    print(f"baseline (no kill): first epoch line {base_first:.1f} s after `imgpipe run` started; "
          f"total {time.monotonic() - t0:.1f} s for {args.epochs} epochs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
