"""Small pieces of SageMaker's container contract shared by the entry points."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Mapping, Optional


def write_failure(message: str) -> None:
    """Record why the job failed: SageMaker shows ``/opt/ml/output/failure`` as its
    FailureReason (``$SM_OUTPUT_FAILURE`` overrides the path, as the local engine does)."""
    path = Path(os.environ.get("SM_OUTPUT_FAILURE", "/opt/ml/output/failure"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(message[:1024])
    except OSError:  # not in a container and no override: the traceback still tells
        pass


@contextlib.contextmanager
def failure_reported() -> Iterator[None]:
    """Run an entry point's work: an exception is recorded with :func:`write_failure` (SageMaker's
    FailureReason), then raised on (the traceback goes to the job's log)."""
    try:
        yield
    except Exception as exc:
        write_failure(f"{type(exc).__name__}: {exc}")
        raise


def positive_int_from_env(environ: Mapping[str, str], name: str, default: Optional[int] = None) -> Optional[int]:
    """A positive integer setting from the environment (``1_000`` allowed), else ``default``;
    a value that is not a positive integer is an error naming the variable."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < 1:
        raise ValueError(f"{name}={value} must be at least 1")
    return value
