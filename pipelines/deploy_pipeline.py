"""The imgpipe deploy pipeline: put the newest approved model package behind an endpoint, smoke-test it.

::

    Deploy --deployment.json (DeploymentReport: SmokeTestDataUrl)--> SmokeTest
    (steps/deploy.py: newest Approved package       (steps/check_endpoint.py: held-out images
     of ModelPackageGroupName -> model, endpoint     -> EndpointName; fails on any error or
     config with data capture, create/update         accuracy < SmokeTestMinAccuracy, after
     EndpointName blue/green, wait InService)        rolling the endpoint back to the
                                                     PreviousModelPackageArn of the report)

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

import os
from pathlib import Path
from typing import Optional, Sequence

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

from sagemaker import image_uris  # noqa: E402
from sagemaker.processing import FrameworkProcessor, ProcessingInput, ProcessingOutput  # noqa: E402
from sagemaker.pytorch import PyTorch  # noqa: E402
from sagemaker.workflow import retry  # noqa: E402
from sagemaker.workflow.functions import JsonGet  # noqa: E402
from sagemaker.workflow.parameters import ParameterFloat, ParameterInteger, ParameterString  # noqa: E402
from sagemaker.workflow.pipeline import Pipeline  # noqa: E402
from sagemaker.workflow.pipeline_context import PipelineSession  # noqa: E402
from sagemaker.workflow.properties import PropertyFile  # noqa: E402
from sagemaker.workflow.steps import ProcessingStep  # noqa: E402

from pipelines.pipeline import (  # noqa: E402
    CODE_ROOT,
    FRAMEWORK_VERSION,
    PY_VERSION,
    SHARED_CODE,
    ImgpipePipeline,
    session_and_role,
    staged_code,
)

# What the two steps ship, relative to CODE_ROOT: the step scripts (source_dir) and their
# dependencies (imgclf for the image listing and failure file, the boto3 backends).
SOURCE_DIR = "steps"
DEPENDENCIES = (SHARED_CODE, "pipelines/backends.py", "pipelines/aws")
STEP_NAMES = ("Deploy", "SmokeTest")
PARAMETER_NAMES = (
    "ModelPackageGroupName",
    "EndpointName",
    "EndpointInstanceType",
    "EndpointInstanceCount",
    "DataCaptureSamplingPercentage",
    "SmokeTestMinAccuracy",
    "SmokeTestDataUrl",
    "SmokeTestMaxImages",
    "ProcessingInstanceType",
)


class DeployPipeline(ImgpipePipeline):
    """The build pipeline's class, compiled (code uploaded) from a staged copy of the deploy code."""

    def definition(self) -> str:
        with staged_code(self.code_root, (SOURCE_DIR, *DEPENDENCIES)):
            return Pipeline.definition(self)


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
    model_execution_role: Optional[str] = None,
    rollback_alarms: Sequence[str] = (),
    bake_seconds: int = 300,
    smoke_test_min_accuracy: float = 0.8,
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
            endpoint_instance_count, data_capture_percent, smoke_test_min_accuracy,
            smoke_test_max_images, processing_instance_type: defaults of the parameters.
        data_capture_url: S3 prefix of the endpoint's captured requests and responses
            (``s3://<bucket>/<base_job_prefix>/data-capture``).
        model_execution_role: role of the SageMaker models (default: ``role``).
        rollback_alarms: CloudWatch alarm names that roll a blue/green update back while it
            bakes (``bake_seconds``); none: SageMaker's health checks only.
        sagemaker_project_name, sagemaker_project_arn: accepted like the build pipeline's.
    """
    sagemaker_session, role = session_and_role(region, role, default_bucket, sagemaker_session)
    region = sagemaker_session.boto_region_name
    bucket = default_bucket or sagemaker_session.default_bucket()

    group = ParameterString(name="ModelPackageGroupName", default_value=model_package_group_name)
    endpoint = ParameterString(name="EndpointName", default_value=endpoint_name)
    instance_type = ParameterString(name="EndpointInstanceType", default_value=endpoint_instance_type)
    instance_count = ParameterInteger(name="EndpointInstanceCount", default_value=endpoint_instance_count)
    capture = ParameterInteger(name="DataCaptureSamplingPercentage", default_value=data_capture_percent)
    min_accuracy = ParameterFloat(name="SmokeTestMinAccuracy", default_value=smoke_test_min_accuracy)
    test_data = ParameterString(name="SmokeTestDataUrl", default_value="")
    max_images = ParameterInteger(name="SmokeTestMaxImages", default_value=smoke_test_max_images)
    processing_instance = ParameterString(name="ProcessingInstanceType", default_value=processing_instance_type)

    step_errors, job_errors = retry.StepExceptionTypeEnum, retry.SageMakerJobExceptionTypeEnum
    retries = [  # a retried Deploy finds the endpoint done or in progress and carries on
        retry.StepRetryPolicy(exception_types=[step_errors.THROTTLING, step_errors.SERVICE_FAULT],
                              interval_seconds=10, backoff_rate=2.0, max_attempts=5),
        retry.SageMakerJobStepRetryPolicy(exception_types=[job_errors.CAPACITY_ERROR, job_errors.RESOURCE_LIMIT],
                                          interval_seconds=60, backoff_rate=2.0, max_attempts=3),
    ]

    def processor(name: str) -> FrameworkProcessor:
        return FrameworkProcessor(
            estimator_cls=PyTorch, framework_version=framework_version, py_version=py_version,
            image_uri=image_uris.retrieve(framework="pytorch", region=region, version=framework_version,
                                          py_version=py_version, instance_type=processing_instance_type,
                                          image_scope="training"),
            role=role, instance_type=processing_instance, instance_count=1,
            base_job_name=f"{base_job_prefix}-{name}", max_runtime_in_seconds=3 * 3600,
            sagemaker_session=sagemaker_session,
        )

    report = PropertyFile(name="DeploymentReport", output_name="deployment", path="deployment.json")
    step_deploy = ProcessingStep(
        name="Deploy",
        description="Newest Approved package of the group -> model, endpoint config (data capture), "
                    "endpoint created or updated blue/green; waits until InService.",
        step_args=processor("deploy").run(
            code="deploy.py", source_dir=SOURCE_DIR, dependencies=list(DEPENDENCIES),
            outputs=[ProcessingOutput(output_name="deployment", source="/opt/ml/processing/output/deployment")],
            arguments=[
                "--model-package-group", group,
                "--endpoint-name", endpoint,
                "--instance-type", instance_type,
                "--instance-count", instance_count.to_string(),
                "--data-capture-percent", capture.to_string(),
                "--data-capture-url", data_capture_url or f"s3://{bucket}/{base_job_prefix}/data-capture",
                "--model-role-arn", model_execution_role or role,
                "--smoke-test-data-url", test_data,
                "--rollback-alarms", ",".join(rollback_alarms),
                "--bake-seconds", str(bake_seconds),
                "--region", region,
                "--output-dir", "/opt/ml/processing/output/deployment",
            ],
        ),
        property_files=[report],
        retry_policies=retries,
    )
    step_smoke = ProcessingStep(
        name="SmokeTest",
        description="Invoke the endpoint with held-out test images; fail on any error or low accuracy.",
        step_args=processor("smoke-test").run(
            code="check_endpoint.py", source_dir=SOURCE_DIR, dependencies=list(DEPENDENCIES),
            inputs=[ProcessingInput(
                source=JsonGet(step_name=step_deploy.name, property_file=report, json_path="SmokeTestDataUrl"),
                destination="/opt/ml/processing/test")],
            outputs=[ProcessingOutput(output_name="smoke-test", source="/opt/ml/processing/output/smoke-test")],
            arguments=[
                "--endpoint-name", endpoint,
                "--test-dir", "/opt/ml/processing/test",
                "--min-accuracy", min_accuracy.to_string(),
                "--max-images", max_images.to_string(),
                "--region", region,
                "--output-dir", "/opt/ml/processing/output/smoke-test",
                # a failed smoke test rolls the endpoint back to what it served before Deploy
                "--deploy-action", JsonGet(step_name=step_deploy.name, property_file=report, json_path="Action"),
                "--previous-package-arn", JsonGet(step_name=step_deploy.name, property_file=report,
                                                  json_path="PreviousModelPackageArn"),
                "--instance-type", instance_type,
                "--instance-count", instance_count.to_string(),
                "--data-capture-percent", capture.to_string(),
                "--data-capture-url", data_capture_url or f"s3://{bucket}/{base_job_prefix}/data-capture",
                "--model-role-arn", model_execution_role or role,
                "--bake-seconds", str(bake_seconds),
            ],
        ),
        depends_on=[step_deploy],
        retry_policies=retries[:1],
    )
    return DeployPipeline(
        name=pipeline_name,
        parameters=[group, endpoint, instance_type, instance_count, capture, min_accuracy,
                    test_data, max_images, processing_instance],
        steps=[step_deploy, step_smoke],
        sagemaker_session=sagemaker_session,
        code_root=code_root,
    )
