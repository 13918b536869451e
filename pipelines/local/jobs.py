"""Local SageMaker Processing and Training jobs: real subprocesses, no Docker.

Each job gets a directory ``<jobs_root>/<job_name>/`` that stands in for ``/opt/ml``
(the SageMaker container contract of DESIGN.md). Every ``/opt/ml`` path the job is given
(entry point, arguments, ``LocalPath`` values, environment) is remapped into it. Inputs
are copied from the local object store before the job and outputs uploaded after it, in
SageMaker's layout. A job failure never raises: the Describe*-shaped result says
``Failed`` with a ``FailureReason`` (the job's failure file, else the tail of its log).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Optional
from urllib.parse import urlparse

from pipelines.local.object_store import ObjectStore
from pipelines.settings import Settings

EventCallback = Callable[[dict], None]
ACCOUNT_ID = "000000000000"
OPT_ML = "/opt/ml"
CURRENT_HOST = "algo-1"
REASON_LIMIT = 1024  # SageMaker truncates FailureReason / ExitMessage to 1 KB
LOG_TAIL_LINES = 20
KILL_GRACE_SECONDS = 5.0
POLL_SECONDS = 0.1
_OPT_ML_RE = re.compile(r"(?<![\w./-])/opt/ml(?=/|$|[^\w.-])")
_EPOCH_RE = re.compile(r"\bepoch[=: ]\s*(\d+)", re.IGNORECASE)


class LocalJobError(RuntimeError):
    """A job request that cannot run locally; becomes the job's FailureReason."""


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
def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


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


def _toolkit_env_value(value: Any) -> str:
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


def _write_json(path: Path, data: Any) -> None:
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


def _make_tar(src_dir: Path, tar_path: Path) -> None:
    """``model.tar.gz`` as SageMaker makes it: the directory's files at the archive root."""
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path, "w:gz") as tar:
        for item in sorted(src_dir.iterdir()):
            tar.add(item, arcname=item.name)


def _extract_tar(tar_path: Path, dest: Path) -> None:
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


def _base_env(job_dir: Path, cores: int, settings: Optional[Settings] = None) -> dict[str, str]:
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
            self.last[name] = (value, now_iso())
            self.history.setdefault(name, []).append((epoch, value))
            found.append((name, value, epoch))
        return found

    def final_metric_data_list(self) -> list[dict]:
        return [{"MetricName": n, "Value": v, "Timestamp": t} for n, (v, t) in self.last.items()]


# --------------------------------------------------------------------------- processes
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


def _remove_copies(paths: Iterable[Optional[Path]]) -> None:
    """Delete job-directory copies of what the object store already holds (inputs fetched
    for the job, outputs uploaded after it), so job directories stay small."""
    for path in paths:
        if path is not None and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def _log_note(log_path: Path, text: str) -> None:
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"[local] {text}\n")


# --------------------------------------------------------------------------- processing
def _processing_command(app: dict, mapper: PathMapper) -> list[str]:
    entrypoint = list(app.get("ContainerEntrypoint") or [])
    if not entrypoint:
        raise LocalJobError(
            f"image {app.get('ImageUri')!r} without ContainerEntrypoint: running a container's "
            "built-in entry point is not supported locally"
        )
    cmd = [mapper.text(str(part)) for part in entrypoint]
    if cmd[0] in ("python", "python3"):
        cmd[0] = sys.executable
    for part in cmd[1:]:  # shell scripts (the SDK's runproc.sh) get their /opt/ml paths remapped
        script = Path(part)
        if script.suffix == ".sh" and script.is_file():
            script.write_text(_localize_runproc(mapper.text(script.read_text())))
    return cmd + [mapper.text(str(a)) for a in app.get("ContainerArguments") or []]


def _localize_runproc(text: str) -> str:
    """The SDK's runproc.sh, minus package installation (offline: the engine's env is used)."""
    text = text.replace(
        "pip uninstall --yes typing", 'echo "[local] skipping: pip uninstall --yes typing"'
    )
    return text.replace(
        "python -m pip install -r requirements.txt",
        'echo "[local] requirements.txt found: not installing it locally (offline); using the engine\'s Python environment"',
    )


