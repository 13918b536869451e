"""imgpipe: image classification as SageMaker Pipelines, runnable offline by a local engine.

SageMaker SDK v2 prints a deprecation banner on import unless this variable is set; it is set
here, once, before any module of the package imports ``sagemaker``.
"""
import os

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
