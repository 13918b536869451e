"""training/train.py, steps/evaluate.py and inference/inference.py on real images.

scikit-learn's digits are rendered into class folders, split by steps/preprocess.py, trained
with the SageMaker training contract (SM_* environment, hyperparameters as arguments), scored
by evaluate.py and served by inference.py: the path every pipeline run takes.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from imgclf.artifact import read_meta
from pipelines.datasets import sample_dataset

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "training" / "train.py"
EVALUATE = ROOT / "steps" / "evaluate.py"
PREPROCESS = ROOT / "steps" / "preprocess.py"
CLASSES = [str(i) for i in range(10)]
# Small, quick and well above chance: 32 px MobileNetV2 from ImageNet weights, Adam, and no
# flips (a mirrored digit is another digit).
FAST = ["--image-size", "32", "--batch-size", "32", "--optimizer", "adam", "--learning-rate", "0.001",
        "--augment", "false", "--workers", "1"]


def _env(job: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SMDEBUG"))}
    env.update({
        "SM_MODEL_DIR": str(job / "model"),
        "SM_OUTPUT_DATA_DIR": str(job / "output"),
        "SM_CHECKPOINT_DIR": str(job / "checkpoints"),
        "SM_OUTPUT_FAILURE": str(job / "failure"),
        "PYTHONPATH": str(ROOT / "training"),
        "SMDEBUG_CONFIG_FILE_PATH": str(job / "no-hook-config.json"),  # absent: hook is a no-op
    })
    env.update(extra)
    return env


def train(job: Path, splits: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(TRAIN), "--train-dir", str(splits / "train"), "--valid-dir", str(splits / "valid"), *FAST, *args]
    result = subprocess.run(cmd, env=_env(job, **env), capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def epoch_lines(stdout: str) -> list[dict]:
    return [dict(kv.split("=") for kv in line.split()) for line in stdout.splitlines() if line.startswith("epoch=")]


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> Path:
    """digits (60 per class) split 70/15/15 by the real preprocessing step."""
    root = tmp_path_factory.mktemp("digits")
    sample_dataset("digits", root / "raw", per_class=60, layout="flat", seed=0)
    subprocess.run([sys.executable, str(PREPROCESS), "--input-dir", str(root / "raw"), "--output-dir", str(root / "splits"),
                    "--valid-ratio", "0.15", "--test-ratio", "0.15", "--workers", "1"],
                   check=True, capture_output=True, timeout=300)
    return root / "splits"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, splits) -> tuple[Path, subprocess.CompletedProcess]:
    job = tmp_path_factory.mktemp("job")
    return job, train(job, splits, "--epochs", "4")


def test_training_logs_each_epoch_and_writes_the_artifact(trained):
    job, result = trained
    epochs = epoch_lines(result.stdout)
    assert [int(e["epoch"]) for e in epochs] == [1, 2, 3, 4]
    assert float(epochs[-1]["train_loss"]) < float(epochs[0]["train_loss"])
    final = [line for line in result.stdout.splitlines() if line.startswith("final ")]
    assert len(final) == 1 and "valid_accuracy=" in final[0]

    meta = read_meta(job / "model")
    assert meta["arch"] == "mobilenet_v2" and meta["classes"] == CLASSES and meta["image_size"] == 32
    assert meta["hyperparameters"]["learning_rate"] == 0.001
    best = max(float(e["valid_accuracy"]) for e in epochs)
    assert meta["metrics"]["valid_accuracy"] == pytest.approx(best, abs=1e-4)
    history = json.loads((job / "output" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]


def test_evaluate_scores_the_model_well_above_chance(trained, splits, tmp_path):
    job, _ = trained
    with tarfile.open(tmp_path / "model.tar.gz", "w:gz") as tar:  # as SageMaker packs SM_MODEL_DIR
        for path in (job / "model").iterdir():
            tar.add(path, arcname=path.name)
    out = tmp_path / "evaluation"
    subprocess.run([sys.executable, str(EVALUATE), "--model-dir", str(tmp_path), "--test-dir", str(splits / "test"),
                    "--output-dir", str(out), "--workers", "1"],
                   check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT / "training")}, timeout=300)
    report = json.loads((out / "evaluation.json").read_text())
    metrics = report["multiclass_classification_metrics"]
    accuracy = metrics["accuracy"]["value"]
    assert accuracy >= 0.7  # chance is 0.1
    matrix = metrics["confusion_matrix"]
    assert sum(sum(row.values()) for row in matrix.values()) == report["num_test_images"] == 90
    correct = sum(matrix[c].get(c, 0) for c in matrix)
    assert correct / report["num_test_images"] == pytest.approx(accuracy)
    assert accuracy <= report["top_5_accuracy"]["value"] <= 1.0
    per_class = report["per_class_accuracy"]
    assert sorted(per_class) == CLASSES and report["per_class_support"] == {c: 9 for c in CLASSES}
    assert sum(per_class[c] * 9 for c in CLASSES) / 90 == pytest.approx(accuracy)
    assert metrics["weighted_f1"]["value"] > 0.5
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inference_serves_the_trained_model(trained, splits, monkeypatch):
    job, _ = trained
    monkeypatch.syspath_prepend(str(ROOT / "inference"))
    monkeypatch.syspath_prepend(str(ROOT / "training"))
    import inference

    model = inference.model_fn(str(job / "model"))
    right = total = 0
    for cls in CLASSES:
        for path in sorted((splits / "test" / cls).iterdir())[:3]:
            request = inference.input_fn(path.read_bytes(), "application/x-image")
            body = json.loads(inference.output_fn(inference.predict_fn(request, model), "application/json"))
            top = body[0] if isinstance(body[0], dict) else body[0][0]
            right += top["label"] == cls
            total += 1
    assert right / total >= 0.7


def test_resume_after_interruption_continues_from_the_last_epoch(splits, tmp_path):
    """Kill the job (as a spot interruption does) once a checkpoint exists; the restarted job
    continues after that epoch instead of starting over."""
    job = tmp_path / "job"
    cmd = [sys.executable, str(TRAIN), "--train-dir", str(splits / "train"), "--valid-dir", str(splits / "valid"),
           *FAST, "--image-size", "64", "--epochs", "3"]
    proc = subprocess.Popen(cmd, env=_env(job), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoint = job / "checkpoints" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    first = proc.communicate()[0]
    done_before = [int(e["epoch"]) for e in epoch_lines(first)]
    assert done_before and done_before[-1] < 3, first

    result = train(job, splits, "--image-size", "64", "--epochs", "3")
    last = done_before[-1]
    assert f"resumed from checkpoint after epoch {last}" in result.stdout
    assert [int(e["epoch"]) for e in epoch_lines(result.stdout)] == list(range(last + 1, 4))
    history = json.loads((job / "output" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert read_meta(job / "model")["metrics"]["epochs_run"] == 3


def test_checkpoint_of_another_configuration_is_not_resumed(splits, tmp_path):
    job = tmp_path / "job"
    train(job, splits, "--epochs", "1")
    result = train(job, splits, "--epochs", "1", "--learning-rate", "0.003")
    assert "belongs to a different configuration" in result.stdout
    assert [int(e["epoch"]) for e in epoch_lines(result.stdout)] == [1]


def test_debugger_hook_tensors_are_read_back_by_smdebug(splits, tmp_path):
    from smdebug.trials import create_trial
    from smdebug.core.modes import ModeKeys

    job = tmp_path / "job"
    job.mkdir()
    debug_out = tmp_path / "debug-output"
    config = {  # the file SageMaker writes from DebuggerHookConfig
        "LocalPath": str(debug_out),
        "HookParameters": {"save_interval": "2"},
        "CollectionConfigurations": [
            {"CollectionName": "losses"},
            {"CollectionName": "weights"},
            {"CollectionName": "gradients"},
        ],
    }
    config_path = job / "debughookconfig.json"
    config_path.write_text(json.dumps(config))
    train(job, splits, "--epochs", "1", SMDEBUG_CONFIG_FILE_PATH=str(config_path))

    trial = create_trial(str(debug_out))
    losses = trial.tensor_names(collection="losses")
    assert losses
    loss = trial.tensor(losses[0])
    assert loss.steps(mode=ModeKeys.TRAIN) and loss.steps(mode=ModeKeys.EVAL)
    train_values = [float(loss.value(s, mode=ModeKeys.TRAIN)) for s in loss.steps(mode=ModeKeys.TRAIN)]
    assert all(v > 0 for v in train_values)
    assert trial.tensor_names(collection="weights") and trial.tensor_names(collection="gradients")


def test_debugger_hook_saves_bfloat16_activations_under_autocast(tmp_path, monkeypatch):
    """Under bfloat16 autocast (GPUs that have it, and the CPU) activation inputs are bfloat16,
    which numpy lacks: the hook still saves them, as float32, and training goes on."""
    import torch
    from torch import nn
    from smdebug.trials import create_trial

    spec = importlib.util.spec_from_file_location("imgpipe_train", TRAIN)
    train_script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "imgpipe_train", train_script)  # its dataclasses look their module up
    spec.loader.exec_module(train_script)

    config = tmp_path / "debughookconfig.json"
    config.write_text(json.dumps({
        "LocalPath": str(tmp_path / "out"), "HookParameters": {"save_interval": "1"},
        "CollectionConfigurations": [{"CollectionName": "losses"}, {
            "CollectionName": "activation_inputs", "CollectionParameters": {"include_regex": "relu6_input_0$"}}]}))
    monkeypatch.setenv("SMDEBUG_CONFIG_FILE_PATH", str(config))
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(3, 4, 3))
    model.add_module("relu6", nn.ReLU6())
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flat", nn.Flatten())
    model.add_module("head", nn.Linear(4, 2))
    loss_fn = nn.CrossEntropyLoss()
    hook = train_script.DebuggerHook(model, loss_fn)
    assert hook.hook is not None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    batches = [(torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8), torch.tensor([0, 1, 0, 1]))] * 3
    hook.set_mode(train=True)
    stats = train_script.run_epoch(model, batches, loss_fn, torch.device("cpu"), optimizer, scheduler,
                                   amp_dtype=torch.bfloat16)
    hook.close()

    assert stats["images"] == 12 and stats["loss"] > 0
    activation = create_trial(str(tmp_path / "out")).tensor("relu6_input_0")
    assert activation.steps() == [0, 1, 2]
    value = activation.value(2)
    assert value.dtype == "float32" and value.shape == (4, 4, 6, 6)


def test_missing_channel_fails_with_a_reason_in_the_failure_file(tmp_path):
    job = tmp_path / "job"
    result = subprocess.run([sys.executable, str(TRAIN), "--train-dir", str(tmp_path / "nope"), "--valid-dir", str(tmp_path / "nope"),
                             *FAST], env=_env(job), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    failure = (job / "failure").read_text()
    assert "nope" in failure
