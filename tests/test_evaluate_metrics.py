"""steps/evaluate.py's numbers checked against scikit-learn's own metrics.

The predictions are crafted so that every easy mistake gives a different number: class
supports differ (accuracy != mean per-class recall), the confusion matrix is not symmetric
(a transposed matrix is wrong), one class is never predicted, one class is absent from the
test set, weighted precision differs from weighted recall, and some true labels sit at
exactly rank k (top-k) while others sit at rank k + 1.
"""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn import metrics as skm

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("imgpipe_steps_evaluate", REPO / "steps" / "evaluate.py")
evaluate = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = evaluate
_spec.loader.exec_module(evaluate)

CLASSES = ["ant", "bee", "cat", "dog", "emu", "fox", "gnu"]  # 7: more than top-5


def probabilities_ranking(rankings: list[list[int]], n_classes: int) -> np.ndarray:
    """Rows of distinct probabilities where ``rankings[i]`` lists classes best first."""
    probs = np.zeros((len(rankings), n_classes))
    for row, ranking in enumerate(rankings):
        rest = [c for c in range(n_classes) if c not in ranking]
        for rank, cls in enumerate(list(ranking) + rest):
            probs[row, cls] = (n_classes - rank) / 100.0
    return probs / probs.sum(1, keepdims=True)


@pytest.fixture()
def crafted():
    """Labels and scores: supports 4/2/3/1/0/1/1, class 'dog' (3) never predicted, no 'emu' (4)
    in the test set, the true label of one row at rank 5 and of another at rank 6."""
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 3, 5, 6])
    rankings = [
        [0], [0], [1, 0], [2, 0],           # ant: 2 right, 1 as bee, 1 as cat
        [1], [0, 1],                        # bee: 1 right, 1 as ant
        [2], [2], [1, 2],                   # cat: 2 right, 1 as bee
        [2, 0, 1, 5, 3],                    # dog: predicted cat; true label at rank 5
        [0, 1, 2, 3, 6, 5],                 # fox: true label at rank 6
        [6],                                # gnu: right
    ]
    return labels, probabilities_ranking(rankings, len(CLASSES))


def sk(labels: np.ndarray, probs: np.ndarray) -> dict:
    predicted = probs.argmax(1)
    everything = list(range(len(CLASSES)))
    common = dict(labels=everything, average="weighted", zero_division=0)
    return {
        "accuracy": skm.accuracy_score(labels, predicted),
        "weighted_precision": skm.precision_score(labels, predicted, **common),
        "weighted_recall": skm.recall_score(labels, predicted, **common),
        "weighted_f1": skm.f1_score(labels, predicted, **common),
        "confusion": skm.confusion_matrix(labels, predicted, labels=everything),
        "top5": skm.top_k_accuracy_score(labels, probs, k=5, labels=everything),
        "recall": skm.recall_score(labels, predicted, labels=everything, average=None, zero_division=0),
    }


def test_the_crafted_case_separates_the_easy_mistakes(crafted):
    """Guards the fixture itself: each plausible wrong formula gives another number."""
    labels, probs = crafted
    expected = sk(labels, probs)
    assert expected["accuracy"] != pytest.approx(skm.balanced_accuracy_score(labels, probs.argmax(1)))
    assert expected["weighted_precision"] != pytest.approx(expected["weighted_recall"])
    assert not np.array_equal(expected["confusion"], expected["confusion"].T)
    assert expected["top5"] != pytest.approx(
        skm.top_k_accuracy_score(labels, probs, k=4, labels=list(range(len(CLASSES)))))
    assert expected["confusion"][:, 3].sum() == 0 and expected["confusion"][4].sum() == 0


def test_metrics_equal_scikit_learns(crafted):
    labels, probs = crafted
    expected = sk(labels, probs)
    report = evaluate.classification_metrics(labels, probs, CLASSES)
    mcm = report["multiclass_classification_metrics"]
    for name in ("accuracy", "weighted_precision", "weighted_recall", "weighted_f1"):
        assert mcm[name]["value"] == pytest.approx(expected[name], abs=1e-12), name
    assert report["top_5_accuracy"]["value"] == pytest.approx(expected["top5"])
    assert report["per_class_accuracy"] == pytest.approx(dict(zip(CLASSES, expected["recall"])))
    assert report["per_class_support"] == {c: int((labels == i).sum()) for i, c in enumerate(CLASSES)}
    assert report["num_test_images"] == len(labels) and report["classes"] == CLASSES


