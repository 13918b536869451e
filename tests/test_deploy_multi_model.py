"""Multi-model deployment: the Deploy step's ``--endpoint-mode MultiModel`` (every Approved package,
through ``Hosting.deploy_multi_model``), and SageMakerHosting's multi-model endpoints.

SageMaker's side is a botocore Stubber conversation (each request validated against the service
model and compared with the expected parameters) with S3 in moto, where the artifacts really
are copied and deleted; InvokeEndpoint with ``TargetModel`` is stubbed too. Nothing is served.
The Deploy step is tested on the local registry with a hosting object that records its calls.
"""
from __future__ import annotations

import io
import json

import pytest
from awsfakes import CAPTURE, ENDPOINT, ROLE, describe_serving, endpoint_description, fake_aws, load_step

IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6.0-cpu-py312"
ROOT = "s3://imgpipe-bucket/imgpipe/multi-model"
PREFIX = f"{ROOT}/{ENDPOINT}/"
ARN = "arn:aws:sagemaker:us-east-1:123456789012:model-package/g/{}"
CONFIG = "imgpipe-endpoint-v3-20260501-000000"


def package(version: int, image: str = IMAGE) -> dict:
    """A described package as the registry gives it (artifact in S3, the image's environment)."""
    url = f"s3://imgpipe-bucket/models/{version}/model.tar.gz"
    return {"ModelPackageArn": ARN.format(version), "ModelPackageVersion": version, "ModelDataUrl": url,
            "InferenceSpecification": {"Containers": [{
                "Image": image, "ModelDataUrl": url,
                "Environment": {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_REGION": "us-east-1",
                                "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code"}}]}}


MULTI_MODEL_CONTAINER = {"Image": IMAGE, "Mode": "MultiModel", "ModelDataUrl": PREFIX,
                         "Environment": {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_REGION": "us-east-1",
                                         "SAGEMAKER_MULTI_MODEL": "true"}}


@pytest.fixture
def s3(monkeypatch):
    """moto's S3 with the artifacts of versions 1-3 (their bytes name them)."""
    with fake_aws(monkeypatch) as session:
        client = session.client("s3")
        client.create_bucket(Bucket="imgpipe-bucket")
        for version in (1, 2, 3):
            client.put_object(Bucket="imgpipe-bucket", Key=f"models/{version}/model.tar.gz",
                              Body=f"model {version}".encode())
        yield client


def artifacts(s3) -> dict:
    listed = s3.list_objects_v2(Bucket="imgpipe-bucket", Prefix=f"imgpipe/multi-model/{ENDPOINT}/")
    return {o["Key"].rsplit(f"{ENDPOINT}/", 1)[1]: s3.get_object(Bucket="imgpipe-bucket", Key=o["Key"])["Body"].read()
            for o in listed.get("Contents", [])}


def describe_multi_model(stub, status: str, config: str) -> None:
    """describe_endpoint -> describe_endpoint_config -> describe_model of a multi-model endpoint."""
    describe_serving(stub, status, config, "", primary_container=MULTI_MODEL_CONTAINER)


def stubbed_hosting(monkeypatch, s3):
    import boto3
    from botocore.stub import Stubber

    from pipelines.aws import hosting

    monkeypatch.setattr(hosting, "resource_name", lambda endpoint, version, now=None: CONFIG)
    client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    runtime = boto3.client("sagemaker-runtime", region_name="us-east-1", aws_access_key_id="x",
                           aws_secret_access_key="x")
    host = hosting.SageMakerHosting(model_role_arn=ROLE, data_capture_url=CAPTURE, multi_model_url=ROOT,
                                    poll_seconds=1, sagemaker_client=client, runtime_client=runtime,
                                    s3_client=s3, sleep=lambda seconds: None)
    return host, Stubber(client), Stubber(runtime)


