"""Running a local job's process: its own process group, log streaming, stop and timeout.

:class:`JobControl` lets another thread stop a running job (the engine on Ctrl-C, the tuner
when it stops a trial early); :func:`run_process` runs one command under such a control.

A job dies with its engine: each job runs in its own process group (so a stop reaches its
data-loader workers and other children) and, on Linux, with a parent-death signal
(``prctl(PR_SET_PDEATHSIG, SIGKILL)``, set between fork and exec), so a ``kill -9`` of
``imgpipe run`` kills the job's leader at once; its children notice their parent's death
(PyTorch's loader workers watch it) or are killed by ``imgpipe gc`` / the next engine, which
SIGKILL the recorded process group of a job whose execution is no longer running
(:func:`kill_recorded_group`).
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

KILL_GRACE_SECONDS = 5.0
POLL_SECONDS = 0.1
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PGID_FILE = "job.pgid"  # in the job directory while its process runs


def _load_prctl() -> Optional[Callable[..., int]]:
    """libc's ``prctl`` (Linux only), resolved once, before any fork."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def die_with_parent_preexec(parent_pid: int) -> Optional[Callable[[], None]]:
    """A ``preexec_fn`` that makes the child get SIGKILL when its parent dies (Linux), and
    exit at once if the parent already died between fork and ``prctl``; None elsewhere."""
    if _PRCTL is None:
        return None
    prctl = _PRCTL

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(137)

    return preexec


def _group_runs_in(pgid: int, job_dir: Path) -> bool:
    """Whether a process of group ``pgid`` works inside ``job_dir`` (so a recycled pid of an
    unrelated process group is never killed). Without ``/proc``: trust the record."""
    proc_root = Path("/proc")
    if not proc_root.is_dir():
        return True
    root = job_dir.resolve()
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            cwd = Path(os.readlink(entry / "cwd"))
        except (OSError, IndexError, ValueError):
            continue
        if cwd == root or root in cwd.parents:
            return True
    return False


def recorded_group_alive(job_dir: Path) -> bool:
    """Whether the process group recorded in ``job_dir`` still has a process working there."""
    try:
        pgid = int((job_dir / PGID_FILE).read_text().strip())
    except (OSError, ValueError):
        return False
    return _group_runs_in(pgid, job_dir)


def kill_recorded_group(job_dir: Path) -> bool:
    """SIGKILL what is left of the process group recorded in ``job_dir`` by a job whose engine
    died (children that outlived the job's leader); True if something was killed."""
    try:
        pgid = int((job_dir / PGID_FILE).read_text().strip())
    except (OSError, ValueError):
        return False
    killed = False
    if _group_runs_in(pgid, job_dir):
        try:
            os.killpg(pgid, signal.SIGKILL)
            killed = True
        except (ProcessLookupError, PermissionError):
            pass
    (job_dir / PGID_FILE).unlink(missing_ok=True)
    return killed


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
            errors="replace", preexec_fn=die_with_parent_preexec(os.getpid()),
        )
        pgid_file = log_path.parent / PGID_FILE
        pgid_file.write_text(str(proc.pid))

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
        pgid_file.unlink(missing_ok=True)
    result.returncode = proc.returncode
    result.seconds = time.monotonic() - started
    return result
