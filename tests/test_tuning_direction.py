"""Which trial wins a local tuning job: a ``Minimize`` objective end to end, the direction and
sign the optimizer is told, and SageMaker's rule that a trial scores the LATEST value of the
objective metric it emitted (``FinalHyperParameterTuningJobObjectiveMetric``), not its best."""
from __future__ import annotations

import textwrap

import optuna
import pytest

from pipelines.local import tuning
from tuning_requests import level_tuning_request, one_script_api

# valid_loss ends at level; before that it is level + 1, except for level 4, which first emits 0.5 (better
# than any trial's final loss) and then ends at 4 (the worst).
LOSS_PY = textwrap.dedent('''
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("--level", type=float, required=True)
    a = p.parse_args()
    first = 0.5 if a.level == 4 else a.level + 1
    print("epoch=1 valid_time=90.0", flush=True)  # another metric, never the objective
    print(f"epoch=1 valid_loss={first:.4f}", flush=True)
    print("epoch=2 valid_time=80.0", flush=True)
    print(f"epoch=2 valid_loss={a.level:.4f}", flush=True)
''')


@pytest.fixture()
def api(tmp_path):
    return one_script_api(tmp_path, "loss.py", LOSS_PY)


def minimize_request(strategy: str, values: list[str], max_jobs: int) -> dict:
    return level_tuning_request("loss.py", values, strategy=strategy, max_jobs=max_jobs, objective="Minimize",
                                metrics=["valid_loss", "valid_time"])


@pytest.fixture()
def studies(monkeypatch) -> list[optuna.Study]:
    """Every optuna study the tuner creates, to read what the optimizer was told."""
    made: list[optuna.Study] = []
    create = tuning._quiet_create_study

    def recording(**kwargs):
        made.append(create(**kwargs))
        return made[-1]

    monkeypatch.setattr(tuning, "_quiet_create_study", recording)
    return made


