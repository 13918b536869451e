"""Reliability figures of inference/serve.py: junk payloads by kind, held connections, load.

Starts a real server (an untrained 32 px MobileNetV2: the answers are not the point) and prints
(1) the status each kind of junk payload gets and its latency, (2) /ping latency on the health
and main ports while N idle/slow connections are held on the main port, (3) concurrency-8 load
of valid images for D seconds: requests, errors, p50/p99 latency, server RSS before and after.

    PYTHONPATH=.:training python bench/reliability.py --held 500 --seconds 60
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from PIL import Image  # noqa: E402

from test_serve_hostile import SERVE, png, request, rss_bytes  # noqa: E402
from endpoint_helpers import untrained_model  # noqa: E402


def junk_payloads() -> dict[str, tuple[bytes, str]]:
    good = png(32, 32)
    jpeg = io.BytesIO()
    Image.new("RGB", (32, 32)).save(jpeg, "JPEG")
    return {
        "png 100000x1 (370 B)": (png(100_000, 1), "image/png"),
        "png 1000000x1 (3 kB)": (png(1_000_000, 1), "image/png"),
        "png 500x20 (aspect 25, within limits)": (png(500, 20), "image/png"),
        "truncated png": (good[: len(good) // 2], "image/png"),
        "random bytes": (bytes(range(256)) * 20, "image/png"),
        "empty body": (b"", "image/png"),
        "text/csv": (good, "text/csv"),
        "malformed json": (b'{"image": "abc', "application/json"),
        "json url": (b'{"url": "http://example.com/x.jpg"}', "application/json"),
        "bad base64": (b'{"image": "!!!"}', "application/json"),
        "jpeg as image/png": (jpeg.getvalue(), "image/png"),
        "valid png": (good, "image/png"),
    }

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--held", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imgpipe-reliability-"))
    model_dir = untrained_model(work / "model")
    ready = work / "ready.json"
    proc = subprocess.Popen([sys.executable, str(SERVE), "--model-dir", str(model_dir), "--port", "0",
                             "--ready-file", str(ready), "--threads", "4", "--torch-threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not ready.is_file():
        if proc.poll() is not None:
            raise SystemExit("the server did not start")
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    port, health, pid = info["public_port"], info["health_port"], proc.pid
    print("== junk payloads ==")
    for kind, (body, ctype) in junk_payloads().items():
        start = time.perf_counter()
        status, answer = request(port, "POST", "/invocations", body, {"Content-Type": ctype})
        ms = (time.perf_counter() - start) * 1000
        message = json.loads(answer)
        print(f"{kind:34s} {status} {ms:7.1f} ms  {str(message.get('error', 'ok'))[:70] if isinstance(message, dict) else 'ok'}")
    print(f"\n== {args.held} held connections on the main port (half with unfinished headers) ==")
    with ExitStack() as stack:
        import socket
        for i in range(args.held):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
            if i % 2:
                sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
        for name, p in (("health port /ping", health), ("main port /ping", port)):
            times = []
            for _ in range(20):
                start = time.perf_counter()
                status, _ = request(p, "GET", "/ping", timeout=10)
                times.append((time.perf_counter() - start) * 1000)
            print(f"{name:20s} status {status}  median {statistics.median(times):.1f} ms  max {max(times):.1f} ms")
        start = time.perf_counter()
        status, _ = request(port, "POST", "/invocations", png(32, 32), {"Content-Type": "image/png"}, timeout=10)
        print(f"valid invocation     status {status}  {(time.perf_counter() - start) * 1000:.1f} ms")
    print(f"\n== load: concurrency {args.concurrency} for {args.seconds:.0f} s ==")
    body = png(32, 32)
    latencies: list[float] = []
    errors = [0]
    deadline = time.monotonic() + args.seconds
    rss_before = rss_bytes(pid)

    def client() -> None:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                status, _ = request(port, "POST", "/invocations", body, {"Content-Type": "image/png"})
            except OSError:
                status = 0
            latencies.append((time.perf_counter() - start) * 1000)
            if status != 200:
                errors[0] += 1

    threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    print(f"requests {len(latencies)}  errors {errors[0]}  p50 {latencies[len(latencies) // 2]:.1f} ms  "
          f"p99 {latencies[int(len(latencies) * 0.99)]:.1f} ms  RSS before {rss_before / 2**20:.0f} MiB  "
          f"after {rss_bytes(pid) / 2**20:.0f} MiB")
    proc.terminate()
    proc.wait(30)
    return 0

if __name__ == "__main__":
    sys.exit(main())
