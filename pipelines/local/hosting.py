"""Local hosting: SageMaker-style endpoints as real HTTP server processes on this machine.

:class:`LocalHosting` implements :class:`pipelines.backends.Hosting`. Each endpoint is one
``inference/serve.py`` process (waitress, SageMaker's ``GET /ping`` + ``POST /invocations``
contract, bound to 127.0.0.1 by default) running ``inference/inference.py`` on the package's
``model.tar.gz``. The process is detached (its own session, output to a log file), so it keeps
serving after the ``imgpipe`` command (or pipeline job) that started it has ended, until
``delete_endpoint``.

State lives in ``<home>/endpoints/<name>/endpoint.json`` (package, port, pid, control socket,
log, model copy); a server that has died is reported ``Failed``, never as ``InService``.
Deploys and deletes of one endpoint are serialised by a file lock.

Update without dropping service: the new server is started on the *same listening socket*
(received from the old server over its control socket and inherited by the new process), in
standby; it is health-checked on its own private port (``GET /ping``, after it loaded the model
and ran a warm-up prediction), then activated, and only then is the old server told to stop
accepting, finish its requests in flight and exit. There is one kernel accept queue all along,
so no connection is refused or reset; the URL and port never change. A new server that fails
to start or to answer ``/ping`` is killed and the old one keeps serving (like SageMaker's
blue/green rollback): :class:`HostingError` says so.

Multi-model endpoints (:meth:`LocalHosting.deploy_multi_model`): one server started with
``--multi-model`` over ``<home>/endpoints/<name>/multi-model/``, which holds each package's
archive as its target model ``v<version>/model.tar.gz``. That directory is the source of truth
(like the S3 prefix of a SageMaker multi-model endpoint): a new set of packages is synced into it
(archives copied aside and renamed into place, dropped ones removed) and the running server serves
it from the next request, without a restart. Models load on first use and are evicted
least-recently-used (``IMGPIPE_MME_MAX_MODELS``, ``IMGPIPE_MME_MAX_BYTES``; docs/endpoints.md).

Every server also answers SageMaker Runtime's ``POST /endpoints/<name>/invocations``: its ``Url``
is the ``endpoint_url`` to give boto3 (one port per endpoint).

Settings from the environment (the deploy step constructs ``LocalHosting(settings)`` only):
``IMGPIPE_ENDPOINT_PORT`` (port of a new endpoint; default 8080, or a free port when 8080 is
taken; ``0``: always a free port), ``IMGPIPE_ENDPOINT_HOST`` (default 127.0.0.1),
``IMGPIPE_SERVER_THREADS`` (request threads, default 4), ``IMGPIPE_TORCH_THREADS`` (torch
threads of the server, default torch's own).

Data capture: ``data_capture_percent`` of successful invocations are written as SageMaker data
capture JSON lines to ``s3://<default bucket>/imgpipe/data-capture/<endpoint>/AllTraffic/
YYYY/MM/DD/HH/<server>.jsonl`` in the local object store (the AWS default prefix
``s3://<bucket>/<base_job_prefix>/data-capture`` of the deploy pipeline).
"""
from __future__ import annotations

import contextlib
import fcntl
import filecmp
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Optional

from pipelines.backends import HostingError, target_model_name
from pipelines.common import pid_alive, utc_now_iso
from pipelines.local.object_store import ObjectStore
from pipelines.settings import Settings

ACCOUNT_ID = "000000000000"
SERVE_PY = Path(__file__).resolve().parents[2] / "inference" / "serve.py"
NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")  # SageMaker's endpoint name pattern
DEFAULT_PORT = 8080  # SageMaker's serving port
VARIANT_NAME = "AllTraffic"
STATE_FILE = "endpoint.json"
SINGLE_MODEL, MULTI_MODEL = "SingleModel", "MultiModel"
START_TIMEOUT = 180.0  # model load + warm-up on a busy 2-core machine
STOP_TIMEOUT = 40.0  # the old server drains for at most 30 s
INVOKE_TIMEOUT = 120.0
LOG_TAIL = 15

_CHILDREN: dict[int, subprocess.Popen] = {}  # servers this process started (reaped when they end)


def _env_int(name: str, default: Optional[int]) -> Optional[int]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise HostingError(f"{name}={raw!r} is not an integer") from None


