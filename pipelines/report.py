"""``imgpipe report EXECUTION``: one self-contained HTML report of a pipeline execution.

Sections (each a ``<section id=...>``): ``summary`` (run and steps), ``tuning`` (trials and
objective by trial), ``training`` (train/valid loss and accuracy by epoch), ``debugger`` (rule
verdicts with the tensors behind them: loss curve, gradient norms), ``system`` (Profiler
utilisation timelines and findings), ``evaluation`` (test confusion matrix, per-class
accuracy), ``model`` (registered package and approval status). CSS is inline and every plot
is a ``data:`` URI (matplotlib, Agg): the file fetches nothing.

Backends gather the same :class:`ReportData`:

- ``local``: the local engine's records and object store;
- ``aws``: ``list_pipeline_execution_steps``, ``describe_training_job`` (rule statuses),
  the tuning job's trials, the Debugger and Profiler output downloaded from S3 (read with
  smdebug's ``create_trial``), ``evaluation.json`` and the model package.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import sys
import tarfile
import tempfile
import time
import webbrowser
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

SECTIONS = ("summary", "tuning", "training", "debugger", "system", "evaluation", "model")


@dataclass
class ReportData:
    """Everything the report shows, whichever backend gathered it."""

    execution: dict
    steps: list[dict] = field(default_factory=list)
    trials: list[dict] = field(default_factory=list)
    objective: Optional[str] = None
    history: list[dict] = field(default_factory=list)
    training_job: Optional[str] = None
    rules: list[dict] = field(default_factory=list)
    profiler_rules: list[dict] = field(default_factory=list)
    profiler_findings: list[dict] = field(default_factory=list)
    losses: dict = field(default_factory=dict)  # tensor -> mode -> [(step, value)]
    gradients: list[tuple[int, float, float]] = field(default_factory=list)  # (step, L2 norm, min mean |g|)
    system_events: list[dict] = field(default_factory=list)
    evaluation: Optional[dict] = None
    confusion_png: Optional[bytes] = None
    model: Optional[dict] = None
    notes: list[str] = field(default_factory=list)


# -- shared readers ---------------------------------------------------------------------
def read_history(output_tar: Path) -> list[dict]:
    """``history.json`` (per-epoch metrics train.py writes) from a job's ``output.tar.gz``."""
    with tarfile.open(output_tar) as tar:
        member = next((m for m in tar.getmembers() if Path(m.name).name == "history.json"), None)
        if member is None:
            raise FileNotFoundError(f"{output_tar} holds no history.json")
        return json.loads(tar.extractfile(member).read())


def read_tensors(data: ReportData, debug_dir: Path) -> None:
    """Loss series and per-step gradient norms from the Debugger output in ``debug_dir``."""
    import numpy as np

    from pipelines.local.debugger import loss_series, open_trial, select_tensors

    trial = open_trial(debug_dir)
    for name in select_tensors(trial, ["losses"], []):
        data.losses[name] = loss_series(trial, name)
    gradients = select_tensors(trial, ["gradients"], [])
    steps = sorted({s for g in gradients for s in trial.tensor(g).steps()})
    for step in steps:
        squares, smallest = 0.0, float("inf")
        for name in gradients:
            tensor = trial.tensor(name)
            if step in tensor.steps():
                value = np.abs(np.asarray(tensor.value(step), dtype=np.float64))
                squares += float(np.sum(value * value))
                smallest = min(smallest, float(value.mean()))
        data.gradients.append((int(step), squares ** 0.5, smallest))


def read_profiler(data: ReportData, profiler_dir: Path) -> None:
    from pipelines.local.profiler import read_system_events

    data.system_events = read_system_events(profiler_dir)


def _trial_rows(summaries: list[dict]) -> list[dict]:
    rows = []
    for s in summaries:
        objective = (s.get("FinalHyperParameterTuningJobObjectiveMetric") or {}).get("Value")
        rows.append({"name": s.get("TrainingJobName"), "status": s.get("TrainingJobStatus"), "objective": objective,
                     "hyperparameters": {k: str(v).strip('"') for k, v in (s.get("TunedHyperParameters") or {}).items()},
                     "start": str(s.get("TrainingStartTime") or s.get("CreationTime") or "")})
    return sorted(rows, key=lambda r: (r["start"], r["name"] or ""))


