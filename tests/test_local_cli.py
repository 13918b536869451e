"""``imgpipe run`` / ``executions`` / ``models`` through the real command line (subprocesses)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.local.object_store import ObjectStore
from pipelines.local.records import Records
from pipelines.settings import Settings
from test_local_engine import CODE_URI, TOOL, definition, get, join, processing

REPO = Path(__file__).resolve().parents[1]


def imgpipe(*args, home, timeout=300):
    env = {**os.environ, "IMGPIPE_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def home(tmp_path):
    home = tmp_path / "home"
    ObjectStore(Settings(home=home).s3_root).put_bytes(CODE_URI, TOOL.encode())
    return home


@pytest.fixture()
def data_dir(tmp_path):
    data = tmp_path / "data"
    for cls in ("a", "b"):
        (data / cls).mkdir(parents=True)
        (data / cls / "x.txt").write_text(cls)
    return data


def nothing_recorded(home):
    return not Path(Settings(home=home).db_path).exists() or Records(Settings(home=home).db_path).list_executions() == []


def tool_definition(tmp_path, **params):
    """A two-step definition whose first step reads InputDataUrl (the uploaded --data)."""
    d = definition([processing("Copy", inputs={"data": get("Parameters.InputDataUrl")}),
                    processing("Check", "--value", join(get("Parameters.Value")), inputs={"copy": get(
                        "Steps.Copy.ProcessingOutputConfig.Outputs['out'].S3Output.S3Uri")})],
                   InputDataUrl="s3://nowhere/data", Value=1.5, **params)
    path = tmp_path / "def.json"
    path.write_text(json.dumps(d))
    return path


def test_missing_data_dir_rejected(home, tmp_path):
    out = imgpipe("run", "--data", tmp_path / "nope", home=home)
    assert out.returncode == 2
    assert "data directory" in out.stderr and "does not exist" in out.stderr
    assert nothing_recorded(home)


@pytest.mark.parametrize("param,words", [
    ("Nope=1", ["unknown parameter 'Nope'", "valid names", "InputDataUrl (String)", "Value (Float)"]),
    ("Value=high", ["'Value' is Float", "'high'"]),
    ("Value", ["not Name=Value"]),
])
def test_bad_parameter_rejected_definition_file(home, tmp_path, data_dir, param, words):
    out = imgpipe("run", "--definition", tool_definition(tmp_path), "--data", data_dir, "-p", param, home=home)
    assert out.returncode == 2, out.stderr
    for word in words:
        assert word in out.stderr
    assert nothing_recorded(home)


@pytest.mark.parametrize("param,words", [
    ("Treshold=0.9", ["unknown parameter 'Treshold'", "AccuracyThreshold (Float)"]),
    ("MaxTuningJobs=four", ["'MaxTuningJobs' is Integer", "'four'"]),
])
def test_bad_parameter_rejected_real_pipeline(home, data_dir, param, words):
    """The real pipeline's definition (built offline) checks names and types before running."""
    out = imgpipe("run", "--data", data_dir, "-p", param, home=home)
    assert out.returncode == 2, out.stderr
    for word in words:
        assert word in out.stderr
    assert nothing_recorded(home)


def test_run_then_executions_list_describe(home, tmp_path, data_dir):
    definition_file = tool_definition(tmp_path)
    out = imgpipe("run", "--definition", definition_file, "--data", data_dir, "-p", "Value=2.5", home=home)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Copy (Processing) started" in out.stdout and "Check Succeeded" in out.stdout
    [execution] = Records(Settings(home=home).db_path).list_executions()
    assert f"Execution {execution.id} (def): Succeeded" in out.stdout
    assert execution.parameters["Value"] == 2.5
    uploaded = execution.parameters["InputDataUrl"]
    assert uploaded.startswith("s3://imgpipe-local/imgpipe/input/")
    assert (ObjectStore(Settings(home=home).s3_root).path(uploaded) / "a" / "x.txt").read_text() == "a"

    listing = imgpipe("executions", "list", home=home)
    assert listing.returncode == 0 and execution.id in listing.stdout and "Succeeded" in listing.stdout

    described = imgpipe("executions", "describe", execution.id[:6], home=home)
    assert described.returncode == 0, described.stderr
    text = described.stdout
    assert f"Execution:  {execution.id}" in text and "Value" in text and "2.5" in text
    assert "pipelines-" in text and "job.log" in text  # job names and log paths of the steps
    assert text.index("Copy") < text.index("Check")

    # same data again: same upload location, and the definition's job steps all re-run (no CacheConfig)
    again = imgpipe("run", "--definition", definition_file, "--data", data_dir, home=home)
    assert again.returncode == 0
    assert Records(Settings(home=home).db_path).list_executions()[0].parameters["InputDataUrl"] == uploaded

    missing = imgpipe("executions", "describe", "zzzzzz", home=home)
    assert missing.returncode == 2 and "no execution" in missing.stderr


