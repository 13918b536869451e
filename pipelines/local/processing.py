"""Local SageMaker Processing jobs: CreateProcessingJob request → DescribeProcessingJob dict.

Inputs (``S3Input``) are fetched from the local object store to their ``LocalPath`` in the
job directory, the container entry point runs as a subprocess with ``/opt/ml`` remapped, and
the outputs are uploaded to their ``S3Uri`` when the job completes.
"""
from __future__ import annotations

import sys
from pathlib import Path

from pipelines.common import utc_now_iso
from pipelines.local.jobs import (
    CURRENT_HOST, JobContext, JobOutcome, LocalJobError, PathMapper, base_env, fetch, job_arn, log_note, run_job_body,
    remove_copies, start_job, write_json,
)
from pipelines.local.processes import run_process


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


def run_processing_job(request: dict, job_name: str, ctx: JobContext) -> dict:
    """CreateProcessingJob request → DescribeProcessingJob-shaped dict (never raises for a job failure)."""
    created = utc_now_iso()
    job_dir, mapper, log_path = start_job(ctx, job_name)
    outcome = run_job_body(job_dir, log_path,
                           lambda outcome: _execute_processing(request, job_name, ctx, mapper, log_path, outcome))
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
                        log_path: Path, outcome: JobOutcome) -> None:
    job_dir = mapper.job_dir
    for sub in ("output", "config", "processing"):
        (job_dir / sub).mkdir(parents=True, exist_ok=True)
    write_json(job_dir / "config" / "processingjobconfig.json", {**request, "ProcessingJobName": job_name})
    write_json(job_dir / "config" / "resourceconfig.json", {"current_host": CURRENT_HOST, "hosts": [CURRENT_HOST]})
    inputs = request.get("ProcessingInputs") or []
    for item in inputs:
        s3 = item.get("S3Input")
        if not s3:
            raise LocalJobError(f"processing input {item.get('InputName')!r}: only S3Input is supported locally")
        log_note(log_path, f"input {item.get('InputName')}: {s3['S3Uri']} -> {s3['LocalPath']}")
        fetch(ctx.store, s3["S3Uri"], mapper.path(s3["LocalPath"]))
    outputs = [o for o in (request.get("ProcessingOutputConfig") or {}).get("Outputs") or [] if o.get("S3Output")]
    for item in outputs:
        mapper.path(item["S3Output"]["LocalPath"]).mkdir(parents=True, exist_ok=True)
    cmd = _processing_command(request.get("AppSpecification") or {}, mapper)
    env = base_env(job_dir, ctx.cores, ctx.settings)
    env.update({k: mapper.text(str(v)) for k, v in (request.get("Environment") or {}).items()})
    env["SM_OUTPUT_FAILURE"] = str(job_dir / "output" / "failure")
    log_note(log_path, "command: " + " ".join(cmd))
    max_runtime = (request.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
    outcome.start = utc_now_iso()
    result = run_process(cmd, cwd=job_dir, env=env, log_path=log_path,
                         on_line=lambda line: ctx.emit({"type": "log", "job": job_name, "line": line}),
                         control=ctx.control, max_runtime=max_runtime)
    outcome.finish(result, job_dir, log_path, max_runtime)
    if outcome.status != "Completed":
        return
    for item in outputs:
        ctx.store.upload(mapper.path(item["S3Output"]["LocalPath"]), item["S3Output"]["S3Uri"])
    remove_copies(mapper.path(i["S3Input"]["LocalPath"]) for i in inputs if i.get("InputName") not in ("code", "entrypoint"))
    remove_copies(mapper.path(o["S3Output"]["LocalPath"]) for o in outputs)
