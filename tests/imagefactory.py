"""Write small real image files (good and messy) for tests.

Every good image is random noise seeded by its ``key``, so two different keys never give
the same pixels (no accidental duplicates) and the same key always gives the same bytes.
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

SIZE = (12, 10)  # width, height: tiny, so hundreds of files take milliseconds


def pixels(key: str, size: tuple[int, int] = SIZE, channels: int = 3) -> np.ndarray:
    """Deterministic uint8 noise ``[height, width, channels]`` for ``key``."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    return rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)


def write_image(path: str | Path, key: str | None = None, mode: str = "RGB",
                size: tuple[int, int] = SIZE, fmt: str | None = None, **save_args) -> Path:
    """Write a noise image in ``mode`` (RGB, L, P, CMYK, RGBA, LA, I;16, 1) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = key if key is not None else path.as_posix()
    rgb = Image.fromarray(pixels(key, size))
    if mode == "RGBA":
        image = Image.fromarray(pixels(key, size, 4))
    elif mode == "LA":
        image = Image.fromarray(pixels(key, size, 2))
    elif mode == "I;16":
        image = Image.fromarray(pixels(key, size, 2).view("<u2")[..., 0])
    elif mode == "P":
        image = rgb.quantize(16)
    else:
        image = rgb.convert(mode)
    image.save(path, fmt, **save_args)
    return path


def write_class_images(root: str | Path, class_name: str, count: int, ext: str = ".png",
                       prefix: str = "img") -> list[Path]:
    """``count`` distinct images ``root/class_name/<prefix>_<i>.<ext>``."""
    return [write_image(Path(root, class_name, f"{prefix}_{i:03d}{ext}"), key=f"{class_name}/{prefix}/{i}")
            for i in range(count)]


def write_tree(root: str | Path, classes: dict[str, int], ext: str = ".png") -> None:
    """Class folders under ``root`` with the given number of images each."""
    for class_name, count in classes.items():
        write_class_images(root, class_name, count, ext)


def write_truncated(path: str | Path, key: str = "truncated", fmt: str = "JPEG") -> Path:
    """A valid image cut in half (PIL raises 'truncated' on load)."""
    path = write_image(path, key=key, size=(64, 48), fmt=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_corrupt_png(path: str | Path, key: str = "corrupt") -> Path:
    """A PNG whose compressed pixel data is damaged (header intact, load fails)."""
    path = write_image(path, key=key, size=(32, 32), fmt="PNG")
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def write_text(path: str | Path, text: str = "this is not an image\n") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_empty(path: str | Path) -> Path:
    return write_text(path, "")


def copy_pixels(source: str | Path, target: str | Path, fmt: str | None = None) -> Path:
    """Re-encode ``source`` losslessly as ``target`` (same pixels, different bytes)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        image.save(target, fmt)
    return target


def open_all_rgb(paths: Iterable[Path]) -> list[str]:
    """Modes of the given image files (each fully decoded)."""
    modes = []
    for path in paths:
        with Image.open(path) as image:
            image.load()
            modes.append(image.mode)
    return modes


def image_files(root: str | Path, exts: Sequence[str] = (".jpg", ".png")) -> list[Path]:
    return sorted(p for p in Path(root).rglob("*") if p.suffix in exts)
