"""Training throughput of train.py's ``run_epoch`` on a GPU in four precision/layout variants.

float32 or bfloat16 autocast, each with the model in PyTorch's default (NCHW) or channels-last
memory format; same data, model and batches, one process, variants in turn. Prints images/s
per epoch (the first epoch of each variant includes its kernels' start-up).

    python3 bench/gpu_precision.py --data DIR [--epochs 3] [--batch-size 128] [--image-size 64]

DIR: class folders of images (e.g. the train split that bench/gpu_check.sh makes).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))

import train  # noqa: E402  (training/train.py)
from imgclf.data import list_image_folder, make_loader  # noqa: E402
from imgclf.models import build_model  # noqa: E402

VARIANTS = (("float32", None, False), ("float32, channels-last", None, True),
            ("bfloat16", torch.bfloat16, False), ("bfloat16, channels-last", torch.bfloat16, True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="class folders of images")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decode processes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda (or cpu, to try it)")
    args = parser.parse_args()
    device = torch.device(args.device)
    classes, samples = list_image_folder(args.data)
    batches = make_loader(samples, args.image_size, args.batch_size, True, 4 << 30, args.workers, 0)
    print(f"{len(samples)} images, {args.image_size} px, batch {args.batch_size}, {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}\n")
    print(f"{'variant':<26}" + "".join(f"{f'epoch {e} img/s':>16}" for e in range(1, args.epochs + 1)))
    for name, dtype, channels_last in VARIANTS:
        model = build_model("mobilenet_v2", len(classes), False).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        rates = []
        for _ in range(args.epochs):
            model.train()
            stats = train.run_epoch(model, batches, nn.CrossEntropyLoss(), device,
                                    optimizer, scheduler, None, True, None, dtype)
            rates.append(stats["images"] / stats["seconds"])
        print(f"{name:<26}" + "".join(f"{r:>16,.0f}" for r in rates), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
