import keras
import numpy as np
import pytest

from tftrain.data.augment import has_random_layers
from tftrain.models.build import FusedBatchNormalization, build_model, portable_copy

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


def _sequential_with_batch_norms(frozen: bool) -> keras.Model:
    """As Keras' tutorials write one: a Sequential, batch norms of every kind, one nested model that may be frozen."""
    inner = keras.Sequential([keras.Input((6, 6, 4)), keras.layers.Conv2D(4, 3, padding="same"),
                              keras.layers.BatchNormalization(center=False)], name="backbone")  # fmt: skip
    inner.trainable = not frozen
    return keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 3, padding="same"),
                             keras.layers.BatchNormalization(scale=False, momentum=0.5), inner,
                             keras.layers.BatchNormalization(axis=1), keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(3, activation="softmax")])  # fmt: skip


@pytest.mark.parametrize("frozen", [False, True])
def test_training_swaps_keras_batch_norms_for_fused_ones_that_train_the_same(frozen):
    """Every BatchNormalization of a model, nested ones too, becomes a FusedBatchNormalization with the same weights
    and settings: the same outputs, gradients and moving averages in training mode (a frozen one stays in inference
    mode, an axis the fused op does not take runs Keras' code), and back to stock layers for logging."""
    import tensorflow as tf

    from tftrain.data.augment import all_layers
    from tftrain.models.build import with_fused_batch_norms

    model = _sequential_with_batch_norms(frozen)
    fused = with_fused_batch_norms(model)
    kinds = [type(layer).__name__ for layer in all_layers(fused)]
    assert kinds.count("FusedBatchNormalization") == 3 and "BatchNormalization" not in kinds
    named = lambda m: ["/".join(w.path.split("/")[-2:]) for w in m.trainable_weights]  # noqa: E731 (layer/weight)
    assert named(fused) == named(model)
    rng = np.random.default_rng(3)
    pixels = tf.constant(rng.normal(1, 2, size=(8, 6, 6, 3)).astype(np.float32))
    labels = tf.constant(rng.integers(0, 3, size=8))
    results = []
    for m in (model, fused):
        with tf.GradientTape() as tape:
            loss = keras.losses.sparse_categorical_crossentropy(labels, m(pixels, training=True))
        gradients = tape.gradient(loss, m.trainable_variables)
        averages = [w.numpy() for w in m.non_trainable_weights]
        results.append((loss.numpy(), [g.numpy() for g in gradients], averages))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    for ours, theirs in zip(results[0][1] + results[0][2], results[1][1] + results[1][2], strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    copy = portable_copy(fused)
    assert "FusedBatchNormalization" not in {type(layer).__name__ for layer in all_layers(copy)}
    np.testing.assert_allclose(model.predict(pixels, verbose=0), copy.predict(pixels, verbose=0), rtol=1e-6)


MIRRORED_BATCH_NORM = """
import json, keras, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tftrain.models.build import FusedBatchNormalization
# one strategy for both: a second MirroredStrategy in a process reuses the first one's collective keys (TensorFlow)
found, strategy = {}, tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
for kind in (keras.layers.BatchNormalization, FusedBatchNormalization):
    with strategy.scope():
        model = keras.Sequential([keras.Input((4, 4, 2)), kind(momentum=0.0), keras.layers.Flatten(),
                                  keras.layers.Dense(2)])
        model.compile("sgd", "mse")
    shares = np.concatenate([np.zeros((4, 4, 4, 2)), np.full((4, 4, 4, 2), 10.0)]).astype("float32")
    model.fit(shares, np.zeros((8, 2)), batch_size=8, epochs=1, shuffle=False, verbose=0)
    layer = model.layers[0]
    found[kind.__name__] = [[v.numpy().tolist() for v in w.value.values] for w in (layer.moving_mean, layer.moving_variance)]
# 9 images in batches of 8: the last step gives one replica one image and the other none
model.fit(np.concatenate([shares, shares[:1]]), np.zeros((9, 2)), batch_size=8, epochs=1, shuffle=False, verbose=0)
found["finite after an empty share"] = bool(all(np.isfinite(v.numpy()).all() for w in (layer.moving_mean,
                                               layer.moving_variance) for v in w.value.values))
print(json.dumps(found))
"""


def test_fused_batch_norm_keeps_one_set_of_statistics_across_replicas():
    """Two replicas, one sees zeros, the other tens: Keras keeps each replica's own moving averages (0 and 10, so
    each device validates with its own and the saved model has the first's); the fused layer keeps the global
    batch's on both (mean 5, variance 25)."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", MIRRORED_BATCH_NORM], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["BatchNormalization"][0] == [[0.0, 0.0], [10.0, 10.0]]  # what this works around, still so in Keras
    assert found["FusedBatchNormalization"] == [[[5.0, 5.0], [5.0, 5.0]], [[25.0, 25.0], [25.0, 25.0]]]
    assert found["finite after an empty share"]  # weighted by each share's size: an empty one adds nothing


def test_copies_keep_an_adapted_normalization_and_renorm_stays_with_keras():
    """EfficientNet's stem (and a user's `Normalization.adapt`) keeps its mean and variance in state derived from
    its weights: the fused and the logged copies normalize alike. A renormalizing batch norm is not fused."""
    from tftrain.data.augment import all_layers
    from tftrain.models.build import with_fused_batch_norms

    rng = np.random.default_rng(4)
    pixels = rng.uniform(0, 255, size=(16, 6, 6, 3)).astype(np.float32)
    norm = keras.layers.Normalization()
    norm.adapt(pixels)
    model = keras.Sequential([keras.Input((6, 6, 3)), norm, keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(),
                              keras.layers.BatchNormalization(renorm=True), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax")])  # fmt: skip
    fused = with_fused_batch_norms(model)
    assert sum(isinstance(layer, FusedBatchNormalization) for layer in all_layers(fused)) == 2
    for copy in (fused, portable_copy(fused)):
        np.testing.assert_allclose(copy.predict(pixels, verbose=0), model.predict(pixels, verbose=0), rtol=1e-5)
    renorm = [layer for layer in all_layers(fused) if getattr(layer, "renorm", False)][0]
    x = rng.normal(2, 3, size=(8, 4, 4, 4)).astype(np.float32)
    stock = keras.layers.BatchNormalization(renorm=True)
    stock.build(x.shape)
    stock.set_weights([w.numpy() for w in renorm.weights])
    np.testing.assert_allclose(renorm(x, training=True), stock(x, training=True), rtol=1e-5)


def test_a_backup_that_does_not_load_into_the_model_is_named_in_one_line(tmp_path):
    """A backup an older tftrain wrote (Keras' batch norms, not fused) does not load into today's model: one line
    saying what to do, not Keras' traceback."""
    from tftrain.errors import UserError
    from tftrain.models.build import with_fused_batch_norms
    from tftrain.training.callbacks import SaveClock
    from tftrain.training.resume import Backup

    model = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])  # fmt: skip
    model.compile("adam", "mse")
    model.save_weights(tmp_path / "latest.weights.h5")
    (tmp_path / "training_metadata.json").write_text('{"epoch": 2}')
    fused = with_fused_batch_norms(model)
    fused.compile("adam", "mse")
    backup = Backup(str(tmp_path), SaveClock(0))
    backup.set_model(fused)
    with pytest.raises(UserError, match=f"cannot resume from the backup in {tmp_path}: it does not load into"):
        backup.on_train_begin()


