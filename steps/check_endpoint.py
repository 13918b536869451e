"""Send held-out test images to the endpoint and check its answers: the ``SmokeTest`` step.

::

    python check_endpoint.py --endpoint-name E --test-dir /opt/ml/processing/test \
        [--max-accuracy-drop 0.02] [--min-accuracy -1] [--max-images 200] [--region R] \
        [--deployment-report /opt/ml/processing/deployment/deployment.json \
         --instance-type ml.m5.large --instance-count 1 --data-capture-percent 20 \
         --data-capture-url s3://b/p/data-capture --model-role-arn arn:aws:iam::...:role/R \
         --multi-model-url s3://b/p/multi-model --bake-seconds 300] \
        [--expected-accuracy 0.93] [--target-model v3/model.tar.gz] \
        --output-dir /opt/ml/processing/output/smoke-test

``--test-dir`` holds ``<class>/<image>`` folders (the build's test split). Up to
``--max-images`` images are sent, spread over the classes (the same ones every run), each as
its own request with the content type of its file, to every target of the deployment (the
single model, or each ``TargetModel`` of a multi-model endpoint). A target fails on any error
(HTTP error, an answer that is not a top-k list of labels), when its top-1 accuracy is more
than ``--max-accuracy-drop`` below the accuracy its package was evaluated at (the Deploy step's
report, or ``--expected-accuracy``), and, when ``--min-accuracy`` is not negative, below that
floor. The step fails when any target fails. Writes ``smoke-test.json`` (per target: accuracy,
expected accuracy, counts, errors; the recovery).

A failed smoke test with a Deploy report (the deploy pipeline) recovers the endpoint:

* Deploy changed nothing (``Unchanged``): nothing to do;
* a **first deployment** (nothing served before): the endpoint is **deleted**
  (``Hosting.delete_endpoint``), so nothing is left serving a failed model;
* an update: rolled back to what the endpoint served before (its report's ``Previous``), through
  the same ``Hosting.deploy`` (or ``deploy_multi_model``) with those packages as the registry
  describes them, without rollback alarms (an alarm the failed model set off must not undo the
  rollback); not when none of them is Approved any more (the failure says so).
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
    """The endpoint answered wrongly, failed, or is not accurate enough (``report``: the results,
    empty when nothing was sent)."""

    def __init__(self, message: str, report: Optional[dict] = None):
        super().__init__(message)
        self.report = report or {}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Smoke-test an endpoint with held-out images.")
    parser.add_argument("--endpoint-name", required=True)
    parser.add_argument("--test-dir", default="/opt/ml/processing/test")
    parser.add_argument("--max-accuracy-drop", type=float, default=0.02,
                        help="largest accepted drop below the package's evaluated accuracy")
    parser.add_argument("--min-accuracy", type=float, default=-1.0, help="absolute floor; negative: off")
    parser.add_argument("--max-images", type=int, default=200)
    parser.add_argument("--region", default=None)
    parser.add_argument("--output-dir", default="/opt/ml/processing/output/smoke-test")
    parser.add_argument("--deployment-report", default="",
                        help="the Deploy step's deployment.json: targets, evaluated accuracies, recovery")
    parser.add_argument("--expected-accuracy", type=float, default=None,
                        help="evaluated accuracy of the model (without --deployment-report)")
    parser.add_argument("--target-model", default=None, help="TargetModel (without --deployment-report)")
    recovery = parser.add_argument_group("recovery on failure (the Deploy step's settings)")
    recovery.add_argument("--instance-type", default="ml.m5.large")
    recovery.add_argument("--instance-count", type=int, default=1)
    recovery.add_argument("--data-capture-percent", type=int, default=20)
    recovery.add_argument("--data-capture-url", default=None, help="S3 prefix of captured data (SageMaker)")
    recovery.add_argument("--model-role-arn", default=None, help="execution role of the model (SageMaker)")
    recovery.add_argument("--multi-model-url", default=None, help="S3 prefix of multi-model artifacts (SageMaker)")
    recovery.add_argument("--bake-seconds", type=int, default=300)
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


def _accuracy_of(hosting: Any, endpoint_name: str, images: list[tuple[str, str]],
                 target_model: Optional[str]) -> tuple[int, list[str]]:
    """Correct answers and error lines of one target over ``images``."""
    correct, errors = 0, []
    options = {"target_model": target_model} if target_model else {}
    for path, expected in images:
        content_type = CONTENT_TYPES.get(Path(path).suffix.lower(), "application/x-image")
        try:
            answer = hosting.invoke(endpoint_name, Path(path).read_bytes(), content_type, **options)
            correct += top_label(answer) == expected
        except Exception as exc:  # noqa: BLE001 - any failed request fails the target
            text = str(exc) if isinstance(exc, HostingError) else f"{type(exc).__name__}: {exc}"
            errors.append(f"{Path(path).parent.name}/{Path(path).name}: {text}")
    return correct, errors


def check_target(hosting: Any, endpoint_name: str, images: list[tuple[str, str]], target: dict,
                 max_drop: float, min_accuracy: float) -> dict:
    """One target's result: accuracy, expected accuracy, errors and ``failure`` (``""``: passed)."""
    name = target.get("TargetModel")
    label = f"{endpoint_name} (TargetModel {name})" if name else endpoint_name
    expected = target.get("EvaluatedAccuracy")
    correct, errors = _accuracy_of(hosting, endpoint_name, images, name)
    accuracy = correct / len(images)
    result = {"TargetModel": name, "ModelPackageArn": target.get("ModelPackageArn"), "images": len(images),
              "correct": correct, "accuracy": accuracy, "evaluated_accuracy": expected,
              "errors": errors[:20], "error_count": len(errors), "failure": ""}
    on = f"on {len(images)} held-out images"
    if errors:
        result["failure"] = f"{len(errors)} of {len(images)} requests to {label} failed; first: {errors[0]}"
    elif expected is not None and accuracy < float(expected) - max_drop - 1e-9:
        result["failure"] = (f"accuracy {accuracy:.4f} of {label} {on} is more than SmokeTestMaxAccuracyDrop "
                             f"{max_drop} below its evaluated accuracy {float(expected):.4f}")
    elif min_accuracy >= 0 and accuracy < min_accuracy:
        result["failure"] = f"accuracy {accuracy:.4f} of {label} {on} is below SmokeTestMinAccuracy {min_accuracy}"
    elif expected is None and min_accuracy < 0:
        result["failure"] = (f"no evaluated accuracy known for {label} to compare with, and no "
                             "SmokeTestMinAccuracy floor: nothing to judge it by")
    return result