@dataclass
class _Outcome:
    """How a job went: filled in while it runs, turned into the Describe* dict after."""

    status: str = "Failed"
    reason: Optional[str] = None
    start: Optional[str] = None
    end: Optional[str] = None
    seconds: float = 0.0
    exit_message: Optional[str] = None
    model_uri: Optional[str] = None

    def finish(self, result: ProcessResult, job_dir: Path, log_path: Path, max_runtime: Any) -> None:
        self.end, self.seconds = now_iso(), result.seconds
        self.status, self.reason = _status_and_reason(result, job_dir, log_path, max_runtime)
        self.exit_message = _truncate(_read_text(job_dir / "output" / "message")) or None

    def fail(self, exc: Exception, log_path: Path) -> None:
        """Setup/teardown problems (a missing input, bad code archive) are job failures."""
        self.status, self.reason = "Failed", _truncate(f"{type(exc).__name__}: {exc}")
        self.end = self.end or now_iso()
        _log_note(log_path, f"failed: {self.reason}")


def _start_job(ctx: JobContext, job_name: str) -> tuple[Path, PathMapper, Path]:
    job_dir = _fresh_job_dir(ctx.settings, job_name)
    log_path = job_dir / "job.log"
    log_path.touch()
    return job_dir, PathMapper(job_dir), log_path


def run_processing_job(request: dict, job_name: str, ctx: JobContext) -> dict:
    """CreateProcessingJob request → DescribeProcessingJob-shaped dict (never raises for a job failure)."""
    created = now_iso()
    job_dir, mapper, log_path = _start_job(ctx, job_name)
    outcome = _Outcome()
    try:
        _execute_processing(request, job_name, ctx, mapper, log_path, outcome)
    except Exception as exc:
        outcome.fail(exc, log_path)
    describe = {
        "ProcessingJobName": job_name,
        "ProcessingJobArn": job_arn(ctx.settings, "processing-job", job_name),
        "ProcessingJobStatus": outcome.status,
        "ExitMessage": outcome.exit_message,
        "FailureReason": outcome.reason,
        "ProcessingInputs": request.get("ProcessingInputs") or [],
        "ProcessingOutputConfig": request.get("ProcessingOutputConfig") or {"Outputs": []},
        **{k: request.get(k) for k in ("ProcessingResources", "StoppingCondition", "AppSpecification",
                                       "NetworkConfig", "RoleArn", "ExperimentConfig")},
        "Environment": request.get("Environment") or {},
        "CreationTime": created,
        "ProcessingStartTime": outcome.start,
        "ProcessingEndTime": outcome.end,
        "LastModifiedTime": outcome.end,
        "LogPath": str(log_path),
        "LocalJobDir": str(job_dir),
    }
    return {k: v for k, v in describe.items() if v is not None}