def test_a_sequential_model_is_copied_as_a_sequential():
    """A Python task's build_model may return a keras.Sequential (as Keras' tutorials write it): its logged copy
    is made from its own class's config, random layers out, answers the same."""
    model = keras.Sequential([keras.Input((8, 8)), keras.layers.RandomFlip("horizontal"), keras.layers.Flatten(),
                              keras.layers.Dense(3, activation="softmax")])  # fmt: skip
    copy = portable_copy(model)
    assert isinstance(copy, keras.Sequential) and "RandomFlip" not in {type(layer).__name__ for layer in copy.layers}
    pixels = np.random.default_rng(2).random((4, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(model.predict(pixels, verbose=0), copy.predict(pixels, verbose=0), rtol=1e-6)


def test_cnn_bn_is_logged_with_stock_layers_that_predict_the_same():
    model = build_model("cnn_bn")
    copy = portable_copy(model)
    kinds = {type(layer).__name__ for layer in copy.layers}
    assert "BatchNormalization" in kinds and "FusedBatchNormalization" not in kinds
    assert not {"RandomFlip", "RandomTranslation"} & kinds  # augmentation runs in the input pipeline (augment.py)
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


# --- every kind of model, for any task shape -------------------------------------------------------------------

from tftrain.errors import UserError  # noqa: E402
from tftrain.models.build import build_application, build_from_builder, load_keras_file  # noqa: E402


def _probabilities(model, shape, classes):
    pixels = np.random.default_rng(3).integers(0, 256, size=(3, *shape)).astype(np.float32)
    probs = keras.ops.convert_to_numpy(model(pixels, training=False))
    assert probs.shape == (3, classes) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert (probs >= 0).all()
    return probs


@pytest.mark.parametrize("name", ["mlp", "cnn", "cnn_bn"])
@pytest.mark.parametrize("shape", [(40, 30, 3), (17, 23)])
def test_built_ins_take_any_shape_and_class_count(name, shape):
    model = build_model(name, 5, shape)
    assert model.input_shape == (None, *shape)
    _probabilities(model, shape, 5)


@pytest.mark.parametrize("shape", [(32, 40, 3), (36, 32)])
def test_a_keras_application_takes_gray_or_colour_raw_pixels(shape):
    model = build_application("mobilenet_v3_small", 4, shape)
    assert model.input_shape == (None, *shape)
    _probabilities(model, shape, 4)


def test_a_keras_application_refuses_images_smaller_than_it_can_take():
    with pytest.raises(UserError, match="model=resnet50 with images of 28x28; allowed: images of at least 32x32"):
        build_application("resnet50", 10, (28, 28))


@pytest.mark.parametrize("name, preprocess", [("resnet50", "resnet50"), ("mobilenet_v2", "mobilenet_v2")])
def test_application_preprocessing_is_keras_own_in_stock_layers(name, preprocess):
    model = build_application(name, 3, (32, 32, 3))
    layer = model.get_layer("preprocess")
    pixels = np.random.default_rng(4).integers(0, 256, size=(2, 32, 32, 3)).astype(np.float32)
    expected = getattr(keras.applications, preprocess).preprocess_input(pixels.copy())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(pixels)), expected, rtol=1e-5, atol=1e-3)


