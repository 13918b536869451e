"""Local SageMaker hyperparameter tuning jobs, driven by optuna (ask/tell).

Strategies: ``Bayesian`` → seeded TPE, ``Random`` → random sampling, ``Grid`` → every
combination of the categorical/integer ranges, ``Hyperband`` → random sampling with
optuna's Hyperband pruner over the epochs. Each trial is a local training job
(``training.run_training_job``) named ``<tuning-job>-<NNN>-<hash>``. The objective is read
from the trial's log with the ``MetricDefinitions`` regexes: like SageMaker, a trial scores
the latest value it emitted (not its best); early stopping ``Auto`` is
SageMaker's median rule (optuna's MedianPruner on the per-epoch objective).
"""
from __future__ import annotations

import concurrent.futures as futures
import hashlib
import itertools
import json
import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import optuna

from pipelines.common import quiet_loggers, utc_now_iso
from pipelines.local.jobs import JobContext, hyperparameter_text, job_arn
from pipelines.local.training import run_training_job

DEFAULT_SEED = 0
MEDIAN_STARTUP_TRIALS = 2  # completed trials needed before the median rule can stop one
MEDIAN_WARMUP_EPOCHS = 1  # epochs a trial always gets before it can be stopped
TRAINING_DEFINITION_KEYS = (
    "AlgorithmSpecification", "RoleArn", "InputDataConfig", "VpcConfig", "OutputDataConfig",
    "StoppingCondition", "EnableNetworkIsolation", "EnableInterContainerTrafficEncryption",
    "EnableManagedSpotTraining", "CheckpointConfig", "RetryStrategy", "Environment",
)


class TuningConfigError(ValueError):
    """A tuning request SageMaker would reject, or one that cannot run locally."""


# --------------------------------------------------------------------------- search space
@dataclass(frozen=True)
class Param:
    """One ``ParameterRanges`` entry as an optuna distribution plus SageMaker's formatting."""

    name: str
    kind: str  # Integer | Continuous | Categorical
    scaling: str = "Auto"
    low: float = 0.0
    high: float = 0.0
    values: tuple[str, ...] = ()

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.kind == "Categorical":
            return optuna.distributions.CategoricalDistribution(list(self.values))
        if self.scaling == "ReverseLogarithmic":  # sample 1 - x log-uniformly
            return optuna.distributions.FloatDistribution(1.0 - self.high, 1.0 - self.low, log=True)
        log = self.scaling == "Logarithmic"
        if self.kind == "Integer":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=log)
        return optuna.distributions.FloatDistribution(self.low, self.high, log=log)

    def request_value(self, sampled: Any) -> str:
        """The hyperparameter string the trial's CreateTrainingJob request carries."""
        if self.kind == "Categorical":
            return str(sampled)  # the range's own value, e.g. '"sgd"' (JSON) as the SDK wrote it
        if self.kind == "Integer":
            return str(int(sampled))
        value = 1.0 - sampled if self.scaling == "ReverseLogarithmic" else float(sampled)
        return repr(min(max(value, self.low), self.high))

    def grid_values(self) -> list[Any]:
        if self.kind == "Categorical":
            return list(self.values)
        if self.kind == "Integer":
            return list(range(int(self.low), int(self.high) + 1))
        raise TuningConfigError(
            f"Grid search does not support continuous parameter ranges ({self.name!r}): "
            "use categorical or integer ranges, as SageMaker requires"
        )


def parse_ranges(ranges: dict) -> list[Param]:
    params: list[Param] = []
    for item in ranges.get("IntegerParameterRanges") or []:
        params.append(Param(item["Name"], "Integer", item.get("ScalingType", "Auto"), float(item["MinValue"]), float(item["MaxValue"])))
    for item in ranges.get("ContinuousParameterRanges") or []:
        params.append(Param(item["Name"], "Continuous", item.get("ScalingType", "Auto"), float(item["MinValue"]), float(item["MaxValue"])))
    for item in ranges.get("CategoricalParameterRanges") or []:
        params.append(Param(item["Name"], "Categorical", values=tuple(str(v) for v in item["Values"])))
    for p in params:
        _validate_param(p)
    if not params:
        raise TuningConfigError("ParameterRanges is empty: nothing to tune")
    return params


