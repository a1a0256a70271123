"""Everything MLflow about runs and models, a module per job:

- `runs`: starting, continuing and ending a step's run; params, tags, metrics and artifacts; where to look.
- `epoch_metrics`: the Keras callback that logs each epoch.
- `logged_models`: logging, registering, looking up and loading models.
- `journal`: the offline journal a training run writes when the tracking server goes away; `sync` uploads it.

With registry.py (the model registry) and serving.py (the pyfunc flavor), these are the modules that import mlflow.
Each step (train, evaluate, export) logs into the run that is already active (the pipeline's, or the one
`mlflow run` created and named in MLFLOW_RUN_ID), or else starts its own.
"""