def test_a_weights_file_starts_the_backbone_and_freezing_trains_the_head_only(tmp_path):
    source = keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg"
    )
    source.set_weights([w + 0.01 for w in source.get_weights()])  # not what a fresh init gives
    path = tmp_path / "backbone.weights.h5"
    source.save_weights(path)
    model = build_application("mobilenet_v3_small", 3, (32, 32, 3), weights=str(path), freeze_backbone=True)
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    for mine, theirs in zip(backbone.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert {v.path.split("/")[0] for v in model.trainable_variables} == {"logits"}


def test_a_weights_file_of_another_architecture_is_named(tmp_path):
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)
    with pytest.raises(UserError, match=f"invalid value for weights: received '{path}'; cannot load it into"):
        build_application("mobilenet_v3_small", 3, (32, 32, 3), weights=str(path))


BUILDERS = """
import keras

def logits(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name="mine")

def probabilities(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(x))

def raises(input_shape, num_classes):
    raise RuntimeError("no GPU today")

def not_a_model(input_shape, num_classes):
    return "a string"

def wrong_units(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, keras.layers.Dense(num_classes + 1)(keras.layers.Flatten()(inputs)))

def seen(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    scaled_max = keras.layers.GlobalMaxPooling2D()(inputs)
    return keras.Model(inputs, keras.layers.Activation("softmax")(keras.layers.Dense(num_classes)(scaled_max)))
"""


