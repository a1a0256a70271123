"""Augmentation in the input pipeline: presets, what auto picks, training batches only."""

import numpy as np
import pytest

from tftrain.data.augment import batch_augmenter, resolve
from tftrain.data.datasets import make_dataset


@pytest.mark.parametrize(
    "augment, model, dataset, own, expected",
    [
        ("auto", "mlp", "fashion_mnist", False, "none"),  # the write-up's models keep its recipe
        ("auto", "cnn", "/photos", False, "none"),
        ("auto", "cnn_bn", "fashion_mnist", False, "flip"),
        ("auto", "cnn_bn", "mnist", False, "none"),  # a flipped 2 is no 2
        ("auto", "mobilenet_v2", "/photos", False, "flip"),
        ("auto", "nets.py:build", "/photos", True, "none"),  # its own random layers do it
        ("strong", "mlp", "mnist", False, "strong"),  # asked for: as asked
    ],
)
def test_auto_picks_a_preset_by_model_and_data(augment, model, dataset, own, expected):
    assert resolve(augment, model, dataset, own) == expected


@pytest.mark.parametrize("shape", [(64, 20, 24, 3), (64, 20, 24)])
@pytest.mark.parametrize("preset", ["flip", "standard", "strong"])
def test_presets_change_training_batches_within_the_pixel_range_and_every_epoch_anew(shape, preset):
    images = np.random.default_rng(0).integers(0, 256, size=shape).astype(np.uint8)
    labels = np.arange(len(images)) % 3
    ds = make_dataset(images, labels, 16, shuffle=True, seed=1, augment=batch_augmenter(preset, 1))
    first, second = list(ds), list(ds)
    x, y = first[0]
    assert x.shape == (16, *shape[1:]) and x.dtype == "float32" and y.dtype == "int32"
    pixels = np.concatenate([b[0].numpy() for b in first])
    assert pixels.min() >= 0.0 and pixels.max() <= 255.0
    assert not np.allclose(first[0][0].numpy(), second[0][0].numpy())  # a new draw each epoch
    assert sorted(np.concatenate([b[1].numpy() for b in first]).tolist()) == sorted(labels.tolist())  # each once


def test_none_leaves_the_pipeline_as_it_was():
    assert batch_augmenter("none", 0) is None


def test_training_batches_are_augmented_and_validation_batches_are_not(tmp_path):
    from tftrain.config import TrainConfig
    from tftrain.training.plan import datasets as _datasets
    from tftrain.training.runtime import build_runtime

    cfg = TrainConfig(model="cnn_bn", precision="float32")
    images = np.random.default_rng(2).integers(0, 256, size=(32, 10, 10, 3)).astype(np.uint8)
    labels = np.arange(32) % 2
    train_data, val_data = _datasets(cfg, build_runtime(cfg), (images, labels), (images, labels), 8, "standard")
    assert next(iter(train_data))[0].dtype == "float32"
    assert next(iter(val_data))[0].dtype == "uint8"
    np.testing.assert_array_equal(np.concatenate([b[0].numpy() for b in val_data]), images)
