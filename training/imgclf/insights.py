"""Training insight: the five Debugger rules and the profiler findings, evaluated on what
``train.py`` records (:mod:`imgclf.recorder`), with parameters tuned for fine-tuning.

Every verdict is ``{"status": "NoIssuesFound"|"IssuesFound", "step", "values", "reason"}``;
``reason`` is one line naming the values behind the verdict. A rule that has too little to
look at (too few steps or epochs, nothing recorded for it) says so in ``reason`` and is
``NoIssuesFound``: it is never an error. What each rule checks, with its parameters:

- **LossNotDecreasing** — the training loss, averaged over windows of ``window_steps``
  steps: a non-finite loss; the lowest window not at least ``diff_percent`` % below the
  first; the lowest window above ``chance_ratio`` x the loss of a uniform guess (ln classes:
  the model never beat guessing); or the last window more than ``increase_threshold_percent`` %
  above the lowest.
- **VanishingGradient** — at a sampled step, more than ``tensor_share`` of the trainable
  tensors have a mean |gradient| below ``threshold`` (a few tiny biases are normal).
- **Overfit** — (validation loss - training loss) / training loss of an epoch above
  ``ratio_threshold`` while the validation loss is no better than its best so far, for
  ``patience`` consecutive epochs from ``start_epoch`` (a gap that shrinks is not overfitting:
  short fine-tuning runs start with validation above training loss while BatchNorm settles).
- **Overtraining** — the validation loss has not improved by ``delta_percent`` % on its
  best for ``patience_validation`` epochs (or the training loss for ``patience_train``).
- **PoorWeightInitialization** — random initialisation only (``pretrained`` weights are not
  one): at the first ``steps`` steps, activation-input variances across layers differing more
  than ``threshold`` times, a 5th-95th percentile range below ``distribution_range``, or a
  first loss above ``loss_ratio`` x the loss of a uniform guess (ln classes).
- Profiler: **DataLoaderBottleneck** (waiting for batches more than ``bottleneck_share`` of
  step time), **StepOutlier** (more than ``outlier_share`` of the steps, and at least
  ``min_outliers``, slower than ``outlier_factor`` x the median), **MaxInitializationTime**
  (start-up above ``max_init_seconds``), **LowGPUUtilization** (p95 below ``gpu_p95``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from imgclf.tfevents import read_scalars

RULES = ("LossNotDecreasing", "VanishingGradient", "Overfit", "Overtraining", "PoorWeightInitialization")
PROFILER_FINDINGS = ("DataLoaderBottleneck", "StepOutlier", "MaxInitializationTime", "LowGPUUtilization")
NO_ISSUES, ISSUES = "NoIssuesFound", "IssuesFound"

# rule: {parameter: default}; the types are the defaults' types.
DEFAULT_PARAMETERS: dict[str, dict[str, Any]] = {
    "LossNotDecreasing": {"window_steps": 10, "diff_percent": 5.0, "increase_threshold_percent": 50.0, "chance_ratio": 1.0},
    "VanishingGradient": {"threshold": 1e-7, "tensor_share": 0.5},
    "Overfit": {"ratio_threshold": 1.0, "patience": 2, "start_epoch": 1},
    "Overtraining": {"patience_validation": 3, "patience_train": 3, "delta_percent": 1.0},
    "PoorWeightInitialization": {"steps": 10, "threshold": 100.0, "distribution_range": 0.01, "loss_ratio": 10.0},
    "Profiler": {"bottleneck_share": 0.5, "outlier_factor": 3.0, "outlier_share": 0.05, "min_outliers": 10,
                 "max_init_seconds": 1200.0, "gpu_p95": 70.0},
}


@dataclass
class Verdict:
    """One rule's outcome."""

    status: str
    reason: str
    step: Optional[int] = None
    values: Optional[dict] = None

    def as_dict(self) -> dict:
        return {"status": self.status, "step": self.step, "values": self.values or {}, "reason": self.reason}


def parse_parameters(assignments: list[str]) -> dict[str, dict[str, Any]]:
    """Defaults overridden by ``Rule.parameter=value`` strings; unknown names are errors."""
    params = {rule: dict(values) for rule, values in DEFAULT_PARAMETERS.items()}
    for assignment in assignments or []:
        key, sep, raw = assignment.partition("=")
        rule, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise ValueError(f"rule parameter {assignment!r}: expected Rule.parameter=value")
        if rule not in params or name not in params[rule]:
            known = ", ".join(f"{r}.{n}" for r, values in DEFAULT_PARAMETERS.items() for n in values)
            raise ValueError(f"unknown rule parameter {key!r} (known: {known})")
        kind = type(DEFAULT_PARAMETERS[rule][name])
        try:
            params[rule][name] = kind(float(raw)) if kind is int and float(raw).is_integer() else kind(raw)
        except ValueError:
            raise ValueError(f"rule parameter {key}={raw!r}: expected a {kind.__name__}") from None
    return params


