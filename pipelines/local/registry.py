"""The local model registry: SageMaker model package groups and versions in SQLite.

Tables are prefixed ``registry_`` (the engine keeps its own tables in the same file).
Each call opens a short WAL transaction, so the CLI and a running engine can share it.
Results are DescribeModelPackage-shaped dicts, plus two local fields:
``EvaluationMetrics`` (the evaluation.json read from the object store at registration)
and ``ModelDataUrl`` (the first container's artifact).
"""
from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from pipelines.backends import RegistryError, check_approval_status
from pipelines.common import utc_now_iso
from pipelines.local.object_store import ObjectStore
from pipelines.settings import Settings

ACCOUNT_ID = "000000000000"
SCHEMA = """
CREATE TABLE IF NOT EXISTS registry_groups (
    name TEXT PRIMARY KEY,
    arn TEXT NOT NULL,
    description TEXT,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS registry_packages (
    arn TEXT PRIMARY KEY,
    group_name TEXT NOT NULL REFERENCES registry_groups(name),
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    approval_status TEXT NOT NULL,
    approval_description TEXT,
    description TEXT,
    created TEXT NOT NULL,
    modified TEXT NOT NULL,
    model_data_url TEXT,
    inference_spec TEXT,
    model_metrics TEXT,
    metrics_uri TEXT,
    metrics_content TEXT,
    customer_metadata TEXT,
    execution_arn TEXT,
    request TEXT NOT NULL,
    UNIQUE (group_name, version)
);
CREATE INDEX IF NOT EXISTS registry_packages_group ON registry_packages (group_name, version);
"""


def _loads(text: Optional[str]) -> Any:
    return json.loads(text) if text else None