def test_create_then_change_the_served_set_without_touching_the_endpoint(monkeypatch, s3):
    host, stub, runtime_stub = stubbed_hosting(monkeypatch, s3)
    options = {"instance_type": "ml.m5.large", "instance_count": 1, "data_capture_percent": 20}
    with stub:
        # 1. no endpoint: artifacts copied, a MultiModel model on the prefix, a config, CreateEndpoint
        stub.add_client_error("describe_endpoint", service_error_code="ValidationException",
                              service_message=f"Could not find endpoint \"{ENDPOINT}\".",
                              expected_params={"EndpointName": ENDPOINT})
        stub.add_response("create_model", {"ModelArn": f"arn:aws:sagemaker:us-east-1:123456789012:model/{CONFIG}"},
                          {"ModelName": CONFIG, "ExecutionRoleArn": ROLE, "PrimaryContainer": MULTI_MODEL_CONTAINER})
        stub.add_response("create_endpoint_config", {"EndpointConfigArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/c"}, {
            "EndpointConfigName": CONFIG,
            "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": CONFIG, "InstanceType": "ml.m5.large",
                                    "InitialInstanceCount": 1}],
            "DataCaptureConfig": {"EnableCapture": True, "InitialSamplingPercentage": 20, "DestinationS3Uri": CAPTURE,
                                  "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                                  "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]}}})
        stub.add_response("create_endpoint", {"EndpointArn": endpoint_description("Creating", CONFIG)["EndpointArn"]},
                          {"EndpointName": ENDPOINT, "EndpointConfigName": CONFIG})
        describe_multi_model(stub, "Creating", CONFIG)
        describe_multi_model(stub, "InService", CONFIG)
        created = host.deploy_multi_model(ENDPOINT, [package(1), package(2)], **options)
        stub.assert_no_pending_responses()
        assert created == {"EndpointName": ENDPOINT, "Mode": "MultiModel", "EndpointConfigName": CONFIG,
                           "Action": "Created", "TargetModels": ["v1/model.tar.gz", "v2/model.tar.gz"],
                           "ModelPackageArns": [ARN.format(2), ARN.format(1)]}
        assert artifacts(s3) == {"v1/model.tar.gz": b"model 1", "v2/model.tar.gz": b"model 2"}

        # 2. v3 approved, v1 rejected: only S3 changes; no model, config or endpoint request
        describe_multi_model(stub, "InService", CONFIG)
        changed = host.deploy_multi_model(ENDPOINT, [package(2), package(3)], **options)
        stub.assert_no_pending_responses()
        assert changed["Action"] == "Updated" and changed["TargetModels"] == ["v2/model.tar.gz", "v3/model.tar.gz"]
        assert artifacts(s3) == {"v2/model.tar.gz": b"model 2", "v3/model.tar.gz": b"model 3"}

        # 3. the same set again: Unchanged; describe_endpoint lists the targets from S3
        describe_multi_model(stub, "InService", CONFIG)
        assert host.deploy_multi_model(ENDPOINT, [package(3), package(2)], **options)["Action"] == "Unchanged"
        describe_multi_model(stub, "InService", CONFIG)
        described = host.describe_endpoint(ENDPOINT)
        stub.assert_no_pending_responses()
    assert described["Mode"] == "MultiModel" and described["ModelDataUrl"] == PREFIX
    assert described["TargetModels"] == ["v2/model.tar.gz", "v3/model.tar.gz"]
    assert "ModelPackageArn" not in described

    # 4. a request for one target model: InvokeEndpoint with TargetModel
    from botocore.response import StreamingBody

    answer = json.dumps([{"label": "boot", "index": 0, "probability": 0.9}]).encode()
    with runtime_stub:
        runtime_stub.add_response("invoke_endpoint", {"Body": StreamingBody(io.BytesIO(answer), len(answer)),
                                                      "ContentType": "application/json"},
                                  {"EndpointName": ENDPOINT, "Body": b"png", "ContentType": "image/png",
                                   "Accept": "application/json", "TargetModel": "v3/model.tar.gz"})
        assert host.invoke(ENDPOINT, b"png", "image/png", target_model="v3/model.tar.gz")[0]["label"] == "boot"
        runtime_stub.assert_no_pending_responses()


