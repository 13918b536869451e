"""One typed settings object for the CLIs and the local engine; nothing global."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_REGION = "us-east-1"
LOCAL_BUCKET = "imgpipe-local"
LOCAL_ROLE_ARN = "arn:aws:iam::000000000000:role/imgpipe-local"


@dataclass(frozen=True)
class Settings:
    """Where the local backend keeps its state, and the AWS-facing names it uses."""

    home: Path = field(default_factory=lambda: Path(os.environ.get("IMGPIPE_HOME", ".imgpipe")))
    region: str = field(default_factory=lambda: os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION)
    default_bucket: str = LOCAL_BUCKET
    role_arn: str = LOCAL_ROLE_ARN

    @property
    def s3_root(self) -> Path:
        """Files of the local object store: ``s3://b/k`` is ``s3_root/b/k``."""
        return self.home.resolve() / "s3"

    @property
    def db_path(self) -> Path:
        """SQLite file with executions, steps, jobs and the model registry."""
        return self.home.resolve() / "imgpipe.db"

    @property
    def jobs_root(self) -> Path:
        """Per-job working directories (the remapped /opt/ml trees)."""
        return self.home.resolve() / "jobs"
