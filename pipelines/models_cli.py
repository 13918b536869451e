"""``imgpipe models list|describe|approve|reject``: the model registry, local or SageMaker's.

Every command takes ``--backend local|aws`` (local by default) and talks to the registry
interface (:class:`pipelines.backends.ModelRegistry`) that :func:`pipelines.backends.get_registry`
picks: ``LocalModelRegistry`` or ``pipelines.aws.registry.SageMakerModelRegistry``. Approving or
rejecting a package is what starts the deploy pipeline: on AWS through the EventBridge rule of
``imgpipe triggers apply``; locally through the local registry's approval event. Locally,
``approve``/``reject`` take deploy-pipeline parameters for the run they start
(``-p EndpointMode=MultiModel -p SmokeTestMaxAccuracyDrop=0.05``), checked against the deploy
definition's parameters before anything changes.

Exit codes: 0 done, 1 AWS refused (credentials, permissions) or, locally, the deploy pipeline
run that an approve/reject started failed (the approval change itself is recorded), 2 bad
input (unknown package, bad status).
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from pipelines.backends import get_registry
from pipelines.common import UsageError, add_backend_arguments
from pipelines.local.progress import format_table
from pipelines.settings import Settings

EXIT_OK, EXIT_AWS, EXIT_USAGE = 0, 1, 2
EXIT_DEPLOY_FAILED = 1
ACCURACY_PATH = ("multiclass_classification_metrics", "accuracy", "value")


def _settings(args: argparse.Namespace) -> Settings:
    """Local home from ``--home``; for AWS the region from ``--region`` or boto3's configuration."""
    kwargs: dict = {}
    if getattr(args, "home", None):
        kwargs["home"] = Path(args.home)
    region = getattr(args, "region", None)
    if region is None and getattr(args, "backend", "local") == "aws":
        import boto3

        region = boto3.Session().region_name
    if region:
        kwargs["region"] = region
    return Settings(**kwargs)


def _registry(args: argparse.Namespace, settings: Settings) -> Any:
    """The backend's registry; locally wired to the event bus with the ``-p`` deploy parameters
    (checked against the deploy definition: a bad name, type or value is a ``ValueError``)."""
    from pipelines.local.cli import parse_parameters

    values = parse_parameters(getattr(args, "parameter", None))
    if values and args.backend != "local":
        raise UsageError("-p sets deploy-pipeline parameters of a local deploy; on AWS the EventBridge rule's "
                         "parameters apply (imgpipe triggers apply)")
    if values:
        from pipelines.local.events import check_deploy_parameters, local_registry

        return local_registry(settings, check_deploy_parameters(settings, values))
    return get_registry(args.backend, region=settings.region, settings=settings, approval_events=True)


def _run(args: argparse.Namespace, action: Callable[[Any], int]) -> int:
    """Run ``action(registry)``; errors as one line on stderr with the exit code."""
    try:
        settings = _settings(args)
        return action(_registry(args, settings))
    except (LookupError, ValueError) as exc:  # BackendError, RegistryError: bad input
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - botocore errors: one line, not a traceback
        from pipelines.run_pipeline import _error_message

        print(f"error: {_error_message(exc)[0]}", file=sys.stderr)
        return EXIT_AWS


# -- formatting ------------------------------------------------------------------------
def _time_text(value: Any) -> str:
    """A datetime, epoch seconds or ISO-8601 text as local ``YYYY-MM-DD HH:MM:SS``."""
    try:
        if isinstance(value, (int, float)):
            value = datetime.fromtimestamp(float(value))
        elif not isinstance(value, datetime):
            value = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, OSError):
        return str(value) if value else "-"


def accuracy(package: dict) -> Any:
    """Test accuracy: the evaluation report's, else the build's recorded ``test_accuracy``."""
    report: Any = package.get("EvaluationMetrics") or {}
    for key in ACCURACY_PATH:
        report = report.get(key) if isinstance(report, dict) else None
    return report if report is not None else (package.get("CustomerMetadataProperties") or {}).get("test_accuracy")


def _accuracy_text(value: Any) -> str:
    try:
        return f"{float(value):.4f}"
    except (TypeError, ValueError):
        return "-" if value is None else str(value)


