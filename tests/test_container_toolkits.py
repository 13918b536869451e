"""The container code under AWS's own container toolkits (installed with --no-deps, see the
Makefile): ``train.py`` started by sagemaker-training's ``entry_point.run`` from a job directory
laid out as SageMaker lays it out, and ``inference.py`` served by sagemaker-pytorch-inference's
``HandlerService`` (what SageMaker's PyTorch serving containers run)."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from imgclf.artifact import read_meta
from pipelines.datasets import sample_dataset

pytest.importorskip("sagemaker_training", reason="make install puts the toolkits in (pip --no-deps)")
REPO = Path(__file__).resolve().parent.parent
# As the SDK encodes a framework estimator's hyperparameters: every value JSON-encoded.
HYPERPARAMETERS = {"epochs": 2, "image-size": 32, "batch-size": 32, "optimizer": "adam", "learning-rate": 0.001,
                   "augment": "false", "pretrained": "false", "workers": 1, "arch": "mobilenet_v2"}
# paramiko and gevent are imported by the toolkit's MPI/SMDDP runners only (multi-host jobs);
# a stand-in module where they are not installed keeps the test's dependencies small.
DRIVER = """
import importlib.util, sys, types
for name in ("paramiko", "gevent", "inotify_simple"):
    if importlib.util.find_spec(name) is None:
        sys.modules[name] = types.ModuleType(name)
from sagemaker_training import entry_point, environment
entry_point._wait_hostname_resolution = lambda: None  # 'algo-1' resolves only inside SageMaker
env = environment.Environment()
entry_point.run(uri=sys.argv[1], user_entry_point="train.py", args=env.to_cmd_args(),
                env_vars=env.to_env_vars(), capture_error=True)
"""


def job_directory(base: Path) -> Path:
    """``$SAGEMAKER_BASE_DIR`` as SageMaker lays it out for a training job with two channels."""
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps({k: json.dumps(v) for k, v in HYPERPARAMETERS.items()}))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}))
    channel = {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
    (config / "inputdataconfig.json").write_text(json.dumps({"train": channel, "valid": channel}))
    raw = base / "raw"
    sample_dataset("digits", raw, per_class=12, layout="flat", seed=0)
    for name, keep in (("train", lambda i: i % 4), ("valid", lambda i: not i % 4)):
        for folder in sorted(p for p in raw.iterdir() if p.is_dir()):
            target = base / "input" / "data" / name / folder.name
            target.mkdir(parents=True)
            for i, image in enumerate(sorted(folder.iterdir())):
                if keep(i):
                    shutil.copy(image, target / image.name)
    return base


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    base = job_directory(tmp_path_factory.mktemp("opt_ml"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SMDEBUG"))}
    env.update(SAGEMAKER_BASE_DIR=str(base), PYTHONPATH=str(REPO / "training"), OMP_NUM_THREADS="1",
               SM_CHECKPOINT_DIR=str(base / "checkpoints"))
    done = subprocess.run([sys.executable, "-c", DRIVER, str(REPO / "training")], env=env,
                          capture_output=True, text=True, timeout=300)
    return base, done


def test_train_py_under_the_training_toolkit(trained):
    base, done = trained
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    meta = read_meta(base / "model")
    assert meta["classes"] == [str(i) for i in range(10)] and meta["image_size"] == 32
    assert meta["hyperparameters"]["optimizer"] == "adam" and meta["hyperparameters"]["epochs"] == 2
    assert (base / "model" / "model.pth").is_file()
    assert [line for line in done.stdout.splitlines() if line.startswith("epoch=")][-1].startswith("epoch=2 ")


class Context:
    """The part of the model server's context the handler service uses."""

    def __init__(self, model_dir: Path, content_type: str, accept: str = "application/json"):
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None}
        properties = {"Content-Type": content_type, "Accept": accept}
        self.request_processor = [type("RP", (), {"get_request_properties": lambda _self: properties})()]
        self.status = None
        self.content_type = None

    def set_response_content_type(self, index, value):
        self.content_type = value

    def set_response_status(self, code, phrase):
        self.status = code


@pytest.fixture(scope="module")
def model_dir(trained, tmp_path_factory) -> Path:
    """The trained model as the repacked model.tar.gz unpacks: weights, metadata, code/."""
    base, done = trained
    assert done.returncode == 0
    target = tmp_path_factory.mktemp("model")
    shutil.copytree(base / "model", target, dirs_exist_ok=True)
    shutil.copytree(REPO / "inference", target / "code", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "training" / "imgclf", target / "code" / "imgclf",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return target


def handle(model_dir: Path, body: bytes, content_type: str, accept: str = "application/json"):
    from sagemaker_pytorch_serving_container.handler_service import HandlerService

    service, context = HandlerService(), Context(model_dir, content_type, accept)
    service.initialize(context)
    return service.handle([{"body": body}], context), context


def png(seed: int) -> bytes:
    image = Image.new("RGB", (20, 20), (seed * 20 % 256, 128, 255 - seed * 20 % 256))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_inference_py_under_the_pytorch_serving_toolkit(model_dir, monkeypatch):
    # The serving container puts <model_dir>/code on the path and names the handler module.
    monkeypatch.setenv("SAGEMAKER_PROGRAM", "inference.py")
    monkeypatch.syspath_prepend(str(model_dir / "code"))
    for name in [m for m in sys.modules if m == "inference" or m.startswith(("inference.", "imgclf"))]:
        monkeypatch.delitem(sys.modules, name)
    [answer], context = handle(model_dir, png(1), "image/png")
    assert context.status is None and context.content_type == "application/json"
    top = json.loads(answer)
    assert 1 <= len(top) <= 5 and {"label", "index", "probability"} <= set(top[0])
    assert all(t["label"] in [str(i) for i in range(10)] for t in top)
    assert sum(t["probability"] for t in top) <= 1.0 + 1e-6

    [message], context = handle(model_dir, b"this is not an image", "application/x-image")
    assert context.status == 400 and "image" in message.lower()
    # text/* bodies are decoded by the toolkit before the handler sees them (undecodable bytes
    # are a 500 from the toolkit itself), so the wrong type is sent as text.
    [message], context = handle(model_dir, b"1,2,3", "text/csv")
    assert context.status == 415 and "text/csv" in message, message[:1500]
    [message], context = handle(model_dir, png(2), "application/octet-stream")
    assert context.status == 415 and "application/octet-stream" in message, message[:1500]
