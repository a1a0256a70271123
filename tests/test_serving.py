"""Serving: tftrain's pyfunc models in-process, and behind a real `tftrain serve` (MLflow's scoring server) on
127.0.0.1."""

import base64
import contextlib
import http.client
import io
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException
from PIL import Image

from conftest import REPO, mlflow_store, tiny_images
from servers import running_server
from test_serving_files import b64, read_inputs, readme_snippet, refusals
from test_serving_files import files as files  # noqa: F401 (a fixture)
from tftrain.data.datasets import CLASS_NAMES
from tftrain.serving import MAX_BATCH, Classifier, KerasNetwork, LiteRTNetwork, check_images
from tftrain.ship.export import convert
from tftrain.tracking import logged_models

NAMES = list(CLASS_NAMES["fashion_mnist"])


@pytest.fixture(scope="module")
def models(trained_and_exported):
    """The trained Keras model and its float32 LiteRT twin, both registered (conftest: the session's model, exported
    once, in this module's store copy)."""
    result, exported, _ = trained_and_exported
    return {"keras": result.model, "litert": exported.litert}


@pytest.fixture(scope="module")
def images():
    return tiny_images(12, seed=5)[0]


@pytest.fixture(scope="module")
def keras_probabilities(trained_and_exported, images):
    result, _, _ = trained_and_exported
    return result.keras_model.predict(images.astype(np.float32), verbose=0)


@pytest.mark.parametrize("kind", ["keras", "litert"])
def test_in_process_answers_name_the_class(models, kind, images, keras_probabilities):
    rows = mlflow.pyfunc.load_model(models[kind].uri).predict(images.astype(np.float32))
    probabilities = np.array([row["probabilities"] for row in rows])
    np.testing.assert_allclose(probabilities, keras_probabilities, atol=1e-4)
    assert [row["class"] for row in rows] == list(keras_probabilities.argmax(axis=1))
    assert [row["class_name"] for row in rows] == [NAMES[row["class"]] for row in rows]
    assert [row["probability"] for row in rows] == [max(row["probabilities"]) for row in rows]


@pytest.mark.parametrize("kind", ["keras", "litert"])
def test_pyfunc_takes_uint8_and_float_images_one_or_a_batch(models, kind, images, keras_probabilities):
    model = mlflow.pyfunc.load_model(models[kind].uri)
    best = list(keras_probabilities.argmax(axis=1))
    for batch in (images, images.astype(np.float32), images.astype(np.float64), images.astype(np.int64)):
        assert [row["class"] for row in model.predict(batch)] == best, batch.dtype
    (row,) = model.predict(images[3])  # one image, no batch axis
    assert row["class"] == best[3] and row["class_name"] == NAMES[best[3]]


@pytest.mark.parametrize("kind", ["keras", "litert"])
def test_each_model_carries_a_serving_input_example_mlflow_tools_use(models, kind, tmp_path):
    """MLflow's own tools: the serving input example in the model, validate_serving_input on it, and
    `mlflow models predict` on a file of uint8 images (a client no one here wrote)."""
    uri = models[kind].uri
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model")))
    example = mlflow.models.Model.load(str(local)).get_serving_input(str(local))
    assert example is not None and np.asarray(json.loads(example)["inputs"]).shape == (2, 28, 28)
    (answer,) = [mlflow.models.validate_serving_input(uri, example)]
    assert len(answer) == 2 and {"class", "class_name", "probability", "probabilities"} <= set(answer[0])
    info = mlflow.models.get_model_info(uri)
    assert info.metadata["image_shape"] == [28, 28] and "pixels 0..255" in info.metadata["accepts"]
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"inputs": tiny_images(3, seed=9)[0].tolist()}))
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "models", "predict", "-m", uri, "-i", str(request), "-t", "json",
         "--env-manager", "local", "-o", str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    predictions = json.loads((tmp_path / "out.json").read_text())["predictions"]
    assert [p["class_name"] for p in predictions] == [NAMES[p["class"]] for p in predictions] and len(predictions) == 3


