"""The `export` step: a SavedModel and TFLite files in four quantization modes (the write-up's float32 and
dynamic-range, plus float16 and full int8), each scored on the test split with the LiteRT interpreter against the
Keras model, and timed at one image per call. One of them is logged as a servable LiteRT model and registered as
<name>-litert."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from tensorflow.lite.python.convert_phase import ConverterError

from tftrain.config import QUANTIZATIONS
from tftrain.data.datasets import TaskData, make_dataset
from tftrain.errors import UserError
from tftrain.models.build import float32_copy
from tftrain.ship.evaluate import check_classes, model_data, own_test_split
from tftrain.tracking import logged_models, runs

log = logging.getLogger(__name__)


def _float32(converter: tf.lite.TFLiteConverter, representative: np.ndarray) -> None:
    pass  # the converter's default: float32 weights and activations


def _dynamic_range(converter: tf.lite.TFLiteConverter, representative: np.ndarray) -> None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]  # int8 weights, float activations


def _float16(converter: tf.lite.TFLiteConverter, representative: np.ndarray) -> None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]  # float16 weights, computed in float32 on CPU


def _int8(converter: tf.lite.TFLiteConverter, representative: np.ndarray) -> None:
    """Weights and activations in int8, calibrated on training images; float32 in and out, so the file takes
    the same requests as the others."""
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None].astype(np.float32)] for image in representative)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]


# Named quantization modes; each adjusts a converter before convert().
CONVERTER_SETUP: dict[str, Callable[[tf.lite.TFLiteConverter, np.ndarray], None]] = {
    "float32": _float32,
    "dynamic_range": _dynamic_range,
    "float16": _float16,
    "int8": _int8,
}
CALIBRATION_IMAGES = 500  # training images that set int8's activation ranges


LITERT_SUFFIX = "-litert"  # the LiteRT model of NAME registers as NAME-litert


@dataclass(frozen=True)
class TfliteResult:
    mode: str
    path: Path
    size_bytes: int
    test_accuracy: float
    accuracy_delta: float  # against the Keras model on the same images
    latency_ms: float  # median of single-image invokes


def flex_ops(flatbuffer: bytes) -> list[str]:
    """TF Select ops a TFLite file needs: LiteRT's builtin runtime cannot run them."""
    ops = Interpreter(model_content=flatbuffer)._get_ops_details()
    return sorted({op["op_name"] for op in ops if op["op_name"].startswith("Flex")})


