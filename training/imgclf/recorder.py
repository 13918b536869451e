"""What the training-insight rules need, recorded by the training script itself (no smdebug).

:class:`TrainingRecorder` writes TensorBoard event files (:mod:`imgclf.tfevents`) with these
tags, all at the job's *global* training step (a resumed job continues the numbering):

- ``train/loss`` every step; ``time/step_seconds`` and ``time/data_seconds`` (waiting for
  the batch) every step; ``time/startup_seconds`` once, at the first step;
- ``gradients/<parameter>/mean_abs`` every ``gradient_every`` steps (and the first step),
  one value per parameter tensor that has a gradient;
- ``activation_inputs/<module>/variance``, ``.../p5``, ``.../p95`` at the training steps
  below ``activation_steps``: the inputs of the activation layers (ReLU, ReLU6, SiLU, ...);
- ``epoch/train_loss``, ``epoch/valid_loss``, ``epoch/valid_accuracy``, ``epoch/index`` at
  the last step of each epoch;
- ``system/cpu_percent`` (this process) and, on a GPU, ``system/gpu_utilization`` and
  ``system/gpu_memory_percent``, at every flush;
- ``meta/*`` once per job: pretrained, num_classes, steps_per_epoch, gpu, start_step.

Values are kept on the device and read in one transfer per flush (every ``gradient_every``
steps and at each epoch end), so a GPU never waits for the host on the other steps.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Iterator, Optional

import torch
from torch import nn

from imgclf.tfevents import EventFileWriter, event_files

ACTIVATION_TYPES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish, nn.Sigmoid, nn.Tanh)
QUANTILE_SAMPLE = 65536  # elements of an activation input used for its percentiles


def tensorboard_dir_from_config(path: Optional[str] = None) -> str:
    """``LocalPath`` of SageMaker's TensorBoard output config (the job has a
    ``TensorBoardOutputConfig``), or "" when the job has none."""
    import json

    path = path or os.environ.get("TENSORBOARD_CONFIG_FILE_PATH", "/opt/ml/input/config/tensorboardoutputconfig.json")
    try:
        with open(path) as handle:
            return str(json.load(handle).get("LocalPath") or "/opt/ml/output/tensorboard")
    except (OSError, ValueError):
        return ""


class TrainingRecorder:
    """Records losses, gradient statistics, early activation inputs and timings of one job."""

    def __init__(self, log_dir: str | os.PathLike, model: nn.Module, start_step: int = 0,
                 gradient_every: int = 50, activation_steps: int = 10, started_at: Optional[float] = None):
        self.log_dir = Path(log_dir)
        self.writer = EventFileWriter(self.log_dir)
        self.model = model
        self.step = start_step  # global step of the next training step
        self.start_step = start_step
        self.gradient_every = max(1, gradient_every)
        self.activation_steps = activation_steps
        self.started_at = time.time() if started_at is None else started_at
        self._losses: list[torch.Tensor] = []
        self._times: list[tuple[int, float, float]] = []
        self._gradients: list[tuple[int, torch.Tensor]] = []
        self._activations: dict[str, tuple[torch.Tensor, ...]] = {}
        self._params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self._handles: list = []
        self._paused = False
        self._cpu_mark = (time.time(), sum(os.times()[:2]))
        if start_step < activation_steps:
            for name, module in model.named_modules():
                if isinstance(module, ACTIVATION_TYPES):
                    self._handles.append(module.register_forward_pre_hook(self._activation_hook(name)))

    # -- hooks --------------------------------------------------------------------------
    def _activation_hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            if self._paused or not (module.training and self.step < self.activation_steps and inputs):
                return
            with torch.no_grad():
                flat = inputs[0].detach().float().flatten()
                sample = flat[:: max(1, flat.numel() // QUANTILE_SAMPLE)]
                quantiles = torch.quantile(sample, torch.tensor([0.05, 0.95], device=sample.device))
                self._activations[name] = (flat.var(), quantiles[0], quantiles[1])
        return hook

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No activation recording for the duration (forward passes that are not training steps,
        e.g. re-estimating batch-norm statistics)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    # -- per step -----------------------------------------------------------------------
    def wants_gradients(self) -> bool:
        """Whether this step's gradients are sampled (call after backward, before the step)."""
        return self.step == self.start_step or self.step % self.gradient_every == 0

    def record_gradients(self, grad_scale: float = 1.0) -> None:
        """Mean |gradient| of every trainable tensor (``grad_scale``: a GradScaler's scale)."""
        grads = [p.grad.detach().float().abs().mean() if p.grad is not None else torch.zeros((), device=p.device)
                 for _, p in self._params]
        if grads:
            self._gradients.append((self.step, torch.stack(grads) / grad_scale))

    def end_step(self, loss: torch.Tensor, data_seconds: float, step_seconds: float) -> None:
        """Close a training step: its loss (left on the device) and timings."""
        if self.step == self.start_step:
            self.writer.add_scalars(self.step, {"time/startup_seconds": time.time() - self.started_at})
        self._losses.append(loss.detach().float().reshape(()))
        self._times.append((self.step, data_seconds, step_seconds))
        if self._activations:
            self._flush_activations()
        self.step += 1
        if self.step >= self.activation_steps and self._handles:
            for handle in self._handles:
                handle.remove()
            self._handles = []
        if self.step % self.gradient_every == 0:
            self.flush()

    def _flush_activations(self) -> None:
        names = sorted(self._activations)
        values = torch.stack([torch.stack(self._activations[n]) for n in names]).cpu().tolist()
        scalars = {}
        for name, (variance, p5, p95) in zip(names, values):
            scalars.update({f"activation_inputs/{name}/variance": variance, f"activation_inputs/{name}/p5": p5,
                            f"activation_inputs/{name}/p95": p95})
        self.writer.add_scalars(self.step, scalars)
        self._activations = {}

    # -- per epoch / job ------------------------------------------------------------------
    def write_meta(self, **values: float) -> None:
        self.writer.add_scalars(self.start_step, {f"meta/{k}": float(v) for k, v in values.items()})

    def end_epoch(self, epoch: int, train_loss: float, valid_loss: float, valid_accuracy: float) -> None:
        self.flush()
        self.writer.add_scalars(self.step - 1, {"epoch/index": epoch, "epoch/train_loss": train_loss,
                                                "epoch/valid_loss": valid_loss, "epoch/valid_accuracy": valid_accuracy})
        self.writer.flush()

    def flush(self) -> None:
        """Move the buffered device values to the host and write them."""
        if self._losses:
            first = self.step - len(self._losses)
            for offset, value in enumerate(torch.stack(self._losses).cpu().tolist()):
                self.writer.add_scalars(first + offset, {"train/loss": value})
            self._losses = []
        for step, data_seconds, step_seconds in self._times:
            self.writer.add_scalars(step, {"time/step_seconds": step_seconds, "time/data_seconds": data_seconds})
        self._times = []
        for step, stats in self._gradients:
            self.writer.add_scalars(step, {f"gradients/{name}/mean_abs": v for (name, _), v in zip(self._params, stats.cpu().tolist())})
        self._gradients = []
        self.writer.add_scalars(max(self.start_step, self.step - 1), self._system_metrics())

    def _system_metrics(self) -> dict[str, float]:
        now, cpu = time.time(), sum(os.times()[:2])
        wall = now - self._cpu_mark[0]
        metrics = {}
        if wall > 0.5:
            metrics["system/cpu_percent"] = 100.0 * (cpu - self._cpu_mark[1]) / wall / (os.cpu_count() or 1)
            self._cpu_mark = (now, cpu)
        if torch.cuda.is_available():
            try:
                metrics["system/gpu_utilization"] = float(torch.cuda.utilization())
            except Exception:  # needs NVML (pynvml / nvidia-ml-py); without it, no reading
                pass
            free, total = torch.cuda.mem_get_info()
            metrics["system/gpu_memory_percent"] = 100.0 * (total - free) / total
        return metrics

    def save_copy(self, checkpoint_dir: str | os.PathLike) -> None:
        """Copy the event files next to the checkpoint, so a resumed job's recording is whole."""
        self.writer.flush()
        target = Path(checkpoint_dir) / "tensorboard"
        target.mkdir(parents=True, exist_ok=True)
        for path in event_files(self.log_dir):
            shutil.copy2(path, target / path.name)

    def close(self) -> None:
        self.flush()
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.writer.close()


def restore_copy(checkpoint_dir: str | os.PathLike, log_dir: str | os.PathLike) -> int:
    """Bring an interrupted job's event files (saved with its checkpoint) into ``log_dir``."""
    source = Path(checkpoint_dir) / "tensorboard"
    copied = 0
    for path in event_files(source) if source.is_dir() else []:
        target = Path(log_dir) / path.name
        if not target.exists():
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            copied += 1
    return copied
