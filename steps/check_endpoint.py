"""Send held-out test images to the endpoint and check its answers: the ``SmokeTest`` step.

::

    python check_endpoint.py --endpoint-name E --test-dir /opt/ml/processing/test \
        --min-accuracy 0.8 [--max-images 200] [--region R] \
        [--deploy-action Updated --previous-package-arn ARN --instance-type ml.m5.large \
         --instance-count 1 --data-capture-percent 20 --data-capture-url s3://b/p/data-capture \
         --model-role-arn arn:aws:iam::...:role/R --bake-seconds 300] \
        --output-dir /opt/ml/processing/output/smoke-test

``--test-dir`` holds ``<class>/<image>`` folders (the build's test split). Up to
``--max-images`` images are sent, spread over the classes (the same ones every run), each as
its own request with the content type of its file. The step fails on any error (HTTP error,
an answer that is not a top-k list of labels) and when the top-1 accuracy is below
``--min-accuracy``. Writes ``smoke-test.json`` (accuracy, counts, errors, rollback).

A failed smoke test rolls the endpoint back (``--deploy-action`` given: the deploy pipeline)
to what it served before the Deploy step (its report's ``PreviousModelPackageArn``), through
the same ``Hosting.deploy`` with that package as the registry describes it, without rollback
alarms (an alarm the failed model set off must not undo the rollback). Nothing to roll back when
Deploy changed nothing (``Unchanged``), on a first deployment (the endpoint keeps the failed
model; the failure says how to delete it) or when the previous package is no longer Approved.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from deploy_backends import HostingError, fail, get_hosting, get_registry

CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
REPORT_NAME = "smoke-test.json"


class SmokeTestFailed(RuntimeError):
    """The endpoint answered wrongly, failed, or is not accurate enough."""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Smoke-test an endpoint with held-out images.")
    parser.add_argument("--endpoint-name", required=True)
    parser.add_argument("--test-dir", default="/opt/ml/processing/test")
    parser.add_argument("--min-accuracy", type=float, default=0.0)
    parser.add_argument("--max-images", type=int, default=200)
    parser.add_argument("--region", default=None)
    parser.add_argument("--output-dir", default="/opt/ml/processing/output/smoke-test")
    rollback = parser.add_argument_group("rollback on failure (the Deploy step's report and settings)")
    rollback.add_argument("--deploy-action", default="", help="Created/Updated/Unchanged; empty: no rollback")
    rollback.add_argument("--previous-package-arn", default="", help="what the endpoint served before Deploy")
    rollback.add_argument("--instance-type", default="ml.m5.large")
    rollback.add_argument("--instance-count", type=int, default=1)
    rollback.add_argument("--data-capture-percent", type=int, default=20)
    rollback.add_argument("--data-capture-url", default=None, help="S3 prefix of captured data (SageMaker)")
    rollback.add_argument("--model-role-arn", default=None, help="execution role of the model (SageMaker)")
    rollback.add_argument("--bake-seconds", type=int, default=300)
    return parser


def pick_images(test_dir: Path, max_images: int) -> list[tuple[str, str]]:
    """``(path, class name)`` pairs: round-robin over the classes, in file order, at most ``max_images``."""
    from imgclf.data import list_image_folder

    classes, samples = list_image_folder(test_dir)
    per_class: list[list[str]] = [[] for _ in classes]
    for path, label in samples:
        per_class[label].append(path)
    picked: list[tuple[str, str]] = []
    for rank in range(max(len(paths) for paths in per_class)):
        for label, paths in enumerate(per_class):
            if rank < len(paths) and len(picked) < max_images:
                picked.append((paths[rank], classes[label]))
    return picked


def top_label(answer: Any) -> str:
    """The first label of a ``[{"label", "index", "probability"}, ...]`` answer."""
    if not isinstance(answer, list) or not answer or not isinstance(answer[0], dict) or "label" not in answer[0]:
        raise HostingError(f"unexpected answer (not a top-k list of labels): {str(answer)[:200]}")
    return str(answer[0]["label"])


def smoke_test(hosting: Any, endpoint_name: str, images: list[tuple[str, str]], min_accuracy: float) -> dict:
    """Invoke the endpoint once per image; the report. Raises :class:`SmokeTestFailed`."""
    if not images:
        raise SmokeTestFailed("no test images to send")
    correct, errors = 0, []
    for path, expected in images:
        content_type = CONTENT_TYPES.get(Path(path).suffix.lower(), "application/x-image")
        try:
            correct += top_label(hosting.invoke(endpoint_name, Path(path).read_bytes(), content_type)) == expected
        except HostingError as exc:
            errors.append(f"{Path(path).parent.name}/{Path(path).name}: {exc}")
    accuracy = correct / len(images)
    report = {"EndpointName": endpoint_name, "images": len(images), "correct": correct,
              "accuracy": accuracy, "min_accuracy": min_accuracy, "errors": errors[:20],
              "error_count": len(errors)}
    if errors:
        raise SmokeTestFailed(f"{len(errors)} of {len(images)} requests to {endpoint_name} failed; "
                              f"first: {errors[0]}", report)
    if accuracy < min_accuracy:
        raise SmokeTestFailed(f"accuracy {accuracy:.4f} on {len(images)} held-out images is below "
                              f"SmokeTestMinAccuracy {min_accuracy}", report)
    return report


def roll_back(args: argparse.Namespace, hosting: Any) -> str:
    """Put back what the endpoint served before the Deploy step; what was done, as a sentence."""
    endpoint = args.endpoint_name
    if args.deploy_action == "Unchanged":
        return f"{endpoint} already served this model before the Deploy step (Unchanged): nothing to roll back"
    if not args.previous_package_arn:
        return (f"nothing to roll back to (first deployment of {endpoint}): it still serves the failed model; "
                f"remove it with `imgpipe endpoints delete {endpoint}` (local) or "
                f"`aws sagemaker delete-endpoint --endpoint-name {endpoint}`")
    arn = args.previous_package_arn
    try:
        previous = get_registry(args.region).describe(arn)
        if previous.get("ModelApprovalStatus") != "Approved":
            return (f"not rolled back: {arn}, which {endpoint} served before, is "
                    f"{previous.get('ModelApprovalStatus')} now; {endpoint} still serves the failed model")
        result = hosting.deploy(endpoint, previous, instance_type=args.instance_type,
                                instance_count=args.instance_count, data_capture_percent=args.data_capture_percent)
    except Exception as exc:  # noqa: BLE001 - reported with the smoke test's failure
        return f"rolling {endpoint} back to {arn} FAILED ({type(exc).__name__}: {exc}): it may serve the failed model"
    return f"rolled {endpoint} back to {arn} (version {previous.get('ModelPackageVersion')}, {result['Action']})"


def _hosting_options(args: argparse.Namespace) -> dict:
    """SageMakerHosting's settings for a rollback: the Deploy step's, without rollback alarms."""
    return {"model_role_arn": args.model_role_arn, "data_capture_url": args.data_capture_url,
            "rollback_alarms": (), "bake_seconds": args.bake_seconds}


def _write(output_dir: str, report: dict) -> None:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_NAME).write_text(json.dumps(report, indent=2))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        images = pick_images(Path(args.test_dir), args.max_images)
        hosting = get_hosting(args.region, **_hosting_options(args))
        report = smoke_test(hosting, args.endpoint_name, images, args.min_accuracy)
    except SmokeTestFailed as exc:
        rollback = roll_back(args, hosting) if args.deploy_action else ""
        failed = {**(exc.args[1] if len(exc.args) > 1 else {}), "rollback": rollback}
        _write(args.output_dir, failed)
        return fail(f"SmokeTest failed: {exc.args[0]}" + (f"; {rollback}" if rollback else ""))
    except Exception as exc:  # noqa: BLE001 - the job's failure reason, then a non-zero exit
        return fail(f"SmokeTest failed: {type(exc).__name__}: {exc}")
    _write(args.output_dir, report)
    print(f"smoke test passed: accuracy {report['accuracy']:.4f} on {report['images']} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
