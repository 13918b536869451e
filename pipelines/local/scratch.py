"""Bounding the scratch space of local jobs (``$IMGPIPE_HOME/jobs/<job>/``).

A job directory holds copies of the job's inputs, its model, Debugger tensors, checkpoints and
code: hundreds of MB for a training job. What matters after a job ends is in the object store
(outputs, checkpoints, tensors are uploaded) or in the records; so:

- a job that failed or was stopped is trimmed as it ends, keeping its log and failure reason
  (:func:`trim_job_dir`);
- jobs of an execution whose engine died (``kill -9``: nothing could clean up) are trimmed,
  and what is left of their process groups killed, by the next engine that starts and by
  ``imgpipe gc`` (:func:`collect_garbage`), which also trims finished jobs' leftovers.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Container, Optional

from pipelines.local.processes import PGID_FILE, kill_recorded_group, recorded_group_alive

# kept in a trimmed job directory: the logs and the failure reason
KEEP = ("job.log", "tuning.log", "output/failure", "output/message", "TRIMMED")
TRIMMED_MARKER = "TRIMMED"
# job names the engine gives: pipelines-<execution id>-<step>-<hash> (tuning: <id>-<step>-<hash>,
# its trials: <tuning job name>-<nnn>-<hash>)
_EXECUTION_RE = re.compile(r"^(?:pipelines-)?([a-z0-9]{12})-")


def execution_of(job_name: str) -> Optional[str]:
    """The execution id in a job name the engine made, else None."""
    match = _EXECUTION_RE.match(job_name)
    return match.group(1) if match else None


def _size(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _trim(directory: Path, keep: set[Path]) -> int:
    freed = 0
    for path in directory.iterdir():
        if path in keep:
            continue
        if path.is_dir() and not path.is_symlink() and any(k.is_relative_to(path) for k in keep):
            freed += _trim(path, keep)
            continue
        freed += _size(path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return freed


def trim_job_dir(job_dir: Path) -> int:
    """Delete everything in ``job_dir`` but its logs and failure reason; bytes freed."""
    if not job_dir.is_dir():
        return 0
    freed = _trim(job_dir, {job_dir / k for k in KEEP})
    (job_dir / TRIMMED_MARKER).write_text("scratch removed; log and failure reason kept\n")
    return freed


def is_trimmed(job_dir: Path) -> bool:
    return (job_dir / TRIMMED_MARKER).is_file()


@dataclass
class GarbageReport:
    """What :func:`collect_garbage` did."""

    trimmed: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)  # jobs whose orphaned process group was killed
    skipped: list[str] = field(default_factory=list)  # jobs of running executions
    freed_bytes: int = 0


def collect_garbage(jobs_root: Path, running: Container[str], only: Optional[Container[str]] = None,
                    dry_run: bool = False) -> GarbageReport:
    """Trim the job directories under ``jobs_root`` that belong to no running execution
    (``running``: ids of executions whose engine is alive), killing their leftover process
    groups first; with ``only``, just the jobs of those executions."""
    report = GarbageReport()
    if not jobs_root.is_dir():
        return report
    for job_dir in sorted(p for p in jobs_root.iterdir() if p.is_dir()):
        execution = execution_of(job_dir.name)
        if only is not None and execution not in only:
            continue
        if execution in running or (execution is None and recorded_group_alive(job_dir)):
            report.skipped.append(job_dir.name)
            continue
        if is_trimmed(job_dir) and not (job_dir / PGID_FILE).exists():
            continue
        if dry_run:
            report.trimmed.append(job_dir.name)
            report.freed_bytes += _size(job_dir)
            continue
        if kill_recorded_group(job_dir):
            report.killed.append(job_dir.name)
        report.freed_bytes += trim_job_dir(job_dir)
        report.trimmed.append(job_dir.name)
    return report
