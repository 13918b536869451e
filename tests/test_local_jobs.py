"""Local Processing/Training jobs: real subprocesses, real small data, SageMaker-shaped requests."""
from __future__ import annotations

import json
import os
import tarfile
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipelines.datasets import sample_dataset
from pipelines.local.jobs import PathMapper, decode_hyperparameter, to_cmd_args
from pipelines.local.object_store import ObjectStore
from pipelines.local.sagemaker_api import LocalSageMaker
from pipelines.settings import Settings
from scripts import put_tarball

BUCKET = "imgpipe-local"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.1-cpu-py310"

TRAIN_PY = textwrap.dedent('''
    import argparse, json, os, signal, subprocess, sys, time
    p = argparse.ArgumentParser()
    p.add_argument("--learning-rate", type=float, required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--arch", default="none")
    p.add_argument("--pretrained", default="none")
    p.add_argument("--mode", default="ok")
    args = p.parse_args()
    model_dir = os.environ["SM_MODEL_DIR"]
    snapshot = {k: v for k, v in os.environ.items() if k.startswith(("SM_", "SMDEBUG", "OMP_", "TRAINING_JOB"))}
    snapshot["argv"] = sys.argv[1:]
    snapshot["cwd"] = os.getcwd()
    snapshot["train_files"] = sorted(os.path.relpath(os.path.join(d, f), os.environ["SM_CHANNEL_TRAIN"])
                                     for d, _, fs in os.walk(os.environ["SM_CHANNEL_TRAIN"]) for f in fs)
    with open(os.path.join(model_dir, "env.json"), "w") as f:
        json.dump(snapshot, f)
    if args.mode == "fail":
        with open(os.environ["SM_OUTPUT_FAILURE"], "w") as f:
            f.write("ValueError: no images of class 7")
        sys.exit(3)
    if args.mode == "crash":
        print("Traceback: something broke near line 42", flush=True)
        sys.exit(2)
    if args.mode == "selfkill":
        print("about to be killed", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    if args.mode == "sleep":
        child = subprocess.Popen(["sleep", "60"])
        print(f"started child={child.pid}", flush=True)
        time.sleep(60)
    if args.mode == "checkpoint":
        state_path = os.path.join(os.environ["SM_CHECKPOINT_DIR"], "state.json")
        done = json.load(open(state_path))["epochs_done"] if os.path.exists(state_path) else 0
        print(f"resumed_from={done}", flush=True)
        json.dump({"epochs_done": done + args.epochs}, open(state_path, "w"))
    for epoch in range(1, args.epochs + 1):
        acc = round(min(0.99, args.learning_rate * epoch), 4)
        print(f"epoch={epoch} train_loss={1.0 / epoch:.4f} valid_accuracy={acc} valid_loss={1 - acc:.4f}", flush=True)
    with open(os.path.join(model_dir, "model.pth"), "wb") as f:
        f.write(b"weights")
    with open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "history.json"), "w") as f:
        json.dump({"epochs": args.epochs}, f)
''')

PREP_PY = textwrap.dedent('''
    import argparse, json, os, shutil, sys
    p = argparse.ArgumentParser()
    p.add_argument("--input-dir", required=True)
    p.add_argument("--output-dir", required=True)
    args = p.parse_args()
    classes = sorted(os.listdir(args.input_dir))
    if not classes:
        open(os.environ["SM_OUTPUT_FAILURE"], "w").write("no class folders in input")
        sys.exit(1)
    count = 0
    for c in classes:
        for name in sorted(os.listdir(os.path.join(args.input_dir, c)))[:2]:
            os.makedirs(os.path.join(args.output_dir, "train", c), exist_ok=True)
            shutil.copy(os.path.join(args.input_dir, c, name), os.path.join(args.output_dir, "train", c, name))
            count += 1
    os.makedirs(os.path.join(args.output_dir, "report"), exist_ok=True)
    json.dump({"classes": classes, "copied": count, "python": sys.executable},
              open(os.path.join(args.output_dir, "report", "report.json"), "w"))
    print("copied", count)
''')

METRICS = [{"Name": "valid_accuracy", "Regex": "valid_accuracy=([0-9.]+)"},
           {"Name": "train_loss", "Regex": "train_loss=([0-9.]+)"}]


