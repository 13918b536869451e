"""The registry and hosting backends of the deploy pipeline's steps (deploy, smoke test).

The local engine sets ``IMGPIPE_BACKEND=local`` and ``IMGPIPE_HOME`` in every job's
environment: the steps then use the local registry and local hosting of the imgpipe package.
Otherwise they use SageMaker through boto3: ``pipelines/hosting.py`` and
``pipelines/aws_registry.py``, imported from the imgpipe package where it is installed, or
from the copies shipped next to the step scripts in SageMaker's processing container.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

try:  # the imgpipe package (local runs, tests)
    from pipelines import aws_registry, hosting
except ImportError:  # SageMaker processing job: shipped as dependencies of the step
    import aws_registry  # type: ignore[no-redef]
    import hosting  # type: ignore[no-redef]

HostingError = hosting.HostingError


def is_local() -> bool:
    return os.environ.get("IMGPIPE_BACKEND", "").lower() == "local"


def _local_settings() -> Any:
    from pipelines.settings import Settings

    home = os.environ.get("IMGPIPE_HOME")
    if not home:
        raise RuntimeError("IMGPIPE_BACKEND=local needs IMGPIPE_HOME (the local engine sets both)")
    return Settings(home=Path(home))


def get_registry(region: Optional[str] = None) -> Any:
    """The model registry: local (``IMGPIPE_BACKEND=local``) or SageMaker's."""
    if is_local():
        from pipelines.local.registry import LocalModelRegistry

        return LocalModelRegistry(_local_settings())
    return aws_registry.SageMakerModelRegistry(region=region)


def get_hosting(region: Optional[str] = None, **sagemaker_options: Any) -> Any:
    """The model host: local, or SageMaker endpoints (``sagemaker_options``: role, capture URL...)."""
    if is_local():
        from pipelines.local.hosting import LocalHosting

        return LocalHosting(_local_settings())
    return hosting.SageMakerHosting(region, **sagemaker_options)


def fail(message: str) -> int:
    """Record ``message`` as the job's failure reason and on stderr; the exit status (1)."""
    from imgclf.container import write_failure

    write_failure(message)
    print(message, file=sys.stderr)
    return 1
