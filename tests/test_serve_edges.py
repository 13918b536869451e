"""inference/serve.py in this process, on real loopback sockets: the edges of the serving contract.

Pinned here, with a stand-in handler (inference.py's own errors and ``error_body``) so that no
model is loaded:

- routes: wrong methods get a JSON 405 on every route, the runtime route answers only to its
  own endpoint name, a single-model endpoint refuses a target model with 400, a model object
  that happens to have a ``get`` method is still served as the single model;
- request bodies: no, bad, negative and one-byte ``Content-Length``; an unexpected failure is a
  JSON 500 whose traceback goes to the log only;
- the health port: ``GET``/``HEAD /ping`` only;
- waitress's own refusals as JSON (413 naming the limit, 400, 501);
- data capture: the percentage is clamped to 0..100, a seeded capture samples exactly as its
  generator says, the records' shape and files;
- connections: slow (dribbling) requests are cut after the request timeout, patient ones and
  idle keep-alive connections are not, idle connections go after the idle timeout; at the
  connection limit the longest-idle connection makes room, and when all are busy a new client
  gets a quick JSON 503 and the server recovers;
- stopping: requests in flight and bodies still arriving are finished, idle keep-alive
  connections are closed, new connections are not served, and the server returns promptly;
- the control socket: private (0600), ``status``/``activate``/``getfd``/``stop``, unknown and
  malformed commands, a command without its newline, the 4 KiB command limit however the
  command arrives; the startup line says whether the server is on standby;
- model loading: a single model and each archive of a multi-model endpoint are loaded, warmed
  up on an image of the model's size, and their load times and cache limits logged;
- ``model_bytes`` counts parameters and buffers.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import os
import random
import re
import select
import socket
import stat
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from test_inference_boundaries import call, inference, serve

NAME = "digits"


class StandIn:
    """Stands in for inference.py: the answer names the model and the body's length.

    ``b"wait"`` blocks in ``predict_fn`` until :attr:`release` is set (each one entering
    releases :attr:`entered` once); ``b"boom"`` fails unexpectedly; an empty body is refused."""

    def __init__(self):
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()
        self.seen = []
        self.accepts = []

    def input_fn(self, body, content_type):
        self.seen.append((body, content_type))
        if not body:
            raise inference.BadRequestError("empty request body")
        if body == b"boom":
            raise RuntimeError("secret internals")
        return body

    def predict_fn(self, data, model):
        if data == b"wait":
            self.entered.release()
            assert self.release.wait(20)
        return {"model": model, "bytes": len(data)}

    def output_fn(self, prediction, accept):
        self.accepts.append(accept)
        return json.dumps(prediction)

    error_body = staticmethod(inference.error_body)


def app_for(model="model-a", handler=None, **kwargs):
    return serve.InferenceApp(handler or StandIn(), model, info={"endpoint_name": NAME}, **kwargs)


@contextmanager
def running(app=None, *, standby=False, control=None, ready=None, max_body=10_000, threads=2, **limits):
    """A ModelServer on fresh loopback sockets, its loop in a thread; stopped (and required to
    return within a few seconds) on exit."""
    app = app or app_for()
    public = socket.create_server(("127.0.0.1", 0))
    server = serve.ModelServer(app, public, threads=threads, max_body=max_body, standby=standby,
                               control_path=control, ready_file=ready, limits=serve.ConnectionLimits(**limits))
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    server.port = public.getsockname()[1]
    server.thread = thread
    try:
        yield server
    finally:
        if hasattr(app.handler, "release"):
            app.handler.release.set()
        if thread.is_alive():
            server.stop()
            thread.join(10)
        assert not thread.is_alive(), "the server did not stop"


def request(port, method, path, body=None, headers=None, timeout=5.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def wsgi(app, method, path, body=b"", **environ):
    """One WSGI call: (status line, headers, body); ``environ`` adds (or, as None, removes) keys."""
    import io

    env = {"REQUEST_METHOD": method, "PATH_INFO": path, "wsgi.input": io.BytesIO(body),
           "CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": "image/png"}
    env.update(environ)
    env = {k: v for k, v in env.items() if v is not None}
    seen = {}
    out = b"".join(app(env, lambda status, headers: seen.update(status=status, headers=dict(headers))))
    return seen["status"], seen["headers"], out


def connect(port, data=b""):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if data:
        sock.sendall(data)
    return sock


def closed_within(sock, seconds):
    """True once the server closes ``sock`` (EOF or reset) within ``seconds``; False if it is
    still open then. Data the server sends is read and skipped."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        readable, _, _ = select.select([sock], [], [], left)
        if readable:
            try:
                if not sock.recv(65536):
                    return True
            except (ConnectionResetError, BrokenPipeError):
                return True


