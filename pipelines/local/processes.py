"""Running a local job's process: its own process group, log streaming, stop and timeout.

:class:`JobControl` lets another thread stop a running job (the engine on Ctrl-C, the tuner
when it stops a trial early); :func:`run_process` runs one command under such a control.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

KILL_GRACE_SECONDS = 5.0
POLL_SECONDS = 0.1


# --------------------------------------------------------------------------- control
class JobControl:
    """Lets another thread stop a running job (or every job under a parent control)."""

    def __init__(self, parent: Optional["JobControl"] = None):
        self._event = threading.Event()
        self._parent = parent
        self._reason: Optional[str] = None

    def request_stop(self, reason: str) -> None:
        if not self._event.is_set():
            self._reason = reason
            self._event.set()

    @property
    def stopped(self) -> bool:
        return self._event.is_set() or (self._parent is not None and self._parent.stopped)

    @property
    def reason(self) -> str:
        if self._event.is_set():
            return self._reason or "stopped"
        return self._parent.reason if self._parent is not None else "stopped"

    def wait(self, seconds: float) -> None:
        self._event.wait(seconds)

    def child(self) -> "JobControl":
        return JobControl(parent=self)


@dataclass
class ProcessResult:
    returncode: Optional[int]
    timed_out: bool = False
    stopped: bool = False
    stop_reason: str = ""
    seconds: float = 0.0


def _kill_group(proc: subprocess.Popen, grace: float = KILL_GRACE_SECONDS) -> None:
    """SIGTERM the job's whole process group, then SIGKILL what is left after ``grace``."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            if sig == signal.SIGKILL:
                return
        except subprocess.TimeoutExpired:
            continue
        # the leader exited; still SIGKILL stragglers of its group (data-loader workers)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return


def run_process(
    cmd: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    on_line: Callable[[str], None],
    control: JobControl,
    max_runtime: Optional[float] = None,
) -> ProcessResult:
    """Run ``cmd`` in its own process group, streaming stdout+stderr to ``log_path``."""
    started = time.monotonic()
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, text=True, bufsize=1,
            errors="replace",
        )

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                try:
                    on_line(line.rstrip("\n"))
                except Exception as exc:  # a faulty listener must not kill the job
                    log.write(f"[local] event listener error: {exc!r}\n")

        reader = threading.Thread(target=pump, name=f"log-{log_path.parent.name}", daemon=True)
        reader.start()
        result = ProcessResult(returncode=None)
        while proc.poll() is None:
            if control.stopped:
                result.stopped, result.stop_reason = True, control.reason
            elif max_runtime and time.monotonic() - started > max_runtime:
                result.timed_out = True
            if result.stopped or result.timed_out:
                _kill_group(proc)
                break
            control.wait(POLL_SECONDS)
        proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers that outlived the leader
        except (ProcessLookupError, PermissionError):
            pass
        reader.join(timeout=10)
    result.returncode = proc.returncode
    result.seconds = time.monotonic() - started
    return result
