"""SageMaker Runtime's API on local endpoints: unchanged boto3 and SDK Predictor code against real
server processes (inference/serve.py), single-model and multi-model, errors included.

Clients: boto3's ``sagemaker-runtime`` client with dummy credentials and ``endpoint_url`` set to
the server, and ``sagemaker.predictor.Predictor`` on a session built on that client (offline).
Errors are asserted as the botocore exceptions the service model defines, with their codes.
Also here: ``inference.py`` under AWS's own serving toolkit (``sagemaker-pytorch-inference``'s
``HandlerService``), single-model and ``SAGEMAKER_MULTI_MODEL=true``, answers as the server does.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from endpoint_helpers import REPO, archive, trained_model, untrained_model, valid_images

boto3 = pytest.importorskip("boto3")
from botocore.config import Config  # noqa: E402

SERVE = REPO / "inference" / "serve.py"
NAME = "digits"
V1, V2 = "v1/model.tar.gz", "v2/model.tar.gz"


def start_server(work: Path, model_dir: Path, *extra: str, env: dict | None = None) -> dict:
    ready = work / "ready.json"
    log = open(work / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, str(SERVE), "--model-dir", str(model_dir), "--port", "0",
                             "--ready-file", str(ready), "--threads", "4", "--torch-threads", "1",
                             "--endpoint-name", NAME, "--region", "eu-west-1", *extra],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            start_new_session=True)
    log.close()
    deadline = time.monotonic() + 120
    while not ready.is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            pytest.fail("server did not start:\n" + (work / "server.log").read_text())
        time.sleep(0.05)
    return {"proc": proc, "port": json.loads(ready.read_text())["public_port"], "work": work}


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(trained model dir, untrained model dir, data root, directory of v1 and v2 archives)."""
    model_dir, data = trained_model(tmp_path_factory.getbasetemp() / "endpoint-model")
    bad = untrained_model(tmp_path_factory.mktemp("untrained") / "model")
    mme = tmp_path_factory.mktemp("mme")
    archive(model_dir, mme / V1)
    archive(bad, mme / V2)
    return model_dir, bad, data, mme


@pytest.fixture(scope="module")
def single(models, tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("single"), models[0])
    yield server
    stop_server(server["proc"])


@pytest.fixture(scope="module")
def multi(models, tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("multi"), models[3], "--multi-model",
                          env={"IMGPIPE_MME_MAX_MODELS": "2"})
    yield server
    stop_server(server["proc"])


