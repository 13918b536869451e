"""What starts the pipelines on AWS: the approval rule (deploy) and the retraining schedule (build).

* **Approval rule** (EventBridge, default bus): ``SageMaker Model Package State Change`` events
  of the model package group whose ``ModelApprovalStatus`` is ``Approved`` (deploy it) or
  ``Rejected`` (the deploy pipeline then rolls the endpoint back to the newest package that is
  still approved) start the deploy pipeline, with ``ModelPackageGroupName`` (and any other
  configured parameters) as ``SageMakerPipelineParameters``.
* **Retraining schedule** (EventBridge Scheduler, ``cron(...)``/``rate(...)``): starts the build
  pipeline.
* **Roles**: one per trigger, each assumable only by its service from this account
  (``aws:SourceAccount``; the rule's role also ``aws:SourceArn``) and allowed only
  ``sagemaker:StartPipelineExecution`` on its one pipeline. Existing roles can be given instead.

:func:`apply_triggers` is idempotent: it reads each resource, writes only what differs and
reports ``created``/``updated``/``unchanged`` per resource. Used by ``imgpipe triggers apply
--backend aws`` (and so by ``buildspec.yml``).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

DETAIL_TYPE = "SageMaker Model Package State Change"
TARGET_ID = "imgpipe-deploy-pipeline"
SCHEDULE_EXPRESSION = re.compile(r"^(cron\(.+\)|rate\(\d+ (minute|minutes|hour|hours|day|days)\))$")
SCHEDULE_RETRY = {"MaximumEventAgeInSeconds": 3600, "MaximumRetryAttempts": 3}


class TriggerError(ValueError):
    """Bad trigger settings, or a pipeline the triggers would start does not exist."""


@dataclass(frozen=True)
class TriggerSettings:
    """Names and options of the triggers (``name_prefix`` defaults to the deploy pipeline's name)."""

    model_package_group_name: str
    deploy_pipeline_name: str
    build_pipeline_name: Optional[str] = None
    retrain_schedule: Optional[str] = None  # cron(...) / rate(...); None: no schedule managed
    schedule_timezone: str = "UTC"
    deploy_parameters: dict = field(default_factory=dict)  # more deploy pipeline parameters
    retrain_parameters: dict = field(default_factory=dict)  # build pipeline parameters
    name_prefix: Optional[str] = None
    events_role_arn: Optional[str] = None  # use this role instead of creating one
    scheduler_role_arn: Optional[str] = None
    tags: tuple = ()

    @property
    def prefix(self) -> str:
        """At most 40 characters (role names: 64); a long name keeps a hash of the whole one."""
        name = self.name_prefix or self.deploy_pipeline_name
        if len(name) <= 40:
            return name
        import hashlib

        return f"{name[:31].rstrip('-')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"

    @property
    def rule_name(self) -> str:
        return f"{self.prefix}-model-approval"

    @property
    def schedule_name(self) -> str:
        return f"{self.prefix}-retrain"

    def validate(self) -> None:
        if self.retrain_schedule is not None:
            if not SCHEDULE_EXPRESSION.match(self.retrain_schedule):
                raise TriggerError(f"retraining schedule {self.retrain_schedule!r} is not "
                                   "cron(minutes hours day-of-month month day-of-week year) or "
                                   "rate(N minutes|hours|days)")
            if not self.build_pipeline_name:
                raise TriggerError("a retraining schedule needs the build pipeline's name")


@dataclass(frozen=True)
class Change:
    kind: str  # iam-role, events-rule, events-target, schedule
    name: str
    action: str  # created, updated, unchanged

    def __str__(self) -> str:
        return f"{self.kind} {self.name}: {self.action}"


def event_pattern(group: str) -> dict:
    """Approval and rejection of the group's model packages."""
    return {
        "source": ["aws.sagemaker"],
        "detail-type": [DETAIL_TYPE],
        "detail": {"ModelPackageGroupName": [group], "ModelApprovalStatus": ["Approved", "Rejected"]},
    }


def pipeline_parameters(values: dict) -> dict:
    """``SageMakerPipelineParameters`` of a target (names sorted: a stable comparison)."""
    return {"PipelineParameterList": [{"Name": k, "Value": str(v)} for k, v in sorted(values.items())]}


def trust_policy(service: str, account: str, source_arn: Optional[str] = None) -> dict:
    condition: dict = {"StringEquals": {"aws:SourceAccount": account}}
    if source_arn:
        condition["ArnEquals"] = {"aws:SourceArn": source_arn}
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole",
        "Condition": condition}]}


