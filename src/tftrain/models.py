"""The write-up's two architectures and a stronger one, taking raw 28x28 pixels (0..255) and giving float32
class probabilities.

Scaling to 0..1 is the model's first layer, so a served model needs no client-side preprocessing. The softmax is
its own float32 layer, which keeps the output float32 under a mixed-precision policy.
"""

from __future__ import annotations

import keras
import tensorflow as tf

IMAGE_SHAPE = (28, 28)


def _mlp(x):
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    x = keras.layers.Dropout(0.2)(x)
    return x


def _cnn(x):
    """The write-up's Conv2D(32, 3, relu) -> MaxPooling2D, with the ReLU moved after the pooling: ReLU and max
    commute, so outputs and gradients are the same, and ReLU with its gradient runs on a quarter of the values
    (on this CPU they were 14% of the CNN's step)."""
    x = keras.layers.Reshape((*IMAGE_SHAPE, 1))(x)
    x = keras.layers.Conv2D(32, 3)(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    return x


@keras.saving.register_keras_serializable(package="tftrain")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras' BatchNormalization, trained with TensorFlow's fused kernel.

    Keras 3 normalizes a batch with separate moments, cast and arithmetic ops: on this CPU that doubled the step
    time of `cnn_bn`. The fused op computes the same training-mode normalization in one pass (and in bfloat16 under
    mixed_bfloat16). Inference, the weights and the moving averages are Keras' own, so a trained model is saved
    as a plain BatchNormalization (`portable_copy`) and loads anywhere."""

    def call(self, inputs, training=None, mask=None):
        fusable = len(inputs.shape) == 4 and self.axis in (-1, 3) and inputs.dtype in (tf.float32, tf.bfloat16)
        if not (training and fusable):
            return super().call(inputs, training=training, mask=mask)
        outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=tf.convert_to_tensor(self.gamma), offset=tf.convert_to_tensor(self.beta),
            mean=tf.zeros_like(self.gamma), variance=tf.ones_like(self.gamma), epsilon=self.epsilon,
            data_format="NHWC", is_training=True,
        )  # fmt: skip
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), variance.dtype)
        variance = (
            variance * (count - 1.0) / count
        )  # the fused op gives the unbiased variance; Keras keeps the biased one
        for average, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            average.assign(average * self.momentum + batch * (1.0 - self.momentum))
        return outputs


def _conv_bn(x, filters: int, pool: bool = False):
    """3x3 convolution, batch norm, ReLU; with `pool`, 2x2 max pooling before the ReLU (the same values as after
    it, on a quarter of the elements)."""
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    x = FusedBatchNormalization()(x)
    if pool:
        x = keras.layers.MaxPooling2D()(x)
    return keras.layers.Activation("relu")(x)


def _cnn_bn(x):
    """tftrain's stronger preset: random flips and shifts of up to 2 pixels (training only), three stages of 3x3 convolutions with
    batch normalization, a dense head with dropout."""
    x = keras.layers.Reshape((*IMAGE_SHAPE, 1))(x)
    x = keras.layers.RandomFlip("horizontal")(x)
    x = keras.layers.RandomTranslation(0.07, 0.07, fill_mode="constant")(x)
    x = _conv_bn(x, 32, pool=True)
    x = _conv_bn(_conv_bn(x, 64), 64, pool=True)
    x = keras.layers.Flatten()(_conv_bn(x, 128))
    x = keras.layers.Dropout(0.25)(x)
    x = keras.layers.Dense(256, activation="relu")(x)
    return keras.layers.Dropout(0.25)(x)


BODIES = {"mlp": _mlp, "cnn": _cnn, "cnn_bn": _cnn_bn}


def build_model(name: str, num_classes: int = 10) -> keras.Model:
    inputs = keras.Input(shape=IMAGE_SHAPE, dtype="float32", name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="scale")(inputs)
    x = BODIES[name](x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    probs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, probs, name=name)


def _rewritten(config, rewrite):
    """`config` with `rewrite` applied to every nested dict, outermost first."""
    if isinstance(config, dict):
        return {k: _rewritten(v, rewrite) for k, v in rewrite(config).items()}
    if isinstance(config, list):
        return [_rewritten(v, rewrite) for v in config]
    return config


def _copy(model: keras.Model, rewrite) -> keras.Model:
    copy = keras.Model.from_config(_rewritten(model.get_config(), rewrite))
    copy.set_weights(model.get_weights())
    return copy


def _float32_policy(config: dict) -> dict:
    if config.get("class_name") == "DTypePolicy":
        return {**config, "config": {**config["config"], "name": "float32"}}
    return config


def _stock_layer(config: dict) -> dict:
    if config.get("registered_name") == "tftrain>FusedBatchNormalization":
        return {**config, "class_name": "BatchNormalization", "module": "keras.layers", "registered_name": None}
    return config


def float32_copy(model: keras.Model) -> keras.Model:
    """The same layers and weights with every layer computing in float32. A mixed-precision graph does not convert
    to TFLite (float16 MatMul is no builtin op); this copy does."""
    return _copy(model, _float32_policy)


def portable_copy(model: keras.Model) -> keras.Model:
    """The same model with Keras' own layers only (FusedBatchNormalization becomes BatchNormalization, which
    computes the same at inference): what gets logged, so loading it needs no tftrain."""
    return _copy(model, _stock_layer)
