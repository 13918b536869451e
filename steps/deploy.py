"""Deploy the Approved model packages of a group to an endpoint: the ``Deploy`` step.

::

    python deploy.py --model-package-group G --endpoint-name E --instance-type ml.m5.large \
        --instance-count 1 --data-capture-percent 20 --data-capture-url s3://b/p/data-capture \
        --model-role-arn arn:aws:iam::...:role/R [--endpoint-mode SingleModel|MultiModel] \
        [--multi-model-url s3://b/p/multi-model] [--smoke-test-data-url s3://...] \
        [--smoke-test-min-accuracy -1] [--rollback-alarms A,B] [--bake-seconds 300] [--region R] \
        --output-dir /opt/ml/processing/output/deployment

``SingleModel`` (default): picks the newest Approved package of the group (sorted newest first
by creation time and version; Rejected and pending ones never), then creates or updates the
endpoint to serve it and waits until it is healthy (nothing to do when it already serves that
package with these settings). ``MultiModel``: every Approved package of the group behind one
multi-model endpoint (``Hosting.deploy_multi_model``), each reached with ``TargetModel``
``v<version>/model.tar.gz``. Approval and rejection events both run this step: after a
rejection it serves the packages that are still approved (a rollback).

Writes ``deployment.json`` (property file ``DeploymentReport``): ``EndpointName``,
``EndpointMode``, ``ModelPackageArn``/``ModelPackageVersion`` (the newest package deployed),
``ModelPackageGroupName``, ``Action`` (Created/Updated/Unchanged), ``Targets`` (one per package
served: ARN, version, ``TargetModel`` (``null`` for a single model) and ``EvaluatedAccuracy``,
the test accuracy the build recorded, which the smoke test compares the endpoint with),
``Previous`` (``Mode`` and ``ModelPackageArns`` the endpoint served before this step, empty if
nothing: the smoke test rolls back to it when the new model fails, or deletes the endpoint),
``PreviousModelPackageArn`` (the single previous package, ``""`` if none) and
``SmokeTestDataUrl``: the held-out images the smoke test sends, ``--smoke-test-data-url`` if
given, else the test split the newest package's build recorded (metadata ``test_data_url``,
else the build pipeline's ``PrepareData`` ``test`` output next to the package's evaluation
report). The held-out data and each package's evaluated accuracy (unless
``--smoke-test-min-accuracy`` sets a floor to test against instead) are checked before
anything is deployed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from deploy_backends import fail, get_hosting, get_registry, target_model_name

# The build pipeline's evaluation report and test split (SDK default output locations:
# s3://<bucket>/<pipeline>/<execution id>/<step>/output/<output name>).
EVALUATION_SUFFIX = "/EvaluateModel/output/evaluation/evaluation.json"
TEST_SPLIT_SUFFIX = "/PrepareData/output/test"
REPORT_NAME = "deployment.json"
ENDPOINT_MODES = ("SingleModel", "MultiModel")
ACCURACY_PATH = ("multiclass_classification_metrics", "accuracy", "value")


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
    parser.add_argument("--endpoint-mode", default="SingleModel", help="SingleModel or MultiModel")
    parser.add_argument("--multi-model-url", default=None, help="S3 prefix of multi-model artifacts (SageMaker)")
    parser.add_argument("--smoke-test-data-url", default="", help="held-out images (default: the package's test split)")
    parser.add_argument("--smoke-test-min-accuracy", type=float, default=-1.0,
                        help="the smoke test's absolute floor (negative: off)")
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


def evaluated_accuracy(package: dict) -> Optional[float]:
    """The package's own test accuracy: its evaluation report's, else the build's ``test_accuracy``."""
    report: Any = package.get("EvaluationMetrics") or {}
    for key in ACCURACY_PATH:
        report = report.get(key) if isinstance(report, dict) else None
    if report is None:
        report = (package.get("CustomerMetadataProperties") or {}).get("test_accuracy")
    try:
        return float(report) if report not in (None, "") else None
    except (TypeError, ValueError):
        return None


def check_args(args: argparse.Namespace) -> None:
    if args.endpoint_mode not in ENDPOINT_MODES:
        raise DeployError(f"EndpointMode must be one of {', '.join(ENDPOINT_MODES)}, not {args.endpoint_mode!r}")
    if args.instance_count < 1:
        raise DeployError(f"EndpointInstanceCount must be at least 1, not {args.instance_count}")
    if not 0 <= args.data_capture_percent <= 100:
        raise DeployError(f"DataCaptureSamplingPercentage must be 0-100, not {args.data_capture_percent}")


