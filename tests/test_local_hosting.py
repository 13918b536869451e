"""LocalHosting and the ``imgpipe endpoints`` / ``imgpipe predict`` CLI, with real server processes.

The tests of this module run in order on one endpoint: created by a process that then exits
(the server survives it), updated under load without a failed request, an update to a broken
model refused while the old server keeps serving, a killed server detected and replaced, data
capture, CLI errors, and delete (no process left behind).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from endpoint_helpers import REPO, archive, trained_model, valid_images
from pipelines.backends import HostingError
from pipelines.local.hosting import LocalHosting, http_get, process_alive
from pipelines.local.object_store import ObjectStore
from pipelines.settings import Settings

NAME = "digits-local"
ARN = "arn:aws:sagemaker:us-east-1:000000000000:model-package/Digits/{}"


def imgpipe(*args, home, timeout=120):
    env = {**os.environ, "IMGPIPE_HOME": str(home), "SAGEMAKER_SUPPRESS_V2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def package(version, uri):
    return {"ModelPackageArn": ARN.format(version), "ModelPackageVersion": version, "ModelPackageGroupName": "Digits",
            "InferenceSpecification": {"Containers": [{"Image": "x", "ModelDataUrl": uri}]}}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    model_dir, data = trained_model(tmp_path_factory.getbasetemp() / "endpoint-model")
    home = tmp_path_factory.mktemp("hosting") / "home"
    settings = Settings(home=home)
    store = ObjectStore(settings.s3_root)
    good = "s3://imgpipe-local/models/good/model.tar.gz"
    archive(model_dir, store.path(good))
    broken_dir = tmp_path_factory.mktemp("broken")
    (broken_dir / "model.json").write_text(json.dumps({"arch": "mobilenet_v2", "classes": ["a"], "image_size": 32,
                                                       "normalize": {"mean": [0, 0, 0], "std": [1, 1, 1]}}))
    (broken_dir / "model.pth").write_bytes(b"not a state dict")
    broken = "s3://imgpipe-local/models/broken/model.tar.gz"
    archive(broken_dir, store.path(broken))
    os.environ["IMGPIPE_TORCH_THREADS"] = "1"  # servers (and the subprocess deploying one) on a shared 2-core box
    hosting = LocalHosting(settings, port=0)
    yield {"settings": settings, "hosting": hosting, "good": good, "broken": broken, "data": data, "home": home}
    os.environ.pop("IMGPIPE_TORCH_THREADS", None)
    described = hosting.describe_endpoint(NAME)
    hosting.delete_endpoint(NAME)
    if described and process_alive(described.get("Pid")):  # never leave a server behind
        os.killpg(described["Pid"], signal.SIGKILL)


def test_deployed_by_a_process_that_exits_and_keeps_serving(env):
    code = ("import json,sys; from pathlib import Path; from pipelines.settings import Settings; "
            "from pipelines.local.hosting import LocalHosting; "
            "print(json.dumps(LocalHosting(Settings(home=Path(sys.argv[1])), port=0).deploy("
            "sys.argv[2], json.loads(sys.argv[3]), instance_type='local', instance_count=1, data_capture_percent=100)))")
    out = subprocess.run([sys.executable, "-c", code, str(env["home"]), NAME, json.dumps(package(1, env["good"]))],
                         cwd=REPO, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["Action"] == "Created" and result["ModelPackageArn"] == ARN.format(1)

    described = env["hosting"].describe_endpoint(NAME)
    assert described["EndpointStatus"] == "InService" and described["Host"] == "127.0.0.1"
    assert described["Url"] == f"http://127.0.0.1:{described['Port']}" == result["Url"]
    assert process_alive(described["Pid"])  # the deploying process is gone, the server is not
    assert os.getsid(described["Pid"]) == described["Pid"]  # detached: its own session
    status, ping = http_get("127.0.0.1", described["Port"], "/ping")
    assert status == 200 and ping["model_package_arn"] == ARN.format(1) and ping["pid"] == described["Pid"]

    for path, cls in valid_images(env["data"])[::7]:
        assert env["hosting"].invoke(NAME, path.read_bytes(), "image/png")[0]["label"] == cls

    listing = imgpipe("endpoints", "list", home=env["home"])
    assert listing.returncode == 0
    assert NAME in listing.stdout and "InService" in listing.stdout and described["Url"] in listing.stdout

    path, cls = valid_images(env["data"])[-1]
    predicted = imgpipe("predict", "--endpoint", NAME, path, "--top-k", "2", home=env["home"])
    assert predicted.returncode == 0, predicted.stderr
    lines = predicted.stdout.splitlines()
    assert lines[0] == f"{path}:" and lines[1].split() == ["LABEL", "INDEX", "PROBABILITY"]
    assert len(lines) == 5 and lines[3].split()[:2] == [cls, cls]


def wait_for(condition, timeout: float = 60.0) -> None:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass (the assertions then tell)."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_update_under_load_drops_no_request(env):
    hosting = env["hosting"]
    before = hosting.describe_endpoint(NAME)
    images = valid_images(env["data"])
    stop, errors, answers = threading.Event(), [], []

    def hammer(worker):
        client = LocalHosting(env["settings"])
        i = worker
        while not stop.is_set():
            path, cls = images[i % len(images)]
            try:
                answer = client.invoke(NAME, path.read_bytes(), "image/png")
                answers.append(answer[0]["label"] == cls)
            except Exception as exc:  # noqa: BLE001 - any failure is what this test looks for
                errors.append(repr(exc))
            i += 2
            time.sleep(0.01)

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(answers) >= 3)  # served before the update (a loaded machine is slow)
        served_before = len(answers)
        result = hosting.deploy(NAME, package(2, env["good"]), instance_type="local", instance_count=1,
                                data_capture_percent=100)
        wait_for(lambda: len(answers) > served_before + 5)  # and served after it
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert result["Action"] == "Updated"
    assert errors == []
    assert served_before > 0 and len(answers) > served_before + 5 and all(answers)
    after = hosting.describe_endpoint(NAME)
    assert after["Port"] == before["Port"] and after["Pid"] != before["Pid"]
    assert after["ModelPackageArn"] == ARN.format(2)
    assert not process_alive(before["Pid"])  # the old server drained and exited
    assert http_get("127.0.0.1", after["Port"], "/ping")[1]["pid"] == after["Pid"]

    again = hosting.deploy(NAME, package(2, env["good"]), instance_type="local", instance_count=1,
                           data_capture_percent=100)
    assert again["Action"] == "Unchanged" and hosting.describe_endpoint(NAME)["Pid"] == after["Pid"]


def test_broken_model_update_is_refused_and_old_server_keeps_serving(env):
    hosting = env["hosting"]
    before = hosting.describe_endpoint(NAME)
    with pytest.raises(HostingError, match="exited with code"):
        hosting.deploy(NAME, package(3, env["broken"]), instance_type="local", instance_count=1,
                       data_capture_percent=0)
    after = hosting.describe_endpoint(NAME)
    assert after["Pid"] == before["Pid"] and after["ModelPackageArn"] == ARN.format(2)
    assert after["EndpointStatus"] == "InService"
    path, cls = valid_images(env["data"])[0]
    assert hosting.invoke(NAME, path.read_bytes(), "image/png")[0]["label"] == cls


def test_data_capture_in_the_object_store(env):
    described = env["hosting"].describe_endpoint(NAME)
    assert described["DataCaptureUrl"] == f"s3://imgpipe-local/imgpipe/data-capture/{NAME}/AllTraffic"
    root = ObjectStore(env["settings"].s3_root).path(described["DataCaptureUrl"])
    lines = [json.loads(line) for f in root.rglob("*.jsonl") for line in f.read_text().splitlines()]
    assert len(lines) > 5  # 100 % sampling of the requests above
    assert {"endpointInput", "endpointOutput"} <= set(lines[0]["captureData"])


def test_predict_cli_errors(env, tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not an image")
    good = valid_images(env["data"])[0][0]
    out = imgpipe("predict", "--endpoint", NAME, good, not_image, home=env["home"])
    assert out.returncode == 1
    assert f"{good}:" in out.stdout
    assert f"{not_image}: error:" in out.stderr and "HTTP 400" in out.stderr and "not a decodable image" in out.stderr
    out = imgpipe("predict", "--endpoint", NAME, tmp_path / "missing.png", home=env["home"])
    assert out.returncode == 2 and "no such image file" in out.stderr
    out = imgpipe("predict", "--endpoint", "nope", good, home=env["home"])
    assert out.returncode == 2 and "no endpoint 'nope'" in out.stderr


def test_killed_server_is_reported_failed_then_redeployed(env):
    hosting = env["hosting"]
    before = hosting.describe_endpoint(NAME)
    os.killpg(before["Pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while process_alive(before["Pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    described = hosting.describe_endpoint(NAME)
    assert described["EndpointStatus"] == "Failed" and "not running" in described["FailureReason"]
    with pytest.raises(HostingError, match="not running"):
        hosting.invoke(NAME, b"x", "image/png")
    listing = imgpipe("endpoints", "list", home=env["home"])
    assert "Failed" in listing.stdout
    result = hosting.deploy(NAME, package(2, env["good"]), instance_type="local", instance_count=1,
                            data_capture_percent=0)
    assert result["Action"] == "Updated"
    after = hosting.describe_endpoint(NAME)
    assert after["EndpointStatus"] == "InService" and after["Port"] == before["Port"]


def test_delete_stops_the_server(env):
    pid = env["hosting"].describe_endpoint(NAME)["Pid"]
    out = imgpipe("endpoints", "delete", NAME, home=env["home"])
    assert out.returncode == 0 and f"deleted endpoint {NAME}" in out.stdout
    deadline = time.monotonic() + 10
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(pid)
    assert env["hosting"].describe_endpoint(NAME) is None
    assert "no endpoints" in imgpipe("endpoints", "list", home=env["home"]).stdout
    again = imgpipe("endpoints", "delete", NAME, home=env["home"])
    assert again.returncode == 2 and "no endpoint" in again.stderr
