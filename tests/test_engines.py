"""The custom engine, precision policies and tf.distribute strategies, on tiny data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

from conftest import tiny_config
from tftrain.errors import UserError
from tftrain.ship.export import export
from tftrain.training.trainer import train

TRAIN_AND_SAVE = Path(__file__).with_name("train_and_save.py")


@pytest.fixture
def float32_afterwards():
    yield
    keras.mixed_precision.set_global_policy("float32")


def run_layout(run_id):
    run = mlflow.get_run(run_id)
    artifacts = {f.path for f in mlflow.MlflowClient().list_artifacts(run_id)}
    return set(run.data.metrics), set(run.data.params), artifacts


def test_custom_engine_gives_the_same_run_layout_as_fit(store, tiny_data):
    fit = train(tiny_config(tiny_data, engine="fit", run_name="fit"))
    custom = train(tiny_config(tiny_data, engine="custom", run_name="custom"))
    assert run_layout(fit.run_id) == run_layout(custom.run_id)
    assert set(custom.history) == set(fit.history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert custom.history["val_accuracy"][-1] > 0.5
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(custom.run_id, "val_loss")]
    assert steps == [1, 2]
    assert mlflow.get_run(custom.run_id).data.params["strategy_resolved"] == "default"  # auto, one device


def test_custom_engine_honours_early_stopping_and_checkpoints(store, tiny_data):
    cfg = tiny_config(tiny_data, engine="custom", epochs=30, early_stopping_patience=0, learning_rate=0.05,
                      tensorboard=False)  # fmt: skip
    result = train(cfg)
    assert result.epochs_run < 30
    assert list((result.out_dir / "checkpoints").glob("model_*.keras"))


@pytest.mark.parametrize("engine", ["fit", "custom"])
@pytest.mark.parametrize("precision, compute", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision(store, tiny_data, float32_afterwards, engine, precision, compute):
    result = train(tiny_config(tiny_data, engine=engine, precision=precision, model_name=f"p-{engine}"))
    # the model computes in the policy; Keras' global policy is back as it was for whatever the process builds next
    assert keras.mixed_precision.global_policy().name == "float32"
    model = result.keras_model
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert {layer.compute_dtype for layer in dense} == {compute}
    assert model.layers[-1].compute_dtype == "float32"  # the softmax
    metrics = mlflow.get_run(result.run_id).data.metrics
    assert ("loss_scale" in metrics) == (precision == "mixed_float16")
    if precision == "mixed_float16":
        assert metrics["loss_scale"] > 1  # dynamic loss scaling is on
    images = np.random.default_rng(0).integers(0, 256, size=(4, 28, 28)).astype(np.float32)
    rows = mlflow.pyfunc.load_model(result.model.uri).predict(images.astype(np.uint8))  # pyfunc: any precision
    probs = np.array([row["probabilities"] for row in rows], dtype=np.float32)
    assert probs.shape == (4, 10)
    keras_probs = mlflow.keras.load_model(result.model.uri).predict(images.astype(np.uint8), verbose=0)
    np.testing.assert_allclose(keras_probs, probs, atol=1e-6)
    exported = export(result.model.uri, data_dir=str(tiny_data), output_dir="exports")
    assert all(r.test_accuracy > 0.5 and abs(r.accuracy_delta) < 0.05 for r in exported.results)


def train_in_processes(*runs: tuple[Path, dict]) -> list[tuple[list[np.ndarray], dict]]:
    """Each (out, settings) trained in a process of its own, all at once (their start-up overlaps), each in its own
    folder (its own default store); the weights and the log of each."""
    processes = []
    for out, settings in runs:
        out.parent.mkdir(parents=True, exist_ok=True)
        args = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in settings.items()]
        processes.append(subprocess.Popen([sys.executable, str(TRAIN_AND_SAVE), str(out), *args], cwd=out.parent,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))  # fmt: skip
    results = []
    for (out, _), process in zip(runs, processes, strict=True):
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-4000:]
        weights = np.load(f"{out}.npz")
        results.append(([weights[k] for k in weights.files], json.loads(Path(f"{out}.json").read_text())))
    return results


@pytest.mark.parametrize("engine", ["fit", "custom"])
def test_mirrored_on_two_cpu_replicas_matches_one_device(tmp_path, tiny_data, engine):
    """Same seed, same global batch of 64: 1 device x 64 against 2 logical CPU devices x 32. The CNN has no
    dropout, so the two runs differ only by summation order; tolerance 1e-4 on the loss, 1e-3 on weights."""
    common = dict(
        data_dir=tiny_data,
        model="cnn",
        engine=engine,
        epochs=2,
        early_stopping="false",
        tensorboard="false",
        checkpoint="false",
        model_name="m",
        precision="float32",
    )  # fmt: skip  (auto may pick bfloat16, whose rounding the tolerance is not for)
    (one, one_log), (two, two_log) = train_in_processes(
        (tmp_path / "one" / "w", dict(strategy="one_device", batch_size=64, output_dir=tmp_path / "one", **common)),
        (tmp_path / "two" / "w", dict(strategy="mirrored", cpu_replicas=2, batch_size=32, output_dir=tmp_path / "two",
                                      **common)),  # fmt: skip
    )
    np.testing.assert_allclose(two_log["history"]["loss"], one_log["history"]["loss"], rtol=1e-4)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-3, rtol=1e-3)
    assert len(two_log["history"]["loss"]) == 2 and one_log["history"]["loss"][1] < one_log["history"]["loss"][0]


def test_two_workers_under_a_schedulers_tf_config(tmp_path, tiny_data):
    """strategy=multi_worker without a launcher, in the TF_CONFIG a scheduler gives each process: two local
    workers on 127.0.0.1, one MLflow run, identical weights at the end."""
    from servers import tf_config_workers

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "w"
    settings = [f"data_dir={tiny_data}", "strategy=multi_worker", "epochs=3", "batch_size=8", "model_name=mw",
                "model=cnn_bn",  # batch norms: their moving averages too end the same on both workers
                f"output_dir={tmp_path / 'out'}"]  # fmt: skip
    workers = tf_config_workers(2, [sys.executable, str(TRAIN_AND_SAVE), str(out), *settings], cwd=tmp_path,
                                env={**os.environ, "MLFLOW_TRACKING_URI": uri}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
    for worker in workers:
        output, _ = worker.communicate(timeout=600)
        assert worker.returncode == 0, output[-5000:]
    mlflow.set_tracking_uri(uri)
    try:
        (run_id,) = mlflow.search_runs(search_all_experiments=True)["run_id"]
        history = mlflow.MlflowClient().get_metric_history(run_id, "loss")
        assert [m.step for m in history] == [1, 2, 3]
        run = mlflow.get_run(run_id)
        assert run.data.params["workers_resolved"] == "2" and run.data.params["replicas"] == "2"
        assert run.data.params["engine_resolved"] == "custom"  # engine=auto under strategy=multi_worker
        assert run.data.tags["tftrain.workers_agree"] == "true"
        logged = mlflow.keras.load_model("models:/mw/1").get_weights()
    finally:
        mlflow.set_tracking_uri(None)
    chief, worker = (np.load(f"{out}-{i}.npz") for i in (0, 1))
    for a, b, c in zip(logged, *([w[k] for k in w.files] for w in (chief, worker)), strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(b, c)


def test_fit_under_multi_worker_is_refused(tiny_data, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                                 "task": {"type": "worker", "index": 0}}))  # fmt: skip
    with pytest.raises(UserError, match="invalid combination: engine=fit with strategy=multi_worker"):
        train(tiny_config(tiny_data, engine="fit", strategy="auto"))


def test_multi_worker_without_tf_config_is_refused(tiny_data, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UserError, match="invalid value for TF_CONFIG: received no cluster"):
        train(tiny_config(tiny_data, engine="custom", strategy="multi_worker"))


def test_cpu_replicas_after_tensorflow_started_is_refused(tiny_data):
    with pytest.raises(UserError, match="cpu_replicas=2: TensorFlow already started in this process with 1 CPU"):
        train(tiny_config(tiny_data, strategy="mirrored", cpu_replicas=2))


def test_precision_auto_resolves_per_machine_and_model_and_is_logged(store, tiny_data, float32_afterwards, capsys):
    from tftrain.training.runtime import BFLOAT16_CPU_FLAGS, cpu_flags, resolve_precision

    assert "sse2" in cpu_flags() or not Path("/proc/cpuinfo").exists()  # the real flags are read
    bfloat16_cpu = bool(set(BFLOAT16_CPU_FLAGS["mlp"]) & cpu_flags())
    bfloat16_cnn = bool(set(BFLOAT16_CPU_FLAGS["cnn"]) & cpu_flags())
    assert resolve_precision(tiny_config(tiny_data, precision="auto")) == (
        "mixed_bfloat16" if bfloat16_cpu else "float32"
    )
    assert resolve_precision(tiny_config(tiny_data, precision="auto", model="cnn")) == (
        "mixed_bfloat16" if bfloat16_cnn else "float32"
    )
    assert (
        resolve_precision(tiny_config(tiny_data, precision="auto", model="resnet50", image_size="32x32")) == "float32"
    )
    assert resolve_precision(tiny_config(tiny_data, precision="float32")) == "float32"
    assert resolve_precision(tiny_config(tiny_data, precision="mixed_float16")) == "mixed_float16"
    assert "precision=mixed_float16 on a CPU has no float16 hardware" in capsys.readouterr().out
    result = train(tiny_config(tiny_data, precision="auto", epochs=1, model_name="auto"))
    resolved = mlflow.get_run(result.run_id).data.params["precision_resolved"]
    assert resolved == ("mixed_bfloat16" if bfloat16_cpu else "float32")
    dense = [layer for layer in result.keras_model.layers if isinstance(layer, keras.layers.Dense)]
    assert dense[0].compute_dtype == ("bfloat16" if bfloat16_cpu else "float32")


def test_bfloat16_trains_as_accurately_as_float32(store, tiny_data, float32_afterwards):
    """The same epochs in mixed_bfloat16 (what auto picks on this kind of CPU) and float32: within noise."""
    accuracy = {}
    for precision in ("float32", "mixed_bfloat16"):
        cfg = tiny_config(tiny_data, precision=precision, epochs=4, early_stopping=False, model_name=precision)
        accuracy[precision] = train(cfg).history["val_accuracy"][-1]
    assert accuracy["float32"] > 0.8 and abs(accuracy["mixed_bfloat16"] - accuracy["float32"]) < 0.05, accuracy