def _gather(data: ReportData, what: str, fn: Any, *args: Any) -> None:
    """Run one reader; a missing piece becomes a note in the report, not a crash."""
    try:
        fn(*args)
    except Exception as exc:  # the report shows what it could not read, and why
        data.notes.append(f"{what}: {type(exc).__name__}: {exc}")


# -- local backend ------------------------------------------------------------------
def collect_local(execution: str, settings: Any) -> ReportData:
    """ReportData of a local execution (id, unique prefix or ARN)."""
    from pipelines.local.object_store import ObjectStore
    from pipelines.local.records import Records

    record = Records(settings.db_path).get_execution(execution)
    if record is None:
        raise LookupError(f"no local execution {execution!r} (see `imgpipe executions list`)")
    store = ObjectStore(settings.s3_root)
    data = ReportData(execution={"id": record.id, "arn": record.arn, "pipeline": record.pipeline_name,
                                 "status": record.status, "start": record.start_time, "end": record.end_time,
                                 "failure": record.failure_reason, "parameters": record.parameters})
    data.steps = [{"name": s.name, "type": s.type, "status": s.display_status, "duration": s.duration,
                   "job": s.job_name} for s in record.steps]
    for step in record.steps:
        props = step.properties or {}
        if step.type == "Tuning" and props.get("TrainingJobSummaries"):
            data.trials = _trial_rows(props["TrainingJobSummaries"])
            objective = (props.get("HyperParameterTuningJobConfig") or {}).get("HyperParameterTuningJobObjective") or {}
            data.objective = objective.get("MetricName")
        elif step.type == "Training" and props.get("DebugHookConfig") and data.training_job is None:
            _local_training(data, props, store)
        elif step.type == "Processing":
            for output in (props.get("ProcessingOutputConfig") or {}).get("Outputs") or []:
                if output.get("OutputName") == "evaluation":
                    _gather(data, "evaluation", _read_evaluation, data, store.path(output["S3Output"]["S3Uri"]))
        elif props.get("ModelPackageArn"):
            data.model = _local_model(props, settings, store)
    return data


def _local_training(data: ReportData, props: dict, store: Any) -> None:
    job = props["TrainingJobName"]
    data.training_job = job
    data.rules = props.get("DebugRuleEvaluationStatuses") or []
    data.profiler_rules = props.get("ProfilerRuleEvaluationStatuses") or []
    data.profiler_findings = props.get("ProfilerFindings") or []
    model_uri = (props.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if model_uri:
        tar = store.path(model_uri.rsplit("/", 1)[0] + "/output.tar.gz")
        _gather(data, "training history", lambda: data.history.extend(read_history(tar)))
    debug = f"{props['DebugHookConfig']['S3OutputPath'].rstrip('/')}/{job}/debug-output"
    _gather(data, "Debugger tensors", read_tensors, data, store.path(debug))
    profiler = props.get("ProfilerConfig") or {}
    if profiler.get("S3OutputPath") and not profiler.get("DisableProfiler"):
        _gather(data, "Profiler output", read_profiler, data,
                store.path(f"{profiler['S3OutputPath'].rstrip('/')}/{job}/profiler-output"))


def _read_evaluation(data: ReportData, folder: Path) -> None:
    data.evaluation = json.loads((folder / "evaluation.json").read_text())
    png = folder / "confusion_matrix.png"
    data.confusion_png = png.read_bytes() if png.is_file() else None


def _local_model(props: dict, settings: Any, store: Any) -> dict:
    model = {k: props.get(k) for k in ("ModelPackageGroupName", "ModelPackageVersion", "ModelPackageArn",
                                       "ModelApprovalStatus")}
    try:  # the approval status now, not at registration
        from pipelines.local.registry import LocalModelRegistry

        current = LocalModelRegistry(settings, store).describe(str(props["ModelPackageArn"]))
        model["ModelApprovalStatus"] = current.get("ModelApprovalStatus", model["ModelApprovalStatus"])
    except Exception:  # the registry may have been cleared: keep the recorded status
        pass
    return model


# -- aws backend --------------------------------------------------------------------
def _s3_split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def download_prefix(s3: Any, uri: str, dest: Path) -> int:
    """Every object under ``uri`` into ``dest`` (relative paths kept); returns the count."""
    bucket, prefix = _s3_split(uri.rstrip("/") + "/")
    count = 0
    token: dict = {}
    while True:
        page = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, **token)
        for item in page.get("Contents") or []:
            target = dest / item["Key"][len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, item["Key"], str(target))
            count += 1
        if not page.get("IsTruncated"):
            return count
        token = {"ContinuationToken": page["NextContinuationToken"]}


