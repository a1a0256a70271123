"""Every kind of `model` as a Keras model that takes raw pixels of the task's shape (0..255) and gives float32
class probabilities: the contract that serving, TFLite and `predict` rely on.

Kinds: the write-up's MLP and CNN and a stronger CNN (for any input shape, channels and class count), a
keras.applications architecture (from scratch, or from a weights file, optionally with a frozen backbone), a
user's builder function, and a .keras file. Scaling to 0..1 is the model's first layer, so a served model needs no
client-side preprocessing; the softmax is its own float32 layer, which keeps the output float32 under a
mixed-precision policy.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from tftrain.config import MIN_APPLICATION_SIZE
from tftrain.data.augment import all_layers, identity_config
from tftrain.errors import UserError, invalid
from tftrain.user_code import first_line, load_function
from tftrain.values import model_kind

log = logging.getLogger(__name__)


def _as_image(x):
    """(N, H, W) gray pixels -> (N, H, W, 1), what convolutions take; (N, H, W, C) as it is."""
    return keras.layers.Reshape((*x.shape[1:], 1))(x) if len(x.shape) == 3 else x


def _mlp(x):
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    x = keras.layers.Dropout(0.2)(x)
    return x


def _cnn(x):
    """The write-up's Conv2D(32, 3, relu) -> MaxPooling2D, with the ReLU moved after the pooling: ReLU and max
    commute, so outputs and gradients are the same, and ReLU with its gradient runs on a quarter of the values
    (on this CPU they were 14% of the CNN's step)."""
    x = keras.layers.Conv2D(32, 3)(_as_image(x))
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    return x


@keras.saving.register_keras_serializable(package="tftrain")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras' BatchNormalization, trained with TensorFlow's fused kernel.

    Keras 3 normalizes a batch with separate moments, cast and arithmetic ops: on this CPU that doubled the step
    time of `cnn_bn` and was a third of MobileNetV2's and EfficientNetB0's. The fused op computes the same
    training-mode normalization in one pass (and in bfloat16 under mixed_bfloat16). Inference, the weights and the
    moving averages are Keras' own, so a trained model is saved as a plain BatchNormalization (`portable_copy`)
    and loads anywhere. What the fused op does not cover (a frozen layer, a mask, synchronized statistics,
    renormalization, an axis other than the last of 4-D images) runs Keras' own code."""

    def call(self, inputs, training=None, mask=None):
        fusable = (
            len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and inputs.dtype in (tf.float32, tf.bfloat16)
            and mask is None
            and not self.synchronized
            and not self.renorm
        )
        if not (training and self.trainable and fusable):
            return super().call(inputs, training=training, mask=mask)
        scale = tf.convert_to_tensor(self.gamma) if self.scale else tf.ones_like(self.moving_variance)
        offset = tf.convert_to_tensor(self.beta) if self.center else tf.zeros_like(self.moving_mean)
        outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=scale, offset=offset, mean=tf.zeros_like(scale), variance=tf.ones_like(scale),
            epsilon=self.epsilon, data_format="NHWC", is_training=True,
        )  # fmt: skip
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), variance.dtype)
        variance = (
            variance * (count - 1.0) / count
        )  # the fused op gives the unbiased variance; Keras keeps the biased one
        mean, variance = _over_replicas(mean, variance, count)
        for average, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            average.assign(average * self.momentum + batch * (1.0 - self.momentum))
        return outputs


