"""Impossible parameter values are refused before anything runs (exit 2), naming the parameter
and its allowed range: SageMaker's limits on the request fields a parameter feeds, and the
pipelines' CheckParameters / CheckDeployParameters guards (evaluated up front locally)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.local.engine import ParameterError, check_definition
from pipelines.local.parameter_ranges import api_problems, guard_problems
from pipelines.local.records import Records
from pipelines.pipeline import ARCHITECTURE_NAMES, MIN_IMAGE_SIZE

ROOT = Path(__file__).resolve().parents[1]


def p(name: str) -> dict:
    return {"Get": f"Parameters.{name}"}


def tuning_step(**limits) -> dict:
    return {"Name": "Tune", "Type": "Tuning", "Arguments": {
        "HyperParameterTuningJobConfig": {
            "ResourceLimits": {"MaxNumberOfTrainingJobs": p("Jobs"), "MaxParallelTrainingJobs": 2, **limits},
            "ParameterRanges": {
                "IntegerParameterRanges": [{"Name": "epochs", "MinValue": p("Low"),
                                            "MaxValue": {"Std:Join": {"On": "", "Values": [p("High")]}}}],
                "ContinuousParameterRanges": [{"Name": "lr", "MinValue": p("Lr"), "MaxValue": "0.1",
                                               "ScalingType": "Logarithmic"}]}},
        "TrainingJobDefinition": {"ResourceConfig": {"InstanceCount": p("Count")}}}}


def guard(*conditions) -> dict:
    return {"Name": "Check", "Type": "Condition", "Arguments": {
        "Conditions": list(conditions), "IfSteps": [],
        "ElseSteps": [{"Name": "Bad", "Type": "Fail", "Arguments": {"ErrorMessage": "bad"}}]}}


def test_api_limits_name_the_parameter_and_the_sagemaker_field():
    good = {"Jobs": 4, "Low": 2, "High": 5, "Lr": 0.001, "Count": 1}
    assert api_problems([tuning_step()], good) == []
    problems = api_problems([tuning_step()], {**good, "Jobs": -1, "Low": 7, "Lr": 0.0})
    assert any("Jobs must be >= 1" in m and "MaxNumberOfTrainingJobs of step Tune" in m and "not -1" in m
               for m in problems), problems
    assert any("Low (7) must be <= High (5)" in m and "'epochs'" in m for m in problems), problems
    assert any("Lr must be > 0" in m and "logarithmic" in m for m in problems), problems


def test_guard_conditions_are_evaluated_per_parameter():
    step = guard({"Type": "GreaterThanOrEqualTo", "LeftValue": p("Acc"), "RightValue": 0},
                 {"Type": "LessThanOrEqualTo", "LeftValue": p("Acc"), "RightValue": 1},
                 {"Type": "LessThanOrEqualTo", "LeftValue": p("Min"), "RightValue": p("Max")})
    assert guard_problems([step], {"Acc": 0.5, "Min": 1, "Max": 3}) == []
    problems = guard_problems([step], {"Acc": 2.0, "Min": 4, "Max": 3})
    assert problems == ["Acc must be >= 0 and <= 1 (got Acc=2)", "Min must be <= Max (got Min=4, Max=3)"]
    # a condition that reads a step's property is no up-front guard
    later = guard({"Type": "GreaterThanOrEqualTo", "LeftValue": {"Get": "Steps.E.Accuracy"}, "RightValue": p("Acc")})
    assert guard_problems([later], {"Acc": 2.0}) == []


def test_check_definition_raises_parameter_error():
    definition = {"Parameters": [{"Name": "Jobs", "Type": "Integer", "DefaultValue": 4}],
                  "Steps": [{"Name": "Tune", "Type": "Tuning", "Arguments": {"HyperParameterTuningJobConfig": {
                      "ResourceLimits": {"MaxNumberOfTrainingJobs": p("Jobs")}}}}]}
    check_definition(definition, {})
    with pytest.raises(ParameterError, match=r"Jobs must be >= 1 .*not 0"):
        check_definition(definition, {"Jobs": "0"})


def test_min_image_size_and_architectures_match_the_training_code():
    import torchvision
    from imgclf.data import MIN_AUGMENT_SIZE
    from imgclf.models import ARCHITECTURES

    assert tuple(sorted(ARCHITECTURES)) == ARCHITECTURE_NAMES
    smallest = max(getattr(torchvision.models, a.weights_enum).IMAGENET1K_V1.meta["min_size"][0]
                   for a in ARCHITECTURES.values())
    assert MIN_IMAGE_SIZE == max(smallest, MIN_AUGMENT_SIZE)


def run_cli(home: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--home", str(home), *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    return out, time.monotonic() - started


def test_build_pipeline_refuses_out_of_range_values_up_front(tmp_path):
    data = tmp_path / "data" / "cat"
    data.mkdir(parents=True)
    (data / "a.png").write_bytes(b"not read: refused before the upload")
    out, seconds = run_cli(tmp_path / "home", "--data", str(tmp_path / "data"), "-p", "MaxTuningJobs=-1",
                           "-p", "MaxParallelTuningJobs=0", "-p", "ImageSize=-5", "-p", "AccuracyThreshold=2",
                           "-p", "MinEpochs=7")
    assert out.returncode == 2, out.stderr
    for words in ("MaxTuningJobs must be >= 1", "MaxParallelTuningJobs must be >= 1",
                  f"ImageSize must be >= {MIN_IMAGE_SIZE} (got ImageSize=-5)",
                  "AccuracyThreshold must be >= 0 and <= 1 (got AccuracyThreshold=2)",
                  "MinEpochs must be >= 1 and <= MaxEpochs (got MinEpochs=7, MaxEpochs=5)",
                  "MinEpochs (7) must be <= MaxEpochs (5)"):
        assert words in out.stderr, out.stderr
    assert seconds < 120  # the offline definition build; nothing ran
    assert Records((tmp_path / "home" / "imgpipe.db")).list_executions() == []


def test_deploy_pipeline_refuses_out_of_range_values_up_front(tmp_path):
    out, _ = run_cli(tmp_path / "home", "--pipeline-module", "pipelines.deploy_pipeline",
                     "-p", "EndpointInstanceCount=0", "-p", "DataCaptureSamplingPercentage=150",
                     "-p", "SmokeTestMinAccuracy=1.5", "-p", "SmokeTestMaxAccuracyDrop=-0.1",
                     "-p", "SmokeTestMaxImages=0")
    assert out.returncode == 2, out.stderr
    for words in ("EndpointInstanceCount must be >= 1 (got EndpointInstanceCount=0)",
                  "DataCaptureSamplingPercentage must be >= 0 and <= 100 (got DataCaptureSamplingPercentage=150)",
                  "SmokeTestMinAccuracy must be <= 1 (got SmokeTestMinAccuracy=1.5)",  # negative: no floor
                  "SmokeTestMaxAccuracyDrop must be >= 0 and <= 1 (got SmokeTestMaxAccuracyDrop=-0.1)",
                  "SmokeTestMaxImages must be >= 1 (got SmokeTestMaxImages=0)"):
        assert words in out.stderr, out.stderr


@pytest.fixture(scope="module")
def build_definition() -> dict:
    return json.loads(subprocess.run([sys.executable, "-m", "pipelines.cli", "definition"], cwd=ROOT,
                                     capture_output=True, text=True, timeout=300, check=True).stdout)


def test_architecture_is_an_enum_of_the_definition(build_definition):
    with pytest.raises(ParameterError, match=r"'Architecture' must be one of .*mobilenet_v2.*not 'vgg16'"):
        check_definition(build_definition, {"Architecture": "vgg16"})
    check_definition(build_definition, {"Architecture": "resnet18", "ImageSize": str(MIN_IMAGE_SIZE)})


def test_guard_step_fails_the_execution_with_its_message_when_reached(tmp_path, build_definition):
    """What SageMaker does with the same definition: the guard's FailStep ends the execution
    before PrepareData (here the engine's up-front check is bypassed to see it)."""
    from pipelines.local.engine import Engine, _Run, flatten_steps
    from pipelines.settings import Settings

    definition = build_definition
    engine = Engine(Settings(home=tmp_path / "home"))
    values = {p["Name"]: p["DefaultValue"] for p in definition["Parameters"]}
    values["AccuracyThreshold"] = 2.0
    engine.records.create_execution("guardtest0001", "arn:x", "ImgpipeBuild", definition, values, time.time())
    result = engine._execute(_Run(engine.records.get_execution("guardtest0001"), 1, flatten_steps(definition)))
    assert result.status == "Failed"
    assert "Parameters out of range" in result.failure_reason and "AccuracyThreshold: 2.0" in result.failure_reason
    statuses = {s.name: s.status for s in result.steps}
    assert statuses["InvalidParameters"] == "Failed" and statuses["PrepareData"] == "NotRun"
