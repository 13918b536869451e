"""pipelines/deploy_pipeline.py: the definition built offline (get-pipeline-definition), the code it
ships (importable in a container without imgpipe), and run-pipeline upserting it against moto."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from awsfakes import fake_aws

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/service-role/AmazonSageMaker-PipelineRole"
BUCKET = "imgpipe-deploy-test"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[dict, Path]:
    """``get-pipeline-definition --module-name pipelines.deploy_pipeline --store``, with no credentials."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(IMGPIPE_HOME=str(home), AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null",
               AWS_EC2_METADATA_DISABLED="true", HOME=str(home))
    out = home / "deploy.json"
    done = subprocess.run(
        [str(Path(sys.executable).parent / "get-pipeline-definition"), "--module-name", "pipelines.deploy_pipeline",
         "--kwargs", json.dumps({"endpoint_name": "imgpipe-prod", "rollback_alarms": ["imgpipe-5xx"]}),
         "--file-name", str(out), "--store"],
        env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), home / "s3"


def test_parameters_and_steps(built):
    definition, _ = built
    defaults = {p["Name"]: (p["Type"], p["DefaultValue"]) for p in definition["Parameters"]}
    assert defaults == {
        "ModelPackageGroupName": ("String", "ImgpipeModels"), "EndpointName": ("String", "imgpipe-prod"),
        "EndpointInstanceType": ("String", "ml.m5.large"), "EndpointInstanceCount": ("Integer", 1),
        "DataCaptureSamplingPercentage": ("Integer", 20), "EndpointMode": ("String", "SingleModel"),
        "SmokeTestMaxAccuracyDrop": ("Float", 0.02), "SmokeTestMinAccuracy": ("Float", -1.0),
        "SmokeTestDataUrl": ("String", ""), "SmokeTestMaxImages": ("Integer", 200),
        "ProcessingInstanceType": ("String", "ml.m5.large")}
    guard, deploy, smoke = definition["Steps"]
    assert (guard["Name"], guard["Type"]) == ("CheckDeployParameters", "Condition")
    assert [s["Name"] for s in guard["Arguments"]["ElseSteps"]] == ["InvalidDeployParameters"]
    assert deploy["DependsOn"] == ["CheckDeployParameters"]  # no deployment with impossible parameters
    assert (deploy["Name"], deploy["Type"], smoke["Name"], smoke["Type"]) == ("Deploy", "Processing", "SmokeTest", "Processing")
    args = deploy["Arguments"]["AppSpecification"]["ContainerArguments"]
    options = dict(zip(args[::2], args[1::2]))
    assert options["--model-package-group"] == {"Get": "Parameters.ModelPackageGroupName"}
    assert options["--endpoint-name"] == {"Get": "Parameters.EndpointName"}
    assert options["--instance-type"] == {"Get": "Parameters.EndpointInstanceType"}
    assert options["--data-capture-percent"] == {"Std:Join": {"On": "", "Values": [{"Get": "Parameters.DataCaptureSamplingPercentage"}]}}
    assert options["--data-capture-url"] == "s3://imgpipe-local/imgpipe/data-capture"
    assert options["--rollback-alarms"] == "imgpipe-5xx"
    assert options["--endpoint-mode"] == {"Get": "Parameters.EndpointMode"}
    assert options["--multi-model-url"] == "s3://imgpipe-local/imgpipe/multi-model"
    assert options["--smoke-test-min-accuracy"] == {
        "Std:Join": {"On": "", "Values": [{"Get": "Parameters.SmokeTestMinAccuracy"}]}}
    [mode] = [p for p in definition["Parameters"] if p["Name"] == "EndpointMode"]
    assert mode["EnumValues"] == ["SingleModel", "MultiModel"]
    assert deploy["PropertyFiles"] == [{"PropertyFileName": "DeploymentReport", "OutputName": "deployment",
                                        "FilePath": "deployment.json"}]
    assert "CacheConfig" not in deploy  # a deployment always runs
    test_input, report_input = [i for i in smoke["Arguments"]["ProcessingInputs"]
                                if i["InputName"] not in ("code", "entrypoint")]
    assert test_input["S3Input"]["S3Uri"] == {"Std:JsonGet": {
        "PropertyFile": {"Get": "Steps.Deploy.PropertyFiles.DeploymentReport"}, "Path": "SmokeTestDataUrl"}}
    assert test_input["S3Input"]["LocalPath"] == "/opt/ml/processing/test"
    assert report_input["S3Input"]["S3Uri"] == {
        "Get": "Steps.Deploy.ProcessingOutputConfig.Outputs['deployment'].S3Output.S3Uri"}
    assert report_input["S3Input"]["LocalPath"] == "/opt/ml/processing/deployment"
    assert smoke["DependsOn"] == ["Deploy"]
    smoke_args = smoke["Arguments"]["AppSpecification"]["ContainerArguments"]
    smoke_options = dict(zip(smoke_args[::2], smoke_args[1::2]))
    assert smoke_options["--min-accuracy"] == {
        "Std:Join": {"On": "", "Values": [{"Get": "Parameters.SmokeTestMinAccuracy"}]}}
    assert smoke_options["--max-accuracy-drop"] == {
        "Std:Join": {"On": "", "Values": [{"Get": "Parameters.SmokeTestMaxAccuracyDrop"}]}}
    assert smoke_options["--deployment-report"] == "/opt/ml/processing/deployment/deployment.json"
    assert smoke_options["--multi-model-url"] == options["--multi-model-url"]