def _over_replicas(mean: tf.Tensor, variance: tf.Tensor, count: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The statistics of the whole global batch from each replica's share of it (`count` values a channel; a share
    may be smaller, or empty at a dataset's end). Keras updates each replica's moving averages from its own share
    alone, so under a distribution strategy they drift apart: each device, and each worker, validates with its
    own, and the saved model has the first replica's. Normalizing a step still uses the replica's own batch, as
    Keras does (and as one device would at that batch size)."""
    replica = tf.distribute.get_replica_context()
    if replica is None or replica.num_replicas_in_sync == 1:
        return mean, variance
    weighted = [tf.math.multiply_no_nan(m, count) for m in (mean, variance + tf.square(mean))]  # empty: 0, not NaN
    total, square, count = replica.all_reduce("sum", [*weighted, count])
    mean = tf.math.divide_no_nan(total, count)
    return mean, tf.maximum(tf.math.divide_no_nan(square, count) - tf.square(mean), 0.0)


def _fused_layer(config: dict) -> dict:
    if config.get("class_name") == "BatchNormalization" and config.get("module") == "keras.layers":
        return {**config, "class_name": "FusedBatchNormalization", "module": None,
                "registered_name": "tftrain>FusedBatchNormalization"}  # fmt: skip
    return config


def with_fused_batch_norms(model: keras.Model) -> keras.Model:
    """`model` with each of Keras' BatchNormalization layers (nested models' too: a keras.applications backbone, a
    user's builder) a FusedBatchNormalization, the same weights: what training runs (`portable_copy` turns them
    back). A model without one, whose config does not build again (a subclassed model) or whose copy answers
    otherwise (state its config does not carry) comes back as it is."""
    if not any(type(layer) is keras.layers.BatchNormalization for layer in all_layers(model)):
        return model
    try:
        fused = _copy(model, _fused_layer)
    except Exception as e:  # a user's model whose get_config/from_config do not round-trip
        log.debug(f"batch norms left unfused: {type(e).__name__}: {first_line(e)}")
        return model
    probe = np.random.default_rng(0).uniform(0, 255, (2, *model.input_shape[1:])).astype("float32")
    answers = [keras.ops.convert_to_numpy(m(probe, training=False)) for m in (model, fused)]
    if not np.allclose(*answers, atol=1e-3):  # state its config does not carry (a custom layer's)
        log.debug("batch norms left unfused: the copy answers differently")
        return model
    return fused


def _conv_bn(x, filters: int, pool: bool = False):
    """3x3 convolution, batch norm, ReLU; with `pool`, 2x2 max pooling before the ReLU (the same values as after
    it, on a quarter of the elements)."""
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    x = FusedBatchNormalization()(x)
    if pool:
        x = keras.layers.MaxPooling2D()(x)
    return keras.layers.Activation("relu")(x)


def _cnn_bn(x):
    """tftrain's stronger preset: three stages of 3x3 convolutions with batch normalization, a dense head with
    dropout. Its augmentation runs in the input pipeline (augment.py), not in the model."""
    x = _conv_bn(_as_image(x), 32, pool=True)
    x = _conv_bn(_conv_bn(x, 64), 64, pool=True)
    x = keras.layers.Flatten()(_conv_bn(x, 128))
    x = keras.layers.Dropout(0.25)(x)
    x = keras.layers.Dense(256, activation="relu")(x)
    return keras.layers.Dropout(0.25)(x)


BODIES = {"mlp": _mlp, "cnn": _cnn, "cnn_bn": _cnn_bn}


def _head(inputs, x, name: str, logits: bool = True) -> keras.Model:
    """Logits (or probabilities) -> float32 probabilities, as the model's output."""
    if logits:
        probs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    else:
        probs = keras.layers.Activation("linear", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, probs, name=name)


def _pixels(input_shape: tuple[int, ...]):
    return keras.Input(shape=input_shape, dtype="float32", name="image")


def build_model(name: str, num_classes: int = 10, input_shape: tuple[int, ...] = (28, 28)) -> keras.Model:
    """A built-in architecture (mlp, cnn, cnn_bn) for images of `input_shape`: (H, W) gray or (H, W, C)."""
    inputs = _pixels(input_shape)
    x = keras.layers.Rescaling(1.0 / 255, name="scale")(inputs)
    x = BODIES[name](x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return _head(inputs, logits, name)


# snake-case name -> (keras.applications constructor, what pixels it expects); all take 0..255 RGB from us
APPLICATIONS: dict[str, tuple[str, str]] = {
    "mobilenet_v2": ("MobileNetV2", "minus_one_to_one"),
    "mobilenet_v3_small": ("MobileNetV3Small", "built_in"),
    "mobilenet_v3_large": ("MobileNetV3Large", "built_in"),
    "efficientnet_b0": ("EfficientNetB0", "built_in"),
    "efficientnet_v2_b0": ("EfficientNetV2B0", "built_in"),
    "resnet50": ("ResNet50", "caffe"),
}
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)  # caffe-style preprocessing: BGR order, mean subtracted


def _preprocess(x, kind: str):
    """Raw 0..255 RGB -> what the architecture's weights expect, with stock layers only (a served model must load
    without tftrain): MobileNetV2 -1..1; ResNet50 caffe-style (RGB -> BGR, ImageNet mean subtracted) as one frozen
    1x1 convolution; the others rescale inside themselves."""
    if kind == "minus_one_to_one":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(x)
    if kind == "caffe":
        bgr = np.eye(3, dtype="float32")[::-1].reshape(1, 1, 3, 3)
        layer = keras.layers.Conv2D(3, 1, trainable=False, name="preprocess")
        out = layer(x)
        layer.set_weights([bgr, -np.asarray(IMAGENET_BGR_MEAN, "float32")])
        return out
    return x