def convert(saved_model_dir: Path, mode: str, representative: np.ndarray | None = None) -> bytes:
    """Convert a SavedModel with builtin ops only; a graph that would need TF Select ops is refused."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    CONVERTER_SETUP[mode](converter, representative)
    try:
        flatbuffer = converter.convert()
    except ConverterError as e:
        select = re.search(r"TF Select ops: (.*)", str(e))
        if not select:
            raise
        raise UserError(
            f"TFLite {mode} export needs TF Select ops ({select.group(1)}), which LiteRT cannot run; refused"
        ) from None
    if flex := flex_ops(flatbuffer):
        raise UserError(
            f"TFLite {mode} export needs TF Select ops ({', '.join(flex)}), which LiteRT cannot run; refused"
        )
    return flatbuffer


def litert_predict(path: Path, images: np.ndarray, batch: int = 1000) -> np.ndarray:
    """Class probabilities from the LiteRT interpreter, `batch` images per invoke."""
    interpreter = Interpreter(model_path=str(path))
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    results = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch].astype(np.float32)
        interpreter.resize_tensor_input(inp["index"], chunk.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], chunk)
        interpreter.invoke()
        results.append(interpreter.get_tensor(out["index"]).copy())
    return np.concatenate(results)


BATCH_CHECK_IMAGES = 8


def check_batch_independent(path: Path, images: np.ndarray) -> None:
    """The file answers each image the same alone as within a batch; a graph that normalizes with the batch's own
    statistics at inference (a layer left in training mode) would otherwise pass a test split scored in one big
    batch and answer single requests wrongly."""
    alone = np.concatenate([litert_predict(path, images[i : i + 1]) for i in range(len(images))])
    together = litert_predict(path, images)
    if (gap := float(np.abs(alone - together).max())) > 1e-3:
        raise UserError(
            f"{path.name} answers an image differently alone than within a batch (probabilities differ by up to "
            f"{gap:.3f}): the model normalizes with each batch's statistics at inference (a layer called with "
            "training=True); refused"
        )


def litert_latency_ms(path: Path, images: np.ndarray, calls: int = 200) -> float:
    """Median wall time of one single-image invoke (set input, invoke, read output), after 20 warm-up calls."""
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    times = []
    for i in range(calls + 20):
        image = images[i % len(images)][None].astype(np.float32)
        start = time.perf_counter()
        interpreter.set_tensor(inp, image)
        interpreter.invoke()
        interpreter.get_tensor(out)
        times.append(time.perf_counter() - start)
    return float(np.median(times[20:]) * 1000)


def _tflite(mode: str, out_dir: Path, test, calibration: np.ndarray, keras_accuracy: float) -> TfliteResult:
    """Convert (int8 calibrated on `calibration`), score on the whole test split, time at batch 1."""
    start = time.perf_counter()
    path = out_dir / f"model_{mode}.tflite"
    x_test, y_test = test
    # said before it starts: converting takes 0.2 s for the MLP, minutes for big models
    log.info(f"  {path.name}: converting")
    path.write_bytes(convert(out_dir / "saved_model", mode, calibration))
    check_batch_independent(path, x_test[:BATCH_CHECK_IMAGES])
    accuracy = float((litert_predict(path, x_test).argmax(1) == y_test).mean())
    latency = litert_latency_ms(path, x_test)
    log.info(f"  {path.name}: converted, scored and timed in {time.perf_counter() - start:.1f}s")
    return TfliteResult(mode, path, path.stat().st_size, accuracy, accuracy - keras_accuracy, latency)


@dataclass(frozen=True)
class Export:
    results: list[TfliteResult]
    litert: logged_models.LoggedModel  # the servable LiteRT model


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def export(
    model_uri: str,
    dataset: str = "",
    data_dir: str = "",
    output_dir: str = "outputs",
    litert_quantization="float32",
    data: TaskData | None = None,
) -> Export:
    """`data`: the task's data already in hand (the main job's); else `dataset` or the one the model trained on."""
    ref = logged_models.resolve_model(model_uri)
    model = logged_models.load_keras(model_uri)
    data = data or model_data(ref, dataset, data_dir)
    check_classes(ref, ref.class_names or len(data.class_names), data)
    # the reference is the model as trained, whatever its precision
    x_test, y_test = data.test
    keras_probs = model.predict(make_dataset(x_test, y_test, 256, shuffle=False), verbose=0)  # a folder on disk too
    check_classes(ref, keras_probs.shape[1], data)
    keras_accuracy = float((keras_probs.argmax(1) == y_test).mean())
    if mixed := sorted({layer.dtype_policy.name for layer in model.layers} - {"float32"}):
        log.info(f"  {model_uri} computes in {', '.join(mixed)}: exporting a float32 copy of its weights")
        model = float32_copy(model)

    with runs.step_run(f"export-{data.name}"):
        out_dir = Path(output_dir) / runs.active_run_id() / "export"
        out_dir.mkdir(parents=True, exist_ok=True)
        model.export(str(out_dir / "saved_model"), format="tf_saved_model", verbose=False)
        metrics = {
            "export_keras_test_accuracy": keras_accuracy,
            "saved_model_size_bytes": _dir_size(out_dir / "saved_model"),
        }
        x_train = data.train[0]
        calibration = x_train[np.random.default_rng(0).permutation(len(x_train))[:CALIBRATION_IMAGES]]
        results = [_tflite(mode, out_dir, data.test, calibration, keras_accuracy) for mode in QUANTIZATIONS]
        for r in results:
            metrics[f"tflite_{r.mode}_size_bytes"] = r.size_bytes
            metrics[f"tflite_{r.mode}_test_accuracy"] = r.test_accuracy
            metrics[f"tflite_{r.mode}_accuracy_delta"] = r.accuracy_delta
            metrics[f"tflite_{r.mode}_latency_ms"] = r.latency_ms
        runs.set_tags({"exported_model_uri": model_uri})
        runs.log_metrics(metrics, model_id=ref.model_id)
        runs.log_folder(out_dir, "export")
        served = next(r for r in results if r.mode == litert_quantization)
        name = ref.trained_name
        made = logged_models.Provenance(data.class_names, ref.training_data or {}, name)
        litert = logged_models.log_litert_model(
            served.path, made, name + LITERT_SUFFIX if name else None, x_test[:2], served.mode
        )
        # what the registry gate reads (registry.gate_metric), linked to the LiteRT model on the model's own test
        # split only; under its own name, so the run's test_accuracy stays the Keras model's
        if own_test_split(ref, dataset, data_dir):
            runs.log_metrics({f"tflite_{served.mode}_test_accuracy": served.test_accuracy}, model_id=litert.model_id)
    log.info(table(keras_accuracy, results))
    registered = f", registered as {litert.registered_name} version {litert.version}" if litert.version else ""
    log.info(f"LiteRT model ({served.mode}): {litert.uri}{registered}; files in {out_dir}")
    return Export(results, litert)


def table(keras_accuracy: float, results: list[TfliteResult]) -> str:
    rows = [f"{'format':<22}{'size':>12}{'test accuracy':>16}{'vs Keras':>11}{'ms/image':>10}"]
    rows.append(f"{'keras':<22}{'':>12}{keras_accuracy:>16.4f}")
    for r in results:
        rows.append(
            f"{'tflite ' + r.mode:<22}{r.size_bytes / 1e6:>10.3f}MB{r.test_accuracy:>16.4f}"
            f"{r.accuracy_delta:>+11.4f}{r.latency_ms:>10.3f}"
        )
    return "\n".join(rows)
