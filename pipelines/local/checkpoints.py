"""Checkpoints copied to the object store while a training job runs, as SageMaker syncs
``CheckpointConfig.S3Uri`` (the estimator's ``checkpoint_s3_uri``) during the job.

A job killed with its engine (``kill -9``) has therefore left its last complete checkpoint
in the store; the retried job gets it back in its checkpoint directory before it starts
(:func:`pipelines.local.training` fetches the prefix) and resumes after that epoch.
Each changed file is copied to a temporary name beside its destination and renamed into
place, so the store never holds a half-written checkpoint; files still being written under
a temporary name (``*.tmp``, as ``train.py`` writes them before its atomic rename) are skipped.
"""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from types import TracebackType
from typing import Callable, Optional

SYNC_INTERVAL_SECONDS = 1.0
PARTIAL_SUFFIXES = (".tmp", ".partial")


class CheckpointSync:
    """Copies new or changed files of ``local_dir`` to ``dest_dir`` every ``interval`` seconds
    while the ``with`` block runs, and once more at its end."""

    def __init__(self, local_dir: Path, dest_dir: Path, interval: float = SYNC_INTERVAL_SECONDS,
                 on_copy: Optional[Callable[[Path], None]] = None):
        self.local_dir, self.dest_dir, self.interval = local_dir, dest_dir, interval
        self.on_copy = on_copy
        self._seen: dict[Path, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def sync_once(self) -> list[Path]:
        """Copy what changed since the last call; returns the relative paths copied."""
        copied = []
        if not self.local_dir.is_dir():
            return copied
        for path in sorted(self.local_dir.rglob("*")):
            if not path.is_file() or path.name.endswith(PARTIAL_SUFFIXES):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:  # replaced between listing and stat
                continue
            rel = path.relative_to(self.local_dir)
            if self._seen.get(rel) == (stat.st_mtime_ns, stat.st_size):
                continue
            if self._copy(path, self.dest_dir / rel):
                self._seen[rel] = (stat.st_mtime_ns, stat.st_size)
                copied.append(rel)
                if self.on_copy is not None:
                    self.on_copy(rel)
        return copied

    @staticmethod
    def _copy(src: Path, dest: Path) -> bool:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
        try:
            shutil.copy2(src, tmp)
        except FileNotFoundError:  # replaced while copying: the next round copies the new one
            tmp.unlink(missing_ok=True)
            return False
        os.replace(tmp, dest)
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sync_once()

    def __enter__(self) -> "CheckpointSync":
        self._thread = threading.Thread(target=self._loop, name="checkpoint-sync", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sync_once()
