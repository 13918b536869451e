"""Prepare an image-classification dataset: validate, convert, de-duplicate and split.

SageMaker processing entry point (ProcessingStep ``PrepareData``). Runs in SageMaker's
PyTorch processing container and imports only the standard library, PIL and
``imgclf.pixels`` (the shared code shipped with it: the image conversion every step applies).

Input layouts (detected automatically under ``--input-dir``)
-------------------------------------------------------------
* ``train/ valid/ test/`` with class folders inside (dog-breed layout,
  ``train/001.Affenpinscher/*.jpg``). ``val``/``validation``/``dev`` are accepted for
  ``valid``, ``training``/``testing`` and a ``seg_`` prefix (``seg_train``) too.
  Layout ``"train/valid/test"``: the splits are kept as given.
* ``train/ test/`` (Intel scenes ``seg_train/ seg_test/``): layout ``"train/test"``;
  ``valid`` is carved out of ``train`` (``--valid-ratio`` of it, stratified).
  ``train/ valid/`` gives ``"train/valid"`` (``test`` carved out of train) and ``train/``
  alone gives ``"train"`` (both carved out).
* ``<class>/`` folders: layout ``"flat"``, split stratified by class with the ratios.

A single wrapping top folder (``data/dogImages/train/...`` after unzipping) is descended
into, a split folder holding only a folder of its own name (``seg_train/seg_train/``) is
unwrapped and so is a class folder holding only a folder of its own name. Images below a
class folder are collected recursively. Unlabelled folders next to split folders
(``seg_pred``, ``pred``, ``predict``, ``unlabeled``) are ignored and reported. Hidden and
system entries (``.DS_Store``, ``._*``, ``__MACOSX``, ``Thumbs.db``) are ignored
silently (only counted). Class names are the folder names (Unicode NFC); in layouts with
given splits every split must hold the same classes.

Every file is decoded
---------------------
Each file is opened with PIL (JPEG, PNG, BMP, GIF, TIFF, WebP, MPO only) and fully
loaded, with a pixel-count limit (``--max-image-pixels``, PIL's ``MAX_IMAGE_PIXELS`` by
default) as a decompression-bomb guard. Files are skipped, with a reason code, when they
are: ``empty_file``, ``unsupported_type`` (extension), ``not_an_image`` (PIL cannot
identify it, e.g. a text file named ``.jpg``), ``truncated``, ``corrupt``,
``decompression_bomb``, ``unsupported_mode``, ``unreadable`` or ``not_in_class_folder``.
Images are converted to 8-bit RGB by ``imgclf.pixels.to_rgb``, the conversion training,
evaluation and inference apply too: ``L``/``1``/``P``/``CMYK``/``YCbCr`` via PIL; alpha
(``RGBA``, ``LA``, ``PA``, or a ``tRNS`` colour key on ``P``/``L``/``RGB``/16-bit) is
composited on white; 16-bit (``I;16*``) is scaled ``v8 = round(v16 / 257)`` (full range,
never clipped); 32-bit ``I`` likewise when its values fit 0..65535, else min-max scaled;
``F`` from 0..1 or 0..255.
The EXIF orientation is applied to the pixels. ``--max-image-side N`` downscales (Lanczos,
aspect kept) images whose longer side exceeds N.

Output format: lossy sources (JPEG, MPO, WebP) are written as JPEG (quality 95), all
others (lossless sources) as PNG. A JPEG source that needs no change (RGB, no EXIF
rotation, no downscale) is copied byte for byte, so it loses nothing.

Duplicates
----------
Images are hashed on their decoded RGB pixels (SHA-1 of size + pixels), so a copy
re-encoded losslessly (PNG→BMP, a grey JPEG vs. its RGB copy) is found as well as a byte
copy. Exact duplicates keep one copy per class. A duplicate group never spans splits:
flat/carved images are grouped before splitting, and when a given valid/test image also
exists in a given train folder (or a test image in valid) the valid/test copy is dropped
and reported. The same pixels in two classes (label conflict) are kept, once per class,
in one split, and reported.

Splitting and checks
--------------------
Carved splits are stratified per class: ``round_half_up(n * ratio)`` images (at least 1
when the ratio is > 0) go to test and valid, the rest to train; ratios are fractions of
the images being split. The shuffle uses ``--seed`` and the class name only, so the result
is deterministic and independent of ``--workers``. Each class needs at least
``--min-images-per-class`` usable (decoded, de-duplicated) images in total and at least
one image in train and in every valid/test split that is produced; otherwise the run
fails naming every offending class with its counts.

Outputs
-------
``OUT/train/<class>/``, ``OUT/valid/<class>/``, ``OUT/test/<class>/`` (file names are the
source names, sub-folders joined with ``__``, extension of the output format, plus
``-<8 hex>`` when two sources would collide), ``OUT/report/classes.json`` (sorted class
names = label index order), ``OUT/report/report.json`` (layout, parameters, counts per
split and class, totals, skipped files with reasons, conversions by source mode,
duplicates) and ``OUT/report/manifest.csv`` (``split,class,file,source,sha1`` for every
output image). Paths in the report are relative to ``--input-dir``.

Failure: the reason goes to stderr and to ``$SM_OUTPUT_FAILURE`` (default
``/opt/ml/output/failure``, SageMaker's failure file) and the exit status is 1.
Progress lines go to stdout every few seconds (and every 10 %), suitable for logs.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import sys
import time
import traceback
import unicodedata
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, TextIO

from PIL import Image, ImageOps, UnidentifiedImageError

from imgclf.pixels import UnsupportedModeError, to_rgb

Image.init()  # register every plugin, so Image.open(formats=...) knows them all

DEFAULT_INPUT_DIR = "/opt/ml/processing/input/data"
DEFAULT_OUTPUT_DIR = "/opt/ml/processing/output"
DEFAULT_FAILURE_FILE = "/opt/ml/output/failure"
DEFAULT_MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
SPLITS = ("train", "valid", "test")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
# MPO (multi-picture JPEG from cameras) is opened by the JPEG plugin.
PIL_FORMATS = tuple(f for f in ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP") if f in Image.OPEN)
LOSSY_FORMATS = frozenset({"JPEG", "MPO", "WEBP"})
JPEG_QUALITY = 95
PNG_COMPRESS_LEVEL = 6
SPLIT_ALIASES = {
    "train": "train", "training": "train", "trn": "train",
    "valid": "valid", "val": "valid", "validation": "valid", "dev": "valid",
    "test": "test", "testing": "test", "tst": "test",
}
UNLABELLED_NAMES = frozenset({"pred", "predict", "prediction", "predictions", "unlabeled", "unlabelled"})
SYSTEM_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini", "@eadir", "$recycle.bin"})


class PreprocessError(Exception):
    """A problem with the input or the arguments, reported without a traceback."""


# --------------------------------------------------------------------------- scanning


@dataclass
class SourceFile:
    """One candidate image: where it came from and which splits it may go to."""

    path: Path  # absolute
    rel: str  # relative to the input dir, '/'-separated
    class_name: str
    source_split: str  # "train"/"valid"/"test" for given split folders, "" for flat
    pool: tuple[str, ...]  # splits this file may end up in
    name_parts: tuple[str, ...]  # path inside the class folder


@dataclass
class Scan:
    """What the input tree holds."""

    layout: str
    root_rel: str
    split_dirs: dict[str, str]
    classes_by_split: dict[str, list[str]]
    files: list[SourceFile] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    ignored_dirs: list[dict[str, str]] = field(default_factory=list)
    hidden_ignored: int = 0


def is_hidden(name: str) -> bool:
    """Hidden or OS metadata entries (``.DS_Store``, ``._x.jpg``, ``__MACOSX``)."""
    return name.startswith(".") or name.lower() in SYSTEM_NAMES


def split_alias(name: str) -> Optional[str]:
    """``"train"``/``"valid"``/``"test"`` for a split folder name, else None."""
    key = name.lower()
    key = key[4:] if key.startswith("seg_") else key
    return SPLIT_ALIASES.get(key)


def is_unlabelled(name: str) -> bool:
    key = name.lower()
    return (key[4:] if key.startswith("seg_") else key) in UNLABELLED_NAMES


def visible_entries(directory: Path) -> tuple[list[Path], list[Path], int]:
    """Sorted visible sub-folders and files of ``directory``, and its hidden file count."""
    dirs, files, hidden = [], [], 0
    for entry in sorted(directory.iterdir(), key=lambda p: p.name):
        if is_hidden(entry.name):
            hidden += count_hidden_tree(entry)
        elif entry.is_dir():
            dirs.append(entry)
        else:
            files.append(entry)
    return dirs, files, hidden


def count_hidden_tree(path: Path) -> int:
    """Number of files in a hidden entry (1 for a file)."""
    if not path.is_dir():
        return 1
    return sum(len(files) for _, _, files in os.walk(path))


def unwrap_top(root: Path) -> Path:
    """Descend through single wrapping folders (``data/dogImages/``) to the dataset root."""
    for _ in range(8):
        dirs, files, _ = visible_entries(root)
        if len(dirs) != 1 or any(f.suffix.lower() in IMAGE_EXTENSIONS for f in files):
            return root
        child = dirs[0]
        if split_alias(child.name) or not visible_entries(child)[0]:
            return root  # child is a split folder, or the only class folder
        root = child
    return root


def unwrap_same_name(directory: Path) -> Path:
    """``seg_train/seg_train/`` → inner folder (only a lone same-name folder inside)."""
    while True:
        dirs, files, _ = visible_entries(directory)
        if len(dirs) == 1 and not files and dirs[0].name.lower() == directory.name.lower():
            directory = dirs[0]
        else:
            return directory


def detect_layout(root: Path) -> tuple[str, dict[str, Path], list[Path]]:
    """Layout name, split folders (unwrapped) and ignored unlabelled folders."""
    dirs, _, _ = visible_entries(root)
    splits: dict[str, Path] = {}
    others, unlabelled = [], []
    for d in dirs:
        alias = split_alias(d.name)
        if alias is None:
            (unlabelled if is_unlabelled(d.name) else others).append(d)
        elif alias in splits:
            raise PreprocessError(f"two folders for the {alias} split: {splits[alias].name!r} and {d.name!r}")
        else:
            splits[alias] = d
    if not splits:
        return "flat", {}, []  # every folder is a class, even one named like 'pred'
    if others:
        raise PreprocessError(
            f"mixed layout in {root}: split folders {sorted(p.name for p in splits.values())} next to "
            f"other folders {[p.name for p in others]}; use either train/valid/test (or train/test) "
            "folders holding class folders, or only class folders"
        )
    if "train" not in splits:
        raise PreprocessError(f"split folders {sorted(p.name for p in splits.values())} in {root} but no train folder")
    layout = "/".join(s for s in SPLITS if s in splits)
    return layout, {s: unwrap_same_name(p) for s, p in splits.items()}, unlabelled


def split_pools(layout: str) -> dict[str, tuple[str, ...]]:
    """Which output splits the files of each given folder may go to."""
    if layout == "flat":
        return {"": SPLITS}
    given = layout.split("/")
    carved = tuple(s for s in SPLITS if s not in given)
    return {s: (("train",) + carved if s == "train" else (s,)) for s in given}


def rel_to(path: Path, base: Path) -> str:
    return path.relative_to(base).as_posix()


def walk_files(directory: Path) -> tuple[list[tuple[Path, tuple[str, ...]]], int]:
    """Visible files below ``directory`` (sorted, with their parts below it) and the hidden count."""
    found, hidden = [], 0
    for current, dirnames, filenames in os.walk(directory):
        hidden += sum(count_hidden_tree(Path(current, d)) for d in dirnames if is_hidden(d))
        hidden += sum(1 for f in filenames if is_hidden(f))
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for name in sorted(f for f in filenames if not is_hidden(f)):
            path = Path(current, name)
            found.append((path, path.relative_to(directory).parts))
    return found, hidden


def scan_class_folders(
    scan: Scan, input_dir: Path, folder: Path, source_split: str, pool: tuple[str, ...]
) -> list[str]:
    """Add the files of ``folder/<class>/**`` to ``scan``; returns the class names."""
    dirs, files, hidden = visible_entries(folder)
    scan.hidden_ignored += hidden
    for f in files:
        scan.skipped.append({"path": rel_to(f, input_dir), "reason": "not_in_class_folder",
                             "detail": "file is not inside a class folder"})
    names = []
    for class_dir in dirs:
        class_name = unicodedata.normalize("NFC", class_dir.name)
        names.append(class_name)
        class_root = unwrap_same_name(class_dir)
        scan.hidden_ignored += _hidden_between(class_dir, class_root)
        found, hidden = walk_files(class_root)
        scan.hidden_ignored += hidden
        for path, parts in found:
            rel = rel_to(path, input_dir)
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                scan.skipped.append({"path": rel, "reason": "unsupported_type",
                                     "detail": f"extension {path.suffix or '(none)'!r} is not an image type"})
                continue
            scan.files.append(SourceFile(path, rel, class_name, source_split, pool, parts))
    return names


def scan_input(input_dir: Path) -> Scan:
    """Detect the layout under ``input_dir`` and list every candidate file."""
    if not input_dir.is_dir():
        raise PreprocessError(f"input dir {input_dir} does not exist or is not a folder")
    root = unwrap_top(input_dir)
    layout, split_dirs, unlabelled = detect_layout(root)
    pools = split_pools(layout)
    scan = Scan(layout, rel_to(root, input_dir) if root != input_dir else ".",
                {s: rel_to(p, input_dir) for s, p in split_dirs.items()}, {})
    scan.hidden_ignored += _hidden_between(input_dir, root)
    for split_dir in split_dirs.values():
        scan.hidden_ignored += _hidden_between(root / split_dir.relative_to(root).parts[0], split_dir)
    for d in unlabelled:
        scan.ignored_dirs.append({"path": rel_to(d, input_dir), "reason": "unlabelled folder (no classes)"})
    if layout == "flat":  # hidden entries of root are counted by scan_class_folders
        scan.classes_by_split[""] = scan_class_folders(scan, input_dir, root, "", pools[""])
    else:
        _, root_files, hidden = visible_entries(root)
        scan.hidden_ignored += hidden
        for f in root_files:
            scan.skipped.append({"path": rel_to(f, input_dir), "reason": "not_in_class_folder",
                                 "detail": "file is not inside a split/class folder"})
        for split, folder in split_dirs.items():
            scan.classes_by_split[split] = scan_class_folders(scan, input_dir, folder, split, pools[split])
    return scan


def _hidden_between(top: Path, inner: Path) -> int:
    """Hidden files in the wrapping folders from ``top`` down to (not including) ``inner``."""
    count, current = 0, top
    while current != inner:
        dirs, _, hidden = visible_entries(current)
        count += hidden
        current = next(p for p in dirs if inner.is_relative_to(p))
    return count


def check_classes(scan: Scan) -> list[str]:
    """Sorted class names; every given split must hold the same classes."""
    sets = {split: set(names) for split, names in scan.classes_by_split.items()}
    classes = sorted(set().union(*sets.values())) if sets else []
    if not classes:
        raise PreprocessError(f"no class folders found in the input ({scan.layout} layout); expected "
                              "<class>/<images> or train/<class>/<images> (+ valid/, test/)")
    if len(sets) > 1:
        problems = [f"{split}/ lacks {sorted(set(classes) - names)}" for split, names in sets.items()
                    if set(classes) - names]
        if problems:
            raise PreprocessError("class folders differ between splits: " + "; ".join(problems)
                                  + f" (classes found: {len(classes)})")
    if len(classes) < 2:
        raise PreprocessError(f"only one class folder found ({classes[0]!r}); classification needs at least 2")
    return classes


# --------------------------------------------------------------------------- decoding


@dataclass
class Task:
    """Work for one file: decode, convert, hash and write it to ``staged``."""

    index: int
    path: str
    staged_stem: str
    max_side: int
    max_pixels: int


def open_image(path: str, max_pixels: int) -> Image.Image:
    """Open and fully decode ``path`` with the decompression-bomb guard at ``max_pixels``."""
    previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path, formats=PIL_FORMATS)
            try:
                image.load()
            except BaseException:
                image.close()
                raise
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    return image


def classify_error(error: BaseException) -> tuple[str, str]:
    """(reason code, detail) for an exception raised while decoding."""
    detail = f"{type(error).__name__}: {error}"
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return "decompression_bomb", detail
    if isinstance(error, UnsupportedModeError):
        return "unsupported_mode", str(error)
    if isinstance(error, UnidentifiedImageError):
        return "not_an_image", "PIL cannot identify the file as a supported image"
    if isinstance(error, (PermissionError, FileNotFoundError, IsADirectoryError)):
        return "unreadable", detail
    if "truncat" in str(error).lower():
        return "truncated", detail
    return "corrupt", detail


def exif_orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1) or 1)
    except Exception:  # malformed EXIF must not reject a decodable image
        return 1


def downscale(image: Image.Image, max_side: int) -> Image.Image:
    """Shrink so the longer side is ``max_side`` (no-op when 0 or already small)."""
    width, height = image.size
    if max_side <= 0 or max(width, height) <= max_side:
        return image
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.LANCZOS, reducing_gap=3.0)


def pixel_hash(image: Image.Image) -> str:
    digest = hashlib.sha1(f"{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def process_file(task: Task) -> dict[str, Any]:
    """Decode, validate, convert and stage one file (runs in a worker process)."""
    result: dict[str, Any] = {"index": task.index, "ok": False}
    try:
        if os.path.getsize(task.path) == 0:
            result.update(reason="empty_file", detail="file has 0 bytes")
            return result
        image = open_image(task.path, task.max_pixels)
    except BaseException as error:  # noqa: BLE001 - every decoder failure is a skip reason
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        reason, detail = classify_error(error)
        result.update(reason=reason, detail=detail)
        return result
    with image:
        try:
            frame = ImageOps.exif_transpose(image) if exif_orientation(image) in range(2, 9) else image
            rgb = to_rgb(frame)
            out = downscale(rgb, task.max_side)
            content_hash = pixel_hash(rgb)
        except Exception as error:  # noqa: BLE001 - a bad image is a skip reason
            reason, detail = classify_error(error)
            result.update(reason=reason, detail=detail)
            return result
        # Write errors (disk full, permissions) are not the image's fault: they fail the job.
        result.update(stage(image, out, task), hash=content_hash, resized=out is not rgb,
                      exif_rotated=frame is not image, ok=True)
    return result


def stage(image: Image.Image, out: Image.Image, task: Task) -> dict[str, Any]:
    """Write ``out`` to the staging folder: JPEG for lossy sources, else PNG; unchanged JPEGs are copied."""
    source_format = image.format or ""
    lossy = source_format in LOSSY_FORMATS
    staged = task.staged_stem + (".jpg" if lossy else ".png")
    copied = source_format in ("JPEG", "MPO") and out is image  # RGB, not rotated, not resized
    if copied:
        shutil.copyfile(task.path, staged)
    elif lossy:
        out.save(staged, "JPEG", quality=JPEG_QUALITY)
    else:
        out.save(staged, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return {"mode": image.mode, "format": source_format, "staged": staged, "copied": copied,
            "size": list(image.size), "out_size": list(out.size), "output_format": "jpeg" if lossy else "png"}


def run_tasks(tasks: Sequence[Task], workers: int, progress: "Progress") -> list[dict[str, Any]]:
    """Run ``process_file`` over ``tasks`` on ``workers`` processes, in task order."""
    results: list[dict[str, Any]] = []
    if workers <= 1 or len(tasks) < 2:
        for task in tasks:
            results.append(process_file(task))
            progress.update(results[-1]["ok"])
        return results
    workers = min(workers, len(tasks))
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    chunksize = max(1, min(32, len(tasks) // (workers * 8)))
    # A worker killed by a crashing decoder raises BrokenProcessPool instead of hanging.
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for result in pool.map(process_file, tasks, chunksize=chunksize):
            results.append(result)
            progress.update(result["ok"])
    return results


class Progress:
    """Prints ``decoded i/n`` lines every ``interval`` seconds and every 10 %."""

    def __init__(self, total: int, interval: float = 5.0, stream: Optional[TextIO] = None):
        self.total, self.interval, self.stream = total, interval, stream or sys.stdout
        self.done = self.failed = 0
        self.start = self.last = time.monotonic()
        self.next_percent = 10

    def update(self, ok: bool) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        now = time.monotonic()
        percent = 100 * self.done // max(self.total, 1)
        if now - self.last >= self.interval or percent >= self.next_percent or self.done == self.total:
            self.last = now
            self.next_percent = (percent // 10 + 1) * 10
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate else 0.0
            print(f"progress: decoded {self.done}/{self.total} ({percent}%) skipped={self.failed} "
                  f"{rate:.1f} files/s eta={eta:.0f}s", file=self.stream, flush=True)


# --------------------------------------------------------------------------- duplicates


@dataclass
class Decoded:
    """A decoded, usable image (one per output file, or dropped as a duplicate)."""

    source: SourceFile
    info: dict[str, Any]
    split: str = ""


def resolve_duplicates(images: list[Decoded]) -> tuple[list[list[Decoded]], list[dict[str, Any]], list[dict[str, str]]]:
    """Group images by pixel hash; keep one per class from the highest-priority source pool.

    Returns the kept groups (sorted), the duplicate-group report and the dropped files.
    """
    groups: dict[str, list[Decoded]] = {}
    for image in images:
        groups.setdefault(image.info["hash"], []).append(image)
    kept_groups, report, dropped = [], [], []
    for digest in sorted(groups, key=lambda h: min(i.source.rel for i in groups[h])):
        members = sorted(groups[digest], key=lambda i: (_pool_rank(i.source), i.source.class_name, i.source.rel))
        best_pool = members[0].source.pool
        kept: list[Decoded] = []
        seen_classes: set[str] = set()
        for image in members:
            if image.source.pool == best_pool and image.source.class_name not in seen_classes:
                kept.append(image)
                seen_classes.add(image.source.class_name)
        kept_groups.append(kept)
        if len(members) == 1:
            continue
        kept_ids = {id(i) for i in kept}
        group_dropped = []
        for image in members:
            if id(image) in kept_ids:
                continue
            same_pool = image.source.pool == best_pool
            reason = "copy_in_same_class" if same_pool else f"copy_of_{kept[0].source.source_split}_image"
            group_dropped.append({"path": image.source.rel, "reason": reason, "duplicate_of": kept[0].source.rel})
        dropped.extend(group_dropped)
        report.append({
            "hash": digest,
            "kept": [{"path": i.source.rel, "class": i.source.class_name} for i in kept],
            "dropped": group_dropped,
            "label_conflict": len(seen_classes) > 1,
        })
    return kept_groups, report, dropped


def _pool_rank(source: SourceFile) -> int:
    """Lower wins: a pool that may hold train images beats valid, valid beats test."""
    return min(SPLITS.index(s) for s in source.pool)


# --------------------------------------------------------------------------- splitting


def round_half_up(value: float) -> int:
    return int(value + 0.5 + 1e-9)


def split_targets(n: int, pool: tuple[str, ...], valid_ratio: float, test_ratio: float) -> dict[str, int]:
    """How many of ``n`` images of one class go to each split of ``pool``."""
    ratios = {"valid": valid_ratio, "test": test_ratio}
    targets = {s: 0 for s in pool}
    for split in ("test", "valid"):
        if split in pool and ratios[split] > 0:
            targets[split] = max(1, round_half_up(n * ratios[split]))
    targets["train"] = max(0, n - targets.get("valid", 0) - targets.get("test", 0))
    return targets


def assign_splits(groups: list[list[Decoded]], classes: Sequence[str], valid_ratio: float,
                  test_ratio: float, seed: int) -> None:
    """Set ``image.split`` for every kept image; groups move as a unit (stratified per class)."""
    by_class: dict[str, list[list[Decoded]]] = {}
    for group in groups:
        pool = group[0].source.pool
        if len(pool) == 1:
            for image in group:
                image.split = pool[0]
        else:
            for image in group:  # a group holds at most one image per class
                by_class.setdefault(image.source.class_name, []).append(group)
    for class_name in classes:
        mine = by_class.get(class_name, [])
        if not mine:
            continue
        pool = mine[0][0].source.pool
        targets = split_targets(len(mine), pool, valid_ratio, test_ratio)
        for group in mine:
            if group[0].split:
                targets[group[0].split] -= 1  # already placed through another class
        pending = [g for g in mine if not g[0].split]
        random.Random(f"{seed}:{class_name}").shuffle(pending)
        order = [s for s in ("test", "valid", "train") if s in pool]
        for group in pending:
            split = next((s for s in order if targets[s] > 0), "train")
            targets[split] -= 1
            for image in group:
                image.split = split


def check_counts(counts: dict[str, dict[str, int]], classes: Sequence[str], produced: Sequence[str],
                 min_images: int, skipped_by_class: dict[str, int], params: str) -> None:
    """Fail naming every class with too few images overall or none in a produced split."""
    problems = []
    for class_name in classes:
        per_split = {s: counts[s].get(class_name, 0) for s in SPLITS}
        total = sum(per_split.values())
        empty = [s for s in produced if per_split[s] == 0]
        if total < min_images or empty:
            why = [f"{total} usable images (minimum {min_images})"] if total < min_images else []
            why += [f"no {s} images" for s in empty]
            split_text = ", ".join(f"{s}={per_split[s]}" for s in SPLITS)
            extra = f", {skipped_by_class.get(class_name, 0)} files skipped" if skipped_by_class.get(class_name) else ""
            problems.append(f"class {class_name!r}: {'; '.join(why)} ({split_text}{extra})")
    if problems:
        raise PreprocessError(f"too few images to split {len(problems)} of {len(classes)} classes ({params}):\n  "
                              + "\n  ".join(problems))


# --------------------------------------------------------------------------- outputs


def output_names(images: list[Decoded]) -> dict[int, str]:
    """Collision-free output file name for each image (keyed by ``id``)."""
    names: dict[int, str] = {}
    taken: set[tuple[str, str, str]] = set()
    wanted: dict[tuple[str, str, str], list[Decoded]] = {}
    for image in sorted(images, key=lambda i: i.source.rel):
        ext = ".jpg" if image.info["output_format"] == "jpeg" else ".png"
        parts = list(image.source.name_parts)
        parts[-1] = Path(parts[-1]).stem
        name = "__".join(parts) + ext
        wanted.setdefault((image.split, image.source.class_name, name.lower()), []).append(image)
        names[id(image)] = name
    taken.update(wanted)
    for key, members in wanted.items():
        # the source whose own file name is unchanged keeps it; the others get a suffix
        members.sort(key=lambda i: (i.source.name_parts[-1] != names[id(i)], i.source.rel))
        for image in members[1:]:
            stem, ext = os.path.splitext(names[id(image)])
            tag = hashlib.sha1(image.source.rel.encode()).hexdigest()
            for length in range(8, 41):
                name = f"{stem}-{tag[:length]}{ext}"
                new_key = (key[0], key[1], name.lower())
                if new_key not in taken:
                    break
            taken.add(new_key)
            names[id(image)] = name
    return names


def place_outputs(images: list[Decoded], output_dir: Path) -> list[dict[str, str]]:
    """Move staged files into ``OUT/<split>/<class>/``; returns manifest rows."""
    names = output_names(images)
    rows = []
    for image in sorted(images, key=lambda i: (i.split, i.source.class_name, names[id(i)])):
        target = output_dir / image.split / image.source.class_name / names[id(image)]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(image.info["staged"], target)
        rows.append({"split": image.split, "class": image.source.class_name, "file": names[id(image)],
                     "source": image.source.rel, "sha1": image.info["hash"]})
    return rows


def check_not_nested(input_dir: Path, output_dir: Path) -> None:
    out, inp = output_dir.resolve(), input_dir.resolve()
    if out.is_relative_to(inp) or inp.is_relative_to(out):
        raise PreprocessError(f"output dir {output_dir} and input dir {input_dir} must not contain each other")


def prepare_output_dir(output_dir: Path) -> Path:
    """Check ``output_dir`` holds no earlier results and create the staging folder."""
    for split in SPLITS + ("report",):
        folder = output_dir / split
        if folder.is_dir() and any(folder.iterdir()):
            raise PreprocessError(f"output folder {folder} is not empty; use an empty --output-dir")
    staging = output_dir / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")


def write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["split", "class", "file", "source", "sha1"])
        writer.writeheader()
        writer.writerows(rows)


# --------------------------------------------------------------------------- the step


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def validate_parameters(valid_ratio: float, test_ratio: float, min_images: int, max_side: int,
                        workers: Optional[int], max_pixels: int) -> None:
    if not (0.0 <= valid_ratio < 1.0 and 0.0 <= test_ratio < 1.0 and valid_ratio + test_ratio < 1.0):
        raise PreprocessError(f"ratios must be in [0, 1) with valid + test < 1 (got valid={valid_ratio}, "
                              f"test={test_ratio})")
    if min_images < 1:
        raise PreprocessError(f"--min-images-per-class must be >= 1 (got {min_images})")
    if max_side < 0:
        raise PreprocessError(f"--max-image-side must be >= 0 (got {max_side})")
    if workers is not None and workers < 1:
        raise PreprocessError(f"--workers must be >= 1 (got {workers})")
    if max_pixels < 1:
        raise PreprocessError(f"--max-image-pixels must be >= 1 (got {max_pixels})")


def preprocess(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    valid_ratio: float = 0.1,
    test_ratio: float = 0.1,
    seed: int = 42,
    min_images_per_class: int = 3,
    max_image_side: int = 0,
    workers: Optional[int] = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    progress_seconds: float = 5.0,
) -> dict[str, Any]:
    """Validate, convert, de-duplicate and split ``input_dir`` into ``output_dir``.

    Returns the report (also written to ``OUT/report/report.json``). Raises
    ``PreprocessError`` for bad input or arguments (nothing is left in ``OUT`` but the
    staging folder is removed).
    """
    started = time.monotonic()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    validate_parameters(valid_ratio, test_ratio, min_images_per_class, max_image_side, workers, max_image_pixels)
    workers = workers or default_workers()
    check_not_nested(input_dir, output_dir)
    scan = scan_input(input_dir)
    classes = check_classes(scan)
    print(f"layout: {scan.layout} (root {scan.root_rel}); {len(classes)} classes, {len(scan.files)} image files, "
          f"{len(scan.skipped)} other files; {workers} workers", flush=True)
    staging = prepare_output_dir(output_dir)
    try:
        return _run(scan, classes, input_dir, output_dir, staging, valid_ratio, test_ratio, seed,
                    min_images_per_class, max_image_side, workers, max_image_pixels, progress_seconds, started)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _run(scan: Scan, classes: list[str], input_dir: Path, output_dir: Path, staging: Path,
         valid_ratio: float, test_ratio: float, seed: int, min_images: int, max_side: int,
         workers: int, max_pixels: int, progress_seconds: float, started: float) -> dict[str, Any]:
    tasks = [Task(i, str(f.path), str(staging / f"{i:08d}"), max_side, max_pixels) for i, f in enumerate(scan.files)]
    results = run_tasks(tasks, workers, Progress(len(tasks), progress_seconds))
    skipped = list(scan.skipped)
    skipped_by_class: dict[str, int] = {}
    images = []
    for source, result in zip(scan.files, results):
        if result["ok"]:
            images.append(Decoded(source, result))
        else:
            skipped.append({"path": source.rel, "reason": result["reason"], "detail": result["detail"]})
            skipped_by_class[source.class_name] = skipped_by_class.get(source.class_name, 0) + 1
    groups, duplicate_report, dropped = resolve_duplicates(images)
    kept = [image for group in groups for image in group]
    assign_splits(groups, classes, valid_ratio, test_ratio, seed)
    counts = {s: {c: 0 for c in classes} for s in SPLITS}
    for image in kept:
        counts[image.split][image.source.class_name] += 1
    produced = [s for s in SPLITS if s in _produced_splits(scan.layout, valid_ratio, test_ratio)]
    params = f"layout={scan.layout}, min-images-per-class={min_images}, valid-ratio={valid_ratio}, test-ratio={test_ratio}"
    check_counts(counts, classes, produced, min_images, skipped_by_class, params)
    rows = place_outputs(kept, output_dir)
    for split in SPLITS:
        (output_dir / split).mkdir(parents=True, exist_ok=True)
    report = build_report(scan, classes, input_dir, output_dir, kept, counts, skipped, duplicate_report, dropped,
                          len(results), dict(valid_ratio=valid_ratio, test_ratio=test_ratio, seed=seed,
                                             min_images_per_class=min_images, max_image_side=max_side,
                                             max_image_pixels=max_pixels, workers=workers))
    report["elapsed_seconds"] = round(time.monotonic() - started, 3)
    write_json(output_dir / "report" / "classes.json", classes)
    write_json(output_dir / "report" / "report.json", report)
    write_manifest(output_dir / "report" / "manifest.csv", rows)
    totals = report["totals"]
    print(f"done: train={totals['train']} valid={totals['valid']} test={totals['test']} "
          f"skipped={totals['skipped']} duplicates_dropped={totals['duplicates_dropped']} "
          f"in {report['elapsed_seconds']:.1f}s", flush=True)
    return report


def _produced_splits(layout: str, valid_ratio: float, test_ratio: float) -> set[str]:
    given = set(layout.split("/")) if layout != "flat" else set()
    carved = {"valid"} if valid_ratio > 0 else set()
    carved |= {"test"} if test_ratio > 0 else set()
    return {"train"} | given | carved


def count_by(values: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items()))


def build_report(scan: Scan, classes: list[str], input_dir: Path, output_dir: Path, kept: list[Decoded],
                 counts: dict[str, dict[str, int]], skipped: list[dict[str, str]],
                 duplicate_report: list[dict[str, Any]], dropped: list[dict[str, str]], decoded: int,
                 parameters: dict[str, Any]) -> dict[str, Any]:
    """The JSON report: layout, counts, skipped files, conversions and duplicates."""
    skipped = sorted(skipped, key=lambda s: s["path"])
    return {
        "format_version": 1,
        "input_dir": str(input_dir),
        "output_dir": str(output_dir),
        "layout": scan.layout,
        "dataset_root": scan.root_rel,
        "split_dirs": scan.split_dirs,
        "ignored_dirs": scan.ignored_dirs,
        "parameters": parameters,
        "classes": classes,
        "counts": counts,
        "totals": {
            **{s: sum(counts[s].values()) for s in SPLITS},
            "images": len(kept),
            "files_seen": decoded + len(scan.skipped),
            "image_files": decoded,
            "skipped": len(skipped),
            "duplicates_dropped": len(dropped),
            "hidden_ignored": scan.hidden_ignored,
        },
        "per_class": {c: {"total": sum(counts[s][c] for s in SPLITS), **{s: counts[s][c] for s in SPLITS}}
                      for c in classes},
        "skipped": skipped,
        "skipped_by_reason": count_by(s["reason"] for s in skipped),
        "conversions": count_by(i.info["mode"] for i in kept if i.info["mode"] != "RGB"),
        "source_formats": count_by(i.info["format"] for i in kept),
        "output_formats": count_by(i.info["output_format"] for i in kept),
        "copied_unchanged": sum(1 for i in kept if i.info["copied"]),
        "resized": sum(1 for i in kept if i.info["resized"]),
        "exif_rotated": sum(1 for i in kept if i.info["exif_rotated"]),
        "duplicates": {
            "groups": len(duplicate_report),
            "dropped": len(dropped),
            "label_conflicts": sum(1 for g in duplicate_report if g["label_conflict"]),
            "details": duplicate_report,
        },
    }


# --------------------------------------------------------------------------- CLI


class _ArgumentParser(argparse.ArgumentParser):
    """Raises ``PreprocessError`` on bad arguments so the failure file gets the reason."""

    def error(self, message: str):  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise PreprocessError(f"invalid arguments: {message}")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = _ArgumentParser(description="Validate, convert, de-duplicate and split an image-folder dataset",
                             add_help=add_help)
    parser.add_argument("--input-dir", default=DEFAULT_INPUT_DIR, type=str,
                        help="dataset root: train/valid/test, train/test or <class> folders (default: %(default)s)")
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, type=str,
                        help="writes train/, valid/, test/ and report/ here (default: %(default)s)")
    parser.add_argument("--valid-ratio", default=0.1, type=float,
                        help="fraction of each class carved out for validation when not given (default: %(default)s)")
    parser.add_argument("--test-ratio", default=0.1, type=float,
                        help="fraction of each class carved out for test when not given (default: %(default)s)")
    parser.add_argument("--seed", default=42, type=int, help="seed of the stratified split (default: %(default)s)")
    parser.add_argument("--min-images-per-class", default=3, type=int,
                        help="fail when a class has fewer usable images (default: %(default)s)")
    parser.add_argument("--max-image-side", default=0, type=int,
                        help="downscale images whose longer side exceeds this, 0 = off (default: %(default)s)")
    parser.add_argument("--workers", default=None, type=int,
                        help="decoding processes (default: all cores)")
    parser.add_argument("--max-image-pixels", default=DEFAULT_MAX_IMAGE_PIXELS, type=int,
                        help="decompression-bomb guard: skip larger images (default: %(default)s)")
    return parser


def failure_file() -> Path:
    return Path(os.environ.get("SM_OUTPUT_FAILURE") or DEFAULT_FAILURE_FILE)


def write_failure(message: str) -> None:
    """Best effort: SageMaker shows this file's text as the job's failure reason."""
    path = failure_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(message + "\n", encoding="utf-8")
    except OSError:
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 1 failure)."""
    try:
        args = get_args_parser().parse_args(argv)
        preprocess(args.input_dir, args.output_dir, valid_ratio=args.valid_ratio, test_ratio=args.test_ratio,
                   seed=args.seed, min_images_per_class=args.min_images_per_class,
                   max_image_side=args.max_image_side, workers=args.workers, max_image_pixels=args.max_image_pixels)
    except PreprocessError as error:
        message = f"PrepareData failed: {error}"
        print(message, file=sys.stderr, flush=True)
        write_failure(message)
        return 1
    except Exception as error:  # noqa: BLE001 - unexpected: keep the traceback in the log
        traceback.print_exc()
        message = f"PrepareData failed unexpectedly: {type(error).__name__}: {error}"
        print(message, file=sys.stderr, flush=True)
        write_failure(message)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
