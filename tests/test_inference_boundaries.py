"""Boundaries of the inference handler and the endpoint's routes, as they behave today:
a pixel limit is inclusive (exactly at the limit is accepted, one pixel over is refused),
URL detection ignores case, and ``HEAD /ping`` answers like ``GET /ping``."""
from __future__ import annotations

import base64
import http.client
import importlib.util
import io
import json
import sys
import threading
from pathlib import Path

import pytest
import waitress
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


inference = _load("imgpipe_inference_boundaries", REPO / "inference" / "inference.py")
serve = _load("imgpipe_serve_boundaries", REPO / "inference" / "serve.py")
JSON = "application/json"


@pytest.fixture(autouse=True)
def _default_limits(monkeypatch):
    for var in inference.Limits.ENV.values():
        monkeypatch.delenv(var, raising=False)


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def test_an_image_exactly_at_the_pixel_limit_is_accepted_one_over_is_refused(monkeypatch):
    monkeypatch.setenv("IMGPIPE_MAX_IMAGE_PIXELS", str(45 * 30))
    assert inference.input_fn(png(45, 30), "image/png").images[0].size == (45, 30)
    with pytest.raises(inference.PayloadTooLargeError, match="45x31 = 1395 pixels exceeds the limit of 1350"):
        inference.input_fn(png(45, 31), "image/png")
    monkeypatch.setenv("IMGPIPE_MAX_IMAGE_PIXELS", str(45 * 30 - 1))
    with pytest.raises(inference.PayloadTooLargeError, match="1350 pixels exceeds the limit of 1349"):
        inference.input_fn(png(45, 30), "image/png")


def test_a_request_exactly_at_the_total_pixel_limit_is_accepted(monkeypatch):
    monkeypatch.setenv("IMGPIPE_MAX_TOTAL_PIXELS", str(3 * 20 * 10))
    body = json.dumps({"images": [b64(png(20, 10))] * 3})
    assert len(inference.input_fn(body, JSON).images) == 3
    monkeypatch.setenv("IMGPIPE_MAX_TOTAL_PIXELS", str(3 * 20 * 10 - 1))
    with pytest.raises(inference.PayloadTooLargeError, match="600 pixels in all, over the limit of 599"):
        inference.input_fn(body, JSON)


@pytest.mark.parametrize("url", ["HTTPS://example.com/cat.png", "Http://example.com/cat.png",
                                 "S3://bucket/cat.png", "  FILE:///etc/passwd", "Gs://b/c.png"])
def test_urls_are_refused_whatever_their_case(url):
    for body in (json.dumps({"image": url}), json.dumps({"images": [url]})):
        with pytest.raises(inference.BadRequestError, match="looks like a URL"):
            inference.input_fn(body, JSON)


class _Handler:
    """Stands in for the inference module: /ping never reaches it."""

    @staticmethod
    def error_body(exc):
        return {"error": str(exc), "status": 500}


def call(app, method: str, path: str) -> tuple[str, bytes]:
    seen = {}
    body = b"".join(app({"REQUEST_METHOD": method, "PATH_INFO": path},
                        lambda status, headers: seen.update(status=status)))
    return seen["status"], body


def test_ping_answers_get_and_head_and_refuses_other_methods():
    app = serve.InferenceApp(_Handler(), None, info={"endpoint": "e"})
    for method in ("GET", "HEAD"):
        status, body = call(app, method, "/ping")
        assert status == "200 OK" and json.loads(body) == {"status": "Healthy", "endpoint": "e", "mode": "SingleModel"}
    for method in ("POST", "PUT", "DELETE"):
        status, body = call(app, method, "/ping")
        assert status == "405 Method Not Allowed" and method in json.loads(body)["error"]
    assert call(app, "HEAD", "/invocations")[0] == "405 Method Not Allowed"


def test_head_ping_over_a_real_socket():
    app = serve.InferenceApp(_Handler(), None)
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=1)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=10)
        conn.request("HEAD", "/ping")
        response = conn.getresponse()
        assert response.status == 200 and response.read() == b""  # HEAD: headers only
        assert int(response.getheader("Content-Length")) > 0
        conn.close()
    finally:
        server.close()
        thread.join(timeout=10)
