"""Local hyperparameter tuning: optuna strategies over real trial subprocesses."""
from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipelines.local.object_store import ObjectStore
from pipelines.local.sagemaker_api import LocalSageMaker
from pipelines.settings import Settings
from scripts import put_tarball

BUCKET = "imgpipe-local"
# Objective: a known function of the hyperparameters, reached at the last epoch.
TOY_PY = textwrap.dedent('''
    import argparse, json, math, os, sys, time
    p = argparse.ArgumentParser()
    p.add_argument("--learning-rate", type=float, default=0.01)
    p.add_argument("--optimizer", default="sgd")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--quality", type=float, default=None)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--epoch-seconds", type=float, default=0.0)
    p.add_argument("--trace-dir", required=True)
    a = p.parse_args()
    name = os.environ["TRAINING_JOB_NAME"]
    trace = {"start": time.time(), "argv": sys.argv[1:], "cpus": os.environ["SM_NUM_CPUS"],
             "files": len(os.listdir(os.environ["SM_CHANNEL_TRAIN"]))}
    if a.optimizer == "broken":
        sys.exit("broken optimizer")
    if a.quality is not None:
        score = a.quality
    else:
        score = 1 - (math.log10(a.learning_rate) + 2) ** 2 / 10 + (0.05 if a.optimizer == "adam" else 0) - a.batch_size / 1000
    for epoch in range(1, a.epochs + 1):
        time.sleep(a.epoch_seconds)
        value = score if a.quality is not None else score * epoch / a.epochs
        print(f"epoch={epoch} valid_accuracy={value:.6f}", flush=True)
    trace["end"] = time.time()
    json.dump(trace, open(os.path.join(a.trace_dir, name + ".json"), "w"))
''')


def toy_objective(tuned: dict[str, str]) -> float:
    return (1 - (math.log10(float(tuned["learning-rate"])) + 2) ** 2 / 10
            + (0.05 if tuned["optimizer"] == "adam" else 0) - int(tuned["batch-size"]) / 1000)


@pytest.fixture()
def env(tmp_path):
    settings = Settings(home=tmp_path / "home")
    store = ObjectStore(settings.s3_root)
    put_tarball(store, f"s3://{BUCKET}/code/toy/sourcedir.tar.gz", {"toy.py": TOY_PY})
    store.put_bytes(f"s3://{BUCKET}/data/train/a.txt", b"x")
    trace = tmp_path / "trace"
    trace.mkdir()
    return SimpleNamespace(settings=settings, store=store, trace=trace)


def tuning_request(env, strategy: str, ranges: dict, max_jobs: int, parallel: int, early: str = "Off",
                   **static: str) -> dict:
    return {
        "HyperParameterTuningJobConfig": {
            "Strategy": strategy,
            "ResourceLimits": {"MaxNumberOfTrainingJobs": max_jobs, "MaxParallelTrainingJobs": parallel},
            "TrainingJobEarlyStoppingType": early,
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "valid_accuracy"},
            "ParameterRanges": ranges,
        },
        "TrainingJobDefinition": {
            "StaticHyperParameters": {
                "trace-dir": json.dumps(str(env.trace)), "epochs": "3",
                "sagemaker_submit_directory": json.dumps(f"s3://{BUCKET}/code/toy/sourcedir.tar.gz"),
                "sagemaker_program": '"toy.py"', "sagemaker_region": '"us-east-1"', **static,
            },
            "RoleArn": "arn:aws:iam::000000000000:role/x",
            "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/tuning"},
            "StoppingCondition": {"MaxRuntimeInSeconds": 300},
            "HyperParameterTuningResourceConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30},
            "AlgorithmSpecification": {"TrainingInputMode": "File", "TrainingImage": "pytorch-training:2.1-cpu-py310",
                                       "MetricDefinitions": [{"Name": "valid_accuracy", "Regex": "valid_accuracy=([0-9.]+)"}]},
            "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/data/train"}}}],
        },
    }


def max_concurrency(trace_dir: Path) -> int:
    spans = [json.loads(p.read_text()) for p in trace_dir.glob("*.json")]
    points = sorted([(s["start"], 1) for s in spans] + [(s["end"], -1) for s in spans], key=lambda x: (x[0], x[1]))
    running = best = 0
    for _, delta in points:
        running += delta
        best = max(best, running)
    return best