class LocalModelRegistry:
    """SageMaker's model registry, kept in ``settings.db_path``: a :class:`pipelines.backends.ModelRegistry`."""

    def __init__(self, settings: Settings, store: Optional[ObjectStore] = None,
                 on_approval_change: Optional[Callable[[dict], Any]] = None):
        """``on_approval_change(package)``: called with the package after each approval update and
        after each registration (SageMaker emits a model package state change for both; the
        local event bus, :mod:`pipelines.local.events`, deploys an Approved one); none: no side
        effects."""
        self.settings = settings
        self.on_approval_change = on_approval_change
        self.db_path = Path(settings.db_path)
        self.store = store or ObjectStore(settings.s3_root)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            yield conn
        finally:
            conn.close()

    # ------------------------------------------------------------------ ids
    def group_arn(self, group: str) -> str:
        return f"arn:aws:sagemaker:{self.settings.region}:{ACCOUNT_ID}:model-package-group/{group}"

    def package_arn(self, group: str, version: int) -> str:
        return f"arn:aws:sagemaker:{self.settings.region}:{ACCOUNT_ID}:model-package/{group}/{version}"

    # ------------------------------------------------------------------ writes
    def register(self, request: dict, execution_arn: Optional[str] = None) -> dict:
        """CreateModelPackage (versioned): a new version in ``ModelPackageGroupName``; then
        ``on_approval_change`` (registered ``Approved``: the event that deploys it)."""
        group = request.get("ModelPackageGroupName")
        if not group:
            raise RegistryError("only versioned model packages (ModelPackageGroupName) are supported locally")
        approval = request.get("ModelApprovalStatus") or "PendingManualApproval"
        check_approval_status(approval)
        spec = request.get("InferenceSpecification") or {}
        containers = spec.get("Containers") or []
        metrics_uri, metrics_content = self._read_metrics(request.get("ModelMetrics") or {})
        now = utc_now_iso()
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("INSERT OR IGNORE INTO registry_groups VALUES (?, ?, ?, ?)", (group, self.group_arn(group), None, now))
                version = conn.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM registry_packages WHERE group_name = ?", (group,)).fetchone()[0]
                arn = self.package_arn(group, version)
                conn.execute(
                    "INSERT INTO registry_packages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (arn, group, version, "Completed", approval, request.get("ApprovalDescription"),
                     request.get("ModelPackageDescription"), now, now,
                     containers[0].get("ModelDataUrl") if containers else None, json.dumps(spec),
                     json.dumps(request.get("ModelMetrics") or {}), metrics_uri, json.dumps(metrics_content),
                     json.dumps(request.get("CustomerMetadataProperties") or {}), execution_arn,
                     json.dumps(request, default=str)),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        package = self.describe(arn)
        if self.on_approval_change is not None:
            self.on_approval_change(package)
        return package

    def _read_metrics(self, model_metrics: dict) -> tuple[Optional[str], Any]:
        """The evaluation.json behind ``ModelMetrics.ModelQuality.Statistics.S3Uri``."""
        uri = ((model_metrics.get("ModelQuality") or {}).get("Statistics") or {}).get("S3Uri")
        if not uri:
            return None, None
        try:
            return uri, json.loads(self.store.path(uri).read_text())
        except FileNotFoundError:
            raise RegistryError(f"model metrics {uri} do not exist in the local object store") from None
        except ValueError as exc:
            raise RegistryError(f"model metrics {uri} are not JSON: {exc}") from None

    def update_approval(self, version_or_arn: str, status: str, reason: str = "", group: Optional[str] = None) -> dict:
        """UpdateModelPackage: set ModelApprovalStatus (and ApprovalDescription)."""
        check_approval_status(status)
        arn = self._resolve(version_or_arn, group)
        with self._connect() as conn:
            conn.execute(
                "UPDATE registry_packages SET approval_status = ?, approval_description = ?, modified = ? WHERE arn = ?",
                (status, reason or None, utc_now_iso(), arn),
            )
        package = self.describe(arn)
        if self.on_approval_change is not None:
            self.on_approval_change(package)
        return package

    # ------------------------------------------------------------------ reads
    def describe(self, version_or_arn: str, group: Optional[str] = None) -> dict:
        arn = self._resolve(version_or_arn, group)
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM registry_packages WHERE arn = ?", (arn,)).fetchone()
        return _describe(row)

    def list_packages(self, group: Optional[str] = None, status: Optional[str] = None) -> list[dict]:
        """Packages newest first, optionally of one group and/or one approval status."""
        if status is not None:
            check_approval_status(status)
        sql, args = "SELECT * FROM registry_packages WHERE 1=1", []
        if group:
            sql, args = sql + " AND group_name = ?", args + [group]
        if status:
            sql, args = sql + " AND approval_status = ?", args + [status]
        with self._connect() as conn:
            rows = conn.execute(sql + " ORDER BY created DESC, version DESC", args).fetchall()
        return [_describe(r) for r in rows]

    def list_groups(self) -> list[dict]:
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM registry_groups ORDER BY created DESC").fetchall()
        return [{"ModelPackageGroupName": r["name"], "ModelPackageGroupArn": r["arn"], "CreationTime": r["created"],
                 "ModelPackageGroupStatus": "Completed"} for r in rows]

    def latest_approved(self, group: str) -> Optional[dict]:
        """The highest approved version of ``group`` (what a deployment picks)."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT * FROM registry_packages WHERE group_name = ? AND approval_status = 'Approved' "
                "ORDER BY version DESC LIMIT 1", (group,)).fetchone()
        return _describe(row) if row else None

    def _resolve(self, version_or_arn: str, group: Optional[str]) -> str:
        """An ARN, ``<group>/<version>``, or a bare version (with ``group``, or if unambiguous)."""
        ref = str(version_or_arn).strip()
        with self._connect() as conn:
            if ref.startswith("arn:"):
                rows = conn.execute("SELECT arn FROM registry_packages WHERE arn = ?", (ref,)).fetchall()
            elif "/" in ref:
                name, _, version = ref.rpartition("/")
                rows = conn.execute("SELECT arn FROM registry_packages WHERE group_name = ? AND version = ?",
                                    (name, _int(version, ref))).fetchall()
            elif group:
                rows = conn.execute("SELECT arn FROM registry_packages WHERE group_name = ? AND version = ?",
                                    (group, _int(ref, ref))).fetchall()
            else:
                rows = conn.execute("SELECT arn FROM registry_packages WHERE version = ?", (_int(ref, ref),)).fetchall()
        if not rows:
            raise RegistryError(f"no model package {ref!r}" + (f" in group {group!r}" if group else ""))
        if len(rows) > 1:
            raise RegistryError(f"version {ref!r} exists in several groups: give the group or the ARN")
        return rows[0]["arn"]


def _int(text: str, ref: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise RegistryError(f"not a model package version or ARN: {ref!r}") from None


def _describe(row: sqlite3.Row) -> dict:
    """DescribeModelPackage shape (plus the local EvaluationMetrics/ModelDataUrl fields)."""
    describe = {
        "ModelPackageName": row["group_name"],
        "ModelPackageGroupName": row["group_name"],
        "ModelPackageVersion": row["version"],
        "ModelPackageArn": row["arn"],
        "ModelPackageDescription": row["description"],
        "CreationTime": row["created"],
        "LastModifiedTime": row["modified"],
        "InferenceSpecification": _loads(row["inference_spec"]),
        "ModelPackageStatus": row["status"],
        "ModelPackageStatusDetails": {"ValidationStatuses": [], "ImageScanStatuses": []},
        "ModelApprovalStatus": row["approval_status"],
        "ApprovalDescription": row["approval_description"],
        "ModelMetrics": _loads(row["model_metrics"]),
        "CustomerMetadataProperties": _loads(row["customer_metadata"]),
        "MetadataProperties": {"GeneratedBy": row["execution_arn"]} if row["execution_arn"] else None,
        "ModelDataUrl": row["model_data_url"],
        "EvaluationMetrics": _loads(row["metrics_content"]),
        "EvaluationMetricsUri": row["metrics_uri"],
        "PipelineExecutionArn": row["execution_arn"],
    }
    return {k: v for k, v in describe.items() if v is not None}
