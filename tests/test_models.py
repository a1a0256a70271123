import keras
import numpy as np
import pytest

from tftrain.models import build_model

# Flatten 784 -> Dense 128 (100,480) -> Dense 10 (1,290)
MLP_PARAMS = 784 * 128 + 128 + 128 * 10 + 10
# Conv 3x3x32 (320) -> pool to 13x13x32 = 5,408 -> Dense 64 (346,176) -> Dense 10 (650)
CNN_PARAMS = (9 * 32 + 32) + (13 * 13 * 32 * 64 + 64) + (64 * 10 + 10)


@pytest.mark.parametrize("name, params", [("mlp", MLP_PARAMS), ("cnn", CNN_PARAMS)])
def test_parameter_count_is_the_write_ups(name, params):
    assert build_model(name).count_params() == params


@pytest.mark.parametrize("name", ["mlp", "cnn"])
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
