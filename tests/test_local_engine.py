"""The local engine on small hand-written definitions in SageMaker's JSON shape.

Steps are real Processing jobs (LocalSageMaker subprocesses) running a tiny script taken from
the object store, so ordering, branches, caching, retries and records are checked end to end.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipelines.local.engine import (
    DefinitionError,
    Engine,
    ParameterError,
    check_definition,
    failure_types,
    flatten_steps,
    job_name,
    parse_iso_duration,
    retry_delay,
    run_pipeline,
    topological_order,
)
from pipelines.local.object_store import ObjectStore
from pipelines.local.records import Records
from pipelines.settings import Settings

BUCKET = "imgpipe-local"
CODE_URI = f"s3://{BUCKET}/code/tool.py"
TOOL = textwrap.dedent("""
    import argparse, json, os, pathlib, sys, time
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--value", default="1")
    p.add_argument("--count")
    p.add_argument("--fail-once")
    p.add_argument("--reason", default="AlgorithmError: boom")
    p.add_argument("--sleep", type=float, default=0)
    p.add_argument("--pidfile")
    a = p.parse_args()
    if a.pidfile:
        pathlib.Path(a.pidfile).write_text(str(os.getpid()))
    if a.count:
        with open(a.count, "a") as f:
            f.write("run\\n")
    time.sleep(a.sleep)
    if a.fail_once and not os.path.exists(a.fail_once):
        pathlib.Path(a.fail_once).write_text("failed once")
        pathlib.Path(os.environ["SM_OUTPUT_FAILURE"]).write_text(a.reason)
        sys.exit(1)
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    v = float(a.value)
    (out / "result.json").write_text(json.dumps({"value": v, "nested": {"items": [{"v": v}]}}))