@pytest.fixture
def builders(tmp_path):
    path = tmp_path / "builders.py"
    path.write_text(BUILDERS)
    return str(path)


def test_a_user_builder_gets_h_w_c_and_pixels_scaled_to_one(builders):
    model = build_from_builder(f"{builders}:logits", 3, (20, 16))
    assert model.input_shape == (None, 20, 16) and model.get_layer("mine").input_shape == (None, 20, 16, 1)
    probs = _probabilities(model, (20, 16), 3)
    pixels = np.random.default_rng(3).integers(0, 256, size=(3, 20, 16)).astype(np.float32)  # as _probabilities
    logits = model.get_layer("mine")(pixels[..., None] / 255.0)
    np.testing.assert_allclose(probs, keras.ops.convert_to_numpy(keras.ops.softmax(logits)), rtol=1e-5)


KERAS_WAY = """
import keras

def rescales(input_shape, num_classes):  # as Keras' tutorials write models
    inputs = keras.Input(input_shape)
    x = keras.layers.RandomFlip("horizontal")(inputs)
    x = keras.layers.Rescaling(1.0 / 255)(x)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.RandomTranslation(0.1, 0.1)(x))
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))

def preprocess(input_shape, num_classes):  # keras.applications' preprocess_input: arithmetic on the pixels
    inputs = keras.Input(input_shape)
    x = keras.applications.mobilenet_v2.preprocess_input(inputs)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(x))
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))

def sequential(input_shape, num_classes):
    return keras.Sequential([keras.Input(input_shape), keras.layers.Rescaling(1.0 / 255), keras.layers.Flatten(),
                             keras.layers.Dense(num_classes)])

def augmented_first(input_shape, num_classes):  # Keras' image classification tutorial: augmentation as a block
    augmentation = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1)])
    return keras.Sequential([keras.Input(input_shape), augmentation, keras.layers.Rescaling(1.0 / 255),
                             keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(),
                             keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(num_classes)])
"""


@pytest.mark.parametrize("function", ["rescales", "preprocess", "sequential", "augmented_first"])
def test_a_builder_that_scales_pixels_itself_gets_raw_pixels(tmp_path, function, capsys):
    """As keras.applications and image_dataset_from_directory give them: a model written the Keras way would see
    values up to 0.004 if tftrain scaled them first (measured: it then does not learn)."""
    (tmp_path / "keras_way.py").write_text(KERAS_WAY)
    model = build_from_builder(f"{tmp_path}/keras_way.py:{function}", 3, (12, 10, 3))
    inner = model.layers[-2]
    pixels = np.random.default_rng(5).integers(0, 256, size=(2, 12, 10, 3)).astype(np.float32)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(pixels, training=False)),
        keras.ops.convert_to_numpy(keras.ops.softmax(inner(pixels, training=False))),
        rtol=1e-5,
    )
    assert "does not scale pixels itself" not in capsys.readouterr().out


def test_a_builder_that_does_not_scale_pixels_is_told_and_fed_0_to_1(builders, capsys):
    build_from_builder(f"{builders}:logits", 3, (20, 16))
    assert "does not scale pixels itself (no Rescaling layer first" in capsys.readouterr().out