def test_litert_model_is_registered_with_its_accuracy(models):
    litert = models["litert"]
    assert litert.registered_name == "tftrain-fashion-mnist-litert" and litert.version == "1"
    metrics = {m.key: m.value for m in mlflow.get_logged_model(litert.model_id).metrics}
    # under its own name: the run's test_accuracy stays the Keras model's
    assert "test_accuracy" not in metrics and 0.5 < metrics["tflite_float32_test_accuracy"] <= 1.0
    assert "class_names" not in mlflow.get_run(litert.run_id).data.params  # a file beside the network, not a param
    info = mlflow.models.get_model_info(litert.uri)
    assert info.flavors["python_function"]["loader_module"] == "tftrain.serving"


TAKES = (
    r"; this model takes images \(N, 28, 28\) or one image \(28, 28\), pixels 0..255 as integers \(uint8 or any\) or "
    r'floats; or image files \(JPEG, PNG, WebP, BMP, GIF, TIFF; any size\) base64-encoded as \{"b64": "..."\}$'
)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.zeros((2, 28, 27)), r"^wrong image shape \(2, 28, 27\)" + TAKES),
        (np.zeros((2, 28, 28, 3)), r"^wrong image shape \(2, 28, 28, 3\)" + TAKES),
        (np.zeros(5), r"^wrong image shape \(5,\)" + TAKES),
        (np.float64(3.0), r"^wrong image shape \(\)" + TAKES),
        (np.full((1, 28, 28), "a"), r"^pixels must be numbers; received values of type <U1" + TAKES),
        ([[[0] * 28] * 27 + [[0] * 5]], r"^the images are not one array of numbers \(.*inhomogeneous"),
        (np.array([[["dark"] * 28] * 28], dtype=object), r"^the images are not one array of numbers \(could not"),
        (np.zeros((0, 28, 28)), r"^the batch is empty"),
        ([], r"^the batch is empty"),
        (np.zeros((MAX_BATCH + 1, 28, 28)), rf"^a batch of {MAX_BATCH + 1} images is over the limit of {MAX_BATCH}"),
        (np.full((1, 28, 28), 256.0), r"^pixel values must be from 0 to 255; received values from 256.0 to 256.0"),
        (np.full((1, 28, 28), -0.5), r"^pixel values must be from 0 to 255; received values from -0.5"),
        (np.full((1, 28, 28), np.nan), r"^pixel values must be numbers from 0 to 255; received 784 NaN, null or inf"),
        (np.where(np.eye(28)[None] > 0, np.inf, 3.0), r"received 28 NaN, null or infinite" + TAKES),
    ],
)
def test_bad_images_are_refused_with_the_reason_first(value, message):
    with pytest.raises(MlflowException, match=message) as caught:
        check_images(value, (28, 28))
    assert caught.value.get_http_status_code() == 400


def test_a_refusal_keeps_its_reason_first_when_mlflow_rewrites_the_message():
    """MLflow's scoring server sets `e.message = f"Failed to predict data '{data}'. Error: {e.message}"`."""
    with pytest.raises(MlflowException) as caught:
        check_images(np.zeros((1, 28, 27)), (28, 28))
    refusal = caught.value
    refusal.message = f"Failed to predict data '{np.zeros((1, 28, 27))}'. \nError: {refusal.message}"
    assert refusal.message.startswith("wrong image shape (1, 28, 27); this model takes images (N, 28, 28)")
    assert json.loads(refusal.serialize_as_json())["message"] == refusal.message


def test_images_are_accepted_as_integers_or_floats_one_or_a_batch():
    images = check_images(np.full((3, 28, 28), 255, dtype=np.uint8), (28, 28))
    assert images.dtype == np.float32 and images.shape == (3, 28, 28) and images.max() == 255
    images = check_images(np.zeros((2, 40, 30, 3), dtype=np.int64), (40, 30, 3))
    assert images.dtype == np.float32 and images.shape == (2, 40, 30, 3)
    one = check_images(np.full((40, 30, 3), 7, dtype=np.uint8), (40, 30, 3))
    assert one.shape == (1, 40, 30, 3) and one.dtype == np.float32 and one.max() == 7


