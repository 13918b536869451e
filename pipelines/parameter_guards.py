"""Parameter guards: a ConditionStep + FailStep at the head of a pipeline that fails the
execution before its first job when a parameter is out of its range.

SageMaker accepts any value of a typed parameter; a value the jobs cannot use (an
``AccuracyThreshold`` of 2, ``MinEpochs`` above ``MaxEpochs``, a negative ``ImageSize``)
would otherwise fail deep inside a job, or at the end of the run. The guard's conditions read
only parameters, so the local engine evaluates them before anything runs and names each
parameter out of range (exit 2); on AWS the guard's FailStep ends the execution and the first
job step depends on the guard, so no job starts.

Limits that SageMaker's API itself enforces on a request field taken straight from a
parameter (``MaxTuningJobs`` → ``MaxNumberOfTrainingJobs`` >= 1) are not repeated here: the
local engine derives them from the step's request (docs/architecture.md, "Parameter checks").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from sagemaker.workflow.condition_step import ConditionStep
from sagemaker.workflow.conditions import ConditionGreaterThanOrEqualTo, ConditionLessThanOrEqualTo
from sagemaker.workflow.fail_step import FailStep
from sagemaker.workflow.functions import Join
from sagemaker.workflow.parameters import Parameter

Limit = Union[int, float, Parameter]


@dataclass(frozen=True)
class Bound:
    """``minimum <= parameter <= maximum`` (either end optional; a limit may be a parameter)."""

    parameter: Parameter
    minimum: Optional[Limit] = None
    maximum: Optional[Limit] = None

    def conditions(self) -> list:
        found = []
        if self.minimum is not None:
            found.append(ConditionGreaterThanOrEqualTo(left=self.parameter, right=self.minimum))
        if self.maximum is not None:
            found.append(ConditionLessThanOrEqualTo(left=self.parameter, right=self.maximum))
        return found

    def text(self) -> str:
        """``0 <= AccuracyThreshold <= 1``."""
        def name(limit: Limit) -> str:
            return limit.name if isinstance(limit, Parameter) else str(limit)

        if self.maximum is None:
            return f"{self.parameter.name} >= {name(self.minimum)}" if self.minimum is not None else self.parameter.name
        low = f"{name(self.minimum)} <= " if self.minimum is not None else ""
        return f"{low}{self.parameter.name} <= {name(self.maximum)}"


def parameter_guard(name: str, fail_name: str, bounds: list[Bound]) -> ConditionStep:
    """``name``: holds when every bound does; otherwise its ``fail_name`` FailStep fails the
    execution with the bounds and the values given."""
    values: list = ["Parameters out of range. Allowed:", "; ".join(b.text() for b in bounds) + ". Given:"]
    for bound in bounds:
        values += [f"{bound.parameter.name}:", bound.parameter]
    failed = FailStep(
        name=fail_name,
        description="Stop before any job: a parameter is outside the range the pipeline can run with.",
        error_message=Join(on=" ", values=values),
    )
    return ConditionStep(
        name=name,
        description="Check the parameters' ranges before any job starts.",
        conditions=[c for b in bounds for c in b.conditions()],
        if_steps=[],
        else_steps=[failed],
    )