def test_failed_run_exit_1_and_retry(home, tmp_path, data_dir):
    marker = tmp_path / "marker"
    d = definition([processing("Flaky", "--fail-once", marker, "--reason", "AlgorithmError: flaky step")],
                   InputDataUrl="s3://nowhere")
    path = tmp_path / "flaky.json"
    path.write_text(json.dumps(d, default=str))
    out = imgpipe("run", "--definition", path, "--data", data_dir, home=home)
    assert out.returncode == 1
    assert "Failure: step Flaky failed: AlgorithmError: flaky step" in out.stdout
    [execution] = Records(Settings(home=home).db_path).list_executions()
    described = imgpipe("executions", "describe", execution.id, home=home)
    assert "Flaky: AlgorithmError: flaky step" in described.stdout
    retried = imgpipe("executions", "retry", execution.id, home=home)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "Succeeded" in retried.stdout
    assert Records(Settings(home=home).db_path).get_execution(execution.id).attempt == 2


def test_models_list_empty_and_unknown(home):
    out = imgpipe("models", "list", home=home)
    assert out.returncode == 0 and "no model packages" in out.stdout
    out = imgpipe("models", "describe", "7", home=home)
    assert out.returncode == 2 and "no model package" in out.stderr


def test_progress_lines_plain_and_tty():
    import io

    from pipelines.local.progress import Progress, format_table

    events = [
        {"type": "step", "step": "Tune", "step_type": "Tuning", "status": "Starting"},
        {"type": "trial", "event": "start", "job": "tj", "trial": "tj-001", "number": 1, "total": 4,
         "hyperparameters": {"learning-rate": "0.01"}, "step": "Tune"},
        {"type": "metric", "job": "tj-001", "name": "valid_loss", "value": 0.5, "epoch": 1, "step": "Tune"},
        {"type": "metric", "job": "tj-001", "name": "valid_accuracy", "value": 0.875, "epoch": 1, "step": "Tune"},
        {"type": "log", "job": "tj-001", "line": "noise"},
        {"type": "trial", "event": "end", "job": "tj", "trial": "tj-001", "status": "Completed", "objective": 0.875, "step": "Tune"},
        {"type": "step", "step": "Tune", "step_type": "Tuning", "status": "Succeeded", "duration": 3.0},
    ]
    plain = io.StringIO()
    progress = Progress(plain, tty=False)
    for event in events:
        progress(event)
    lines = plain.getvalue().splitlines()
    assert "Tune trial 1/4 epoch 1 valid_loss=0.5000 valid_accuracy=0.8750" in lines[2]
    assert "trial 1/4 ended Completed objective=0.8750" in lines[3]
    assert lines[4].endswith("Tune Succeeded in 3.0s") and len(lines) == 5
    tty = io.StringIO()
    progress = Progress(tty, tty=True)
    for event in events:
        progress(event)
    assert "\r\x1b[K" in tty.getvalue()  # the epoch line is rewritten in place
    assert format_table(["A", "LONGER"], [["xx", 1], [None, "y"]]).splitlines() == [
        "A   LONGER", "--  ------", "xx  1", "-   y"]


