"""Deploy the newest Approved model package of a group to an endpoint: the ``Deploy`` step.

::

    python deploy.py --model-package-group G --endpoint-name E --instance-type ml.m5.large \
        --instance-count 1 --data-capture-percent 20 --data-capture-url s3://b/p/data-capture \
        --model-role-arn arn:aws:iam::...:role/R [--smoke-test-data-url s3://...] \
        [--rollback-alarms A,B] [--bake-seconds 300] [--region R] --output-dir /opt/ml/processing/output/deployment

Picks the newest Approved package of the group (sorted newest first by creation time and
version; Rejected and pending ones never), then creates or updates the endpoint to serve it
and waits until it is healthy (nothing to do when it already serves that package with these
settings). Approval and rejection events both run this step: after a rejection it rolls the
endpoint back to the newest package that is still approved.

Writes ``deployment.json`` (property file ``DeploymentReport``): ``EndpointName``,
``ModelPackageArn``, ``ModelPackageVersion``, ``ModelPackageGroupName``, ``Action``
(Created/Updated/Unchanged), ``PreviousModelPackageArn`` (what the endpoint served before this
step, ``""`` if nothing: the smoke test rolls back to it when the new model fails) and
``SmokeTestDataUrl``: the held-out images the smoke test sends,
``--smoke-test-data-url`` if given, else the test split the package's build recorded
(metadata ``test_data_url``, else the build pipeline's ``PrepareData`` ``test`` output next to
the package's evaluation report). Checked before anything is deployed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from deploy_backends import fail, get_hosting, get_registry

# The build pipeline's evaluation report and test split (SDK default output locations:
# s3://<bucket>/<pipeline>/<execution id>/<step>/output/<output name>).
EVALUATION_SUFFIX = "/EvaluateModel/output/evaluation/evaluation.json"
TEST_SPLIT_SUFFIX = "/PrepareData/output/test"
REPORT_NAME = "deployment.json"


class DeployError(RuntimeError):
    """Nothing to deploy, or no held-out data to smoke-test it with."""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Deploy the newest approved model package.")
    parser.add_argument("--model-package-group", required=True)
    parser.add_argument("--endpoint-name", required=True)
    parser.add_argument("--instance-type", required=True)
    parser.add_argument("--instance-count", type=int, default=1)
    parser.add_argument("--data-capture-percent", type=int, default=20)
    parser.add_argument("--data-capture-url", default=None, help="S3 prefix of captured data (SageMaker)")
    parser.add_argument("--model-role-arn", default=None, help="execution role of the model (SageMaker)")
    parser.add_argument("--smoke-test-data-url", default="", help="held-out images (default: the package's test split)")
    parser.add_argument("--rollback-alarms", default="", help="comma-separated CloudWatch alarm names")
    parser.add_argument("--bake-seconds", type=int, default=300, help="new fleet watched before the old goes")
    parser.add_argument("--region", default=None)
    parser.add_argument("--output-dir", default="/opt/ml/processing/output/deployment")
    return parser


def held_out_data_url(package: dict) -> Optional[str]:
    """Where the build that registered ``package`` put its test split, if it can be told."""
    metadata = package.get("CustomerMetadataProperties") or {}
    if metadata.get("test_data_url"):
        return metadata["test_data_url"]
    quality = (package.get("ModelMetrics") or {}).get("ModelQuality") or {}
    uri = (quality.get("Statistics") or {}).get("S3Uri") or package.get("EvaluationMetricsUri")
    if isinstance(uri, str) and uri.endswith(EVALUATION_SUFFIX):
        return uri[: -len(EVALUATION_SUFFIX)] + TEST_SPLIT_SUFFIX
    return None


def check_args(args: argparse.Namespace) -> None:
    if args.instance_count < 1:
        raise DeployError(f"EndpointInstanceCount must be at least 1, not {args.instance_count}")
    if not 0 <= args.data_capture_percent <= 100:
        raise DeployError(f"DataCaptureSamplingPercentage must be 0-100, not {args.data_capture_percent}")


def served_package(hosting: Any, endpoint_name: str) -> str:
    """The package ARN ``endpoint_name`` serves now; ``""`` if there is no (healthy) endpoint."""
    described = hosting.describe_endpoint(endpoint_name)
    if not described or described.get("EndpointStatus") == "Failed":
        return ""
    return described.get("ModelPackageArn") or ""


def deploy(args: argparse.Namespace, registry: Any, hosting: Any) -> dict:
    """Deploy the group's newest approved package; the deployment report."""
    check_args(args)
    package = registry.latest_approved(args.model_package_group)
    if package is None:
        raise DeployError(
            f"no Approved model package in group {args.model_package_group!r}: approve one "
            f"(imgpipe models approve VERSION --group {args.model_package_group}) and deploy again")
    data_url = args.smoke_test_data_url or held_out_data_url(package)
    if not data_url:
        raise DeployError(
            f"no held-out test data known for {package['ModelPackageArn']}: "
            "set the SmokeTestDataUrl parameter to an S3 prefix of <class>/<image> folders")
    print(f"deploying {package['ModelPackageArn']} (version {package.get('ModelPackageVersion')}) "
          f"to {args.endpoint_name} ...", flush=True)
    previous = served_package(hosting, args.endpoint_name)
    result = hosting.deploy(
        args.endpoint_name, package, instance_type=args.instance_type,
        instance_count=args.instance_count, data_capture_percent=args.data_capture_percent)
    return {
        "EndpointName": args.endpoint_name,
        "ModelPackageArn": package["ModelPackageArn"],
        "ModelPackageVersion": package.get("ModelPackageVersion"),
        "ModelPackageGroupName": args.model_package_group,
        "Action": result["Action"],
        "PreviousModelPackageArn": previous,
        "SmokeTestDataUrl": data_url,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        registry = get_registry(args.region)
        hosting = get_hosting(
            args.region, model_role_arn=args.model_role_arn, data_capture_url=args.data_capture_url,
            rollback_alarms=[a.strip() for a in args.rollback_alarms.split(",") if a.strip()],
            bake_seconds=args.bake_seconds)
        report = deploy(args, registry, hosting)
    except Exception as exc:  # noqa: BLE001 - the job's failure reason, then a non-zero exit
        return fail(f"Deploy failed: {type(exc).__name__}: {exc}")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_NAME).write_text(json.dumps(report, indent=2))
    print(f"{report['Action']}: {report['EndpointName']} serves {report['ModelPackageArn']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