def start_pipeline_policy(pipeline_arn: str) -> dict:
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": "StartThisPipelineOnly", "Effect": "Allow",
        "Action": "sagemaker:StartPipelineExecution", "Resource": pipeline_arn}]}


def _as_dict(document: Any) -> dict:
    """A policy document as IAM returns it (dict, or JSON/URL-encoded text) as a dict."""
    if isinstance(document, dict):
        return document
    from urllib.parse import unquote

    return json.loads(unquote(document))


def _not_found(exc: Exception) -> bool:
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    return code in ("NoSuchEntity", "ResourceNotFoundException", "ResourceNotFound") or (
        code == "ValidationException" and ("does not exist" in str(exc) or "could not find" in str(exc).lower()))


def pipeline_arn(sm: Any, name: str) -> str:
    try:
        return sm.describe_pipeline(PipelineName=name)["PipelineArn"]
    except Exception as exc:  # noqa: BLE001 - botocore ClientError
        if _not_found(exc):
            raise TriggerError(f"pipeline {name!r} does not exist: upsert it first "
                               f"(run-pipeline --module-name ... --no-start)") from None
        raise


def ensure_role(iam: Any, name: str, trust: dict, policy: dict, tags: tuple) -> tuple[str, str]:
    """Create or correct a role with exactly ``trust`` and the inline ``policy``; (ARN, action)."""
    policy_name = "start-pipeline"
    try:
        role = iam.get_role(RoleName=name)["Role"]
    except Exception as exc:  # noqa: BLE001
        if not _not_found(exc):
            raise
        role = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust),
                               Description="Starts one SageMaker pipeline (imgpipe triggers)",
                               **({"Tags": list(tags)} if tags else {}))["Role"]
        iam.put_role_policy(RoleName=name, PolicyName=policy_name, PolicyDocument=json.dumps(policy))
        return role["Arn"], "created"
    action = "unchanged"
    if _as_dict(role["AssumeRolePolicyDocument"]) != trust:
        iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust))
        action = "updated"
    try:
        current = _as_dict(iam.get_role_policy(RoleName=name, PolicyName=policy_name)["PolicyDocument"])
    except Exception as exc:  # noqa: BLE001
        if not _not_found(exc):
            raise
        current = None
    if current != policy:
        iam.put_role_policy(RoleName=name, PolicyName=policy_name, PolicyDocument=json.dumps(policy))
        action = "updated"
    return role["Arn"], action


def ensure_rule(events: Any, settings: TriggerSettings) -> tuple[str, str]:
    """The approval rule (pattern, state, description); (rule ARN, action)."""
    wanted = {"EventPattern": event_pattern(settings.model_package_group_name), "State": "ENABLED",
              "Description": f"Approved/Rejected packages of {settings.model_package_group_name} "
                             f"start {settings.deploy_pipeline_name}"}
    try:
        rule = events.describe_rule(Name=settings.rule_name)
    except Exception as exc:  # noqa: BLE001
        if not _not_found(exc):
            raise
        rule = None
    if rule is not None and json.loads(rule.get("EventPattern") or "{}") == wanted["EventPattern"] \
            and rule.get("State") == wanted["State"] and rule.get("Description") == wanted["Description"]:
        return rule["Arn"], "unchanged"
    request = {"Name": settings.rule_name, "EventPattern": json.dumps(wanted["EventPattern"]),
               "State": wanted["State"], "Description": wanted["Description"]}
    if rule is None and settings.tags:
        request["Tags"] = list(settings.tags)
    arn = events.put_rule(**request)["RuleArn"]
    return arn, "created" if rule is None else "updated"