def test_step_and_parameter_order_is_pinned(built):
    """Steps and parameters in definition order: a refactor cannot drop or reorder one silently."""
    definition, _ = built
    assert [s["Name"] for s in definition["Steps"]] == ["CheckDeployParameters", "Deploy", "SmokeTest"]
    assert [p["Name"] for p in definition["Parameters"]] == [
        "ModelPackageGroupName", "EndpointName", "EndpointInstanceType", "EndpointInstanceCount",
        "DataCaptureSamplingPercentage", "EndpointMode", "SmokeTestMaxAccuracyDrop", "SmokeTestMinAccuracy",
        "SmokeTestDataUrl",
        "SmokeTestMaxImages", "ProcessingInstanceType",
    ]


# Run in the extracted code tarball with python -S (no site-packages: no imgpipe, no boto3).
SHIPPED_PROBE = """
import sys
import deploy, check_endpoint, deploy_backends, backends
assert deploy_backends.backends is backends and backends.__name__ == "backends"
registry, hosting = backends._implementation("registry", "aws"), backends._implementation("hosting", "aws")
import aws.hosting
assert aws.hosting.HostingError is backends.HostingError is check_endpoint.HostingError
print(sys.modules[registry.__module__].__file__)
print(sys.modules[hosting.__module__].__file__)
try:
    backends.get_hosting("local")
except backends.BackendError as exc:
    print(exc)
print(sorted(name for name in sys.modules if name.split(".")[0] in ("pipelines", "sagemaker", "torch")))
"""


def test_shipped_code_runs_without_imgpipe(built, tmp_path):
    """The step's code tarball imports the backends module and the boto3 ``aws`` package as top-level
    code (python -S: no imgpipe) and never the local engine."""
    definition, store = built
    deploy = next(s for s in definition["Steps"] if s["Name"] == "Deploy")
    code = [i for i in deploy["Arguments"]["ProcessingInputs"] if i["InputName"] == "code"][0]
    bucket, key = code["S3Input"]["S3Uri"][len("s3://"):].split("/", 1)
    with tarfile.open(store / bucket / key) as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path, filter="data")
    assert {"deploy.py", "check_endpoint.py", "deploy_backends.py", "backends.py", "aws/__init__.py",
            "aws/hosting.py", "aws/multi_model.py", "aws/registry.py", "imgclf/container.py", "imgclf/data.py"} <= names
    assert not any("__pycache__" in n or n.startswith(("pipelines/", "local/")) for n in names)
    done = subprocess.run([sys.executable, "-S", "-c", SHIPPED_PROBE], cwd=tmp_path, capture_output=True,
                          text=True, env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(tmp_path)},
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(tmp_path / "aws" / "registry.py"), str(tmp_path / "aws" / "hosting.py"),
                                        "the local backend needs the imgpipe package (pip install -e .)", "[]"]


def test_run_pipeline_upserts_the_deploy_pipeline(monkeypatch, capsys):
    from pipelines import run_pipeline
    from pipelines.get_pipeline_definition import QUIET_LOGGERS

    for logger in map(logging.getLogger, QUIET_LOGGERS):  # run-pipeline quiets them: restored after
        monkeypatch.setattr(logger, "level", logger.level)

    with fake_aws(monkeypatch, REGION) as session:
        session.client("s3").create_bucket(Bucket=BUCKET)
        kwargs = {"region": REGION, "default_bucket": BUCKET, "pipeline_name": "imgpipe-p-1-deploy",
                  "model_package_group_name": "imgpipe-p-1", "base_job_prefix": "imgpipe-p-1"}
        rc = run_pipeline.main(["--module-name", "pipelines.deploy_pipeline", "--role-arn", ROLE, "--no-start",
                                "--kwargs", json.dumps(kwargs)])
        out = capsys.readouterr().out
        assert rc == 0, out
        assert "steps: CheckDeployParameters, Deploy, SmokeTest" in out and "created pipeline" in out
        sm = session.client("sagemaker")
        described = sm.describe_pipeline(PipelineName="imgpipe-p-1-deploy")
        definition = json.loads(described["PipelineDefinition"])
        defaults = {p["Name"]: p["DefaultValue"] for p in definition["Parameters"]}
        assert defaults["ModelPackageGroupName"] == "imgpipe-p-1" and described["RoleArn"] == ROLE
        assert sm.list_pipeline_executions(PipelineName="imgpipe-p-1-deploy")["PipelineExecutionSummaries"] == []
