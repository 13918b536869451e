"""The definition's static arguments reach the scripts with the documented values
(docs/contracts.md): PrepareData's ``--valid-ratio``/``--test-ratio``/``--seed`` as
preprocess.py parses them, and the fixed training hyperparameters (``freeze-backbone`` false,
``momentum``, ``early-stopping-patience``, ``seed``) as train.py parses them after the
training toolkit's decoding (each value JSON-decoded, then ``--name str(value)``)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from pipelines.local.expressions import Context, resolve

REPO = Path(__file__).resolve().parents[1]
KWARGS = {"region": "us-east-1", "default_bucket": "imgpipe-test",
          "role": "arn:aws:iam::111122223333:role/imgpipe-test"}


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def steps(tmp_path_factory) -> dict[str, dict]:
    from pipelines.local.object_store import ObjectStore
    from pipelines.offline import build_definition

    store = ObjectStore(tmp_path_factory.mktemp("store"))
    definition = build_definition("pipelines.pipeline", dict(KWARGS), store=store)
    definition = json.loads(definition) if isinstance(definition, str) else definition
    found: dict[str, dict] = {}

    def collect(items: list) -> None:
        for step in items:
            found[step["Name"]] = step
            collect(step.get("Arguments", {}).get("IfSteps", []) if isinstance(step.get("Arguments"), dict) else [])
            collect(step.get("Arguments", {}).get("ElseSteps", []) if isinstance(step.get("Arguments"), dict) else [])

    collect(definition["Steps"])
    found["__parameters__"] = {p["Name"]: p.get("DefaultValue") for p in definition["Parameters"]}
    return found


def toolkit_cmd_args(hyperparameters: dict) -> list[str]:
    """What SageMaker's training toolkit passes the entry point: JSON-decoded, sorted."""
    args: list[str] = []
    for name in sorted(hyperparameters):
        if name.startswith("sagemaker_"):
            continue
        value = hyperparameters[name]
        try:
            value = json.loads(value)
        except (TypeError, ValueError):
            pass
        args += [f"--{name}", str(value)]
    return args


def test_prepare_data_arguments_are_the_documented_split(steps):
    container = steps["PrepareData"]["Arguments"]["AppSpecification"]["ContainerArguments"]
    pairs = dict(zip(container[::2], container[1::2]))
    assert pairs == {"--input-dir": "/opt/ml/processing/input/data", "--output-dir": "/opt/ml/processing/output",
                     "--valid-ratio": "0.1", "--test-ratio": "0.1", "--seed": "42"}
    preprocess = _load("imgpipe_steps_preprocess_static", REPO / "steps" / "preprocess.py")
    args = preprocess.get_args_parser().parse_args(container)
    assert (args.valid_ratio, args.test_ratio, args.seed) == (0.1, 0.1, 42)
    assert str(args.input_dir) == "/opt/ml/processing/input/data"


@pytest.mark.parametrize("step", ["TuneHyperparameters", "TrainBestModel"])
def test_fixed_training_hyperparameters_reach_train_py(steps, step):
    arguments = steps[step]["Arguments"]
    hps = (arguments["TrainingJobDefinition"]["StaticHyperParameters"] if step == "TuneHyperparameters"
           else arguments["HyperParameters"])
    assert json.loads(hps["freeze-backbone"]) == "false"  # the SDK JSON-encodes static values
    fixed = {k: hps[k] for k in ("freeze-backbone", "momentum", "early-stopping-patience", "seed", "pretrained")}
    resolved = resolve(fixed, Context(parameters=steps["__parameters__"]))
    train = _load("imgpipe_train_static", REPO / "training" / "train.py")
    args, unknown = train.get_args_parser().parse_known_args(toolkit_cmd_args(resolved))
    assert unknown == []
    assert args.freeze_backbone is False and args.pretrained is True
    assert (args.momentum, args.early_stopping_patience, args.seed) == (0.9, 2, 42)
