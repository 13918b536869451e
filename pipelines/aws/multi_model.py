"""SageMaker multi-model endpoints: the artifacts under one S3 prefix, and the model's container.

A multi-model endpoint's model is one container in ``Mode: MultiModel`` whose ``ModelDataUrl``
is an S3 *prefix*; every ``model.tar.gz`` under it is a model the endpoint can serve, picked per
request with ``InvokeEndpoint(TargetModel=<key relative to the prefix>)``. SageMaker loads a
target on its first request and unloads idle ones under memory pressure; adding or deleting an
object under the prefix changes the served set without touching the endpoint.

Here the prefix is ``<multi_model_url>/<endpoint name>/`` and each approved package's artifact is
copied to ``v<ModelPackageVersion>/model.tar.gz`` under it
(:func:`pipelines.backends.target_model_name`). Artifacts are immutable per version, so one
already there is never copied again (SageMaker caches loaded targets by name: overwriting one
would serve the old copy); one no longer wanted is deleted.

The container is the packages' own inference image (the PyTorch inference DLC supports
multi-model endpoints on CPU instances) with their environment, less
``SAGEMAKER_SUBMIT_DIRECTORY`` (a single model's code directory; here every ``model.tar.gz``
carries its own ``code/inference.py``, which the build's repack step put there) and plus
``SAGEMAKER_MULTI_MODEL=true`` (SageMaker sets it too; explicit for the serving toolkit).
"""
from __future__ import annotations

from typing import Any, Sequence

if __package__ == "aws":  # the deploy steps' container: backends.py shipped next to this package
    from backends import HostingError, target_model_name
else:
    from pipelines.backends import HostingError, target_model_name

MULTI_MODEL_ENVIRONMENT = {"SAGEMAKER_MULTI_MODEL": "true"}
SINGLE_MODEL_ONLY = ("SAGEMAKER_SUBMIT_DIRECTORY",)
ARTIFACT_NAME = "model.tar.gz"


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``; :class:`HostingError` for anything else."""
    if not isinstance(url, str) or not url.startswith("s3://") or "/" not in url[5:]:
        raise HostingError(f"not an S3 object URL: {url!r}")
    bucket, _, key = url[5:].partition("/")
    return bucket, key


def endpoint_prefix(multi_model_url: str, endpoint_name: str) -> str:
    """The S3 prefix (ending in ``/``) of ``endpoint_name``'s artifacts under ``multi_model_url``."""
    if not multi_model_url or not multi_model_url.startswith("s3://"):
        raise HostingError(f"multi-model endpoints need an S3 prefix for their artifacts, not {multi_model_url!r}")
    return f"{multi_model_url.rstrip('/')}/{endpoint_name}/"


def package_container(package: dict) -> dict:
    """The first container of a package's inference specification (image, artifact, environment)."""
    containers = (package.get("InferenceSpecification") or {}).get("Containers") or []
    if not containers or not containers[0].get("Image"):
        raise HostingError(f"model package {package.get('ModelPackageArn')} names no inference image")
    return containers[0]


def model_container(packages: Sequence[dict], prefix: str) -> dict:
    """The ``PrimaryContainer`` of the multi-model model serving ``packages`` from ``prefix``.

    Every package must use the same inference image (one container serves them all); the
    environment is the newest package's (the first given), adapted for multi-model serving.
    """
    images = sorted({package_container(p)["Image"] for p in packages})
    if len(images) != 1:
        raise HostingError("a multi-model endpoint serves packages of one inference image; these use "
                           + ", ".join(images) + ": deploy them as single-model endpoints or re-register")
    environment = {k: v for k, v in (package_container(packages[0]).get("Environment") or {}).items()
                   if k not in SINGLE_MODEL_ONLY}
    return {"Image": images[0], "Mode": "MultiModel", "ModelDataUrl": prefix,
            "Environment": {**environment, **MULTI_MODEL_ENVIRONMENT}}


def list_target_models(s3: Any, prefix: str) -> list[str]:
    """The target model names (keys relative to ``prefix``) of the artifacts under ``prefix``."""
    bucket, key_prefix = split_s3_url(prefix)
    names = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix):
        names += [item["Key"][len(key_prefix):] for item in page.get("Contents", [])
                  if item["Key"].endswith("/" + ARTIFACT_NAME)]
    return sorted(names)


def sync_artifacts(s3: Any, prefix: str, packages: Sequence[dict]) -> dict:
    """Make the artifacts under ``prefix`` exactly those of ``packages``.

    Returns ``{"TargetModels": [...], "Added": [...], "Removed": [...]}`` (sorted names).
    """
    wanted = {}
    for package in packages:
        source = package.get("ModelDataUrl") or package_container(package).get("ModelDataUrl")
        if not source:
            raise HostingError(f"model package {package.get('ModelPackageArn')} has no ModelDataUrl")
        wanted[target_model_name(package)] = source
    bucket, key_prefix = split_s3_url(prefix)
    present = set(list_target_models(s3, prefix))
    added = sorted(set(wanted) - present)
    removed = sorted(present - set(wanted))
    for name in added:
        source_bucket, source_key = split_s3_url(wanted[name])
        s3.copy_object(Bucket=bucket, Key=key_prefix + name,
                       CopySource={"Bucket": source_bucket, "Key": source_key})
    for name in removed:
        s3.delete_object(Bucket=bucket, Key=key_prefix + name)
    return {"TargetModels": sorted(wanted), "Added": added, "Removed": removed}
