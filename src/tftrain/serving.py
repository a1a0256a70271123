"""tftrain's pyfunc flavor: how a logged model answers `predict`, in-process and behind a server (`tftrain serve`,
`mlflow models serve`, Ray Serve).

Two runtimes behind one answer: the Keras model through one compiled call (not `model.predict`, which builds a
data pipeline per request), or a TFLite file through the LiteRT interpreter. Either answers one row per image:
class, class_name, probability and the probability of each of the model's classes. The image shape a model takes,
(H, W) gray or (H, W, 3) colour, is read from the network itself, so one loader serves any task. A request holds
either pixels of that shape or image files of any size and mode, base64-encoded under "b64" (TensorFlow Serving's
convention), decoded and resized here by pixels.py, the code training and `predict` use. Bad input is refused with
an MlflowException of INVALID_PARAMETER_VALUE, which the scoring server turns into HTTP 400.

A model carries its own copy of this file and of pixels.py (under code/tftrain/), so a server needs TensorFlow or
LiteRT, numpy, Pillow and MLflow, not tftrain. Keep it free of other tftrain imports.
"""

from __future__ import annotations

import base64
import binascii
import copy
import gc
import io
import json
import logging
import os
import shutil
import threading
from pathlib import Path

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from tftrain import pixels

MAX_BATCH = 1000  # images per predict call; larger requests are refused, not queued
FILES_KEY = "b64"  # the column or key of base64-encoded image files, as TensorFlow Serving names binary values
MAX_FILE_BYTES = 20_000_000  # one image file, decoded from base64
MAX_FILE_PIXELS = 64_000_000  # one image file's own width x height, read from its header before it is decoded
# Requests that arrive while the network runs are answered by its next call, together (see Batcher). The server's
# environment can bound that call or turn batching off (1), and let it wait a little for more requests.
BATCH_IMAGES_ENV, BATCH_WAIT_ENV = "TFTRAIN_BATCH_IMAGES", "TFTRAIN_BATCH_WAIT_MS"
CLASS_NAMES_FILE = "class_names.json"
KERAS_FILE = "model.keras"  # what mlflow.keras.save_model writes under data/
LITERT_FILE = "model.tflite"  # a LiteRT model's network, whichever its quantization


class Refusal(MlflowException):
    """A refused request: INVALID_PARAMETER_VALUE, which the scoring server answers with HTTP 400.

    MLflow's scoring server rewrites the message of any error a model raises as "Failed to predict data '<the
    request's pixels>'. Error: <message>" (mlflow/pyfunc/scoring_server, 3.17), which put the reason kilobytes
    down; a Refusal keeps its own message, the reason first. (tests/test_serving.py checks it on a real server.)"""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._reason

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_reason"):  # MlflowException.__init__ sets it first; later rewrites are dropped
            self._reason = value


def describe(shape: tuple[int, ...]) -> str:
    """The batch shape a model takes, as messages show it: (N, 40, 30, 3)."""
    return f"(N, {', '.join(str(d) for d in shape)})"


def accepted(shape: tuple[int, ...]) -> str:
    """What a model of image shape `shape` takes, as its refusals and its MLmodel metadata say it."""
    return (
        f"images {describe(shape)} or one image ({', '.join(map(str, shape))}), pixels 0..255 as integers (uint8 or "
        f"any) or floats; or image files (JPEG, PNG, WebP, BMP, GIF, TIFF; any size) base64-encoded as "
        f'{{"{FILES_KEY}": "..."}}'
    )


def _refuse(reason: str, shape: tuple[int, ...]) -> Refusal:
    return Refusal(f"{reason}; this model takes {accepted(shape)}")


def _as_array(model_input, shape: tuple[int, ...]) -> np.ndarray:
    """An array of the request: a table (dataframe_split, CSV) holds one image a row, flattened in columns or as
    one column of pixel lists; anything else converts as it is."""
    try:
        if hasattr(model_input, "to_numpy"):
            values = model_input.to_numpy()
            if values.ndim == 2 and values.shape[1] == 1 and values.dtype == object:
                values = np.array(values[:, 0].tolist())
            size = int(np.prod(shape))
            return values.reshape(len(values), *shape) if values.ndim == 2 and values.shape[1] == size else values
        images = np.asarray(model_input)
        return images.astype(np.float64) if images.dtype == object else images
    except (ValueError, TypeError) as e:  # ragged lists, or values that are not numbers
        raise _refuse(f"the images are not one array of numbers ({str(e).splitlines()[0][:120]})", shape) from None


