"""Training insight without smdebug: short real trainings (train.py on rendered digits, 32 px
MobileNetV2) record their TensorBoard event files, and steps/analyze_training.py judges them
with the default (fine-tuning) rule parameters.

Broken trainings are made with test hooks around ``train.build_model`` (test code only, as
``tests/debugger_jobs.py`` does): every gradient multiplied by 1e-12 (vanishing gradients) and
every parameter drawn from N(0, 10^2) (a random initialisation with a wrong scale).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imgclf.insights import DEFAULT_PARAMETERS, parse_parameters, rule_arguments, verdict_lines
from imgclf.tfevents import EventFileWriter, read_scalars
from pipelines.datasets import sample_dataset

ROOT = Path(__file__).resolve().parents[1]
ANALYZE = ROOT / "steps" / "analyze_training.py"
RULES = ("LossNotDecreasing", "VanishingGradient", "Overfit", "Overtraining", "PoorWeightInitialization")
BASE = ["--image-size", "32", "--batch-size", "16", "--workers", "1", "--augment", "false", "--epochs", "3",
        "--record-gradients-every", "5"]


def _load_train():
    spec = importlib.util.spec_from_file_location("train", ROOT / "training" / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    sample_dataset("digits", root, per_class=16)
    return root


def run_training(job: Path, data: Path, *args: str, monkeypatch=None, wrap=None) -> Path:
    """Train in this process (optionally with ``wrap`` around build_model); the event-file dir."""
    train = _load_train()
    if wrap is not None:
        original = train.build_model
        monkeypatch.setattr(train, "build_model", lambda *a, **k: wrap(original(*a, **k)))
    argv = ["--train-dir", str(data), "--valid-dir", str(data), "--model-dir", str(job / "model"),
            "--output-data-dir", str(job / "output"), "--checkpoint-dir", str(job / "checkpoints"),
            "--tensorboard-dir", str(job / "tensorboard"), *BASE, *args]
    assert train.main(argv) == 0
    return job / "tensorboard"


def analyze(tensorboard: Path, out: Path, *params: str) -> dict:
    args = [a for p in params for a in ("--param", p)]
    result = subprocess.run([sys.executable, str(ANALYZE), "--tensorboard-dir", str(tensorboard), "--output-dir", str(out), *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    insights = json.loads((out / "training_insights.json").read_text())
    for line in verdict_lines(insights):
        assert line in result.stdout
    return insights


def statuses(insights: dict) -> dict[str, str]:
    return {name: verdict["status"] for name, verdict in insights["rules"].items()}


@pytest.fixture(scope="module")
def healthy(tmp_path_factory, digits) -> tuple[Path, dict]:
    """Fine-tuning as the pipeline does by default: ImageNet weights, SGD, warm-up + cosine."""
    job = tmp_path_factory.mktemp("healthy")
    tensorboard = run_training(job, digits, "--pretrained", "true", "--learning-rate", "0.01")
    return tensorboard, analyze(tensorboard, job / "insights")


def test_healthy_fine_tuning_gets_no_issues_from_every_rule(healthy):
    _, insights = healthy
    assert set(insights["rules"]) == set(RULES)
    assert statuses(insights) == dict.fromkeys(RULES, "NoIssuesFound"), verdict_lines(insights)
    assert insights["issues_found"] == 0 and insights["rules_with_issues"] == []
    assert insights["issue_summary"] == "none"  # the pipeline's TrainingIssuesFound message
    assert "pretrained" in insights["rules"]["PoorWeightInitialization"]["reason"]
    assert insights["steps"] == 30 and insights["epochs"] == 3  # 160 images / 16 a batch x 3 epochs
    for name in ("DataLoaderBottleneck", "StepOutlier", "MaxInitializationTime", "LowGPUUtilization"):
        assert insights["profiler"][name]["reason"]
    assert insights["profiler"]["LowGPUUtilization"]["status"] == "NoIssuesFound"
    for verdict in insights["rules"].values():
        assert verdict["reason"] and "\n" not in verdict["reason"]


def test_recording_holds_what_the_rules_read(healthy):
    tensorboard, _ = healthy
    scalars = read_scalars(tensorboard)
    assert [s for s, _, _ in scalars["train/loss"]] == list(range(30))
    assert [s for s, _, _ in scalars["epoch/valid_loss"]] == [9, 19, 29]
    gradient_tags = [t for t in scalars if t.startswith("gradients/")]
    assert len(gradient_tags) == 158  # every trainable tensor of MobileNetV2 with a 10-class head
    assert [s for s, _, _ in scalars[gradient_tags[0]]] == [0, 5, 10, 15, 20, 25]
    activation = [t for t in scalars if t.startswith("activation_inputs/") and t.endswith("/variance")]
    assert len(activation) == 35  # MobileNetV2's ReLU6 modules
    assert [s for s, _, _ in scalars[activation[0]]] == list(range(10))


def test_learning_rate_of_10_is_caught_by_loss_not_decreasing(tmp_path, digits):
    tensorboard = run_training(tmp_path / "job", digits, "--pretrained", "true", "--learning-rate", "10")
    insights = analyze(tensorboard, tmp_path / "out")
    verdict = insights["rules"]["LossNotDecreasing"]
    assert verdict["status"] == "IssuesFound", verdict
    assert str(verdict["step"]) in verdict["reason"]
    # what TrainingIssuesFound says: each rule that found issues, with its reason
    assert f"LossNotDecreasing ({verdict['reason']})" in insights["issue_summary"].split("; ")


def test_gradients_scaled_to_zero_are_caught_by_vanishing_gradient(tmp_path, digits, monkeypatch):
    def starve(model):
        for parameter in model.parameters():
            parameter.register_hook(lambda grad: grad * 1e-12)
        return model

    tensorboard = run_training(tmp_path / "job", digits, "--pretrained", "true", "--epochs", "1",
                               monkeypatch=monkeypatch, wrap=starve)
    verdict = analyze(tensorboard, tmp_path / "out")["rules"]["VanishingGradient"]
    assert verdict["status"] == "IssuesFound", verdict
    assert verdict["values"]["tensors_below"] > verdict["values"]["tensors"] / 2


def test_many_epochs_past_the_best_on_a_tiny_set_are_caught(tmp_path, digits):
    tiny = tmp_path / "tiny"
    sample_dataset("digits", tiny, per_class=3)
    tensorboard = run_training(tmp_path / "job", tiny, "--pretrained", "true", "--learning-rate", "0.05",
                               "--valid-dir", str(digits), "--epochs", "12", "--batch-size", "10",
                               "--bn-recalibration-steps", "0")  # memorise the 30 images as fast as possible
    insights = analyze(tensorboard, tmp_path / "out")
    assert statuses(insights)["Overtraining"] == "IssuesFound", verdict_lines(insights)
    assert statuses(insights)["Overfit"] == "IssuesFound", verdict_lines(insights)
    assert insights["rules"]["Overtraining"]["values"]["epochs_past_best"] >= 3


def test_random_init_with_a_wrong_scale_is_caught_and_pretrained_is_not_judged(tmp_path, digits, monkeypatch):
    def wrong_scale(model):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.normal_(0.0, 10.0)
        return model

    tensorboard = run_training(tmp_path / "job", digits, "--pretrained", "false", "--epochs", "1",
                               monkeypatch=monkeypatch, wrap=wrong_scale)
    verdict = analyze(tensorboard, tmp_path / "out")["rules"]["PoorWeightInitialization"]
    assert verdict["status"] == "IssuesFound", verdict
    assert verdict["step"] < DEFAULT_PARAMETERS["PoorWeightInitialization"]["steps"]
    sound = run_training(tmp_path / "sound", digits, "--pretrained", "false", "--epochs", "1")
    verdict = analyze(sound, tmp_path / "sound-out")["rules"]["PoorWeightInitialization"]
    assert verdict["status"] == "NoIssuesFound" and "variance ratio" in verdict["reason"], verdict


def test_resumed_job_continues_the_steps_and_gets_verdicts(tmp_path, digits):
    job = tmp_path / "job"
    run_training(job, digits, "--pretrained", "true", "--epochs", "3", "--early-stopping-patience", "0")
    checkpoint = torch.load(job / "checkpoints" / "checkpoint.pt", weights_only=True)
    # The checkpoint of epoch 2 of 3, as if the job had died in epoch 3: a new job resumes it.
    state = {**checkpoint, "epoch": 2, "global_step": 20, "history": checkpoint["history"][:2]}
    torch.save(state, job / "checkpoints" / "checkpoint.pt")
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    for item in (job / "checkpoints").rglob("*"):
        if item.is_file():
            target = resumed / "checkpoints" / item.relative_to(job / "checkpoints")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(item.read_bytes())
    tensorboard = run_training(resumed, digits, "--pretrained", "true", "--epochs", "3")
    scalars = read_scalars(tensorboard)
    assert [s for s, _, _ in scalars["train/loss"]] == list(range(30))  # restored 0..29, then 20..29 again
    insights = analyze(tensorboard, tmp_path / "out")
    assert set(statuses(insights).values()) <= {"NoIssuesFound", "IssuesFound"}
    assert insights["epochs"] == 3


def test_too_few_steps_give_no_issues_with_the_reason(tmp_path):
    writer = EventFileWriter(tmp_path / "tb")
    writer.add_scalars(0, {"meta/pretrained": 1.0, "meta/num_classes": 3.0, "train/loss": 1.1})
    writer.close()
    insights = analyze(tmp_path / "tb", tmp_path / "out")
    assert statuses(insights) == dict.fromkeys(RULES, "NoIssuesFound")
    assert "too few steps" in insights["rules"]["LossNotDecreasing"]["reason"]
    assert "too few epochs" in insights["rules"]["Overtraining"]["reason"]


def test_event_files_are_tensorboard_format_read_by_smdebug(tmp_path):
    from smdebug.core.tfevent.event_file_reader import EventFileReader

    writer = EventFileWriter(tmp_path)
    writer.add_scalars(7, {"train/loss": 0.25, "gradients/fc.weight/mean_abs": 1e-3})
    writer.close()
    events = list(EventFileReader(str(writer.path)).read_events(check="full"))  # checks every CRC
    assert events[0].file_version == "brain.Event:2"
    assert events[1].step == 7
    assert {v.tag: v.simple_value for v in events[1].summary.value} == pytest.approx(
        {"train/loss": 0.25, "gradients/fc.weight/mean_abs": 1e-3})


def test_rule_parameters_are_arguments_and_checked(tmp_path):
    params = parse_parameters(["LossNotDecreasing.window_steps=20", "Overfit.ratio_threshold=0.5"])
    assert params["LossNotDecreasing"]["window_steps"] == 20 and params["Overfit"]["ratio_threshold"] == 0.5
    assert parse_parameters(rule_arguments()[1::2]) == DEFAULT_PARAMETERS
    with pytest.raises(ValueError, match="unknown rule parameter 'Overfit.patiense'"):
        parse_parameters(["Overfit.patiense=3"])
    result = subprocess.run([sys.executable, str(ANALYZE), "--tensorboard-dir", str(tmp_path / "none"),
                             "--output-dir", str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "SM_OUTPUT_FAILURE": str(tmp_path / "failure")})
    assert result.returncode == 2 and "no TensorBoard event files" in result.stderr
    assert "no TensorBoard event files" in (tmp_path / "failure").read_text()
