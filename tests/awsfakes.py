"""Test helpers: moto's in-process AWS with fake credentials, and the deploy steps as modules."""
from __future__ import annotations

import contextlib
import importlib.util
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
ISOLATE = ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION")
ENDPOINT = "imgpipe-endpoint"
ROLE = "arn:aws:iam::123456789012:role/imgpipe-model"
CAPTURE = "s3://imgpipe-bucket/imgpipe/data-capture"
WHEN = datetime(2026, 5, 1, tzinfo=timezone.utc)


def endpoint_description(status: str, config: str, **extra) -> dict:
    """A DescribeEndpoint response for ``ENDPOINT``."""
    return {"EndpointName": ENDPOINT, "EndpointArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{ENDPOINT}",
            "EndpointConfigName": config, "EndpointStatus": status, "CreationTime": WHEN, "LastModifiedTime": WHEN, **extra}


def describe_serving(stub, status: str, config: str, package: str, *, primary_container: dict | None = None,
                     **extra) -> None:
    """Script describe_endpoint -> describe_endpoint_config -> describe_model as SageMaker answers
    for ``ENDPOINT`` serving ``package`` (a model and config both named ``config``), or, with
    ``primary_container``, a model of that one container (a multi-model endpoint)."""
    stub.add_response("describe_endpoint", endpoint_description(status, config, **extra), {"EndpointName": ENDPOINT})
    stub.add_response("describe_endpoint_config", {
        "EndpointConfigName": config, "EndpointConfigArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/{config}",
        "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": config, "InstanceType": "ml.m5.large",
                                "InitialInstanceCount": 1}],
        "DataCaptureConfig": {"EnableCapture": True, "InitialSamplingPercentage": 20, "DestinationS3Uri": CAPTURE,
                              "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]},
        "CreationTime": WHEN}, {"EndpointConfigName": config})
    stub.add_response("describe_model", {
        "ModelName": config, "ExecutionRoleArn": ROLE,
        **({"PrimaryContainer": primary_container} if primary_container else {"Containers": [{"ModelPackageName": package}]}),
        "CreationTime": WHEN, "ModelArn": f"arn:aws:sagemaker:us-east-1:123456789012:model/{config}"},
        {"ModelName": config})


@contextlib.contextmanager
def fake_aws(monkeypatch, region: str = "us-east-1") -> Iterator:
    """A boto3 session on moto (``mock_aws``): fake credentials, ``region``, no profile or endpoint."""
    import boto3
    from moto import mock_aws

    for name in ISOLATE:
        monkeypatch.delenv(name, raising=False)
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", region)):
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield boto3.Session(region_name=region)


def load_step(monkeypatch, name: str):
    """``steps/<name>.py`` imported as the container runs it (``steps/`` on sys.path), AWS backend."""
    monkeypatch.syspath_prepend(str(REPO / "steps"))
    monkeypatch.delenv("IMGPIPE_BACKEND", raising=False)
    spec = importlib.util.spec_from_file_location(f"imgpipe_steps_{name}", REPO / "steps" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
