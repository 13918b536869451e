"""The imgpipe deploy pipeline: put the newest approved model package behind an endpoint, smoke-test it.

::

    Deploy --deployment.json (DeploymentReport: SmokeTestDataUrl; the report itself)--> SmokeTest
    (steps/deploy.py: newest Approved package       (steps/check_endpoint.py: held-out images
     of ModelPackageGroupName (EndpointMode          -> each target of EndpointName; fails on any
     SingleModel), or all of them (MultiModel)       error or an accuracy more than
     -> model, endpoint config with data capture,    SmokeTestMaxAccuracyDrop below the package's
     create/update EndpointName blue/green, wait     evaluated one (or below the optional
     InService)                                      SmokeTestMinAccuracy), after rolling the
                                                     endpoint back to what it served before, or
                                                     deleting it (first deployment))

Started by the EventBridge rule of :mod:`pipelines.aws.triggers` when a package of the group is
approved (deploy it) or rejected (roll back to the newest package still approved), or by hand.
Both steps are PyTorch ``FrameworkProcessor`` jobs whose code is ``steps/`` plus
``training/imgclf`` and the backends they need on SageMaker (``pipelines/backends.py`` and the
boto3 package ``pipelines/aws``), shipped as the step's ``dependencies``: one copy of that code,
importable as ``pipelines.*`` locally and as top-level ``backends``/``aws`` in the container
(``steps/deploy_backends.py``). Locally (``IMGPIPE_BACKEND=local``)
the same steps use the local registry and local hosting.

Built offline like the model-build pipeline: ``get-pipeline-definition --module-name
pipelines.deploy_pipeline`` (see :mod:`pipelines.offline`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from sagemaker.processing import FrameworkProcessor, ProcessingInput, ProcessingOutput
from sagemaker.pytorch import PyTorch
from sagemaker.workflow import retry
from sagemaker.workflow.condition_step import ConditionStep
from sagemaker.workflow.functions import JsonGet
from sagemaker.workflow.parameters import ParameterFloat, ParameterInteger, ParameterString
from sagemaker.workflow.pipeline import Pipeline
from sagemaker.workflow.pipeline_context import PipelineSession
from sagemaker.workflow.properties import PropertyFile
from sagemaker.workflow.steps import ProcessingStep

from pipelines.backends import ENDPOINT_MODES
from pipelines.parameter_guards import Bound, parameter_guard
from pipelines.pipeline import (
    FRAMEWORK_VERSION, PY_VERSION, SHARED_CODE, ParameterSet, pytorch_image, throttling_retry,
)
from pipelines.sdk_session import Account, resolve_account
from pipelines.staged_code import CODE_ROOT, ImgpipePipeline

# What the two steps ship, relative to CODE_ROOT: the step scripts (source_dir) and their
# dependencies (imgclf for the image listing and failure file, the boto3 backends).
SOURCE_DIR = "steps"
DEPENDENCIES = (SHARED_CODE, "pipelines/backends.py", "pipelines/aws")


@dataclass(frozen=True)
class DeployParameters(ParameterSet):
    """The deploy pipeline's parameters, in the order the definition lists them."""

    group: ParameterString
    endpoint: ParameterString
    instance_type: ParameterString
    instance_count: ParameterInteger
    capture: ParameterInteger
    mode: ParameterString
    max_drop: ParameterFloat
    min_accuracy: ParameterFloat
    test_data: ParameterString
    max_images: ParameterInteger
    processing_instance: ParameterString


def deploy_parameters(model_package_group_name: str, endpoint_name: str, endpoint_instance_type: str,
                      endpoint_instance_count: int, data_capture_percent: int,
                      smoke_test_min_accuracy: float, smoke_test_max_images: int,
                      processing_instance_type: str, endpoint_mode: str = "SingleModel",
                      smoke_test_max_accuracy_drop: float = 0.02) -> DeployParameters:
    """The deploy pipeline's parameters with their defaults."""
    return DeployParameters(
        group=ParameterString(name="ModelPackageGroupName", default_value=model_package_group_name),
        endpoint=ParameterString(name="EndpointName", default_value=endpoint_name),
        instance_type=ParameterString(name="EndpointInstanceType", default_value=endpoint_instance_type),
        instance_count=ParameterInteger(name="EndpointInstanceCount", default_value=endpoint_instance_count),
        capture=ParameterInteger(name="DataCaptureSamplingPercentage", default_value=data_capture_percent),
        mode=ParameterString(name="EndpointMode", default_value=endpoint_mode, enum_values=list(ENDPOINT_MODES)),
        max_drop=ParameterFloat(name="SmokeTestMaxAccuracyDrop", default_value=smoke_test_max_accuracy_drop),
        min_accuracy=ParameterFloat(name="SmokeTestMinAccuracy", default_value=smoke_test_min_accuracy),
        test_data=ParameterString(name="SmokeTestDataUrl", default_value=""),
        max_images=ParameterInteger(name="SmokeTestMaxImages", default_value=smoke_test_max_images),
        processing_instance=ParameterString(name="ProcessingInstanceType",
                                            default_value=processing_instance_type),
    )


