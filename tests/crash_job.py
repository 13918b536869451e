"""A one-step pipeline definition that trains the real ``training/train.py`` for a few epochs
on rendered digits, with a CheckpointConfig; and the process helpers to kill its engine.

Shared by tests/test_crash_recovery.py and bench/kill_recovery.py.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Optional

import torch

from pipelines.datasets import sample_dataset
from pipelines.local.object_store import ObjectStore
from pipelines.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "imgpipe-local"
CHECKPOINT_URI = f"s3://{BUCKET}/crash/checkpoints"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.1-cpu-py310"
EPOCH_RE = re.compile(r"^epoch=(\d+) ", re.MULTILINE)


def training_definition(home: Path, work: Path, epochs: int, per_class: int = 10, image_size: int = 16) -> Path:
    """Upload code and digits into ``home``'s store; write the definition JSON; its path."""
    store = ObjectStore(Settings(home=home).s3_root)
    sample_dataset("digits", work / "digits", per_class=per_class)
    store.upload(work / "digits", f"s3://{BUCKET}/crash/data")
    code = work / "sourcedir.tar.gz"
    with tarfile.open(code, "w:gz") as tar:
        tar.add(ROOT / "training" / "train.py", arcname="train.py")
        tar.add(ROOT / "training" / "imgclf", arcname="imgclf",
                filter=lambda info: None if "__pycache__" in info.name else info)
    store.upload(code, f"s3://{BUCKET}/crash/code/sourcedir.tar.gz")
    channel = {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/crash/data",
                                               "S3DataDistributionType": "FullyReplicated"}}}
    hyperparameters = {
        "arch": '"mobilenet_v3_small"', "pretrained": '"false"', "epochs": str(epochs), "image-size": str(image_size),
        "batch-size": "32", "learning-rate": "0.01", "workers": "1", "augment": '"false"',
        "sagemaker_submit_directory": json.dumps(f"s3://{BUCKET}/crash/code/sourcedir.tar.gz"),
        "sagemaker_program": '"train.py"', "sagemaker_region": '"us-east-1"',
    }
    step = {"Name": "Train", "Type": "Training", "Arguments": {
        "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File", "MetricDefinitions": [
            {"Name": "valid_accuracy", "Regex": "valid_accuracy=([0-9.]+)"}]},
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/crash/models"},
        "StoppingCondition": {"MaxRuntimeInSeconds": 1800},
        "ResourceConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30},
        "RoleArn": "arn:aws:iam::000000000000:role/x",
        "CheckpointConfig": {"S3Uri": CHECKPOINT_URI, "LocalPath": "/opt/ml/checkpoints"},
        "InputDataConfig": [{"ChannelName": "train", **channel}, {"ChannelName": "valid", **channel}],
        "HyperParameters": hyperparameters,
    }}
    path = work / "crash-definition.json"
    path.write_text(json.dumps({"Version": "2020-12-01", "Parameters": [], "Steps": [step]}))
    return path


def imgpipe(home: Path, *args: str) -> list[str]:
    """The ``imgpipe`` command line (this interpreter, this checkout) with ``--home``."""
    return [sys.executable, "-m", "pipelines.cli", *args, "--home", str(home)]


def cli_env() -> dict[str, str]:
    paths = [str(ROOT), str(ROOT / "training"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def stored_checkpoint_epoch(home: Path) -> Optional[int]:
    """The epoch of the checkpoint in the object store (None: none yet, or being replaced)."""
    path = ObjectStore(Settings(home=home).s3_root).path(CHECKPOINT_URI) / "checkpoint.pt"
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except (OSError, RuntimeError, EOFError, KeyError):
        return None


def wait_for_checkpoint(home: Path, proc: subprocess.Popen, timeout: float = 240) -> int:
    """Wait until the store holds a checkpoint of epoch >= 1; its epoch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        epoch = stored_checkpoint_epoch(home)
        if epoch:
            return epoch
        if proc.poll() is not None:
            raise AssertionError(f"the engine ended (rc {proc.returncode}) before a checkpoint reached the store")
        time.sleep(0.2)
    raise AssertionError("no checkpoint reached the object store in time")


def processes_in(directory: Path) -> list[int]:
    """Pids of live (non-zombie) processes whose working directory is inside ``directory``."""
    found = []
    root = directory.resolve()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cwd = Path(os.readlink(entry / "cwd"))
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X") and (cwd == root or root in cwd.parents):
            found.append(int(entry.name))
    return found


def wait_until_no_processes(directory: Path, timeout: float = 10) -> list[int]:
    """Pids still working in ``directory`` after up to ``timeout`` seconds (empty: none left)."""
    deadline = time.monotonic() + timeout
    while True:
        left = processes_in(directory)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def epochs_logged(log_text: str) -> list[int]:
    return [int(n) for n in EPOCH_RE.findall(log_text)]
