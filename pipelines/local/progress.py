"""Live progress of a local execution and its final summary, as plain aligned text.

:class:`Progress` is the engine's ``on_event`` callback: one line per step transition, and per
training epoch (``trial n/N epoch e valid_accuracy=...``). On a terminal the epoch and trial
updates share one line that is rewritten in place; otherwise every update is its own line.
"""
from __future__ import annotations

import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, TextIO

from imgclf.insights import verdict_lines

from pipelines.local.engine import ExecutionResult, read_result_property_file
from pipelines.local.expressions import ExpressionError
from pipelines.local.object_store import ObjectStore
from pipelines.local.records import StepRecord
from pipelines.settings import Settings

DEFAULT_ENDPOINT = "imgpipe"  # the deploy pipeline's default EndpointName

PROGRESS_METRICS = ("valid_accuracy", "valid_loss")


def format_duration(seconds: Optional[float]) -> str:
    """``3.2s``, ``4m05s``, ``1h02m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Rows as left-aligned columns under a header and a rule."""
    table = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _clock() -> str:
    return time.strftime("%H:%M:%S")


class Progress:
    """Prints engine and job events to ``stream`` (thread-safe; jobs report from threads)."""

    def __init__(self, stream: Optional[TextIO] = None, tty: Optional[bool] = None):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self._lock = threading.Lock()
        self._status = ""  # the rewritable status line (TTY only)
        self._trials: dict[str, str] = {}  # job → "n/N"
        self._metrics: dict[tuple, dict] = {}

    def __call__(self, event: dict) -> None:
        with self._lock:
            handler = getattr(self, f"_on_{event.get('type')}", None)
            if handler is not None:
                handler(event)

    # output ----------------------------------------------------------------------
    def _line(self, text: str) -> None:
        if self.tty and self._status:
            self.stream.write("\r\x1b[K")
            self._status = ""
        self.stream.write(f"{text}\n")
        self.stream.flush()

    def _update(self, text: str) -> None:
        if not self.tty:
            return self._line(text)
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self._status = text[:width]
        self.stream.write(f"\r\x1b[K{self._status}")
        self.stream.flush()

    # events ----------------------------------------------------------------------
    def _on_execution(self, event: dict) -> None:
        if event.get("status") == "Executing":
            what = "retrying" if (event.get("attempt") or 1) > 1 else "started"
            self._line(f"[{_clock()}] execution {event.get('execution_id')} of {event.get('pipeline')} {what}"
                       f" ({event.get('steps')} steps)")
        else:
            reason = f": {event['reason']}" if event.get("reason") else ""
            self._line(f"[{_clock()}] execution {event.get('execution_id')} {event.get('status')}{reason}")

    def _on_step(self, event: dict) -> None:
        status, name = event.get("status"), event.get("step")
        if status == "Starting":
            return self._line(f"[{_clock()}] {name} ({event.get('step_type')}) started")
        if status == "Executing":
            if not event.get("job"):
                return None
            attempt = f" (attempt {event['attempt']})" if (event.get("attempt") or 1) > 1 else ""
            return self._line(f"[{_clock()}] {name} job {event.get('job')}{attempt}")
        if status == "Succeeded" and event.get("cached_from"):
            return self._line(f"[{_clock()}] {name} cached (reusing {event['cached_from']})")
        took = f" in {format_duration(event.get('duration'))}" if event.get("duration") is not None else ""
        reason = f": {event['reason']}" if event.get("reason") and status != "Succeeded" else ""
        self._line(f"[{_clock()}] {name} {status}{took}{reason}")

    def _on_retry(self, event: dict) -> None:
        self._line(f"[{_clock()}] {event.get('step')} retrying in {event.get('delay', 0):.0f}s "
                   f"(attempt {event.get('attempt')}): {event.get('reason')}")

    def _on_trial(self, event: dict) -> None:
        trial_job = event["trial"] if isinstance(event.get("trial"), str) else str(event.get("job") or "")
        number, total = event.get("number"), event.get("total")
        if number is not None:
            self._trials[trial_job] = f"{number}/{total}" if total else str(number)
        label = self._trials.get(trial_job, trial_job)
        kind = event.get("event") or ""
        parts = [f"  {event.get('step') or ''} trial {label}", {"start": "started", "end": "ended",
                 "early_stop": "stopped early"}.get(kind, kind)]
        if kind == "end" and event.get("status"):
            parts.append(str(event["status"]))
        if event.get("objective") is not None:
            parts.append(f"objective={_num(event['objective'])}")
        if kind == "start" and event.get("hyperparameters"):
            parts.append(" ".join(f"{k}={str(v).strip(chr(34))}" for k, v in event["hyperparameters"].items()))
        text = " ".join(p for p in parts if p)
        if kind in ("end", "early_stop"):
            self._line(text)
        else:
            self._update(text)

    def _on_metric(self, event: dict) -> None:
        if event.get("name") not in PROGRESS_METRICS:
            return
        job, epoch = str(event.get("job") or ""), event.get("epoch")
        key = (job, epoch)
        self._metrics.setdefault(key, {})[event["name"]] = event.get("value")
        if event["name"] != "valid_accuracy":
            return
        trial = self._trials.get(job)
        where = f" trial {trial}" if trial else ""
        values = " ".join(f"{k}={_num(v)}" for k, v in self._metrics.pop(key).items())
        epoch_text = f" epoch {epoch}" if epoch is not None else " final"
        self._update(f"  {event.get('step') or job}{where}{epoch_text} {values}")


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


