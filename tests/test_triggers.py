"""pipelines/aws/triggers.py against moto (EventBridge, Scheduler, IAM, SageMaker): the approval rule's
pattern and target, least-privilege roles, the retraining schedule, and idempotence."""
from __future__ import annotations

import json

import pytest
from awsfakes import fake_aws

from pipelines.aws.triggers import TriggerError, TriggerSettings, apply_triggers

REGION = "us-east-1"
GROUP = "imgpipe-p-1"
DEPLOY, BUILD = "imgpipe-p-1-deploy", "imgpipe-p-1"
ACCOUNT = "123456789012"


@pytest.fixture
def session(monkeypatch):
    """A boto3 session on moto, with the two pipelines the triggers start."""
    with fake_aws(monkeypatch, REGION) as session:
        sm = session.client("sagemaker")
        for name in (DEPLOY, BUILD):
            sm.create_pipeline(PipelineName=name, RoleArn=f"arn:aws:iam::{ACCOUNT}:role/pipeline",
                               PipelineDefinition=json.dumps({"Version": "2020-12-01", "Steps": []}))
        yield session


def settings(**extra) -> TriggerSettings:
    return TriggerSettings(model_package_group_name=GROUP, deploy_pipeline_name=DEPLOY,
                           build_pipeline_name=BUILD, **extra)


def pipeline_arn(name: str) -> str:
    return f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:pipeline/{name}"


def event(group: str, status: str) -> dict:
    """A model package state change event as EventBridge delivers it."""
    return {"version": "0", "id": "e1", "detail-type": "SageMaker Model Package State Change",
            "source": "aws.sagemaker", "account": ACCOUNT, "time": "2026-05-01T00:00:00Z", "region": REGION,
            "resources": [f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/{group}/3"],
            "detail": {"ModelPackageGroupName": group, "ModelPackageVersion": 3, "ModelApprovalStatus": status,
                       "ModelPackageArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/{group}/3"}}


def state(session) -> dict:
    """Everything the triggers own, as AWS describes it."""
    events, iam, scheduler = (session.client(s) for s in ("events", "iam", "scheduler"))
    strip = lambda d: {k: v for k, v in d.items() if k not in ("ResponseMetadata", "CreationDate", "LastModificationDate")}  # noqa: E731
    roles = {}
    for role in iam.list_roles()["Roles"]:
        name = role["RoleName"]
        roles[name] = {"trust": role["AssumeRolePolicyDocument"],
                       "policies": {p: iam.get_role_policy(RoleName=name, PolicyName=p)["PolicyDocument"]
                                    for p in iam.list_role_policies(RoleName=name)["PolicyNames"]},
                       "attached": iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]}
    return {"rules": [strip(r) for r in events.list_rules()["Rules"]],
            "targets": {r["Name"]: events.list_targets_by_rule(Rule=r["Name"])["Targets"] for r in events.list_rules()["Rules"]},
            "schedules": [strip(scheduler.get_schedule(Name=s["Name"])) for s in scheduler.list_schedules()["Schedules"]],
            "roles": roles}


