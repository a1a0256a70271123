"""The promotion gate against a real registry: better or equal moves the alias, worse leaves it alone."""

import mlflow
import pytest

from conftest import tiny_config
from tftrain.errors import UserError
from tftrain.ship.evaluate import evaluate
from tftrain.ship.registry import promote, version_accuracy
from tftrain.training.trainer import train
from tftrain.values import check_alias


@pytest.fixture(scope="module")
def versions(trained, tiny_data):
    """Version 1: the module's trained model; version 2: one that barely trained (lr 1e-6, one epoch)."""
    good, _ = trained
    bad = train(tiny_config(tiny_data, epochs=1, learning_rate=1e-6, early_stopping=False, run_name="bad"))
    for version in ("1", "2"):
        evaluate(f"models:/tftrain-fashion-mnist/{version}", data_dir=str(tiny_data))
    return good, bad


def alias_version(alias="champion"):
    return str(mlflow.MlflowClient().get_model_version_by_alias("tftrain-fashion-mnist", alias).version)


def test_gate(versions):
    first = promote("models:/tftrain-fashion-mnist/1")
    assert first.promoted and first.previous_version is None and alias_version() == "1"
    assert first.reason == f"tftrain-fashion-mnist@champion is now version 1 (test accuracy {first.test_accuracy:.4f})"

    worse = promote("models:/tftrain-fashion-mnist/2")
    assert not worse.promoted and alias_version() == "1"
    assert worse.test_accuracy < first.test_accuracy and worse.previous_accuracy == first.test_accuracy
    assert "stays at version 1: version 2's test accuracy" in worse.reason and "below version 1's" in worse.reason
    tags = mlflow.MlflowClient().get_model_version("tftrain-fashion-mnist", "2").tags
    assert tags["gate_champion"].startswith("test accuracy") and float(tags["test_accuracy"]) == pytest.approx(
        worse.test_accuracy, abs=1e-6
    )
    assert tags["source_run_id"] == versions[1].run_id

    again = promote("models:/tftrain-fashion-mnist/1")  # equal to the holder (itself): stays promoted
    assert again.promoted and alias_version() == "1"


def test_threshold(versions):
    threshold = version_accuracy("models:/tftrain-fashion-mnist/1") + 0.001
    decision = promote("models:/tftrain-fashion-mnist/1", alias="strict", min_accuracy=threshold)
    assert not decision.promoted and f"below the threshold {threshold:.4f}" in decision.reason
    assert decision.reason.startswith("tftrain-fashion-mnist@strict stays unassigned: version 1's test accuracy")
    with pytest.raises(mlflow.exceptions.MlflowException):
        alias_version("strict")


def test_unevaluated_version_is_refused(trained, tiny_data):
    train(tiny_config(tiny_data, epochs=1, run_name="unevaluated"))
    versions = mlflow.MlflowClient().search_model_versions("name='tftrain-fashion-mnist'")
    newest = max(int(v.version) for v in versions)
    with pytest.raises(
        UserError,
        match=f"has no test_accuracy yet; run: tftrain evaluate --model-uri models:/tftrain-fashion-mnist/{newest}",
    ):
        promote(f"models:/tftrain-fashion-mnist/{newest}")


@pytest.mark.parametrize("uri", ["models:/x@champion", "runs:/0123456789abcdef0123456789abcdef/model", "x"])
def test_only_registered_versions_are_promoted(uri):
    with pytest.raises(UserError, match="allowed: a registered version, models:/<name>/<version>"):
        promote(uri)


@pytest.mark.parametrize("alias", ["latest", "v3", "has space", ""])
def test_bad_alias(alias):
    with pytest.raises(UserError, match="invalid value for alias"):
        check_alias(alias)


def test_a_version_taking_other_images_does_not_take_the_alias(store, tmp_path):
    """Clients of models:/NAME@champion send images of the champion's shape: a better model of another shape
    (another image_size on the same folder, say) must not swap under them."""
    import numpy as np

    from tftrain.models.build import build_model
    from tftrain.tracking import logged_models

    names = ("a", "b")
    for shape in ((8, 8), (12, 12)):
        with mlflow.start_run():
            logged = logged_models.log_keras_model(build_model("mlp", 2, shape), "shapes", np.zeros((1, *shape)),
                                                   logged_models.Provenance(names))  # fmt: skip
            mlflow.log_metrics({"test_accuracy": 0.6 if shape == (8, 8) else 0.9}, model_id=logged.model_id)
    assert promote("models:/shapes/1").promoted
    refused = promote("models:/shapes/2")
    assert not refused.promoted and alias_version_of("shapes") == "1"
    assert "version 2's input shape (12, 12) differs from version 1's (8, 8)" in refused.reason
    assert (
        "to move the alias anyway: tftrain promote --model-uri models:/shapes/2 --allow-shape-change" in refused.reason
    )


