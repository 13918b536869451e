"""Edges of the local engine (``pipelines/local/engine.py``) that the end-to-end runs in
test_local_engine.py leave open.

Pinned here: the definition checks (steps without Name/Type, references outside
``Arguments``, branch steps using steps that run after their condition, the steps a cycle
names), parameter conversion per declared type, unknown names, defaults, enums and API ranges;
execution ids, pipeline ARNs, the job-name shape and its length limits per job type; ISO
durations per unit; cache keys; retry policies (defaults, which policy applies, expiry,
backoff, the sleeps and retry events of a real run); result objects; and what an execution
records when a job fails, stops by itself, is refused, is interrupted (SIGINT / SIGTERM while
the job runs), or when the engine itself breaks. Most runs use ``ScriptedJobs``, a stand-in
for ``LocalSageMaker`` (the engine's ``sagemaker_factory``) whose jobs answer from a script,
so that each case costs milliseconds.
"""
from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipelines.local.engine import (
    DefinitionError,
    Engine,
    ExecutionResult,
    ParameterError,
    cache_key,
    check_definition,
    expression_context,
    failure_types,
    flatten_steps,
    job_name,
    new_execution_id,
    parse_iso_duration,
    pipeline_arn,
    read_result_property_file,
    retry_delay,
    run_pipeline,
    topological_order,
    validate_parameters,
)
from pipelines.local.expressions import resolve
from pipelines.local.object_store import ObjectStore
from pipelines.local.records import Records, StepRecord
from pipelines.settings import Settings
from test_local_engine import definition, get, join

REPO = Path(__file__).resolve().parents[1]
EID = "abcdefghijkl"
INTERNAL = "InternalServerError: the job hit an internal error"
STATUS_FIELDS = {"run_processing_job": "ProcessingJobStatus", "run_training_job": "TrainingJobStatus",
                 "run_tuning_job": "HyperParameterTuningJobStatus"}


class ScriptedJobs:
    """The job API the engine calls, answering from ``script``: step name -> outcomes, one per
    job the step starts. An outcome is a status (``"Completed"``, ``"Failed"``, ...), a
    Describe-shaped dict, an exception to raise, or a callable ``(request, job_name)`` giving
    one of those. A step with no outcome left completes; a completed job's properties are its
    request (as Describe* echoes it) plus the status. Calls, model packages and stops are kept."""

    def __init__(self, script: dict | None = None, stop_error: Exception | None = None):
        self.script = {step: list(outcomes) for step, outcomes in (script or {}).items()}
        self.calls: list[tuple[str, str, dict]] = []  # (step, job name, request)
        self.packages: list[tuple[dict, str]] = []  # (request, execution ARN)
        self.on_event = None
        self.store: ObjectStore | None = None
        self.stopped = threading.Event()
        self.stop_calls = 0
        self.stop_error = stop_error

    def __call__(self, settings, store, on_event=None):  # the engine's sagemaker_factory
        self.store, self.on_event = store, on_event
        return self

    def _job(self, method: str, request: dict, name: str) -> dict:
        step = name.rsplit("-", 2)[-2]
        self.calls.append((step, name, request))
        outcomes = self.script.get(step) or []
        outcome = outcomes.pop(0) if outcomes else "Completed"
        if callable(outcome):
            outcome = outcome(request, name)
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, str):
            reason = {} if outcome == "Completed" else {"FailureReason": f"AlgorithmError: {outcome.lower()}"}
            if outcome == "Completed":  # upload the outputs, as a real job does
                for output in (request.get("ProcessingOutputConfig") or {}).get("Outputs") or []:
                    self.store.put_bytes(f"{output['S3Output']['S3Uri']}/part-0", b"")
            outcome = {**request, STATUS_FIELDS[method]: outcome, **reason}
        return outcome

    def run_processing_job(self, request, job_name):
        return self._job("run_processing_job", request, job_name)

    def run_training_job(self, request, job_name):
        return self._job("run_training_job", request, job_name)

    def run_tuning_job(self, request, job_name):
        return self._job("run_tuning_job", request, job_name)

    def create_model_package(self, request, execution_arn=None):
        self.packages.append((request, execution_arn))
        group = request["ModelPackageGroupName"]
        return {"ModelPackageArn": f"arn:aws:sagemaker:us-east-1:000000000000:model-package/{group}/1",
                "ModelPackageGroupName": group, "ModelPackageVersion": 1}

    def stop(self):
        self.stop_calls += 1
        self.stopped.set()
        if self.stop_error is not None:
            raise self.stop_error

    def steps_called(self) -> list[str]:
        return [step for step, _, _ in self.calls]