# The real pipeline end to end on tiny real data (scikit-learn digits): about a minute on 2 cores.
TINY = ["-p", "MaxTuningJobs=2", "-p", "MaxParallelTuningJobs=2", "-p", "MinEpochs=1", "-p", "MaxEpochs=1",
        "-p", "ImageSize=32", "-p", "TuningMaxTrainImages=200"]


def test_full_pipeline_register_then_fail_step_from_cache(home, tmp_path):
    from pipelines.datasets import sample_dataset
    from pipelines.local.registry import LocalModelRegistry

    data = tmp_path / "digits"
    sample_dataset("digits", data, per_class=20)
    settings = Settings(home=home)

    ok = imgpipe("run", "--data", data, *TINY, "-p", "AccuracyThreshold=0.0", home=home, timeout=600)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    assert "trial 1/2" in ok.stdout and "epoch 1 valid_accuracy=" in ok.stdout
    assert "Best hyperparameters: " in ok.stdout and "Test accuracy: " in ok.stdout
    # AnalyzeTraining's verdicts, one line per rule, in the summary and in describe
    assert "Training insights (AnalyzeTraining/TrainingInsights): " in ok.stdout
    # the Debugger rules (AWS's defaults) are listed apart from the insights, and say so
    assert re.search(r"^SageMaker Debugger rules \(AWS's default parameters", ok.stdout, re.M)
    assert re.search(r"^  LossNotDecreasing \(TrainBestModel\): (NoIssuesFound|IssuesFound|Error)$", ok.stdout, re.M)
    for rule in ("LossNotDecreasing", "VanishingGradient", "Overfit", "Overtraining", "PoorWeightInitialization"):
        assert re.search(rf"^  {rule}: (NoIssuesFound|IssuesFound) — \S", ok.stdout, re.M), rule
    assert "Registered model: ImgpipeModels version 1" in ok.stdout
    assert "imgpipe models approve 1 " in ok.stdout  # the next steps, with a real held-out image
    predict_hint = next(line for line in ok.stdout.splitlines() if "imgpipe predict --endpoint imgpipe " in line)
    assert Path(predict_hint.split()[-1]).is_file() and "/test/" in predict_hint
    [package] = LocalModelRegistry(settings).list_packages()
    first = Records(settings.db_path).list_executions()[0]
    evaluation = {s.name: s for s in Records(settings.db_path).steps(first.id)}["EvaluateModel"]
    output = [o for o in evaluation.properties["ProcessingOutputConfig"]["Outputs"] if o["OutputName"] == "evaluation"][0]
    report = json.loads((ObjectStore(settings.s3_root).path(output["S3Output"]["S3Uri"]) / "evaluation.json").read_text())
    assert package["EvaluationMetrics"] == report
    assert package["PipelineExecutionArn"] == first.arn

    # Same inputs, a threshold above the accuracy reached (within 0..1, else refused up front):
    # the job steps come from the cache, the FailStep fails it.
    accuracy = report["multiclass_classification_metrics"]["accuracy"]["value"]
    assert accuracy < 0.999
    threshold = str(round(accuracy + (1 - accuracy) / 2, 3))
    low = imgpipe("run", "--data", data, *TINY, "-p", f"AccuracyThreshold={threshold}", home=home, timeout=600)
    assert low.returncode == 1, low.stdout[-3000:] + low.stderr[-3000:]
    second = Records(settings.db_path).list_executions()[0]
    status = {s.name: s.display_status for s in Records(settings.db_path).steps(second.id)}
    assert status["AccuracyTooLow"] == "Failed" and status["RegisterModel-RegisterModel"] == "NotRun"
    for name in ("PrepareData", "TuneHyperparameters", "TrainBestModel", "AnalyzeTraining", "EvaluateModel"):
        assert status[name] == "Succeeded (cached)", status
    described = imgpipe("executions", "describe", first.id, home=home)
    assert "Training insights (AnalyzeTraining/TrainingInsights): " in described.stdout
    assert second.status == "Failed" and threshold in second.failure_reason
    assert f"Failure: {second.failure_reason}" in low.stdout
    assert len(LocalModelRegistry(settings).list_packages()) == 1  # nothing registered
