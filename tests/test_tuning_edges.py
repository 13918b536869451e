"""pipelines/local/tuning.py at its edges: range validation, grid sizes, trial names, what the
optimizer is told for each trial state, the request each trial gets, the failure summary, when
the median rule and Hyperband may stop a trial, and how the tuner schedules its trials (how many,
how many at once, none after a stop).

Each test pins an answer that a plausible slip would change; the mutation run
(docs/testing.md) found them unpinned. The scheduling tests stand a quick in-process function
in for the training job, so that they are about the tuner alone.
"""
from __future__ import annotations

import textwrap
import threading
from types import SimpleNamespace

import optuna
import pytest

from pipelines.local import tuning
from pipelines.local.jobs import JobContext
from pipelines.local.object_store import ObjectStore
from pipelines.settings import Settings
from tuning_requests import level_tuning_request, one_script_api


def ranges(**kinds) -> dict:
    return {f"{kind}ParameterRanges": items for kind, items in kinds.items()}


@pytest.mark.parametrize("item", [
    {"Name": "epochs", "MinValue": "0", "MaxValue": "3", "ScalingType": "Linear"},
    {"Name": "epochs", "MinValue": "0", "MaxValue": "3", "ScalingType": "Auto"},
    {"Name": "epochs", "MinValue": "0", "MaxValue": "3"},
])
def test_a_linear_integer_range_may_start_at_zero(item):
    assert tuning.parse_ranges(ranges(Integer=[item]))[0].low == 0.0


@pytest.mark.parametrize("item, kind, message", [
    ({"Name": "lr", "MinValue": "0", "MaxValue": "1", "ScalingType": "Logarithmic"}, "Continuous", "needs MinValue > 0"),
    ({"Name": "n", "MinValue": "0", "MaxValue": "0", "ScalingType": "ReverseLogarithmic"}, "Integer", "ReverseLogarithmic"),
    ({"Name": "m", "MinValue": "0.5", "MaxValue": "1", "ScalingType": "ReverseLogarithmic"}, "Continuous", "within \\[0, 1\\)"),
    ({"Name": "m", "MinValue": "0.9", "MaxValue": "0.5"}, "Continuous", "MinValue 0.9 > MaxValue 0.5"),
])
def test_ranges_sagemaker_would_refuse_are_refused(item, kind, message):
    with pytest.raises(tuning.TuningConfigError, match=message):
        tuning.parse_ranges(ranges(**{kind: [item]}))


def test_a_reverse_logarithmic_range_just_under_one_is_accepted():
    (param,) = tuning.parse_ranges(ranges(Continuous=[
        {"Name": "momentum", "MinValue": "0", "MaxValue": "0.999", "ScalingType": "ReverseLogarithmic"}]))
    assert param.scaling == "ReverseLogarithmic" and param.high == 0.999