def check_deploy_parameters_step(params: DeployParameters) -> ConditionStep:
    """``CheckDeployParameters``: instance count >= 1, data capture 0-100 %, accuracy floor <= 1
    (negative: no floor), accuracy drop 0-1, >= 1 smoke-test image (else ``InvalidDeployParameters``
    fails before Deploy; the local engine refuses them up front)."""
    return parameter_guard("CheckDeployParameters", "InvalidDeployParameters", [
        Bound(params.instance_count, minimum=1),
        Bound(params.capture, minimum=0, maximum=100),
        Bound(params.min_accuracy, maximum=1),
        Bound(params.max_drop, minimum=0, maximum=1),
        Bound(params.max_images, minimum=1),
    ])


@dataclass(frozen=True)
class DeployContext:
    """What both deploy steps share."""

    account: Account
    params: DeployParameters
    base_job_prefix: str
    framework_version: str
    py_version: str
    processing_image: str
    retries: list[retry.RetryPolicy]
    data_capture_url: str
    multi_model_url: str
    model_role: str
    bake_seconds: int


def deploy_retries() -> list[retry.RetryPolicy]:
    """A retried Deploy finds the endpoint done or in progress and carries on."""
    job_errors = retry.SageMakerJobExceptionTypeEnum
    return [
        throttling_retry(),
        retry.SageMakerJobStepRetryPolicy(exception_types=[job_errors.CAPACITY_ERROR, job_errors.RESOURCE_LIMIT],
                                          interval_seconds=60, backoff_rate=2.0, max_attempts=3),
    ]


def processor(ctx: DeployContext, name: str) -> FrameworkProcessor:
    """A PyTorch processing job (up to 3 h: Deploy waits for the endpoint) on ``ProcessingInstanceType``."""
    return FrameworkProcessor(
        estimator_cls=PyTorch, framework_version=ctx.framework_version, py_version=ctx.py_version,
        image_uri=ctx.processing_image,
        role=ctx.account.role, instance_type=ctx.params.processing_instance, instance_count=1,
        base_job_name=f"{ctx.base_job_prefix}-{name}", max_runtime_in_seconds=3 * 3600,
        sagemaker_session=ctx.account.session,
    )


def endpoint_arguments(ctx: DeployContext) -> list:
    """The endpoint's settings, given to Deploy and (for a rollback) to SmokeTest."""
    params = ctx.params
    return [
        "--instance-type", params.instance_type,
        "--instance-count", params.instance_count.to_string(),
        "--data-capture-percent", params.capture.to_string(),
        "--data-capture-url", ctx.data_capture_url,
        "--model-role-arn", ctx.model_role,
        "--multi-model-url", ctx.multi_model_url,
    ]


def deploy_step(ctx: DeployContext, rollback_alarms: Sequence[str]) -> ProcessingStep:
    """``Deploy``: the newest Approved package behind the endpoint -> ``deployment.json``."""
    params = ctx.params
    report = PropertyFile(name="DeploymentReport", output_name="deployment", path="deployment.json")
    return ProcessingStep(
        name="Deploy",
        description="Newest Approved package of the group -> model, endpoint config (data capture), "
                    "endpoint created or updated blue/green; waits until InService.",
        step_args=processor(ctx, "deploy").run(
            code="deploy.py", source_dir=SOURCE_DIR, dependencies=list(DEPENDENCIES),
            outputs=[ProcessingOutput(output_name="deployment", source="/opt/ml/processing/output/deployment")],
            arguments=[
                "--model-package-group", params.group,
                "--endpoint-name", params.endpoint,
                "--endpoint-mode", params.mode,
                *endpoint_arguments(ctx),
                "--smoke-test-data-url", params.test_data,
                "--smoke-test-min-accuracy", params.min_accuracy.to_string(),
                "--rollback-alarms", ",".join(rollback_alarms),
                "--bake-seconds", str(ctx.bake_seconds),
                "--region", ctx.account.region,
                "--output-dir", "/opt/ml/processing/output/deployment",
            ],
        ),
        property_files=[report],
        retry_policies=ctx.retries,
    )


def smoke_test_step(ctx: DeployContext, deployed: ProcessingStep) -> ProcessingStep:
    """``SmokeTest``: held-out images to each target of the endpoint; a failure rolls the endpoint
    back (or deletes a first deployment)."""
    params = ctx.params
    data_url = JsonGet(step_name=deployed.name, property_file=deployed.property_files[0],
                       json_path="SmokeTestDataUrl")
    report_url = deployed.properties.ProcessingOutputConfig.Outputs["deployment"].S3Output.S3Uri

    return ProcessingStep(
        name="SmokeTest",
        description="Invoke each target of the endpoint with held-out test images; fail on any error or an "
                    "accuracy more than SmokeTestMaxAccuracyDrop below the package's evaluated accuracy.",
        step_args=processor(ctx, "smoke-test").run(
            code="check_endpoint.py", source_dir=SOURCE_DIR, dependencies=list(DEPENDENCIES),
            inputs=[ProcessingInput(source=data_url, destination="/opt/ml/processing/test"),
                    ProcessingInput(source=report_url, destination="/opt/ml/processing/deployment")],
            outputs=[ProcessingOutput(output_name="smoke-test", source="/opt/ml/processing/output/smoke-test")],
            arguments=[
                "--endpoint-name", params.endpoint,
                "--test-dir", "/opt/ml/processing/test",
                "--max-accuracy-drop", params.max_drop.to_string(),
                "--min-accuracy", params.min_accuracy.to_string(),
                "--max-images", params.max_images.to_string(),
                "--region", ctx.account.region,
                "--output-dir", "/opt/ml/processing/output/smoke-test",
                # a failed smoke test rolls the endpoint back to what it served before Deploy
                "--deployment-report", "/opt/ml/processing/deployment/deployment.json",
                *endpoint_arguments(ctx),
                "--bake-seconds", str(ctx.bake_seconds),
            ],
        ),
        depends_on=[deployed],
        retry_policies=ctx.retries[:1],
    )