def test_bayesian_picks_the_argmax_and_respects_parallelism(env):
    events: list[dict] = []
    api = LocalSageMaker(env.settings, env.store, on_event=events.append, cores=2)
    ranges = {
        "ContinuousParameterRanges": [{"Name": "learning-rate", "MinValue": "0.0001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}],
        "CategoricalParameterRanges": [{"Name": "optimizer", "Values": ['"sgd"', '"adam"']}],
        "IntegerParameterRanges": [{"Name": "batch-size", "MinValue": "8", "MaxValue": "64", "ScalingType": "Auto"}],
    }
    result = api.run_tuning_job(tuning_request(env, "Bayesian", ranges, 4, 2, **{"epoch-seconds": "0.3"}), "tune-1")
    assert result["HyperParameterTuningJobStatus"] == "Completed", result.get("FailureReason")
    summaries = result["TrainingJobSummaries"]
    assert len(summaries) == 4 and all(s["TrainingJobStatus"] == "Completed" for s in summaries)
    assert result["TrainingJobStatusCounters"]["Completed"] == 4 and result["ObjectiveStatusCounters"]["Succeeded"] == 4
    for s in summaries:
        tuned = s["TunedHyperParameters"]
        assert re.fullmatch(r"tune-1-\d{3}-[0-9a-f]{8}", s["TrainingJobName"])
        assert tuned["optimizer"] in ("sgd", "adam") and tuned["batch-size"].isdigit()
        assert 1e-4 <= float(tuned["learning-rate"]) <= 0.1
        assert s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == pytest.approx(toy_objective(tuned), abs=1e-5)
        trace = json.loads((env.trace / f"{s['TrainingJobName']}.json").read_text())
        assert trace["argv"][trace["argv"].index("--optimizer") + 1] == tuned["optimizer"]  # decoded JSON category
        assert trace["cpus"] == "1" and trace["files"] == 1  # 2 cores / 2 parallel trials
    best = max(summaries, key=lambda s: toy_objective(s["TunedHyperParameters"]))
    assert result["BestTrainingJob"]["TrainingJobName"] == best["TrainingJobName"] == summaries[0]["TrainingJobName"]
    assert result["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["MetricName"] == "valid_accuracy"
    assert result["BestTrainingJob"]["ModelArtifacts"]["S3ModelArtifacts"] == \
        f"s3://{BUCKET}/tuning/{best['TrainingJobName']}/output/model.tar.gz"
    assert max_concurrency(env.trace) == 2
    assert Path(result["LogPath"]).read_text().count("event=end") == 4
    kinds = {(e["type"], e.get("event")) for e in events}
    assert {("trial", "start"), ("trial", "end"), ("metric", None)} <= kinds


def test_grid_enumerates_within_core_bound_and_survives_failed_trials(env):
    api = LocalSageMaker(env.settings, env.store, cores=1)
    ranges = {"CategoricalParameterRanges": [{"Name": "optimizer", "Values": ['"sgd"', '"adam"', '"broken"']}],
              "IntegerParameterRanges": [{"Name": "batch-size", "MinValue": "1", "MaxValue": "2"}]}
    result = api.run_tuning_job(tuning_request(env, "Grid", ranges, 100, 3, epochs="1"), "grid-1")
    assert result["HyperParameterTuningJobStatus"] == "Completed"
    combos = sorted((s["TunedHyperParameters"]["optimizer"], s["TunedHyperParameters"]["batch-size"])
                    for s in result["TrainingJobSummaries"])
    assert combos == sorted((o, b) for o in ("sgd", "adam", "broken") for b in ("1", "2"))
    assert result["TrainingJobStatusCounters"]["NonRetryableError"] == 2
    assert result["BestTrainingJob"]["TunedHyperParameters"] == {"optimizer": "adam", "batch-size": "1"}
    assert result["LocalParallelTrainingJobs"] == 1 and max_concurrency(env.trace) == 1


def test_grid_rejects_continuous_ranges(env):
    api = LocalSageMaker(env.settings, env.store, cores=1)
    ranges = {"ContinuousParameterRanges": [{"Name": "learning-rate", "MinValue": "0.001", "MaxValue": "0.1"}]}
    result = api.run_tuning_job(tuning_request(env, "Grid", ranges, 4, 1), "grid-bad")
    assert result["HyperParameterTuningJobStatus"] == "Failed"
    assert "Grid search does not support continuous" in result["FailureReason"]
    assert not list(env.trace.iterdir())


def test_all_trials_failing_fails_the_tuning_job(env):
    api = LocalSageMaker(env.settings, env.store, cores=1)
    ranges = {"CategoricalParameterRanges": [{"Name": "optimizer", "Values": ['"broken"']}]}
    result = api.run_tuning_job(tuning_request(env, "Random", ranges, 2, 1), "all-bad")
    assert result["HyperParameterTuningJobStatus"] == "Failed" and "broken optimizer" in result["FailureReason"]
    assert "BestTrainingJob" not in result


def test_median_early_stopping_stops_a_bad_trial(env):
    api = LocalSageMaker(env.settings, env.store, cores=1)
    ranges = {"CategoricalParameterRanges": [{"Name": "quality", "Values": ["0.9", "0.8", "0.1", "0.85", "0.2"]}]}
    request = tuning_request(env, "Grid", ranges, 5, 1, early="Auto", epochs="4", **{"epoch-seconds": "0.4"})
    result = api.run_tuning_job(request, "early-1")
    assert result["HyperParameterTuningJobStatus"] == "Completed"
    by_status: dict[str, list[dict]] = {}
    for s in result["TrainingJobSummaries"]:
        by_status.setdefault(s["TrainingJobStatus"], []).append(s)
    stopped = by_status.get("Stopped", [])
    assert stopped, "no trial was stopped early"
    completed = [float(s["TunedHyperParameters"]["quality"]) for s in by_status["Completed"]]
    for s in stopped:
        quality = float(s["TunedHyperParameters"]["quality"])
        assert quality < sorted(completed)[len(completed) // 2]  # worse than the median
        assert s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == pytest.approx(quality)  # still counts
        assert "epoch=4" not in Path(s["LogPath"]).read_text()  # killed before its last epoch
    assert result["BestTrainingJob"]["TunedHyperParameters"]["quality"] == "0.9"


def test_scaling_types_stay_in_range():
    import optuna

    from pipelines.local.tuning import Param, TuningConfigError, parse_ranges

    params = parse_ranges({
        "ContinuousParameterRanges": [
            {"Name": "momentum", "MinValue": "0.5", "MaxValue": "0.999", "ScalingType": "ReverseLogarithmic"},
            {"Name": "lr", "MinValue": "1e-5", "MaxValue": "1", "ScalingType": "Logarithmic"}],
        "IntegerParameterRanges": [{"Name": "bs", "MinValue": "8", "MaxValue": "512", "ScalingType": "Logarithmic"}],
    })
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(50):
        trial = study.ask({p.name: p.distribution() for p in params})
        values = {p.name: p.request_value(trial.params[p.name]) for p in params}
        assert 0.5 <= float(values["momentum"]) <= 0.999 and 1e-5 <= float(values["lr"]) <= 1
        assert 8 <= int(values["bs"]) <= 512
        study.tell(trial, 0.0)
    momenta = [1 - t.params["momentum"] for t in study.trials]  # sampled densely near 1
    assert sum(m > 0.9 for m in momenta) > 25
    with pytest.raises(TuningConfigError, match="ReverseLogarithmic"):
        parse_ranges({"ContinuousParameterRanges": [{"Name": "x", "MinValue": "0", "MaxValue": "2", "ScalingType": "ReverseLogarithmic"}]})
    assert Param("c", "Categorical", values=('"sgd"',)).request_value('"sgd"') == '"sgd"'


def test_hyperband_runs_trials_with_its_pruner(env):
    api = LocalSageMaker(env.settings, env.store, cores=1)
    ranges = {"ContinuousParameterRanges": [{"Name": "learning-rate", "MinValue": "0.001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}]}
    request = tuning_request(env, "Hyperband", ranges, 3, 1)
    request["HyperParameterTuningJobConfig"]["StrategyConfig"] = {"HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": 3}}
    result = api.run_tuning_job(request, "hb-1")
    assert result["HyperParameterTuningJobStatus"] == "Completed", result.get("FailureReason")
    assert len(result["TrainingJobSummaries"]) == 3 and "BestTrainingJob" in result
    request["HyperParameterTuningJobConfig"]["TrainingJobEarlyStoppingType"] = "Auto"
    refused = api.run_tuning_job(request, "hb-2")
    assert refused["HyperParameterTuningJobStatus"] == "Failed" and "Hyperband" in refused["FailureReason"]
