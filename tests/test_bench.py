"""`tftrain bench`: real training in worker processes on tiny data, its arithmetic, and its MLflow log."""

import json
import re
import subprocess
import sys

import mlflow
import pytest

from conftest import REPO, mlflow_store
from tftrain.bench.report import seconds_to, summarize, table, targets, with_comparisons
from tftrain.bench.worker import train_flops_per_example
from tftrain.models.build import build_model


def test_flops_are_six_per_multiply_add_but_four_in_the_first_layer():
    """The first layer needs no gradient for its input (the image): forward and weight gradient only."""
    assert train_flops_per_example(build_model("mlp")) == 4 * 784 * 128 + 6 * 128 * 10
    conv = 26 * 26 * 9 * 32  # 3x3 kernel, one input channel, 32 filters, 26x26 outputs
    assert train_flops_per_example(build_model("cnn")) == 4 * conv + 6 * (13 * 13 * 32 * 64 + 64 * 10)
    import keras

    inputs = keras.Input((8, 8, 3))  # MobileNet's kind: a depthwise 3x3 (27 weights an output position), then 1x1
    x = keras.layers.DepthwiseConv2D(3, padding="same")(inputs)
    mobile = keras.Model(inputs, keras.layers.Conv2D(16, 1)(x))
    assert train_flops_per_example(mobile) == 4 * 64 * 27 + 6 * 64 * 3 * 16


def test_seconds_to_is_the_first_epoch_at_or_above_the_accuracy():
    curve = [(1.5, 0.80), (3.0, 0.91), (4.5, 0.89), (6.0, 0.93)]
    assert seconds_to(curve, 0.91) == 3.0 and seconds_to(curve, 0.92) == 6.0
    assert seconds_to(curve, 0.95) is None and seconds_to([], 0.5) is None


def test_summary_takes_medians_across_repeats_and_keeps_missing_as_missing():
    def row(samples, reached):
        return {"name": "a", "model": "mlp", "describe": "d", "kind": "tftrain", "samples_per_second": samples,
                "speedup": samples / 100, "seconds_to_target": reached, "user_time_ratio": None, "curve": [],
                "val_curve": []}  # fmt: skip

    (summary,) = summarize([[row(300, None)], [row(100, 4.0)], [row(200, 6.0)]])
    assert summary["samples_per_second"] == 200 and summary["speedup"] == 2.0
    assert summary["seconds_to_target"] == 5.0  # the median of the repeats that reached it
    assert summary["user_time_ratio"] is None and summary["repeats"] == 3


