"""The triggers as CloudFormation (``infra/triggers.yml``): print the template, its parameters, or
deploy it as a stack.

AWS's SageMaker project templates declare what CodeBuild may not create (rules, schedules, roles)
in CloudFormation, deployed once by an administrator; ``imgpipe triggers apply`` remains for
accounts whose role may create them. Both use the same names (:class:`TriggerSettings` prefix,
shortened with a hash past 40 characters) and the same event pattern.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from pipelines.aws.triggers import TriggerError, TriggerSettings

TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "triggers.yml"


def template_text() -> str:
    """The CloudFormation template (YAML)."""
    if not TEMPLATE.is_file():
        raise TriggerError(f"the triggers template is missing: {TEMPLATE}")
    return TEMPLATE.read_text()


def pipeline_arn(name: str, region: str, account: str, partition: str = "aws") -> str:
    """A pipeline's ARN as SageMaker writes it: the name lower-cased."""
    return f"arn:{partition}:sagemaker:{region}:{account}:pipeline/{name.lower()}"


def stack_parameters(settings: TriggerSettings, project_name: str, project_id: str,
                     region: str, account: str) -> dict[str, str]:
    """The template's parameter values for these trigger settings."""
    settings.validate()
    if settings.deploy_parameters or settings.retrain_parameters:
        raise TriggerError("the template passes only ModelPackageGroupName to the deploy pipeline; "
                           "use `imgpipe triggers apply` for more pipeline parameters")
    return {
        "ProjectName": project_name,
        "ProjectId": project_id,
        "NamePrefix": settings.prefix,
        "ModelPackageGroupName": settings.model_package_group_name,
        "DeployPipelineArn": pipeline_arn(settings.deploy_pipeline_name, region, account),
        "BuildPipelineArn": pipeline_arn(settings.build_pipeline_name or settings.deploy_pipeline_name,
                                         region, account),
        "RetrainSchedule": settings.retrain_schedule or "",
        "ScheduleTimezone": settings.schedule_timezone,
    }


def deploy_stack(cloudformation: Any, stack_name: str, parameters: dict[str, str],
                 tags: tuple = ()) -> str:
    """Create the stack, or update it if it exists; ``created``/``updated``/``unchanged``."""
    request = {"StackName": stack_name, "TemplateBody": template_text(),
               "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
               "Capabilities": ["CAPABILITY_NAMED_IAM"], **({"Tags": list(tags)} if tags else {})}
    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except Exception as exc:  # noqa: BLE001 - botocore ClientError: the stack does not exist
        if "does not exist" not in str(exc):
            raise
        stacks = []
    if not stacks or stacks[0].get("StackStatus") == "DELETE_COMPLETE":
        cloudformation.create_stack(**request)
        cloudformation.get_waiter("stack_create_complete").wait(StackName=stack_name)
        return "created"
    try:
        cloudformation.update_stack(**request)
    except Exception as exc:  # noqa: BLE001
        if "No updates are to be performed" in str(exc):
            return "unchanged"
        raise
    cloudformation.get_waiter("stack_update_complete").wait(StackName=stack_name)
    return "updated"


def _parameters_from_args(args: argparse.Namespace, session: Optional[Any]) -> dict[str, str]:
    from pipelines.aws.triggers import settings_from_args

    region, account = args.region, args.account
    if session is not None:
        region = region or session.region_name
        account = account or session.client("sts").get_caller_identity()["Account"]
    if not region or not account:
        raise TriggerError("--region and --account are needed to name the pipelines' ARNs")
    return stack_parameters(settings_from_args(args), args.project_name, args.project_id, region, account)


def cmd_template(args: argparse.Namespace) -> int:
    """``imgpipe triggers template``: the template, or with ``--parameters`` its values (JSON)."""
    from pipelines.common import UsageError

    try:
        if not args.parameters:
            sys.stdout.write(template_text())
            return 0
        values = _parameters_from_args(args, None)
    except (UsageError, TriggerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps([{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()], indent=2))
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    """``imgpipe triggers deploy``: create or update the stack."""
    from pipelines.aws.triggers import run_aws_command
    from pipelines.pipeline_args import parse_tags

    def deploy() -> None:
        import boto3

        session = boto3.Session(region_name=args.region)
        values = _parameters_from_args(args, session)
        action = deploy_stack(session.client("cloudformation"), args.stack_name, values,
                              tuple(parse_tags(args.tags)))
        print(f"stack {args.stack_name}: {action}")

    return run_aws_command(deploy)


def _settings_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project-name", default="imgpipe", help="SageMaker project name (tags)")
    parser.add_argument("--project-id", default="local", help="SageMaker project id (tags)")
    parser.add_argument("--model-package-group", default="ImgpipeModels")
    parser.add_argument("--deploy-pipeline", default="ImgpipeDeploy")
    parser.add_argument("--build-pipeline", default="ImgpipeBuild")
    parser.add_argument("--retrain-schedule", default=None)
    parser.add_argument("--schedule-timezone", default="UTC")
    parser.add_argument("--name-prefix", default=None)
    parser.add_argument("--region", default=None)
    parser.add_argument("--account", default=None, help="AWS account id (deploy: from STS)")
    parser.set_defaults(deploy_parameters=None, retrain_parameters=None, events_role_arn=None,
                        scheduler_role_arn=None)


def register(sub) -> None:
    """``imgpipe triggers template`` and ``imgpipe triggers deploy``."""
    template = sub.add_parser("template", help="print the CloudFormation template (or its parameters)")
    _settings_arguments(template)
    template.add_argument("--parameters", action="store_true",
                          help="print the parameter values for these settings instead (JSON)")
    template.add_argument("--tags", default=None, help=argparse.SUPPRESS)
    template.set_defaults(func=cmd_template)
    deploy = sub.add_parser("deploy", help="create or update the triggers' CloudFormation stack")
    _settings_arguments(deploy)
    deploy.add_argument("--stack-name", required=True)
    deploy.add_argument("--tags", default=None, help='JSON list of {"Key": ..., "Value": ...}')
    deploy.set_defaults(func=cmd_deploy)
