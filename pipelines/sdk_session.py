"""The SageMaker SDK session a pipeline is built with: telemetry off, account names resolved.

* :func:`sdk_config`: the SDK's intelligent-defaults config with telemetry off.
* :func:`resolve_account`: the session, role, region and bucket of a ``get_pipeline`` call, the
  one place where they default (shared by the build and the deploy pipeline).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import boto3
import sagemaker
from sagemaker.workflow.pipeline_context import PipelineSession

# sagemaker.config.config_schema.TELEMETRY_OPT_OUT_PATH:
# SageMaker.PythonSDK.Modules.TelemetryOptOut (boolean, schema version 1.0).
TELEMETRY_OPT_OUT_YAML = (
    "SchemaVersion: '1.0'\n"
    "SageMaker:\n"
    "  PythonSDK:\n"
    "    Modules:\n"
    "      TelemetryOptOut: true\n"
)


def sdk_config() -> dict:
    """The SDK config the user/admin files give (if any), with ``TelemetryOptOut: true``.

    Passed to the session as ``sagemaker_config`` so telemetry is off whatever the files say,
    while their other defaults (KMS keys, VPC, tags) still apply.
    """
    from sagemaker.config import load_sagemaker_config

    config = copy.deepcopy(load_sagemaker_config() or {})
    config.setdefault("SchemaVersion", "1.0")
    modules = config.setdefault("SageMaker", {}).setdefault("PythonSDK", {}).setdefault("Modules", {})
    modules["TelemetryOptOut"] = True
    return config


def get_session(region: str, default_bucket: Optional[str]) -> PipelineSession:
    """A PipelineSession for ``region`` with SDK telemetry off (and the user's SDK config kept)."""
    boto_session = boto3.Session(region_name=region)
    return PipelineSession(
        boto_session=boto_session,
        sagemaker_client=boto_session.client("sagemaker"),
        default_bucket=default_bucket,
        sagemaker_config=sdk_config(),
    )


def session_and_role(region: Optional[str], role: Optional[str], default_bucket: Optional[str],
                     session: Optional[PipelineSession]) -> tuple[PipelineSession, str]:
    """The given session (else one for ``region``) and role (else the notebook's, if any)."""
    if session is None and not region:
        raise ValueError("get_pipeline needs a region (or a sagemaker_session)")
    session = session or get_session(region, default_bucket)
    if role:
        return session, role
    try:
        return session, sagemaker.session.get_execution_role(session)
    except Exception as exc:  # not in a SageMaker notebook: no role to discover
        raise ValueError("no IAM role given: pass role='arn:aws:iam::<account>:role/<name>' "
                         f"(could not use the notebook's execution role: {exc})") from exc


@dataclass(frozen=True)
class Account:
    """Where a pipeline's jobs run: session, IAM role, region and bucket."""

    session: PipelineSession
    role: str
    region: str
    bucket: str


def resolve_account(region: Optional[str], role: Optional[str], default_bucket: Optional[str],
                    session: Optional[PipelineSession]) -> Account:
    """The session, role, region and bucket a ``get_pipeline`` call builds with.

    ``default_bucket=None`` asks the session for ``sagemaker-<region>-<account>`` (STS and S3).
    """
    session, role = session_and_role(region, role, default_bucket, session)
    return Account(session=session, role=role, region=session.boto_region_name,
                   bucket=default_bucket or session.default_bucket())
