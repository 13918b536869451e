"""Resolution of SageMaker pipeline definition expressions, as pure functions.

A definition's values are plain JSON except for these constructs, which are resolved
against an :class:`Context` (parameters, execution variables, the Describe-shaped
properties of finished steps, and a reader for JSON objects in the object store):

- ``{"Get": "Parameters.X"}``, ``{"Get": "Execution.PipelineExecutionId"}`` (and
  ``PipelineExecutionArn``, ``StartDateTime``, ``CurrentDateTime``, ``PipelineName``,
  ``PipelineArn``), ``{"Get": "Steps.S.a.b[0].c['key']"}``,
  ``{"Get": "Steps.S.PropertyFiles.Name"}`` (the parsed property file);
- ``{"Std:Join": {"On": sep, "Values": [...]}}``;
- ``{"Std:JsonGet": {"PropertyFile": {"Get": ...} | "S3Uri": ..., "Path": "a.b[0].c"}}``;
- conditions ``{"Type": "Equals" | "GreaterThan" | "GreaterThanOrEqualTo" | "LessThan" |
  "LessThanOrEqualTo" | "In" | "Not" | "Or", ...}``.

Anything else that looks like a construct (a one-key object whose key has a ``:``, an
unknown ``Get`` root, an unknown condition type) raises :class:`ExpressionError` naming it
and where it occurs.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

EXECUTION_VARIABLES = (
    "PipelineExecutionId",
    "PipelineExecutionArn",
    "StartDateTime",
    "CurrentDateTime",
    "PipelineName",
    "PipelineArn",
)
COMPARISONS = ("Equals", "GreaterThan", "GreaterThanOrEqualTo", "LessThan", "LessThanOrEqualTo")
CONDITION_TYPES = COMPARISONS + ("In", "Not", "Or")
# In a list addressed by a string key (``Outputs['train']``) the item whose name is the key.
_NAME_FIELDS = ("OutputName", "InputName", "ChannelName", "MetricName", "Name", "PropertyFileName")
_TOKEN = re.compile(r"""\.?([A-Za-z0-9_\-:]+)|\[(-?\d+)\]|\['([^']*)'\]|\["([^"]*)"\]""")


class ExpressionError(ValueError):
    """An expression that cannot be resolved; the message names it and where it occurs."""


def symbolic(name: str) -> str:
    """The placeholder an execution variable resolves to when held symbolic (cache keys)."""
    return "{Execution.%s}" % name


@dataclass
class Context:
    """What expressions resolve against.

    ``steps``: step name → Describe-shaped properties of a finished step.
    ``property_files``: step name → the step's ``PropertyFiles`` list from the definition.
    ``read_json``: reads and parses the JSON object at an ``s3://`` URI.
    ``symbolic_execution``: resolve ``Execution.*`` to placeholders (for cache keys).
    """

    parameters: Mapping[str, Any] = field(default_factory=dict)
    execution: Mapping[str, Any] = field(default_factory=dict)
    steps: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    property_files: Mapping[str, list] = field(default_factory=dict)
    read_json: Optional[Callable[[str], Any]] = None
    symbolic_execution: bool = False
    now: Optional[Callable[[], str]] = None


def parse_path(path: str, where: str = "") -> list:
    """``a.b[0]['k']`` → ``['a', 'b', 0, 'k']`` (ints are list indices)."""
    tokens: list = []
    pos = 0
    while pos < len(path):
        match = _TOKEN.match(path, pos)
        if not match or match.end() == pos:
            raise ExpressionError(f"cannot parse path {path!r} at {path[pos:]!r}{_at(where)}")
        name, index, key1, key2 = match.groups()
        if index is not None:
            tokens.append(int(index))
        else:
            tokens.append(name if name is not None else (key1 if key1 is not None else key2))
        pos = match.end()
    return tokens


def walk(value: Any, tokens: list, what: str, where: str = "") -> Any:
    """Follow ``tokens`` into nested dicts/lists; a string key on a list picks the item
    whose ``OutputName``/``ChannelName``/``Name``... equals it."""
    done = what
    for token in tokens:
        if isinstance(token, int):
            if not isinstance(value, list) or not -len(value) <= token < len(value):
                size = len(value) if isinstance(value, list) else "not a list"
                raise ExpressionError(f"{done}[{token}]: index out of range ({size}){_at(where)}")
            value = value[token]
            done = f"{done}[{token}]"
        elif isinstance(value, dict):
            if token not in value:
                keys = ", ".join(sorted(map(str, value))) or "none"
                raise ExpressionError(f"{done}: no {token!r} (available: {keys}){_at(where)}")
            value = value[token]
            done = f"{done}.{token}"
        elif isinstance(value, list):
            found = [item for item in value if isinstance(item, dict)
                     and any(item.get(f) == token for f in _NAME_FIELDS)]
            if not found:
                raise ExpressionError(f"{done}: no item named {token!r}{_at(where)}")
            value = found[0]
            done = f"{done}['{token}']"
        else:
            raise ExpressionError(f"{done}: cannot take {token!r} of a {type(value).__name__}{_at(where)}")
    return value


