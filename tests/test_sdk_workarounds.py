"""pipelines/sdk_workarounds.py: each SDK behaviour worked around still exists in the plain SDK
(when one of the ``*_still_*`` tests fails, the SDK has changed: drop that workaround), and the
workaround fixes it. Builds run inside moto (the SDK uploads code while compiling; nothing runs).
"""
from __future__ import annotations

import json
import re

import pytest

from pipelines import sdk_workarounds  # first: pipelines sets SAGEMAKER_SUPPRESS_V2_WARNING

pytest.importorskip("moto")

import sagemaker.config.config as sdk_config_module  # noqa: E402
import sagemaker.utils  # noqa: E402
from moto import mock_aws  # noqa: E402
from sagemaker.debugger import CollectionConfig, DebuggerHookConfig, Rule, rule_configs  # noqa: E402
from sagemaker.pytorch import PyTorch  # noqa: E402
from sagemaker.tuner import ContinuousParameter, HyperparameterTuner  # noqa: E402
from sagemaker.workflow.fail_step import FailStep  # noqa: E402
from sagemaker.workflow.pipeline import Pipeline  # noqa: E402
from sagemaker.workflow.steps import TrainingStep, TuningStep  # noqa: E402

from pipelines.pipeline import PipelinePyTorch  # noqa: E402
from pipelines.sdk_session import get_session  # noqa: E402

REGION, BUCKET = "us-east-1", "imgpipe-sdk-test"
ROLE = "arn:aws:iam::111122223333:role/ImgpipeTest"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.6.0-cpu-py312"


