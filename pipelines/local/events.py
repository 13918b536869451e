"""The local event bus: what EventBridge does for the model registry on AWS.

On AWS, updating a model package's approval emits a ``SageMaker Model Package State Change``
event and the approval rule of :mod:`pipelines.aws.triggers` starts the deploy pipeline with the
package's ``ModelPackageGroupName``. Locally:

- :func:`model_package_event` builds the same event (EventBridge envelope, DescribeModelPackage
  ``detail``);
- :class:`LocalEventBus` matches it against its rules (EventBridge pattern matching: lists of
  allowed values, nested objects) and runs their targets; every event and its outcome is
  appended to ``<home>/events/events.jsonl``;
- :func:`deploy_rule` is the approval rule: ``Approved`` → run the deploy pipeline's definition
  (built offline from :mod:`pipelines.deploy_pipeline`, the JSON CodeBuild upserts) on the local
  engine; ``Rejected`` → the same pipeline, whose Deploy step picks the newest package *still*
  approved, i.e. a rollback. With no approved package left there is nothing to roll back to:
  the endpoint is left as it is and the bus says so.

Wiring: :func:`local_registry` gives a :class:`LocalModelRegistry` whose ``update_approval``
and ``register`` publish to the bus (SageMaker emits the state change for a new package too: one
registered ``Approved`` deploys); the registry itself has no side effects unless given the
callback. The local engine's CreateModelPackage uses it.

Deploy parameters beyond the group (``EndpointName``, ``EndpointMode``, ...) come from
``deploy_parameters`` (``imgpipe models approve -p``, checked by :func:`check_deploy_parameters`)
over the ``IMGPIPE_DEPLOY_PARAMETERS`` environment variable (a JSON object),
like the rule's configured ``SageMakerPipelineParameters`` on AWS; unset ones take the deploy
pipeline's defaults.
"""
from __future__ import annotations

import json
import os
import sys
import uuid
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Optional, TextIO

from pipelines.settings import Settings

ACCOUNT_ID = "000000000000"
SOURCE = "aws.sagemaker"
DETAIL_TYPE = "SageMaker Model Package State Change"
DEPLOY_PIPELINE_MODULE = "pipelines.deploy_pipeline"
DEPLOY_PIPELINE_NAME = "ImgpipeDeploy"
ENV_DEPLOY_PARAMETERS = "IMGPIPE_DEPLOY_PARAMETERS"
# The approval rule's event pattern (the same one pipelines.aws.triggers puts on EventBridge).
APPROVAL_PATTERN = {
    "source": [SOURCE],
    "detail-type": [DETAIL_TYPE],
    "detail": {"ModelApprovalStatus": ["Approved", "Rejected"]},
}
# Fields of DescribeModelPackage that the event's detail carries.
DETAIL_FIELDS = (
    "ModelPackageGroupName", "ModelPackageVersion", "ModelPackageArn", "ModelPackageName",
    "ModelPackageDescription", "CreationTime", "LastModifiedTime", "InferenceSpecification",
    "ModelPackageStatus", "ModelPackageStatusDetails", "ModelApprovalStatus", "ApprovalDescription",
    "ModelMetrics", "CustomerMetadataProperties", "MetadataProperties",
)

