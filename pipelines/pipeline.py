"""The imgpipe model-build pipeline: prepare images, tune, train the best, evaluate, gate, register.

::

    PrepareData --train,valid--> TuneHyperparameters --best trial--> TrainBestModel
         |                       (Bayesian, trials on a             (all images, Debugger
         |                        subset of the images)              rules, Profiler report)
         |                                                                 |
         |                                                                 v model.tar.gz
         '--------------------------- test -------------------------> EvaluateModel
                                                                           | evaluation.json
                                                                           v
                                         accuracy >= AccuracyThreshold  CheckAccuracy
                                   .--------------------------------------'   |
                                   v                                          v otherwise
        RegisterModel (ModelStep: RegisterModel-RepackModel-0 ->        AccuracyTooLow (Fail)
                       RegisterModel-RegisterModel)

Steps (SageMaker SDK v2, ``step_args`` style, one :class:`PipelineSession`):

* ``PrepareData``: ``steps/preprocess.py`` in a PyTorch ``FrameworkProcessor``; input
  ``InputDataUrl`` (class folders of images) -> outputs ``train``, ``valid``, ``test``, ``report``.
* ``TuneHyperparameters``: ``HyperparameterTuner`` (Bayesian, early stopping ``Auto``) over the
  PyTorch estimator of ``training/train.py``; objective ``valid_accuracy`` (Maximize), parsed from
  the epoch log lines. Trials train on at most ``TuningMaxTrainImages`` images.
* ``TrainBestModel``: the same estimator on all images with the best trial's hyperparameters
  (``BestTrainingJob.TunedHyperParameters``), Debugger hook + rules, Profiler report, S3
  checkpoints, optional managed spot.
* ``EvaluateModel``: ``steps/evaluate.py`` on the test split -> ``evaluation.json``
  (``PropertyFile`` ``EvaluationReport``).
* ``CheckAccuracy``: test accuracy >= ``AccuracyThreshold`` -> ``RegisterModel`` (a ``ModelStep``
  that the SDK compiles into ``RegisterModel-RepackModel-0`` (Training: puts ``inference/`` into
  ``model.tar.gz/code``) and ``RegisterModel-RegisterModel``), else ``AccuracyTooLow`` (Fail).

Implements ``get_pipeline(**kwargs)`` like AWS's SageMaker project seed code, so
``get-pipeline-definition`` and ``run-pipeline`` (and existing CodeBuild projects) can drive it.
The definition builds offline (see :mod:`pipelines.offline`): explicit bucket and role, SDK
telemetry off, no STS call. Code directories are shipped from a clean staging copy under
relative paths, so the code's S3 locations depend only on the code's content (step caching
works across checkouts and is not defeated by ``__pycache__``).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Sequence

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

import boto3  # noqa: E402
import sagemaker  # noqa: E402
from sagemaker import image_uris  # noqa: E402
from sagemaker.debugger import (  # noqa: E402
    CollectionConfig,
    DebuggerHookConfig,
    ProfilerConfig,
    ProfilerRule,
    Rule,
    rule_configs,
)
from sagemaker.inputs import TrainingInput  # noqa: E402
from sagemaker.model_metrics import MetricsSource, ModelMetrics  # noqa: E402
from sagemaker.processing import FrameworkProcessor, ProcessingInput, ProcessingOutput  # noqa: E402
from sagemaker.pytorch import PyTorch, PyTorchModel  # noqa: E402
from sagemaker.tuner import (  # noqa: E402
    CategoricalParameter,
    ContinuousParameter,
    HyperparameterTuner,
    IntegerParameter,
)
from sagemaker.workflow.condition_step import ConditionStep  # noqa: E402
from sagemaker.workflow.conditions import ConditionGreaterThanOrEqualTo  # noqa: E402
from sagemaker.workflow.execution_variables import ExecutionVariables  # noqa: E402
from sagemaker.workflow.fail_step import FailStep  # noqa: E402
from sagemaker.workflow.functions import Join, JsonGet  # noqa: E402
from sagemaker.workflow.model_step import ModelStep  # noqa: E402
from sagemaker.workflow.parameters import (  # noqa: E402
    ParameterFloat,
    ParameterInteger,
    ParameterString,
)
from sagemaker.workflow.pipeline import Pipeline  # noqa: E402
from sagemaker.workflow.pipeline_context import PipelineSession  # noqa: E402
from sagemaker.workflow.properties import PropertyFile  # noqa: E402
from sagemaker.workflow.retry import (  # noqa: E402
    SageMakerJobExceptionTypeEnum,
    SageMakerJobStepRetryPolicy,
    StepExceptionTypeEnum,
    StepRetryPolicy,
)
from sagemaker.workflow.steps import CacheConfig, ProcessingStep, TrainingStep, TuningStep  # noqa: E402

from sagemaker.s3 import s3_path_join  # noqa: E402
from sagemaker.workflow import utilities as workflow_utilities  # noqa: E402

from pipelines._utils import install_config_validation_cache, sdk_config  # noqa: E402

install_config_validation_cache()

# Repository root: holds steps/, training/ and inference/ (the container code).
CODE_ROOT = Path(__file__).resolve().parent.parent
# Directories shipped to SageMaker, relative to CODE_ROOT (the SDK sees only these).
CODE_DIRS = ("steps", "training", "inference")
SHARED_CODE = "training/imgclf"  # imported by every container script (contracts.md)

# A PyTorch version the installed SDK knows for both training and inference images.
FRAMEWORK_VERSION = "2.6.0"
PY_VERSION = "py312"

# Tuned hyperparameters (names from docs/contracts.md) and the metric regexes train.py logs.
TUNED_HYPERPARAMETERS = ("learning-rate", "batch-size", "epochs", "optimizer", "weight-decay")
METRIC_DEFINITIONS = [
    {"Name": "valid_accuracy", "Regex": "valid_accuracy=([0-9.]+)"},
    {"Name": "valid_loss", "Regex": "valid_loss=([0-9.]+)"},
    {"Name": "train_loss", "Regex": "train_loss=([0-9.]+)"},
    {"Name": "train_accuracy", "Regex": "train_accuracy=([0-9.]+)"},
    {"Name": "images_per_second", "Regex": "images_per_second=([0-9.]+)"},
]
OBJECTIVE_METRIC = "valid_accuracy"
ACCURACY_JSON_PATH = "multiclass_classification_metrics.accuracy.value"
CONTENT_TYPES = ["application/x-image", "image/jpeg", "image/png", "application/json"]
RESPONSE_TYPES = ["application/json"]

# Inputs of the activation modules, as smdebug's PyTorch hook names them ("<module>_input_<n>",
# n counting the calls of a module reused in a block; matched with re.search, hence the anchors):
# PoorWeightInitialization's collection and its activation_inputs_regex. ResNets: "relu".
# MobileNetV2/V3, EfficientNet: each Conv2dNormActivation's activation (child 2: "features.0.2",
# the last "features.N.2", "...conv.K.2", "...block.K.2") and the squeeze-excitation "activation"
# and "scale_activation". No block inputs (EfficientNet's "features.4.2" is a block: no 4 below).
ACTIVATION_INPUTS_REGEX = (
    r"^(.*\.)?(relu|activation|scale_activation|features\.(0|8|12|16|18)\.2|(conv|block)\.\d+\.2)_input_\d+$"
)
# The rule reads only the first ``steps`` (10) training steps: save those (steps 0 and 5) and no
# validation step. Every 50 steps all through the job these inputs were 2.4 GB of the 2.7 GB of
# Debugger output of the default run (batch 118, 64 px); the whole output is now 0.6 GB.
ACTIVATION_INPUTS_COLLECTION = {
    "include_regex": ACTIVATION_INPUTS_REGEX,
    "save_interval": "5",
    "end_step": "10",
    "eval.start_step": "1",  # an empty range: no EVAL-mode saves
    "eval.end_step": "1",
}

# Step names in the definition (the RegisterModel ModelStep compiles to two steps).
STEP_NAMES = (
    "PrepareData",
    "TuneHyperparameters",
    "TrainBestModel",
    "EvaluateModel",
    "CheckAccuracy",
    "RegisterModel-RepackModel-0",
    "RegisterModel-RegisterModel",
    "AccuracyTooLow",
)


def _ignore_build_litter(directory: str, names: list[str]) -> set[str]:
    return {
        n
        for n in names
        if n in ("__pycache__", ".pytest_cache", ".ipynb_checkpoints", ".DS_Store")
        or n.endswith((".pyc", ".pyo"))
    }


@contextlib.contextmanager
def staged_code(code_root: Path | str = CODE_ROOT, paths: Sequence[str] = CODE_DIRS) -> Iterator[Path]:
    """A clean copy of the code ``paths`` (directories or files, relative to ``code_root``),
    made the working directory for the duration.

    The SDK resolves ``source_dir``/``dependencies`` against the working directory, hashes the
    path strings and file contents into the code's S3 key, and (for the repack step) writes
    helper scripts into the model's ``source_dir``: staging keeps all of that off the checkout
    and independent of where it lies.
    """
    code_root = Path(code_root).resolve()
    missing = [p for p in paths if not (code_root / p).exists()]
    if missing:
        raise FileNotFoundError(f"code missing under {code_root}: {', '.join(missing)}")
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="imgpipe-code-") as tmp:
        for relative in paths:
            source, target = code_root / relative, Path(tmp) / relative
            if source.is_dir():
                shutil.copytree(source, target, ignore=_ignore_build_litter)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(previous)


class PipelinePyTorch(PyTorch):
    """The PyTorch estimator, with build-independent arguments inside a pipeline.

    SDK 2.257 hashes the code into its S3 key only for Training/Processing steps; a tuning
    step's estimator uploads to ``<base_job_name>-<timestamp>/source/`` and keeps a timestamped
    ``sagemaker_job_name`` static hyperparameter, so its cache key changed with every build.
    Here both are derived from the code's content (the same key as ``TrainBestModel``'s code),
    and the Debugger collections are listed in a fixed order (the SDK keeps them in a set).
    """

    def _assign_s3_prefix(self, key_prefix=""):
        config = workflow_utilities._pipeline_config
        if config is not None and not config.code_hash:
            code_hash = workflow_utilities.get_training_code_hash(
                self.entry_point, self.source_dir, self.dependencies or []
            )
            if code_hash:
                return s3_path_join(key_prefix, config.pipeline_name, "code", code_hash)
        return super()._assign_s3_prefix(key_prefix)

    def _prepare_collection_configs(self):
        super()._prepare_collection_configs()  # a set: its order changes from run to run
        self.collection_configs = sorted(
            self.collection_configs, key=lambda c: (c.name, sorted((c.parameters or {}).items()))
        )

    def hyperparameters(self):
        hyperparameters = super().hyperparameters()
        if workflow_utilities._pipeline_config is not None:
            hyperparameters.pop("sagemaker_job_name", None)  # set per job by SageMaker
        return hyperparameters


class ImgpipePipeline(Pipeline):
    """A :class:`Pipeline` whose definition is compiled from a staged copy of the code.

    ``definition()`` is where the SDK runs the deferred ``fit()``/``run()``/``register()`` calls
    and uploads the code; ``create``/``update``/``upsert`` all go through it.
    """

    def __init__(self, *args, code_root: Path | str = CODE_ROOT, **kwargs):
        super().__init__(*args, **kwargs)
        self.code_root = Path(code_root)

    def definition(self) -> str:
        with staged_code(self.code_root):
            return super().definition()


def session_and_role(region: Optional[str], role: Optional[str], default_bucket: Optional[str],
                     session: Optional[PipelineSession]) -> tuple[PipelineSession, str]:
    """The given session (else one for ``region``) and role (else the notebook's, if any)."""
    if session is None and not region:
        raise ValueError("get_pipeline needs a region (or a sagemaker_session)")
    session = session or get_session(region, default_bucket)
    if role:
        return session, role
    try:
        return session, sagemaker.session.get_execution_role(session)
    except Exception as exc:  # not in a SageMaker notebook: no role to discover
        raise ValueError("no IAM role given: pass role='arn:aws:iam::<account>:role/<name>' "
                         f"(could not use the notebook's execution role: {exc})") from exc


def get_session(region: str, default_bucket: Optional[str]) -> PipelineSession:
    """A PipelineSession for ``region`` with SDK telemetry off (and the user's SDK config kept)."""
    boto_session = boto3.Session(region_name=region)
    return PipelineSession(
        boto_session=boto_session,
        sagemaker_client=boto_session.client("sagemaker"),
        default_bucket=default_bucket,
        sagemaker_config=sdk_config(),
    )


def get_pipeline(
    region: Optional[str] = None,
    role: Optional[str] = None,
    default_bucket: Optional[str] = None,
    pipeline_name: str = "ImgpipeBuild",
    model_package_group_name: str = "ImgpipeModels",
    base_job_prefix: str = "imgpipe",
    sagemaker_session: Optional[PipelineSession] = None,
    framework_version: str = FRAMEWORK_VERSION,
    py_version: str = PY_VERSION,
    use_spot_instances: bool = False,
    max_run_seconds: int = 4 * 3600,
    max_wait_seconds: Optional[int] = None,
    processing_instance_type: str = "ml.m5.xlarge",
    training_instance_type: str = "ml.m5.xlarge",
    inference_instance_types: Sequence[str] = ("ml.m5.large", "ml.m5.xlarge", "ml.c5.xlarge"),
    transform_instance_types: Sequence[str] = ("ml.m5.xlarge",),
    input_data_url: Optional[str] = None,
    enable_caching: bool = True,
    cache_expire_after: str = "P30D",
    system_monitor_interval_millis: int = 500,
    sagemaker_project_name: Optional[str] = None,
    sagemaker_project_arn: Optional[str] = None,
    code_root: Path | str = CODE_ROOT,
) -> Pipeline:
    """Build the model-build pipeline (nothing is called on AWS until ``definition()``/``upsert()``).

    Args:
        region: AWS region (the image URIs, the session); required unless
            ``sagemaker_session`` is given.
        role: IAM role ARN the jobs run as. ``None``: the notebook's execution role (only works
            inside SageMaker Studio/notebooks).
        default_bucket: bucket for code, outputs, checkpoints and the default ``InputDataUrl``.
            ``None``: the SDK's ``sagemaker-<region>-<account>`` (calls STS and S3).
        pipeline_name, model_package_group_name, base_job_prefix: AWS names (the project seed's
            buildspec sets all three to ``<project name>-<project id>``).
        sagemaker_session: a ready :class:`PipelineSession` (tests, notebooks).
        framework_version, py_version: PyTorch DLC version for training, processing and the
            inference image.
        use_spot_instances: managed spot for the tuning trials and the final training
            (``max_wait_seconds`` defaults to twice ``max_run_seconds``).
        processing_instance_type, training_instance_type: defaults of the parameters of the same
            name; they also pick the CPU/GPU flavour of the images, which is fixed at build time.
        inference_instance_types, transform_instance_types: listed in the model package.
        input_data_url: default of ``InputDataUrl`` (``s3://<bucket>/<base_job_prefix>/data``).
        enable_caching, cache_expire_after: step caching of the four job steps (ISO 8601).
        system_monitor_interval_millis: Profiler system-metric sampling interval.
        sagemaker_project_name, sagemaker_project_arn: passed by SageMaker project seed
            buildspecs; recorded in the model package metadata.
        code_root: directory holding ``steps/``, ``training/`` and ``inference/``.
    """
    sagemaker_session, role = session_and_role(region, role, default_bucket, sagemaker_session)
    region = sagemaker_session.boto_region_name
    bucket = default_bucket or sagemaker_session.default_bucket()
    s3_prefix = f"s3://{bucket}/{base_job_prefix}"

    # ----------------------------------------------------------------------------- parameters
    input_data = ParameterString(
        name="InputDataUrl", default_value=input_data_url or f"{s3_prefix}/data"
    )
    processing_instance = ParameterString(
        name="ProcessingInstanceType", default_value=processing_instance_type
    )
    training_instance = ParameterString(
        name="TrainingInstanceType", default_value=training_instance_type
    )
    max_tuning_jobs = ParameterInteger(name="MaxTuningJobs", default_value=4)
    max_parallel_tuning_jobs = ParameterInteger(name="MaxParallelTuningJobs", default_value=2)
    accuracy_threshold = ParameterFloat(name="AccuracyThreshold", default_value=0.85)
    model_approval_status = ParameterString(
        name="ModelApprovalStatus",
        default_value="PendingManualApproval",
        enum_values=["PendingManualApproval", "Approved", "Rejected"],
    )
    architecture = ParameterString(name="Architecture", default_value="mobilenet_v2")
    image_size = ParameterInteger(name="ImageSize", default_value=64)
    pretrained = ParameterString(name="Pretrained", default_value="true", enum_values=["true", "false"])
    min_epochs = ParameterInteger(name="MinEpochs", default_value=2)
    max_epochs = ParameterInteger(name="MaxEpochs", default_value=5)
    tuning_max_train_images = ParameterInteger(name="TuningMaxTrainImages", default_value=1500)
    parameters = [
        input_data,
        processing_instance,
        training_instance,
        max_tuning_jobs,
        max_parallel_tuning_jobs,
        accuracy_threshold,
        model_approval_status,
        architecture,
        image_size,
        pretrained,
        min_epochs,
        max_epochs,
        tuning_max_train_images,
    ]

    cache_config = CacheConfig(enable_caching=enable_caching, expire_after=cache_expire_after)
    throttling_retry = StepRetryPolicy(
        exception_types=[StepExceptionTypeEnum.THROTTLING, StepExceptionTypeEnum.SERVICE_FAULT],
        interval_seconds=10,
        backoff_rate=2.0,
        max_attempts=5,
    )
    capacity_retry = SageMakerJobStepRetryPolicy(
        exception_types=[
            SageMakerJobExceptionTypeEnum.CAPACITY_ERROR,
            SageMakerJobExceptionTypeEnum.RESOURCE_LIMIT,
            SageMakerJobExceptionTypeEnum.INTERNAL_ERROR,
        ],
        interval_seconds=60,
        backoff_rate=2.0,
        max_attempts=4,
    )
    job_retries = [throttling_retry, capacity_retry]

    def image(scope: str, instance_type: str) -> str:
        return image_uris.retrieve(
            framework="pytorch",
            region=region,
            version=framework_version,
            py_version=py_version,
            instance_type=instance_type,
            image_scope=scope,
        )

    processing_image = image("training", processing_instance_type)
    training_image = image("training", training_instance_type)

    def processor(name: str) -> FrameworkProcessor:
        """A PyTorch processing job on ``ProcessingInstanceType`` (the scripts need torch)."""
        return FrameworkProcessor(
            estimator_cls=PyTorch,
            framework_version=framework_version,
            py_version=py_version,
            image_uri=processing_image,
            role=role,
            instance_type=processing_instance,
            instance_count=1,
            base_job_name=f"{base_job_prefix}-{name}",
            sagemaker_session=sagemaker_session,
        )

    # ----------------------------------------------------------------------------- PrepareData
    step_process = ProcessingStep(
        name="PrepareData",
        description="Split class folders of images into train/valid/test; report classes.",
        step_args=processor("prepare-data").run(
            code="preprocess.py",
            source_dir="steps",
            dependencies=[SHARED_CODE],
            inputs=[ProcessingInput(source=input_data, destination="/opt/ml/processing/input/data")],
            outputs=[
                ProcessingOutput(output_name=name, source=f"/opt/ml/processing/output/{name}")
                for name in ("train", "valid", "test", "report")
            ],
            arguments=[
                "--input-dir", "/opt/ml/processing/input/data",
                "--output-dir", "/opt/ml/processing/output",
                "--valid-ratio", "0.1",
                "--test-ratio", "0.1",
                "--seed", "42",
            ],
        ),
        cache_config=cache_config,
        retry_policies=job_retries,
    )
    outputs = step_process.properties.ProcessingOutputConfig.Outputs
    channels = {
        name: TrainingInput(s3_data=outputs[name].S3Output.S3Uri) for name in ("train", "valid")
    }

    # ----------------------------------------------------------------------------- tuning
    spot = {}
    if use_spot_instances:
        spot = dict(use_spot_instances=True, max_wait=max_wait_seconds or 2 * max_run_seconds)
    static_hyperparameters = {
        # Framework estimators JSON-encode static hyperparameters; do the same for the
        # string parameter so every value decodes alike (the toolkit json.loads each one).
        "arch": Join(on="", values=['"', architecture, '"']),
        "image-size": image_size,
        "pretrained": Join(on="", values=['"', pretrained, '"']),
        "freeze-backbone": "false",
        "momentum": 0.9,
        "early-stopping-patience": 2,
        "seed": 42,
    }

    def estimator(name: str, hyperparameters: dict, **extra) -> PyTorch:
        return PipelinePyTorch(
            entry_point="train.py",
            source_dir="training",
            framework_version=framework_version,
            py_version=py_version,
            image_uri=training_image,
            role=role,
            instance_type=training_instance,
            instance_count=1,
            output_path=f"{s3_prefix}/{name}",
            base_job_name=f"{base_job_prefix}-{name}",
            hyperparameters=hyperparameters,
            metric_definitions=METRIC_DEFINITIONS,
            max_run=max_run_seconds,
            sagemaker_session=sagemaker_session,
            **spot,
            **extra,
        )

    tuning_estimator = estimator(
        "tuning",
        {**static_hyperparameters, "max-train-images": tuning_max_train_images},
        disable_profiler=True,  # per-trial profiling is noise; the final job is profiled
    )
    tuner = HyperparameterTuner(
        estimator=tuning_estimator,
        objective_metric_name=OBJECTIVE_METRIC,
        objective_type="Maximize",
        metric_definitions=METRIC_DEFINITIONS,
        hyperparameter_ranges={
            "learning-rate": ContinuousParameter(3e-4, 3e-2, scaling_type="Logarithmic"),
            "batch-size": IntegerParameter(32, 128, scaling_type="Linear"),
            "epochs": IntegerParameter(min_epochs, max_epochs, scaling_type="Linear"),
            "optimizer": CategoricalParameter(["sgd", "adam", "adamw"]),
            "weight-decay": ContinuousParameter(1e-6, 1e-2, scaling_type="Logarithmic"),
        },
        strategy="Bayesian",
        early_stopping_type="Auto",
        max_jobs=max_tuning_jobs,
        max_parallel_jobs=max_parallel_tuning_jobs,
        base_tuning_job_name=f"{base_job_prefix}-hpo",
    )
    step_tune = TuningStep(
        name="TuneHyperparameters",
        description="Bayesian search of learning rate, batch size, epochs, optimizer, weight decay.",
        step_args=tuner.fit(inputs=channels),
        cache_config=cache_config,
        retry_policies=job_retries,
    )
    best = step_tune.properties.BestTrainingJob

    # ----------------------------------------------------------------------------- final training
    # One set of collections for the hook and the rules: a rule's default collections (save
    # interval 500 steps: a handful of saves in a small job) would be added next to these.
    collections = {
        "losses": CollectionConfig(name="losses", parameters={"save_interval": "10"}),
        "weights": CollectionConfig(name="weights", parameters={"save_interval": "50"}),
        "gradients": CollectionConfig(name="gradients", parameters={"save_interval": "50"}),
        "activation_inputs": CollectionConfig(
            name="activation_inputs",
            parameters=ACTIVATION_INPUTS_COLLECTION,
        ),
    }

    def rule(config, *names, **parameters):
        return Rule.sagemaker(config, rule_parameters=parameters or None,
                              collections_to_save=[collections[n] for n in names])

    train_estimator = estimator(
        "training",
        {
            **static_hyperparameters,
            "max-train-images": 0,  # all images
            **{name: best.TunedHyperParameters[name] for name in TUNED_HYPERPARAMETERS},
        },
        # Checkpoints belong to the best trial's configuration: a retried or spot-interrupted
        # job resumes from them, and a cached tuning step keeps the final step cacheable too.
        checkpoint_s3_uri=Join(on="/", values=[f"{s3_prefix}/checkpoints", best.TrainingJobName]),
        profiler_config=ProfilerConfig(
            system_monitor_interval_millis=system_monitor_interval_millis
        ),
        debugger_hook_config=DebuggerHookConfig(
            s3_output_path=f"{s3_prefix}/debugger",
            collection_configs=[collections[n] for n in ("losses", "weights", "gradients")],
        ),
        rules=[
            rule(rule_configs.loss_not_decreasing(), "losses"),
            rule(rule_configs.vanishing_gradient(), "gradients"),
            rule(rule_configs.overfit(), "losses"),
            rule(rule_configs.overtraining(), "losses"),
            # Its default activation_inputs_regex (".*relu_input") matches no tensor of MobileNet
            # or EfficientNet (ReLU6/SiLU modules named by position): the collection's regex.
            rule(rule_configs.poor_weight_initialization(), "activation_inputs",
                 activation_inputs_regex=ACTIVATION_INPUTS_REGEX),
            ProfilerRule.sagemaker(rule_configs.ProfilerReport()),
        ],
    )
    step_train = TrainingStep(
        name="TrainBestModel",
        description="Train on all images with the best trial's hyperparameters.",
        step_args=train_estimator.fit(inputs=channels),
        cache_config=cache_config,
        retry_policies=job_retries,
    )
    model_data = step_train.properties.ModelArtifacts.S3ModelArtifacts

    # ----------------------------------------------------------------------------- evaluation
    evaluation_report = PropertyFile(
        name="EvaluationReport", output_name="evaluation", path="evaluation.json"
    )
    step_eval = ProcessingStep(
        name="EvaluateModel",
        description="Accuracy, per-class accuracy and confusion matrix on the test split.",
        step_args=processor("evaluate").run(
            code="evaluate.py",
            source_dir="steps",
            dependencies=[SHARED_CODE],
            inputs=[
                ProcessingInput(source=model_data, destination="/opt/ml/processing/model"),
                ProcessingInput(
                    source=outputs["test"].S3Output.S3Uri, destination="/opt/ml/processing/test"
                ),
            ],
            outputs=[
                ProcessingOutput(output_name="evaluation", source="/opt/ml/processing/evaluation")
            ],
            arguments=[
                "--model-dir", "/opt/ml/processing/model",
                "--test-dir", "/opt/ml/processing/test",
                "--output-dir", "/opt/ml/processing/evaluation",
            ],
        ),
        property_files=[evaluation_report],
        cache_config=cache_config,
        retry_policies=job_retries,
    )
    evaluation_uri = step_eval.properties.ProcessingOutputConfig.Outputs[
        "evaluation"
    ].S3Output.S3Uri
    test_accuracy = JsonGet(
        step_name=step_eval.name, property_file=evaluation_report, json_path=ACCURACY_JSON_PATH
    )

    # ----------------------------------------------------------------------------- registration
    model = PyTorchModel(
        model_data=model_data,
        entry_point="inference.py",
        source_dir="inference",
        dependencies=[SHARED_CODE],
        framework_version=framework_version,
        py_version=py_version,
        role=role,
        sagemaker_session=sagemaker_session,
    )
    # CustomerMetadataProperties values must match [\p{L}\p{Z}\p{N}_.:/=+\-@]*: the JSON-quoted
    # categorical "optimizer" value cannot go here (it is in model.json and the best job).
    metadata = {
        "best_training_job": best.TrainingJobName,
        **{f"hp_{n.replace('-', '_')}": best.TunedHyperParameters[n]
           for n in ("learning-rate", "batch-size", "epochs", "weight-decay")},
        "architecture": architecture,
        "image_size": Join(on="", values=[image_size]),
        "input_data_url": input_data,
        # held-out images the deploy pipeline's smoke test sends to the endpoint
        "test_data_url": outputs["test"].S3Output.S3Uri,
        "test_accuracy": Join(on="", values=[test_accuracy]),
        "pipeline_execution_id": ExecutionVariables.PIPELINE_EXECUTION_ID,
        "pipeline_execution_arn": ExecutionVariables.PIPELINE_EXECUTION_ARN,
    }
    if sagemaker_project_name:
        metadata["sagemaker_project_name"] = sagemaker_project_name
    step_register = ModelStep(
        name="RegisterModel",
        description="Register the evaluated model (with inference code) in the package group.",
        step_args=model.register(
            content_types=CONTENT_TYPES,
            response_types=RESPONSE_TYPES,
            inference_instances=list(inference_instance_types),
            transform_instances=list(transform_instance_types),
            model_package_group_name=model_package_group_name,
            approval_status=model_approval_status,
            model_metrics=ModelMetrics(
                model_statistics=MetricsSource(
                    s3_uri=Join(on="/", values=[evaluation_uri, "evaluation.json"]),
                    content_type="application/json",
                )
            ),
            customer_metadata_properties=metadata,
            description="imgpipe image classifier (PyTorch); metrics from evaluation.json.",
            domain="COMPUTER_VISION",
            task="IMAGE_CLASSIFICATION",
            framework="PYTORCH",
            framework_version=framework_version,
        ),
        retry_policies=[throttling_retry],
        # The repack job's output (the model.tar.gz with code/ that gets registered) under the
        # project's prefix instead of s3://<bucket>/pytorch-inference-<timestamp>.
        repack_model_step_settings={"output_path": f"{s3_prefix}/registered-models"},
    )
    step_fail = FailStep(
        name="AccuracyTooLow",
        description="Stop without registering: the model is not accurate enough.",
        error_message=Join(
            on=" ",
            values=[
                "Test accuracy",
                test_accuracy,
                "is below AccuracyThreshold",
                accuracy_threshold,
                "- model not registered.",
            ],
        ),
    )
    step_check = ConditionStep(
        name="CheckAccuracy",
        description="Register only if test accuracy >= AccuracyThreshold.",
        conditions=[ConditionGreaterThanOrEqualTo(left=test_accuracy, right=accuracy_threshold)],
        if_steps=[step_register],
        else_steps=[step_fail],
    )

    return ImgpipePipeline(
        name=pipeline_name,
        parameters=parameters,
        steps=[step_process, step_tune, step_train, step_eval, step_check],
        sagemaker_session=sagemaker_session,
        code_root=code_root,
    )
