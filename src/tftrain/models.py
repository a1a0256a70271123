"""The write-up's two architectures, taking raw 28x28 pixels (0..255) and giving float32 class probabilities.

Scaling to 0..1 is the model's first layer, so a served model needs no client-side preprocessing. The softmax is
its own float32 layer, which keeps the output float32 under a mixed-precision policy.
"""

from __future__ import annotations

import keras

IMAGE_SHAPE = (28, 28)


def _mlp(x):
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    x = keras.layers.Dropout(0.2)(x)
    return x


def _cnn(x):
    x = keras.layers.Reshape((*IMAGE_SHAPE, 1))(x)
    x = keras.layers.Conv2D(32, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    return x


BODIES = {"mlp": _mlp, "cnn": _cnn}


def build_model(name: str, num_classes: int = 10) -> keras.Model:
    inputs = keras.Input(shape=IMAGE_SHAPE, dtype="float32", name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="scale")(inputs)
    x = BODIES[name](x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    probs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, probs, name=name)


def _float32_policies(config):
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy":
            return {**config, "config": {**config["config"], "name": "float32"}}
        return {k: _float32_policies(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_float32_policies(v) for v in config]
    return config


def float32_copy(model: keras.Model) -> keras.Model:
    """The same layers and weights with every layer computing in float32. A mixed-precision graph does not convert
    to TFLite (float16 MatMul is no builtin op); this copy does."""
    copy = keras.Model.from_config(_float32_policies(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy
