"""imgpipe: image classification built, tuned, gated, registered and deployed with
Amazon SageMaker Pipelines, and runnable end to end offline from the same definition."""
from setuptools import setup

# The container scripts in steps/, training/ and inference/ are shipped to SageMaker as
# source directories by the pipeline definition; they are not installed as packages.
# Their shared code (training/imgclf) is also installed so the CLIs can use it.
INSTALL_REQUIRES = [
    "sagemaker>=2.257,<3",  # v3 removed sagemaker.workflow, Debugger rules and profiler config
    "boto3>=1.35",
    "torch==2.14.1",
    "torchvision==0.29.1",
    "smdebug==1.0.34",
    # smdebug 1.0.34 breaks with numpy 2 (ndarray.tostring), pandas 3 and newer protobuf.
    "numpy>=1.24,<2",
    "pandas<3",
    "protobuf>=3.20,<=3.20.3",
    "requests>=2.31",  # smdebug imports it without declaring it
    "psutil>=5.9",  # smdebug imports it without declaring it; also the profiler sampler
    "Pillow>=10,<14",
    "matplotlib>=3.8,<4",
    "optuna>=4,<6",  # Bayesian (TPE) / random / grid search for local tuning
    "scikit-learn>=1.3,<2",  # only for the small 'digits' sample dataset
    "waitress==3.0.2",  # the local endpoint's HTTP server (inference/serve.py)
    # moto's in-process AWS is how definitions are built offline (code uploads are
    # captured and copied into the local object store, never sent anywhere).
    "moto[s3]>=5,<6",
]

CONTAINER_TOOLKITS = [
    "sagemaker-training==5.1.4",
    "sagemaker-inference==1.10.1",
    "sagemaker-pytorch-inference==2.0.25",
]

setup(
    name="imgpipe",
    version="0.1.0",
    description="Image classification on SageMaker Pipelines, runnable end to end offline.",
    long_description=__doc__,
    long_description_content_type="text/plain",
    python_requires=">=3.10,<3.13",
    packages=["pipelines", "pipelines.aws", "pipelines.local", "pipelines.report", "imgclf"],
    package_dir={"imgclf": "training/imgclf"},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # retrying: imported by the container toolkits below (their only missing dependency here).
        "test": [
            "pytest>=8",
            "moto[server]>=5,<6",
            "cfn-lint>=1.58,<2",
            "retrying>=1.3.4,<1.4",
            "hypothesis==6.170.15",  # property-based tests (tests/test_properties_*.py)
            "cosmic-ray==8.7.0",  # mutation testing: make mutation (docs/testing.md)
            "coverage==7.17.5",  # per-test coverage picks the tests each mutant runs (mutation/warm.py)
            "pyflakes>=3,<5",
        ],
        # AWS's own container toolkits, the oracle for the container contract in the tests.
        # Install them with `pip install --no-deps` (the Makefile and buildspec.yml do): their
        # declared protobuf>=5.28 clashes with smdebug's protobuf<=3.20.3, yet they run with it.
        "toolkits": CONTAINER_TOOLKITS,
    },
    entry_points={
        "console_scripts": [
            "imgpipe=pipelines.cli:main",
            "get-pipeline-definition=pipelines.get_pipeline_definition:main",
            "run-pipeline=pipelines.run_pipeline:main",
        ]
    },
)
