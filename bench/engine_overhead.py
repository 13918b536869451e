"""The local engine's own overhead, and what the step cache saves.

Runs ``imgpipe run`` twice in a fresh home on the same data: a cold run, then an identical
run that the step cache should answer. Prints, for the cold run:

- wall time of the whole command (process start to exit, as a user waits for it);
- the jobs' own run time: each processing/training job from its start to its end (the
  container's work), the tuning step as the union of its trials' run intervals;
- the engine's overhead = wall - jobs, as a share of wall (target <= 5%), split into
  start-up (imports, building the definition with the SageMaker SDK, data upload) and the
  per-step rest (staging inputs and code, packing outputs, records, progress);

and the cached re-run's wall time as a share of the cold run's.

    .venv/bin/python bench/engine_overhead.py                      # default data (Fashion-MNIST, 1,200 per class)
    .venv/bin/python bench/engine_overhead.py --data DIR -p MaxTuningJobs=2
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.datasets import default_dataset  # noqa: E402


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def job_seconds(step_type: str, props: dict) -> float:
    """Seconds the step's job(s) ran, from the DescribeXxxJob-shaped step properties."""
    if step_type == "Processing" and "ProcessingStartTime" in props:
        return _ts(props["ProcessingEndTime"]) - _ts(props["ProcessingStartTime"])
    if step_type == "Training" and "TrainingStartTime" in props:
        return _ts(props["TrainingEndTime"]) - _ts(props["TrainingStartTime"])
    if step_type == "Tuning":
        trials = [(_ts(t["TrainingStartTime"]), _ts(t["TrainingEndTime"]))
                  for t in props.get("TrainingJobSummaries", []) if t.get("TrainingStartTime") and t.get("TrainingEndTime")]
        return _union(trials)
    return 0.0


def run(home: Path, data: Path, params: list[str]) -> tuple[float, float, str, str]:
    """Run ``imgpipe run``; returns (wall seconds, process start timestamp, execution id, stdout)."""
    cmd = [str(Path(sys.executable).parent / "imgpipe"), "run", "--home", str(home), "--data", str(data)]
    for p in params:
        cmd += ["-p", p]
    started = time.time()
    t0 = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if result.returncode != 0:
        sys.exit(f"imgpipe run failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    db = sqlite3.connect(home / "imgpipe.db")
    (execution_id,) = db.execute("SELECT id FROM exec_executions ORDER BY start_time DESC LIMIT 1").fetchone()
    return wall, started, execution_id, result.stdout


def steps(home: Path, execution_id: str) -> list[tuple[str, str, float, float, float, bool]]:
    """(name, type, start, end, job seconds, cached) per step that ran."""
    db = sqlite3.connect(home / "imgpipe.db")
    rows = db.execute("SELECT name, type, start_time, end_time, properties, cached_from FROM exec_steps "
                      "WHERE execution_id = ? AND start_time IS NOT NULL ORDER BY start_time", (execution_id,))
    return [(name, kind, start, end, 0.0 if cached else job_seconds(kind, json.loads(props or "{}")), bool(cached))
            for name, kind, start, end, props, cached in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="image folders to run on (default: the default dataset of `imgpipe run`)")
    parser.add_argument("-p", "--parameter", action="append", default=[], help="pipeline parameter Name=Value")
    parser.add_argument("--home", help="IMGPIPE_HOME to use (default: a new temporary directory)")
    args = parser.parse_args()

    home = Path(args.home or tempfile.mkdtemp(prefix="imgpipe-bench-"))
    data = Path(args.data) if args.data else default_dataset(home / "datasets", log=lambda *_: None)[0]
    print(f"home {home}\ndata {data}\n")

    cold_wall, cold_start, cold_id, cold_out = run(home, data, args.parameter)
    print("cold run's summary:\n" + cold_out[cold_out.find("Execution "):])
    cold_steps = steps(home, cold_id)
    warm_wall, _, warm_id, _ = run(home, data, args.parameter)
    warm_steps = steps(home, warm_id)

    print(f"{'step':<30}{'type':<15}{'step s':>9}{'job s':>9}{'engine s':>10}")
    for name, kind, start, end, job, _ in cold_steps:
        print(f"{name:<30}{kind:<15}{end - start:>9.1f}{job:>9.1f}{end - start - job:>10.1f}")
    jobs = sum(s[4] for s in cold_steps)
    startup = cold_steps[0][2] - cold_start
    overhead = cold_wall - jobs
    print(f"\ncold run wall           {cold_wall:8.1f} s")
    print(f"jobs' own run time      {jobs:8.1f} s")
    print(f"engine overhead         {overhead:8.1f} s = {100 * overhead / cold_wall:.2f}% of wall (target <= 5%)")
    print(f"  start-up (imports, definition build, data upload)  {startup:6.1f} s")
    print(f"  per-step (staging, packing, records, progress)     {overhead - startup:6.1f} s")
    cached = sum(s[5] for s in warm_steps)
    print(f"\ncached re-run wall      {warm_wall:8.1f} s = {100 * warm_wall / cold_wall:.2f}% of the cold run "
          f"({cached}/{len(warm_steps)} steps from cache)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
