"""``run-pipeline`` against moto: create, update (same pipeline), start, wait; clean errors."""
from __future__ import annotations

import io
import json
import logging

import pytest

from pipelines import run_pipeline

REGION = "us-east-1"
BUCKET = "imgpipe-run-test"
ROLE = "arn:aws:iam::123456789012:role/service-role/AmazonSageMaker-PipelineRole"
PIPELINE = "imgpipe-p-abc123"
TAGS = [
    {"Key": "sagemaker:project-name", "Value": "imgpipe"},
    {"Key": "sagemaker:project-id", "Value": "p-abc123"},
]


@pytest.fixture(autouse=True)
def _restore_sdk_log_levels():
    """The CLIs quiet the SDK's loggers when called in-process; leave them as found."""
    from pipelines.get_pipeline_definition import QUIET_LOGGERS

    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def kwargs(**extra) -> str:
    return json.dumps({"region": REGION, "default_bucket": BUCKET, "pipeline_name": PIPELINE,
                       "model_package_group_name": PIPELINE, "base_job_prefix": PIPELINE, **extra})


@pytest.fixture
def aws_env(monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")


@pytest.fixture
def moto_aws(aws_env):
    import boto3
    from moto import mock_aws

    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        yield boto3.client("sagemaker", region_name=REGION)


def test_creates_then_updates_the_same_pipeline_and_starts(moto_aws, capsys, tmp_path):
    sm = moto_aws
    definition_file = tmp_path / "pipeline-definition.json"
    rc = run_pipeline.main([
        "--module-name", "pipelines.pipeline", "--role-arn", ROLE, "--tags", json.dumps(TAGS),
        "--kwargs", kwargs(), "--description", "first", "--definition-file", str(definition_file),
        "--wait", "--poll-seconds", "0",
    ])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"created pipeline arn:aws:sagemaker:{REGION}:123456789012:pipeline/{PIPELINE}" in out
    assert "started execution" in out and "execution: Succeeded" in out
    assert "step statuses unavailable" in out  # moto has no ListPipelineExecutionSteps

    described = sm.describe_pipeline(PipelineName=PIPELINE)
    assert described["RoleArn"] == ROLE
    first = json.loads(described["PipelineDefinition"])
    assert first == json.loads(definition_file.read_text())  # the artifact is what was upserted
    arn = described["PipelineArn"]
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn)["Tags"]}
    assert tags["sagemaker:project-name"] == "imgpipe" and tags["sagemaker:project-id"] == "p-abc123"
    assert len(sm.list_pipeline_executions(PipelineName=PIPELINE)["PipelineExecutionSummaries"]) == 1

    rc = run_pipeline.main([
        "--role-arn", ROLE, "--tags", json.dumps(TAGS), "--no-start", "--description", "second",
        "--kwargs", kwargs(input_data_url=f"s3://{BUCKET}/new-data"),
    ])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"updated pipeline {arn}" in out and "started execution" not in out

    summaries = sm.list_pipelines()["PipelineSummaries"]
    assert [s["PipelineName"] for s in summaries] == [PIPELINE]  # no duplicate
    described = sm.describe_pipeline(PipelineName=PIPELINE)
    second = json.loads(described["PipelineDefinition"])
    assert described["PipelineDescription"] == "second"
    data = {p["Name"]: p["DefaultValue"] for p in second["Parameters"]}["InputDataUrl"]
    assert data == f"s3://{BUCKET}/new-data" != first["Parameters"][0]["DefaultValue"]
    assert len(sm.list_pipeline_executions(PipelineName=PIPELINE)["PipelineExecutionSummaries"]) == 1

    # The code the definition names was uploaded to the bucket while building.
    s3 = __import__("boto3").client("s3", region_name=REGION)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    hps = [s for s in second["Steps"] if s["Name"] == "TrainBestModel"][0]["Arguments"]["HyperParameters"]
    assert json.loads(hps["sagemaker_submit_directory"]).split(f"s3://{BUCKET}/")[1] in keys

    # Unknown execution parameters are refused before anything is upserted or started.
    rc = run_pipeline.main(["--role-arn", ROLE, "--kwargs", kwargs(), "--parameters", '{"MaxTuningJob": 8}'])
    assert rc == 2 and "MaxTuningJob not among the pipeline's parameters" in capsys.readouterr().err
    assert len(sm.list_pipeline_executions(PipelineName=PIPELINE)["PipelineExecutionSummaries"]) == 1

    # build_definition inside a caller's mock_aws: the caller's moto state survives, and the
    # code already in moto's S3 still reaches the store.
    from pipelines.local.object_store import ObjectStore
    from pipelines.offline import build_definition

    store = ObjectStore(tmp_path / "store")
    offline = build_definition(kwargs=json.loads(kwargs(input_data_url=f"s3://{BUCKET}/new-data")), store=store)
    assert [s["PipelineName"] for s in sm.list_pipelines()["PipelineSummaries"]] == [PIPELINE]
    offline_hps = [s for s in offline["Steps"] if s["Name"] == "TrainBestModel"][0]["Arguments"]["HyperParameters"]
    assert offline_hps["sagemaker_submit_directory"] == hps["sagemaker_submit_directory"]
    assert store.exists(json.loads(hps["sagemaker_submit_directory"]))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--role-arn", "my-role"], "is not an IAM role ARN"),
        (["--role-arn", "arn:aws:iam::12345:role/short-account"], "is not an IAM role ARN"),
        (["--kwargs", kwargs()], "--role-arn is required"),
        (["--role-arn", ROLE, "--kwargs", "{'region': 'us-east-1',"], "--kwargs is not valid JSON"),
        (["--role-arn", ROLE, "--kwargs", "[1, 2]"], "--kwargs must be a JSON object"),
        (["--role-arn", ROLE, "--kwargs", kwargs(), "--tags", '[{"Key": "a"'], "--tags is not valid JSON"),
        (["--role-arn", ROLE, "--kwargs", kwargs(), "--tags", '[{"Name": "a"}]'], "--tags must be a JSON list"),
        (["--role-arn", ROLE, "--kwargs", kwargs(no_such_argument=1)], "unexpected keyword argument"),
        (["--role-arn", ROLE, "--module-name", "pipelines.no_such_module"], "no such module"),
        (["--role-arn", ROLE, "--kwargs", kwargs(role="admin")], 'is not an IAM role ARN'),
        (["--role-arn", ROLE, "--kwargs", kwargs(), "--parameters", "[]"], "--parameters must be a JSON object"),
    ],
)
def test_usage_errors_exit_2_without_traceback(aws_env, capsys, argv, message):
    assert run_pipeline.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert "Traceback" not in err


