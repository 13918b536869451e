"""Shared pieces of the endpoint tests: a really trained tiny model, an untrained one, images.

The trained model is MobileNetV2 (ImageNet weights) fine-tuned by ``training/train.py`` for 6
epochs on three digit classes of scikit-learn's digits rendered by ``pipelines.datasets`` at
32 px (about 10 s on 2 cores); it is trained once per test session and shared by every endpoint
test file (cached under pytest's session temp directory). With ``IMGPIPE_TEST_MODEL_CACHE`` set
to a directory, it is trained once for all sessions that share that directory (the mutation
runner starts one test session per mutant), keyed by what the model is made from.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("0", "1", "2")
IMAGE_SIZE = 32


def render_digits(root: Path) -> Path:
    """``root/train/<c>``, ``root/valid/<c>`` for the three classes (PNG files)."""
    from pipelines.datasets import sample_dataset

    full = root / "all"
    if not full.is_dir():
        sample_dataset("digits", full, per_class=50, layout="split", seed=0)
    for split, source in (("train", "train"), ("valid", "test")):
        for cls in CLASSES:
            dest = root / split / cls
            if not dest.is_dir():
                dest.mkdir(parents=True)
                for f in sorted((full / source / cls).iterdir()):
                    (dest / f.name).write_bytes(f.read_bytes())
    return root


def training_digest() -> str:
    """A hash of what the trained model is made from: the training code, the digits renderer
    and this file."""
    digest = hashlib.sha256()
    sources = sorted((REPO / "training").rglob("*.py")) + [REPO / "pipelines" / "datasets.py", Path(__file__).resolve()]
    for path in sources:
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def trained_model(cache: Path) -> tuple[Path, Path]:
    """(model dir with model.pth + model.json, data root with train/ and valid/), trained once."""
    shared = os.environ.get("IMGPIPE_TEST_MODEL_CACHE")
    if shared:
        cache = Path(shared) / f"endpoint-model-{training_digest()}"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = render_digits(cache / "digits3")
        model_dir = cache / "model"
        if not (model_dir / "model.json").is_file():
            env = {**os.environ, "OMP_NUM_THREADS": "2"}
            out = subprocess.run(
                [sys.executable, "train.py", "--train-dir", str(data / "train"), "--valid-dir", str(data / "valid"),
                 "--model-dir", str(model_dir), "--output-data-dir", str(cache / "out"),
                 "--checkpoint-dir", str(cache / "ckpt"), "--image-size", str(IMAGE_SIZE), "--epochs", "6",
                 "--augment", "false",
                 "--batch-size", "16", "--optimizer", "adam", "--learning-rate", "0.001", "--workers", "1"],
                cwd=REPO / "training", env=env, capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stdout + out.stderr
        accuracy = json.loads((model_dir / "model.json").read_text())["metrics"]["valid_accuracy"]
        assert accuracy >= 0.9, f"the tiny model trained badly (valid accuracy {accuracy})"
    return model_dir, data


def untrained_model(directory: Path) -> Path:
    """Same architecture and metadata as the trained model, random head: a bad model."""
    import torch

    from imgclf.artifact import read_meta, save_model
    from imgclf.models import build_model

    if (directory / "model.json").is_file():
        return directory
    torch.manual_seed(7)
    model = build_model("mobilenet_v2", len(CLASSES), pretrained=False)
    meta = dict(read_meta(Path(directory).parent / "model")) if (Path(directory).parent / "model" / "model.json").is_file() else {}
    meta.update({"arch": "mobilenet_v2", "classes": list(CLASSES), "image_size": IMAGE_SIZE})
    meta.setdefault("normalize", {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    save_model(directory, model.eval(), meta)
    return directory


def valid_images(data: Path) -> list[tuple[Path, str]]:
    """Held-out (path, class) pairs, sorted."""
    return [(p, cls) for cls in CLASSES for p in sorted((data / "valid" / cls).iterdir())]


def archive(model_dir: Path, dest: Path) -> Path:
    from imgclf.artifact import create_archive

    dest.parent.mkdir(parents=True, exist_ok=True)
    return create_archive(model_dir, dest)


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def wait_until_ready(proc: subprocess.Popen, ready: Path, log: Path, timeout: float = 120.0) -> dict:
    """The ready file of a server process just started (its ports), failing with the server's
    log if the process ends or ``timeout`` seconds pass first."""
    import time

    deadline = time.monotonic() + timeout
    while not ready.is_file():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    return json.loads(ready.read_text())
