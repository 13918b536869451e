"""inference/serve.py as a real process on a real socket: SageMaker's serving contract.

Every bad payload gets a 4xx JSON error naming the problem and the server stays healthy (the
next /ping is 200 and a good image is still classified right); concurrent requests, data
capture and a graceful SIGTERM are checked on the same server process.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from endpoint_helpers import REPO, trained_model, valid_images, wait_until_ready

SERVE = REPO / "inference" / "serve.py"
PAYLOAD_LIMIT = 200_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model_dir, data = trained_model(tmp_path_factory.getbasetemp() / "endpoint-model")
    work = tmp_path_factory.mktemp("serve")
    ready = work / "ready.json"
    env = {**os.environ, "IMGPIPE_MAX_PAYLOAD_BYTES": str(PAYLOAD_LIMIT), "IMGPIPE_MAX_IMAGE_PIXELS": "4000000"}
    log = open(work / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, str(SERVE), "--model-dir", str(model_dir), "--port", "0",
                             "--ready-file", str(ready), "--threads", "4", "--torch-threads", "1",
                             "--capture-dir", str(work / "capture"), "--capture-percent", "100"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_until_ready(proc, ready, work / "server.log")
        port = json.loads(ready.read_text())["public_port"]
        yield {"port": port, "proc": proc, "data": data, "work": work}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        payload = response.read()
        return response.status, response.getheader("Content-Type"), payload
    finally:
        conn.close()


def invoke(port, body, content_type="image/png", **headers):
    return request(port, "POST", "/invocations", body, {"Content-Type": content_type, **headers})


def png_bomb(width=50_000, height=50_000) -> bytes:
    """A valid PNG header declaring 2.5 G pixels, with a tiny (deflated zero) body."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


def assert_healthy_and_right(server):
    status, _, body = request(server["port"], "GET", "/ping")
    assert status == 200 and json.loads(body)["status"] == "Healthy"
    path, cls = valid_images(server["data"])[0]
    status, _, body = invoke(server["port"], path.read_bytes())
    assert status == 200 and json.loads(body)[0]["label"] == cls


def test_ping_and_correct_top_k(server):
    status, ctype, body = request(server["port"], "GET", "/ping")
    assert status == 200 and ctype == "application/json"
    images = valid_images(server["data"])
    correct = 0
    for path, cls in images:
        status, ctype, body = invoke(server["port"], path.read_bytes())
        assert status == 200 and ctype == "application/json"
        answer = json.loads(body)
        assert [a["label"] for a in answer] and sorted(a["index"] for a in answer) == [0, 1, 2]
        assert abs(sum(a["probability"] for a in answer) - 1) < 1e-4
        assert answer == sorted(answer, key=lambda a: -a["probability"])
        correct += answer[0]["label"] == cls
    assert correct / len(images) >= 0.9
    # the JSON form: one base64 image, and a batch
    path, cls = images[-1]
    b64 = base64.b64encode(path.read_bytes()).decode()
    status, _, body = invoke(server["port"], json.dumps({"image": b64}), "application/json")
    assert status == 200 and json.loads(body)[0]["label"] == cls
    status, _, body = invoke(server["port"], json.dumps([b64, b64]), "application/json; charset=utf-8")
    assert status == 200 and [a[0]["label"] for a in json.loads(body)] == [cls, cls]


