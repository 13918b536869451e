"""Local state is private: the ``imgpipe`` entry point runs with umask 0o077, so the home is
0700 and the database, logs and anything its jobs write are 0600; a home left 0755 by an older
version is tightened. Real ``imgpipe`` processes on a real home directory."""
from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.private_state import tighten_home

ROOT = Path(__file__).resolve().parents[1]


def imgpipe(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'training'}"}
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_home_and_database_are_private(tmp_path):
    home = tmp_path / "fresh" / "home"
    old = os.umask(0o022)  # what the user's shell has: the entry point must not rely on it
    try:
        imgpipe("executions", "list", "--home", str(home))
    finally:
        os.umask(old)
    assert mode(home) == 0o700
    assert mode(home / "imgpipe.db") == 0o600


def test_existing_open_home_is_tightened(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    sqlite3.connect(home / "imgpipe.db").close()
    (home / "imgpipe.db").chmod(0o644)
    imgpipe("executions", "list", "--home", str(home))
    assert mode(home) == 0o700
    assert mode(home / "imgpipe.db") == 0o600


def test_files_the_entry_point_writes_are_private(tmp_path):
    """Everything written under the umask (here sample images) is 0600 in 0700 folders: job
    logs, captured data and model copies are written the same way, by this process or its
    children (which inherit the umask)."""
    out = tmp_path / "out"
    imgpipe("data", "sample", "--name", "digits", "--out", str(out), "--per-class", "1")
    images = [p for p in out.rglob("*") if p.is_file()]
    assert images and all(mode(p) == 0o600 for p in images)
    assert all(mode(p) == 0o700 for p in out.rglob("*") if p.is_dir())


def test_tighten_home_leaves_missing_and_foreign_paths_alone(tmp_path):
    tighten_home(tmp_path / "missing")  # no error, nothing created
    assert not (tmp_path / "missing").exists()
    plain = tmp_path / "file"
    plain.write_text("x")
    plain.chmod(0o644)
    tighten_home(plain)  # not a directory: untouched
    assert mode(plain) == 0o644


@pytest.mark.parametrize("name", ["imgpipe.db-wal", "imgpipe.db-shm"])
def test_tighten_home_covers_sqlite_side_files(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    (tmp_path / name).chmod(0o644)
    tighten_home(tmp_path)
    assert mode(tmp_path / name) == 0o600
