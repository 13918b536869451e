"""The buildspec's build phase as CodeBuild runs it, under IAM: a principal holding only the
stock SageMaker-project CodeBuild policy, or only the least-privilege policy docs/aws.md shows.

moto enforces the policies (see ``iamcheck`` for what moto checks by itself: actions for every
service, resources for S3/IAM/SQS/STS only, no identity-policy conditions, no ``iam:PassRole``;
and what ``iamcheck`` adds: resource ARNs of SageMaker/EventBridge/Scheduler/CloudFormation
requests, ``iam:PassRole`` on passed roles). Every check is recorded, so minimality is proven
against the requests the build really made: without any one statement of the documented
policy, some request the build needs is denied.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from iamcheck import ADMIN_POLICY, allowed, enforce, fill, policy_blocks, principal, without_each_statement
import test_buildspec
from test_buildspec import BUCKET, codebuild_env, commands

REPO = Path(__file__).resolve().parent.parent
buildspec, moto_server = test_buildspec.buildspec, test_buildspec.moto_server  # the same fixtures
STOCK = json.loads((REPO / "tests/data/iam/AmazonSageMakerServiceCatalogProductsCodeBuildServiceRolePolicy.json").read_text())
ACCOUNT = "123456789012"
REGION = "us-east-1"
# The roles a SageMaker project created from Studio's templates uses (the stock CodeBuild policy
# may pass these and no other).
PIPELINE_ROLE = f"arn:aws:iam::{ACCOUNT}:role/service-role/AmazonSageMakerServiceCatalogProductsExecutionRole"


def documented_codebuild_policy(project: str, project_id: str) -> dict:
    """The CodeBuild role policy of docs/aws.md, its placeholders filled for this project."""
    [policy] = policy_blocks((REPO / "docs/aws.md").read_text(), "### The CodeBuild role")
    name = f"{project}-{project_id}"
    return fill(policy, {"REGION": REGION, "ACCOUNT_ID": ACCOUNT, "ARTIFACT_BUCKET": BUCKET,
                         "PIPELINE_NAME": name, "PIPELINE_NAME_LOWER_CASE": name.lower(),
                         "PIPELINE_ROLE_ARN": PIPELINE_ROLE})


def run_build(buildspec, endpoint: str, home: Path, monkeypatch, project: str, policy: dict,
              audit: list | None = None, builds: int = 1) -> tuple[subprocess.CompletedProcess, dict]:
    """The build phase as a principal holding only ``policy``, ``builds`` times (the first
    creates the pipelines, the next update them); (last process, admin client keys)."""
    import boto3

    def client(service, **keys):
        keys = keys or {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        return boto3.client(service, endpoint_url=endpoint, region_name=REGION, **keys)

    import requests

    requests.post(f"{endpoint}/moto-api/reset", timeout=30)  # moto's state is per process
    client("s3").create_bucket(Bucket=BUCKET)
    iam = client("iam")
    iam.create_role(RoleName="AmazonSageMakerServiceCatalogProductsExecutionRole", Path="/service-role/",
                    AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{
                        "Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"},
                        "Action": "sts:AssumeRole"}]}))
    admin = principal(iam, "admin", ADMIN_POLICY)
    codebuild = principal(iam, "codebuild", policy)
    env = codebuild_env(endpoint, home)
    env.update({k: str(v) for k, v in buildspec.get("env", {}).get("variables", {}).items()})
    env.update(SAGEMAKER_PROJECT_NAME=project, SAGEMAKER_PIPELINE_ROLE_ARN=PIPELINE_ROLE,
               AWS_ACCESS_KEY_ID=codebuild["aws_access_key_id"],
               AWS_SECRET_ACCESS_KEY=codebuild["aws_secret_access_key"])
    script = "set -euo pipefail\n" + "\n".join(commands(buildspec, "build")) + "\n"
    with enforce(monkeypatch, audit):
        for _ in range(builds):
            done = subprocess.run(["bash", "-c", script], cwd=home, env=env, capture_output=True,
                                  text=True, timeout=400)
            if done.returncode:
                break
    return done, admin


def check_pipelines(endpoint: str, admin: dict, name: str, executions: int = 1) -> None:
    import boto3

    sm = boto3.client("sagemaker", endpoint_url=endpoint, region_name=REGION, **admin)
    assert sm.describe_pipeline(PipelineName=name)["RoleArn"] == PIPELINE_ROLE
    assert len(sm.list_pipeline_executions(PipelineName=name)["PipelineExecutionSummaries"]) == executions
    assert sm.describe_pipeline(PipelineName=f"{name}-deploy")["PipelineName"] == f"{name}-deploy"


def test_build_phase_with_the_stock_codebuild_policy(buildspec, moto_server, tmp_path, monkeypatch):
    """A project name with capitals; the stock policy exactly as AWS publishes it."""
    project = "ImgPipe-Vision"
    done, admin = run_build(buildspec, moto_server, tmp_path, monkeypatch, project, STOCK["Document"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    check_pipelines(moto_server, admin, f"{project}-p-1a2b3c4d5e6f")
    assert "triggers: not applied from CodeBuild" in done.stdout


def test_build_phase_with_the_documented_least_privilege_policy(buildspec, moto_server, tmp_path, monkeypatch):
    """A project name with capitals, at SageMaker's 32-character limit; then the policy is
    minimal: without any one statement some request the build made is denied."""
    project, project_id = "ImgPipe-Image-Classification-X12", "p-1a2b3c4d5e6f"
    assert len(project) == 32
    policy = documented_codebuild_policy(project, project_id)
    audit: list = []
    done, admin = run_build(buildspec, moto_server, tmp_path, monkeypatch, project, policy, audit, builds=2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "updated pipeline" in done.stdout
    check_pipelines(moto_server, admin, f"{project}-{project_id}", executions=2)
    made = {(action, resource) for who, action, resource, ok in audit if who.endswith(":user/codebuild") and ok}
    assert any(a == "iam:PassRole" for a, _ in made) and any(a.startswith("s3:") for a, _ in made)
    for sid, smaller in without_each_statement(policy):
        denied = [(a, r) for a, r in made if not allowed(smaller, a, r)]
        assert denied, f"statement {sid} of docs/aws.md's CodeBuild policy is not needed"


def failed_build_error(buildspec, moto_server, tmp_path, monkeypatch, project: str, without_sid: str) -> str:
    """The build as a principal with docs/aws.md's policy less statement ``without_sid``: it fails,
    with exactly one ``error:`` line and no traceback; that line."""
    policy = documented_codebuild_policy(project, "p-1a2b3c4d5e6f")
    policy["Statement"] = [s for s in policy["Statement"] if s.get("Sid") != without_sid]
    done, _ = run_build(buildspec, moto_server, tmp_path, monkeypatch, project, policy)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return errors[0]


def test_a_missing_permission_is_one_line_naming_action_and_resource(buildspec, moto_server, tmp_path, monkeypatch):
    error = failed_build_error(buildspec, moto_server, tmp_path, monkeypatch, "imgpipe", "PassThePipelineRole")
    assert "iam:PassRole" in error and PIPELINE_ROLE in error, error


def test_a_refused_code_upload_is_one_line_naming_s3_putobject_and_the_object(buildspec, moto_server, tmp_path, monkeypatch):
    """The SDK uploads the step code with S3Transfer: its S3UploadFailedError becomes AWS's words."""
    project = "imgpipe"
    error = failed_build_error(buildspec, moto_server, tmp_path, monkeypatch, project, "UploadStepCode")
    assert error.startswith(f"error: AWS refused s3:PutObject on arn:aws:s3:::{BUCKET}/{project}-p-1a2b3c4d5e6f/"), error
    assert "S3UploadFailedError" not in error
