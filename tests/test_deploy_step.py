"""steps/deploy.py and pipelines/aws/hosting.py against moto's SageMaker, and botocore's Stubber for
what moto lacks (UpdateEndpoint): the exact requests, and how the answers are read.

moto creates the model, endpoint config and endpoint records and reports them ``InService`` at
once; it runs nothing. These tests check which package is picked and what is asked of SageMaker.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from awsfakes import CAPTURE, ROLE, describe_serving, endpoint_description, fake_aws, load_step

REGION = "us-east-1"
GROUP = "imgpipe-p-1"
BUILD = "s3://imgpipe-bucket/imgpipe-p-1/exec-{}"


@pytest.fixture
def deploy_module(monkeypatch):
    return load_step(monkeypatch, "deploy")


ACCURACY = {"a": 0.91, "b": 0.93, "c": 0.5, "d": 0.6}


@pytest.fixture
def sm(monkeypatch):
    with fake_aws(monkeypatch, REGION) as session:
        client = session.client("sagemaker")
        client.create_model_package_group(ModelPackageGroupName=GROUP)
        s3 = session.client("s3")
        s3.create_bucket(Bucket="imgpipe-bucket")
        for execution, value in ACCURACY.items():  # the evaluation reports the packages point at
            report = {"multiclass_classification_metrics": {"accuracy": {"value": value}}}
            s3.put_object(Bucket="imgpipe-bucket", Body=json.dumps(report).encode(),
                          Key=f"imgpipe-p-1/exec-{execution}/EvaluateModel/output/evaluation/evaluation.json")
        yield client


def register(sm, status: str, execution: str) -> str:
    """A model package like the build pipeline registers (image, artifact, metrics, metadata)."""
    return sm.create_model_package(
        ModelPackageGroupName=GROUP,
        ModelApprovalStatus=status,
        InferenceSpecification={
            "Containers": [{"Image": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.6.0-cpu-py312",
                            "ModelDataUrl": f"s3://imgpipe-bucket/models/{execution}/model.tar.gz"}],
            "SupportedContentTypes": ["application/x-image"], "SupportedResponseMIMETypes": ["application/json"]},
        ModelMetrics={"ModelQuality": {"Statistics": {
            "ContentType": "application/json",
            "S3Uri": BUILD.format(execution) + "/EvaluateModel/output/evaluation/evaluation.json"}}},
        CustomerMetadataProperties={"pipeline_execution_id": execution},
    )["ModelPackageArn"]


def argv(tmp_path: Path, *extra: str) -> list[str]:
    return ["--model-package-group", GROUP, "--endpoint-name", "imgpipe-endpoint",
            "--instance-type", "ml.m5.large", "--instance-count", "2", "--data-capture-percent", "30",
            "--data-capture-url", CAPTURE, "--model-role-arn", ROLE, "--region", REGION,
            "--output-dir", str(tmp_path / "out"), *extra]


def served_package(sm, endpoint: str) -> str:
    config = sm.describe_endpoint_config(EndpointConfigName=sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"])
    model = sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    return model["Containers"][0]["ModelPackageName"]


def test_deploys_the_newest_approved_package_then_nothing_to_do(sm, deploy_module, tmp_path, capsys):
    oldest = register(sm, "Approved", "a")
    newest_approved = register(sm, "Approved", "b")
    register(sm, "Rejected", "c")
    register(sm, "PendingManualApproval", "d")

    assert deploy_module.main(argv(tmp_path)) == 0
    report = json.loads((tmp_path / "out" / "deployment.json").read_text())
    assert report == {
        "EndpointName": "imgpipe-endpoint", "EndpointMode": "SingleModel", "ModelPackageArn": newest_approved,
        "ModelPackageVersion": 2, "ModelPackageGroupName": GROUP, "Action": "Created",
        "Targets": [{"ModelPackageArn": newest_approved, "ModelPackageVersion": 2, "TargetModel": None,
                     "EvaluatedAccuracy": 0.93}],  # read from the package's evaluation report
        "Previous": {"Mode": "", "ModelPackageArns": []}, "PreviousModelPackageArn": "",
        "SmokeTestDataUrl": BUILD.format("b") + "/PrepareData/output/test"}
    assert served_package(sm, "imgpipe-endpoint") == newest_approved != oldest

    endpoint = sm.describe_endpoint(EndpointName="imgpipe-endpoint")
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    assert config["ProductionVariants"][0] == {
        "VariantName": "AllTraffic", "ModelName": endpoint["EndpointConfigName"],
        "InstanceType": "ml.m5.large", "InitialInstanceCount": 2}
    assert config["DataCaptureConfig"] == {
        "EnableCapture": True, "InitialSamplingPercentage": 30, "DestinationS3Uri": CAPTURE,
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]}}
    model = sm.describe_model(ModelName=endpoint["EndpointConfigName"])
    assert model["ExecutionRoleArn"] == ROLE
    assert endpoint["EndpointConfigName"].startswith("imgpipe-endpoint-v2-")

    # The same package with the same settings: nothing created, nothing updated.
    assert deploy_module.main(argv(tmp_path)) == 0
    report = json.loads((tmp_path / "out" / "deployment.json").read_text())
    assert report["Action"] == "Unchanged" and report["PreviousModelPackageArn"] == newest_approved
    assert report["Previous"] == {"Mode": "SingleModel", "ModelPackageArns": [newest_approved]}
    assert len(sm.list_models()["Models"]) == 1 and len(sm.list_endpoint_configs()["EndpointConfigs"]) == 1
    assert "Unchanged: imgpipe-endpoint serves" in capsys.readouterr().out


def test_no_approved_package_fails_clearly_and_deploys_nothing(sm, deploy_module, tmp_path, monkeypatch, capsys):
    register(sm, "Rejected", "a")
    register(sm, "PendingManualApproval", "b")
    failure = tmp_path / "failure"
    monkeypatch.setenv("SM_OUTPUT_FAILURE", str(failure))
    assert deploy_module.main(argv(tmp_path)) == 1
    message = failure.read_text()
    assert f"no Approved model package in group '{GROUP}'" in message and "imgpipe models approve" in message
    assert message in capsys.readouterr().err
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []
    assert not (tmp_path / "out" / "deployment.json").exists()


def test_smoke_test_data_url_override_and_unknown_test_data(sm, deploy_module, tmp_path, monkeypatch):
    package = {"ModelPackageArn": "arn:p", "CustomerMetadataProperties": {"test_data_url": "s3://b/test"}}
    assert deploy_module.held_out_data_url(package) == "s3://b/test"
    assert deploy_module.held_out_data_url({"ModelPackageArn": "arn:p"}) is None

    arn = sm.create_model_package(  # registered by hand: no metrics, no metadata
        ModelPackageGroupName=GROUP, ModelApprovalStatus="Approved",
        InferenceSpecification={"Containers": [{"Image": "img:1", "ModelDataUrl": "s3://b/m.tar.gz"}],
                                "SupportedContentTypes": ["image/png"], "SupportedResponseMIMETypes": ["application/json"]},
    )["ModelPackageArn"]
    monkeypatch.setenv("SM_OUTPUT_FAILURE", str(tmp_path / "failure"))
    assert deploy_module.main(argv(tmp_path)) == 1
    assert "no held-out test data known for" in (tmp_path / "failure").read_text()
    assert sm.list_endpoints()["Endpoints"] == []  # checked before deploying

    # no evaluated accuracy to compare the endpoint with, and no floor: refused before deploying too
    assert deploy_module.main(argv(tmp_path, "--smoke-test-data-url", "s3://b/held-out")) == 1
    message = (tmp_path / "failure").read_text()
    assert f"no evaluated accuracy recorded for {arn}" in message and "set SmokeTestMinAccuracy" in message
    assert sm.list_endpoints()["Endpoints"] == []

    assert deploy_module.main(argv(tmp_path, "--smoke-test-data-url", "s3://b/held-out",
                                   "--smoke-test-min-accuracy", "0.8")) == 0
    report = json.loads((tmp_path / "out" / "deployment.json").read_text())
    assert report["SmokeTestDataUrl"] == "s3://b/held-out" and report["ModelPackageArn"] == arn
    assert report["Targets"][0]["EvaluatedAccuracy"] is None


def test_latest_approved_sorts_itself_newest_first():
    """Whatever order the API lists them in, the newest approved package is described."""
    import boto3
    from botocore.stub import Stubber

    from pipelines.aws.registry import SageMakerModelRegistry

    client = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    now = datetime(2026, 5, 1, tzinfo=timezone.utc)
    arn = "arn:aws:sagemaker:us-east-1:123456789012:model-package/" + GROUP + "/{}"
    listed = [{"ModelPackageArn": arn.format(v), "ModelPackageGroupName": GROUP, "ModelPackageVersion": v,
               "CreationTime": now + timedelta(days=v), "ModelPackageStatus": "Completed",
               "ModelApprovalStatus": "Approved"} for v in (1, 3, 2)]
    with Stubber(client) as stub:
        stub.add_response("list_model_packages", {"ModelPackageSummaryList": listed},
                          {"ModelPackageGroupName": GROUP, "ModelApprovalStatus": "Approved",
                           "SortBy": "CreationTime", "SortOrder": "Descending"})
        stub.add_response("describe_model_package", {
            "ModelPackageName": GROUP, "ModelPackageArn": arn.format(3), "CreationTime": now,
            "ModelPackageStatus": "Completed", "ModelApprovalStatus": "Approved", "ModelPackageVersion": 3,
            "ModelPackageStatusDetails": {"ValidationStatuses": []}}, {"ModelPackageName": arn.format(3)})
        package = SageMakerModelRegistry(sagemaker_client=client).latest_approved(GROUP)
        stub.assert_no_pending_responses()
    assert package["ModelPackageArn"] == arn.format(3)


# -- updates: UpdateEndpoint is not in moto, so the whole conversation is scripted ------------------
OLD, NEW = "imgpipe-endpoint-v1-20260501-000000", "imgpipe-endpoint-v2-20260502-000000"
PACKAGE = {"ModelPackageArn": "arn:aws:sagemaker:us-east-1:123456789012:model-package/g/2", "ModelPackageVersion": 2}
OLD_PACKAGE = "arn:aws:sagemaker:us-east-1:123456789012:model-package/g/1"


def _scripted_update(monkeypatch, final_status: str, final_config: str, final_package: str, **final_extra):
    import boto3
    from botocore.stub import Stubber

    from pipelines.aws import hosting

    monkeypatch.setattr(hosting, "resource_name", lambda endpoint, version, now=None: NEW)
    client = boto3.client("sagemaker", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(client)
    describe_serving(stub, "InService", OLD, OLD_PACKAGE)
    stub.add_response("create_model", {"ModelArn": f"arn:aws:sagemaker:us-east-1:123456789012:model/{NEW}"}, {
        "ModelName": NEW, "ExecutionRoleArn": ROLE, "Containers": [{"ModelPackageName": PACKAGE["ModelPackageArn"]}]})
    stub.add_response("create_endpoint_config", {"EndpointConfigArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/{NEW}"}, {
        "EndpointConfigName": NEW,
        "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": NEW, "InstanceType": "ml.m5.large",
                                "InitialInstanceCount": 1}],
        "DataCaptureConfig": {"EnableCapture": True, "InitialSamplingPercentage": 20, "DestinationS3Uri": CAPTURE,
                              "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                              "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]}}})
    stub.add_response("update_endpoint", {"EndpointArn": endpoint_description("Updating", NEW)["EndpointArn"]}, {
        "EndpointName": "imgpipe-endpoint", "EndpointConfigName": NEW,
        "DeploymentConfig": {
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 120},
                "TerminationWaitInSeconds": 120},
            "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "imgpipe-5xx"}, {"AlarmName": "imgpipe-latency"}]}}})
    describe_serving(stub, "Updating", OLD, OLD_PACKAGE)  # the old fleet still serves meanwhile
    describe_serving(stub, final_status, final_config, final_package, **final_extra)
    sleeps = []
    host = hosting.SageMakerHosting(
        model_role_arn=ROLE, data_capture_url=CAPTURE, rollback_alarms=["imgpipe-5xx", "imgpipe-latency"],
        bake_seconds=120, poll_seconds=15, sagemaker_client=client, runtime_client=object(), sleep=sleeps.append)
    return stub, host, sleeps


def test_update_is_blue_green_with_alarms_and_waits_until_in_service(monkeypatch):
    stub, host, sleeps = _scripted_update(monkeypatch, "InService", NEW, PACKAGE["ModelPackageArn"])
    with stub:
        result = host.deploy("imgpipe-endpoint", PACKAGE, instance_type="ml.m5.large", instance_count=1,
                             data_capture_percent=20)
        stub.assert_no_pending_responses()
    assert result == {"EndpointName": "imgpipe-endpoint", "ModelPackageArn": PACKAGE["ModelPackageArn"],
                      "Action": "Updated", "EndpointConfigName": NEW}
    assert sleeps == [15]


def test_an_update_sagemaker_rolled_back_is_an_error(monkeypatch):
    from pipelines.backends import HostingError

    stub, host, _ = _scripted_update(monkeypatch, "InService", OLD, OLD_PACKAGE,
                                     FailureReason="alarm imgpipe-5xx fired during baking")
    with stub, pytest.raises(HostingError) as error:
        host.deploy("imgpipe-endpoint", PACKAGE, instance_type="ml.m5.large", instance_count=1, data_capture_percent=20)
    message = str(error.value)
    assert "alarm imgpipe-5xx fired during baking" in message and f"InService with {OLD_PACKAGE}" in message


def test_resource_names_fit_sagemaker_limits():
    from pipelines.aws.hosting import resource_name

    name = resource_name("e" * 70, 123, datetime(2026, 5, 1, 12, 0, 0, tzinfo=timezone.utc))
    assert len(name) <= 63 and name.endswith("-v123-20260501-120000")
    assert resource_name("imgpipe", 4, datetime(2026, 5, 1, tzinfo=timezone.utc)) == "imgpipe-v4-20260501-000000"


def test_describe_endpoint_of_an_absent_endpoint_is_none(sm):
    from pipelines.aws.hosting import SageMakerHosting

    host = SageMakerHosting(REGION)
    assert host.describe_endpoint("nope") is None and host.list_endpoints() == []
    host.delete_endpoint("nope")  # nothing to do


def test_local_backend_is_chosen_by_the_engine_environment(deploy_module, tmp_path, monkeypatch):
    """IMGPIPE_BACKEND=local + IMGPIPE_HOME (set by the local engine): the local registry there."""
    import deploy_backends

    from pipelines.local.registry import LocalModelRegistry

    monkeypatch.setenv("IMGPIPE_BACKEND", "local")
    monkeypatch.setenv("IMGPIPE_HOME", str(tmp_path))
    registry = deploy_backends.get_registry("us-east-1")
    assert isinstance(registry, LocalModelRegistry) and registry.settings.home == tmp_path
    args = deploy_module.get_args_parser().parse_args(argv(tmp_path))
    with pytest.raises(deploy_module.DeployError, match=f"no Approved model package in group '{GROUP}'"):
        deploy_module.deploy(args, registry, hosting=None)
    monkeypatch.delenv("IMGPIPE_HOME")
    with pytest.raises(RuntimeError, match="IMGPIPE_BACKEND=local needs IMGPIPE_HOME"):
        deploy_backends.get_registry()