""")


def get(path):
    return {"Get": path}


def join(*values, on=""):
    return {"Std:Join": {"On": on, "Values": list(values)}}


def processing(name, *args, inputs=None, depends_on=None, **extra):
    """A Processing step running tool.py, output ``out`` at a per-execution prefix."""
    step_inputs = [{"InputName": "code", "S3Input": {"S3Uri": CODE_URI, "LocalPath": "/opt/ml/processing/input/code",
                                                     "S3DataType": "S3Prefix", "S3InputMode": "File"}}]
    for input_name, uri in (inputs or {}).items():
        step_inputs.append({"InputName": input_name, "S3Input": {"S3Uri": uri, "LocalPath": f"/opt/ml/processing/{input_name}",
                                                                 "S3DataType": "S3Prefix", "S3InputMode": "File"}})
    step = {
        "Name": name, "Type": "Processing",
        "Arguments": {
            "ProcessingResources": {"ClusterConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1}},
            "AppSpecification": {"ImageUri": "img", "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/tool.py"],
                                 "ContainerArguments": ["--out", "/opt/ml/processing/out", *args]},
            "RoleArn": "arn:aws:iam::000000000000:role/r",
            "ProcessingInputs": step_inputs,
            "ProcessingOutputConfig": {"Outputs": [{"OutputName": "out", "S3Output": {
                "S3Uri": join("s3:/", BUCKET, "P", get("Execution.PipelineExecutionId"), name, "out", on="/"),
                "LocalPath": "/opt/ml/processing/out", "S3UploadMode": "EndOfJob"}}]},
        },
    }
    if depends_on:
        step["DependsOn"] = depends_on
    step.update(extra)
    return step


def output_of(step):
    return get(f"Steps.{step}.ProcessingOutputConfig.Outputs['out'].S3Output.S3Uri")


def definition(steps, **params):
    types = {str: "String", int: "Integer", float: "Float", bool: "Boolean"}
    return {"Version": "2020-12-01", "Metadata": {},
            "Parameters": [{"Name": k, "Type": types[type(v)], "DefaultValue": v} for k, v in params.items()],
            "Steps": steps}


@pytest.fixture()
def settings(tmp_path):
    settings = Settings(home=tmp_path / "home")
    ObjectStore(settings.s3_root).put_bytes(CODE_URI, TOOL.encode())
    return settings


def started_order(settings, execution_id):
    events = Records(settings.db_path).events(execution_id, "step")
    return [e["step"] for e in events if e["status"] == "Starting"]


def runs(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


# -- pure helpers -------------------------------------------------------------------
def test_flatten_and_order_and_cycle():
    d = definition([
        processing("C", "--value", join(get("Steps.B.ProcessingJobName"))),
        processing("B", depends_on=["A"]),
        processing("A"),
    ])
    nodes = flatten_steps(d)
    assert nodes["C"].deps == {"B"} and nodes["B"].deps == {"A"}
    assert topological_order(nodes) == ["A", "B", "C"]
    cyclic = definition([processing("X", depends_on=["Y"]), processing("Y", depends_on=["X"])])
    with pytest.raises(DefinitionError, match="cycle"):
        topological_order(flatten_steps(cyclic))
    with pytest.raises(DefinitionError, match="Ghost"):
        flatten_steps(definition([processing("X", depends_on=["Ghost"])]))


def test_check_definition_orders_steps_and_types_parameters():
    d = definition([processing("B", depends_on=["A"]), processing("A")], Threshold=0.5, Epochs=2, Flag=True)
    nodes, values = check_definition(d, {"Threshold": "0.75", "Flag": "false"})
    assert topological_order(nodes) == ["A", "B"]
    assert values == {"Threshold": 0.75, "Epochs": 2, "Flag": False}
    with pytest.raises(ParameterError, match="Threshold.*Float.*'high'"):
        check_definition(d, {"Threshold": "high"})
    with pytest.raises(ParameterError, match="Threshold.*Float"):
        check_definition(d, {"Threshold": True})
    cyclic = definition([processing("X", depends_on=["Y"]), processing("Y", depends_on=["X"])])
    with pytest.raises(DefinitionError, match="cycle"):
        check_definition(cyclic, {})


def test_helpers():
    assert parse_iso_duration("P30D") == 30 * 86400
    assert parse_iso_duration("PT1H30M") == 5400
    assert parse_iso_duration("P1W") == 7 * 86400
    with pytest.raises(DefinitionError):
        parse_iso_duration("30 days")
    name = job_name("abcdefghijkl", "A_very-long_StepName" * 5, "1.1")
    assert len(name) <= 63 and name.startswith("pipelines-abcdefghijkl-A-very-long-StepName")
    assert len(job_name("abcdefghijkl", "TuneHyperparameters", "1.1", 32)) <= 32
    assert failure_types("InternalServerError: We encountered an internal error") == {"SageMaker.JOB_INTERNAL_ERROR"}
    assert failure_types("CapacityError: insufficient capacity") == {"SageMaker.CAPACITY_ERROR"}
    assert failure_types("AlgorithmError: exit code 1") == set()
    policy = [{"ExceptionType": ["SageMaker.JOB_INTERNAL_ERROR"], "IntervalSeconds": 2, "BackoffRate": 3.0, "MaxAttempts": 2}]
    internal = {"SageMaker.JOB_INTERNAL_ERROR"}
    assert retry_delay(policy, internal, 0, 0) == 2 and retry_delay(policy, internal, 1, 0) == 6
    assert retry_delay(policy, internal, 2, 0) is None
    assert retry_delay(policy, {"Step.THROTTLING"}, 0, 0) is None


# -- real runs ----------------------------------------------------------------------
def test_dag_order_from_get_and_depends_on(settings):
    d = definition([
        processing("C", inputs={"prev": output_of("B")}),
        processing("B", depends_on=["A"]),
        processing("A"),
    ])
    result = run_pipeline(d, {}, settings, pipeline_name="T")
    assert result.status == "Succeeded", result.failure_reason
    assert started_order(settings, result.execution_id) == ["A", "B", "C"]
    c_input = result.step("C").arguments["ProcessingInputs"][1]["S3Input"]["S3Uri"]
    assert c_input == f"s3://{BUCKET}/P/{result.execution_id}/B/out"
    assert ObjectStore(settings.s3_root).exists(c_input + "/result.json")
    assert all(s.log_path and Path(s.log_path).is_file() for s in result.steps)


def condition_pipeline():
    report = [{"PropertyFileName": "Report", "OutputName": "out", "FilePath": "result.json"}]
    value = {"Std:JsonGet": {"PropertyFile": get("Steps.Measure.PropertyFiles.Report"), "Path": "nested.items[0].v"}}
    check = {"Name": "Check", "Type": "Condition", "Arguments": {
        "Conditions": [{"Type": "GreaterThanOrEqualTo", "LeftValue": value, "RightValue": get("Parameters.Threshold")}],
        "IfSteps": [processing("Good")],
        "ElseSteps": [{"Name": "TooLow", "Type": "Fail", "Arguments": {
            "ErrorMessage": join("value below ", get("Parameters.Threshold"))}}],
    }}
    return definition([processing("Measure", "--value", "0.75", PropertyFiles=report), check], Threshold=0.5)


def test_condition_if_branch(settings):
    result = run_pipeline(condition_pipeline(), {"Threshold": "0.7"}, settings)
    assert result.status == "Succeeded", result.failure_reason
    status = {s.name: s.status for s in result.steps}
    assert status == {"Measure": "Succeeded", "Check": "Succeeded", "Good": "Succeeded", "TooLow": "NotRun"}
    assert result.step("Check").properties == {"Outcome": True}


def test_condition_else_branch_fail_step(settings):
    result = run_pipeline(condition_pipeline(), {"Threshold": 0.8}, settings)
    assert result.status == "Failed"
    assert result.failure_reason == "value below 0.8"
    status = {s.name: s.status for s in result.steps}
    assert status == {"Measure": "Succeeded", "Check": "Succeeded", "Good": "NotRun", "TooLow": "Failed"}
    assert result.step("TooLow").failure_reason == "value below 0.8"


def gate_pipeline(issues: str):
    """The shape of the build pipeline's CheckTraining: go on unless the parameter says fail and
    the property file counts issues (Or of two Equals, one over a JsonGet number)."""
    report = [{"PropertyFileName": "Insights", "OutputName": "out", "FilePath": "result.json"}]
    issues_found = {"Std:JsonGet": {"PropertyFile": get("Steps.Analyze.PropertyFiles.Insights"), "Path": "value"}}
    gate = {"Name": "Gate", "Type": "Condition", "Arguments": {
        "Conditions": [{"Type": "Or", "Conditions": [
            {"Type": "Equals", "LeftValue": get("Parameters.FailOnIssues"), "RightValue": "false"},
            {"Type": "Equals", "LeftValue": issues_found, "RightValue": 0}]}],
        "IfSteps": [processing("Next")],
        "ElseSteps": [{"Name": "IssuesFound", "Type": "Fail", "Arguments": {
            "ErrorMessage": join("issues: ", issues_found)}}],
    }}
    return definition([processing("Analyze", "--value", issues, PropertyFiles=report), gate], FailOnIssues="false")


@pytest.mark.parametrize("issues, fail_on_issues, failed", [("2", "false", False), ("2", "true", True), ("0", "true", False)])
def test_or_gate_over_a_parameter_and_a_property_file(settings, issues, fail_on_issues, failed):
    result = run_pipeline(gate_pipeline(issues), {"FailOnIssues": fail_on_issues}, settings)
    status = {s.name: s.status for s in result.steps}
    if failed:
        assert result.status == "Failed" and result.failure_reason == "issues: 2.0"
        assert status["IssuesFound"] == "Failed" and status["Next"] == "NotRun"
    else:
        assert result.status == "Succeeded", result.failure_reason
        assert status["Next"] == "Succeeded" and status["IssuesFound"] == "NotRun"


def test_cache_hit_on_identical_rerun(settings, tmp_path):
    count = tmp_path / "count"
    cache = {"Enabled": True, "ExpireAfter": "P30D"}
    d = definition([processing("A", "--count", str(count), "--value", join(get("Parameters.V")), CacheConfig=cache),
                    processing("B", inputs={"a": output_of("A")})], V=1)
    first = run_pipeline(d, {}, settings)
    second = run_pipeline(d, {}, settings)
    assert first.status == second.status == "Succeeded"
    assert runs(count) == 1  # the job did not run again
    hit = second.step("A")
    assert hit.cached_from == f"{first.execution_id}/A" and hit.display_status == "Succeeded (cached)"
    assert hit.job_name == first.step("A").job_name
    # B (no CacheConfig) ran again, on the cached output of A from the first execution
    assert second.step("B").cached_from is None
    assert second.step("B").arguments["ProcessingInputs"][1]["S3Input"]["S3Uri"].startswith(f"s3://{BUCKET}/P/{first.execution_id}/")
    third = run_pipeline(d, {"V": "2"}, settings)  # other arguments: a miss
    assert third.step("A").cached_from is None and runs(count) == 2
    store = ObjectStore(settings.s3_root)  # outputs deleted from the store: a miss too
    shutil.rmtree(store.path(third.step("A").properties["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"]))
    fourth = run_pipeline(d, {"V": "2"}, settings)
    assert fourth.step("A").cached_from is None and runs(count) == 3


def test_cache_expired(settings, tmp_path):
    count = tmp_path / "count"
    d = definition([processing("A", "--count", str(count), CacheConfig={"Enabled": True, "ExpireAfter": "PT0S"})])
    run_pipeline(d, {}, settings)
    again = run_pipeline(d, {}, settings)
    assert again.step("A").cached_from is None and runs(count) == 2


def test_retry_execution_reruns_only_failed_and_unrun(settings, tmp_path):
    count_a, count_b, marker = tmp_path / "a", tmp_path / "b", tmp_path / "marker"
    d = definition([
        processing("A", "--count", str(count_a)),
        processing("B", "--count", str(count_b), "--fail-once", str(marker), inputs={"a": output_of("A")}),
        processing("C", inputs={"b": output_of("B")}),
    ])
    first = run_pipeline(d, {}, settings)
    assert first.status == "Failed" and "boom" in first.failure_reason
    assert [s.status for s in first.steps] == ["Succeeded", "Failed", "NotRun"]
    engine = Engine(settings)
    retried = engine.retry(first.execution_id)
    assert retried.status == "Succeeded", retried.failure_reason
    assert retried.execution_id == first.execution_id
    assert runs(count_a) == 1 and runs(count_b) == 2
    assert retried.step("A").job_name == first.step("A").job_name
    assert retried.step("B").job_name != first.step("B").job_name
    assert retried.step("B").execution_attempt == 2
    record = Records(settings.db_path).get_execution(first.execution_id)
    assert record.attempt == 2 and record.status == "Succeeded"
    with pytest.raises(ValueError, match="nothing to retry"):
        engine.retry(first.execution_id)


@pytest.mark.parametrize("exception_type,expected", [
    ("SageMaker.JOB_INTERNAL_ERROR", "Succeeded"),
    ("SageMaker.CAPACITY_ERROR", "Failed"),
])
def test_retry_policy(settings, tmp_path, exception_type, expected):
    policy = [{"ExceptionType": [exception_type], "IntervalSeconds": 0, "BackoffRate": 2.0, "MaxAttempts": 2}]
    d = definition([processing("A", "--fail-once", str(tmp_path / "m"), "--reason",
                               "InternalServerError: simulated internal error", RetryPolicies=policy)])
    result = run_pipeline(d, {}, settings)
    assert result.status == expected
    assert result.step("A").attempts == (2 if expected == "Succeeded" else 1)


def test_bad_parameters_rejected_before_any_step(settings, tmp_path):
    count = tmp_path / "count"
    d = definition([processing("A", "--count", str(count))], Threshold=0.5, Epochs=2, Flag=True)
    with pytest.raises(ParameterError, match=r"'Treshold'.*valid names: Threshold \(Float\), Epochs \(Integer\)"):
        run_pipeline(d, {"Treshold": "0.9"}, settings)
    with pytest.raises(ParameterError, match="Epochs.*Integer.*'1.5'"):
        run_pipeline(d, {"Epochs": "1.5"}, settings)
    with pytest.raises(ParameterError, match="Flag"):
        run_pipeline(d, {"Flag": "maybe"}, settings)
    with pytest.raises(ParameterError, match="Threshold"):
        run_pipeline(d, {"Threshold": "high"}, settings)
    assert runs(count) == 0
    assert Records(settings.db_path).list_executions() == []


def test_unsupported_step_and_bad_reference_fail_clearly(settings):
    lam = {"Name": "CallLambda", "Type": "Lambda", "Arguments": {}, "FunctionArn": "arn:aws:lambda:x"}
    result = run_pipeline(definition([lam]), {}, settings)
    assert result.status == "Failed" and "'Lambda' is not supported locally" in result.failure_reason
    bad = processing("A", "--value", join(get("Parameters.Nope")))
    result = run_pipeline(definition([bad]), {}, settings)
    assert result.status == "Failed" and "Nope" in result.failure_reason


def test_register_model_step(settings):
    register = {"Name": "RegisterModel-RegisterModel", "Type": "RegisterModel", "Arguments": {
        "ModelPackageGroupName": "Group",
        "InferenceSpecification": {"Containers": [{"Image": "img", "ModelDataUrl": output_of("A")}],
                                   "SupportedContentTypes": ["application/json"], "SupportedResponseMIMETypes": ["application/json"]},
        "ModelApprovalStatus": "PendingManualApproval"}}
    result = run_pipeline(definition([processing("A"), register]), {}, settings)
    assert result.status == "Succeeded", result.failure_reason
    props = result.step("RegisterModel-RegisterModel").properties
    assert props["ModelPackageVersion"] == 1 and props["ModelPackageGroupName"] == "Group"
    from pipelines.local.registry import LocalModelRegistry
    [package] = LocalModelRegistry(settings).list_packages(group="Group")
    assert package["PipelineExecutionArn"] == result.arn
    assert package["ModelDataUrl"] == f"s3://{BUCKET}/P/{result.execution_id}/A/out"


ENGINE_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from pipelines.local.engine import run_pipeline
    from pipelines.settings import Settings
    d = json.loads(Path(sys.argv[2]).read_text())
    r = run_pipeline(d, {}, Settings(home=Path(sys.argv[1])))
    print(r.status)
""")