def test_minimize_picks_the_lowest_latest_value_and_tells_optuna_so(api, studies):
    result = api.run_tuning_job(minimize_request("Grid", ["1", "2", "3", "4"], 4), "min-grid")
    assert result["HyperParameterTuningJobStatus"] == "Completed", result.get("FailureReason")
    assert result["ObjectiveStatusCounters"] == {"Succeeded": 4, "Pending": 0, "Failed": 0}
    summaries = result["TrainingJobSummaries"]
    scored = [(s["TunedHyperParameters"]["level"], s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"])
              for s in summaries]
    assert scored == [("1", 1.0), ("2", 2.0), ("3", 3.0), ("4", 4.0)]  # best (lowest) first
    best = result["BestTrainingJob"]
    assert best["TunedHyperParameters"] == {"level": "1"}
    assert best["FinalHyperParameterTuningJobObjectiveMetric"] == {"Type": "Minimize", "MetricName": "valid_loss", "Value": 1.0}
    # level 4 emitted 0.5 first: scored by its latest value it is the worst, not the winner
    [study] = studies
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    told = sorted((t.params["level"], t.value) for t in study.trials)
    assert told == [("1", 1.0), ("2", 2.0), ("3", 3.0), ("4", 4.0)]
    # the per-epoch values the pruner sees are the objective's only
    epochs = sorted((t.params["level"], t.intermediate_values) for t in study.trials)
    assert epochs == [("1", {1: 2.0, 2: 1.0}), ("2", {1: 3.0, 2: 2.0}), ("3", {1: 4.0, 2: 3.0}), ("4", {1: 0.5, 2: 4.0})]
    assert study.best_trial.params["level"] == "1"


def test_random_search_minimize_never_crowns_the_worst_trial(api, studies):
    result = api.run_tuning_job(minimize_request("Random", ["1", "4"], 3), "min-random")
    values = {s["TunedHyperParameters"]["level"] for s in result["TrainingJobSummaries"]}
    assert values == {"1", "4"}, "seed 0 samples both values in 3 trials"
    assert result["BestTrainingJob"]["TunedHyperParameters"] == {"level": "1"}
    assert result["TrainingJobSummaries"][-1]["TunedHyperParameters"] == {"level": "4"}
    assert studies[0].direction == optuna.study.StudyDirection.MINIMIZE


def test_maximize_direction_is_told_to_optuna():
    params = tuning.parse_ranges({"CategoricalParameterRanges": [{"Name": "level", "Values": ["1"]}]})
    for kind, direction in (("Maximize", "MAXIMIZE"), ("Minimize", "MINIMIZE")):
        config = {"Strategy": "Random", "HyperParameterTuningJobObjective": {"Type": kind, "MetricName": "m"}}
        study, _ = tuning.make_study(config, params, 2)
        assert study.direction == getattr(optuna.study.StudyDirection, direction)


def final(value: float) -> list[dict]:
    return [{"MetricName": "other", "Value": 99.0}, {"MetricName": "valid_loss", "Value": value}]


@pytest.mark.parametrize("status", ["Completed", "Stopped"])
def test_a_trial_scores_its_latest_emitted_value_not_its_best(status):
    reported = [(1, 0.1), (2, 0.7), (3, 0.4)]
    describe = {"TrainingJobStatus": status, "FinalMetricDataList": final(0.4)}
    assert tuning.trial_objective(describe, reported, "valid_loss") == 0.4


def test_a_stopped_trial_without_final_metrics_scores_its_last_report():
    stopped = {"TrainingJobStatus": "Stopped"}
    assert tuning.trial_objective(stopped, [(1, 0.9), (2, 0.2), (3, 0.3)], "valid_loss") == 0.3
    assert tuning.trial_objective(stopped, [], "valid_loss") is None
    assert tuning.trial_objective({"TrainingJobStatus": "Completed"}, [(1, 0.3)], "valid_loss") is None
    failed = {"TrainingJobStatus": "Failed", "FinalMetricDataList": final(0.2)}
    assert tuning.trial_objective(failed, [(1, 0.2)], "valid_loss") is None


def test_summaries_sort_best_first_in_either_direction():
    summaries = [{"TrainingJobName": n, "FinalHyperParameterTuningJobObjectiveMetric": {"Value": v}}
                 for n, v in (("b", 2.0), ("a", 1.0), ("c", 3.0))] + [{"TrainingJobName": "failed"}]
    assert [s["TrainingJobName"] for s in tuning._sort_best_first(summaries, maximize=False)] == ["a", "b", "c", "failed"]
    assert [s["TrainingJobName"] for s in tuning._sort_best_first(summaries, maximize=True)] == ["c", "b", "a", "failed"]


def test_reverse_logarithmic_values_are_one_minus_the_sample():
    [momentum] = tuning.parse_ranges({"ContinuousParameterRanges": [
        {"Name": "momentum", "MinValue": "0.5", "MaxValue": "0.999", "ScalingType": "ReverseLogarithmic"}]})
    assert momentum.distribution().low == pytest.approx(0.001) and momentum.distribution().high == pytest.approx(0.5)
    assert float(momentum.request_value(0.01)) == pytest.approx(0.99)
    assert float(momentum.request_value(0.3)) == pytest.approx(0.7)
    assert float(momentum.request_value(0.0001)) == 0.999  # clamped into the range


@pytest.mark.parametrize("kind", ["Integer", "Continuous"])
@pytest.mark.parametrize("scaling,log", [("Auto", False), ("Linear", False), ("Logarithmic", True)])
def test_only_logarithmic_scaling_samples_on_a_log_scale(kind, scaling, log):
    [param] = tuning.parse_ranges({f"{kind}ParameterRanges": [
        {"Name": "p", "MinValue": "1", "MaxValue": "100", "ScalingType": scaling}]})
    assert param.distribution().log is log
    assert param.request_value(30) == ("30" if kind == "Integer" else "30.0")  # the sample itself


def test_unknown_strategies_and_empty_reverse_log_ranges_are_refused():
    params = tuning.parse_ranges({"CategoricalParameterRanges": [{"Name": "x", "Values": ["1"]}]})
    for strategy in ("Annealing", "Evolutionary"):
        config = {"Strategy": strategy, "HyperParameterTuningJobObjective": {"Type": "Minimize", "MetricName": "m"}}
        with pytest.raises(tuning.TuningConfigError, match=f"unknown tuning Strategy '{strategy}'"):
            tuning.make_study(config, params, 2)
    with pytest.raises(tuning.TuningConfigError, match="ReverseLogarithmic needs a continuous range"):
        tuning.parse_ranges({"ContinuousParameterRanges": [
            {"Name": "m", "MinValue": "0.9", "MaxValue": "0.9", "ScalingType": "ReverseLogarithmic"}]})
