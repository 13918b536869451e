"""The local engine: executes a SageMaker pipeline definition (the JSON that would be
upserted) on this machine, step by step in dependency order.

- Order: ``Get: Steps.X`` references anywhere in a step plus ``DependsOn``; steps inside a
  Condition's ``IfSteps``/``ElseSteps`` run only when that branch is taken.
- Processing / Training / Tuning steps → :class:`pipelines.local.sagemaker_api.LocalSageMaker`;
  ``RegisterModel`` (and ``Model`` steps with CreateModelPackage arguments) →
  ``create_model_package``; ``Condition``; ``Fail``. Anything else fails clearly.
- ``CacheConfig``: a step whose type and arguments (resolved with ``Execution.*`` held
  symbolic) equal those of an earlier successful step of the same pipeline, within
  ``ExpireAfter``, reuses that step's properties and is recorded as cached.
- ``RetryPolicies``: a job failure whose reason names an internal / capacity / resource-limit
  / throttling / service-fault error is retried as the matching policy says.
- Ctrl-C / SIGTERM stops running jobs and marks the execution Stopped; executions left
  Executing by a process that died are marked Failed when an engine starts, which also kills
  what is left of their jobs' process groups and trims their scratch space
  (:mod:`pipelines.local.scratch`).
"""
from __future__ import annotations

import hashlib
import heapq
import json
import re
import secrets
import signal
import string
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional

from pipelines.common import utc_iso
from pipelines.local.expressions import (
    Context,
    ExpressionError,
    as_number,
    evaluate_conditions,
    read_property_file,
    resolve,
    step_references,
)
from pipelines.local.object_store import ObjectStore
from pipelines.local.parameter_ranges import ParameterRangeError, check_parameter_ranges
from pipelines.local.records import ExecutionRecord, Records, StepRecord, pid_alive
from pipelines.local.scratch import collect_garbage
from pipelines.settings import Settings

EventCallback = Callable[[dict], None]
JOB_STEPS = {
    # step type: (LocalSageMaker method, status field, max job-name length)
    "Processing": ("run_processing_job", "ProcessingJobStatus", 63),
    "Training": ("run_training_job", "TrainingJobStatus", 63),
    "Tuning": ("run_tuning_job", "HyperParameterTuningJobStatus", 32),
}
SUPPORTED_TYPES = tuple(JOB_STEPS) + ("Condition", "Fail", "RegisterModel", "Model")
# Failure reasons that name an error class a retry policy can match.
FAILURE_TYPES = (
    ("SageMaker.JOB_INTERNAL_ERROR", re.compile(r"InternalServerError|\binternal (server )?error|JOB_INTERNAL_ERROR", re.I)),
    ("SageMaker.CAPACITY_ERROR", re.compile(r"CapacityError|insufficient capacity|CAPACITY_ERROR", re.I)),
    ("SageMaker.RESOURCE_LIMIT", re.compile(r"ResourceLimitExceeded|resource limit|RESOURCE_LIMIT", re.I)),
    ("Step.SERVICE_FAULT", re.compile(r"ServiceFault|service fault|SERVICE_FAULT", re.I)),
    ("Step.THROTTLING", re.compile(r"Throttl", re.I)),
)
STOP_WAIT_SECONDS = 30.0  # how long a stop waits for the running job to end


class DefinitionError(ValueError):
    """The definition cannot be executed (bad shape, unknown step reference, cycle)."""


class ParameterError(ValueError):
    """A parameter name or value that does not fit the definition."""


# -- definition --------------------------------------------------------------------
@dataclass
class StepNode:
    """One step of the definition, flattened out of any Condition branches.

    ``guards``: alternatives, each a tuple of (condition step, branch outcome) that must
    all hold; an empty alternative means the step is reachable outside any condition.
    """

    name: str
    type: str
    spec: dict
    position: int
    deps: set[str] = field(default_factory=set)
    guards: list[tuple[tuple[str, bool], ...]] = field(default_factory=list)