def test_missing_credentials_is_a_clear_error(monkeypatch, tmp_path, capsys):
    for name in list(__import__("os").environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    rc = run_pipeline.main(["--role-arn", ROLE, "--kwargs", kwargs()])
    err = capsys.readouterr().err
    assert rc == 1
    assert "no AWS credentials found" in err and "get-pipeline-definition" in err
    assert "Traceback" not in err


class FakeSageMaker:
    """Just enough of the SageMaker client for wait_for_execution: a scripted execution."""

    def __init__(self, polls):
        self.polls = list(polls)  # [(execution status, [(step, status, reason), ...]), ...]
        self.current = self.polls[0]

    def list_pipeline_execution_steps(self, **kwargs):
        self.current = self.polls.pop(0) if self.polls else self.current
        steps = [{"StepName": n, "StepStatus": s, **({"FailureReason": r} if r else {})}
                 for n, s, r in self.current[1]]
        return {"PipelineExecutionSteps": steps}

    def describe_pipeline_execution(self, **kwargs):
        status = self.current[0]
        return {"PipelineExecutionStatus": status,
                **({"FailureReason": "Step failure: AccuracyTooLow"} if status == "Failed" else {})}


def test_wait_prints_each_step_status_once_when_it_changes():
    client = FakeSageMaker([
        ("Executing", [("PrepareData", "Executing", None)]),
        ("Executing", [("PrepareData", "Executing", None)]),
        ("Executing", [("PrepareData", "Succeeded", None), ("TuneHyperparameters", "Executing", None)]),
        ("Failed", [("PrepareData", "Succeeded", None), ("TuneHyperparameters", "Succeeded", None),
                    ("AccuracyTooLow", "Failed", "Test accuracy 0.5 is below AccuracyThreshold 0.85")]),
    ])
    out = io.StringIO()
    status = run_pipeline.wait_for_execution(client, "arn:x", poll_seconds=0, out=out, sleep=lambda s: None)
    assert status == "Failed"
    lines = out.getvalue().splitlines()
    assert lines == [
        "  PrepareData: Executing",
        "execution: Executing",
        "  PrepareData: Succeeded",
        "  TuneHyperparameters: Executing",
        "  TuneHyperparameters: Succeeded",
        "  AccuracyTooLow: Failed (Test accuracy 0.5 is below AccuracyThreshold 0.85)",
        "execution: Failed",
        "failure reason: Step failure: AccuracyTooLow",
    ]
