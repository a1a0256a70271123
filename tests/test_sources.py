"""tfds and user-function datasets (sources.py), on real tensorflow-datasets folders that the tests prepare offline
and on user functions written into a temp folder."""

from __future__ import annotations

import socket
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from tftrain.data.images import to_pixels
from tftrain.data.sources import load_function_source, load_tfds
from tftrain.errors import UserError

SHAPES = ("circle", "square", "triangle")
RNG = np.random.default_rng(7)
COLOUR = {
    "train": RNG.integers(0, 256, (10, 16, 12, 3), np.uint8),
    "test": RNG.integers(0, 256, (5, 16, 12, 3), np.uint8),
}
COLOUR_LABELS = {"train": np.arange(10) % 3, "test": np.array([2, 1, 0, 2, 1])}
GRAY = {s: RNG.integers(0, 256, (n, 8, 10, 1), np.uint8) for s, n in (("train", 6), ("validation", 3), ("test", 4))}


def _prepare(data_dir, name, version, features, examples, supervised_keys=None) -> None:
    """Prepare a tiny dataset with tfds' own builder machinery: `examples` maps split -> list of feature dicts."""
    builder_name = name

    # skip_registration: tfds keeps no global entry, so the same name can be built at several versions
    class Tiny(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = builder_name
        VERSION = tfds.core.Version(version)

        def _info(self):
            features_dict = tfds.features.FeaturesDict(features)
            return tfds.core.DatasetInfo(builder=self, features=features_dict, supervised_keys=supervised_keys)

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(rows) for split, rows in examples.items()}

        def _generate_examples(self, rows):
            yield from enumerate(rows)

    config = tfds.download.DownloadConfig(try_download_gcs=False)
    Tiny(data_dir=str(data_dir)).download_and_prepare(download_config=config)


