"""Training on tiny data against a real sqlite MLflow store: what lands in the store."""

import dataclasses
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

from conftest import artifact, tiny_config
from tftrain.config import TrainConfig
from tftrain.errors import UserError
from tftrain.tracking import runs
from tftrain.training.trainer import train


@pytest.fixture(scope="module")
def run(trained):
    result, _ = trained
    return result, mlflow.get_run(result.run_id)


def metric_steps(run_id, key):
    return [(m.step, m.value) for m in mlflow.MlflowClient().get_metric_history(run_id, key)]


def test_every_config_field_is_a_param(run):
    result, r = run
    expected = TrainConfig.from_dict(_config_of(r)).as_params()
    for key, value in expected.items():
        assert r.data.params[key] == value
    assert r.data.params["registered_model_name"] == "tftrain-fashion-mnist"
    optimizer = json.loads(Path(artifact(r.info.run_id, "optimizer.json")).read_text())
    assert optimizer["name"] == "adam" and not [k for k in r.data.params if k.startswith("optimizer_")]


def _config_of(r):
    path = artifact(r.info.run_id, "config.json")
    return json.loads(Path(path).read_text())


def test_config_artifact_is_the_resolved_config(run, tiny_data):
    result, r = run
    config = _config_of(r)
    assert config["data"]["data_dir"] == str(tiny_data) and config["trainer"]["epochs"] == 3
    assert config["trainer"]["early_stopping"] is False
    assert json.loads((result.out_dir / "config.json").read_text()) == config


def test_epoch_metrics_at_steps_one_to_n(run):
    result, r = run
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "epoch_seconds"):
        steps = metric_steps(result.run_id, key)
        assert [s for s, _ in steps] == [1, 2, 3], key
    # the default warmup-cosine: up to the peak over the first epoch, down to 0 at the last step
    first, middle, last = [v for _, v in metric_steps(result.run_id, "learning_rate")]
    assert first == pytest.approx(0.002) and 0 < middle < first and last == pytest.approx(0.0, abs=1e-9)
    history_loss = [v for _, v in metric_steps(result.run_id, "val_loss")]
    assert history_loss == pytest.approx(result.history["val_loss"], rel=1e-6)


def test_fit_time_and_the_share_spent_tracking_are_logged(run):
    result, r = run
    assert 0 < result.tracking_seconds < result.fit_seconds
    assert r.data.metrics["fit_seconds"] == pytest.approx(result.fit_seconds)
    assert r.data.metrics["tracking_seconds"] == pytest.approx(result.tracking_seconds)
    epochs = sum(v for _, v in metric_steps(result.run_id, "epoch_seconds"))
    assert epochs <= result.fit_seconds


def test_no_stock_validation_metrics_at_step_zero(run):
    _, r = run
    assert not [k for k in r.data.metrics if k.startswith("validation_")]


def test_tags_name_the_versions_and_commit(run):
    _, r = run
    tags = r.data.tags
    assert tags["tensorflow_version"] == "2.21.0" and tags["mlflow_version"] == "3.17.2"
    assert tags["keras_version"].startswith("3.")
    assert len(tags["git_commit"]) == 40 or tags["git_commit"] == "unknown"
    assert tags["mlflow.runName"] == "tiny"
    assert r.info.status == "FINISHED"


def test_model_logged_registered_and_learned(run, tiny_data):
    result, r = run
    model = result.model
    assert model.uri == f"models:/{model.model_id}" and model.run_id == result.run_id
    version = mlflow.MlflowClient().get_model_version("tftrain-fashion-mnist", model.version)
    assert version.run_id == result.run_id and str(version.version) == "1" == model.version
    assert result.history["val_accuracy"][-1] > 0.5  # the tiny data is learnable; chance is 0.1
    info = mlflow.models.get_model_info(model.uri)
    assert info.signature.inputs is None and info.metadata["image_shape"] == [28, 28]
    assert json.loads(info.signature.to_dict()["outputs"])[0] == {"type": "long", "name": "class", "required": True}


