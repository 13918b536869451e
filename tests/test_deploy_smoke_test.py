"""steps/check_endpoint.py: real image files sent through SageMakerHosting.invoke, with
sagemaker-runtime's InvokeEndpoint scripted by botocore's Stubber (moto runs no model): the
exact requests, and how answers, wrong labels and HTTP errors decide the step's outcome; a
failed smoke test rolls the endpoint back (the registry in moto, UpdateEndpoint scripted)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from awsfakes import CAPTURE, ENDPOINT, ROLE, describe_serving, fake_aws, load_step
from imagefactory import write_image



@pytest.fixture
def smoke(monkeypatch):
    return load_step(monkeypatch, "check_endpoint")


@pytest.fixture
def test_dir(tmp_path) -> Path:
    """Held-out images as the build's test split lays them out: two classes, three images each."""
    root = tmp_path / "test"
    for cls in ("boot", "shirt"):
        for i in range(3):
            write_image(root / cls / f"{i}.png", fmt="PNG")
    write_image(root / "shirt" / "3.jpg", fmt="JPEG")
    return root


def answer(label: str) -> list:
    other = "shirt" if label == "boot" else "boot"
    return [{"label": label, "index": 0, "probability": 0.9}, {"label": other, "index": 1, "probability": 0.1}]


def stubbed_hosting(images, labels, error_at=None):
    """SageMakerHosting whose runtime client expects exactly these requests, in order."""
    from pipelines.aws.hosting import SageMakerHosting

    runtime, stub = stubbed_runtime(images, labels, error_at)
    return SageMakerHosting(sagemaker_client=object(), runtime_client=runtime), stub


def stubbed_runtime(images, labels, error_at=None):
    """A sagemaker-runtime client that expects exactly these requests, in order (stub active)."""
    import boto3
    from botocore.response import StreamingBody
    from botocore.stub import Stubber

    runtime = boto3.client("sagemaker-runtime", region_name="us-east-1", aws_access_key_id="x",
                           aws_secret_access_key="x")
    stub = Stubber(runtime)
    for i, ((path, _), label) in enumerate(zip(images, labels)):
        body = Path(path).read_bytes()
        expected = {"EndpointName": ENDPOINT, "Body": body, "Accept": "application/json",
                    "ContentType": "image/png" if path.endswith(".png") else "image/jpeg"}
        if i == error_at:
            stub.add_client_error("invoke_endpoint", service_error_code="ModelError", http_status_code=424,
                                  service_message="Received client error (415) from primary",
                                  modeled_fields={"OriginalStatusCode": 415,
                                                  "OriginalMessage": '{"error": "cannot decode image"}'},
                                  expected_params=expected)
            continue
        payload = json.dumps(answer(label)).encode()
        stub.add_response("invoke_endpoint", {"Body": StreamingBody(io.BytesIO(payload), len(payload)),
                                              "ContentType": "application/json"}, expected)
    stub.activate()
    return runtime, stub


def test_pick_images_round_robin_over_classes(smoke, test_dir):
    picked = smoke.pick_images(test_dir, 5)
    assert [(Path(p).relative_to(test_dir).as_posix(), c) for p, c in picked] == [
        ("boot/0.png", "boot"), ("shirt/0.png", "shirt"), ("boot/1.png", "boot"),
        ("shirt/1.png", "shirt"), ("boot/2.png", "boot")]
    assert len(smoke.pick_images(test_dir, 100)) == 7


def test_accuracy_at_or_above_the_minimum_passes(smoke, test_dir):
    images = smoke.pick_images(test_dir, 4)
    hosting, stub = stubbed_hosting(images, ["boot", "shirt", "boot", "boot"])  # last one wrong
    report = smoke.smoke_test(hosting, ENDPOINT, images, min_accuracy=0.75)
    stub.assert_no_pending_responses()
    assert report["accuracy"] == 0.75 and report["correct"] == 3 and report["images"] == 4


def test_accuracy_below_the_minimum_fails(smoke, test_dir):
    images = smoke.pick_images(test_dir, 4)
    hosting, _ = stubbed_hosting(images, ["boot", "shirt", "boot", "boot"])
    with pytest.raises(smoke.SmokeTestFailed, match=r"accuracy 0.7500 on 4 held-out images is below SmokeTestMinAccuracy 0.8"):
        smoke.smoke_test(hosting, ENDPOINT, images, min_accuracy=0.8)