def step(name, type_="Processing", **extra):
    """A job step with small, valid arguments (the scripted jobs do not read them)."""
    arguments = {"AppSpecification": {"ImageUri": "img", "ContainerArguments": ["--name", name]},
                 "ProcessingOutputConfig": {"Outputs": [{"OutputName": "out", "S3Output": {
                     "S3Uri": join("s3://imgpipe-local/P/", get("Execution.PipelineExecutionId"), f"/{name}/out")}}]}}
    return {"Name": name, "Type": type_, "Arguments": {**arguments, **extra.pop("arguments", {})}, **extra}


def condition(name, holds_when_go, if_steps=(), else_steps=()):
    """A Condition step: Parameters.Go == ``holds_when_go``."""
    return {"Name": name, "Type": "Condition", "Arguments": {
        "Conditions": [{"Type": "Equals", "LeftValue": get("Parameters.Go"), "RightValue": holds_when_go}],
        "IfSteps": list(if_steps), "ElseSteps": list(else_steps)}}


@pytest.fixture()
def settings(tmp_path):
    return Settings(home=tmp_path / "home", region="us-east-1")


def engine(settings, jobs, **kwargs):
    return Engine(settings, sagemaker_factory=jobs, **kwargs)


def statuses(result):
    return {s.name: s.status for s in result.steps}


# -- the definition ------------------------------------------------------------------
@pytest.mark.parametrize("bad", [None, [], {}, {"Steps": {"A": {"Type": "Fail"}}}])
def test_a_definition_without_a_steps_list_is_refused(bad):
    with pytest.raises(DefinitionError, match="no Steps list"):
        flatten_steps(bad)


@pytest.mark.parametrize("bad", [{"Name": "A"}, {"Type": "Fail"}, "A"])
def test_a_step_without_name_or_type_is_refused(bad):
    with pytest.raises(DefinitionError, match="a step without Name/Type"):
        flatten_steps({"Steps": [bad]})


def test_the_refusal_quotes_at_most_200_characters_of_the_step():
    spec = {"Name": "A", "Arguments": {"Text": "x" * 400}}
    with pytest.raises(DefinitionError) as err:
        flatten_steps({"Steps": [spec]})
    assert str(err.value) == "a step without Name/Type: " + str(spec)[:200]


def test_references_outside_the_arguments_are_dependencies():
    """A QualityCheck step's supplied baseline can be another step's output: that step must run
    first even though it is defined later."""
    check = {"Name": "Check", "Type": "QualityCheck", "Arguments": {},
             "SuppliedBaselineStatistics": get("Steps.Baseline.ProcessingOutputConfig.Outputs['out'].S3Output.S3Uri")}
    nodes = flatten_steps(definition([check, step("Baseline")]))
    assert nodes["Check"].deps == {"Baseline"}
    assert topological_order(nodes) == ["Baseline", "Check"]


def test_a_branch_step_may_use_a_step_that_runs_after_its_condition():
    """Report (after Check) feeds Publish (in Check's IfSteps): Check itself does not depend on
    Report, so this is an order, not a cycle."""
    publish = step("Publish", arguments={"ProcessingInputs": [{"InputName": "report", "S3Input": {
        "S3Uri": get("Steps.Report.ProcessingOutputConfig.Outputs['out'].S3Output.S3Uri")}}]})
    d = definition([condition("Check", "yes", if_steps=[publish]), step("Report", DependsOn=["Check"])], Go="yes")
    nodes = flatten_steps(d)
    assert nodes["Check"].deps == set()
    assert topological_order(nodes) == ["Check", "Report", "Publish"]


def test_a_cycle_is_reported_with_only_the_steps_in_it():
    d = definition([step("Alone"), step("X", DependsOn=["Y"]), step("Y", DependsOn=["X"])])
    with pytest.raises(DefinitionError) as err:
        topological_order(flatten_steps(d))
    assert str(err.value) == "the steps depend on each other in a cycle: X, Y"


# -- parameters ----------------------------------------------------------------------
def declared(kind, **extra):
    return {"Parameters": [{"Name": "P", "Type": kind, **extra}], "Steps": []}


@pytest.mark.parametrize("kind, given, expected", [
    ("String", "text", "text"),
    ("Boolean", True, True), ("Boolean", " TRUE ", True), ("Boolean", "false", False),
    ("Integer", 7, 7), ("Integer", 2.0, 2), ("Integer", " -3 ", -3), ("Integer", "+4", 4),
    ("Float", "0.25", 0.25), ("Float", 1.5, 1.5),
])
def test_parameter_values_are_converted_to_their_declared_type(kind, given, expected):
    value = validate_parameters(declared(kind), {"P": given})["P"]
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("kind, given", [
    ("String", 5), ("Boolean", 1), ("Boolean", "yes"), ("Integer", True), ("Integer", 2.5),
    ("Integer", "1.5"), ("Float", False), ("Float", "high"),
])
def test_parameter_values_of_another_type_are_refused(kind, given):
    with pytest.raises(ParameterError, match=f"parameter 'P' is {kind}: .* is not a valid {kind} value"):
        validate_parameters(declared(kind), {"P": given})


