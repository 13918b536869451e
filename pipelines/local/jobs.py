"""The local job layout shared by Processing and Training jobs: the SageMaker container contract.

Each job gets a directory ``<jobs_root>/<job_name>/`` that stands in for ``/opt/ml`` (the
container contract of docs/architecture.md). Every ``/opt/ml`` path the job is given (entry
point, arguments, ``LocalPath`` values, environment) is remapped into it by :class:`PathMapper`.
Inputs are copied from the local object store before the job and outputs uploaded after it,
in SageMaker's layout. A job failure never raises: the Describe*-shaped result says ``Failed``
with a ``FailureReason`` (the job's failure file, else the tail of its log).

The jobs themselves: :mod:`pipelines.local.processing`, :mod:`pipelines.local.training`;
running and stopping their processes: :mod:`pipelines.local.processes`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from pipelines.common import utc_now_iso
from pipelines.local.object_store import ObjectStore
from pipelines.local.processes import JobControl, ProcessResult
from pipelines.local.scratch import trim_job_dir
from pipelines.settings import Settings

EventCallback = Callable[[dict], None]
ACCOUNT_ID = "000000000000"
OPT_ML = "/opt/ml"
CURRENT_HOST = "algo-1"
REASON_LIMIT = 1024  # SageMaker truncates FailureReason / ExitMessage to 1 KB
LOG_TAIL_LINES = 20
_OPT_ML_RE = re.compile(r"(?<![\w./-])/opt/ml(?=/|$|[^\w.-])")
_EPOCH_RE = re.compile(r"\bepoch[=: ]\s*(\d+)", re.IGNORECASE)


class LocalJobError(RuntimeError):
    """A job request that cannot run locally; becomes the job's FailureReason."""


@dataclass
class JobContext:
    """What every local job needs: where things live, cores, events, and a stop switch."""

    settings: Settings
    store: ObjectStore
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    on_event: Optional[EventCallback] = None
    control: JobControl = field(default_factory=JobControl)
    num_gpus: Optional[int] = None  # None: ask torch once, when the first training job runs

    def emit(self, event: dict) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def gpus(self) -> int:
        if self.num_gpus is None:
            self.num_gpus = _count_gpus()
        return self.num_gpus

    def with_control(self, control: JobControl, cores: Optional[int] = None) -> "JobContext":
        return JobContext(self.settings, self.store, cores or self.cores, self.on_event, control, self.num_gpus)


def _count_gpus() -> int:
    """``torch.cuda.device_count()``; without an NVIDIA driver, 0 without importing torch."""
    if not Path("/proc/driver/nvidia").exists() and not Path("/dev/nvidiactl").exists():
        return 0
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # no torch or no driver: a CPU machine
        return 0


# --------------------------------------------------------------------------- helpers
def job_arn(settings: Settings, kind: str, name: str) -> str:
    return f"arn:aws:sagemaker:{settings.region}:{ACCOUNT_ID}:{kind}/{name.lower()}"


def decode_hyperparameter(value: Any) -> Any:
    """SageMaker's training toolkit: each hyperparameter string is JSON, else taken raw."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def hyperparameter_text(value: Any) -> str:
    """A decoded hyperparameter as SageMaker shows it in ``TunedHyperParameters`` (plain)."""
    decoded = decode_hyperparameter(value)
    if isinstance(decoded, str):
        return decoded
    return value if isinstance(value, str) else json.dumps(decoded)


def toolkit_env_value(value: Any) -> str:
    """``mapping.to_env_vars`` of the training toolkit: strings as is, others as JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))


def to_cmd_args(hyperparameters: dict) -> list[str]:
    """``mapping.to_cmd_args`` of the training toolkit: sorted ``--name value`` pairs."""
    args: list[str] = []
    for name in sorted(hyperparameters):
        value = hyperparameters[name]
        if isinstance(value, dict):
            value = ",".join(f"{k}={v}" for k, v in sorted(value.items()))
        args += [f"--{name}" if len(name) > 1 else f"-{name}", str(value)]
    return args


def _truncate(text: str, limit: int = REASON_LIMIT) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def _log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    text = _read_text(log_path)
    return "\n".join(text.splitlines()[-lines:])


class PathMapper:
    """Maps container paths (``/opt/ml/...``) into the job directory."""

    def __init__(self, job_dir: Path):
        self.job_dir = job_dir

    def path(self, container_path: str) -> Path:
        if container_path == OPT_ML or container_path.startswith(OPT_ML + "/"):
            return self.job_dir / container_path[len(OPT_ML):].lstrip("/")
        if os.path.isabs(container_path):  # SageMaker allows other absolute LocalPaths
            return self.job_dir / "fs" / container_path.lstrip("/")
        raise LocalJobError(f"container path must be absolute: {container_path!r}")

    def text(self, value: str) -> str:
        """Every ``/opt/ml`` occurrence in a string (arguments, scripts, env values)."""
        return _OPT_ML_RE.sub(lambda _: str(self.job_dir), value)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))


def fetch(store: ObjectStore, uri: str, dest_dir: Path) -> None:
    """Copy an S3 object into ``dest_dir/<basename>``, or a prefix's objects into ``dest_dir``."""
    src = store.path(uri)
    dest_dir.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest_dir, dirs_exist_ok=True)
    elif src.is_file():
        shutil.copy2(src, dest_dir / src.name)
    else:
        raise LocalJobError(f"input {uri} does not exist in the local object store ({src})")