def test_confusion_matrix_is_actual_by_predicted(crafted):
    labels, probs = crafted
    report = evaluate.classification_metrics(labels, probs, CLASSES)
    matrix = report["multiclass_classification_metrics"]["confusion_matrix"]
    expected = sk(labels, probs)["confusion"]
    assert [[matrix[a][p] for p in CLASSES] for a in CLASSES] == expected.tolist()
    assert matrix["ant"]["bee"] == 1 and matrix["bee"]["ant"] == 1 and matrix["cat"]["bee"] == 1
    assert matrix["bee"]["cat"] == 0 and matrix["dog"]["cat"] == 1 and matrix["cat"]["dog"] == 0


def test_top_k_counts_exactly_k_classes():
    """Rank 1..5 hits, rank 6 misses; with fewer than 5 classes k is the class count."""
    n = len(CLASSES)
    rankings = [[c for c in range(n) if c != 0][:rank - 1] + [0] for rank in range(1, n + 1)]
    probs = probabilities_ranking(rankings, n)
    labels = np.zeros(n, dtype=int)
    report = evaluate.classification_metrics(labels, probs, CLASSES)
    assert report["top_5_accuracy"]["value"] == pytest.approx(5 / 7)
    three = probabilities_ranking([[1, 2, 0], [2, 0, 1], [0, 1, 2]], 3)
    small = evaluate.classification_metrics(np.array([0, 0, 0]), three, CLASSES[:3])
    assert small["top_3_accuracy"]["value"] == 1.0 and "top_5_accuracy" not in small


def test_empty_test_set_reports_zeros():
    report = evaluate.classification_metrics(np.array([], dtype=int), np.zeros((0, 3)), CLASSES[:3])
    mcm = report["multiclass_classification_metrics"]
    assert mcm["accuracy"]["value"] == 0.0 and report["top_3_accuracy"]["value"] == 0.0
    for name in ("weighted_precision", "weighted_recall", "weighted_f1"):
        assert mcm[name]["value"] == 0.0, name  # not NaN
    assert report["num_test_images"] == 0


# --------------------------------------------------------------------------- end to end
LEVELS = {name: 20 + 30 * i for i, name in enumerate(CLASSES)}  # red level that 'means' the class