def rule_arguments(params: Optional[dict[str, dict[str, Any]]] = None) -> list[str]:
    """``--param Rule.name=value`` arguments for every parameter (for a pipeline definition)."""
    params = params or DEFAULT_PARAMETERS
    return [arg for rule, values in params.items() for name, value in values.items()
            for arg in ("--param", f"{rule}.{name}={value}")]


class Recording:
    """The scalars of one job's event files, by tag."""

    def __init__(self, scalars: dict[str, list[tuple[int, float, float]]]):
        self.scalars = scalars

    @classmethod
    def read(cls, log_dir: str) -> "Recording":
        return cls(read_scalars(log_dir))

    def series(self, tag: str) -> list[tuple[int, float]]:
        return [(step, value) for step, _, value in self.scalars.get(tag, [])]

    def meta(self, name: str, default: float = 0.0) -> float:
        points = self.series(f"meta/{name}")
        return points[0][1] if points else default

    def prefixed(self, prefix: str, suffix: str) -> dict[str, list[tuple[int, float]]]:
        """``{middle: series}`` of the tags ``prefix<middle>suffix``."""
        return {tag[len(prefix):len(tag) - len(suffix)]: self.series(tag) for tag in self.scalars
                if tag.startswith(prefix) and tag.endswith(suffix)}

    def epochs(self) -> list[dict[str, float]]:
        """Per epoch: index, step, train_loss, valid_loss, valid_accuracy (in epoch order)."""
        rows: dict[int, dict[str, float]] = {}
        for name in ("index", "train_loss", "valid_loss", "valid_accuracy"):
            for step, value in self.series(f"epoch/{name}"):
                rows.setdefault(step, {"step": step})[name] = value
        return [rows[step] for step in sorted(rows) if len(rows[step]) == 5]


def _g(value: float) -> str:
    return f"{value:.4g}"


# -- the five rules --------------------------------------------------------------------
def loss_not_decreasing(rec: Recording, p: dict) -> Verdict:
    losses = rec.series("train/loss")
    for step, value in losses:
        if not math.isfinite(value):
            return Verdict(ISSUES, f"the training loss is {value} at step {step}", step, {"loss": value})
    size = p["window_steps"]
    windows = [(losses[i + size - 1][0], float(np.mean([v for _, v in losses[i:i + size]])))
               for i in range(0, len(losses) - size + 1, size)]
    if len(windows) < 2:
        return Verdict(NO_ISSUES, f"too few steps to judge: {len(losses)} recorded, 2 windows of {size} needed")
    first, (low_step, lowest), (last_step, last) = windows[0][1], min(windows, key=lambda w: w[1]), windows[-1]
    values = {"first_window_loss": first, "lowest_window_loss": lowest, "lowest_step": low_step,
              "last_window_loss": last, "windows": len(windows), "window_steps": size}
    if not math.isfinite(first) or lowest > first * (1 - p["diff_percent"] / 100):
        return Verdict(ISSUES, f"the training loss never fell {p['diff_percent']:g}% below its first {size}-step mean "
                       f"{_g(first)} (lowest {_g(lowest)} at step {low_step})", low_step, values)
    chance = math.log(rec.meta("num_classes")) if rec.meta("num_classes") > 1 else math.inf
    if lowest > p["chance_ratio"] * chance:
        return Verdict(ISSUES, f"the training loss never fell below a uniform guess's {_g(chance)} (ln "
                       f"{rec.meta('num_classes'):.0f} classes): lowest {size}-step mean {_g(lowest)} at step {low_step}",
                       low_step, {**values, "chance_loss": chance})
    rise = (last - lowest) / abs(lowest) * 100 if lowest else 0.0
    values["rise_percent"] = rise
    if rise > p["increase_threshold_percent"]:
        return Verdict(ISSUES, f"the training loss rose {rise:.0f}% from its lowest {size}-step mean {_g(lowest)} (step "
                       f"{low_step}) to {_g(last)} at step {last_step}", last_step, values)
    return Verdict(NO_ISSUES, f"the training loss fell from {_g(first)} to {_g(lowest)} ({size}-step means, "
                   f"{len(windows)} windows); last {_g(last)}", last_step, values)


