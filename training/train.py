"""Transfer learning for image classification: the SageMaker training entry point.

Used by every tuning trial and by the final training step. It follows SageMaker's training
container contract, so it runs unchanged on SageMaker and under the local engine:

- data: ``SM_CHANNEL_TRAIN`` and ``SM_CHANNEL_VALID`` hold ``<class>/<image>`` folders;
  an optional ``SM_CHANNEL_WEIGHTS`` holds ImageNet weights for network-isolated jobs;
- output: ``SM_MODEL_DIR`` gets ``model.pth`` (state_dict) + ``model.json``;
  ``SM_OUTPUT_DATA_DIR`` gets ``history.json`` (per-epoch metrics);
- hyperparameters arrive as ``--name value`` arguments;
- checkpoints in ``--checkpoint-dir`` (synced to S3 by SageMaker): a restarted job (spot
  interruption) resumes after the last finished epoch;
- the Debugger hook is created from SageMaker's hook config when one is given;
- what the training-insight rules read (per-step loss, gradient statistics, early activation
  inputs, validation loss per epoch, step times) is recorded as TensorBoard event files in
  ``--tensorboard-dir``: by default the ``LocalPath`` of the job's ``TensorBoardOutputConfig``
  (``/opt/ml/output/tensorboard``), none without one; a resumed job continues the step numbers;
- one log line per epoch, read by the pipeline's metric regexes, e.g.
  ``epoch=3 train_loss=0.41 train_accuracy=0.86 valid_loss=0.38 valid_accuracy=0.871 ...``
  and a final line for the weights it saved (the best epoch).

Run ``python train.py --help`` for the arguments.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch
import torchvision
from torch import nn

from imgclf.artifact import save_model
from imgclf.container import failure_reported
from imgclf.data import augment_batch, list_image_folder, make_loader, normalize_batch
from imgclf.recorder import TrainingRecorder, restore_copy, tensorboard_dir_from_config
from imgclf.models import ARCHITECTURES, IMAGENET_MEAN, IMAGENET_STD, build_model, get_architecture

CHECKPOINT_FILE = "checkpoint.pt"
DEFAULT_HOOK_CONFIG = "/opt/ml/input/config/debughookconfig.json"


def str2bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("true", "1", "yes", "y"):
        return True
    if value.lower() in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def get_args_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Fine-tune a torchvision model on image folders.")
    parser.add_argument("--arch", default="mobilenet_v2", choices=sorted(ARCHITECTURES), help="torchvision architecture")
    parser.add_argument("--pretrained", type=str2bool, default=True, help="start from ImageNet weights")
    parser.add_argument("--freeze-backbone", type=str2bool, default=False, help="train only the new classification head")
    parser.add_argument("--learning-rate", type=float, default=0.01, help="peak learning rate")
    parser.add_argument("--batch-size", type=int, default=64, help="images per training batch")
    parser.add_argument("--epochs", type=int, default=5, help="maximum number of epochs")
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adam", "adamw"), help="optimizer")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay (L2 for sgd/adam, decoupled for adamw)")
    parser.add_argument("--warmup-epochs", type=float, default=0.3, help="linear learning-rate warm-up, in epochs, before cosine decay")
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="label smoothing of the cross-entropy loss")
    parser.add_argument("--image-size", type=int, default=64, help="side of the square input images, in pixels")
    parser.add_argument("--augment", type=str2bool, default=True, help="random flips and shifts of training images")
    parser.add_argument("--early-stopping-patience", type=int, default=0, help="stop after this many epochs without a better valid_accuracy (0 = off)")
    parser.add_argument("--max-train-images", type=int, default=0, help="train on a stratified random subset of this many images (0 = all)")
    parser.add_argument("--seed", type=int, default=42, help="random seed")
    parser.add_argument("--bn-recalibration-steps", type=int, default=100,
                        help="while fewer optimizer steps than this have run, recompute the batch-norm statistics "
                             "over the training images after each epoch (0 = never)")
    parser.add_argument("--mixed-precision", default="auto", choices=("auto", "bf16", "fp16", "off"),
                        help="autocast on a GPU: auto = bf16 where supported, else fp16 with gradient scaling")
    parser.add_argument("--workers", type=int, default=int(env("SM_NUM_CPUS", os.cpu_count() or 1)), help="processes for image decoding")
    parser.add_argument("--cache-limit-mb", type=int, default=4096, help="keep decoded images in memory up to this size, else stream from disk")
    parser.add_argument("--train-dir", default=env("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"), help="training images (class folders)")
    parser.add_argument("--valid-dir", default=env("SM_CHANNEL_VALID", "/opt/ml/input/data/valid"), help="validation images (class folders)")
    parser.add_argument("--weights-dir", default=env("SM_CHANNEL_WEIGHTS"), help="directory with ImageNet weight files (network-isolated jobs)")
    parser.add_argument("--model-dir", default=env("SM_MODEL_DIR", "/opt/ml/model"), help="where the model artifact is written")
    parser.add_argument("--output-data-dir", default=env("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data"), help="where history.json is written")
    parser.add_argument("--checkpoint-dir", default=env("SM_CHECKPOINT_DIR", "/opt/ml/checkpoints"), help="per-epoch checkpoints for resuming")
    parser.add_argument("--tensorboard-dir", default=tensorboard_dir_from_config(),
                        help="record what the training-insight rules read here as TensorBoard event files ('' = off; "
                             "default: the LocalPath of the job's TensorBoardOutputConfig, if it has one)")
    parser.add_argument("--record-gradients-every", type=int, default=50, help="sample gradient statistics every this many steps")
    parser.add_argument("--record-activation-steps", type=int, default=10, help="record activation inputs at the first this many steps")
    return parser


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def stratified_subset(samples: list[tuple[str, int]], limit: int, seed: int) -> list[tuple[str, int]]:
    """At most ``limit`` samples, keeping each class's share (every class keeps ≥ 1)."""
    if limit <= 0 or limit >= len(samples):
        return samples
    rng = random.Random(seed)
    by_class: dict[int, list[tuple[str, int]]] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    chosen = []
    for members in by_class.values():
        take = max(1, round(len(members) * limit / len(samples)))
        chosen.extend(rng.sample(members, min(take, len(members))))
    return sorted(chosen)


