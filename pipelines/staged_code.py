"""Compile a pipeline from a clean staged copy of the container code.

The SDK resolves ``source_dir``/``dependencies`` against the working directory, hashes the path
strings and file contents into the code's S3 key, and (for the repack step) writes helper
scripts into the model's ``source_dir``. Compiling inside a clean copy keeps all of that off the
checkout, so the code's S3 locations depend only on the code's content (step caching works
across checkouts and is not defeated by ``__pycache__``).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from sagemaker.workflow.pipeline import Pipeline

from pipelines.sdk_workarounds import cached_config_validation, without_disabled_profiler

# Repository root: holds steps/, training/ and inference/ (the container code).
CODE_ROOT = Path(__file__).resolve().parent.parent
# Directories shipped to SageMaker by the build pipeline, relative to CODE_ROOT.
# smdebug for TrainBestModel's container when the pipeline is built with SageMaker Debugger: a
# file dependency lands at the code tarball's root, where SageMaker's training toolkit installs it.
DEBUGGER_REQUIREMENTS = "pipelines/debugger_requirements/requirements.txt"
CODE_DIRS = ("steps", "training", "inference", DEBUGGER_REQUIREMENTS)
_BUILD_LITTER = ("__pycache__", ".pytest_cache", ".ipynb_checkpoints", ".DS_Store")


def _ignore_build_litter(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n in _BUILD_LITTER or n.endswith((".pyc", ".pyo"))}


@contextlib.contextmanager
def staged_code(code_root: Path | str = CODE_ROOT, paths: Sequence[str] = CODE_DIRS) -> Iterator[Path]:
    """A clean copy of the code ``paths`` (directories or files, relative to ``code_root``),
    made the working directory for the duration."""
    code_root = Path(code_root).resolve()
    missing = [p for p in paths if not (code_root / p).exists()]
    if missing:
        raise FileNotFoundError(f"code missing under {code_root}: {', '.join(missing)}")
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="imgpipe-code-") as tmp:
        for relative in paths:
            source, target = code_root / relative, Path(tmp) / relative
            if source.is_dir():
                shutil.copytree(source, target, ignore=_ignore_build_litter)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
        os.chdir(tmp)
        try:
            yield Path(tmp)
        finally:
            os.chdir(previous)


class ImgpipePipeline(Pipeline):
    """A :class:`Pipeline` whose definition is compiled from a staged copy of ``code_paths``.

    ``definition()`` is where the SDK runs the deferred ``fit()``/``run()``/``register()`` calls
    and uploads the code; ``create``/``update``/``upsert`` all go through it. With
    ``profiler_free``, no Training step keeps the SDK's ``{"DisableProfiler": true}`` config.
    """

    def __init__(self, *args, code_root: Path | str = CODE_ROOT,
                 code_paths: Sequence[str] = CODE_DIRS, profiler_free: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.code_root = Path(code_root)
        self.code_paths = tuple(code_paths)
        self.profiler_free = profiler_free

    def definition(self) -> str:
        with staged_code(self.code_root, self.code_paths), cached_config_validation():
            definition = super().definition()
        return without_disabled_profiler(definition) if self.profiler_free else definition
