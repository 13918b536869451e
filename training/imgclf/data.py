"""Image folders → uint8 tensors, batch augmentation and normalisation.

Images are decoded once to square ``uint8`` tensors (``[3, S, S]``). Small datasets are
decoded up front with all cores and kept in memory; large ones are decoded per item by
DataLoader workers. Augmentation and normalisation then run on whole batches, which is
far cheaper than per-image PIL transforms on a CPU.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from .pixels import to_rgb

MIN_AUGMENT_SIZE = 2  # the smallest image side augment_batch can shift (reflect padding of 1 px)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


def list_image_folder(root: str | os.PathLike) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names (sorted, = label index order) and ``(path, label)`` pairs of ``root/<class>/*``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class folders (expected {root}/<class>/<image files>)")
    samples = []
    for index, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                samples.append((str(path), index))
    if not samples:
        raise ValueError(f"{root} has class folders but no image files")
    return classes, samples


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """The size :func:`square_resize` scales a ``width`` x ``height`` image to before cropping:
    the shorter side becomes ``size``, so a long thin image grows to ``size`` x (aspect ratio x
    ``size``) pixels (what a server checks before it resizes anything)."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def square_resize(image: Image.Image, size: int) -> Image.Image:
    """Apply EXIF orientation, resize the shorter side to ``size`` and centre-crop to
    ``size`` x ``size`` (the same in preprocessing, training, evaluation and inference).
    Any mode becomes 8-bit RGB as preprocessing makes it (:func:`imgclf.pixels.to_rgb`: alpha
    on white, 16-bit scaled), so an image a client sends is seen as its training copy was."""
    image = to_rgb(ImageOps.exif_transpose(image))
    width, height = image.size
    new_w, new_h = resized_size(width, height, size)
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def image_to_uint8(image: Image.Image, size: int) -> torch.Tensor:
    """A PIL image as a ``[3, size, size]`` uint8 tensor."""
    array = np.asarray(square_resize(image, size), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def load_uint8(path: str, size: int) -> torch.Tensor:
    with Image.open(path) as image:
        return image_to_uint8(image, size)


def _decode_chunk(args: tuple[list[str], int]) -> np.ndarray:
    paths, size = args
    return np.stack([load_uint8(p, size).numpy() for p in paths])


def decode_images(paths: Sequence[str], size: int, workers: Optional[int] = None) -> torch.Tensor:
    """Decode ``paths`` into one ``[N, 3, size, size]`` uint8 tensor using all cores."""
    workers = workers or os.cpu_count() or 1
    if not paths:
        return torch.empty((0, 3, size, size), dtype=torch.uint8)
    chunk = max(64, len(paths) // (workers * 4) + 1)
    chunks = [(list(paths[i : i + chunk]), size) for i in range(0, len(paths), chunk)]
    if workers == 1 or len(chunks) == 1:
        arrays = [_decode_chunk(c) for c in chunks]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            arrays = list(pool.map(_decode_chunk, chunks))
    return torch.from_numpy(np.concatenate(arrays))


class ImageFileDataset(torch.utils.data.Dataset):
    """Decodes one image per item (for datasets too large to keep in memory)."""

    def __init__(self, samples: Sequence[tuple[str, int]], size: int):
        self.samples, self.size = list(samples), size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return load_uint8(path, self.size), label


class TensorBatches:
    """Shuffled batches over tensors held in memory (no per-item collation)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0):
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle = batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.labels) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.images[index], self.labels[index]


def make_loader(
    samples: Sequence[tuple[str, int]],
    size: int,
    batch_size: int,
    shuffle: bool,
    cache_limit_bytes: int,
    workers: int,
    seed: int = 0,
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (uint8 images, labels): from memory when the decoded set fits under
    ``cache_limit_bytes`` (decoded once with ``workers`` processes), else streamed from
    disk by ``workers`` DataLoader processes."""
    labels = torch.tensor([label for _, label in samples], dtype=torch.long)
    if len(samples) * 3 * size * size <= cache_limit_bytes:
        images = decode_images([p for p, _ in samples], size, workers)
        return TensorBatches(images, labels, batch_size, shuffle, seed)
    return torch.utils.data.DataLoader(
        ImageFileDataset(samples, size),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=workers > 0,
    )


def augment_batch(images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to 1/8 of the side (reflect-padded)."""
    batch, _, size, _ = images.shape
    # drawn on the CPU (a CPU generator keeps runs reproducible), applied where the images are
    flip = (torch.rand(batch, generator=generator) < 0.5).to(images.device)
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    pad = max(1, size // 8)  # reflect padding needs pad < size: MIN_AUGMENT_SIZE
    padded = torch.nn.functional.pad(images.float(), (pad, pad, pad, pad), mode="reflect")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    return padded[:, :, dy : dy + size, dx : dx + size]


def normalize_batch(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 or 0-255 float ``[B, 3, S, S]`` → normalised float32."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1) * 255.0
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1) * 255.0
    return (images.float() - mean_t) / std_t