def _backbone(name: str, shape: tuple[int, int, int], weights: str) -> keras.Model:
    constructor = getattr(keras.applications, APPLICATIONS[name][0])
    try:
        with warnings.catch_warnings():
            # Keras only warns when a weights file leaves layers unloaded; a half-loaded backbone is an error here
            warnings.filterwarnings("error", category=UserWarning, module="keras.src.saving")
            return constructor(include_top=False, weights=weights or None, input_shape=shape, pooling="avg")
    except Exception as e:  # offline, a download raises URL errors of several kinds; a bad file OSError/ValueError
        if weights == "imagenet":
            raise UserError(
                f"weights=imagenet for model={name}: the download failed ({type(e).__name__}: {first_line(e)}); this "
                "machine may be offline: download the file where you are online (Keras keeps it in ~/.keras/models) "
                "and pass weights=PATH"
            ) from None
        if weights and isinstance(e, (OSError, ValueError, UserWarning)):
            raise UserError(
                f"invalid value for weights: received {weights!r}; cannot load it into {name}: {first_line(e) or type(e).__name__}"
            ) from None
        raise


def build_application(
    name: str, num_classes: int, input_shape: tuple[int, ...], weights: str = "", freeze_backbone: bool = False
) -> keras.Model:
    """A keras.applications architecture without its top, on images of `input_shape` (gray is repeated into three
    channels), with a new dropout + dense head; `weights` a local file or imagenet; `freeze_backbone` trains the
    head only (a frozen backbone's batch norms also stay in inference mode, as Keras 3 does for frozen layers)."""
    height, width = input_shape[:2]
    if min(height, width) < MIN_APPLICATION_SIZE:
        raise UserError(
            f"invalid combination: model={name} with images of {height}x{width}; allowed: images of at least "
            f"{MIN_APPLICATION_SIZE}x{MIN_APPLICATION_SIZE} (pass image_size=HxW, e.g. image_size=96x96)"
        )
    inputs = _pixels(input_shape)
    x = _as_image(inputs)
    if x.shape[-1] == 1:
        x = keras.layers.Concatenate(name="gray_to_rgb")([x, x, x])
    backbone = _backbone(name, (height, width, 3), weights)
    if freeze_backbone:
        backbone.trainable = False
    x = backbone(_preprocess(x, APPLICATIONS[name][1]))
    x = keras.layers.Dropout(0.2, name="head_dropout")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return _head(inputs, logits, name)


def _outputs_probabilities(model: keras.Model) -> bool:
    """Whether the model ends in a softmax (else its outputs are taken as logits)."""
    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return True
    activation = last.get_config().get("activation") if hasattr(last, "get_config") else None
    return activation == "softmax"


def _check_built(model, spec: str, num_classes: int, what: str) -> keras.Model:
    if not isinstance(model, keras.Model):
        raise UserError(f"{what} {spec} returned {type(model).__name__}, not a keras.Model")
    units = model.output_shape[-1] if isinstance(model.output_shape, tuple) else None
    if units != num_classes:
        raise UserError(
            f"{what} {spec}: its output has shape {model.output_shape}; allowed: (None, {num_classes}), one unit per "
            "class"
        )
    return model


def scales_pixels(model: keras.Model) -> bool:
    """Whether `model` scales its pixels itself before its first layer with weights: a Rescaling or Normalization
    layer, or arithmetic on its input (keras.applications' preprocess_input, `x / 255`), as Keras' tutorials write
    models. Random augmentation layers before it do not count either way."""
    return bool(_scaling(model))


def _scaling(model: keras.Model) -> bool | None:
    """True: `model` scales the pixels before any layer with weights; False: a layer with weights comes first;
    None: neither (a block of augmentation layers, as Keras' tutorials nest them: the next layer decides)."""
    layers = model.operations if hasattr(model, "operations") else model.layers  # Sequential has no operations
    for op in layers:
        if isinstance(op, (keras.layers.Rescaling, keras.layers.Normalization)):
            return True
        if isinstance(op, keras.Model):
            if (nested := _scaling(op)) is not None:
                return nested
            continue
        if not isinstance(op, keras.layers.Layer) or isinstance(op, keras.layers.Lambda):
            return True  # an op on the pixels (Divide, Subtract, ...) or a Lambda: the model's own preprocessing
        if op.weights:
            return False
    return None