def vanishing_gradient(rec: Recording, p: dict) -> Verdict:
    grads = rec.prefixed("gradients/", "/mean_abs")
    if not grads:
        return Verdict(NO_ISSUES, "no gradient statistics recorded: nothing to judge")
    by_step: dict[int, list[tuple[float, str]]] = {}
    for name, points in grads.items():
        for step, value in points:
            by_step.setdefault(step, []).append((value, name))
    smallest = (math.inf, "", -1)
    for step in sorted(by_step):
        entries = by_step[step]
        below = sum(value < p["threshold"] for value, _ in entries)
        median = float(np.median([v for v, _ in entries]))
        low = min(entries)
        if low[0] < smallest[0]:
            smallest = (low[0], low[1], step)
        if below > p["tensor_share"] * len(entries):
            return Verdict(ISSUES, f"{below} of {len(entries)} gradient tensors have mean |gradient| < {p['threshold']:g} at "
                           f"step {step} (median {median:.3g})", step,
                           {"tensors_below": below, "tensors": len(entries), "median_mean_abs": median, "threshold": p["threshold"]})
    return Verdict(NO_ISSUES, f"gradients alive at all {len(by_step)} sampled steps; smallest mean |gradient| "
                   f"{smallest[0]:.3g} ({smallest[1]}, step {smallest[2]})", smallest[2],
                   {"sampled_steps": len(by_step), "smallest_mean_abs": smallest[0], "tensor": smallest[1]})


def overfit(rec: Recording, p: dict) -> Verdict:
    epochs = [e for e in rec.epochs() if e["index"] >= p["start_epoch"]]
    if not epochs:
        return Verdict(NO_ISSUES, "no finished epoch recorded: nothing to judge")
    exceeded, worst, best_valid = 0, (-math.inf, epochs[0]), math.inf
    for epoch in epochs:
        ratio = (epoch["valid_loss"] - epoch["train_loss"]) / abs(epoch["train_loss"]) if epoch["train_loss"] else math.inf
        worst = max(worst, (ratio, epoch), key=lambda w: w[0])
        improving = epoch["valid_loss"] < best_valid
        best_valid = min(best_valid, epoch["valid_loss"])
        exceeded = exceeded + 1 if ratio > p["ratio_threshold"] and not improving else 0
        if exceeded >= p["patience"]:
            return Verdict(ISSUES, f"validation loss {_g(epoch['valid_loss'])} is {ratio:.0%} above training loss "
                           f"{_g(epoch['train_loss'])} at epoch {epoch['index']:.0f} ({exceeded} epochs above "
                           f"{p['ratio_threshold']:.0%} with no better validation loss)", int(epoch["step"]),
                           {"epoch": int(epoch["index"]), "valid_loss": epoch["valid_loss"], "train_loss": epoch["train_loss"], "ratio": ratio})
    ratio, epoch = worst
    return Verdict(NO_ISSUES, f"largest gap: validation loss {_g(epoch['valid_loss'])} vs training loss "
                   f"{_g(epoch['train_loss'])} ({ratio:+.0%}, epoch {epoch['index']:.0f}; limit {p['ratio_threshold']:.0%} "
                   f"for {p['patience']} epochs)", int(epoch["step"]), {"epoch": int(epoch["index"]), "ratio": ratio, "epochs": len(epochs)})


def _stale_epochs(epochs: list[dict], key: str, delta_percent: float) -> tuple[int, dict, dict]:
    """(epochs since the best ``key`` improved by delta, best epoch, last epoch)."""
    best, stale = epochs[0], 0
    for epoch in epochs[1:]:
        if epoch[key] < best[key] * (1 - delta_percent / 100):
            best, stale = epoch, 0
        else:
            stale += 1
    return stale, best, epochs[-1]


