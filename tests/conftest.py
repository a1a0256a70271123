"""Shared fixtures: tiny learnable IDX data written to disk, and a real MLflow sqlite store in a temp folder."""

from __future__ import annotations

import contextlib
import gzip
import os
import struct
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from tftrain import log

REPO = Path(__file__).resolve().parents[1]


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def tiny_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class k is a bright 3-row band starting at row 2 + 2k, over noise: easy to learn, not trivial."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, 28, 28))
    for i, k in enumerate(labels):
        images[i, 2 + 2 * k : 5 + 2 * k, :] += 180
    return images.clip(0, 255).astype(np.uint8), labels.astype(np.uint8)


def write_dataset(folder: Path, n_train: int = 640, n_test: int = 200) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    x_train, y_train = tiny_images(n_train, seed=1)
    x_test, y_test = tiny_images(n_test, seed=2)
    write_idx(folder / "train-images-idx3-ubyte.gz", x_train)
    write_idx(folder / "train-labels-idx1-ubyte.gz", y_train)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", x_test)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", y_test)
    return folder


@pytest.fixture(scope="session", autouse=True)
def _console_logging():
    """tftrain's messages on the console as the CLI shows them (tftrain.log), for the tests that read them."""
    log.setup()


QUIET_VARIABLES = ("TF_CPP_MIN_LOG_LEVEL", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "MLFLOW_LOGGING_LEVEL")


@pytest.fixture(autouse=True)
def _quiet_variables_restored():
    """Tests that call tftrain's main() in this process let quiet.setup set these; later tests' subprocesses
    (mlflow run, whose INFO lines some tests read) must not inherit them."""
    before = {k: os.environ.get(k) for k in QUIET_VARIABLES}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("tiny-data"))


@contextlib.contextmanager
def mlflow_store(folder: Path):
    """A fresh sqlite MLflow store in `folder`, which is also the working directory (artifacts land there)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
            mp.delenv(var, raising=False)
        mlflow.set_tracking_uri(uri)
        try:
            yield uri
        finally:
            while mlflow.active_run():
                mlflow.end_run()
            mlflow.set_tracking_uri(None)


@pytest.fixture
def store(tmp_path) -> str:
    with mlflow_store(tmp_path) as uri:
        yield uri


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data):
    """One tiny model trained and registered in a module-wide store: (TrainResult, store folder)."""
    from tftrain.training.trainer import train

    folder = tmp_path_factory.mktemp("trained")
    with mlflow_store(folder):
        yield train(tiny_config(tiny_data, epochs=3, early_stopping=False)), folder


def activated_env() -> dict[str, str]:
    """This process's environment with its python's bin folder first on PATH, as an activated venv has it."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def mlflow_run_args(entry_point: str, params: dict, experiment: str) -> list[str]:
    """`mlflow run` of this project with --env-manager local, as users run it."""
    args = [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", "-e", entry_point,
            "--experiment-name", experiment]  # fmt: skip
    return args + [word for key, value in params.items() for word in ("-P", f"{key}={value}")]


def artifact(run_id: str, path: str) -> Path:
    """A run's artifact, downloaded from the store."""
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path))


def run_tagged(tag: str) -> str:
    """The id of the one run, in any experiment, that carries `tag`."""
    (run_id,) = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.{tag} != ''")["run_id"]
    return run_id


def tiny_config(data_dir: Path, **overrides):
    from tftrain.config import TrainConfig

    # float32 unless a test asks: tests compare numbers across engines and runs, whatever the machine's CPU
    settings = dict(data_dir=str(data_dir), epochs=2, batch_size=64, histogram_freq=1, run_name="tiny",
                    precision="float32")  # fmt: skip
    settings.update(overrides)
    return TrainConfig.from_flat(**settings)