def get_pipeline(
    region: Optional[str] = None,
    role: Optional[str] = None,
    default_bucket: Optional[str] = None,
    *,
    pipeline_name: str = "ImgpipeDeploy",
    model_package_group_name: str = "ImgpipeModels",
    endpoint_name: str = "imgpipe",
    endpoint_instance_type: str = "ml.m5.large",
    endpoint_instance_count: int = 1,
    data_capture_percent: int = 20,
    data_capture_url: Optional[str] = None,
    multi_model_url: Optional[str] = None,
    model_execution_role: Optional[str] = None,
    rollback_alarms: Sequence[str] = (),
    bake_seconds: int = 300,
    endpoint_mode: str = "SingleModel",
    smoke_test_max_accuracy_drop: float = 0.02,
    smoke_test_min_accuracy: float = -1.0,
    smoke_test_max_images: int = 200,
    processing_instance_type: str = "ml.m5.large",
    base_job_prefix: str = "imgpipe",
    framework_version: str = FRAMEWORK_VERSION,
    py_version: str = PY_VERSION,
    sagemaker_session: Optional[PipelineSession] = None,
    sagemaker_project_name: Optional[str] = None,
    sagemaker_project_arn: Optional[str] = None,
    code_root: Path | str = CODE_ROOT,
) -> Pipeline:
    """Build the deploy pipeline (nothing is called on AWS until ``definition()``/``upsert()``).

    Args:
        region, role, default_bucket, sagemaker_session, framework_version, py_version,
            base_job_prefix, code_root: as for :func:`pipelines.pipeline.get_pipeline`.
        pipeline_name: the deploy pipeline's name (the buildspec: ``<project>-<id>-deploy``).
        model_package_group_name, endpoint_name, endpoint_instance_type,
            endpoint_instance_count, data_capture_percent, endpoint_mode,
            smoke_test_max_accuracy_drop, smoke_test_min_accuracy (negative: no floor),
            smoke_test_max_images, processing_instance_type: defaults of the parameters.
        data_capture_url: S3 prefix of the endpoint's captured requests and responses
            (``s3://<bucket>/<base_job_prefix>/data-capture``).
        multi_model_url: S3 prefix under which a multi-model endpoint keeps its artifacts
            (``s3://<bucket>/<base_job_prefix>/multi-model``; ``<prefix>/<endpoint>/v<n>/model.tar.gz``).
        model_execution_role: role of the SageMaker models (default: ``role``).
        rollback_alarms: CloudWatch alarm names that roll a blue/green update back while it
            bakes (``bake_seconds``); none: SageMaker's health checks only.
        sagemaker_project_name, sagemaker_project_arn: accepted like the build pipeline's.
    """
    account = resolve_account(region, role, default_bucket, sagemaker_session)
    params = deploy_parameters(model_package_group_name, endpoint_name, endpoint_instance_type,
                               endpoint_instance_count, data_capture_percent, smoke_test_min_accuracy,
                               smoke_test_max_images, processing_instance_type, endpoint_mode,
                               smoke_test_max_accuracy_drop)
    ctx = DeployContext(
        account=account,
        params=params,
        base_job_prefix=base_job_prefix,
        framework_version=framework_version,
        py_version=py_version,
        processing_image=pytorch_image(account.region, framework_version, py_version,
                                       processing_instance_type),
        retries=deploy_retries(),
        data_capture_url=data_capture_url or f"s3://{account.bucket}/{base_job_prefix}/data-capture",
        multi_model_url=multi_model_url or f"s3://{account.bucket}/{base_job_prefix}/multi-model",
        model_role=model_execution_role or account.role,
        bake_seconds=bake_seconds,
    )
    guard = check_deploy_parameters_step(params)
    deployed = deploy_step(ctx, rollback_alarms)
    deployed.add_depends_on([guard])
    return ImgpipePipeline(
        name=pipeline_name,
        parameters=params.all(),
        steps=[guard, deployed, smoke_test_step(ctx, deployed)],
        sagemaker_session=account.session,
        code_root=code_root,
        code_paths=(SOURCE_DIR, *DEPENDENCIES),
    )
