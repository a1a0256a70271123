import dataclasses
from pathlib import Path

import pytest

from tftrain.config import PARAMS, TrainConfig
from tftrain.errors import UserError
from tftrain.values import check_model_uri, check_named, registered_model_name

RUN = "0123456789abcdef0123456789abcdef"


def test_defaults_are_valid_and_match_the_write_up():
    cfg = TrainConfig()
    assert (cfg.data.dataset, cfg.model.name, cfg.data.validation_split) == ("fashion_mnist", "mlp", 0.2)
    assert registered_model_name(cfg) == "tftrain-fashion-mnist"
    assert set(cfg.as_params()) == {f.name for f in PARAMS.values()}


def test_batch_size_and_learning_rate_0_choose_by_model_and_data():
    """The measured batch per model (a global batch, shared by the replicas), halved down to 8 while an epoch would
    be under 20 steps, with the rate scaled by the square root of the batch's change; given values stay."""
    assert TrainConfig().training_batch(48000, 1) == (1024, 0.008)
    assert TrainConfig.from_flat(model="cnn").training_batch(48000, 1) == (256, 0.004)
    assert TrainConfig.from_flat(model="cnn_bn").training_batch(48000, 2) == (128, 0.003)
    batch, rate = TrainConfig().training_batch(512, 1)
    assert batch == 16 and rate == pytest.approx(0.008 * (16 / 1024) ** 0.5)
    assert TrainConfig().training_batch(50, 1)[0] == 8
    assert TrainConfig.from_flat(model="mobilenet_v2", image_size="32x32").training_batch(48000, 1) == (128, 0.002)
    assert TrainConfig.from_flat(model="cnn", batch_size=1024).training_batch(48000, 1) == (1024, pytest.approx(0.008))
    assert TrainConfig.from_flat(batch_size=100, learning_rate=0.01).training_batch(10, 1) == (100, 0.01)
    # a batch larger than the data: the rate follows the batch a step really sees, the whole data
    assert TrainConfig.from_flat(batch_size=100000).training_batch(129, 1) == (100000, pytest.approx(0.008 * (129 / 1024) ** 0.5))


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("epochs", 0, "an integer >= 1"),
        ("batch_size", -5, "an integer >= 0"),
        ("steps_per_execution", 0, "an integer >= 1"),
        ("model", "resnet", "mlp, cnn, cnn_bn, mobilenet_v2"),
        ("dataset", "cifar10", "fashion_mnist, mnist, an existing folder of class folders, tfds:NAME"),
        ("dataset", "tfds:Not A Name", "tfds:NAME or tfds:NAME:VERSION"),
        ("dataset", "no/such/loader.py:load", "(no file {cwd}/no/such/loader.py)"),
        ("test_split", 1.0, "strictly between 0 and 1"),
        ("image_size", "28x", "auto, HEIGHTxWIDTH"),
        ("image_size", "0x28", "auto, HEIGHTxWIDTH"),
        ("image_size", "5000", "auto, HEIGHTxWIDTH"),
        ("channels", "2", "one of auto, 1, 3"),
        ("bad_images", "ignore", "one of fail, skip"),
        ("model", "missing.keras", "(no file {cwd}/missing.keras)"),
        ("model", "no/such/builder.py:build", "(no file {cwd}/no/such/builder.py)"),
        ("weights", "/no/such.weights.h5", "empty with model=mlp"),
        ("early_stopping_monitor", "val_acc", "one of val_loss"),
        ("validation_split", 1.0, "strictly between 0 and 1"),
        ("validation_split", 0.0, "strictly between 0 and 1"),
        ("learning_rate", -0.01, "a finite number >= 0"),
        ("learning_rate", float("nan"), "a finite number >= 0"),
        ("plateau_factor", 1.5, "strictly between 0 and 1"),
        ("plateau_min_lr", -1e-3, "a finite number >= 0"),
        ("save_interval", -1.0, "a finite number >= 0"),
        ("save_interval", float("inf"), "a finite number >= 0"),
        ("early_stopping_patience", -1, "an integer >= 0"),
        ("histogram_freq", -1, "an integer >= 0"),
        ("data_dir", "/no/such/folder", "an existing folder"),
        ("model_name", "bad name/with slash", "letters, digits"),
        ("output_dir", "", "a folder path"),
    ],
)
def test_invalid_values_name_the_field_the_value_and_what_is_allowed(field, value, allowed):
    """Refused when the config is made (its own values) or when what it names is looked up (check_named), both
    before any work."""
    allowed = allowed.format(cwd=Path.cwd())  # relative files are named resolved, from where the test runs
    with pytest.raises(UserError) as info:
        check_named(TrainConfig.from_flat(**{field: value}))
    message = str(info.value)
    assert f"invalid value for {field}" in message
    assert repr(value) in message
    assert allowed in message
    assert "\n" not in message


def test_explicit_model_name_is_used():
    assert registered_model_name(TrainConfig.from_flat(model_name="fm-prod")) == "fm-prod"
    assert registered_model_name(TrainConfig.from_flat(dataset="mnist")) == "tftrain-mnist"