def _validate_param(p: Param) -> None:
    if p.kind == "Categorical":
        if not p.values:
            raise TuningConfigError(f"categorical range {p.name!r} has no values")
        return
    if p.low > p.high:
        raise TuningConfigError(f"range {p.name!r}: MinValue {p.low} > MaxValue {p.high}")
    if p.scaling == "Logarithmic" and p.low <= 0:
        raise TuningConfigError(f"range {p.name!r}: Logarithmic scaling needs MinValue > 0")
    if p.scaling == "ReverseLogarithmic" and (p.kind != "Continuous" or not 0 <= p.low < p.high < 1):
        raise TuningConfigError(f"range {p.name!r}: ReverseLogarithmic needs a continuous range within [0, 1)")


# --------------------------------------------------------------------------- study
def max_training_jobs(limits: dict) -> Optional[int]:
    """``ResourceLimits.MaxNumberOfTrainingJobs``: None when absent or null (the field is optional).

    A value below 1 or not a whole number is refused, as SageMaker's request validation does."""
    value = limits.get("MaxNumberOfTrainingJobs")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TuningConfigError(f"ResourceLimits.MaxNumberOfTrainingJobs must be a whole number >= 1, not {value!r}")
    return value


def make_study(config: dict, params: list[Param], max_jobs: Optional[int]) -> tuple[optuna.Study, int]:
    """The optuna study for a HyperParameterTuningJobConfig, and how many trials to run.

    ``max_jobs`` None (``MaxNumberOfTrainingJobs`` not given): a Grid search runs the whole grid,
    as SageMaker does; the other strategies run one trial, the SageMaker SDK's default."""
    strategy = config.get("Strategy", "Bayesian")
    seed = int(config.get("RandomSeed", DEFAULT_SEED))
    direction = "maximize" if config["HyperParameterTuningJobObjective"]["Type"] == "Maximize" else "minimize"
    pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    if config.get("TrainingJobEarlyStoppingType", "Off") == "Auto":
        if strategy == "Hyperband":
            raise TuningConfigError("TrainingJobEarlyStoppingType must be Off with the Hyperband strategy")
        pruner = optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=MEDIAN_WARMUP_EPOCHS)
    if max_jobs is None and strategy != "Grid":
        max_jobs = 1
    if strategy == "Bayesian":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=min(10, max(2, max_jobs // 2)), constant_liar=True)
    elif strategy == "Random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    elif strategy == "Grid":
        space = {p.name: p.grid_values() for p in params}
        sampler = _AskTellGridSampler(space, seed=seed)
        grid_size = math.prod(len(v) for v in space.values())
        max_jobs = grid_size if max_jobs is None else min(max_jobs, grid_size)
    elif strategy == "Hyperband":
        hb = ((config.get("StrategyConfig") or {}).get("HyperbandStrategyConfig") or {})
        sampler = optuna.samplers.RandomSampler(seed=seed)
        pruner = optuna.pruners.HyperbandPruner(min_resource=int(hb.get("MinResource", 1)), max_resource=int(hb.get("MaxResource", 0)) or "auto")
    else:
        raise TuningConfigError(f"unknown tuning Strategy {strategy!r}")
    return _quiet_create_study(direction=direction, sampler=sampler, pruner=pruner), max_jobs


def _quiet_create_study(**kwargs: Any) -> optuna.Study:
    """``optuna.create_study`` without its INFO line in the engine's progress output."""
    with quiet_loggers("optuna", level=logging.WARNING):
        return optuna.create_study(**kwargs)


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler without its ``study.stop()`` once the grid is used up: that only works
    inside ``study.optimize``; the ask/tell loop stops at the grid size itself."""

    def after_trial(self, study, trial, state, values) -> None:  # type: ignore[override]
        return None


def trial_job_name(tuning_job: str, number: int, hyperparameters: dict) -> str:
    """``<tuning-job>-<NNN>-<hash>`` like SageMaker's trial names (at most 63 characters)."""
    digest = hashlib.sha1(json.dumps(hyperparameters, sort_keys=True).encode()).hexdigest()[:8]
    return f"{tuning_job[:50]}-{number:03d}-{digest}"


def effective_parallel(requested: int, cores: int) -> int:
    return max(1, min(int(requested or 1), cores))


# --------------------------------------------------------------------------- trials
@dataclass
class TrialOutcome:
    trial: optuna.trial.Trial
    job_name: str
    tuned: dict[str, str]
    describe: dict = field(default_factory=dict)
    objective: Optional[float] = None
    reported: list[tuple[int, float]] = field(default_factory=list)


class _Trial:
    """One trial's training job, reporting its per-epoch objective to the pruner."""

    def __init__(self, tuner: "LocalTuner", trial: optuna.trial.Trial, number: int, sampled: dict[str, str]):
        self.tuner, self.trial, self.number = tuner, trial, number
        self.hyperparameters = sampled
        self.job_name = trial_job_name(tuner.job_name, number, sampled)
        self.control = tuner.ctx.control.child()
        self.outcome = TrialOutcome(trial, self.job_name, {k: hyperparameter_text(v) for k, v in sampled.items()})
        self._lock = threading.Lock()

    def on_metric(self, name: str, value: float, epoch: Optional[int]) -> None:
        if name != self.tuner.metric_name or epoch is None:
            return
        with self._lock:
            if any(step == epoch for step, _ in self.outcome.reported):
                return
            self.outcome.reported.append((epoch, value))
            self.trial.report(value, epoch)
            prune = self.trial.should_prune()
        if prune:
            self.tuner.note({"event": "early_stop", "trial": self.job_name, "epoch": epoch, "objective": value})
            self.control.request_stop(f"Stopped by early stopping (median rule) at epoch {epoch}")

    def run(self) -> TrialOutcome:
        request = self.tuner.training_request(self.job_name, self.hyperparameters)
        ctx = self.tuner.ctx.with_control(self.control, cores=self.tuner.cores_per_trial)
        self.outcome.describe = run_training_job(request, self.job_name, ctx, on_metric=self.on_metric)
        self.outcome.objective = self._objective()
        return self.outcome

    def _objective(self) -> Optional[float]:
        return trial_objective(self.outcome.describe, self.outcome.reported, self.tuner.metric_name)


def trial_objective(describe: dict, reported: list[tuple[int, float]], metric_name: str) -> Optional[float]:
    """A trial's objective as SageMaker scores it (``FinalHyperParameterTuningJobObjectiveMetric``):
    the LATEST value of the metric the job emitted, not its best; None for a failed job.

    ``reported`` holds the per-epoch values in the order they were emitted (the fallback for a
    stopped job whose describe carries no final metrics)."""
    status = describe.get("TrainingJobStatus")
    if status not in ("Completed", "Stopped"):
        return None
    for metric in describe.get("FinalMetricDataList", []):
        if metric["MetricName"] == metric_name:
            return float(metric["Value"])
    if status == "Stopped" and reported:
        return reported[-1][1]
    return None


class LocalTuner:
    """Runs one CreateHyperParameterTuningJob request to completion."""

    def __init__(self, request: dict, job_name: str, ctx: JobContext):
        self.request, self.job_name, self.ctx = request, job_name, ctx
        self.config = request["HyperParameterTuningJobConfig"]
        if request.get("TrainingJobDefinitions"):
            raise TuningConfigError("multiple TrainingJobDefinitions are not supported locally")
        self.definition = request["TrainingJobDefinition"]
        objective = self.config["HyperParameterTuningJobObjective"]
        self.metric_name, self.maximize = objective["MetricName"], objective["Type"] == "Maximize"
        metric_names = [m["Name"] for m in (self.definition.get("AlgorithmSpecification") or {}).get("MetricDefinitions") or []]
        if self.metric_name not in metric_names:
            raise TuningConfigError(f"objective metric {self.metric_name!r} is not among the MetricDefinitions {metric_names}")
        self.params = parse_ranges(self.config.get("ParameterRanges") or {})
        limits = self.config.get("ResourceLimits") or {}
        self.study, self.max_jobs = make_study(self.config, self.params, max_training_jobs(limits))
        self.parallel = effective_parallel(int(limits.get("MaxParallelTrainingJobs", 1)), ctx.cores)
        self.cores_per_trial = max(1, ctx.cores // self.parallel)
        self.arn = job_arn(ctx.settings, "hyper-parameter-tuning-job", job_name)
        self.log_path = ctx.settings.jobs_root / job_name / "tuning.log"
        self._log_lock = threading.Lock()

    def note(self, event: dict) -> None:
        """A trial event: to the tuning job's log and to ``on_event``."""
        event = {"type": "trial", "job": self.job_name, **event}
        fields = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("type", "job"))
        with self._log_lock, open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"{utc_now_iso()} {fields}\n")
        self.ctx.emit(event)

    def training_request(self, trial_name: str, sampled: dict[str, str]) -> dict:
        """A trial's CreateTrainingJob request from the TrainingJobDefinition."""
        request = {k: self.definition[k] for k in TRAINING_DEFINITION_KEYS if k in self.definition}
        request["HyperParameters"] = {**(self.definition.get("StaticHyperParameters") or {}), **sampled}
        request["ResourceConfig"] = self.definition.get("HyperParameterTuningResourceConfig") or self.definition.get("ResourceConfig")
        request["TuningJobArn"] = self.arn
        if (request.get("CheckpointConfig") or {}).get("S3Uri"):  # SageMaker appends the trial's name
            checkpoint = dict(request["CheckpointConfig"])
            checkpoint["S3Uri"] = f"{checkpoint['S3Uri'].rstrip('/')}/{trial_name}"
            request["CheckpointConfig"] = checkpoint
        return request

    def _ask(self, number: int) -> _Trial:
        trial = self.study.ask({p.name: p.distribution() for p in self.params})
        sampled = {p.name: p.request_value(trial.params[p.name]) for p in self.params}
        return _Trial(self, trial, number, sampled)

    def _tell(self, outcome: TrialOutcome) -> None:
        status = outcome.describe.get("TrainingJobStatus")
        state = optuna.trial.TrialState
        if status == "Completed" and outcome.objective is not None:
            self.study.tell(outcome.trial, outcome.objective)
        elif status == "Stopped" and outcome.reported:
            self.study.tell(outcome.trial, state=state.PRUNED)
        else:
            self.study.tell(outcome.trial, state=state.FAIL)

    def run(self) -> list[TrialOutcome]:
        outcomes: list[TrialOutcome] = []
        running: dict[futures.Future, _Trial] = {}
        with futures.ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix=self.job_name) as pool:
            for number in itertools.count(1):
                while len(running) >= self.parallel or (running and (number > self.max_jobs or self.ctx.control.stopped)):
                    done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
                    for fut in done:
                        outcomes.append(self._finish(running.pop(fut), fut))
                if number > self.max_jobs or self.ctx.control.stopped or _grid_exhausted(self.study):
                    break
                trial = self._ask(number)
                self.note({"event": "start", "trial": trial.job_name, "number": number, "total": self.max_jobs,
                           "hyperparameters": trial.outcome.tuned})
                running[pool.submit(trial.run)] = trial
            for fut in futures.as_completed(list(running)):
                outcomes.append(self._finish(running.pop(fut), fut))
        return outcomes

    def _finish(self, trial: _Trial, fut: futures.Future) -> TrialOutcome:
        exc = fut.exception()
        outcome = trial.outcome
        if exc is not None:  # run_training_job does not raise; this is a bug guard
            outcome.describe = {"TrainingJobName": trial.job_name, "TrainingJobStatus": "Failed", "FailureReason": repr(exc)}
        self._tell(outcome)
        self.note({"event": "end", "trial": trial.job_name, "status": outcome.describe.get("TrainingJobStatus"),
                   "objective": outcome.objective, "hyperparameters": outcome.tuned,
                   "reason": outcome.describe.get("FailureReason")})
        return outcome


