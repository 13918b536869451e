"""A one-epoch run on small real data learns, and a run that cannot learn says why.

scikit-learn's digits (40 per class, 10 classes) split by the real preprocessing step and
trained for exactly one epoch by training/train.py as a subprocess: with a fine-tuning learning
rate it is well above chance (0.1); with Adam at a learning rate that wrecks the pretrained
weights in a few steps, the script prints a warning naming the cause instead of silently
registering a constant predictor.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.datasets import sample_dataset

ROOT = Path(__file__).resolve().parents[1]
ONE_EPOCH = ["--epochs", "1", "--image-size", "32", "--augment", "false", "--workers", "1"]


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("one-epoch")
    sample_dataset("digits", root / "raw", per_class=40, layout="flat", seed=1)
    subprocess.run([sys.executable, str(ROOT / "steps" / "preprocess.py"), "--input-dir", str(root / "raw"),
                    "--output-dir", str(root / "splits"), "--valid-ratio", "0.2", "--test-ratio", "0.1",
                    "--workers", "1"], check=True, capture_output=True, timeout=300)
    return root / "splits"


def train_one_epoch(tmp_path: Path, splits: Path, *args: str) -> tuple[float, str]:
    cmd = [sys.executable, str(ROOT / "training" / "train.py"), "--train-dir", str(splits / "train"),
           "--valid-dir", str(splits / "valid"), "--model-dir", str(tmp_path / "model"),
           "--output-data-dir", str(tmp_path / "output"), "--checkpoint-dir", str(tmp_path / "ck"), *ONE_EPOCH, *args]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "training"), "HOME": str(tmp_path),
           "TORCH_HOME": __import__("os").environ.get("TORCH_HOME", str(Path.home() / ".cache" / "torch"))}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    final = next(line for line in result.stdout.splitlines() if line.startswith("final "))
    return float(final.rsplit("valid_accuracy=", 1)[1]), result.stdout


def test_one_epoch_learns_well_above_chance(tmp_path, splits):
    accuracy, stdout = train_one_epoch(tmp_path, splits, "--optimizer", "adam", "--learning-rate", "0.001",
                                       "--batch-size", "32")
    assert accuracy >= 0.4, stdout  # chance is 0.1
    assert "chance level" not in stdout


def test_one_epoch_that_cannot_learn_says_why(tmp_path, splits):
    accuracy, stdout = train_one_epoch(tmp_path, splits, "--optimizer", "adam", "--learning-rate", "0.03",
                                       "--batch-size", "128")
    assert accuracy < 0.2, stdout
    warning = next(line for line in stdout.splitlines() if line.startswith("warning:"))
    assert "chance level" in warning and "learning rate 0.03" in warning and "adam" in warning
