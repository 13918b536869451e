"""The local endpoint: SageMaker's serving contract over HTTP, running ``inference.py``.

``GET /ping`` answers 200 once the model is loaded and has run one warm-up forward pass;
``POST /invocations`` runs ``input_fn`` → ``predict_fn`` → ``output_fn``. Refused requests get
the handler's 4xx status and its JSON error body (:func:`inference.error_body`), unknown paths
404 and wrong methods 405, also as JSON; an unexpected failure is a JSON 500 (the traceback goes
to the log, not to the client). The HTTP server is waitress (a production WSGI server with a
fixed thread pool); requests over ``IMGPIPE_MAX_PAYLOAD_BYTES`` are refused by waitress while
the body arrives, before it is buffered, with the same JSON 413 shape.

SageMaker Runtime's route ``POST /endpoints/{EndpointName}/invocations`` (what boto3's
``sagemaker-runtime`` client sends, given this server's URL as ``endpoint_url``) runs the same
handler and answers with AWS's error shapes (:mod:`runtime_api`). Each server is one endpoint: a
route naming another endpoint gets AWS's ``ValidationError`` "Endpoint X of account Y not found.".
``X-Amzn-SageMaker-Custom-Attributes`` is echoed back on both routes.

Multi-model (``--multi-model``): ``--model-dir`` is a directory of ``model.tar.gz`` archives;
each request names one with ``X-Amzn-SageMaker-Target-Model`` (``v3/model.tar.gz``); it is
loaded on first use and evicted least-recently-used (:mod:`multi_model`). Adding, replacing or
removing archives changes what is served without a restart. ``/ping`` then also reports the
models in memory.

Binding: 127.0.0.1 by default (``--host`` to change it). Two ways to get the public socket:

- ``--port P`` binds it here and serves at once (manual use: ``python inference/serve.py
  --model-dir DIR --port 8080``);
- ``--listen-fd N --standby`` (how :class:`pipelines.local.hosting.LocalHosting` starts it): an
  inherited, already listening socket that is only accepted on after a control ``activate``.

Zero-downtime updates: the listening socket is *handed over*, not re-bound. The new server gets
the very socket the old one accepts on (the old server passes the file descriptor over its
control socket, ``SCM_RIGHTS``), so there is one kernel accept queue throughout: the new server
is health-checked on its own private port (``health_port`` in the ready file), then activated,
then the old one stops accepting, finishes what it has in flight and exits. No connection
waits in a queue that is closed.

Control (``--control PATH``, a Unix socket only this user can use): one JSON line per
connection, one JSON line back: ``{"cmd": "status"}``, ``{"cmd": "activate"}``,
``{"cmd": "getfd"}`` (the listening socket comes with the answer) and ``{"cmd": "stop"}``
(drain, then exit 0; SIGTERM does the same).

Data capture (``--capture-dir``/``--capture-percent``): a sampled share of successful
invocations is appended as SageMaker data-capture JSON lines (``captureData.endpointInput`` /
``endpointOutput``, ``eventMetadata``) to ``<capture-dir>/YYYY/MM/DD/HH/<server id>.jsonl``.

Only the standard library, torch, PIL, waitress and ``imgclf`` are imported.
"""
from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from waitress import wasyncore  # noqa: E402
from waitress.adjustments import Adjustments  # noqa: E402
from waitress.channel import HTTPChannel  # noqa: E402
from waitress.server import TcpWSGIServer  # noqa: E402
from waitress.task import ErrorTask, ThreadedTaskDispatcher  # noqa: E402

import runtime_api  # noqa: E402
from multi_model import CacheLimits, ModelCache, TargetModelError  # noqa: E402

LOG = logging.getLogger("imgpipe.serve")
JSON_HEADERS = [("Content-Type", "application/json")]
DRAIN_QUIET_SECONDS = 0.3  # idle this long (nothing in flight) before a stopping server exits
DRAIN_MAX_SECONDS = 30.0
LOOP_TIMEOUT = 0.2
PRIVATE_UMASK = 0o077  # files 0600, directories 0700


