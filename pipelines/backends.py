"""The two backends behind one interface each: what a model registry and a model host do, and
the one place that picks an implementation by backend name (``"aws"`` or ``"local"``).

===========  ==========================================  =========================================
interface    ``aws`` (boto3, :mod:`pipelines.aws`)        ``local`` (this machine, :mod:`pipelines.local`)
===========  ==========================================  =========================================
registry     ``aws.registry.SageMakerModelRegistry``      ``local.registry.LocalModelRegistry``
hosting      ``aws.hosting.SageMakerHosting``             ``local.hosting.LocalHosting``
===========  ==========================================  =========================================

Users: ``imgpipe models`` and ``imgpipe endpoints``/``predict`` (``--backend``), and the deploy
pipeline's steps (``steps/deploy_backends.py``: ``IMGPIPE_BACKEND``).

Implementations are imported by name when picked, never at import time: this module and
:mod:`pipelines.aws` import only the standard library (boto3 when an AWS implementation is
built), so the deploy steps' processing container gets them as top-level copies (``backends``
and the ``aws`` package, shipped next to the step scripts; see
:data:`pipelines.deploy_pipeline.DEPENDENCIES`) and never imports the local engine.
"""
from __future__ import annotations

import importlib
from typing import Any, Optional, Protocol

BACKENDS = ("aws", "local")
APPROVAL_STATUSES = ("Approved", "Rejected", "PendingManualApproval")
ENDPOINT_MODES = ("SingleModel", "MultiModel")
# Where the aws package is: pipelines.aws in the imgpipe package, aws next to the step
# scripts in the deploy steps' container (this module is then the top-level ``backends``).
_AWS_PACKAGE = "pipelines.aws" if __name__ == "pipelines.backends" else "aws"
# (interface, backend) -> (module, callable building the implementation)
_IMPLEMENTATIONS = {
    ("registry", "aws"): (f"{_AWS_PACKAGE}.registry", "SageMakerModelRegistry"),
    ("registry", "local"): ("pipelines.local.registry", "LocalModelRegistry"),
    ("hosting", "aws"): (f"{_AWS_PACKAGE}.hosting", "SageMakerHosting"),
    ("hosting", "local"): ("pipelines.local.hosting", "LocalHosting"),
}
# The local registry wired to the local event bus (its approvals run the deploy pipeline).
_LOCAL_REGISTRY_WITH_EVENTS = ("pipelines.local.events", "local_registry")


class BackendError(ValueError):
    """An unknown backend name, or a backend that cannot be loaded here."""


class RegistryError(ValueError):
    """An unknown or ambiguous package reference, a bad approval status, unreadable metrics."""


class HostingError(RuntimeError):
    """A deployment or an invocation failed (``status_code``: the HTTP status, when known)."""

    def __init__(self, message: str, status_code: Optional[int] = None):
        super().__init__(message)
        self.status_code = status_code


class ModelRegistry(Protocol):
    """Model package groups and versions; results are DescribeModelPackage-shaped dicts, plus
    ``ModelDataUrl`` and (when readable) ``EvaluationMetrics``/``EvaluationMetricsUri``."""

    def list_packages(self, group: Optional[str] = None, status: Optional[str] = None) -> list[dict]: ...
    def describe(self, version_or_arn: str, group: Optional[str] = None) -> dict: ...
    def update_approval(self, version_or_arn: str, status: str, reason: str = "",
                        group: Optional[str] = None) -> dict: ...
    def latest_approved(self, group: str) -> Optional[dict]: ...


class Hosting(Protocol):
    """What the deploy pipeline and the CLI need from a model host (SageMaker or local).

    ``deploy_multi_model`` serves every given package behind one endpoint, each as the target
    model :func:`target_model_name`; calling it again with another set changes the served set
    without restarting the endpoint. It returns what ``deploy`` returns plus ``"Mode":
    "MultiModel"`` and ``"TargetModels"``. ``describe_endpoint`` includes ``"Mode"``
    (``"SingleModel"``/``"MultiModel"``) and, for a multi-model endpoint, ``"TargetModels"``."""

    def deploy(self, endpoint_name: str, model_package: dict, *, instance_type: str,
               instance_count: int, data_capture_percent: int) -> dict: ...
    def describe_endpoint(self, endpoint_name: str) -> Optional[dict]: ...
    def list_endpoints(self) -> list[dict]: ...
    def delete_endpoint(self, endpoint_name: str) -> None: ...
    def invoke(self, endpoint_name: str, body: bytes, content_type: str, *,
               target_model: Optional[str] = None, accept: Optional[str] = None) -> Any: ...
    def deploy_multi_model(self, endpoint_name: str, model_packages: list[dict], *, instance_type: str,
                           instance_count: int, data_capture_percent: int) -> dict: ...


def target_model_name(package: dict) -> str:
    """A package's target model on a multi-model endpoint: ``v<ModelPackageVersion>/model.tar.gz``."""
    version = package.get("ModelPackageVersion")
    if version is None or str(version).strip() == "":
        raise HostingError(f"model package {package.get('ModelPackageArn')} has no ModelPackageVersion", 400)
    return f"v{version}/model.tar.gz"


def check_approval_status(status: str) -> None:
    """:class:`RegistryError` unless ``status`` is one of :data:`APPROVAL_STATUSES`."""
    if status not in APPROVAL_STATUSES:
        raise RegistryError(f"approval status must be one of {', '.join(APPROVAL_STATUSES)}, not {status!r}")


def _implementation(interface: str, backend: str, events: bool = False) -> Any:
    """The class (or factory) implementing ``interface`` for ``backend``, imported now."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown {interface} backend {backend!r} (known: {', '.join(BACKENDS)})")
    module_name, attribute = _IMPLEMENTATIONS[(interface, backend)]
    if events and backend == "local":
        module_name, attribute = _LOCAL_REGISTRY_WITH_EVENTS
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if backend != "local" or not (exc.name or "").startswith("pipelines"):
            raise
        raise BackendError("the local backend needs the imgpipe package (pip install -e .)") from None
    return getattr(module, attribute)


def _local_settings(settings: Any) -> Any:
    """``settings``, or the default :class:`pipelines.settings.Settings` (``$IMGPIPE_HOME``)."""
    if settings is not None:
        return settings
    from pipelines.settings import Settings

    return Settings()


def get_registry(backend: str, *, region: Optional[str] = None, settings: Any = None,
                 approval_events: bool = False) -> ModelRegistry:
    """The model registry of ``backend``.

    aws: SageMaker's, in ``region`` (default: boto3's configuration). local: the one under
    ``settings.home`` (default ``Settings()``); with ``approval_events`` its approval changes go
    to the local event bus, which runs the deploy pipeline (what EventBridge does on AWS).
    """
    build = _implementation("registry", backend, events=approval_events)
    return build(region=region) if backend == "aws" else build(_local_settings(settings))


def get_hosting(backend: str, *, region: Optional[str] = None, settings: Any = None,
                **sagemaker_options: Any) -> Hosting:
    """The model host of ``backend``.

    aws: SageMaker endpoints in ``region``; ``sagemaker_options`` go to
    :class:`pipelines.aws.hosting.SageMakerHosting` (model role, capture URL, rollback alarms,
    bake time). local: server processes on this machine, state under ``settings.home``.
    """
    build = _implementation("hosting", backend)
    return build(region, **sagemaker_options) if backend == "aws" else build(_local_settings(settings))
