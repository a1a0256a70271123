"""export: SavedModel and TFLite files from a real registered model, scored with LiteRT."""

import keras
import mlflow
import numpy as np
import pytest
import tensorflow as tf

from conftest import run_tagged
from tftrain.config import QUANTIZATIONS
from tftrain.errors import UserError
from tftrain.ship.export import CONVERTER_SETUP, convert, flex_ops, litert_predict


@pytest.fixture(scope="module")
def exported(trained_and_exported):
    """The session's tiny model and its export's results (conftest: exported once, in this module's store copy)."""
    result, done, _ = trained_and_exported
    return result, done.results


def test_every_quantization_choice_has_a_converter_setup():
    assert tuple(CONVERTER_SETUP) == QUANTIZATIONS


def test_tflite_files_score_like_the_keras_model(exported):
    _, results = exported
    by_mode = {r.mode: r for r in results}
    assert set(by_mode) == {"float32", "dynamic_range", "float16", "int8"}
    assert by_mode["float32"].accuracy_delta == pytest.approx(0.0, abs=0.01)
    assert abs(by_mode["float16"].accuracy_delta) <= 0.01
    assert abs(by_mode["dynamic_range"].accuracy_delta) <= 0.05 and abs(by_mode["int8"].accuracy_delta) <= 0.05
    float32_size = by_mode["float32"].size_bytes
    assert by_mode["dynamic_range"].size_bytes < float32_size / 3 and by_mode["int8"].size_bytes < float32_size / 3
    assert float32_size / 2.2 < by_mode["float16"].size_bytes < float32_size / 1.8  # half-width weights
    assert all(r.test_accuracy > 0.5 and 0 < r.latency_ms < 100 for r in results)


def test_export_metrics_and_files_are_logged(exported):
    result, results = exported
    run_id = run_tagged("exported_model_uri")
    metrics = mlflow.get_run(run_id).data.metrics
    for r in results:
        assert metrics[f"tflite_{r.mode}_size_bytes"] == r.size_bytes
        assert metrics[f"tflite_{r.mode}_test_accuracy"] == pytest.approx(r.test_accuracy)
        assert metrics[f"tflite_{r.mode}_accuracy_delta"] == pytest.approx(r.accuracy_delta)
        assert metrics[f"tflite_{r.mode}_latency_ms"] == pytest.approx(r.latency_ms)
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(run_id, "export")}
    assert files == {"export/saved_model"} | {
        f"export/model_{m}.tflite" for m in ("float32", "dynamic_range", "float16", "int8")
    }


def test_saved_model_serves_the_same_probabilities(exported, tiny_data):
    result, results = exported
    saved = tf.saved_model.load(str(results[0].path.parent / "saved_model"))
    images = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28)).astype(np.float32)
    expected = mlflow.keras.load_model(result.model.uri).predict(images, verbose=0)
    np.testing.assert_allclose(saved.serve(images).numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(litert_predict(results[0].path, images), expected, rtol=1e-4, atol=1e-5)


@pytest.fixture
def determinant_model(tmp_path):
    """A SavedModel whose only real op, MatrixDeterminant, has no TFLite builtin."""
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda x: tf.linalg.det(tf.reshape(x, (-1, 2, 2))))(inputs)
    keras.Model(inputs, outputs).export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
    return tmp_path / "sm"


def test_graph_needing_tf_select_ops_is_refused(determinant_model):
    with pytest.raises(UserError, match=r"TFLite float32 export needs TF Select ops \(MatrixDeterminant\)"):
        convert(determinant_model, "float32")


def test_flex_ops_are_found_in_a_file(determinant_model):
    converter = tf.lite.TFLiteConverter.from_saved_model(str(determinant_model))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    assert flex_ops(converter.convert()) == ["FlexMatrixDeterminant"]