def make_tar(src_dir: Path, tar_path: Path) -> None:
    """``model.tar.gz`` as SageMaker makes it: the directory's files at the archive root."""
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path, "w:gz") as tar:
        for item in sorted(src_dir.iterdir()):
            tar.add(item, arcname=item.name)


def extract_tar(tar_path: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path, "r:*") as tar:
        tar.extractall(dest, filter="data")


def _python_bin_dir(job_dir: Path) -> Path:
    """``python``/``python3`` on PATH that run this interpreter (with its venv)."""
    bin_dir = job_dir / ".bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3"):
        wrapper = bin_dir / name
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        wrapper.chmod(0o755)
    return bin_dir


def base_env(job_dir: Path, cores: int, settings: Optional[Settings] = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    if settings is not None:  # steps pick the local registry/hosting (steps/deploy_backends.py)
        env["IMGPIPE_BACKEND"] = "local"
        env["IMGPIPE_HOME"] = str(settings.home.resolve())
    env["PATH"] = f"{_python_bin_dir(job_dir)}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env["PYTHONUNBUFFERED"] = "1"
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(cores)
    env["SM_NUM_CPUS"] = str(cores)
    return env


def _fresh_job_dir(settings: Settings, job_name: str) -> Path:
    job_dir = settings.jobs_root / job_name
    if job_dir.exists():
        shutil.rmtree(job_dir)
    job_dir.mkdir(parents=True)
    return job_dir


# --------------------------------------------------------------------------- metrics
class MetricParser:
    """Applies ``MetricDefinitions`` regexes to each log line, as SageMaker does on its logs."""

    def __init__(self, definitions: Iterable[dict]):
        self._regexes = [(d["Name"], re.compile(d["Regex"])) for d in definitions or []]
        self.last: dict[str, tuple[float, str]] = {}
        self.history: dict[str, list[tuple[Optional[int], float]]] = {}

    def feed(self, line: str) -> list[tuple[str, float, Optional[int]]]:
        found = []
        for name, regex in self._regexes:
            match = regex.search(line)
            if not match:
                continue
            try:
                value = float(match.group(1) if match.groups() else match.group(0))
            except ValueError:
                continue
            epoch_match = _EPOCH_RE.search(line)
            epoch = int(epoch_match.group(1)) if epoch_match else None
            self.last[name] = (value, utc_now_iso())
            self.history.setdefault(name, []).append((epoch, value))
            found.append((name, value, epoch))
        return found

    def final_metric_data_list(self) -> list[dict]:
        return [{"MetricName": n, "Value": v, "Timestamp": t} for n, (v, t) in self.last.items()]


# --------------------------------------------------------------------------- outcome
def _status_and_reason(result: ProcessResult, job_dir: Path, log_path: Path, max_runtime: Any) -> tuple[str, Optional[str]]:
    if result.stopped:
        return "Stopped", _truncate(result.stop_reason or "stopped")
    if result.timed_out:
        return "Failed", f"MaxRuntimeExceeded: the job ran longer than MaxRuntimeInSeconds={max_runtime}"
    if result.returncode == 0:
        return "Completed", None
    written = _read_text(job_dir / "output" / "failure") or _read_text(job_dir / "output" / "message")
    reason = written or f"AlgorithmError: exit code {result.returncode}\n{_log_tail(log_path)}"
    return "Failed", _truncate(reason)


def remove_copies(paths: Iterable[Optional[Path]]) -> None:
    """Delete job-directory copies of what the object store already holds (inputs fetched
    for the job, outputs uploaded after it), so job directories stay small."""
    for path in paths:
        if path is not None and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def log_note(log_path: Path, text: str) -> None:
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"[local] {text}\n")


@dataclass
class JobOutcome:
    """How a job went: filled in while it runs, turned into the Describe* dict after."""

    status: str = "Failed"
    reason: Optional[str] = None
    start: Optional[str] = None
    end: Optional[str] = None
    seconds: float = 0.0
    exit_message: Optional[str] = None
    model_uri: Optional[str] = None

    def finish(self, result: ProcessResult, job_dir: Path, log_path: Path, max_runtime: Any) -> None:
        self.end, self.seconds = utc_now_iso(), result.seconds
        self.status, self.reason = _status_and_reason(result, job_dir, log_path, max_runtime)
        self.exit_message = _truncate(_read_text(job_dir / "output" / "message")) or None

    def fail(self, exc: Exception, log_path: Path) -> None:
        """Setup/teardown problems (a missing input, bad code archive) are job failures."""
        self.status, self.reason = "Failed", _truncate(f"{type(exc).__name__}: {exc}")
        self.end = self.end or utc_now_iso()
        log_note(log_path, f"failed: {self.reason}")


def run_job_body(job_dir: Path, log_path: Path, body: Callable[[JobOutcome], None]) -> JobOutcome:
    """Run ``body`` (which fills in the outcome); any exception it raises fails the job. A job that
    did not complete keeps only its log and failure reason (its scratch space is removed)."""
    outcome = JobOutcome()
    try:
        body(outcome)
    except Exception as exc:
        outcome.fail(exc, log_path)
    if outcome.status != "Completed":
        log_note(log_path, f"job {outcome.status.lower()}: scratch space removed (log and failure reason kept)")
        trim_job_dir(job_dir)
    return outcome


def start_job(ctx: JobContext, job_name: str) -> tuple[Path, PathMapper, Path]:
    job_dir = _fresh_job_dir(ctx.settings, job_name)
    log_path = job_dir / "job.log"
    log_path.touch()
    return job_dir, PathMapper(job_dir), log_path