def _step_body(spec: dict) -> dict:
    """The step without its nested branch steps and DependsOn (for reference scanning)."""
    body = {k: v for k, v in spec.items() if k != "DependsOn"}
    if spec.get("Type") == "Condition":
        args = spec.get("Arguments", {})
        body["Arguments"] = {k: v for k, v in args.items() if k not in ("IfSteps", "ElseSteps")}
    return body


def flatten_steps(definition: dict) -> dict[str, StepNode]:
    """All steps of ``definition`` by name, in definition order, with their dependencies."""
    if not isinstance(definition, dict) or not isinstance(definition.get("Steps"), list):
        raise DefinitionError("the definition has no Steps list")
    nodes: dict[str, StepNode] = {}

    def visit(steps: list, guard: tuple[tuple[str, bool], ...]) -> None:
        for spec in steps:
            if not isinstance(spec, dict) or "Name" not in spec or "Type" not in spec:
                raise DefinitionError(f"a step without Name/Type: {str(spec)[:200]}")
            name = spec["Name"]
            node = nodes.get(name)
            if node is None:
                node = nodes[name] = StepNode(name, spec["Type"], spec, len(nodes))
                node.deps = step_references(_step_body(spec)) | set(spec.get("DependsOn") or [])
                node.deps.discard(name)
            node.guards.append(guard)
            node.deps |= {cond for cond, _ in guard}
            if spec["Type"] == "Condition":
                args = spec.get("Arguments", {})
                visit(args.get("IfSteps") or [], guard + ((name, True),))
                visit(args.get("ElseSteps") or [], guard + ((name, False),))

    visit(definition["Steps"], ())
    for node in nodes.values():
        unknown = sorted(node.deps - set(nodes))
        if unknown:
            raise DefinitionError(f"step {node.name!r} refers to unknown step(s): {', '.join(unknown)}")
    return nodes


def topological_order(nodes: Mapping[str, StepNode]) -> list[str]:
    """Step names so that every step comes after its dependencies (ties: definition order)."""
    waiting = {name: set(node.deps) for name, node in nodes.items()}
    dependents: dict[str, list[str]] = {name: [] for name in nodes}
    for name, deps in waiting.items():
        for dep in deps:
            dependents[dep].append(name)
    ready = [(nodes[n].position, n) for n, deps in waiting.items() if not deps]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        for child in dependents[name]:
            waiting[child].discard(name)
            if not waiting[child]:
                heapq.heappush(ready, (nodes[child].position, child))
    if len(order) != len(nodes):
        cycle = sorted(set(nodes) - set(order))
        raise DefinitionError(f"the steps depend on each other in a cycle: {', '.join(cycle)}")
    return order


# -- parameters --------------------------------------------------------------------
def _convert(name: str, kind: str, value: Any) -> Any:
    """``value`` as parameter type ``kind`` (strings from the command line are parsed)."""
    bad = ParameterError(f"parameter {name!r} is {kind}: {value!r} is not a valid {kind} value")
    if kind == "String":
        if isinstance(value, str):
            return value
        raise bad
    if kind == "Boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise bad
    if isinstance(value, bool):
        raise bad
    if kind == "Integer":
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            return int(value)
        raise bad
    if kind == "Float":
        number = as_number(value)
        if number is None:
            raise bad
        return number
    raise ParameterError(f"parameter {name!r} has unknown type {kind!r}")


