"""pipelines/backends.py: the one switch between the aws and local registry/hosting, which never
imports an implementation it was not asked for; and no step script imports the local engine."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import backends
from pipelines.aws.hosting import SageMakerHosting
from pipelines.aws.registry import SageMakerModelRegistry
from pipelines.local.hosting import LocalHosting
from pipelines.local.registry import LocalModelRegistry
from pipelines.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def test_local_implementations_use_the_given_settings(tmp_path):
    settings = Settings(home=tmp_path)
    registry = backends.get_registry("local", settings=settings)
    assert type(registry) is LocalModelRegistry and registry.settings is settings
    assert registry.on_approval_change is None  # a plain registry publishes nothing
    wired = backends.get_registry("local", settings=settings, approval_events=True)
    assert type(wired) is LocalModelRegistry and wired.on_approval_change is not None
    assert wired.event_outcomes == []
    hosting = backends.get_hosting("local", settings=settings)
    assert type(hosting) is LocalHosting and hosting.settings is settings


def test_aws_implementations_get_region_and_options(monkeypatch):
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(name, value)
    registry = backends.get_registry("aws", region="eu-west-1", approval_events=True)
    assert type(registry) is SageMakerModelRegistry and registry.sm.meta.region_name == "eu-west-1"
    hosting = backends.get_hosting("aws", region="eu-west-1", model_role_arn="arn:aws:iam::1:role/R",
                                   rollback_alarms=["a"], bake_seconds=7)
    assert type(hosting) is SageMakerHosting and hosting.runtime.meta.region_name == "eu-west-1"
    assert (hosting.model_role_arn, hosting.rollback_alarms, hosting.bake_seconds) == ("arn:aws:iam::1:role/R", ["a"], 7)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(backends.BackendError, match=r"unknown registry backend 'gcp' \(known: aws, local\)"):
        backends.get_registry("gcp")
    with pytest.raises(backends.BackendError, match=r"unknown hosting backend 'Local'"):
        backends.get_hosting("Local")


def test_errors_and_status_check_are_shared():
    from pipelines.aws import hosting, registry
    from pipelines.local import hosting as local_hosting, registry as local_registry

    assert hosting.HostingError is local_hosting.HostingError is backends.HostingError
    assert registry.RegistryError is local_registry.RegistryError is backends.RegistryError
    with pytest.raises(backends.RegistryError, match="approval status must be one of"):
        backends.check_approval_status("approved")
    backends.check_approval_status("Approved")


def test_picking_imports_only_the_picked_implementation():
    probe = ("import sys; from pipelines import backends; backends.get_hosting('aws', region='us-east-1'); "
             "print(sorted(m for m in sys.modules if m.startswith(('pipelines.local', 'sagemaker'))))")
    env = {"PATH": "", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "PYTHONPATH": f"{REPO}:{REPO / 'training'}"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_no_step_script_imports_the_local_engine():
    """Container code reaches the local backend only through backends' lazy picker."""
    offenders = []
    for script in sorted((REPO / "steps").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):  # from pipelines import local: pipelines.local
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            offenders += [f"{script.name}:{node.lineno} {n}" for n in names
                          if n == "pipelines.local" or n.startswith("pipelines.local.")]
    assert offenders == []
