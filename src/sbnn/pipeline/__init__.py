"""The training pipeline: config, data, run folders and checkpoints, train, evaluate, sweep, plot.

Rule: may import every layer below it (method, models, verbs, deploy, ``sbnn_runtime``); never
the cli.
"""
