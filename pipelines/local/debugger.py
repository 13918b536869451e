"""SageMaker Debugger built-in rules, evaluated locally on a job's smdebug output.

The rule code of SageMaker's rule containers is not public, so the five rules the pipeline
attaches are written here against smdebug's own ``Rule``/trial API, with the parameters,
defaults and meanings AWS documents for the built-in rules ("List of Debugger built-in
rules"). Parameters come from the definition's ``RuleParameters`` (strings, as SageMaker
passes them). Each rule ends as SageMaker reports it in ``DebugRuleEvaluationStatuses``:

- ``IssuesFound``: the condition held; ``StatusDetails`` and ``Finding`` name the step and
  the values that triggered it;
- ``NoIssuesFound``: every saved step was checked and none triggered;
- ``Error``: the rule could not be evaluated (no Debugger output, no tensors it needs, an
  unknown rule or parameter); ``StatusDetails`` says why. It is never reported as passed.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from pipelines.common import utc_now_iso

_LOGGER_NAMES = ("smdebug",)


class RuleError(RuntimeError):
    """A rule that cannot be evaluated; the message becomes ``StatusDetails``."""


# -- parameters -------------------------------------------------------------------
def _to_bool(value: str) -> bool:
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _to_list(value: str) -> list[str]:
    return [part.strip() for part in str(value).split(",") if part.strip()]


def _to_mode(value: str) -> Optional[str]:
    text = str(value).strip().upper()
    if text in ("", "NONE"):
        return None
    if text not in ("TRAIN", "EVAL", "PREDICT", "GLOBAL"):
        raise ValueError(f"mode must be TRAIN, EVAL, PREDICT or GLOBAL, got {value!r}")
    return text


# name: (type converter, default)
ParamSpec = dict[str, tuple[Callable[[str], Any], Any]]
_TENSOR_SELECTION: ParamSpec = {"collection_names": (_to_list, []), "tensor_regex": (_to_list, [])}
# Keys SageMaker puts in RuleParameters that are not rule parameters.
_RESERVED = {"rule_to_invoke", "start_step", "end_step"}


def parse_parameters(rule: str, spec: ParamSpec, given: dict) -> dict:
    """Typed parameters: documented defaults overridden by ``RuleParameters``."""
    params = {name: default for name, (_, default) in spec.items()}
    for name, raw in (given or {}).items():
        if name in _RESERVED:
            continue
        if name not in spec:
            raise RuleError(f"{rule}: unknown rule parameter {name!r} (known: {', '.join(sorted(spec))})")
        convert = spec[name][0]
        try:
            params[name] = convert(raw)
        except ValueError as exc:
            raise RuleError(f"{rule}: parameter {name}={raw!r}: {exc}") from None
    return params


# -- trial helpers ------------------------------------------------------------------
def _modes() -> Any:
    from smdebug import modes

    return modes


def _mode_name(mode: Any) -> str:
    return str(getattr(mode, "name", mode))


def select_tensors(trial: Any, collections: list[str], regex: list[str]) -> list[str]:
    """Tensor names in ``collections`` plus those matching ``regex`` (sorted, unique)."""
    names: set[str] = set()
    known = trial.collections()
    for collection in collections:
        if collection in known:
            names.update(trial.tensor_names(collection=collection))
    if regex:
        names.update(trial.tensor_names(regex=regex))
    return sorted(names)


def _scalar(value: Any) -> float:
    return float(np.asarray(value, dtype=np.float64).mean())


def loss_series(trial: Any, name: str) -> dict[str, list[tuple[int, int, float]]]:
    """``{mode: [(global step, mode step, value)]}`` of a scalar tensor, in step order."""
    modes = _modes()
    tensor = trial.tensor(name)
    series: dict[str, list[tuple[int, int, float]]] = {}
    for mode in (modes.TRAIN, modes.EVAL, modes.PREDICT):
        for mode_step in tensor.steps(mode=mode):
            global_step = trial.global_step(mode, mode_step)
            series.setdefault(_mode_name(mode), []).append(
                (int(global_step), int(mode_step), _scalar(tensor.value(mode_step, mode=mode))))
    return series


# -- rules --------------------------------------------------------------------------
def _rule_base() -> type:
    from smdebug.rules.rule import Rule

    return Rule


@dataclass
class Finding:
    """What made a rule trigger."""

    step: int
    message: str
    values: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"Step": self.step, "Message": self.message, "Values": self.values}


def make_rule(name: str, trial: Any, given: dict) -> Any:
    """An smdebug ``Rule`` instance of built-in rule ``name`` with its parameters."""
    if name not in RULE_SPECS:
        raise RuleError(f"rule {name!r} has no local implementation (local rules: {', '.join(sorted(RULE_SPECS))})")
    spec, factory = RULE_SPECS[name]
    return factory()(trial, parse_parameters(name, spec, given))


def _loss_not_decreasing() -> type:
    Rule = _rule_base()

    class LossNotDecreasing(Rule):
        """The loss of each mode, checked every ``num_steps`` (against the last checked step at
        least ``num_steps`` before): it must have fallen by at least ``diff_percent`` % since
        that check, and never be more than ``increase_threshold_percent`` % above the lowest
        checked value; a non-finite loss triggers at once."""

        def __init__(self, base_trial: Any, p: dict):
            super().__init__(base_trial, action_str="")
            self.p = p
            collections = list(p["collection_names"]) + (["losses"] if p["use_losses_collection"] else [])
            self.tensors = select_tensors(base_trial, collections, p["tensor_regex"])
            if not self.tensors:
                raise RuleError("LossNotDecreasing: no loss tensors saved (collection 'losses' or the "
                                "collection_names / tensor_regex parameters match nothing)")
            self.last: dict[tuple[str, str], tuple[int, float]] = {}
            self.lowest: dict[tuple[str, str], float] = {}
            self.finding: Optional[Finding] = None
            self.checks = 0

        def invoke_at_step(self, step: int) -> bool:
            mode, mode_step = self.base_trial.mode_modestep(step)
            mode_name = _mode_name(mode)
            if self.p["mode"] and mode_name != self.p["mode"]:
                return False
            for name in self.tensors:
                tensor = self.base_trial.tensor(name)
                if mode_step not in tensor.steps(mode=mode):
                    continue
                value = _scalar(tensor.value(mode_step, mode=mode))
                key = (name, mode_name)
                if not math.isfinite(value):
                    self.finding = Finding(step, f"{name} ({mode_name}) is {value} at step {mode_step}",
                                           {"tensor": name, "mode": mode_name, "mode_step": mode_step, "loss": value})
                    return True
                last = self.last.get(key)
                if last is None:
                    self.last[key] = (mode_step, value)
                    self.lowest[key] = value
                    continue
                if mode_step - last[0] < self.p["num_steps"]:
                    continue
                self.last[key] = (mode_step, value)
                lowest = self.lowest[key] = min(self.lowest[key], value)
                self.checks += 1
                decrease = (last[1] - value) / abs(last[1]) * 100 if last[1] else 0.0
                values = {"tensor": name, "mode": mode_name, "mode_step": mode_step, "loss": value,
                          "previous_step": last[0], "previous_loss": last[1], "decrease_percent": round(decrease, 4)}
                if decrease < self.p["diff_percent"]:
                    self.finding = Finding(step, f"{name} ({mode_name}) fell {decrease:.2f}% from step {last[0]} "
                                           f"({last[1]:.4g}) to step {mode_step} ({value:.4g}); needs "
                                           f">= {self.p['diff_percent']}% every {self.p['num_steps']} steps", values)
                    return True
                increase = (value - lowest) / abs(lowest) * 100 if lowest else 0.0
                if increase > self.p["increase_threshold_percent"]:
                    self.finding = Finding(step, f"{name} ({mode_name}) is {increase:.1f}% above its lowest value "
                                           f"{lowest:.4g} at step {mode_step}", {**values, "lowest": lowest})
                    return True
            return False

    return LossNotDecreasing


def _vanishing_gradient() -> type:
    Rule = _rule_base()

    class VanishingGradient(Rule):
        """Triggers when the mean absolute value of a gradient tensor falls below ``threshold``."""

        def __init__(self, base_trial: Any, p: dict):
            super().__init__(base_trial, action_str="")
            self.p = p
            self.tensors = select_tensors(base_trial, ["gradients"], [])
            if not self.tensors:
                raise RuleError("VanishingGradient: no gradient tensors saved (collection 'gradients' is not "
                                "in the DebugHookConfig, or the job saved no step)")
            self.finding: Optional[Finding] = None
            self.smallest = (math.inf, "", -1)
            self.checks = 0

        def invoke_at_step(self, step: int) -> bool:
            for name in self.tensors:
                tensor = self.base_trial.tensor(name)
                if step not in tensor.steps():
                    continue
                mean_abs = float(tensor.reduction_value(step, "mean", abs=True))
                self.checks += 1
                if mean_abs < self.smallest[0]:
                    self.smallest = (mean_abs, name, step)
                if mean_abs < self.p["threshold"]:
                    self.finding = Finding(step, f"mean |{name}| = {mean_abs:.3g} < threshold {self.p['threshold']:g} "
                                           f"at step {step}", {"tensor": name, "mean_abs": mean_abs,
                                                                "threshold": self.p["threshold"]})
                    return True
            return False

    return VanishingGradient


class _LossPairs:
    """Training and validation loss values in step order (shared by Overfit/Overtraining)."""

    def __init__(self, trial: Any, p: dict, rule: str):
        collections = ["losses"] if p.get("use_losses_collection", True) else []
        collections += list(p.get("collection_names") or [])
        self.tensors = select_tensors(trial, collections, p.get("tensor_regex") or [])
        if not self.tensors:
            raise RuleError(f"{rule}: no loss tensors saved (collection 'losses' is empty)")
        series = {name: loss_series(trial, name) for name in self.tensors}
        if not any(s.get("EVAL") for s in series.values()):
            raise RuleError(f"{rule}: no validation (EVAL mode) loss was saved: the training script must "
                            "set the hook to EVAL mode while validating, and the losses save_interval must "
                            "reach an EVAL step")
        if not any(s.get("TRAIN") for s in series.values()):
            raise RuleError(f"{rule}: no training (TRAIN mode) loss was saved")
        self.series = series


def _overfit() -> type:
    Rule = _rule_base()

    class Overfit(Rule):
        """(mean validation loss - mean training loss) / mean training loss above
        ``ratio_threshold`` at ``patience`` consecutive validations from ``start_step``."""

        def __init__(self, base_trial: Any, p: dict):
            super().__init__(base_trial, action_str="")
            self.p = p
            self.losses = _LossPairs(base_trial, p, "Overfit")
            self.train: list[float] = []
            self.valid: list[float] = []
            self.exceeded = 0
            self.finding: Optional[Finding] = None
            self.checks = 0

        def invoke_at_step(self, step: int) -> bool:
            if step < self.p["start_step"]:
                return False
            for name, series in self.losses.series.items():
                for mode, points in series.items():
                    for global_step, mode_step, value in points:
                        if global_step != step:
                            continue
                        if mode == "TRAIN":
                            if self.valid:  # a new training stretch after a validation
                                self.valid, self.train = [], []
                            self.train.append(value)
                        elif mode == "EVAL" and self.train:
                            self.valid.append(value)
                            return self._check(step, name)
            return False

        def _check(self, step: int, name: str) -> bool:
            self.checks += 1
            mean_train, mean_valid = float(np.mean(self.train)), float(np.mean(self.valid))
            ratio = (mean_valid - mean_train) / abs(mean_train) if mean_train else math.inf
            self.exceeded = self.exceeded + 1 if ratio > self.p["ratio_threshold"] else 0
            if self.exceeded >= self.p["patience"]:
                self.finding = Finding(step, f"validation loss {mean_valid:.4g} is {ratio:.1%} above training loss "
                                       f"{mean_train:.4g} (threshold {self.p['ratio_threshold']:.0%}) for "
                                       f"{self.exceeded} validation(s)", {"tensor": name, "mean_valid_loss": mean_valid,
                                       "mean_train_loss": mean_train, "ratio": ratio})
                return True
            return False

    return Overfit


def _overtraining() -> type:
    Rule = _rule_base()

    class Overtraining(Rule):
        """Training loss not improved by ``delta`` in ``patience_train`` saved steps, or
        validation loss not improved by ``delta`` in ``patience_validation`` saved steps."""

        def __init__(self, base_trial: Any, p: dict):
            super().__init__(base_trial, action_str="")
            self.p = p
            self.losses = _LossPairs(base_trial, p, "Overtraining")
            self.best: dict[tuple[str, str], tuple[int, float]] = {}
            self.stale: dict[tuple[str, str], int] = {}
            self.finding: Optional[Finding] = None
            self.checks = 0

        def invoke_at_step(self, step: int) -> bool:
            patience = {"TRAIN": self.p["patience_train"], "EVAL": self.p["patience_validation"]}
            for name, series in self.losses.series.items():
                for mode, points in series.items():
                    if mode not in patience:
                        continue
                    for global_step, mode_step, value in points:
                        if global_step != step:
                            continue
                        self.checks += 1
                        key = (name, mode)
                        best = self.best.get(key)
                        if best is None or value < best[1] - self.p["delta"]:
                            self.best[key] = (mode_step, value)
                            self.stale[key] = 0
                            continue
                        self.stale[key] = self.stale.get(key, 0) + 1
                        if self.stale[key] >= patience[mode]:
                            what = "training" if mode == "TRAIN" else "validation"
                            self.finding = Finding(step, f"{what} loss has not improved by {self.p['delta']} on "
                                                   f"{best[1]:.4g} (step {best[0]}) in {self.stale[key]} saved steps "
                                                   f"(patience {patience[mode]})", {"tensor": name, "mode": mode,
                                                   "best_step": best[0], "best_loss": best[1], "mode_step": mode_step,
                                                   "loss": value})
                            return True
            return False

    return Overtraining


def _poor_weight_initialization() -> type:
    Rule = _rule_base()

    class PoorWeightInitialization(Rule):
        """In the first ``steps`` steps: the ratio of the largest to the smallest variance of
        the activation inputs across layers above ``threshold``, an activation input whose
        5th-95th percentile range is below ``distribution_range``, or a loss that does not
        fall for ``patience`` steps."""

        def __init__(self, base_trial: Any, p: dict):
            super().__init__(base_trial, action_str="")
            self.p = p
            self.tensors = select_tensors(base_trial, [], [p["activation_inputs_regex"]])
            if not self.tensors:
                raise RuleError(f"PoorWeightInitialization: no saved tensor matches activation_inputs_regex "
                                f"{p['activation_inputs_regex']!r}: the hook must save the inputs of the "
                                "activation layers (a collection with a matching include_regex)")
            self.loss_tensors = select_tensors(base_trial, ["losses"], [])
            self.best_loss: Optional[tuple[int, float]] = None
            self.finding: Optional[Finding] = None
            self.checks = 0

        def invoke_at_step(self, step: int) -> bool:
            if step >= self.p["steps"]:
                return False
            variances = {}
            for name in self.tensors:
                tensor = self.base_trial.tensor(name)
                if step not in tensor.steps():
                    continue
                value = np.asarray(tensor.value(step), dtype=np.float64)
                variances[name] = float(value.var())
                low, high = np.percentile(value, [5, 95])
                if high - low < self.p["distribution_range"]:
                    self.finding = Finding(step, f"{name}: 5th-95th percentile range {high - low:.3g} < "
                                           f"distribution_range {self.p['distribution_range']:g}",
                                           {"tensor": name, "p5": float(low), "p95": float(high)})
                    return True
            if variances:
                self.checks += 1
                smallest = min(variances.values())
                ratio = max(variances.values()) / smallest if smallest > 0 else math.inf
                if ratio > self.p["threshold"]:
                    self.finding = Finding(step, f"activation input variance varies {ratio:.3g}x across layers "
                                           f"(threshold {self.p['threshold']:g})", {"ratio": ratio,
                                           "max_variance": max(variances.values()), "min_variance": smallest})
                    return True
            return self._loss_stalled(step)

        def _loss_stalled(self, step: int) -> bool:
            for name in self.loss_tensors:
                tensor = self.base_trial.tensor(name)
                if step not in tensor.steps():
                    continue
                value = _scalar(tensor.value(step))
                if self.best_loss is None or value < self.best_loss[1]:
                    self.best_loss = (step, value)
                elif step - self.best_loss[0] >= self.p["patience"]:
                    self.finding = Finding(step, f"loss has not fallen below {self.best_loss[1]:.4g} (step "
                                           f"{self.best_loss[0]}) for {step - self.best_loss[0]} steps",
                                           {"tensor": name, "loss": value, "best_loss": self.best_loss[1]})
                    return True
            return False

    return PoorWeightInitialization


_LOSS_SELECTION: ParamSpec = {**_TENSOR_SELECTION, "use_losses_collection": (_to_bool, True)}
RULE_SPECS: dict[str, tuple[ParamSpec, Callable[[], type]]] = {
    "LossNotDecreasing": ({**_LOSS_SELECTION, "num_steps": (int, 10), "diff_percent": (float, 0.1),
                           "increase_threshold_percent": (float, 5.0), "mode": (_to_mode, None)}, _loss_not_decreasing),
    "VanishingGradient": ({"threshold": (float, 0.0000001)}, _vanishing_gradient),
    "Overfit": ({**_LOSS_SELECTION, "start_step": (int, 0), "patience": (int, 1), "ratio_threshold": (float, 0.1)},
                _overfit),
    "Overtraining": ({**_LOSS_SELECTION, "patience_train": (int, 5), "patience_validation": (int, 10),
                      "delta": (float, 0.01)}, _overtraining),
    "PoorWeightInitialization": ({"activation_inputs_regex": (str, ".*relu_input"), "threshold": (float, 10.0),
                                  "distribution_range": (float, 0.001), "patience": (int, 5), "steps": (int, 10)},
                                 _poor_weight_initialization),
}


# -- evaluation -------------------------------------------------------------------
@dataclass
class RuleResult:
    """One rule's verdict, shaped as a ``DebugRuleEvaluationStatuses`` entry."""

    name: str
    status: str
    details: str
    finding: Optional[Finding] = None
    seconds: float = 0.0
    arn: Optional[str] = None

    def as_status(self) -> dict:
        status = {
            "RuleConfigurationName": self.name,
            "RuleEvaluationStatus": self.status,
            "StatusDetails": self.details,
            "LastModifiedTime": utc_now_iso(),
        }
        if self.arn:
            status["RuleEvaluationJobArn"] = self.arn
        if self.finding is not None:
            status["Finding"] = self.finding.as_dict()
        return status


