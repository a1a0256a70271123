"""Batch normalization at any run length: the momentum that follows the run, the statistics estimated again
before validation while the averages still remember their start, and a short run that no longer collapses."""

import keras
import numpy as np
import pytest

from tftrain.models.build import build_model
from tftrain.training import batchnorm


def test_the_momentum_gives_a_time_constant_of_a_fifth_of_an_epoch_within_keras_range():
    assert batchnorm.momentum_for(100) == pytest.approx(0.95)  # 1 / (1 - 0.95) = 20 steps = 100 / 5
    assert batchnorm.momentum_for(10) == 0.9 and batchnorm.momentum_for(1) == 0.9
    assert batchnorm.momentum_for(100_000) == 0.99


def test_every_trainable_batch_norm_takes_it_nested_models_included_frozen_ones_not():
    inner = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization()])
    frozen = keras.Sequential([keras.Input((6, 6, 4)), keras.layers.BatchNormalization()])
    frozen.trainable = False
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.BatchNormalization()(frozen(inner(inputs)))
    model = keras.Model(inputs, x)
    assert batchnorm.set_momentum(model, 0.93) == 2
    assert inner.layers[-1].momentum == 0.93 and frozen.layers[0].momentum == 0.99


def test_reestimated_statistics_are_the_mean_of_the_batch_statistics():
    inputs = keras.Input((5, 5, 2))
    layer = keras.layers.BatchNormalization(momentum=0.99)
    model = keras.Model(inputs, layer(inputs))
    images = np.random.default_rng(0).normal(3.0, 2.0, size=(40, 5, 5, 2)).astype(np.float32)
    batchnorm.reestimate(model, images, batch_size=16)  # batches of 16, 16 and 8
    batches = [images[i : i + 16] for i in (0, 16, 32)]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer.moving_mean),
        np.mean([b.mean(axis=(0, 1, 2)) for b in batches], axis=0),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer.moving_variance),
        np.mean([b.var(axis=(0, 1, 2)) for b in batches], axis=0),
        rtol=1e-4,
    )
    assert layer.momentum == 0.99  # as it was


def test_statistics_are_estimated_again_only_while_the_averages_remember_their_start():
    model = build_model("cnn_bn", 3, (12, 12))
    images = np.random.default_rng(1).integers(0, 256, size=(50, 12, 12)).astype(np.uint8)
    callback = batchnorm.PreciseStatistics(images, 16, steps_per_epoch=10, momentum=0.9, seed=0)
    callback.set_model(model)
    for epoch in range(7):  # time constant 10 steps: the start weighs under 1% after 50 steps, 5 epochs
        callback.on_epoch_begin(epoch)
        callback.on_test_begin()
    assert callback.reestimated == 4


@pytest.fixture(scope="module")
def fashion_subset():
    from tftrain.data.datasets import load_dataset

    data = load_dataset("fashion_mnist")
    return data.x_train[:3000], data.y_train[:3000], data.x_test[:1000], data.y_test[:1000]


@pytest.mark.parametrize("engine", ["fit", "custom"])
def test_one_short_epoch_of_cnn_bn_validates_like_it_trains(fashion_subset, tmp_path, engine):
    """Measured on main before: cnn_bn, 1 epoch of Fashion-MNIST, accuracy 0.74 and val_accuracy 0.25 (Keras'
    momentum 0.99 leaves the moving variance near 1 after a few hundred steps)."""
    from conftest import mlflow_store
    from tftrain.config import TrainConfig
    from tftrain.training.task import Task
    from tftrain.training.trainer import train

    x, y, x_val, y_val = fashion_subset
    task = Task("fashion-subset", tuple("abcdefghij"), (x, y), (x_val, y_val), (x_val, y_val),
                lambda: build_model("cnn_bn", 10, (28, 28)))  # fmt: skip
    cfg = TrainConfig.from_flat(model="cnn_bn", epochs=1, batch_size=64, engine=engine, precision="float32", tensorboard=False,
                      output_dir=str(tmp_path / "out"), run_name="short")  # fmt: skip
    with mlflow_store(tmp_path):
        result = train(cfg, task)
    assert result.history["val_accuracy"][0] > 0.65, result.history  # the running training accuracy: ~0.5
