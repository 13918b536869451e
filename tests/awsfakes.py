"""Test helpers: moto's in-process AWS with fake credentials, and the deploy steps as modules."""
from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
ISOLATE = ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION")


@contextlib.contextmanager
def fake_aws(monkeypatch, region: str = "us-east-1") -> Iterator:
    """A boto3 session on moto (``mock_aws``): fake credentials, ``region``, no profile or endpoint."""
    import boto3
    from moto import mock_aws

    for name in ISOLATE:
        monkeypatch.delenv(name, raising=False)
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", region)):
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield boto3.Session(region_name=region)


def load_step(monkeypatch, name: str):
    """``steps/<name>.py`` imported as the container runs it (``steps/`` on sys.path), AWS backend."""
    monkeypatch.syspath_prepend(str(REPO / "steps"))
    monkeypatch.delenv("IMGPIPE_BACKEND", raising=False)
    spec = importlib.util.spec_from_file_location(f"imgpipe_steps_{name}", REPO / "steps" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