def _start_engine(settings, d, tmp_path):
    (tmp_path / "def.json").write_text(json.dumps(d))
    proc = subprocess.Popen([sys.executable, "-c", ENGINE_SCRIPT, str(settings.home), str(tmp_path / "def.json")],
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True)
    records = Records(settings.db_path)
    deadline = time.time() + 60
    while time.time() < deadline:
        executions = records.list_executions()
        if executions and any(s.name == "B" and s.status == "Executing" for s in records.steps(executions[0].id)):
            return proc, executions[0].id
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("step B never started")


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may wait for PID 1 to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _two_step(tmp_path, sleep="30"):
    return definition([processing("A", "--count", str(tmp_path / "a")),
                       processing("B", "--sleep", join(get("Parameters.Sleep")), "--pidfile", str(tmp_path / "pid"),
                                  inputs={"a": output_of("A")})],
                      Sleep=sleep)


def test_sigterm_stops_execution(settings, tmp_path):
    proc, execution_id = _start_engine(settings, _two_step(tmp_path), tmp_path)
    deadline = time.time() + 30
    while not ((tmp_path / "pid").exists() and (tmp_path / "pid").read_text()) and time.time() < deadline:
        time.sleep(0.05)
    job_pid = int((tmp_path / "pid").read_text())
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert out.strip().endswith("Stopped")
    assert not _running(job_pid)  # the job's process was stopped with the engine
    record = Records(settings.db_path).get_execution(execution_id)
    assert record.status == "Stopped"
    assert {s.name: s.status for s in record.steps} == {"A": "Succeeded", "B": "Stopped"}


