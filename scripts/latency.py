"""Round-trip latency of served models: starts `tftrain serve` for each model on 127.0.0.1, sends one
Fashion-MNIST test image per request over one keep-alive connection, as pixels and as a PNG file (base64 under
"b64", decoded in the server), and prints a Markdown table.

    .venv/bin/python scripts/latency.py                  # both champions, plus MLflow's stock Keras pyfunc
    .venv/bin/python scripts/latency.py --model-uri models:/tftrain-fashion-mnist-litert/3 --requests 5000

The stock row serves the same Keras model with MLflow's own `mlflow models serve` and `mlflow.keras` pyfunc loader
(its `model.predict` per request), for comparison in the same run. (Many clients at once: scripts/load.py.) Each request is timed from sending the body to having read and
parsed the whole answer; the request bodies are encoded beforehand. Every answer's class is checked against an
in-process prediction of the same model.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import yaml
from PIL import Image

from tftrain.data.datasets import load_dataset
from tftrain.ship.predict import answers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servers import running_server  # noqa: E402  (the tests' server harness, not part of the package)

CHAMPIONS = ("models:/tftrain-fashion-mnist@champion", "models:/tftrain-fashion-mnist-litert@champion")


def stock_copy(model_uri: str, folder: Path) -> str:
    """A local copy of a tftrain Keras model whose pyfunc flavor is MLflow's stock `mlflow.keras` loader."""
    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(folder)))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    if "keras" not in mlmodel["flavors"]:
        raise SystemExit(f"{model_uri} has no Keras flavor to serve the stock way")
    pyfunc = mlmodel["flavors"]["python_function"]
    pyfunc["loader_module"] = "mlflow.keras"
    pyfunc.pop("data", None)
    pyfunc.pop("code", None)
    (local / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return str(local)


def file_body(image: np.ndarray) -> bytes:
    """A request sending `image` as a PNG file, as a client sends a photo."""
    png = io.BytesIO()
    Image.fromarray(image).save(png, "PNG")
    return json.dumps({"instances": [{"b64": base64.b64encode(png.getvalue()).decode()}]}).encode()


def expected_classes(model_uri: str, images: np.ndarray) -> np.ndarray:
    model = mlflow.pyfunc.load_model(model_uri)
    return np.array([row["class"] for row in answers(model, images)])


def measure(url: str, bodies: list[bytes], expected: np.ndarray, warmup: int) -> list[float]:
    """Seconds per request after `warmup` requests, over one keep-alive connection; checks every answer."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port))
    headers = {"Content-Type": "application/json"}
    times = []
    for i, body in enumerate(bodies):
        start = time.perf_counter()
        connection.request("POST", "/invocations", body, headers)
        response = connection.getresponse()
        answer = json.loads(response.read())
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise SystemExit(f"request {i} got HTTP {response.status}: {answer}")
        prediction = answer["predictions"][0]
        got = prediction["class"] if isinstance(prediction, dict) else int(np.argmax(prediction))
        if got != expected[i % len(expected)]:
            raise SystemExit(f"request {i}: the server said class {got}, in-process {expected[i % len(expected)]}")
        if i >= warmup:
            times.append(elapsed)
    connection.close()
    return times


def row(label: str, times: list[float]) -> str:
    ms = np.array(times) * 1000
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return f"| {label} | {len(ms):,} | {p50:.2f} | {p90:.2f} | {p99:.2f} | {ms.max():.2f} | {1000 / ms.mean():,.0f} |"


def main() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    keras.config.disable_interactive_logging()  # the stock pyfunc's model.predict would draw progress bars
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", action="append", help="model to serve (repeatable); default: both champions")
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per model")
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests first")
    parser.add_argument("--no-stock", action="store_true", help="skip MLflow's stock Keras pyfunc row")
    args = parser.parse_args()
    if args.requests < 1 or args.warmup < 0:
        parser.error(f"--requests must be at least 1 and --warmup at least 0; received {args.requests}, {args.warmup}")
    uris = args.model_uri or list(CHAMPIONS)

    images = load_dataset("fashion_mnist").x_test
    count = args.requests + args.warmup
    kinds = {
        "pixels": [json.dumps({"inputs": images[i % len(images)][None].tolist()}).encode() for i in range(count)],
        "PNG file": [file_body(images[i % len(images)]) for i in range(count)],
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        served = [(uri, uri, tuple(kinds), False) for uri in uris]
        if not args.no_stock:  # MLflow's own loader takes pixels only
            stock = stock_copy(uris[0], Path(tmp))
            served.append((f"{uris[0]}, MLflow's stock Keras pyfunc", stock, ("pixels",), True))
        for label, uri, sent, by_mlflow in served:
            expected = expected_classes(uri, images[: min(count, len(images))])
            print(f"serving {label} ...", flush=True)
            with running_server(uri, Path(tmp) / "server.log", stock=by_mlflow) as url:
                for kind in sent:
                    rows.append(row(f"{label}, {kind}", measure(url, kinds[kind], expected, args.warmup)))
                    print(rows[-1], flush=True)

    print(f"\nOne image per request, keep-alive HTTP/1.1 client, {platform.machine()}, {os.cpu_count()} cores:\n")
    print("| model | requests | median ms | p90 ms | p99 ms | max ms | requests/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
