"""MLflow's compare page for three training runs, in headless Chromium on a real `mlflow server`: the figures runs
are compared on are on it (each run's name by model and data, the model, the image size, the data, the test
accuracy of its evaluated Keras model). TFTRAIN_SCREENSHOT=PATH keeps the page as a PNG (docs/mlflow-compare-runs.png
was made so)."""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path

import mlflow
import pytest

from conftest import mlflow_store, tiny_config, write_dataset
from servers import choose_axes, chromium, page_text, tracking_ui, wait_until_up
from tftrain.ship.evaluate import evaluate
from tftrain.training.trainer import train

pytestmark = pytest.mark.slow  # about a minute: three trainings, a tracking server, a browser
# (model, image size, data): two models, two image sizes, two states of the data
RUNS = (("mlp", "auto", "tiny"), ("cnn", "auto", "tiny"), ("mlp", "20x20", "changed"))


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory, tiny_data):
    """Three short trainings, each evaluated by `tftrain evaluate` (a run of its own), and `mlflow server` over
    their store (started first: it comes up while they train): (store folder, experiment id, [(training run,
    test accuracy)], server URL)."""
    folder = tmp_path_factory.mktemp("compare")
    data = {"tiny": tiny_data, "changed": write_dataset(folder / "changed", n_train=480)}  # fewer training images
    with mlflow_store(folder) as uri:
        mlflow.search_experiments()  # the store's tables made here, not by this process and the server at once
        with tracking_ui(uri, folder / "server.log", wait=False) as url:
            yield from _train_three(folder, data, url)


def _train_three(folder, data, url):
    done = []
    for model, size, state in RUNS:
        cfg = tiny_config(data[state], model=model, image_size=size, epochs=1, run_name="auto",
                          output_dir=str(folder / "outputs"), tensorboard=False)  # fmt: skip
        result = train(cfg)
        accuracy = evaluate(result.model.uri).metrics["test_accuracy"]
        done.append((mlflow.get_run(result.run_id), accuracy))  # the training run, after the evaluation
    yield folder, done[0][0].info.experiment_id, done, url


def test_the_compare_page_shows_the_figures_runs_are_compared_on(three_runs, tiny_data, tmp_path):
    folder, experiment, done, url = three_runs
    runs = [run for run, _ in done]
    # runs named by model and data; the training runs carry their model's test accuracy
    assert [r.info.run_name.split("-")[0] for r in runs] == ["mlp", "cnn", "mlp"]
    assert all("-fashion-mnist-" in r.info.run_name for r in runs)
    assert [r.data.metrics["test_accuracy"] for r in runs] == [accuracy for _, accuracy in done]
    digests = [{i.dataset.name: i.dataset.digest for i in r.inputs.dataset_inputs} for r in runs]
    assert digests[0] == digests[1] and digests[2]["fashion-mnist-train"] != digests[0]["fashion-mnist-train"]
    query = urllib.parse.urlencode(
        {"runs": json.dumps([r.info.run_id for r in runs]), "experiments": json.dumps([experiment])}
    )
    with chromium(tmp_path / "profile", window="1600,1100") as browser:
        wait_until_up(url, folder / "server.log")
        browser.get(f"{url}/#/compare-runs?{query}")
        figures = [
            *[r.info.run_name for r in runs],  # run names, by model and data
            *[f"model {' '.join(model for model, _, _ in RUNS)}", "image_size_resolved 28x28 28x28 20x20"],
            f"data_dir {tiny_data} {tiny_data} {folder / 'changed'}",  # params
            f"data_digests {runs[0].data.tags['data_digests']}",  # tags: the data's state
            "test_accuracy",  # metrics: names, then values by run
        ]
        body = page_text(browser, figures)
        # the plot set to the figures compared (MLflow opens it on the first differing params by name), the
        # assistant's panel closed (it covers a third of the page)
        browser.find_element("css selector", "button[aria-label='Close']").click()
        choose_axes(browser, ["model", "image_size_resolved"], ["test_accuracy"])
        screenshot = Path(os.environ.get("TFTRAIN_SCREENSHOT", tmp_path / "mlflow-compare-runs.png"))
        assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    assert all(figure in body for figure in figures), body[:6000]
    # the metrics table: the names, then each metric's values, one per run, as MLflow rounds them
    metrics = body[body.index("\nMetrics\n") : body.index("\nArtifacts\n")]
    shown = "\n".join(shown_value(accuracy) for _, accuracy in done)
    assert f"\n{shown}\n" in metrics, metrics


def shown_value(value: float) -> str:
    """A metric as MLflow's compare page writes it: at most 3 decimals, no trailing zeros."""
    return f"{round(value, 3):.3f}".rstrip("0").rstrip(".")
