"""The shared helpers of pipelines.common."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from pipelines.common import UsageError, pid_alive, quiet_loggers, utc_iso, utc_now_iso


def test_utc_iso_is_milliseconds_with_z_and_reads_back():
    text = utc_iso(1767225600.25)  # 2026-01-01T00:00:00.250 UTC
    assert text == "2026-01-01T00:00:00.250Z"
    assert datetime.fromisoformat(text) == datetime(2026, 1, 1, 0, 0, 0, 250000, tzinfo=timezone.utc)


def test_utc_now_iso_is_now():
    before = datetime.now(timezone.utc).timestamp()
    stamp = datetime.fromisoformat(utc_now_iso()).timestamp()
    assert before - 0.002 <= stamp <= datetime.now(timezone.utc).timestamp() + 0.002


def test_quiet_loggers_raises_then_restores_levels():
    first, second = logging.getLogger("imgpipe-test.a"), logging.getLogger("imgpipe-test.b")
    first.setLevel(logging.DEBUG)
    second.setLevel(logging.NOTSET)
    with quiet_loggers("imgpipe-test.a", "imgpipe-test.b", level=logging.WARNING):
        assert (first.level, second.level) == (logging.WARNING, logging.WARNING)
    assert (first.level, second.level) == (logging.DEBUG, logging.NOTSET)
    with pytest.raises(RuntimeError), quiet_loggers("imgpipe-test.a"):
        assert first.level == logging.ERROR
        raise RuntimeError("restored even on error")
    assert first.level == logging.DEBUG


def test_pid_alive_for_running_and_finished_processes():
    assert pid_alive(os.getpid())
    assert not pid_alive(None) and not pid_alive(0)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not pid_alive(child.pid)


def test_pid_alive_counts_another_users_process(monkeypatch):
    def refuse(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", refuse)
    assert pid_alive(12345)


def test_usage_error_is_a_value_error():
    with pytest.raises(ValueError, match="bad input"):
        raise UsageError("bad input")
