"""Batch normalization that holds at any run length, for every model kind and both engines.

Keras' BatchNormalization keeps moving averages of each batch's mean and variance for inference, with momentum
0.99: a time constant of 100 steps. A short run (a folder of a few hundred photos is ~10 steps an epoch) ends with
averages still near their start (mean 0, variance 1), so the model that validates, is registered and serves
answers at chance while it trains well (measured: MobileNetV2 from scratch on 1,430 photo crops, 12 epochs, test
accuracy 0.09 with 0.99, 0.66 with 0.9).

Two measures, measured on that folder (docs/own-data.md, "Batch normalization"):
- the momentum follows the run: a time constant of a fifth of an epoch (0.9 to 0.99), so the averages have
  forgotten their start after the first epoch and follow the weights as they change;
- while they have not yet (the first epochs of a run of a few steps an epoch), the statistics are estimated again
  before each validation from training images in training mode, as "precise BN" does (fvcore): the mean of
  every batch's mean and variance over a fixed sample, with momentum 0 for the passes.
Layers of a frozen backbone stay as they are (in inference mode, their statistics come from the weights file).
"""

from __future__ import annotations

import keras
import numpy as np

from tftrain.data.augment import all_layers

MOMENTUM_RANGE = (0.9, 0.99)
TIME_CONSTANT_EPOCHS = 0.2  # the averages' time constant, in epochs
REMEMBERS_START = 5.0  # time constants until the start weighs under 1% (e^-5) of an average
PRECISE_IMAGES = 1024  # training images the statistics are estimated on again


def batch_norms(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """The model's trainable BatchNormalization layers, nested models included."""
    return [
        layer for layer in all_layers(model) if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]


def momentum_for(steps_per_epoch: int) -> float:
    """A momentum whose time constant (1 / (1 - momentum) steps) is TIME_CONSTANT_EPOCHS of an epoch."""
    low, high = MOMENTUM_RANGE
    return float(np.clip(1.0 - 1.0 / max(1.0, TIME_CONSTANT_EPOCHS * steps_per_epoch), low, high))


def set_momentum(model: keras.Model, momentum: float) -> int:
    """Every trainable batch norm of `model` takes `momentum` (before training compiles its step); how many."""
    layers = batch_norms(model)
    for layer in layers:
        layer.momentum = momentum
    return len(layers)


def reestimate(model: keras.Model, images: np.ndarray, batch_size: int) -> None:
    """Each batch norm's moving mean and variance set to the mean of its batch statistics over `images`, the model
    run in training mode batch by batch (later layers see earlier ones normalized as in training)."""
    import tensorflow as tf

    layers = batch_norms(model)
    saved = [layer.momentum for layer in layers]
    sums = [[0.0, 0.0] for _ in layers]
    batches = range(0, len(images), batch_size)
    try:
        for layer in layers:
            layer.momentum = 0.0  # each pass leaves exactly its batch's statistics in the averages
        for start in batches:
            model(tf.constant(images[start : start + batch_size], tf.float32), training=True)
            for total, layer in zip(sums, layers, strict=True):
                total[0] += keras.ops.convert_to_numpy(layer.moving_mean)
                total[1] += keras.ops.convert_to_numpy(layer.moving_variance)
    finally:
        for layer, momentum in zip(layers, saved, strict=True):
            layer.momentum = momentum
    for (mean, variance), layer in zip(sums, layers, strict=True):
        layer.moving_mean.assign(mean / len(batches))
        layer.moving_variance.assign(variance / len(batches))


class PreciseStatistics(keras.callbacks.Callback):
    """Before each validation, while the moving averages still remember their start (fewer than REMEMBERS_START
    time constants of steps so far), estimate the statistics again on a fixed sample of training images (the same
    on every worker, so workers stay in step); the last validated statistics are the ones kept."""

    def __init__(self, train_images: np.ndarray, batch_size: int, steps_per_epoch: int, momentum: float, seed: int):
        super().__init__()
        order = np.random.default_rng(seed).permutation(len(train_images))[:PRECISE_IMAGES]
        self.sample, self.batch_size = train_images[np.sort(order)], batch_size
        self.steps_per_epoch, self.time_constant = steps_per_epoch, round(1.0 / (1.0 - momentum), 6)
        self.epoch = 0
        self.reestimated = 0  # epochs whose validation ran on re-estimated statistics

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_test_begin(self, logs=None):
        if (self.epoch + 1) * self.steps_per_epoch < REMEMBERS_START * self.time_constant:
            reestimate(self.model, self.sample, self.batch_size)
            self.reestimated += 1
