"""Code shared by the container scripts (preprocess, train, evaluate, inference): models, data,
artifact, and the image conversion every one of them applies (pixels).

Shipped next to each script (SageMaker ``source_dir``/``dependencies``), so it imports only
the standard library, torch, torchvision, numpy and PIL.
"""
