"""One-line guards against plausible wrong answers in the engine's retries, the registry's
version lookup and preprocess's checks and split sizes (each named in docs/testing.md with the
mutant it kills)."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from PIL import Image

import imagefactory as factory
from pipelines.local.engine import retry_delay
from pipelines.local.object_store import ObjectStore
from pipelines.local.registry import LocalModelRegistry, RegistryError
from pipelines.settings import Settings
from scripts import load_script

REPO = Path(__file__).resolve().parents[1]
pre = load_script("imgpipe_steps_preprocess", "steps/preprocess.py")
INTERNAL = {"Step.SERVICE_FAULT"}


# --------------------------------------------------------------------------- engine retries
def test_retry_expiry_is_in_minutes():
    policy = [{"ExceptionType": sorted(INTERNAL), "IntervalSeconds": 2, "BackoffRate": 1.0, "ExpireAfterMin": 1}]
    assert retry_delay(policy, INTERNAL, 0, elapsed=30.0) == 2.0    # 32 s < 1 min: retry
    assert retry_delay(policy, INTERNAL, 5, elapsed=57.9) == 2.0    # 59.9 s: still inside
    assert retry_delay(policy, INTERNAL, 5, elapsed=58.5) is None   # 60.5 s: expired


def test_retry_backoff_grows_per_attempt_and_attempts_are_capped():
    policy = [{"ExceptionType": sorted(INTERNAL), "IntervalSeconds": 3, "BackoffRate": 2.0, "MaxAttempts": 3}]
    assert [retry_delay(policy, INTERNAL, n, 0.0) for n in range(4)] == [3.0, 6.0, 12.0, None]
    assert retry_delay(policy, {"Step.THROTTLING"}, 0, 0.0) is None  # another exception type


# --------------------------------------------------------------------------- registry
METRICS_URI = "s3://imgpipe-local/evaluation.json"


@pytest.fixture()
def registry(tmp_path) -> LocalModelRegistry:
    """A registry on a home folder that does not exist yet, reading the settings' own store."""
    settings = Settings(home=tmp_path / "not" / "yet" / "home")
    registry = LocalModelRegistry(settings)
    ObjectStore(settings.s3_root).put_bytes(
        METRICS_URI, json.dumps({"multiclass_classification_metrics": {"accuracy": {"value": 0.9}}}).encode())
    return registry


def register(registry: LocalModelRegistry, group: str, metrics_uri: str = METRICS_URI, containers: int = 1) -> dict:
    return registry.register({
        "ModelPackageGroupName": group, "ModelApprovalStatus": "PendingManualApproval",
        "ModelMetrics": {"ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": metrics_uri}}},
        "InferenceSpecification": {"Containers": [
            {"Image": "img", "ModelDataUrl": f"s3://imgpipe-local/{group}-{i}.tar.gz"} for i in range(containers)]},
    })


def test_a_bare_version_in_several_groups_is_an_error(registry):
    digits, scenes = register(registry, "digits"), register(registry, "scenes")
    with pytest.raises(RegistryError, match="version '1' exists in several groups"):
        registry.describe("1")
    assert registry.describe("1", group="scenes")["ModelPackageArn"] == scenes["ModelPackageArn"]
    assert registry.describe("digits/1")["ModelPackageArn"] == digits["ModelPackageArn"]
    with pytest.raises(RegistryError, match="several groups"):
        registry.update_approval("1", "Approved")
    assert registry.latest_approved("digits") is None and registry.latest_approved("scenes") is None


def test_missing_and_malformed_versions_are_named(registry):
    assert register(registry, "digits")["EvaluationMetrics"]["multiclass_classification_metrics"]["accuracy"]["value"] == 0.9
    with pytest.raises(RegistryError, match="not a model package version or ARN: 'latest'"):
        registry.describe("latest")
    with pytest.raises(RegistryError, match="not a model package version or ARN: 'digits/x'"):
        registry.describe("digits/x")
    with pytest.raises(RegistryError) as bare:
        registry.describe("7")
    assert str(bare.value) == "no model package '7'"
    with pytest.raises(RegistryError, match="no model package '7' in group 'digits'"):
        registry.describe("7", group="digits")