def test_a_shape_change_on_purpose_moves_the_alias_with_a_warning_and_a_tag(store):
    """`promote --allow-shape-change`, as a user types it: the alias moves to the better model of another shape,
    the version records the change, and a one-line warning says which clients break; a worse one still stays out."""
    import numpy as np
    from click.testing import CliRunner

    from tftrain.cli import cli
    from tftrain.models.build import build_model
    from tftrain.tracking import logged_models

    for shape, accuracy in (((8, 8), 0.6), ((12, 12), 0.9), ((16, 16), 0.7)):
        with mlflow.start_run():
            logged = logged_models.log_keras_model(build_model("mlp", 2, shape), "moving", np.zeros((1, *shape)),
                                                   logged_models.Provenance(("a", "b")))  # fmt: skip
            mlflow.log_metrics({"test_accuracy": accuracy}, model_id=logged.model_id)
    assert promote("models:/moving/1").promoted
    done = CliRunner().invoke(cli, ["promote", "--model-uri", "models:/moving/2", "--allow-shape-change"])
    assert done.exit_code == 0, done.output
    assert "moving@champion is now version 2 (test accuracy 0.9000)" in done.output
    assert alias_version_of("moving") == "2"
    tags = mlflow.MlflowClient().get_model_version("moving", "2").tags
    assert tags["shape_change_champion"] == "from (8, 8) (version 1) to (12, 12)"
    warning = [line for line in done.stderr.splitlines() if "changed input shape" in line]
    assert warning == [
        "warning: moving@champion changed input shape from (8, 8) (version 1) to (12, 12): a server of "
        "moving@champion serves it once restarted; from then on, clients sending pixels of the old shape are refused, "
        "clients sending image files get them resized"
    ]
    worse = promote("models:/moving/3", allow_shape_change=True)
    assert not worse.promoted and worse.shape_change is None and alias_version_of("moving") == "2"
    assert "test accuracy 0.7000 is below version 2's 0.9000" in worse.reason
    refused = CliRunner().invoke(cli, ["promote", "--model-uri", "models:/moving/3", "--allow-shape-change", "maybe"])
    assert refused.exit_code == 2 and "maybe" in refused.output


def alias_version_of(name: str) -> str:
    return str(mlflow.MlflowClient().get_model_version_by_alias(name, "champion").version)


def test_a_model_no_better_than_chance_takes_no_alias(store):
    """The first version of a model has no holder to beat: it must at least beat guessing (1/classes)."""
    import numpy as np

    from tftrain.models.build import build_model
    from tftrain.tracking import logged_models

    for accuracy in (0.25, 0.26):
        with mlflow.start_run():
            logged = logged_models.log_keras_model(build_model("mlp", 4, (6, 6)), "chance", np.zeros((1, 6, 6)),
                                                   logged_models.Provenance(("a", "b", "c", "d")))  # fmt: skip
            mlflow.log_metrics({"test_accuracy": accuracy}, model_id=logged.model_id)
    refused = promote("models:/chance/1")
    assert not refused.promoted
    assert refused.reason == (
        "chance@champion stays unassigned: version 1's test accuracy 0.2500 is no better than chance (1/4 = 0.2500)"
    )
    assert promote("models:/chance/2").promoted and alias_version_of("chance") == "2"


def test_a_score_on_other_data_is_not_linked_to_the_model(versions, tmp_path, tiny_data):
    """evaluate --dataset/--data-dir of other data logs its scores in its own run; the gate keeps comparing the
    model's own test split."""
    from conftest import write_dataset

    before = version_accuracy("models:/tftrain-fashion-mnist/1")
    other = write_dataset(tmp_path / "other", n_train=64, n_test=50)
    other_ev = evaluate("models:/tftrain-fashion-mnist/1", data_dir=str(other))
    assert version_accuracy("models:/tftrain-fashion-mnist/1") == before
    (run,) = mlflow.search_runs(search_all_experiments=True, filter_string="tags.evaluated_model_uri != ''",
                                order_by=["start_time DESC"], max_results=1, output_format="list")  # fmt: skip
    assert run.data.metrics["test_accuracy"] == pytest.approx(other_ev.metrics["test_accuracy"])


def test_a_dataset_of_other_classes_is_refused_by_evaluate_and_export(versions, tmp_path):
    from PIL import Image

    from tftrain.ship.export import export

    for name in ("circle", "cross", "square"):
        (tmp_path / "shapes" / name).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (28, 28), 40 * i).save(tmp_path / "shapes" / name / f"{i}.png")
    expected = (
        r"^model_uri 'models:/tftrain-fashion-mnist/1' answers 10 classes \(T-shirt/top, Trouser, Pullover, Dress, "
        r"Coat, \.\.\.\); dataset shapes has 3 classes \(circle, cross, square\); allowed: a dataset of the model's "
        r"classes, in the same order$"
    )
    for step in (evaluate, export):
        with pytest.raises(UserError, match=expected):
            step("models:/tftrain-fashion-mnist/1", dataset=str(tmp_path / "shapes"))
    assert len(mlflow.MlflowClient().search_model_versions("name='tftrain-fashion-mnist-litert'")) == 0