def served(hosting: Any, registry: Any, endpoint_name: str, group: str) -> dict:
    """What ``endpoint_name`` serves now: ``{"Mode", "ModelPackageArns"}``; empty if there is no
    (healthy) endpoint. A multi-model endpoint's targets ``v<version>/model.tar.gz`` are
    versions of ``group``."""
    described = hosting.describe_endpoint(endpoint_name)
    if not described or described.get("EndpointStatus") == "Failed":
        return {"Mode": "", "ModelPackageArns": []}
    if described.get("Mode") == "MultiModel":
        versions = [name.split("/")[0][1:] for name in described.get("TargetModels") or []]
        arns = [registry.describe(f"{group}/{v}")["ModelPackageArn"] for v in versions if v.isdigit()]
        return {"Mode": "MultiModel", "ModelPackageArns": arns}
    arn = described.get("ModelPackageArn")
    return {"Mode": "SingleModel", "ModelPackageArns": [arn] if arn else []}


def approved_packages(args: argparse.Namespace, registry: Any) -> list[dict]:
    """The packages to serve, newest first, described: the newest Approved one (SingleModel) or all."""
    group = args.model_package_group
    if args.endpoint_mode == "SingleModel":
        newest = registry.latest_approved(group)
        packages = [newest] if newest else []
    else:
        listed = registry.list_packages(group=group, status="Approved")
        packages = [registry.describe(p["ModelPackageArn"]) for p in listed]
        packages.sort(key=lambda p: int(p.get("ModelPackageVersion", 0)), reverse=True)
    if not packages:
        raise DeployError(
            f"no Approved model package in group {group!r}: approve one "
            f"(imgpipe models approve VERSION --group {group}) and deploy again")
    return packages


def targets(args: argparse.Namespace, packages: list[dict]) -> list[dict]:
    """One smoke-test target per package; :class:`DeployError` for an accuracy nothing recorded
    (unless the smoke test has an absolute floor to test against instead)."""
    found = []
    for package in packages:
        expected = evaluated_accuracy(package)
        if expected is None and args.smoke_test_min_accuracy < 0:
            raise DeployError(
                f"no evaluated accuracy recorded for {package['ModelPackageArn']} (evaluation report or "
                "metadata test_accuracy): set SmokeTestMinAccuracy to smoke-test it against a floor instead")
        found.append({"ModelPackageArn": package["ModelPackageArn"],
                      "ModelPackageVersion": package.get("ModelPackageVersion"),
                      "TargetModel": target_model_name(package) if args.endpoint_mode == "MultiModel" else None,
                      "EvaluatedAccuracy": expected})
    return found


def deploy(args: argparse.Namespace, registry: Any, hosting: Any) -> dict:
    """Deploy the group's approved package(s) as ``args.endpoint_mode`` says; the deployment report."""
    check_args(args)
    packages = approved_packages(args, registry)
    newest = packages[0]
    data_url = args.smoke_test_data_url or held_out_data_url(newest)
    if not data_url:
        raise DeployError(
            f"no held-out test data known for {newest['ModelPackageArn']}: "
            "set the SmokeTestDataUrl parameter to an S3 prefix of <class>/<image> folders")
    planned = targets(args, packages)
    previous = served(hosting, registry, args.endpoint_name, args.model_package_group)
    options = {"instance_type": args.instance_type, "instance_count": args.instance_count,
               "data_capture_percent": args.data_capture_percent}
    if args.endpoint_mode == "MultiModel":
        print(f"deploying {len(packages)} approved packages (versions "
              f"{', '.join(str(p.get('ModelPackageVersion')) for p in packages)}) to multi-model endpoint "
              f"{args.endpoint_name} ...", flush=True)
        result = hosting.deploy_multi_model(args.endpoint_name, packages, **options)
    else:
        print(f"deploying {newest['ModelPackageArn']} (version {newest.get('ModelPackageVersion')}) "
              f"to {args.endpoint_name} ...", flush=True)
        result = hosting.deploy(args.endpoint_name, newest, **options)
    single_previous = previous["ModelPackageArns"][0] if previous["Mode"] == "SingleModel" else ""
    return {
        "EndpointName": args.endpoint_name,
        "EndpointMode": args.endpoint_mode,
        "ModelPackageArn": newest["ModelPackageArn"],
        "ModelPackageVersion": newest.get("ModelPackageVersion"),
        "ModelPackageGroupName": args.model_package_group,
        "Action": result["Action"],
        "Targets": planned,
        "Previous": previous,
        "PreviousModelPackageArn": single_previous,
        "SmokeTestDataUrl": data_url,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        registry = get_registry(args.region)
        hosting = get_hosting(
            args.region, model_role_arn=args.model_role_arn, data_capture_url=args.data_capture_url,
            rollback_alarms=[a.strip() for a in args.rollback_alarms.split(",") if a.strip()],
            bake_seconds=args.bake_seconds, multi_model_url=args.multi_model_url)
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
