"""The imgpipe model-build pipeline: prepare images, tune, train the best, evaluate, gate, register.

::

    PrepareData --train,valid--> TuneHyperparameters --best trial--> TrainBestModel
         |                       (Bayesian, trials on a             (all images, event files for
         |                        subset of the images)              the insights; with Debugger:
         |                                                           hook, rules, Profiler report)
         |                                                           |                  |
         |                                              TensorBoard  v                  | model.tar.gz
         |                                              event files  AnalyzeTraining    |
         |                                                           | training_insights.json
         '--------------------------- test -------------------------------------> EvaluateModel
                                                                     v                  | evaluation.json
                   FailOnTrainingIssues=false or no issues    CheckTraining  --otherwise--> TrainingIssuesFound (Fail)
                                   .---------------------------------'                  |
                                   v                                                    |
                             CheckAccuracy <--------------------------------------------'
         accuracy >= AccuracyThreshold |                    | otherwise
                                   v                        v
        RegisterModel (ModelStep: RegisterModel-RepackModel-0 ->        AccuracyTooLow (Fail)
                       RegisterModel-RegisterModel)

Steps (SageMaker SDK v2, ``step_args`` style, one :class:`PipelineSession`):

* ``PrepareData``: ``steps/preprocess.py`` in a PyTorch ``FrameworkProcessor``; input
  ``InputDataUrl`` (class folders of images) -> outputs ``train``, ``valid``, ``test``, ``report``.
* ``TuneHyperparameters``: ``HyperparameterTuner`` (Bayesian, early stopping ``Auto``) over the
  PyTorch estimator of ``training/train.py``; objective ``valid_accuracy`` (Maximize), parsed from
  the epoch log lines. Trials train on at most ``TuningMaxTrainImages`` images.
* ``TrainBestModel``: the same estimator on all images with the best trial's hyperparameters
  (``BestTrainingJob.TunedHyperParameters``), ``TensorBoardOutputConfig`` (train.py records what
  the training-insight rules read there), S3 checkpoints, optional managed spot; with
  ``sagemaker_debugger`` (default) also the Debugger hook + rules, the Profiler report and
  smdebug installed from a ``requirements.txt`` in its code.
* ``AnalyzeTraining``: ``steps/analyze_training.py`` on TrainBestModel's TensorBoard output ->
  ``training_insights.json`` (``PropertyFile`` ``TrainingInsights``): the five rules and the
  profiler findings, on every account.
* ``EvaluateModel``: ``steps/evaluate.py`` on the test split -> ``evaluation.json``
  (``PropertyFile`` ``EvaluationReport``).
* ``CheckTraining``: ``FailOnTrainingIssues`` is ``false`` (default) or no rule found issues ->
  ``CheckAccuracy``, else ``TrainingIssuesFound`` (Fail, naming the rules).
* ``CheckAccuracy``: test accuracy >= ``AccuracyThreshold`` -> ``RegisterModel`` (a ``ModelStep``
  that the SDK compiles into ``RegisterModel-RepackModel-0`` (Training: puts ``inference/`` into
  ``model.tar.gz/code``) and ``RegisterModel-RegisterModel``), else ``AccuracyTooLow`` (Fail).

Code map: :func:`build_parameters` declares the pipeline parameters, :class:`BuildContext` holds
what every step shares (session, role, images, prefixes, cache config, retry policies, the
parameters), and one builder per step (``prepare_data_step`` ... ``check_accuracy_step``) makes
each step from the context and the steps it reads from. SDK workarounds live in
:mod:`pipelines.sdk_workarounds`.

Implements ``get_pipeline(**kwargs)`` like AWS's SageMaker project seed code, so
``get-pipeline-definition`` and ``run-pipeline`` (and existing CodeBuild projects) can drive it.
The definition builds offline (see :mod:`pipelines.offline`): explicit bucket and role, SDK
telemetry off, no STS call. Code directories are shipped from a clean staging copy under
relative paths, so the code's S3 locations depend only on the code's content (step caching
works across checkouts and is not defeated by ``__pycache__``).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Sequence

from sagemaker import image_uris
from sagemaker.debugger import (
    CollectionConfig,
    DebuggerHookConfig,
    ProfilerConfig,
    ProfilerRule,
    Rule,
    rule_configs,
)
from sagemaker.debugger.debugger import TensorBoardOutputConfig
from sagemaker.inputs import TrainingInput
from sagemaker.model_metrics import MetricsSource, ModelMetrics
from sagemaker.processing import FrameworkProcessor, ProcessingInput, ProcessingOutput
from sagemaker.pytorch import PyTorch, PyTorchModel
from sagemaker.tuner import (
    CategoricalParameter,
    ContinuousParameter,
    HyperparameterTuner,
    IntegerParameter,
)
from sagemaker.workflow.condition_step import ConditionStep
from sagemaker.workflow.conditions import ConditionEquals, ConditionGreaterThanOrEqualTo, ConditionOr
from sagemaker.workflow.execution_variables import ExecutionVariables
from sagemaker.workflow.fail_step import FailStep
from sagemaker.workflow.functions import Join, JsonGet
from sagemaker.workflow.model_step import ModelStep
from sagemaker.workflow.parameters import (
    Parameter,
    ParameterFloat,
    ParameterInteger,
    ParameterString,
)
from sagemaker.workflow.pipeline import Pipeline
from sagemaker.workflow.pipeline_context import PipelineSession
from sagemaker.workflow.properties import PropertyFile
from sagemaker.workflow.retry import (
    RetryPolicy,
    SageMakerJobExceptionTypeEnum,
    SageMakerJobStepRetryPolicy,
    StepExceptionTypeEnum,
    StepRetryPolicy,
)
from sagemaker.workflow.steps import CacheConfig, ProcessingStep, TrainingStep, TuningStep

from pipelines.parameter_guards import Bound, parameter_guard
from pipelines.sdk_session import Account, resolve_account
from pipelines.sdk_workarounds import StableBuildEstimator, cached_config_validation
from pipelines.staged_code import CODE_ROOT, DEBUGGER_REQUIREMENTS, ImgpipePipeline
from imgclf.insights import rule_arguments

# The smallest ImageSize train.py runs with: torchvision's own minimum for every listed
# architecture is 1 px (the weights' meta "min_size"), the batch augmentation's reflect padding
# needs 2 (imgclf.data.MIN_AUGMENT_SIZE); tests/test_parameter_ranges.py derives it again.
MIN_IMAGE_SIZE = 2
# imgclf.models.ARCHITECTURES (tests check they match): the Architecture parameter's enum.
ARCHITECTURE_NAMES = ("efficientnet_b0", "efficientnet_b7", "mobilenet_v2", "mobilenet_v3_large",
                      "mobilenet_v3_small", "resnet101", "resnet18", "resnet34", "resnet50")
SHARED_CODE = "training/imgclf"  # imported by every container script (contracts.md)
# Where train.py records the training-insight event files (the job's TensorBoardOutputConfig).
TENSORBOARD_LOCAL_PATH = "/opt/ml/output/tensorboard"

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


class PipelinePyTorch(StableBuildEstimator, PyTorch):
    """The PyTorch estimator with the SDK workarounds that keep a build's cache keys stable."""