def build_optimizer(args: argparse.Namespace, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.learning_rate, momentum=args.momentum, weight_decay=args.weight_decay, nesterov=args.momentum > 0)
    if args.optimizer == "adam":
        return torch.optim.Adam(params, lr=args.learning_rate, weight_decay=args.weight_decay)
    return torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to zero, stepped once per batch."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _numpy_of_any_dtype(to_numpy: Any) -> Any:
    """smdebug's tensor-to-numpy conversion, widened to bfloat16 tensors (numpy has no
    bfloat16: under bfloat16 autocast, saving an activation would raise TypeError)."""

    def convert(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16:
            value = value.float()
        return to_numpy(value)

    return convert


class DebuggerHook:
    """SageMaker Debugger (smdebug) hook from the hook config SageMaker writes; a no-op
    when the job has no Debugger hook config."""

    def __init__(self, model: nn.Module, loss_fn: nn.Module):
        self.hook = None
        path = os.environ.get("SMDEBUG_CONFIG_FILE_PATH", DEFAULT_HOOK_CONFIG)
        if not os.path.isfile(path):
            return
        try:
            import smdebug.pytorch as smd
        except ImportError as exc:  # the container lacks smdebug: train, but say so
            print(f"warning: Debugger hook config {path} given but smdebug is not importable ({exc}); no tensors saved", flush=True)
            return
        self.modes = smd.modes
        self.hook = smd.Hook.create_from_json_file(path)
        self.hook._make_numpy_array = _numpy_of_any_dtype(self.hook._make_numpy_array)
        self.hook.register_module(model)
        self.hook.register_loss(loss_fn)
        print(f"Debugger hook saving tensors to {self.hook.out_dir}", flush=True)

    def set_mode(self, train: bool) -> None:
        if self.hook is not None:
            self.hook.set_mode(self.modes.TRAIN if train else self.modes.EVAL)

    def set_predict_mode(self) -> None:
        """Forward passes that are neither training nor validation steps (batch-norm
        recalibration): smdebug counts them apart, so its TRAIN and EVAL steps stay the job's own."""
        if self.hook is not None:
            self.hook.set_mode(self.modes.PREDICT)

    def close(self) -> None:
        if self.hook is not None:
            self.hook.close()


def set_train_mode(model: nn.Module, arch_name: str, freeze_backbone: bool) -> None:
    """Train mode; with a frozen backbone its BatchNorm statistics stay frozen too."""
    model.train()
    if freeze_backbone:
        head = get_architecture(arch_name).head_path
        for name, module in model.named_modules():
            if not name.startswith(head) and isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def mixed_precision(device: torch.device, choice: str = "auto") -> tuple[Optional[torch.dtype], Optional[torch.amp.GradScaler]]:
    """Autocast dtype and gradient scaler for ``device``: with ``auto``, bfloat16 where the GPU
    has it (A100, H100, L4...: no scaler needed), float16 with a GradScaler on older GPUs (T4,
    V100); none on CPU or with ``off``."""
    if device.type != "cuda" or choice == "off":
        return None, None
    if choice == "bf16" or (choice == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


def _optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler: Any,
                    scaler: Optional[torch.amp.GradScaler], recorder: Optional[TrainingRecorder]) -> None:
    """Backward pass and optimizer step (gradient statistics sampled in between)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scale = scaler.get_scale()
        scaler.scale(loss).backward()
        if recorder is not None and recorder.wants_gradients():
            recorder.record_gradients(grad_scale=scale)
        scaler.step(optimizer)
        scaler.update()
        stepped = scaler.get_scale() >= scale  # the scale drops when a step was skipped (inf/nan grads)
    else:
        loss.backward()
        if recorder is not None and recorder.wants_gradients():
            recorder.record_gradients()
        optimizer.step()
        stepped = True
    if stepped:
        scheduler.step()


def run_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: nn.Module,
    device: torch.device,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler] = None,
    scaler: Optional[torch.amp.GradScaler] = None,
    augment: bool = False,
    generator: Optional[torch.Generator] = None,
    amp_dtype: Optional[torch.dtype] = None,
    recorder: Optional[TrainingRecorder] = None,
) -> dict[str, float]:
    """One pass over ``batches``: trains when an optimizer is given, else evaluates.

    Loss and accuracy are summed on the device and read once at the end, so a GPU never waits
    for the host between batches; a ``recorder`` gets each training step's loss and timings."""
    training = optimizer is not None
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    start = mark = time.perf_counter()
    with torch.enable_grad() if training else torch.inference_mode():
        for images, labels in batches:
            data_seconds = time.perf_counter() - mark
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if augment:
                images = augment_batch(images, generator if device.type == "cpu" else None)
            inputs = normalize_batch(images, IMAGENET_MEAN, IMAGENET_STD)
            with autocast:
                logits = model(inputs)
                loss = loss_fn(logits, labels)
            if training:
                _optimizer_step(loss, optimizer, scheduler, scaler, recorder)
            total_loss += loss.detach().double() * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            seen += len(labels)
            if training and recorder is not None:
                now = time.perf_counter()
                recorder.end_step(loss, data_seconds, now - mark)
                mark = now
            else:
                mark = time.perf_counter()
    total_loss, correct = total_loss.item(), correct.item()  # waits for the device's last batch
    seconds = time.perf_counter() - start
    return {"loss": total_loss / max(1, seen), "accuracy": correct / max(1, seen), "seconds": seconds, "images": seen}


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically write the checkpoint (a crash mid-write leaves the previous one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, fingerprint: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The checkpoint of this same job (same fingerprint), or None."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        print(f"ignoring checkpoint {path}: it belongs to a different configuration", flush=True)
        return None
    return state


def reestimate_batchnorm(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                         device: torch.device) -> int:
    """Recompute the running mean/variance of every batch-norm layer in train mode as the exact
    average over ``batches`` (un-augmented); returns how many layers were updated.

    After few steps the running statistics are still mostly ImageNet's (momentum 0.1: 0.9**9 =
    39% after 9 steps), while the weights have moved: the model scores well in train mode and at
    chance in eval mode. Frozen layers (eval mode) are left alone."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    if not layers:
        return 0
    momenta = [m.momentum for m in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average
    with torch.no_grad():
        for images, _ in batches:
            model(normalize_batch(images.to(device), IMAGENET_MEAN, IMAGENET_STD))
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    return len(layers)


def chance_level_warning(valid_accuracy: float, num_classes: int, args: argparse.Namespace, steps: int) -> str:
    """A warning line when the best model is no better than guessing ('' otherwise).

    Measured cause (one epoch, 420 Fashion-MNIST images, 7 steps): Adam/AdamW at a learning
    rate of 1e-2 or more moves every pretrained weight by about the learning rate per step, so a
    few steps wreck the ImageNet features; the logits blow up (valid loss ~33) and the network
    answers one class for every image. Batch-norm running statistics lag as well, but
    re-estimating them only brings such a model to ~0.38. With more epochs the cosine decay
    gives it time to recover, which is why only very short runs show it."""
    chance = 1.0 / max(1, num_classes)
    if num_classes < 2 or valid_accuracy > chance + 0.1 * (1 - chance):
        return ""
    return (f"warning: valid_accuracy={valid_accuracy:.4f} is at chance level (1/{num_classes} = {chance:.4f}): "
            f"the model did not learn in {steps} optimizer steps at learning rate {args.learning_rate:g} "
            f"with {args.optimizer}. Pretrained networks need a small learning rate for adam/adamw "
            "(about 1e-3 or less) and more steps: raise the epochs, lower the batch size or the learning rate.")


@dataclass
class Session:
    """What the epoch loop works with."""

    device: torch.device
    classes: list[str]
    train_images: int
    train_batches: Any
    valid_batches: Any
    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    amp_dtype: Optional[torch.dtype]
    scaler: Optional[torch.amp.GradScaler]
    generator: torch.Generator


@dataclass
class Progress:
    """The state a checkpoint carries between jobs."""

    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"valid_accuracy": -1.0, "valid_loss": math.inf, "epoch": 0})
    best_state: Optional[dict] = None
    start_epoch: int = 1
    global_step: int = 0


def build_session(args: argparse.Namespace) -> Session:
    """Data loaders, model, loss, optimizer and schedule for ``args``."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    classes, train_samples = list_image_folder(args.train_dir)
    valid_classes, valid_samples = list_image_folder(args.valid_dir)
    if valid_classes != classes:
        raise ValueError(f"train and valid class folders differ: {sorted(set(classes) ^ set(valid_classes))}")
    train_samples = stratified_subset(train_samples, args.max_train_images, args.seed)
    print(f"classes={len(classes)} train_images={len(train_samples)} valid_images={len(valid_samples)} device={device} arch={args.arch}", flush=True)

    cache_bytes = args.cache_limit_mb * 2**20
    loader_start = time.perf_counter()
    train_batches = make_loader(train_samples, args.image_size, args.batch_size, True, cache_bytes, args.workers, args.seed)
    valid_batches = make_loader(valid_samples, args.image_size, 256, False, cache_bytes, args.workers)
    print(f"images ready in {time.perf_counter() - loader_start:.1f}s", flush=True)

    model = build_model(args.arch, len(classes), args.pretrained, args.weights_dir, args.freeze_backbone).to(device)
    optimizer = build_optimizer(args, model)
    steps_per_epoch = len(train_batches)
    scheduler = build_scheduler(optimizer, round(args.warmup_epochs * steps_per_epoch), args.epochs * steps_per_epoch)
    amp_dtype, scaler = mixed_precision(device, args.mixed_precision)
    if amp_dtype is not None:
        print(f"mixed precision: {str(amp_dtype).removeprefix('torch.')} autocast" + (" with gradient scaling" if scaler else ""), flush=True)
    return Session(device, classes, len(train_samples), train_batches, valid_batches, model,
                   nn.CrossEntropyLoss(label_smoothing=args.label_smoothing), optimizer, scheduler, amp_dtype, scaler,
                   torch.Generator().manual_seed(args.seed))


def fingerprint_of(args: argparse.Namespace, classes: list[str]) -> dict[str, Any]:
    return {"arch": args.arch, "classes": classes, "image_size": args.image_size, "epochs": args.epochs,
            "learning_rate": args.learning_rate, "batch_size": args.batch_size, "optimizer": args.optimizer, "seed": args.seed}


def resume(session: Session, checkpoint_path: Path, fingerprint: dict[str, Any]) -> Progress:
    """The progress of an interrupted run of this same job (its checkpoint), or a fresh start."""
    resumed = load_checkpoint(checkpoint_path, fingerprint)
    if resumed is None:
        return Progress()
    session.model.load_state_dict(resumed["model"])
    session.optimizer.load_state_dict(resumed["optimizer"])
    session.scheduler.load_state_dict(resumed["scheduler"])
    session.generator.set_state(resumed["generator"])
    if session.scaler is not None and resumed.get("scaler"):
        session.scaler.load_state_dict(resumed["scaler"])
    print(f"resumed from checkpoint after epoch {resumed['epoch']}", flush=True)
    global_step = resumed.get("global_step", resumed["epoch"] * len(session.train_batches))
    return Progress(resumed["history"], resumed["best"], resumed["best_model"], resumed["epoch"] + 1, global_step)


def open_recorder(args: argparse.Namespace, session: Session, progress: Progress,
                  started_at: Optional[float]) -> Optional[TrainingRecorder]:
    """The training-insight recorder, continuing an interrupted job's recording; None when off."""
    if not args.tensorboard_dir:
        return None
    restored = restore_copy(args.checkpoint_dir, args.tensorboard_dir) if progress.start_epoch > 1 else 0
    recorder = TrainingRecorder(args.tensorboard_dir, session.model, progress.global_step, args.record_gradients_every,
                                args.record_activation_steps, started_at)
    recorder.write_meta(pretrained=int(args.pretrained), num_classes=len(session.classes), gpu=int(session.device.type == "cuda"),
                        steps_per_epoch=len(session.train_batches), start_step=progress.global_step, epochs=args.epochs)
    print(f"recording training insights to {args.tensorboard_dir} (from step {progress.global_step}"
          + (f", {restored} earlier event file(s) restored" if restored else "") + ")", flush=True)
    return recorder


def epoch_record(epoch: int, train_stats: dict[str, float], valid_stats: dict[str, float]) -> dict[str, float]:
    """One epoch's line of ``history.json``, also printed (the metric definitions parse it)."""
    record = {
        "epoch": epoch,
        "train_loss": train_stats["loss"], "train_accuracy": train_stats["accuracy"],
        "valid_loss": valid_stats["loss"], "valid_accuracy": valid_stats["accuracy"],
        "epoch_seconds": train_stats["seconds"] + valid_stats["seconds"],
        "images_per_second": train_stats["images"] / train_stats["seconds"],
    }
    print(
        f"epoch={epoch} train_loss={record['train_loss']:.4f} train_accuracy={record['train_accuracy']:.4f} "
        f"valid_loss={record['valid_loss']:.4f} valid_accuracy={record['valid_accuracy']:.4f} "
        f"epoch_seconds={record['epoch_seconds']:.1f} images_per_second={record['images_per_second']:.1f}",
        flush=True,
    )
    return record


def model_meta(args: argparse.Namespace, classes: list[str], best: dict[str, Any], epochs_run: int,
               train_images: int) -> dict[str, Any]:
    """``model.json`` of the model artifact contract (docs/contracts.md)."""
    hyperparameters = {k: v for k, v in vars(args).items()
                       if not k.endswith("_dir") and k not in ("workers", "cache_limit_mb") and not k.startswith("record_")}
    return {
        "arch": args.arch,
        "classes": classes,
        "image_size": args.image_size,
        "normalize": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "hyperparameters": hyperparameters,
        "metrics": {"valid_accuracy": best["valid_accuracy"], "valid_loss": best["valid_loss"], "best_epoch": best["epoch"],
                    "epochs_run": epochs_run, "train_images": train_images},
        "framework": {"torch": torch.__version__, "torchvision": torchvision.__version__},
    }


def fit(args: argparse.Namespace, session: Session, progress: Progress, checkpoint_path: Path,
        fingerprint: dict[str, Any], recorder: Optional[TrainingRecorder]) -> None:
    """The epoch loop: train, validate, keep the best weights, checkpoint, stop early."""
    s, best = session, progress.best
    hook = DebuggerHook(s.model, s.loss_fn)
    epochs_without_improvement = progress.start_epoch - 1 - best["epoch"] if best["epoch"] else 0
    for epoch in range(progress.start_epoch, args.epochs + 1):
        hook.set_mode(train=True)
        set_train_mode(s.model, args.arch, args.freeze_backbone)
        train_stats = run_epoch(s.model, s.train_batches, s.loss_fn, s.device, s.optimizer, s.scheduler, s.scaler,
                                args.augment, s.generator, s.amp_dtype, recorder)
        progress.global_step += len(s.train_batches)
        if epoch * len(s.train_batches) < args.bn_recalibration_steps:
            hook.set_predict_mode()  # the re-estimation's forward passes are no training steps
            with recorder.paused() if recorder is not None else nullcontext():
                reestimate_batchnorm(s.model, s.train_batches, s.device)
        hook.set_mode(train=False)
        s.model.eval()
        valid_stats = run_epoch(s.model, s.valid_batches, s.loss_fn, s.device, amp_dtype=s.amp_dtype)
        record = epoch_record(epoch, train_stats, valid_stats)
        progress.history.append(record)
        if recorder is not None:
            recorder.end_epoch(epoch, record["train_loss"], record["valid_loss"], record["valid_accuracy"])
        if record["valid_accuracy"] > best["valid_accuracy"]:
            best = progress.best = {"valid_accuracy": record["valid_accuracy"], "valid_loss": record["valid_loss"], "epoch": epoch}
            progress.best_state = {k: v.detach().cpu().clone() for k, v in s.model.state_dict().items()}
            epochs_without_improvement = 0
        else:
            epochs_without_improvement += 1
        save_checkpoint(checkpoint_path, {
            "fingerprint": fingerprint, "epoch": epoch, "model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict(), "generator": s.generator.get_state(), "history": progress.history,
            "best": best, "best_model": progress.best_state, "scaler": s.scaler.state_dict() if s.scaler is not None else None,
            "global_step": progress.global_step,
        })
        if recorder is not None:
            recorder.save_copy(args.checkpoint_dir)
        if args.early_stopping_patience and epochs_without_improvement >= args.early_stopping_patience:
            print(f"early stopping: no better valid_accuracy for {epochs_without_improvement} epochs", flush=True)
            break
    hook.close()


def train(args: argparse.Namespace, started_at: Optional[float] = None) -> dict[str, Any]:
    """Fine-tune as ``args`` say; writes the model artifact and history.json, returns model.json's dict."""
    set_seed(args.seed)
    if args.workers > 0:
        torch.set_num_threads(args.workers)
    session = build_session(args)
    fingerprint = fingerprint_of(args, session.classes)
    checkpoint_path = Path(args.checkpoint_dir) / CHECKPOINT_FILE
    progress = resume(session, checkpoint_path, fingerprint)
    recorder = open_recorder(args, session, progress, started_at)
    try:
        fit(args, session, progress, checkpoint_path, fingerprint, recorder)
    finally:
        if recorder is not None:
            recorder.close()

    model, best, history = session.model, progress.best, progress.history
    if progress.best_state is not None:
        model.load_state_dict(progress.best_state)
    print(f"final best_epoch={best['epoch']} valid_loss={best['valid_loss']:.4f} valid_accuracy={best['valid_accuracy']:.4f}", flush=True)
    warning = chance_level_warning(best["valid_accuracy"], len(session.classes), args, progress.global_step)
    if warning:
        print(warning, flush=True)
    meta = model_meta(args, session.classes, best, epochs_run=len(history), train_images=session.train_images)
    save_model(args.model_dir, model, meta)
    Path(args.output_data_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.output_data_dir) / "history.json").write_text(json.dumps(history, indent=2))
    return meta


def main(argv: Optional[list[str]] = None) -> int:
    started_at = time.time()
    args = get_args_parser().parse_args(argv)
    with failure_reported():  # SageMaker shows why as the job's FailureReason
        train(args, started_at)
    return 0


if __name__ == "__main__":
    sys.exit(main())
