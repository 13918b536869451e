"""buildspec.yml: its shape, every command's executable, and its build phase against moto.

The build phase (upsert + start) runs for real, as CodeBuild would run it (one bash shell,
CodeBuild's environment variables), against a moto server; the test suite itself
(pre_build) is not run from here.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SHELL_WORDS = {"if", "then", "else", "elif", "fi", "for", "while", "do", "done", "case", "esac",
               "!", "{", "}", "[", "[[", "test", "export", "echo", "set", "cd", "true", "false",
               "source", ".", "printf", "exit", "unset", "shift", "local"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PROJECT = {"SAGEMAKER_PROJECT_NAME": "imgpipe", "SAGEMAKER_PROJECT_ID": "p-1a2b3c4d5e6f"}
ROLE = "arn:aws:iam::123456789012:role/service-role/AmazonSageMakerServiceCatalogProductsUseRole"
BUCKET = "sagemaker-project-p-1a2b3c4d5e6f"


@pytest.fixture(scope="module")
def buildspec() -> dict:
    return yaml.safe_load((REPO / "buildspec.yml").read_text())


def commands(buildspec: dict, phase: str) -> list[str]:
    return list(buildspec["phases"][phase]["commands"])


def console_scripts() -> set[str]:
    """Names declared in setup.py's console_scripts (read, not executed)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    return {ast.literal_eval(item).split("=")[0].strip() for item in value.elts}
    return set()


def executables(command: str) -> list[str]:
    """The words in command position of a (simple, as written in buildspec.yml) shell command."""
    text = command.replace("\\\n", " ")
    words = []
    for line in text.splitlines():
        for part in re.split(r";|&&|\|\||\|", line):
            try:
                tokens = shlex.split(part, comments=True)
            except ValueError:
                tokens = part.split()
            while tokens and (ASSIGNMENT.match(tokens[0]) or tokens[0] in SHELL_WORDS):
                if tokens[0] in ("export", "[", "[[", "test", "echo", "cd", "set", "unset", "printf"):
                    tokens = []  # a builtin with arguments
                    break
                tokens = tokens[1:]
            if tokens:
                words.append(tokens[0])
    return words


def test_shape(buildspec):
    assert str(buildspec["version"]) == "0.2"
    assert str(buildspec["phases"]["install"]["runtime-versions"]["python"]) == "3.11"
    assert any(".[test]" in c and "pip install" in c for c in commands(buildspec, "install"))
    assert any("pytest" in c or "make test" in c for c in commands(buildspec, "pre_build"))
    assert "pipeline-definition.json" in buildspec["artifacts"]["files"]
    build = "\n".join(commands(buildspec, "build"))
    for name in ("SAGEMAKER_PROJECT_NAME", "SAGEMAKER_PROJECT_ID", "ARTIFACT_BUCKET",
                 "SAGEMAKER_PIPELINE_ROLE_ARN", "AWS_REGION"):
        assert "${" + name + "}" in build, name
    assert "sagemaker:project-name" in build and "sagemaker:project-id" in build


def test_every_command_exists(buildspec):
    scripts = console_scripts()
    assert {"run-pipeline", "get-pipeline-definition", "imgpipe"} <= scripts
    makefile = (REPO / "Makefile").read_text() if (REPO / "Makefile").exists() else ""
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    seen = set()
    for phase in buildspec["phases"]:
        for command in commands(buildspec, phase):
            words = executables(command)
            for word in words:
                seen.add(word)
                if word == "make":
                    for target in re.findall(r"\bmake\s+([\w.-]+)", command):
                        assert re.search(rf"^{re.escape(target)}\s*:", makefile, re.M), target
                    continue
                assert word in scripts or shutil.which(word, path=path), f"{phase}: {word!r} not found"
    assert {"python", "run-pipeline"} <= seen


def test_command_parser_sees_through_the_shell():
    assert executables('export A="b c"; run-pipeline --x "$A"') == ["run-pipeline"]
    assert executables('if [ "$X" != "true" ]; then export F="--no-start"; fi') == []
    assert executables("FOO=1 python -m pytest \\\n  -q tests") == ["python"]
    assert executables("nonexistent-tool --flag") == ["nonexistent-tool"]