def overtraining(rec: Recording, p: dict) -> Verdict:
    epochs = rec.epochs()
    if len(epochs) < 2:
        return Verdict(NO_ISSUES, f"too few epochs to judge ({len(epochs)} recorded)")
    for key, what, patience in (("valid_loss", "validation", p["patience_validation"]), ("train_loss", "training", p["patience_train"])):
        stale, best, last = _stale_epochs(epochs, key, p["delta_percent"])
        if stale >= patience:
            return Verdict(ISSUES, f"{stale} epochs past the best {what} loss {_g(best[key])} (epoch {best['index']:.0f}): "
                           f"{_g(last[key])} at epoch {last['index']:.0f} (patience {patience})", int(last["step"]),
                           {"loss": what, "best_epoch": int(best["index"]), "best_loss": best[key], "epochs_past_best": stale,
                            "last_loss": last[key]})
    stale, best, last = _stale_epochs(epochs, "valid_loss", p["delta_percent"])
    return Verdict(NO_ISSUES, f"best validation loss {_g(best['valid_loss'])} at epoch {best['index']:.0f} of "
                   f"{last['index']:.0f} ({stale} epochs past it; patience {p['patience_validation']})", int(best["step"]),
                   {"best_epoch": int(best["index"]), "best_valid_loss": best["valid_loss"], "epochs_past_best": stale})


def poor_weight_initialization(rec: Recording, p: dict) -> Verdict:
    if rec.meta("pretrained"):
        return Verdict(NO_ISSUES, "the model starts from pretrained (ImageNet) weights, not a random initialisation: "
                       "nothing to judge")
    variances = rec.prefixed("activation_inputs/", "/variance")
    p5, p95 = rec.prefixed("activation_inputs/", "/p5"), rec.prefixed("activation_inputs/", "/p95")
    steps = sorted({s for points in variances.values() for s, _ in points if s < p["steps"]})
    worst = {"ratio": 0.0, "range": math.inf}
    for step in steps:
        at = {name: v for name, points in variances.items() for s, v in points if s == step}
        ranges = {name: dict(p95[name])[step] - dict(p5[name])[step] for name in at
                  if step in dict(p95.get(name, [])) and step in dict(p5.get(name, []))}
        smallest = min(at.values())
        ratio = max(at.values()) / smallest if smallest > 0 else math.inf
        narrow = min(ranges.items(), key=lambda kv: kv[1]) if ranges else ("", math.inf)
        worst = {"ratio": max(worst["ratio"], ratio), "range": min(worst["range"], narrow[1])}
        if ratio > p["threshold"]:
            return Verdict(ISSUES, f"activation-input variances differ {ratio:.3g}x across {len(at)} layers at step {step} "
                           f"(limit {p['threshold']:g}x)", step, {"variance_ratio": ratio, "max_variance": max(at.values()),
                                                                  "min_variance": smallest})
        if narrow[1] < p["distribution_range"]:
            return Verdict(ISSUES, f"activation inputs of {narrow[0]} span only {narrow[1]:.3g} (5th-95th percentile) at step "
                           f"{step} (limit {p['distribution_range']:g})", step, {"layer": narrow[0], "range": narrow[1]})
    classes, losses = rec.meta("num_classes"), rec.series("train/loss")
    first = next((v for s, v in losses if s < p["steps"]), None)
    if classes > 1 and first is not None and not (first <= p["loss_ratio"] * math.log(classes)):
        return Verdict(ISSUES, f"the first training loss {_g(first)} is over {p['loss_ratio']:g}x a uniform guess's "
                       f"{_g(math.log(classes))} (ln {classes:.0f} classes)", losses[0][0], {"first_loss": first, "classes": classes})
    if not steps:
        return Verdict(NO_ISSUES, f"no activation inputs recorded at steps < {p['steps']} (the job started at step "
                       f"{rec.meta('start_step'):.0f}): nothing to judge")
    return Verdict(NO_ISSUES, f"random initialisation looks sound over {len(steps)} steps: variance ratio across layers "
                   f"{worst['ratio']:.3g}x (limit {p['threshold']:g}x), narrowest range {worst['range']:.3g}",
                   steps[-1], {"variance_ratio": worst["ratio"], "narrowest_range": worst["range"], "first_loss": first})


RULE_FUNCTIONS: dict[str, Callable[[Recording, dict], Verdict]] = {
    "LossNotDecreasing": loss_not_decreasing, "VanishingGradient": vanishing_gradient, "Overfit": overfit,
    "Overtraining": overtraining, "PoorWeightInitialization": poor_weight_initialization,
}


def verdict_line(name: str, verdict: dict) -> str:
    """``Name: Status — reason`` (one line, for the run summary, describe and the report)."""
    return f"{name}: {verdict.get('status')} — {verdict.get('reason')}"


def verdict_lines(insights: dict) -> list[str]:
    """One line per rule, then per profiler finding, of a ``training_insights.json`` dict."""
    return [verdict_line(name, verdict) for section in ("rules", "profiler")
            for name, verdict in (insights.get(section) or {}).items()]
