"""The SageMaker side of the backends (boto3): the model registry (:mod:`.registry`), hosting on
real-time endpoints (:mod:`.hosting`) and what starts the pipelines (:mod:`.triggers`).

``registry`` and ``hosting`` implement the interfaces of :mod:`pipelines.backends`; they import
only the standard library, boto3 and that module, so this package is shipped as a top-level
``aws`` package into the deploy steps' processing container (see ``pipelines.deploy_pipeline``).
"""
