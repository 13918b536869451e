"""steps/smoke_test.py: real image files sent through SageMakerHosting.invoke, with
sagemaker-runtime's InvokeEndpoint scripted by botocore's Stubber (moto runs no model): the
exact requests, and how answers, wrong labels and HTTP errors decide the step's outcome."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from awsfakes import load_step
from imagefactory import write_image

ENDPOINT = "imgpipe-endpoint"


@pytest.fixture
def smoke(monkeypatch):
    return load_step(monkeypatch, "smoke_test")


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
    import boto3
    from botocore.response import StreamingBody
    from botocore.stub import Stubber

    from pipelines.hosting import SageMakerHosting

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
    return SageMakerHosting(sagemaker_client=object(), runtime_client=runtime), stub


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
    monkeypatch.setattr(smoke, "get_hosting", lambda region: hosting)
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
    from pipelines.hosting import HostingError

    with pytest.raises(HostingError, match="not a top-k list of labels"):
        smoke.top_label({"predictions": [0.1, 0.9]})
    assert smoke.top_label(answer("boot")) == "boot"


def test_passing_run_writes_its_report(smoke, test_dir, tmp_path, monkeypatch, capsys):
    images = smoke.pick_images(test_dir, 2)
    hosting, _ = stubbed_hosting(images, [c for _, c in images])
    monkeypatch.setattr(smoke, "get_hosting", lambda region: hosting)
    rc = smoke.main(["--endpoint-name", ENDPOINT, "--test-dir", str(test_dir), "--min-accuracy", "1.0",
                     "--max-images", "2", "--output-dir", str(tmp_path / "out")])
    assert rc == 0 and "smoke test passed: accuracy 1.0000 on 2 images" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "smoke-test.json").read_text())["accuracy"] == 1.0
