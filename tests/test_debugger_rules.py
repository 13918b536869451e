"""Debugger hook and built-in rules on real local training jobs (train.py on rendered digits).

Each job runs through the local engine's training-job runner: the hook config it writes makes
train.py save tensors with smdebug, and the rules of the request's DebugRuleConfigurations are
evaluated on that output with smdebug's trial API; the verdicts come back as
DescribeTrainingJob's DebugRuleEvaluationStatuses.
"""
from __future__ import annotations

import json

import pytest

from debugger_jobs import DebugJobs, rule_configs, statuses
from pipelines.local.debugger import RuleError, evaluate_rules, parse_parameters, RULE_SPECS

SOUND = {"learning-rate": "0.05", "pretrained": '"true"', "freeze-backbone": '"true"', "epochs": "2"}


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    return DebugJobs(tmp_path_factory.mktemp("debug-jobs"), per_class=6)


@pytest.fixture(scope="module")
def sound(jobs):
    """A sound run: pretrained backbone, a new head at a sensible learning rate; every rule."""
    return jobs.run("sound", jobs.request(SOUND))


@pytest.fixture(scope="module")
def absurd(jobs):
    """The same run with an absurd learning rate (the loss blows up)."""
    return jobs.run("absurd", jobs.request({**SOUND, "learning-rate": "1e6", "freeze-backbone": '"false"'},
                                           rules=rule_configs(["LossNotDecreasing"])))


@pytest.fixture(scope="module")
def starved(jobs):
    """Every initial weight scaled to 1e-4 of its value: the gradients vanish."""
    return jobs.run("starved", jobs.request({"learning-rate": "0.01", "epochs": "1"}, program="train_scaled.py",
                                            rules=rule_configs(["VanishingGradient"])))


def test_engine_writes_the_hook_config_and_train_py_saves_the_collections(jobs, sound):
    assert sound["TrainingJobStatus"] == "Completed", sound.get("FailureReason")
    from smdebug.trials import create_trial

    trial = create_trial(str(jobs.debug_output(sound)))
    assert trial.tensor_names(collection="losses") == ["CrossEntropyLoss_output_0"]
    assert trial.tensor_names(collection="gradients")  # only the head trains: its gradients
    assert len(trial.tensor_names(collection="weights")) > 50  # every layer's weights
    loss = trial.tensor("CrossEntropyLoss_output_0")
    from smdebug import modes

    assert loss.steps(mode=modes.TRAIN) == list(range(12))  # save_interval 1: 6 batches x 2 epochs
    assert loss.steps(mode=modes.EVAL) == [0, 1]  # one validation batch per epoch


def test_sound_run_passes_loss_not_decreasing_and_vanishing_gradient(sound):
    verdicts = statuses(sound)
    assert set(verdicts) == {"LossNotDecreasing", "VanishingGradient", "Overfit", "Overtraining",
                             "PoorWeightInitialization"}
    assert verdicts["LossNotDecreasing"]["RuleEvaluationStatus"] == "NoIssuesFound", verdicts["LossNotDecreasing"]
    assert verdicts["VanishingGradient"]["RuleEvaluationStatus"] == "NoIssuesFound", verdicts["VanishingGradient"]
    for status in verdicts.values():
        assert status["RuleEvaluationStatus"] in ("NoIssuesFound", "IssuesFound", "Error")
        assert status["RuleEvaluationJobArn"].startswith("arn:aws:sagemaker:")
        assert status["StatusDetails"]


def test_absurd_learning_rate_makes_loss_not_decreasing_find_an_issue(absurd):
    [status] = absurd["DebugRuleEvaluationStatuses"]
    assert status["RuleEvaluationStatus"] == "IssuesFound", status
    finding = status["Finding"]
    assert isinstance(finding["Step"], int) and finding["Step"] >= 0
    loss = finding["Values"]["loss"]
    assert loss != loss or loss > finding["Values"].get("previous_loss", 0)  # NaN, or it rose
    assert f"step {finding['Step']}" in status["StatusDetails"]


def test_near_zero_weights_trip_vanishing_gradient(starved):
    [status] = starved["DebugRuleEvaluationStatuses"]
    assert status["RuleEvaluationStatus"] == "IssuesFound", status
    values = status["Finding"]["Values"]
    assert values["mean_abs"] < values["threshold"] == 1e-7
    assert values["tensor"].startswith("gradient/")


