"""The deploy pipeline's steps under IAM: ``steps/deploy.py`` and ``steps/check_endpoint.py`` run
(through their ``main()``) as a principal holding only the pipeline-role statements docs/deploy.md
documents, read from the doc's fenced JSON block, so the doc and the test cannot drift.

The project name has capitals and is at SageMaker's 32-character project-name limit, so the
endpoint ``<project>-<id>`` (47 characters) is cut to fit the 63-character model and endpoint-config
names (``<endpoint>-v<version>-<timestamp>``), and every SageMaker ARN is lower-case.

moto enforces the policy (``iamcheck``: actions, resources of SageMaker and SageMaker runtime
requests with lower-cased names, ``iam:PassRole`` on the model role). moto has no UpdateEndpoint:
:func:`moto_update_endpoint` adds it (it switches the endpoint's config, as SageMaker does once an
update succeeds) after moto's own authorisation of the request. Every check is recorded, so the
policy is shown minimal against the requests the steps really made.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from awsfakes import REPO, fake_aws, load_step
from iamcheck import ADMIN_POLICY, allowed, enforce, fill, policy_blocks, principal, without_each_statement
from imagefactory import write_image

REGION, ACCOUNT = "us-east-1", "123456789012"
PROJECT = "ImgPipe-Image-Classification-X12"  # SageMaker's project-name limit: 32 characters
ENDPOINT = GROUP = f"{PROJECT}-p-1a2b3c4d5e6f"
MODEL_ROLE = f"arn:aws:iam::{ACCOUNT}:role/imgpipe-model"
CAPTURE = f"s3://sagemaker-project-p-1a2b3c4d5e6f/{GROUP}/data-capture"
ENDPOINT_PREFIX_LENGTH = 40  # docs/deploy.md: <ENDPOINT_PREFIX>


def documented_pipeline_role_statements() -> dict:
    """docs/deploy.md's pipeline-role statements (its first JSON block) as a policy, filled in."""
    statements = policy_blocks((REPO / "docs/deploy.md").read_text(), "## IAM additions")[0]
    prefix = ENDPOINT.lower()[:ENDPOINT_PREFIX_LENGTH].rstrip("-")
    return fill({"Version": "2012-10-17", "Statement": statements}, {
        "REGION": REGION, "ACCOUNT_ID": ACCOUNT, "GROUP_LOWER_CASE": GROUP.lower(),
        "ENDPOINT_LOWER_CASE": ENDPOINT.lower(), "ENDPOINT_PREFIX": prefix, "MODEL_ROLE_NAME": "imgpipe-model"})


def moto_update_endpoint(self):
    """UpdateEndpoint for moto's SageMaker (moto lacks it): the endpoint serves the new config."""
    from moto.core.responses import ActionResult

    endpoint = self.sagemaker_backend.endpoints[self._get_param("EndpointName")]
    config = self.sagemaker_backend.describe_endpoint_config(self._get_param("EndpointConfigName"))
    endpoint.endpoint_config_name = config["EndpointConfigName"]
    endpoint.production_variants = endpoint._process_production_variants(config["ProductionVariants"])
    return ActionResult({"EndpointArn": endpoint.arn})


def moto_invoke_endpoint(self):
    """moto's InvokeEndpoint, for binary bodies (moto's decodes the body as UTF-8, which an image is not)."""
    from moto.sagemakerruntime.models import sagemakerruntime_backends

    backend = sagemakerruntime_backends[self.current_account][self.region]
    name = self.path.split("/endpoints/")[1].split("/")[0]
    body, content_type, variant, _ = backend.invoke_endpoint(name, hashlib.sha256(self.raw_body).hexdigest().encode())
    return 200, {"Content-Type": content_type, "x-Amzn-Invoked-Production-Variant": variant}, body


def raw_body_setup(self, request, full_url, headers, use_raw_body=False):
    """sagemaker-runtime requests keep their bytes (moto would decode them as UTF-8)."""
    from moto.core.responses import BaseResponse

    BaseResponse.setup_class(self, request, full_url, headers, use_raw_body=True)