def smoke_test(hosting: Any, endpoint_name: str, images: list[tuple[str, str]], targets: list[dict],
               max_drop: float = 0.02, min_accuracy: float = -1.0) -> dict:
    """Invoke every target once per image; the report. Raises :class:`SmokeTestFailed`
    (message, report) when any target fails."""
    if not images:
        raise SmokeTestFailed("no test images to send")
    results = [check_target(hosting, endpoint_name, images, t, max_drop, min_accuracy) for t in targets]
    report = {"EndpointName": endpoint_name, "max_accuracy_drop": max_drop,
              "min_accuracy": min_accuracy if min_accuracy >= 0 else None, "targets": results,
              **{k: results[0][k] for k in ("images", "correct", "accuracy", "error_count")}}
    failures = [r["failure"] for r in results if r["failure"]]
    if failures:
        raise SmokeTestFailed("; ".join(failures), report)
    return report


def recover(args: argparse.Namespace, hosting: Any, deployment: dict) -> str:
    """Undo a failed deployment (see the module doc); what was done, as a sentence."""
    endpoint = args.endpoint_name
    previous = deployment.get("Previous") or {}
    arns = list(previous.get("ModelPackageArns") or [])
    if deployment.get("Action") == "Unchanged":
        return f"{endpoint} already served this model before the Deploy step (Unchanged): nothing to roll back"
    if not arns:
        try:
            hosting.delete_endpoint(endpoint)
        except Exception as exc:  # noqa: BLE001 - reported with the smoke test's failure
            return (f"deleting {endpoint} (first deployment) FAILED ({type(exc).__name__}: {exc}): "
                    "it may serve the failed model")
        return f"deleted {endpoint}: a first deployment, nothing is left serving the failed model"
    try:
        return _roll_back(args, hosting, previous.get("Mode") or "SingleModel", arns)
    except Exception as exc:  # noqa: BLE001 - reported with the smoke test's failure
        return (f"rolling {endpoint} back to {', '.join(arns)} FAILED ({type(exc).__name__}: {exc}): "
                "it may serve the failed model")