def test_any_error_fails_with_the_status_and_message(smoke, test_dir, tmp_path, monkeypatch, capsys):
    images = smoke.pick_images(test_dir, 7)
    labels = [c for _, c in images]
    hosting, stub = stubbed_hosting(images, labels, error_at=6)  # the JPEG; all others right
    monkeypatch.setattr(smoke, "get_hosting", lambda region, **options: hosting)
    failure = tmp_path / "failure"
    monkeypatch.setenv("SM_OUTPUT_FAILURE", str(failure))
    rc = smoke.main(["--endpoint-name", ENDPOINT, "--test-dir", str(test_dir), "--min-accuracy", "0.5",
                     "--output-dir", str(tmp_path / "out")])
    stub.assert_no_pending_responses()
    assert rc == 1
    message = failure.read_text()
    assert message.startswith("SmokeTest failed: 1 of 7 requests to imgpipe-endpoint failed")
    assert "shirt/3.jpg" in message and "HTTP 415" in message and "cannot decode image" in message
    report = json.loads((tmp_path / "out" / "smoke-test.json").read_text())
    assert report["error_count"] == 1 and report["correct"] == 6
    assert message in capsys.readouterr().err


def test_an_answer_that_is_not_a_top_k_list_is_an_error(smoke):
    from pipelines.backends import HostingError

    with pytest.raises(HostingError, match="not a top-k list of labels"):
        smoke.top_label({"predictions": [0.1, 0.9]})
    assert smoke.top_label(answer("boot")) == "boot"


def test_passing_run_writes_its_report(smoke, test_dir, tmp_path, monkeypatch, capsys):
    images = smoke.pick_images(test_dir, 2)
    hosting, _ = stubbed_hosting(images, [c for _, c in images])
    monkeypatch.setattr(smoke, "get_hosting", lambda region, **options: hosting)
    rc = smoke.main(["--endpoint-name", ENDPOINT, "--test-dir", str(test_dir), "--min-accuracy", "1.0",
                     "--max-images", "2", "--output-dir", str(tmp_path / "out")])
    assert rc == 0 and "smoke test passed: accuracy 1.0000 on 2 images" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "smoke-test.json").read_text())["accuracy"] == 1.0


# -- rollback: a failed smoke test puts back the package the endpoint served before Deploy -------------
GROUP = "imgpipe-p-1"
BAD_CONFIG, ROLLBACK_CONFIG = "imgpipe-endpoint-v2-20260502-000000", "imgpipe-endpoint-v1-20260503-000000"


@pytest.fixture
def registry(monkeypatch):
    """moto's registry with v1 (what the endpoint served) and v2 (just deployed), both Approved."""
    with fake_aws(monkeypatch) as session:
        sm = session.client("sagemaker")
        sm.create_model_package_group(ModelPackageGroupName=GROUP)
        arns = [sm.create_model_package(
            ModelPackageGroupName=GROUP, ModelApprovalStatus="Approved",
            InferenceSpecification={"Containers": [{"Image": "img:1", "ModelDataUrl": f"s3://b/{v}/model.tar.gz"}],
                                    "SupportedContentTypes": ["image/png"],
                                    "SupportedResponseMIMETypes": ["application/json"]})["ModelPackageArn"]
            for v in (1, 2)]
        yield sm, arns


def _rollback_conversation(stub, previous: str, bad: str) -> None:
    """What SageMakerHosting.deploy(previous) asks: a model + config for v1, UpdateEndpoint without alarms."""
    describe_serving(stub, "InService", BAD_CONFIG, bad)
    stub.add_response("create_model", {"ModelArn": f"arn:aws:sagemaker:us-east-1:123456789012:model/{ROLLBACK_CONFIG}"}, {
        "ModelName": ROLLBACK_CONFIG, "ExecutionRoleArn": ROLE, "Containers": [{"ModelPackageName": previous}]})
    stub.add_response("create_endpoint_config", {
        "EndpointConfigArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/{ROLLBACK_CONFIG}"}, {
        "EndpointConfigName": ROLLBACK_CONFIG,
        "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": ROLLBACK_CONFIG,
                                "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}],
        "DataCaptureConfig": {"EnableCapture": True, "InitialSamplingPercentage": 20, "DestinationS3Uri": CAPTURE,
                              "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                              "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]}}})
    stub.add_response("update_endpoint", {"EndpointArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{ENDPOINT}"}, {
        "EndpointName": ENDPOINT, "EndpointConfigName": ROLLBACK_CONFIG,
        "DeploymentConfig": {"BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 60},
            "TerminationWaitInSeconds": 60}}})  # no AutoRollbackConfiguration: no alarm undoes it
    describe_serving(stub, "InService", ROLLBACK_CONFIG, previous)