@pytest.mark.parametrize("case", [
    "empty", "random-bytes", "wrong-content-type", "no-content-type", "oversized", "oversized-json",
    "decompression-bomb", "huge-bomb", "malformed-json", "json-without-image", "bad-base64", "url", "truncated-png",
    "accept-csv", "get-invocations", "unknown-path",
])
def test_bad_requests_get_json_4xx_and_server_stays_healthy(server, case):
    port = server["port"]
    good = valid_images(server["data"])[0][0].read_bytes()
    rng = __import__("random").Random(case)
    expected, words = {
        "empty": (400, "empty request body"),
        "random-bytes": (400, "not a decodable image"),
        "wrong-content-type": (415, "unsupported content type 'text/csv'"),
        "no-content-type": (415, "unsupported content type"),
        "oversized": (413, "payload too large"),
        "oversized-json": (413, "payload too large"),
        "decompression-bomb": (413, "pixels exceeds the limit"),
        "huge-bomb": (413, "decompression bomb"),
        "malformed-json": (400, "malformed JSON"),
        "json-without-image": (400, 'no "image" or "images" key'),
        "bad-base64": (400, "base64"),
        "url": (400, "URLs are not fetched"),
        "truncated-png": (400, "image"),
        "accept-csv": (415, "cannot answer in 'text/csv'"),
        "get-invocations": (405, "use POST"),
        "unknown-path": (404, "not found"),
    }[case]
    if case == "empty":
        status, ctype, body = invoke(port, b"")
    elif case == "random-bytes":
        status, ctype, body = invoke(port, bytes(rng.getrandbits(8) for _ in range(5000)))
    elif case == "wrong-content-type":
        status, ctype, body = invoke(port, good, "text/csv")
    elif case == "no-content-type":
        status, ctype, body = request(port, "POST", "/invocations", good)
    elif case == "oversized":
        status, ctype, body = invoke(port, b"\x89PNG" + os.urandom(PAYLOAD_LIMIT + 10))
    elif case == "oversized-json":
        status, ctype, body = invoke(port, json.dumps({"image": "A" * (PAYLOAD_LIMIT + 10)}), "application/json")
    elif case == "decompression-bomb":  # over IMGPIPE_MAX_IMAGE_PIXELS (4 M here)
        status, ctype, body = invoke(port, png_bomb(10_000, 10_000))
    elif case == "huge-bomb":  # over PIL's own bomb limit as well
        status, ctype, body = invoke(port, png_bomb(50_000, 50_000))
    elif case == "malformed-json":
        status, ctype, body = invoke(port, b'{"image": "abc', "application/json")
    elif case == "json-without-image":
        status, ctype, body = invoke(port, b'{"picture": "abc"}', "application/json")
    elif case == "bad-base64":
        status, ctype, body = invoke(port, b'{"image": "!!!not base64!!!"}', "application/json")
    elif case == "url":
        status, ctype, body = invoke(port, b'{"url": "http://example.com/cat.jpg"}', "application/json")
    elif case == "truncated-png":
        status, ctype, body = invoke(port, good[: len(good) // 2])
    elif case == "accept-csv":
        status, ctype, body = invoke(port, good, Accept="text/csv")
    elif case == "get-invocations":
        status, ctype, body = request(port, "GET", "/invocations")
    else:
        status, ctype, body = request(port, "GET", "/predict")
    assert status == expected, body
    assert ctype == "application/json"
    error = json.loads(body)
    assert error["status"] == expected and words in error["error"], error
    assert_healthy_and_right(server)


def test_concurrent_requests_all_answered_consistently(server):
    images = valid_images(server["data"])[:16]
    expected = {}
    for path, _ in images:
        expected[path] = json.loads(invoke(server["port"], path.read_bytes())[2])

    def one(item):
        path, _ = item
        status, _, body = invoke(server["port"], path.read_bytes())
        return path, status, json.loads(body)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, images * 3))
    for path, status, answer in results:
        assert status == 200
        assert [a["label"] for a in answer] == [a["label"] for a in expected[path]]
        assert all(abs(a["probability"] - b["probability"]) < 1e-4 for a, b in zip(answer, expected[path]))


def test_data_capture_lines(server):
    invoke(server["port"], valid_images(server["data"])[0][0].read_bytes())
    files = list((server["work"] / "capture").rglob("*.jsonl"))
    assert files and files[0].relative_to(server["work"] / "capture").parts[0].isdigit()  # YYYY/MM/DD/HH
    record = json.loads(files[0].read_text().splitlines()[-1])
    data = record["captureData"]
    assert data["endpointInput"]["encoding"] == "BASE64" and data["endpointInput"]["mode"] == "INPUT"
    assert base64.b64decode(data["endpointInput"]["data"])[:4] == b"\x89PNG"
    assert json.loads(data["endpointOutput"]["data"])[0]["label"]
    assert record["eventMetadata"]["eventId"] and record["eventVersion"] == "0"


def test_sigterm_stops_gracefully(server):
    """Last test of the module: SIGTERM lets the requests in flight finish, then exits 0."""
    proc = server["proc"]
    conns = []
    for path, _ in valid_images(server["data"])[:4]:
        conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=60)
        conn.request("POST", "/invocations", body=path.read_bytes(), headers={"Content-Type": "image/png"})
        conns.append(conn)
    time.sleep(0.2)  # accepted and being handled
    os.kill(proc.pid, signal.SIGTERM)
    statuses = [conn.getresponse().status for conn in conns]
    for conn in conns:
        conn.close()
    assert proc.wait(40) == 0
    assert statuses == [200] * 4
    with pytest.raises(ConnectionRefusedError):
        request(server["port"], "GET", "/ping")