def encoded_files(model_input, shape: tuple[int, ...]) -> list | None:
    """The image files of a request, as sent (base64 text, or bytes from Python), or None if it sends pixels:
    {"b64": [...]} (what `instances` of {"b64": ...} objects parse into), a table with a "b64" column, or a list
    of {"b64": ...} objects (`inputs`). Named inputs of other names are refused: pixels come without a name."""
    if hasattr(model_input, "columns"):  # a table: pixels in columns of any names, or files under "b64"
        return model_input[FILES_KEY].tolist() if FILES_KEY in model_input.columns else None
    rows = model_input if isinstance(model_input, list) and model_input else None
    if isinstance(model_input, dict) or (rows and all(isinstance(row, dict) for row in rows)):
        names = sorted({str(k) for row in (rows or [model_input]) for k in row} - {FILES_KEY})
        if names:
            raise _refuse(f'unknown input name(s) {", ".join(names)[:200]}: image files go under "{FILES_KEY}"', shape)
    if isinstance(model_input, dict):
        return np.asarray(model_input.get(FILES_KEY), dtype=object).reshape(-1).tolist()
    if rows and all(isinstance(row, dict) for row in rows):
        return [np.asarray(row.get(FILES_KEY), dtype=object).item() for row in rows]
    return None


def file_bytes(value, index: int, shape: tuple[int, ...]) -> bytes:
    """One file's bytes from its base64 text (a data: URL's prefix allowed) or from bytes given in Python."""
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        received = "null" if value is None or (isinstance(value, np.ndarray) and value.dtype == object
                                                and value.size == 1 and value.item() is None) else type(value).__name__  # fmt: skip
        raise _refuse(f"image file {index}: {FILES_KEY} must be a base64 string; received {received}", shape)
    text = "".join(value.split())
    if text.startswith("data:") and ";base64," in text:  # what a browser's FileReader.readAsDataURL makes
        text = text.split(";base64,", 1)[1]
    if len(text) > MAX_FILE_BYTES * 4 // 3 + 4:
        raise _refuse(f"image file {index} is over the limit of {MAX_FILE_BYTES // 1_000_000} MB", shape)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _refuse(f"image file {index}: {FILES_KEY} is not base64 ({e})", shape) from None


def decode_files(files: list, shape: tuple[int, ...]) -> np.ndarray:
    """Image files as float32 pixels (N, *shape), each decoded and resized as training and `predict` read files."""
    if pixels.form(shape) is None:
        raise _refuse("this model's input is not an image; send pixels", shape)
    if not files:
        raise _refuse("the batch is empty; send at least one image", shape)
    if len(files) > MAX_BATCH:
        raise _refuse(f"a batch of {len(files)} images is over the limit of {MAX_BATCH} per request; split it", shape)
    return np.stack([_decode(file_bytes(value, i, shape), i, shape) for i, value in enumerate(files)])


def _decode(data: bytes, index: int, shape: tuple[int, ...]) -> np.ndarray:
    source = io.BytesIO(data)
    try:
        image = pixels.decode(source, *pixels.form(shape), max_pixels=MAX_FILE_PIXELS)[0]
    except pixels.READ_ERRORS as e:
        reason = f"image file {index} ({len(data)} bytes) cannot be decoded: {pixels.reason(e, source)}"
        raise _refuse(reason, shape) from None
    return image.reshape(shape).astype(np.float32)


def check_images(model_input, shape: tuple[int, ...]) -> np.ndarray:
    """The request as float32 raw pixels of shape (N, *shape), or a refusal whose message starts with what was
    wrong, then says what the model takes. One image without the batch axis is a batch of one; image files (see
    `encoded_files`) are decoded."""
    files = encoded_files(model_input, shape)
    if files is not None:
        return decode_files(files, shape)
    images = _as_array(model_input, shape)
    if images.dtype.kind not in "uif":
        raise _refuse(f"pixels must be numbers; received values of type {images.dtype}", shape)
    if images.ndim and len(images) == 0:
        raise _refuse("the batch is empty; send at least one image", shape)
    if images.shape == tuple(shape):
        images = images[np.newaxis]
    if images.shape[1:] != tuple(shape):
        raise _refuse(f"wrong image shape {images.shape}", shape)
    if len(images) > MAX_BATCH:
        raise _refuse(f"a batch of {len(images)} images is over the limit of {MAX_BATCH} per request; split it", shape)
    if not np.isfinite(images).all():
        count = int((~np.isfinite(images)).sum())
        raise _refuse(f"pixel values must be numbers from 0 to 255; received {count} NaN, null or infinite", shape)
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 255:
        raise _refuse(f"pixel values must be from 0 to 255; received values from {low} to {high}", shape)
    return images.astype(np.float32, copy=False)