class ParameterSet:
    """A frozen dataclass of pipeline parameters; :meth:`all` lists them in declaration order."""

    def all(self) -> list[Parameter]:
        """Every parameter, in declaration order (the order the definition lists them)."""
        return [getattr(self, f.name) for f in fields(self)]


@dataclass(frozen=True)
class BuildParameters(ParameterSet):
    """The pipeline parameters (execution-time inputs), in the order the definition lists them."""

    input_data: ParameterString
    processing_instance: ParameterString
    training_instance: ParameterString
    max_tuning_jobs: ParameterInteger
    max_parallel_tuning_jobs: ParameterInteger
    accuracy_threshold: ParameterFloat
    model_approval_status: ParameterString
    architecture: ParameterString
    image_size: ParameterInteger
    pretrained: ParameterString
    min_epochs: ParameterInteger
    max_epochs: ParameterInteger
    tuning_max_train_images: ParameterInteger
    fail_on_training_issues: ParameterString



def build_parameters(input_data_url: str, processing_instance_type: str,
                     training_instance_type: str) -> BuildParameters:
    """The parameters of the build pipeline with their defaults."""
    return BuildParameters(
        input_data=ParameterString(name="InputDataUrl", default_value=input_data_url),
        processing_instance=ParameterString(
            name="ProcessingInstanceType", default_value=processing_instance_type
        ),
        training_instance=ParameterString(
            name="TrainingInstanceType", default_value=training_instance_type
        ),
        max_tuning_jobs=ParameterInteger(name="MaxTuningJobs", default_value=4),
        max_parallel_tuning_jobs=ParameterInteger(name="MaxParallelTuningJobs", default_value=2),
        accuracy_threshold=ParameterFloat(name="AccuracyThreshold", default_value=0.85),
        model_approval_status=ParameterString(
            name="ModelApprovalStatus",
            default_value="PendingManualApproval",
            enum_values=["PendingManualApproval", "Approved", "Rejected"],
        ),
        architecture=ParameterString(name="Architecture", default_value="mobilenet_v2",
                                     enum_values=list(ARCHITECTURE_NAMES)),
        image_size=ParameterInteger(name="ImageSize", default_value=64),
        pretrained=ParameterString(name="Pretrained", default_value="true",
                                   enum_values=["true", "false"]),
        min_epochs=ParameterInteger(name="MinEpochs", default_value=2),
        max_epochs=ParameterInteger(name="MaxEpochs", default_value=5),
        tuning_max_train_images=ParameterInteger(name="TuningMaxTrainImages", default_value=1500),
        fail_on_training_issues=ParameterString(name="FailOnTrainingIssues", default_value="false",
                                                enum_values=["true", "false"]),
    )