def test_rows_compare_with_the_baselines_of_their_own_model_only():
    def row(name, model, samples, accuracy, curve, val_curve):
        return {"name": name, "model": model, "samples_per_second": samples, "test_accuracy": accuracy,
                "fit_seconds": 10.0, "target": 0.9, "curve": curve, "val_curve": val_curve, "epochs": len(curve)}  # fmt: skip

    recipe, user, cnn, strong = with_comparisons([
        row("recipe-cnn", "cnn", 100.0, 0.90, [(4.0, 0.89), (8.0, 0.90)], [(4.0, 0.88), (8.0, 0.90)]),
        row("user-cnn", "cnn", 200.0, 0.91, [(2.0, 0.88), (4.0, 0.91)], [(2.0, 0.89), (4.0, 0.915)]),
        row("tftrain-cnn", "cnn", 400.0, 0.92, [(1.0, 0.85), (2.0, 0.91), (3.0, 0.92)],
            [(1.0, 0.86), (2.0, 0.912), (3.0, 0.92)]),
        row("tftrain-cnn_bn", "cnn_bn", 50.0, 0.94, [(3.0, 0.92)], [(3.0, 0.93)]),
    ])  # fmt: skip
    assert (recipe["speedup"], user["speedup"], cnn["speedup"], strong["speedup"]) == (1.0, 2.0, 4.0, None)
    assert (cnn["vs_user"], strong["vs_user"]) == (2.0, None)
    # the validation target of the CNN, 0.91: the user after 4 s, tftrain after 2 s; cnn_bn has none
    assert (user["seconds_to_val_target"], cnn["seconds_to_val_target"], cnn["user_time_ratio"]) == (4.0, 2.0, 2.0)
    assert strong["seconds_to_val_target"] is None and strong["user_time_ratio"] is None
    assert cnn["seconds_to_target"] == 2.0 and strong["seconds_to_target"] == 3.0
    for r in (recipe, user, cnn, strong):
        r.update(seconds_per_epoch=1.0, gflops=1.0, gflop_per_example=0.001, tracking_share=None,
                 peak_rss_mb=1.0, describe="d")  # fmt: skip
    text = table([recipe, user, cnn, strong])
    assert "| tftrain-cnn | 3 | 1.000 | 400 | 4.0x | 2.0x | 1.0 (1.00) | 2.0 (to 0.91) | 2.0x |" in text
    assert "| tftrain-cnn_bn | 1 | 1.000 | 50 | - | - | 1.0 (1.00) | - | - |" in text
    verdicts = targets([recipe, user, cnn, strong])
    assert "default CNN, samples/s over the write-up's recipe: 4x (goal >= 4x): met" in verdicts
    assert "validation accuracy 0.91 over ours: 2x (goal >= 2x): met" in verdicts
    assert "default CNN with epochs=5, test accuracy: not measured in this run" in verdicts
    five = {**cnn, "name": "tftrain-cnn-5-epochs", "epochs": 5, "recipe_epochs": 5, "test_accuracy": 0.8999}
    assert (
        "test accuracy: 0.8999 against the recipe's 0.9000 after 5 epochs (goal: at least the recipe's): missed"
        in targets([recipe, five])
    )
    assert "default MLP, samples/s over the write-up's recipe: not measured in this run" in verdicts