class Classifier:
    """pyfunc's model: check the input against the network's shape, run the network, name the classes."""

    def __init__(self, network, class_names: list[str]):
        if network.classes != len(class_names):
            raise ValueError(
                f"the network answers {network.classes} classes; {CLASS_NAMES_FILE} names {len(class_names)}"
            )
        self.network = network  # float32 (N, *network.input_shape) -> float32 (N, classes) probabilities
        self._class_names = list(class_names)

    def get_raw_model(self) -> Classifier:
        """What MLflow's PyFuncModel.get_raw_model gives: this object (a server may swap its network's runner)."""
        return self

    def predict(self, model_input, params=None) -> list[dict]:
        """One answer per image. Plain Python objects, not a DataFrame: the server turns them into JSON several
        times faster (pd.DataFrame(answers) for a table)."""
        probabilities = self.network(check_images(model_input, self.network.input_shape))
        best = probabilities.argmax(axis=1)
        return [
            {"class": c, "class_name": self._class_names[c], "probability": p[c], "probabilities": p}
            for c, p in zip(best.tolist(), probabilities.tolist(), strict=True)
        ]


class KerasNetwork:
    """The Keras model as one traced graph for any batch size, loaded with safe_mode (no arbitrary code)."""

    def __init__(self, path: Path):
        import keras
        import tensorflow as tf

        model = keras.saving.load_model(path, compile=False, safe_mode=True)
        self.input_shape = tuple(model.input_shape[1:])  # (H, W) or (H, W, C): the image, without the batch
        self.classes = int(model.output_shape[-1])
        self._call = tf.function(
            lambda x: model(x, training=False), input_signature=[tf.TensorSpec([None, *self.input_shape], tf.float32)]
        )
        self(np.zeros((1, *self.input_shape), np.float32))  # trace now, not on the first request

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self._call(images).numpy().astype(np.float32, copy=False)


class LiteRTNetwork:
    """A TFLite file in the LiteRT interpreter. The interpreter is not thread-safe and the server answers from a
    thread pool, so calls take turns; tensors are re-allocated only when the batch size changes."""

    def __init__(self, path: Path):
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=str(path), num_threads=1)
        inputs, outputs = self._interpreter.get_input_details()[0], self._interpreter.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in inputs["shape"][1:])
        self.classes = int(outputs["shape"][-1])
        self._input, self._output = inputs["index"], outputs["index"]
        self._batch = None
        self._lock = threading.Lock()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        with self._lock:
            if len(images) != self._batch:
                self._interpreter.resize_tensor_input(self._input, images.shape)
                self._interpreter.allocate_tensors()
                self._batch = len(images)
            self._interpreter.set_tensor(self._input, images)
            self._interpreter.invoke()
            return self._interpreter.get_tensor(self._output).copy()


class _Call:
    """One request's images waiting in a Batcher, and then its probabilities or the network's error."""

    def __init__(self, images: np.ndarray):
        self.images = images
        self.done = False
        self.probabilities: np.ndarray | None = None
        self.error: BaseException | None = None


