"""Hyperparameter sweeps with Optuna: the search space, the study's storage and the trials, each a training run.

May import everything below it (pipeline, training, ship, tracking, data, models). Never cli.
"""
