"""Multi-worker training on Ray: Ray Train starts, watches and restarts the workers, each running the trainer.

May import: training, tracking, checks and the base modules. Never ship, search, cli.
"""