def read_response(sock, timeout=5.0):
    """(status, body) of one HTTP response read from a raw socket."""
    sock.settimeout(timeout)
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, response.read()


def ping_request(host="x"):
    return f"GET /ping HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


# ------------------------------------------------------------------------------ routes
@pytest.mark.parametrize("path", ["/invocations", f"/endpoints/{NAME}/invocations", "/endpoints/other/invocations"])
@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE", "PUT", "PATCH"])
def test_invocation_routes_refuse_every_method_but_post_with_json_405(path, method):
    status, body = call(app_for(), method, path)
    assert status == "405 Method Not Allowed"
    error = json.loads(body)
    assert error["status"] == 405 and f"{method} not allowed" in error["error"] and "use POST" in error["error"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_ping_refuses_other_methods_with_json_405(method):
    status, body = call(app_for(), method, "/ping")
    assert status == "405 Method Not Allowed" and json.loads(body)["status"] == 405


@pytest.mark.parametrize("path", ["/", "/a", "/pingx", "/predict", "/invocationsx", "/endpoints/x/invocations/more"])
def test_unknown_paths_get_json_404(path):
    for method in ("GET", "POST"):
        status, body = call(app_for(), method, path)
        assert status == "404 Not Found" and json.loads(body)["status"] == 404 and "not found" in json.loads(body)["error"]


@pytest.mark.parametrize("name", ["aaa", "digit", "digitsz", "zzz"])
def test_runtime_route_answers_only_to_its_own_endpoint_name(name):
    app = app_for()
    status, _, body = wsgi(app, "POST", f"/endpoints/{name}/invocations", b"abc")
    assert status == "400 Bad Request"
    assert json.loads(body) == {"message": f"Endpoint {name} of account 000000000000 not found."}
    status, headers, body = wsgi(app, "POST", f"/endpoints/{NAME}/invocations", b"abc")
    assert status == "200 OK" and json.loads(body) == {"model": "model-a", "bytes": 3}
    assert headers["x-Amzn-Invoked-Production-Variant"] == "AllTraffic"


def test_single_model_endpoint_refuses_a_target_model_with_400():
    status, _, body = wsgi(app_for(), "POST", "/invocations", b"abc", HTTP_X_AMZN_SAGEMAKER_TARGET_MODEL="v1/model.tar.gz")
    assert status == "400 Bad Request"
    error = json.loads(body)
    assert error["status"] == 400 and "only for multi-model endpoints" in error["error"]


def test_a_model_with_a_get_method_is_still_served_as_the_single_model():
    model = {"weights": [1, 2]}  # has .get, but is the model, not a multi-model cache
    app = app_for(model)
    status, body = call(app, "GET", "/ping")
    assert status == "200 OK"
    assert json.loads(body) == {"status": "Healthy", "endpoint_name": NAME, "mode": "SingleModel"}
    status, _, body = wsgi(app, "POST", "/invocations", b"abcd")
    assert status == "200 OK" and json.loads(body) == {"model": model, "bytes": 4}


def multi_model_app(root):
    """A multi-model app over ``root`` whose loader answers with the archive's text, or fails on junk."""
    def load(archive):
        text = archive.read_text()
        if text == "junk":
            raise ValueError("not a gzip file")
        return text

    return app_for(serve.MultiModel(serve.ModelCache(root, load)))


def test_runtime_route_target_errors_are_validation_errors_below_422_and_model_errors_from_it(tmp_path):
    for name, text in (("v1", "model one"), ("v8", "junk")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.tar.gz").write_text(text)
    app = multi_model_app(tmp_path)
    route = f"/endpoints/{NAME}/invocations"
    status, _, body = wsgi(app, "POST", route, b"abc", HTTP_X_AMZN_SAGEMAKER_TARGET_MODEL="v1/model.tar.gz")
    assert status == "200 OK" and json.loads(body) == {"model": "model one", "bytes": 3}
    for target, fragment in (("../v1/model.tar.gz", "'..'"), ("v9/model.tar.gz", "not served by this endpoint"),
                             (None, "multi-model endpoint")):
        status, headers, body = wsgi(app, "POST", route, b"abc", HTTP_X_AMZN_SAGEMAKER_TARGET_MODEL=target)
        assert status == "400 Bad Request" and headers["x-amzn-ErrorType"].startswith("ValidationError:"), target
        assert fragment in json.loads(body)["message"]
    status, headers, body = wsgi(app, "POST", route, b"abc", HTTP_X_AMZN_SAGEMAKER_TARGET_MODEL="v8/model.tar.gz")
    assert status == "424 Failed Dependency" and headers["x-amzn-ErrorType"].startswith("ModelError:")
    error = json.loads(body)
    assert error["OriginalStatusCode"] == 422 and "failed to load" in json.loads(error["OriginalMessage"])["error"]
    # the container route answers with the target error's own status
    for target, code in (("v9/model.tar.gz", 404), ("v8/model.tar.gz", 422), (None, 400)):
        status, _, body = wsgi(app, "POST", "/invocations", b"abc", HTTP_X_AMZN_SAGEMAKER_TARGET_MODEL=target)
        assert status.startswith(str(code)) and json.loads(body)["status"] == code, target


@pytest.mark.parametrize("body, original", [(b"", 400), (b"boom", 500)])
def test_handler_failures_on_the_runtime_route_are_model_errors_with_the_original_status(body, original):
    status, headers, answer = wsgi(app_for(), "POST", f"/endpoints/{NAME}/invocations", body)
    assert status == "424 Failed Dependency" and headers["x-amzn-ErrorType"].startswith("ModelError:")
    error = json.loads(answer)
    assert error["OriginalStatusCode"] == original and json.loads(error["OriginalMessage"])["status"] == original
    assert "x-Amzn-Invoked-Production-Variant" not in headers


def test_single_model_endpoint_refuses_a_target_model_on_the_runtime_route_too():
    status, headers, body = wsgi(app_for(), "POST", f"/endpoints/{NAME}/invocations", b"abc",
                                 HTTP_X_AMZN_SAGEMAKER_TARGET_MODEL="v1/model.tar.gz")
    assert status == "400 Bad Request" and headers["x-amzn-ErrorType"].startswith("ValidationError:")
    assert "only for multi-model endpoints" in json.loads(body)["message"]


def test_custom_attributes_are_echoed_on_the_container_route():
    _, headers, _ = wsgi(app_for(), "POST", "/invocations", b"abc", HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES="trace=1")
    assert headers["X-Amzn-SageMaker-Custom-Attributes"] == "trace=1"
    _, headers, _ = wsgi(app_for(), "POST", "/invocations", b"abc")
    assert "X-Amzn-SageMaker-Custom-Attributes" not in headers


# ------------------------------------------------------------------------------ request bodies
def test_content_length_decides_how_much_body_is_read():
    handler = StandIn()
    app = app_for(handler=handler)
    # one byte is a body
    status, _, body = wsgi(app, "POST", "/invocations", b"x")
    assert status == "200 OK" and json.loads(body)["bytes"] == 1
    # no Content-Length (WSGI: read nothing) and a negative one: an empty body, whatever the stream holds
    for length in (None, "", "-5"):
        status, _, body = wsgi(app, "POST", "/invocations", b"abc", CONTENT_LENGTH=length)
        assert status == "400 Bad Request" and json.loads(body) == {"error": "empty request body", "status": 400}
    assert [seen[0] for seen in handler.seen] == [b"x", b"", b"", b""]
    # not a number: refused before the handler
    status, _, body = wsgi(app, "POST", "/invocations", b"abc", CONTENT_LENGTH="abc")
    assert status == "400 Bad Request" and json.loads(body) == {"error": "bad Content-Length", "status": 400}
    assert len(handler.seen) == 4


def test_content_type_and_accept_reach_the_handler_and_empty_ones_are_none():
    handler = StandIn()
    app = app_for(handler=handler)
    wsgi(app, "POST", "/invocations", b"abc", CONTENT_TYPE="image/jpeg", HTTP_ACCEPT="application/json")
    wsgi(app, "POST", "/invocations", b"abc", CONTENT_TYPE="", HTTP_ACCEPT="")
    wsgi(app, "POST", "/invocations", b"abc", CONTENT_TYPE=None)
    assert [seen[1] for seen in handler.seen] == ["image/jpeg", None, None]
    assert handler.accepts == ["application/json", None, None]


def test_unexpected_failure_is_a_json_500_and_its_traceback_goes_to_the_log_only(caplog):
    app = app_for()
    with caplog.at_level(logging.INFO, logger="imgpipe.serve"):
        status, _, body = wsgi(app, "POST", "/invocations", b"boom")
    assert status == "500 Internal Server Error"
    assert json.loads(body) == {"error": "internal error (RuntimeError)", "status": 500}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "secret internals" in errors[0].getMessage() and "Traceback" in errors[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="imgpipe.serve"):
        status, _, _ = wsgi(app, "POST", "/invocations", b"")
    assert status == "400 Bad Request" and not [r for r in caplog.records if r.levelno >= logging.ERROR]


class _BrokenModels:
    """A model store failing in an unexpected way (not a TargetModelError)."""

    def get(self, target):
        raise RuntimeError("secret internals of the model store")

    def info(self):
        return {"mode": "Broken"}


def test_a_failure_outside_the_handler_is_a_json_500_without_traceback():
    with running(app_for(_BrokenModels())) as server:
        status, headers, body = request(server.port, "POST", "/invocations", b"abc", {"Content-Type": "image/png"})
    assert status == 500 and headers["Content-Type"] == "application/json"
    error = json.loads(body)
    assert error["status"] == 500 and "Traceback" not in error["error"] and "secret" not in error["error"]


# ------------------------------------------------------------------------------ health port
def test_health_port_serves_get_and_head_ping_only():
    with running() as server:
        port = server.health_port
        assert port != server.port
        status, headers, body = request(port, "GET", "/ping")
        assert status == 200 and json.loads(body) == {"status": "Healthy", "endpoint_name": NAME, "mode": "SingleModel"}
        status, headers, body = request(port, "HEAD", "/ping")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
        for method in ("POST", "PUT", "DELETE"):
            status, _, body = request(port, method, "/ping", b"")
            assert status == 405 and json.loads(body)["status"] == 405 and method in json.loads(body)["error"]
        for path in ("/invocations", "/a", "/zzz"):
            for method in ("GET", "POST"):
                status, _, body = request(port, method, path, b"")
                assert status == 404 and json.loads(body)["status"] == 404, (path, method)


# ------------------------------------------------------------------------------ waitress's refusals
def raw_exchange(port, data):
    with connect(port, data) as sock:
        return read_response(sock)


def test_body_over_the_limit_is_a_json_413_naming_the_limit():
    with running(max_body=1000) as server:
        status, body = raw_exchange(server.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                                                 b"Content-Length: 5000\r\n\r\n")
    assert status == 413
    assert json.loads(body) == {"error": "payload too large (exceeds max_body of 1000); limit set by "
                                         "IMGPIPE_MAX_PAYLOAD_BYTES", "status": 413}


@pytest.mark.parametrize("header, status", [("Content-Length: abc", 400), ("Transfer-Encoding: gzip", 501)])
def test_other_malformed_requests_get_json_errors_not_called_too_large(header, status):
    with running() as server:
        got, body = raw_exchange(server.port, f"POST /invocations HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n".encode())
    error = json.loads(body)
    assert got == status and error["status"] == status
    assert "too large" not in error["error"] and "IMGPIPE_MAX_PAYLOAD_BYTES" not in error["error"]


# ------------------------------------------------------------------------------ data capture
@pytest.mark.parametrize("percent, kept", [(-5, 0), (0, 0), (1, 1), (99, 99), (100, 100), (150, 100)])
def test_capture_percent_is_clamped_to_0_100(tmp_path, percent, kept):
    assert serve.DataCapture(tmp_path, percent, "s").percent == kept


@pytest.mark.parametrize("percent, calls", [(0, 300), (1, 1500), (30, 300), (99, 300), (100, 50)])
def test_seeded_capture_samples_exactly_as_its_generator(tmp_path, percent, calls):
    capture = serve.DataCapture(tmp_path, percent, "s", seed=11)
    for _ in range(calls):
        capture.maybe_capture(b"in", "image/png", b"[]")
    rng = random.Random(11)
    expected = sum(rng.uniform(0, 100) < percent for _ in range(calls)) if percent > 0 else 0
    lines = sum(len(f.read_text().splitlines()) for f in tmp_path.rglob("*.jsonl"))
    assert lines == expected
    assert 0 < expected < calls or percent in (0, 100)  # the sample really is partial in between


def test_capture_records_and_their_files(tmp_path):
    capture = serve.DataCapture(tmp_path / "capture", 100, "server-1")
    before = datetime.now(timezone.utc)
    capture.maybe_capture(b"\x89PNG body", "image/png", b'{"label": "3"}')
    capture.maybe_capture(b"second", None, b"[]")
    files = list((tmp_path / "capture").rglob("*.jsonl"))
    assert len(files) == 1 and files[0].name == "server-1.jsonl"
    hour = files[0].parent.relative_to(tmp_path / "capture").parts
    assert len(hour) == 4 and hour[0] == f"{before.year:04d}" and all(p.isdigit() and len(p) in (2, 4) for p in hour)
    first, second = (json.loads(line) for line in files[0].read_text().splitlines())
    data = first["captureData"]
    assert data["endpointInput"] == {"observedContentType": "image/png", "mode": "INPUT",
                                     "data": base64.b64encode(b"\x89PNG body").decode(), "encoding": "BASE64"}
    assert data["endpointOutput"] == {"observedContentType": "application/json", "mode": "OUTPUT",
                                      "data": '{"label": "3"}', "encoding": "JSON"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["eventMetadata"]["inferenceTime"])
    assert first["eventVersion"] == "0" and first["eventMetadata"]["eventId"] != second["eventMetadata"]["eventId"]
    assert second["captureData"]["endpointInput"]["observedContentType"] == ""


def test_the_app_captures_successful_invocations_only(tmp_path):
    capture = serve.DataCapture(tmp_path, 100, "s")
    app = app_for(capture=capture)
    wsgi(app, "POST", "/invocations", b"abc", CONTENT_TYPE="image/jpeg")
    wsgi(app, "POST", "/invocations", b"")  # refused: not captured
    records = [json.loads(line) for f in tmp_path.rglob("*.jsonl") for line in f.read_text().splitlines()]
    assert len(records) == 1
    assert records[0]["captureData"]["endpointInput"]["observedContentType"] == "image/jpeg"
    assert json.loads(records[0]["captureData"]["endpointOutput"]["data"]) == {"model": "model-a", "bytes": 3}


# ------------------------------------------------------------------------------ slow and idle clients
def test_a_client_dribbling_its_headers_is_cut_off_after_the_request_timeout():
    with running(request_timeout=1.5, idle_timeout=10) as server:
        sock = connect(server.port, b"GET /ping HTTP/1.1\r\n")
        started, cut = time.monotonic(), False
        with sock:
            while time.monotonic() - started < 5 and not cut:
                try:
                    sock.sendall(b"X-Slow: 1\r\n")  # activity all along: only the request timeout can cut it
                except (BrokenPipeError, ConnectionResetError):
                    cut = True
                    break
                cut = closed_within(sock, 0.1)
        assert cut and 1.4 <= time.monotonic() - started < 3.5


def test_a_patient_request_and_an_idle_keepalive_connection_are_not_cut_by_the_request_timeout():
    with running(request_timeout=0.4, idle_timeout=10) as slow_ok, running(request_timeout=5, idle_timeout=10) as patient:
        # keep-alive: answered, then idle longer than the request timeout, then used again
        keepalive = http.client.HTTPConnection("127.0.0.1", slow_ok.port, timeout=5)
        keepalive.request("GET", "/ping")
        assert keepalive.getresponse().read()
        # a request whose headers take 1.2 s (a cleanup pass happens meanwhile) under a 5 s timeout
        sock = connect(patient.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
        time.sleep(1.2)
        sock.sendall(b"Content-Type: image/png\r\nContent-Length: 3\r\n\r\nabc")
        with sock:
            status, body = read_response(sock)
        assert status == 200 and json.loads(body) == {"model": "model-a", "bytes": 3}
        keepalive.request("GET", "/ping")
        response = keepalive.getresponse()
        assert response.status == 200 and json.loads(response.read())["status"] == "Healthy"
        keepalive.close()


def test_an_idle_connection_is_closed_after_the_idle_timeout_and_not_before():
    with running(idle_timeout=1) as server:
        with connect(server.port) as sock:
            started = time.monotonic()
            assert closed_within(sock, 3.5)
            assert time.monotonic() - started >= 0.9


# ------------------------------------------------------------------------------ connection limit
def test_at_the_connection_limit_the_longest_idle_connection_makes_room():
    handler = StandIn()
    with running(app_for(handler=handler), max_connections=2) as server:
        busy = connect(server.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nwait")
        assert handler.entered.acquire(timeout=5)  # the older connection, with a request in flight
        idle = connect(server.port)
        assert not closed_within(idle, 0.3)  # under the limit: kept
        status, _, body = request(server.port, "GET", "/ping")  # the third connection gets in
        assert status == 200 and json.loads(body)["status"] == "Healthy"
        assert closed_within(idle, 2)  # ... in place of the idle one
        handler.release.set()
        with busy:
            status, body = read_response(busy)
        assert status == 200 and json.loads(body) == {"model": "model-a", "bytes": 4}
        idle.close()


def test_when_every_connection_is_busy_a_new_client_gets_a_quick_json_503_and_the_server_recovers():
    handler = StandIn()
    with running(app_for(handler=handler), max_connections=2, threads=2) as server:
        busy = [connect(server.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nwait")
                for _ in range(2)]
        assert handler.entered.acquire(timeout=5) and handler.entered.acquire(timeout=5)
        refused = connect(server.port)  # sends nothing: the answer must not wait for it
        refused.settimeout(3)
        reply = b""
        while chunk := refused.recv(65536):
            reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in head
        error = json.loads(body)
        assert error["status"] == 503 and "all 2 connections" in error["error"]
        handler.release.set()
        for sock in busy:
            with sock:
                assert read_response(sock)[0] == 200
        assert request(server.port, "GET", "/ping")[0] == 200
        refused.close()  # only now: the server has long finished with it (nothing unread was left)


# ------------------------------------------------------------------------------ stopping
def test_stop_finishes_the_request_in_flight_then_returns_promptly():
    handler = StandIn()
    with running(app_for(handler=handler)) as server:
        for _ in range(3):
            assert request(server.port, "GET", "/ping")[0] == 200
        busy = connect(server.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nwait")
        assert handler.entered.acquire(timeout=5)
        assert server.status()["requests"] == 4 and not server.status()["stopping"]
        successor = socket.socket(fileno=os.dup(server.listener.fileno()))  # the next server, handed the socket
        server.stop()
        time.sleep(0.6)  # longer than the quiet period: the request in flight keeps it draining
        assert server.thread.is_alive()
        newcomer = connect(server.port, ping_request())  # queued in the kernel: the draining server takes no one
        assert not closed_within(newcomer, 0.3)
        handler.release.set()
        stopped = time.monotonic()
        with busy:
            status, body = read_response(busy)
        assert status == 200 and json.loads(body) == {"model": "model-a", "bytes": 4}
        server.thread.join(5)
        assert not server.thread.is_alive() and time.monotonic() - stopped < 3
        with successor, newcomer:  # the newcomer waited for the successor
            successor.settimeout(2)
            accepted, _ = successor.accept()
            with accepted:
                accepted.settimeout(2)
                assert accepted.recv(65536) == ping_request()


def test_stop_waits_for_a_body_still_arriving_and_closes_idle_keepalive_connections():
    with running() as server:
        keepalive = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        keepalive.request("GET", "/ping")
        assert keepalive.getresponse().read()
        uploading = connect(server.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nabc")
        time.sleep(0.2)
        server.stop()
        assert closed_within(keepalive.sock, 1)  # between requests: closed at once (clients reconnect elsewhere)
        keepalive.close()
        time.sleep(0.6)  # longer than the quiet period: the request under way keeps it draining
        uploading.sendall(b"def")
        with uploading:
            status, body = read_response(uploading)
            assert status == 200 and json.loads(body) == {"model": "model-a", "bytes": 6}
            assert closed_within(uploading, 1)  # answered, then closed
        server.thread.join(3)
        assert not server.thread.is_alive()


def test_stop_waits_for_a_body_still_arriving_while_another_request_is_in_flight():
    handler = StandIn()
    with running(app_for(handler=handler), threads=2) as server:
        busy = connect(server.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nwait")
        assert handler.entered.acquire(timeout=5)
        uploading = connect(server.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nabc")
        time.sleep(0.2)
        server.stop()
        time.sleep(0.6)
        uploading.sendall(b"def")
        with uploading:
            status, body = read_response(uploading)
        assert status == 200 and json.loads(body) == {"model": "model-a", "bytes": 6}
        handler.release.set()
        with busy:
            assert read_response(busy)[0] == 200


def test_a_stopping_idle_server_still_waits_out_the_quiet_period():
    with running() as server:
        server.stop()
        time.sleep(0.25)  # under DRAIN_QUIET_SECONDS (0.3 s): whatever is still on its way may land
        assert server.thread.is_alive()
        server.thread.join(5)
        assert not server.thread.is_alive()


def test_stop_of_an_idle_server_returns_promptly():
    with running() as server:
        assert request(server.port, "GET", "/ping")[0] == 200
        started = time.monotonic()
        server.stop()
        server.thread.join(5)
        assert not server.thread.is_alive() and time.monotonic() - started < 2
        assert server.app.requests == 1


# ------------------------------------------------------------------------------ control socket
def control(path, payload, *, newline=True, timeout=3.0):
    """Send one control command; (reply dict or None when the server closed without one, fds)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        sock.sendall(data + (b"\n" if newline else b""))
        if not newline:
            sock.shutdown(socket.SHUT_WR)
        message, fds, _, _ = socket.recv_fds(sock, 65536, 4)
        while message and not message.endswith(b"\n"):
            message += sock.recv(65536)
        return (json.loads(message) if message else None), fds


def wait_for_socket(path):
    deadline = time.monotonic() + 5
    while not (path.exists() and stat.S_ISSOCK(os.stat(path).st_mode)):
        assert time.monotonic() < deadline, "no control socket"
        time.sleep(0.01)


@contextmanager
def control_connection(tmp_path, timeout=5.0):
    """A running server with a control socket, and a raw client connection to that socket."""
    path = tmp_path / "control.sock"
    with running(control=str(path)):
        wait_for_socket(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            yield path, sock


def test_a_control_command_that_never_ends_its_line_is_cut_at_4_kib(tmp_path):
    with control_connection(tmp_path, timeout=3) as (path, sock):
        sock.sendall(b" " * 4096)  # 4 KiB, no newline, and the connection stays open
        assert sock.recv(65536) == b""  # read no further: closed without an answer
        assert control(path, {"cmd": "status"})[0]["ok"] is True


def test_a_control_command_is_cut_at_4_kib_even_when_it_arrives_in_pieces(tmp_path):
    """Pieces that pass 4 KiB without ever summing to exactly 4096 bytes stop the read too."""
    with control_connection(tmp_path) as (_, sock):
        sock.sendall(b" " * 3000)
        time.sleep(0.2)  # the server has read the first piece
        sock.sendall(b" " * 2000)  # 5000 bytes, no newline, and the connection stays open
        started = time.monotonic()
        assert sock.recv(65536) == b""  # closed without an answer ...
        assert time.monotonic() - started < 3  # ... at once, not when the read times out


def test_a_control_command_under_4_kib_is_read_until_its_newline_whatever_its_pieces(tmp_path):
    with control_connection(tmp_path) as (_, sock):
        head = b'{"cmd": "status"'
        sock.sendall(head + b" " * (4095 - len(head)))  # one byte short of 4 KiB: not a whole command yet
        time.sleep(0.2)
        sock.sendall(b"}\n")
        assert json.loads(sock.recv(65536))["ok"] is True


def wait_for_file(path):
    deadline = time.monotonic() + 5
    while not path.is_file():
        assert time.monotonic() < deadline, f"no {path.name}"
        time.sleep(0.01)


def test_the_startup_line_says_whether_the_server_is_on_standby(tmp_path, caplog):
    for standby in (True, False):
        caplog.clear()
        ready = tmp_path / f"ready-{standby}.json"
        with caplog.at_level(logging.INFO, logger="imgpipe.serve"), running(standby=standby, ready=str(ready)) as server:
            wait_for_file(ready)
        [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("serving on")]
        expected = f"serving on 127.0.0.1:{server.port} (health port {server.health_port})"
        assert line == expected + (", standby" if standby else "")


def test_control_socket_commands_on_a_standby_server(tmp_path):
    path, ready = tmp_path / "control.sock", tmp_path / "ready.json"
    path.write_text("stale")  # left over by a crashed server: replaced
    threads_before = {t for t in threading.enumerate() if not t.daemon}
    with running(standby=True, control=str(path), ready=str(ready)) as server:
        wait_for_file(ready)
        info = json.loads(ready.read_text())
        assert info["public_port"] == server.port and info["health_port"] == server.health_port
        assert info["active"] is False and info["stopping"] is False
        assert stat.S_ISSOCK(os.stat(path).st_mode) and stat.S_IMODE(os.stat(path).st_mode) == 0o600
        for _ in range(2):  # status changes nothing
            reply, fds = control(path, {"cmd": "status"})
            assert reply["ok"] is True and reply["active"] is False and reply["stopping"] is False and not fds
            assert reply["public_port"] == server.port and reply["mode"] == "SingleModel"
        waiting = connect(server.port, ping_request())
        assert not closed_within(waiting, 0.3)  # standby: not accepted, no answer
        for command in ("aaa", "reboot", "unknown", "zzz"):
            assert control(path, {"cmd": command})[0] == {"ok": False, "error": f"unknown command {command!r}"}
        assert control(path, {})[0] == {"ok": False, "error": "unknown command None"}
        assert control(path, b"not json")[0] is None  # a bad client gets nothing ...
        reply, _ = control(path, {"cmd": "status"}, newline=False)  # ... and the next one is served
        assert reply["ok"] is True and reply["active"] is False
        reply, fds = control(path, {"cmd": "getfd"})
        assert reply["ok"] is True and reply["active"] is False and len(fds) == 1
        with socket.socket(fileno=fds[0]) as handed:
            assert handed.getsockname()[1] == server.port
            assert handed.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        reply, _ = control(path, {"cmd": "activate"})
        assert reply["ok"] is True and reply["active"] is True and reply["stopping"] is False
        with waiting:
            assert read_response(waiting)[0] == 200
        reply, _ = control(path, {"cmd": "stop"})
        assert reply["ok"] is True and reply["stopping"] is True
        server.thread.join(5)
        assert not server.thread.is_alive()
    # nothing the server started keeps a process alive after it stopped
    assert {t for t in threading.enumerate() if not t.daemon} <= threads_before


def test_command_line_connection_defaults_are_the_documented_ones():
    """README: at most 200 connections, 30 s idle and request timeouts."""
    args = serve.parse_args(["--model-dir", "m"])
    assert (args.max_connections, args.idle_timeout, args.request_timeout) == (200, 30, 30)
    assert serve.ConnectionLimits() == serve.ConnectionLimits(200, 30, 30, 32)


# ------------------------------------------------------------------------------ model size
def test_model_bytes_counts_parameters_and_buffers():
    import torch

    layer = torch.nn.BatchNorm1d(4)  # weight, bias (4 float32 each); running mean/var (4 float32), a count (int64)
    assert serve.model_bytes(SimpleNamespace(model=layer)) == 8 * 4 + 8 * 4 + 8
    assert serve.model_bytes(SimpleNamespace(model=torch.nn.Linear(3, 2))) == (3 * 2 + 2) * 4


# ------------------------------------------------------------------------------ model loading
class Loadable(StandIn):
    """A stand-in handler that also loads: ``model_fn`` gives a 3-class, 8 px model."""

    Limits = inference.Limits

    def __init__(self):
        super().__init__()
        self.loaded_from = []

    def model_fn(self, model_dir):
        self.loaded_from.append(sorted(p.name for p in Path(model_dir).iterdir()))
        return SimpleNamespace(classes=["a", "b", "c"], image_size=8)

    def predict_fn(self, data, model):
        return super().predict_fn(data, model.classes)


def load_seconds(caplog, pattern: str) -> float:
    """The load time a log line reports. A stand-in model loads in milliseconds: a wrong formula
    (``time.time() / started`` is 1.0, a sum or product is huge) shows."""
    [seconds] = [float(m.group(1)) for r in caplog.records if (m := re.fullmatch(pattern, r.getMessage()))]
    return seconds


def test_a_single_model_is_loaded_warmed_up_and_its_load_time_logged(tmp_path, caplog):
    handler = Loadable()
    (tmp_path / "model.json").write_text("{}")
    with caplog.at_level(logging.INFO, logger="imgpipe.serve"):
        models = serve.load_models(handler, SimpleNamespace(multi_model=False, model_dir=str(tmp_path)))
    assert isinstance(models, serve.SingleModel) and models.model.image_size == 8
    assert handler.loaded_from == [["model.json"]]
    [(warm_up_body, content_type)] = handler.seen  # one warm-up prediction, on an image of the model's size
    assert content_type == "image/png" and Image.open(io.BytesIO(warm_up_body)).size == (8, 8)
    assert 0 <= load_seconds(caplog, r"model loaded and warm in (\d+\.\d)s: 3 classes, 8px") < 0.9


def test_each_archive_of_a_multi_model_endpoint_is_loaded_warmed_up_and_logged(tmp_path, caplog):
    handler = Loadable()
    archive = tmp_path / "v1" / "model.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(b"archive")
    with caplog.at_level(logging.INFO, logger="imgpipe.serve"):
        model = serve.archive_loader(handler)(archive)
    assert model.classes == ["a", "b", "c"] and handler.loaded_from == [["model.tar.gz"]]
    assert len(handler.seen) == 1
    assert 0 <= load_seconds(caplog, rf"loaded {re.escape(str(archive))} in (\d+\.\d\d)s: 3 classes, 8px") < 0.9


@pytest.mark.parametrize("environ, limit", [({}, "at most 8 models in memory"),
                                            ({"IMGPIPE_MME_MAX_BYTES": "5000"}, "at most 8 models and 5000 bytes in memory")])
def test_a_multi_model_endpoint_logs_its_cache_limits(tmp_path, caplog, monkeypatch, environ, limit):
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with caplog.at_level(logging.INFO, logger="imgpipe.serve"):
        models = serve.load_models(Loadable(), SimpleNamespace(multi_model=True, model_dir=str(tmp_path)))
    assert isinstance(models, serve.MultiModel)
    assert f"multi-model endpoint over {tmp_path}: {limit}" in [r.getMessage() for r in caplog.records]
