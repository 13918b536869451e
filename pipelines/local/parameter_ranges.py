"""Parameter values the definition cannot run with, refused before anything runs.

Two sources, both read from the definition JSON (the engine knows nothing else):

- **SageMaker API limits** on request fields that a step takes straight from a parameter
  (``{"Get": "Parameters.X"}``): a tuning job's ``MaxNumberOfTrainingJobs`` and
  ``MaxParallelTrainingJobs`` >= 1, a tuner range's ``MinValue`` <= ``MaxValue`` (and > 0
  on a logarithmic scale), a job's ``InstanceCount`` >= 1. SageMaker would refuse such a
  request when the step starts; here the parameter is named before the first step.
- **Guards in the definition**: a Condition step whose conditions read only parameters and
  whose ``ElseSteps`` hold a Fail step (the pipelines' ``CheckParameters``). Its conditions
  are evaluated up front, and each that does not hold is reported with the parameter, its
  value and the bounds the guard sets for it. (On AWS the same guard fails the execution
  before its first job.)
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional

from pipelines.local.expressions import Context, ExpressionError, evaluate_condition

PARAMETER_PREFIX = "Parameters."
_SYMBOLS = {"GreaterThan": ">", "GreaterThanOrEqualTo": ">=", "LessThan": "<", "LessThanOrEqualTo": "<=",
            "Equals": "=="}
_MIRRORED = {">": "<", ">=": "<=", "<": ">", "<=": ">=", "==": "=="}


class ParameterRangeError(ValueError):
    """Parameter values outside what the definition allows; the message names each one."""


def _parameter(value: Any) -> Optional[str]:
    """``X`` when ``value`` is ``{"Get": "Parameters.X"}``, or that as text (a ``Std:Join`` of
    it alone: how the SDK writes ``parameter.to_string()``, e.g. in a tuner's range)."""
    if isinstance(value, dict) and set(value) == {"Std:Join"}:
        parts = (value["Std:Join"] or {}).get("Values") if isinstance(value["Std:Join"], dict) else None
        return _parameter(parts[0]) if isinstance(parts, list) and len(parts) == 1 else None
    if isinstance(value, dict) and set(value) == {"Get"} and str(value["Get"]).startswith(PARAMETER_PREFIX):
        return str(value["Get"])[len(PARAMETER_PREFIX):]
    return None


def _reads_only_parameters(value: Any) -> bool:
    if isinstance(value, dict):
        if set(value) == {"Get"}:
            return str(value["Get"]).startswith(PARAMETER_PREFIX)
        return all(_reads_only_parameters(v) for v in value.values())
    if isinstance(value, list):
        return all(_reads_only_parameters(v) for v in value)
    return True


# -- SageMaker API limits --------------------------------------------------------------
def _number(value: Any) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _api_fields(step: dict) -> Iterator[tuple[str, Any, str]]:
    """(where, raw value, SageMaker field) of the request fields with a lower bound of 1."""
    args = step.get("Arguments") or {}
    name = step.get("Name")
    if step.get("Type") == "Tuning":
        limits = (args.get("HyperParameterTuningJobConfig") or {}).get("ResourceLimits") or {}
        for field in ("MaxNumberOfTrainingJobs", "MaxParallelTrainingJobs"):
            if field in limits:
                yield f"step {name}", limits[field], field
    resources = args.get("ResourceConfig") or (args.get("ProcessingResources") or {}).get("ClusterConfig") or {}
    if "InstanceCount" in resources:
        yield f"step {name}", resources["InstanceCount"], "InstanceCount"


def _range_problems(step: dict, values: Mapping[str, Any]) -> Iterator[str]:
    """Tuner ranges whose bounds come from parameters: MinValue <= MaxValue, > 0 if logarithmic."""
    config = (step.get("Arguments") or {}).get("HyperParameterTuningJobConfig") or {}
    ranges = config.get("ParameterRanges") or {}
    for kind in ("IntegerParameterRanges", "ContinuousParameterRanges"):
        for item in ranges.get(kind) or []:
            low_name, high_name = _parameter(item.get("MinValue")), _parameter(item.get("MaxValue"))
            if not (low_name or high_name):
                continue
            low = _number(values.get(low_name) if low_name else item.get("MinValue"))
            high = _number(values.get(high_name) if high_name else item.get("MaxValue"))
            low_text = f"{low_name} ({_show(low)})" if low_name else _show(low)
            high_text = f"{high_name} ({_show(high)})" if high_name else _show(high)
            where = f"tuning range {item.get('Name')!r} of step {step.get('Name')}"
            if low is not None and high is not None and low > high:
                yield f"{low_text} must be <= {high_text}: they are the MinValue and MaxValue of the {where}"
            if item.get("ScalingType") == "Logarithmic" and low is not None and low <= 0 and low_name:
                yield f"{low_name} must be > 0 (the {where} is logarithmic), not {_show(low)}"


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def api_problems(steps: list[dict], values: Mapping[str, Any]) -> list[str]:
    """What SageMaker's API would refuse in requests built from these parameter values."""
    problems = []
    for step in steps:
        for where, raw, field in _api_fields(step):
            name = _parameter(raw)
            number = _number(values.get(name)) if name else None
            if name and number is not None and number < 1:
                problems.append(f"{name} must be >= 1 (it is the {field} of {where}), not {_show(values[name])}")
        problems.extend(_range_problems(step, values))
    return problems


# -- guards in the definition -------------------------------------------------------------
def _bounds(conditions: list) -> dict[str, list[str]]:
    """Parameter → the bounds the comparisons of a guard put on it (``>= 0``, ``<= MaxEpochs``)."""
    bounds: dict[str, list[str]] = {}
    for condition in conditions:
        symbol = _SYMBOLS.get(condition.get("Type")) if isinstance(condition, dict) else None
        if symbol is None:
            continue
        left, right = condition.get("LeftValue"), condition.get("RightValue")
        for subject, other, sym in ((left, right, symbol), (right, left, _MIRRORED[symbol])):
            name = _parameter(subject)
            if name:
                other_text = _parameter(other) or _show(other)
                bounds.setdefault(name, []).append(f"{sym} {other_text}")
    return bounds


def _describe(condition: dict, values: Mapping[str, Any], bounds: dict[str, list[str]]) -> str:
    """One failed condition in words: the parameter(s), value(s) and allowed range."""
    names = [n for n in (_parameter(condition.get("LeftValue")), _parameter(condition.get("RightValue"))) if n]
    if not names:
        return f"condition {condition} does not hold"
    subject = names[0]
    got = ", ".join(f"{n}={_show(values.get(n))}" for n in names)
    return f"{subject} must be {' and '.join(bounds.get(subject) or ['valid'])} (got {got})"


def guard_steps(steps: list[dict]) -> Iterator[tuple[dict, dict]]:
    """(condition step, its Fail step) for top-level guards that read only parameters."""
    for step in steps:
        if step.get("Type") != "Condition":
            continue
        args = step.get("Arguments") or {}
        fails = [s for s in args.get("ElseSteps") or [] if s.get("Type") == "Fail"]
        if fails and _reads_only_parameters(args.get("Conditions")):
            yield step, fails[0]


def guard_problems(steps: list[dict], values: Mapping[str, Any]) -> list[str]:
    """Each condition of a parameter guard that these values break, in words."""
    ctx = Context(parameters=values, execution={}, steps={}, property_files={}, read_json=_no_reads)
    problems = []
    for step, _fail in guard_steps(steps):
        conditions = (step.get("Arguments") or {}).get("Conditions") or []
        bounds = _bounds(conditions)
        for index, condition in enumerate(conditions):
            where = f"Steps.{step.get('Name')}.Conditions[{index}]"
            try:
                holds = evaluate_condition(condition, ctx, where)
            except ExpressionError as exc:
                problems.append(str(exc))
                continue
            if not holds:
                problems.append(_describe(condition, values, bounds))
    return problems


def _no_reads(uri: str) -> Any:
    raise ExpressionError(f"a parameter guard cannot read {uri}")


def check_parameter_ranges(definition: dict, values: Mapping[str, Any]) -> None:
    """Raise :class:`ParameterRangeError` naming every parameter value out of its range."""
    steps = [s for s in definition.get("Steps") or [] if isinstance(s, dict)]
    problems = list(dict.fromkeys(api_problems(steps, values) + guard_problems(steps, values)))
    if problems:
        plural = "s" if len(problems) > 1 else ""
        raise ParameterRangeError(f"parameter value{plural} out of range: " + "; ".join(problems))

