"""Deployment: the torch.fx exporter to the runtime's graph, ONNX, and benchmarks.

Rule: imports ``sbnn_runtime``, ``sbnn.method``, ``sbnn.verbs`` and ``sbnn.models``; never the
pipeline or the cli (the commands that read a run folder and call these functions are in
``sbnn.cli``).
"""
