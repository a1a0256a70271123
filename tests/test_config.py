import dataclasses

import pytest

from tftrain.config import TrainConfig, check_model_uri
from tftrain.errors import UserError

RUN = "0123456789abcdef0123456789abcdef"


def test_defaults_are_valid_and_match_the_write_up():
    cfg = TrainConfig()
    assert (cfg.dataset, cfg.model, cfg.validation_split) == ("fashion_mnist", "mlp", 0.2)
    assert cfg.registered_model_name == "tftrain-fashion-mnist"
    assert set(cfg.as_params()) == {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("epochs", 0, "an integer >= 1"),
        ("batch_size", -5, "an integer >= 1"),
        ("steps_per_execution", 0, "an integer >= 1"),
        ("model", "resnet", "one of mlp, cnn"),
        ("dataset", "cifar10", "one of fashion_mnist, mnist"),
        ("early_stopping_monitor", "val_acc", "one of val_loss"),
        ("validation_split", 1.0, "strictly between 0 and 1"),
        ("validation_split", 0.0, "strictly between 0 and 1"),
        ("learning_rate", 0.0, "a number > 0"),
        ("learning_rate", float("nan"), "a number > 0"),
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
    with pytest.raises(UserError) as info:
        TrainConfig(**{field: value})
    message = str(info.value)
    assert f"invalid value for {field}" in message
    assert repr(value) in message
    assert allowed in message
    assert "\n" not in message


def test_explicit_model_name_is_used():
    assert TrainConfig(model_name="fm-prod").registered_model_name == "fm-prod"
    assert TrainConfig(dataset="mnist").registered_model_name == "tftrain-mnist"


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
