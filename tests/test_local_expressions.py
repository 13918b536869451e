"""Resolution of every definition construct the local engine interprets."""
import json

import pytest

from pipelines.local.expressions import (
    Context,
    ExpressionError,
    evaluate_condition,
    evaluate_conditions,
    parse_path,
    property_file_uri,
    resolve,
    step_references,
    symbolic,
)

PROCESSING = {
    "ProcessingJobName": "pipelines-abc-PrepareData-1",
    "ProcessingOutputConfig": {"Outputs": [
        {"OutputName": "train", "S3Output": {"S3Uri": "s3://b/exec/PrepareData/train", "LocalPath": "/opt/ml/processing/train"}},
        {"OutputName": "evaluation", "S3Output": {"S3Uri": "s3://b/exec/Evaluate/evaluation/", "LocalPath": "/x"}},
    ]},
}
TUNING = {
    "BestTrainingJob": {"TrainingJobName": "t-002", "TunedHyperParameters": {"learning-rate": "0.01", "optimizer": '"adam"'}},
    "TrainingJobSummaries": [{"TrainingJobName": "t-002"}, {"TrainingJobName": "t-001"}],
}
REPORT = {"multiclass_classification_metrics": {"accuracy": {"value": 0.91}},
          "classes": ["a", "b"], "per_class": [{"name": "a", "acc": 0.5}]}
FILES = {"s3://b/exec/Evaluate/evaluation/evaluation.json": REPORT, "s3://b/other.json": {"x": [1, {"y": "deep"}]}}


def read_json(uri):
    if uri not in FILES:
        raise FileNotFoundError(uri)
    return json.loads(json.dumps(FILES[uri]))


@pytest.fixture()
def ctx():
    return Context(
        parameters={"Threshold": 0.8, "Epochs": 3, "Name": "run", "Flag": True},
        execution={"PipelineExecutionId": "abc123", "PipelineExecutionArn": "arn:exec/abc123",
                   "StartDateTime": "2026-01-01T00:00:00Z", "PipelineName": "P", "PipelineArn": "arn:p"},
        steps={"PrepareData": PROCESSING, "Tune": TUNING, "Evaluate": PROCESSING},
        property_files={"Evaluate": [{"PropertyFileName": "EvaluationReport", "OutputName": "evaluation",
                                       "FilePath": "evaluation.json"}]},
        read_json=read_json,
        now=lambda: "NOW",
    )


def g(path):
    return {"Get": path}


@pytest.mark.parametrize("path,expected", [
    ("Parameters.Threshold", 0.8),
    ("Parameters.Flag", True),
    ("Execution.PipelineExecutionId", "abc123"),
    ("Execution.PipelineExecutionArn", "arn:exec/abc123"),
    ("Execution.StartDateTime", "2026-01-01T00:00:00Z"),
    ("Execution.CurrentDateTime", "NOW"),
    ("Execution.PipelineName", "P"),
    ("Execution.PipelineArn", "arn:p"),
    ("Steps.PrepareData.ProcessingOutputConfig.Outputs['train'].S3Output.S3Uri", "s3://b/exec/PrepareData/train"),
    ("Steps.PrepareData.ProcessingOutputConfig.Outputs[1].OutputName", "evaluation"),
    ("Steps.Tune.BestTrainingJob.TunedHyperParameters['learning-rate']", "0.01"),
    ('Steps.Tune.BestTrainingJob.TunedHyperParameters["optimizer"]', '"adam"'),
    ("Steps.Tune.TrainingJobSummaries[0].TrainingJobName", "t-002"),
    ("Steps.Tune.TrainingJobSummaries[-1].TrainingJobName", "t-001"),
    ("Steps.Evaluate.PropertyFiles.EvaluationReport.classes[1]", "b"),
])
def test_get(ctx, path, expected):
    assert resolve(g(path), ctx) == expected


def test_execution_variables_symbolic(ctx):
    ctx.symbolic_execution = True
    assert resolve(g("Execution.PipelineExecutionId"), ctx) == symbolic("PipelineExecutionId")
    assert resolve(g("Parameters.Epochs"), ctx) == 3  # only Execution.* is held symbolic


def test_join_nested_and_typed(ctx):
    expr = {"Std:Join": {"On": "/", "Values": [
        "s3:/", "b", g("Execution.PipelineExecutionId"), g("Parameters.Epochs"), g("Parameters.Flag"),
        {"Std:Join": {"On": "-", "Values": [g("Parameters.Name"), g("Parameters.Threshold")]}},
    ]}}
    assert resolve(expr, ctx) == "s3://b/abc123/3/true/run-0.8"
    assert resolve({"Std:Join": {"On": "", "Values": [g("Steps.Tune.BestTrainingJob.TunedHyperParameters['learning-rate']")]}}, ctx) == "0.01"


def test_resolve_walks_arguments(ctx):
    args = {"HyperParameters": {"epochs": {"Std:Join": {"On": "", "Values": [g("Parameters.Epochs")]}}, "static": '"x"'},
            "Inputs": [{"S3Uri": g("Steps.PrepareData.ProcessingOutputConfig.Outputs['train'].S3Output.S3Uri")}, 7, None]}
    assert resolve(args, ctx) == {"HyperParameters": {"epochs": "3", "static": '"x"'},
                                  "Inputs": [{"S3Uri": "s3://b/exec/PrepareData/train"}, 7, None]}


