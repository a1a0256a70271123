"""A user's own images and own models through the whole chain, as commands: train (or the main job), evaluate,
export, promote, `mlflow models serve` answering with the folder's class names, and `tftrain predict`.

Real image files on disk (PNG, JPEG, BMP and GIF, one corrupt), real TensorFlow, a real MLflow store, real servers
on 127.0.0.1."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from PIL import Image

from conftest import activated_env, mlflow_store
from servers import running_server
from tftrain.tracking.logged_models import resolve_model

pytestmark = pytest.mark.slow

COLOURS = ("blue", "green", "red")  # sorted, as the class folders are
SHAPE = (40, 30)  # height, width: not square


def colour_image(rng, colour: str, size: tuple[int, int]) -> Image.Image:
    """Noise with one strong channel: the class is the dominant colour."""
    height, width = size
    pixels = rng.integers(0, 90, size=(height, width, 3))
    pixels[..., ("red", "green", "blue").index(colour)] += 150
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")


def write_colour_folder(root: Path, per_class: int = 30, seed: int = 0) -> Path:
    """PATH/<colour>/<images>: mostly 40x30 PNG and JPEG, a few BMP and GIF of other sizes, and one corrupt file."""
    rng = np.random.default_rng(seed)
    for colour in COLOURS:
        folder = root / colour
        folder.mkdir(parents=True)
        for i in range(per_class):
            odd = i % 10 == 9
            image = colour_image(rng, colour, (50, 36) if odd else SHAPE)
            suffix = (".bmp", ".gif")[i % 2] if odd else (".png", ".jpg")[i % 2]
            image.save(folder / f"{colour}_{i:03d}{suffix}")
    (root / "green" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (root / "red" / "notes.txt").write_text("not an image: ignored, and counted")
    return root


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory) -> Path:
    return write_colour_folder(tmp_path_factory.mktemp("my-colours") / "colours")


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("own-data-store")


def tftrain(store_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**activated_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{store_dir / 'mlflow.db'}",
           "TFTRAIN_CACHE_DIR": str(store_dir / "cache")}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "tftrain", *args], cwd=store_dir, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    if check and done.returncode != 0:
        raise AssertionError(
            f"tftrain {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done


def served_answers(model_uri: str, images: np.ndarray, log: Path) -> list[dict]:
    with running_server(model_uri, log) as url:
        request = urllib.request.Request(
            url + "/invocations", json.dumps({"inputs": images.tolist()}).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["predictions"]


def fresh_images(count_per_class: int = 2, size=SHAPE, seed: int = 7) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    images, names = [], []
    for colour in COLOURS:
        for _ in range(count_per_class):
            images.append(np.asarray(colour_image(rng, colour, size)))
            names.append(colour)
    return np.stack(images), names


@pytest.fixture(scope="module")
def main_job(colour_folder, store_dir):
    """The main job on the colour folder, as a user types it: bad image skipped, the rest trained, evaluated,
    exported, promoted."""
    done = tftrain(store_dir, "pipeline", "--dataset", str(colour_folder), "--model", "cnn", "--epochs", "8",
                   "--batch-size", "8", "--bad-images", "skip", "--early-stopping", "false", "--run-name", "colours")  # fmt: skip
    with mlflow_store(store_dir):
        (run_id,) = mlflow.search_runs(search_all_experiments=True, filter_string="tags.mlflow.runName = 'colours'")[
            "run_id"
        ]
        yield done, mlflow.get_run(run_id)


def test_the_main_job_trains_a_folder_and_logs_what_it_resolved(main_job, colour_folder):
    done, run = main_job
    assert "broken.png" in done.stderr  # named once, and skipped
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["image_size_resolved"] == "40x30" and params["channels_resolved"] == "3"
    # what was found in the folder: tags, not params to compare runs on
    assert tags["bad_images_skipped"] == "1" and tags["dataset_resolved"] == str(colour_folder.resolve())
    assert tags["ignored_files"] == "1" and "ignoring 1 file(s)" in done.stderr
    assert not {"bad_images_skipped", "dataset_resolved", "ignored_files"} & set(params)
    # the splits it trained and was evaluated on, each from the folder, with its context
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["colours-test", "colours-train", "colours-validation"]
    assert {json.loads(i.dataset.source)["uri"] for i in inputs.values()} == {str(colour_folder.resolve())}
    assert [t.value for t in inputs["colours-test"].tags] == ["test"]
    assert params["registered_model_name"] == "tftrain-colours"
    assert metrics["test_accuracy"] >= 0.9  # labels follow the folders: colour is easy to learn
    assert {f"test_f1_{c}" for c in COLOURS} <= set(metrics)
    assert "tftrain-colours@champion is now version 1" in done.stdout
    assert "tftrain-colours-litert@champion is now version 1" in done.stdout


def test_the_main_job_evaluates_both_models_and_shows_the_errors(main_job, store_dir):
    """The Keras model's table and confused pairs printed; the LiteRT model evaluated in the same run, under
    litert_ metrics linked to it and evaluation/litert/ artifacts; the run's test_accuracy stays the Keras one's."""
    done, run = main_job
    assert "per class, worst F1 first:\nclass  precision  recall      F1  support\n" in done.stdout
    assert re.search(
        r"^test accuracy:  [01]\.\d{4}\n {16}[01]\.\d{4} \(the LiteRT model, evaluation/litert/\)$", done.stdout, re.M
    )
    metrics = run.data.metrics
    assert {"test_ece", "litert_test_accuracy", "litert_test_ece", "litert_test_f1_red"} <= set(metrics)
    assert "test_top5_accuracy" not in metrics  # 3 classes
    assert metrics["litert_test_accuracy"] == pytest.approx(metrics["tflite_float32_test_accuracy"])
    with mlflow_store(store_dir):
        client = mlflow.MlflowClient()
        assert len(client.get_metric_history(run.info.run_id, "test_accuracy")) == 1
        files = {f.path for f in client.list_artifacts(run.info.run_id, "evaluation/litert")}
        litert = resolve_model("models:/tftrain-colours-litert/1").model_id
        linked = {m.key for m in mlflow.get_logged_model(litert).metrics}
    assert {f"evaluation/litert/{name}" for name in ("mistakes.png", "reliability.png", "per_class.csv")} <= files
    assert {"litert_test_accuracy", "tflite_float32_test_accuracy"} <= linked


@pytest.mark.parametrize("name", ["tftrain-colours", "tftrain-colours-litert"])
def test_both_champions_serve_the_folder_class_names(main_job, store_dir, name):
    images, expected = fresh_images()
    with mlflow_store(store_dir):
        answers = served_answers(f"models:/{name}@champion", images, store_dir / f"{name}.log")
    assert [a["class_name"] for a in answers] == expected
    assert all(len(a["probabilities"]) == 3 for a in answers)


def test_predict_labels_any_picture_of_any_size(main_job, store_dir, tmp_path):
    rng = np.random.default_rng(11)
    expected = {}
    for i, colour in enumerate(COLOURS):
        path = tmp_path / "new" / ("sub" if i else "") / f"{colour}{('.png', '.jpeg', '.bmp')[i]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        colour_image(rng, colour, (64, 48)).save(path)
        expected[str(path)] = colour
    done = tftrain(store_dir, "predict", "--model-uri", "models:/tftrain-colours@champion", str(tmp_path / "new"))
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert {row["input"]: row["class_name"] for row in rows} == expected


BUILDER = '''
import keras


def build(input_shape, num_classes):
    """A user's own small network: logits out, no softmax."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name="my_net")
