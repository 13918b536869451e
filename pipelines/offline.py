"""Build a pipeline definition with no AWS account, no credentials and no network.

The SageMaker SDK uploads the code of every step (``source_dir`` tarballs, the processors'
``runproc.sh``, the repack script) to S3 *while* it compiles the definition. Here that S3 is
moto's in-process fake (``mock_aws``): nothing leaves the process, and every object the build
wrote is handed to an :class:`UploadSink` (the local engine's object store is one), so the local
engine finds each code tarball at the very ``s3://`` URI the definition names.

The process environment is restored on return (fake credentials, region and the SDK config
override are set only for the duration of the build), and so are the working directory (the
pipeline compiles in a staged copy of the code), the SDK's log levels and moto's state (inside a
caller's own ``mock_aws`` the build nests in it without resetting it). Those are process-wide,
so builds in one process take turns (a lock).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional, Protocol

from pipelines.common import DEFAULT_PIPELINE_MODULE, quiet_loggers
from pipelines.pipeline_args import call_get_pipeline, fill_defaults, import_pipeline_module
from pipelines.settings import Settings

_BUILD_LOCK = threading.RLock()

# Variables that would point boto3 at real credentials, profiles or endpoints.
_AWS_ISOLATION_PREFIXES = ("AWS_ENDPOINT_URL",)
_AWS_ISOLATION_NAMES = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CA_BUNDLE",
)


# Loggers whose INFO lines (config files looked for, credentials found, code uploaded) and
# build-time warnings the SDK prints while compiling; quieted unless set to DEBUG by the user.
_CHATTY_LOGGERS = ("sagemaker", "sagemaker.config", "botocore.credentials", "moto")


class UploadSink(Protocol):
    """Where the objects the SDK uploaded during a build go (``ObjectStore`` is one)."""

    def put_bytes(self, uri: str, data: bytes) -> Any:
        """Keep ``data`` as the object at ``uri`` (``s3://bucket/key``)."""


@contextlib.contextmanager
def quiet_sdk_build() -> Iterator[None]:
    """Silence the SDK's INFO chatter and UserWarnings for the duration (levels restored)."""
    if logging.getLogger("sagemaker").isEnabledFor(logging.DEBUG):
        yield
        return
    with warnings.catch_warnings(), quiet_loggers(*_CHATTY_LOGGERS):
        warnings.filterwarnings("ignore", module=r"sagemaker(\..*)?")
        warnings.filterwarnings("ignore", message=r".*PipelineSession.*")
        yield


@contextlib.contextmanager
def _restored_environ() -> Iterator[None]:
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _offline_environ(region: str, config_file: Path) -> None:
    from pipelines.sdk_session import TELEMETRY_OPT_OUT_YAML
    from pipelines.sdk_workarounds import user_sdk_config_exists

    for name in list(os.environ):
        if name.startswith(_AWS_ISOLATION_PREFIXES) or name in _AWS_ISOLATION_NAMES:
            del os.environ[name]
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_SESSION_TOKEN="testing",
        AWS_DEFAULT_REGION=region,
        AWS_REGION=region,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        SAGEMAKER_SUPPRESS_V2_WARNING="1",
    )
    # Telemetry off for any SDK session (get_pipeline's own session also opts out via its
    # config). A user's own config file is respected (get_pipeline still forces the opt-out).
    if "SAGEMAKER_USER_CONFIG_OVERRIDE" not in os.environ and not user_sdk_config_exists():
        config_file.write_text(TELEMETRY_OPT_OUT_YAML)
        os.environ["SAGEMAKER_USER_CONFIG_OVERRIDE"] = str(config_file)


def account_defaults(settings: Settings) -> dict:
    """``region``, ``role`` and ``default_bucket`` of the local settings, as get_pipeline kwargs."""
    return {"region": settings.region, "role": settings.role_arn,
            "default_bucket": settings.default_bucket}


def _snapshot(s3) -> dict[tuple[str, str], str]:
    objects = {}
    for bucket in s3.list_buckets().get("Buckets", []):
        paginator = s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket["Name"]):
            for obj in page.get("Contents", []):
                objects[(bucket["Name"], obj["Key"])] = obj["ETag"]
    return objects


def build_definition_json(
    module_name: str = DEFAULT_PIPELINE_MODULE,
    kwargs: Optional[dict] = None,
    store: Optional[UploadSink] = None,
    settings: Optional[Settings] = None,
) -> str:
    """The definition JSON string of ``module_name.get_pipeline(**kwargs)``, built offline.

    ``region``, ``role`` and ``default_bucket`` default to :class:`Settings` (``imgpipe-local``,
    the local role ARN). With ``store``, every object the SDK uploaded during the build is
    written there under its S3 URI (``store.put_bytes(uri, data)``).
    """
    from moto import mock_aws

    settings = settings or Settings()
    with quiet_sdk_build():
        module = import_pipeline_module(module_name)
    kwargs = fill_defaults(module, kwargs or {}, account_defaults(settings))
    region = kwargs.get("region") or settings.region
    bucket = kwargs.get("default_bucket")

    with _BUILD_LOCK, quiet_sdk_build(), _restored_environ(), \
            tempfile.TemporaryDirectory(prefix="imgpipe-offline-") as tmp:
        _offline_environ(region, Path(tmp) / "sagemaker-config.yaml")
        mock = mock_aws()
        mock.start()
        try:
            import boto3

            s3 = boto3.session.Session(region_name=region).client("s3", region_name=region)
            if bucket:
                existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
                if bucket not in existing:
                    create = {"Bucket": bucket}
                    if region != "us-east-1":
                        create["CreateBucketConfiguration"] = {"LocationConstraint": region}
                    s3.create_bucket(**create)
            before = _snapshot(s3)
            definition = call_get_pipeline(module, kwargs).definition()
            if store is not None:
                # What this build wrote, and (should moto already have held them, e.g. inside
                # a caller's own mock_aws) the objects the definition names.
                named = set(re.findall(r"s3://([^/\"\\]+)/([^\"\\]+)", definition))
                after = _snapshot(s3)
                for (name, key), etag in sorted(after.items()):
                    if before.get((name, key)) == etag and (name, key) not in named:
                        continue
                    body = s3.get_object(Bucket=name, Key=key)["Body"].read()
                    store.put_bytes(f"s3://{name}/{key}", body)
        finally:
            mock.stop()
    return definition


def build_definition(
    module_name: str = DEFAULT_PIPELINE_MODULE,
    kwargs: Optional[dict] = None,
    store: Optional[UploadSink] = None,
    settings: Optional[Settings] = None,
) -> dict[str, Any]:
    """Like :func:`build_definition_json`, parsed: the dict the local engine interprets."""
    return json.loads(build_definition_json(module_name, kwargs, store, settings))