def test_model_data_is_the_first_containers_and_metrics_must_be_json(registry):
    assert register(registry, "digits", containers=2)["ModelDataUrl"] == "s3://imgpipe-local/digits-0.tar.gz"
    registry.store.put_bytes("s3://imgpipe-local/bad.json", b"{not json")
    with pytest.raises(RegistryError, match="bad.json are not JSON"):
        register(registry, "digits", metrics_uri="s3://imgpipe-local/bad.json")
    with pytest.raises(RegistryError, match="gone.json do not exist"):
        register(registry, "digits", metrics_uri="s3://imgpipe-local/gone.json")
    assert [p["ModelPackageVersion"] for p in registry.list_packages("digits")] == [1]  # nothing half-written


# --------------------------------------------------------------------------- preprocess
def test_a_decompression_bomb_warning_is_refused(tmp_path):
    """150 pixels against a limit of 130: PIL only *warns* (its error starts at twice the limit)."""
    path = factory.write_image(tmp_path / "big.png", key="big", size=(15, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # whatever the caller's filters, the guard must raise
        with pytest.raises(Image.DecompressionBombWarning) as caught:
            pre.open_image(str(path), max_pixels=130)
    assert pre.classify_error(caught.value)[0] == "decompression_bomb"
    assert pre.open_image(str(path), max_pixels=150).size == (15, 10)  # exactly at the limit
    assert Image.MAX_IMAGE_PIXELS not in (130, 150)  # the global limit is restored


def test_preprocess_skips_the_bomb_and_reports_why(tmp_path):
    factory.write_tree(tmp_path / "in", {"a": 3, "b": 3})
    factory.write_image(tmp_path / "in" / "a" / "big.png", key="big", size=(15, 10))
    report = pre.preprocess(tmp_path / "in", tmp_path / "out", workers=1, max_image_pixels=130,
                            min_images_per_class=1, progress_seconds=60.0)
    assert [(s["path"], s["reason"]) for s in report["skipped"]] == [("a/big.png", "decompression_bomb")]
    assert report["per_class"]["a"]["total"] == 3


def test_a_class_with_an_empty_split_fails_the_run_naming_it():
    counts = {"train": {"a": 5, "b": 0}, "valid": {"a": 1, "b": 1}, "test": {"a": 1, "b": 1}}
    with pytest.raises(pre.PreprocessError) as err:
        pre.check_counts(counts, ["a", "b"], ["train", "valid", "test"], 1, {}, "p")
    assert "class 'b': no train images (train=0, valid=1, test=1)" in str(err.value)
    assert "class 'a'" not in str(err.value)
    pre.check_counts(counts, ["a", "b"], ["valid", "test"], 1, {}, "p")  # train not produced: fine


def test_too_few_images_fail_the_run_naming_the_minimum():
    counts = {"train": {"a": 1}, "valid": {"a": 1}, "test": {"a": 0}}
    with pytest.raises(pre.PreprocessError, match=r"class 'a': 2 usable images \(minimum 3\); no test images"):
        pre.check_counts(counts, ["a"], ["train", "valid", "test"], 3, {"a": 4}, "p")


@pytest.mark.parametrize("value,expected", [(0.5, 1), (1.5, 2), (2.5, 3), (4.5, 5), (2.4999, 2), (0.0, 0)])
def test_round_half_up(value, expected):
    assert pre.round_half_up(value) == expected


def test_split_sizes_round_half_up():
    """10 images at 25 % and 45 %: 2.5 -> 3 valid and 4.5 -> 5 test (banker's rounding: 2 and 4)."""
    pool = ("train", "valid", "test")
    assert pre.split_targets(10, pool, 0.25, 0.45) == {"train": 2, "valid": 3, "test": 5}
    assert pre.split_targets(10, pool, 0.01, 0.0) == {"train": 9, "valid": 1, "test": 0}  # at least one
    assert pre.split_targets(10, ("train", "valid"), 0.25, 0.45) == {"train": 7, "valid": 3}
