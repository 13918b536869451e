"""The local endpoint's latency, throughput and memory, against the handler called in-process.

Deploys a model with :class:`pipelines.local.hosting.LocalHosting` (a real server process on
127.0.0.1, waitress, ``inference/inference.py``) in a temporary home and sends single PNG
images to ``POST /invocations`` from keep-alive HTTP clients (one connection per client
thread, like an SDK's connection pool), at concurrency 1 and 8. The same images go through
``input_fn`` → ``predict_fn`` → ``output_fn`` called in this process, with the same torch
thread count, in the same run. Prints per mode p50/p99 latency (ms) and throughput
(requests/s), the HTTP overhead at concurrency 1 (p50 and mean, target <= 20 %), and the server
process's RSS after 100 and after 10,000 requests.

The model is MobileNetV2 with random weights (serving cost does not depend on training), at
``--image-size`` (64 px: train.py's default), 10 classes; images are real PNGs of that size.

    .venv/bin/python bench/endpoint_latency.py                    # 10,000 requests for the RSS figure
    .venv/bin/python bench/endpoint_latency.py --requests 2000 --image-size 224
"""
from __future__ import annotations

import argparse
import http.client
import importlib.util
import io
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def run(call, payloads: list[bytes], requests: int, concurrency: int) -> dict:
    """``requests`` calls spread over ``concurrency`` threads; latencies (s) and throughput."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_thread = [requests // concurrency + (1 if i < requests % concurrency else 0) for i in range(concurrency)]

    def worker(index: int) -> None:
        state: dict = {}
        mine = []
        for i in range(per_thread[index]):
            body = payloads[(index + i * concurrency) % len(payloads)]
            start = time.perf_counter()
            call(body, state)
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    wall = time.perf_counter() - start
    return {"p50": percentile(latencies, 50) * 1000, "p99": percentile(latencies, 99) * 1000,
            "mean": statistics.fmean(latencies) * 1000, "rps": len(latencies) / wall, "n": len(latencies)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per latency measurement")
    parser.add_argument("--rss-requests", type=int, default=10_000, help="requests before the second RSS reading")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads, in-process and in the server")
    parser.add_argument("--server-threads", type=int, default=4, help="waitress request threads")
    args = parser.parse_args()

    import torch
    from PIL import Image

    from imgclf.artifact import create_archive, save_model
    from imgclf.models import IMAGENET_MEAN, IMAGENET_STD, build_model
    from pipelines.local.hosting import LocalHosting
    from pipelines.local.object_store import ObjectStore
    from pipelines.settings import Settings

    torch.set_num_threads(args.torch_threads)
    os.environ["IMGPIPE_TORCH_THREADS"] = str(args.torch_threads)
    os.environ["IMGPIPE_SERVER_THREADS"] = str(args.server_threads)
    rng = torch.Generator().manual_seed(0)
    payloads = []
    for i in range(32):
        pixels = torch.randint(0, 256, (args.image_size, args.image_size, 3), generator=rng, dtype=torch.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels.numpy()).save(buffer, "PNG")
        payloads.append(buffer.getvalue())

    with tempfile.TemporaryDirectory(prefix="imgpipe-bench-") as tmp:
        model_dir = Path(tmp) / "model"
        torch.manual_seed(0)
        save_model(model_dir, build_model("mobilenet_v2", 10, pretrained=False).eval(),
                   {"arch": "mobilenet_v2", "classes": [f"class_{i}" for i in range(10)],
                    "image_size": args.image_size, "normalize": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}})

        # in-process: the handler functions, as the server calls them
        spec = importlib.util.spec_from_file_location("bench_inference", ROOT / "inference" / "inference.py")
        handler = importlib.util.module_from_spec(spec)
        sys.modules["bench_inference"] = handler
        spec.loader.exec_module(handler)
        model = handler.model_fn(str(model_dir))

        def in_process(body: bytes, state: dict) -> None:
            handler.output_fn(handler.predict_fn(handler.input_fn(body, "image/png"), model), "application/json")

        settings = Settings(home=Path(tmp) / "home")
        store = ObjectStore(settings.s3_root)
        uri = "s3://imgpipe-local/bench/model.tar.gz"
        store.path(uri).parent.mkdir(parents=True, exist_ok=True)
        create_archive(model_dir, store.path(uri))
        hosting = LocalHosting(settings, port=0)
        hosting.deploy("bench", {"ModelPackageArn": "arn:aws:sagemaker:us-east-1:000000000000:model-package/bench/1",
                                            "ModelDataUrl": uri}, instance_type="local", instance_count=1,
                                  data_capture_percent=0)
        endpoint = hosting.describe_endpoint("bench")
        port, pid = endpoint["Port"], endpoint["Pid"]

        def over_http(body: bytes, state: dict) -> None:
            conn = state.get("conn")
            if conn is None:
                conn = state["conn"] = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", "/invocations", body=body, headers={"Content-Type": "image/png"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}")

        try:
            for call in (in_process, over_http):  # warm-up
                run(call, payloads, 50, 1)
            rss_100 = None
            results = {}
            for concurrency in (1, 8):
                # interleave the two so both see the same machine load
                results[("in-process", concurrency)] = run(in_process, payloads, args.requests, concurrency)
                results[("http", concurrency)] = run(over_http, payloads, args.requests, concurrency)
            # memory: a fresh server process, 100 requests, then up to --rss-requests in all
            hosting.delete_endpoint("bench")
            hosting.deploy("bench", {"ModelPackageArn": "arn:aws:sagemaker:us-east-1:000000000000:model-package/bench/2",
                                     "ModelDataUrl": uri}, instance_type="local", instance_count=1, data_capture_percent=0)
            endpoint = hosting.describe_endpoint("bench")
            port, pid = endpoint["Port"], endpoint["Pid"]
            run(over_http, payloads, 100, 1)
            rss_100 = rss_mib(pid)
            run(over_http, payloads, args.rss_requests - 100, 8)
            rss_10k = rss_mib(pid)
        finally:
            hosting.delete_endpoint("bench")

    print(f"local endpoint vs in-process handler: MobileNetV2 {args.image_size}px, 10 classes, PNG "
          f"{statistics.fmean(map(len, payloads)) / 1024:.1f} KiB, torch threads {args.torch_threads}, "
          f"waitress threads {args.server_threads}, {os.cpu_count()} CPUs, {args.requests} requests per row")
    print(f"{'mode':<12}{'conc':>5}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}{'req/s':>10}")
    for (mode, concurrency), r in results.items():
        print(f"{mode:<12}{concurrency:>5}{r['p50']:>10.2f}{r['p99']:>10.2f}{r['mean']:>10.2f}{r['rps']:>10.1f}")
    base, http_ = results[("in-process", 1)], results[("http", 1)]
    print(f"HTTP overhead at concurrency 1: p50 {100 * (http_['p50'] / base['p50'] - 1):+.1f}% "
          f"({http_['p50'] - base['p50']:+.2f} ms), mean {100 * (http_['mean'] / base['mean'] - 1):+.1f}% "
          f"(target <= 20%)")
    print(f"server RSS: {rss_100:.1f} MiB after 100 requests, {rss_10k:.1f} MiB after {args.rss_requests} "
          f"({rss_10k - rss_100:+.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
