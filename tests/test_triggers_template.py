"""infra/triggers.yml: cfn-lint clean, the same event pattern and names as ``imgpipe triggers
apply`` (checked on the same event fixtures with moto's EventBridge matcher), its parameters from
the CLI, and a stack deployed through moto's CloudFormation."""
from __future__ import annotations

import json

import pytest
from awsfakes import fake_aws
from test_triggers import ACCOUNT, GROUP, REGION, event

from pipelines.aws.triggers import TriggerSettings, event_pattern
from pipelines.aws.triggers_template import TEMPLATE, stack_parameters

LONG = "ImgPipe-Image-Classification-X12-p-1a2b3c4d5e6f-deploy"


def as_dict(document) -> dict:
    """A policy document as moto returns it: a dict, JSON, or (from CloudFormation) a dict's repr."""
    import ast

    if isinstance(document, dict):
        return document
    try:
        return json.loads(document)
    except ValueError:
        return ast.literal_eval(document)


def load_template() -> dict:
    from cfnlint.decode import decode

    template, errors = decode(str(TEMPLATE))
    assert not errors, errors
    return template


def test_cfn_lint_is_clean():
    """No error or warning (what the cfn-lint command reports by default; informational
    I-rules are not part of that)."""
    from cfnlint.api import lint_all

    matches = [m for m in lint_all(TEMPLATE.read_text()) if m.rule.id[0] in "EW"]
    assert matches == [], [str(m) for m in matches]
    broken = TEMPLATE.read_text().replace("Type: AWS::Events::Rule", "Type: AWS::Events::Rulez")
    assert [m for m in lint_all(broken) if m.rule.id[0] == "E"]  # the check can fail


def test_event_pattern_is_the_rules_and_matches_the_fixtures():
    from moto.events.models import EventPattern

    pattern = load_template()["Resources"]["ApprovalRule"]["Properties"]["EventPattern"]
    filled = json.loads(json.dumps(pattern).replace('{"Ref": "ModelPackageGroupName"}', json.dumps(GROUP)))
    assert filled == event_pattern(GROUP)
    matcher = EventPattern.load(json.dumps(filled))
    assert matcher.matches_event(event(GROUP, "Approved")) and matcher.matches_event(event(GROUP, "Rejected"))
    assert not matcher.matches_event(event(GROUP, "PendingManualApproval"))
    assert not matcher.matches_event(event("other-group", "Approved"))


def test_names_match_apply_and_arns_are_lower_case():
    settings = TriggerSettings(model_package_group_name="ImgPipe-G", deploy_pipeline_name=LONG,
                               build_pipeline_name="ImgPipe-B", retrain_schedule="rate(7 days)")
    values = stack_parameters(settings, "ImgPipe", "p-1", REGION, ACCOUNT)
    assert values["NamePrefix"] == settings.prefix and len(values["NamePrefix"]) <= 40
    assert values["DeployPipelineArn"] == f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:pipeline/{LONG.lower()}"
    assert values["BuildPipelineArn"].endswith(":pipeline/imgpipe-b")
    resources = load_template()["Resources"]
    assert resources["ApprovalRule"]["Properties"]["Name"] == {"Fn::Sub": "${NamePrefix}-model-approval"}
    assert settings.rule_name == f"{settings.prefix}-model-approval"
    assert resources["RetrainingSchedule"]["Properties"]["Name"] == {"Fn::Sub": "${NamePrefix}-retrain"}
    assert settings.schedule_name == f"{settings.prefix}-retrain"


def test_template_command_prints_template_and_parameters(capsys):
    from pipelines.cli import main

    assert main(["triggers", "template"]) == 0
    assert capsys.readouterr().out == TEMPLATE.read_text()
    assert main(["triggers", "template", "--parameters", "--region", REGION, "--account", ACCOUNT,
                 "--deploy-pipeline", "ImgPipe-p-1-deploy", "--retrain-schedule", "rate(1 day)"]) == 0
    values = {p["ParameterKey"]: p["ParameterValue"] for p in json.loads(capsys.readouterr().out)}
    assert values["DeployPipelineArn"].endswith(":pipeline/imgpipe-p-1-deploy")
    assert values["RetrainSchedule"] == "rate(1 day)"
    assert main(["triggers", "template", "--parameters", "--retrain-schedule", "weekly",
                 "--region", REGION, "--account", ACCOUNT]) == 2
    assert "retraining schedule 'weekly'" in capsys.readouterr().err


def test_deploy_creates_the_rule_and_role_stack(monkeypatch, capsys):
    """Without a schedule (moto's CloudFormation has no AWS::Scheduler::Schedule)."""
    from pipelines.cli import main

    with fake_aws(monkeypatch, REGION) as session:
        args = ["triggers", "deploy", "--stack-name", "imgpipe-triggers", "--region", REGION,
                "--model-package-group", GROUP, "--deploy-pipeline", "ImgPipe-p-1-deploy"]
        assert main(args) == 0, capsys.readouterr().err
        assert "stack imgpipe-triggers: created" in capsys.readouterr().out
        events, iam = session.client("events"), session.client("iam")
        rule = events.describe_rule(Name="ImgPipe-p-1-deploy-model-approval")
        assert json.loads(rule["EventPattern"]) == event_pattern(GROUP)
        role = iam.get_role(RoleName="ImgPipe-p-1-deploy-deploy-trigger")["Role"]
        trust = as_dict(role["AssumeRolePolicyDocument"])
        assert trust["Statement"][0]["Principal"] == {"Service": "events.amazonaws.com"}
        policy = iam.get_role_policy(RoleName=role["RoleName"], PolicyName="start-pipeline")["PolicyDocument"]
        policy = as_dict(policy)
        assert policy["Statement"][0]["Resource"] == f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:pipeline/imgpipe-p-1-deploy"
        with pytest.raises(Exception):
            iam.get_role(RoleName="ImgPipe-p-1-deploy-retrain-schedule")