@pytest.mark.parametrize("kind", ["Array", "Text"])
def test_a_parameter_of_an_unknown_type_is_refused(kind):
    """Types that sort before and after the four real ones."""
    with pytest.raises(ParameterError, match=f"parameter 'P' has unknown type '{kind}'"):
        validate_parameters(declared(kind), {"P": "5"})


def test_unknown_parameter_names_are_listed_with_the_valid_ones():
    d = {"Parameters": [{"Name": "Epochs", "Type": "Integer", "DefaultValue": 1}, {"Name": "Tag", "DefaultValue": "t"}]}
    with pytest.raises(ParameterError) as one:
        validate_parameters(d, {"Epoch": 2})
    assert str(one.value) == "unknown parameter 'Epoch'; valid names: Epochs (Integer), Tag (String)"
    with pytest.raises(ParameterError) as two:
        validate_parameters(d, {"Epoch": 2, "Tags": "x"})
    assert str(two.value) == "unknown parameters 'Epoch', 'Tags'; valid names: Epochs (Integer), Tag (String)"
    with pytest.raises(ParameterError) as none:
        validate_parameters({"Steps": []}, {"Epoch": 2})
    assert str(none.value) == "unknown parameter 'Epoch'; valid names: none"


def test_defaults_fill_in_and_enums_are_enforced():
    d = {"Parameters": [{"Name": "Mode", "Type": "String", "DefaultValue": "fast", "EnumValues": ["fast", "slow"]}]}
    assert validate_parameters(d, None) == {"Mode": "fast"}
    assert validate_parameters(d, {"Mode": "slow"}) == {"Mode": "slow"}
    with pytest.raises(ParameterError, match="'Mode' must be one of fast, slow, not 'medium'"):
        validate_parameters(d, {"Mode": "medium"})
    with pytest.raises(ParameterError, match=r"'Seed' \(Integer\) has no default value"):
        validate_parameters({"Parameters": [{"Name": "Seed", "Type": "Integer"}]}, {})


def test_a_value_outside_the_api_range_is_a_parameter_error():
    d = definition([step("A", arguments={"ProcessingResources": {"ClusterConfig": {
        "InstanceType": "ml.m5.large", "InstanceCount": get("Parameters.Count"), "VolumeSizeInGB": 1}}})], Count=1)
    assert check_definition(d, {"Count": 2})[1] == {"Count": 2}
    with pytest.raises(ParameterError, match="Count must be >= 1"):
        check_definition(d, {"Count": 0})


# -- names, ARNs, durations, cache keys, retry policies ---------------------------------------
def test_execution_ids_are_12_lowercase_letters_and_digits():
    ids = {new_execution_id() for _ in range(20)}
    assert len(ids) == 20 and all(re.fullmatch(r"[a-z0-9]{12}", i) for i in ids)


@pytest.mark.parametrize("role_arn, account", [
    ("arn:aws:iam::123456789012:role/Runner", "123456789012"),
    ("arn:aws:iam::123456789012", "123456789012"),  # no resource part
    ("arn:aws:iam:::role/Runner", "000000000000"),  # no account
    ("arn:aws:iam:", "000000000000"),
    ("local", "000000000000"),
])
def test_the_pipeline_arn_takes_the_account_of_the_role(tmp_path, role_arn, account):
    settings = Settings(home=tmp_path, region="eu-west-1", role_arn=role_arn)
    assert pipeline_arn(settings, "ImagePipeline") == f"arn:aws:sagemaker:eu-west-1:{account}:pipeline/imagepipeline"


def digest(step_name, salt="1.1"):
    return hashlib.sha1(f"{EID}/{step_name}/{salt}".encode()).hexdigest()[:10]


@pytest.mark.parametrize("max_length, expected", [
    (63, f"pipelines-{EID}-TrainModel-{digest('TrainModel')}"),
    (41, f"pipelines-{EID}-TrainMo-{digest('TrainModel')}"),  # the step name is cut to fit
    (40, f"{EID}-TrainModel-{digest('TrainModel')}"),  # 40 and under: no "pipelines-" prefix
    (25, f"{EID}-T-{digest('TrainModel')}"),
    (24, f"{EID}-{digest('TrainModel')}"),  # no room for the step name
    (16, f"{EID}-{digest('TrainModel')[:3]}"),
])
def test_job_names_have_a_fixed_shape_within_the_limit(max_length, expected):
    assert job_name(EID, "TrainModel", "1.1", max_length) == expected