def test_a_builders_random_layers_train_but_leave_the_logged_model_and_it_converts(tmp_path):
    """Keras' random layers are identity at inference, yet they put ImageProjectiveTransformV3 and stateless-random
    ops into a graph that TFLite cannot convert with builtin ops: the logged copy has Identity layers instead."""
    from tftrain.ship.export import check_batch_independent, convert, litert_predict

    (tmp_path / "keras_way.py").write_text(KERAS_WAY)
    model = build_from_builder(f"{tmp_path}/keras_way.py:rescales", 3, (12, 10, 3))
    assert has_random_layers(model)
    copy = portable_copy(model)
    assert not has_random_layers(copy)
    pixels = np.random.default_rng(5).integers(0, 256, size=(3, 12, 10, 3)).astype(np.float32)
    np.testing.assert_allclose(model.predict(pixels, verbose=0), copy.predict(pixels, verbose=0), rtol=1e-6)
    copy.export(str(tmp_path / "saved"), format="tf_saved_model", verbose=False)
    (tmp_path / "model.tflite").write_bytes(convert(tmp_path / "saved", "float32"))  # builtin ops only, or it raises
    # batch norm in inference mode after the random layers' place (Keras records their calls with training=True,
    # which once carried over to the layers after them): one image alone answers as within a batch, as Keras does
    check_batch_independent(tmp_path / "model.tflite", pixels)
    np.testing.assert_allclose(litert_predict(tmp_path / "model.tflite", pixels), model.predict(pixels, verbose=0),
                               atol=1e-5)  # fmt: skip
    model.export(str(tmp_path / "with-random"), format="tf_saved_model", verbose=False)
    with pytest.raises(UserError, match="needs TF Select ops"):
        convert(tmp_path / "with-random", "float32")


def test_a_builder_ending_in_softmax_is_not_softmaxed_twice(builders):
    model = build_from_builder(f"{builders}:probabilities", 4, (8, 8, 3))
    inner = model.layers[-2]
    pixels = np.random.default_rng(5).integers(0, 256, size=(2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(pixels)), keras.ops.convert_to_numpy(inner(pixels / 255.0)), rtol=1e-5
    )


@pytest.mark.parametrize(
    "function, message",
    [
        ("raises", "model builder {}:raises raised RuntimeError: no GPU today"),
        ("not_a_model", "model builder {}:not_a_model returned str, not a keras.Model"),
        ("wrong_units", "model builder {}:wrong_units: its output has shape (None, 4); allowed: (None, 3)"),
        ("missing", "model builder {}:missing: {} has no function 'missing'"),
    ],
)
def test_a_builder_that_fails_is_named_in_one_line(builders, function, message):
    with pytest.raises(UserError) as info:
        build_from_builder(f"{builders}:{function}", 3, (8, 8, 3))
    assert str(info.value).startswith(message.format(builders, builders)) and "\n" not in str(info.value)


def test_a_keras_file_is_taken_as_it_is_and_checked_against_the_task(tmp_path):
    path = tmp_path / "trained.keras"
    build_model("cnn", 4, (12, 12, 3)).save(path)
    model = load_keras_file(str(path), 4, (12, 12, 3))
    assert model.layers[1].name == "scale"  # its own raw-pixel input, not wrapped again
    _probabilities(model, (12, 12, 3), 4)
    with pytest.raises(UserError, match=r"takes images of shape \(12, 12, 3\); the data has \(28, 28\)"):
        load_keras_file(str(path), 4, (28, 28))
    with pytest.raises(UserError, match=r"its output has shape \(None, 4\); allowed: \(None, 10\)"):
        load_keras_file(str(path), 10, (12, 12, 3))


def test_a_keras_file_with_code_in_it_is_refused(tmp_path):
    inputs = keras.Input((4, 4))
    outputs = keras.layers.Lambda(lambda x: x * 2)(keras.layers.Flatten()(inputs))
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(outputs)).save(path)
    with pytest.raises(UserError, match="invalid value for model: .*a .keras file that loads with safe_mode"):
        load_keras_file(str(path), 2, (4, 4))