def test_packages_of_different_images_or_without_a_prefix_are_refused(monkeypatch, s3):
    from pipelines.aws import multi_model
    from pipelines.backends import HostingError

    host, stub, _ = stubbed_hosting(monkeypatch, s3)
    with stub, pytest.raises(HostingError, match="one inference image; these use .*:2.5.*, .*:2.6"):
        host.deploy_multi_model(ENDPOINT, [package(1), package(2, IMAGE.replace("2.6.0", "2.5.0"))],
                                instance_type="ml.m5.large", instance_count=1, data_capture_percent=20)
    with pytest.raises(HostingError, match="need an S3 prefix"):
        multi_model.endpoint_prefix("", ENDPOINT)
    with pytest.raises(HostingError, match="no model packages"):
        host.deploy_multi_model(ENDPOINT, [], instance_type="ml.m5.large", instance_count=1, data_capture_percent=0)
    assert artifacts(s3) == {}  # refused before anything was copied


# -- the Deploy step in MultiModel mode --------------------------------------------------------------
class RecordingHosting:
    """A Hosting that records calls; it serves ``served`` (describe_endpoint's answer)."""

    def __init__(self, served=None):
        self.served, self.calls = served, []

    def describe_endpoint(self, name):
        return self.served

    def deploy_multi_model(self, name, packages, **options):
        self.calls.append(("deploy_multi_model", name, [p["ModelPackageVersion"] for p in packages], options))
        return {"EndpointName": name, "Mode": "MultiModel", "Action": "Updated",
                "TargetModels": [f"v{p['ModelPackageVersion']}/model.tar.gz" for p in packages]}

    def deploy(self, name, package, **options):
        self.calls.append(("deploy", name, package["ModelPackageVersion"], options))
        return {"EndpointName": name, "Action": "Updated"}


@pytest.fixture
def local_registry(tmp_path):
    """A local registry with versions 1-4: Approved, Approved, Rejected, Approved (test accuracies)."""
    from pipelines.local.registry import LocalModelRegistry
    from pipelines.settings import Settings

    registry = LocalModelRegistry(Settings(home=tmp_path / "home"))
    for version, status in enumerate(("Approved", "Approved", "Rejected", "Approved"), start=1):
        registry.register({
            "ModelPackageGroupName": "g", "ModelApprovalStatus": status,
            "InferenceSpecification": {"Containers": [{"Image": IMAGE, "ModelDataUrl": f"s3://b/{version}/model.tar.gz"}]},
            "CustomerMetadataProperties": {"test_accuracy": f"0.9{version}", "test_data_url": f"s3://b/test{version}"}})
    return registry


def test_multi_model_deploys_every_approved_package(monkeypatch, tmp_path, local_registry):
    deploy = load_step(monkeypatch, "deploy")
    served_before = {"EndpointStatus": "InService", "Mode": "MultiModel", "TargetModels": ["v1/model.tar.gz"]}
    hosting = RecordingHosting(served_before)
    args = deploy.get_args_parser().parse_args([
        "--model-package-group", "g", "--endpoint-name", ENDPOINT, "--instance-type", "ml.m5.large",
        "--endpoint-mode", "MultiModel", "--output-dir", str(tmp_path)])
    report = deploy.deploy(args, local_registry, hosting)
    assert hosting.calls == [("deploy_multi_model", ENDPOINT, [4, 2, 1],
                              {"instance_type": "ml.m5.large", "instance_count": 1, "data_capture_percent": 20})]
    arn = local_registry.package_arn
    assert report["EndpointMode"] == "MultiModel" and report["Action"] == "Updated"
    assert report["ModelPackageArn"] == arn("g", 4) and report["SmokeTestDataUrl"] == "s3://b/test4"
    assert report["Targets"] == [
        {"ModelPackageArn": arn("g", v), "ModelPackageVersion": v, "TargetModel": f"v{v}/model.tar.gz",
         "EvaluatedAccuracy": float(f"0.9{v}")} for v in (4, 2, 1)]
    assert report["Previous"] == {"Mode": "MultiModel", "ModelPackageArns": [arn("g", 1)]}
    assert report["PreviousModelPackageArn"] == ""

    args.endpoint_mode = "SingleModel"  # the same group, single-model: only the newest
    assert deploy.deploy(args, local_registry, RecordingHosting())["Targets"][0]["TargetModel"] is None
    args.endpoint_mode = "Multi"
    with pytest.raises(deploy.DeployError, match="EndpointMode must be one of SingleModel, MultiModel, not 'Multi'"):
        deploy.deploy(args, local_registry, RecordingHosting())