def summary(package: dict) -> str:
    """Status, metrics, hyperparameters and lineage of a described package, as text."""
    metadata = package.get("CustomerMetadataProperties") or {}
    report = package.get("EvaluationMetrics") or {}
    metrics = report.get("multiclass_classification_metrics") or {}
    rows = [
        ("Model package", package.get("ModelPackageArn")),
        ("Group / version", f"{package.get('ModelPackageGroupName')} / {package.get('ModelPackageVersion')}"),
        ("Approval", package.get("ModelApprovalStatus")
         + (f" ({package['ApprovalDescription']})" if package.get("ApprovalDescription") else "")),
        ("Created", _time_text(package.get("CreationTime"))),
        ("Model data", package.get("ModelDataUrl")),
        ("Metrics", ", ".join(f"{name}={value['value']}" for name, value in sorted(metrics.items())
                              if isinstance(value, dict) and "value" in value)
         or (f"test_accuracy={metadata['test_accuracy']}" if metadata.get("test_accuracy") else None)),
        ("Test images", report.get("num_test_images")),
        ("Hyperparameters", ", ".join(f"{k[3:].replace('_', '-')}={v}" for k, v in sorted(metadata.items())
                                      if k.startswith("hp_"))),
        ("Architecture", " ".join(f"{metadata[k]}" + (" px" if k == "image_size" else "")
                                  for k in ("architecture", "image_size") if metadata.get(k))),
        ("Pipeline execution", package.get("PipelineExecutionArn") or metadata.get("pipeline_execution_arn")
         or (package.get("MetadataProperties") or {}).get("GeneratedBy")),
        ("Best training job", metadata.get("best_training_job")),
        ("Input data", metadata.get("input_data_url")),
        ("Evaluation report", package.get("EvaluationMetricsUri")),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name + ':':<{width + 1}} {value}" for name, value in rows if value not in (None, ""))


# -- commands ----------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    def action(registry: Any) -> int:
        packages = registry.list_packages(group=args.group, status=args.status)
        if not packages:
            print("no model packages" + (f" in group {args.group}" if args.group else ""))
            return EXIT_OK
        def test_accuracy(package: dict) -> Any:
            # SageMaker's list gives summaries without metrics: describe reads the evaluation report
            found = accuracy(package)
            return found if found is not None else accuracy(registry.describe(package["ModelPackageArn"]))

        rows = [[p.get("ModelPackageGroupName"), p.get("ModelPackageVersion"), p.get("ModelApprovalStatus"),
                 _time_text(p.get("CreationTime")), _accuracy_text(test_accuracy(p)), p.get("ModelPackageArn")]
                for p in packages]
        print(format_table(["GROUP", "VERSION", "STATUS", "CREATED", "ACCURACY", "ARN"], rows))
        return EXIT_OK

    return _run(args, action)


def cmd_describe(args: argparse.Namespace) -> int:
    def action(registry: Any) -> int:
        package = registry.describe(args.package, group=args.group)
        print(json.dumps(package, indent=2, sort_keys=True, default=str) if args.json else summary(package))
        return EXIT_OK

    return _run(args, action)


def _set_status(args: argparse.Namespace, status: str) -> int:
    def action(registry: Any) -> int:
        before = registry.describe(args.package, group=args.group)
        after = registry.update_approval(before["ModelPackageArn"], status, reason=args.reason or "")
        print(f"{after['ModelPackageArn']}: {before.get('ModelApprovalStatus')} -> {after.get('ModelApprovalStatus')}"
              + (f" ({args.reason})" if args.reason else ""))
        return _deploy_outcome(registry)

    return _run(args, action)


def _deploy_outcome(registry: Any) -> int:
    """Exit 1, with one line per failure, when the local deploy run the change started failed."""
    from pipelines.local.events import failed_deploys

    failures = failed_deploys(getattr(registry, "event_outcomes", None) or [])
    for line in failures:
        print(f"error: {line} (the approval change is recorded)", file=sys.stderr)
    return EXIT_DEPLOY_FAILED if failures else EXIT_OK


def cmd_approve(args: argparse.Namespace) -> int:
    return _set_status(args, "Approved")


def cmd_reject(args: argparse.Namespace) -> int:
    return _set_status(args, "Rejected")


# -- wiring ------------------------------------------------------------------------------
def _package_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("package", metavar="VERSION|ARN",
                        help="version (with --group if ambiguous), GROUP/VERSION or ARN")
    parser.add_argument("--group", help="model package group of VERSION")


def register(subparsers) -> None:
    """Add ``models list|describe|approve|reject`` to the ``imgpipe`` parser."""
    models = subparsers.add_parser("models", help="model packages in the registry (local or SageMaker)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    sub.required = True
    listing = sub.add_parser("list", help="model package versions, newest first")
    listing.add_argument("--group", help="model package group")
    listing.add_argument("--status", help="approval status (PendingManualApproval, Approved, Rejected)")
    listing.set_defaults(func=cmd_list)
    describe = sub.add_parser("describe", help="metrics, hyperparameters and lineage of one package")
    _package_argument(describe)
    describe.add_argument("--json", action="store_true", help="the full DescribeModelPackage JSON")
    describe.set_defaults(func=cmd_describe)
    for name, func, text in (("approve", cmd_approve, "approve a package (starts the deploy pipeline)"),
                             ("reject", cmd_reject, "reject a package (rolls the endpoint back)")):
        cmd = sub.add_parser(name, help=text)
        _package_argument(cmd)
        cmd.add_argument("--reason", help="approval description")
        cmd.add_argument("-p", "--parameter", action="append", metavar="NAME=VALUE",
                         help="deploy-pipeline parameter of the local deploy it starts (repeatable), "
                              "e.g. -p EndpointMode=MultiModel")
        cmd.set_defaults(func=func)
    for cmd in (listing, describe, *(sub.choices[n] for n in ("approve", "reject"))):
        add_backend_arguments(cmd, "registry")
