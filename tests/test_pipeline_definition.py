"""The model-build pipeline's definition JSON (what CodeBuild upserts and the local engine runs).

The definition is built twice per module: once by the ``get-pipeline-definition`` console script
in a subprocess with no credentials and no network, once in-process with
``build_definition(store=...)``; the structural tests read the first, the code tests the second.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
KWARGS = {
    "region": "us-east-1",
    "default_bucket": "imgpipe-test",
    "role": "arn:aws:iam::111122223333:role/imgpipe-test",
}
JOB_STEPS = ("PrepareData", "TuneHyperparameters", "TrainBestModel", "AnalyzeTraining", "EvaluateModel")
EXPECTED_TYPES = {
    "CheckParameters": "Condition",
    "InvalidParameters": "Fail",
    "PrepareData": "Processing",
    "TuneHyperparameters": "Tuning",
    "TrainBestModel": "Training",
    "AnalyzeTraining": "Processing",
    "EvaluateModel": "Processing",
    "CheckTraining": "Condition",
    "TrainingIssuesFound": "Fail",
    "CheckAccuracy": "Condition",
    # ModelStep("RegisterModel") = the SDK's repack job + the registration itself.
    "RegisterModel-RepackModel-0": "Training",
    "RegisterModel-RegisterModel": "RegisterModel",
    "AccuracyTooLow": "Fail",
}
TUNED = ("learning-rate", "batch-size", "epochs", "optimizer", "weight-decay")
# CreateModelPackage's pattern for CustomerMetadataProperties values.
METADATA_VALUE = re.compile(r"[\w\s.:/=+\-@]*")


@pytest.fixture(autouse=True)
def _restore_sdk_log_levels():
    """The CLIs quiet the SDK's loggers when called in-process; leave them as found."""
    from pipelines.get_pipeline_definition import QUIET_LOGGERS

    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def offline_env(home: Path) -> dict:
    """The environment of a machine with no AWS configuration at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        HOME=str(home),
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        AWS_EC2_METADATA_DISABLED="true",
        # Were anything to reach for the network, it would find a dead proxy and a dead endpoint.
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        NO_PROXY="",
        AWS_ENDPOINT_URL="http://127.0.0.1:9",
        IMGPIPE_HOME=str(home / ".imgpipe"),
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    env.pop("SAGEMAKER_USER_CONFIG_OVERRIDE", None)
    return env


def no_network_prefix() -> list[str]:
    """``unshare -n`` (a network namespace with no interfaces) where the machine allows it."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n"]
    return []


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("offline-home")
    command = no_network_prefix() + [
        str(BIN / "get-pipeline-definition"),
        "--module-name", "pipelines.pipeline",
        "--kwargs", json.dumps(KWARGS),
    ]
    return subprocess.run(
        command, cwd=home, env=offline_env(home), capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def definition(cli_run) -> dict:
    assert cli_run.returncode == 0, cli_run.stderr[-3000:]
    return json.loads(cli_run.stdout)


@pytest.fixture(scope="module")
def built_without_debugger(tmp_path_factory):
    """The definition ``get-pipeline-definition --kwargs '{..., "sagemaker_debugger": false}'``
    writes, and the store its code went to (``--store``)."""
    from pipelines.get_pipeline_definition import main
    from pipelines.local.object_store import ObjectStore

    home = tmp_path_factory.mktemp("no-debugger")
    out = home / "definition.json"
    previous = os.environ.get("IMGPIPE_HOME")
    os.environ["IMGPIPE_HOME"] = str(home / ".imgpipe")
    try:
        code = main(["--kwargs", json.dumps({**KWARGS, "sagemaker_debugger": False}), "-f", str(out), "--store"])
    finally:
        os.environ.pop("IMGPIPE_HOME") if previous is None else os.environ.update(IMGPIPE_HOME=previous)
    assert code == 0
    return {"definition": json.loads(out.read_text()), "store": ObjectStore(home / ".imgpipe" / "s3")}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """``build_definition`` in-process into a fresh store, with what it must leave untouched."""
    from pipelines.local.object_store import ObjectStore
    from pipelines.offline import build_definition

    from moto.core.models import MockAWS

    store = ObjectStore(tmp_path_factory.mktemp("store"))
    before = {"env": dict(os.environ), "cwd": os.getcwd(), "mocks": MockAWS._nested_count,
              "sagemaker_log_level": logging.getLogger("sagemaker").level}
    result = build_definition("pipelines.pipeline", dict(KWARGS), store=store)
    after = {"env": dict(os.environ), "cwd": os.getcwd(), "mocks": MockAWS._nested_count,
             "sagemaker_log_level": logging.getLogger("sagemaker").level}
    return {"definition": result, "store": store, "before": before, "after": after}


def all_steps(definition: dict) -> dict[str, dict]:
    steps = {}

    def walk(items):
        for step in items:
            steps[step["Name"]] = step
            walk(step.get("Arguments", {}).get("IfSteps", []))
            walk(step.get("Arguments", {}).get("ElseSteps", []))

    walk(definition["Steps"])
    return steps


def step_refs(node) -> set[str]:
    """Names of the steps a step's arguments read (``Get: Steps.<name>...``)."""
    found = set()
    if isinstance(node, dict):
        get = node.get("Get")
        if isinstance(get, str) and get.startswith("Steps."):
            found.add(get.split(".")[1])
        for value in node.values():
            found |= step_refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= step_refs(value)
    return found


def s3_uris(node) -> set[str]:
    found = set()
    if isinstance(node, str):
        for candidate in (node, node.strip('"')):
            if candidate.startswith("s3://"):
                found.add(candidate)
    elif isinstance(node, dict):
        for value in node.values():
            found |= s3_uris(value)
    elif isinstance(node, list):
        for value in node:
            found |= s3_uris(value)
    return found


def join_of(value) -> list:
    assert isinstance(value, dict) and "Std:Join" in value, value
    return value["Std:Join"]["Values"]


# ------------------------------------------------------------------------------ offline CLI


def test_cli_builds_offline_with_no_credentials_and_prints_json(cli_run, definition):
    assert cli_run.returncode == 0
    assert definition["Version"] == "2020-12-01"
    assert "Traceback" not in cli_run.stderr
    assert "INFO" not in cli_run.stderr and "Warning" not in cli_run.stderr  # no SDK chatter
    # Every code location is in the bucket we named, not a bucket found through STS.
    code = {uri for uri in s3_uris(definition) if uri.endswith((".tar.gz", ".sh"))}
    assert code and all(uri.startswith("s3://imgpipe-test/") for uri in code)


def test_cli_rejects_bad_kwargs_json(capsys):
    from pipelines.get_pipeline_definition import main

    assert main(["--kwargs", "{region: nope"]) == 2
    err = capsys.readouterr().err
    assert "--kwargs is not valid JSON" in err and "Traceback" not in err


def test_cli_writes_file_and_imgpipe_definition_is_registered(tmp_path, monkeypatch, capsys):
    """--file-name with a tiny pipeline module (the real one is covered above)."""
    module = tmp_path / "tiny_pipeline_module.py"
    module.write_text(
        "from sagemaker.workflow.fail_step import FailStep\n"
        "from sagemaker.workflow.pipeline import Pipeline\n"
        "from pipelines.sdk_session import get_session\n"
        "def get_pipeline(region, role=None, default_bucket=None, pipeline_name='Tiny'):\n"
        "    return Pipeline(name=pipeline_name, steps=[FailStep(name='Stop', error_message='x')],\n"
        "                    sagemaker_session=get_session(region, default_bucket))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from pipelines.cli import build_parser
    from pipelines.get_pipeline_definition import main

    out = tmp_path / "out" / "definition.json"
    assert main(["-n", "tiny_pipeline_module", "-f", str(out), "-kwargs", '{"pipeline_name": "T2"}']) == 0
    assert capsys.readouterr().out == ""
    assert [s["Name"] for s in json.loads(out.read_text())["Steps"]] == ["Stop"]

    args = build_parser().parse_args(["definition", "--module-name", "tiny_pipeline_module"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["Steps"][0]["Type"] == "Fail"


# ------------------------------------------------------------------------------ steps & DAG


def test_exactly_the_steps_with_their_types(definition):
    steps = all_steps(definition)
    assert {name: step["Type"] for name, step in steps.items()} == EXPECTED_TYPES
    assert [s["Name"] for s in definition["Steps"]] == [
        "CheckParameters", "PrepareData", "TuneHyperparameters", "TrainBestModel", "AnalyzeTraining", "EvaluateModel",
        "CheckTraining",
    ]
    assert [s["Name"] for s in steps["CheckParameters"]["Arguments"]["ElseSteps"]] == ["InvalidParameters"]
    assert steps["PrepareData"]["DependsOn"] == ["CheckParameters"]  # no job before the guard
    gate = steps["CheckTraining"]["Arguments"]
    assert [s["Name"] for s in gate["IfSteps"]] == ["CheckAccuracy"]
    assert [s["Name"] for s in gate["ElseSteps"]] == ["TrainingIssuesFound"]
    check = steps["CheckAccuracy"]["Arguments"]
    assert [s["Name"] for s in check["IfSteps"]] == [
        "RegisterModel-RepackModel-0", "RegisterModel-RegisterModel"
    ]
    assert [s["Name"] for s in check["ElseSteps"]] == ["AccuracyTooLow"]


def test_step_and_parameter_order_is_pinned(definition):
    """The whole DAG in definition order, and the parameters in declaration order: a refactor of
    the step builders cannot drop, rename or reorder one without this failing."""
    def walk(steps):
        for step in steps:
            yield step["Name"]
            yield from walk(step["Arguments"].get("IfSteps", []))
            yield from walk(step["Arguments"].get("ElseSteps", []))

    assert list(walk(definition["Steps"])) == [
        "CheckParameters", "InvalidParameters", "PrepareData", "TuneHyperparameters", "TrainBestModel", "AnalyzeTraining",
        "EvaluateModel", "CheckTraining", "CheckAccuracy", "RegisterModel-RepackModel-0", "RegisterModel-RegisterModel",
        "AccuracyTooLow", "TrainingIssuesFound",
    ]
    assert [p["Name"] for p in definition["Parameters"]] == [
        "InputDataUrl", "ProcessingInstanceType", "TrainingInstanceType", "MaxTuningJobs",
        "MaxParallelTuningJobs", "AccuracyThreshold", "ModelApprovalStatus", "Architecture",
        "ImageSize", "Pretrained", "MinEpochs", "MaxEpochs", "TuningMaxTrainImages", "FailOnTrainingIssues",
    ]


def test_dependencies_follow_the_data(definition):
    steps = all_steps(definition)
    refs = {
        name: step_refs({k: v for k, v in step["Arguments"].items() if k not in ("IfSteps", "ElseSteps")})
        for name, step in steps.items()
    }
    assert refs["PrepareData"] == set()
    assert refs["TuneHyperparameters"] == {"PrepareData"}
    assert refs["TrainBestModel"] == {"PrepareData", "TuneHyperparameters"}
    assert refs["AnalyzeTraining"] == {"TrainBestModel"}
    assert refs["EvaluateModel"] == {"PrepareData", "TrainBestModel"}
    assert refs["CheckTraining"] == {"AnalyzeTraining"}
    assert refs["TrainingIssuesFound"] == {"AnalyzeTraining"}
    assert refs["CheckAccuracy"] == {"EvaluateModel"}
    assert refs["RegisterModel-RepackModel-0"] == {"TrainBestModel"}
    assert refs["RegisterModel-RegisterModel"] == {
        "RegisterModel-RepackModel-0", "EvaluateModel", "TuneHyperparameters",
        "PrepareData",  # metadata test_data_url: the held-out images for the smoke test
    }
    assert refs["AccuracyTooLow"] == {"EvaluateModel"}
    # the one ordering that is not data: no job before the parameter guard
    assert {n: step["DependsOn"] for n, step in steps.items() if step.get("DependsOn")} == {"PrepareData": ["CheckParameters"]}


def test_prepare_data_contract(definition):
    args = all_steps(definition)["PrepareData"]["Arguments"]
    inputs = {i["InputName"]: i["S3Input"] for i in args["ProcessingInputs"]}
    data = [i for i in inputs.values() if i["S3Uri"] == {"Get": "Parameters.InputDataUrl"}]
    assert [i["LocalPath"] for i in data] == ["/opt/ml/processing/input/data"]
    outputs = {o["OutputName"]: o["S3Output"]["LocalPath"] for o in args["ProcessingOutputConfig"]["Outputs"]}
    assert outputs == {n: f"/opt/ml/processing/output/{n}" for n in ("train", "valid", "test", "report")}
    container = args["AppSpecification"]["ContainerArguments"]
    assert container[:4] == ["--input-dir", "/opt/ml/processing/input/data",
                             "--output-dir", "/opt/ml/processing/output"]
    assert {"code", "entrypoint"} <= set(inputs)  # FrameworkProcessor: sourcedir + runproc.sh
    assert "pytorch-training:2.6.0-cpu-py312" in args["AppSpecification"]["ImageUri"]


def test_tuning_job(definition):
    args = all_steps(definition)["TuneHyperparameters"]["Arguments"]
    config = args["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == "Bayesian"
    assert config["TrainingJobEarlyStoppingType"] == "Auto"
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "valid_accuracy"}
    assert config["ResourceLimits"] == {
        "MaxNumberOfTrainingJobs": {"Get": "Parameters.MaxTuningJobs"},
        "MaxParallelTrainingJobs": {"Get": "Parameters.MaxParallelTuningJobs"},
    }
    ranges = config["ParameterRanges"]
    continuous = {r["Name"]: r for r in ranges["ContinuousParameterRanges"]}
    integer = {r["Name"]: r for r in ranges["IntegerParameterRanges"]}
    categorical = {r["Name"]: r for r in ranges["CategoricalParameterRanges"]}
    assert set(continuous) | set(integer) | set(categorical) == set(TUNED)
    assert continuous["learning-rate"]["ScalingType"] == "Logarithmic"
    assert continuous["weight-decay"]["ScalingType"] == "Logarithmic"
    assert join_of(integer["epochs"]["MinValue"]) == [{"Get": "Parameters.MinEpochs"}]
    assert join_of(integer["epochs"]["MaxValue"]) == [{"Get": "Parameters.MaxEpochs"}]
    assert sorted(json.loads(v) for v in categorical["optimizer"]["Values"]) == ["adam", "adamw", "sgd"]

    job = args["TrainingJobDefinition"]
    assert job["AlgorithmSpecification"]["MetricDefinitions"] == [
        {"Name": name, "Regex": f"{name}=([0-9.]+)"}
        for name in ("valid_accuracy", "valid_loss", "train_loss", "train_accuracy", "images_per_second")
    ]
    static = job["StaticHyperParameters"]
    assert join_of(static["max-train-images"]) == [{"Get": "Parameters.TuningMaxTrainImages"}]
    assert join_of(static["arch"]) == ['"', {"Get": "Parameters.Architecture"}, '"']
    assert join_of(static["pretrained"]) == ['"', {"Get": "Parameters.Pretrained"}, '"']
    assert json.loads(static["sagemaker_program"]) == "train.py"
    assert "sagemaker_job_name" not in static  # would change the cache key on every build
    assert {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]} == {
        name: {"Get": f"Steps.PrepareData.ProcessingOutputConfig.Outputs['{name}'].S3Output.S3Uri"}
        for name in ("train", "valid")
    }


def test_final_training_takes_the_best_trials_hyperparameters(definition):
    args = all_steps(definition)["TrainBestModel"]["Arguments"]
    hps = args["HyperParameters"]
    for name in TUNED:
        assert join_of(hps[name]) == [
            {"Get": f"Steps.TuneHyperparameters.BestTrainingJob.TunedHyperParameters['{name}']"}
        ], name
    assert hps["max-train-images"] == "0"
    assert join_of(hps["image-size"]) == [{"Get": "Parameters.ImageSize"}]
    tuning_static = all_steps(definition)["TuneHyperparameters"]["Arguments"][
        "TrainingJobDefinition"]["StaticHyperParameters"]
    # Content-addressed code; the final job's also holds smdebug's requirements.txt (Debugger on),
    # so it has its own location (test_with_debugger_... / test_without_debugger_...).
    assert hps["sagemaker_submit_directory"] != tuning_static["sagemaker_submit_directory"]
    assert "/ImgpipeBuild/code/" in hps["sagemaker_submit_directory"]
    assert "/ImgpipeBuild/code/" in tuning_static["sagemaker_submit_directory"]
    checkpoint = join_of(args["CheckpointConfig"]["S3Uri"])
    assert {"Get": "Steps.TuneHyperparameters.BestTrainingJob.TrainingJobName"} in checkpoint


def test_profiler_and_all_debugger_rules(definition):
    args = all_steps(definition)["TrainBestModel"]["Arguments"]
    assert args["ProfilerConfig"]["ProfilingIntervalInMilliseconds"] == 500
    assert args["ProfilerConfig"].get("DisableProfiler") is False
    assert [r["RuleConfigurationName"] for r in args["ProfilerRuleConfigurations"]] == ["ProfilerReport"]
    assert {r["RuleConfigurationName"] for r in args["DebugRuleConfigurations"]} == {
        "LossNotDecreasing", "VanishingGradient", "Overfit", "Overtraining", "PoorWeightInitialization"
    }
    for rule in args["DebugRuleConfigurations"] + args["ProfilerRuleConfigurations"]:
        assert "sagemaker-debugger-rules" in rule["RuleEvaluatorImage"]
    collections = [c["CollectionName"] for c in args["DebugHookConfig"]["CollectionConfigurations"]]
    assert {"losses", "weights", "gradients"} <= set(collections)
    assert len(collections) == len(set(collections)), collections  # one config per collection
    # smdebug writes TensorBoard summaries next to train.py's recording: scalars only
    for config in args["DebugHookConfig"]["CollectionConfigurations"]:
        assert config["CollectionParameters"]["save_histogram"] == "false", config


def test_analyze_training_reads_the_final_trainings_tensorboard_output(definition):
    from imgclf.insights import rule_arguments

    steps = all_steps(definition)
    tensorboard = steps["TrainBestModel"]["Arguments"]["TensorBoardOutputConfig"]
    assert tensorboard == {"S3OutputPath": "s3://imgpipe-test/imgpipe/tensorboard", "LocalPath": "/opt/ml/output/tensorboard"}
    analyze = steps["AnalyzeTraining"]
    assert analyze["PropertyFiles"] == [
        {"PropertyFileName": "TrainingInsights", "OutputName": "insights", "FilePath": "training_insights.json"}
    ]
    args = analyze["Arguments"]
    inputs = {i["S3Input"]["LocalPath"]: i["S3Input"]["S3Uri"] for i in args["ProcessingInputs"]}
    # where SageMaker (and the local engine) upload a job's TensorBoard output
    assert join_of(inputs["/opt/ml/processing/input/tensorboard"]) == [
        tensorboard["S3OutputPath"], {"Get": "Steps.TrainBestModel.TrainingJobName"}, "tensorboard-output"]
    assert [o["S3Output"]["LocalPath"] for o in args["ProcessingOutputConfig"]["Outputs"]] == ["/opt/ml/processing/insights"]
    container_args = args["AppSpecification"]["ContainerArguments"]
    assert container_args[:4] == ["--tensorboard-dir", "/opt/ml/processing/input/tensorboard",
                                  "--output-dir", "/opt/ml/processing/insights"]
    assert container_args[4:] == rule_arguments() and "--param" in container_args  # the rule parameters


def test_fail_on_training_issues_gates_registration(definition):
    steps = all_steps(definition)
    (condition,) = steps["CheckTraining"]["Arguments"]["Conditions"]
    assert condition["Type"] == "Or"
    issues = {"Std:JsonGet": {"PropertyFile": {"Get": "Steps.AnalyzeTraining.PropertyFiles.TrainingInsights"},
                              "Path": "issues_found"}}
    assert condition["Conditions"] == [
        {"Type": "Equals", "LeftValue": {"Get": "Parameters.FailOnTrainingIssues"}, "RightValue": "false"},
        {"Type": "Equals", "LeftValue": issues, "RightValue": 0},
    ]
    message = join_of(steps["TrainingIssuesFound"]["Arguments"]["ErrorMessage"])
    assert {"Std:JsonGet": {"PropertyFile": {"Get": "Steps.AnalyzeTraining.PropertyFiles.TrainingInsights"},
                            "Path": "issue_summary"}} in message
    parameter = next(p for p in definition["Parameters"] if p["Name"] == "FailOnTrainingIssues")
    assert parameter["EnumValues"] == ["true", "false"]


def debugger_and_profiler_keys(node, path="") -> list[str]:
    """Every key (with its path) that configures SageMaker Debugger or Profiler."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if any(word in key for word in ("Debug", "Profiler")):
                found.append(f"{path}/{key}")
            found += debugger_and_profiler_keys(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += debugger_and_profiler_keys(value, f"{path}[{i}]")
    return found


def code_tarball_names(store, step: dict) -> list[str]:
    hps = (step["Arguments"].get("TrainingJobDefinition") or step["Arguments"])
    hps = hps.get("StaticHyperParameters") or hps["HyperParameters"]
    with tarfile.open(store.path(json.loads(hps["sagemaker_submit_directory"]))) as tar:
        return tar.getnames()


def test_with_debugger_the_final_training_installs_smdebug(built):
    steps = all_steps(built["definition"])
    names = code_tarball_names(built["store"], steps["TrainBestModel"])
    assert "requirements.txt" in names  # at the root: SageMaker's training toolkit pip-installs it
    with tarfile.open(built["store"].path(json.loads(
            steps["TrainBestModel"]["Arguments"]["HyperParameters"]["sagemaker_submit_directory"]))) as tar:
        requirements = tar.extractfile("requirements.txt").read().decode()
    pins = [line.strip() for line in requirements.splitlines() if line.strip() and not line.startswith("#")]
    assert pins == ["smdebug==1.0.34", "numpy<2"]
    # the tuning trials have no Debugger hook: they do not install it
    assert "requirements.txt" not in code_tarball_names(built["store"], steps["TuneHyperparameters"])


def test_without_debugger_no_step_configures_debugger_or_profiler(built_without_debugger, definition):
    built = built_without_debugger["definition"]
    steps = all_steps(built)
    assert {name: step["Type"] for name, step in steps.items()} == EXPECTED_TYPES  # AnalyzeTraining too
    assert debugger_and_profiler_keys(built["Steps"]) == []
    assert steps["TrainBestModel"]["Arguments"]["TensorBoardOutputConfig"] == \
        all_steps(definition)["TrainBestModel"]["Arguments"]["TensorBoardOutputConfig"]
    assert steps["AnalyzeTraining"]["Arguments"] == all_steps(definition)["AnalyzeTraining"]["Arguments"]
    names = code_tarball_names(built_without_debugger["store"], steps["TrainBestModel"])
    assert "train.py" in names and "requirements.txt" not in names
    # without it, trials and the final job share one code location again
    assert steps["TrainBestModel"]["Arguments"]["HyperParameters"]["sagemaker_submit_directory"] == \
        steps["TuneHyperparameters"]["Arguments"]["TrainingJobDefinition"]["StaticHyperParameters"]["sagemaker_submit_directory"]
    # the default build has them: the SDK's own repack job included
    default_keys = debugger_and_profiler_keys(definition["Steps"])
    assert any("DebugRuleConfigurations" in k for k in default_keys)
    assert any("ProfilerConfig" in k for k in default_keys)


def test_sagemaker_debugger_accepts_a_buildspec_string():
    from pipelines.pipeline import parse_flag

    assert parse_flag("false", "sagemaker_debugger") is False
    assert parse_flag(" True ", "sagemaker_debugger") is True
    assert parse_flag(False, "sagemaker_debugger") is False
    with pytest.raises(ValueError, match="sagemaker_debugger: expected true or false, got 'maybe'"):
        parse_flag("maybe", "sagemaker_debugger")


def test_evaluation_property_file_and_condition(definition):
    steps = all_steps(definition)
    evaluate = steps["EvaluateModel"]
    assert evaluate["PropertyFiles"] == [
        {"PropertyFileName": "EvaluationReport", "OutputName": "evaluation", "FilePath": "evaluation.json"}
    ]
    args = evaluate["Arguments"]
    inputs = {i["S3Input"]["LocalPath"]: i["S3Input"]["S3Uri"] for i in args["ProcessingInputs"]}
    assert inputs["/opt/ml/processing/model"] == {"Get": "Steps.TrainBestModel.ModelArtifacts.S3ModelArtifacts"}
    assert inputs["/opt/ml/processing/test"] == {
        "Get": "Steps.PrepareData.ProcessingOutputConfig.Outputs['test'].S3Output.S3Uri"
    }
    assert [o["S3Output"]["LocalPath"] for o in args["ProcessingOutputConfig"]["Outputs"]] == [
        "/opt/ml/processing/evaluation"
    ]
    assert "--model-dir" in args["AppSpecification"]["ContainerArguments"]

    (condition,) = steps["CheckAccuracy"]["Arguments"]["Conditions"]
    assert condition["Type"] == "GreaterThanOrEqualTo"
    assert condition["LeftValue"] == {"Std:JsonGet": {
        "PropertyFile": {"Get": "Steps.EvaluateModel.PropertyFiles.EvaluationReport"},
        "Path": "multiclass_classification_metrics.accuracy.value",
    }}
    assert condition["RightValue"] == {"Get": "Parameters.AccuracyThreshold"}

    message = join_of(steps["AccuracyTooLow"]["Arguments"]["ErrorMessage"])
    assert condition["LeftValue"] in message and {"Get": "Parameters.AccuracyThreshold"} in message


def test_register_step(definition):
    steps = all_steps(definition)
    args = steps["RegisterModel-RegisterModel"]["Arguments"]
    assert args["ModelApprovalStatus"] == {"Get": "Parameters.ModelApprovalStatus"}
    assert args["ModelPackageGroupName"] == "ImgpipeModels"
    statistics = args["ModelMetrics"]["ModelQuality"]["Statistics"]
    assert statistics["ContentType"] == "application/json"
    assert join_of(statistics["S3Uri"]) == [
        {"Get": "Steps.EvaluateModel.ProcessingOutputConfig.Outputs['evaluation'].S3Output.S3Uri"},
        "evaluation.json",
    ]
    spec = args["InferenceSpecification"]
    assert spec["SupportedContentTypes"] == ["application/x-image", "image/jpeg", "image/png", "application/json"]
    assert spec["SupportedResponseMIMETypes"] == ["application/json"]
    (container,) = spec["Containers"]
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert "pytorch-inference:2.6.0-cpu-py312" in container["Image"]
    assert container["ModelDataUrl"] == {"Get": "Steps.RegisterModel-RepackModel-0.ModelArtifacts.S3ModelArtifacts"}
    repack = steps["RegisterModel-RepackModel-0"]["Arguments"]["HyperParameters"]
    assert json.loads(repack["source_dir"]) == "inference"
    assert json.loads(repack["dependencies"]) == "training/imgclf"

    metadata = args["CustomerMetadataProperties"]
    assert metadata["hp_learning_rate"] == {
        "Get": "Steps.TuneHyperparameters.BestTrainingJob.TunedHyperParameters['learning-rate']"
    }
    assert metadata["input_data_url"] == {"Get": "Parameters.InputDataUrl"}
    assert metadata["pipeline_execution_id"] == {"Get": "Execution.PipelineExecutionId"}
    assert metadata["best_training_job"] == {"Get": "Steps.TuneHyperparameters.BestTrainingJob.TrainingJobName"}
    # No JSON-quoted value (the tuned optimizer is '"adam"'): CreateModelPackage would refuse it.
    assert "hp_optimizer" not in metadata
    for key, value in metadata.items():
        assert METADATA_VALUE.fullmatch(key) and len(key) <= 128
        if isinstance(value, str):
            assert METADATA_VALUE.fullmatch(value), (key, value)


def test_cache_config_and_retry_policies(definition):
    steps = all_steps(definition)
    for name in JOB_STEPS:
        step = steps[name]
        assert step["CacheConfig"] == {"Enabled": True, "ExpireAfter": "P30D"}, name
        kinds = {kind for policy in step["RetryPolicies"] for kind in policy["ExceptionType"]}
        assert {"Step.THROTTLING", "SageMaker.CAPACITY_ERROR", "SageMaker.RESOURCE_LIMIT"} <= kinds, name
    register_kinds = {k for p in steps["RegisterModel-RegisterModel"]["RetryPolicies"] for k in p["ExceptionType"]}
    assert "Step.THROTTLING" in register_kinds


def test_parameters_and_defaults(definition):
    parameters = {p["Name"]: (p["Type"], p["DefaultValue"]) for p in definition["Parameters"]}
    assert parameters == {
        "InputDataUrl": ("String", "s3://imgpipe-test/imgpipe/data"),
        "ProcessingInstanceType": ("String", "ml.m5.xlarge"),
        "TrainingInstanceType": ("String", "ml.m5.xlarge"),
        "MaxTuningJobs": ("Integer", 4),
        "MaxParallelTuningJobs": ("Integer", 2),
        "AccuracyThreshold": ("Float", 0.85),
        "ModelApprovalStatus": ("String", "PendingManualApproval"),
        "Architecture": ("String", "mobilenet_v2"),
        "ImageSize": ("Integer", 64),
        "Pretrained": ("String", "true"),
        "MinEpochs": ("Integer", 2),
        "MaxEpochs": ("Integer", 5),
        "TuningMaxTrainImages": ("Integer", 1500),
        "FailOnTrainingIssues": ("String", "false"),
    }
    used = json.dumps(definition["Steps"])
    for name in parameters:
        assert f'"Parameters.{name}"' in used, f"parameter {name} is never used"


# ------------------------------------------------------------------------------ code in the store


def test_build_definition_leaves_the_code_in_the_store(built):
    definition, store = built["definition"], built["store"]
    code_uris = {uri for uri in s3_uris(definition) if uri.endswith((".tar.gz", ".sh"))}
    assert len(code_uris) >= 5  # 2 processing tarballs + 2 runproc.sh + training + repack
    for uri in code_uris:
        assert store.exists(uri), uri

    hps = all_steps(definition)["TrainBestModel"]["Arguments"]["HyperParameters"]
    with tarfile.open(store.path(json.loads(hps["sagemaker_submit_directory"]))) as tar:
        names = tar.getnames()
    assert "train.py" in names
    assert any(n.startswith("imgclf/") and n.endswith(".py") for n in names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)

    prepare = {i["InputName"]: i["S3Input"]["S3Uri"]
               for i in all_steps(definition)["PrepareData"]["Arguments"]["ProcessingInputs"]}
    with tarfile.open(store.path(prepare["code"])) as tar:
        names = tar.getnames()
    assert "preprocess.py" in names and any(n.startswith("imgclf/") for n in names)
    runproc = store.path(prepare["entrypoint"]).read_text()
    assert "preprocess.py" in runproc


def test_build_definition_restores_the_process(built):
    # Environment (fake credentials, config override), working directory, moto's mock and the
    # SDK's log levels are as they were.
    assert built["after"] == built["before"]
    assert not (REPO / "inference" / "_repack_model.py").exists()  # the SDK wrote into a copy


def test_definition_depends_only_on_code_and_kwargs(built, definition):
    """The subprocess and the in-process build agree, except the SDK's repack code upload
    (timestamped by the SDK): caching survives rebuilds and checkouts."""

    def without_repack_code(d):
        d = json.loads(json.dumps(d))
        repack = all_steps(d)["RegisterModel-RepackModel-0"]["Arguments"]["HyperParameters"]
        repack.pop("sagemaker_submit_directory")
        return d

    assert without_repack_code(built["definition"]) == without_repack_code(definition)


# ------------------------------------------------------------------------------ SDK settings


def test_sessions_opt_out_of_telemetry_and_invalid_configs_still_fail():
    import jsonschema
    import sagemaker.utils
    from sagemaker.config.config_schema import TELEMETRY_OPT_OUT_PATH
    from sagemaker.utils import resolve_value_from_config

    from pipelines.sdk_session import get_session

    session = get_session("us-east-1", "imgpipe-test")
    assert TELEMETRY_OPT_OUT_PATH == "SageMaker.PythonSDK.Modules.TelemetryOptOut"
    assert resolve_value_from_config(None, TELEMETRY_OPT_OUT_PATH, default_value=False,
                                     sagemaker_session=session) is True
    # The validation cache (pipelines.sdk_workarounds) remembers valid configs only.
    from pipelines.sdk_workarounds import cached_config_validation

    bad = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": "yes"}}}}
    with cached_config_validation():
        for _ in range(2):
            with pytest.raises(jsonschema.ValidationError):
                sagemaker.utils.validate_sagemaker_config(bad)
