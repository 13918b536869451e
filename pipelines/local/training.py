"""Local SageMaker Training jobs: CreateTrainingJob request → DescribeTrainingJob dict.

Script mode as SageMaker's training toolkit runs it: the code from
``sagemaker_submit_directory``, hyperparameters JSON-decoded and passed as ``--name value``
arguments and ``SM_HP_*`` variables, channels under ``input/data/<channel>``, the ``SM_*``
environment, checkpoints, the Debugger hook config and the Profiler's system metrics. After
the job, Debugger rules and ProfilerReport are evaluated and the model/output tars uploaded.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlparse

from pipelines.common import utc_now_iso
from pipelines.local.jobs import (
    CURRENT_HOST, OPT_ML, JobContext, JobOutcome, LocalJobError, MetricParser, PathMapper, base_env,
    decode_hyperparameter, extract_tar, fetch, job_arn, log_note, make_tar, remove_copies, run_job_body, start_job,
    to_cmd_args, toolkit_env_value, write_json,
)
from pipelines.local.checkpoints import CheckpointSync
from pipelines.local.object_store import ObjectStore
from pipelines.local.processes import run_process


SAGEMAKER_HP_PREFIX = "sagemaker_"


def _fetch_code(store: ObjectStore, submit_dir: str, code_dir: Path) -> None:
    """``sagemaker_submit_directory``: an S3 (or file://) ``sourcedir.tar.gz`` or directory."""
    parsed = urlparse(submit_dir)
    src = store.path(submit_dir) if parsed.scheme == "s3" else Path(parsed.path if parsed.scheme == "file" else submit_dir)
    if src.is_dir():
        shutil.copytree(src, code_dir, dirs_exist_ok=True)
    elif src.is_file():
        extract_tar(src, code_dir)
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
    env = base_env(job_dir, ctx.cores, ctx.settings)
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
    env.update({f"SM_HP_{k.upper().replace('-', '_')}": toolkit_env_value(v) for k, v in hps.items()})
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
    if (job_dir / "code" / "requirements.txt").is_file():  # SageMaker's toolkit would pip-install it
        log_note(layout.log_path, "requirements.txt found: not installing it locally (offline); using the engine's Python environment")
    input_config = {}
    for channel in request.get("InputDataConfig") or []:
        name = channel["ChannelName"]
        s3 = (channel.get("DataSource") or {}).get("S3DataSource")
        if not s3:
            raise LocalJobError(f"channel {name!r}: only S3DataSource is supported locally")
        log_note(layout.log_path, f"channel {name}: {s3['S3Uri']}")
        fetch(ctx.store, s3["S3Uri"], job_dir / "input" / "data" / name)
        input_config[name] = {"TrainingInputMode": channel.get("InputMode") or (request.get("AlgorithmSpecification") or {}).get("TrainingInputMode", "File"),
                              "S3DistributionType": s3.get("S3DataDistributionType", "FullyReplicated"), "RecordWrapperType": channel.get("RecordWrapperType", "None")}
    config_dir = job_dir / "input" / "config"
    write_json(config_dir / "hyperparameters.json", request.get("HyperParameters") or {})
    write_json(config_dir / "inputdataconfig.json", input_config)
    write_json(config_dir / "resourceconfig.json", {"current_host": CURRENT_HOST, "hosts": [CURRENT_HOST], "network_interface_name": "lo"})
    checkpoint = request.get("CheckpointConfig") or {}
    write_json(config_dir / "checkpointconfig.json", {"LocalPath": str(layout.checkpoint_dir), "S3Uri": checkpoint.get("S3Uri")})
    if checkpoint.get("S3Uri") and ctx.store.exists(checkpoint["S3Uri"]):
        log_note(layout.log_path, f"resuming checkpoints from {checkpoint['S3Uri']}")
        fetch(ctx.store, checkpoint["S3Uri"], layout.checkpoint_dir)
    if request.get("DebugHookConfig"):
        hook = smdebug_hook_config(request["DebugHookConfig"], mapper)
        layout.tensors_dir = Path(hook["LocalPath"])
        layout.tensors_dir.mkdir(parents=True, exist_ok=True)
        write_json(config_dir / "debughookconfig.json", hook)
    profiler = request.get("ProfilerConfig") or {}
    if profiler and not profiler.get("DisableProfiler"):
        from pipelines.local.profiler import smdebug_profiler_config

        layout.profiler_dir = job_dir / "output" / "profiler"
        layout.profiler_dir.mkdir(parents=True, exist_ok=True)
        write_json(config_dir / "profilerconfig.json", smdebug_profiler_config(profiler, layout.profiler_dir))
    if request.get("TensorBoardOutputConfig"):
        layout.tensorboard_dir = mapper.path(request["TensorBoardOutputConfig"].get("LocalPath") or "/opt/ml/output/tensorboard")
        layout.tensorboard_dir.mkdir(parents=True, exist_ok=True)
        write_json(config_dir / "tensorboardoutputconfig.json", {"LocalPath": str(layout.tensorboard_dir)})


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
    make_tar(layout.job_dir / "model", work / "model.tar.gz")
    ctx.store.upload(work / "model.tar.gz", f"{output_prefix}/model.tar.gz")
    if any((layout.job_dir / "output" / "data").iterdir()):
        make_tar(layout.job_dir / "output" / "data", work / "output.tar.gz")
        ctx.store.upload(work / "output.tar.gz", f"{output_prefix}/output.tar.gz")
    shutil.rmtree(work, ignore_errors=True)
    return f"{output_prefix}/model.tar.gz"


def run_training_job(request: dict, job_name: str, ctx: JobContext,
                     on_metric: Optional[Callable[[str, float, Optional[int]], None]] = None) -> dict:
    """CreateTrainingJob request → DescribeTrainingJob-shaped dict (never raises for a job failure).

    ``on_metric(name, value, epoch)`` is called for every metric match while the job runs
    (the tuner's early stopping uses it).
    """
    created = utc_now_iso()
    job_dir, mapper, log_path = start_job(ctx, job_name)
    checkpoint_local = (request.get("CheckpointConfig") or {}).get("LocalPath") or "/opt/ml/checkpoints"
    layout = _TrainingLayout(job_dir, mapper, log_path, mapper.path(checkpoint_local))
    algorithm = request.get("AlgorithmSpecification") or {}
    parser = MetricParser(algorithm.get("MetricDefinitions") or [])
    outcome = run_job_body(job_dir, log_path,
                           lambda outcome: _execute_training(request, job_name, ctx, layout, parser, outcome, on_metric))
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
                      outcome: JobOutcome, on_metric: Optional[Callable[[str, float, Optional[int]], None]]) -> None:
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
    log_note(log_path, "command: " + " ".join(cmd))

    def on_line(line: str) -> None:
        ctx.emit({"type": "log", "job": job_name, "line": line})
        for name, value, epoch in parser.feed(line):
            ctx.emit({"type": "metric", "job": job_name, "name": name, "value": value, "epoch": epoch})
            if on_metric is not None:
                on_metric(name, value, epoch)

    max_runtime = (request.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
    outcome.start = utc_now_iso()
    started = time.time()
    with _system_sampler(request, layout), _checkpoint_sync(request, ctx, layout):
        result = run_process(cmd, cwd=job_dir / "code", env=env, log_path=log_path, on_line=on_line,
                             control=ctx.control, max_runtime=max_runtime)
    outcome.finish(result, job_dir, log_path, max_runtime)
    _evaluate_debugger_and_profiler(request, job_name, ctx, layout, started)
    outcome.model_uri = _upload_training_outputs(request, job_name, ctx, layout, outcome.status)
    if outcome.status == "Completed":  # in the store now (or container scratch); a failed job keeps everything
        remove_copies([job_dir / "input" / "data", job_dir / "model", layout.checkpoint_dir,
                        layout.tensors_dir, layout.tensorboard_dir, layout.profiler_dir])


def _checkpoint_sync(request: dict, ctx: JobContext, layout: _TrainingLayout) -> Any:
    """Checkpoints copied to ``CheckpointConfig.S3Uri`` as the job writes them (a no-op without one)."""
    uri = (request.get("CheckpointConfig") or {}).get("S3Uri")
    if not uri:
        return contextlib.nullcontext()
    return CheckpointSync(layout.checkpoint_dir, ctx.store.path(uri),
                          on_copy=lambda rel: log_note(layout.log_path, f"checkpoint {rel} copied to {uri}"))


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
            log_note(layout.log_path, f"rule {status['RuleConfigurationName']}: {status['RuleEvaluationStatus']}"
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