def check_parameters_step(params: BuildParameters) -> ConditionStep:
    """``CheckParameters``: the ranges the jobs can run with (else ``InvalidParameters`` fails
    the execution before its first job; the local engine refuses them up front)."""
    return parameter_guard("CheckParameters", "InvalidParameters", [
        Bound(params.min_epochs, minimum=1, maximum=params.max_epochs),
        Bound(params.accuracy_threshold, minimum=0, maximum=1),
        Bound(params.image_size, minimum=MIN_IMAGE_SIZE),
        Bound(params.tuning_max_train_images, minimum=0),
    ])


def throttling_retry() -> StepRetryPolicy:
    """Retry a step that AWS throttled or failed on its side."""
    return StepRetryPolicy(
        exception_types=[StepExceptionTypeEnum.THROTTLING, StepExceptionTypeEnum.SERVICE_FAULT],
        interval_seconds=10,
        backoff_rate=2.0,
        max_attempts=5,
    )


def capacity_retry() -> SageMakerJobStepRetryPolicy:
    """Retry a job that found no capacity, hit a resource limit or an internal error."""
    return SageMakerJobStepRetryPolicy(
        exception_types=[
            SageMakerJobExceptionTypeEnum.CAPACITY_ERROR,
            SageMakerJobExceptionTypeEnum.RESOURCE_LIMIT,
            SageMakerJobExceptionTypeEnum.INTERNAL_ERROR,
        ],
        interval_seconds=60,
        backoff_rate=2.0,
        max_attempts=4,
    )


def pytorch_image(region: str, framework_version: str, py_version: str, instance_type: str) -> str:
    """The PyTorch training image (also used for processing) for the instance type's flavour."""
    return image_uris.retrieve(
        framework="pytorch",
        region=region,
        version=framework_version,
        py_version=py_version,
        instance_type=instance_type,
        image_scope="training",
    )


@dataclass(frozen=True)
class BuildContext:
    """What every step builder of the build pipeline shares."""

    account: Account
    params: BuildParameters
    base_job_prefix: str
    framework_version: str
    py_version: str
    processing_image: str
    training_image: str
    cache_config: CacheConfig
    throttling_retry: StepRetryPolicy
    job_retries: list[RetryPolicy]
    spot: dict
    max_run_seconds: int
    system_monitor_interval_millis: int
    sagemaker_debugger: bool = True

    @property
    def s3_prefix(self) -> str:
        """``s3://<bucket>/<base_job_prefix>``: outputs, checkpoints, Debugger data."""
        return f"s3://{self.account.bucket}/{self.base_job_prefix}"


def processor(ctx: BuildContext, name: str) -> FrameworkProcessor:
    """A PyTorch processing job on ``ProcessingInstanceType`` (the scripts need torch)."""
    return FrameworkProcessor(
        estimator_cls=PyTorch,
        framework_version=ctx.framework_version,
        py_version=ctx.py_version,
        image_uri=ctx.processing_image,
        role=ctx.account.role,
        instance_type=ctx.params.processing_instance,
        instance_count=1,
        base_job_name=f"{ctx.base_job_prefix}-{name}",
        sagemaker_session=ctx.account.session,
    )