def test_rule_parameters_come_from_the_definition(jobs, sound):
    """The same output judged with different RuleParameters gives a different verdict."""
    debug = jobs.debug_output(sound)
    strict = rule_configs(["VanishingGradient"], VanishingGradient={"threshold": "1e3"})
    [status] = evaluate_rules(strict, debug)
    assert status["RuleEvaluationStatus"] == "IssuesFound"
    assert status["Finding"]["Values"]["threshold"] == 1000.0
    never = rule_configs(["LossNotDecreasing"], LossNotDecreasing={"num_steps": "1000"})
    [status] = evaluate_rules(never, debug)
    assert status["RuleEvaluationStatus"] == "Error" and "no step could be checked" in status["StatusDetails"]


def test_rules_that_cannot_run_say_why_and_never_pass(jobs, sound, tmp_path):
    verdicts = statuses(sound)
    # The hook saves no '.*relu_input' tensors for MobileNetV2 (its activations are ReLU6 modules).
    assert verdicts["PoorWeightInitialization"]["RuleEvaluationStatus"] == "Error"
    assert "activation_inputs_regex" in verdicts["PoorWeightInitialization"]["StatusDetails"]
    debug = jobs.debug_output(sound)
    [unknown, bad] = evaluate_rules(rule_configs(["DeadRelu", "Overfit"], Overfit={"patience": "soon"}), debug)
    assert unknown["RuleEvaluationStatus"] == "Error" and "no local implementation" in unknown["StatusDetails"]
    assert bad["RuleEvaluationStatus"] == "Error" and "patience" in bad["StatusDetails"]
    nothing = evaluate_rules(rule_configs(), tmp_path / "empty")
    assert {s["RuleEvaluationStatus"] for s in nothing} == {"Error"}
    assert all("no Debugger output" in s["StatusDetails"] for s in nothing)


def test_poor_weight_initialization_reads_the_pipelines_activation_inputs(jobs):
    """The pipeline's collection and activation_inputs_regex (one regex) select exactly the inputs
    of MobileNetV2's 35 ReLU6 modules, saved only at the first training steps the rule reads, and
    the rule reaches a verdict on them (not Error)."""
    from pipelines.pipeline import ACTIVATION_INPUTS_COLLECTION, ACTIVATION_INPUTS_REGEX
    from smdebug import modes
    from smdebug.trials import create_trial

    describe = jobs.run("activations", jobs.request(
        {**SOUND, "epochs": "3", "max-train-images": "24", "batch-size": "4"},  # 6 steps an epoch
        rules=rule_configs(["PoorWeightInitialization"],
                           PoorWeightInitialization={"activation_inputs_regex": ACTIVATION_INPUTS_REGEX}),
        collections={"losses": {"save_interval": "1"}, "activation_inputs": ACTIVATION_INPUTS_COLLECTION}))
    assert describe["TrainingJobStatus"] == "Completed", describe.get("FailureReason")
    trial = create_trial(str(jobs.debug_output(describe)))
    names = trial.tensor_names(collection="activation_inputs")
    first = trial.tensor("features.0.2_input_0")
    assert first.steps(mode=modes.TRAIN) == [0, 5]  # of 18 training steps: the rule reads steps < 10
    assert first.steps(mode=modes.EVAL) == []
    expected = {"features.0.2_input_0", "features.1.conv.0.2_input_0", "features.18.2_input_0"} | {
        f"features.{n}.conv.{k}.2_input_0" for n in range(2, 18) for k in (0, 1)}
    assert set(names) == expected  # no block inputs such as 'features.2_input_0'
    [status] = describe["DebugRuleEvaluationStatuses"]
    assert status["RuleEvaluationStatus"] in ("NoIssuesFound", "IssuesFound"), status


def test_parameters_are_typed_with_documented_defaults():
    spec = RULE_SPECS["LossNotDecreasing"][0]
    assert parse_parameters("LossNotDecreasing", spec, {"rule_to_invoke": "LossNotDecreasing"}) == {
        "collection_names": [], "tensor_regex": [], "use_losses_collection": True, "num_steps": 10,
        "diff_percent": 0.1, "increase_threshold_percent": 5.0, "mode": None}
    parsed = parse_parameters("LossNotDecreasing", spec, {"num_steps": "3", "mode": "train", "tensor_regex": "a,b"})
    assert parsed["num_steps"] == 3 and parsed["mode"] == "TRAIN" and parsed["tensor_regex"] == ["a", "b"]
    with pytest.raises(RuleError, match="unknown rule parameter 'nm_steps'"):
        parse_parameters("LossNotDecreasing", spec, {"nm_steps": "3"})


def test_statuses_are_recorded_with_the_job_and_logged(jobs, sound):
    log = open(sound["LogPath"]).read()
    for status in sound["DebugRuleEvaluationStatuses"]:
        assert f"rule {status['RuleConfigurationName']}: {status['RuleEvaluationStatus']}" in log
    json.dumps(sound)  # the describe dict (the step's properties) stays JSON
