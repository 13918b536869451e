"""``imgpipe``: the project's command line. Each command group lives in its own module,
which exposes ``register(subparsers)``; this module only wires them together."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

from pipelines.private_state import tighten_home, use_private_umask
from pipelines.settings import Settings

# Modules that add commands. Each defines register(subparsers) and sets a ``func`` default.
COMMAND_MODULES = (
    "pipelines.datasets",  # imgpipe data sample
    "pipelines.get_pipeline_definition",  # imgpipe definition
    "pipelines.local.cli",  # imgpipe run / executions / gc
    "pipelines.models_cli",  # imgpipe models list / describe / approve / reject
    "pipelines.endpoints_cli",  # imgpipe endpoints list / delete, imgpipe predict
    "pipelines.aws.triggers",  # imgpipe triggers apply
    "pipelines.weights",  # imgpipe weights install
    "pipelines.report",  # imgpipe report
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgpipe",
        description="Image classification on SageMaker Pipelines, runnable offline.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    use_private_umask()  # the home, database, logs and captured data: this user only
    tighten_home(getattr(args, "home", None) or Settings().home)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `imgpipe models list | head`: not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
