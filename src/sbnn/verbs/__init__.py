"""Model verbs: walk a model and apply the method (binarize, convert, prune, stats).

Rule: imports ``sbnn.method`` (and torch, numpy, ``sbnn_runtime``); never models, deploy,
pipeline or cli.
"""
