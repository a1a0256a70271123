"""After training: evaluate a logged model, export it (SavedModel, TFLite), gate and promote it in the registry,
predict on files and serve it.

May import: config, errors, serving, checks, data, models, tracking. Never training, search, cluster, cli.
"""