def _execute_processing(request: dict, job_name: str, ctx: JobContext, mapper: PathMapper,
                        log_path: Path, outcome: _Outcome) -> None:
    job_dir = mapper.job_dir
    for sub in ("output", "config", "processing"):
        (job_dir / sub).mkdir(parents=True, exist_ok=True)
    _write_json(job_dir / "config" / "processingjobconfig.json", {**request, "ProcessingJobName": job_name})
    _write_json(job_dir / "config" / "resourceconfig.json", {"current_host": CURRENT_HOST, "hosts": [CURRENT_HOST]})
    inputs = request.get("ProcessingInputs") or []
    for item in inputs:
        s3 = item.get("S3Input")
        if not s3:
            raise LocalJobError(f"processing input {item.get('InputName')!r}: only S3Input is supported locally")
        _log_note(log_path, f"input {item.get('InputName')}: {s3['S3Uri']} -> {s3['LocalPath']}")
        fetch(ctx.store, s3["S3Uri"], mapper.path(s3["LocalPath"]))
    outputs = [o for o in (request.get("ProcessingOutputConfig") or {}).get("Outputs") or [] if o.get("S3Output")]
    for item in outputs:
        mapper.path(item["S3Output"]["LocalPath"]).mkdir(parents=True, exist_ok=True)
    cmd = _processing_command(request.get("AppSpecification") or {}, mapper)
    env = _base_env(job_dir, ctx.cores, ctx.settings)
    env.update({k: mapper.text(str(v)) for k, v in (request.get("Environment") or {}).items()})
    env["SM_OUTPUT_FAILURE"] = str(job_dir / "output" / "failure")
    _log_note(log_path, "command: " + " ".join(cmd))
    max_runtime = (request.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
    outcome.start = now_iso()
    result = run_process(cmd, cwd=job_dir, env=env, log_path=log_path,
                         on_line=lambda line: ctx.emit({"type": "log", "job": job_name, "line": line}),
                         control=ctx.control, max_runtime=max_runtime)
    outcome.finish(result, job_dir, log_path, max_runtime)
    if outcome.status != "Completed":
        return
    for item in outputs:
        ctx.store.upload(mapper.path(item["S3Output"]["LocalPath"]), item["S3Output"]["S3Uri"])
    _remove_copies(mapper.path(i["S3Input"]["LocalPath"]) for i in inputs if i.get("InputName") not in ("code", "entrypoint"))
    _remove_copies(mapper.path(o["S3Output"]["LocalPath"]) for o in outputs)


# --------------------------------------------------------------------------- training
SAGEMAKER_HP_PREFIX = "sagemaker_"


def _fetch_code(store: ObjectStore, submit_dir: str, code_dir: Path) -> None:
    """``sagemaker_submit_directory``: an S3 (or file://) ``sourcedir.tar.gz`` or directory."""
    parsed = urlparse(submit_dir)
    src = store.path(submit_dir) if parsed.scheme == "s3" else Path(parsed.path if parsed.scheme == "file" else submit_dir)
    if src.is_dir():
        shutil.copytree(src, code_dir, dirs_exist_ok=True)
    elif src.is_file():
        _extract_tar(src, code_dir)
    else:
        raise LocalJobError(f"sagemaker_submit_directory {submit_dir} does not exist locally ({src})")


def _localize_code(code_dir: Path, mapper: PathMapper) -> None:
    """Remap ``/opt/ml`` in the job's copy of its scripts: the SDK's own container scripts
    (e.g. the RegisterModel repack step's ``_repack_model.py``) hard-code those paths."""
    for script in code_dir.rglob("*"):
        if script.suffix in (".py", ".sh") and script.is_file():
            text = script.read_text(encoding="utf-8", errors="surrogateescape")
            if OPT_ML in text:
                script.write_text(mapper.text(text), encoding="utf-8", errors="surrogateescape")


def _program_command(program: str) -> list[str]:
    """How the training toolkit runs ``sagemaker_program``: shell scripts with a shell,
    everything else with Python (here: the engine's own interpreter)."""
    if program.endswith(".sh"):
        return ["/bin/bash", program]
    return [sys.executable, program]


def smdebug_hook_config(debug_hook: dict, mapper: PathMapper) -> dict:
    """The JSON SageMaker writes to /opt/ml/input/config/debughookconfig.json for smdebug."""
    config: dict[str, Any] = {"LocalPath": str(mapper.path(debug_hook.get("LocalPath") or "/opt/ml/output/tensors"))}
    if debug_hook.get("HookParameters"):
        config["HookParameters"] = dict(debug_hook["HookParameters"])
    collections = debug_hook.get("CollectionConfigurations") or []
    if collections:
        config["CollectionConfigurations"] = [
            {"CollectionName": c["CollectionName"], "CollectionParameters": dict(c.get("CollectionParameters") or {})}
            for c in collections
        ]
    return config


def _training_env(
    job_name: str, request: dict, hps: dict, sm_hps: dict, channels: list[str], job_dir: Path, ctx: JobContext
) -> dict[str, str]:
    mapper = PathMapper(job_dir)
    env = _base_env(job_dir, ctx.cores, ctx.settings)
    env.update({k: mapper.text(str(v)) for k, v in (request.get("Environment") or {}).items()})
    code_dir = job_dir / "code"
    paths = {
        "model_dir": job_dir / "model", "output_data_dir": job_dir / "output" / "data",
        "output_dir": job_dir / "output", "input_dir": job_dir / "input",
        "input_config_dir": job_dir / "input" / "config", "output_intermediate_dir": job_dir / "output" / "intermediate",
    }
    channel_dirs = {c: str(job_dir / "input" / "data" / c) for c in channels}
    training_env = {
        "job_name": job_name, "current_host": CURRENT_HOST, "hosts": [CURRENT_HOST],
        "hyperparameters": hps, "channel_input_dirs": channel_dirs,
        "num_cpus": ctx.cores, "num_gpus": ctx.gpus(), "user_entry_point": sm_hps.get("sagemaker_program"),
        "module_dir": sm_hps.get("sagemaker_submit_directory"), "module_name": Path(str(sm_hps.get("sagemaker_program"))).stem,
        "log_level": sm_hps.get("sagemaker_container_log_level", 20), "is_master": True, "master_hostname": CURRENT_HOST,
        "resource_config": {"current_host": CURRENT_HOST, "hosts": [CURRENT_HOST]},
        **{k: str(v) for k, v in paths.items()},
    }
    env.update({f"SM_{k.upper()}": str(v) for k, v in paths.items()})
    env.update({
        "SM_HPS": json.dumps(hps), "SM_CHANNELS": json.dumps(sorted(channels)),
        "SM_CURRENT_HOST": CURRENT_HOST, "SM_HOSTS": json.dumps([CURRENT_HOST]),
        "SM_NUM_GPUS": str(ctx.gpus()), "SM_TRAINING_ENV": json.dumps(training_env),
        "SM_USER_ENTRY_POINT": str(sm_hps.get("sagemaker_program")), "SM_MODULE_DIR": str(sm_hps.get("sagemaker_submit_directory")),
        "SM_CHECKPOINT_DIR": str(mapper.path(((request.get("CheckpointConfig") or {}).get("LocalPath")) or "/opt/ml/checkpoints")),
        "SM_OUTPUT_FAILURE": str(job_dir / "output" / "failure"),
        "TRAINING_JOB_NAME": job_name, "TRAINING_JOB_ARN": job_arn(ctx.settings, "training-job", job_name),
        "SMDEBUG_CONFIG_FILE_PATH": str(job_dir / "input" / "config" / "debughookconfig.json"),
        "TENSORBOARD_CONFIG_FILE_PATH": str(job_dir / "input" / "config" / "tensorboardoutputconfig.json"),
        "SMPROFILER_CONFIG_PATH": str(job_dir / "input" / "config" / "profilerconfig.json"),
        "CHECKPOINT_CONFIG_FILE_PATH": str(job_dir / "input" / "config" / "checkpointconfig.json"),
        "PYTHONPATH": os.pathsep.join(p for p in (str(code_dir), env.get("PYTHONPATH", "")) if p),
    })
    env.update({f"SM_CHANNEL_{c.upper()}": d for c, d in channel_dirs.items()})
    env.update({f"SM_HP_{k.upper().replace('-', '_')}": _toolkit_env_value(v) for k, v in hps.items()})
    return env


@dataclass
class _TrainingLayout:
    job_dir: Path
    mapper: PathMapper
    log_path: Path
    checkpoint_dir: Path
    tensors_dir: Optional[Path] = None
    tensorboard_dir: Optional[Path] = None
    profiler_dir: Optional[Path] = None
    # Debugger / Profiler verdicts, as DescribeTrainingJob reports them
    rule_statuses: Optional[list] = None
    profiler_statuses: Optional[list] = None
    profiler_findings: Optional[list] = None


def _prepare_training(request: dict, job_name: str, ctx: JobContext, layout: _TrainingLayout,
                      sm_hps: dict, channels: list[str]) -> None:
    job_dir, mapper = layout.job_dir, layout.mapper
    for sub in ("input/config", "model", "output/data", "output/intermediate", "code"):
        (job_dir / sub).mkdir(parents=True, exist_ok=True)
    layout.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    _fetch_code(ctx.store, str(sm_hps["sagemaker_submit_directory"]), job_dir / "code")
    input_config = {}
    for channel in request.get("InputDataConfig") or []:
        name = channel["ChannelName"]
        s3 = (channel.get("DataSource") or {}).get("S3DataSource")
        if not s3:
            raise LocalJobError(f"channel {name!r}: only S3DataSource is supported locally")
        _log_note(layout.log_path, f"channel {name}: {s3['S3Uri']}")
        fetch(ctx.store, s3["S3Uri"], job_dir / "input" / "data" / name)
        input_config[name] = {"TrainingInputMode": channel.get("InputMode") or (request.get("AlgorithmSpecification") or {}).get("TrainingInputMode", "File"),
                              "S3DistributionType": s3.get("S3DataDistributionType", "FullyReplicated"), "RecordWrapperType": channel.get("RecordWrapperType", "None")}
    config_dir = job_dir / "input" / "config"
    _write_json(config_dir / "hyperparameters.json", request.get("HyperParameters") or {})
    _write_json(config_dir / "inputdataconfig.json", input_config)
    _write_json(config_dir / "resourceconfig.json", {"current_host": CURRENT_HOST, "hosts": [CURRENT_HOST], "network_interface_name": "lo"})
    checkpoint = request.get("CheckpointConfig") or {}
    _write_json(config_dir / "checkpointconfig.json", {"LocalPath": str(layout.checkpoint_dir), "S3Uri": checkpoint.get("S3Uri")})
    if checkpoint.get("S3Uri") and ctx.store.exists(checkpoint["S3Uri"]):
        _log_note(layout.log_path, f"resuming checkpoints from {checkpoint['S3Uri']}")
        fetch(ctx.store, checkpoint["S3Uri"], layout.checkpoint_dir)
    if request.get("DebugHookConfig"):
        hook = smdebug_hook_config(request["DebugHookConfig"], mapper)
        layout.tensors_dir = Path(hook["LocalPath"])
        layout.tensors_dir.mkdir(parents=True, exist_ok=True)
        _write_json(config_dir / "debughookconfig.json", hook)
    profiler = request.get("ProfilerConfig") or {}
    if profiler and not profiler.get("DisableProfiler"):
        from pipelines.local.profiler import smdebug_profiler_config

        layout.profiler_dir = job_dir / "output" / "profiler"
        layout.profiler_dir.mkdir(parents=True, exist_ok=True)
        _write_json(config_dir / "profilerconfig.json", smdebug_profiler_config(profiler, layout.profiler_dir))
    if request.get("TensorBoardOutputConfig"):
        layout.tensorboard_dir = mapper.path(request["TensorBoardOutputConfig"].get("LocalPath") or "/opt/ml/output/tensorboard")
        layout.tensorboard_dir.mkdir(parents=True, exist_ok=True)
        _write_json(config_dir / "tensorboardoutputconfig.json", {"LocalPath": str(layout.tensorboard_dir)})


def _upload_training_outputs(request: dict, job_name: str, ctx: JobContext, layout: _TrainingLayout, status: str) -> Optional[str]:
    """Checkpoints, Debugger tensors, TensorBoard, and (if the job produced them) model/output tars."""
    checkpoint_uri = (request.get("CheckpointConfig") or {}).get("S3Uri")
    if checkpoint_uri:
        ctx.store.upload(layout.checkpoint_dir, checkpoint_uri)
    hook = request.get("DebugHookConfig") or {}
    if layout.tensors_dir is not None and hook.get("S3OutputPath"):
        (layout.tensors_dir / "training_job_end.ts").touch()  # smdebug trials wait for it
        ctx.store.upload(layout.tensors_dir, f"{hook['S3OutputPath'].rstrip('/')}/{job_name}/debug-output")
    profiler = request.get("ProfilerConfig") or {}
    if layout.profiler_dir is not None and profiler.get("S3OutputPath"):
        ctx.store.upload(layout.profiler_dir, f"{profiler['S3OutputPath'].rstrip('/')}/{job_name}/profiler-output")
    tensorboard = request.get("TensorBoardOutputConfig") or {}
    if layout.tensorboard_dir is not None and tensorboard.get("S3OutputPath"):
        ctx.store.upload(layout.tensorboard_dir, f"{tensorboard['S3OutputPath'].rstrip('/')}/{job_name}/tensorboard-output")
    if status not in ("Completed", "Stopped"):
        return None
    output_prefix = f"{request['OutputDataConfig']['S3OutputPath'].rstrip('/')}/{job_name}/output"
    work = layout.job_dir / "upload"
    _make_tar(layout.job_dir / "model", work / "model.tar.gz")
    ctx.store.upload(work / "model.tar.gz", f"{output_prefix}/model.tar.gz")
    if any((layout.job_dir / "output" / "data").iterdir()):
        _make_tar(layout.job_dir / "output" / "data", work / "output.tar.gz")
        ctx.store.upload(work / "output.tar.gz", f"{output_prefix}/output.tar.gz")
    shutil.rmtree(work, ignore_errors=True)
    return f"{output_prefix}/model.tar.gz"


def run_training_job(request: dict, job_name: str, ctx: JobContext,
                     on_metric: Optional[Callable[[str, float, Optional[int]], None]] = None) -> dict:
    """CreateTrainingJob request → DescribeTrainingJob-shaped dict (never raises for a job failure).

    ``on_metric(name, value, epoch)`` is called for every metric match while the job runs
    (the tuner's early stopping uses it).
    """
    created = now_iso()
    job_dir, mapper, log_path = _start_job(ctx, job_name)
    checkpoint_local = (request.get("CheckpointConfig") or {}).get("LocalPath") or "/opt/ml/checkpoints"
    layout = _TrainingLayout(job_dir, mapper, log_path, mapper.path(checkpoint_local))
    algorithm = request.get("AlgorithmSpecification") or {}
    parser = MetricParser(algorithm.get("MetricDefinitions") or [])
    outcome = _Outcome()
    try:
        _execute_training(request, job_name, ctx, layout, parser, outcome, on_metric)
    except Exception as exc:
        outcome.fail(exc, log_path)
    describe = {
        "TrainingJobName": job_name,
        "TrainingJobArn": job_arn(ctx.settings, "training-job", job_name),
        "TuningJobArn": request.get("TuningJobArn"),
        "TrainingJobStatus": outcome.status,
        "SecondaryStatus": {"Completed": "Completed", "Stopped": "Stopped"}.get(outcome.status, "Failed"),
        "FailureReason": outcome.reason,
        "HyperParameters": request.get("HyperParameters") or {},
        "AlgorithmSpecification": algorithm,
        "InputDataConfig": request.get("InputDataConfig") or [],
        **{k: request.get(k) for k in (
            "RoleArn", "OutputDataConfig", "ResourceConfig", "StoppingCondition", "CheckpointConfig",
            "DebugHookConfig", "DebugRuleConfigurations", "ProfilerConfig", "TensorBoardOutputConfig",
            "Environment", "ExperimentConfig")},
        "ModelArtifacts": {"S3ModelArtifacts": outcome.model_uri} if outcome.model_uri else None,
        "FinalMetricDataList": parser.final_metric_data_list(),
        "CreationTime": created,
        "TrainingStartTime": outcome.start,
        "TrainingEndTime": outcome.end,
        "LastModifiedTime": outcome.end,
        "TrainingTimeInSeconds": int(round(outcome.seconds)),
        "BillableTimeInSeconds": int(round(outcome.seconds)),
        "LogPath": str(log_path),
        "LocalJobDir": str(job_dir),
        "MetricHistory": {k: [{"Epoch": e, "Value": v} for e, v in h] for k, h in parser.history.items()},
        "DebugRuleEvaluationStatuses": layout.rule_statuses,
        "ProfilerRuleEvaluationStatuses": layout.profiler_statuses,
        "ProfilingStatus": ("Enabled" if layout.profiler_dir is not None else "Disabled") if request.get("ProfilerConfig") else None,
        "ProfilerFindings": layout.profiler_findings,
    }
    return {k: v for k, v in describe.items() if v is not None}


def _execute_training(request: dict, job_name: str, ctx: JobContext, layout: _TrainingLayout, parser: MetricParser,
                      outcome: _Outcome, on_metric: Optional[Callable[[str, float, Optional[int]], None]]) -> None:
    job_dir, log_path = layout.job_dir, layout.log_path
    algorithm = request.get("AlgorithmSpecification") or {}
    decoded = {k: decode_hyperparameter(v) for k, v in (request.get("HyperParameters") or {}).items()}
    sm_hps = {k: v for k, v in decoded.items() if k.startswith(SAGEMAKER_HP_PREFIX)}
    hps = {k: v for k, v in decoded.items() if not k.startswith(SAGEMAKER_HP_PREFIX)}
    if not sm_hps.get("sagemaker_program") or not sm_hps.get("sagemaker_submit_directory"):
        raise LocalJobError(
            f"training image {algorithm.get('TrainingImage') or algorithm.get('AlgorithmName')!r} without "
            "sagemaker_program/sagemaker_submit_directory hyperparameters (a built-in algorithm or a custom "
            "container entry point) is not supported locally: only script-mode framework estimators run"
        )
    channels = [c["ChannelName"] for c in request.get("InputDataConfig") or []]
    _prepare_training(request, job_name, ctx, layout, sm_hps, channels)
    program = str(sm_hps["sagemaker_program"])
    if not (job_dir / "code" / program).is_file():
        raise LocalJobError(f"entry point {program!r} is not in {sm_hps['sagemaker_submit_directory']}")
    _localize_code(job_dir / "code", layout.mapper)
    env = _training_env(job_name, request, hps, sm_hps, channels, job_dir, ctx)
    cmd = [*_program_command(program), *to_cmd_args(hps)]
    _log_note(log_path, "command: " + " ".join(cmd))

    def on_line(line: str) -> None:
        ctx.emit({"type": "log", "job": job_name, "line": line})
        for name, value, epoch in parser.feed(line):
            ctx.emit({"type": "metric", "job": job_name, "name": name, "value": value, "epoch": epoch})
            if on_metric is not None:
                on_metric(name, value, epoch)

    max_runtime = (request.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
    outcome.start = now_iso()
    started = time.time()
    with _system_sampler(request, layout):
        result = run_process(cmd, cwd=job_dir / "code", env=env, log_path=log_path, on_line=on_line,
                             control=ctx.control, max_runtime=max_runtime)
    outcome.finish(result, job_dir, log_path, max_runtime)
    _evaluate_debugger_and_profiler(request, job_name, ctx, layout, started)
    outcome.model_uri = _upload_training_outputs(request, job_name, ctx, layout, outcome.status)
    if outcome.status == "Completed":  # in the store now (or container scratch); a failed job keeps everything
        _remove_copies([job_dir / "input" / "data", job_dir / "model", layout.checkpoint_dir,
                        layout.tensors_dir, layout.tensorboard_dir, layout.profiler_dir])


def _system_sampler(request: dict, layout: _TrainingLayout) -> Any:
    """The Profiler's system-metrics sampler for the job's run (a no-op without profiling)."""
    if layout.profiler_dir is None:
        return contextlib.nullcontext()
    from pipelines.local.profiler import SystemSampler

    interval_ms = int((request.get("ProfilerConfig") or {}).get("ProfilingIntervalInMilliseconds") or 500)
    return SystemSampler(layout.profiler_dir, interval_ms / 1000.0)


def _evaluate_debugger_and_profiler(request: dict, job_name: str, ctx: JobContext, layout: _TrainingLayout,
                                    started: float) -> None:
    """Debugger rules over the job's tensors and ProfilerReport findings over its profiler
    output, as SageMaker's rule jobs would report them (statuses on the layout)."""
    rules = request.get("DebugRuleConfigurations") or []
    if rules:
        from pipelines.local.debugger import evaluate_rules

        def arn_for(rule: str) -> str:
            return job_arn(ctx.settings, "processing-job", f"{job_name[:40]}-{rule[:15]}")

        tensors = layout.tensors_dir or layout.mapper.path("/opt/ml/output/tensors")
        layout.rule_statuses = evaluate_rules(rules, tensors, arn_for)
        for status in layout.rule_statuses:
            _log_note(layout.log_path, f"rule {status['RuleConfigurationName']}: {status['RuleEvaluationStatus']}"
                                       f" - {status.get('StatusDetails', '')}")
    profiler_rules = request.get("ProfilerRuleConfigurations") or []
    if layout.profiler_dir is not None:
        from pipelines.local.profiler import profiler_report_status

        names = [str(r.get("RuleConfigurationName")) for r in profiler_rules] or ["ProfilerReport"]
        status, findings = profiler_report_status(layout.profiler_dir, started, names[0])
        layout.profiler_statuses = [status] + [
            {**status, "RuleConfigurationName": n, "RuleEvaluationStatus": "Error",
             "StatusDetails": f"profiler rule {n!r} has no local implementation (local: ProfilerReport)"}
            for n in names[1:]]
        layout.profiler_findings = findings
    elif profiler_rules:
        layout.profiler_statuses = [{"RuleConfigurationName": r.get("RuleConfigurationName"), "RuleEvaluationStatus": "Error",
                                     "StatusDetails": "the profiler is disabled for this job: no system metrics"}
                                    for r in profiler_rules]