def test_a_table_holds_one_flattened_image_a_row():
    """dataframe_split and CSV requests: pixels in columns, or one column of pixel lists."""
    import pandas as pd

    images = np.arange(2 * 4 * 3).reshape(2, 4, 3) % 256
    columns = pd.DataFrame(images.reshape(2, -1))
    lists = pd.DataFrame({"image": [image.reshape(-1).tolist() for image in images]})
    for table in (columns, lists):
        np.testing.assert_array_equal(check_images(table, (4, 3)), images.astype(np.float32))


@pytest.fixture(scope="module", params=["keras", "litert"])
def server(request, models, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(models[request.param].uri, log, args=("--workers", "1")) as url:
        connection = http.client.HTTPConnection(*url.removeprefix("http://").split(":"), timeout=60)
        yield connection
        connection.close()


def post(connection, body, content_type="application/json") -> tuple[int, dict | str]:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    connection.request("POST", "/invocations", data, {"Content-Type": content_type})
    response = connection.getresponse()
    text = response.read().decode()
    try:
        return response.status, json.loads(text)
    except json.JSONDecodeError:
        return response.status, text


def formats(images: np.ndarray) -> dict[str, dict]:
    """The same images in each of MLflow's JSON request formats."""
    return {
        "inputs": {"inputs": images.tolist()},
        "instances": {"instances": images.tolist()},
        "dataframe_split": {
            "columns": ["image"],
            "data": [[image.reshape(-1).tolist()] for image in images],
        },
    }


def test_each_request_format_answers_like_the_model_in_process(server, images, keras_probabilities):
    for name, body in formats(images).items():
        request = {"dataframe_split": body} if name == "dataframe_split" else body
        status, answer = post(server, request)
        assert status == 200, (name, answer)
        rows = answer["predictions"]
        assert [row["class"] for row in rows] == list(keras_probabilities.argmax(axis=1)), name
        assert [row["class_name"] for row in rows] == [NAMES[row["class"]] for row in rows], name
        np.testing.assert_allclose([row["probabilities"] for row in rows], keras_probabilities, atol=1e-4)


def test_csv_rows_of_flattened_pixels_answer_like_the_model_in_process(server, images, keras_probabilities):
    header = ",".join(f"p{i}" for i in range(28 * 28))
    rows = "\n".join(",".join(map(str, image.reshape(-1))) for image in images[:3])
    status, answer = post(server, f"{header}\n{rows}\n", content_type="text/csv")
    assert status == 200, answer
    assert [row["class"] for row in answer["predictions"]] == list(keras_probabilities[:3].argmax(axis=1))


MALFORMED = {
    "wrong shape": (
        {"inputs": [[[0] * 27] * 28]},
        400,
        "wrong image shape (1, 28, 27); this model takes images (N, 28, 28)",
    ),
    "wrong dtype": ({"inputs": [[["dark"] * 28] * 28]}, 400, "pixels must be numbers; received values of type <U4"),
    "ragged": ({"inputs": [[[0] * 28] * 27 + [[0] * 5]]}, 400, "inhomogeneous"),
    "above 255": ({"inputs": [[[300] * 28] * 28]}, 400, "pixel values must be from 0 to 255"),
    "negative": ({"inputs": [[[-1] * 28] * 28]}, 400, "pixel values must be from 0 to 255"),
    "garbage JSON": ("{not json", 400, "Invalid input"),
    "empty batch": ({"inputs": []}, 400, "the batch is empty"),
    "over the limit": ({"inputs": [[[0] * 28] * 28] * (MAX_BATCH + 1)}, 400, f"over the limit of {MAX_BATCH}"),
    "unknown key": ({"images": [[[0] * 28] * 28]}, 400, "dataframe_split"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_requests_get_400_and_the_server_keeps_answering(server, case, images, keras_probabilities):
    body, expected_status, reason = MALFORMED[case]
    status, answer = post(server, body)
    assert status == expected_status, answer
    assert reason in answer["message"][:200], answer["message"][:500]  # the reason first, whoever refused
    status, answer = post(server, {"inputs": images[:1].tolist()})
    assert status == 200 and answer["predictions"][0]["class"] == keras_probabilities[0].argmax()


def test_wrong_content_type_gets_415(server):
    status, answer = post(server, "1,2,3", content_type="text/plain")
    assert status == 415 and answer["message"].startswith("unsupported Content-Type: received 'text/plain'; allowed")


def test_latency_script_drives_a_real_server(models):
    """scripts/latency.py, which measures the README's serving figures, on a short run."""
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "latency.py"), "--model-uri", models["litert"].uri,
         "--requests", "30", "--warmup", "5", "--no-stock"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for kind in ("pixels", "PNG file"):  # each answer checked against the model in-process by the script
        rows = [
            line for line in done.stdout.splitlines() if line.startswith(f"| {models['litert'].uri}, {kind} | 30 |")
        ]
        assert len(rows) == 2, done.stdout  # as measured, and in the final table
        assert float(rows[-1].split("|")[3]) > 0  # the median


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=30) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=60,
)
BODIES = st.one_of(
    st.fixed_dictionaries({}, optional={k: JSON for k in ("inputs", "instances", "dataframe_split", "params")}),
    st.builds(
        lambda rows: {"inputs": rows},
        st.lists(
            st.lists(st.lists(st.integers(-300, 300), min_size=28, max_size=28), min_size=27, max_size=29), max_size=3
        ),
    ),  # fmt: skip
    JSON,
    st.binary(max_size=200),
)


