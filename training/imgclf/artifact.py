"""The model artifact: ``model.pth`` (a state_dict) and ``model.json`` (everything else).

``model.tar.gz`` as SageMaker packs it holds these two files at its root. Loading never
unpickles arbitrary objects: weights are read with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .models import build_model

WEIGHTS_FILE = "model.pth"
META_FILE = "model.json"
FORMAT_VERSION = 1
REQUIRED_META = ("arch", "classes", "image_size", "normalize")


class ArtifactError(ValueError):
    """A model directory or archive that does not follow the artifact contract."""


def save_model(model_dir: str | os.PathLike, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``model.pth`` and ``model.json`` into ``model_dir``; returns the directory."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ArtifactError(f"model metadata lacks {', '.join(missing)}")
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, model_dir / WEIGHTS_FILE)
    payload = {"format_version": FORMAT_VERSION, "num_classes": len(meta["classes"]), **meta}
    (model_dir / META_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True))
    return model_dir


def read_meta(model_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(model_dir) / META_FILE
    if not path.is_file():
        raise ArtifactError(f"{path} not found: not a model directory of this project")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}")
    return meta


def load_model(model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The model in eval mode on ``device``, and its metadata."""
    meta = read_meta(model_dir)
    weights = Path(model_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise ArtifactError(f"{weights} not found")
    model = build_model(meta["arch"], len(meta["classes"]), pretrained=False)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), meta


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Safely extract ``model.tar.gz`` into ``dest``: only regular files and directories whose
    resolved paths stay inside ``dest``. Absolute names, ``..``, symbolic and hard links and
    device files are refused with :class:`ArtifactError` before anything is written."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            check_member(member, root, archive)
        if hasattr(tarfile, "data_filter"):  # Python >= 3.8.17 / 3.11.4: a second line of defence
            tar.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - older Pythons in some SageMaker containers
            tar.extractall(dest, members=members)
    return dest


def check_member(member: tarfile.TarInfo, root: Path, archive: str | os.PathLike = "archive") -> None:
    """Raise :class:`ArtifactError` unless ``member`` is a file or directory inside ``root``."""
    name = member.name
    if not (member.isfile() or member.isdir()):
        kind = "link" if member.issym() or member.islnk() else "special file"
        raise ArtifactError(f"{archive}: refusing {kind} member {name!r} (only files and directories)")
    if name.startswith(("/", "\\")) or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ArtifactError(f"{archive}: refusing member {name!r} (absolute path or '..')")
    if not (root / name).resolve().is_relative_to(root):
        raise ArtifactError(f"{archive}: refusing member {name!r}: it would land outside {root}")


def create_archive(model_dir: str | os.PathLike, archive: str | os.PathLike) -> Path:
    """Pack ``model_dir``'s files at the archive root, as SageMaker does for SM_MODEL_DIR."""
    archive = Path(archive)
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(Path(model_dir).iterdir()):
            tar.add(path, arcname=path.name)
    return archive
