"""The pipeline CLIs' arguments, with the SageMaker project seed code's conventions.

* :func:`parse_kwargs`, :func:`parse_tags`, :func:`convert_struct`: ``--kwargs``/``--tags``.
* :func:`import_pipeline_module`, :func:`call_get_pipeline`: import a pipeline module and call
  its ``get_pipeline(**kwargs)``; :func:`fill_defaults` fills the arguments it takes.
"""
from __future__ import annotations

import ast
import importlib
import json
from typing import Any, Optional

from pipelines.common import UsageError


def convert_struct(str_struct: Optional[str] = None, what: str = "--kwargs") -> Any:
    """Parse a JSON (or, as the seed code accepts, Python-literal) structure given on a CLI."""
    if str_struct is None or not str(str_struct).strip():
        return None
    try:
        return json.loads(str_struct)
    except json.JSONDecodeError as json_error:
        try:
            return ast.literal_eval(str_struct)
        except (ValueError, SyntaxError):
            raise UsageError(
                f"{what} is not valid JSON ({json_error.msg} at line {json_error.lineno} "
                f"column {json_error.colno}): {str_struct!r}"
            ) from None


def parse_kwargs(str_struct: Optional[str]) -> dict:
    """``--kwargs``: a JSON object of keyword arguments for ``get_pipeline``."""
    value = convert_struct(str_struct, "--kwargs")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise UsageError(f"--kwargs must be a JSON object of keyword arguments, got {str_struct!r}")
    return value


def parse_tags(str_struct: Optional[str]) -> list:
    """``--tags``: a JSON list of ``{"Key": ..., "Value": ...}`` objects."""
    value = convert_struct(str_struct, "--tags")
    if value is None:
        return []
    if isinstance(value, dict):  # tolerate {"key": "value"}
        value = [{"Key": str(k), "Value": str(v)} for k, v in value.items()]
    if not isinstance(value, list) or not all(
        isinstance(t, dict) and set(t) == {"Key", "Value"} and isinstance(t["Key"], str)
        for t in value
    ):
        raise UsageError(
            f'--tags must be a JSON list of {{"Key": "...", "Value": "..."}} objects, got {str_struct!r}'
        )
    return [{"Key": t["Key"], "Value": str(t["Value"])} for t in value]


def import_pipeline_module(module_name: str):
    """Import ``module_name``; a missing module or one without ``get_pipeline`` is a usage error."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise UsageError(f"--module-name {module_name!r}: no such module") from None
        raise
    if not callable(getattr(module, "get_pipeline", None)):
        raise UsageError(f"--module-name {module_name!r} defines no get_pipeline()")
    return module


def call_get_pipeline(module, kwargs: dict):
    """``module.get_pipeline(**kwargs)``; arguments it does not take are a usage error."""
    import inspect

    try:
        inspect.signature(module.get_pipeline).bind(**kwargs)
    except TypeError as exc:
        raise UsageError(f"--kwargs does not fit {module.__name__}.get_pipeline(): {exc}") from None
    return module.get_pipeline(**kwargs)


def fill_defaults(module, kwargs: dict, defaults: dict) -> dict:
    """``kwargs`` plus each of ``defaults`` that is missing (or None) there and that
    ``module.get_pipeline`` takes (by name or through ``**kwargs``)."""
    import inspect

    parameters = inspect.signature(module.get_pipeline).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    filled = dict(kwargs)
    for name, value in defaults.items():
        if filled.get(name) is None and (takes_any or name in parameters):
            filled[name] = value
    return filled