def _rows(images, labels, image_key="image", label_key="label"):
    return [{image_key: x, label_key: int(y)} for x, y in zip(images, labels, strict=True)]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A data folder with five prepared datasets; any socket connection while preparing or reading fails."""
    root = tmp_path_factory.mktemp("tfds")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", lambda *a: pytest.fail(f"network use: {a}"))
        image = {"image": tfds.features.Image(shape=(16, 12, 3)), "label": tfds.features.ClassLabel(names=SHAPES)}
        colour = {s: _rows(COLOUR[s], COLOUR_LABELS[s]) for s in ("train", "test")}
        _prepare(root, "tftrain_tiny_shapes", "1.0.0", image, colour, ("image", "label"))
        older = {s: rows[:2] for s, rows in colour.items()}
        _prepare(root, "tftrain_tiny_shapes", "0.9.0", image, older, ("image", "label"))
        gray = {
            "picture": tfds.features.Image(shape=(8, 10, 1)),
            "digit": tfds.features.ClassLabel(names=["zero", "one"]),
        }
        rows = {s: _rows(GRAY[s], np.arange(len(GRAY[s])) % 2, "picture", "digit") for s in GRAY}
        _prepare(root, "tftrain_tiny_gray", "2.0.0", gray, rows)  # no supervised keys: features found by type
        numbers = {
            "x": tfds.features.Tensor(shape=(2,), dtype=np.float32),
            "label": tfds.features.ClassLabel(names=SHAPES),
        }
        vectors = [{"x": np.ones(2, np.float32), "label": 1}]
        _prepare(root, "tftrain_tiny_numbers", "1.0.0", numbers, {"train": vectors, "test": vectors})
        _prepare(root, "tftrain_tiny_trainonly", "1.0.0", image, {"train": colour["train"]}, ("image", "label"))
        yield root


def _canonical(images, labels):
    """tfds shuffles examples when it writes them: compare as sets, sorted by pixel bytes."""
    order = sorted(range(len(images)), key=lambda i: images[i].tobytes())
    return np.asarray(images)[order], np.asarray(labels)[order]


def _assert_split(split, images, labels):
    x, y = split
    assert x.dtype == np.uint8 and y.dtype == np.int32 and x.shape[0] == y.shape[0]
    got, expected = _canonical(x, y), _canonical(images, labels)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_tfds_default_version_keeps_size(tfds_dir):
    data = load_tfds("tfds:tftrain_tiny_shapes", str(tfds_dir), None, None)
    assert data.class_names == SHAPES and data.validation is None
    assert data.source == f"tfds tftrain_tiny_shapes 1.0.0 from {tfds_dir}"
    assert data.train[0].shape == (10, 16, 12, 3)
    _assert_split(data.train, COLOUR["train"], COLOUR_LABELS["train"])
    _assert_split(data.test, COLOUR["test"], COLOUR_LABELS["test"])


def test_tfds_explicit_version_resized_to_gray(tfds_dir):
    data = load_tfds("tfds:tftrain_tiny_shapes:0.9.0", str(tfds_dir), (8, 6), 1)
    assert data.train[0].shape == (2, 8, 6) and "0.9.0" in data.source
    resized = [to_pixels(Image.fromarray(x), (8, 6), 1) for x in COLOUR["train"][:2]]
    _assert_split(data.train, resized, COLOUR_LABELS["train"][:2])


def test_tfds_validation_split_and_gray_without_supervised_keys(tfds_dir):
    data = load_tfds("tfds:tftrain_tiny_gray", str(tfds_dir), None, None)
    assert data.class_names == ("zero", "one")
    for split in ("train", "validation", "test"):
        _assert_split(getattr(data, split), GRAY[split][..., 0], np.arange(len(GRAY[split])) % 2)
    colour = load_tfds("tfds:tftrain_tiny_gray", str(tfds_dir), (4, 5), 3)
    assert colour.validation[0].shape == (3, 4, 5, 3)


def test_tfds_over_the_memory_budget_is_read_once_into_the_cache_then_from_disk(tfds_dir, tmp_path, capsys, monkeypatch):
    """Over in_memory_mb (0 here), the splits land in the image cache and are read a batch at a time: the same
    pixels and labels, the second load reading nothing from tfds; a validation split held out of train stays on
    disk too."""
    from tftrain.data.datasets import load_task_data
    from tftrain.data.disk import DiskImages

    cache = tmp_path / "cache"
    expected = load_tfds("tfds:tftrain_tiny_gray", str(tfds_dir), (4, 5), 3)
    for attempt in range(2):
        data = load_tfds("tfds:tftrain_tiny_gray", str(tfds_dir), (4, 5), 3, in_memory_mb=0, cache_dir=cache)
        for split in ("train", "validation", "test"):
            x, y = getattr(data, split)
            assert isinstance(x, DiskImages)
            np.testing.assert_array_equal(x[:], getattr(expected, split)[0])
            np.testing.assert_array_equal(y, getattr(expected, split)[1])
        said = capsys.readouterr().err
        assert ("found 13 decoded images in the cache" in said) == (attempt == 1), said
    assert len(list((cache / "images").glob("*.npy"))) == 1
    monkeypatch.setenv("TFTRAIN_CACHE_DIR", str(cache))
    held = load_task_data("tfds:tftrain_tiny_shapes", str(tfds_dir), image_size=(16, 12), channels=3,
                          validation_split=0.3, in_memory_mb=0)  # fmt: skip
    reference = load_task_data("tfds:tftrain_tiny_shapes", str(tfds_dir), image_size=(16, 12), channels=3,
                               validation_split=0.3)  # fmt: skip
    for split in ("train", "validation", "test"):
        assert isinstance(getattr(held, split)[0], DiskImages)
        np.testing.assert_array_equal(getattr(held, split)[0][:], getattr(reference, split)[0])


def test_tfds_default_data_dir_from_environment(tfds_dir, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))
    assert load_tfds("tfds:tftrain_tiny_gray", "", None, None).train[0].shape == (6, 8, 10)


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        ("tfds:no_such_set", ["'tfds:no_such_set'", "tftrain_tiny_gray, tftrain_tiny_numbers, tftrain_tiny_shapes"]),
        ("tfds:tftrain_tiny_shapes:3.0.0", ["'tfds:tftrain_tiny_shapes:3.0.0'", "0.9.0, 1.0.0"]),
        ("tfds:tftrain_tiny_numbers", ["image classification", "x (Tensor)", "label (ClassLabel)"]),
        ("tfds:tftrain_tiny_trainonly", ["'train' and 'test'", "has: train"]),
        ("tfds:Bad-Name", ["tfds:NAME or tfds:NAME:VERSION"]),
    ],
)
def test_tfds_errors_say_what_is_there(tfds_dir, spec, fragments):
    with pytest.raises(UserError) as e:
        load_tfds(spec, str(tfds_dir), None, None)
    assert "\n" not in str(e.value)
    for fragment in fragments:
        assert fragment in str(e.value)


def test_tfds_missing_data_dir_and_missing_package(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="data_dir.*existing folder"):
        load_tfds("tfds:mnist", str(tmp_path / "absent"), None, None)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # what find_spec sees when it is not installed
    with pytest.raises(UserError, match=r"pip install tftrain\[tfds\]"):
        load_tfds("tfds:mnist", str(tmp_path), None, None)


# --- user functions ---------------------------------------------------------------------------------------------

FILE_SOURCE = """
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf


