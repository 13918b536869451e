"""inference/serve.py against hostile clients: a real server process, real loopback sockets.

Long thin PNGs of a few hundred bytes (which a naive resize would blow up to gigabytes) are
refused from their header in milliseconds without memory growth; hundreds of idle or slow
held-open connections starve neither the health port's ``/ping`` nor valid requests; slow
clients are cut off; captured request bodies are private to this user.
"""
from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from contextlib import ExitStack

import pytest
from PIL import Image

from endpoint_helpers import REPO, untrained_model, wait_until_ready

SERVE = REPO / "inference" / "serve.py"
TIMEOUTS = 3  # --idle-timeout and --request-timeout of the server under test, seconds
RESIZED_LIMIT = 20_000  # IMGPIPE_MAX_RESIZED_PIXELS: a 32 px model, so 500x20 grows to 800x32


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model_dir = untrained_model(tmp_path_factory.mktemp("hostile-model") / "model")
    work = tmp_path_factory.mktemp("hostile")
    ready = work / "ready.json"
    env = {**os.environ, "IMGPIPE_MAX_RESIZED_PIXELS": str(RESIZED_LIMIT)}
    with open(work / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(SERVE), "--model-dir", str(model_dir), "--port", "0", "--ready-file", str(ready),
             "--threads", "2", "--torch-threads", "1", "--max-connections", "64",
             "--idle-timeout", str(TIMEOUTS), "--request-timeout", str(TIMEOUTS),
             "--capture-dir", str(work / "capture"), "--capture-percent", "100"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_until_ready(proc, ready, work / "server.log")
        info = json.loads(ready.read_text())
        yield {"port": info["public_port"], "health": info["health_port"], "proc": proc, "work": work}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def request(port, method, path, body=None, headers=None, timeout=10.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def timed_invoke(port, body):
    start = time.perf_counter()
    status, answer = request(port, "POST", "/invocations", body, {"Content-Type": "image/png"})
    return time.perf_counter() - start, status, json.loads(answer)


@pytest.mark.parametrize("width, max_bytes", [(100_000, 500), (1_000_000, 4_000)])
def test_long_thin_png_refused_in_milliseconds_without_memory_growth(server, width, max_bytes):
    body = png(width, 1)
    assert len(body) <= max_bytes  # a few hundred bytes / ~3 kB: what a hostile client sends
    request(server["port"], "GET", "/ping")
    before = rss_bytes(server["proc"].pid)
    times = []
    for _ in range(3):
        seconds, status, error = timed_invoke(server["port"], body)
        assert status == 400, error
        assert "aspect ratio" in error["error"] and "IMGPIPE_MAX_ASPECT_RATIO" in error["error"], error
        assert f"{width}x1" in error["error"]
        times.append(seconds)
    assert sorted(times)[1] < 0.1, times
    assert rss_bytes(server["proc"].pid) - before < 50 * 2**20


def test_image_that_would_resize_over_the_limit_gets_413(server):
    seconds, status, error = timed_invoke(server["port"], png(500, 20))  # aspect 25: under 32
    assert status == 413, error
    assert "IMGPIPE_MAX_RESIZED_PIXELS" in error["error"] and "800x32" in error["error"], error
    seconds, status, answer = timed_invoke(server["port"], png(40, 32))  # 40x32 is fine
    assert status == 200 and answer[0]["label"], answer


def test_health_port_serves_get_and_head_ping_only(server):
    health = server["health"]
    assert health != server["port"]
    status, body = request(health, "GET", "/ping")
    assert status == 200 and json.loads(body)["status"] == "Healthy"
    assert request(health, "HEAD", "/ping")[0] == 200
    status, body = request(health, "POST", "/invocations", png(32, 32), {"Content-Type": "image/png"})
    assert status == 404 and "GET /ping only" in json.loads(body)["error"]
    assert request(health, "POST", "/ping", b"x")[0] == 405
    assert request(server["port"], "GET", "/ping")[0] == 200  # SageMaker's /ping stays on the main port


def _open_many(stack: ExitStack, port: int, count: int, partial: bool) -> list[socket.socket]:
    sockets = []
    for i in range(count):
        sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
        if partial and i % 2:  # a slow client: headers that never finish
            sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n")
        sockets.append(sock)
    return sockets


def test_500_held_connections_starve_neither_ping_nor_requests(server):
    good = png(32, 32)
    with ExitStack() as stack:
        _open_many(stack, server["port"], 500, partial=True)
        _open_many(stack, server["health"], 100, partial=False)
        start = time.perf_counter()
        status, _ = request(server["health"], "GET", "/ping", timeout=5)
        assert status == 200 and time.perf_counter() - start < 1.0
        for _ in range(5):  # valid requests: answered (or a quick 503), never a hang
            start = time.perf_counter()
            status, body = request(server["port"], "POST", "/invocations", good, {"Content-Type": "image/png"},
                                   timeout=5)
            assert status in (200, 503) and time.perf_counter() - start < 3.0, body
            assert status == 200, body  # idle connections are evicted, so nothing is busy here
        start = time.perf_counter()
        assert request(server["port"], "GET", "/ping", timeout=5)[0] == 200
        assert time.perf_counter() - start < 1.0


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_idle_and_slow_connections_are_cut_off(server):
    idle = socket.create_connection(("127.0.0.1", server["port"]))
    slow = socket.create_connection(("127.0.0.1", server["port"]))
    with idle, slow:
        slow.sendall(b"POST /invocations HTTP/1.1\r\n")
        start = time.monotonic()
        while time.monotonic() - start < TIMEOUTS + 3:  # one header byte a second keeps it "active"
            slow.sendall(b"X")
            time.sleep(0.5)
            slow.settimeout(0.01)
            try:
                if slow.recv(1024) == b"":
                    break
            except socket.timeout:
                continue
            except ConnectionResetError:
                break
        else:
            pytest.fail("a client trickling its headers was never cut off")
        assert time.monotonic() - start >= TIMEOUTS - 0.5
        assert _closed_by_server(idle, within=3)


def test_captured_requests_are_private(server):
    status, _ = request(server["port"], "POST", "/invocations", png(32, 32), {"Content-Type": "image/png"})
    assert status == 200
    files = list((server["work"] / "capture").rglob("*.jsonl"))
    assert files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        for parent in path.relative_to(server["work"] / "capture").parents:
            if str(parent) != ".":
                assert stat.S_IMODE((server["work"] / "capture" / parent).stat().st_mode) == 0o700