def _at(where: str) -> str:
    return f" (at {where})" if where else ""


def resolve(value: Any, ctx: Context, where: str = "") -> Any:
    """Resolve every expression inside ``value`` (any JSON value); plain data is copied."""
    if isinstance(value, list):
        return [resolve(item, ctx, f"{where}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (key, arg), = value.items()
        if key == "Get":
            return get(arg, ctx, where)
        if key == "Std:Join":
            return join(arg, ctx, where)
        if key == "Std:JsonGet":
            return json_get(arg, ctx, where)
        if ":" in key:
            raise ExpressionError(f"unknown expression {key!r}{_at(where)}")
    return {k: resolve(v, ctx, f"{where}.{k}" if where else k) for k, v in value.items()}


def get(path: Any, ctx: Context, where: str = "") -> Any:
    """``Get``: a parameter, an execution variable, a step property or a property file."""
    if not isinstance(path, str):
        raise ExpressionError(f"Get expects a string path, got {path!r}{_at(where)}")
    root, _, rest = path.partition(".")
    if root == "Parameters":
        if rest not in ctx.parameters:
            raise ExpressionError(f"Get {path!r}: no parameter {rest!r} "
                                  f"(defined: {', '.join(ctx.parameters) or 'none'}){_at(where)}")
        return ctx.parameters[rest]
    if root == "Execution":
        return _execution_variable(rest, ctx, path, where)
    if root == "Steps":
        return _step_property(rest, ctx, path, where)
    raise ExpressionError(f"unknown Get root {root!r} in {path!r}{_at(where)}")


def _execution_variable(name: str, ctx: Context, path: str, where: str) -> Any:
    if name not in EXECUTION_VARIABLES:
        raise ExpressionError(f"unknown execution variable {path!r} "
                              f"(known: {', '.join(EXECUTION_VARIABLES)}){_at(where)}")
    if ctx.symbolic_execution:
        return symbolic(name)
    if name == "CurrentDateTime" and ctx.now is not None:
        return ctx.now()
    if name not in ctx.execution:
        raise ExpressionError(f"execution variable {path!r} is not set{_at(where)}")
    return ctx.execution[name]


def _step_property(rest: str, ctx: Context, path: str, where: str) -> Any:
    tokens = parse_path(rest, where)
    if not tokens or not isinstance(tokens[0], str):
        raise ExpressionError(f"Get {path!r}: no step name{_at(where)}")
    step = tokens[0]
    if len(tokens) >= 3 and tokens[1] == "PropertyFiles":
        return walk(read_property_file(step, tokens[2], ctx, where), tokens[3:], f"Steps.{step}.PropertyFiles.{tokens[2]}", where)
    if step not in ctx.steps:
        raise ExpressionError(f"Get {path!r}: step {step!r} has no properties (not run yet, "
                              f"or not run in this execution){_at(where)}")
    return walk(ctx.steps[step], tokens[1:], f"Steps.{step}", where)


def property_file_uri(step: str, name: str, ctx: Context, where: str = "") -> str:
    """URI of property file ``name`` of ``step``: its output's S3 URI + ``FilePath``."""
    files = {f.get("PropertyFileName"): f for f in ctx.property_files.get(step, [])}
    if name not in files:
        raise ExpressionError(f"step {step!r} has no property file {name!r} "
                              f"(declared: {', '.join(map(str, files)) or 'none'}){_at(where)}")
    if step not in ctx.steps:
        raise ExpressionError(f"property file {name!r}: step {step!r} has not run{_at(where)}")
    spec = files[name]
    outputs = walk(ctx.steps[step], ["ProcessingOutputConfig", "Outputs"], f"Steps.{step}", where)
    output = walk(outputs, [spec["OutputName"]], f"Steps.{step}.ProcessingOutputConfig.Outputs", where)
    base = walk(output, ["S3Output", "S3Uri"], f"output {spec['OutputName']!r}", where)
    return f"{str(base).rstrip('/')}/{str(spec['FilePath']).lstrip('/')}"


def read_property_file(step: str, name: str, ctx: Context, where: str = "") -> Any:
    """The parsed JSON of property file ``name`` of ``step``."""
    uri = property_file_uri(step, name, ctx, where)
    return _read_json(uri, ctx, where)


def _read_json(uri: str, ctx: Context, where: str) -> Any:
    if ctx.read_json is None:
        raise ExpressionError(f"cannot read {uri}: no object store{_at(where)}")
    try:
        return ctx.read_json(uri)
    except (OSError, ValueError) as exc:
        raise ExpressionError(f"cannot read JSON {uri}: {exc}{_at(where)}") from exc


def to_text(value: Any) -> str:
    """A resolved value as ``Std:Join`` prints it (booleans lowercase, like SageMaker)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def join(arg: Any, ctx: Context, where: str = "") -> str:
    """``Std:Join``: the resolved ``Values`` as text joined with ``On``."""
    if not isinstance(arg, dict) or not isinstance(arg.get("Values"), list):
        raise ExpressionError(f"Std:Join needs On and a Values list, got {arg!r}{_at(where)}")
    values = resolve(arg["Values"], ctx, f"{where}.Std:Join.Values")
    return str(arg.get("On", "")).join(to_text(v) for v in values)


def json_get(arg: Any, ctx: Context, where: str = "") -> Any:
    """``Std:JsonGet``: ``Path`` inside a property file or the JSON object at ``S3Uri``."""
    if not isinstance(arg, dict) or "Path" not in arg:
        raise ExpressionError(f"Std:JsonGet needs a Path, got {arg!r}{_at(where)}")
    here = f"{where}.Std:JsonGet"
    if "PropertyFile" in arg:
        ref = arg["PropertyFile"]
        if not (isinstance(ref, dict) and isinstance(ref.get("Get"), str)):
            raise ExpressionError(f"Std:JsonGet PropertyFile must be a Get, got {ref!r}{_at(here)}")
        tokens = parse_path(ref["Get"], here)
        if len(tokens) != 4 or tokens[0] != "Steps" or tokens[2] != "PropertyFiles":
            raise ExpressionError(f"Std:JsonGet PropertyFile {ref['Get']!r} is not "
                                  f"Steps.<step>.PropertyFiles.<name>{_at(here)}")
        document, what = read_property_file(tokens[1], tokens[3], ctx, here), ref["Get"]
    elif "S3Uri" in arg:
        uri = resolve(arg["S3Uri"], ctx, f"{here}.S3Uri")
        document, what = _read_json(str(uri), ctx, here), str(uri)
    else:
        raise ExpressionError(f"Std:JsonGet needs PropertyFile or S3Uri{_at(here)}")
    return walk(document, parse_path(str(arg["Path"]), here), what, here)


def as_number(value: Any) -> Optional[float]:
    """``value`` as a float (numbers, numeric strings), else None; booleans are not numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _equal(left: Any, right: Any) -> bool:
    ln, rn = as_number(left), as_number(right)
    if ln is not None and rn is not None and not (isinstance(left, str) and isinstance(right, str)):
        return ln == rn
    if isinstance(left, bool) or isinstance(right, bool):
        return to_text(left) == to_text(right)
    return left == right


def _compare(kind: str, left: Any, right: Any, where: str) -> bool:
    if kind == "Equals":
        return _equal(left, right)
    ln, rn = as_number(left), as_number(right)
    if ln is None or rn is None:
        if isinstance(left, str) and isinstance(right, str):
            ln, rn = left, right  # type: ignore[assignment]
        else:
            raise ExpressionError(f"{kind}: cannot compare {left!r} with {right!r}{_at(where)}")
    return {
        "GreaterThan": ln > rn,
        "GreaterThanOrEqualTo": ln >= rn,
        "LessThan": ln < rn,
        "LessThanOrEqualTo": ln <= rn,
    }[kind]


def evaluate_condition(condition: Any, ctx: Context, where: str = "") -> bool:
    """Evaluate one condition of a Condition step's ``Conditions`` list."""
    if not isinstance(condition, dict) or "Type" not in condition:
        raise ExpressionError(f"not a condition: {condition!r}{_at(where)}")
    kind = condition["Type"]
    here = f"{where}<{kind}>"
    if kind in COMPARISONS:
        left = resolve(condition.get("LeftValue"), ctx, f"{here}.LeftValue")
        right = resolve(condition.get("RightValue"), ctx, f"{here}.RightValue")
        return _compare(kind, left, right, here)
    if kind == "In":
        query = resolve(condition.get("QueryValue"), ctx, f"{here}.QueryValue")
        values = resolve(condition.get("Values", []), ctx, f"{here}.Values")
        return any(_equal(query, v) for v in values)
    if kind == "Not":
        return not evaluate_condition(condition.get("Condition"), ctx, f"{here}.Condition")
    if kind == "Or":
        return any(evaluate_condition(c, ctx, f"{here}.Conditions[{i}]")
                   for i, c in enumerate(condition.get("Conditions", [])))
    raise ExpressionError(f"unknown condition type {kind!r} (known: {', '.join(CONDITION_TYPES)}){_at(where)}")


def evaluate_conditions(conditions: list, ctx: Context, where: str = "") -> bool:
    """A Condition step's outcome: all of its conditions hold."""
    return all(evaluate_condition(c, ctx, f"{where}.Conditions[{i}]") for i, c in enumerate(conditions))


def step_references(value: Any) -> set[str]:
    """Names of the steps that ``Get`` expressions anywhere in ``value`` refer to."""
    found: set[str] = set()
    if isinstance(value, list):
        for item in value:
            found |= step_references(item)
    elif isinstance(value, dict):
        ref = value.get("Get") if len(value) == 1 else None
        if isinstance(ref, str) and ref.startswith("Steps."):
            name = re.match(r"Steps\.([A-Za-z0-9_\-]+)", ref)
            if name:
                found.add(name.group(1))
        else:
            for item in value.values():
                found |= step_references(item)
    return found
