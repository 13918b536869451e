"""The report's plots: matplotlib (Agg) figures as ``data:`` URIs of PNG images."""
from __future__ import annotations

import base64
import io
from typing import Any, Optional


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(width: float = 7.0, height: float = 3.2) -> tuple[Any, Any]:
    return _pyplot().subplots(figsize=(width, height), dpi=90)


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    _pyplot().close(fig)
    return data_uri(buffer.getvalue())


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def plot_objective(trials: list[dict], objective: Optional[str]) -> Optional[str]:
    points = [(i + 1, t["objective"]) for i, t in enumerate(trials) if t["objective"] is not None]
    if not points:
        return None
    fig, ax = _figure(6, 2.8)
    ax.plot(*zip(*points), "o-", color="#1f77b4")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective or "objective")
    ax.set_title("Objective by trial")
    return _png(fig)


def plot_history(history: list[dict]) -> Optional[str]:
    if not history:
        return None
    epochs = [h["epoch"] for h in history]
    fig, (loss, acc) = _pyplot().subplots(1, 2, figsize=(9, 3), dpi=90)
    for key, ax in (("loss", loss), ("accuracy", acc)):
        for split, style in (("train", "o-"), ("valid", "s--")):
            ax.plot(epochs, [h.get(f"{split}_{key}") for h in history], style, label=split)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    return _png(fig)


def plot_losses(losses: dict) -> Optional[str]:
    if not losses:
        return None
    fig, ax = _figure()
    for name, modes in losses.items():
        for mode, points in modes.items():
            if points:
                ax.plot([p[0] for p in points], [p[2] for p in points], "." if mode == "EVAL" else "-",
                        label=f"{name} ({mode})")
    ax.set_xlabel("global step")
    ax.set_title("Loss tensors saved by the Debugger hook")
    ax.legend(fontsize=7)
    return _png(fig)


def plot_gradients(gradients: list[tuple[int, float, float]]) -> Optional[str]:
    if not gradients:
        return None
    fig, ax = _figure()
    steps = [g[0] for g in gradients]
    ax.semilogy(steps, [max(g[1], 1e-30) for g in gradients], "o-", label="global L2 norm")
    ax.semilogy(steps, [max(g[2], 1e-30) for g in gradients], "s--", label="smallest mean |gradient| of a tensor")
    ax.axhline(1e-7, color="red", linewidth=0.8, label="VanishingGradient threshold (default)")
    ax.set_xlabel("global step")
    ax.set_title("Gradients saved by the Debugger hook")
    ax.legend(fontsize=7)
    return _png(fig)


def plot_system(events: list[dict]) -> Optional[str]:
    from pipelines.local.profiler import series

    if not events:
        return None
    import numpy as np

    plt = _pyplot()
    t0 = min(e["Timestamp"] for e in events)
    panels = [("CPUUtilization", "CPU %"), ("Memory", "memory %"), ("GPUUtilization", "GPU %"),
              ("GPUMemoryUtilization", "GPU memory %"), ("DiskIO", "disk B/s"), ("Network", "network B/s")]
    panels = [(d, label) for d, label in panels if series(events, d)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.7 * len(panels)), dpi=90, sharex=True)
    for ax, (dimension, label) in zip(np.atleast_1d(axes), panels):
        for name, points in sorted(series(events, dimension).items()):
            ax.plot([p[0] - t0 for p in points], [p[1] for p in points], label=name, linewidth=1)
        ax.set_ylabel(label, fontsize=8)
        ax.legend(fontsize=6, loc="upper right", ncol=4)
    np.atleast_1d(axes)[-1].set_xlabel("seconds since the first sample")
    return _png(fig)


def plot_per_class(evaluation: dict) -> Optional[str]:
    per_class = evaluation.get("per_class_accuracy") or {}
    if not per_class:
        return None
    fig, ax = _figure(7, 2.8)
    ax.bar(list(per_class), list(per_class.values()), color="#2ca02c")
    ax.set_ylim(0, 1)
    ax.set_title("Test accuracy per class")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    return _png(fig)
