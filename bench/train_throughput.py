"""Training throughput of train.py's data path against a bare PyTorch loop, same run.

Both train the same model (MobileNetV2 from ImageNet weights, 64 px, batch 64, SGD) on the
same image files for the same number of epochs:

- **imgpipe**: ``train.run_epoch`` over ``imgclf.data.make_loader`` (images decoded once, in
  parallel, into a uint8 tensor; flips/shifts and normalisation on whole batches);
- **bare**: what most training scripts do: ``torchvision.datasets.ImageFolder`` with per-image
  ``transforms`` (resize, flip, to-tensor, normalise) in a ``DataLoader`` with worker processes,
  and a plain forward/backward/step loop.

On a GPU (``--device cuda``, the default when one is there) imgpipe's path is train.py's
own: flips/shifts on the GPU, bfloat16 autocast (float16 + gradient scaling on GPUs without
bfloat16), loss and accuracy summed on the GPU (no per-batch host sync);
the bare loop moves each DataLoader batch (pinned memory) and trains in float32, as a plain
script does. A few untimed steps warm the GPU up first for both.

Prints images/s per epoch and the ratio imgpipe/bare (first epoch includes imgpipe's decoding).

    .venv/bin/python bench/train_throughput.py [--data DIR] [--epochs 2] [--image-size 64] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision import transforms

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
sys.path.insert(0, str(ROOT))

import train  # noqa: E402  (training/train.py)
from imgclf.data import list_image_folder, make_loader  # noqa: E402
from imgclf.models import IMAGENET_MEAN, IMAGENET_STD, build_model  # noqa: E402
from pipelines.datasets import sample_dataset  # noqa: E402


def imgpipe_epochs(data: Path, size: int, batch: int, epochs: int, workers: int, device: torch.device) -> list[float]:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    classes, samples = list_image_folder(data)
    batches = make_loader(samples, size, batch, True, 4 << 30, workers, 0)
    decode = time.perf_counter() - t0
    print(f"imgpipe: {len(samples)} images decoded in {decode:.1f}s")
    model = build_model("mobilenet_v2", len(classes), True).to(device)
    amp_dtype, scaler = train.mixed_precision(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    rates = []
    for epoch in range(epochs):
        model.train()
        stats = train.run_epoch(model, batches, loss_fn, device, optimizer, scheduler, scaler, True, generator, amp_dtype)
        seconds = stats["seconds"] + (decode if epoch == 0 else 0.0)
        rates.append(stats["images"] / seconds)
    return rates


def bare_epochs(data: Path, size: int, batch: int, epochs: int, workers: int, device: torch.device) -> list[float]:
    torch.manual_seed(0)
    transform = transforms.Compose([
        transforms.Resize((size, size)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    dataset = torchvision.datasets.ImageFolder(str(data), transform=transform,
                                               loader=lambda p: torchvision.datasets.folder.pil_loader(p))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    model = build_model("mobilenet_v2", len(dataset.classes), True).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    rates = []
    for _ in range(epochs):
        model.train()
        seen, start = 0, time.perf_counter()
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            loss = loss_fn(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(labels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - start))
    return rates


def warm_up(device: torch.device, size: int, batch: int) -> None:
    """A few untimed steps, float32 and autocast, so neither path pays CUDA's start-up."""
    model = build_model("mobilenet_v2", 10, False).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    amp_dtype, _ = train.mixed_precision(device)
    for dtype in {None, amp_dtype}:
        for _ in range(5):
            with torch.autocast(device.type, dtype=dtype) if dtype else torch.enable_grad():
                loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="class folders of images (default: 200 Fashion-MNIST images per class)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decode processes / DataLoader workers")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.workers)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else Path(tmp) / "data"
        if not args.data:
            try:
                sample_dataset("fashion-mnist", data, per_class=200, seed=0)
            except Exception:  # no Debian package here: scikit-learn's digits
                sample_dataset("digits", data, per_class=200, seed=0)
        print(f"data {data}: {len(list_image_folder(data)[1])} images, {args.image_size} px, batch {args.batch_size}, "
              f"{args.workers} threads/workers, torch {torch.__version__}, device {device}"
              + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "") + "\n")
        warm_up(device, args.image_size, args.batch_size)
        ours = imgpipe_epochs(data, args.image_size, args.batch_size, args.epochs, args.workers, device)
        bare = bare_epochs(data, args.image_size, args.batch_size, args.epochs, args.workers, device)

    print(f"{'epoch':<8}{'imgpipe img/s':>15}{'bare img/s':>12}{'ratio':>8}")
    for i, (a, b) in enumerate(zip(ours, bare), 1):
        note = "  (imgpipe: incl. decoding)" if i == 1 else ""
        print(f"{i:<8}{a:>15.1f}{b:>12.1f}{a / b:>8.2f}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
