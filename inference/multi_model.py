"""Multi-model serving: models loaded on first use from a directory, evicted least-recently-used.

The model directory is the source of truth, as the S3 prefix is for a SageMaker multi-model
endpoint: a request's target model (``X-Amzn-SageMaker-Target-Model``, e.g. ``v3/model.tar.gz``)
is a path relative to it. Putting an archive there serves it; removing it stops serving it;
replacing it (a new file, so a new inode or mtime) reloads it on the next request. Nothing is
restarted.

:class:`ModelCache` keeps at most ``max_models`` models (``IMGPIPE_MME_MAX_MODELS``, default 8)
and, when set, at most ``max_bytes`` bytes of weights (``IMGPIPE_MME_MAX_BYTES``; a model's size
is the bytes of its parameters and buffers) and evicts the least recently used beyond them. The
model just loaded always stays, even if it alone is over ``max_bytes``. Concurrent requests for
a model being loaded wait for that one load (and get its error if it fails); requests for other
models are never blocked by a load. A failed load is not remembered: the next request tries again.

Only the standard library (and ``imgclf.container``, which needs nothing else) is imported here.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping, Optional

from imgclf.container import positive_int_from_env

ENV_MAX_MODELS = "IMGPIPE_MME_MAX_MODELS"
ENV_MAX_BYTES = "IMGPIPE_MME_MAX_BYTES"
DEFAULT_MAX_MODELS = 8
MAX_TARGET_LENGTH = 1024  # TargetModelHeader's max in SageMaker Runtime's API model
LISTED_TARGETS = 20  # at most this many served targets are named in an error message


class TargetModelError(Exception):
    """A target model that cannot be served: ``status_code`` 400 (invalid name), 404 (not in the
    model directory) or 422 (its archive failed to load); the message names the problem."""

    def __init__(self, status_code: int, message: str):
        super().__init__(message)
        self.status_code = status_code
        self.message = message


@dataclass(frozen=True)
class CacheLimits:
    """How many models (and, when ``max_bytes`` is set, how many bytes of weights) stay loaded."""

    max_models: int = DEFAULT_MAX_MODELS
    max_bytes: Optional[int] = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "CacheLimits":
        return cls(positive_int_from_env(environ, ENV_MAX_MODELS) or DEFAULT_MAX_MODELS, positive_int_from_env(environ, ENV_MAX_BYTES))


def check_target_name(target: str) -> PurePosixPath:
    """The target as a relative path; :class:`TargetModelError` (400) for an empty, over-long,
    absolute, non-printable or ``..`` name."""
    if not target or not target.strip():
        raise TargetModelError(400, "empty TargetModel: name a model archive, e.g. v1/model.tar.gz")
    if len(target) > MAX_TARGET_LENGTH:
        raise TargetModelError(400, f"TargetModel is {len(target)} characters long; at most {MAX_TARGET_LENGTH}")
    if not target.isprintable() or target[0].isspace():
        raise TargetModelError(400, f"TargetModel {target[:80]!r} holds whitespace at the start or "
                                    "non-printable characters")
    path = PurePosixPath(target)
    if path.is_absolute() or "\\" in target:
        raise TargetModelError(400, f"TargetModel {target[:80]!r} is an absolute path; give a path "
                                    "relative to the endpoint's models, e.g. v1/model.tar.gz")
    if ".." in path.parts:
        raise TargetModelError(400, f"TargetModel {target[:80]!r} contains '..'; give a path "
                                    "inside the endpoint's models, e.g. v1/model.tar.gz")
    return path


def _stamp(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_ino, info.st_size, info.st_mtime_ns


@dataclass
class _Loading:
    """A load in progress: waiters block on ``done``; then ``model`` or ``error`` is set."""

    stamp: tuple[int, int, int]
    done: threading.Event = field(default_factory=threading.Event)
    model: Any = None
    error: Optional[BaseException] = None


class ModelCache:
    """Models of a directory, loaded on first use and evicted least-recently-used (module doc)."""

    def __init__(self, root: str | Path, load: Callable[[Path], Any], *, limits: CacheLimits = CacheLimits(),
                 size_of: Callable[[Any], int] = lambda model: 0):
        self.root = Path(root).resolve()
        self.load = load
        self.limits = limits
        self.size_of = size_of
        self._lock = threading.Lock()
        self._loaded: "OrderedDict[str, tuple[tuple[int, int, int], Any, int]]" = OrderedDict()
        self._loading: dict[str, _Loading] = {}
        self.loads = 0
        self.evictions = 0

    # ------------------------------------------------------------------ reads
    def loaded(self) -> list[str]:
        """Targets in memory, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def loaded_bytes(self) -> int:
        with self._lock:
            return sum(size for _, _, size in self._loaded.values())

    def available(self, limit: int = LISTED_TARGETS) -> list[str]:
        """Archives in the directory (``*.tar.gz``, up to two levels deep), sorted, at most ``limit``."""
        found = sorted(str(p.relative_to(self.root)) for pattern in ("*.tar.gz", "*/*.tar.gz")
                       for p in self.root.glob(pattern) if p.is_file())
        return found[:limit]

    def resolve(self, target: str) -> Path:
        """The archive file of ``target``; :class:`TargetModelError` 400 or 404."""
        relative = check_target_name(target)
        path = self.root / relative
        try:
            inside = path.resolve().is_relative_to(self.root)
        except (OSError, RuntimeError):
            inside = False
        if not inside:
            raise TargetModelError(400, f"TargetModel {target[:80]!r} points outside the endpoint's models")
        if not path.is_file():
            served = self.available()
            raise TargetModelError(404, f"TargetModel {target[:80]!r} is not served by this endpoint "
                                        f"(serving: {', '.join(served) if served else 'no models'})")
        return path

    # ------------------------------------------------------------------ get
    def get(self, target: str) -> Any:
        """The loaded model of ``target``, loading it (once, however many requests ask) if needed."""
        path = self.resolve(target)
        try:
            stamp = _stamp(path)
        except FileNotFoundError:
            raise TargetModelError(404, f"TargetModel {target[:80]!r} was removed from this endpoint") from None
        with self._lock:
            entry = self._loaded.get(target)
            if entry is not None and entry[0] == stamp:
                self._loaded.move_to_end(target)
                return entry[1]
            loading = self._loading.get(target)
            owner = loading is None or loading.stamp != stamp
            if owner:
                loading = self._loading[target] = _Loading(stamp)
        if not owner:
            loading.done.wait()
            if loading.error is not None:
                raise loading.error
            return loading.model
        return self._load(target, path, loading)

    def _load(self, target: str, path: Path, loading: _Loading) -> Any:
        try:
            model = self.load(path)
        except Exception as exc:  # noqa: BLE001 - any load failure is this target's 422
            loading.error = TargetModelError(422, f"TargetModel {target[:80]!r} failed to load: {exc}")
            with self._lock:
                if self._loading.get(target) is loading:
                    del self._loading[target]
            loading.done.set()
            raise loading.error from None
        size = int(self.size_of(model))
        with self._lock:
            self.loads += 1
            self._loaded.pop(target, None)
            self._loaded[target] = (loading.stamp, model, size)
            evicted = self._evict(keep=target)
            if self._loading.get(target) is loading:
                del self._loading[target]
        loading.model = model
        loading.done.set()
        if evicted:
            del evicted
            release_memory()
        return model

    def _evict(self, keep: str) -> list[Any]:
        """Drop the least recently used models beyond the limits (and those whose archive is gone);
        returns them so that the caller frees them outside the lock."""
        dropped = [t for t in self._loaded if t != keep and not (self.root / t).is_file()]
        evicted = [self._loaded.pop(t)[1] for t in dropped]

        def over() -> bool:
            total = sum(size for _, _, size in self._loaded.values())
            return len(self._loaded) > self.limits.max_models or (
                self.limits.max_bytes is not None and total > self.limits.max_bytes)

        while len(self._loaded) > 1 and over():
            oldest = next(iter(self._loaded))
            if oldest == keep:
                self._loaded.move_to_end(keep)
                continue
            evicted.append(self._loaded.pop(oldest)[1])
        self.evictions += len(evicted)
        return evicted


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so that
    an evicted model's memory leaves the process's resident set."""
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
