"""Ray: multi-worker training (Ray Train starts, watches and restarts the workers, each running the trainer) and
serving on Ray Serve (replicas of a logged model across the cluster).

May import: training, ship, tracking, checks and the base modules. Never search, cli.
"""
