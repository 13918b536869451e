"""``imgpipe models list|describe|approve|reject`` with ``--backend aws`` (moto's registry) and
``--backend local`` (the SQLite registry): the status really changes in the registry."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from awsfakes import fake_aws

from pipelines.cli import main

REGION = "us-east-1"
GROUP = "imgpipe-p-1"
BUCKET = "imgpipe-models"
EVALUATION = {"multiclass_classification_metrics": {"accuracy": {"value": 0.91, "standard_deviation": "NaN"},
                                                    "weighted_f1": {"value": 0.9, "standard_deviation": "NaN"}},
              "num_test_images": 500}


@pytest.fixture
def sm(monkeypatch):
    with fake_aws(monkeypatch, REGION) as session:
        s3 = session.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="exec-1/EvaluateModel/output/evaluation/evaluation.json",
                      Body=json.dumps(EVALUATION).encode())
        client = session.client("sagemaker")
        client.create_model_package_group(ModelPackageGroupName=GROUP)
        for status in ("PendingManualApproval", "Approved"):
            client.create_model_package(
                ModelPackageGroupName=GROUP, ModelApprovalStatus=status,
                InferenceSpecification={"Containers": [{"Image": "img:1", "ModelDataUrl": f"s3://{BUCKET}/model.tar.gz"}],
                                        "SupportedContentTypes": ["image/png"],
                                        "SupportedResponseMIMETypes": ["application/json"]},
                ModelMetrics={"ModelQuality": {"Statistics": {
                    "ContentType": "application/json",
                    "S3Uri": f"s3://{BUCKET}/exec-1/EvaluateModel/output/evaluation/evaluation.json"}}},
                CustomerMetadataProperties={"hp_learning_rate": "0.003", "hp_batch_size": "64",
                                            "architecture": "mobilenet_v2", "image_size": "64",
                                            "pipeline_execution_arn": "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/exec-1",
                                            "best_training_job": "imgpipe-hpo-001", "input_data_url": f"s3://{BUCKET}/data"})
        yield client


def status_of(sm, version: int) -> dict:
    return sm.describe_model_package(
        ModelPackageName=f"arn:aws:sagemaker:{REGION}:123456789012:model-package/{GROUP}/{version}")


def test_approve_and_reject_change_the_status_in_sagemaker(sm, capsys):
    assert main(["models", "approve", "1", "--group", GROUP, "--backend", "aws", "--reason", "looks good"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == (f"arn:aws:sagemaker:{REGION}:123456789012:model-package/{GROUP}/1: "
                           "PendingManualApproval -> Approved (looks good)")
    package = status_of(sm, 1)
    assert package["ModelApprovalStatus"] == "Approved" and package["ApprovalDescription"] == "looks good"

    arn = f"arn:aws:sagemaker:{REGION}:123456789012:model-package/{GROUP}/2"
    assert main(["models", "reject", arn, "--backend", "aws"]) == 0
    assert "Approved -> Rejected" in capsys.readouterr().out
    assert status_of(sm, 2)["ModelApprovalStatus"] == "Rejected"
    assert status_of(sm, 1)["ModelApprovalStatus"] == "Approved"  # only the one named


def test_list_and_describe_on_aws(sm, capsys):
    assert main(["models", "list", "--backend", "aws", "--group", GROUP]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["GROUP", "VERSION", "STATUS", "CREATED", "ACCURACY", "ARN"]
    assert [line.split()[:3] for line in lines[2:]] == [[GROUP, "2", "Approved"], [GROUP, "1", "PendingManualApproval"]]
    assert [line.split()[5] for line in lines[2:]] == ["0.9100", "0.9100"]  # after CREATED's date and time
    assert main(["models", "list", "--backend", "aws", "--status", "PendingManualApproval"]) == 0
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()[2:]] == ["1"]

    assert main(["models", "describe", f"{GROUP}/2", "--backend", "aws"]) == 0
    out = capsys.readouterr().out
    assert "Metrics:" in out and "accuracy=0.91" in out and "weighted_f1=0.9" in out
    assert "Test images:        500" in out
    assert "Hyperparameters:    batch-size=64, learning-rate=0.003" in out
    assert "Architecture:       mobilenet_v2 64 px" in out
    assert "Pipeline execution: arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/exec-1" in out
    assert "Best training job:  imgpipe-hpo-001" in out and f"Model data:         s3://{BUCKET}/model.tar.gz" in out

    assert main(["models", "describe", "2", "--group", GROUP, "--backend", "aws", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["EvaluationMetrics"] == EVALUATION and described["ModelPackageVersion"] == 2


def test_unknown_packages_and_statuses_exit_2(sm, capsys):
    assert main(["models", "approve", "9", "--group", GROUP, "--backend", "aws"]) == 2
    assert f"no model package version 9 in group '{GROUP}'" in capsys.readouterr().err
    assert main(["models", "list", "--backend", "aws", "--status", "Good"]) == 2
    assert "approval status must be one of" in capsys.readouterr().err
    assert main(["models", "describe", "latest", "--backend", "aws"]) == 2
    assert status_of(sm, 1)["ModelApprovalStatus"] == "PendingManualApproval"


def test_approve_and_reject_on_the_local_registry(tmp_path, capsys, monkeypatch):
    """The status changes, and each change reaches the local approval rule (its target recorded here)."""
    from pipelines.local import events
    from pipelines.local.registry import LocalModelRegistry
    from pipelines.settings import Settings

    received = []
    monkeypatch.setattr(events, "deploy_rule", lambda settings, params=None, stream=None: received.append)

    registry = LocalModelRegistry(Settings(home=tmp_path))
    request = {"ModelPackageGroupName": GROUP, "InferenceSpecification": {"Containers": [
        {"Image": "img:1", "ModelDataUrl": "s3://imgpipe-local/model.tar.gz"}]}}
    arn = registry.register(request)["ModelPackageArn"]
    assert main(["models", "approve", "1", "--home", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"{arn}: PendingManualApproval -> Approved"
    assert registry.describe(arn)["ModelApprovalStatus"] == "Approved"
    assert main(["models", "reject", arn, "--home", str(tmp_path), "--reason", "drift"]) == 0
    rejected = registry.describe(arn)
    assert rejected["ModelApprovalStatus"] == "Rejected" and rejected["ApprovalDescription"] == "drift"
    assert main(["models", "list", "--home", str(tmp_path), "--status", "Approved"]) == 0
    assert "no model packages" in capsys.readouterr().out
    assert [(e["detail"]["ModelPackageArn"], e["detail"]["ModelApprovalStatus"]) for e in received] == [
        (arn, "Approved"), (arn, "Rejected")]


def test_a_failed_local_deploy_makes_approve_exit_1(tmp_path, capsys, monkeypatch):
    """The real approval rule, its deploy pipeline run replaced by one that failed: exit 1 with the
    execution and its reason on one line; the approval stands. A rule that raised: exit 1 too."""
    from types import SimpleNamespace

    from pipelines.local import events
    from pipelines.local.registry import LocalModelRegistry
    from pipelines.settings import Settings

    real_rule = events.deploy_rule
    failed = SimpleNamespace(execution_id="exec-42", status="Failed",
                             failure_reason="step SmokeTest failed: accuracy 0.2 is below\nSmokeTestMinAccuracy 0.8")
    monkeypatch.setattr(events, "deploy_rule", lambda settings, params=None, stream=None: real_rule(
        settings, params, runner=lambda *args, **kwargs: failed, stream=stream))

    registry = LocalModelRegistry(Settings(home=tmp_path))
    request = {"ModelPackageGroupName": GROUP, "InferenceSpecification": {"Containers": [
        {"Image": "img:1", "ModelDataUrl": "s3://imgpipe-local/model.tar.gz"}]}}
    arn = registry.register(request)["ModelPackageArn"]
    assert main(["models", "approve", "1", "--home", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert f"{arn}: PendingManualApproval -> Approved" in captured.out
    assert captured.err == ("error: deploy pipeline execution exec-42 Failed: step SmokeTest failed: accuracy 0.2 "
                            "is below SmokeTestMinAccuracy 0.8 (the approval change is recorded)\n")
    assert registry.describe(arn)["ModelApprovalStatus"] == "Approved"

    def broken(settings, params=None, stream=None):
        def target(event):
            raise RuntimeError("cannot build the deploy pipeline")
        return target

    monkeypatch.setattr(events, "deploy_rule", broken)
    assert main(["models", "reject", arn, "--home", str(tmp_path)]) == 1
    assert ("error: event rule imgpipe-approval-deploy failed: RuntimeError: cannot build the deploy pipeline"
            in capsys.readouterr().err)
    assert registry.describe(arn)["ModelApprovalStatus"] == "Rejected"


SUCCEEDED = SimpleNamespace(execution_id="exec-1", status="Succeeded", failure_reason=None)


def test_approve_passes_deploy_parameters_checked_against_the_deploy_definition(tmp_path, capsys, monkeypatch):
    """``-p Name=Value`` reaches the deploy run the approval starts; a name the deploy definition
    does not declare, a value of the wrong type or outside EndpointMode's values: exit 2, nothing
    approved, the bad one named."""
    from pipelines.local import events
    from pipelines.local.registry import LocalModelRegistry
    from pipelines.settings import Settings

    runs = []
    real_rule = events.deploy_rule
    monkeypatch.setattr(events, "deploy_rule", lambda settings, params=None, stream=None: real_rule(
        settings, params, runner=lambda s, values, stream=None: runs.append(values) or SUCCEEDED, stream=stream))
    registry = LocalModelRegistry(Settings(home=tmp_path))
    arn = registry.register({"ModelPackageGroupName": GROUP, "InferenceSpecification": {"Containers": [
        {"Image": "img:1", "ModelDataUrl": "s3://imgpipe-local/model.tar.gz"}]}})["ModelPackageArn"]
    home = ["--home", str(tmp_path)]

    for bad, named in ((["-p", "EndpointMod=MultiModel"], "unknown parameter 'EndpointMod'"),
                       (["-p", "SmokeTestMaxImages=many"], "parameter 'SmokeTestMaxImages' is Integer"),
                       (["-p", "EndpointMode=Both"], "parameter 'EndpointMode' must be one of SingleModel, MultiModel"),
                       (["-p", "EndpointMode"], "parameter 'EndpointMode' is not Name=Value")):
        assert main(["models", "approve", "1", *home, *bad]) == 2
        assert named in capsys.readouterr().err
    assert registry.describe(arn)["ModelApprovalStatus"] == "PendingManualApproval" and runs == []
    assert main(["models", "approve", "1", "--backend", "aws", "--region", REGION, "-p", "EndpointMode=MultiModel"]) == 2
    assert "-p sets deploy-pipeline parameters of a local deploy" in capsys.readouterr().err

    assert main(["models", "approve", "1", *home, "-p", "EndpointMode=MultiModel",
                 "-p", "SmokeTestMaxAccuracyDrop=0.05"]) == 0
    assert runs == [{"EndpointMode": "MultiModel", "SmokeTestMaxAccuracyDrop": "0.05", "ModelPackageGroupName": GROUP}]
    assert registry.describe(arn)["ModelApprovalStatus"] == "Approved"


def test_registering_approved_emits_the_event_and_deploys(tmp_path, monkeypatch):
    """The local engine's CreateModelPackage with ModelApprovalStatus=Approved: the model package
    state change SageMaker emits (recorded on the bus), and the deploy pipeline runs for its group;
    a pending registration emits the event too, which the approval rule ignores."""
    from pipelines.local import events
    from pipelines.local.object_store import ObjectStore
    from pipelines.local.sagemaker_api import LocalSageMaker
    from pipelines.settings import Settings

    runs = []
    real_rule = events.deploy_rule
    monkeypatch.setattr(events, "deploy_rule", lambda settings, params=None, stream=None: real_rule(
        settings, params, runner=lambda s, values, stream=None: runs.append(values) or SUCCEEDED, stream=stream))
    monkeypatch.setenv("IMGPIPE_DEPLOY_PARAMETERS", json.dumps({"EndpointName": "digits"}))
    settings = Settings(home=tmp_path)
    api = LocalSageMaker(settings, ObjectStore(settings.s3_root))
    request = {"ModelPackageGroupName": GROUP, "InferenceSpecification": {"Containers": [
        {"Image": "img:1", "ModelDataUrl": "s3://imgpipe-local/model.tar.gz"}]}}
    pending = api.create_model_package(request)
    approved = api.create_model_package({**request, "ModelApprovalStatus": "Approved"})
    records = [json.loads(line) for line in (tmp_path / "events" / "events.jsonl").read_text().splitlines()]
    assert [(r["event"]["resources"], r["event"]["detail"]["ModelApprovalStatus"], len(r["outcomes"]))
            for r in records] == [([pending["ModelPackageArn"]], "PendingManualApproval", 0),
                                  ([approved["ModelPackageArn"]], "Approved", 1)]
    assert records[1]["event"]["detail-type"] == "SageMaker Model Package State Change"
    assert runs == [{"EndpointName": "digits", "ModelPackageGroupName": GROUP}]