def validate_parameters(definition: dict, values: Optional[Mapping[str, Any]]) -> dict:
    """Definition defaults overridden by ``values``, names and types checked."""
    declared = {p["Name"]: p for p in definition.get("Parameters", [])}
    values = dict(values or {})
    unknown = sorted(set(values) - set(declared))
    if unknown:
        valid = ", ".join(f"{n} ({p.get('Type', 'String')})" for n, p in declared.items()) or "none"
        plural = "s" if len(unknown) > 1 else ""
        raise ParameterError(f"unknown parameter{plural} {', '.join(map(repr, unknown))}; valid names: {valid}")
    resolved = {}
    for name, spec in declared.items():
        kind = spec.get("Type", "String")
        if name in values:
            value = _convert(name, kind, values[name])
        elif "DefaultValue" in spec:
            value = spec["DefaultValue"]
        else:
            raise ParameterError(f"parameter {name!r} ({kind}) has no default value: give one")
        enum = spec.get("EnumValues")
        if enum and value not in enum:
            raise ParameterError(f"parameter {name!r} must be one of {', '.join(map(str, enum))}, not {value!r}")
        resolved[name] = value
    return resolved


def check_definition(definition: dict, parameters: Optional[Mapping[str, Any]]) -> tuple[dict[str, StepNode], dict]:
    """The definition's steps (checked to run in an order: no cycle, no unknown reference) and
    its parameters (names and types checked, defaults filled in). Raises
    :class:`DefinitionError` / :class:`ParameterError`; the one check before anything runs.
    Values are also checked against the ranges the definition implies (SageMaker's limits on
    the request fields they feed, the definition's parameter guards: :mod:`pipelines.local.parameter_ranges`)."""
    nodes = flatten_steps(definition)
    topological_order(nodes)
    values = validate_parameters(definition, parameters)
    try:
        check_parameter_ranges(definition, values)
    except ParameterRangeError as exc:
        raise ParameterError(str(exc)) from exc
    return nodes, values


# -- small helpers ------------------------------------------------------------------
def new_execution_id() -> str:
    """A SageMaker-like execution id: 12 lowercase letters and digits."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(12))


def _account(settings: Settings) -> str:
    parts = settings.role_arn.split(":")
    return parts[4] if len(parts) > 4 and parts[4] else "000000000000"


def pipeline_arn(settings: Settings, pipeline_name: str) -> str:
    return f"arn:aws:sagemaker:{settings.region}:{_account(settings)}:pipeline/{pipeline_name.lower()}"


def job_name(execution_id: str, step: str, salt: str, max_length: int = 63) -> str:
    """``pipelines-<execution id>-<step>-<hash>`` trimmed to ``max_length`` (a valid job name)."""
    digest = hashlib.sha1(f"{execution_id}/{step}/{salt}".encode()).hexdigest()[:10]
    clean = re.sub(r"[^A-Za-z0-9]+", "-", step).strip("-") or "step"
    prefix = f"pipelines-{execution_id}-" if max_length > 40 else f"{execution_id}-"
    room = max_length - len(prefix) - len(digest) - 1
    return f"{prefix}{clean[:room].rstrip('-')}-{digest}" if room > 0 else f"{prefix}{digest}"[:max_length]


def parse_iso_duration(text: str) -> float:
    """Seconds in an ISO-8601 duration (``P30D``, ``PT1H30M``, ``P1W``; months = 30 days)."""
    match = re.fullmatch(
        r"P(?:(\d+(?:\.\d+)?)Y)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)W)?(?:(\d+(?:\.\d+)?)D)?"
        r"(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?", str(text).strip().upper())
    if not match or text.strip().upper() in ("P", "PT"):
        raise DefinitionError(f"not an ISO-8601 duration: {text!r}")
    units = (365 * 86400, 30 * 86400, 7 * 86400, 86400, 3600, 60, 1)
    return sum(float(v) * u for v, u in zip(match.groups(), units) if v)


# The request attributes SageMaker Pipelines compares to decide a cache hit ("Default cache key
# attributes by pipeline step type"): output locations, instance types and job names are not
# among them, so a run that only moves outputs or changes instance types is still a hit.
CACHE_KEY_ATTRIBUTES = {
    "Processing": ("AppSpecification", "Environment", "ProcessingInputs"),
    "Training": ("AlgorithmSpecification", "CheckpointConfig", "DebugHookConfig", "DebugRuleConfigurations",
                 "Environment", "HyperParameters", "InputDataConfig"),
    "Tuning": ("HyperParameterTuningJobConfig", "TrainingJobDefinition", "TrainingJobDefinitions"),
}
TUNING_DEFINITION_ATTRIBUTES = ("AlgorithmSpecification", "HyperParameterRanges", "InputDataConfig",
                                "StaticHyperParameters", "TuningObjective")


def cache_key(step_type: str, arguments: Any) -> str:
    """Hash of a step's type and its cache-key attributes (all arguments for other step
    types), resolved with Execution.* held symbolic."""
    names = CACHE_KEY_ATTRIBUTES.get(step_type)
    if names is not None and isinstance(arguments, dict):
        arguments = {name: arguments.get(name) for name in names}
        definition = arguments.get("TrainingJobDefinition")
        if step_type == "Tuning" and isinstance(definition, dict):
            arguments["TrainingJobDefinition"] = {name: definition.get(name) for name in TUNING_DEFINITION_ATTRIBUTES}
    payload = json.dumps({"Type": step_type, "Arguments": arguments}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def failure_types(reason: Optional[str]) -> set[str]:
    """The retry-policy exception types a job's failure reason names."""
    return {kind for kind, pattern in FAILURE_TYPES if reason and pattern.search(reason)}