def estimator(ctx: BuildContext, name: str, hyperparameters: dict, **extra) -> PyTorch:
    """``training/train.py`` on ``TrainingInstanceType``, outputs under ``<prefix>/<name>``."""
    return PipelinePyTorch(
        entry_point="train.py",
        source_dir="training",
        framework_version=ctx.framework_version,
        py_version=ctx.py_version,
        image_uri=ctx.training_image,
        role=ctx.account.role,
        instance_type=ctx.params.training_instance,
        instance_count=1,
        output_path=f"{ctx.s3_prefix}/{name}",
        base_job_name=f"{ctx.base_job_prefix}-{name}",
        hyperparameters=hyperparameters,
        metric_definitions=METRIC_DEFINITIONS,
        max_run=ctx.max_run_seconds,
        sagemaker_session=ctx.account.session,
        **ctx.spot,
        **extra,
    )


def static_hyperparameters(params: BuildParameters) -> dict:
    """Hyperparameters the tuning trials and the final training share."""
    return {
        # Framework estimators JSON-encode static hyperparameters; do the same for the
        # string parameter so every value decodes alike (the toolkit json.loads each one).
        "arch": Join(on="", values=['"', params.architecture, '"']),
        "image-size": params.image_size,
        "pretrained": Join(on="", values=['"', params.pretrained, '"']),
        "freeze-backbone": "false",
        "momentum": 0.9,
        "early-stopping-patience": 2,
        "seed": 42,
    }


def prepared_output(prepared: ProcessingStep, name: str):
    """The S3 URI of PrepareData's output ``name`` (train, valid, test, report)."""
    return prepared.properties.ProcessingOutputConfig.Outputs[name].S3Output.S3Uri


def training_channels(prepared: ProcessingStep) -> dict[str, TrainingInput]:
    """The ``train`` and ``valid`` channels, from PrepareData's outputs."""
    return {name: TrainingInput(s3_data=prepared_output(prepared, name)) for name in ("train", "valid")}