def _json(status: int, document: Any) -> tuple[str, list, bytes]:
    from http import HTTPStatus

    body = json.dumps(document).encode()
    return f"{status} {HTTPStatus(status).phrase}", JSON_HEADERS + [("Content-Length", str(len(body)))], body


# ---------------------------------------------------------------------------- WSGI app
class SingleModel:
    """The model of a single-model endpoint (a request naming a target model is refused)."""

    mode = "SingleModel"

    def __init__(self, model: Any):
        self.model = model

    def get(self, target: Optional[str]) -> Any:
        if target is not None:
            raise TargetModelError(400, "this endpoint serves a single model: TargetModel "
                                        "(X-Amzn-SageMaker-Target-Model) is only for multi-model endpoints")
        return self.model

    def info(self) -> dict:
        return {"mode": self.mode}


class MultiModel:
    """The models of a multi-model endpoint: a :class:`multi_model.ModelCache` over a directory."""

    mode = "MultiModel"

    def __init__(self, cache: ModelCache):
        self.cache = cache

    def get(self, target: Optional[str]) -> Any:
        if target is None:
            raise TargetModelError(400, "this is a multi-model endpoint: name the model with TargetModel "
                                        "(X-Amzn-SageMaker-Target-Model), e.g. v1/model.tar.gz")
        return self.cache.get(target)

    def info(self) -> dict:
        return {"mode": self.mode, "loaded_models": self.cache.loaded(), "model_loads": self.cache.loads,
                "model_evictions": self.cache.evictions}


@dataclass(frozen=True)
class Answer:
    """What the model answered: HTTP status, body, content type."""

    status: int
    body: bytes
    content_type: str = "application/json"


