"""The registry and hosting backends of the deploy pipeline's steps (deploy, smoke test).

The backend is named by the job's environment: the local engine sets ``IMGPIPE_BACKEND=local``
and ``IMGPIPE_HOME`` in every job's environment (the local registry and local hosting under
that home); otherwise ``aws`` (SageMaker through boto3). Both are picked by
``pipelines/backends.py``, imported from the imgpipe package where it is installed, or from the
copy shipped next to the step scripts (with the ``aws`` package) in SageMaker's processing
container, where the local engine is never imported.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

try:  # the imgpipe package (local runs, tests)
    from pipelines import backends
except ImportError:  # SageMaker processing job: shipped as dependencies of the step
    import backends  # type: ignore[no-redef]

HostingError = backends.HostingError
target_model_name = backends.target_model_name
ENV_BACKEND = "IMGPIPE_BACKEND"


def backend_name() -> str:
    """``IMGPIPE_BACKEND`` (lower case), ``aws`` when unset."""
    return os.environ.get(ENV_BACKEND, "").strip().lower() or "aws"


def _settings() -> Any:
    """The local backend's settings: the home the local engine gave the job."""
    if backend_name() != "local":
        return None
    home = os.environ.get("IMGPIPE_HOME")
    if not home:
        raise RuntimeError("IMGPIPE_BACKEND=local needs IMGPIPE_HOME (the local engine sets both)")
    from pipelines.settings import Settings

    return Settings(home=Path(home))


def get_registry(region: Optional[str] = None) -> Any:
    """The model registry of the job's backend (SageMaker's in ``region``, or the local one)."""
    return backends.get_registry(backend_name(), region=region, settings=_settings())


def get_hosting(region: Optional[str] = None, **sagemaker_options: Any) -> Any:
    """The model host of the job's backend (``sagemaker_options``: role, capture URL... on AWS)."""
    return backends.get_hosting(backend_name(), region=region, settings=_settings(), **sagemaker_options)


def fail(message: str) -> int:
    """Record ``message`` as the job's failure reason and on stderr; the exit status (1)."""
    from imgclf.container import write_failure

    write_failure(message)
    print(message, file=sys.stderr)
    return 1