def ensure_target(events: Any, settings: TriggerSettings, target_arn: str, role_arn: str) -> str:
    params = {"ModelPackageGroupName": settings.model_package_group_name, **settings.deploy_parameters}
    wanted = {"Id": TARGET_ID, "Arn": target_arn, "RoleArn": role_arn,
              "SageMakerPipelineParameters": pipeline_parameters(params)}
    current = [t for t in events.list_targets_by_rule(Rule=settings.rule_name).get("Targets", [])
               if t["Id"] == TARGET_ID]
    if current and {k: current[0].get(k) for k in wanted} == wanted:
        return "unchanged"
    response = events.put_targets(Rule=settings.rule_name, Targets=[wanted])
    if response.get("FailedEntryCount"):
        raise TriggerError(f"EventBridge refused the target: {response.get('FailedEntries')}")
    return "updated" if current else "created"


def ensure_schedule(scheduler: Any, settings: TriggerSettings, target_arn: str, role_arn: str) -> str:
    """The retraining schedule (expression, timezone, target); the action."""
    wanted = {
        "ScheduleExpression": settings.retrain_schedule,
        "ScheduleExpressionTimezone": settings.schedule_timezone,
        "State": "ENABLED",
        "Description": f"Retrain: start {settings.build_pipeline_name}",
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "Target": {"Arn": target_arn, "RoleArn": role_arn, "RetryPolicy": SCHEDULE_RETRY,
                   "SageMakerPipelineParameters": pipeline_parameters(settings.retrain_parameters)},
    }
    try:
        current = scheduler.get_schedule(Name=settings.schedule_name)
    except Exception as exc:  # noqa: BLE001
        if not _not_found(exc):
            raise
        scheduler.create_schedule(Name=settings.schedule_name, **wanted)
        return "created"
    target = current.get("Target") or {}
    same_target = {k: target.get(k) for k in wanted["Target"]} == wanted["Target"]
    if same_target and all(current.get(k) == v for k, v in wanted.items() if k != "Target"):
        return "unchanged"
    scheduler.update_schedule(Name=settings.schedule_name, **wanted)
    return "updated"


def apply_triggers(settings: TriggerSettings, session: Any = None,
                   report: Optional[Callable[[Change], None]] = None) -> list[Change]:
    """Create or correct the approval rule, its target and role, and the retraining schedule;
    ``report`` is called with each change as soon as it is made (what a failure leaves done)."""
    settings.validate()
    if session is None:
        import boto3

        session = boto3.Session()
    sm, iam = session.client("sagemaker"), session.client("iam")
    changes: list[Change] = []

    def done(change: Change) -> None:
        changes.append(change)
        if report is not None:
            report(change)

    deploy_arn = pipeline_arn(sm, settings.deploy_pipeline_name)
    account = deploy_arn.split(":")[4]
    events = session.client("events")
    rule_arn, action = ensure_rule(events, settings)
    done(Change("events-rule", settings.rule_name, action))
    role_arn = settings.events_role_arn
    if not role_arn:
        role_name = f"{settings.prefix}-deploy-trigger"
        role_arn, action = ensure_role(iam, role_name, trust_policy("events.amazonaws.com", account, rule_arn),
                                       start_pipeline_policy(deploy_arn), settings.tags)
        done(Change("iam-role", role_name, action))
    done(Change("events-target", f"{settings.rule_name}/{TARGET_ID}",
                ensure_target(events, settings, deploy_arn, role_arn)))
    if settings.retrain_schedule:
        build_arn = pipeline_arn(sm, settings.build_pipeline_name)
        role_arn = settings.scheduler_role_arn
        if not role_arn:
            role_name = f"{settings.prefix}-retrain-schedule"
            role_arn, action = ensure_role(iam, role_name, trust_policy("scheduler.amazonaws.com", account),
                                           start_pipeline_policy(build_arn), settings.tags)
            done(Change("iam-role", role_name, action))
        done(Change("schedule", settings.schedule_name,
                    ensure_schedule(session.client("scheduler"), settings, build_arn, role_arn)))
    return changes


