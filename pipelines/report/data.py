"""What a report shows (:class:`ReportData`) and the readers both collectors share."""
from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

SECTIONS = ("summary", "tuning", "training", "insights", "debugger", "system", "evaluation", "model")


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
    insights: Optional[dict] = None  # AnalyzeTraining's training_insights.json
    confusion_png: Optional[bytes] = None
    model: Optional[dict] = None
    notes: list[str] = field(default_factory=list)



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


def trial_rows(summaries: list[dict]) -> list[dict]:
    rows = []
    for s in summaries:
        objective = (s.get("FinalHyperParameterTuningJobObjectiveMetric") or {}).get("Value")
        rows.append({"name": s.get("TrainingJobName"), "status": s.get("TrainingJobStatus"), "objective": objective,
                     "hyperparameters": {k: str(v).strip('"') for k, v in (s.get("TunedHyperParameters") or {}).items()},
                     "start": str(s.get("TrainingStartTime") or s.get("CreationTime") or "")})
    return sorted(rows, key=lambda r: (r["start"], r["name"] or ""))


def gather(data: ReportData, what: str, fn: Any, *args: Any) -> None:
    """Run one reader; a missing piece becomes a note in the report, not a crash."""
    try:
        fn(*args)
    except Exception as exc:  # the report shows what it could not read, and why
        data.notes.append(f"{what}: {type(exc).__name__}: {exc}")


def read_evaluation(data: ReportData, folder: Path) -> None:
    data.evaluation = json.loads((folder / "evaluation.json").read_text())
    png = folder / "confusion_matrix.png"
    data.confusion_png = png.read_bytes() if png.is_file() else None


def read_insights(data: ReportData, folder: Path) -> None:
    """AnalyzeTraining's ``training_insights.json`` from its ``insights`` output folder."""
    data.insights = json.loads((folder / "training_insights.json").read_text())


def is_final_training(job: dict) -> bool:
    """Whether a training job (Describe/step properties) is the model's training, not the repack:
    it has SageMaker Debugger's hook or records training insights (TensorBoard output)."""
    return bool(job.get("DebugHookConfig") or job.get("TensorBoardOutputConfig"))
