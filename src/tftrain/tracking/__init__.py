"""Everything MLflow about runs and models, a module per job:

- `runs`: starting, continuing and ending a step's run; params, tags, metrics and artifacts; where to look.
- `epoch_metrics`: the Keras callback that logs each epoch.
- `logged_models`: logging, registering, looking up and loading models.
- `journal`: the offline journal a training run writes when the tracking server goes away; `sync` uploads it.
- `store`: the tracking store itself: is it reachable, does a run or model exist.

May import: config, errors, serving (the pyfunc flavor). Never data, models, training, ship, search, cluster, cli.
The modules above it that import mlflow themselves are ship.registry, search, cluster and bench; config, data,
models and checks never do (pyproject's import contracts).
"""
