"""Collect a report's data from the local engine's records and object store."""
from __future__ import annotations

from typing import Any

from pipelines.report.data import ReportData, gather, is_final_training, read_evaluation, read_history, read_insights, read_profiler, read_tensors, trial_rows


def collect_local(execution: str, settings: Any) -> ReportData:
    """ReportData of a local execution (id, unique prefix or ARN)."""
    from pipelines.local.object_store import ObjectStore
    from pipelines.local.records import Records

    record = Records(settings.db_path).get_execution(execution)
    if record is None:
        raise LookupError(f"no local execution {execution!r} (see `imgpipe executions list`)")
    store = ObjectStore(settings.s3_root)
    data = ReportData(execution={"id": record.id, "arn": record.arn, "pipeline": record.pipeline_name,
                                 "status": record.status, "start": record.start_time, "end": record.end_time,
                                 "failure": record.failure_reason, "parameters": record.parameters})
    data.steps = [{"name": s.name, "type": s.type, "status": s.display_status, "duration": s.duration,
                   "job": s.job_name} for s in record.steps]
    for step in record.steps:
        props = step.properties or {}
        if step.type == "Tuning" and props.get("TrainingJobSummaries"):
            data.trials = trial_rows(props["TrainingJobSummaries"])
            objective = (props.get("HyperParameterTuningJobConfig") or {}).get("HyperParameterTuningJobObjective") or {}
            data.objective = objective.get("MetricName")
        elif step.type == "Training" and is_final_training(props) and data.training_job is None:
            _local_training(data, props, store)
        elif step.type == "Processing":
            for output in (props.get("ProcessingOutputConfig") or {}).get("Outputs") or []:
                if output.get("OutputName") == "evaluation":
                    gather(data, "evaluation", read_evaluation, data, store.path(output["S3Output"]["S3Uri"]))
                elif output.get("OutputName") == "insights":
                    gather(data, "training insights", read_insights, data, store.path(output["S3Output"]["S3Uri"]))
        elif props.get("ModelPackageArn"):
            data.model = _local_model(props, settings, store)
    return data


def _local_training(data: ReportData, props: dict, store: Any) -> None:
    job = props["TrainingJobName"]
    data.training_job = job
    data.rules = props.get("DebugRuleEvaluationStatuses") or []
    data.profiler_rules = props.get("ProfilerRuleEvaluationStatuses") or []
    data.profiler_findings = props.get("ProfilerFindings") or []
    model_uri = (props.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if model_uri:
        tar = store.path(model_uri.rsplit("/", 1)[0] + "/output.tar.gz")
        gather(data, "training history", lambda: data.history.extend(read_history(tar)))
    if props.get("DebugHookConfig"):
        debug = f"{props['DebugHookConfig']['S3OutputPath'].rstrip('/')}/{job}/debug-output"
        gather(data, "Debugger tensors", read_tensors, data, store.path(debug))
    profiler = props.get("ProfilerConfig") or {}
    if profiler.get("S3OutputPath") and not profiler.get("DisableProfiler"):
        gather(data, "Profiler output", read_profiler, data,
                store.path(f"{profiler['S3OutputPath'].rstrip('/')}/{job}/profiler-output"))


def _local_model(props: dict, settings: Any, store: Any) -> dict:
    model = {k: props.get(k) for k in ("ModelPackageGroupName", "ModelPackageVersion", "ModelPackageArn",
                                       "ModelApprovalStatus")}
    try:  # the approval status now, not at registration
        from pipelines.local.registry import LocalModelRegistry

        current = LocalModelRegistry(settings, store).describe(str(props["ModelPackageArn"]))
        model["ModelApprovalStatus"] = current.get("ModelApprovalStatus", model["ModelApprovalStatus"])
    except Exception:  # the registry may have been cleared: keep the recorded status
        pass
    return model
