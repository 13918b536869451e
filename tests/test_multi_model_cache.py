"""inference/multi_model.py's ModelCache in-process: target validation, load once under concurrency,
least-recently-used eviction by count and by bytes, the directory as the source of truth.

The loader here reads the archive file's bytes (what the server's loader does first) and counts
its calls: what is under test is the cache's bookkeeping, not model loading (test_runtime_api.py
serves real models through it).
"""
from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("imgpipe_multi_model", REPO / "inference" / "multi_model.py")
mm = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = mm
_spec.loader.exec_module(mm)


class Loader:
    """Reads the archive (its bytes are the 'model'), slowly if asked, failing on b'broken'."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, path: Path) -> bytes:
        with self.lock:
            self.calls.append(path.parent.name)
        time.sleep(self.delay)
        data = path.read_bytes()
        if data == b"broken":
            raise ValueError("model.pth is not a state_dict")
        return data


def put(root: Path, target: str, data: bytes) -> Path:
    path = root / target
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a new inode, as LocalHosting writes archives
    return path


@pytest.mark.parametrize("target, status, fragment", [
    ("../outside/model.tar.gz", 400, "'..'"),
    ("v1/../../x.tar.gz", 400, "'..'"),
    ("/etc/passwd", 400, "absolute path"),
    ("", 400, "empty TargetModel"),
    ("v1/model\x00.tar.gz", 400, "non-printable"),
    ("x" * 1025, 400, "at most 1024"),
    ("v9/model.tar.gz", 404, "not served by this endpoint (serving: v1/model.tar.gz)"),
])
def test_bad_targets_are_refused_naming_the_problem(tmp_path, target, status, fragment):
    put(tmp_path, "v1/model.tar.gz", b"one")
    loader = Loader()
    cache = mm.ModelCache(tmp_path, loader)
    with pytest.raises(mm.TargetModelError) as info:
        cache.get(target)
    assert info.value.status_code == status
    assert fragment in info.value.message
    assert loader.calls == []
    assert cache.get("v1/model.tar.gz") == b"one"  # the good model still serves


def test_symlink_out_of_the_model_directory_is_refused(tmp_path):
    outside = tmp_path / "secret.tar.gz"
    outside.write_bytes(b"secret")
    root = tmp_path / "models"
    (root / "v1").mkdir(parents=True)
    (root / "v1" / "model.tar.gz").symlink_to(outside)
    with pytest.raises(mm.TargetModelError, match="outside the endpoint's models") as info:
        mm.ModelCache(root, Loader()).get("v1/model.tar.gz")
    assert info.value.status_code == 400


def test_concurrent_requests_for_a_loading_model_wait_for_one_load(tmp_path):
    put(tmp_path, "v1/model.tar.gz", b"one")
    put(tmp_path, "v2/model.tar.gz", b"two")
    loader = Loader(delay=0.5)
    cache = mm.ModelCache(tmp_path, loader)
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(cache.get, ["v1/model.tar.gz"] * 8 + ["v2/model.tar.gz"] * 2))
    assert results == [b"one"] * 8 + [b"two"] * 2
    assert sorted(loader.calls) == ["v1", "v2"]  # one load each, however many asked
    assert cache.loads == 2


def test_a_failed_load_fails_its_waiters_then_is_retried(tmp_path):
    put(tmp_path, "v1/model.tar.gz", b"broken")
    put(tmp_path, "v2/model.tar.gz", b"two")
    loader = Loader(delay=0.3)
    cache = mm.ModelCache(tmp_path, loader)

    def attempt(target):
        try:
            return cache.get(target)
        except mm.TargetModelError as exc:
            return exc.status_code, exc.message

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(attempt, ["v1/model.tar.gz"] * 3 + ["v2/model.tar.gz"]))
    for status, message in results[:3]:
        assert status == 422 and "'v1/model.tar.gz' failed to load: model.pth is not a state_dict" in message
    assert results[3] == b"two"  # other models keep serving
    assert loader.calls.count("v1") == 1
    put(tmp_path, "v1/model.tar.gz", b"fixed")
    assert cache.get("v1/model.tar.gz") == b"fixed"  # not remembered as broken


def test_least_recently_used_is_evicted_beyond_max_models(tmp_path):
    for v in "123":
        put(tmp_path, f"v{v}/model.tar.gz", v.encode())
    loader = Loader()
    cache = mm.ModelCache(tmp_path, loader, limits=mm.CacheLimits(max_models=2))
    cache.get("v1/model.tar.gz")
    cache.get("v2/model.tar.gz")
    cache.get("v1/model.tar.gz")  # v2 is now the least recently used
    cache.get("v3/model.tar.gz")
    assert cache.loaded() == ["v1/model.tar.gz", "v3/model.tar.gz"]
    assert cache.evictions == 1
    cache.get("v2/model.tar.gz")  # loaded again: it was evicted
    assert loader.calls == ["v1", "v2", "v3", "v2"]
    assert cache.loaded() == ["v3/model.tar.gz", "v2/model.tar.gz"]


def test_byte_limit_evicts_but_keeps_the_model_just_loaded(tmp_path):
    for v, size in (("1", 40), ("2", 40), ("3", 100)):
        put(tmp_path, f"v{v}/model.tar.gz", v.encode() * size)
    cache = mm.ModelCache(tmp_path, Loader(), limits=mm.CacheLimits(max_models=10, max_bytes=90), size_of=len)
    cache.get("v1/model.tar.gz")
    cache.get("v2/model.tar.gz")
    assert cache.loaded_bytes() == 80
    cache.get("v3/model.tar.gz")  # alone over the limit: stays, everything else goes
    assert cache.loaded() == ["v3/model.tar.gz"]


def test_directory_is_the_source_of_truth(tmp_path):
    put(tmp_path, "v1/model.tar.gz", b"one")
    loader = Loader()
    cache = mm.ModelCache(tmp_path, loader)
    assert cache.get("v1/model.tar.gz") == b"one"
    put(tmp_path, "v1/model.tar.gz", b"one, retrained")  # replaced: reloaded on the next request
    assert cache.get("v1/model.tar.gz") == b"one, retrained"
    put(tmp_path, "v2/model.tar.gz", b"two")  # added: served at once
    assert cache.get("v2/model.tar.gz") == b"two"
    (tmp_path / "v1" / "model.tar.gz").unlink()  # removed: refused, and dropped from memory
    with pytest.raises(mm.TargetModelError, match="serving: v2/model.tar.gz") as info:
        cache.get("v1/model.tar.gz")
    assert info.value.status_code == 404
    put(tmp_path, "v3/model.tar.gz", b"three")
    cache.get("v3/model.tar.gz")
    assert cache.loaded() == ["v2/model.tar.gz", "v3/model.tar.gz"]


@pytest.mark.parametrize("environ, limits", [
    ({}, mm.CacheLimits(8, None)),
    ({"IMGPIPE_MME_MAX_MODELS": "3", "IMGPIPE_MME_MAX_BYTES": "1_000_000"}, mm.CacheLimits(3, 1_000_000)),
])
def test_limits_from_the_environment(environ, limits):
    assert mm.CacheLimits.from_env(environ) == limits


@pytest.mark.parametrize("value", ["0", "many"])
def test_bad_limits_name_the_variable(value):
    with pytest.raises(ValueError, match="IMGPIPE_MME_MAX_MODELS"):
        mm.CacheLimits.from_env({"IMGPIPE_MME_MAX_MODELS": value})