def test_job_names_default_to_63_characters_and_name_unnamable_steps_step():
    assert len(job_name(EID, "A" * 80, "1.1")) == 63
    assert job_name(EID, "__", "1.1") == f"pipelines-{EID}-step-{digest('__')}"


@pytest.mark.parametrize("text, seconds", [
    ("P1Y", 365 * 86400), ("P1M", 30 * 86400), ("P2W", 14 * 86400), ("P1D", 86400),
    ("PT2H", 7200), ("PT1M", 60), ("PT1S", 1), ("PT0.5S", 0.5), (" pt30m ", 1800),
    ("P1DT1H1M1S", 86400 + 3661),
])
def test_iso_durations_in_each_unit(text, seconds):
    assert parse_iso_duration(text) == seconds


@pytest.mark.parametrize("text", ["P", "PT", "1D", "P1H"])
def test_empty_or_malformed_durations_are_refused(text):
    with pytest.raises(DefinitionError, match="not an ISO-8601 duration"):
        parse_iso_duration(text)


def test_cache_keys_ignore_key_order_and_cover_all_arguments_of_other_steps():
    args = {"AppSpecification": {"ImageUri": "img"}, "Environment": {"A": "1", "B": "2"}}
    reordered = {"Environment": {"B": "2", "A": "1"}, "AppSpecification": {"ImageUri": "img"}}
    assert cache_key("Processing", args) == cache_key("Processing", reordered)
    assert cache_key("Fail", {"ErrorMessage": "a"}) != cache_key("Fail", {"ErrorMessage": "b"})
    assert cache_key("Fail", {"ErrorMessage": "a"}) != cache_key("Processing", {"ErrorMessage": "a"})


@pytest.mark.parametrize("reason, kinds", [
    ("ResourceLimitExceeded: too many jobs", {"SageMaker.RESOURCE_LIMIT"}),
    ("ServiceFault: try later", {"Step.SERVICE_FAULT"}),
    ("ThrottlingException: rate exceeded", {"Step.THROTTLING"}),
    ("", set()),
    (None, set()),
])
def test_failure_reasons_name_their_error_class(reason, kinds):
    assert failure_types(reason) == kinds


def test_retry_delay_defaults_and_which_policy_applies():
    fault = {"Step.SERVICE_FAULT"}
    bare = [{"ExceptionType": ["Step.SERVICE_FAULT"], "MaxAttempts": 5}]  # interval 1 s, backoff 2
    assert [retry_delay(bare, fault, n, 0.0) for n in range(3)] == [1.0, 2.0, 4.0]
    assert retry_delay(None, fault, 0, 0.0) is None
    unbounded = [{"ExceptionType": ["Step.SERVICE_FAULT"], "IntervalSeconds": 3}]
    assert retry_delay(unbounded, fault, 0, 0.0) is None  # neither MaxAttempts nor ExpireAfterMin
    timed = [{"ExceptionType": ["Step.SERVICE_FAULT"], "IntervalSeconds": 3, "ExpireAfterMin": 1}]
    assert retry_delay(timed, fault, 2, 0.0) == 12.0  # no attempt cap, only the expiry
    assert retry_delay(timed, fault, 0, 57.0) == 3.0  # 57 + 3 = 60 s: still inside the minute
    others_first = [{"IntervalSeconds": 9, "MaxAttempts": 9},  # no ExceptionType: matches nothing
                    {"ExceptionType": ["Step.THROTTLING"], "IntervalSeconds": 8, "MaxAttempts": 9},
                    {"ExceptionType": ["Step.SERVICE_FAULT"], "IntervalSeconds": 2, "MaxAttempts": 3}]
    assert retry_delay(others_first, fault, 0, 0.0) == 2.0
    assert retry_delay(others_first, fault, 3, 0.0) is None
    assert retry_delay(others_first, fault, 5, 0.0) is None  # past the cap, not just at it


# -- results -------------------------------------------------------------------------
def test_execution_results_succeeded_duration_and_step_lookup():
    steps = [StepRecord("e", name, "Processing", "Succeeded") for name in ("Mid", "Zeta", "Alpha")]
    done = ExecutionResult("e", "arn", "P", "Succeeded", None, {}, {}, steps, 10.0, 12.5)
    failed = ExecutionResult("e", "arn", "P", "Failed", "r", {}, {}, steps, 10.0, None)
    stopped = ExecutionResult("e", "arn", "P", "Stopped", "r", {}, {}, steps, 10.0, 11.0)
    assert done.succeeded is True and failed.succeeded is False and stopped.succeeded is False
    assert done.duration == 2.5 and failed.duration is None
    assert [done.step(n).name for n in ("Alpha", "Mid", "Zeta")] == ["Alpha", "Mid", "Zeta"]
    with pytest.raises(KeyError, match="no step 'Beta' in execution e"):
        done.step("Beta")