class Clock:
    """One second later at each model/config name: two deployments in the same second of the
    same version (a rollback) would otherwise get the same names."""

    def __init__(self):
        self.now = datetime(2026, 5, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def aws(monkeypatch):
    from moto.sagemaker.responses import SageMakerResponse
    from pipelines.aws import hosting

    from moto.sagemakerruntime.responses import SageMakerRuntimeResponse

    monkeypatch.setattr(SageMakerResponse, "update_endpoint", moto_update_endpoint, raising=False)
    monkeypatch.setattr(SageMakerRuntimeResponse, "invoke_endpoint", moto_invoke_endpoint)
    monkeypatch.setattr(SageMakerRuntimeResponse, "setup_class", raw_body_setup)
    clock, original = Clock(), hosting.resource_name
    monkeypatch.setattr(hosting, "resource_name", lambda e, v, now=None: original(e, v, clock()))
    with fake_aws(monkeypatch, REGION) as session:
        yield session


def register(sm, execution: str) -> str:
    """An Approved package as the build pipeline registers it."""
    return sm.create_model_package(
        ModelPackageGroupName=GROUP, ModelApprovalStatus="Approved",
        InferenceSpecification={
            "Containers": [{"Image": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6.0-cpu-py312",
                            "ModelDataUrl": f"s3://sagemaker-project-p-1a2b3c4d5e6f/models/{execution}/model.tar.gz"}],
            "SupportedContentTypes": ["image/png"], "SupportedResponseMIMETypes": ["application/json"]},
        ModelMetrics={"ModelQuality": {"Statistics": {
            "ContentType": "application/json",
            "S3Uri": f"s3://sagemaker-project-p-1a2b3c4d5e6f/{GROUP}/{execution}/EvaluateModel/output/evaluation/evaluation.json"}}},
    )["ModelPackageArn"]


def deploy_argv(out: Path) -> list[str]:
    return ["--model-package-group", GROUP, "--endpoint-name", ENDPOINT, "--instance-type", "ml.m5.large",
            "--instance-count", "1", "--data-capture-percent", "20", "--data-capture-url", CAPTURE,
            "--model-role-arn", MODEL_ROLE, "--region", REGION, "--output-dir", str(out)]


def queue_answers(labels: list[str]) -> None:
    """What moto's InvokeEndpoint answers, one request after the other (moto runs no model)."""
    from moto.sagemakerruntime.models import sagemakerruntime_backends

    queue = sagemakerruntime_backends[ACCOUNT][REGION].results_queue
    for label in labels:
        queue.append((json.dumps([{"label": label, "index": 0, "probability": 0.9}]), "application/json",
                      "AllTraffic", ""))


def run_steps(session, monkeypatch, tmp_path, policy: dict, audit: list) -> dict:
    """As a principal holding only ``policy``: Deploy (Created), Deploy of a newer package
    (Updated), then a SmokeTest that fails and rolls back; what each step wrote."""
    deploy, smoke = load_step(monkeypatch, "deploy"), load_step(monkeypatch, "check_endpoint")
    for cls in ("boot", "shirt"):
        for i in range(2):
            write_image(tmp_path / "test" / cls / f"{i}.png", fmt="PNG")
    sm = session.client("sagemaker")
    sm.create_model_package_group(ModelPackageGroupName=GROUP)
    first = register(sm, "exec-1")
    iam = session.client("iam")
    admin = principal(iam, "admin", ADMIN_POLICY)
    keys = principal(iam, "deployer", policy)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["aws_secret_access_key"])
    monkeypatch.setenv("SM_OUTPUT_FAILURE", str(tmp_path / "failure"))
    results = {}
    with enforce(monkeypatch, audit):
        results["created"] = deploy.main(deploy_argv(tmp_path / "created"))
        import boto3

        second = register(boto3.client("sagemaker", region_name=REGION, **admin), "exec-2")
        results["updated"] = deploy.main(deploy_argv(tmp_path / "updated"))
        queue_answers(["shirt", "boot", "shirt", "boot"])  # every answer wrong: accuracy 0
        results["smoke"] = smoke.main([
            "--endpoint-name", ENDPOINT, "--test-dir", str(tmp_path / "test"), "--min-accuracy", "0.5",
            "--region", REGION, "--deploy-action", "Updated", "--previous-package-arn", first,
            "--data-capture-url", CAPTURE, "--model-role-arn", MODEL_ROLE, "--output-dir", str(tmp_path / "smoke")])
    results.update(first=first, second=second, admin=admin)
    return results


def served(session, admin: dict) -> str:
    sm = session.client("sagemaker", **admin)
    config = sm.describe_endpoint_config(EndpointConfigName=sm.describe_endpoint(EndpointName=ENDPOINT)["EndpointConfigName"])
    return sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])["Containers"][0]["ModelPackageName"]


def test_deploy_and_smoke_test_under_the_documented_policy_which_is_minimal(aws, monkeypatch, tmp_path):
    policy = documented_pipeline_role_statements()
    audit: list = []
    results = run_steps(aws, monkeypatch, tmp_path, policy, audit)
    failure = (tmp_path / "failure").read_text() if (tmp_path / "failure").exists() else ""
    assert results["created"] == 0 and results["updated"] == 0, failure
    assert json.loads((tmp_path / "created" / "deployment.json").read_text())["Action"] == "Created"
    updated = json.loads((tmp_path / "updated" / "deployment.json").read_text())
    assert updated["Action"] == "Updated" and updated["PreviousModelPackageArn"] == results["first"]
    assert results["smoke"] == 1 and "accuracy 0.0000 on 4 held-out images" in failure
    assert f"rolled {ENDPOINT} back to {results['first']}" in failure and "Updated" in failure, failure
    assert served(aws, results["admin"]) == results["first"]

    mine = [(action, resource, ok) for who, action, resource, ok in audit if who.endswith(":user/deployer")]
    made = {(action, resource) for action, resource, ok in mine if ok}
    # names were cut to fit (the endpoint part of <endpoint>-v<version>-<timestamp>), ARNs are lower-case
    models = {r for a, r in made if a == "sagemaker:CreateModel"}
    assert models and all(ENDPOINT.lower() not in r and r.split("/")[-1].startswith(ENDPOINT.lower()[:40])
                          for r in models), models
    assert ("sagemaker:InvokeEndpoint", f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/{ENDPOINT.lower()}") in made
    assert ("iam:PassRole", MODEL_ROLE) in made and ("sagemaker:UpdateEndpoint",) in {(a,) for a, _ in made}
    # the only refused request: the package's evaluation report, which the registry reads if it may
    refused = {(a, r) for a, r, ok in mine if not ok}
    assert {a for a, _ in refused} <= {"s3:GetObject"}, refused
    for sid, smaller in without_each_statement(policy):
        assert [(a, r) for a, r in made if not allowed(smaller, a, r)], \
            f"statement {sid} of docs/deploy.md's pipeline-role policy is not needed"


def test_a_missing_statement_fails_the_step_naming_action_and_resource(aws, monkeypatch, tmp_path):
    policy = documented_pipeline_role_statements()
    policy["Statement"] = [s for s in policy["Statement"] if s.get("Sid") != "PassTheModelRole"]
    results = run_steps(aws, monkeypatch, tmp_path, policy, [])
    assert results["created"] == 1
    failure = (tmp_path / "failure").read_text()
    assert "iam:PassRole" in failure and MODEL_ROLE in failure, failure
