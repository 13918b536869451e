"""Small pieces of SageMaker's container contract shared by the entry points."""
from __future__ import annotations

import os
from pathlib import Path


def write_failure(message: str) -> None:
    """Record why the job failed: SageMaker shows ``/opt/ml/output/failure`` as its
    FailureReason (``$SM_OUTPUT_FAILURE`` overrides the path, as the local engine does)."""
    path = Path(os.environ.get("SM_OUTPUT_FAILURE", "/opt/ml/output/failure"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(message[:1024])
    except OSError:  # not in a container and no override: the traceback still tells
        pass
