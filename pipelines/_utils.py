"""Helpers shared by the pipeline modules and their CLIs (like the SageMaker project seed's).

* :func:`sdk_config`: the SageMaker SDK's intelligent-defaults config with telemetry off.
* :func:`get_pipeline_driver`, :func:`convert_struct`: import a pipeline module and call its
  ``get_pipeline(**kwargs)``, with the seed code's argument conventions.
"""
from __future__ import annotations

import ast
import copy
import importlib
import json
import os
from typing import Any, Optional

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

# sagemaker.config.config_schema.TELEMETRY_OPT_OUT_PATH:
# SageMaker.PythonSDK.Modules.TelemetryOptOut (boolean, schema version 1.0).
TELEMETRY_OPT_OUT_YAML = (
    "SchemaVersion: '1.0'\n"
    "SageMaker:\n"
    "  PythonSDK:\n"
    "    Modules:\n"
    "      TelemetryOptOut: true\n"
)


class UsageError(ValueError):
    """Bad command-line input (the CLIs exit with status 2 and the message, no traceback)."""


def sdk_config() -> dict:
    """The SDK config the user/admin files give (if any), with ``TelemetryOptOut: true``.

    Passed to the session as ``sagemaker_config`` so telemetry is off whatever the files say,
    while their other defaults (KMS keys, VPC, tags) still apply.
    """
    from sagemaker.config import load_sagemaker_config

    config = copy.deepcopy(load_sagemaker_config() or {})
    config.setdefault("SchemaVersion", "1.0")
    modules = config.setdefault("SageMaker", {}).setdefault("PythonSDK", {}).setdefault("Modules", {})
    modules["TelemetryOptOut"] = True
    return config


def install_config_validation_cache() -> None:
    """Validate each distinct SDK config once instead of at every config lookup.

    SDK 2.257's ``get_sagemaker_config_value`` runs ``jsonschema.validate`` (schema check
    included) on the session's whole config at each of the ~100 lookups a pipeline build makes:
    with any config at all (the telemetry opt-out is one) a build takes ~20 s instead of ~4 s.
    The result of validating identical content is the same, so remembering it changes nothing
    else; invalid configs still raise every time. No-op if the SDK internals differ.
    """
    import sagemaker.utils as sagemaker_utils

    original = getattr(sagemaker_utils, "validate_sagemaker_config", None)
    if original is None or getattr(original, "_imgpipe_cached", False):
        return
    valid: set[str] = set()

    def validate_sagemaker_config(sagemaker_config: Optional[dict] = None):
        try:
            key = json.dumps(sagemaker_config, sort_keys=True, default=repr)
        except (TypeError, ValueError):
            return original(sagemaker_config)
        if key not in valid:
            original(sagemaker_config)
            valid.add(key)

    validate_sagemaker_config._imgpipe_cached = True  # type: ignore[attr-defined]
    sagemaker_utils.validate_sagemaker_config = validate_sagemaker_config


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
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise UsageError(f"--module-name {module_name!r}: no such module") from None
        raise
    if not callable(getattr(module, "get_pipeline", None)):
        raise UsageError(f"--module-name {module_name!r} defines no get_pipeline()")
    return module


def get_pipeline_driver(module_name: str, passed_args: Optional[str | dict] = None):
    """Import ``module_name`` and return ``get_pipeline(**kwargs)`` (seed-code compatible)."""
    kwargs = passed_args if isinstance(passed_args, dict) else parse_kwargs(passed_args)
    return call_get_pipeline(import_pipeline_module(module_name), kwargs)


def call_get_pipeline(module, kwargs: dict):
    """``module.get_pipeline(**kwargs)``; arguments it does not take are a usage error."""
    import inspect

    try:
        inspect.signature(module.get_pipeline).bind(**kwargs)
    except TypeError as exc:
        raise UsageError(f"--kwargs does not fit {module.__name__}.get_pipeline(): {exc}") from None
    return module.get_pipeline(**kwargs)
