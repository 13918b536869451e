"""Edges of the expression evaluator where a plausible wrong answer would pass unnoticed:
``Std:JsonGet`` reference validation, list index bounds, comparisons of numbers with text."""
from __future__ import annotations

import pytest

from pipelines.local.expressions import Context, ExpressionError, evaluate_condition, resolve, step_references, walk

REPORT = {"metrics": {"accuracy": 0.9}, "classes": ["a", "b", "c"]}
URI = "s3://b/exec/Evaluate/evaluation/evaluation.json"


@pytest.fixture()
def ctx() -> Context:
    evaluate = {"ProcessingOutputConfig": {"Outputs": [
        {"OutputName": "evaluation", "S3Output": {"S3Uri": "s3://b/exec/Evaluate/evaluation"}}]}}
    return Context(
        parameters={"Report": "EvaluationReport"},
        steps={"Evaluate": evaluate},
        property_files={"Evaluate": [{"PropertyFileName": "EvaluationReport", "OutputName": "evaluation",
                                       "FilePath": "evaluation.json"}]},
        read_json=lambda uri: REPORT if uri == URI else (_ for _ in ()).throw(FileNotFoundError(uri)),
    )


def json_get(reference: str, path: str = "metrics.accuracy") -> dict:
    return {"Std:JsonGet": {"PropertyFile": {"Get": reference}, "Path": path}}


def test_json_get_reads_a_property_file(ctx):
    assert resolve(json_get("Steps.Evaluate.PropertyFiles.EvaluationReport"), ctx) == 0.9


@pytest.mark.parametrize("reference", [
    "Steps.Evaluate.Outputs.EvaluationReport",          # right length, wrong third part
    "Steps.Evaluate.Reports.EvaluationReport",          # (sorting after PropertyFiles)
    "Parameters.Evaluate.PropertyFiles.EvaluationReport",  # not a step
    "Tasks.Evaluate.PropertyFiles.EvaluationReport",    # (sorting after Steps)
    "Steps.Evaluate.PropertyFiles.EvaluationReport.metrics",  # too long
    "Steps.Evaluate.PropertyFiles",                     # too short
])
def test_json_get_refuses_a_reference_that_is_not_a_property_file(ctx, reference):
    with pytest.raises(ExpressionError, match=r"is not Steps\.<step>\.PropertyFiles\.<name>"):
        resolve(json_get(reference), ctx, "Args")


def test_json_get_property_file_must_be_a_get(ctx):
    expr = {"Std:JsonGet": {"PropertyFile": "Steps.Evaluate.PropertyFiles.EvaluationReport", "Path": "a"}}
    with pytest.raises(ExpressionError, match="PropertyFile must be a Get"):
        resolve(expr, ctx)


@pytest.mark.parametrize("index,expected", [(0, "a"), (2, "c"), (-1, "c"), (-3, "a")])
def test_list_indices_inside_the_bounds(index, expected):
    assert walk(REPORT, ["classes", index], "report") == expected


@pytest.mark.parametrize("index", [3, 4, -4])
def test_list_indices_outside_the_bounds_name_the_index(index):
    with pytest.raises(ExpressionError, match=rf"report\.classes\[{index}\]: index out of range \(3\)"):
        walk(REPORT, ["classes", index], "report")


def test_an_index_on_a_dict_is_refused():
    with pytest.raises(ExpressionError, match=r"index out of range \(not a list\)"):
        walk(REPORT, ["metrics", 0], "report")


@pytest.mark.parametrize("kind", ["GreaterThan", "GreaterThanOrEqualTo", "LessThan", "LessThanOrEqualTo"])
@pytest.mark.parametrize("left,right", [(0.9, "high"), ("high", 0.9), (True, 0.5), (None, 1)])
def test_a_number_is_never_compared_with_text_silently(kind, left, right):
    with pytest.raises(ExpressionError, match=f"{kind}: cannot compare"):
        evaluate_condition({"Type": kind, "LeftValue": left, "RightValue": right}, Context())


@pytest.mark.parametrize("left,right,expected", [
    ("1.0", "1", False),   # two strings compare as text, as SageMaker does
    ("1", "1", True),
    (1.0, "1", True),      # a number against a numeric string compares as numbers
    (1, 1.0, True),
    (0, False, False),     # a boolean is not the number 0
    (True, 1, False),
    (False, "false", True),
    ("abc", 0, False),
])
def test_equals(left, right, expected):
    assert evaluate_condition({"Type": "Equals", "LeftValue": left, "RightValue": right}, Context()) is expected


@pytest.mark.parametrize("kind,left,right,expected", [
    ("GreaterThan", "b", "a", True), ("LessThan", "10", "9", False),  # numeric strings: numbers
    ("LessThan", "apple", "banana", True), ("GreaterThanOrEqualTo", "a", "a", True),
])
def test_two_strings_compare_as_numbers_when_both_are_numbers_else_as_text(kind, left, right, expected):
    assert evaluate_condition({"Type": kind, "LeftValue": left, "RightValue": right}, Context()) is expected