def _runtime_dir() -> Path:
    """A private (0700) directory with a short path for the servers' control sockets."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = Path(base) / f"imgpipe-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise HostingError(f"{path} must be owned by this user with mode 0700")
    return path


def _log_tail(path: Optional[str], lines: int = LOG_TAIL) -> str:
    try:
        text = Path(path).read_text(errors="replace") if path else ""
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def process_alive(pid: Optional[int], marker: Optional[str] = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, on Linux, whether its command line holds
    ``marker`` (so a recycled pid is not mistaken for the server). Reaps our own children."""
    if not pid:
        return False
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)
        return False
    if not pid_alive(pid):
        return False
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            if proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                return False
            if marker and marker.encode() not in proc.joinpath("cmdline").read_bytes():
                return False
        except (OSError, IndexError):
            return False
    return True


def control(path: str, command: str, timeout: float = 10.0, want_fd: bool = False) -> tuple[dict, Optional[int]]:
    """Send one control command to a server; its JSON answer (and a received fd)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps({"cmd": command}).encode() + b"\n")
        fds: list[int] = []
        if want_fd:
            data, fds, _, _ = socket.recv_fds(sock, 65536, 1)
        else:
            data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    answer = json.loads(data or b"{}")
    if not answer.get("ok"):
        for fd in fds:
            os.close(fd)
        raise HostingError(f"server control {command!r} failed: {answer.get('error', 'no answer')}")
    return answer, (fds[0] if fds else None)


def http_get(host: str, port: int, path: str, timeout: float = 5.0) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(body or b"null")
    except ValueError:
        return response.status, body.decode(errors="replace")


class LocalHosting:
    """:class:`pipelines.backends.Hosting` with local server processes (see the module doc)."""

    def __init__(self, settings: Settings, *, port: Optional[int] = None, host: Optional[str] = None,
                 start_timeout: float = START_TIMEOUT, data_capture_url: Optional[str] = None):
        self.settings = settings
        self.root = settings.home.resolve() / "endpoints"
        self.store = ObjectStore(settings.s3_root)
        self.port = port if port is not None else _env_int("IMGPIPE_ENDPOINT_PORT", None)
        self.host = host or os.environ.get("IMGPIPE_ENDPOINT_HOST", "").strip() or "127.0.0.1"
        self.start_timeout = start_timeout
        self.data_capture_url = (data_capture_url or f"s3://{settings.default_bucket}/imgpipe/data-capture").rstrip("/")
        self._local = threading.local()

    # ------------------------------------------------------------------ state
    def endpoint_arn(self, name: str) -> str:
        return f"arn:aws:sagemaker:{self.settings.region}:{ACCOUNT_ID}:endpoint/{name.lower()}"

    def _dir(self, name: str) -> Path:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise HostingError(f"invalid endpoint name {name!r}: letters, digits and hyphens, "
                               "at most 63, starting and ending with a letter or digit", 400)
        return self.root / name

    def _read_state(self, name: str) -> Optional[dict]:
        try:
            return json.loads((self._dir(name) / STATE_FILE).read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return None

    def _write_state(self, name: str, state: dict) -> None:
        path = self._dir(name) / STATE_FILE
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, path)

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[Path]:
        directory = self._dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory.parent / f".{name}.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield directory
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @staticmethod
    def _alive(state: Optional[dict]) -> bool:
        return bool(state) and process_alive(state.get("Pid"), state.get("ControlSocket"))

    # ------------------------------------------------------------------ reads
    def describe_endpoint(self, endpoint_name: str) -> Optional[dict]:
        """The endpoint as DescribeEndpoint shows it (plus Url, Port, Pid, LogPath); ``None`` if absent."""
        state = self._read_state(endpoint_name)
        if state is None:
            return None
        described = {"Mode": SINGLE_MODEL, **{k: v for k, v in state.items()
                                              if k not in ("ControlSocket", "HealthPort", "ModelDir")}}
        if not self._alive(state):
            described["EndpointStatus"] = "Failed"
            tail = _log_tail(state.get("LogPath"), 3)
            described["FailureReason"] = (f"the server process (pid {state.get('Pid')}) is not running"
                                          + (f"; log: {tail}" if tail else "") + ": deploy again or delete it")
        return described

    def list_endpoints(self) -> list[dict]:
        """Every local endpoint, described, newest first."""
        if not self.root.is_dir():
            return []
        found = [self.describe_endpoint(p.name) for p in self.root.iterdir()
                 if p.is_dir() and (p / STATE_FILE).is_file() and NAME_RE.match(p.name)]
        return sorted((d for d in found if d), key=lambda d: d.get("CreationTime", ""), reverse=True)

    # ------------------------------------------------------------------ invoke
    def invoke(self, endpoint_name: str, body: bytes, content_type: str, *,
               target_model: Optional[str] = None, accept: Optional[str] = None) -> Any:
        """POST /invocations (to ``target_model`` on a multi-model endpoint); the decoded JSON
        answer, or :class:`HostingError` with the status and the server's message."""
        state = self._read_state(endpoint_name)
        if state is None:
            raise HostingError(f"no endpoint {endpoint_name!r} (see `imgpipe endpoints list`)", 404)
        if not self._alive(state):
            raise HostingError(f"endpoint {endpoint_name} is not running (pid {state.get('Pid')} ended): "
                               "deploy it again or delete it")
        headers = {"Content-Type": content_type, "Accept": accept or "application/json"}
        if target_model is not None:
            headers["X-Amzn-SageMaker-Target-Model"] = target_model
        status, payload = self._post(state["Host"], int(state["Port"]), body, headers)
        try:
            answer = json.loads(payload)
        except ValueError:
            raise HostingError(f"{endpoint_name}: HTTP {status}: the answer is not JSON: {payload[:200]!r}",
                               status) from None
        if status >= 400:
            message = answer.get("error") if isinstance(answer, dict) else None
            raise HostingError(f"{endpoint_name}: HTTP {status}: {message or repr(payload[:200])}", status)
        return answer

    def _post(self, host: str, port: int, body: bytes, headers: dict) -> tuple[int, bytes]:
        """One keep-alive connection per thread and address; a connection the server closed while
        idle (e.g. an old server that drained during an update) is replaced once."""
        cache = getattr(self._local, "conns", None)
        if cache is None:
            cache = self._local.conns = {}
        for attempt in (1, 2):
            conn = cache.get((host, port))
            fresh = conn is None
            if fresh:
                conn = cache[(host, port)] = http.client.HTTPConnection(host, port, timeout=INVOKE_TIMEOUT)
            try:
                conn.request("POST", "/invocations", body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                if response.will_close:
                    conn.close()
                    cache.pop((host, port), None)
                return response.status, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest, http.client.BadStatusLine) as exc:
                conn.close()
                cache.pop((host, port), None)
                if fresh or attempt == 2:
                    raise HostingError(f"{host}:{port}: connection failed: {exc}") from None
            except OSError as exc:
                conn.close()
                cache.pop((host, port), None)
                raise HostingError(f"{host}:{port}: {exc}") from None
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ deploy
    def deploy(self, endpoint_name: str, model_package: dict, *, instance_type: str = "local",
               instance_count: int = 1, data_capture_percent: int = 0) -> dict:
        """Create or update ``endpoint_name`` to serve ``model_package``; returns once it is healthy."""
        arn = model_package["ModelPackageArn"]
        model_url = _model_data_url(model_package)
        wanted = {"Mode": SINGLE_MODEL, "ModelPackageArn": arn, "InstanceType": instance_type,
                  "InstanceCount": int(instance_count), "DataCaptureSamplingPercentage": _percent(data_capture_percent)}
        result = {"EndpointName": endpoint_name, "ModelPackageArn": arn}
        with self._lock(endpoint_name) as directory:
            old = self._read_state(endpoint_name)
            if self._unchanged(old, wanted):
                return {**result, "Action": "Unchanged", "Url": old["Url"]}
            generation = _generation()
            model_dir = directory / "models" / generation
            self._fetch_model(model_url, model_dir)
            fields = {"ModelPackageArn": arn, "ModelPackageGroupName": model_package.get("ModelPackageGroupName"),
                      "ModelPackageVersion": model_package.get("ModelPackageVersion"), "ModelDataUrl": model_url}
            state = self._switch(endpoint_name, old, generation, model_dir, {**wanted, **fields})
            return {**result, "Action": "Updated" if old else "Created", "Url": state["Url"]}

    def deploy_multi_model(self, endpoint_name: str, model_packages: list[dict], *, instance_type: str = "local",
                           instance_count: int = 1, data_capture_percent: int = 0) -> dict:
        """Serve every package of ``model_packages`` behind ``endpoint_name``, each as its target
        model ``v<version>/model.tar.gz``. A running multi-model endpoint with the same instance
        and capture settings keeps its server: only its model directory changes (archives added,
        replaced, removed), and the server serves the new set from the next request on."""
        targets = _targets(model_packages)
        newest = max(model_packages, key=lambda p: int(p.get("ModelPackageVersion") or 0))
        wanted = {"Mode": MULTI_MODEL, "InstanceType": instance_type, "InstanceCount": int(instance_count),
                  "DataCaptureSamplingPercentage": _percent(data_capture_percent)}
        fields = {"ModelPackageArn": newest["ModelPackageArn"],
                  "ModelPackageGroupName": newest.get("ModelPackageGroupName"),
                  "ModelPackageVersion": newest.get("ModelPackageVersion"),
                  "ModelPackageArns": [p["ModelPackageArn"] for p, _ in targets.values()],
                  "TargetModels": list(targets)}
        result = {"EndpointName": endpoint_name, "ModelPackageArn": newest["ModelPackageArn"],
                  "Mode": MULTI_MODEL, "TargetModels": list(targets)}
        with self._lock(endpoint_name) as directory:
            old = self._read_state(endpoint_name)
            model_dir = directory / "multi-model"
            changed = self._sync_models(model_dir, {t: url for t, (_, url) in targets.items()})
            if self._unchanged(old, wanted):
                if not changed and all(old.get(k) == v for k, v in fields.items()):
                    return {**result, "Action": "Unchanged", "Url": old["Url"]}
                self._write_state(endpoint_name, {**old, **fields, "LastModifiedTime": utc_now_iso()})
                return {**result, "Action": "Updated", "Url": old["Url"]}
            state = self._switch(endpoint_name, old, _generation(), model_dir, {**wanted, **fields})
            return {**result, "Action": "Updated" if old else "Created", "Url": state["Url"]}

    def _unchanged(self, old: Optional[dict], wanted: dict) -> bool:
        """Whether the running server of ``old`` already has the ``wanted`` settings and is healthy."""
        if not self._alive(old):
            return False
        current = {"Mode": SINGLE_MODEL, **old}
        return all(current.get(k) == v for k, v in wanted.items()) and self._healthy(old)

    def _switch(self, name: str, old: Optional[dict], generation: str, model_dir: Path, fields: dict) -> dict:
        """Start a server on ``model_dir`` (on the old server's socket), activate it, record it,
        then stop the old server; the new state. The old server keeps serving if this fails."""
        old_alive = self._alive(old)
        listener = self._listener(old if old_alive else None, old)
        multi_model = fields["Mode"] == MULTI_MODEL
        try:
            new = self._start(name, generation, model_dir, listener, fields["ModelPackageArn"],
                              fields["DataCaptureSamplingPercentage"], multi_model)
        except BaseException:
            if not multi_model:
                shutil.rmtree(model_dir, ignore_errors=True)
            raise
        finally:
            listener.close()  # the server holds its own copy
        try:
            control(new["ControlSocket"], "activate")
        except (OSError, HostingError) as exc:
            self._kill(new)
            if not multi_model:
                shutil.rmtree(model_dir, ignore_errors=True)
            raise HostingError(f"could not activate the new server of {name}: {exc}") from None
        now = utc_now_iso()
        state = {"EndpointName": name, "EndpointArn": self.endpoint_arn(name), "EndpointStatus": "InService",
                 **fields, "DataCaptureUrl": self._capture_url(name),
                 "Url": f"http://{_url_host(new['Host'])}:{new['Port']}",
                 "CreationTime": (old or {}).get("CreationTime") or now, "LastModifiedTime": now, **new}
        self._write_state(name, state)  # clients find the new server before the old one goes
        if old_alive:
            self._stop(old)
        if old and old.get("ModelDir") and Path(old["ModelDir"]) != model_dir:
            shutil.rmtree(old["ModelDir"], ignore_errors=True)
        status, answer = http_get(state["Host"], state["Port"], "/ping")
        if status != 200 or (isinstance(answer, dict) and answer.get("pid") != state["Pid"]):
            raise HostingError(f"{name}: after the switch /ping answered {status} {answer!r}")
        return state

    def _sync_models(self, model_dir: Path, archives: dict[str, str]) -> bool:
        """Make ``model_dir`` hold exactly ``archives`` (target -> model data URL); whether anything
        changed. Each archive appears atomically (copied aside, then renamed into place)."""
        model_dir.mkdir(parents=True, exist_ok=True)
        changed = False
        for target, url in archives.items():
            source = self._archive_path(url)
            dest = model_dir / target
            if dest.is_file() and filecmp.cmp(source, dest, shallow=False):
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, dest)
            changed = True
        keep = {PurePosixPath(t).parts[0] for t in archives}
        for entry in model_dir.iterdir():
            if entry.name not in keep:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                changed = True
        return changed

    def _archive_path(self, model_url: str) -> Path:
        """The ``model.tar.gz`` file of a model data URL in the local object store."""
        try:
            source = self.store.path(model_url)
        except ValueError as exc:
            raise HostingError(f"model data {model_url!r}: {exc}", 400) from None
        if source.is_dir():
            source = source / "model.tar.gz"
        if not source.is_file():
            raise HostingError(f"model data {model_url} does not exist in the local object store ({source})", 400)
        return source

    def _capture_url(self, name: str) -> str:
        return f"{self.data_capture_url}/{name}/{VARIANT_NAME}"

    def _fetch_model(self, model_url: str, model_dir: Path) -> None:
        try:
            source = self.store.path(model_url)
        except ValueError as exc:
            raise HostingError(f"model data {model_url!r}: {exc}", 400) from None
        model_dir.mkdir(parents=True, exist_ok=True)
        if source.is_file():
            shutil.copy2(source, model_dir / ("model.tar.gz" if source.name.endswith(".tar.gz") else source.name))
        elif source.is_dir():
            shutil.copytree(source, model_dir, dirs_exist_ok=True)
        else:
            raise HostingError(f"model data {model_url} does not exist in the local object store ({source})", 400)

    def _listener(self, live: Optional[dict], previous: Optional[dict]) -> socket.socket:
        """The endpoint's listening socket: the live server's own (passed over its control socket),
        else a new one on the previous port, the configured port, 8080, or a free port."""
        if live is not None:
            try:
                _, fd = control(live["ControlSocket"], "getfd", want_fd=True)
                if fd is not None:
                    return socket.socket(fileno=fd)
            except (OSError, HostingError, ValueError):
                pass  # an unreachable old server: it is stopped after the new one is up
        candidates: list[tuple[int, bool]] = []
        if previous and previous.get("Port"):
            candidates.append((int(previous["Port"]), False))
        if self.port is not None:
            candidates.append((self.port, True))
        else:
            candidates += [(DEFAULT_PORT, False), (0, True)]
        for port, required in candidates:
            sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self.host, port))
                sock.listen(1024)
                return sock
            except OSError as exc:
                sock.close()
                if required:
                    raise HostingError(f"cannot listen on {self.host}:{port}: {exc} "
                                       "(set IMGPIPE_ENDPOINT_PORT to a free port, or 0)") from None
        raise AssertionError("unreachable")

    def _start(self, name: str, generation: str, model_dir: Path, listener: socket.socket,
               package_arn: str, percent: int, multi_model: bool = False) -> dict:
        """Start a standby server on ``listener``; returns once its private /ping answers 200."""
        directory = self._dir(name)
        logs = directory / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{generation}.log"
        control_path = str(_runtime_dir() / f"{uuid.uuid4().hex[:16]}.sock")
        ready = logs / f"{generation}.ready.json"
        fd = listener.fileno()
        cmd = [sys.executable, str(SERVE_PY), "--model-dir", str(model_dir), "--listen-fd", str(fd),
               "--standby", "--control", control_path, "--ready-file", str(ready),
               "--threads", str(_env_int("IMGPIPE_SERVER_THREADS", 4)),
               "--torch-threads", str(_env_int("IMGPIPE_TORCH_THREADS", 0)),
               "--endpoint-name", name, "--model-package-arn", package_arn,
               "--region", self.settings.region, "--log-path", str(log_path)]
        if multi_model:
            cmd.append("--multi-model")
        if percent > 0:
            capture_dir = self.store.path(self._capture_url(name))
            cmd += ["--capture-dir", str(capture_dir), "--capture-percent", str(percent)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
        env["PYTHONUNBUFFERED"] = "1"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, pass_fds=(fd,), start_new_session=True, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, cwd=str(directory), env=env)
        _CHILDREN[proc.pid] = proc
        new = {"Pid": proc.pid, "ControlSocket": control_path, "LogPath": str(log_path),
               "ModelDir": str(model_dir), "Host": listener.getsockname()[0], "Port": listener.getsockname()[1]}
        deadline = time.monotonic() + self.start_timeout
        try:
            while not ready.is_file():
                if proc.poll() is not None:
                    raise HostingError(f"the server for {name} exited with code {proc.returncode} while "
                                       f"starting:\n{_log_tail(str(log_path))}")
                if time.monotonic() > deadline:
                    raise HostingError(f"the server for {name} was not ready after {self.start_timeout:.0f} s "
                                       f"(log {log_path}):\n{_log_tail(str(log_path))}")
                time.sleep(0.05)
            new["HealthPort"] = json.loads(ready.read_text())["health_port"]
            status, answer = http_get("127.0.0.1", new["HealthPort"], "/ping")
            if status != 200:
                raise HostingError(f"the new server for {name} failed its health check: /ping answered "
                                   f"{status} {answer!r}")
        except BaseException as exc:
            self._kill(new)
            if isinstance(exc, (OSError, ValueError, KeyError)):
                raise HostingError(f"the new server for {name} failed its health check: {exc}") from None
            raise
        return new

    def _healthy(self, state: dict) -> bool:
        try:
            if state.get("HealthPort"):  # the server's own health port: never starved by clients
                return http_get("127.0.0.1", int(state["HealthPort"]), "/ping")[0] == 200
            return http_get(state["Host"], int(state["Port"]), "/ping")[0] == 200
        except OSError:
            return False

    # ------------------------------------------------------------------ stop / delete
    def _stop(self, state: dict, timeout: float = STOP_TIMEOUT) -> None:
        """Ask a server to drain and exit; SIGTERM, then SIGKILL its process group, if it does not."""
        pid = state.get("Pid")
        marker = state.get("ControlSocket")
        if not process_alive(pid, marker):
            return
        try:
            control(state["ControlSocket"], "stop")
        except (OSError, HostingError, ValueError):
            self._signal(pid, signal.SIGTERM)
        if not self._wait_gone(pid, marker, timeout):
            self._kill(state)

    def _kill(self, state: dict) -> None:
        pid = state.get("Pid")
        self._signal(pid, signal.SIGTERM)
        if not self._wait_gone(pid, state.get("ControlSocket"), 5):
            self._signal(pid, signal.SIGKILL)
            self._wait_gone(pid, state.get("ControlSocket"), 5)
        with contextlib.suppress(OSError):
            os.unlink(state.get("ControlSocket") or "")

    @staticmethod
    def _signal(pid: Optional[int], sig: int) -> None:
        if not pid:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)  # the server leads its own session / process group

    @staticmethod
    def _wait_gone(pid: Optional[int], marker: Optional[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while process_alive(pid, marker):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def delete_endpoint(self, endpoint_name: str) -> None:
        """Stop the server (it finishes its requests first) and forget the endpoint; nothing if absent."""
        with self._lock(endpoint_name) as directory:
            state = self._read_state(endpoint_name)
            if state is not None:
                self._stop(state)
            shutil.rmtree(directory, ignore_errors=True)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _generation() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _percent(value: int) -> int:
    percent = int(value)
    if not 0 <= percent <= 100:
        raise HostingError(f"data_capture_percent must be 0-100, not {percent}", 400)
    return percent


def _targets(packages: list[dict]) -> dict[str, tuple[dict, str]]:
    """target model name -> (package, model data URL), by version; 400 for none or duplicates."""
    if not packages:
        raise HostingError("a multi-model endpoint needs at least one model package", 400)
    targets: dict[str, tuple[dict, str]] = {}
    for package in sorted(packages, key=lambda p: int(p.get("ModelPackageVersion") or 0)):
        name = target_model_name(package)
        if name in targets:
            raise HostingError(f"two model packages are both target model {name}", 400)
        targets[name] = (package, _model_data_url(package))
    return targets


def _model_data_url(package: dict) -> str:
    url = package.get("ModelDataUrl")
    if not url:
        containers = (package.get("InferenceSpecification") or {}).get("Containers") or []
        url = containers[0].get("ModelDataUrl") if containers else None
    if not url:
        raise HostingError(f"model package {package.get('ModelPackageArn')} has no ModelDataUrl", 400)
    return url
