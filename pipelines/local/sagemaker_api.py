"""``LocalSageMaker``: the slice of the SageMaker API the local engine calls.

Requests are the steps' ``Arguments`` with every expression resolved (CreateProcessingJob,
CreateTrainingJob, CreateHyperParameterTuningJob, CreateModelPackage shapes); results are
Describe*-shaped dicts that ``Steps.<name>.<path>`` property references resolve against.
Job failures are results (``...Status: Failed`` with ``FailureReason``), never exceptions.
``on_event`` gets progress dicts (``log``, ``metric``, ``trial``) from worker threads.
"""
from __future__ import annotations

import os
import sys
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
        """The local registry wired to the local event bus: registering a package emits the
        model package state change SageMaker emits, and one registered ``Approved`` runs the
        deploy pipeline (parameters from ``IMGPIPE_DEPLOY_PARAMETERS``), as EventBridge does."""
        if self._registry is None:
            from pipelines.local.events import local_registry

            self._registry = local_registry(self.settings)
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
        ModelMetrics statistics object is missing from the store). A failed deploy that an
        ``Approved`` registration started is reported on stderr; the registration stands."""
        from pipelines.local.events import failed_deploys

        package = self.registry.register(request, execution_arn=execution_arn)
        for line in failed_deploys(getattr(self.registry, "event_outcomes", None) or []):
            print(f"warning: {package['ModelPackageArn']} registered Approved, but {line}", file=sys.stderr)
        return package

    def stop(self) -> None:
        """Stop every running job (their process groups are killed; status ``Stopped``).
        Jobs started on this instance afterwards end ``Stopped`` at once."""
        self._control.request_stop("Stopped: the local engine was interrupted")