def test_json_get_property_file(ctx):
    ref = {"Get": "Steps.Evaluate.PropertyFiles.EvaluationReport"}
    assert property_file_uri("Evaluate", "EvaluationReport", ctx) == "s3://b/exec/Evaluate/evaluation/evaluation.json"
    expr = {"Std:JsonGet": {"PropertyFile": ref, "Path": "multiclass_classification_metrics.accuracy.value"}}
    assert resolve(expr, ctx) == 0.91
    assert resolve({"Std:JsonGet": {"PropertyFile": ref, "Path": "per_class[0].acc"}}, ctx) == 0.5
    assert resolve({"Std:JsonGet": {"PropertyFile": ref, "Path": "classes[1]"}}, ctx) == "b"


def test_json_get_s3_uri(ctx):
    expr = {"Std:JsonGet": {"S3Uri": {"Std:Join": {"On": "/", "Values": ["s3://b", "other.json"]}}, "Path": "x[1].y"}}
    assert resolve(expr, ctx) == "deep"


@pytest.mark.parametrize("kind,left,right,expected", [
    ("Equals", 3, 3.0, True), ("Equals", "a", "a", True), ("Equals", "a", "b", False), ("Equals", True, "true", True),
    ("GreaterThan", 0.91, 0.8, True), ("GreaterThan", 0.8, 0.8, False),
    ("GreaterThanOrEqualTo", 0.8, 0.8, True), ("GreaterThanOrEqualTo", 0.7, 0.8, False),
    ("LessThan", 1, 2, True), ("LessThan", 2, 2, False),
    ("LessThanOrEqualTo", 2, 2, True), ("LessThanOrEqualTo", 3, 2, False),
    ("GreaterThan", "0.9", 0.8, True),  # a numeric string from Std:Join compares as a number
])
def test_comparisons(ctx, kind, left, right, expected):
    assert evaluate_condition({"Type": kind, "LeftValue": left, "RightValue": right}, ctx) is expected


def test_comparison_of_expressions(ctx):
    acc = {"Std:JsonGet": {"PropertyFile": g("Steps.Evaluate.PropertyFiles.EvaluationReport"),
                           "Path": "multiclass_classification_metrics.accuracy.value"}}
    cond = {"Type": "GreaterThanOrEqualTo", "LeftValue": acc, "RightValue": g("Parameters.Threshold")}
    assert evaluate_condition(cond, ctx) is True
    ctx.parameters = {**ctx.parameters, "Threshold": 1.01}
    assert evaluate_condition(cond, ctx) is False


def test_in_not_or(ctx):
    in_true = {"Type": "In", "QueryValue": g("Parameters.Epochs"), "Values": [1, 3, g("Parameters.Threshold")]}
    in_false = {"Type": "In", "QueryValue": g("Parameters.Name"), "Values": ["x", "y"]}
    assert evaluate_condition(in_true, ctx) is True
    assert evaluate_condition(in_false, ctx) is False
    assert evaluate_condition({"Type": "Not", "Condition": in_true}, ctx) is False
    assert evaluate_condition({"Type": "Not", "Condition": in_false}, ctx) is True
    assert evaluate_condition({"Type": "Or", "Conditions": [in_false, in_true]}, ctx) is True
    assert evaluate_condition({"Type": "Or", "Conditions": [in_false, in_false]}, ctx) is False
    assert evaluate_conditions([in_true, {"Type": "Not", "Condition": in_false}], ctx) is True
    assert evaluate_conditions([in_true, in_false], ctx) is False


@pytest.mark.parametrize("expr,words", [
    ({"Std:Concat": {"Values": []}}, ["Std:Concat", "Args.X"]),
    ({"Get": "Properties.Foo"}, ["Properties", "Args.X"]),
    ({"Get": "Execution.Nope"}, ["Execution.Nope"]),
    ({"Get": "Parameters.Missing"}, ["Missing", "Threshold"]),
    ({"Get": "Steps.Ghost.Foo"}, ["Ghost"]),
    ({"Get": "Steps.PrepareData.ProcessingOutputConfig.Outputs['nope'].S3Output.S3Uri"}, ["nope"]),
    ({"Get": "Steps.Tune.TrainingJobSummaries[5].TrainingJobName"}, ["[5]"]),
    ({"Get": "Steps.Tune.BestTrainingJob.Bogus"}, ["Bogus", "TunedHyperParameters"]),
    ({"Std:JsonGet": {"PropertyFile": {"Get": "Steps.Evaluate.PropertyFiles.Nope"}, "Path": "a"}}, ["Nope", "EvaluationReport"]),
    ({"Std:JsonGet": {"PropertyFile": {"Get": "Steps.Evaluate.PropertyFiles.EvaluationReport"}, "Path": "nope.x"}}, ["nope"]),
])
def test_unknown_or_missing_named(ctx, expr, words):
    with pytest.raises(ExpressionError) as err:
        resolve({"X": expr}, ctx, "Args")
    for word in words:
        assert word in str(err.value)


def test_unknown_condition_type_named(ctx):
    with pytest.raises(ExpressionError, match="Between.*Steps.Check"):
        evaluate_condition({"Type": "Between", "LeftValue": 1}, ctx, "Steps.Check")
    with pytest.raises(ExpressionError, match="Xor"):
        evaluate_condition({"Type": "Not", "Condition": {"Type": "Xor"}}, ctx)


def test_parse_path_and_references():
    assert parse_path("a.b[0]['k-1'].c") == ["a", "b", 0, "k-1", "c"]
    definition_step = {"Arguments": {"A": g("Steps.One.X"), "B": [{"Std:Join": {"On": "", "Values": [g("Steps.Two-b.Y[0]")]}}],
                                     "C": {"Std:JsonGet": {"PropertyFile": g("Steps.Three.PropertyFiles.R"), "Path": "a"}},
                                     "D": g("Parameters.P")}}
    assert step_references(definition_step) == {"One", "Two-b", "Three"}
