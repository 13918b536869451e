"""Approval → deploy pipeline → endpoint, for real: the local half of the approval-deploy flow.

A really trained tiny model (tests/endpoint_helpers.py) is registered in the local registry;
approving it through the registry wired to the local event bus emits the SageMaker event,
which runs ``pipelines.deploy_pipeline``'s definition (built offline) on the local engine:
the Deploy job starts a real server process, the SmokeTest job sends it held-out images and
compares the endpoint's accuracy with the package's evaluated one (the model's own validation
accuracy on those images). Then ``imgpipe predict`` (a real CLI process) classifies a test image
correctly; a bad model (claiming the good one's accuracy) approved with ``imgpipe models approve
-p ...`` (a real CLI process) fails the smoke test, which rolls the endpoint back to the previous
approved package, and the command exits 1 naming the failed deploy execution; rejecting the bad
package then leaves the good one serving. Registering the bad model ``Approved`` in a new group
(the local engine's CreateModelPackage) deploys it to a new endpoint by itself; it fails its
smoke test and, being a first deployment, the endpoint is deleted.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from endpoint_helpers import REPO, archive, trained_model, untrained_model, valid_images
from pipelines.local import events
from pipelines.local.hosting import LocalHosting, http_get
from pipelines.local.object_store import ObjectStore
from pipelines.local.registry import LocalModelRegistry
from pipelines.settings import Settings

GROUP = "DigitsModels"
ENDPOINT = "digits-e2e"
TEST_DATA = "s3://imgpipe-local/test-data/digits3"


def imgpipe(*args, home, timeout=120, **env_vars):
    env = {**os.environ, "IMGPIPE_HOME": str(home), "SAGEMAKER_SUPPRESS_V2_WARNING": "1", **env_vars}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A home with the trained model (v1) and a bad model (v2) registered, pending approval."""
    model_dir, data = trained_model(tmp_path_factory.getbasetemp() / "endpoint-model")
    bad_dir = untrained_model(tmp_path_factory.getbasetemp() / "endpoint-model" / "untrained")
    home = tmp_path_factory.mktemp("deploy") / "home"
    settings = Settings(home=home)
    store = ObjectStore(settings.s3_root)
    store.upload(data / "valid", TEST_DATA)
    registry = LocalModelRegistry(settings, store)
    packages = []
    evaluated = json.loads((model_dir / "model.json").read_text())["metrics"]["valid_accuracy"]
    for name, directory in (("good", model_dir), ("bad", bad_dir)):
        uri = f"s3://imgpipe-local/models/{name}/model.tar.gz"
        archive(directory, store.path(uri))
        packages.append(registry.register({
            "ModelPackageGroupName": GROUP,
            "InferenceSpecification": {"Containers": [{"Image": "pytorch-inference", "ModelDataUrl": uri}],
                                       "SupportedContentTypes": ["image/png"], "SupportedResponseMIMETypes": ["application/json"]},
            "CustomerMetadataProperties": {"test_data_url": TEST_DATA, "test_accuracy": str(evaluated)},
        }))
    os.environ["IMGPIPE_ENDPOINT_PORT"] = "0"  # a free port: never collide with other tests
    os.environ["IMGPIPE_TORCH_THREADS"] = "1"
    yield settings, packages, data
    os.environ.pop("IMGPIPE_ENDPOINT_PORT", None)
    os.environ.pop("IMGPIPE_TORCH_THREADS", None)
    LocalHosting(settings).delete_endpoint(ENDPOINT)


def approvals(settings):
    """Every held-out image is sent: the smoke test measures what the evaluation measured."""
    out = io.StringIO()
    registry = events.local_registry(settings, {"EndpointName": ENDPOINT, "SmokeTestMaxImages": 1000}, stream=out)
    return registry, out


