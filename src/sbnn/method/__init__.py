"""The method: pure primitives, sign estimators, sparse-binary layers and the sparsity constraint.

Rule: imports torch, numpy and ``sbnn_runtime`` only; never another ``sbnn`` layer.
"""
