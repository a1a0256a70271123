"""A folder of real photographs of mixed sizes (crops of the photographs scikit-image, scikit-learn and Matplotlib
ship: bench/photos.py) through the main job, as a user runs it: a batch-norm model, a keras.applications model
from scratch and a builder written the Keras way (augmentation and rescaling inside, batch norm) each train a
model well above chance, export it to LiteRT with builtin ops, and register and promote both."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest

from conftest import activated_env, mlflow_run_args, mlflow_store
from servers import running_server
from tftrain.bench.panel import KERAS_WAY_BUILDER
from tftrain.bench.photos import write_photo_folder

pytestmark = pytest.mark.slow

CLASSES = 5
CHANCE = 1 / CLASSES


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photo_folder(tmp_path_factory.mktemp("my-photos") / "photos", 60, classes=CLASSES, seed=1)


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("photo-store")


def main_job(store_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**activated_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{store_dir / 'mlflow.db'}",
           "TFTRAIN_CACHE_DIR": str(store_dir / "cache")}  # fmt: skip
    done = subprocess.run(["tftrain", "pipeline", *args], cwd=store_dir, env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done


def run_of(done: subprocess.CompletedProcess):
    run_id = re.search(r"^run: +\S+ \(([0-9a-f]{32})\)", done.stdout, re.M).group(1)
    return mlflow.get_run(run_id)


# (model, size auto picks, epochs, test accuracy it must beat): plain Keras' batch norm leaves these at chance
# (0.2) on such a folder; MobileNetV2 from scratch learns slower than cnn_bn on 210 training images (0.4-0.65
# measured), so its bar is twice chance; the test split is 30 images
@pytest.mark.parametrize(
    "model, size, epochs, floor", [("cnn_bn", "64x64", 8, 0.5), ("mobilenet_v2", "96x96", 12, 0.4)]
)
def test_the_main_job_on_photos_trains_exports_and_promotes(photos, store_dir, model, size, epochs, floor):
    # in_memory_mb 0: the folder stays on disk, read a batch at a time through training, evaluation and export
    done = main_job(store_dir, "--dataset", str(photos), "--model", model, "--epochs", str(epochs), "--model-name",
                    f"photos-{model}", "--in-memory-mb", "0")  # fmt: skip
    assert f"image_size auto: {size}, a square of the files' median shorter side" in done.stderr + done.stdout
    assert "over in_memory_mb=0: reading them from the cache a batch at a time" in done.stderr + done.stdout
    with mlflow_store(store_dir):
        run = run_of(done)
        metrics, params = run.data.metrics, run.data.params
    assert params["image_size_resolved"] == size and params["augment_resolved"] == "flip"
    assert params["images_from"] == "disk"
    assert 0.9 <= float(params["batch_norm_momentum"]) <= 0.99
    assert metrics["test_accuracy"] >= floor, metrics["test_accuracy"]
    assert "tftrain.warning" not in run.data.tags
    assert abs(metrics["tflite_float32_accuracy_delta"]) < 0.03  # the LiteRT twin answers like the Keras model
    assert f"photos-{model}@champion is now version 1" in done.stdout
    assert f"photos-{model}-litert@champion is now version 1" in done.stdout
    if model == "cnn_bn":
        served_answers_as_predict(store_dir, photos, f"models:/photos-{model}@champion")


def served_answers_as_predict(store_dir: Path, photos: Path, model_uri: str) -> None:
    """The champion behind `mlflow models serve`, sent the folder's own JPEG and PNG files (the docs' "b64"
    requests), answers them as `tftrain predict` does for the same files."""
    files = [sorted(folder.iterdir())[0] for folder in sorted(photos.iterdir())]
    env = {**activated_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{store_dir / 'mlflow.db'}"}
    done = subprocess.run(["tftrain", "predict", "--model-uri", model_uri, *map(str, files), "--format", "json"],
                          cwd=store_dir, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    expected = [row["probabilities"] for row in json.loads(done.stdout)]
    body = json.dumps({"instances": [{"b64": base64.b64encode(f.read_bytes()).decode()} for f in files]}).encode()
    with mlflow_store(store_dir), running_server(model_uri, store_dir / "server.log") as url:
        request = urllib.request.Request(url + "/invocations", body, {"Content-Type": "application/json"})
        answer = json.load(urllib.request.urlopen(request, timeout=60))["predictions"]
    np.testing.assert_allclose([row["probabilities"] for row in answer], expected, atol=1e-5)


def test_a_keras_way_builder_with_augmentation_and_batch_norm_under_mlflow_run(project, photos, tmp_path):
    """The main entry point under `mlflow run`, then evaluate on its own: a builder with RandomFlip and
    RandomRotation inside (taken out of the logged model, so it converts), Rescaling (so it gets raw pixels) and
    batch norm; run named after its file and function."""
    (tmp_path / "keras_way.py").write_text(KERAS_WAY_BUILDER)
    env = {**activated_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("MLFLOW_RUN_ID", None)
    params = {"dataset": photos, "model": f"{tmp_path}/keras_way.py:build", "epochs": 8, "model_name": "keras-way",
              "output_dir": tmp_path / "outputs", "in_memory_mb": 0}  # fmt: skip
    outputs = []
    for entry_point, extra in (("main", params), ("evaluate", {"model_uri": "models:/keras-way/1"})):
        done = subprocess.run(mlflow_run_args(project, entry_point, extra, "photos"), cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)  # fmt: skip
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        outputs.append(done)
    with mlflow_store(tmp_path):
        (main, evaluation) = sorted(
            mlflow.search_runs(experiment_names=["photos"], output_format="list"), key=lambda r: r.info.start_time
        )
    assert main.info.run_name.startswith("keras_way-build-photos-")
    assert main.data.params["augment_resolved"] == "none"  # its own random layers do it
    assert main.data.metrics["test_accuracy"] > CHANCE + 0.3, main.data.metrics["test_accuracy"]
    assert "does not scale pixels itself" not in outputs[0].stdout
    assert evaluation.data.metrics["test_accuracy"] == pytest.approx(main.data.metrics["test_accuracy"])
    assert "decoding" not in outputs[1].stderr  # evaluate found the folder's images in the cache training made
    assert "over in_memory_mb=0: reading them from the cache" in outputs[1].stderr  # and reads them as training did
