"""Every place imgpipe works around the SageMaker Python SDK (checked against SDK 2.257.7).

Each workaround names the SDK behaviour it works around; ``tests/test_sdk_workarounds.py`` builds
the plain SDK object without it and asserts that the behaviour is still there, so that test fails
(and tells us to delete the workaround) once the SDK changes.

* :class:`StableBuildEstimator`: a mixin for a framework estimator (``class
  PipelinePyTorch(StableBuildEstimator, PyTorch)``) whose tuning-step code location, static
  hyperparameters and Debugger collection order do not change from one build to the next.
* :func:`cached_config_validation`: validate each distinct SDK config once per build, not at
  each of the ~100 config lookups.
* :func:`user_sdk_config_exists`: where the SDK looks for the user's config file (a private name).
* :func:`freeze_definition`: make ``upsert()`` send an already compiled definition.
* :func:`without_disabled_profiler`: drop the ``ProfilerConfig: {"DisableProfiler": true}`` the
  SDK gives every training job it builds without a profiler (the repack job included), so a
  definition built without SageMaker Debugger carries no Profiler configuration at all.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Iterator, Optional

from sagemaker.s3 import s3_path_join
from sagemaker.workflow import utilities as workflow_utilities
from sagemaker.workflow.pipeline import Pipeline


def _pipeline_build_config():
    """The SDK's private "compiling a pipeline now" state (``_pipeline_config``), or ``None``."""
    return workflow_utilities._pipeline_config


class StableBuildEstimator:
    """Mixin for a framework estimator: build-independent arguments inside a pipeline.

    (A mixin, so the estimator class can live in the pipeline module: the SDK records the
    class's module as the ``sagemaker_estimator_module`` hyperparameter of the tuning step.)

    Three SDK 2.257 behaviours make a tuning step's cache key change with every build:

    * ``_assign_s3_prefix``: the SDK hashes the code into its S3 key only for Training and
      Processing steps; a tuning step's estimator uploads to
      ``<base_job_name>-<timestamp>/source/``. Here the key is ``<pipeline>/code/<hash>``, the
      same key as ``TrainBestModel``'s code.
    * ``hyperparameters``: the SDK adds a timestamped ``sagemaker_job_name`` static
      hyperparameter (SageMaker sets the job name per job anyway): dropped inside a pipeline.
    * ``_prepare_collection_configs``: the SDK keeps the Debugger collections in a ``set``, so
      their order in the definition changes from process to process: sorted here.
    """

    def _assign_s3_prefix(self, key_prefix=""):
        config = _pipeline_build_config()
        if config is not None and not config.code_hash:
            code_hash = workflow_utilities.get_training_code_hash(
                self.entry_point, self.source_dir, self.dependencies or []
            )
            if code_hash:
                return s3_path_join(key_prefix, config.pipeline_name, "code", code_hash)
        return super()._assign_s3_prefix(key_prefix)

    def _prepare_collection_configs(self):
        super()._prepare_collection_configs()  # a set: its order changes from run to run
        self.collection_configs = sorted(
            self.collection_configs, key=lambda c: (c.name, sorted((c.parameters or {}).items()))
        )

    def hyperparameters(self):
        hyperparameters = super().hyperparameters()
        if _pipeline_build_config() is not None:
            hyperparameters.pop("sagemaker_job_name", None)  # set per job by SageMaker
        return hyperparameters


@contextlib.contextmanager
def cached_config_validation() -> Iterator[None]:
    """Validate each distinct SDK config once instead of at every config lookup (while inside).

    SDK 2.257's ``sagemaker.utils.get_sagemaker_config_value`` runs ``jsonschema.validate``
    (schema check included) on the session's whole config at each of the ~100 lookups a pipeline
    build makes: with any config at all (the telemetry opt-out is one) a build takes ~20 s
    instead of ~4 s. Validating identical content gives the same result, so remembering it
    changes nothing else; invalid configs still raise every time. The SDK's function is put back
    on exit; nested uses share the outer cache. No-op if the SDK internals differ.
    """
    import sagemaker.utils as sagemaker_utils

    original = getattr(sagemaker_utils, "validate_sagemaker_config", None)
    if original is None or getattr(original, "_imgpipe_cached", False):
        yield
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
    try:
        yield
    finally:
        sagemaker_utils.validate_sagemaker_config = original


def user_sdk_config_exists() -> bool:
    """Whether the user's own SDK config file exists where the SDK looks for it by default.

    SDK 2.257 exposes that path only as the private ``sagemaker.config.config.
    _DEFAULT_USER_CONFIG_FILE_PATH``. False if the SDK's layout differs.
    """
    try:
        from sagemaker.config.config import _DEFAULT_USER_CONFIG_FILE_PATH
    except ImportError:  # another SDK layout: nothing to preserve
        return False
    return os.path.exists(_DEFAULT_USER_CONFIG_FILE_PATH)


def freeze_definition(pipeline: Pipeline) -> str:
    """Compile ``pipeline`` once and make ``create``/``update``/``upsert`` send that very JSON.

    SDK 2.257's ``Pipeline.upsert`` (through ``create``/``update``) calls ``definition()`` again,
    which uploads the step code a second time and, for steps whose S3 keys hold a timestamp
    (the repack step), names other objects than the definition already shown or written.
    """
    definition = pipeline.definition()
    pipeline.definition = lambda: definition  # type: ignore[method-assign]
    return definition


DISABLED_PROFILER = {"DisableProfiler": True}


def without_disabled_profiler(definition: str) -> str:
    """``definition`` without the ``ProfilerConfig`` of any Training step (nested in conditions
    too) whose whole config is ``{"DisableProfiler": true}``.

    SDK 2.257's ``EstimatorBase._prepare_profiler_for_training`` sets that config on every job
    with ``disable_profiler`` (and ``_RepackModelStep`` forces ``disable_profiler`` on its
    estimator), so no estimator argument leaves ``ProfilerConfig`` out of the request.
    """
    document = json.loads(definition)

    def strip(steps: list) -> None:
        for step in steps:
            arguments = step.get("Arguments") or {}
            if step.get("Type") == "Training" and arguments.get("ProfilerConfig") == DISABLED_PROFILER:
                del arguments["ProfilerConfig"]
            strip(arguments.get("IfSteps") or [])
            strip(arguments.get("ElseSteps") or [])

    strip(document.get("Steps") or [])
    return json.dumps(document)