@pytest.fixture
def moto_server(monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def codebuild_env(endpoint: str, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_"))}
    env.update(PROJECT)
    env.update(
        HOME=str(home),
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        AWS_EC2_METADATA_DISABLED="true",
        ARTIFACT_BUCKET=BUCKET,
        SAGEMAKER_PIPELINE_ROLE_ARN=ROLE,
        SAGEMAKER_SUPPRESS_V2_WARNING="1",
        NO_PROXY="127.0.0.1,localhost",
    )
    return env


def test_build_phase_upserts_and_starts_against_moto(buildspec, moto_server, tmp_path):
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket=BUCKET)
    env = codebuild_env(moto_server, tmp_path)
    env.update({k: str(v) for k, v in buildspec.get("env", {}).get("variables", {}).items()})
    env["RETRAIN_SCHEDULE"] = "rate(7 days)"
    env["APPLY_TRIGGERS"] = "true"  # opt-in: the triggers from CodeBuild
    assert env["SAGEMAKER_DEBUGGER"] == "true"  # the default; an account closed to Debugger sets false
    env["SAGEMAKER_DEBUGGER"] = "false"
    script = "set -euo pipefail\n" + "\n".join(commands(buildspec, "build")) + "\n"
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    name = f"{PROJECT['SAGEMAKER_PROJECT_NAME']}-{PROJECT['SAGEMAKER_PROJECT_ID']}"
    sm = boto3.client("sagemaker", endpoint_url=moto_server, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    described = sm.describe_pipeline(PipelineName=name)
    assert described["RoleArn"] == ROLE
    definition = json.loads(described["PipelineDefinition"])
    artifact = json.loads((tmp_path / "pipeline-definition.json").read_text())
    assert artifact == definition
    groups = {s["Name"]: s for s in definition["Steps"]}
    check_accuracy = groups["CheckTraining"]["Arguments"]["IfSteps"][0]
    register = check_accuracy["Arguments"]["IfSteps"][1]["Arguments"]
    # SAGEMAKER_DEBUGGER=false reached get_pipeline: no Debugger hook, rules or profiler
    training = groups["TrainBestModel"]["Arguments"]
    assert "TensorBoardOutputConfig" in training and not {"DebugHookConfig", "DebugRuleConfigurations",
                                                          "ProfilerConfig"} & set(training)
    assert register["ModelPackageGroupName"] == name
    assert all(
        uri.startswith(f"s3://{BUCKET}/{name}") for uri in [p["DefaultValue"] for p in definition["Parameters"]
                                                             if p["Name"] == "InputDataUrl"]
    )
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=described["PipelineArn"])["Tags"]}
    assert tags["sagemaker:project-name"] == PROJECT["SAGEMAKER_PROJECT_NAME"]
    assert tags["sagemaker:project-id"] == PROJECT["SAGEMAKER_PROJECT_ID"]
    executions = sm.list_pipeline_executions(PipelineName=name)["PipelineExecutionSummaries"]
    assert len(executions) == 1  # START_PIPELINE defaults to true
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert any(k.startswith(f"{name}/code/") and k.endswith("sourcedir.tar.gz") for k in keys)

    # The deploy pipeline (upserted, not started) and its triggers.
    deploy = sm.describe_pipeline(PipelineName=f"{name}-deploy")
    deploy_definition = json.loads(deploy["PipelineDefinition"])
    assert deploy_definition == json.loads((tmp_path / "deploy-pipeline-definition.json").read_text())
    assert {p["Name"]: p["DefaultValue"] for p in deploy_definition["Parameters"]}["ModelPackageGroupName"] == name
    assert sm.list_pipeline_executions(PipelineName=f"{name}-deploy")["PipelineExecutionSummaries"] == []
    client = lambda service: boto3.client(service, endpoint_url=moto_server, region_name="us-east-1",  # noqa: E731
                                          aws_access_key_id="testing", aws_secret_access_key="testing")
    [target] = client("events").list_targets_by_rule(Rule=f"{name}-deploy-model-approval")["Targets"]
    assert target["Arn"] == deploy["PipelineArn"]
    schedule = client("scheduler").get_schedule(Name=f"{name}-deploy-retrain")
    assert schedule["ScheduleExpression"] == "rate(7 days)" and schedule["Target"]["Arn"] == described["PipelineArn"]
    assert "deploy-pipeline-definition.json" in buildspec["artifacts"]["files"]
