"""Approval → deploy pipeline with ``EndpointMode=MultiModel`` → one local multi-model endpoint.

Two versions of a really trained tiny model are registered; approving the first deploys a
multi-model endpoint (the deploy pipeline's definition on the local engine, its SmokeTest
checking each target model); approving the second adds ``v2/model.tar.gz`` and rejecting the
first removes ``v1/model.tar.gz`` — both without restarting the server. Unchanged boto3 code,
given the endpoint's URL, classifies an image through each target.
"""
from __future__ import annotations

import io
import json
import os

import pytest

from endpoint_helpers import archive, trained_model, valid_images
from pipelines.local import events
from pipelines.local.hosting import LocalHosting
from pipelines.local.object_store import ObjectStore
from pipelines.local.registry import LocalModelRegistry
from pipelines.settings import Settings

GROUP = "DigitsMulti"
ENDPOINT = "digits-multi-e2e"
TEST_DATA = "s3://imgpipe-local/test-data/digits3"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    model_dir, data = trained_model(tmp_path_factory.getbasetemp() / "endpoint-model")
    home = tmp_path_factory.mktemp("deploy-mme") / "home"
    settings = Settings(home=home)
    store = ObjectStore(settings.s3_root)
    store.upload(data / "valid", TEST_DATA)
    registry = LocalModelRegistry(settings, store)
    evaluated = json.loads((model_dir / "model.json").read_text())["metrics"]["valid_accuracy"]
    packages = []
    for version in (1, 2):
        uri = f"s3://imgpipe-local/models/v{version}/model.tar.gz"
        archive(model_dir, store.path(uri))
        packages.append(registry.register({
            "ModelPackageGroupName": GROUP,
            "InferenceSpecification": {"Containers": [{"Image": "pytorch-inference", "ModelDataUrl": uri}],
                                       "SupportedContentTypes": ["image/png"],
                                       "SupportedResponseMIMETypes": ["application/json"]},
            "CustomerMetadataProperties": {"test_data_url": TEST_DATA, "test_accuracy": str(evaluated)},
        }))
    os.environ["IMGPIPE_ENDPOINT_PORT"] = "0"
    os.environ["IMGPIPE_TORCH_THREADS"] = "1"
    yield settings, packages, data
    os.environ.pop("IMGPIPE_ENDPOINT_PORT", None)
    os.environ.pop("IMGPIPE_TORCH_THREADS", None)
    LocalHosting(settings).delete_endpoint(ENDPOINT)


def change(settings, package: dict, status: str) -> str:
    out = io.StringIO()
    registry = events.local_registry(settings, {"EndpointName": ENDPOINT, "EndpointMode": "MultiModel",
                                                "SmokeTestMaxImages": 1000}, stream=out)
    registry.update_approval(package["ModelPackageArn"], status, reason="test")
    return out.getvalue()


def classify(url: str, image: bytes, target: str) -> list:
    import boto3

    client = boto3.client("sagemaker-runtime", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    answer = client.invoke_endpoint(EndpointName=ENDPOINT, Body=image, ContentType="image/png", TargetModel=target)
    return json.loads(answer["Body"].read())


def test_approvals_and_a_rejection_change_the_served_set_without_restart(world):
    settings, (first, second), data = world
    hosting = LocalHosting(settings)
    path, cls = valid_images(data)[0]

    text = change(settings, first, "Approved")
    assert "Deploy Succeeded" in text and "SmokeTest Succeeded" in text, text
    endpoint = hosting.describe_endpoint(ENDPOINT)
    assert endpoint["Mode"] == "MultiModel" and endpoint["TargetModels"] == ["v1/model.tar.gz"]
    pid, url = endpoint["Pid"], endpoint["Url"]
    assert classify(url, path.read_bytes(), "v1/model.tar.gz")[0]["label"] == cls

    text = change(settings, second, "Approved")
    assert "SmokeTest Succeeded" in text, text
    endpoint = hosting.describe_endpoint(ENDPOINT)
    assert endpoint["TargetModels"] == ["v1/model.tar.gz", "v2/model.tar.gz"] and endpoint["Pid"] == pid
    assert classify(url, path.read_bytes(), "v2/model.tar.gz")[0]["label"] == cls

    text = change(settings, first, "Rejected")
    endpoint = hosting.describe_endpoint(ENDPOINT)
    assert endpoint["TargetModels"] == ["v2/model.tar.gz"] and endpoint["Pid"] == pid, text
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as info:
        classify(url, path.read_bytes(), "v1/model.tar.gz")
    assert info.value.response["Error"]["Code"] == "ValidationError"
    assert "not served by this endpoint (serving: v2/model.tar.gz)" in info.value.response["Error"]["Message"]