class InferenceApp:
    """The WSGI application: ``/ping``, ``/invocations`` (the container contract) and
    ``/endpoints/{name}/invocations`` (SageMaker Runtime's route, :mod:`runtime_api`)."""

    def __init__(self, handler: Any, models: Any, *, info: Optional[dict] = None,
                 capture: Optional["DataCapture"] = None, region: str = "us-east-1", log_path: str = ""):
        self.handler = handler
        self.models = models if hasattr(models, "get") and hasattr(models, "info") else SingleModel(models)
        self.info = dict(info or {})
        self.capture = capture
        self.region = region
        self.log_path = log_path
        self._lock = threading.Lock()
        self.in_flight = 0
        self.requests = 0

    def health_info(self) -> dict:
        """What ``/ping`` reports besides ``status``."""
        return {**self.info, **self.models.info()}

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        with self._lock:
            self.in_flight += 1
            self.requests += 1
        try:
            status, headers, body = self._route(environ)
        finally:
            with self._lock:
                self.in_flight -= 1
        start_response(status, headers)
        return [body]

    def _route(self, environ: dict) -> tuple[str, list, bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path == "/ping":
            if method not in ("GET", "HEAD"):
                return _json(405, {"error": f"{method} not allowed on /ping; use GET", "status": 405})
            return _json(200, {"status": "Healthy", **self.health_info()})
        if path == "/invocations":
            if method != "POST":
                return _json(405, {"error": f"{method} not allowed on /invocations; use POST", "status": 405})
            return self._container_invoke(environ)
        name = runtime_api.endpoint_name(path)
        if name is not None:
            if method != "POST":
                return _json(405, {"error": f"{method} not allowed on {path}; use POST", "status": 405})
            return self._runtime_invoke(environ, name)
        return _json(404, {"error": "not found: this endpoint serves GET /ping, POST /invocations and "
                                    "POST /endpoints/<name>/invocations", "status": 404})

    def _container_invoke(self, environ: dict) -> tuple[str, list, bytes]:
        """``POST /invocations``: the model's answer, or a JSON ``{"error", "status"}``."""
        try:
            answer = self._answer(environ, environ.get("HTTP_X_AMZN_SAGEMAKER_TARGET_MODEL"))
        except TargetModelError as exc:
            return _json(exc.status_code, {"error": exc.message, "status": exc.status_code})
        return self._respond(answer, environ)

    def _runtime_invoke(self, environ: dict, name: str) -> tuple[str, list, bytes]:
        """SageMaker Runtime's InvokeEndpoint: AWS's error shapes (:mod:`runtime_api`)."""
        if name != self.info.get("endpoint_name"):
            return runtime_api.endpoint_not_found(name)
        target = environ.get("HTTP_X_AMZN_SAGEMAKER_TARGET_MODEL")
        problem = runtime_api.header_problem({
            "contentType": environ.get("CONTENT_TYPE"), "accept": environ.get("HTTP_ACCEPT"),
            "customAttributes": environ.get("HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES"), "targetModel": target})
        if problem:
            return runtime_api.validation_error(problem)
        try:
            answer = self._answer(environ, target)
        except TargetModelError as exc:
            if exc.status_code < 422:
                return runtime_api.validation_error(exc.message)
            answer = Answer(exc.status_code, json.dumps({"error": exc.message, "status": exc.status_code}).encode())
        if answer.status >= 400:
            return runtime_api.model_error(answer.status, answer.body.decode(errors="replace"), endpoint=name,
                                           region=self.region, log_path=self.log_path)
        status, headers, body = self._respond(answer, environ)
        return status, headers + [("x-Amzn-Invoked-Production-Variant", runtime_api.VARIANT_NAME)], body

    def _answer(self, environ: dict, target: Optional[str]) -> Answer:
        """Run the handler on the request; :class:`TargetModelError` when the target cannot serve."""
        content_type = environ.get("CONTENT_TYPE") or None
        accept = environ.get("HTTP_ACCEPT") or None
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return Answer(400, json.dumps({"error": "bad Content-Length", "status": 400}).encode())
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        model = self.models.get(target)
        h = self.handler
        try:
            data = h.input_fn(body, content_type)
            answer = h.output_fn(h.predict_fn(data, model), accept)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON answer
            error = h.error_body(exc)
            if error["status"] >= 500:
                LOG.error("invocation failed:\n%s", traceback.format_exc())
            return Answer(error["status"], json.dumps(error).encode())
        payload = answer.encode() if isinstance(answer, str) else bytes(answer)
        if self.capture is not None:
            self.capture.maybe_capture(body, content_type, payload)
        return Answer(200, payload)

    @staticmethod
    def _respond(answer: Answer, environ: dict) -> tuple[str, list, bytes]:
        """The HTTP response of an answer; custom attributes of the request are echoed back."""
        from http import HTTPStatus

        headers = [("Content-Type", answer.content_type), ("Content-Length", str(len(answer.body)))]
        attributes = environ.get("HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES")
        if attributes is not None:
            headers.append(("X-Amzn-SageMaker-Custom-Attributes", attributes))
        return f"{answer.status} {HTTPStatus(answer.status).phrase}", headers, answer.body


class DataCapture:
    """SageMaker-style data capture: sampled request/response pairs as JSON lines."""

    def __init__(self, directory: str | Path, percent: int, server_id: str, seed: Optional[int] = None):
        self.directory = Path(directory)
        self.percent = max(0, min(100, int(percent)))
        self.server_id = server_id
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def maybe_capture(self, body: bytes, content_type: Optional[str], answer: bytes) -> None:
        with self._lock:
            if self._random.random() * 100 >= self.percent:  # in [0, 100): 0 % never, 100 % always
                return
        now = datetime.now(timezone.utc)
        record = {
            "captureData": {
                "endpointInput": {"observedContentType": content_type or "", "mode": "INPUT",
                                  "data": base64.b64encode(body).decode(), "encoding": "BASE64"},
                "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                                   "data": answer.decode(), "encoding": "JSON"},
            },
            "eventMetadata": {"eventId": str(uuid.uuid4()),
                              "inferenceTime": now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"},
            "eventVersion": "0",
        }
        path = self.directory / now.strftime("%Y/%m/%d/%H") / f"{self.server_id}.jsonl"
        line = json.dumps(record) + "\n"
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as fh:
                fh.write(line)


# ---------------------------------------------------------------------------- waitress glue
class JsonErrorTask(ErrorTask):
    """waitress's own refusals (body too large, malformed HTTP) as the endpoint's JSON errors."""

    def execute(self) -> None:
        error = self.request.error
        message = f"{error.reason}: {error.body}".strip()
        if error.code == 413:
            message = (f"payload too large: {error.body} bytes allowed (IMGPIPE_MAX_PAYLOAD_BYTES)"
                       if str(error.body).isdigit() else f"payload too large ({error.body}); limit "
                       "set by IMGPIPE_MAX_PAYLOAD_BYTES")
        body = json.dumps({"error": message, "status": error.code}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.extend(JSON_HEADERS)
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class JsonErrorChannel(HTTPChannel):
    error_task_class = JsonErrorTask


class GuardedChannel(JsonErrorChannel):
    """A connection that remembers when its current (incomplete) request began."""

    request_started = 0.0

    def received(self, data: bytes) -> bool:
        if self.request is None:
            self.request_started = time.time()
        return super().received(data)


class Server(TcpWSGIServer):
    """waitress's listener, guarded against clients that hold connections.

    waitress stops accepting at its connection limit, so idle connections could leave every new
    client waiting in the kernel queue. This listener always accepts: at ``connection_limit``
    connections it closes the longest-idle connection that has no request being answered, and
    when every connection is busy it answers a quick JSON 503 and closes. Connections idle for
    ``channel_timeout`` seconds, or whose request (headers and body) has not fully arrived after
    ``request_timeout`` seconds, are closed (slow clients)."""

    channel_class = GuardedChannel
    request_timeout: float  # seconds; set by _listener from ConnectionLimits

    def readable(self) -> bool:
        now = time.time()
        if now >= self.next_channel_cleanup:
            self.next_channel_cleanup = now + self.adj.cleanup_interval
            self.maintenance(now)
        return bool(self.accepting)

    def maintenance(self, now: float) -> None:
        super().maintenance(now)
        cutoff = now - self.request_timeout
        for channel in list(self.active_channels.values()):
            if channel.request is not None and not channel.requests and channel.request_started < cutoff:
                channel.will_close = True

    def handle_accept(self) -> None:
        if len(self.active_channels) >= self.adj.connection_limit and not self._evict_idle():
            self._refuse_busy()
            return
        super().handle_accept()

    def _evict_idle(self) -> bool:
        """Close the connection idle longest among those with nothing in flight."""
        idle = [c for c in self.active_channels.values()
                if not c.requests and not c.total_outbufs_len and not c.will_close]
        if not idle:
            return False
        min(idle, key=lambda c: c.last_activity).handle_close()
        return True

    def _refuse_busy(self) -> None:
        try:
            conn, _ = self.socket.accept()
        except OSError:
            return
        body = json.dumps({"error": f"server busy: all {self.adj.connection_limit} connections have "
                                    "requests in flight; retry shortly", "status": 503}).encode()
        head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()
        try:
            conn.setblocking(False)
            conn.send(head + body)
            conn.shutdown(socket.SHUT_WR)
            conn.recv(65536)  # what the client already sent: closing unread data would reset
        except OSError:
            pass
        finally:
            conn.close()


class HealthApp:
    """The health port's WSGI app: ``GET``/``HEAD /ping`` only (never ``/invocations``)."""

    def __init__(self, info: Callable[[], dict]):
        self.info = info

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path != "/ping":
            status, headers, body = _json(404, {"error": "not found: the health port serves GET /ping only",
                                                "status": 404})
        elif method not in ("GET", "HEAD"):
            status, headers, body = _json(405, {"error": f"{method} not allowed on /ping; use GET", "status": 405})
        else:
            status, headers, body = _json(200, {"status": "Healthy", **self.info()})
        start_response(status, headers)
        return [body]


@dataclass(frozen=True)
class ConnectionLimits:
    """How many connections a listener holds and how long it waits on a client."""

    max_connections: int = 200
    idle_timeout: int = 30
    request_timeout: int = 30
    health_connections: int = 32


def _listener(app: Any, adj: Adjustments, dispatcher: ThreadedTaskDispatcher, request_timeout: float,
              sock: Optional[socket.socket] = None) -> Server:
    """A guarded waitress listener on its own socket map (own connection count)."""
    if sock is None:
        server = Server(app, {}, _start=True, dispatcher=dispatcher, adj=adj)
    else:
        server = Server(app, {}, _start=False, _sock=sock, dispatcher=dispatcher, adj=adj, bind_socket=False,
                        sockinfo=(sock.family, sock.type, sock.proto, sock.getsockname()))
    server.request_timeout = float(request_timeout)
    return server


def _loop_once(socket_map: dict, timeout: float) -> None:
    """One pass of waitress's event loop over ``socket_map`` (poll(2)), waiting at most ``timeout`` s."""
    wasyncore.loop(timeout=timeout, map=socket_map, use_poll=True, count=1)


class ModelServer:
    """The health listener, the public listener, the control socket and the event loop."""

    def __init__(self, app: InferenceApp, public: socket.socket, *, threads: int, max_body: int,
                 standby: bool, control_path: Optional[str], ready_file: Optional[str],
                 limits: ConnectionLimits = ConnectionLimits()):
        self.app = app
        common = dict(host="127.0.0.1", port=0, ident="imgpipe", max_request_body_size=max_body,
                      expose_tracebacks=False, cleanup_interval=1,
                      channel_timeout=limits.idle_timeout)
        self.adj = Adjustments(threads=threads, connection_limit=limits.max_connections, **common)
        self.dispatcher = ThreadedTaskDispatcher()
        self.dispatcher.set_thread_count(threads)
        # the health port: its own socket map, connection count and thread, so neither held
        # connections nor busy request threads on the public port can delay its /ping
        self.health_dispatcher = ThreadedTaskDispatcher()
        self.health_dispatcher.set_thread_count(1)
        health_adj = Adjustments(connection_limit=limits.health_connections, **common)
        self.health = _listener(HealthApp(app.health_info), health_adj, self.health_dispatcher, limits.request_timeout)
        public.setblocking(False)
        self.listener = public
        self.public = _listener(app, self.adj, self.dispatcher, limits.request_timeout, sock=public)
        self.map = self.public._map
        self.health_done = threading.Event()
        self.active = threading.Event()
        self.stopping = threading.Event()
        self.control_path = control_path
        self.ready_file = ready_file
        if not standby:
            self.activate()

    # -- commands (any thread) ---------------------------------------------------------
    def activate(self) -> None:
        self.active.set()
        self.public.pull_trigger()

    def stop(self) -> None:
        self.stopping.set()
        self.public.pull_trigger()

    def status(self) -> dict:
        return {"pid": os.getpid(), "active": self.active.is_set(), "stopping": self.stopping.is_set(),
                "health_port": self.health_port, "public_port": self.listener.getsockname()[1],
                "requests": self.app.requests, **self.app.health_info()}

    @property
    def health_port(self) -> int:
        return int(self.health.effective_port)

    # -- loop (main thread) ------------------------------------------------------------
    def _busy(self) -> bool:
        if self.app.in_flight or self.dispatcher.queue or self.dispatcher.active_count:
            return True
        for obj in list(self.map.values()):
            if isinstance(obj, HTTPChannel) and (obj.requests or obj.total_outbufs_len or obj.request):
                return True
        return False

    def _close_idle_connections(self) -> None:
        """While draining: keep-alive connections between requests are closed (clients reconnect,
        to the new server); connections with a request under way are closed once answered."""
        for obj in list(self.map.values()):
            if (isinstance(obj, HTTPChannel) and not obj.requests and not obj.total_outbufs_len
                    and obj.request is None):
                obj.handle_close()

    def _serve_health(self) -> None:
        while not self.health_done.is_set():
            _loop_once(self.health._map, LOOP_TIMEOUT)
        self.health_dispatcher.shutdown(timeout=2)
        wasyncore.close_all(self.health._map)

    def serve(self) -> None:
        health = threading.Thread(target=self._serve_health, daemon=True, name="health")
        health.start()
        self._start_control()
        self._write_ready()
        LOG.info("serving on 127.0.0.1:%s (health port %s)%s", self.listener.getsockname()[1],
                 self.health_port, "" if self.active.is_set() else ", standby")
        while not self.stopping.is_set():
            self.public.accepting = self.active.is_set()
            _loop_once(self.map, LOOP_TIMEOUT)
        # drain: stop accepting (the socket stays open for whoever holds it), finish requests
        self.public.accepting = False
        LOG.info("stopping: draining requests in flight")
        deadline, quiet_since = time.monotonic() + DRAIN_MAX_SECONDS, None
        while time.monotonic() < deadline:
            _loop_once(self.map, 0.05)
            self._close_idle_connections()
            if self._busy():
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= DRAIN_QUIET_SECONDS:
                break
        self.dispatcher.shutdown(timeout=5)
        wasyncore.close_all(self.map)
        self.listener.close()
        self.health_done.set()
        self.health.pull_trigger()
        health.join(timeout=5)
        LOG.info("stopped after %d requests", self.app.requests)

    def _write_ready(self) -> None:
        if not self.ready_file:
            return
        path = Path(self.ready_file)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.status()))
        os.replace(tmp, path)

    # -- control socket ----------------------------------------------------------------
    def _start_control(self) -> None:
        if not self.control_path:
            return
        try:
            os.unlink(self.control_path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(self.control_path)  # mode 0600: this user only
        finally:
            os.umask(old)
        sock.listen()
        threading.Thread(target=self._control_loop, args=(sock,), daemon=True, name="control").start()

    def _control_loop(self, sock: socket.socket) -> None:
        while True:
            conn, _ = sock.accept()
            with conn:
                try:
                    self._control(conn)
                except Exception:  # noqa: BLE001 - a bad control client never stops the server
                    LOG.warning("control request failed:\n%s", traceback.format_exc())

    def _control(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        if hasattr(socket, "SO_PEERCRED"):
            _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                            struct.calcsize("3i")))
            if uid != os.getuid():
                return
        data = b""
        while not data.endswith(b"\n") and len(data) < 4096:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        command = json.loads(data or b"{}").get("cmd")
        if command == "getfd":
            socket.send_fds(conn, [json.dumps({"ok": True, **self.status()}).encode() + b"\n"],
                            [self.listener.fileno()])
            return
        if command == "activate":
            self.activate()
        elif command == "stop":
            self.stop()
        elif command != "status":
            conn.sendall(json.dumps({"ok": False, "error": f"unknown command {command!r}"}).encode() + b"\n")
            return
        conn.sendall(json.dumps({"ok": True, **self.status()}).encode() + b"\n")


# ---------------------------------------------------------------------------- main
def load_handler() -> Any:
    import inference  # inference/inference.py, beside this file

    return inference


def warm_up(handler: Any, model: Any) -> None:
    """One forward pass on a blank image: a model that cannot predict never goes healthy."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (model.image_size, model.image_size)).save(buffer, "PNG")
    handler.output_fn(handler.predict_fn(handler.input_fn(buffer.getvalue(), "image/png"), model), None)


def model_bytes(model: Any) -> int:
    """Bytes of a loaded model's parameters and buffers (what the multi-model byte limit counts)."""
    tensors = list(model.model.parameters()) + list(model.model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def archive_loader(handler: Any) -> Callable[[Path], Any]:
    """Load one ``model.tar.gz`` of a multi-model endpoint: safe extraction into a temporary
    directory, ``model_fn``, one warm-up prediction."""
    import tempfile

    def load(archive: Path) -> Any:
        started = time.time()
        with tempfile.TemporaryDirectory(prefix="imgpipe-mme-") as tmp:
            (Path(tmp) / "model.tar.gz").symlink_to(archive)
            model = handler.model_fn(tmp)
        warm_up(handler, model)
        LOG.info("loaded %s in %.2fs: %d classes, %dpx", archive, time.time() - started,
                 len(model.classes), model.image_size)
        return model

    return load


def load_models(handler: Any, args: argparse.Namespace) -> Any:
    """The single model of ``--model-dir`` (loaded and warm now) or, with ``--multi-model``, a
    cache over the archives under it (each loaded on first use)."""
    if args.multi_model:
        if not Path(args.model_dir).is_dir():
            raise SystemExit(f"--model-dir {args.model_dir}: not a directory")
        handler.Limits.from_env()
        limits = CacheLimits.from_env()
        LOG.info("multi-model endpoint over %s: at most %d models%s in memory", args.model_dir, limits.max_models,
                 f" and {limits.max_bytes} bytes" if limits.max_bytes else "")
        return MultiModel(ModelCache(args.model_dir, archive_loader(handler), limits=limits, size_of=model_bytes))
    started = time.time()
    model = handler.model_fn(args.model_dir)
    warm_up(handler, model)
    LOG.info("model loaded and warm in %.1fs: %d classes, %dpx", time.time() - started,
             len(model.classes), model.image_size)
    return SingleModel(model)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True,
                        help="model.pth + model.json, or model.tar.gz; with --multi-model: the models' directory")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind with --port (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to bind (ignored with --listen-fd)")
    parser.add_argument("--listen-fd", type=int, help="an inherited listening socket to serve instead")
    parser.add_argument("--standby", action="store_true", help="accept on the public socket only after 'activate'")
    parser.add_argument("--control", help="Unix socket path for control commands")
    parser.add_argument("--ready-file", help="JSON written once the model is loaded and warm")
    parser.add_argument("--threads", type=int, default=4, help="request threads")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--max-connections", type=int, default=ConnectionLimits.max_connections,
                        help="open connections on the public port; beyond it the longest-idle one is closed, "
                             "or a busy server answers 503")
    parser.add_argument("--idle-timeout", type=int, default=ConnectionLimits.idle_timeout,
                        help="seconds a connection may stay idle")
    parser.add_argument("--request-timeout", type=int, default=ConnectionLimits.request_timeout,
                        help="seconds a request's headers and body may take to arrive")
    parser.add_argument("--capture-dir", help="data capture directory")
    parser.add_argument("--capture-percent", type=int, default=0, help="share of invocations captured")
    parser.add_argument("--endpoint-name", default="", help="reported by /ping; the only EndpointName the "
                        "runtime route /endpoints/<name>/invocations answers to")
    parser.add_argument("--model-package-arn", default="", help="reported by /ping")
    parser.add_argument("--multi-model", action="store_true",
                        help="serve every model archive under --model-dir, picked per request by its "
                             "target model (relative path, e.g. v1/model.tar.gz)")
    parser.add_argument("--region", default=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                        or "us-east-1", help="region named in ModelError's LogStreamArn")
    parser.add_argument("--log-path", default="", help="this server's log file, named in ModelError messages")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    os.umask(PRIVATE_UMASK)  # data capture (request bodies) and logs: this user only
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    import torch

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    handler = load_handler()
    models = load_models(handler, args)
    if args.listen_fd is not None:
        public = socket.socket(fileno=args.listen_fd)
    else:
        public = socket.create_server((args.host, args.port), backlog=1024)
    server_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    capture = (DataCapture(args.capture_dir, args.capture_percent, server_id)
               if args.capture_dir and args.capture_percent > 0 else None)
    info = {"endpoint_name": args.endpoint_name, "model_package_arn": args.model_package_arn, "pid": os.getpid()}
    app = InferenceApp(handler, models, info=info, capture=capture, region=args.region, log_path=args.log_path)
    max_body = handler.Limits.from_env().max_payload_bytes
    server = ModelServer(app, public, threads=args.threads, max_body=max_body, standby=args.standby,
                         control_path=args.control, ready_file=args.ready_file,
                         limits=ConnectionLimits(args.max_connections, args.idle_timeout, args.request_timeout))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop())
    server.serve()
    if args.control:
        try:
            os.unlink(args.control)
        except FileNotFoundError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