@pytest.fixture()
def env(tmp_path):
    settings = Settings(home=tmp_path / "home")
    store = ObjectStore(settings.s3_root)
    events: list[dict] = []
    api = LocalSageMaker(settings, store, on_event=events.append)
    return SimpleNamespace(settings=settings, store=store, api=api, events=events, tmp=tmp_path)


@pytest.fixture()
def digits(env):
    """Real 8x8 digit PNGs, 3 per class, uploaded to the store."""
    sample_dataset("digits", env.tmp / "digits", per_class=3)
    uri = f"s3://{BUCKET}/data/digits"
    env.store.upload(env.tmp / "digits", uri)
    return uri


def training_request(env, data_uri: str, **hps: str) -> dict:
    code = put_tarball(env.store, f"s3://{BUCKET}/code/abc/sourcedir.tar.gz", {"train.py": TRAIN_PY})
    return {
        "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File", "MetricDefinitions": METRICS},
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/models"},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
        "ResourceConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30},
        "RoleArn": "arn:aws:iam::000000000000:role/x",
        "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": data_uri, "S3DataDistributionType": "FullyReplicated"}}}],
        "HyperParameters": {
            "arch": '"mobilenet_v2"', "pretrained": '"false"', "epochs": "3", "learning-rate": "0.25",
            "sagemaker_submit_directory": json.dumps(code), "sagemaker_program": '"train.py"',
            "sagemaker_container_log_level": "20", "sagemaker_region": '"us-east-1"', **hps,
        },
    }


