"""Serving: tftrain's pyfunc models in-process, and behind a real `mlflow models serve` on 127.0.0.1."""

import http.client
import json
import subprocess
import sys

import mlflow
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.exceptions import MlflowException

from conftest import REPO, tiny_images
from tftrain.data import CLASS_NAMES
from tftrain.export import export
from tftrain.serve import running_server
from tftrain.serving import MAX_BATCH, check_images

NAMES = list(CLASS_NAMES["fashion_mnist"])


@pytest.fixture(scope="module")
def models(trained, tiny_data):
    """The trained Keras model and its float32 LiteRT twin, both registered."""
    result, folder = trained
    exported = export(result.model.uri, data_dir=str(tiny_data), output_dir=str(folder / "exports"))
    return {"keras": result.model, "litert": exported.litert}


@pytest.fixture(scope="module")
def images():
    return tiny_images(12, seed=5)[0]


@pytest.fixture(scope="module")
def keras_probabilities(trained, images):
    result, _ = trained
    return result.keras_model.predict(images.astype(np.float32), verbose=0)


@pytest.mark.parametrize("kind", ["keras", "litert"])
def test_in_process_answers_name_the_class(models, kind, images, keras_probabilities):
    rows = mlflow.pyfunc.load_model(models[kind].uri).predict(images.astype(np.float32))
    probabilities = np.array([row["probabilities"] for row in rows])
    np.testing.assert_allclose(probabilities, keras_probabilities, atol=1e-4)
    assert [row["class"] for row in rows] == list(keras_probabilities.argmax(axis=1))
    assert [row["class_name"] for row in rows] == [NAMES[row["class"]] for row in rows]
    assert [row["probability"] for row in rows] == [max(row["probabilities"]) for row in rows]


def test_litert_model_is_registered_with_its_accuracy(models):
    litert = models["litert"]
    assert litert.registered_name == "tftrain-fashion-mnist-litert" and litert.version == "1"
    metrics = {m.key: m.value for m in mlflow.get_logged_model(litert.model_id).metrics}
    assert 0.5 < metrics["test_accuracy"] <= 1.0
    info = mlflow.models.get_model_info(litert.uri)
    assert info.flavors["python_function"]["loader_module"] == "tftrain.serving"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.zeros((2, 28, 27)), r"shape \(N, 28, 28\); received \(2, 28, 27\)"),
        (np.full((1, 28, 28), "a"), r"numbers from 0 to 255; received values of type <U1"),
        (np.zeros((0, 28, 28)), "the batch is empty"),
        (np.zeros((MAX_BATCH + 1, 28, 28)), f"{MAX_BATCH + 1} images is over the limit of {MAX_BATCH}"),
        (np.full((1, 28, 28), 256.0), "from 0 to 255; received values from 256.0 to 256.0"),
        (np.full((1, 28, 28), -0.5), "from 0 to 255; received values from -0.5"),
        (np.full((1, 28, 28), np.nan), "numbers from 0 to 255; received 784 NaN, null or infinite value"),
        (np.where(np.eye(28)[None] > 0, np.inf, 3.0), "received 28 NaN, null or infinite value"),
    ],
)
def test_bad_images_are_refused_with_the_reason(value, message):
    with pytest.raises(MlflowException, match=message) as caught:
        check_images(value)
    assert caught.value.get_http_status_code() == 400


def test_images_are_accepted_as_float32():
    images = check_images(np.full((3, 28, 28), 255, dtype=np.uint8))
    assert images.dtype == np.float32 and images.shape == (3, 28, 28) and images.max() == 255


@pytest.fixture(scope="module", params=["keras", "litert"])
def server(request, models, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(models[request.param].uri, log) as url:
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


MALFORMED = {
    "wrong shape": ({"inputs": [[[0] * 27] * 28]}, 400, "does not match expected shape"),
    "wrong dtype": ({"inputs": [[["dark"] * 28] * 28]}, 400, "could not convert string to float"),
    "ragged": ({"inputs": [[[0] * 28] * 27 + [[0] * 5]]}, 400, "inhomogeneous"),
    "above 255": ({"inputs": [[[300] * 28] * 28]}, 400, "pixel values must be from 0 to 255"),
    "negative": ({"inputs": [[[-1] * 28] * 28]}, 400, "pixel values must be from 0 to 255"),
    "garbage JSON": ("{not json", 400, "Invalid input"),
    "empty batch": ({"inputs": []}, 400, "input of type <class 'list'>"),
    "over the limit": ({"inputs": [[[0] * 28] * 28] * (MAX_BATCH + 1)}, 400, f"over the limit of {MAX_BATCH}"),
    "unknown key": ({"images": [[[0] * 28] * 28]}, 400, "dataframe_split"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_requests_get_400_and_the_server_keeps_answering(server, case, images, keras_probabilities):
    body, expected_status, reason = MALFORMED[case]
    status, answer = post(server, body)
    assert status == expected_status, answer
    assert reason in answer["message"], answer["message"][-500:]
    status, answer = post(server, {"inputs": images[:1].tolist()})
    assert status == 200 and answer["predictions"][0]["class"] == keras_probabilities[0].argmax()


def test_wrong_content_type_gets_415(server):
    status, answer = post(server, "1,2,3", content_type="text/plain")
    assert status == 415 and "content types" in answer


def test_latency_script_drives_a_real_server(models):
    """scripts/latency.py, which measures the README's serving figures, on a short run."""
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "latency.py"), "--model-uri", models["litert"].uri,
         "--requests", "30", "--warmup", "5", "--no-stock"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith(f"| {models['litert'].uri} | 30 |")]
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


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=BODIES)
def test_fuzzed_requests_never_get_a_5xx(server, body, images, keras_probabilities):
    status, _ = post(server, body if isinstance(body, bytes) else json.dumps(body))
    assert 200 <= status < 500, (status, body)
    status, answer = post(server, {"inputs": images[:1].tolist()})
    assert status == 200 and answer["predictions"][0]["class"] == keras_probabilities[0].argmax()
