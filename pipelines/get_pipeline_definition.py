"""``get-pipeline-definition``: print (or write) a pipeline's definition JSON, offline.

Same arguments as AWS's SageMaker project seed code (``-n/--module-name``, ``-kwargs/--kwargs``,
``-f/--file-name``), so existing CodeBuild projects keep working. Unlike the seed, it needs no
AWS account: the definition is built inside moto's in-process fake (:mod:`pipelines.offline`);
``region``, ``role`` and ``default_bucket`` default to the local settings.

Also ``imgpipe definition`` (:func:`register`): the same, with the defaults, optionally copying
the code the definition names into the local object store (``--store``).
"""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

from pipelines.common import DEFAULT_PIPELINE_MODULE, UsageError
from pipelines.pipeline_args import parse_kwargs

QUIET_LOGGERS = ("sagemaker", "sagemaker.config", "botocore", "boto3", "moto", "urllib3")


def quiet_sdk(verbose: bool = False) -> None:
    """Keep the SDK's INFO chatter and build-time warnings off the console (stderr)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    if verbose:
        logging.getLogger("sagemaker").setLevel(logging.DEBUG)  # pipelines.offline: keep logs
        logging.basicConfig(level=logging.INFO)
    else:
        warnings.filterwarnings("ignore", module=r"sagemaker(\..*)?")
        warnings.filterwarnings("ignore", message=r".*PipelineSession.*")


def add_definition_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n", "--module-name", dest="module_name", default=DEFAULT_PIPELINE_MODULE,
        help=f"module with get_pipeline(**kwargs) (default: {DEFAULT_PIPELINE_MODULE})",
    )
    parser.add_argument(
        "-kwargs", "--kwargs", dest="kwargs", default=None,
        help='JSON object of keyword arguments for get_pipeline, e.g. \'{"region": "eu-west-1"}\'',
    )
    parser.add_argument(
        "-f", "--file-name", dest="file_name", default=None,
        help="write the definition JSON to this file instead of stdout",
    )
    parser.add_argument(
        "--store", action="store_true",
        help="also copy the code the definition names into the local object store "
        "($IMGPIPE_HOME/s3), where the local engine reads it",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="SDK logs and tracebacks")


def run_definition(args: argparse.Namespace) -> int:
    quiet_sdk(args.verbose)
    try:
        from pipelines.offline import build_definition_json

        kwargs = parse_kwargs(args.kwargs)
        store = None
        if getattr(args, "store", False):
            from pipelines.local.object_store import ObjectStore
            from pipelines.settings import Settings

            store = ObjectStore(Settings().s3_root)
        content = build_definition_json(args.module_name, kwargs, store=store)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a CLI: one line, not a traceback
        if args.verbose:
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.file_name:
        path = Path(args.file_name)
        if path.parent != Path(""):
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        print(f"wrote {path}", file=sys.stderr)
    else:
        sys.stdout.write(content + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="get-pipeline-definition",
        description="Gets the pipeline definition JSON for a pipeline module (offline).",
    )
    add_definition_arguments(parser)
    return parser


def register(subparsers) -> None:
    """``imgpipe definition``."""
    parser = subparsers.add_parser(
        "definition",
        help="print the model-build pipeline definition JSON (offline)",
        description="Build the pipeline definition offline (moto, no credentials) and print "
        "or write it. Defaults: the local region, bucket and role of imgpipe's settings.",
    )
    add_definition_arguments(parser)
    parser.set_defaults(func=run_definition)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_definition(args)


if __name__ == "__main__":
    sys.exit(main())