def test_json_get_of_a_missing_object_names_it(ctx):
    with pytest.raises(ExpressionError, match="cannot read JSON s3://b/missing.json"):
        resolve({"Std:JsonGet": {"S3Uri": "s3://b/missing.json", "Path": "a"}}, ctx)


@pytest.mark.parametrize("root", ["Tasks", "Outputs", "steps", "Zeta", "Artifacts", "Env"])
def test_an_unknown_get_root_is_named(ctx, root):
    with pytest.raises(ExpressionError, match=f"unknown Get root '{root}'"):
        resolve({"Get": f"{root}.Evaluate.x"}, ctx)


def test_get_of_a_property_file_gives_the_document_or_names_the_missing_key(ctx):
    assert resolve({"Get": "Steps.Evaluate.PropertyFiles.EvaluationReport"}, ctx) == REPORT
    assert resolve({"Get": "Steps.Evaluate.PropertyFiles.EvaluationReport.classes[1]"}, ctx) == "b"
    with pytest.raises(ExpressionError, match=r"Steps\.Evaluate\.PropertyFiles\.EvaluationReport\.metrics: no 'recall'"):
        resolve({"Get": "Steps.Evaluate.PropertyFiles.EvaluationReport.metrics.recall"}, ctx)


@pytest.mark.parametrize("arg", ["a,b", {"On": ",", "Values": "abc"}, {"On": ","}, ["a", "b"]])
def test_join_needs_a_values_list(arg):
    with pytest.raises(ExpressionError, match="Std:Join needs On and a Values list"):
        resolve({"Std:Join": arg}, Context())


def test_empty_objects_are_plain_data():
    assert resolve({}, Context()) == {} and resolve({"a": {}, "b": [{}]}, Context()) == {"a": {}, "b": [{}]}


def test_only_a_one_key_get_is_a_step_reference():
    mixed = {"Get": "Steps.A.Arn", "Other": {"Get": "Steps.B.Arn"}}  # two keys: plain data
    assert step_references(mixed) == {"B"}
    assert step_references([{"Get": "Steps.A.Arn"}, {"Std:Join": {"Values": [{"Get": "Steps.C.x"}]}}]) == {"A", "C"}


def test_get_of_the_property_files_key_alone_is_a_missing_property(ctx):
    with pytest.raises(ExpressionError, match=r"Steps\.Evaluate: no 'PropertyFiles'"):
        resolve({"Get": "Steps.Evaluate.PropertyFiles"}, ctx)


@pytest.mark.parametrize("condition", [{"LeftValue": 1, "RightValue": 1}, ["Type"], "Equals", None])
def test_a_condition_without_a_type_is_named(condition):
    with pytest.raises(ExpressionError, match="not a condition"):
        evaluate_condition(condition, Context())


def test_an_object_that_is_not_json_is_named():
    def broken(uri):
        raise ValueError("Expecting value: line 1 column 1")

    with pytest.raises(ExpressionError, match="cannot read JSON s3://b/x.json: Expecting value"):
        resolve({"Std:JsonGet": {"S3Uri": "s3://b/x.json", "Path": "a"}}, Context(read_json=broken))


def test_a_name_picks_the_first_item_of_that_name():
    outputs = [{"OutputName": "train", "Uri": "first"}, {"OutputName": "train", "Uri": "second"}]
    assert walk(outputs, ["train", "Uri"], "Outputs") == "first"


@pytest.mark.parametrize("path", ["Steps.[0].Arn", "Steps.", "Steps"])
def test_a_step_reference_needs_a_step_name(ctx, path):
    with pytest.raises(ExpressionError, match="no step name"):
        resolve({"Get": path}, ctx)


@pytest.mark.parametrize("plain", [{"Accuracy": 0.9}, {"Count": {"A": 1}}, {"Epochs": [3]}, {"Get": None, "x": 1}])
def test_one_key_objects_that_are_no_expression_stay_data(plain):
    assert resolve(plain, Context()) == plain


@pytest.mark.parametrize("path", ["a b", "a..b", "a[x]", "a['b"])
def test_a_path_that_does_not_parse_is_named(path):
    with pytest.raises(ExpressionError, match="cannot parse path"):
        resolve({"Std:JsonGet": {"S3Uri": URI, "Path": path}}, Context(read_json=lambda uri: REPORT))


@pytest.mark.parametrize("arg", [{"S3Uri": URI}, "metrics.accuracy", None])
def test_json_get_needs_a_path(arg):
    with pytest.raises(ExpressionError, match="Std:JsonGet needs a Path"):
        resolve({"Std:JsonGet": arg}, Context(read_json=lambda uri: REPORT))