@pytest.mark.parametrize(
    "uri",
    [
        f"runs:/{RUN}/model",
        "models:/tftrain-fashion-mnist/3",
        "models:/my model@champion",
        f"models:/m-{RUN}",
    ],
)
def test_model_uri_forms_accepted(uri):
    assert check_model_uri(uri) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "model",
        "runs:/abc/model",
        f"runs:/{RUN}",
        "models:/",
        "models:/name",
        "models:/name/v1",
        "s3://x/y",
    ],
)
def test_malformed_model_uris_rejected(uri):
    with pytest.raises(UserError, match="invalid value for model_uri"):
        check_model_uri(uri)


def test_local_model_folder_accepted(tmp_path):
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    assert check_model_uri(str(tmp_path)) == str(tmp_path)


def test_dataset_and_model_forms_resolve_before_any_data_is_read(tmp_path):
    from tftrain.values import dataset_kind, model_kind, model_label, resolved_dataset

    folder = tmp_path / "My Flowers"
    folder.mkdir()
    (tmp_path / "loader.py").write_text("def load(): pass\n")
    (tmp_path / "net.keras").write_bytes(b"")
    assert [dataset_kind(v) for v in ("mnist", str(folder), "tfds:mnist:3.0.1", f"{tmp_path}/loader.py:load",
                                      "pkg.data:load")] == ["builtin", "folder", "tfds", "function", "function"]  # fmt: skip
    assert [model_kind(v) for v in ("cnn", "resnet50", f"{tmp_path}/net.keras", "pkg.nets:build")] == [
        "builtin", "application", "file", "builder"
    ]  # fmt: skip
    cfg = TrainConfig.from_flat(dataset=str(folder), model=f"{tmp_path}/net.keras")
    assert registered_model_name(cfg) == "tftrain-my-flowers"
    assert model_label(cfg.model.name) == "net"
    # builders are named after their file or module and function: runs of two builders named build differ
    (tmp_path / "small_resnet.py").write_text("def build(shape, classes): pass\n")
    assert model_label(f"{tmp_path}/small_resnet.py:build") == "small_resnet-build"
    assert model_label("pkg.nets:build") == "nets-build"
    assert resolved_dataset(str(folder)) == str(folder.resolve())
    assert TrainConfig.from_flat(model="resnet50", weights=f"{tmp_path}/net.keras", freeze_backbone=True, image_size="32x32")


def test_backbone_options_only_go_with_keras_applications():
    with pytest.raises(
        UserError, match="invalid value for freeze_backbone: received 'true'; allowed: false with model=cnn"
    ):
        TrainConfig.from_flat(model="cnn", freeze_backbone=True)


def test_near_misses_get_a_did_you_mean_and_relative_paths_under_mlflow_run_a_hint(monkeypatch):
    with pytest.raises(UserError, match=r"; did you mean cnn or cnn_bn\?$"):
        check_named(TrainConfig.from_flat(model="cnnn"))
    with pytest.raises(UserError, match=r"; did you mean fashion_mnist\?$"):
        check_named(TrainConfig.from_flat(dataset="fashion-mnist"))
    monkeypatch.setenv("MLFLOW_RUN_ID", "0" * 32)
    with pytest.raises(UserError, match=r"mlflow run resolves relative paths in the project folder; give an absolute"):
        check_named(TrainConfig.from_flat(model="my_model.py:build"))


def test_a_data_dir_of_images_points_at_dataset(tmp_path):
    from PIL import Image

    from tftrain.data.datasets import check_idx_folder

    (tmp_path / "cats").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "cats" / "a.png")
    with pytest.raises(
        UserError, match=rf"; it holds images: a folder of class folders is a dataset \(--dataset {tmp_path}"
    ):
        check_idx_folder(tmp_path)


def test_image_size_is_height_by_width_or_one_side_for_a_square():
    from tftrain.config import parse_image_size

    assert parse_image_size("128x96") == (128, 96) and parse_image_size("96") == (96, 96)
    assert parse_image_size("auto") is None


def test_the_config_is_grouped_by_concern_and_flat_only_at_the_edges(tmp_path):
    cfg = TrainConfig.from_flat(epochs=3, model="cnn", data_dir=str(tmp_path / "nowhere"), launcher="ray")
    assert (cfg.trainer.epochs, cfg.model.name, cfg.runtime.launcher) == (3, "cnn", "ray")
    assert cfg.runtime.engine == "auto" and cfg.runtime.resolved_engine == "custom"  # resolved, not rewritten
    assert cfg.flat()["model"] == "cnn" and list(cfg.flat()) == list(PARAMS)
    assert cfg.replace(epochs=5).trainer.epochs == 5 and cfg.trainer.epochs == 3
    assert TrainConfig.from_dict(dataclasses.asdict(cfg)) == cfg
    # no I/O when made: the missing folder is found where what the config names is looked up
    with pytest.raises(UserError, match="invalid value for data_dir"):
        check_named(cfg)
    with pytest.raises(UserError, match="unknown config parameter epoch; allowed: dataset, "):
        TrainConfig.from_flat(epoch=3)
