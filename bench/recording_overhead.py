"""Cost of recording for the training-insight rules: training throughput with ``train.py``'s
recording on (``--tensorboard-dir``: per-step loss and timings, gradient statistics every 50
steps, activation inputs at the first 10 steps) against off, side by side in one run.

The same run (same rendered digits, seed and hyperparameters) is repeated in pairs, off/on then
on/off (interleaved and order-balanced, so load on a shared machine hits both alike).
Throughput is the mean ``images_per_second`` of the epochs after the first (warm-up). The
figure is the median of the per-pair ratios on/off (robust to load drifting between pairs),
next to the ratio of the medians.

    .venv/bin/python bench/recording_overhead.py [--repeats 3] [--per-class 40] [--epochs 3]

Prints one line per run and the ratio on / off (target >= 0.95). Not a test.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EPOCH_RE = re.compile(r"^epoch=(\d+) .*images_per_second=([0-9.]+)", re.M)


def run_once(record: bool, data: Path, work: Path, args: argparse.Namespace) -> float:
    """Mean images/second of the epochs after the first, for one run."""
    out = work / ("on" if record else "off")
    cmd = [sys.executable, str(REPO / "training" / "train.py"), "--train-dir", str(data), "--valid-dir", str(data),
           "--model-dir", str(out / "model"), "--output-data-dir", str(out / "data"),
           "--checkpoint-dir", str(out / "checkpoints"), "--tensorboard-dir", str(out / "tb") if record else "",
           "--epochs", str(args.epochs), "--image-size", str(args.image_size), "--batch-size", "32",
           "--workers", str(args.workers), "--pretrained", "true"]
    env = {"PYTHONPATH": str(REPO / "training"), "PATH": "/usr/bin:/bin", "SMDEBUG_CONFIG_FILE_PATH": str(work / "none.json"),
           "TENSORBOARD_CONFIG_FILE_PATH": str(work / "none.json"), **{k: v for k, v in os.environ.items()
                                                                       if k in ("TORCH_HOME", "HOME")}}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    rates = [float(rate) for epoch, rate in EPOCH_RE.findall(result.stdout) if int(epoch) > 1]
    subprocess.run(["rm", "-rf", str(out)], check=True)
    return statistics.mean(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from pipelines.datasets import sample_dataset

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sample_dataset("digits", work / "digits", per_class=args.per_class)
        rates: dict[bool, list[float]] = {False: [], True: []}
        for repeat in range(args.repeats):
            for record in ((False, True) if repeat % 2 == 0 else (True, False)):
                rate = run_once(record, work / "digits", work, args)
                rates[record].append(rate)
                print(f"repeat={repeat + 1} recording={'on' if record else 'off'} images_per_second={rate:.1f}", flush=True)
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    pairs = [b / a for a, b in zip(rates[False], rates[True])]
    print("pair ratios on/off: " + " ".join(f"{r:.3f}" for r in pairs))
    print(f"median images/s: off {off:.1f}, on {on:.1f}; ratio of medians {on / off:.3f}; "
          f"median pair ratio {statistics.median(pairs):.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
