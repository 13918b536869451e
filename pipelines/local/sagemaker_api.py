"""``LocalSageMaker``: the slice of the SageMaker API the local engine calls.

Requests are the steps' ``Arguments`` with every expression resolved (CreateProcessingJob,
CreateTrainingJob, CreateHyperParameterTuningJob, CreateModelPackage shapes); results are
Describe*-shaped dicts that ``Steps.<name>.<path>`` property references resolve against.
Job failures are results (``...Status: Failed`` with ``FailureReason``), never exceptions.
``on_event`` gets progress dicts (``log``, ``metric``, ``trial``) from worker threads.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

from pipelines.local import processing, training, tuning
from pipelines.local.jobs import JobContext
from pipelines.local.object_store import ObjectStore
from pipelines.local.processes import JobControl
from pipelines.local.registry import LocalModelRegistry
from pipelines.settings import Settings


class LocalSageMaker:
    """Processing, training and tuning jobs as local subprocesses; the registry in SQLite."""

    def __init__(self, settings: Settings, store: ObjectStore, on_event: Optional[Callable[[dict], None]] = None,
                 cores: Optional[int] = None):
        self.settings = settings
        self.store = store
        self._control = JobControl()
        self._ctx = JobContext(settings, store, cores or os.cpu_count() or 1, on_event, self._control)
        self._registry: Optional[LocalModelRegistry] = None

    @property
    def registry(self) -> LocalModelRegistry:
        if self._registry is None:
            self._registry = LocalModelRegistry(self.settings, self.store)
        return self._registry

    def _job_ctx(self) -> JobContext:
        return self._ctx.with_control(self._control.child())

    def run_processing_job(self, request: dict, job_name: str) -> dict:
        """CreateProcessingJob request → DescribeProcessingJob-shaped dict."""
        return processing.run_processing_job(request, job_name, self._job_ctx())

    def run_training_job(self, request: dict, job_name: str) -> dict:
        """CreateTrainingJob request → DescribeTrainingJob-shaped dict."""
        return training.run_training_job(request, job_name, self._job_ctx())

    def run_tuning_job(self, request: dict, job_name: str) -> dict:
        """CreateHyperParameterTuningJob request → DescribeHyperParameterTuningJob-shaped dict
        (plus ``TrainingJobSummaries``, best first)."""
        return tuning.run_tuning_job(request, job_name, self._job_ctx())

    def create_model_package(self, request: dict, execution_arn: Optional[str] = None) -> dict:
        """CreateModelPackage request → DescribeModelPackage-shaped dict.

        Raises ``registry.RegistryError`` for a request that cannot be registered (e.g. its
        ModelMetrics statistics object is missing from the store)."""
        return self.registry.register(request, execution_arn=execution_arn)

    def stop(self) -> None:
        """Stop every running job (their process groups are killed; status ``Stopped``).
        Jobs started on this instance afterwards end ``Stopped`` at once."""
        self._control.request_stop("Stopped: the local engine was interrupted")