def retry_delay(policies: list, failure: set[str], retries_done: int, elapsed: float) -> Optional[float]:
    """Seconds to wait before the next attempt, or None when no policy allows another."""
    for policy in policies or []:
        if not failure & set(policy.get("ExceptionType") or []):
            continue
        delay = float(policy.get("IntervalSeconds", 1)) * float(policy.get("BackoffRate", 2.0)) ** retries_done
        max_attempts, expire = policy.get("MaxAttempts"), policy.get("ExpireAfterMin")
        if max_attempts is None and expire is None:
            return None
        if max_attempts is not None and retries_done >= int(max_attempts):
            return None
        if expire is not None and elapsed + delay > float(expire) * 60:
            return None
        return delay
    return None


# -- results -----------------------------------------------------------------------
@dataclass
class ExecutionResult:
    """What ``run_pipeline`` returns: the execution's record, steps included."""

    execution_id: str
    arn: str
    pipeline_name: str
    status: str
    failure_reason: Optional[str]
    parameters: dict
    definition: dict
    steps: list[StepRecord]
    start_time: float
    end_time: Optional[float]

    @classmethod
    def from_record(cls, record: ExecutionRecord) -> "ExecutionResult":
        return cls(record.id, record.arn, record.pipeline_name, record.status, record.failure_reason,
                   record.parameters, record.definition, record.steps, record.start_time, record.end_time)

    @property
    def succeeded(self) -> bool:
        return self.status == "Succeeded"

    @property
    def duration(self) -> Optional[float]:
        return None if self.end_time is None else self.end_time - self.start_time

    def step(self, name: str) -> StepRecord:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"no step {name!r} in execution {self.execution_id}")


def expression_context(definition: dict, parameters: Mapping[str, Any], steps: Mapping[str, dict],
                       store: ObjectStore, execution: Optional[Mapping[str, Any]] = None,
                       symbolic_execution: bool = False) -> Context:
    """A resolution context over ``steps`` (name → properties) and the object store."""
    nodes = flatten_steps(definition)
    return Context(
        parameters=parameters,
        execution=execution or {},
        steps=steps,
        property_files={n: node.spec.get("PropertyFiles") or [] for n, node in nodes.items()},
        read_json=lambda uri: json.loads(store.path(uri).read_text()),
        symbolic_execution=symbolic_execution,
        now=lambda: utc_iso(time.time()),
    )


def read_result_property_file(result: ExecutionResult, settings: Settings, step: str, name: str) -> Any:
    """The parsed property file ``name`` of ``step`` in a finished execution."""
    props = {s.name: s.properties for s in result.steps if s.properties is not None}
    ctx = expression_context(result.definition, result.parameters, props, ObjectStore(settings.s3_root))
    return read_property_file(step, name, ctx)


