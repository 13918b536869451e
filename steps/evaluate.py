"""Score a trained model on the held-out test split: the SageMaker processing entry point.

Inputs: ``--model-dir`` holding ``model.tar.gz`` (or an extracted model directory) and
``--test-dir`` with ``<class>/<image>`` folders. Outputs in ``--output-dir``:

- ``evaluation.json`` in SageMaker's model-quality format
  (``multiclass_classification_metrics``: accuracy, weighted precision/recall/F1, confusion
  matrix), plus top-5 accuracy, per-class accuracy and counts; the pipeline's condition
  reads ``multiclass_classification_metrics.accuracy.value``;
- ``confusion_matrix.png``.

Test images are preprocessed exactly as in training and inference (``imgclf.data``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from imgclf.artifact import extract_archive, load_model
from imgclf.container import failure_reported
from imgclf.data import decode_images, list_image_folder, normalize_batch


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate a model artifact on a test image folder.")
    parser.add_argument("--model-dir", default="/opt/ml/processing/model", help="directory with model.tar.gz, or an extracted model directory")
    parser.add_argument("--test-dir", default="/opt/ml/processing/test", help="test images (class folders)")
    parser.add_argument("--output-dir", default="/opt/ml/processing/evaluation", help="where evaluation.json and the plot go")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for image decoding")
    return parser


def locate_model(model_dir: Path, scratch: Path) -> Path:
    """An extracted model directory: ``model_dir`` itself, or its ``model.tar.gz`` unpacked."""
    if (model_dir / "model.json").is_file():
        return model_dir
    archives = sorted(model_dir.glob("*.tar.gz"))
    if not archives:
        raise FileNotFoundError(f"{model_dir} holds neither model.json nor a model.tar.gz")
    return extract_archive(archives[0], scratch)


def predict(model: torch.nn.Module, meta: dict, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Softmax probabilities ``[N, classes]`` for uint8 images ``[N, 3, S, S]``."""
    device = next(model.parameters()).device
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device)
            inputs = normalize_batch(batch, meta["normalize"]["mean"], meta["normalize"]["std"])
            outputs.append(torch.softmax(model(inputs).float(), dim=1).cpu())
    return torch.cat(outputs) if outputs else torch.empty((0, len(meta["classes"])))


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, weighted precision/recall/F1, confusion matrix, top-5 and per-class accuracy."""
    n_classes = len(classes)
    predicted = probabilities.argmax(1)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    support = confusion.sum(1)
    true_positive = np.diag(confusion)
    predicted_count = confusion.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted_count > 0, true_positive / predicted_count, 0.0)
        recall = np.where(support > 0, true_positive / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    weights = support / max(1, support.sum())
    k = min(5, n_classes)
    top_k = np.argsort(-probabilities, axis=1)[:, :k]
    top_k_accuracy = float((top_k == labels[:, None]).any(1).mean()) if len(labels) else 0.0

    def metric(value: float) -> dict[str, Any]:
        return {"value": float(value), "standard_deviation": "NaN"}

    return {
        "multiclass_classification_metrics": {
            "accuracy": metric((predicted == labels).mean() if len(labels) else 0.0),
            "weighted_precision": metric((precision * weights).sum()),
            "weighted_recall": metric((recall * weights).sum()),
            "weighted_f1": metric((f1 * weights).sum()),
            "confusion_matrix": {
                actual: {pred: int(confusion[i, j]) for j, pred in enumerate(classes)}
                for i, actual in enumerate(classes)
            },
        },
        f"top_{k}_accuracy": {"value": top_k_accuracy},
        "per_class_accuracy": {name: float(recall[i]) for i, name in enumerate(classes)},
        "per_class_support": {name: int(support[i]) for i, name in enumerate(classes)},
        "num_test_images": int(len(labels)),
        "classes": list(classes),
    }


def plot_confusion_matrix(report: dict[str, Any], path: Path) -> None:
    """A labelled confusion-matrix heat map with counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = report["classes"]
    matrix = report["multiclass_classification_metrics"]["confusion_matrix"]
    counts = np.array([[matrix[a][p] for p in classes] for a in classes])
    side = max(4.0, 0.55 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    accuracy = report["multiclass_classification_metrics"]["accuracy"]["value"]
    ax.set_title(f"Test confusion matrix (accuracy {accuracy:.3f}, n={report['num_test_images']})")
    if len(classes) <= 30:
        threshold = counts.max() / 2 if counts.size else 0
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if counts[i, j] > threshold else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate(model_dir: Path, test_dir: Path, output_dir: Path, batch_size: int = 256, workers: int = 1) -> dict[str, Any]:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model, meta = load_model(locate_model(model_dir, Path(scratch)), device)
    test_classes, samples = list_image_folder(test_dir)
    classes = meta["classes"]
    unknown = sorted(set(test_classes) - set(classes))
    if unknown:
        raise ValueError(f"test classes unknown to the model: {', '.join(unknown)}")
    index_of = {name: i for i, name in enumerate(classes)}
    labels = np.array([index_of[test_classes[label]] for _, label in samples])
    images = decode_images([path for path, _ in samples], meta["image_size"], workers)
    probabilities = predict(model, meta, images, batch_size).numpy()
    report = classification_metrics(labels, probabilities, classes)
    report["model"] = {"arch": meta["arch"], "image_size": meta["image_size"], "metrics": meta.get("metrics", {})}
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "evaluation.json").write_text(json.dumps(report, indent=2))
    plot_confusion_matrix(report, output_dir / "confusion_matrix.png")
    accuracy = report["multiclass_classification_metrics"]["accuracy"]["value"]
    print(f"test_accuracy={accuracy:.4f} test_images={len(labels)} seconds={time.perf_counter() - start:.1f}", flush=True)
    return report


def main(argv: Optional[list[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    with failure_reported():  # SageMaker shows why as the job's FailureReason
        evaluate(Path(args.model_dir), Path(args.test_dir), Path(args.output_dir), args.batch_size, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
