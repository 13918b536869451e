"""The local model registry (SQLite): versions, approval, metrics read from the store."""
from __future__ import annotations

import json
import sqlite3

import pytest

from pipelines.local.object_store import ObjectStore
from pipelines.backends import RegistryError
from pipelines.local.registry import LocalModelRegistry
from pipelines.local.sagemaker_api import LocalSageMaker
from pipelines.settings import Settings

BUCKET = "imgpipe-local"
EXECUTION = "arn:aws:sagemaker:us-east-1:000000000000:pipeline/imgpipe/execution/abc123"


@pytest.fixture()
def env(tmp_path):
    settings = Settings(home=tmp_path / "home")
    store = ObjectStore(settings.s3_root)
    return settings, store, LocalSageMaker(settings, store)


def put_evaluation(store: ObjectStore, run: str, accuracy: float) -> str:
    """An evaluation.json in the contract's shape, as EvaluateModel writes it."""
    uri = f"s3://{BUCKET}/imgpipe/{run}/EvaluateModel/output/evaluation/evaluation.json"
    store.put_bytes(uri, json.dumps({
        "multiclass_classification_metrics": {"accuracy": {"value": accuracy, "standard_deviation": "NaN"}},
        "num_test_images": 40, "classes": ["0", "1"],
    }).encode())
    return uri


def register_request(group: str, eval_uri: str, run: str, approval: str = "PendingManualApproval") -> dict:
    """Arguments of the SDK's RegisterModel step, resolved."""
    return {
        "ModelPackageGroupName": group,
        "ModelMetrics": {"ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": eval_uri}},
                         "Bias": {}, "Explainability": {}},
        "CustomerMetadataProperties": {"run": run},
        "InferenceSpecification": {
            "Containers": [{"Image": "pytorch-inference:2.1-cpu-py310",
                            "ModelDataUrl": f"s3://{BUCKET}/models/{run}/output/model.tar.gz"}],
            "SupportedContentTypes": ["application/x-image", "image/png"],
            "SupportedResponseMIMETypes": ["application/json"],
            "SupportedRealtimeInferenceInstanceTypes": ["ml.m5.large"],
            "SupportedTransformInstanceTypes": ["ml.m5.large"],
        },
        "ModelApprovalStatus": approval,
        "SkipModelValidation": "None",
    }


def test_versions_metrics_and_lineage(env):
    settings, store, api = env
    uri1, uri2 = put_evaluation(store, "r1", 0.91), put_evaluation(store, "r2", 0.93)
    first = api.create_model_package(register_request("digits", uri1, "r1"), execution_arn=EXECUTION)
    second = api.create_model_package(register_request("digits", uri2, "r2"))
    other = api.create_model_package(register_request("scenes", uri1, "r3"))
    assert [first["ModelPackageVersion"], second["ModelPackageVersion"], other["ModelPackageVersion"]] == [1, 2, 1]
    assert first["ModelPackageArn"] == "arn:aws:sagemaker:us-east-1:000000000000:model-package/digits/1"
    assert first["ModelApprovalStatus"] == "PendingManualApproval" and first["ModelPackageStatus"] == "Completed"
    assert first["EvaluationMetrics"] == json.loads(store.path(uri1).read_text())  # what the store held
    assert second["EvaluationMetrics"]["multiclass_classification_metrics"]["accuracy"]["value"] == 0.93
    assert first["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"] == uri1 == first["EvaluationMetricsUri"]
    assert first["ModelDataUrl"] == f"s3://{BUCKET}/models/r1/output/model.tar.gz"
    assert first["InferenceSpecification"]["SupportedContentTypes"] == ["application/x-image", "image/png"]
    assert first["CustomerMetadataProperties"] == {"run": "r1"}
    assert first["MetadataProperties"]["GeneratedBy"] == EXECUTION == first["PipelineExecutionArn"]
    assert "PipelineExecutionArn" not in second
    # the metrics were copied at registration: later changes to the file do not alter the package
    store.put_bytes(uri1, b'{"changed": true}')
    registry = LocalModelRegistry(settings, store)
    assert registry.describe("digits/1")["EvaluationMetrics"]["num_test_images"] == 40


def test_list_newest_first_and_filters(env):
    settings, store, api = env
    uri = put_evaluation(store, "r", 0.9)
    for _ in range(3):
        api.create_model_package(register_request("digits", uri, "r"))
    api.create_model_package(register_request("scenes", uri, "r", approval="Approved"))
    registry = LocalModelRegistry(settings, store)
    assert [(p["ModelPackageGroupName"], p["ModelPackageVersion"]) for p in registry.list_packages()] == \
        [("scenes", 1), ("digits", 3), ("digits", 2), ("digits", 1)]
    assert [p["ModelPackageVersion"] for p in registry.list_packages(group="digits")] == [3, 2, 1]
    assert [p["ModelPackageGroupName"] for p in registry.list_packages(status="Approved")] == ["scenes"]
    assert [g["ModelPackageGroupName"] for g in registry.list_groups()] == ["scenes", "digits"]


def test_approval_and_latest_approved(env):
    settings, store, api = env
    uri = put_evaluation(store, "r", 0.9)
    for _ in range(3):
        api.create_model_package(register_request("digits", uri, "r"))
    registry = LocalModelRegistry(settings, store)
    assert registry.latest_approved("digits") is None
    approved = registry.update_approval("digits/1", "Approved", "accuracy ok")
    assert approved["ModelApprovalStatus"] == "Approved" and approved["ApprovalDescription"] == "accuracy ok"
    registry.update_approval("arn:aws:sagemaker:us-east-1:000000000000:model-package/digits/2", "Approved")
    assert registry.latest_approved("digits")["ModelPackageVersion"] == 2
    registry.update_approval("2", "Rejected", "drift", group="digits")
    assert registry.describe("digits/2")["ModelApprovalStatus"] == "Rejected"
    assert registry.latest_approved("digits")["ModelPackageVersion"] == 1
    assert registry.describe("3")["ModelApprovalStatus"] == "PendingManualApproval"  # unambiguous bare version
    with pytest.raises(RegistryError, match="one of"):
        registry.update_approval("digits/1", "Maybe")
    with pytest.raises(RegistryError, match="no model package"):
        registry.describe("digits/9")


def test_bad_registrations_are_refused(env):
    settings, store, api = env
    with pytest.raises(RegistryError, match="do not exist"):
        api.create_model_package(register_request("digits", f"s3://{BUCKET}/missing/evaluation.json", "r"))
    uri = put_evaluation(store, "r", 0.9)
    with pytest.raises(RegistryError, match="approval status"):
        api.create_model_package(register_request("digits", uri, "r", approval="approved"))
    assert LocalModelRegistry(settings, store).list_packages() == []


def test_shares_the_engine_database_in_wal_mode(env):
    settings, store, api = env
    settings.db_path.parent.mkdir(parents=True)
    with sqlite3.connect(settings.db_path) as conn:  # another component's table in the same file
        conn.execute("CREATE TABLE executions (id TEXT)")
    api.create_model_package(register_request("digits", put_evaluation(store, "r", 0.9), "r"))
    with sqlite3.connect(settings.db_path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"executions", "registry_groups", "registry_packages"} <= tables