def _png() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (9, 7, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


PNG = _png()


def _damaged(cut: int, flips: list[int]) -> str:
    data = bytearray(PNG[:cut])
    for i in flips:
        if i < len(data):
            data[i] ^= 0xFF
    return base64.b64encode(bytes(data)).decode()


FILE_BODIES = st.one_of(
    st.builds(lambda v: {"instances": [{"b64": v}]}, JSON),
    st.builds(lambda v: {"inputs": {"b64": v}}, JSON),
    st.builds(lambda data: {"instances": [{"b64": base64.b64encode(data).decode()}]}, st.binary(max_size=300)),
    st.builds(
        lambda cut, flips: {"inputs": [{"b64": _damaged(cut, flips)}]},
        st.integers(0, len(PNG)),
        st.lists(st.integers(0, len(PNG) - 1), max_size=4),
    ),  # fmt: skip
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=BODIES | FILE_BODIES)
def test_fuzzed_requests_never_get_a_5xx(server, body, images, keras_probabilities):
    status, _ = post(server, body if isinstance(body, bytes) else json.dumps(body))
    assert 200 <= status < 500, (status, body)
    status, answer = post(server, {"inputs": images[:1].tolist()})
    assert status == 200 and answer["predictions"][0]["class"] == keras_probabilities[0].argmax()


# A colour, non-square task of three classes, built and logged here: nothing of it is 28x28 or ten classes.
COLOUR_SHAPE = (40, 30, 3)
COLOUR_NAMES = ("red", "green", "blue")


def colour_images(labels: list[int], seed: int = 0, shape: tuple[int, ...] = COLOUR_SHAPE) -> np.ndarray:
    """uint8 images, each with the channel of its label bright over dim noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(len(labels), *shape))
    for image, label in zip(images, labels, strict=True):
        image[..., label] += 150
    return images.astype(np.uint8)


def colour_model() -> keras.Model:
    """The brief's small colour network, its weights set by hand so that it answers the brightest channel:
    filter c of the convolution averages channel c, the dense layer scales each average to its class's logit."""
    inputs = keras.Input(COLOUR_SHAPE)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(3)(x)
    outputs = keras.layers.Activation("softmax", dtype="float32")(x)
    model = keras.Model(inputs, outputs)
    kernel = np.zeros((3, 3, 3, 4), np.float32)
    for c in range(3):
        kernel[:, :, c, c] = 1 / 9
    model.set_weights([kernel, np.zeros(4), 10 * np.eye(4, 3), np.zeros(3)])
    return model


@dataclass(frozen=True)
class Colour:
    """The colour model, and its Keras and LiteRT models logged in a store of their own: a test enters
    `mlflow_store(colour.store)` around what uses their URIs, so other module-wide stores stay as they were."""

    keras_model: keras.Model
    store: Path
    uris: dict[str, str]


def log_colour_models(folder: Path) -> Colour:
    """The colour model logged with tftrain's tracking as Keras and as LiteRT, in a store in `folder`."""
    model = colour_model()
    with mlflow_store(folder):
        with mlflow.start_run():
            keras_logged = logged_models.log_keras_model(
                model, "colour-test", colour_images([0, 1]), logged_models.Provenance(COLOUR_NAMES)
            )
        model.export(str(folder / "saved_model"), format="tf_saved_model", verbose=False)
        (folder / "model.tflite").write_bytes(convert(folder / "saved_model", "float32"))
        with mlflow.start_run():
            litert = logged_models.log_litert_model(
                folder / "model.tflite",
                logged_models.Provenance(COLOUR_NAMES),
                "colour-test-litert",
                colour_images([0, 1]),
                "float32",
            )
    return Colour(model, folder, {"keras": keras_logged.uri, "litert": litert.uri})


COLOUR_LABELS = [2, 0, 1, 1, 0]


@pytest.mark.parametrize("kind", ["keras", "litert"])
def test_a_colour_model_answers_its_own_classes_in_process(colour, kind):
    images = colour_images(COLOUR_LABELS, seed=1)
    with mlflow_store(colour.store):
        model = mlflow.pyfunc.load_model(colour.uris[kind])
    assert model.metadata.metadata["image_shape"] == list(COLOUR_SHAPE)
    assert model.metadata.get_input_schema() is None  # what it takes: metadata["accepts"], checked by the model
    rows = model.predict(images.astype(np.float32))
    assert [row["class_name"] for row in rows] == [COLOUR_NAMES[label] for label in COLOUR_LABELS]
    assert [row["class"] for row in rows] == COLOUR_LABELS
    expected = colour.keras_model.predict(images.astype(np.float32), verbose=0)
    np.testing.assert_allclose([row["probabilities"] for row in rows], expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["keras", "litert"])
def test_a_wrong_shape_behind_no_schema_is_refused_with_the_networks_shape(colour, kind, tmp_path):
    """Classifier without MLflow's schema check in front: the shape it names comes from the network itself."""
    with mlflow_store(colour.store):
        local = Path(mlflow.artifacts.download_artifacts(colour.uris[kind], dst_path=str(tmp_path)))
    (path,) = local.rglob("model.keras" if kind == "keras" else "model.tflite")
    assert path.relative_to(local).as_posix() == ("data/model.keras" if kind == "keras" else "data/litert/model.tflite")
    network = KerasNetwork(path) if kind == "keras" else LiteRTNetwork(path)
    assert network.input_shape == COLOUR_SHAPE and network.classes == 3
    with pytest.raises(MlflowException) as caught:
        Classifier(network, list(COLOUR_NAMES)).predict(np.zeros((2, 28, 28), np.float32))
    assert str(caught.value) == (
        "wrong image shape (2, 28, 28); this model takes images (N, 40, 30, 3) or one image (40, 30, 3), pixels "
        "0..255 as integers (uint8 or any) or floats; or image files (JPEG, PNG, WebP, BMP, GIF, TIFF; any size) "
        'base64-encoded as {"b64": "..."}'
    )
    with pytest.raises(ValueError, match="the network answers 3 classes; class_names.json names 10"):
        Classifier(network, NAMES)


@pytest.fixture(scope="module", params=["keras", "litert"])
def colour_server(request, colour, tmp_path_factory):
    """MLflow's own `mlflow models serve`, which runs the serving code the model carries (not tftrain's)."""
    log = tmp_path_factory.mktemp("colour-server") / "server.log"
    with contextlib.ExitStack() as stack:
        with mlflow_store(colour.store):  # the server keeps the store's address; the tests need not
            url = stack.enter_context(running_server(colour.uris[request.param], log, stock=True))
        connection = http.client.HTTPConnection(*url.removeprefix("http://").split(":"), timeout=60)
        stack.callback(connection.close)
        yield connection


@pytest.mark.slow
def test_a_served_colour_model_names_its_classes_and_refuses_gray_28x28(colour_server):
    status, answer = post(colour_server, {"inputs": colour_images(COLOUR_LABELS, seed=2).tolist()})
    assert status == 200, answer
    assert [row["class_name"] for row in answer["predictions"]] == [COLOUR_NAMES[c] for c in COLOUR_LABELS]
    assert all(len(row["probabilities"]) == 3 for row in answer["predictions"])
    # the model's own refusal, reason first, though MLflow's server puts the request's data in front of messages
    status, answer = post(colour_server, {"inputs": np.zeros((1, 28, 28)).tolist()})
    assert status == 400, answer
    assert answer["message"].startswith(
        "wrong image shape (1, 28, 28); this model takes images (N, 40, 30, 3) or one image (40, 30, 3)"
    ), answer["message"][:500]
    status, answer = post(colour_server, {"inputs": colour_images([2], seed=4)[0].tolist()})  # no batch axis
    assert status == 200 and answer["predictions"][0]["class_name"] == "blue", answer
    status, answer = post(colour_server, {"inputs": colour_images([1], seed=3).tolist()})
    assert status == 200 and answer["predictions"][0]["class_name"] == "green"


def test_a_served_model_answers_jpeg_files_as_tftrain_predict_does(server, trained_and_exported, files, tmp_path):
    """The session's Fashion-MNIST model (28x28 gray) behind `mlflow models serve`, sent colour photographs of other
    sizes: decoded, made gray and resized in the server as `tftrain predict` does; bad files get a 400 and the
    server keeps answering."""
    result, _, _ = trained_and_exported
    expected = result.keras_model.predict(
        read_inputs([str(p) for p in files], (28, 28))[1].astype(np.float32), verbose=0
    )
    status, answer = post(server, {"instances": [{"b64": b64(p)} for p in files]})
    assert status == 200, answer
    np.testing.assert_allclose([r["probabilities"] for r in answer["predictions"]], expected, atol=1e-4)
    status, answer = post(server, {"dataframe_split": {"columns": ["b64"], "data": [[b64(p)] for p in files[:2]]}})
    assert status == 200 and len(answer["predictions"]) == 2, answer
    for name, (request, reason) in refusals(files[0]).items():
        status, answer = post(server, {"inputs": request})
        assert status == 400 and answer["message"].startswith(reason), (name, answer)
    status, answer = post(server, {"instances": [{"b64": b64(files[0])}]})
    assert status == 200 and answer["predictions"][0]["class"] == int(expected[0].argmax())


@pytest.mark.parametrize("language", ["bash", "python"])
def test_the_docs_send_a_jpeg_to_a_served_model(server, files, tmp_path, language):
    """The docs' curl and Python requests examples, as written, against a real server (only the port and the
    photo's path replaced)."""
    photo = next(p for p in files if p.suffix == ".jpg")
    snippet = readme_snippet(language).replace("127.0.0.1:5001", f"{server.host}:{server.port}")
    snippet = snippet.replace("my-photo.jpg", str(photo))
    command = ["bash", "-c", snippet] if language == "bash" else [sys.executable, "-c", snippet]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.search(r'"class_name": ?"[^"]+"', done.stdout), done.stdout