class RedLevelModel(torch.nn.Module):
    """A model that predicts the class whose red level is nearest the image's mean red."""

    def __init__(self) -> None:
        super().__init__()
        self.levels = torch.nn.Parameter(torch.tensor([float(LEVELS[c]) for c in CLASSES]), requires_grad=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:  # inputs: normalised with mean 0, std 1/255
        red = inputs[:, 0].mean((1, 2))
        return -(red[:, None] - self.levels[None, :]).abs()


def write_solid(path: Path, red: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (10, 10), (red, 90, 90)).save(path)


def test_test_labels_map_to_the_models_class_indices(tmp_path, monkeypatch, capsys):
    """The test set holds only 'cat' and 'fox' (indices 0 and 1 among its own folders, 2 and 5
    for the model): labels must be the model's indices, or every right answer counts wrong."""
    meta = {"classes": CLASSES, "image_size": 8, "arch": "red-level",
            "normalize": {"mean": [0.0, 0.0, 0.0], "std": [1 / 255] * 3}}
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.json").write_text(json.dumps(meta))
    monkeypatch.setattr(evaluate, "load_model", lambda directory, device: (RedLevelModel().to(device), meta))
    test_dir = tmp_path / "test"
    for i in range(3):
        write_solid(test_dir / "cat" / f"{i}.png", LEVELS["cat"])
    write_solid(test_dir / "fox" / "0.png", LEVELS["fox"])
    write_solid(test_dir / "fox" / "1.png", LEVELS["gnu"])  # a fox seen as a gnu
    out = tmp_path / "out" / "evaluation"  # created with its parents
    report = evaluate.evaluate(model_dir, test_dir, out, batch_size=2, workers=1)
    summary = re.fullmatch(r"test_accuracy=0\.8000 test_images=5 seconds=([0-9.]+)\n", capsys.readouterr().out)
    assert summary and 0 <= float(summary.group(1)) < 600
    mcm = report["multiclass_classification_metrics"]
    assert mcm["accuracy"]["value"] == pytest.approx(4 / 5)
    assert mcm["confusion_matrix"]["cat"]["cat"] == 3 and mcm["confusion_matrix"]["fox"]["gnu"] == 1
    assert mcm["confusion_matrix"]["fox"]["fox"] == 1 and mcm["confusion_matrix"]["ant"]["ant"] == 0
    assert report["per_class_support"]["cat"] == 3 and report["per_class_support"]["ant"] == 0
    written = json.loads((out / "evaluation.json").read_text())
    assert written["multiclass_classification_metrics"] == mcm
    assert (out / "confusion_matrix.png").stat().st_size > 0
    again = evaluate.evaluate(model_dir, test_dir, out, batch_size=5, workers=1)  # into a folder that exists
    assert again["multiclass_classification_metrics"] == mcm


def test_test_classes_unknown_to_the_model_are_refused(tmp_path, monkeypatch):
    meta = {"classes": ["cat", "dog"], "image_size": 8, "arch": "red-level",
            "normalize": {"mean": [0.0] * 3, "std": [1 / 255] * 3}}
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.json").write_text(json.dumps(meta))
    monkeypatch.setattr(evaluate, "load_model", lambda directory, device: (RedLevelModel().to(device), meta))
    write_solid(tmp_path / "test" / "cat" / "0.png", 20)
    write_solid(tmp_path / "test" / "owl" / "0.png", 20)
    with pytest.raises(ValueError, match="test classes unknown to the model: owl"):
        evaluate.evaluate(tmp_path / "model", tmp_path / "test", tmp_path / "out", workers=1)


def test_the_model_is_found_in_a_directory_or_its_model_tar_gz(tmp_path):
    from imgclf.artifact import create_archive

    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    (unpacked / "model.json").write_text("{}")
    assert evaluate.locate_model(unpacked, tmp_path / "scratch-1") == unpacked
    packed = tmp_path / "packed"
    packed.mkdir()
    create_archive(unpacked, packed / "model.tar.gz")
    found = evaluate.locate_model(packed, tmp_path / "scratch-2")
    assert found == tmp_path / "scratch-2" and (found / "model.json").read_text() == "{}"
    with pytest.raises(FileNotFoundError, match="holds neither model.json nor a model.tar.gz"):
        evaluate.locate_model(tmp_path / "scratch-1", tmp_path / "scratch-3")


def test_a_single_test_image_weighs_the_whole_average():
    """Weights are supports over the total, and a total of one image is one, not clamped higher."""
    report = evaluate.classification_metrics(np.array([2]), probabilities_ranking([[2]], 3), CLASSES[:3])
    mcm = report["multiclass_classification_metrics"]
    for name in ("accuracy", "weighted_precision", "weighted_recall", "weighted_f1"):
        assert mcm[name]["value"] == 1.0, name


def test_predicting_no_images_gives_an_empty_batch_of_every_class():
    meta = {"classes": CLASSES, "normalize": {"mean": [0.0] * 3, "std": [1 / 255] * 3}}
    probabilities = evaluate.predict(RedLevelModel(), meta, torch.zeros((0, 3, 8, 8), dtype=torch.uint8), 4)
    assert tuple(probabilities.shape) == (0, len(CLASSES))


def test_the_script_runs_as_a_program():
    """SageMaker runs ``python evaluate.py``: the module must call main() when run that way."""
    import subprocess

    result = subprocess.run([sys.executable, str(REPO / "steps" / "evaluate.py"), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--model-dir" in result.stdout, result.stderr