'''


def _trained_model(store_dir: Path, run_name: str) -> tuple[str, dict]:
    with mlflow_store(store_dir):
        (run_id,) = mlflow.search_runs(
            search_all_experiments=True, filter_string=f"tags.mlflow.runName = '{run_name}'"
        )["run_id"]
        run = mlflow.get_run(run_id)
        (model,) = mlflow.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'", output_format="list"
        )
        return f"models:/{model.model_id}", run.data.params


def _serves_and_predicts(store_dir: Path, model_uri: str, size=SHAPE) -> None:
    images, expected = fresh_images(1, size)
    with mlflow_store(store_dir):
        local = mlflow.pyfunc.load_model(model_uri).predict(images.astype(np.float32))
        served = served_answers(model_uri, images, store_dir / "server.log")
    assert [a["class_name"] for a in served] == [a["class_name"] for a in local]
    assert {a["class_name"] for a in served} <= set(COLOURS)
    np.testing.assert_allclose([a["probabilities"] for a in served], [a["probabilities"] for a in local], atol=1e-5)


def test_a_user_builder_file_trains_serves_and_predicts(colour_folder, store_dir, tmp_path):
    builder = tmp_path / "my_model.py"
    builder.write_text(BUILDER)
    tftrain(store_dir, "train", "--dataset", str(colour_folder), "--model", f"{builder}:build", "--epochs", "2",
            "--batch-size", "16", "--bad-images", "skip", "--run-name", "builder")  # fmt: skip
    uri, params = _trained_model(store_dir, "builder")
    assert params["model"] == f"{builder}:build"
    _serves_and_predicts(store_dir, uri)


def test_a_folder_trains_mirrored_in_bfloat16_on_a_schedule(colour_folder, store_dir):
    """The runtime and schedule options are the same road for a folder task as for the built-ins: two replicas
    (logical CPUs), mixed_bfloat16, warmup-cosine, the custom engine, on colour images."""
    tftrain(store_dir, "train", "--dataset", str(colour_folder), "--model", "cnn", "--engine", "custom",
            "--strategy", "mirrored", "--cpu-replicas", "2", "--precision", "mixed_bfloat16", "--lr-schedule",
            "warmup_cosine", "--warmup-steps", "2", "--epochs", "2", "--batch-size", "8", "--bad-images", "skip",
            "--run-name", "mirrored-folder")  # fmt: skip
    uri, params = _trained_model(store_dir, "mirrored-folder")
    assert params["strategy_resolved"] == "mirrored" and params["replicas"] == "2"
    assert params["global_batch_size"] == "16" and params["image_size_resolved"] == "40x30"
    with mlflow_store(store_dir):
        run_id = mlflow.search_runs(search_all_experiments=True,
                                    filter_string="tags.mlflow.runName = 'mirrored-folder'")["run_id"][0]  # fmt: skip
        rates = [m.value for m in mlflow.MlflowClient().get_metric_history(run_id, "learning_rate")]
    assert len(rates) == 2 and rates[1] < rates[0]  # the cosine decays
    _serves_and_predicts(store_dir, uri)


def test_a_keras_application_trains_one_epoch_on_small_rgb_images(colour_folder, store_dir):
    tftrain(store_dir, "train", "--dataset", str(colour_folder), "--model", "mobilenet_v3_small", "--image-size",
            "32x32", "--epochs", "1", "--batch-size", "16", "--bad-images", "skip", "--run-name", "application")  # fmt: skip
    uri, params = _trained_model(store_dir, "application")
    assert params["image_size_resolved"] == "32x32"
    _serves_and_predicts(store_dir, uri, (32, 32))


def test_fine_tuning_from_a_weights_file_leaves_the_frozen_backbone_alone(colour_folder, store_dir, tmp_path):
    backbone = keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    weights = tmp_path / "pretrained.weights.h5"
    backbone.save_weights(weights)
    tftrain(store_dir, "train", "--dataset", str(colour_folder), "--model", "mobilenet_v3_small", "--image-size",
            "32x32", "--weights", str(weights), "--freeze-backbone", "true", "--epochs", "2", "--batch-size", "16",
            "--bad-images", "skip", "--run-name", "fine-tuned")  # fmt: skip
    uri, _ = _trained_model(store_dir, "fine-tuned")
    with mlflow_store(store_dir):
        trained = mlflow.keras.load_model(uri)
    inner = next(layer for layer in trained.layers if isinstance(layer, keras.Model))
    for after, before in zip(inner.get_weights(), backbone.get_weights(), strict=True):
        np.testing.assert_array_equal(after, before)
    head_before = trained.get_layer("logits").get_weights()[0]
    assert np.abs(head_before).sum() > 0  # the head exists and was trained (a zero head would be suspicious)
    _serves_and_predicts(store_dir, uri, (32, 32))


def test_a_keras_file_continues_training(main_job, store_dir, tmp_path):
    _, run = main_job
    (checkpoint,) = sorted((store_dir / "outputs" / run.info.run_id / "checkpoints").glob("*.keras"))[-1:]
    done = tftrain(store_dir, "train", "--dataset", run.data.tags["dataset_resolved"], "--model", str(checkpoint),
                   "--epochs", "1", "--batch-size", "8", "--bad-images", "skip", "--run-name", "continued")  # fmt: skip
    assert "training " in done.stdout
    uri, _ = _trained_model(store_dir, "continued")
    with mlflow_store(store_dir):
        (run_id,) = mlflow.search_runs(search_all_experiments=True, filter_string="tags.mlflow.runName = 'continued'")[
            "run_id"
        ]
        metrics = mlflow.get_run(run_id).data.metrics
    assert metrics["val_accuracy"] >= 0.8  # it started from the trained weights, not from scratch
    _serves_and_predicts(store_dir, uri)


def test_folder_mistakes_are_one_line_before_training(tmp_path, store_dir):
    one_class = tmp_path / "one"
    (one_class / "only").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(one_class / "only" / "a.png")
    done = tftrain(store_dir, "train", "--dataset", str(one_class), check=False)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("tftrain: error:") and "class" in line


@pytest.fixture(scope="module")
def fashion_subset():
    """The first 12,000 training and 2,000 test images of the real Fashion-MNIST (Debian's package)."""
    from tftrain.data.datasets import load_dataset

    data = load_dataset("fashion_mnist")
    return (data.x_train[:12000], data.y_train[:12000]), (data.x_test[:2000], data.y_test[:2000]), data.class_names


def write_png_tree(root: Path, split: str, images: np.ndarray, labels: np.ndarray, names) -> None:
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / split / names[label].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, "L").save(folder / f"{i:05d}.png")


def test_fashion_mnist_as_png_folders_trains_like_the_idx_files(fashion_subset, tmp_path, monkeypatch):
    """The same images through an image folder (decoded, cached, split by folder) and as arrays through the Python
    API's Task: the same test accuracy within noise."""
    from conftest import mlflow_store as store
    from tftrain.config import TrainConfig
    from tftrain.data.datasets import split_validation
    from tftrain.models.build import model_builder
    from tftrain.training.task import Task, resolve_task
    from tftrain.training.trainer import train

    (x, y), (x_test, y_test), names = fashion_subset
    root = tmp_path / "fashion-png"
    write_png_tree(root, "train", x, y, names)
    write_png_tree(root, "test", x_test, y_test, names)
    monkeypatch.setenv("TFTRAIN_CACHE_DIR", str(tmp_path / "cache"))
    settings = dict(epochs=4, batch_size=128, early_stopping=False, tensorboard=False, output_dir=str(tmp_path / "o"))
    with store(tmp_path):
        folder_cfg = TrainConfig.from_flat(dataset=str(root), **settings)
        task = resolve_task(folder_cfg)
        assert task.input_shape == (28, 28) and len(task.test[0]) == 2000 and task.num_classes == 10
        from_folder = train(folder_cfg, task)
        train_xy, val_xy = split_validation(x, y, 0.2)
        arrays = Task("fashion-arrays", names, train_xy, val_xy, (x_test, y_test), model_builder("mlp", 10, (28, 28)))
        from_arrays = train(TrainConfig.from_flat(model_name="fashion-arrays", **settings), arrays)
    accuracies = []
    for result, data in ((from_folder, task), (from_arrays, arrays)):  # each with its own label order
        probs = result.keras_model.predict(data.test[0].astype(np.float32), verbose=0)
        accuracies.append(float((probs.argmax(1) == data.test[1]).mean()))
    assert sorted(task.class_names) == list(task.class_names) and "T-shirt-top" in task.class_names
    assert accuracies[1] > 0.75
    assert abs(accuracies[0] - accuracies[1]) < 0.03, accuracies