def prepare_data_step(ctx: BuildContext) -> ProcessingStep:
    """``PrepareData``: class folders of images -> train/valid/test splits and a report."""
    return ProcessingStep(
        name="PrepareData",
        description="Split class folders of images into train/valid/test; report classes.",
        step_args=processor(ctx, "prepare-data").run(
            code="preprocess.py",
            source_dir="steps",
            dependencies=[SHARED_CODE],
            inputs=[ProcessingInput(source=ctx.params.input_data,
                                    destination="/opt/ml/processing/input/data")],
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
        cache_config=ctx.cache_config,
        retry_policies=ctx.job_retries,
    )


def tuning_step(ctx: BuildContext, prepared: ProcessingStep) -> TuningStep:
    """``TuneHyperparameters``: Bayesian search over trials on a subset of the images."""
    params = ctx.params
    tuning_estimator = estimator(
        ctx,
        "tuning",
        {**static_hyperparameters(params), "max-train-images": params.tuning_max_train_images},
        disable_profiler=True,  # per-trial profiling is noise; the final job is profiled
        **({} if ctx.sagemaker_debugger else {"debugger_hook_config": False}),
    )
    tuner = HyperparameterTuner(
        estimator=tuning_estimator,
        objective_metric_name=OBJECTIVE_METRIC,
        objective_type="Maximize",
        metric_definitions=METRIC_DEFINITIONS,
        hyperparameter_ranges={
            "learning-rate": ContinuousParameter(3e-4, 3e-2, scaling_type="Logarithmic"),
            "batch-size": IntegerParameter(32, 128, scaling_type="Linear"),
            "epochs": IntegerParameter(params.min_epochs, params.max_epochs, scaling_type="Linear"),
            "optimizer": CategoricalParameter(["sgd", "adam", "adamw"]),
            "weight-decay": ContinuousParameter(1e-6, 1e-2, scaling_type="Logarithmic"),
        },
        strategy="Bayesian",
        early_stopping_type="Auto",
        max_jobs=params.max_tuning_jobs,
        max_parallel_jobs=params.max_parallel_tuning_jobs,
        base_tuning_job_name=f"{ctx.base_job_prefix}-hpo",
    )
    return TuningStep(
        name="TuneHyperparameters",
        description="Bayesian search of learning rate, batch size, epochs, optimizer, weight decay.",
        step_args=tuner.fit(inputs=training_channels(prepared)),
        cache_config=ctx.cache_config,
        retry_policies=ctx.job_retries,
    )


def debugger_collections() -> dict[str, CollectionConfig]:
    """One set of collections for the hook and the rules: a rule's default collections (save
    interval 500 steps: a handful of saves in a small job) would be added next to these."""
    # The job's TensorBoardOutputConfig (AnalyzeTraining's input) makes smdebug's hook write
    # TensorBoard summaries there too: no histograms (2 MB at step 0 of the default run, read by
    # nothing); the rules read the saved tensors, not these.
    no_histograms = {"save_histogram": "false"}
    return {
        "losses": CollectionConfig(name="losses", parameters={"save_interval": "10", **no_histograms}),
        "weights": CollectionConfig(name="weights", parameters={"save_interval": "50", **no_histograms}),
        "gradients": CollectionConfig(name="gradients", parameters={"save_interval": "50", **no_histograms}),
        "activation_inputs": CollectionConfig(
            name="activation_inputs",
            parameters={**ACTIVATION_INPUTS_COLLECTION, **no_histograms},
        ),
    }


def debugger_rules(collections: dict[str, CollectionConfig]) -> list:
    """The Debugger rules of the final training, and the Profiler report."""

    def rule(config, *names, **parameters):
        return Rule.sagemaker(config, rule_parameters=parameters or None,
                              collections_to_save=[collections[n] for n in names])

    return [
        rule(rule_configs.loss_not_decreasing(), "losses"),
        rule(rule_configs.vanishing_gradient(), "gradients"),
        rule(rule_configs.overfit(), "losses"),
        rule(rule_configs.overtraining(), "losses"),
        # Its default activation_inputs_regex (".*relu_input") matches no tensor of MobileNet
        # or EfficientNet (ReLU6/SiLU modules named by position): the collection's regex.
        rule(rule_configs.poor_weight_initialization(), "activation_inputs",
             activation_inputs_regex=ACTIVATION_INPUTS_REGEX),
        ProfilerRule.sagemaker(rule_configs.ProfilerReport()),
    ]


def debugger_settings(ctx: BuildContext) -> dict:
    """TrainBestModel's SageMaker Debugger and Profiler arguments: the hook, the rules, the
    Profiler config and report, and smdebug installed in the container (``requirements.txt``)
    with ``ctx.sagemaker_debugger``; explicitly none of them without."""
    if not ctx.sagemaker_debugger:
        return {"debugger_hook_config": False, "disable_profiler": True}
    collections = debugger_collections()
    return {
        "profiler_config": ProfilerConfig(system_monitor_interval_millis=ctx.system_monitor_interval_millis),
        "debugger_hook_config": DebuggerHookConfig(
            s3_output_path=f"{ctx.s3_prefix}/debugger",
            collection_configs=[collections[n] for n in ("losses", "weights", "gradients")],
        ),
        "rules": debugger_rules(collections),
        # at the code tarball's root, where SageMaker's training toolkit pip-installs it
        "dependencies": [DEBUGGER_REQUIREMENTS],
    }


def tensorboard_prefix(ctx: BuildContext) -> str:
    """Where TrainBestModel's TensorBoard event files go: ``<this>/<job name>/tensorboard-output``."""
    return f"{ctx.s3_prefix}/tensorboard"


def training_step(ctx: BuildContext, prepared: ProcessingStep, tuned: TuningStep) -> TrainingStep:
    """``TrainBestModel``: all images, the best trial's hyperparameters, the training-insight
    recording (TensorBoard event files) and, with SageMaker Debugger on, Debugger and Profiler."""
    best = tuned.properties.BestTrainingJob
    train_estimator = estimator(
        ctx,
        "training",
        {
            **static_hyperparameters(ctx.params),
            "max-train-images": 0,  # all images
            **{name: best.TunedHyperParameters[name] for name in TUNED_HYPERPARAMETERS},
        },
        # Checkpoints belong to the best trial's configuration: a retried or spot-interrupted
        # job resumes from them, and a cached tuning step keeps the final step cacheable too.
        checkpoint_s3_uri=Join(on="/", values=[f"{ctx.s3_prefix}/checkpoints", best.TrainingJobName]),
        # train.py records what AnalyzeTraining reads into this LocalPath; SageMaker uploads it.
        tensorboard_output_config=TensorBoardOutputConfig(
            s3_output_path=tensorboard_prefix(ctx), container_local_output_path=TENSORBOARD_LOCAL_PATH,
        ),
        **debugger_settings(ctx),
    )
    return TrainingStep(
        name="TrainBestModel",
        description="Train on all images with the best trial's hyperparameters.",
        step_args=train_estimator.fit(inputs=training_channels(prepared)),
        cache_config=ctx.cache_config,
        retry_policies=ctx.job_retries,
    )


def analysis_step(ctx: BuildContext, trained: TrainingStep) -> ProcessingStep:
    """``AnalyzeTraining``: the five rules and the profiler findings on what train.py recorded
    -> ``training_insights.json`` (``PropertyFile`` ``TrainingInsights``)."""
    insights_file = PropertyFile(name="TrainingInsights", output_name="insights", path="training_insights.json")
    recorded = Join(on="/", values=[tensorboard_prefix(ctx), trained.properties.TrainingJobName, "tensorboard-output"])
    return ProcessingStep(
        name="AnalyzeTraining",
        description="Training-insight rules (loss, gradients, overfit, overtraining, initialisation) and profiler findings.",
        step_args=processor(ctx, "analyze-training").run(
            code="analyze_training.py",
            source_dir="steps",
            dependencies=[SHARED_CODE],
            inputs=[ProcessingInput(source=recorded, destination="/opt/ml/processing/input/tensorboard")],
            outputs=[ProcessingOutput(output_name="insights", source="/opt/ml/processing/insights")],
            arguments=[
                "--tensorboard-dir", "/opt/ml/processing/input/tensorboard",
                "--output-dir", "/opt/ml/processing/insights",
                *rule_arguments(),
            ],
        ),
        property_files=[insights_file],
        cache_config=ctx.cache_config,
        retry_policies=ctx.job_retries,
    )


def training_issues_of(analyzed: ProcessingStep, json_path: str) -> JsonGet:
    """A value of AnalyzeTraining's ``training_insights.json``."""
    return JsonGet(step_name=analyzed.name, property_file=analyzed.property_files[0], json_path=json_path)


def training_issues_fail_step(analyzed: ProcessingStep) -> FailStep:
    """``TrainingIssuesFound``: stop without registering, naming the rules that found issues."""
    return FailStep(
        name="TrainingIssuesFound",
        description="Stop without registering: a training-insight rule found issues (FailOnTrainingIssues=true).",
        error_message=Join(on=" ", values=[
            "Training-insight rules found issues:", training_issues_of(analyzed, "issue_summary"),
            "- model not registered (FailOnTrainingIssues=true).",
        ]),
    )


def check_training_step(ctx: BuildContext, analyzed: ProcessingStep, then: ConditionStep) -> ConditionStep:
    """``CheckTraining``: go on to ``then`` (CheckAccuracy) unless ``FailOnTrainingIssues`` is
    ``true`` and a rule found issues; then fail."""
    return ConditionStep(
        name="CheckTraining",
        description="Go on unless FailOnTrainingIssues=true and a training-insight rule found issues.",
        conditions=[ConditionOr(conditions=[
            ConditionEquals(left=ctx.params.fail_on_training_issues, right="false"),
            ConditionEquals(left=training_issues_of(analyzed, "issues_found"), right=0),
        ])],
        if_steps=[then],
        else_steps=[training_issues_fail_step(analyzed)],
    )


def model_data(trained: TrainingStep):
    """The S3 URI of the final training's ``model.tar.gz``."""
    return trained.properties.ModelArtifacts.S3ModelArtifacts


def evaluation_step(ctx: BuildContext, prepared: ProcessingStep, trained: TrainingStep) -> ProcessingStep:
    """``EvaluateModel``: the test split through the model -> ``evaluation.json``."""
    evaluation_report = PropertyFile(
        name="EvaluationReport", output_name="evaluation", path="evaluation.json"
    )
    return ProcessingStep(
        name="EvaluateModel",
        description="Accuracy, per-class accuracy and confusion matrix on the test split.",
        step_args=processor(ctx, "evaluate").run(
            code="evaluate.py",
            source_dir="steps",
            dependencies=[SHARED_CODE],
            inputs=[
                ProcessingInput(source=model_data(trained), destination="/opt/ml/processing/model"),
                ProcessingInput(
                    source=prepared_output(prepared, "test"), destination="/opt/ml/processing/test"
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
        cache_config=ctx.cache_config,
        retry_policies=ctx.job_retries,
    )


def accuracy_of(evaluated: ProcessingStep) -> JsonGet:
    """The test accuracy in EvaluateModel's ``evaluation.json``."""
    return JsonGet(step_name=evaluated.name, property_file=evaluated.property_files[0],
                   json_path=ACCURACY_JSON_PATH)


def package_metadata(ctx: BuildContext, prepared: ProcessingStep, tuned: TuningStep,
                     accuracy: JsonGet, sagemaker_project_name: Optional[str]) -> dict:
    """The model package's CustomerMetadataProperties."""
    # Values must match [\p{L}\p{Z}\p{N}_.:/=+\-@]*: the JSON-quoted categorical "optimizer"
    # value cannot go here (it is in model.json and the best job).
    best = tuned.properties.BestTrainingJob
    metadata = {
        "best_training_job": best.TrainingJobName,
        **{f"hp_{n.replace('-', '_')}": best.TunedHyperParameters[n]
           for n in ("learning-rate", "batch-size", "epochs", "weight-decay")},
        "architecture": ctx.params.architecture,
        "image_size": Join(on="", values=[ctx.params.image_size]),
        "input_data_url": ctx.params.input_data,
        # held-out images the deploy pipeline's smoke test sends to the endpoint
        "test_data_url": prepared_output(prepared, "test"),
        "test_accuracy": Join(on="", values=[accuracy]),
        "pipeline_execution_id": ExecutionVariables.PIPELINE_EXECUTION_ID,
        "pipeline_execution_arn": ExecutionVariables.PIPELINE_EXECUTION_ARN,
    }
    if sagemaker_project_name:
        metadata["sagemaker_project_name"] = sagemaker_project_name
    return metadata


@dataclass(frozen=True)
class PackageSettings:
    """What the registered model package lists besides the model."""

    model_package_group_name: str
    inference_instance_types: Sequence[str]
    transform_instance_types: Sequence[str]


def register_step(ctx: BuildContext, package: PackageSettings, trained: TrainingStep,
                  evaluated: ProcessingStep, metadata: dict) -> ModelStep:
    """``RegisterModel``: the model with ``inference/`` repacked, registered with its metrics."""
    model = PyTorchModel(
        model_data=model_data(trained),
        entry_point="inference.py",
        source_dir="inference",
        dependencies=[SHARED_CODE],
        framework_version=ctx.framework_version,
        py_version=ctx.py_version,
        role=ctx.account.role,
        sagemaker_session=ctx.account.session,
    )
    evaluation_uri = evaluated.properties.ProcessingOutputConfig.Outputs["evaluation"].S3Output.S3Uri
    return ModelStep(
        name="RegisterModel",
        description="Register the evaluated model (with inference code) in the package group.",
        step_args=model.register(
            content_types=CONTENT_TYPES,
            response_types=RESPONSE_TYPES,
            inference_instances=list(package.inference_instance_types),
            transform_instances=list(package.transform_instance_types),
            model_package_group_name=package.model_package_group_name,
            approval_status=ctx.params.model_approval_status,
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
            framework_version=ctx.framework_version,
        ),
        retry_policies=[ctx.throttling_retry],
        # The repack job's output (the model.tar.gz with code/ that gets registered) under the
        # project's prefix instead of s3://<bucket>/pytorch-inference-<timestamp>.
        repack_model_step_settings={
            "output_path": f"{ctx.s3_prefix}/registered-models",
            # the SDK gives its repack job a Debugger hook by default (it disables only the profiler)
            **({} if ctx.sagemaker_debugger else {"debugger_hook_config": False}),
        },
    )


def fail_step(ctx: BuildContext, accuracy: JsonGet) -> FailStep:
    """``AccuracyTooLow``: stop without registering, saying why."""
    return FailStep(
        name="AccuracyTooLow",
        description="Stop without registering: the model is not accurate enough.",
        error_message=Join(
            on=" ",
            values=[
                "Test accuracy",
                accuracy,
                "is below AccuracyThreshold",
                ctx.params.accuracy_threshold,
                "- model not registered.",
            ],
        ),
    )


def check_accuracy_step(ctx: BuildContext, accuracy: JsonGet, registered: ModelStep,
                        failed: FailStep) -> ConditionStep:
    """``CheckAccuracy``: register if test accuracy >= ``AccuracyThreshold``, else fail."""
    return ConditionStep(
        name="CheckAccuracy",
        description="Register only if test accuracy >= AccuracyThreshold.",
        conditions=[ConditionGreaterThanOrEqualTo(left=accuracy, right=ctx.params.accuracy_threshold)],
        if_steps=[registered],
        else_steps=[failed],
    )


def build_context(account: Account, params: BuildParameters, *, base_job_prefix: str,
                  framework_version: str, py_version: str, processing_instance_type: str,
                  training_instance_type: str, enable_caching: bool, cache_expire_after: str,
                  use_spot_instances: bool, max_run_seconds: int, max_wait_seconds: Optional[int],
                  system_monitor_interval_millis: int, sagemaker_debugger: bool = True) -> BuildContext:
    """The context of the build pipeline's step builders."""
    throttling = throttling_retry()
    spot = {}
    if use_spot_instances:
        spot = dict(use_spot_instances=True, max_wait=max_wait_seconds or 2 * max_run_seconds)
    return BuildContext(
        account=account,
        params=params,
        base_job_prefix=base_job_prefix,
        framework_version=framework_version,
        py_version=py_version,
        processing_image=pytorch_image(account.region, framework_version, py_version,
                                       processing_instance_type),
        training_image=pytorch_image(account.region, framework_version, py_version,
                                     training_instance_type),
        cache_config=CacheConfig(enable_caching=enable_caching, expire_after=cache_expire_after),
        throttling_retry=throttling,
        job_retries=[throttling, capacity_retry()],
        spot=spot,
        max_run_seconds=max_run_seconds,
        system_monitor_interval_millis=system_monitor_interval_millis,
        sagemaker_debugger=sagemaker_debugger,
    )


def build_steps(ctx: BuildContext, package: PackageSettings, sagemaker_project_name: Optional[str]) -> list:
    """The top-level steps of the build pipeline, each made by its builder (the rest nest in the conditions)."""
    guard = check_parameters_step(ctx.params)
    prepared = prepare_data_step(ctx)
    prepared.add_depends_on([guard])
    tuned = tuning_step(ctx, prepared)
    trained = training_step(ctx, prepared, tuned)
    analyzed = analysis_step(ctx, trained)
    evaluated = evaluation_step(ctx, prepared, trained)
    accuracy = accuracy_of(evaluated)
    metadata = package_metadata(ctx, prepared, tuned, accuracy, sagemaker_project_name)
    registered = register_step(ctx, package, trained, evaluated, metadata)
    check = check_accuracy_step(ctx, accuracy, registered, fail_step(ctx, accuracy))
    return [guard, prepared, tuned, trained, analyzed, evaluated, check_training_step(ctx, analyzed, check)]


def parse_flag(value: bool | str, name: str) -> bool:
    """A boolean build option given as a bool or a string ("true"/"false", e.g. from a
    buildspec variable); anything else is an error naming the option."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"{name}: expected true or false, got {value!r}")


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
    sagemaker_debugger: bool = True,
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
        sagemaker_debugger: ``True``: TrainBestModel has SageMaker Debugger's hook and rules,
            the Profiler config and ProfilerReport, and installs smdebug in its container.
            ``False`` (accounts that cannot use Debugger: new since 2026-07-30): no step has any
            Debugger or Profiler configuration. ``AnalyzeTraining`` gives the rule verdicts either way.
    """
    account = resolve_account(region, role, default_bucket, sagemaker_session)
    params = build_parameters(input_data_url or f"s3://{account.bucket}/{base_job_prefix}/data",
                              processing_instance_type, training_instance_type)
    with cached_config_validation():
        ctx = build_context(
            account, params, base_job_prefix=base_job_prefix, framework_version=framework_version,
            py_version=py_version, processing_instance_type=processing_instance_type,
            training_instance_type=training_instance_type, enable_caching=enable_caching,
            cache_expire_after=cache_expire_after, use_spot_instances=use_spot_instances,
            max_run_seconds=max_run_seconds, max_wait_seconds=max_wait_seconds,
            system_monitor_interval_millis=system_monitor_interval_millis,
            sagemaker_debugger=parse_flag(sagemaker_debugger, "sagemaker_debugger"))
        package = PackageSettings(model_package_group_name, inference_instance_types, transform_instance_types)
        steps = build_steps(ctx, package, sagemaker_project_name)
    return ImgpipePipeline(
        name=pipeline_name,
        parameters=params.all(),
        steps=steps,
        sagemaker_session=account.session,
        code_root=code_root,
        profiler_free=not ctx.sagemaker_debugger,
    )