def _grid_exhausted(study: optuna.Study) -> bool:
    sampler = study.sampler
    return isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)


# --------------------------------------------------------------------------- describe
def training_job_summary(outcome: TrialOutcome, tuning_job: str, metric_name: str, objective_type: str) -> dict:
    """HyperParameterTrainingJobSummary (ListTrainingJobsForHyperParameterTuningJob) shape."""
    d = outcome.describe
    summary = {
        "TrainingJobName": outcome.job_name,
        "TrainingJobArn": d.get("TrainingJobArn"),
        "TuningJobName": tuning_job,
        "CreationTime": d.get("CreationTime"),
        "TrainingStartTime": d.get("TrainingStartTime"),
        "TrainingEndTime": d.get("TrainingEndTime"),
        "TrainingJobStatus": d.get("TrainingJobStatus"),
        "TunedHyperParameters": outcome.tuned,
        "FailureReason": d.get("FailureReason"),
        "ObjectiveStatus": "Succeeded" if outcome.objective is not None else "Failed",
        "ModelArtifacts": d.get("ModelArtifacts"),
        "LogPath": d.get("LogPath"),
    }
    if outcome.objective is not None:
        summary["FinalHyperParameterTuningJobObjectiveMetric"] = {"Type": objective_type, "MetricName": metric_name, "Value": outcome.objective}
    return {k: v for k, v in summary.items() if v is not None}


