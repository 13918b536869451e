"""Code shared by the container scripts (train, evaluate, inference): models, data, artifact.

Shipped next to each script (SageMaker ``source_dir``/``dependencies``), so it imports only
the standard library, torch, torchvision, numpy and PIL.
"""