@pytest.fixture
def session(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        session = get_session(REGION, BUCKET)
        session.boto_session.client("s3").create_bucket(Bucket=BUCKET)
        yield session


def estimator(cls, session, source_dir, **extra):
    return cls(entry_point="train.py", source_dir=str(source_dir), framework_version="2.6.0",
               py_version="py312", image_uri=IMAGE, role=ROLE, instance_type="ml.m5.large",
               instance_count=1, base_job_name="imgpipe-tuning", sagemaker_session=session, **extra)


def tuning_hyperparameters(cls, session, tmp_path) -> dict:
    """The static hyperparameters of a one-step tuning pipeline whose estimator is ``cls``."""
    with sdk_workarounds.cached_config_validation():  # only for speed: not what is tested here
        return _tuning_hyperparameters(cls, session, tmp_path)


def _tuning_hyperparameters(cls, session, tmp_path) -> dict:
    source = tmp_path / "training"
    if not source.exists():
        source.mkdir()
        (source / "train.py").write_text("print('valid_accuracy=0.5')\n")
    tuner = HyperparameterTuner(
        estimator(cls, session, source, disable_profiler=True), "valid_accuracy",
        {"learning-rate": ContinuousParameter(1e-3, 1e-1)},
        metric_definitions=[{"Name": "valid_accuracy", "Regex": "valid_accuracy=([0-9.]+)"}],
        max_jobs=1, max_parallel_jobs=1)
    step = TuningStep(name="Tune", step_args=tuner.fit(inputs={"train": f"s3://{BUCKET}/train"}))
    definition = json.loads(Pipeline(name="SdkTest", steps=[step], sagemaker_session=session).definition())
    return definition["Steps"][0]["Arguments"]["TrainingJobDefinition"]["StaticHyperParameters"]


# ------------------------------------------------------------ tuning estimator: code key, job name


def test_plain_sdk_still_timestamps_tuning_code_and_job_name(session, tmp_path):
    hyperparameters = tuning_hyperparameters(PyTorch, session, tmp_path)
    timestamp = r"\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-\d{3}"
    assert re.search(rf"/imgpipe-tuning-{timestamp}/source/sourcedir\.tar\.gz",
                     hyperparameters["sagemaker_submit_directory"])
    assert re.fullmatch(rf'"imgpipe-tuning-{timestamp}"', hyperparameters["sagemaker_job_name"])


def test_stable_estimator_keys_tuning_code_by_content_and_drops_job_name(session, tmp_path):
    first = tuning_hyperparameters(PipelinePyTorch, session, tmp_path)
    assert re.fullmatch(rf'"s3://{BUCKET}/SdkTest/code/[0-9a-f]{{64}}/sourcedir\.tar\.gz"',
                        first["sagemaker_submit_directory"])
    assert "sagemaker_job_name" not in first
    assert tuning_hyperparameters(PipelinePyTorch, session, tmp_path) == first  # a second build
    (tmp_path / "training" / "train.py").write_text("print('valid_accuracy=0.6')\n")
    changed = tuning_hyperparameters(PipelinePyTorch, session, tmp_path)
    assert changed["sagemaker_submit_directory"] != first["sagemaker_submit_directory"]


# ------------------------------------------------------------ Debugger collections: set order


def debugger_estimator(cls, session, tmp_path):
    collections = [CollectionConfig(name=name, parameters={"save_interval": "10"})
                   for name in ("weights", "losses", "gradients", "biases")]
    rules = [Rule.sagemaker(rule_configs.loss_not_decreasing(), collections_to_save=collections[1:2])]
    (tmp_path / "train.py").write_text("")
    est = estimator(cls, session, tmp_path, rules=rules,
                    debugger_hook_config=DebuggerHookConfig(s3_output_path=f"s3://{BUCKET}/debugger",
                                                            collection_configs=collections))
    est._prepare_collection_configs()
    return est


def test_plain_sdk_still_keeps_debugger_collections_in_a_set(session, tmp_path):
    assert isinstance(debugger_estimator(PyTorch, session, tmp_path).collection_configs, set)


def test_stable_estimator_lists_debugger_collections_sorted(session, tmp_path):
    configs = debugger_estimator(PipelinePyTorch, session, tmp_path).collection_configs
    assert [c.name for c in configs] == ["biases", "gradients", "losses", "weights"]


# ------------------------------------------------------------ config validation at each lookup


@pytest.fixture
def validations(monkeypatch):
    """How often the SDK ran jsonschema on a config."""
    calls = []
    original = sdk_config_module.jsonschema.validate
    monkeypatch.setattr(sdk_config_module.jsonschema, "validate",
                        lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    return calls


CONFIG = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
KEY = "SageMaker.PythonSDK.Modules.TelemetryOptOut"


def test_plain_sdk_still_validates_the_config_at_every_lookup(validations):
    for _ in range(3):
        assert sagemaker.utils.get_sagemaker_config_value(None, KEY, sagemaker_config=CONFIG) is True
    assert len(validations) == 3


def test_cached_validation_validates_each_config_once_and_is_undone(validations):
    original = sagemaker.utils.validate_sagemaker_config
    with sdk_workarounds.cached_config_validation():
        for _ in range(3):
            assert sagemaker.utils.get_sagemaker_config_value(None, KEY, sagemaker_config=CONFIG) is True
        assert len(validations) == 1
        bad = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": "yes"}}}}
        for _ in range(2):  # an invalid config is never remembered
            with pytest.raises(Exception, match="yes"):
                sagemaker.utils.validate_sagemaker_config(bad)
    assert sagemaker.utils.validate_sagemaker_config is original


# ------------------------------------------------------------ the user's config file: private name


def test_plain_sdk_still_names_the_user_config_path_only_privately():
    assert isinstance(sdk_config_module._DEFAULT_USER_CONFIG_FILE_PATH, str)
    public = [name for name in dir(sdk_config_module) + dir(sagemaker.config)
              if not name.startswith("_") and "USER_CONFIG_FILE" in name]
    assert public == []


def test_user_sdk_config_exists_follows_the_sdk_path(monkeypatch, tmp_path):
    path = tmp_path / "config.yaml"
    monkeypatch.setattr(sdk_config_module, "_DEFAULT_USER_CONFIG_FILE_PATH", str(path))
    assert sdk_workarounds.user_sdk_config_exists() is False
    path.write_text("SchemaVersion: '1.0'\n")
    assert sdk_workarounds.user_sdk_config_exists() is True


# ------------------------------------------------------------ upsert compiles again


class CountingPipeline(Pipeline):
    compiled = 0

    def definition(self) -> str:
        type(self).compiled += 1
        return super().definition()


def counting_pipeline(session) -> CountingPipeline:
    CountingPipeline.compiled = 0
    return CountingPipeline(name="SdkTestUpsert", steps=[FailStep(name="Stop", error_message="x")],
                            sagemaker_session=session)


def test_plain_sdk_upsert_still_compiles_the_definition_again(session):
    pipeline = counting_pipeline(session)
    pipeline.definition()
    pipeline.upsert(role_arn=ROLE)
    assert CountingPipeline.compiled == 2


def test_frozen_definition_is_what_upsert_sends(session):
    pipeline = counting_pipeline(session)
    definition = sdk_workarounds.freeze_definition(pipeline)
    pipeline.upsert(role_arn=ROLE)
    assert CountingPipeline.compiled == 1
    stored = session.sagemaker_client.describe_pipeline(PipelineName="SdkTestUpsert")
    assert json.loads(stored["PipelineDefinition"]) == json.loads(definition)


# ------------------------------------------------------------ a disabled profiler's config


def training_step_arguments(session, tmp_path, **extra) -> dict:
    source = tmp_path / "training"
    source.mkdir(exist_ok=True)
    (source / "train.py").write_text("print('trained')\n")
    step = TrainingStep(name="Train", step_args=estimator(PyTorch, session, source, **extra).fit(
        inputs={"train": f"s3://{BUCKET}/train"}))
    with sdk_workarounds.cached_config_validation():
        definition = Pipeline(name="SdkTest", steps=[step], sagemaker_session=session).definition()
    return definition, json.loads(definition)["Steps"][0]["Arguments"]


def test_plain_sdk_still_sends_a_disabled_profiler_config(session, tmp_path):
    # No estimator argument leaves ProfilerConfig out: disable_profiler sends one that disables it.
    _, arguments = training_step_arguments(session, tmp_path, disable_profiler=True, debugger_hook_config=False)
    assert arguments["ProfilerConfig"] == {"DisableProfiler": True}
    assert "DebugHookConfig" not in arguments


def test_without_disabled_profiler_drops_only_disabled_configs(session, tmp_path):
    definition, _ = training_step_arguments(session, tmp_path, disable_profiler=True, debugger_hook_config=False)
    assert "ProfilerConfig" not in json.loads(sdk_workarounds.without_disabled_profiler(definition))["Steps"][0]["Arguments"]
    enabled = {"Type": "Training", "Name": "On", "Arguments": {"ProfilerConfig": {"DisableProfiler": False}}}
    nested = {"Type": "Training", "Name": "Off", "Arguments": {"ProfilerConfig": {"DisableProfiler": True}}}
    document = {"Steps": [enabled, {"Type": "Condition", "Name": "If", "Arguments": {"IfSteps": [nested], "ElseSteps": []}}]}
    stripped = json.loads(sdk_workarounds.without_disabled_profiler(json.dumps(document)))
    assert stripped["Steps"][0] == enabled
    assert stripped["Steps"][1]["Arguments"]["IfSteps"][0]["Arguments"] == {}