def _sort_best_first(summaries: list[dict], maximize: bool) -> list[dict]:
    def key(s: dict) -> tuple:
        metric = s.get("FinalHyperParameterTuningJobObjectiveMetric")
        if metric is None:
            return (1, 0.0, s["TrainingJobName"])
        return (0, -metric["Value"] if maximize else metric["Value"], s["TrainingJobName"])

    return sorted(summaries, key=key)


def _counters(summaries: list[dict]) -> tuple[dict, dict]:
    statuses = [s.get("TrainingJobStatus") for s in summaries]
    training = {"Completed": statuses.count("Completed"), "InProgress": 0, "RetryableError": 0,
                "NonRetryableError": statuses.count("Failed"), "Stopped": statuses.count("Stopped")}
    ok = sum(1 for s in summaries if s["ObjectiveStatus"] == "Succeeded")
    return training, {"Succeeded": ok, "Pending": 0, "Failed": len(summaries) - ok}


def run_tuning_job(request: dict, job_name: str, ctx: JobContext) -> dict:
    """CreateHyperParameterTuningJob request → DescribeHyperParameterTuningJob-shaped dict.

    Never raises for a failure: a bad configuration or all trials failing gives
    ``HyperParameterTuningJobStatus: Failed`` with a ``FailureReason``.
    """
    created = utc_now_iso()
    job_dir = ctx.settings.jobs_root / job_name
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "tuning.log").unlink(missing_ok=True)
    describe: dict[str, Any] = {
        "HyperParameterTuningJobName": job_name,
        "HyperParameterTuningJobArn": job_arn(ctx.settings, "hyper-parameter-tuning-job", job_name),
        "HyperParameterTuningJobConfig": request.get("HyperParameterTuningJobConfig"),
        "TrainingJobDefinition": request.get("TrainingJobDefinition"),
        "CreationTime": created,
        "LocalJobDir": str(job_dir),
    }
    try:
        tuner = LocalTuner(request, job_name, ctx)
    except (TuningConfigError, KeyError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        return {**describe, "HyperParameterTuningJobStatus": "Failed", "FailureReason": reason,
                "HyperParameterTuningEndTime": utc_now_iso(), "TrainingJobSummaries": [],
                "TrainingJobStatusCounters": _counters([])[0], "ObjectiveStatusCounters": _counters([])[1]}
    outcomes = tuner.run()
    objective_type = "Maximize" if tuner.maximize else "Minimize"
    summaries = _sort_best_first(
        [training_job_summary(o, job_name, tuner.metric_name, objective_type) for o in outcomes], tuner.maximize)
    training_counters, objective_counters = _counters(summaries)
    describe.update({
        "TrainingJobSummaries": summaries,
        "TrainingJobStatusCounters": training_counters,
        "ObjectiveStatusCounters": objective_counters,
        "HyperParameterTuningEndTime": utc_now_iso(),
        "LocalParallelTrainingJobs": tuner.parallel,
        "LogPath": str(tuner.log_path),
    })
    best = next((s for s in summaries if "FinalHyperParameterTuningJobObjectiveMetric" in s), None)
    if best is not None:
        describe["BestTrainingJob"] = best
    if ctx.control.stopped:
        describe.update({"HyperParameterTuningJobStatus": "Stopped", "FailureReason": ctx.control.reason})
    elif best is None:
        reasons = [s.get("FailureReason", "no objective metric") for s in summaries]
        describe.update({"HyperParameterTuningJobStatus": "Failed",
                         "FailureReason": f"All training jobs failed (or reported no {tuner.metric_name!r}). First: {reasons[0] if reasons else 'none ran'}"[:1024]})
    else:
        describe["HyperParameterTuningJobStatus"] = "Completed"
    _write_summary(job_dir, describe)
    return describe


def _write_summary(job_dir: Path, describe: dict) -> None:
    (job_dir / "tuning.json").write_text(json.dumps(describe, indent=2, default=str))