def test_an_expression_context_resolves_execution_variables(tmp_path):
    ctx = expression_context({"Steps": []}, {}, {}, ObjectStore(tmp_path),
                             execution={"PipelineExecutionId": EID})
    assert resolve(get("Execution.PipelineExecutionId"), ctx) == EID


def test_a_finished_executions_property_file_can_be_read(settings):
    def write_report(request, name):
        uri = request["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"]
        jobs.store.put_bytes(f"{uri}/report.json", b'{"accuracy": 0.9}')
        return {**request, "ProcessingJobStatus": "Completed"}

    jobs = ScriptedJobs({"Measure": [write_report]})
    report = [{"PropertyFileName": "Report", "OutputName": "out", "FilePath": "report.json"}]
    result = engine(settings, jobs).run(definition([step("Measure", PropertyFiles=report), step("Next")]))
    assert result.succeeded, result.failure_reason
    assert read_result_property_file(result, settings, "Measure", "Report") == {"accuracy": 0.9}


# -- runs ----------------------------------------------------------------------------
def test_a_first_run_records_attempt_1_under_the_chosen_id(settings):
    jobs = ScriptedJobs()
    result = engine(settings, jobs).run(definition([step("A"), step("B", DependsOn=["A"])]), execution_id=EID)
    assert result.execution_id == EID and result.arn.endswith(f":pipeline/imagepipeline/execution/{EID}")
    assert [s.execution_attempt for s in result.steps] == [1, 1]
    assert [name for _, name, _ in jobs.calls] == [job_name(EID, "A", "1.1"), job_name(EID, "B", "1.1")]
    for s in result.steps:
        assert s.duration > 0 and s.duration == pytest.approx(s.end_time - s.start_time)


def test_job_names_fit_the_limit_of_each_job_type(settings):
    long = "Step" * 20
    d = definition([step(long + "P"), step(long + "T", "Training"), step(long + "H", "Tuning")])
    jobs = ScriptedJobs()
    assert engine(settings, jobs).run(d).succeeded
    assert [len(name) for _, name, _ in jobs.calls] == [63, 63, 32]


def test_a_retry_policy_backs_off_and_reports_each_retry(settings):
    events, sleeps = [], []
    failed = {"ProcessingJobStatus": "Failed", "FailureReason": INTERNAL}
    jobs = ScriptedJobs({"A": [failed, failed, "Completed"]})
    policy = [{"ExceptionType": ["SageMaker.JOB_INTERNAL_ERROR"], "MaxAttempts": 3}]
    result = engine(settings, jobs, on_event=events.append, sleep=sleeps.append).run(
        definition([step("A", RetryPolicies=policy)]), execution_id=EID)
    assert result.succeeded, result.failure_reason
    assert sleeps == [1.0, 2.0]
    retries = [(e["attempt"], e["delay"], e["job"], e["reason"]) for e in events if e["type"] == "retry"]
    assert retries == [(2, 1.0, job_name(EID, "A", "1.1"), INTERNAL), (3, 2.0, job_name(EID, "A", "1.2"), INTERNAL)]
    assert result.step("A").attempts == 3 and result.step("A").job_name == job_name(EID, "A", "1.3")


def test_retry_expiry_counts_the_time_since_the_first_attempt(settings):
    """59.5 s of waiting fits in ExpireAfterMin 1 when the failed attempt took a moment."""
    sleeps = []
    jobs = ScriptedJobs({"A": [{"ProcessingJobStatus": "Failed", "FailureReason": INTERNAL}]})
    policy = [{"ExceptionType": ["SageMaker.JOB_INTERNAL_ERROR"], "IntervalSeconds": 59.5, "BackoffRate": 1.0,
               "ExpireAfterMin": 1}]
    result = engine(settings, jobs, sleep=sleeps.append).run(definition([step("A", RetryPolicies=policy)]))
    assert result.succeeded, result.failure_reason
    assert sleeps == [59.5]


def test_a_job_that_ends_stopped_stops_its_step_without_retrying(settings):
    policy = [{"ExceptionType": ["SageMaker.JOB_INTERNAL_ERROR"], "MaxAttempts": 3}]
    jobs, sleeps = ScriptedJobs({"A": [{"ProcessingJobStatus": "Stopped", "FailureReason": INTERNAL}]}), []
    result = engine(settings, jobs, sleep=sleeps.append).run(definition([step("A", RetryPolicies=policy), step("B")]))
    assert statuses(result) == {"A": "Stopped", "B": "NotRun"}
    assert result.step("A").attempts == 1 and sleeps == []
    assert result.status == "Failed" and result.failure_reason == f"step A was stopped: {INTERNAL}"