@pytest.mark.slow
def test_bench_trains_the_recipe_and_tftrain_in_workers_and_logs_the_figures(tmp_path, tiny_data):
    out = tmp_path / "bench.json"
    with mlflow_store(tmp_path):
        done = subprocess.run(
            [sys.executable, "-m", "tftrain", "bench", "--only", "recipe-mlp,user-mlp,tftrain-mlp", "--epochs", "3",
             "--data-dir", str(tiny_data), "--json", str(out), "--log-mlflow"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        runs = mlflow.search_runs(experiment_names=["tftrain-bench"], output_format="list")
        experiments = {e.name for e in mlflow.search_experiments()}
    assert experiments == {"Default", "tftrain-bench"}  # the workers' training runs went to stores of their own
    for name in ("recipe-mlp", "user-mlp", "tftrain-mlp"):
        assert f"| {name} | 3 |" in done.stdout
    assert "default MLP, samples/s over the write-up's recipe" in done.stdout
    assert "[repeat 1/1, 3/3] tftrain-mlp" in done.stderr  # progress goes to stderr
    (results,) = json.loads(out.read_text())["repeats"]
    recipe, user, ours = results
    assert user["speedup"] == pytest.approx(user["samples_per_second"] / recipe["samples_per_second"])
    assert ours["vs_user"] == pytest.approx(ours["samples_per_second"] / user["samples_per_second"])
    assert recipe["speedup"] == 1.0 and recipe["tracking_share"] is None
    assert ours["speedup"] == pytest.approx(ours["samples_per_second"] / recipe["samples_per_second"])
    assert ours["gflops"] == pytest.approx(ours["samples_per_second"] * ours["gflop_per_example"])
    assert ours["samples_per_second"] == pytest.approx(512 / ours["seconds_per_epoch"])  # 640 train, 20% validation
    assert 0 < ours["tracking_share"] < 1 and ours["model_logging_seconds"] > 0 and ours["peak_rss_mb"] > 100
    assert recipe["model_logging_seconds"] is None
    for r in results:
        assert r["epochs"] == 3 and len(r["curve"]) == len(r["val_curve"]) == 3 and 0 <= r["test_accuracy"] <= 1
        assert [t for t, _ in r["curve"]] == [t for t, _ in r["val_curve"]]
        elapsed = [t for t, _ in r["curve"]]
        assert elapsed == sorted(elapsed) and elapsed[-1] <= r["fit_seconds"] + 1e-6
    by_name = {r.data.tags["mlflow.runName"]: r for r in runs}
    assert set(by_name) == {"bench", "recipe-mlp", "user-mlp", "tftrain-mlp"}
    logged = by_name["tftrain-mlp"].data.metrics
    assert logged["samples_per_second"] == pytest.approx(ours["samples_per_second"])
    assert logged["test_accuracy"] == pytest.approx(ours["test_accuracy"])


def test_profile_script_sums_one_epoch_by_op_and_by_what_bounds_it(tiny_data):
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "profile_epoch.py"), "--model", "cnn", "--batch-size", "64",
         "--precision", "float32", "--data-dir", str(tiny_data)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cnn, batch 64, float32: one warm epoch of 512 examples" in done.stdout
    shares = re.findall(r"^\| (arithmetic|memory \(elementwise, pooling\)|input pipeline) \| \d+ \| ([\d.]+)%",
                        done.stdout, re.MULTILINE)  # fmt: skip
    assert {kind for kind, _ in shares} >= {"arithmetic", "memory (elementwise, pooling)"}
    assert "Conv2D" in done.stdout and sum(float(s) for _, s in shares) == pytest.approx(100, abs=0.5)


@pytest.mark.slow
def test_folder_figures_decode_once_then_read_the_cache(tmp_path, tiny_data):
    """The folder steps on tiny data written out as PNG files: Keras' loader and tftrain's first run decode every
    image, the second run none, and the IDX row has the same images; the table and the verdicts say so."""
    out = tmp_path / "bench.json"
    with mlflow_store(tmp_path):
        done = subprocess.run(
            [sys.executable, "-m", "tftrain", "bench", "--only", "folders", "--epochs", "2", "--data-dir",
             str(tiny_data), "--json", str(out)],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = re.findall(r"^\| (keras-loader|tftrain-first|tftrain-second|tftrain-idx) \| ([\d,-]+) \|", done.stdout,
                      re.MULTILINE)  # fmt: skip
    assert rows == [("keras-loader", "640"), ("tftrain-first", "840"), ("tftrain-second", "0"), ("tftrain-idx", "-")]
    assert "Fashion-MNIST as 840 PNG files" in done.stdout
    assert re.search(r"a second run on the same folder decoded 0 images, loaded in [\d.]+ s .*: met", done.stdout)
    assert "decoding the folder, Keras' loader's seconds per image over tftrain's" in done.stdout
    assert "later epochs on the folder against the IDX files" in done.stdout


@pytest.mark.slow
def test_the_panel_trains_tftrain_and_plain_keras_on_a_real_photo_folder(tmp_path):
    out = tmp_path / "panel.json"
    done = subprocess.run([sys.executable, "-m", "tftrain", "bench", "--panel", "quick", "--epochs", "2", "--json",
                           str(out)], capture_output=True, text=True, timeout=900, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["panel"]
    assert [(r["folder"], r["model"]) for r in rows] == [("photos-5x40", "cnn_bn"), ("photos-5x40", "builder")]
    for r in rows:
        assert r["images"] == 200 and r["classes"] == 5 and r["shape"] == "64x64x3"
        assert r["keras"]["epochs"] == 2 and 1 <= r["tftrain"]["epochs"] <= 2
        ours, plain = r["tftrain"]["test_accuracy"], r["keras"]["test_accuracy"]
        assert 0 <= plain <= 1 and 0 <= ours <= 1
        verdict = re.search(rf"\| photos-5x40 \| 200 \| 64x64x3 \| {r['model']} \| {plain:.3f} .*\| (\w+)", done.stdout)
        assert verdict and verdict.group(1) in ("better", "same", "WORSE")
    assert not list(tmp_path.glob("tftrain-panel-*"))  # the folders were written to a temporary place, and removed
