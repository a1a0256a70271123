"""Augmentation: random changes to training batches, in the input pipeline, never in the model.

Keras' random layers left inside a model put ImageProjectiveTransformV3 and stateless-random ops into its graph
(identity at inference, yet the TFLite converter needs TF Select ops for them, which LiteRT cannot run), and a
served model would carry them. So the presets run as a `tf.data` map on the training split's batches only, on
uint8 pixels in and float32 pixels (0..255) out, as the model takes them; validation, test, export and serving see
the images as they are. A builder's own random layers stay in its model for training and are taken out of the
logged copy (`without_random_layers`).
"""

from __future__ import annotations

from tftrain.config import AUGMENTS  # noqa: F401 - the presets' names, validated with the config

# auto: none for the write-up's MLP and CNN (its recipe; the speed figures), for digits (a flipped 2 is no 2) and
# for a model with random layers of its own; flip for every other model. Measured with the defaults' 15 epochs
# (docs/own-data.md, "Augmentation"): standard's shifts and zooms cost cnn_bn 5 points on 2,000
# Fashion-MNIST images (0.786 against 0.841 with flip, 0.836 none) and gained nothing on 1,430 photo crops
# (0.811, flip 0.769, none 0.818: within the 143 test images' noise); they pay off in longer runs
AUTO_NONE_MODELS = ("mlp", "cnn")
AUTO_NONE_DATASETS = ("mnist",)
# Keras' layers that change images at random in training and are the identity at inference (RandomCrop is not:
# it center-crops at inference, so it stays)
RANDOM_LAYERS = (
    "RandomFlip", "RandomTranslation", "RandomRotation", "RandomZoom", "RandomContrast", "RandomBrightness",
    "RandomGrayscale", "RandomHue", "RandomSaturation", "RandomSharpness", "RandomShear", "RandomColorJitter",
    "RandomErasing", "RandomGaussianBlur", "RandomPerspective", "RandomElasticTransform", "RandomInvert",
    "RandomPosterization", "AugMix", "RandAugment", "CutMix", "MixUp", "Solarization", "GaussianNoise",
    "GaussianDropout",
)  # fmt: skip


def resolve(augment: str, model: str, dataset: str, own_random_layers: bool) -> str:
    """The preset `augment=auto` stands for (see AUGMENTS); any other value as it is."""
    if augment != "auto":
        return augment
    if model in AUTO_NONE_MODELS or dataset in AUTO_NONE_DATASETS or own_random_layers:
        return "none"
    return "flip"


def _layers(preset: str, seed: int) -> list:
    """The preset as Keras preprocessing layers: flip mirrors left-right; standard adds shifts and zooms of up to
    10% (edges filled by reflection); strong adds rotations of up to 18 degrees and contrast changes of 20%."""
    import keras

    layers = [keras.layers.RandomFlip("horizontal", seed=seed)]
    if preset in ("standard", "strong"):
        layers += [
            keras.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 1),
            keras.layers.RandomZoom(0.1, fill_mode="reflect", seed=seed + 2),
        ]
    if preset == "strong":
        layers += [
            keras.layers.RandomRotation(0.05, fill_mode="reflect", seed=seed + 3),
            keras.layers.RandomContrast(0.2, value_range=(0, 255), seed=seed + 4),
        ]
    return layers


def batch_augmenter(preset: str, seed: int):
    """A tf.data map function (images, labels) -> (augmented float32 images, labels) for batches of uint8 images
    (N, H, W) or (N, H, W, C); None for "none"."""
    if preset == "none":
        return None
    import tensorflow as tf

    layers = _layers(preset, seed)

    def augment(images, labels):
        gray = images.shape.rank == 3
        x = tf.cast(images[..., None] if gray else images, tf.float32)
        for layer in layers:
            x = layer(x, training=True)
        x = tf.clip_by_value(x, 0.0, 255.0)  # interpolation and contrast may overshoot the pixel range
        return (x[..., 0] if gray else x), labels

    return augment


def all_layers(model) -> list:
    """Every layer of `model`, those of the models nested in it included, outermost first."""
    import keras

    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found += all_layers(layer)
    return found


def has_random_layers(model) -> bool:
    """Whether `model` (or a model nested in it) has one of Keras' random layers (RANDOM_LAYERS)."""
    return any(type(layer).__name__ in RANDOM_LAYERS for layer in all_layers(model))


def identity_config(config: dict) -> dict:
    """A layer config rewritten to keras.layers.Identity when it is one of RANDOM_LAYERS (same name, dtype).

    Keras 3 records a random layer's call in a functional model with `training=True` (its call's default), and a
    layer called with an explicit `training` sets it for every layer after it in the same call: a SavedModel or
    TFLite file of the model then runs the batch norms that follow in training mode, on the batch's own
    statistics (answers that change with the rest of the batch). The call's recorded kwarg goes too."""
    if config.get("class_name") in RANDOM_LAYERS and config.get("module", "").startswith("keras"):
        inner = config.get("config", {})
        kept = {k: inner[k] for k in ("name", "trainable", "dtype") if k in inner}
        nodes = [{**node, "kwargs": {k: v for k, v in node.get("kwargs", {}).items() if k != "training"}}
                 for node in config.get("inbound_nodes", [])]  # fmt: skip
        return {**config, "class_name": "Identity", "module": "keras.layers", "registered_name": None, "config": kept,
                **({"inbound_nodes": nodes} if "inbound_nodes" in config else {})}  # fmt: skip
    return config