def test_a_failed_job_fails_the_execution_naming_the_step(settings):
    result = engine(settings, ScriptedJobs({"A": ["Failed"]})).run(definition([step("A"), step("B")]))
    assert statuses(result) == {"A": "Failed", "B": "NotRun"}
    assert result.step("A").failure_reason == "AlgorithmError: failed"
    assert result.failure_reason == "step A failed: AlgorithmError: failed"
    assert result.step("B").failure_reason == "not started: the execution failed before it"


def test_a_job_result_without_a_status_fails_the_step(settings):
    jobs = ScriptedJobs({"A": [{"ProcessingJobArn": "arn:job"}]})
    result = engine(settings, jobs).run(definition([step("A")]))
    [(_, name, _)] = jobs.calls
    assert statuses(result) == {"A": "Failed"}
    assert result.step("A").failure_reason.startswith(f"job {name} ended")


def test_a_request_the_job_api_refuses_fails_the_step(settings):
    jobs = ScriptedJobs({"A": [ValueError("InstanceType ml.fake is not supported")]})
    result = engine(settings, jobs).run(definition([step("A"), step("B")]))
    assert statuses(result) == {"A": "Failed", "B": "NotRun"}
    assert result.step("A").failure_reason == "ValueError: InstanceType ml.fake is not supported"


@pytest.mark.parametrize("type_", ["Callback", "EMR", "QualityCheck"])
def test_unsupported_step_types_fail_clearly(settings, type_):
    """Types that sort before Condition, between Condition and Fail, and after Fail."""
    d = definition([{"Name": "Other", "Type": type_, "Arguments": {"ErrorMessage": "not this"}}])
    result = engine(settings, ScriptedJobs()).run(d)
    assert statuses(result) == {"Other": "Failed"}
    assert f"step type '{type_}' is not supported locally" in result.failure_reason


def test_a_fail_step_without_a_message_names_itself(settings):
    result = engine(settings, ScriptedJobs()).run(definition([{"Name": "Stop", "Type": "Fail", "Arguments": {}}]))
    assert result.status == "Failed" and result.failure_reason == "Fail step Stop reached"


def test_a_step_after_a_branch_not_taken_does_not_run(settings):
    d = definition([condition("Check", "yes", if_steps=[step("A")]), step("B", DependsOn=["A"])], Go="no")
    jobs = ScriptedJobs()
    result = engine(settings, jobs).run(d)
    assert result.succeeded and jobs.calls == []
    assert statuses(result) == {"Check": "Succeeded", "A": "NotRun", "B": "NotRun"}
    assert result.step("A").failure_reason == "its condition branch was not taken"
    assert result.step("B").failure_reason == "depends on step(s) that did not run: A"


def test_retry_reruns_a_failed_step_of_the_branch_taken(settings):
    jobs = ScriptedJobs({"A": ["Failed"]})
    d = definition([condition("Check", "yes", if_steps=[step("A")], else_steps=[step("Z")])], Go="yes")
    first = engine(settings, jobs).run(d)
    assert statuses(first) == {"Check": "Succeeded", "A": "Failed", "Z": "NotRun"}
    retried = engine(settings, jobs).retry(first.execution_id)
    assert retried.succeeded, retried.failure_reason
    assert statuses(retried) == {"Check": "Succeeded", "A": "Succeeded", "Z": "NotRun"}
    assert retried.step("Check").execution_attempt == 1 and retried.step("A").execution_attempt == 2
    assert jobs.steps_called() == ["A", "A"]


def test_retry_refuses_unknown_and_running_executions(settings):
    records = Records(settings.db_path)
    records.create_execution(EID, "arn", "P", {"Steps": []}, {}, time.time())  # by this (live) process
    with pytest.raises(ValueError, match="no execution 'nosuchexecut'"):
        engine(settings, ScriptedJobs()).retry("nosuchexecut")
    with pytest.raises(ValueError, match=f"execution {EID} is still running \\(pid {os.getpid()}\\)"):
        engine(settings, ScriptedJobs()).retry(EID)


def test_a_cache_hit_holds_execution_variables_symbolic(settings):
    """The run id in a cached step's arguments does not make every execution a miss."""
    cached = step("A", CacheConfig={"Enabled": True},
                  arguments={"Environment": {"RUN": get("Execution.PipelineExecutionId")}})
    jobs = ScriptedJobs()
    first = engine(settings, jobs).run(definition([cached]))
    second = engine(settings, jobs).run(definition([cached]))
    assert jobs.steps_called() == ["A"]
    assert second.step("A").cached_from == f"{first.execution_id}/A"


def test_a_cached_step_whose_output_is_outside_the_store_runs_again(settings):
    gone = {"ProcessingJobStatus": "Completed", "ProcessingOutputConfig": {"Outputs": [
        {"OutputName": "out", "S3Output": {"S3Uri": "s3://imgpipe-local/../../elsewhere"}}]}}
    jobs = ScriptedJobs({"A": [gone]})
    cached = step("A", CacheConfig={"Enabled": True, "ExpireAfter": "P1D"})
    engine(settings, jobs).run(definition([cached]))
    second = engine(settings, jobs).run(definition([cached]))
    assert second.succeeded and second.step("A").cached_from is None
    assert jobs.steps_called() == ["A", "A"]


def test_model_steps_create_a_model_or_a_model_package(settings):
    make = {"Name": "MakeModel", "Type": "Model", "Arguments": {
        "ExecutionRoleArn": "arn:aws:iam::000000000000:role/r",
        "PrimaryContainer": {"Image": "img", "ModelDataUrl": get("Steps.A.ProcessingOutputConfig.Outputs['out'].S3Output.S3Uri")}}}
    package = {"Name": "Package", "Type": "Model", "Arguments": {
        "ModelPackageGroupName": "Digits", "InferenceSpecification": {"Containers": [{"Image": "img"}]}}}
    jobs = ScriptedJobs()
    result = engine(settings, jobs).run(definition([step("A"), make, package]), execution_id=EID)
    assert result.succeeded, result.failure_reason
    model = result.step("MakeModel").properties
    assert model["ModelName"] == job_name(EID, "MakeModel", "1")
    assert model["PrimaryContainer"]["ModelDataUrl"] == f"s3://imgpipe-local/P/{EID}/A/out"
    assert [(req["ModelPackageGroupName"], arn) for req, arn in jobs.packages] == [("Digits", result.arn)]
    assert result.step("Package").job_name == "arn:aws:sagemaker:us-east-1:000000000000:model-package/Digits/1"


def test_a_registration_the_registry_refuses_fails_the_step(settings):
    """The real local registry (no jobs run): a RegisterModel without a group is refused."""
    register = {"Name": "Register", "Type": "RegisterModel", "Arguments": {"ModelApprovalStatus": "PendingManualApproval"}}
    result = run_pipeline(definition([register]), {}, settings)
    assert statuses(result) == {"Register": "Failed"}
    assert result.step("Register").failure_reason.startswith("RegistryError: only versioned model packages")


def test_job_events_are_tagged_with_their_step_and_trials_with_their_total(settings):
    def tune(request, name):
        for event in ({"type": "log", "line": "start"}, {"type": "metric", "name": "loss", "value": 0.5},
                      {"type": "trial", "trial": 1}, {"type": "trial", "trial": 2, "total": 9},
                      {"type": "log", "step": "Elsewhere", "line": "tagged"}):
            jobs.on_event(event)
        return {"HyperParameterTuningJobStatus": "Completed"}

    jobs = ScriptedJobs({"Tune": [tune]})
    events = []
    tuning = step("Tune", "Tuning", arguments={"HyperParameterTuningJobConfig": {
        "ResourceLimits": {"MaxNumberOfTrainingJobs": 4, "MaxParallelTrainingJobs": 1}}})
    result = engine(settings, jobs, on_event=events.append).run(definition([tuning]))
    assert result.succeeded, result.failure_reason
    seen = [e for e in events if e["type"] in ("log", "metric", "trial")]
    assert seen == [{"type": "log", "line": "start", "step": "Tune"},
                    {"type": "metric", "name": "loss", "value": 0.5, "step": "Tune"},
                    {"type": "trial", "trial": 1, "step": "Tune", "total": 4},
                    {"type": "trial", "trial": 2, "total": 9, "step": "Tune"},
                    {"type": "log", "step": "Elsewhere", "line": "tagged"}]
    records = Records(settings.db_path)
    recorded = [e["type"] for e in records.events(result.execution_id) if e["type"] != "step"]
    assert recorded == ["metric", "trial", "trial"]
    late = [{"type": "log", "line": "late"}, {"type": "metric", "name": "loss"}, {"type": "trial", "trial": 3}]
    for event in late:  # a job thread still talking after the execution ended: passed on as is
        jobs.on_event(dict(event))
    assert events[-3:] == late
    assert [e["type"] for e in records.events(result.execution_id) if e["type"] != "step"] == recorded


def test_an_error_in_the_engine_fails_the_execution_and_surfaces(settings):
    def listener(event):
        if event["type"] == "step":
            raise RuntimeError("listener broke")

    with pytest.raises(RuntimeError, match="listener broke"):
        engine(settings, ScriptedJobs(), on_event=listener).run(definition([step("A")]), execution_id=EID)
    record = Records(settings.db_path).get_execution(EID)
    assert record.status == "Failed" and record.failure_reason == "local engine error: RuntimeError('listener broke')"


def test_an_engine_can_run_outside_the_main_thread(settings):
    results = []
    worker = threading.Thread(target=lambda: results.append(
        run_pipeline(definition([step("A")]), {}, settings, sagemaker_factory=ScriptedJobs())))
    worker.start()
    worker.join(30)
    assert [r.status for r in results] == ["Succeeded"]