def _pipeline_steps(sagemaker: Any, arn: str) -> list[dict]:
    steps, token = [], {}
    while True:
        page = sagemaker.list_pipeline_execution_steps(PipelineExecutionArn=arn, SortOrder="Ascending", **token)
        steps += page.get("PipelineExecutionSteps") or []
        if not page.get("NextToken"):
            return steps
        token = {"NextToken": page["NextToken"]}


def collect_aws(execution_arn: str, sagemaker: Any, s3: Any, workdir: Path) -> ReportData:
    """ReportData of a SageMaker pipeline execution; S3 output is downloaded into ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    described = sagemaker.describe_pipeline_execution(PipelineExecutionArn=execution_arn)
    start, end = described.get("CreationTime"), described.get("LastModifiedTime")
    data = ReportData(execution={
        "id": execution_arn.rsplit("/", 1)[-1], "arn": execution_arn,
        "pipeline": described.get("PipelineArn", "").rsplit("/", 1)[-1], "status": described.get("PipelineExecutionStatus"),
        "start": start.timestamp() if hasattr(start, "timestamp") else start,
        "end": end.timestamp() if hasattr(end, "timestamp") else end, "failure": described.get("FailureReason"),
        "parameters": {p["Name"]: p["Value"] for p in described.get("PipelineParameters") or []}})
    for step in _pipeline_steps(sagemaker, execution_arn):
        meta = step.get("Metadata") or {}
        started, ended = step.get("StartTime"), step.get("EndTime")
        duration = (ended - started).total_seconds() if started and ended else None
        job_arn = next((v.get("Arn") for v in meta.values() if isinstance(v, dict) and v.get("Arn")), None)
        data.steps.append({"name": step["StepName"], "type": step.get("StepType", ""),
                           "status": step.get("StepStatus"), "duration": duration,
                           "job": job_arn.rsplit("/", 1)[-1] if job_arn else None})
        if "TuningJob" in meta:
            name = meta["TuningJob"]["Arn"].rsplit("/", 1)[-1]
            _gather(data, "tuning trials", _aws_trials, data, sagemaker, name)
        elif "TrainingJob" in meta and data.training_job is None:
            described_job = sagemaker.describe_training_job(TrainingJobName=meta["TrainingJob"]["Arn"].rsplit("/", 1)[-1])
            if described_job.get("DebugHookConfig"):
                _aws_training(data, described_job, s3, workdir)
        elif "ProcessingJob" in meta:
            job = sagemaker.describe_processing_job(ProcessingJobName=meta["ProcessingJob"]["Arn"].rsplit("/", 1)[-1])
            for output in (job.get("ProcessingOutputConfig") or {}).get("Outputs") or []:
                if output.get("OutputName") == "evaluation":
                    folder = workdir / "evaluation"
                    _gather(data, "evaluation", lambda o=output: (download_prefix(s3, o["S3Output"]["S3Uri"], folder),
                                                                   _read_evaluation(data, folder)))
        elif "RegisterModel" in meta:
            package = sagemaker.describe_model_package(ModelPackageName=meta["RegisterModel"]["Arn"])
            data.model = {k: package.get(k) for k in ("ModelPackageGroupName", "ModelPackageVersion",
                                                      "ModelPackageArn", "ModelApprovalStatus")}
    return data


def _aws_trials(data: ReportData, sagemaker: Any, name: str) -> None:
    tuning = sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    objective = (tuning.get("HyperParameterTuningJobConfig") or {}).get("HyperParameterTuningJobObjective") or {}
    data.objective = objective.get("MetricName")
    summaries, token = [], {}
    while True:
        page = sagemaker.list_training_jobs_for_hyper_parameter_tuning_job(HyperParameterTuningJobName=name, **token)
        summaries += page.get("TrainingJobSummaries") or []
        if not page.get("NextToken"):
            break
        token = {"NextToken": page["NextToken"]}
    data.trials = _trial_rows(summaries)


def _aws_training(data: ReportData, job: dict, s3: Any, workdir: Path) -> None:
    name = job["TrainingJobName"]
    data.training_job = name
    data.rules = job.get("DebugRuleEvaluationStatuses") or []
    data.profiler_rules = job.get("ProfilerRuleEvaluationStatuses") or []
    model_uri = (job.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if model_uri:
        def history() -> None:
            bucket, key = _s3_split(model_uri.rsplit("/", 1)[0] + "/output.tar.gz")
            target = workdir / "output.tar.gz"
            s3.download_file(bucket, key, str(target))
            data.history.extend(read_history(target))
        _gather(data, "training history", history)

    def tensors() -> None:
        folder = workdir / "debug-output"
        if not download_prefix(s3, f"{job['DebugHookConfig']['S3OutputPath'].rstrip('/')}/{name}/debug-output", folder):
            raise FileNotFoundError("no Debugger output in S3 for this job")
        read_tensors(data, folder)
    _gather(data, "Debugger tensors", tensors)
    profiler = job.get("ProfilerConfig") or {}
    if profiler.get("S3OutputPath"):
        def system() -> None:
            folder = workdir / "profiler-output"
            download_prefix(s3, f"{profiler['S3OutputPath'].rstrip('/')}/{name}/profiler-output", folder)
            read_profiler(data, folder)
            from pipelines.local.profiler import profiler_findings, read_step_times

            start = job.get("TrainingStartTime")
            data.profiler_findings = [f.as_dict() for f in profiler_findings(
                data.system_events, read_step_times(folder), start.timestamp() if hasattr(start, "timestamp") else None)]
        _gather(data, "Profiler output", system)


# -- plots ------------------------------------------------------------------------------
def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(width: float = 7.0, height: float = 3.2) -> tuple[Any, Any]:
    return _pyplot().subplots(figsize=(width, height), dpi=90)


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    _pyplot().close(fig)
    return _data_uri(buffer.getvalue())


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def plot_objective(trials: list[dict], objective: Optional[str]) -> Optional[str]:
    points = [(i + 1, t["objective"]) for i, t in enumerate(trials) if t["objective"] is not None]
    if not points:
        return None
    fig, ax = _figure(6, 2.8)
    ax.plot(*zip(*points), "o-", color="#1f77b4")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective or "objective")
    ax.set_title("Objective by trial")
    return _png(fig)


def plot_history(history: list[dict]) -> Optional[str]:
    if not history:
        return None
    epochs = [h["epoch"] for h in history]
    fig, (loss, acc) = _pyplot().subplots(1, 2, figsize=(9, 3), dpi=90)
    for key, ax in (("loss", loss), ("accuracy", acc)):
        for split, style in (("train", "o-"), ("valid", "s--")):
            ax.plot(epochs, [h.get(f"{split}_{key}") for h in history], style, label=split)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    return _png(fig)


def plot_losses(losses: dict) -> Optional[str]:
    if not losses:
        return None
    fig, ax = _figure()
    for name, modes in losses.items():
        for mode, points in modes.items():
            if points:
                ax.plot([p[0] for p in points], [p[2] for p in points], "." if mode == "EVAL" else "-",
                        label=f"{name} ({mode})")
    ax.set_xlabel("global step")
    ax.set_title("Loss tensors saved by the Debugger hook")
    ax.legend(fontsize=7)
    return _png(fig)


def plot_gradients(gradients: list[tuple[int, float, float]]) -> Optional[str]:
    if not gradients:
        return None
    fig, ax = _figure()
    steps = [g[0] for g in gradients]
    ax.semilogy(steps, [max(g[1], 1e-30) for g in gradients], "o-", label="global L2 norm")
    ax.semilogy(steps, [max(g[2], 1e-30) for g in gradients], "s--", label="smallest mean |gradient| of a tensor")
    ax.axhline(1e-7, color="red", linewidth=0.8, label="VanishingGradient threshold (default)")
    ax.set_xlabel("global step")
    ax.set_title("Gradients saved by the Debugger hook")
    ax.legend(fontsize=7)
    return _png(fig)


def plot_system(events: list[dict]) -> Optional[str]:
    from pipelines.local.profiler import series

    if not events:
        return None
    import numpy as np

    plt = _pyplot()
    t0 = min(e["Timestamp"] for e in events)
    panels = [("CPUUtilization", "CPU %"), ("Memory", "memory %"), ("GPUUtilization", "GPU %"),
              ("GPUMemoryUtilization", "GPU memory %"), ("DiskIO", "disk B/s"), ("Network", "network B/s")]
    panels = [(d, label) for d, label in panels if series(events, d)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.7 * len(panels)), dpi=90, sharex=True)
    for ax, (dimension, label) in zip(np.atleast_1d(axes), panels):
        for name, points in sorted(series(events, dimension).items()):
            ax.plot([p[0] - t0 for p in points], [p[1] for p in points], label=name, linewidth=1)
        ax.set_ylabel(label, fontsize=8)
        ax.legend(fontsize=6, loc="upper right", ncol=4)
    np.atleast_1d(axes)[-1].set_xlabel("seconds since the first sample")
    return _png(fig)


def plot_per_class(evaluation: dict) -> Optional[str]:
    per_class = evaluation.get("per_class_accuracy") or {}
    if not per_class:
        return None
    fig, ax = _figure(7, 2.8)
    ax.bar(list(per_class), list(per_class.values()), color="#2ca02c")
    ax.set_ylim(0, 1)
    ax.set_title("Test accuracy per class")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    return _png(fig)


# -- html ---------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1000px;color:#222;background:#fff}
h1{font-size:1.6em;margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}.NoIssuesFound,.Succeeded,.Completed,.Approved{color:#18794e;font-weight:600}
.IssuesFound,.Failed,.Rejected{color:#c0392b;font-weight:600}.Error{color:#b9770e;font-weight:600}
.note{color:#666;font-size:0.85em}img{max-width:100%;display:block;margin:8px 0}section{margin-bottom:24px}
"""


