"""`tftrain bench`: real training in worker processes on tiny data, its arithmetic, and its MLflow log."""

import json
import re
import subprocess
import sys

import mlflow
import pytest

from conftest import REPO, mlflow_store
from tftrain.bench.report import seconds_to, summarize, table, with_comparisons
from tftrain.bench.worker import train_flops_per_example
from tftrain.models import build_model


def test_flops_are_six_per_multiply_add_but_four_in_the_first_layer():
    """The first layer needs no gradient for its input (the image): forward and weight gradient only."""
    assert train_flops_per_example(build_model("mlp")) == 4 * 784 * 128 + 6 * 128 * 10
    conv = 26 * 26 * 9 * 32  # 3x3 kernel, one input channel, 32 filters, 26x26 outputs
    assert train_flops_per_example(build_model("cnn")) == 4 * conv + 6 * (13 * 13 * 32 * 64 + 64 * 10)


def test_seconds_to_is_the_first_epoch_at_or_above_the_accuracy():
    curve = [(1.5, 0.80), (3.0, 0.91), (4.5, 0.89), (6.0, 0.93)]
    assert seconds_to(curve, 0.91) == 3.0 and seconds_to(curve, 0.92) == 6.0
    assert seconds_to(curve, 0.95) is None and seconds_to([], 0.5) is None


def test_summary_takes_medians_across_repeats_and_keeps_missing_as_missing():
    def row(samples, reached):
        return {"name": "a", "model": "mlp", "describe": "d", "recipe": False, "samples_per_second": samples,
                "speedup": samples / 100, "seconds_to_target": reached, "seconds_to_recipe_accuracy": None,
                "recipe_accuracy": 0.8, "recipe_fit_seconds": 9.0, "curve": []}  # fmt: skip

    (summary,) = summarize([[row(300, None)], [row(100, 4.0)], [row(200, 6.0)]])
    assert summary["samples_per_second"] == 200 and summary["speedup"] == 2.0
    assert summary["seconds_to_target"] == 5.0  # the median of the repeats that reached it
    assert summary["seconds_to_recipe_accuracy"] is None and summary["repeats"] == 3


def test_speed_ups_compare_a_model_with_its_own_recipe_only():
    def row(name, model, samples, accuracy, curve):
        return {"name": name, "model": model, "samples_per_second": samples, "test_accuracy": accuracy,
                "fit_seconds": 10.0, "target": 0.9, "curve": curve}  # fmt: skip

    recipe, cnn, strong = with_comparisons([
        row("recipe-cnn", "cnn", 100.0, 0.90, [(5.0, 0.90)]),
        row("tftrain-cnn", "cnn", 400.0, 0.91, [(1.0, 0.85), (2.0, 0.91)]),
        row("tftrain-cnn_bn", "cnn_bn", 50.0, 0.94, [(3.0, 0.92)]),
    ])  # fmt: skip
    assert (recipe["speedup"], cnn["speedup"], strong["speedup"]) == (1.0, 4.0, None)
    assert cnn["seconds_to_recipe_accuracy"] == 2.0 and strong["seconds_to_recipe_accuracy"] == 3.0
    assert cnn["seconds_to_target"] == 2.0 and strong["seconds_to_target"] == 3.0
    for r in (recipe, cnn, strong):
        r.update(epochs=1, seconds_per_epoch=1.0, gflops=1.0, gflop_per_example=0.001, tracking_share=None,
                 model_logging_seconds=None, peak_rss_mb=1.0, describe="d")  # fmt: skip
    assert "| tftrain-cnn_bn | 1 | 1.000 | 50 | - |" in table([recipe, cnn, strong])


@pytest.mark.slow
def test_bench_trains_the_recipe_and_tftrain_in_workers_and_logs_the_figures(tmp_path, tiny_data):
    out = tmp_path / "bench.json"
    with mlflow_store(tmp_path):
        done = subprocess.run(
            [sys.executable, "-m", "tftrain", "bench", "--only", "recipe-mlp,tftrain-mlp", "--epochs", "3",
             "--data-dir", str(tiny_data), "--json", str(out), "--log-mlflow"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        runs = mlflow.search_runs(experiment_names=["tftrain-bench"], output_format="list")
        experiments = {e.name for e in mlflow.search_experiments()}
    assert experiments == {"Default", "tftrain-bench"}  # the workers' training runs went to stores of their own
    assert "| recipe-mlp | 3 |" in done.stdout and "| tftrain-mlp | 3 |" in done.stdout
    assert "MLP samples/s over the write-up's recipe" in done.stdout
    assert "[repeat 1/1, 2/2] tftrain-mlp" in done.stderr  # progress goes to stderr
    (results,) = json.loads(out.read_text())["repeats"]
    recipe, ours = results
    assert recipe["speedup"] == 1.0 and recipe["tracking_share"] is None
    assert ours["speedup"] == pytest.approx(ours["samples_per_second"] / recipe["samples_per_second"])
    assert ours["gflops"] == pytest.approx(ours["samples_per_second"] * ours["gflop_per_example"])
    assert ours["samples_per_second"] == pytest.approx(512 / ours["seconds_per_epoch"])  # 640 train, 20% validation
    assert 0 < ours["tracking_share"] < 1 and ours["model_logging_seconds"] > 0 and ours["peak_rss_mb"] > 100
    assert recipe["model_logging_seconds"] is None
    for r in results:
        assert r["epochs"] == 3 and len(r["curve"]) == 3 and 0 <= r["test_accuracy"] <= 1
        elapsed = [t for t, _ in r["curve"]]
        assert elapsed == sorted(elapsed) and elapsed[-1] <= r["fit_seconds"] + 1e-6
    by_name = {r.data.tags["mlflow.runName"]: r for r in runs}
    assert set(by_name) == {"bench", "recipe-mlp", "tftrain-mlp"}
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
