"""The report as one self-contained HTML document (inline CSS, plots as ``data:`` URIs)."""
from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any, Optional

from pipelines.report.data import ReportData
from pipelines.report.plots import (
    data_uri, plot_gradients, plot_history, plot_losses, plot_objective, plot_per_class, plot_system,
)


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


def _summary(data: ReportData) -> list[str]:
    ex = data.execution
    duration = (ex["end"] - ex["start"]) if isinstance(ex.get("end"), (int, float)) and isinstance(ex.get("start"), (int, float)) else None
    parts = [_table(["pipeline", "status", "started", "duration", "ARN"],
                    [[ex.get("pipeline"), ex.get("status"), _when(ex.get("start")),
                      f"{duration:.1f}s" if duration is not None else "-", ex.get("arn")]], [1])]
    if ex.get("failure"):
        parts.append(f"<p><b>Failure:</b> {_e(ex['failure'])}</p>")
    parts.append(_table(["step", "type", "status", "duration", "job"],
                        [[s["name"], s["type"], s["status"], f"{s['duration']:.1f}s" if s.get("duration") else "-",
                          s.get("job")] for s in data.steps], [2]))
    if ex.get("parameters"):
        parts.append(_table(["parameter", "value"], sorted([[k, v] for k, v in ex["parameters"].items()])))
    return parts


def _tuning(data: ReportData) -> list[str]:
    parts = []
    if data.trials:
        names = sorted({k for t in data.trials for k in t["hyperparameters"]})
        parts.append(_table(["#", "trial", "status", data.objective or "objective", *names],
                            [[i + 1, t["name"], t["status"], _fmt(t["objective"]),
                              *[t["hyperparameters"].get(n) for n in names]] for i, t in enumerate(data.trials)], [2]))
    parts.append(_img(plot_objective(data.trials, data.objective), "objective by trial", "no tuning trials in this execution"))
    return parts


def _training(data: ReportData) -> list[str]:
    parts = []
    if data.history:
        keys = [k for k in ("train_loss", "valid_loss", "train_accuracy", "valid_accuracy", "images_per_second") if k in data.history[0]]
        parts.append(_table(["epoch", *keys], [[h.get("epoch"), *[_fmt(h.get(k)) for k in keys]] for h in data.history]))
    parts.append(_img(plot_history(data.history), "loss and accuracy by epoch", "no training history"))
    return parts


def _debugger(data: ReportData) -> list[str]:
    rows = []
    for rule in data.rules:
        finding = rule.get("Finding") or {}
        rows.append([rule.get("RuleConfigurationName"), rule.get("RuleEvaluationStatus"), finding.get("Step"),
                     rule.get("StatusDetails")])
    return [_table(["rule", "status", "step", "details"], rows, [1]) if rows
            else '<p class="note">no Debugger rules were evaluated</p>',
            _img(plot_losses(data.losses), "loss tensors", "no loss tensors saved"),
            _img(plot_gradients(data.gradients), "gradient norms", "no gradient tensors saved")]


def _insights(data: ReportData) -> list[str]:
    """AnalyzeTraining's verdicts: each rule and profiler finding in one line with its values."""
    if not data.insights:
        return ['<p class="note">no training insights in this execution (no AnalyzeTraining step ran)</p>']
    rows = [[name, verdict.get("status"), verdict.get("step"), verdict.get("reason")]
            for section in ("rules", "profiler") for name, verdict in (data.insights.get(section) or {}).items()]
    issues = data.insights.get("issues_found", 0)
    return [f"<p>{_e(issues)} rule(s) with issues over {_e(data.insights.get('steps'))} recorded steps, "
            f"{_e(data.insights.get('epochs'))} epochs.</p>", _table(["rule", "status", "step", "verdict"], rows, [1])]


def _system(data: ReportData) -> list[str]:
    parts = []
    if data.profiler_rules:
        parts.append(_table(["profiler rule", "status", "details"], [[r.get("RuleConfigurationName"),
                            r.get("RuleEvaluationStatus"), r.get("StatusDetails")] for r in data.profiler_rules], [1]))
    if data.profiler_findings:
        parts.append(_table(["check", "result", "details"], [[f.get("Rule"), {True: "IssuesFound", False: "NoIssuesFound",
                            None: "not applicable"}[f.get("Triggered")], f.get("Details")] for f in data.profiler_findings], [1]))
    parts.append(_img(plot_system(data.system_events), "system utilisation", "no system metrics recorded"))
    return parts


def _evaluation(data: ReportData) -> list[str]:
    if not data.evaluation:
        return ['<p class="note">no evaluation in this execution</p>']
    metrics = data.evaluation.get("multiclass_classification_metrics") or {}
    return [_table(["metric", "value"], [[k, _fmt((v or {}).get("value"))] for k, v in metrics.items()
                                         if isinstance(v, dict) and "value" in v]),
            _img(data_uri(data.confusion_png) if data.confusion_png else None, "confusion matrix",
                 "no confusion matrix image"),
            _img(plot_per_class(data.evaluation), "per-class accuracy", "no per-class accuracy")]


def _model(data: ReportData) -> list[str]:
    if not data.model:
        return ['<p class="note">no model was registered by this execution</p>']
    return [_table(["group", "version", "approval status", "ARN"], [[data.model.get("ModelPackageGroupName"),
                   data.model.get("ModelPackageVersion"), data.model.get("ModelApprovalStatus"),
                   data.model.get("ModelPackageArn")]], [2])]


# (section id, heading, what goes in it); the training heading names the job
_SECTION_BUILDERS = (
    ("summary", "Run summary", _summary),
    ("tuning", "Hyperparameter tuning", _tuning),
    ("training", None, _training),
    ("insights", "Training insights (AnalyzeTraining)", _insights),
    ("debugger", "SageMaker Debugger rules", _debugger),
    ("system", "System utilisation (Profiler)", _system),
    ("evaluation", "Test evaluation", _evaluation),
    ("model", "Registered model", _model),
)


def render_html(data: ReportData) -> str:
    """The report as one self-contained HTML document."""
    ex = data.execution
    parts = [f"<h1>imgpipe execution {_e(ex.get('id'))}</h1>"]
    for section, heading, build in _SECTION_BUILDERS:
        title = heading if heading is not None else f"Training ({_e(data.training_job)})"
        parts += [f'<section id="{section}"><h2>{title}</h2>', *build(data), "</section>"]
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