def _e(value: Any) -> str:
    return html.escape("-" if value is None else str(value))


def _table(headers: list[str], rows: list[list[Any]], classes: Optional[list[Optional[int]]] = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            css = f' class="{_e(cell)}"' if classes and i in classes else ""
            cells.append(f"<td{css}>{_e(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _img(uri: Optional[str], alt: str, missing: str) -> str:
    if uri is None:
        return f'<p class="note">{_e(missing)}</p>'
    return f'<img src="{uri}" alt="{_e(alt)}">'


def _when(ts: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if isinstance(ts, (int, float)) else _e(ts)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))


def render_html(data: ReportData) -> str:
    """The report as one self-contained HTML document."""
    ex = data.execution
    duration = (ex["end"] - ex["start"]) if isinstance(ex.get("end"), (int, float)) and isinstance(ex.get("start"), (int, float)) else None
    parts = [f"<h1>imgpipe execution {_e(ex.get('id'))}</h1>",
             '<section id="summary"><h2>Run summary</h2>',
             _table(["pipeline", "status", "started", "duration", "ARN"],
                    [[ex.get("pipeline"), ex.get("status"), _when(ex.get("start")),
                      f"{duration:.1f}s" if duration is not None else "-", ex.get("arn")]], [1])]
    if ex.get("failure"):
        parts.append(f"<p><b>Failure:</b> {_e(ex['failure'])}</p>")
    parts.append(_table(["step", "type", "status", "duration", "job"],
                        [[s["name"], s["type"], s["status"], f"{s['duration']:.1f}s" if s.get("duration") else "-",
                          s.get("job")] for s in data.steps], [2]))
    if ex.get("parameters"):
        parts.append(_table(["parameter", "value"], sorted([[k, v] for k, v in ex["parameters"].items()])))
    parts.append("</section>")

    parts.append('<section id="tuning"><h2>Hyperparameter tuning</h2>')
    if data.trials:
        names = sorted({k for t in data.trials for k in t["hyperparameters"]})
        parts.append(_table(["#", "trial", "status", data.objective or "objective", *names],
                            [[i + 1, t["name"], t["status"], _fmt(t["objective"]),
                              *[t["hyperparameters"].get(n) for n in names]] for i, t in enumerate(data.trials)], [2]))
    parts.append(_img(plot_objective(data.trials, data.objective), "objective by trial", "no tuning trials in this execution"))
    parts.append("</section>")

    parts.append(f'<section id="training"><h2>Training ({_e(data.training_job)})</h2>')
    if data.history:
        keys = [k for k in ("train_loss", "valid_loss", "train_accuracy", "valid_accuracy", "images_per_second") if k in data.history[0]]
        parts.append(_table(["epoch", *keys], [[h.get("epoch"), *[_fmt(h.get(k)) for k in keys]] for h in data.history]))
    parts.append(_img(plot_history(data.history), "loss and accuracy by epoch", "no training history"))
    parts.append("</section>")

    parts.append('<section id="debugger"><h2>Debugger rules</h2>')
    rows = []
    for rule in data.rules:
        finding = rule.get("Finding") or {}
        rows.append([rule.get("RuleConfigurationName"), rule.get("RuleEvaluationStatus"), finding.get("Step"),
                     rule.get("StatusDetails")])
    parts.append(_table(["rule", "status", "step", "details"], rows, [1]) if rows
                 else '<p class="note">no Debugger rules were evaluated</p>')
    parts.append(_img(plot_losses(data.losses), "loss tensors", "no loss tensors saved"))
    parts.append(_img(plot_gradients(data.gradients), "gradient norms", "no gradient tensors saved"))
    parts.append("</section>")

    parts.append('<section id="system"><h2>System utilisation (Profiler)</h2>')
    if data.profiler_rules:
        parts.append(_table(["profiler rule", "status", "details"], [[r.get("RuleConfigurationName"),
                            r.get("RuleEvaluationStatus"), r.get("StatusDetails")] for r in data.profiler_rules], [1]))
    if data.profiler_findings:
        parts.append(_table(["check", "result", "details"], [[f.get("Rule"), {True: "IssuesFound", False: "NoIssuesFound",
                            None: "not applicable"}[f.get("Triggered")], f.get("Details")] for f in data.profiler_findings], [1]))
    parts.append(_img(plot_system(data.system_events), "system utilisation", "no system metrics recorded"))
    parts.append("</section>")

    parts.append('<section id="evaluation"><h2>Test evaluation</h2>')
    if data.evaluation:
        metrics = data.evaluation.get("multiclass_classification_metrics") or {}
        parts.append(_table(["metric", "value"], [[k, _fmt((v or {}).get("value"))] for k, v in metrics.items()
                                                  if isinstance(v, dict) and "value" in v]))
        parts.append(_img(_data_uri(data.confusion_png) if data.confusion_png else None, "confusion matrix",
                          "no confusion matrix image"))
        parts.append(_img(plot_per_class(data.evaluation), "per-class accuracy", "no per-class accuracy"))
    else:
        parts.append('<p class="note">no evaluation in this execution</p>')
    parts.append("</section>")

    parts.append('<section id="model"><h2>Registered model</h2>')
    if data.model:
        parts.append(_table(["group", "version", "approval status", "ARN"], [[data.model.get("ModelPackageGroupName"),
                            data.model.get("ModelPackageVersion"), data.model.get("ModelApprovalStatus"),
                            data.model.get("ModelPackageArn")]], [2]))
    else:
        parts.append('<p class="note">no model was registered by this execution</p>')
    parts.append("</section>")
    if data.notes:
        parts.append('<section id="notes"><h2>Not shown</h2><ul>' +
                     "".join(f"<li>{_e(n)}</li>" for n in data.notes) + "</ul></section>")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>imgpipe report {_e(ex.get('id'))}</title><style>{CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")


def write_report(data: ReportData, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(data), encoding="utf-8")
    return out


# -- cli ----------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    """``imgpipe report``."""
    import os

    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        if args.backend == "aws":
            import boto3

            with tempfile.TemporaryDirectory(prefix="imgpipe-report-") as work:
                data = collect_aws(args.execution, boto3.client("sagemaker"), boto3.client("s3"), Path(work))
        else:
            from pipelines.settings import Settings

            settings = Settings(home=Path(args.home)) if args.home else Settings()
            data = collect_local(args.execution, settings)
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or f"imgpipe-report-{data.execution['id']}.html")
    write_report(data, out)
    print(f"report: {out}")
    for note in data.notes:
        print(f"  not shown: {note}", file=sys.stderr)
    if args.open:
        webbrowser.open(out.resolve().as_uri())
    return 0


def register(subparsers: Any) -> None:
    """Add ``report`` to the ``imgpipe`` parser."""
    parser = subparsers.add_parser("report", help="write a self-contained HTML report of an execution",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("execution", help="local execution id (or prefix), or a SageMaker execution ARN with --backend aws")
    parser.add_argument("--out", metavar="FILE", help="HTML file to write (default: imgpipe-report-<id>.html)")
    parser.add_argument("--open", action="store_true", help="open the report in a browser")
    parser.add_argument("--backend", choices=("local", "aws"), default="local", help="where the execution ran")
    parser.add_argument("--home", help="state directory (default: $IMGPIPE_HOME or ./.imgpipe)")
    parser.set_defaults(func=cmd_report)