def grid_config() -> tuple[dict, list]:
    params = tuning.parse_ranges(ranges(Integer=[{"Name": "n", "MinValue": "1", "MaxValue": "3"}],
                                        Categorical=[{"Name": "opt", "Values": ["sgd", "adam"]}]))
    config = {"Strategy": "Grid", "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "m"}}
    return config, params


@pytest.mark.parametrize("max_jobs, runs", [(None, 6), (1, 1), (2, 2), (6, 6), (50, 6)])
def test_a_grid_runs_its_size_or_fewer_when_capped(max_jobs, runs):
    config, params = grid_config()
    assert tuning.make_study(config, params, max_jobs)[1] == runs


def test_trial_names_keep_fifty_characters_of_the_tuning_job_and_fit_63():
    job = "t" * 49 + "XYZ" + "u" * 8
    name = tuning.trial_job_name(job, 7, {"lr": "0.1"})
    assert name.startswith("t" * 49 + "X-007-") and len(name) == 63


def trial_outcome(status: str, objective=None, reported=()) -> tuple[optuna.Study, tuning.TrialOutcome]:
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    outcome = tuning.TrialOutcome(trial, "job-001", {}, describe={"TrainingJobStatus": status},
                                  objective=objective, reported=list(reported))
    return study, outcome


@pytest.mark.parametrize("status, objective, reported, state, value", [
    ("Completed", 0.8, [(1, 0.7)], optuna.trial.TrialState.COMPLETE, 0.8),
    ("Stopped", 0.6, [(1, 0.6)], optuna.trial.TrialState.PRUNED, None),  # stopped: pruned, even with a score
    ("Failed", None, [(1, 0.5)], optuna.trial.TrialState.FAIL, None),  # failed after reporting: still failed
    ("Completed", None, [], optuna.trial.TrialState.FAIL, None),  # completed without the metric
])
def test_the_optimizer_is_told_each_trials_state(status, objective, reported, state, value):
    study, outcome = trial_outcome(status, objective, reported)
    tuning.LocalTuner._tell(SimpleNamespace(study=study), outcome)
    (told,) = study.get_trials(deepcopy=False)
    assert told.state == state and told.value == value


def test_status_counters_count_each_status_and_nothing_pending():
    summaries = [{"TrainingJobStatus": "Completed", "ObjectiveStatus": "Succeeded"},
                 {"TrainingJobStatus": "Failed", "ObjectiveStatus": "Failed"},
                 {"TrainingJobStatus": "Stopped", "ObjectiveStatus": "Succeeded"}]
    assert tuning._counters(summaries) == (
        {"Completed": 1, "InProgress": 0, "RetryableError": 0, "NonRetryableError": 1, "Stopped": 1},
        {"Succeeded": 2, "Pending": 0, "Failed": 1})


@pytest.mark.parametrize("definition, expected", [
    ({"ResourceConfig": {"InstanceType": "ml.m5.large"}}, {"InstanceType": "ml.m5.large"}),
    ({"ResourceConfig": {"InstanceType": "ml.m5.large"},
      "HyperParameterTuningResourceConfig": {"InstanceType": "ml.g5.xlarge"}}, {"InstanceType": "ml.g5.xlarge"}),
])
def test_a_trial_runs_on_the_tuning_resource_config_or_else_the_plain_one(definition, expected):
    tuner = SimpleNamespace(definition={**definition, "StaticHyperParameters": {"a": "1"}}, arn="arn:tuning")
    request = tuning.LocalTuner.training_request(tuner, "trial-001", {"lr": "0.1"})
    assert request["ResourceConfig"] == expected
    assert request["HyperParameters"] == {"a": "1", "lr": "0.1"} and request["TuningJobArn"] == "arn:tuning"


# --------------------------------------------------------------------------- whole jobs
FAIL_PY = textwrap.dedent('''
    import argparse, sys
    p = argparse.ArgumentParser()
    p.add_argument("--level", required=True)
    a = p.parse_args()
    sys.exit(f"level {a.level} broke")
''')


def failing_request(values: list[str]) -> dict:
    """A grid over ``values`` whose every trial fails; the instance type given the plain way."""
    return level_tuning_request("fail.py", values, strategy="Grid", max_jobs=len(values), objective="Maximize",
                                metrics=["acc"], resource_key="ResourceConfig")


@pytest.fixture()
def api(tmp_path):
    return one_script_api(tmp_path, "fail.py", FAIL_PY)


def test_when_every_trial_fails_the_job_names_the_first_trials_failure(api):
    describe = api.run_tuning_job(failing_request(["1", "2"]), "all-fail")
    assert describe["HyperParameterTuningJobStatus"] == "Failed"
    reason = describe["FailureReason"]
    assert reason.startswith("All training jobs failed (or reported no 'acc'). First: ")
    first, second = describe["TrainingJobSummaries"]  # all failed: in trial order
    assert "-001-" in first["TrainingJobName"] and "-002-" in second["TrainingJobName"]
    assert f"level {first['TunedHyperParameters']['level']} broke" in reason
    assert f"level {second['TunedHyperParameters']['level']} broke" not in reason


def test_a_tuning_job_name_can_be_run_again(api):
    """A retried step reuses its job folder: the second run replaces the first's summary."""
    request = failing_request(["1"])
    request["HyperParameterTuningJobConfig"]["Strategy"] = "Nonsense"
    for _ in range(2):
        describe = api.run_tuning_job(request, "again")
        assert describe["HyperParameterTuningJobStatus"] == "Failed"
        assert "unknown tuning Strategy 'Nonsense'" in describe["FailureReason"]


# --------------------------------------------------------------------------- more ranges
def test_a_logarithmic_range_reaching_below_zero_is_refused():
    with pytest.raises(tuning.TuningConfigError, match="Logarithmic scaling needs MinValue > 0"):
        tuning.parse_ranges(ranges(Continuous=[
            {"Name": "lr", "MinValue": "-1", "MaxValue": "1", "ScalingType": "Logarithmic"}]))


@pytest.mark.parametrize("kind, low, high", [
    ("Integer", "0", "0.5"),  # only continuous ranges, whatever their bounds
    ("Continuous", "-0.5", "0.5"),  # and only within [0, 1)
])
def test_reverse_logarithmic_needs_a_continuous_range_within_zero_and_one(kind, low, high):
    with pytest.raises(tuning.TuningConfigError, match="ReverseLogarithmic needs a continuous range"):
        tuning.parse_ranges(ranges(**{kind: [
            {"Name": "m", "MinValue": low, "MaxValue": high, "ScalingType": "ReverseLogarithmic"}]}))


def test_a_categorical_range_without_values_is_refused():
    with pytest.raises(tuning.TuningConfigError, match="categorical range 'opt' has no values"):
        tuning.parse_ranges(ranges(Categorical=[{"Name": "opt", "Values": []}]))


def test_an_integer_range_samples_every_integer_in_it_its_max_included():
    params = tuning.parse_ranges(ranges(Integer=[{"Name": "n", "MinValue": "1", "MaxValue": "3"}]))
    config = {"Strategy": "Random", "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "m"}}
    study, _ = tuning.make_study(config, params, 30)
    seen = set()
    for _ in range(30):
        trial = study.ask({p.name: p.distribution() for p in params})
        seen.add(params[0].request_value(trial.params["n"]))
        study.tell(trial, 0.0)
    assert seen == {"1", "2", "3"}


def test_reverse_logarithmic_samples_span_the_range_denser_towards_one():
    params = tuning.parse_ranges(ranges(Continuous=[
        {"Name": "momentum", "MinValue": "0.2", "MaxValue": "0.9", "ScalingType": "ReverseLogarithmic"}]))
    config = {"Strategy": "Random", "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "m"}}
    study, _ = tuning.make_study(config, params, 50)
    values = []
    for _ in range(50):
        trial = study.ask({p.name: p.distribution() for p in params})
        values.append(float(params[0].request_value(trial.params["momentum"])))
        study.tell(trial, 0.0)
    assert all(0.2 <= v <= 0.9 for v in values) and min(values) < 0.3 and max(values) > 0.85
    assert sorted(values)[25] > 0.6  # a linear scale's median would be 0.55


@pytest.mark.parametrize("strategy", ["Hyperopt", "Sobol"])
def test_strategies_sagemaker_does_not_know_are_refused(strategy):
    params = tuning.parse_ranges(ranges(Categorical=[{"Name": "x", "Values": ["1"]}]))
    config = {"Strategy": strategy, "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "m"}}
    with pytest.raises(tuning.TuningConfigError, match=f"unknown tuning Strategy '{strategy}'"):
        tuning.make_study(config, params, 2)


def test_a_trial_name_depends_on_its_hyperparameters_not_their_order():
    one = tuning.trial_job_name("job", 1, {"lr": "0.1", "optimizer": "sgd"})
    assert one == tuning.trial_job_name("job", 1, {"optimizer": "sgd", "lr": "0.1"})
    assert one != tuning.trial_job_name("job", 1, {"lr": "0.2", "optimizer": "sgd"})


def test_each_trial_checkpoints_under_its_own_name():
    """SageMaker appends the trial's name to the definition's checkpoint S3Uri."""
    checkpoint = {"S3Uri": "s3://bucket/checkpoints/", "LocalPath": "/opt/ml/checkpoints"}
    tuner = SimpleNamespace(definition={"ResourceConfig": {}, "CheckpointConfig": checkpoint}, arn="arn:tuning")
    request = tuning.LocalTuner.training_request(tuner, "trial-001", {})
    assert request["CheckpointConfig"] == {"S3Uri": "s3://bucket/checkpoints/trial-001", "LocalPath": "/opt/ml/checkpoints"}
    assert checkpoint["S3Uri"] == "s3://bucket/checkpoints/"  # the definition is left as it was


# --------------------------------------------------------------------------- early stopping
@pytest.fixture()
def studies(monkeypatch) -> list[optuna.Study]:
    """Every optuna study the tuner creates, named: Hyperband's bracket for a trial hashes the
    study's name, so a fixed name gives the same brackets on every run."""
    made: list[optuna.Study] = []
    create = tuning._quiet_create_study

    def named(**kwargs):
        made.append(create(study_name=f"tuning-edges-{len(made)}", **kwargs))
        return made[-1]

    monkeypatch.setattr(tuning, "_quiet_create_study", named)
    return made


def early_stopping_study(config: dict) -> tuple[optuna.Study, list]:
    params = tuning.parse_ranges(ranges(Categorical=[{"Name": "level", "Values": ["1", "2", "3"]}]))
    config = {"Strategy": "Random", "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "acc"},
              **config}
    return tuning.make_study(config, params, 6)[0], params


def stopped_at(study: optuna.Study, params: list, per_epoch: list[float], tell: bool = False):
    """Reports ``per_epoch`` (epochs 1, 2, ...) for a new trial: the epoch at which the study's
    pruner stops it, or None. ``tell``: then completes the trial with its last value."""
    trial = study.ask({p.name: p.distribution() for p in params})
    for epoch, value in enumerate(per_epoch, 1):
        trial.report(value, epoch)
        if trial.should_prune():
            return epoch
    if tell:
        study.tell(trial, per_epoch[-1])
    return None


def test_the_median_rule_waits_for_two_completed_trials_then_may_stop_after_one_epoch():
    study, params = early_stopping_study({"TrainingJobEarlyStoppingType": "Auto"})
    assert stopped_at(study, params, [0.8, 0.9], tell=True) is None
    assert stopped_at(study, params, [0.1, 0.1]) is None  # one completed trial: no median yet
    assert stopped_at(study, params, [0.7, 0.8], tell=True) is None
    assert stopped_at(study, params, [0.1, 0.1]) == 1  # below the median of (0.8, 0.7) after epoch 1
    assert stopped_at(study, params, [0.76, 0.9]) is None  # above it


QUALITIES = [0.5, 0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.05, 0.6, 0.4, 0.95, 0.01]


def hyperband_stops(hyperband: dict, epochs: int) -> list:
    """The epoch at which Hyperband stops each of twelve trials (None: not stopped); each trial
    reports its quality at every epoch."""
    study, params = early_stopping_study({
        "Strategy": "Hyperband", "StrategyConfig": {"HyperbandStrategyConfig": hyperband}})
    return [stopped_at(study, params, [q] * epochs, tell=True) for q in QUALITIES]


@pytest.mark.parametrize("hyperband", [{"MaxResource": 3}, {}])
def test_hyperband_may_stop_a_trial_after_one_epoch_without_a_min_resource(studies, hyperband):
    """Both resources are optional: MinResource defaults to one epoch, MaxResource to what the
    trials run."""
    stops = hyperband_stops(hyperband, epochs=3)
    assert 1 in stops and None in stops


def test_hyperband_gives_every_trial_its_min_resource_epochs(studies):
    stops = hyperband_stops({"MinResource": 2, "MaxResource": 6}, epochs=6)
    assert {s for s in stops if s is not None} <= {2, 6} and 2 in stops


# --------------------------------------------------------------------------- scheduling
@pytest.fixture()
def local(tmp_path):
    """A JobContext with two cores, recording the tuner's events."""
    settings = Settings(home=tmp_path / "home")
    events: list[dict] = []
    ctx = JobContext(settings, ObjectStore(settings.s3_root), cores=2, on_event=events.append)
    return SimpleNamespace(ctx=ctx, events=events)


def scheduled_request(values: list[str], strategy: str, parallel: int, max_jobs=None) -> dict:
    request = failing_request(values)
    config = request["HyperParameterTuningJobConfig"]
    config["Strategy"] = strategy
    config["ResourceLimits"] = {"MaxParallelTrainingJobs": parallel}
    if max_jobs is not None:
        config["ResourceLimits"]["MaxNumberOfTrainingJobs"] = max_jobs
    return request


def scored(request: dict, job_name: str) -> dict:
    """A completed training job whose objective ``acc`` is its ``level``."""
    return {"TrainingJobName": job_name, "TrainingJobStatus": "Completed",
            "FinalMetricDataList": [{"MetricName": "acc", "Value": float(request["HyperParameters"]["level"])}]}


@pytest.mark.parametrize("max_jobs", [2, 3])
def test_parallel_trials_run_at_the_same_time_each_on_its_share_of_the_cores(local, monkeypatch, max_jobs):
    first_two = threading.Barrier(2, timeout=5)
    cores = []

    def run_training_job(request, job_name, ctx, on_metric=None):
        cores.append(ctx.cores)
        if job_name.split("-")[-2] in ("001", "002"):
            first_two.wait()  # passes only while the other one runs as well
        return scored(request, job_name)

    monkeypatch.setattr(tuning, "run_training_job", run_training_job)
    request = scheduled_request(["1", "2", "3"], "Grid", parallel=2, max_jobs=max_jobs)
    describe = tuning.run_tuning_job(request, "pair", local.ctx)
    assert [s["TrainingJobStatus"] for s in describe["TrainingJobSummaries"]] == ["Completed"] * max_jobs
    assert describe["LocalParallelTrainingJobs"] == 2 and cores == [1] * max_jobs  # 2 cores, 2 at a time


def test_a_trial_is_asked_for_only_once_a_worker_is_free(local, monkeypatch):
    """One at a time: each trial starts after the previous one ended (and was told to the optimizer)."""
    monkeypatch.setattr(tuning, "run_training_job", lambda request, job_name, ctx, on_metric=None: scored(request, job_name))
    describe = tuning.run_tuning_job(scheduled_request(["1", "2", "3"], "Grid", parallel=1, max_jobs=3), "serial", local.ctx)
    assert describe["HyperParameterTuningJobStatus"] == "Completed"
    trial_events = [(e["event"], e["trial"].split("-")[1]) for e in local.events if e["type"] == "trial"]
    assert trial_events == [("start", "001"), ("end", "001"), ("start", "002"), ("end", "002"),
                            ("start", "003"), ("end", "003")]


def test_a_stopped_tuning_job_starts_no_further_trials(local, monkeypatch):
    def stopped_by_the_user(request, job_name, ctx, on_metric=None):
        local.ctx.control.request_stop("Stopped by the user")
        return {"TrainingJobName": job_name, "TrainingJobStatus": "Stopped", "FailureReason": "Stopped by the user"}

    monkeypatch.setattr(tuning, "run_training_job", stopped_by_the_user)
    describe = tuning.run_tuning_job(scheduled_request(["1", "2", "3"], "Random", parallel=1, max_jobs=3), "halt", local.ctx)
    assert describe["HyperParameterTuningJobStatus"] == "Stopped"
    assert describe["FailureReason"] == "Stopped by the user"
    assert len(describe["TrainingJobSummaries"]) == 1


@pytest.mark.parametrize("strategy", ["Random", "Bayesian", "Hyperband"])
@pytest.mark.parametrize("limits", [{}, {"MaxNumberOfTrainingJobs": None}], ids=["absent", "null"])
def test_without_max_number_of_training_jobs_other_searches_run_one_trial(local, monkeypatch, limits, strategy):
    """MaxNumberOfTrainingJobs is optional; the SageMaker SDK's default for non-Grid strategies is 1."""
    monkeypatch.setattr(tuning, "run_training_job", lambda request, job_name, ctx, on_metric=None: scored(request, job_name))
    request = scheduled_request(["1", "2"], strategy, parallel=1)
    request["HyperParameterTuningJobConfig"]["ResourceLimits"].update(limits)
    describe = tuning.run_tuning_job(request, "one", local.ctx)
    assert describe["HyperParameterTuningJobStatus"] == "Completed"
    assert len(describe["TrainingJobSummaries"]) == 1


@pytest.mark.parametrize("limits", [{}, {"MaxNumberOfTrainingJobs": None}], ids=["absent", "null"])
def test_without_max_number_of_training_jobs_a_grid_search_runs_the_whole_grid(local, monkeypatch, limits):
    """SageMaker: with Grid, MaxNumberOfTrainingJobs is optional and the job runs every combination."""
    monkeypatch.setattr(tuning, "run_training_job", lambda request, job_name, ctx, on_metric=None: scored(request, job_name))
    request = scheduled_request(["1", "2", "3"], "Grid", parallel=1)
    request["HyperParameterTuningJobConfig"]["ResourceLimits"].update(limits)
    describe = tuning.run_tuning_job(request, "grid", local.ctx)
    assert describe["HyperParameterTuningJobStatus"] == "Completed"
    assert sorted(s["TunedHyperParameters"]["level"] for s in describe["TrainingJobSummaries"]) == ["1", "2", "3"]
    assert describe["BestTrainingJob"]["TunedHyperParameters"]["level"] == "3"


@pytest.mark.parametrize("value", [0, -2, "3", 2.5, True])
def test_a_max_number_of_training_jobs_below_one_or_not_whole_fails_the_tuning_job(local, monkeypatch, value):
    ran = []
    monkeypatch.setattr(tuning, "run_training_job", lambda *args, **kwargs: ran.append(args))
    describe = tuning.run_tuning_job(scheduled_request(["1", "2"], "Grid", parallel=1, max_jobs=value), "bad", local.ctx)
    assert describe["HyperParameterTuningJobStatus"] == "Failed" and ran == []
    assert describe["FailureReason"] == (
        f"TuningConfigError: ResourceLimits.MaxNumberOfTrainingJobs must be a whole number >= 1, not {value!r}")


def test_the_failure_reason_is_cut_to_sagemakers_1024_characters(local, monkeypatch):
    def long_failure(request, job_name, ctx, on_metric=None):
        return {"TrainingJobName": job_name, "TrainingJobStatus": "Failed", "FailureReason": "x" * 2000}

    monkeypatch.setattr(tuning, "run_training_job", long_failure)
    describe = tuning.run_tuning_job(scheduled_request(["1"], "Grid", parallel=1, max_jobs=1), "long", local.ctx)
    reason = describe["FailureReason"]
    assert reason.startswith("All training jobs failed (or reported no 'acc'). First: xxx")
    assert len(reason) == 1024


def test_a_refused_configuration_counts_no_trials(local):
    describe = tuning.run_tuning_job(scheduled_request(["1"], "Nonsense", parallel=1, max_jobs=1), "refused", local.ctx)
    assert describe["HyperParameterTuningJobStatus"] == "Failed" and describe["TrainingJobSummaries"] == []
    assert describe["TrainingJobStatusCounters"] == {
        "Completed": 0, "InProgress": 0, "RetryableError": 0, "NonRetryableError": 0, "Stopped": 0}
    assert describe["ObjectiveStatusCounters"] == {"Succeeded": 0, "Pending": 0, "Failed": 0}


def test_only_the_objective_metrics_epochs_reach_the_pruner(local, monkeypatch, studies):
    def run_training_job(request, job_name, ctx, on_metric=None):
        for name, value, epoch in (("train_acc", 0.99, 1), ("valid_acc", 0.5, 1), ("valid_acc", 0.55, None),
                                   ("valid_time", 9.0, 2), ("valid_acc", 0.6, 2), ("valid_acc", 0.1, 2)):
            on_metric(name, value, epoch)
        return {"TrainingJobName": job_name, "TrainingJobStatus": "Completed",
                "FinalMetricDataList": [{"MetricName": "valid_acc", "Value": 0.6}]}

    monkeypatch.setattr(tuning, "run_training_job", run_training_job)
    request = scheduled_request(["1"], "Grid", parallel=1, max_jobs=1)
    request["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"]["MetricName"] = "valid_acc"
    request["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"] = [
        {"Name": n, "Regex": f"{n}=([0-9.]+)"} for n in ("train_acc", "valid_acc", "valid_time")]
    describe = tuning.run_tuning_job(request, "objective", local.ctx)
    assert describe["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == 0.6
    (trial,) = studies[0].trials
    assert trial.intermediate_values == {1: 0.5, 2: 0.6}  # per epoch: the first value of the objective


@pytest.mark.parametrize("break_request, error", [
    (lambda r: r.pop("TrainingJobDefinition"), "KeyError: 'TrainingJobDefinition'"),
    (lambda r: r["HyperParameterTuningJobConfig"].update(ParameterRanges={"IntegerParameterRanges": [
        {"Name": "n", "MinValue": "one", "MaxValue": "3"}]}), "ValueError: could not convert"),
])
def test_a_malformed_request_fails_the_job_with_the_error(local, break_request, error):
    request = scheduled_request(["1"], "Grid", parallel=1, max_jobs=1)
    break_request(request)
    describe = tuning.run_tuning_job(request, "malformed", local.ctx)
    assert describe["HyperParameterTuningJobStatus"] == "Failed"
    assert describe["FailureReason"].startswith(error)