# -- summary -----------------------------------------------------------------------
def steps_table(steps: Sequence[StepRecord], detail: bool = False) -> str:
    """Steps as a table: name, type, status (cached shown), duration [, attempts, job, log]."""
    headers = ["STEP", "TYPE", "STATUS", "DURATION"] + (["TRIES", "JOB", "LOG"] if detail else [])
    rows = []
    for step in steps:
        row = [step.name, step.type, step.display_status, format_duration(step.duration)]
        if detail:
            row += [step.attempts or "-", step.job_name, step.log_path]
        rows.append(row)
    return format_table(headers, rows)


def best_hyperparameters(result: ExecutionResult) -> Optional[dict]:
    """TunedHyperParameters of the best training job of the (first) tuning step that ran."""
    for step in result.steps:
        best = (step.properties or {}).get("BestTrainingJob") if step.type == "Tuning" else None
        if best and best.get("TunedHyperParameters"):
            return {k: str(v).strip('"') for k, v in best["TunedHyperParameters"].items()}
    return None


def property_files(result: ExecutionResult, settings: Settings) -> Iterator[tuple[str, Any]]:
    """``(step/PropertyFileName, document)`` of every property file of the steps that succeeded."""
    from pipelines.local.engine import flatten_steps

    nodes = flatten_steps(result.definition)
    for step in result.steps:
        if step.status != "Succeeded" or step.name not in nodes:
            continue
        for spec in nodes[step.name].spec.get("PropertyFiles") or []:
            try:
                document = read_result_property_file(result, settings, step.name, spec["PropertyFileName"])
            except (ExpressionError, KeyError, TypeError):
                continue
            yield f"{step.name}/{spec['PropertyFileName']}", document


def test_accuracy(result: ExecutionResult, settings: Settings) -> Optional[tuple[str, float]]:
    """(where, accuracy) from the first evaluation property file with
    ``multiclass_classification_metrics.accuracy.value``."""
    for where, report in property_files(result, settings):
        try:
            return where, float(report["multiclass_classification_metrics"]["accuracy"]["value"])
        except (KeyError, TypeError, ValueError):
            continue
    return None


def training_insights(result: ExecutionResult, settings: Settings) -> Optional[tuple[str, dict]]:
    """(where, document) of the first ``training_insights.json`` property file (AnalyzeTraining)."""
    for where, document in property_files(result, settings):
        if isinstance(document, dict) and isinstance(document.get("rules"), dict) and "issues_found" in document:
            return where, document
    return None


def insight_lines(result: ExecutionResult, settings: Settings) -> list[str]:
    """The training-insight verdicts, one line each under a heading; none without AnalyzeTraining."""
    found = training_insights(result, settings)
    if found is None:
        return []
    where, document = found
    heading = f"Training insights ({where}): {document.get('issues_found', '?')} rule(s) with issues"
    return [heading] + [f"  {line}" for line in verdict_lines(document)]


