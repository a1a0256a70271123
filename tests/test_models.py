import keras
import numpy as np
import pytest

from tftrain.models import FusedBatchNormalization, build_model, portable_copy

# Flatten 784 -> Dense 128 (100,480) -> Dense 10 (1,290)
MLP_PARAMS = 784 * 128 + 128 + 128 * 10 + 10
# Conv 3x3x32 (320) -> pool to 13x13x32 = 5,408 -> Dense 64 (346,176) -> Dense 10 (650)
CNN_PARAMS = (9 * 32 + 32) + (13 * 13 * 32 * 64 + 64) + (64 * 10 + 10)


@pytest.mark.parametrize("name, params", [("mlp", MLP_PARAMS), ("cnn", CNN_PARAMS)])
def test_parameter_count_is_the_write_ups(name, params):
    assert build_model(name).count_params() == params


@pytest.mark.parametrize("name", ["mlp", "cnn", "cnn_bn"])
def test_raw_pixels_in_float32_probabilities_out(name):
    model = build_model(name)
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28)).astype(np.float32)
    probs = model.predict(pixels, verbose=0)
    assert probs.shape == (5, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert model.layers[1].name == "scale"
    scaled = model.layers[1](pixels)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(scaled), pixels / 255, rtol=1e-6)


def test_mlp_layers_follow_the_write_up():
    kinds = [type(layer).__name__ for layer in build_model("mlp").layers]
    assert kinds == ["InputLayer", "Rescaling", "Flatten", "Dense", "Dropout", "Dense", "Activation"]
    assert build_model("mlp").layers[4].rate == 0.2


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_fused_batch_norm_trains_like_keras_batch_norm(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        x = np.random.default_rng(0).normal(2, 3, size=(64, 7, 7, 5)).astype(np.float32)
        stock, fused = keras.layers.BatchNormalization(), FusedBatchNormalization()
        for layer in (stock, fused):
            layer.build(x.shape)
        outs = [keras.ops.convert_to_numpy(layer(x, training=True)).astype(np.float32) for layer in (stock, fused)]
        tolerance = 1e-5 if policy == "float32" else 0.05  # bfloat16 keeps about 3 significant digits
        np.testing.assert_allclose(outs[0], outs[1], atol=tolerance)
        for name in ("moving_mean", "moving_variance"):
            np.testing.assert_allclose(getattr(stock, name).numpy(), getattr(fused, name).numpy(), rtol=1e-5)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_cnn_bn_is_logged_with_stock_layers_that_predict_the_same():
    model = build_model("cnn_bn")
    copy = portable_copy(model)
    kinds = {type(layer).__name__ for layer in copy.layers}
    assert "BatchNormalization" in kinds and "FusedBatchNormalization" not in kinds
    assert {"RandomFlip", "RandomTranslation"} <= kinds  # augmentation: active in training only
    pixels = np.random.default_rng(1).integers(0, 256, size=(4, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(pixels, verbose=0), copy.predict(pixels, verbose=0))


def _write_up_cnn() -> keras.Model:
    """The write-up's CNN layer for layer: Conv2D(32, 3, activation="relu") -> MaxPooling2D -> Flatten -> Dense."""
    inputs = keras.Input((28, 28))
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.Reshape((28, 28, 1))(x)
    x = keras.layers.MaxPooling2D()(keras.layers.Conv2D(32, 3, activation="relu")(x))
    x = keras.layers.Dense(64, activation="relu")(keras.layers.Flatten()(x))
    return keras.Model(inputs, keras.layers.Activation("softmax")(keras.layers.Dense(10)(x)))


def test_cnn_computes_the_write_ups_function_and_gradients():
    """tftrain's CNN pools before its ReLU; with the same weights it gives the same outputs and gradients."""
    import tensorflow as tf

    ours, theirs = build_model("cnn"), _write_up_cnn()
    theirs.set_weights(ours.get_weights())
    rng = np.random.default_rng(2)
    pixels = tf.constant(rng.integers(0, 256, size=(16, 28, 28)).astype(np.float32))
    labels = tf.constant(rng.integers(0, 10, size=16))
    results = []
    for model in (ours, theirs):
        with tf.GradientTape() as tape:
            probs = model(pixels, training=True)
            loss = keras.losses.sparse_categorical_crossentropy(labels, probs)
        results.append((probs.numpy(), [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6, atol=1e-7)
    for mine, write_up in zip(results[0][1], results[1][1], strict=True):
        np.testing.assert_allclose(mine, write_up, rtol=1e-5, atol=1e-7)
