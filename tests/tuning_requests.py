"""One-script local tuning jobs for the tests: a LocalSageMaker whose object store holds a single
training script, and a CreateHyperParameterTuningJob request that tunes its ``--level``.
"""
from __future__ import annotations

import json
from pathlib import Path

from scripts import put_tarball

BUCKET = "imgpipe-local"


def one_script_api(tmp_path: Path, program: str, source: str):
    """A one-core ``LocalSageMaker`` with ``program`` (its ``source`` text) as the code tarball
    ``s3://imgpipe-local/code/<stem>/sourcedir.tar.gz`` and one file in the training channel."""
    from pipelines.local.object_store import ObjectStore
    from pipelines.local.sagemaker_api import LocalSageMaker
    from pipelines.settings import Settings

    settings = Settings(home=tmp_path / "home")
    store = ObjectStore(settings.s3_root)
    put_tarball(store, f"s3://{BUCKET}/code/{Path(program).stem}/sourcedir.tar.gz", {program: source})
    store.put_bytes(f"s3://{BUCKET}/data/train/a.txt", b"x")
    return LocalSageMaker(settings, store, cores=1)


def level_tuning_request(program: str, values: list[str], *, strategy: str, max_jobs: int, objective: str,
                         metrics: list[str], resource_key: str = "HyperParameterTuningResourceConfig") -> dict:
    """Tune the categorical ``level`` over ``values`` for ``program`` (put by ``one_script_api``),
    one trial at a time; ``objective`` is ``"Maximize"``/``"Minimize"`` of ``metrics[0]``, and each
    metric is read from ``<name>=<number>`` lines. ``resource_key``: where the instance type goes
    (``ResourceConfig`` is the fallback a tuning job also accepts)."""
    return {
        "HyperParameterTuningJobConfig": {
            "Strategy": strategy,
            "ResourceLimits": {"MaxNumberOfTrainingJobs": max_jobs, "MaxParallelTrainingJobs": 1},
            "TrainingJobEarlyStoppingType": "Off",
            "HyperParameterTuningJobObjective": {"Type": objective, "MetricName": metrics[0]},
            "ParameterRanges": {"CategoricalParameterRanges": [{"Name": "level", "Values": values}]},
        },
        "TrainingJobDefinition": {
            "StaticHyperParameters": {
                "sagemaker_submit_directory": json.dumps(f"s3://{BUCKET}/code/{Path(program).stem}/sourcedir.tar.gz"),
                "sagemaker_program": json.dumps(program), "sagemaker_region": '"us-east-1"',
            },
            "RoleArn": "arn:aws:iam::000000000000:role/x",
            "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/tuning"},
            "StoppingCondition": {"MaxRuntimeInSeconds": 120},
            resource_key: {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30},
            "AlgorithmSpecification": {"TrainingInputMode": "File", "TrainingImage": "pytorch-training:2.1-cpu-py310",
                                       "MetricDefinitions": [{"Name": name, "Regex": f"{name}=([0-9.]+)"}
                                                             for name in metrics]},
            "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/data/train"}}}],
        },
    }