Target = Callable[[dict], Any]
_DEFINITIONS: dict[tuple, dict] = {}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def model_package_event(package: Mapping[str, Any], settings: Settings) -> dict:
    """The EventBridge event SageMaker emits for a model package update."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": DETAIL_TYPE,
        "source": SOURCE,
        "account": ACCOUNT_ID,
        "time": _now(),
        "region": settings.region,
        "resources": [package["ModelPackageArn"]],
        "detail": {k: package[k] for k in DETAIL_FIELDS if package.get(k) is not None},
    }


def matches(pattern: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    """EventBridge pattern matching for the forms used here: a list of allowed values per
    field, nested objects for nested fields (a missing field never matches)."""
    for key, want in pattern.items():
        if key not in event:
            return False
        value = event[key]
        if isinstance(want, Mapping):
            if not isinstance(value, Mapping) or not matches(want, value):
                return False
        elif isinstance(value, list):
            if not any(v in want for v in value):
                return False
        elif value not in want:
            return False
    return True


class LocalEventBus:
    """Rules (pattern, target) run synchronously for each event put on the bus."""

    def __init__(self, settings: Settings, rules: Optional[list[tuple[str, Mapping, Target]]] = None,
                 stream: Optional[TextIO] = None):
        self.settings = settings
        self.rules = list(rules) if rules is not None else []
        self.stream = stream

    def add_rule(self, name: str, pattern: Mapping, target: Target) -> None:
        self.rules.append((name, pattern, target))

    def put_event(self, event: dict) -> list[dict]:
        """Run the targets of every matching rule; their outcomes (also logged to events.jsonl).
        A failing target is recorded and reported, never raised: the update that emitted the
        event has happened (as on AWS, where the rule's target runs on its own)."""
        outcomes = []
        for name, pattern, target in self.rules:
            if not matches(pattern, event):
                continue
            try:
                outcomes.append({"rule": name, "result": target(event)})
            except Exception as exc:  # noqa: BLE001 - reported, the approval stands
                print(f"event rule {name}: {type(exc).__name__}: {exc}", file=self.stream or sys.stderr)
                outcomes.append({"rule": name, "error": f"{type(exc).__name__}: {exc}"})
        self._record(event, outcomes)
        return outcomes

    def publish_package_change(self, package: Mapping[str, Any]) -> list[dict]:
        """The registry's ``on_approval_change`` callback."""
        return self.put_event(model_package_event(package, self.settings))

    def _record(self, event: dict, outcomes: list[dict]) -> None:
        path = self.settings.home.resolve() / "events" / "events.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fh.write(json.dumps({"event": event, "outcomes": outcomes}, default=str) + "\n")


# -- the approval rule: run the deploy pipeline on the local engine ----------------------
def deploy_parameters_from_env() -> dict:
    raw = os.environ.get(ENV_DEPLOY_PARAMETERS, "").strip()
    if not raw:
        return {}
    try:
        values = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{ENV_DEPLOY_PARAMETERS} is not JSON: {exc}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{ENV_DEPLOY_PARAMETERS} must be a JSON object")
    return values


def deploy_definition(settings: Settings, *, module_name: str = DEPLOY_PIPELINE_MODULE,
                      pipeline_name: str = DEPLOY_PIPELINE_NAME) -> dict:
    """The deploy pipeline's definition, built offline once per process (its code uploaded to
    the local object store, where it stays)."""
    from pipelines.local.object_store import ObjectStore
    from pipelines.offline import build_definition

    kwargs = {"region": settings.region, "role": settings.role_arn, "default_bucket": settings.default_bucket,
              "pipeline_name": pipeline_name}
    key = (module_name, str(settings.s3_root), json.dumps(kwargs, sort_keys=True))
    if key not in _DEFINITIONS:
        _DEFINITIONS[key] = build_definition(module_name=module_name, kwargs=kwargs,
                                             store=ObjectStore(settings.s3_root), settings=settings)
    return _DEFINITIONS[key]


def check_deploy_parameters(settings: Settings, values: Mapping[str, Any]) -> dict:
    """``values`` checked against the deploy definition's parameters (names, types, allowed
    values); the engine's ``ParameterError`` (a ``ValueError``) names a bad one."""
    from pipelines.local.engine import validate_parameters

    validate_parameters(deploy_definition(settings), values)
    return dict(values)


def run_deploy_pipeline(settings: Settings, parameters: Mapping[str, Any], *,
                        module_name: str = DEPLOY_PIPELINE_MODULE, pipeline_name: str = DEPLOY_PIPELINE_NAME,
                        stream: Optional[TextIO] = None) -> Any:
    """Build the deploy pipeline's definition offline and execute it locally, with progress."""
    from pipelines.local.engine import Engine
    from pipelines.local.progress import Progress, summary

    out = stream or sys.stdout
    definition = deploy_definition(settings, module_name=module_name, pipeline_name=pipeline_name)
    result = Engine(settings, on_event=Progress(stream=out)).run(definition, dict(parameters),
                                                                  pipeline_name=pipeline_name)
    out.write("\n" + summary(result, settings))
    out.flush()
    return result


def deploy_rule(settings: Settings, deploy_parameters: Optional[Mapping[str, Any]] = None, *,
                runner: Callable[..., Any] = run_deploy_pipeline, stream: Optional[TextIO] = None) -> Target:
    """The approval rule's target: start the deploy pipeline for the event's group."""

    def target(event: dict) -> dict:
        detail = event["detail"]
        group, status = detail["ModelPackageGroupName"], detail["ModelApprovalStatus"]
        out = stream or sys.stdout
        if status == "Rejected":
            from pipelines.local.registry import LocalModelRegistry

            if LocalModelRegistry(settings).latest_approved(group) is None:
                out.write(f"{detail['ModelPackageArn']} rejected; no approved package left in {group}: "
                          "nothing to roll back to, endpoints are left as they are "
                          "(`imgpipe endpoints delete NAME` stops one)\n")
                return {"action": "none", "reason": "no approved package left"}
            out.write(f"{detail['ModelPackageArn']} rejected: rolling back to the newest approved "
                      f"package of {group} (deploy pipeline)\n")
        else:
            out.write(f"{detail['ModelPackageArn']} approved: running the deploy pipeline\n")
        out.flush()
        values = {**deploy_parameters_from_env(), **dict(deploy_parameters or {}),
                  "ModelPackageGroupName": group}
        result = runner(settings, values, stream=stream)
        return {"action": "deploy", "execution_id": getattr(result, "execution_id", None),
                "status": getattr(result, "status", None),
                "failure_reason": getattr(result, "failure_reason", None)}

    return target


def failed_deploys(outcomes: list[dict]) -> list[str]:
    """One line per rule outcome that is a failure: a deploy run that did not succeed, or a rule
    whose target raised (the deploy pipeline never ran)."""
    lines = []
    for outcome in outcomes:
        result = outcome.get("result") or {}
        if "error" in outcome:
            lines.append(f"event rule {outcome.get('rule')} failed: {outcome['error']}")
        elif result.get("action") == "deploy" and result.get("status") != "Succeeded":
            reason = " ".join(str(result.get("failure_reason") or "no reason recorded").split())
            lines.append(f"deploy pipeline execution {result.get('execution_id')} {result.get('status')}: {reason}")
    return lines


def default_bus(settings: Settings, deploy_parameters: Optional[Mapping[str, Any]] = None,
                stream: Optional[TextIO] = None) -> LocalEventBus:
    """The bus with the approval rule, as ``imgpipe triggers apply`` sets it up on AWS."""
    bus = LocalEventBus(settings, stream=stream)
    bus.add_rule("imgpipe-approval-deploy", APPROVAL_PATTERN, deploy_rule(settings, deploy_parameters, stream=stream))
    return bus


def local_registry(settings: Settings, deploy_parameters: Optional[Mapping[str, Any]] = None,
                   stream: Optional[TextIO] = None) -> Any:
    """A :class:`LocalModelRegistry` whose approval updates go to :func:`default_bus`; the rule
    outcomes of its last update are kept in its ``event_outcomes`` (see :func:`failed_deploys`)."""
    from pipelines.local.object_store import ObjectStore
    from pipelines.local.registry import LocalModelRegistry

    bus = default_bus(settings, deploy_parameters, stream)
    registry = LocalModelRegistry(settings, ObjectStore(settings.s3_root))
    registry.event_outcomes = []

    def publish(package: Mapping[str, Any]) -> list[dict]:
        registry.event_outcomes = bus.publish_package_change(package)
        return registry.event_outcomes

    registry.on_approval_change = publish
    return registry