def rule_name_of(config: dict) -> str:
    """The built-in rule a ``DebugRuleConfigurations`` entry invokes."""
    return str((config.get("RuleParameters") or {}).get("rule_to_invoke") or config.get("RuleConfigurationName"))


def _quiet_smdebug() -> None:
    """smdebug logs every trial refresh at INFO; keep warnings (e.g. an empty collection)."""
    os.environ.setdefault("SMDEBUG_LOG_LEVEL", "warning")
    for name in _LOGGER_NAMES:
        logging.getLogger(name).setLevel(logging.WARNING)


def open_trial(tensors_dir: str | Path) -> Any:
    """An smdebug trial over a finished job's Debugger output directory."""
    path = Path(tensors_dir)
    if not path.is_dir() or not any(path.glob("index/*/*.json")):
        raise RuleError(f"no Debugger output at {path}: the job saved no tensors (did it create the smdebug hook?)")
    (path / "training_job_end.ts").touch()  # the job is over: trials must not wait for more steps
    _quiet_smdebug()
    from smdebug.trials import create_trial

    return create_trial(str(path))


def evaluate_rule(config: dict, trial: Any, arn: Optional[str] = None) -> RuleResult:
    """Run one ``DebugRuleConfigurations`` entry over every saved step of ``trial``."""
    from smdebug.exceptions import RuleEvaluationConditionMet
    from smdebug.rules.rule_invoker import invoke_rule

    name = str(config.get("RuleConfigurationName") or rule_name_of(config))
    started = time.perf_counter()
    params = dict(config.get("RuleParameters") or {})
    try:
        rule = make_rule(rule_name_of(config), trial, params)
        steps = trial.steps()
        if not steps:
            raise RuleError("the Debugger output holds no saved step")
        start = int(params.get("start_step", 0) or 0)
        end = int(params["end_step"]) if params.get("end_step") else max(steps) + 1
        try:
            invoke_rule(rule, start_step=start, end_step=end, raise_eval_cond=True)
        except RuleEvaluationConditionMet as met:
            finding = rule.finding or Finding(int(met.step), "condition met")
            return RuleResult(name, "IssuesFound", f"IssuesFound at step {finding.step}: {finding.message}",
                              finding, time.perf_counter() - started, arn)
        if not rule.checks:
            raise RuleError(f"no step could be checked in steps {start}..{end - 1} (too few saved steps "
                            "for the rule's parameters)")
        details = f"NoIssuesFound: {rule.checks} check(s) over steps {start}..{end - 1}"
        if name == "VanishingGradient" or getattr(rule, "smallest", None):
            smallest = getattr(rule, "smallest", None)
            if smallest and math.isfinite(smallest[0]):
                details += f"; smallest mean |gradient| {smallest[0]:.3g} ({smallest[1]}, step {smallest[2]})"
        return RuleResult(name, "NoIssuesFound", details, None, time.perf_counter() - started, arn)
    except RuleError as exc:
        return RuleResult(name, "Error", str(exc), None, time.perf_counter() - started, arn)
    except Exception as exc:  # smdebug failures: reported, never a pass
        return RuleResult(name, "Error", f"{type(exc).__name__}: {exc}", None, time.perf_counter() - started, arn)


def evaluate_rules(configs: list[dict], tensors_dir: str | Path,
                   arn_for: Optional[Callable[[str], str]] = None) -> list[dict]:
    """``DebugRuleEvaluationStatuses`` for ``configs`` over the Debugger output in ``tensors_dir``."""
    try:
        trial = open_trial(tensors_dir)
    except Exception as exc:  # no output: every rule is an Error, with the reason
        reason = str(exc) if isinstance(exc, RuleError) else f"{type(exc).__name__}: {exc}"
        return [RuleResult(str(c.get("RuleConfigurationName")), "Error", reason,
                           arn=arn_for(str(c.get("RuleConfigurationName"))) if arn_for else None).as_status()
                for c in configs]
    results = []
    for config in configs:
        arn = arn_for(str(config.get("RuleConfigurationName"))) if arn_for else None
        results.append(evaluate_rule(config, trial, arn).as_status())
    return results