class Batcher:
    """Dynamic batching of a network's calls from the server's threads, as TensorFlow Serving and Ray Serve batch:
    a call that finds the network idle runs at once; calls that arrive while it runs queue, and the next one to go
    takes every queued image (up to `max_images`, after waiting up to `wait` seconds for more if others are
    coming) into one call of the network, then hands each caller its rows. The answers are the network's, row for
    row; one request's bad input never reaches it (checked before)."""

    def __init__(self, network, max_images: int | None = None, wait: float | None = None):
        self.network = network
        self.input_shape, self.classes = network.input_shape, network.classes
        if max_images is None:
            max_images = int(os.environ.get(BATCH_IMAGES_ENV) or 64)
        if wait is None:
            wait = float(os.environ.get(BATCH_WAIT_ENV) or 0) / 1000
        self._max_images, self._wait = max(1, max_images), max(0.0, wait)
        self._queue: list[_Call] = []
        self._busy = False
        self._cond = threading.Condition()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self._max_images == 1 or len(images) >= self._max_images:
            return self.network(images)  # nothing to gain: alone it fills a batch (or batching is off)
        call = _Call(images)
        with self._cond:
            self._queue.append(call)
            self._cond.notify_all()  # a caller gathering a batch counts this one
            while not call.done:
                if self._busy:
                    self._cond.wait()
                    continue
                self._busy = True
                try:
                    if self._wait and len(self._queue) > 1:  # under load: let a few more join, for a bounded time
                        self._cond.wait_for(lambda: self._queued_images() >= self._max_images, timeout=self._wait)
                    batch = self._take()
                    self._cond.release()
                    try:
                        self._run(batch)
                    finally:
                        self._cond.acquire()
                finally:
                    self._busy = False
                    self._cond.notify_all()
        if call.error is not None:  # each caller its own copy: one exception raised in several threads mixes their
            raise copy.copy(call.error).with_traceback(None) from call.error  # tracebacks
        return call.probabilities

    def _queued_images(self) -> int:
        return sum(len(c.images) for c in self._queue)

    def _take(self) -> list[_Call]:
        """The oldest calls whose images fit in one batch (always at least one)."""
        count, taken = 0, 0
        for c in self._queue:
            if taken and count + len(c.images) > self._max_images:
                break
            count, taken = count + len(c.images), taken + 1
        batch, self._queue = self._queue[:taken], self._queue[taken:]
        return batch

    def _run(self, batch: list[_Call]) -> None:
        try:
            if len(batch) == 1:
                probabilities = [self.network(batch[0].images)]
            else:
                rows = self.network(np.concatenate([c.images for c in batch]))
                probabilities = np.split(rows, np.cumsum([len(c.images) for c in batch])[:-1])
            for c, p in zip(batch, probabilities, strict=True):
                c.probabilities = p
        except BaseException as e:  # noqa: BLE001 (every caller of the batch gets the network's error)
            for c in batch:
                c.error = e
        for c in batch:
            c.done = True


def _load_pyfunc(data_path: str, model_config: dict | None = None) -> Classifier:
    """MLflow's entry point. `data_path` is a folder holding the network (model.keras or model.tflite) and
    class_names.json. (LiteRT models logged before that have data_path model.tflite and the class names in
    `model_config`, which MLflow also logged as a run param.)"""
    path = Path(data_path)
    if path.is_file():
        model = Classifier(Batcher(LiteRTNetwork(path)), model_config["class_names"])
    else:
        names = json.loads((path / CLASS_NAMES_FILE).read_text())
        litert = path / LITERT_FILE
        network = LiteRTNetwork(litert) if litert.is_file() else KerasNetwork(path / KERAS_FILE)
        model = Classifier(Batcher(network), names)
    # Everything loaded so far (TensorFlow's modules, the model) lives as long as the server: keep the garbage
    # collector from scanning it again on every full collection, which showed as slow requests.
    gc.freeze()
    return model


def write_code(folder: Path) -> Path:
    """A minimal tftrain package (this module and pixels.py) for a model's code_paths; returns the package folder."""
    package = folder / "tftrain"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text('"""tftrain serving code, as logged with the model."""\n')
    shutil.copy(__file__, package / "serving.py")
    shutil.copy(pixels.__file__, package / "pixels.py")
    return package


def write_data(folder: Path, class_names: list[str]) -> Path:
    """The extras of a model's data folder: its class names."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CLASS_NAMES_FILE).write_text(json.dumps(list(class_names)))
    return folder


def save_model(path, mlflow_model, keras_model, class_names, **kwargs) -> None:
    """The flavor's save_model, called by `mlflow.models.Model.log(flavor=tftrain.serving, ...)`: MLflow's own
    Keras flavor (so `mlflow.keras.load_model` works), with the pyfunc flavor pointed at this module."""
    import mlflow

    signature = kwargs.pop("signature", None)  # outputs only, which the Keras flavor refuses: set after it
    Path(path).mkdir(parents=True)  # mlflow.keras.save_model writes the input example before it makes the folder
    flavor_logger = logging.getLogger("mlflow.keras.save")
    level = flavor_logger.level
    flavor_logger.setLevel(logging.ERROR)  # its "saving a Keras model without specifying model signature" is untrue
    try:
        mlflow.keras.save_model(keras_model, path, mlflow_model=mlflow_model, **kwargs)
    finally:
        flavor_logger.setLevel(level)
    mlflow_model.signature = signature
    path = Path(path)
    write_data(path / "data", class_names)
    write_code(path / "code")
    mlflow_model.flavors["python_function"].update(loader_module=__name__, data="data", code="code")
    mlflow_model.save(str(path / "MLmodel"))