def test_approval_rule_pattern_target_and_least_privilege_role(session):
    from moto.events.models import EventPattern

    changes = apply_triggers(settings(), session)
    assert [str(c) for c in changes] == [
        f"events-rule {DEPLOY}-model-approval: created",
        f"iam-role {DEPLOY}-deploy-trigger: created",
        f"events-target {DEPLOY}-model-approval/imgpipe-deploy-pipeline: created"]
    events, iam = session.client("events"), session.client("iam")
    rule = events.describe_rule(Name=f"{DEPLOY}-model-approval")
    pattern = json.loads(rule["EventPattern"])
    assert pattern == {"source": ["aws.sagemaker"], "detail-type": ["SageMaker Model Package State Change"],
                       "detail": {"ModelPackageGroupName": [GROUP], "ModelApprovalStatus": ["Approved", "Rejected"]}}
    assert rule["State"] == "ENABLED"
    matcher = EventPattern.load(rule["EventPattern"])  # moto's implementation of EventBridge matching
    assert matcher.matches_event(event(GROUP, "Approved")) and matcher.matches_event(event(GROUP, "Rejected"))
    assert not matcher.matches_event(event(GROUP, "PendingManualApproval"))
    assert not matcher.matches_event(event("another-group", "Approved"))

    [target] = events.list_targets_by_rule(Rule=f"{DEPLOY}-model-approval")["Targets"]
    role = iam.get_role(RoleName=f"{DEPLOY}-deploy-trigger")["Role"]
    assert target == {"Id": "imgpipe-deploy-pipeline", "Arn": pipeline_arn(DEPLOY), "RoleArn": role["Arn"],
                      "SageMakerPipelineParameters": {"PipelineParameterList": [
                          {"Name": "ModelPackageGroupName", "Value": GROUP}]}}
    assert role["AssumeRolePolicyDocument"]["Statement"] == [{
        "Effect": "Allow", "Principal": {"Service": "events.amazonaws.com"}, "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"aws:SourceAccount": ACCOUNT}, "ArnEquals": {"aws:SourceArn": rule["Arn"]}}}]
    assert iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"] == ["start-pipeline"]
    assert iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"] == []
    policy = iam.get_role_policy(RoleName=role["RoleName"], PolicyName="start-pipeline")["PolicyDocument"]
    assert policy["Statement"] == [{"Sid": "StartThisPipelineOnly", "Effect": "Allow",
                                    "Action": "sagemaker:StartPipelineExecution", "Resource": pipeline_arn(DEPLOY)}]
    assert session.client("scheduler").list_schedules()["Schedules"] == []  # no schedule asked for


def test_retraining_schedule_with_the_configured_expression(session):
    apply_triggers(settings(retrain_schedule="cron(0 3 ? * MON *)", retrain_parameters={"MaxTuningJobs": 8}), session)
    scheduler, iam = session.client("scheduler"), session.client("iam")
    schedule = scheduler.get_schedule(Name=f"{DEPLOY}-retrain")
    role = iam.get_role(RoleName=f"{DEPLOY}-retrain-schedule")["Role"]
    assert schedule["ScheduleExpression"] == "cron(0 3 ? * MON *)" and schedule["State"] == "ENABLED"
    assert schedule["Target"]["Arn"] == pipeline_arn(BUILD) and schedule["Target"]["RoleArn"] == role["Arn"]
    assert schedule["Target"]["SageMakerPipelineParameters"] == {
        "PipelineParameterList": [{"Name": "MaxTuningJobs", "Value": "8"}]}
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "scheduler.amazonaws.com"}
    policy = iam.get_role_policy(RoleName=role["RoleName"], PolicyName="start-pipeline")["PolicyDocument"]
    assert policy["Statement"][0]["Resource"] == pipeline_arn(BUILD)

    changes = apply_triggers(settings(retrain_schedule="rate(7 days)", retrain_parameters={"MaxTuningJobs": 8}), session)
    assert {c.name: c.action for c in changes}[f"{DEPLOY}-retrain"] == "updated"
    assert scheduler.get_schedule(Name=f"{DEPLOY}-retrain")["ScheduleExpression"] == "rate(7 days)"


def test_applying_twice_changes_nothing_and_drift_is_corrected(session):
    wanted = settings(retrain_schedule="rate(1 day)", deploy_parameters={"EndpointName": "imgpipe-prod"})
    apply_triggers(wanted, session)
    before = state(session)
    writes = []
    session._session.register("before-call", lambda model, **_: writes.append(model.name))
    changes = apply_triggers(wanted, session)
    assert {c.action for c in changes} == {"unchanged"} and len(changes) == 5
    assert {"DescribeRule", "GetRole", "GetSchedule"} <= set(writes)  # every call was seen
    assert not [w for w in writes if w.startswith(("Put", "Create", "Update", "Delete", "Tag"))], writes
    assert state(session) == before

    iam = session.client("iam")  # someone widens the role by hand: the next apply narrows it again
    iam.put_role_policy(RoleName=f"{DEPLOY}-deploy-trigger", PolicyName="start-pipeline", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sagemaker:*", "Resource": "*"}]}))
    changes = apply_triggers(wanted, session)
    assert [c.name for c in changes if c.action == "updated"] == [f"{DEPLOY}-deploy-trigger"]
    assert state(session) == before


def test_bad_settings_and_missing_pipelines_are_clear_errors(session):
    with pytest.raises(TriggerError, match="is not cron"):
        apply_triggers(settings(retrain_schedule="every monday"), session)
    with pytest.raises(TriggerError, match="pipeline 'nope' does not exist: upsert it first"):
        apply_triggers(TriggerSettings(model_package_group_name=GROUP, deploy_pipeline_name="nope"), session)
    with pytest.raises(TriggerError, match="needs the build pipeline's name"):
        apply_triggers(TriggerSettings(model_package_group_name=GROUP, deploy_pipeline_name=DEPLOY,
                                       retrain_schedule="rate(1 day)"), session)
    assert session.client("events").list_rules()["Rules"] == []


def test_imgpipe_triggers_apply_cli(session, capsys):
    from pipelines.cli import main

    args = ["triggers", "apply", "--backend", "aws", "--model-package-group", GROUP, "--deploy-pipeline", DEPLOY,
            "--build-pipeline", BUILD, "--retrain-schedule", "rate(7 days)", "--region", REGION,
            "--tags", '[{"Key": "sagemaker:project-name", "Value": "imgpipe"}]']
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"schedule {DEPLOY}-retrain: created"
    assert main(args) == 0
    assert all(line.endswith(": unchanged") for line in capsys.readouterr().out.splitlines())
    role = session.client("iam").get_role(RoleName=f"{DEPLOY}-deploy-trigger")["Role"]
    assert {"Key": "sagemaker:project-name", "Value": "imgpipe"} in role.get("Tags", [])
    assert main(["triggers", "apply", "--backend", "aws", "--deploy-pipeline", "nope", "--region", REGION]) == 2
    assert "does not exist" in capsys.readouterr().err