def read_tar(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


# ----------------------------------------------------------------------------- unit
def test_toolkit_decoding_and_cmd_args():
    assert decode_hyperparameter('"mobilenet_v2"') == "mobilenet_v2"
    assert decode_hyperparameter("0.01") == 0.01
    assert decode_hyperparameter("not json") == "not json"
    assert to_cmd_args({"lr": 0.01, "arch": "m", "b": True}) == ["--arch", "m", "-b", "True", "--lr", "0.01"]


def test_path_mapper_remaps_only_opt_ml(tmp_path):
    m = PathMapper(tmp_path)
    assert m.path("/opt/ml/processing/input") == tmp_path / "processing/input"
    assert m.text("--out=/opt/ml/model x /opt/mlx /a/opt/ml") == f"--out={tmp_path}/model x /opt/mlx /a/opt/ml"


# ----------------------------------------------------------------------------- processing
def test_processing_job_runs_sdk_runproc_and_roundtrips_outputs(env, digits):
    from sagemaker.processing import FrameworkProcessor

    runproc = FrameworkProcessor._generate_framework_script(SimpleNamespace(command=["python"]), "prep.py")
    assert "cd /opt/ml/processing/input/code/" in runproc  # the SDK's own text
    code = put_tarball(env.store, f"s3://{BUCKET}/p/code/h1/sourcedir.tar.gz", {"prep.py": PREP_PY})
    entry = f"s3://{BUCKET}/p/code/h2/runproc.sh"
    env.store.put_bytes(entry, runproc.encode())
    out_uri = f"s3://{BUCKET}/p/exec-1/Prep/output/train"
    report_uri = f"s3://{BUCKET}/p/exec-1/Prep/output/report"
    s3in = {"S3DataType": "S3Prefix", "S3InputMode": "File", "S3DataDistributionType": "FullyReplicated"}
    request = {
        "ProcessingResources": {"ClusterConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30}},
        "AppSpecification": {"ImageUri": IMAGE, "ContainerArguments": ["--input-dir", "/opt/ml/processing/input/data",
                                                                       "--output-dir", "/opt/ml/processing/output"],
                             "ContainerEntrypoint": ["/bin/bash", "/opt/ml/processing/input/entrypoint/runproc.sh"]},
        "RoleArn": "arn:aws:iam::000000000000:role/x",
        "ProcessingInputs": [
            {"InputName": "input-1", "S3Input": {"S3Uri": digits, "LocalPath": "/opt/ml/processing/input/data", **s3in}},
            {"InputName": "code", "S3Input": {"S3Uri": code, "LocalPath": "/opt/ml/processing/input/code/", **s3in}},
            {"InputName": "entrypoint", "S3Input": {"S3Uri": entry, "LocalPath": "/opt/ml/processing/input/entrypoint", **s3in}},
        ],
        "ProcessingOutputConfig": {"Outputs": [
            {"OutputName": "train", "S3Output": {"S3Uri": out_uri, "LocalPath": "/opt/ml/processing/output/train", "S3UploadMode": "EndOfJob"}},
            {"OutputName": "report", "S3Output": {"S3Uri": report_uri, "LocalPath": "/opt/ml/processing/output/report", "S3UploadMode": "EndOfJob"}},
        ]},
    }
    result = env.api.run_processing_job(request, "prep-1")
    assert result["ProcessingJobStatus"] == "Completed", Path(result["LogPath"]).read_text()
    report = json.loads(env.store.path(report_uri + "/report.json").read_text())
    assert report["classes"] == [str(i) for i in range(10)] and report["copied"] == 20
    assert Path(report["python"]).resolve() == Path(os.sys.executable).resolve()
    assert len(list(env.store.path(out_uri).rglob("*.png"))) == 20
    assert result["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"] == out_uri
    assert Path(result["LocalJobDir"]) == env.settings.jobs_root / "prep-1"
    assert "copied 20" in Path(result["LogPath"]).read_text()
    assert any(e["type"] == "log" and e["line"] == "copied 20" for e in env.events)


def test_script_processor_failure_file_becomes_failure_reason(env):
    code = f"s3://{BUCKET}/p/code/h3/prep.py"
    env.store.put_bytes(code, PREP_PY.encode())
    (env.store.path(f"s3://{BUCKET}/empty/x")).mkdir(parents=True)
    s3in = {"S3DataType": "S3Prefix", "S3InputMode": "File"}
    request = {
        "AppSpecification": {"ImageUri": IMAGE, "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/prep.py"],
                             "ContainerArguments": ["--input-dir", "/opt/ml/processing/input/data/x", "--output-dir", "/opt/ml/processing/output"]},
        "ProcessingInputs": [
            {"InputName": "code", "S3Input": {"S3Uri": code, "LocalPath": "/opt/ml/processing/input/code", **s3in}},
            {"InputName": "data", "S3Input": {"S3Uri": f"s3://{BUCKET}/empty", "LocalPath": "/opt/ml/processing/input/data", **s3in}},
        ],
        "ProcessingOutputConfig": {"Outputs": [{"OutputName": "o", "S3Output": {
            "S3Uri": f"s3://{BUCKET}/never", "LocalPath": "/opt/ml/processing/output", "S3UploadMode": "EndOfJob"}}]},
    }
    result = env.api.run_processing_job(request, "prep-fail")
    assert result["ProcessingJobStatus"] == "Failed"
    assert result["FailureReason"] == "no class folders in input"
    assert not env.store.exists(f"s3://{BUCKET}/never")


# ----------------------------------------------------------------------------- training
def test_training_job_contract_model_tar_and_metrics(env, digits):
    request = training_request(env, digits)
    request["CheckpointConfig"] = {"S3Uri": f"s3://{BUCKET}/ckpt"}
    result = env.api.run_training_job(request, "train-1")
    assert result["TrainingJobStatus"] == "Completed", result.get("FailureReason")
    model_uri = f"s3://{BUCKET}/models/train-1/output/model.tar.gz"
    assert result["ModelArtifacts"]["S3ModelArtifacts"] == model_uri
    files = read_tar(env.store.path(model_uri))
    assert files["model.pth"] == b"weights"  # files at the archive root, as SageMaker tars them
    seen = json.loads(files["env.json"])
    job_dir = env.settings.jobs_root / "train-1"
    # hyperparameters decoded (JSON strings) and passed as sorted --name value, sagemaker_* left out
    assert seen["argv"] == ["--arch", "mobilenet_v2", "--epochs", "3", "--learning-rate", "0.25", "--pretrained", "false"]
    assert json.loads(seen["SM_HPS"]) == {"arch": "mobilenet_v2", "pretrained": "false", "epochs": 3, "learning-rate": 0.25}
    assert seen["SM_HP_LEARNING_RATE"] == "0.25" and seen["SM_HP_ARCH"] == "mobilenet_v2"
    assert seen["SM_CHANNEL_TRAIN"] == str(job_dir / "input/data/train")
    assert json.loads(seen["SM_CHANNELS"]) == ["train"]
    assert seen["SM_MODEL_DIR"] == str(job_dir / "model")
    assert seen["SM_OUTPUT_DATA_DIR"] == str(job_dir / "output/data")
    assert seen["SM_CHECKPOINT_DIR"] == str(job_dir / "checkpoints")
    assert seen["SM_NUM_CPUS"] == seen["OMP_NUM_THREADS"] == str(os.cpu_count())
    assert seen["SM_NUM_GPUS"].isdigit() and seen["TRAINING_JOB_NAME"] == "train-1"
    assert json.loads(seen["SM_TRAINING_ENV"])["hyperparameters"]["epochs"] == 3
    assert seen["cwd"] == str(job_dir / "code")
    assert len(seen["train_files"]) == 30 and all(f.endswith(".png") for f in seen["train_files"])
    assert json.loads((job_dir / "input/config/hyperparameters.json").read_text()) == request["HyperParameters"]
    assert "train" in json.loads((job_dir / "input/config/inputdataconfig.json").read_text())
    for copy in ("input/data", "checkpoints", "model"):  # copies of what the store holds now
        assert not (job_dir / copy).exists()
    out = read_tar(env.store.path(f"s3://{BUCKET}/models/train-1/output/output.tar.gz"))
    assert json.loads(out["history.json"]) == {"epochs": 3}
    final = {m["MetricName"]: m["Value"] for m in result["FinalMetricDataList"]}
    assert final == {"valid_accuracy": 0.75, "train_loss": pytest.approx(0.3333)}  # last values
    epochs = [e["epoch"] for e in env.events if e["type"] == "metric" and e["name"] == "valid_accuracy"]
    assert epochs == [1, 2, 3]
    assert result["HyperParameters"] == request["HyperParameters"] and result["TrainingTimeInSeconds"] >= 0
    assert "valid_accuracy=0.75" in Path(result["LogPath"]).read_text()


def test_training_requirements_are_not_installed_locally(env, digits):
    """SageMaker's toolkit pip-installs a requirements.txt at the code root (smdebug, with
    Debugger on); the engine is offline: it says so and runs with its own environment."""
    request = training_request(env, digits)
    code = put_tarball(env.store, f"s3://{BUCKET}/code/req/sourcedir.tar.gz",
                       {"train.py": TRAIN_PY, "requirements.txt": "imgpipe-no-such-package==9.9\n"})
    request["HyperParameters"]["sagemaker_submit_directory"] = json.dumps(code)
    result = env.api.run_training_job(request, "train-req")
    assert result["TrainingJobStatus"] == "Completed", result.get("FailureReason")
    log = Path(result["LogPath"]).read_text()
    assert "requirements.txt found: not installing it locally (offline)" in log


def test_failure_file_and_crash_log_tail(env, digits):
    failed = env.api.run_training_job(training_request(env, digits, mode='"fail"'), "train-fail")
    assert failed["TrainingJobStatus"] == "Failed"
    assert failed["FailureReason"] == "ValueError: no images of class 7"
    assert "ModelArtifacts" not in failed
    crashed = env.api.run_training_job(training_request(env, digits, mode='"crash"'), "train-crash")
    assert crashed["TrainingJobStatus"] == "Failed"
    assert "exit code 2" in crashed["FailureReason"] and "something broke near line 42" in crashed["FailureReason"]


def test_killed_job_is_failed(env, digits):
    result = env.api.run_training_job(training_request(env, digits, mode='"selfkill"'), "train-killed")
    assert result["TrainingJobStatus"] == "Failed"
    assert "exit code -9" in result["FailureReason"] and "about to be killed" in result["FailureReason"]


def test_max_runtime_exceeded(env, digits):
    request = training_request(env, digits, mode='"sleep"')
    request["StoppingCondition"] = {"MaxRuntimeInSeconds": 1}
    started = time.monotonic()
    result = env.api.run_training_job(request, "train-slow")
    assert time.monotonic() - started < 20
    assert result["TrainingJobStatus"] == "Failed" and result["FailureReason"].startswith("MaxRuntimeExceeded")


def test_stop_kills_the_whole_process_group(env, digits):
    started = threading.Event()
    env.api._ctx.on_event = lambda e: started.set() if "started child=" in e.get("line", "") else None
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(r=env.api.run_training_job(training_request(env, digits, mode='"sleep"'), "train-stop")))
    thread.start()
    assert started.wait(30)
    env.api.stop()
    thread.join(30)
    result = box["r"]
    assert result["TrainingJobStatus"] == "Stopped" and "interrupted" in result["FailureReason"]
    child = int(Path(result["LogPath"]).read_text().split("started child=")[1].split()[0])
    assert _gone(child, wait=5)  # the grandchild went down with the group


