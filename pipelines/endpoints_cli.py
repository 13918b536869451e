"""``imgpipe endpoints list|delete`` and ``imgpipe predict``: endpoints, local or SageMaker's.

Every command talks to the hosting interface (:class:`pipelines.backends.Hosting`) that
:func:`pipelines.backends.get_hosting` picks: ``pipelines.local.hosting.LocalHosting``
(``--backend local``, the default: server processes on this machine, started by the deploy
pipeline when a package is approved) or ``pipelines.aws.hosting.SageMakerHosting``
(``--backend aws``).

``imgpipe endpoints list`` shows each local endpoint's ``ENDPOINT_URL``: give it to boto3
(``boto3.client("sagemaker-runtime", endpoint_url=URL)``) and unchanged SageMaker Runtime code
(``invoke_endpoint``, the SDK's ``Predictor``) talks to the local endpoint.

``imgpipe predict --endpoint NAME [--target-model v3/model.tar.gz] IMAGE...`` sends each image (its bytes, with the content type
of its file) and prints a top-k table per image. An image the endpoint refuses (not an image,
too large, ...) is reported with the endpoint's message; the exit code is then 1.

Exit codes: 0 done, 1 a request failed (or AWS refused), 2 bad input (no such endpoint or file).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from pipelines import backends
from pipelines.backends import HostingError
from pipelines.common import add_backend_arguments
from pipelines.local.progress import format_table
from pipelines.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


def get_hosting(args: argparse.Namespace) -> Any:
    """The host of ``--backend`` (local state under ``--home``, AWS in ``--region``)."""
    settings = Settings(home=Path(args.home)) if args.home else Settings()
    return backends.get_hosting(args.backend, region=args.region, settings=settings)


def _error(message: str, code: int = EXIT_USAGE) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _guard(action: Callable[[], int]) -> int:
    """Run ``action``; hosting and AWS errors as one line on stderr."""
    try:
        return action()
    except HostingError as exc:
        return _error(str(exc), EXIT_FAILED)
    except Exception as exc:  # noqa: BLE001 - botocore errors: one line, not a traceback
        if type(exc).__module__.startswith(("botocore", "boto3")):
            return _error(f"{type(exc).__name__}: {exc}", EXIT_FAILED)
        raise


def _time_text(value: Any) -> str:
    text = str(value or "-")
    return text.replace("T", " ")[:19]


# -- imgpipe endpoints ---------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    def action() -> int:
        endpoints = get_hosting(args).list_endpoints()
        if not endpoints:
            print("no endpoints (approve a model package to deploy one: imgpipe models approve VERSION)")
            return EXIT_OK
        local = args.backend == "local"
        rows = [[e.get("EndpointName"), e.get("EndpointStatus"), e.get("Mode", "SingleModel"), _served(e),
                 e.get("Url") or "-" if local else e.get("InstanceType") or "-",
                 e.get("Pid", "-") if local else e.get("InstanceCount", "-"),
                 _time_text(e.get("LastModifiedTime"))] for e in endpoints]
        headers = ["NAME", "STATUS", "MODE", "MODEL PACKAGE / TARGET MODELS",
                   "ENDPOINT_URL" if local else "INSTANCE TYPE", "PID" if local else "COUNT", "UPDATED"]
        print(format_table(headers, rows))
        for e in endpoints:
            if e.get("FailureReason"):
                print(f"{e['EndpointName']}: {e['FailureReason']}")
        if local:
            print("\nboto3: boto3.client(\"sagemaker-runtime\", endpoint_url=ENDPOINT_URL).invoke_endpoint("
                  "EndpointName=NAME, ...)")
        return EXIT_OK

    return _guard(action)


def _served(endpoint: dict) -> str:
    """The package of a single-model endpoint, the target models of a multi-model one."""
    if endpoint.get("Mode") == "MultiModel":
        return ", ".join(endpoint.get("TargetModels") or []) or "-"
    return endpoint.get("ModelPackageArn") or "-"


def cmd_delete(args: argparse.Namespace) -> int:
    def action() -> int:
        hosting = get_hosting(args)
        if hosting.describe_endpoint(args.name) is None:
            return _error(f"no endpoint {args.name!r} (see `imgpipe endpoints list`)")
        hosting.delete_endpoint(args.name)
        print(f"deleted endpoint {args.name}")
        return EXIT_OK

    return _guard(action)


# -- imgpipe predict -----------------------------------------------------------------------
def content_type_of(path: Path) -> str:
    return CONTENT_TYPES.get(path.suffix.lower(), "application/x-image")


def prediction_rows(answer: Any, top_k: int) -> list[list[Any]]:
    """``[{"label", "index", "probability"}, ...]`` → table rows (at most ``top_k``)."""
    if not isinstance(answer, list) or not all(isinstance(a, dict) and "label" in a for a in answer):
        raise ValueError(f"unexpected answer (not a top-k list): {str(answer)[:200]}")
    return [[a["label"], a.get("index", "-"), f"{float(a.get('probability', 0.0)):.4f}"] for a in answer[:top_k]]


def cmd_predict(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        return _error("--top-k must be at least 1")
    paths = [Path(p) for p in args.images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        return _error(f"no such image file: {', '.join(missing)}")

    def action() -> int:
        hosting = get_hosting(args)
        if args.backend == "local" and hosting.describe_endpoint(args.endpoint) is None:
            return _error(f"no endpoint {args.endpoint!r} (see `imgpipe endpoints list`)")
        failed = 0
        target = {"target_model": args.target_model} if args.target_model else {}
        for number, path in enumerate(paths):
            if number:
                print()
            try:
                answer = hosting.invoke(args.endpoint, path.read_bytes(), content_type_of(path), **target)
                rows = prediction_rows(answer, args.top_k)
            except (HostingError, ValueError) as exc:
                failed += 1
                print(f"{path}: error: {exc}", file=sys.stderr)
                continue
            print(f"{path}:")
            print(format_table(["LABEL", "INDEX", "PROBABILITY"], rows))
        if failed:
            print(f"{failed} of {len(paths)} images failed", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK

    return _guard(action)


# -- wiring ----------------------------------------------------------------------------------
def register(subparsers) -> None:
    """Add ``endpoints list|delete`` and ``predict`` to the ``imgpipe`` parser."""
    endpoints = subparsers.add_parser("endpoints", help="model endpoints (local server processes or SageMaker)",
                                      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = endpoints.add_subparsers(dest="endpoints_command", metavar="SUBCOMMAND")
    sub.required = True
    listing = sub.add_parser("list", help="endpoints, their status and the model package they serve")
    listing.set_defaults(func=cmd_list)
    delete = sub.add_parser("delete", help="stop an endpoint's server and forget it")
    delete.add_argument("name", metavar="NAME")
    delete.set_defaults(func=cmd_delete)
    predict = subparsers.add_parser("predict", help="classify images with an endpoint (top-k table per image)",
                                    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    predict.add_argument("--endpoint", required=True, metavar="NAME", help="endpoint name")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    predict.add_argument("--target-model", metavar="TARGET",
                         help="the model of a multi-model endpoint to ask, e.g. v3/model.tar.gz "
                              "(see `imgpipe endpoints list`)")
    predict.add_argument("--top-k", type=int, default=5, help="rows per image (the endpoint answers up to 5)")
    predict.set_defaults(func=cmd_predict)
    for cmd in (listing, delete, predict):
        add_backend_arguments(cmd, "endpoints")