def registered_model(result: ExecutionResult) -> Optional[dict]:
    """Properties of the model package a RegisterModel step created in this execution."""
    for step in result.steps:
        props = step.properties or {}
        if step.status == "Succeeded" and props.get("ModelPackageArn"):
            return props
    return None


def sample_test_image(result: ExecutionResult, settings: Settings) -> Optional[Path]:
    """One held-out image of this execution (the ``test`` output of a processing step), to try
    the endpoint with."""
    store = ObjectStore(settings.s3_root)
    for step in result.steps:
        for output in ((step.properties or {}).get("ProcessingOutputConfig") or {}).get("Outputs") or []:
            if output.get("OutputName") == "test":
                root = store.path(output["S3Output"]["S3Uri"])
                return next((p for p in sorted(root.rglob("*")) if p.is_file()), None) if root.is_dir() else None
    return None


def next_steps(result: ExecutionResult, settings: Settings, package: dict) -> list[str]:
    """What to do with the registered model: approve (deploys it), predict, report."""
    lines = ["", "Next:"]
    if package.get("ModelApprovalStatus") != "Approved":
        lines.append(f"  imgpipe models approve {package.get('ModelPackageVersion', '?')}"
                     f"      # deploy pipeline -> local endpoint '{DEFAULT_ENDPOINT}'")
    image = sample_test_image(result, settings)
    lines.append(f"  imgpipe predict --endpoint {DEFAULT_ENDPOINT} {image or 'IMAGE...'}")
    lines.append(f"  imgpipe report {result.execution_id} --open   # tuning, Debugger rules, profiler, evaluation")
    return lines


def rule_rows(steps: Sequence[StepRecord]) -> list[list[Any]]:
    """``[step, rule, status, details]`` of every Debugger and Profiler rule verdict the
    steps' training jobs report (DebugRuleEvaluationStatuses / ProfilerRuleEvaluationStatuses)."""
    rows = []
    for step in steps:
        props = step.properties or {}
        for status in (props.get("DebugRuleEvaluationStatuses") or []) + (props.get("ProfilerRuleEvaluationStatuses") or []):
            details = " ".join(str(status.get("StatusDetails") or "").split())
            rows.append([step.name, status.get("RuleConfigurationName"), status.get("RuleEvaluationStatus"),
                         details if len(details) <= 110 else details[:107] + "..."])
    return rows


def summary(result: ExecutionResult, settings: Settings) -> str:
    """The end-of-run report: steps table, best hyperparameters, test accuracy, and the
    registered model version or the failure message."""
    lines = [f"Execution {result.execution_id} ({result.pipeline_name}): {result.status}"
             f" in {format_duration(result.duration)}", "", steps_table(result.steps), ""]
    best = best_hyperparameters(result)
    if best:
        lines.append("Best hyperparameters: " + ", ".join(f"{k}={v}" for k, v in sorted(best.items())))
    debugger = rule_rows(result.steps)
    if debugger:
        lines.append("SageMaker Debugger rules (AWS's default parameters: strict on a short fine-tuning run; "
                     "the training insights below are tuned for it):")
        lines.extend(f"  {rule} ({step_name}): {status}" for step_name, rule, status, _ in debugger)
    lines.extend(insight_lines(result, settings))
    accuracy = test_accuracy(result, settings)
    if accuracy:
        lines.append(f"Test accuracy: {accuracy[1]:.4f} ({accuracy[0]})")
    package = registered_model(result)
    if package:
        group = package.get("ModelPackageGroupName", "")
        version = package.get("ModelPackageVersion", "?")
        status = package.get("ModelApprovalStatus", "")
        lines.append(f"Registered model: {group} version {version} {status} ({package['ModelPackageArn']})".replace("  ", " "))
        lines.extend(next_steps(result, settings, package))
    if result.failure_reason:
        lines.append(f"Failure: {result.failure_reason}")
    return "\n".join(lines).rstrip() + "\n"
