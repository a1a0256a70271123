"""Training: the task (data and model meet), the runtime (strategy, precision, workers), the trainer's phases, the
custom loop, callbacks in one ordered list, schedules, batch norm and resuming.

May import: config, errors, keras_hooks, user_code, checks, data, models, tracking. Never ship, search, cluster, cli.
"""