def _roll_back(args: argparse.Namespace, hosting: Any, mode: str, arns: list[str]) -> str:
    """Serve ``arns`` (still Approved ones) again, as ``mode`` did before the Deploy step."""
    endpoint = args.endpoint_name
    registry = get_registry(args.region)
    packages = [registry.describe(arn) for arn in arns]
    approved = [p for p in packages if p.get("ModelApprovalStatus") == "Approved"]
    if not approved:
        statuses = ", ".join(f"{p['ModelPackageArn']} is {p.get('ModelApprovalStatus')}" for p in packages)
        return (f"not rolled back: what {endpoint} served before is no longer approved ({statuses} now); "
                f"{endpoint} still serves the failed model")
    options = {"instance_type": args.instance_type, "instance_count": args.instance_count,
               "data_capture_percent": args.data_capture_percent}
    if mode == "MultiModel":
        result = hosting.deploy_multi_model(endpoint, approved, **options)
        versions = ", ".join(str(p.get("ModelPackageVersion")) for p in approved)
        return f"rolled {endpoint} back to multi-model versions {versions} ({result['Action']})"
    result = hosting.deploy(endpoint, approved[0], **options)
    return (f"rolled {endpoint} back to {approved[0]['ModelPackageArn']} "
            f"(version {approved[0].get('ModelPackageVersion')}, {result['Action']})")


def _hosting_options(args: argparse.Namespace) -> dict:
    """SageMakerHosting's settings for a rollback: the Deploy step's, without rollback alarms."""
    return {"model_role_arn": args.model_role_arn, "data_capture_url": args.data_capture_url,
            "rollback_alarms": (), "bake_seconds": args.bake_seconds, "multi_model_url": args.multi_model_url}


def _write(output_dir: str, report: dict) -> None:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_NAME).write_text(json.dumps(report, indent=2))


def read_deployment(args: argparse.Namespace) -> dict:
    """The Deploy step's report, or one target from ``--target-model``/``--expected-accuracy``."""
    if args.deployment_report:
        deployment = json.loads(Path(args.deployment_report).read_text())
        if not deployment.get("Targets"):
            raise SmokeTestFailed(f"{args.deployment_report} lists no Targets to test")
        return deployment
    return {"Targets": [{"TargetModel": args.target_model, "EvaluatedAccuracy": args.expected_accuracy}]}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    deployment: dict = {}
    try:
        deployment = read_deployment(args)
        images = pick_images(Path(args.test_dir), args.max_images)
        hosting = get_hosting(args.region, **_hosting_options(args))
        report = smoke_test(hosting, args.endpoint_name, images, deployment["Targets"],
                            args.max_accuracy_drop, args.min_accuracy)
    except SmokeTestFailed as exc:
        recovery = recover(args, hosting, deployment) if args.deployment_report and exc.report else ""
        _write(args.output_dir, {**exc.report, "recovery": recovery})
        return fail(f"SmokeTest failed: {exc}" + (f"; {recovery}" if recovery else ""))
    except Exception as exc:  # noqa: BLE001 - the job's failure reason, then a non-zero exit
        return fail(f"SmokeTest failed: {type(exc).__name__}: {exc}")
    _write(args.output_dir, report)
    for result in report["targets"]:
        name = f" (TargetModel {result['TargetModel']})" if result["TargetModel"] else ""
        expected = result["evaluated_accuracy"]
        print(f"smoke test passed{name}: accuracy {result['accuracy']:.4f} on {result['images']} images"
              + (f" (evaluated: {float(expected):.4f})" if expected is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