def test_example_request_is_logged_and_answers(run):
    result, r = run
    path = artifact(result.run_id, "serving_example.json")
    request = json.loads(Path(path).read_text())
    images = np.array(request["inputs"], dtype=np.float32)
    assert images.shape == (2, 28, 28) and images.max() > 1
    rows = mlflow.pyfunc.load_model(result.model.uri).predict(images)
    probs = np.array([row["probabilities"] for row in rows])
    assert probs.shape == (2, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    assert [row["class"] for row in rows] == list(probs.argmax(axis=1))


def test_checkpoint_and_tensorboard_are_artifacts(run):
    result, _ = run
    client = mlflow.MlflowClient()
    checkpoints = [f.path for f in client.list_artifacts(result.run_id, "checkpoints")]
    assert len(checkpoints) == 1 and checkpoints[0].endswith(".keras")
    assert {f.path for f in client.list_artifacts(result.run_id, "tensorboard")} == {
        "tensorboard/train",
        "tensorboard/validation",
    }
    assert list((result.out_dir / "checkpoints").glob("model_*.keras"))


def test_early_stopping_ends_training_and_restores(store, tiny_data):
    # val_accuracy reaches its ceiling on the tiny data; with patience 0 training cannot run all 30 epochs
    cfg = tiny_config(tiny_data, epochs=30, early_stopping_monitor="val_loss", early_stopping_patience=0,
                      learning_rate=0.05, tensorboard=False, checkpoint=False, model_name="early")  # fmt: skip
    result = train(cfg)
    assert result.epochs_run < 30
    assert len(metric_steps(result.run_id, "loss")) == result.epochs_run


def test_failed_training_marks_the_run_failed(store, tmp_path):
    from conftest import write_dataset

    folder = write_dataset(tmp_path / "data", n_train=50)
    with pytest.raises(UserError, match="validation_split"):
        train(tiny_config(folder, validation_split=0.001))
    assert mlflow.search_runs(search_all_experiments=True).empty  # refused before any run started


def test_unwritable_output_dir_is_refused_before_training(store, tiny_data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match=r"invalid value for output_dir: received '.*file/out'"):
        train(tiny_config(tiny_data, output_dir=str(blocker / "out")))


def test_param_already_logged_by_mlflow_run_in_another_spelling(store, tiny_data):
    """`mlflow run -P learning_rate=2e-3` logs '2e-3'; our '0.002' must not clash with it."""
    with mlflow.start_run() as active:
        mlflow.log_param("learning_rate", "2e-3")
        runs.log_params_once({"learning_rate": "0.002", "epochs": "1"})
        params = mlflow.get_run(active.info.run_id).data.params
    assert params["learning_rate"] == "2e-3" and params["epochs"] == "1"


def test_between_save_points_only_the_best_checkpoint_is_written_once_at_the_end(run):
    """A 3-epoch run takes under the default save_interval of 10 s: one checkpoint file, the best epoch's by
    val_loss (checkpoint_monitor=auto: early stopping's monitor, the one notion of best)."""
    result, _ = run
    (saved,) = (result.out_dir / "checkpoints").glob("*.keras")
    losses = result.history["val_loss"]
    best = losses.index(min(losses))
    assert saved.name == f"model_{best + 1:02d}_{result.history['val_accuracy'][best]:.4f}.keras"


def test_an_epoch_of_a_few_steps_gets_a_word(store, tiny_data, capsys):
    """512 training images in batches of 256: two optimizer steps an epoch, which can leave a model at chance."""
    train(tiny_config(tiny_data, epochs=1, batch_size=256, tensorboard=False))
    assert "note: 512 training images in batches of 256 make 2 steps an epoch; a smaller batch_size (such as 16) " \
           "learns more per epoch" in capsys.readouterr().out  # fmt: skip
    train(tiny_config(tiny_data, epochs=1, batch_size=64, tensorboard=False))
    assert "note:" not in capsys.readouterr().out


def test_a_task_made_in_python_is_what_the_run_says_the_data_is(store, tmp_path, tiny_data):
    """With a Task from Python, the task names the run, the registered model and the logged `dataset` (not the
    config's default fashion_mnist), and two such tasks trained with one config keep separate resume state."""
    from tftrain.models.build import model_builder
    from tftrain.training.run_state import command_state
    from tftrain.training.task import Task

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (64, 8, 8), dtype=np.uint8), rng.integers(0, 2, 64)
    build = model_builder("mlp", 2, (8, 8))
    task = Task("My Digits", ("a", "b"), (x, y), (x[:16], y[:16]), (x[:16], y[:16]), build_model=build)
    cfg = TrainConfig.from_flat(epochs=1, output_dir=str(tmp_path / "out"), precision="float32")
    result = train(cfg, task)
    r = mlflow.get_run(result.run_id)
    assert r.data.tags["mlflow.runName"].startswith("my-digits-")
    assert r.data.params["dataset"] == "My Digits" and r.data.params["model"] == "the task's"
    assert "data_dir" not in r.data.params and "weights" not in r.data.params
    assert result.model.registered_name == "tftrain-my-digits"
    other = Task("My Digits", ("a", "b"), (255 - x, y), (x[:16], y[:16]), (x[:16], y[:16]), build_model=build)
    assert command_state(cfg, task.identity).folder != command_state(cfg, other.identity).folder
    assert task.identity and not dataclasses.replace(task, data_settings={"dataset": "d"}).identity
