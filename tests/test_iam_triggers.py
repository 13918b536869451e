"""``imgpipe triggers apply`` (the buildspec's opt-in path) under IAM: a principal holding only
docs/aws.md's CodeBuild policy plus docs/deploy.md's trigger statements (both read from the docs'
fenced JSON blocks), for a project name with capitals at SageMaker's 32-character limit, whose
deploy pipeline ``<project>-<id>-deploy`` (54 characters) makes the trigger names shortened and
hashed. moto enforces the policy (``iamcheck``: EventBridge and Scheduler resources, IAM role
resources, ``iam:PassRole`` on the roles the rule's target and the schedule pass).
"""
from __future__ import annotations

import json

import pytest
from awsfakes import REPO, fake_aws
from iamcheck import ADMIN_POLICY, allowed, enforce, fill, policy_blocks, principal, without_each_statement

from pipelines.aws.triggers import TriggerSettings

REGION, ACCOUNT = "us-east-1", "123456789012"
PROJECT, PROJECT_ID = "ImgPipe-Image-Classification-X12", "p-1a2b3c4d5e6f"
NAME = f"{PROJECT}-{PROJECT_ID}"
DEPLOY = f"{NAME}-deploy"
BUCKET = "sagemaker-project-p-1a2b3c4d5e6f"
PIPELINE_ROLE = f"arn:aws:iam::{ACCOUNT}:role/service-role/AmazonSageMakerServiceCatalogProductsExecutionRole"


def trigger_statements() -> list:
    """docs/deploy.md's CodeBuild statements for ``imgpipe triggers apply`` (its last JSON block)."""
    prefix = DEPLOY[:31].rstrip("-")
    return fill({"Statement": policy_blocks((REPO / "docs/deploy.md").read_text(), "## IAM additions")[-1]},
                {"REGION": REGION, "ACCOUNT_ID": ACCOUNT, "TRIGGER_PREFIX": prefix})["Statement"]


def codebuild_policy() -> dict:
    """docs/aws.md's CodeBuild policy (filled for this project) plus the trigger statements."""
    [policy] = policy_blocks((REPO / "docs/aws.md").read_text(), "### The CodeBuild role")
    policy = fill(policy, {"REGION": REGION, "ACCOUNT_ID": ACCOUNT, "ARTIFACT_BUCKET": BUCKET,
                           "PIPELINE_NAME": NAME, "PIPELINE_NAME_LOWER_CASE": NAME.lower(),
                           "PIPELINE_ROLE_ARN": PIPELINE_ROLE})
    return {**policy, "Statement": policy["Statement"] + trigger_statements()}


@pytest.fixture
def session(monkeypatch):
    with fake_aws(monkeypatch, REGION) as session:
        sm = session.client("sagemaker")
        for name in (NAME, DEPLOY):
            sm.create_pipeline(PipelineName=name, RoleArn=PIPELINE_ROLE,
                               PipelineDefinition=json.dumps({"Version": "2020-12-01", "Steps": []}))
        yield session


def apply_args(schedule: str) -> list[str]:
    return ["triggers", "apply", "--backend", "aws", "--model-package-group", NAME, "--deploy-pipeline", DEPLOY,
            "--build-pipeline", NAME, "--retrain-schedule", schedule, "--region", REGION,
            "--tags", json.dumps([{"Key": "sagemaker:project-name", "Value": PROJECT}])]


def run_apply(session, monkeypatch, policy: dict, audit: list, capsys) -> list[tuple[int, str, str]]:
    """apply (creates), drift by an administrator, apply again (corrects); (status, out, err) each."""
    import boto3

    from pipelines.cli import main

    iam = session.client("iam")
    admin = principal(iam, "admin", ADMIN_POLICY)
    keys = principal(iam, "codebuild", policy)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["aws_secret_access_key"])
    runs = []
    with enforce(monkeypatch, audit):
        runs.append((main(apply_args("rate(7 days)")), *capsys.readouterr()))
        role = f"{TriggerSettings(NAME, DEPLOY).prefix}-deploy-trigger"
        if runs[0][0] == 0:  # someone widens the rule's role trust by hand
            boto3.client("iam", region_name=REGION, **admin).update_assume_role_policy(
                RoleName=role, PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{
                    "Effect": "Allow", "Principal": {"Service": "events.amazonaws.com"}, "Action": "sts:AssumeRole"}]}))
            runs.append((main(apply_args("rate(1 day)")), *capsys.readouterr()))
    return runs


def test_triggers_apply_under_the_documented_codebuild_statements_which_are_minimal(session, monkeypatch, capsys):
    prefix = TriggerSettings(NAME, DEPLOY).prefix
    assert len(DEPLOY) > 40 and prefix != DEPLOY and prefix.startswith(DEPLOY[:31])  # shortened, hashed
    policy = codebuild_policy()
    audit: list = []
    runs = run_apply(session, monkeypatch, policy, audit, capsys)
    assert [status for status, _, _ in runs] == [0, 0], runs
    assert f"schedule {prefix}-retrain: created" in runs[0][1]
    assert f"iam-role {prefix}-deploy-trigger: updated" in runs[1][1] and f"schedule {prefix}-retrain: updated" in runs[1][1]
    made = {(a, r) for who, a, r, ok in audit if who.endswith(":user/codebuild") and ok}
    assert not [(a, r) for who, a, r, ok in audit if who.endswith(":user/codebuild") and not ok]
    assert ("events:PutRule", f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{prefix}-model-approval") in made
    assert ("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/{prefix}-retrain-schedule") in made
    assert {a for a, _ in made} >= {"scheduler:UpdateSchedule", "iam:UpdateAssumeRolePolicy", "iam:CreateRole"}
    statements = trigger_statements()
    for sid, smaller in without_each_statement(policy):
        if any(s.get("Sid") == sid for s in statements):
            assert [(a, r) for a, r in made if not allowed(smaller, a, r)], \
                f"statement {sid} of docs/deploy.md's trigger statements is not needed"


def test_without_a_trigger_statement_apply_says_what_it_could_not_do(session, monkeypatch, capsys):
    policy = codebuild_policy()
    policy["Statement"] = [s for s in policy["Statement"] if s.get("Sid") != "ManageTheRetrainingSchedule"]
    [(status, out, err)] = run_apply(session, monkeypatch, policy, [], capsys)
    prefix = TriggerSettings(NAME, DEPLOY).prefix
    assert status == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: AWS refused scheduler:GetSchedule on "
                          f"arn:aws:scheduler:{REGION}:{ACCOUNT}:schedule/default/{prefix}-retrain"), err
    assert f"events-rule {prefix}-model-approval: created" in out  # what it could do is done and said
