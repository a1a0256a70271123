"""Run `train` in a fresh process and save what the test compares: `python train_and_save.py OUT.npz KEY=VALUE...`.

Distributed tests need their own processes: logical CPU devices and MultiWorkerMirroredStrategy must be set up
before TensorFlow runs any op, and the test process has long since done that.
"""

import json
import os
import sys

import numpy as np

from tftrain.config import PARAMS, TrainConfig
from tftrain.training.trainer import train


def main(out: str, *pairs: str) -> None:
    fields = PARAMS
    settings = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        kind = fields[key].type
        settings[key] = {"int": int, "float": float, "bool": lambda v: v == "true"}.get(kind, str)(value)
    result = train(TrainConfig.from_flat(**settings))
    if "TF_CONFIG" in os.environ:  # one file per worker
        out = f"{out}-{json.loads(os.environ['TF_CONFIG'])['task']['index']}"
    np.savez(out, *result.keras_model.get_weights())
    with open(out + ".json", "w") as f:
        json.dump({"history": result.history, "run_id": result.run_id}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
