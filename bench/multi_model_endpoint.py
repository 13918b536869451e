"""A local multi-model endpoint against a single-model one: cold loads, warm latency, memory.

In one run, with :class:`pipelines.local.hosting.LocalHosting` (real server processes on
127.0.0.1) in a temporary home:

- a single-model endpoint serving model 1, and a multi-model endpoint serving ``--models``
  versions (``v1/model.tar.gz`` ...) with ``IMGPIPE_MME_MAX_MODELS=--limit``;
- cold first request per target model (archive extraction, ``model_fn``, warm-up, prediction);
- warm p50/p99 of ``POST /invocations`` on a loaded target against the single-model endpoint,
  interleaved in rounds so both see the same machine load (target: multi-model p50 within 10 %);
- the multi-model server's resident memory (VmRSS) after cycling ``--cycles`` times through all
  targets (more than the limit, so every cycle loads and evicts), against the bound
  ``RSS(no model) + (limit + 1) * (RSS(one model) - RSS(no model))`` (target: under it).

Models are MobileNetV2 with random weights (serving cost does not depend on training), 10
classes, at ``--image-size``; each version has its own weights. Requests are real PNG images.

    .venv/bin/python bench/multi_model_endpoint.py
    .venv/bin/python bench/multi_model_endpoint.py --models 6 --limit 3 --requests 2000
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from endpoint_latency import percentile, rss_mib  # noqa: E402

ARN = "arn:aws:sagemaker:us-east-1:000000000000:model-package/bench/{}"


class Client:
    """One keep-alive connection to an endpoint's ``POST /invocations``."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def invoke(self, body: bytes, target: str | None = None) -> float:
        headers = {"Content-Type": "image/png", **({"X-Amzn-SageMaker-Target-Model": target} if target else {})}
        start = time.perf_counter()
        self.conn.request("POST", "/invocations", body=body, headers=headers)
        response = self.conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status} for target {target}")
        return elapsed


def ping(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/ping")
    return json.loads(conn.getresponse().read())


def make_packages(store, count: int, image_size: int) -> list[dict]:
    """``count`` model packages, each a MobileNetV2 archive with its own random weights."""
    import torch

    from imgclf.artifact import create_archive, save_model
    from imgclf.models import IMAGENET_MEAN, IMAGENET_STD, build_model

    packages = []
    with tempfile.TemporaryDirectory(prefix="imgpipe-bench-models-") as tmp:
        for version in range(1, count + 1):
            torch.manual_seed(version)
            model_dir = Path(tmp) / f"v{version}"
            save_model(model_dir, build_model("mobilenet_v2", 10, pretrained=False).eval(),
                       {"arch": "mobilenet_v2", "classes": [f"class_{i}" for i in range(10)], "image_size": image_size,
                        "normalize": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}})
            uri = f"s3://imgpipe-local/bench/v{version}/model.tar.gz"
            store.path(uri).parent.mkdir(parents=True, exist_ok=True)
            create_archive(model_dir, store.path(uri))
            packages.append({"ModelPackageArn": ARN.format(version), "ModelPackageVersion": version,
                             "ModelDataUrl": uri})
    return packages