# -- the engine --------------------------------------------------------------------
class _Stop(BaseException):
    """Raised in the main thread by SIGTERM."""


@contextmanager
def _sigterm_stops() -> Iterator[None]:
    """Turn SIGTERM into an exception in the main thread while the engine runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        raise _Stop()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class _Run:
    """State of one attempt of one execution."""

    record: ExecutionRecord
    attempt: int
    nodes: dict[str, StepNode]
    props: dict[str, dict] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    outcomes: dict[str, bool] = field(default_factory=dict)
    failed: Optional[str] = None  # execution failure reason
    current: Optional[str] = None
    trials: Optional[int] = None  # MaxNumberOfTrainingJobs of the running tuning step


class Engine:
    """Runs pipeline definitions and records them. ``sagemaker_factory(settings, store,
    on_event)`` builds the job API (default: ``LocalSageMaker``)."""

    def __init__(self, settings: Settings, on_event: Optional[EventCallback] = None,
                 sagemaker_factory: Optional[Callable[..., Any]] = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.settings = settings
        self.store = ObjectStore(settings.s3_root)
        self.records = Records(settings.db_path)
        self.on_event = on_event
        self.sleep = sleep
        self._factory = sagemaker_factory
        self._sagemaker: Any = None
        self._run: Optional[_Run] = None
        stale = self.records.fail_stale_executions()
        if stale:  # their engine died: kill what is left of their jobs, free their scratch space
            collect_garbage(settings.jobs_root, running=(), only=set(stale))

    # public ----------------------------------------------------------------------
    def run(self, definition: dict, parameters: Optional[Mapping[str, Any]] = None,
            pipeline_name: str = "ImagePipeline", execution_id: Optional[str] = None) -> ExecutionResult:
        """Validate parameters, then execute ``definition`` as a new execution."""
        nodes, values = check_definition(definition, parameters)
        execution_id = execution_id or new_execution_id()
        arn = f"{pipeline_arn(self.settings, pipeline_name)}/execution/{execution_id}"
        self.records.create_execution(execution_id, arn, pipeline_name, definition, values, time.time())
        record = self.records.get_execution(execution_id)
        assert record is not None
        return self._execute(_Run(record, 1, nodes))

    def retry(self, execution_id: str) -> ExecutionResult:
        """Re-run the failed, stopped and unrun steps of a finished execution, reusing the
        recorded properties of its succeeded steps (same id, definition and parameters)."""
        record = self.records.get_execution(execution_id)
        if record is None:
            raise ValueError(f"no execution {execution_id!r} (see `imgpipe executions list`)")
        if record.status == "Executing" and pid_alive(record.pid):
            raise ValueError(f"execution {record.id} is still running (pid {record.pid})")
        if record.status == "Succeeded":
            raise ValueError(f"execution {record.id} succeeded: nothing to retry")
        nodes = flatten_steps(record.definition)
        attempt = self.records.start_attempt(record.id)
        record = self.records.get_execution(record.id)
        assert record is not None
        run = _Run(record, attempt, nodes)
        for step in record.steps:
            if step.status == "Succeeded":
                run.status[step.name] = "Succeeded"
                run.props[step.name] = step.properties or {}
                if step.type == "Condition":
                    run.outcomes[step.name] = bool((step.properties or {}).get("Outcome"))
        return self._execute(run)

    # execution -------------------------------------------------------------------
    def _execute(self, run: _Run) -> ExecutionResult:
        self._run = run
        record = run.record
        self._emit({"type": "execution", "status": "Executing", "execution_id": record.id,
                    "arn": record.arn, "pipeline": record.pipeline_name, "attempt": run.attempt,
                    "steps": len(run.nodes)})
        final, reason = "Succeeded", None
        try:
            with _sigterm_stops():
                for name in topological_order(run.nodes):
                    if run.status.get(name) == "Succeeded":
                        continue
                    self._visit(run, run.nodes[name])
        except (KeyboardInterrupt, _Stop):
            final, reason = "Stopped", "stopped by the user (interrupt or SIGTERM)"
            self._stop_current(run)
        except Exception as exc:  # an engine bug: record it, then let it surface
            self._stop_jobs()
            self.records.finish_execution(record.id, "Failed", f"local engine error: {exc!r}")
            raise
        finally:
            self._close_sagemaker()
            self._run = None
        if final != "Stopped" and run.failed:
            final, reason = "Failed", run.failed
        self.records.finish_execution(record.id, final, reason)
        self._emit({"type": "execution", "status": final, "execution_id": record.id, "reason": reason})
        done = self.records.get_execution(record.id)
        assert done is not None
        return ExecutionResult.from_record(done)

    def _visit(self, run: _Run, node: StepNode) -> None:
        """Run ``node``, or record why it does not run."""
        if run.failed:
            return self._not_run(run, node, "not started: the execution failed before it")
        if not any(all(run.outcomes.get(c) is b for c, b in alt) for alt in node.guards):
            return self._not_run(run, node, "its condition branch was not taken")
        missing = sorted(d for d in node.deps if run.status.get(d) != "Succeeded")
        if missing:
            return self._not_run(run, node, f"depends on step(s) that did not run: {', '.join(missing)}")
        step = StepRecord(run.record.id, node.name, node.type, "Starting", execution_attempt=run.attempt,
                          start_time=time.time(), position=node.position)
        run.current = node.name
        self._save(run, step)
        self._run_step(run, node, step)
        run.current = None

    def _not_run(self, run: _Run, node: StepNode, reason: str) -> None:
        run.status[node.name] = "NotRun"
        step = StepRecord(run.record.id, node.name, node.type, "NotRun", execution_attempt=run.attempt,
                          failure_reason=reason, position=node.position)
        self._save(run, step)

    def _context(self, run: _Run, symbolic: bool = False) -> Context:
        record = run.record
        execution = {
            "PipelineExecutionId": record.id,
            "PipelineExecutionArn": record.arn,
            "StartDateTime": utc_iso(record.start_time),
            "PipelineName": record.pipeline_name,
            "PipelineArn": pipeline_arn(self.settings, record.pipeline_name),
        }
        return expression_context(record.definition, record.parameters, run.props, self.store,
                                  execution, symbolic)

    def _run_step(self, run: _Run, node: StepNode, step: StepRecord) -> None:
        try:
            if node.type == "Condition":
                return self._condition(run, node, step)
            arguments = resolve(node.spec.get("Arguments", {}), self._context(run), f"Steps.{node.name}.Arguments")
            step.arguments = arguments
            if node.type == "Fail":
                message = str(arguments.get("ErrorMessage") or f"Fail step {node.name} reached")
                return self._finish(run, step, "Failed", reason=message, execution_reason=message)
            if node.type in JOB_STEPS:
                return self._job(run, node, step, arguments)
            if node.type in ("RegisterModel", "Model"):
                return self._model(run, node, step, arguments)
            raise DefinitionError(
                f"step {node.name!r}: step type {node.type!r} is not supported locally "
                f"(supported: {', '.join(SUPPORTED_TYPES)})")
        except (ExpressionError, DefinitionError) as exc:
            self._finish(run, step, "Failed", reason=str(exc))

    def _condition(self, run: _Run, node: StepNode, step: StepRecord) -> None:
        conditions = node.spec.get("Arguments", {}).get("Conditions", [])
        step.arguments = {"Conditions": conditions}
        outcome = evaluate_conditions(conditions, self._context(run), f"Steps.{node.name}.Arguments")
        run.outcomes[node.name] = outcome
        self._finish(run, step, "Succeeded", properties={"Outcome": outcome})

    def _job(self, run: _Run, node: StepNode, step: StepRecord, arguments: dict) -> None:
        method, status_field, max_len = JOB_STEPS[node.type]
        cache = node.spec.get("CacheConfig") or {}
        if cache.get("Enabled"):
            symbolic = resolve(node.spec.get("Arguments", {}), self._context(run, symbolic=True))
            step.cache_key = cache_key(node.type, symbolic)
            expire = parse_iso_duration(cache["ExpireAfter"]) if cache.get("ExpireAfter") else None
            hit = self.records.find_cached(run.record.pipeline_name, step.cache_key,
                                           time.time() - expire if expire is not None else 0.0)
            if hit is not None and self._outputs_exist(hit.properties or {}):
                step.job_name, step.log_path = hit.job_name, hit.log_path
                step.cached_from = f"{hit.execution_id}/{hit.name}"
                return self._finish(run, step, "Succeeded", properties=hit.properties)
        limits = (arguments.get("HyperParameterTuningJobConfig") or {}).get("ResourceLimits") or {}
        run.trials = limits.get("MaxNumberOfTrainingJobs")
        started, retries = time.time(), 0
        while True:
            step.attempts += 1
            step.job_name = job_name(run.record.id, node.name, f"{run.attempt}.{step.attempts}", max_len)
            step.status = "Executing"
            self._save(run, step)
            try:
                props = self._call(getattr(self._sagemaker_api(), method), dict(arguments), step.job_name)
            except Exception as exc:  # a request the local job API refuses: the step fails
                return self._finish(run, step, "Failed", reason=f"{type(exc).__name__}: {exc}")
            step.log_path = _log_path(props)
            status = props.get(status_field)
            if status == "Completed":
                return self._finish(run, step, "Succeeded", properties=props)
            reason = props.get("FailureReason") or f"job {step.job_name} ended {status}"
            if status == "Stopped":
                return self._finish(run, step, "Stopped", properties=props, reason=reason)
            delay = retry_delay(node.spec.get("RetryPolicies") or [], failure_types(reason), retries,
                                time.time() - started)
            if delay is None:
                return self._finish(run, step, "Failed", properties=props, reason=reason)
            retries += 1
            self._emit({"type": "retry", "step": node.name, "job": step.job_name, "reason": reason,
                        "delay": delay, "attempt": step.attempts + 1})
            self.sleep(delay)

    def _model(self, run: _Run, node: StepNode, step: StepRecord, arguments: dict) -> None:
        if node.type == "Model" and not ({"ModelPackageGroupName", "InferenceSpecification"} & set(arguments)):
            name = job_name(run.record.id, node.name, str(run.attempt))
            return self._finish(run, step, "Succeeded", properties={**arguments, "ModelName": name})
        step.status = "Executing"
        self._save(run, step)
        try:
            props = self._call(self._sagemaker_api().create_model_package, dict(arguments),
                               execution_arn=run.record.arn)
        except Exception as exc:  # a rejected request: the step fails, the engine goes on
            return self._finish(run, step, "Failed", reason=f"{type(exc).__name__}: {exc}")
        step.job_name = str(props.get("ModelPackageArn") or "")
        self._finish(run, step, "Succeeded", properties=props)

    def _finish(self, run: _Run, step: StepRecord, status: str, properties: Optional[dict] = None,
                reason: Optional[str] = None, execution_reason: Optional[str] = None) -> None:
        step.status, step.end_time = status, time.time()
        step.duration = step.end_time - (step.start_time or step.end_time)
        step.properties, step.failure_reason = properties, reason
        run.status[step.name] = status
        if status == "Succeeded":
            run.props[step.name] = properties or {}
        elif status in ("Failed", "Stopped") and not run.failed:
            verb = "failed" if status == "Failed" else "was stopped"
            run.failed = execution_reason or f"step {step.name} {verb}: {reason}"
        self._save(run, step)

    def _stop_current(self, run: _Run) -> None:
        self._stop_jobs()
        if run.current:
            for step in self.records.steps(run.record.id):
                if step.name == run.current:
                    self._finish(run, step, "Stopped", properties=step.properties,
                                 reason="stopped by the user (interrupt or SIGTERM)")

    def _outputs_exist(self, properties: Mapping[str, Any]) -> bool:
        """Whether the outputs a cached step recorded are still in the object store."""
        outputs = (properties.get("ProcessingOutputConfig") or {}).get("Outputs") or []
        uris = [(o.get("S3Output") or {}).get("S3Uri") for o in outputs]
        uris.append((properties.get("ModelArtifacts") or {}).get("S3ModelArtifacts"))
        try:
            return all(self.store.exists(uri) for uri in uris if isinstance(uri, str) and uri.startswith("s3://"))
        except ValueError:
            return False

    # plumbing --------------------------------------------------------------------
    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a job API call in a worker thread, so that an interrupt or SIGTERM reaching
        the main thread stops the job (``LocalSageMaker.stop``) and waits for it to end."""
        box: dict[str, Any] = {}
        done = threading.Event()  # not Thread.join: an interrupted join marks a live thread dead (bpo-45274)

        def target() -> None:
            try:
                box["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the main thread
                box["error"] = exc
            finally:
                done.set()

        try:  # a signal may land as start() returns: the job runs, so it must be stopped too
            threading.Thread(target=target, name="imgpipe-job", daemon=True).start()
            while not done.wait(0.5):
                pass
        except (KeyboardInterrupt, _Stop):
            self._stop_jobs()
            done.wait(STOP_WAIT_SECONDS)
            raise
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _stop_jobs(self) -> None:
        if self._sagemaker is not None:
            try:
                self._sagemaker.stop()
            except Exception:  # stopping is best effort; the execution is Stopped anyway
                pass

    def _sagemaker_api(self) -> Any:
        if self._sagemaker is None:
            factory = self._factory
            if factory is None:
                from pipelines.local.sagemaker_api import LocalSageMaker as factory  # noqa: N813
            self._sagemaker = factory(self.settings, self.store, on_event=self._job_event)
        return self._sagemaker

    def _close_sagemaker(self) -> None:
        self._sagemaker = None

    def _job_event(self, event: dict) -> None:
        """Events from jobs (log lines, metrics, trials): tagged with the step, forwarded."""
        run = self._run
        if run is not None and "step" not in event:
            event = {**event, "step": run.current}
        if run is not None and event.get("type") == "trial" and run.trials:
            event.setdefault("total", run.trials)
        if run is not None and event.get("type") in ("metric", "trial"):
            self.records.add_event(run.record.id, event)
        if self.on_event is not None:
            self.on_event(event)

    def _save(self, run: _Run, step: StepRecord) -> None:
        self.records.save_step(step)
        event = {"type": "step", "step": step.name, "step_type": step.type, "status": step.status,
                 "job": step.job_name, "cached_from": step.cached_from, "duration": step.duration,
                 "reason": step.failure_reason, "attempt": step.attempts, "log_path": step.log_path}
        self.records.add_event(run.record.id, event)
        self._emit(event)

    def _emit(self, event: dict) -> None:
        if self.on_event is not None:
            self.on_event(event)


def _log_path(props: Mapping[str, Any]) -> Optional[str]:
    for key in ("LogPath", "LocalLogPath", "log_path"):
        if props.get(key):
            return str(props[key])
    return None


def run_pipeline(definition: dict, parameters: Optional[Mapping[str, Any]], settings: Settings,
                 on_event: Optional[EventCallback] = None, pipeline_name: str = "ImagePipeline",
                 sagemaker_factory: Optional[Callable[..., Any]] = None) -> ExecutionResult:
    """Execute ``definition`` with ``parameters`` locally and return the recorded result."""
    engine = Engine(settings, on_event=on_event, sagemaker_factory=sagemaker_factory)
    return engine.run(definition, parameters, pipeline_name=pipeline_name)