def wait_for_the_engine_to_wait_for_the_job(timeout: float = 10.0) -> None:
    """Until the main thread waits on the job thread it started (as a Ctrl-C seconds into a job
    finds it), not still inside ``Thread.start``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame, callee = sys._current_frames().get(threading.main_thread().ident), None
        while frame is not None and frame.f_code.co_name != "_call":
            callee, frame = frame.f_code.co_name, frame.f_back
        if frame is not None and callee == "wait":
            return
        time.sleep(0.001)
    raise AssertionError("the engine never waited for the job")


@pytest.fixture()
def sigint_raises():
    """SIGINT raising KeyboardInterrupt, whatever the test runner's parent left it as."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signum, stop_error", [
    (signal.SIGINT, None),
    (signal.SIGTERM, None),
    (signal.SIGTERM, RuntimeError("the job had already ended")),  # stopping is best effort
], ids=["sigint", "sigterm", "sigterm-stop-fails"])
def test_an_interrupt_stops_the_running_job_and_waits_for_it(settings, sigint_raises, signum, stop_error):
    """Zeta has finished when the signal comes during Alpha's job: the job is asked to stop and
    winds down before the execution is recorded Stopped."""
    wound_down = []

    def interrupted(request, name):
        wait_for_the_engine_to_wait_for_the_job()
        os.kill(os.getpid(), signum)
        jobs.stopped.wait(10)
        time.sleep(0.2)  # the job takes a moment to end after the stop request
        wound_down.append(name)
        return {"ProcessingJobStatus": "Stopped"}

    jobs = ScriptedJobs({"Alpha": [interrupted]}, stop_error=stop_error)
    result = engine(settings, jobs).run(definition([step("Zeta"), step("Alpha", DependsOn=["Zeta"])]))
    assert len(wound_down) == 1 and jobs.stop_calls >= 1
    assert result.status == "Stopped" and result.failure_reason == "stopped by the user (interrupt or SIGTERM)"
    assert statuses(result) == {"Zeta": "Succeeded", "Alpha": "Stopped"}
    assert result.step("Alpha").failure_reason == "stopped by the user (interrupt or SIGTERM)"


def test_a_new_engine_trims_the_scratch_space_of_dead_executions(settings):
    """An execution left Executing by a process that is gone is marked Failed, and its jobs'
    scratch directories are trimmed (log kept); other executions' jobs are left alone."""
    dead = "deadengine01"
    record_it = ("import sys; from pipelines.local.records import Records; "
                 "Records(sys.argv[1]).create_execution(sys.argv[2], 'arn', 'P', {'Steps': []}, {}, 0.0)")
    subprocess.run([sys.executable, "-c", record_it, str(settings.db_path), dead], cwd=REPO, check=True)
    jobs_root = settings.jobs_root
    for execution in (dead, "otherexecute"):
        job_dir = jobs_root / f"pipelines-{execution}-A-0123456789"
        (job_dir / "input").mkdir(parents=True)
        (job_dir / "input" / "data.bin").write_bytes(b"x" * 1000)
        (job_dir / "job.log").write_text("log\n")
    Engine(settings)
    record = Records(settings.db_path).get_execution(dead)
    assert record.status == "Failed" and "ended before it finished" in record.failure_reason
    trimmed = jobs_root / f"pipelines-{dead}-A-0123456789"
    assert not (trimmed / "input").exists() and (trimmed / "job.log").read_text() == "log\n"
    assert (jobs_root / "pipelines-otherexecute-A-0123456789" / "input" / "data.bin").exists()


def test_an_interrupt_as_the_job_thread_starts_still_stops_and_waits_for_the_job(settings, monkeypatch):
    """The signal lands while ``Thread.start`` returns, before the engine waits: the job has
    started, so it is stopped and waited for like any other."""
    import pipelines.local.engine as engine_module

    class InterruptedStart(threading.Thread):
        def start(self) -> None:
            super().start()
            raise KeyboardInterrupt

    monkeypatch.setattr(engine_module, "threading", SimpleNamespace(**{**vars(threading), "Thread": InterruptedStart}))
    wound_down = []

    def interrupted(request, name):
        jobs.stopped.wait(10)
        time.sleep(0.2)  # the job takes a moment to end after the stop request
        wound_down.append(name)
        return {"ProcessingJobStatus": "Stopped"}

    jobs = ScriptedJobs({"Alpha": [interrupted]})
    result = engine(settings, jobs).run(definition([step("Alpha")]))
    assert len(wound_down) == 1 and jobs.stop_calls >= 1
    assert result.status == "Stopped" and statuses(result) == {"Alpha": "Stopped"}