def test_approve_deploys_smoke_tests_and_predicts(world):
    settings, (good, bad), data = world
    registry, out = approvals(settings)
    registry.update_approval(good["ModelPackageArn"], "Approved", reason="looks good")
    text = out.getvalue()
    assert "approved: running the deploy pipeline" in text
    assert "Deploy Succeeded" in text and "SmokeTest Succeeded" in text, text
    smoke = json.loads(next((settings.home / "s3").rglob("smoke-test.json")).read_text())
    assert smoke["targets"][0]["evaluated_accuracy"] == float(good["CustomerMetadataProperties"]["test_accuracy"])
    assert smoke["images"] == len(valid_images(data)) and smoke["min_accuracy"] is None
    assert smoke["accuracy"] >= smoke["targets"][0]["evaluated_accuracy"] - 0.02

    # the event as EventBridge would carry it, and its outcome, were recorded
    [record] = [json.loads(line) for line in (settings.home / "events" / "events.jsonl").read_text().splitlines()]
    assert record["event"]["detail-type"] == "SageMaker Model Package State Change"
    assert record["event"]["source"] == "aws.sagemaker"
    assert record["event"]["detail"]["ModelApprovalStatus"] == "Approved"
    assert record["event"]["resources"] == [good["ModelPackageArn"]]
    assert record["outcomes"][0]["result"]["status"] == "Succeeded"

    endpoint = LocalHosting(settings).describe_endpoint(ENDPOINT)
    assert endpoint["EndpointStatus"] == "InService" and endpoint["ModelPackageArn"] == good["ModelPackageArn"]
    assert endpoint["Host"] == "127.0.0.1"
    status, ping = http_get("127.0.0.1", endpoint["Port"], "/ping")
    assert status == 200 and ping["status"] == "Healthy" and ping["model_package_arn"] == good["ModelPackageArn"]

    # a held-out image of each class, classified by the endpoint through the CLI (a new process)
    picks = {}
    for path, cls in valid_images(data):
        picks.setdefault(cls, path)
    result = imgpipe("predict", "--endpoint", ENDPOINT, *picks.values(), home=settings.home)
    assert result.returncode == 0, result.stderr
    blocks = result.stdout.strip().split("\n\n")
    assert len(blocks) == 3
    for (cls, path), block in zip(picks.items(), blocks):
        lines = block.splitlines()
        assert lines[0] == f"{path}:"
        assert lines[1].split()[:3] == ["LABEL", "INDEX", "PROBABILITY"]
        label, index, probability = lines[3].split()  # header, rule, best row
        assert label == cls and index == cls and float(probability) > 1 / 3


def test_bad_model_fails_smoke_test_rolls_back_and_the_cli_exits_1(world):
    settings, (good, bad), data = world
    before = LocalHosting(settings).describe_endpoint(ENDPOINT)
    assert before["ModelPackageArn"] == good["ModelPackageArn"]

    result = imgpipe("models", "approve", bad["ModelPackageArn"], "-p", f"EndpointName={ENDPOINT}",
                     "-p", "SmokeTestMaxImages=1000", home=settings.home, timeout=400)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Deploy Succeeded" in result.stdout and "SmokeTest Failed" in result.stdout, result.stdout
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    record = json.loads((settings.home / "events" / "events.jsonl").read_text().splitlines()[-1])
    execution = record["outcomes"][0]["result"]["execution_id"]
    assert error.startswith(f"error: deploy pipeline execution {execution} Failed: "), error
    assert "more than SmokeTestMaxAccuracyDrop 0.02 below its evaluated accuracy" in error
    assert error.endswith("(the approval change is recorded)")
    assert f"rolled {ENDPOINT} back to {good['ModelPackageArn']} (version 1, Updated)" in error
    assert LocalModelRegistry(settings).describe(bad["ModelPackageArn"])["ModelApprovalStatus"] == "Approved"

    # the good model serves again, on the same URL
    after = LocalHosting(settings).describe_endpoint(ENDPOINT)
    assert after["EndpointStatus"] == "InService" and after["ModelPackageArn"] == good["ModelPackageArn"]
    assert after["Port"] == before["Port"]
    status, ping = http_get("127.0.0.1", after["Port"], "/ping")
    assert status == 200 and ping["model_package_arn"] == good["ModelPackageArn"]

    # rejecting it redeploys the newest package still approved: the good one, already serving
    registry, out = approvals(settings)
    registry.update_approval(bad["ModelPackageArn"], "Rejected", reason="failed its smoke test")
    text = out.getvalue()
    assert "rejected: rolling back" in text and "SmokeTest Succeeded" in text, text
    assert events.failed_deploys(registry.event_outcomes) == []
    assert LocalHosting(settings).describe_endpoint(ENDPOINT)["ModelPackageArn"] == good["ModelPackageArn"]


def test_registered_approved_deploys_and_a_failed_first_deployment_is_deleted(world, monkeypatch, capsys):
    settings, (_, bad), _ = world
    from pipelines.local.sagemaker_api import LocalSageMaker

    monkeypatch.setenv("IMGPIPE_DEPLOY_PARAMETERS", json.dumps({"EndpointName": "digits-first",
                                                                 "SmokeTestMaxImages": 1000}))
    request = {"ModelPackageGroupName": "FirstDeploy", "ModelApprovalStatus": "Approved",
               "InferenceSpecification": {"Containers": [{"Image": "pytorch-inference",
                                                          "ModelDataUrl": bad["ModelDataUrl"]}]},
               "CustomerMetadataProperties": bad["CustomerMetadataProperties"]}
    package = LocalSageMaker(settings, ObjectStore(settings.s3_root)).create_model_package(request)
    captured = capsys.readouterr()
    assert "approved: running the deploy pipeline" in captured.out
    assert "Deploy Succeeded" in captured.out and "SmokeTest Failed" in captured.out, captured.out
    assert f"warning: {package['ModelPackageArn']} registered Approved, but deploy pipeline execution" in captured.err
    assert "deleted digits-first: a first deployment, nothing is left serving the failed model" in captured.err
    assert LocalHosting(settings).describe_endpoint("digits-first") is None
    assert LocalModelRegistry(settings).describe(package["ModelPackageArn"])["ModelApprovalStatus"] == "Approved"
