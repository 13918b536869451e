"""imgpipe: image classification on SageMaker Pipelines, runnable offline by a local engine."""
import os

# SageMaker SDK v2 is what the pipelines are written for: no "v3 is out" warning at each import.
os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
