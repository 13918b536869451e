"""Small helpers that the CLIs, the local engine and the AWS side share, written once."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
from datetime import datetime, timezone
from typing import Iterator, Optional

DEFAULT_PIPELINE_MODULE = "pipelines.pipeline"  # module whose get_pipeline() builds the definition


class UsageError(ValueError):
    """Bad input to a command: reported with exit code 2 before anything runs."""


def utc_iso(ts: float) -> str:
    """``ts`` (seconds since the epoch) as ISO-8601 UTC with milliseconds and a ``Z``:
    ``2026-01-01T12:00:00.000Z`` (what SageMaker shows; ``datetime.fromisoformat`` reads it)."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def utc_now_iso() -> str:
    """Now, in the format of :func:`utc_iso`."""
    return utc_iso(datetime.now(timezone.utc).timestamp())


@contextlib.contextmanager
def quiet_loggers(*names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise the loggers ``names`` to ``level`` for the duration; their levels are restored after."""
    loggers = [logging.getLogger(name) for name in names]
    saved = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in zip(loggers, saved):
            logger.setLevel(old)


def pid_alive(pid: Optional[int]) -> bool:
    """Whether a process with ``pid`` exists on this machine (one of another user counts:
    ``PermissionError`` from the signal-0 probe means the process exists)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def add_backend_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--backend local|aws``, ``--home`` and ``--region``, as every backend-switching command takes them."""
    from pipelines.backends import BACKENDS

    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help=f"{what}: local (default) or aws (SageMaker)")
    parser.add_argument("--home", help="local state directory (default: $IMGPIPE_HOME or ./.imgpipe)")
    parser.add_argument("--region", help="AWS region (aws backend; default: boto3's configuration)")
