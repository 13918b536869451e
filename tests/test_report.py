"""``imgpipe report``: built from a recorded execution of real jobs (a Debugger+Profiler
training job on digits, steps/evaluate.py on its model, a registered package), rendered in
headless Chromium and checked in the page; and from the same output laid out in S3 as
SageMaker writes it (moto), with the SageMaker API answered by botocore's Stubber."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from debugger_jobs import BUCKET, REPO, DebugJobs, rule_configs
from pipelines.local.records import Records, StepRecord
from pipelines.report import SECTIONS, collect_aws, collect_local, render_html, write_report

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EXECUTION = "rep0rt0exec01"


def chromium() -> str:
    """The Chromium binary: its absence fails the test (the browser check is required)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("Chromium is not installed (apt-get install -y chromium): the report must be checked in a browser")


def render(html_file: Path, tmp: Path) -> tuple[str, np.ndarray]:
    """(DOM after rendering, screenshot pixels) of ``html_file`` in headless Chromium."""
    base = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", html_file.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = tmp / "shot.png"
    run = subprocess.run([*base, "--window-size=1100,2400", f"--screenshot={shot}", html_file.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    from PIL import Image

    return dom.stdout, np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)


class Sections(HTMLParser):
    """Per ``<section id>``: its text, and its images' ``src``."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.images: dict[str, list[str]] = {}
        self.external: list[str] = []
        self._current = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self._current = attrs.get("id")
            self.text.setdefault(self._current, "")
            self.images.setdefault(self._current, [])
        if tag == "img" and self._current:
            self.images[self._current].append(attrs.get("src") or "")
        for key in ("src", "href"):
            if attrs.get(key) and not attrs[key].startswith("data:"):
                self.external.append(attrs[key])

    def handle_endtag(self, tag):
        if tag == "section":
            self._current = None

    def handle_data(self, data):
        if self._current:
            self.text[self._current] += data


@pytest.fixture(scope="module")
def execution(tmp_path_factory):
    """A recorded execution whose steps are real jobs' results."""
    root = tmp_path_factory.mktemp("report")
    jobs = DebugJobs(root, per_class=5)
    request = jobs.request(
        {"learning-rate": "0.02", "pretrained": '"true"', "freeze-backbone": '"true"', "epochs": "2"},
        profiler_ms=300, rules=rule_configs())
    # as the pipeline's TrainBestModel: train.py records the training insights there
    request["TensorBoardOutputConfig"] = {"S3OutputPath": f"s3://{BUCKET}/tensorboard", "LocalPath": "/opt/ml/output/tensorboard"}
    job = jobs.run("pipelines-rep0rt0exec01-TrainBestModel", request)
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    # AnalyzeTraining: steps/analyze_training.py on what the engine uploaded, SageMaker's layout
    insights_uri = f"s3://{BUCKET}/insights/{EXECUTION}"
    recorded = jobs.store.path(f"s3://{BUCKET}/tensorboard/{job['TrainingJobName']}/tensorboard-output")
    done = subprocess.run([sys.executable, str(REPO / "steps" / "analyze_training.py"), "--tensorboard-dir", str(recorded),
                           "--output-dir", str(jobs.store.path(insights_uri))],
                          env={**os.environ, "PYTHONPATH": str(REPO / "training")}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    # EvaluateModel: steps/evaluate.py on the model, as the pipeline's processing job runs it.
    evaluation_uri = f"s3://{BUCKET}/evaluation/{EXECUTION}"
    out = jobs.store.path(evaluation_uri)
    done = subprocess.run([sys.executable, str(REPO / "steps" / "evaluate.py"), "--model-dir",
                           str(jobs.store.path(job["ModelArtifacts"]["S3ModelArtifacts"]).parent),
                           "--test-dir", str(root / "digits"), "--output-dir", str(out), "--workers", "1"],
                          env={**os.environ, "PYTHONPATH": str(REPO / "training")}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    from pipelines.local.registry import LocalModelRegistry

    package = LocalModelRegistry(jobs.settings, jobs.store).register({
        "ModelPackageGroupName": "ImgpipeModels", "ModelApprovalStatus": "PendingManualApproval",
        "InferenceSpecification": {"Containers": [{"Image": "x", "ModelDataUrl": job["ModelArtifacts"]["S3ModelArtifacts"]}]},
        "ModelMetrics": {"ModelQuality": {"Statistics": {"ContentType": "application/json",
                                                         "S3Uri": f"{evaluation_uri}/evaluation.json"}}}})
    objective = next(m["Value"] for m in job["FinalMetricDataList"] if m["MetricName"] == "valid_accuracy")
    tuning = {"HyperParameterTuningJobConfig": {"HyperParameterTuningJobObjective": {"MetricName": "valid_accuracy"}},
              "TrainingJobSummaries": [{"TrainingJobName": job["TrainingJobName"], "TrainingJobStatus": "Completed",
                                        "TrainingStartTime": job["TrainingStartTime"],
                                        "TunedHyperParameters": {"learning-rate": "0.02"},
                                        "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "valid_accuracy",
                                                                                        "Value": objective}}]}
    records = Records(jobs.settings.db_path)
    now = time.time()
    records.create_execution(EXECUTION, f"arn:aws:sagemaker:us-east-1:000000000000:pipeline/imgpipebuild/execution/{EXECUTION}",
                             "ImgpipeBuild", {"Steps": []}, {"MaxTuningJobs": 1}, now - 60)
    steps = [("TuneHyperparameters", "Tuning", tuning),
             ("TrainBestModel", "Training", job),
             ("AnalyzeTraining", "Processing", {"ProcessingOutputConfig": {"Outputs": [
                 {"OutputName": "insights", "S3Output": {"S3Uri": insights_uri}}]}}),
             ("EvaluateModel", "Processing", {"ProcessingOutputConfig": {"Outputs": [
                 {"OutputName": "evaluation", "S3Output": {"S3Uri": evaluation_uri}}]}}),
             ("RegisterModel-RegisterModel", "RegisterModel", package)]
    for position, (name, kind, props) in enumerate(steps):
        records.save_step(StepRecord(EXECUTION, name, kind, "Succeeded", start_time=now - 50, end_time=now - 10,
                                     duration=40.0, job_name=props.get("TrainingJobName"), properties=props,
                                     position=position))
    records.finish_execution(EXECUTION, "Succeeded", end_time=now)
    return jobs, job, package, evaluation_uri


def check_page(html_file: Path, tmp: Path, data) -> dict:
    dom, pixels = render(html_file, tmp)
    page = Sections()
    page.feed(dom)
    for section in SECTIONS:
        assert section in page.text, f"section {section!r} missing from the rendered page"
    assert not page.external, page.external  # nothing to fetch
    for section, count in (("tuning", 1), ("training", 1), ("debugger", 2), ("system", 1), ("evaluation", 2)):
        images = page.images[section]
        assert len(images) >= count and all(src.startswith("data:image/png;base64,") for src in images), (section, len(images))
    for status in data.rules:
        assert status["RuleConfigurationName"] in page.text["debugger"]
        assert status["RuleEvaluationStatus"] in page.text["debugger"]
    assert "ImgpipeModels" in page.text["model"] and "PendingManualApproval" in page.text["model"]
    assert "accuracy" in page.text["evaluation"]
    # a non-blank page: many distinct colours, and the plots' coloured lines/bars
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200
    coloured = np.abs(pixels[..., 0] - pixels[..., 2]) > 60
    assert coloured.mean() > 0.001
    return page.text


@pytest.mark.browser
def test_local_report_renders_every_section(execution, tmp_path):
    jobs, job, package, _ = execution
    data = collect_local(EXECUTION[:6], jobs.settings)
    assert not data.notes, data.notes
    assert [r["RuleConfigurationName"] for r in data.rules] == list(rule_configs.__defaults__[0])
    assert data.losses and data.gradients and data.system_events and len(data.history) == 2
    out = write_report(data, tmp_path / "report.html")
    text = check_page(out, tmp_path, data)
    assert job["TrainingJobName"] in text["training"] and package["ModelPackageArn"] in text["model"]
    for name, verdict in data.insights["rules"].items():
        assert name in text["insights"] and verdict["status"] in text["insights"]


def test_report_shows_each_training_insight_verdict_with_its_reason(execution):
    jobs, *_ = execution
    data = collect_local(EXECUTION, jobs.settings)
    assert set(data.insights["rules"]) == {"LossNotDecreasing", "VanishingGradient", "Overfit", "Overtraining",
                                           "PoorWeightInitialization"}
    html = render_html(data)
    section = html[html.index('<section id="insights">'):html.index('<section id="debugger">')]
    for name, verdict in {**data.insights["rules"], **data.insights["profiler"]}.items():
        assert f"<td>{escape(name)}</td>" in section and escape(verdict["reason"]) in section
    data.insights = None
    assert "no training insights in this execution" in render_html(data)


def test_report_command(execution, tmp_path):
    jobs, *_ = execution
    from pipelines.cli import main

    out = tmp_path / "cli.html"
    assert main(["report", EXECUTION, "--home", str(jobs.settings.home), "--out", str(out)]) == 0
    assert out.is_file() and out.stat().st_size > 20_000
    assert main(["report", "nosuchexecution", "--home", str(jobs.settings.home)]) == 2


def _upload_tree(s3, local: Path, bucket: str, prefix: str) -> None:
    for path in local.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")


@pytest.mark.browser
def test_aws_report_from_sagemaker_layout_in_s3(execution, tmp_path):
    """The same job's output uploaded to (moto) S3 where SageMaker puts it; the SageMaker API
    calls answered by botocore's Stubber, each request checked."""
    import boto3
    from botocore.stub import Stubber
    from moto import mock_aws

    jobs, job, package, evaluation_uri = execution
    name = job["TrainingJobName"]
    bucket = "sagemaker-us-east-1-111122223333"
    arn = f"arn:aws:sagemaker:us-east-1:111122223333:pipeline/imgpipebuild/execution/{EXECUTION}"
    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=bucket)
        _upload_tree(s3, jobs.debug_output(job), bucket, f"imgpipe/debugger/{name}/debug-output")
        _upload_tree(s3, jobs.store.path(f"s3://{BUCKET}/profiler/{name}/profiler-output"), bucket,
                     f"imgpipe/profiler/{name}/profiler-output")
        model_dir = jobs.store.path(job["ModelArtifacts"]["S3ModelArtifacts"]).parent
        _upload_tree(s3, model_dir, bucket, f"imgpipe/training/{name}/output")
        _upload_tree(s3, jobs.store.path(evaluation_uri), bucket, f"imgpipe/evaluation/{EXECUTION}")

        sagemaker = boto3.client("sagemaker", region_name="us-east-1")
        stub = Stubber(sagemaker)
        stub.add_response("describe_pipeline_execution", {
            "PipelineExecutionArn": arn, "PipelineArn": "arn:aws:sagemaker:us-east-1:111122223333:pipeline/imgpipebuild",
            "PipelineExecutionStatus": "Succeeded", "CreationTime": when, "LastModifiedTime": when},
            {"PipelineExecutionArn": arn})
        stub.add_response("list_pipeline_execution_steps", {"PipelineExecutionSteps": [
            {"StepName": "TrainBestModel", "StepStatus": "Succeeded", "StartTime": when, "EndTime": when,
             "Metadata": {"TrainingJob": {"Arn": f"arn:aws:sagemaker:us-east-1:111122223333:training-job/{name}"}}}],
            "NextToken": "page2"}, {"PipelineExecutionArn": arn, "SortOrder": "Ascending"})
        stub.add_response("list_pipeline_execution_steps", {"PipelineExecutionSteps": [
            {"StepName": "EvaluateModel", "StepStatus": "Succeeded",
             "Metadata": {"ProcessingJob": {"Arn": "arn:aws:sagemaker:us-east-1:111122223333:processing-job/evaluate-1"}}},
            {"StepName": "RegisterModel-RegisterModel", "StepStatus": "Succeeded",
             "Metadata": {"RegisterModel": {"Arn": "arn:aws:sagemaker:us-east-1:111122223333:model-package/imgpipemodels/1"}}}]},
            {"PipelineExecutionArn": arn, "SortOrder": "Ascending", "NextToken": "page2"})
        stub.add_response("describe_training_job", {
            "TrainingJobName": name, "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:111122223333:training-job/{name}",
            "TrainingJobStatus": "Completed", "SecondaryStatus": "Completed", "CreationTime": when, "TrainingStartTime": when,
            "AlgorithmSpecification": {"TrainingImage": "pytorch", "TrainingInputMode": "File"},
            "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
            "ModelArtifacts": {"S3ModelArtifacts": f"s3://{bucket}/imgpipe/training/{name}/output/model.tar.gz"},
            "DebugHookConfig": {"S3OutputPath": f"s3://{bucket}/imgpipe/debugger"},
            "ProfilerConfig": {"S3OutputPath": f"s3://{bucket}/imgpipe/profiler", "ProfilingIntervalInMilliseconds": 300},
            "DebugRuleEvaluationStatuses": [{k: v for k, v in s.items() if k in (
                "RuleConfigurationName", "RuleEvaluationStatus", "StatusDetails")} for s in job["DebugRuleEvaluationStatuses"]],
            "ProfilerRuleEvaluationStatuses": [{"RuleConfigurationName": "ProfilerReport",
                                                "RuleEvaluationStatus": "NoIssuesFound"}]},
            {"TrainingJobName": name})
        stub.add_response("describe_processing_job", {
            "ProcessingJobName": "evaluate-1", "ProcessingJobArn": "arn:aws:sagemaker:us-east-1:111122223333:processing-job/evaluate-1",
            "ProcessingJobStatus": "Completed", "CreationTime": when,
            "ProcessingResources": {"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30}},
            "AppSpecification": {"ImageUri": "pytorch"},
            "ProcessingOutputConfig": {"Outputs": [{"OutputName": "evaluation", "S3Output": {
                "S3Uri": f"s3://{bucket}/imgpipe/evaluation/{EXECUTION}", "LocalPath": "/opt/ml/processing/evaluation",
                "S3UploadMode": "EndOfJob"}}]}},
            {"ProcessingJobName": "evaluate-1"})
        stub.add_response("describe_model_package", {
            "ModelPackageName": "imgpipemodels", "ModelPackageGroupName": "ImgpipeModels", "ModelPackageVersion": 1,
            "ModelPackageArn": "arn:aws:sagemaker:us-east-1:111122223333:model-package/imgpipemodels/1",
            "CreationTime": when, "ModelPackageStatus": "Completed", "ModelApprovalStatus": "Approved",
            "ModelPackageStatusDetails": {"ValidationStatuses": []}},
            {"ModelPackageName": "arn:aws:sagemaker:us-east-1:111122223333:model-package/imgpipemodels/1"})
        with stub:
            data = collect_aws(arn, sagemaker, s3, tmp_path / "work")
            stub.assert_no_pending_responses()
    assert not data.notes, data.notes
    assert [s["name"] for s in data.steps] == ["TrainBestModel", "EvaluateModel", "RegisterModel-RegisterModel"]
    assert len(data.history) == 2 and data.losses and data.gradients and data.system_events
    assert data.model["ModelApprovalStatus"] == "Approved" and data.evaluation["classes"]
    assert {f["Rule"] for f in data.profiler_findings} >= {"StepOutlier", "IOBottleneck"}
    out = write_report(data, tmp_path / "aws.html")
    dom, _ = render(out, tmp_path)
    page = Sections()
    page.feed(dom)
    assert set(SECTIONS) <= set(page.text)
    assert "Approved" in page.text["model"] and "LossNotDecreasing" in page.text["debugger"]
    assert len(page.images["debugger"]) == 2 and page.images["system"]
    assert "no tuning trials" in page.text["tuning"]