def images(count: int, size: int) -> list[bytes]:
    import torch
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        pixels = torch.randint(0, 256, (size, size, 3), generator=rng, dtype=torch.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels.numpy()).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def warm_latency(single: Client, multi: Client, target: str, payloads: list[bytes], requests: int,
                 rounds: int = 5) -> dict[str, list[float]]:
    """Latencies (s) of both endpoints, interleaved in ``rounds`` so both see the same load."""
    times: dict[str, list[float]] = {"single-model": [], "multi-model": []}
    per_round = max(1, requests // rounds)
    for r in range(rounds):
        for i in range(per_round):
            body = payloads[(r * per_round + i) % len(payloads)]
            times["single-model"].append(single.invoke(body))
            times["multi-model"].append(multi.invoke(body, target))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=5, help="versions behind the multi-model endpoint")
    parser.add_argument("--limit", type=int, default=2, help="IMGPIPE_MME_MAX_MODELS of the endpoint")
    parser.add_argument("--requests", type=int, default=1000, help="warm requests per endpoint")
    parser.add_argument("--cycles", type=int, default=3, help="passes over all targets for the memory figure")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads of each server")
    args = parser.parse_args()
    if args.models <= args.limit:
        parser.error("--models must exceed --limit (the memory figure needs evictions)")

    from pipelines.local.hosting import LocalHosting
    from pipelines.local.object_store import ObjectStore
    from pipelines.settings import Settings

    os.environ["IMGPIPE_TORCH_THREADS"] = str(args.torch_threads)
    os.environ["IMGPIPE_MME_MAX_MODELS"] = str(args.limit)
    payloads = images(32, args.image_size)
    with tempfile.TemporaryDirectory(prefix="imgpipe-bench-") as tmp:
        settings = Settings(home=Path(tmp) / "home")
        packages = make_packages(ObjectStore(settings.s3_root), args.models, args.image_size)
        hosting = LocalHosting(settings, port=0)
        options = dict(instance_type="local", instance_count=1, data_capture_percent=0)
        try:
            hosting.deploy("bench-single", packages[0], **options)
            hosting.deploy_multi_model("bench-multi", packages, **options)
            single_ep, multi_ep = hosting.describe_endpoint("bench-single"), hosting.describe_endpoint("bench-multi")
            single, multi = Client(single_ep["Port"]), Client(multi_ep["Port"])
            pid, targets = multi_ep["Pid"], multi_ep["TargetModels"]
            rss_empty = rss_mib(pid)
            cold = []
            for number, target in enumerate(targets):
                cold.append((target, multi.invoke(payloads[0], target), multi.invoke(payloads[1], target)))
                if number == 0:
                    rss_one = rss_mib(pid)
            for body in payloads[:20]:  # warm both before timing
                single.invoke(body)
                multi.invoke(body, targets[-1])
            times = warm_latency(single, multi, targets[-1], payloads, args.requests)
            for _ in range(args.cycles):
                for target in targets:
                    multi.invoke(payloads[0], target)
            rss_after, state = rss_mib(pid), ping(multi_ep["Port"])
        finally:
            for name in ("bench-single", "bench-multi"):
                hosting.delete_endpoint(name)
    report(args, cold, times, (rss_empty, rss_one, rss_after), state)
    return 0


def report(args: argparse.Namespace, cold: list, times: dict, rss: tuple, state: dict) -> None:
    print(f"multi-model vs single-model local endpoint: MobileNetV2 {args.image_size}px, 10 classes, "
          f"{args.models} versions, IMGPIPE_MME_MAX_MODELS={args.limit}, torch threads {args.torch_threads}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'target model':<20}{'cold first ms':>15}{'next ms':>10}")
    for target, first, second in cold:
        print(f"{target:<20}{first * 1000:>15.1f}{second * 1000:>10.1f}")
    print(f"\nwarm, {len(times['single-model'])} requests each, interleaved:")
    print(f"{'endpoint':<14}{'p50 ms':>10}{'p99 ms':>10}")
    p50 = {}
    for mode, values in times.items():
        p50[mode] = percentile(values, 50) * 1000
        print(f"{mode:<14}{p50[mode]:>10.2f}{percentile(values, 99) * 1000:>10.2f}")
    drift = 100 * (p50["multi-model"] / p50["single-model"] - 1)
    print(f"multi-model p50 vs single-model: {drift:+.1f}% (target within 10%: {'met' if drift <= 10 else 'MISSED'})")
    empty, one, after = rss
    per_model = one - empty
    bound = empty + (args.limit + 1) * per_model
    print(f"\nmulti-model server RSS: {empty:.1f} MiB with no model, {one:.1f} MiB with one "
          f"({per_model:+.1f} MiB per model); after {args.cycles} cycles over {args.models} targets: "
          f"{after:.1f} MiB, {len(state['loaded_models'])} models loaded, {state['model_loads']} loads, "
          f"{state['model_evictions']} evictions")
    print(f"bound RSS(no model) + (limit + 1) x per model = {bound:.1f} MiB: "
          f"{'under it' if after <= bound else 'OVER IT'}")


if __name__ == "__main__":
    sys.exit(main())
