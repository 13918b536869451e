"""LocalHosting.deploy_multi_model with real server processes: two versions behind one endpoint,
the served set changed without a restart, ``imgpipe predict --target-model``, ``imgpipe endpoints
list`` (mode, target models, the endpoint_url for boto3), boto3 on that URL, and the switch back
to a single-model endpoint.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from endpoint_helpers import REPO, archive, trained_model, untrained_model, valid_images
from pipelines.backends import HostingError, target_model_name
from pipelines.local.hosting import LocalHosting, process_alive
from pipelines.local.object_store import ObjectStore
from pipelines.settings import Settings

NAME = "digits-mme"
ARN = "arn:aws:sagemaker:us-east-1:000000000000:model-package/Digits/{}"


def package(version: int, uri: str) -> dict:
    return {"ModelPackageArn": ARN.format(version), "ModelPackageVersion": version, "ModelPackageGroupName": "Digits",
            "InferenceSpecification": {"Containers": [{"Image": "x", "ModelDataUrl": uri}]}}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    model_dir, data = trained_model(tmp_path_factory.getbasetemp() / "endpoint-model")
    bad = untrained_model(tmp_path_factory.mktemp("untrained-mme") / "model")
    home = tmp_path_factory.mktemp("mme-hosting") / "home"
    settings = Settings(home=home)
    store = ObjectStore(settings.s3_root)
    packages = {}
    for version, source in ((1, model_dir), (2, bad), (3, model_dir)):
        uri = f"s3://imgpipe-local/models/v{version}/model.tar.gz"
        archive(source, store.path(uri))
        packages[version] = package(version, uri)
    os.environ["IMGPIPE_TORCH_THREADS"] = "1"
    hosting = LocalHosting(settings, port=0)
    yield {"hosting": hosting, "packages": packages, "data": data, "home": home}
    os.environ.pop("IMGPIPE_TORCH_THREADS", None)
    described = hosting.describe_endpoint(NAME)
    hosting.delete_endpoint(NAME)
    if described and process_alive(described.get("Pid")):
        os.killpg(described["Pid"], signal.SIGKILL)


def imgpipe(*args, home):
    env = {**os.environ, "IMGPIPE_HOME": str(home), "SAGEMAKER_SUPPRESS_V2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_target_model_name_and_bad_package_sets(env):
    assert target_model_name(env["packages"][3]) == "v3/model.tar.gz"
    hosting = env["hosting"]
    with pytest.raises(HostingError, match="at least one model package"):
        hosting.deploy_multi_model(NAME, [])
    with pytest.raises(HostingError, match="no ModelPackageVersion"):
        hosting.deploy_multi_model(NAME, [{"ModelPackageArn": "arn:x", "ModelDataUrl": "s3://b/k"}])
    assert hosting.describe_endpoint(NAME) is None


def test_two_versions_behind_one_endpoint_then_the_set_changes_without_restart(env):
    hosting, p = env["hosting"], env["packages"]
    image, cls = valid_images(env["data"])[0]
    body = image.read_bytes()
    created = hosting.deploy_multi_model(NAME, [p[2], p[1]], instance_type="local", instance_count=1,
                                         data_capture_percent=0)
    assert created["Action"] == "Created" and created["Mode"] == "MultiModel"
    assert created["TargetModels"] == ["v1/model.tar.gz", "v2/model.tar.gz"]
    assert created["ModelPackageArn"] == ARN.format(2)
    described = hosting.describe_endpoint(NAME)
    assert described["Mode"] == "MultiModel" and described["EndpointStatus"] == "InService"
    assert described["TargetModels"] == created["TargetModels"]
    pid = described["Pid"]
    v1 = hosting.invoke(NAME, body, "image/png", target_model="v1/model.tar.gz")
    v2 = hosting.invoke(NAME, body, "image/png", target_model="v2/model.tar.gz")
    assert v1[0]["label"] == cls and v2 != v1

    updated = hosting.deploy_multi_model(NAME, [p[1], p[2], p[3]], instance_type="local", instance_count=1,
                                         data_capture_percent=0)
    assert updated["Action"] == "Updated" and updated["TargetModels"][-1] == "v3/model.tar.gz"
    assert hosting.invoke(NAME, body, "image/png", target_model="v3/model.tar.gz") == v1
    again = hosting.deploy_multi_model(NAME, [p[1], p[2], p[3]], instance_type="local", instance_count=1,
                                       data_capture_percent=0)
    assert again["Action"] == "Unchanged"

    hosting.deploy_multi_model(NAME, [p[2], p[3]], instance_type="local", instance_count=1, data_capture_percent=0)
    with pytest.raises(HostingError, match="'v1/model.tar.gz' is not served by this endpoint") as info:
        hosting.invoke(NAME, body, "image/png", target_model="v1/model.tar.gz")
    assert info.value.status_code == 404
    with pytest.raises(HostingError, match="name the model with TargetModel") as info:
        hosting.invoke(NAME, body, "image/png")
    assert info.value.status_code == 400
    assert hosting.describe_endpoint(NAME)["Pid"] == pid  # never restarted
    assert hosting.describe_endpoint(NAME)["TargetModels"] == ["v2/model.tar.gz", "v3/model.tar.gz"]


def test_cli_and_boto3_on_the_listed_endpoint_url(env):
    import boto3

    image, cls = valid_images(env["data"])[0]
    listed = imgpipe("endpoints", "list", home=env["home"])
    assert listed.returncode == 0, listed.stderr
    url = env["hosting"].describe_endpoint(NAME)["Url"]
    line = next(l for l in listed.stdout.splitlines() if l.startswith(NAME))
    assert "MultiModel" in line and "v2/model.tar.gz, v3/model.tar.gz" in line and url in line
    assert "ENDPOINT_URL" in listed.stdout
    predicted = imgpipe("predict", "--endpoint", NAME, "--target-model", "v3/model.tar.gz", image, home=env["home"])
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.splitlines()[3].split()[0] == cls  # path, header, rule, best row
    refused = imgpipe("predict", "--endpoint", NAME, "--target-model", "../v3/model.tar.gz", image, home=env["home"])
    assert refused.returncode == 1 and "'..'" in refused.stderr
    client = boto3.client("sagemaker-runtime", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    answer = client.invoke_endpoint(EndpointName=NAME, Body=image.read_bytes(), ContentType="image/png",
                                    TargetModel="v3/model.tar.gz")
    assert answer["Body"].read().decode().startswith(f'[{{"label": "{cls}"')


def test_back_to_a_single_model_endpoint(env):
    hosting, p = env["hosting"], env["packages"]
    image, cls = valid_images(env["data"])[0]
    old = hosting.describe_endpoint(NAME)
    result = hosting.deploy(NAME, p[1], instance_type="local", instance_count=1, data_capture_percent=0)
    assert result["Action"] == "Updated"
    described = hosting.describe_endpoint(NAME)
    assert described["Mode"] == "SingleModel" and "TargetModels" not in described
    assert described["Url"] == old["Url"] and not process_alive(old["Pid"])
    assert not (env["home"] / "endpoints" / NAME / "multi-model").exists()
    assert hosting.invoke(NAME, image.read_bytes(), "image/png")[0]["label"] == cls
    with pytest.raises(HostingError, match="only for multi-model endpoints"):
        hosting.invoke(NAME, image.read_bytes(), "image/png", target_model="v1/model.tar.gz")