@dataclasses.dataclass
class Options:  # a dataclass with string annotations needs its module in sys.modules
    batch: int = 4


def load():
    arrays = np.load(__file__.replace("colour_source.py", "arrays.npz"))
    train = tf.data.Dataset.from_tensor_slices((arrays["x"], arrays["y"])).batch(Options().batch)  # batched, uint8
    test = [(x.astype(np.float32), int(y)) for x, y in zip(arrays["x"][:3], arrays["y"][:3])]  # unbatched floats
    return train, test, ["a", "b", "c"]
"""

MODULE_SOURCE = """
import numpy as np

def load():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (5, 6, 7, 1))  # int64, gray with a channel axis
    odd = rng.integers(0, 256, (4, 4))  # another size: resized to the most common one
    train = [(x, i % 2) for i, x in enumerate(images)] + [(odd, 1)]
    return train, [(images[0], 0)], ("cat", "dog")
"""


def test_function_from_file(tmp_path):
    x = RNG.integers(0, 256, (9, 5, 4, 3), np.uint8)
    y = np.arange(9) % 3
    np.savez(tmp_path / "arrays.npz", x=x, y=y)
    (tmp_path / "colour_source.py").write_text(FILE_SOURCE)
    spec = f"{tmp_path / 'colour_source.py'}:load"
    data = load_function_source(spec, None, None)
    assert data.class_names == ("a", "b", "c") and data.validation is None and data.source == f"function {spec}"
    np.testing.assert_array_equal(data.train[0], x)
    np.testing.assert_array_equal(data.train[1], y)
    np.testing.assert_array_equal(data.test[0], x[:3])
    assert data.train[1].dtype == np.int32


def test_function_from_module_gray_and_mixed_sizes(tmp_path, monkeypatch):
    (tmp_path / "tftrain_test_module_source.py").write_text(MODULE_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    rng = np.random.default_rng(3)
    images, odd = rng.integers(0, 256, (5, 6, 7, 1)).astype(np.uint8)[..., 0], rng.integers(0, 256, (4, 4))
    data = load_function_source("tftrain_test_module_source:load", None, None)
    assert data.class_names == ("cat", "dog") and data.train[0].shape == (6, 6, 7)
    np.testing.assert_array_equal(data.train[0][:5], images)
    np.testing.assert_array_equal(data.train[0][5], to_pixels(Image.fromarray(odd.astype(np.uint8)), (6, 7), 1))
    np.testing.assert_array_equal(data.train[1], [0, 1, 0, 1, 0, 1])
    resized = load_function_source("tftrain_test_module_source:load", (3, 3), 3)
    assert resized.train[0].shape == (6, 3, 3, 3) and resized.test[0].shape == (1, 3, 3, 3)


GOOD = "[(np.zeros((4, 4)), 0), (np.ones((4, 4)), 1)]"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("raise RuntimeError('boom\\nmore detail')", "raised RuntimeError: boom"),
        ("return 5", "returned int 5; allowed: (train, test, class_names)"),
        (f"return {GOOD}, {GOOD}", "returned a tuple of 2 items; allowed: (train, test, class_names)"),
        (f"return {GOOD}, {GOOD}, ['only']", "class_names ('only',); allowed: 2+ strings"),
        (f"return {GOOD}, {GOOD}, 'ab'", "class_names str 'ab'"),
        (f"return [(np.zeros((4, 4, 2)), 0)], {GOOD}, ['a', 'b']", "shape (4, 4, 2)"),
        (f"return [([[1, 2], [3]], 0)], {GOOD}, ['a', 'b']", "differing shapes"),
        (f"return [(np.full((4, 4), 300.0), 0)], {GOOD}, ['a', 'b']", "pixel values 300.0..300.0; allowed: 0..255"),
        (f"return [(np.full((4, 4), np.nan), 0)], {GOOD}, ['a', 'b']", "allowed: 0..255"),
        (f"return [(np.zeros((4, 4)), 2)], {GOOD}, ['a', 'b']", "label 2; allowed: 0..1"),
        (f"return [(np.zeros((4, 4)), 0.5)], {GOOD}, ['a', 'b']", "labels [0.5]"),
        (f"return {GOOD}, [], ['a', 'b']", "the test split is empty"),
        (f"return [np.zeros((4, 4))], {GOOD}, ['a', 'b']", "allowed: (image, label)"),
        (f"return (1 / 0 for _ in range(1)), {GOOD}, ['a', 'b']", "raised ZeroDivisionError"),
    ],
)
def test_function_errors_name_the_function(tmp_path, body, fragment):
    (tmp_path / "bad_source.py").write_text(f"import numpy as np\n\ndef load():\n    {body}\n")
    spec = f"{tmp_path / 'bad_source.py'}:load"
    with pytest.raises(UserError) as e:
        load_function_source(spec, None, None)
    message = str(e.value)
    assert "\n" not in message and spec in message and fragment in message, message


def test_function_import_errors(tmp_path):
    (tmp_path / "broken.py").write_text("import tftrain_no_such_module_xyz\n")
    (tmp_path / "fine.py").write_text("def other():\n    pass\n")
    cases = [
        (f"{tmp_path / 'broken.py'}:load", "cannot import", "No module named 'tftrain_no_such_module_xyz'"),
        (f"{tmp_path / 'absent.py'}:load", "cannot import", "no file"),
        (f"{tmp_path / 'fine.py'}:load", "has no function 'load'", "fine.py"),
        ("tftrain_no_such_module_xyz:load", "cannot import", "ModuleNotFoundError"),
    ]
    for spec, *fragments in cases:
        with pytest.raises(UserError) as e:
            load_function_source(spec, None, None)
        message = str(e.value)
        assert "\n" not in message and spec in message and all(f in message for f in fragments), message


# --- through the whole chain ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tfds", "function"])
def test_tfds_and_function_datasets_train_evaluate_and_export(kind, tfds_dir, tmp_path):
    """A tfds dataset and a user function go the road an image folder goes: trained (custom engine), logged with
    their shape and class names, evaluated and exported from the run's params alone."""
    import mlflow

    from conftest import mlflow_store
    from tftrain.config import TrainConfig
    from tftrain.ship.evaluate import evaluate
    from tftrain.ship.export import export
    from tftrain.training.trainer import train

    if kind == "tfds":
        dataset, data_dir, names, shape = "tfds:tftrain_tiny_shapes", str(tfds_dir), SHAPES, (16, 12, 3)
    else:
        np.savez(tmp_path / "arrays.npz", x=COLOUR["train"][:9, :5, :4], y=np.arange(9) % 3)
        (tmp_path / "colour_source.py").write_text(FILE_SOURCE)
        dataset, data_dir, names, shape = f"{tmp_path / 'colour_source.py'}:load", "", ("a", "b", "c"), (5, 4, 3)
    with mlflow_store(tmp_path):
        cfg = TrainConfig.from_flat(dataset=dataset, data_dir=data_dir, epochs=2, batch_size=4, engine="custom",
                          run_name=kind, output_dir=str(tmp_path / "out"), validation_split=0.3)  # fmt: skip
        result = train(cfg)
        assert result.epochs_run == 2 and result.model.version == "1"
        info = mlflow.models.get_model_info(result.model.uri)
        assert tuple(info.metadata["image_shape"]) == shape
        run = mlflow.get_run(result.run_id)
        assert run.data.tags["classes"] == "3" and run.data.params["dataset"] == dataset
        ev = evaluate(result.model.uri)
        assert ev.class_names == names and 0.0 <= ev.metrics["test_accuracy"] <= 1.0
        exported = export(result.model.uri, output_dir=str(tmp_path / "out"), litert_quantization="int8")
        assert tuple(mlflow.models.get_model_info(exported.litert.uri).metadata["image_shape"]) == shape
