"""The SageMaker model registry behind :class:`pipelines.backends.ModelRegistry` (boto3).

Same interface as ``pipelines.local.registry.LocalModelRegistry`` (``list_packages``,
``describe``, ``update_approval``, ``latest_approved``) and the same DescribeModelPackage-shaped
results, plus the fields the local registry adds: ``ModelDataUrl`` and, where the package's
model quality statistics can be read from S3, ``EvaluationMetrics`` / ``EvaluationMetricsUri``.

Shipped into the deploy pipeline's processing jobs next to the step scripts, as
``aws/registry.py`` (see :mod:`pipelines.aws`): it imports only the standard library,
boto3/botocore and the backends module.
"""
from __future__ import annotations

import json
from typing import Any, Optional

if __package__ == "aws":  # the deploy steps' container: backends.py shipped next to this package
    from backends import RegistryError, check_approval_status
else:
    from pipelines.backends import RegistryError, check_approval_status


def newest_first(summaries: list[dict]) -> list[dict]:
    """Packages sorted newest first: creation time, then version (never the API's order)."""
    return sorted(summaries, key=lambda p: (p["CreationTime"], p.get("ModelPackageVersion", 0)),
                  reverse=True)


class SageMakerModelRegistry:
    """Model package groups and versions in SageMaker's model registry."""

    def __init__(self, region: Optional[str] = None, sagemaker_client: Any = None, s3_client: Any = None):
        if sagemaker_client is None:
            import boto3

            session = boto3.Session(region_name=region)
            sagemaker_client = session.client("sagemaker")
            s3_client = s3_client or session.client("s3")
        self.sm = sagemaker_client
        self.s3 = s3_client

    # ------------------------------------------------------------------ reads
    def list_packages(self, group: Optional[str] = None, status: Optional[str] = None) -> list[dict]:
        """Versioned packages (summaries), newest first, of one group and/or approval status."""
        kwargs: dict = {"SortBy": "CreationTime", "SortOrder": "Descending"}
        if group:
            kwargs["ModelPackageGroupName"] = group
        else:
            kwargs["ModelPackageType"] = "Versioned"
        if status is not None:
            check_approval_status(status)
            kwargs["ModelApprovalStatus"] = status
        summaries = []
        for page in self.sm.get_paginator("list_model_packages").paginate(**kwargs):
            summaries += page.get("ModelPackageSummaryList", [])
        return newest_first(summaries)

    def latest_approved(self, group: str) -> Optional[dict]:
        """The newest Approved package of ``group``, described (what a deployment picks)."""
        approved = self.list_packages(group=group, status="Approved")
        return self.describe(approved[0]["ModelPackageArn"]) if approved else None

    def describe(self, version_or_arn: str, group: Optional[str] = None) -> dict:
        """DescribeModelPackage, plus ModelDataUrl and the evaluation report when readable."""
        arn = self._resolve(version_or_arn, group)
        package = {k: v for k, v in self.sm.describe_model_package(ModelPackageName=arn).items()
                   if k != "ResponseMetadata"}
        containers = (package.get("InferenceSpecification") or {}).get("Containers") or [{}]
        if containers[0].get("ModelDataUrl"):
            package["ModelDataUrl"] = containers[0]["ModelDataUrl"]
        uri = (((package.get("ModelMetrics") or {}).get("ModelQuality") or {}).get("Statistics") or {}).get("S3Uri")
        metrics = self._read_json(uri) if uri else None
        if metrics is not None:
            package.update(EvaluationMetrics=metrics, EvaluationMetricsUri=uri)
        return package

    def _read_json(self, uri: str) -> Any:
        """The JSON object at ``s3://bucket/key``, or ``None`` when it cannot be read."""
        if self.s3 is None or not uri.startswith("s3://"):
            return None
        bucket, _, key = uri[len("s3://"):].partition("/")
        try:
            return json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except Exception:  # noqa: BLE001 - missing, forbidden or not JSON: the package still describes
            return None

    # ------------------------------------------------------------------ writes
    def update_approval(self, version_or_arn: str, status: str, reason: str = "",
                        group: Optional[str] = None) -> dict:
        """UpdateModelPackage: ModelApprovalStatus (and ApprovalDescription)."""
        check_approval_status(status)
        arn = self._resolve(version_or_arn, group)
        request = {"ModelPackageArn": arn, "ModelApprovalStatus": status}
        if reason:
            request["ApprovalDescription"] = reason
        self.sm.update_model_package(**request)
        return self.describe(arn)

    # ------------------------------------------------------------------ references
    def _resolve(self, version_or_arn: str, group: Optional[str]) -> str:
        """An ARN, ``<group>/<version>``, or a version (of ``group``, or unambiguous in the account)."""
        ref = str(version_or_arn).strip()
        if ref.startswith("arn:"):
            return ref
        if "/" in ref:
            group, _, ref = ref.rpartition("/")
        try:
            version = int(ref)
        except ValueError:
            raise RegistryError(f"not a model package version or ARN: {version_or_arn!r}") from None
        matches = [p["ModelPackageArn"] for p in self.list_packages(group=group)
                   if p.get("ModelPackageVersion") == version]
        if not matches:
            raise RegistryError(f"no model package version {version}" + (f" in group {group!r}" if group else ""))
        if len(matches) > 1:
            raise RegistryError(f"version {version} exists in several groups: give the group or the ARN")
        return matches[0]