def run_failing(smoke, test_dir, tmp_path, monkeypatch, sagemaker_client, *extra: str) -> tuple[int, str, dict]:
    """check_endpoint.main on an endpoint that answers every image wrongly; (rc, failure, report)."""
    from pipelines.aws import hosting

    images = smoke.pick_images(test_dir, 4)
    runtime, _ = stubbed_runtime(images, ["shirt" if c == "boot" else "boot" for _, c in images])
    monkeypatch.setattr(hosting, "resource_name", lambda endpoint, version, now=None: ROLLBACK_CONFIG)
    monkeypatch.setattr(smoke, "get_hosting", lambda region, **options: hosting.SageMakerHosting(
        region, **options, sagemaker_client=sagemaker_client, runtime_client=runtime, sleep=lambda s: None))
    monkeypatch.setenv("SM_OUTPUT_FAILURE", str(tmp_path / "failure"))
    rc = smoke.main(["--endpoint-name", ENDPOINT, "--test-dir", str(test_dir), "--min-accuracy", "0.5",
                     "--max-images", "4", "--region", "us-east-1", "--output-dir", str(tmp_path / "out"),
                     "--instance-type", "ml.m5.large", "--instance-count", "1", "--data-capture-percent", "20",
                     "--data-capture-url", CAPTURE, "--model-role-arn", ROLE, "--bake-seconds", "60", *extra])
    return rc, (tmp_path / "failure").read_text(), json.loads((tmp_path / "out" / "smoke-test.json").read_text())


def test_failure_rolls_back_to_the_package_served_before(smoke, test_dir, tmp_path, monkeypatch, registry):
    import boto3
    from botocore.stub import Stubber

    _, (previous, bad) = registry
    client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stub:
        _rollback_conversation(stub, previous, bad)
        rc, failure, report = run_failing(smoke, test_dir, tmp_path, monkeypatch, client,
                                          "--deploy-action", "Updated", "--previous-package-arn", previous)
        stub.assert_no_pending_responses()
    assert rc == 1
    assert failure == (f"SmokeTest failed: accuracy 0.0000 on 4 held-out images is below SmokeTestMinAccuracy 0.5; "
                       f"rolled {ENDPOINT} back to {previous} (version 1, Updated)")
    assert report["accuracy"] == 0.0 and report["rollback"] == failure.split("; ", 1)[1]


@pytest.mark.parametrize("action, previous, status, expected", [
    ("Unchanged", "v1", "Approved", "already served this model before the Deploy step (Unchanged): nothing to roll back"),
    ("Created", "", "Approved", f"nothing to roll back to (first deployment of {ENDPOINT}): it still serves the failed "
                                f"model; remove it with `imgpipe endpoints delete {ENDPOINT}`"),
    ("Updated", "v1", "Rejected", "is Rejected now; imgpipe-endpoint still serves the failed model"),
])
def test_nothing_to_roll_back(smoke, test_dir, tmp_path, monkeypatch, registry, action, previous, status, expected):
    """Unchanged, first deployment, previous package rejected since: no SageMaker write (no client calls)."""
    sm, (v1, _) = registry
    sm.update_model_package(ModelPackageArn=v1, ModelApprovalStatus=status)
    rc, failure, _ = run_failing(smoke, test_dir, tmp_path, monkeypatch, object(), "--deploy-action", action,
                                 "--previous-package-arn", v1 if previous else "")
    assert rc == 1 and "below SmokeTestMinAccuracy 0.5; " in failure and expected in failure, failure
    assert "FAILED" not in failure