def build_from_builder(spec: str, num_classes: int, input_shape: tuple[int, ...]) -> keras.Model:
    """A user's `build(input_shape, num_classes)`, called with (H, W, C). Its model gets raw 0..255 pixels, as
    keras.applications models and image_dataset_from_directory give them, when it scales them itself
    (`scales_pixels`); a model that does not gets them scaled to 0..1 first. Its output (logits or softmax
    probabilities) becomes float32 probabilities."""
    build = load_function(spec, "model builder")
    image_shape = (*input_shape, 1) if len(input_shape) == 2 else tuple(input_shape)
    try:
        inner = build(image_shape, num_classes)
    except Exception as e:  # the user's code
        raise UserError(
            f"model builder {spec} raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    inner = _check_built(inner, spec, num_classes, "model builder")
    inputs = _pixels(input_shape)
    x = inputs
    if not scales_pixels(inner):
        log.info(f"note: model builder {spec} does not scale pixels itself (no Rescaling layer first, as Keras' "
              "tutorials write): tftrain scales them to 0..1 before its model")  # fmt: skip
        x = keras.layers.Rescaling(1.0 / 255, name="scale")(inputs)
    try:
        x = inner(_as_image(x))
    except Exception as e:  # its input does not take (H, W, C)
        raise UserError(
            f"model builder {spec}: its model does not take images of shape {image_shape}: {str(e).splitlines()[0][:200]}"
        ) from None
    return _head(inputs, x, inner.name, logits=not _outputs_probabilities(inner))


def load_keras_file(path: str, num_classes: int, input_shape: tuple[int, ...]) -> keras.Model:
    """A .keras file (safe_mode: no arbitrary code) taking raw 0..255 pixels of the task's shape, as every model
    tftrain saves does; a logits output gets a float32 softmax."""
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # a corrupt file, unknown layers, a Lambda refused by safe_mode
        raise invalid(
            "model",
            path,
            f"a .keras file that loads with safe_mode ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
        ) from None
    model = _check_built(model, path, num_classes, "model file")
    if tuple(model.input_shape[1:]) != tuple(input_shape):
        raise UserError(
            f"model file {path} takes images of shape {tuple(model.input_shape[1:])}; the data has "
            f"{tuple(input_shape)}; pass image_size and channels to match it"
        )
    if _outputs_probabilities(model) and model.outputs[0].dtype == "float32":
        return model
    inputs = _pixels(input_shape)
    return _head(inputs, model(inputs), model.name, logits=not _outputs_probabilities(model))


def model_builder(
    model: str, num_classes: int, input_shape: tuple[int, ...], weights: str = "", freeze_backbone: bool = False
) -> Callable[[], keras.Model]:
    """How to build `model` for this task: called later, inside the strategy's scope and under the precision
    policy, so every variable lands where training needs it."""
    kind = model_kind(model)
    if kind == "builtin":
        return lambda: build_model(model, num_classes, input_shape)
    if kind == "application":
        return lambda: build_application(model, num_classes, input_shape, weights, freeze_backbone)
    if kind == "builder":
        return lambda: build_from_builder(model, num_classes, input_shape)
    return lambda: load_keras_file(model, num_classes, input_shape)


def _rewritten(config, rewrite):
    """`config` with `rewrite` applied to every nested dict, outermost first."""
    if isinstance(config, dict):
        return {k: _rewritten(v, rewrite) for k, v in rewrite(config).items()}
    if isinstance(config, list):
        return [_rewritten(v, rewrite) for v in config]
    return config


def _copy(model: keras.Model, rewrite) -> keras.Model:
    # the model's own class: a Sequential's config is not a functional one
    copy = type(model).from_config(_rewritten(model.get_config(), rewrite))
    copy.set_weights(model.get_weights())  # random layers, rewritten to Identity, have no weights
    for layer in all_layers(copy):  # state derived from weights (an adapted Normalization's mean and variance)
        if hasattr(layer, "finalize_state"):
            layer.finalize_state()
    return copy


def _float32_policy(config: dict) -> dict:
    if config.get("class_name") == "DTypePolicy":
        return {**config, "config": {**config["config"], "name": "float32"}}
    return config


def _stock_layer(config: dict) -> dict:
    if config.get("registered_name") == "tftrain>FusedBatchNormalization":
        return {**config, "class_name": "BatchNormalization", "module": "keras.layers", "registered_name": None}
    return identity_config(config)


def float32_copy(model: keras.Model) -> keras.Model:
    """The same layers and weights with every layer computing in float32. A mixed-precision graph does not convert
    to TFLite (float16 MatMul is no builtin op); this copy does."""
    return _copy(model, _float32_policy)


def portable_copy(model: keras.Model) -> keras.Model:
    """The same model with Keras' own layers only (FusedBatchNormalization becomes BatchNormalization, which
    computes the same at inference) and without random augmentation layers (Identity instead: what they are at
    inference, and what TFLite converts with builtin ops): what gets logged, so loading it needs no tftrain and
    it exports."""
    return _copy(model, _stock_layer)
