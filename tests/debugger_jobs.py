"""Real local training jobs with the Debugger hook, rules and Profiler, for the Debugger,
Profiler and report tests: ``training/train.py`` on rendered digits, through the local
engine's job runner (hook config, rule evaluation and sampler exactly as in a pipeline)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

from pipelines.datasets import sample_dataset
from pipelines.local.object_store import ObjectStore
from pipelines.local.sagemaker_api import LocalSageMaker
from pipelines.settings import Settings

REPO = Path(__file__).resolve().parent.parent
BUCKET = "imgpipe-debug"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.1-cpu-py310"
RULES = ("LossNotDecreasing", "VanishingGradient", "Overfit", "Overtraining", "PoorWeightInitialization")
# A wrapper entry point (test code only) that scales every initial weight down, to starve
# the gradients: the way to make VanishingGradient trip without touching train.py.
SCALED_ENTRY = '''
import os, sys, torch, train
_build = train.build_model
def build_model(*args, **kwargs):
    model = _build(*args, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(float(os.environ.get("WEIGHT_SCALE", "1e-4")))
    return model
train.build_model = build_model
sys.exit(train.main())
'''


def rule_configs(names=RULES, **parameters: dict) -> list[dict]:
    """``DebugRuleConfigurations`` as the SDK compiles ``Rule.sagemaker(rule_configs.x())``."""
    return [{"RuleConfigurationName": n, "RuleEvaluatorImage": "503895931360.dkr.ecr.us-east-1.amazonaws.com/"
             "sagemaker-debugger-rules:latest", "RuleParameters": {"rule_to_invoke": n, **parameters.get(n, {})}}
            for n in names]


class DebugJobs:
    """A local job runner over its own IMGPIPE home, with rendered digits in its store."""

    def __init__(self, root: Path, per_class: int = 10):
        self.root = root
        self.settings = Settings(home=root / "home")
        self.store = ObjectStore(self.settings.s3_root)
        self.api = LocalSageMaker(self.settings, self.store, on_event=lambda e: None)
        data = root / "digits"
        sample_dataset("digits", data, per_class=per_class)
        self.data_uri = f"s3://{BUCKET}/data/digits"
        self.store.upload(data, self.data_uri)
        code = root / "code"
        shutil.copytree(REPO / "training", code, ignore=shutil.ignore_patterns("__pycache__"))
        (code / "train_scaled.py").write_text(SCALED_ENTRY)
        self.code_dir = code

    def request(self, hyperparameters: dict, rules: Optional[list[dict]] = None, program: str = "train.py",
                profiler_ms: Optional[int] = None, collections: Optional[dict] = None,
                environment: Optional[dict] = None) -> dict:
        hps = {"arch": '"mobilenet_v2"', "pretrained": '"false"', "epochs": "2", "batch-size": "10",
               "image-size": "32", "workers": "1", "augment": '"false"', "warmup-epochs": "0",
               **{k: str(v) for k, v in hyperparameters.items()}}
        collections = collections or {"losses": {"save_interval": "1"}, "gradients": {"save_interval": "4"},
                                      "weights": {"save_interval": "4"}}
        request: dict[str, Any] = {
            "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File", "MetricDefinitions": [
                {"Name": n, "Regex": rf"{n}=([-0-9.naif]+)"} for n in
                ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy")]},
            "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/training"},
            "StoppingCondition": {"MaxRuntimeInSeconds": 300},
            "ResourceConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30},
            "RoleArn": "arn:aws:iam::000000000000:role/x",
            "InputDataConfig": [{"ChannelName": c, "DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": self.data_uri, "S3DataDistributionType": "FullyReplicated"}}}
                for c in ("train", "valid")],
            "HyperParameters": {**hps, "sagemaker_submit_directory": json.dumps(str(self.code_dir)),
                                "sagemaker_program": json.dumps(program), "sagemaker_region": '"us-east-1"'},
            "DebugHookConfig": {"S3OutputPath": f"s3://{BUCKET}/debugger", "CollectionConfigurations": [
                {"CollectionName": n, "CollectionParameters": p} for n, p in collections.items()]},
            "DebugRuleConfigurations": rule_configs() if rules is None else rules,
            "Environment": dict(environment or {}),
        }
        if profiler_ms:
            request["ProfilerConfig"] = {"S3OutputPath": f"s3://{BUCKET}/profiler", "DisableProfiler": False,
                                         "ProfilingIntervalInMilliseconds": profiler_ms}
            request["ProfilerRuleConfigurations"] = [{"RuleConfigurationName": "ProfilerReport", "RuleParameters": {
                "rule_to_invoke": "ProfilerReport"}}]
        return request

    def run(self, name: str, request: dict) -> dict:
        return self.api.run_training_job(request, name)

    def debug_output(self, describe: dict) -> Path:
        """The job's Debugger output in the local object store (SageMaker's S3 layout)."""
        uri = f"{describe['DebugHookConfig']['S3OutputPath']}/{describe['TrainingJobName']}/debug-output"
        return self.store.path(uri)


def statuses(describe: dict) -> dict[str, dict]:
    return {s["RuleConfigurationName"]: s for s in describe.get("DebugRuleEvaluationStatuses") or []}
