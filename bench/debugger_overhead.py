"""Cost of the SageMaker Debugger hook: training throughput with the hook on against off.

The same ``training/train.py`` run (same rendered digits, seed and hyperparameters) is
repeated with no hook config (off), with a hook config naming no collections (smdebug's
default collections: what ``DebuggerHookConfig()`` alone gives), and with the pipeline's
collections (losses every 10 steps; weights, gradients every 50). Runs are interleaved
(off, default, pipeline, off, ...) so that load on a shared machine hits all alike.
Throughput is the mean ``images_per_second`` of the epochs after the first (warm-up).

    .venv/bin/python bench/debugger_overhead.py [--repeats 3] [--per-class 40] [--epochs 3]

Prints one line per run and the ratios hook-on / hook-off (target >= 0.9). Not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EPOCH_RE = re.compile(r"^epoch=(\d+) .*images_per_second=([0-9.]+)", re.M)
PIPELINE_COLLECTIONS = [
    {"CollectionName": "losses", "CollectionParameters": {"save_interval": "10"}},
    {"CollectionName": "weights", "CollectionParameters": {"save_interval": "50"}},
    {"CollectionName": "gradients", "CollectionParameters": {"save_interval": "50"}},
]
VARIANTS = ("off", "default", "pipeline")


def hook_config(variant: str, work: Path) -> Path:
    """The hook config file for ``variant`` (a missing file for ``off``)."""
    path = work / f"hook-{variant}.json"
    if variant == "off":
        return path
    config: dict = {"LocalPath": str(work / f"tensors-{variant}")}
    if variant == "pipeline":
        config["CollectionConfigurations"] = PIPELINE_COLLECTIONS
    path.write_text(json.dumps(config))
    return path


def run_once(variant: str, data: Path, work: Path, args: argparse.Namespace) -> float:
    """Mean images/second of the epochs after the first, for one run."""
    out = work / f"run-{variant}"
    for sub in ("model", "output", "checkpoints"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for stale in (out / "checkpoints").glob("*"):
        stale.unlink()  # never resume: each run trains from scratch
    tensors = work / f"tensors-{variant}"
    if tensors.exists():
        subprocess.run(["rm", "-rf", str(tensors)], check=True)
    env = {**os.environ, "SMDEBUG_CONFIG_FILE_PATH": str(hook_config(variant, work)),
           "SMDEBUG_LOG_LEVEL": "warning", "OMP_NUM_THREADS": str(args.workers)}
    cmd = [sys.executable, "train.py", "--train-dir", str(data), "--valid-dir", str(data),
           "--model-dir", str(out / "model"), "--output-data-dir", str(out / "output"),
           "--checkpoint-dir", str(out / "checkpoints"), "--epochs", str(args.epochs),
           "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
           "--pretrained", "true", "--workers", str(args.workers), "--augment", "false"]
    done = subprocess.run(cmd, cwd=REPO / "training", env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{variant} run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    rates = [float(r) for e, r in EPOCH_RE.findall(done.stdout) if int(e) > 1]
    return statistics.mean(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant (interleaved)")
    parser.add_argument("--per-class", type=int, default=40, help="digits images per class")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is warm-up)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="threads per run")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from pipelines.datasets import sample_dataset

    with tempfile.TemporaryDirectory(prefix="imgpipe-bench-debugger-") as tmp:
        work = Path(tmp)
        sample_dataset("digits", work / "data", per_class=args.per_class)
        results: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for repeat in range(args.repeats):
            for variant in VARIANTS:
                rate = run_once(variant, work / "data", work, args)
                results[variant].append(rate)
                print(f"repeat {repeat + 1} hook={variant:<8} {rate:8.1f} images/s", flush=True)
    off = statistics.median(results["off"])
    print("\nmedian images/s: " + ", ".join(f"{v}={statistics.median(r):.1f}" for v, r in results.items()))
    for variant in VARIANTS[1:]:
        ratio = statistics.median(results[variant]) / off
        print(f"throughput hook {variant} / hook off: {ratio:.3f} (target >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