# -- imgpipe triggers apply -----------------------------------------------------------------
def _json_object(text: Optional[str], what: str) -> dict:
    from pipelines.common import UsageError
    from pipelines.pipeline_args import convert_struct

    value = convert_struct(text, what)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a JSON object of pipeline parameters, got {text!r}")
    return value


def settings_from_args(args: argparse.Namespace) -> TriggerSettings:
    from pipelines.pipeline_args import parse_tags

    return TriggerSettings(
        model_package_group_name=args.model_package_group,
        deploy_pipeline_name=args.deploy_pipeline,
        build_pipeline_name=args.build_pipeline,
        retrain_schedule=args.retrain_schedule or None,
        schedule_timezone=args.schedule_timezone,
        deploy_parameters=_json_object(args.deploy_parameters, "--deploy-parameters"),
        retrain_parameters=_json_object(args.retrain_parameters, "--retrain-parameters"),
        name_prefix=args.name_prefix,
        events_role_arn=args.events_role_arn,
        scheduler_role_arn=args.scheduler_role_arn,
        tags=tuple(parse_tags(args.tags)),
    )


def run_aws_command(action: Callable[[], Any]) -> int:
    """Run a CLI command's AWS work: bad input exits 2 with its message, an AWS or other error
    exits 1 with one line naming what was refused (never a traceback), success 0."""
    from pipelines.common import UsageError
    from pipelines.run_pipeline import _error_message

    try:
        action()
    except (UsageError, TriggerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a CLI: one line, not a traceback
        print(f"error: {_error_message(exc)[0]}", file=sys.stderr)
        return 1
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    if args.backend == "local":
        print("local backend: nothing to apply. `imgpipe models approve|reject` starts the local "
              "deploy pipeline itself; schedule retraining with cron running `imgpipe run`.")
        return 0

    def apply() -> None:
        import boto3

        apply_triggers(settings_from_args(args), boto3.Session(region_name=args.region),
                       report=lambda c: print(c, flush=True))

    return run_aws_command(apply)


def register(subparsers) -> None:
    """``imgpipe triggers apply|template|deploy``."""
    triggers = subparsers.add_parser("triggers", help="approval-deploy rule and retraining schedule")
    sub = triggers.add_subparsers(dest="triggers_command", metavar="SUBCOMMAND")
    sub.required = True
    apply = sub.add_parser("apply", help="create or correct the triggers (idempotent)",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    apply.add_argument("--backend", choices=("aws", "local"), default="local")
    apply.add_argument("--model-package-group", default="ImgpipeModels")
    apply.add_argument("--deploy-pipeline", default="ImgpipeDeploy", help="pipeline approvals start")
    apply.add_argument("--build-pipeline", default="ImgpipeBuild", help="pipeline the schedule starts")
    apply.add_argument("--retrain-schedule", default=None,
                       help="e.g. 'rate(7 days)' or 'cron(0 3 ? * MON *)'; empty: no schedule")
    apply.add_argument("--schedule-timezone", default="UTC")
    apply.add_argument("--deploy-parameters", default=None, help="JSON object: more deploy pipeline parameters")
    apply.add_argument("--retrain-parameters", default=None, help="JSON object: build pipeline parameters")
    apply.add_argument("--name-prefix", default=None, help="prefix of the rule, schedule and role names")
    apply.add_argument("--events-role-arn", default=None, help="existing role for the rule (none created)")
    apply.add_argument("--scheduler-role-arn", default=None, help="existing role for the schedule")
    apply.add_argument("--tags", default=None, help='JSON list of {"Key": ..., "Value": ...}')
    apply.add_argument("--region", default=None)
    apply.set_defaults(func=cmd_apply)
    from pipelines.aws.triggers_template import register as register_template

    register_template(sub)