def _gone(pid: int, wait: float) -> bool:
    """Dead (reaped, or a zombie waiting for a reaper that this sandbox may not have)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def test_checkpoints_resume_from_s3(env, digits):
    request = training_request(env, digits, mode='"checkpoint"', epochs="2")
    request["CheckpointConfig"] = {"S3Uri": f"s3://{BUCKET}/ckpt/run"}
    first = env.api.run_training_job(request, "train-ck1")
    second = env.api.run_training_job(request, "train-ck2")
    assert "resumed_from=0" in Path(first["LogPath"]).read_text()
    assert "resumed_from=2" in Path(second["LogPath"]).read_text()
    assert json.loads(env.store.path(f"s3://{BUCKET}/ckpt/run/state.json").read_text()) == {"epochs_done": 4}


def test_debug_hook_config_is_what_smdebug_reads(env, digits):
    request = training_request(env, digits)
    request["DebugHookConfig"] = {
        "S3OutputPath": f"s3://{BUCKET}/debug",
        "HookParameters": {"save_interval": "5"},
        "CollectionConfigurations": [{"CollectionName": "losses", "CollectionParameters": {"save_interval": "10"}}],
    }
    result = env.api.run_training_job(request, "train-dbg")
    assert result["TrainingJobStatus"] == "Completed" and result["DebugHookConfig"] == request["DebugHookConfig"]
    job_dir = env.settings.jobs_root / "train-dbg"
    config_path = job_dir / "input/config/debughookconfig.json"
    seen = json.loads(read_tar(env.store.path(result["ModelArtifacts"]["S3ModelArtifacts"]))["env.json"])
    assert seen["SMDEBUG_CONFIG_FILE_PATH"] == str(config_path)
    json_config = pytest.importorskip("smdebug.core.json_config")
    params = json_config.get_json_config_as_dict(str(config_path))
    parsed = json_config.collect_hook_config_params(params)
    assert parsed["out_dir"] == str(job_dir / "output/tensors")
    assert json_config.get_include_collections(params) == ["losses"]
    assert env.store.exists(f"s3://{BUCKET}/debug/train-dbg/debug-output/training_job_end.ts")


def test_builtin_algorithm_is_rejected_clearly(env, digits):
    request = training_request(env, digits)
    request["HyperParameters"] = {"num_classes": "10"}
    result = env.api.run_training_job(request, "builtin")
    assert result["TrainingJobStatus"] == "Failed" and "not supported locally" in result["FailureReason"]


def test_sdk_repack_model_step_runs_locally(env):
    """RegisterModel's repack step: a shell launcher and the SDK's _repack_model.py, which
    hard-codes /opt/ml paths."""
    from sagemaker.workflow import _repack_model, _utils

    model_uri = f"s3://{BUCKET}/training/job-1/output/model.tar.gz"
    put_tarball(env.store, model_uri, {"model.pth": b"weights", "model.json": b"{}"})
    code = put_tarball(env.store, f"s3://{BUCKET}/repack/source/sourcedir.tar.gz", {
        _utils.REPACK_SCRIPT_LAUNCHER: _utils.LAUNCH_REPACK_SCRIPT_CMD,
        _utils.REPACK_SCRIPT: Path(_repack_model.__file__).read_text(),
        "inference.py": "def model_fn(d):\n    return d\n",
        "imgclf/__init__.py": "",
    })
    request = {
        "AlgorithmSpecification": {"TrainingInputMode": "File", "TrainingImage": "sagemaker-scikit-learn:1.2-1-cpu-py3"},
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/registered-models"},
        "InputDataConfig": [{"ChannelName": "training", "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": model_uri}}}],
        "HyperParameters": {"inference_script": '"inference.py"', "model_archive": model_uri,
                            "dependencies": '"training/imgclf"', "source_dir": '"inference"',
                            "sagemaker_submit_directory": json.dumps(code), "sagemaker_program": f'"{_utils.REPACK_SCRIPT_LAUNCHER}"'},
        "DebugHookConfig": {"S3OutputPath": f"s3://{BUCKET}/registered-models", "CollectionConfigurations": []},
        "ProfilerConfig": {"DisableProfiler": True},
    }
    result = env.api.run_training_job(request, "repack-1")
    assert result["TrainingJobStatus"] == "Completed", result.get("FailureReason")
    files = read_tar(env.store.path(result["ModelArtifacts"]["S3ModelArtifacts"]))
    assert files["model.pth"] == b"weights"
    assert files["code/inference.py"].startswith(b"def model_fn")
    assert "code/lib/imgclf/__init__.py" in files
