"""Send held-out test images to the endpoint and check its answers: the ``SmokeTest`` step.

::

    python smoke_test.py --endpoint-name E --test-dir /opt/ml/processing/test \
        --min-accuracy 0.8 [--max-images 200] [--region R] \
        --output-dir /opt/ml/processing/output/smoke-test

``--test-dir`` holds ``<class>/<image>`` folders (the build's test split). Up to
``--max-images`` images are sent, spread over the classes (the same ones every run), each as
its own request with the content type of its file. The step fails on any error (HTTP error,
an answer that is not a top-k list of labels) and when the top-1 accuracy is below
``--min-accuracy``. Writes ``smoke-test.json`` (accuracy, counts, errors).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from deploy_backends import HostingError, fail, get_hosting

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


def _write(output_dir: str, report: dict) -> None:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_NAME).write_text(json.dumps(report, indent=2))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        images = pick_images(Path(args.test_dir), args.max_images)
        report = smoke_test(get_hosting(args.region), args.endpoint_name, images, args.min_accuracy)
    except SmokeTestFailed as exc:
        if len(exc.args) > 1:
            _write(args.output_dir, exc.args[1])
        return fail(f"SmokeTest failed: {exc.args[0]}")
    except Exception as exc:  # noqa: BLE001 - the job's failure reason, then a non-zero exit
        return fail(f"SmokeTest failed: {type(exc).__name__}: {exc}")
    _write(args.output_dir, report)
    print(f"smoke test passed: accuracy {report['accuracy']:.4f} on {report['images']} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
