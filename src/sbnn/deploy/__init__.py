"""Deployment: the torch.fx exporter to the runtime's graph, ONNX, and benchmarks.

Rule: imports ``sbnn_runtime``, ``sbnn.method``, ``sbnn.verbs`` and ``sbnn.models``; never the
pipeline or the cli, except that a command handler ``_cmd`` reads its run folder through
``sbnn.pipeline.runs`` / ``sbnn.pipeline.data`` (tests/test_architecture.py holds this exactly).
"""
