"""Collect a report's data from SageMaker (boto3 clients) and the job output in S3."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.report.data import ReportData, gather, is_final_training, read_evaluation, read_history, read_insights, read_profiler, read_tensors, trial_rows


def _s3_split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def download_prefix(s3: Any, uri: str, dest: Path) -> int:
    """Every object under ``uri`` into ``dest`` (relative paths kept); returns the count."""
    bucket, prefix = _s3_split(uri.rstrip("/") + "/")
    count = 0
    token: dict = {}
    while True:
        page = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, **token)
        for item in page.get("Contents") or []:
            target = dest / item["Key"][len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, item["Key"], str(target))
            count += 1
        if not page.get("IsTruncated"):
            return count
        token = {"ContinuationToken": page["NextContinuationToken"]}


def _pipeline_steps(sagemaker: Any, arn: str) -> list[dict]:
    steps, token = [], {}
    while True:
        page = sagemaker.list_pipeline_execution_steps(PipelineExecutionArn=arn, SortOrder="Ascending", **token)
        steps += page.get("PipelineExecutionSteps") or []
        if not page.get("NextToken"):
            return steps
        token = {"NextToken": page["NextToken"]}


def collect_aws(execution_arn: str, sagemaker: Any, s3: Any, workdir: Path) -> ReportData:
    """ReportData of a SageMaker pipeline execution; S3 output is downloaded into ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    described = sagemaker.describe_pipeline_execution(PipelineExecutionArn=execution_arn)
    start, end = described.get("CreationTime"), described.get("LastModifiedTime")
    data = ReportData(execution={
        "id": execution_arn.rsplit("/", 1)[-1], "arn": execution_arn,
        "pipeline": described.get("PipelineArn", "").rsplit("/", 1)[-1], "status": described.get("PipelineExecutionStatus"),
        "start": start.timestamp() if hasattr(start, "timestamp") else start,
        "end": end.timestamp() if hasattr(end, "timestamp") else end, "failure": described.get("FailureReason"),
        "parameters": {p["Name"]: p["Value"] for p in described.get("PipelineParameters") or []}})
    for step in _pipeline_steps(sagemaker, execution_arn):
        meta = step.get("Metadata") or {}
        started, ended = step.get("StartTime"), step.get("EndTime")
        duration = (ended - started).total_seconds() if started and ended else None
        job_arn = next((v.get("Arn") for v in meta.values() if isinstance(v, dict) and v.get("Arn")), None)
        data.steps.append({"name": step["StepName"], "type": step.get("StepType", ""),
                           "status": step.get("StepStatus"), "duration": duration,
                           "job": job_arn.rsplit("/", 1)[-1] if job_arn else None})
        if "TuningJob" in meta:
            name = meta["TuningJob"]["Arn"].rsplit("/", 1)[-1]
            gather(data, "tuning trials", _aws_trials, data, sagemaker, name)
        elif "TrainingJob" in meta and data.training_job is None:
            described_job = sagemaker.describe_training_job(TrainingJobName=meta["TrainingJob"]["Arn"].rsplit("/", 1)[-1])
            if is_final_training(described_job):
                _aws_training(data, described_job, s3, workdir)
        elif "ProcessingJob" in meta:
            job = sagemaker.describe_processing_job(ProcessingJobName=meta["ProcessingJob"]["Arn"].rsplit("/", 1)[-1])
            for output in (job.get("ProcessingOutputConfig") or {}).get("Outputs") or []:
                if output.get("OutputName") == "evaluation":
                    folder = workdir / "evaluation"
                    gather(data, "evaluation", lambda o=output: (download_prefix(s3, o["S3Output"]["S3Uri"], folder),
                                                                   read_evaluation(data, folder)))
                elif output.get("OutputName") == "insights":
                    folder = workdir / "insights"
                    gather(data, "training insights", lambda o=output: (download_prefix(s3, o["S3Output"]["S3Uri"], folder),
                                                                          read_insights(data, folder)))
        elif "RegisterModel" in meta:
            package = sagemaker.describe_model_package(ModelPackageName=meta["RegisterModel"]["Arn"])
            data.model = {k: package.get(k) for k in ("ModelPackageGroupName", "ModelPackageVersion",
                                                      "ModelPackageArn", "ModelApprovalStatus")}
    return data


def _aws_trials(data: ReportData, sagemaker: Any, name: str) -> None:
    tuning = sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    objective = (tuning.get("HyperParameterTuningJobConfig") or {}).get("HyperParameterTuningJobObjective") or {}
    data.objective = objective.get("MetricName")
    summaries, token = [], {}
    while True:
        page = sagemaker.list_training_jobs_for_hyper_parameter_tuning_job(HyperParameterTuningJobName=name, **token)
        summaries += page.get("TrainingJobSummaries") or []
        if not page.get("NextToken"):
            break
        token = {"NextToken": page["NextToken"]}
    data.trials = trial_rows(summaries)


def _aws_training(data: ReportData, job: dict, s3: Any, workdir: Path) -> None:
    name = job["TrainingJobName"]
    data.training_job = name
    data.rules = job.get("DebugRuleEvaluationStatuses") or []
    data.profiler_rules = job.get("ProfilerRuleEvaluationStatuses") or []
    model_uri = (job.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if model_uri:
        def history() -> None:
            bucket, key = _s3_split(model_uri.rsplit("/", 1)[0] + "/output.tar.gz")
            target = workdir / "output.tar.gz"
            s3.download_file(bucket, key, str(target))
            data.history.extend(read_history(target))
        gather(data, "training history", history)

    def tensors() -> None:
        if not job.get("DebugHookConfig"):
            return  # built without SageMaker Debugger: AnalyzeTraining's insights instead
        folder = workdir / "debug-output"
        if not download_prefix(s3, f"{job['DebugHookConfig']['S3OutputPath'].rstrip('/')}/{name}/debug-output", folder):
            raise FileNotFoundError("no Debugger output in S3 for this job")
        read_tensors(data, folder)
    gather(data, "Debugger tensors", tensors)
    profiler = job.get("ProfilerConfig") or {}
    if profiler.get("S3OutputPath"):
        def system() -> None:
            folder = workdir / "profiler-output"
            download_prefix(s3, f"{profiler['S3OutputPath'].rstrip('/')}/{name}/profiler-output", folder)
            read_profiler(data, folder)
            from pipelines.local.profiler import profiler_findings, read_step_times

            start = job.get("TrainingStartTime")
            data.profiler_findings = [f.as_dict() for f in profiler_findings(
                data.system_events, read_step_times(folder), start.timestamp() if hasattr(start, "timestamp") else None)]
        gather(data, "Profiler output", system)