def runtime(port: int):
    return boto3.client("sagemaker-runtime", endpoint_url=f"http://127.0.0.1:{port}", region_name="eu-west-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(retries={"max_attempts": 1}))


def container_invoke(port: int, body: bytes, headers: dict) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/invocations", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def ping(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/ping")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def images(models, count: int = 6) -> list[tuple[bytes, str]]:
    pairs = valid_images(models[2])
    step = max(1, len(pairs) // count)
    return [(path.read_bytes(), cls) for path, cls in pairs[::step][:count]]


def error_of(call) -> dict:
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as info:
        call()
    return {"exception": info.value, **info.value.response}


# ------------------------------------------------------------------------------ single model
def test_boto3_invoke_endpoint_classifies_and_echoes_custom_attributes(single, models):
    client = runtime(single["port"])
    right = 0
    for body, cls in images(models):
        answer = client.invoke_endpoint(EndpointName=NAME, Body=body, ContentType="image/png",
                                        Accept="application/json", CustomAttributes="trace=abc-1")
        top = json.loads(answer["Body"].read())
        assert answer["ContentType"] == "application/json"
        assert answer["CustomAttributes"] == "trace=abc-1"
        assert answer["InvokedProductionVariant"] == "AllTraffic"
        assert top == container_invoke(single["port"], body, {"Content-Type": "image/png"})[1]
        right += top[0]["label"] == cls
    assert right >= 5


def test_botocore_errors_with_their_codes(single, models):
    client = runtime(single["port"])
    png = images(models, 1)[0][0]
    unknown = error_of(lambda: client.invoke_endpoint(EndpointName="nope", Body=png, ContentType="image/png"))
    assert isinstance(unknown["exception"], client.exceptions.ValidationError)
    assert unknown["Error"] == {"Code": "ValidationError", "Message": "Endpoint nope of account 000000000000 not found."}
    assert unknown["ResponseMetadata"]["HTTPStatusCode"] == 400

    junk = error_of(lambda: client.invoke_endpoint(EndpointName=NAME, Body=b"not an image", ContentType="image/png"))
    assert isinstance(junk["exception"], client.exceptions.ModelError)
    assert junk["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert junk["OriginalStatusCode"] == 400
    assert "not a decodable image" in json.loads(junk["OriginalMessage"])["error"]
    assert "Received client error (400) from primary" in junk["Error"]["Message"]
    assert junk["LogStreamArn"] == "arn:aws:logs:eu-west-1:000000000000:log-group:/aws/sagemaker/Endpoints/digits"

    for kwargs in ({"ContentType": "text/csv"}, {"ContentType": "image/png", "Accept": "text/csv"}):
        refused = error_of(lambda: client.invoke_endpoint(EndpointName=NAME, Body=png, **kwargs))
        assert isinstance(refused["exception"], client.exceptions.ModelError)
        assert refused["OriginalStatusCode"] == 415

    target = error_of(lambda: client.invoke_endpoint(EndpointName=NAME, Body=png, ContentType="image/png",
                                                     TargetModel=V1))
    assert isinstance(target["exception"], client.exceptions.ValidationError)
    assert "only for multi-model endpoints" in target["Error"]["Message"]
    long_attributes = error_of(lambda: client.invoke_endpoint(EndpointName=NAME, Body=png, ContentType="image/png",
                                                              CustomAttributes="a" * 1025))
    assert isinstance(long_attributes["exception"], client.exceptions.ValidationError)
    assert "customAttributes" in long_attributes["Error"]["Message"]
    assert client.invoke_endpoint(EndpointName=NAME, Body=png, ContentType="image/png")["Body"].read()


def test_sdk_predictor_on_a_session_built_on_the_client(single, models):
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.predictor import Predictor
    from sagemaker.serializers import IdentitySerializer
    from sagemaker.session import Session

    client = runtime(single["port"])
    boto_session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                 region_name="eu-west-1")
    session = Session(boto_session=boto_session, sagemaker_client=boto_session.client("sagemaker"),
                      sagemaker_runtime_client=client,
                      sagemaker_config={"SchemaVersion": "1.0",
                                        "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}})
    predictor = Predictor(NAME, sagemaker_session=session, serializer=IdentitySerializer("image/png"),
                          deserializer=JSONDeserializer())
    body, cls = images(models, 1)[0]
    top = predictor.predict(body)
    assert top[0]["label"] == cls and abs(sum(a["probability"] for a in top) - 1) < 1e-4
    with pytest.raises(client.exceptions.ModelError) as info:
        predictor.predict(b"\x89PNG junk")
    assert info.value.response["OriginalStatusCode"] == 400


# ------------------------------------------------------------------------------ multi model
def test_multi_model_serves_each_target(multi, single, models):
    client = runtime(multi["port"])
    for body, _ in images(models, 3):
        answers = {t: json.loads(client.invoke_endpoint(EndpointName=NAME, Body=body, ContentType="image/png",
                                                        TargetModel=t)["Body"].read()) for t in (V1, V2)}
        assert answers[V1] == container_invoke(single["port"], body, {"Content-Type": "image/png"})[1]
        assert answers[V2] != answers[V1]  # the untrained model: another answer
        assert answers[V2] == container_invoke(multi["port"], body, {"Content-Type": "image/png",
                                                                     "X-Amzn-SageMaker-Target-Model": V2})[1]
    state = ping(multi["port"])
    assert state["mode"] == "MultiModel" and sorted(state["loaded_models"]) == [V1, V2]


def test_multi_model_bad_targets_name_the_problem_and_others_keep_serving(multi, models):
    client = runtime(multi["port"])
    body = images(models, 1)[0][0]
    broken = Path(models[3]) / "v8" / "model.tar.gz"
    broken.parent.mkdir()
    broken.write_bytes(b"not a gzip file")
    cases = {"../v1/model.tar.gz": (400, "'..'"), "/etc/passwd": (400, "absolute path"),
             "v9/model.tar.gz": (404, "not served by this endpoint"), None: (400, "multi-model endpoint")}
    for target, (status, fragment) in cases.items():
        headers = {"Content-Type": "image/png", **({"X-Amzn-SageMaker-Target-Model": target} if target else {})}
        code, answer = container_invoke(multi["port"], body, headers)
        assert code == status and fragment in answer["error"], (target, answer)
        extra = {"TargetModel": target} if target else {}
        error = error_of(lambda: client.invoke_endpoint(EndpointName=NAME, Body=body, ContentType="image/png",
                                                        **extra))
        assert isinstance(error["exception"], client.exceptions.ValidationError), target
        assert fragment in error["Error"]["Message"]
    code, answer = container_invoke(multi["port"], body, {"Content-Type": "image/png",
                                                          "X-Amzn-SageMaker-Target-Model": "v8/model.tar.gz"})
    assert code == 422 and "'v8/model.tar.gz' failed to load" in answer["error"]
    error = error_of(lambda: client.invoke_endpoint(EndpointName=NAME, Body=body, ContentType="image/png",
                                                    TargetModel="v8/model.tar.gz"))
    assert isinstance(error["exception"], client.exceptions.ModelError) and error["OriginalStatusCode"] == 422
    shutil.rmtree(broken.parent)
    assert client.invoke_endpoint(EndpointName=NAME, Body=body, ContentType="image/png", TargetModel=V1)["Body"].read()


def test_served_set_changes_without_restart_and_lru_eviction(multi, models, tmp_path):
    port, root = multi["port"], Path(models[3])
    pid = ping(port)["pid"]
    client = runtime(port)
    body = images(models, 1)[0][0]
    shutil.copyfile(root / V1, root / "v3.tmp")
    (root / "v3").mkdir()
    os.replace(root / "v3.tmp", root / "v3" / "model.tar.gz")  # added, as LocalHosting adds archives
    loads = ping(port)["model_loads"]

    def call(_):
        return json.loads(client.invoke_endpoint(EndpointName=NAME, Body=body, ContentType="image/png",
                                                 TargetModel="v3/model.tar.gz")["Body"].read())

    with ThreadPoolExecutor(6) as pool:  # all wait for the one cold load; none fails
        answers = list(pool.map(call, range(6)))
    assert all(a == answers[0] for a in answers)
    state = ping(port)
    assert state["model_loads"] == loads + 1
    assert len(state["loaded_models"]) == 2 and state["loaded_models"][-1] == "v3/model.tar.gz"  # max 2: LRU out
    assert state["model_evictions"] >= 1
    (root / "v2" / "model.tar.gz").unlink()  # removed: no longer served
    error = error_of(lambda: client.invoke_endpoint(EndpointName=NAME, Body=body, ContentType="image/png",
                                                    TargetModel=V2))
    assert isinstance(error["exception"], client.exceptions.ValidationError)
    assert ping(port)["pid"] == pid and multi["proc"].poll() is None
    os.replace(archive(models[1], tmp_path / "v2.tar.gz"), root / V2)  # back: served again, reloaded
    answer = client.invoke_endpoint(EndpointName=NAME, Body=body, ContentType="image/png", TargetModel=V2)
    assert json.loads(answer["Body"].read()) != answers[0]  # the untrained model again, not v3's


# ------------------------------------------------------------------------------ AWS's toolkit
TOOLKIT_SCRIPT = textwrap.dedent('''
    import json, sys
    from sagemaker_pytorch_serving_container.handler_service import HandlerService

    class Context:
        def __init__(self, model_dir, content_type):
            self.system_properties = {"model_dir": model_dir, "gpu_id": None}
            self.request_processor = [self]
            self.content_type, self.status = content_type, 200
        def get_request_properties(self):
            return {"Content-Type": self.content_type, "Accept": "application/json"}
        def set_response_content_type(self, index, value):
            pass
        def set_response_status(self, code, phrase):
            self.status = code

    out = []
    for model_dir, path, content_type in json.loads(sys.argv[1]):
        service = HandlerService()
        context = Context(model_dir, content_type)
        service.initialize(context)
        answer = service.handle([{"body": open(path, "rb").read()}], context)[0]
        out.append([context.status, answer if isinstance(answer, str) else answer.decode()])
    print(json.dumps(out))
''')


def toolkit_model_dir(model_dir: Path, dest: Path) -> Path:
    """An extracted model as SageMaker lays it out for the toolkit: the artifact plus code/."""
    shutil.copytree(model_dir, dest)
    (dest / "code").mkdir()
    shutil.copy2(REPO / "inference" / "inference.py", dest / "code" / "inference.py")
    shutil.copytree(REPO / "training" / "imgclf", dest / "code" / "imgclf", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.mark.parametrize("multi_model", [False, True], ids=["single-model", "multi-model"])
def test_inference_py_under_aws_serving_toolkit_answers_as_the_server(multi_model, models, single, multi, tmp_path):
    pytest.importorskip("sagemaker_pytorch_serving_container")
    good = toolkit_model_dir(models[0], tmp_path / "good")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    pairs = images(models, 2)
    paths = []
    for i, (body, _) in enumerate(pairs):
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(body)
    requests = [[str(good), str(p), "image/png"] for p in paths] + [[str(good), str(junk), "image/png"]]
    if multi_model:  # each model in its own directory, as SageMaker's multi-model server loads them
        requests.append([str(toolkit_model_dir(models[1], tmp_path / "untrained")), str(paths[0]), "image/png"])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SAGEMAKER_MULTI_MODEL")}
    env.update({"SAGEMAKER_BASE_DIR": str(tmp_path / "opt-ml"), "OMP_NUM_THREADS": "1",
                **({"SAGEMAKER_MULTI_MODEL": "true"} if multi_model else {})})
    if not multi_model:
        env["PYTHONPATH"] = str(good / "code")  # the container's code dir (SAGEMAKER_SUBMIT_DIRECTORY)
    out = subprocess.run([sys.executable, "-c", TOOLKIT_SCRIPT, json.dumps(requests)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    port = multi["port"] if multi_model else single["port"]
    target = {"X-Amzn-SageMaker-Target-Model": V1} if multi_model else {}
    for (status, answer), path in zip(results, paths):
        assert status == 200
        server = container_invoke(port, path.read_bytes(), {"Content-Type": "image/png", **target})[1]
        assert _same(json.loads(answer), server)
    status, message = results[len(paths)]
    assert status == container_invoke(port, b"not an image", {"Content-Type": "image/png", **target})[0] == 400
    assert "not a decodable image" in message
    if multi_model:
        server = container_invoke(port, paths[0].read_bytes(), {"Content-Type": "image/png",
                                                                "X-Amzn-SageMaker-Target-Model": V2})[1]
        assert results[-1][0] == 200 and _same(json.loads(results[-1][1]), server)


def _same(toolkit: list, server: list) -> bool:
    """Same labels in the same order and the same probabilities (to float noise)."""
    assert [a["label"] for a in toolkit] == [a["label"] for a in server]
    assert [a["probability"] for a in toolkit] == pytest.approx([a["probability"] for a in server], abs=1e-5)
    return True