def test_killed_engine_marked_failed_then_retry_completes(settings, tmp_path):
    proc, execution_id = _start_engine(settings, _two_step(tmp_path, sleep="0.2"), tmp_path)
    os.kill(proc.pid, signal.SIGKILL)  # the engine dies mid-step (its job finishes orphaned)
    proc.wait(timeout=30)
    engine = Engine(settings)  # a new engine notices the dead pid
    record = engine.records.get_execution(execution_id)
    assert record.status == "Failed" and f"pid {proc.pid}" in record.failure_reason
    assert record.steps[1].status == "Failed"
    result = engine.retry(execution_id)
    assert result.status == "Succeeded", result.failure_reason
    assert runs(tmp_path / "a") == 1  # A was not re-run


def test_cache_key_uses_sagemakers_cache_key_attributes():
    from pipelines.local.engine import cache_key

    base = {
        "AppSpecification": {"ImageUri": "img", "ContainerEntrypoint": ["python3", "run.py"]},
        "Environment": {"A": "1"},
        "ProcessingInputs": [{"InputName": "code", "S3Input": {"S3Uri": "s3://b/code.tar.gz"}}],
        "ProcessingOutputConfig": {"Outputs": [{"OutputName": "out", "S3Output": {"S3Uri": "s3://b/x"}}]},
        "ProcessingResources": {"ClusterConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1}},
    }
    key = cache_key("Processing", base)
    moved = {**base, "ProcessingOutputConfig": {"Outputs": [{"OutputName": "out", "S3Output": {"S3Uri": "s3://b/y"}}]},
             "ProcessingResources": {"ClusterConfig": {"InstanceType": "ml.c5.2xlarge", "InstanceCount": 1}}}
    assert cache_key("Processing", moved) == key  # outputs and instances are not part of the key
    assert cache_key("Processing", {**base, "Environment": {"A": "2"}}) != key
    assert cache_key("Processing", {**base, "ProcessingInputs": []}) != key

    tuning = {"HyperParameterTuningJobConfig": {"Strategy": "Bayesian"},
              "TrainingJobDefinition": {"StaticHyperParameters": {"a": "1"}, "OutputDataConfig": {"S3OutputPath": "s3://b/1"},
                                        "ResourceConfig": {"InstanceType": "ml.m5.xlarge"}}}
    tkey = cache_key("Tuning", tuning)
    assert cache_key("Tuning", {**tuning, "TrainingJobDefinition": {**tuning["TrainingJobDefinition"],
                                                                    "OutputDataConfig": {"S3OutputPath": "s3://b/2"}}}) == tkey
    assert cache_key("Tuning", {**tuning, "TrainingJobDefinition": {**tuning["TrainingJobDefinition"],
                                                                    "StaticHyperParameters": {"a": "2"}}}) != tkey
