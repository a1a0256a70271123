"""Shared fixtures: tiny learnable IDX data written to disk, a real MLflow sqlite store in a temp folder, one model
trained for the whole session, and a copy of the project for the commands that write into the folder they run
from. The suite never writes into the repository: it runs from a folder of its own (`_outside_the_repository`),
which checks at the end that no file in the repository's untracked or ignored part appeared, changed or went."""

from __future__ import annotations

import contextlib
import getpass
import gzip
import hashlib
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from tftrain import log

REPO = Path(__file__).resolve().parents[1]

# Subprocesses start in other folders (a test's tmp_path, the project copy): a relative PYTHONPATH (PYTHONPATH=src)
# would make them import another tftrain than this one, an installed copy of some other checkout.
if os.environ.get("PYTHONPATH"):
    os.environ["PYTHONPATH"] = os.pathsep.join(
        str(Path(entry).resolve()) if entry else entry for entry in os.environ["PYTHONPATH"].split(os.pathsep)
    )
# Hypothesis keeps its example database (what replays a failure on the next run) and caches in ./.hypothesis by
# default: the repository, when pytest starts there. Kept across sessions, outside it.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / f"tftrain-tests-{getpass.getuser()}" / "hypothesis")


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


# Untracked or ignored, but the tools' own: the venv, pytest's and ruff's caches (their contents change as the tools
# work, so only whether they exist counts) and Python's bytecode (not counted).
TOOL_PATHS = (".venv/", ".pytest_cache/", ".ruff_cache/", ".mypy_cache/")


def repository_leftovers() -> dict[str, tuple[int, int]] | None:
    """The repository's untracked and ignored files and folders (git shows the ignored ones to no one: a user's
    mlflow.db, optuna.db, outputs/), each with its size and modification time (folders: -1, 0); None when the
    repository is not a git checkout."""
    try:
        listed = subprocess.run(["git", "status", "--porcelain", "--ignored", "-z"], cwd=REPO, capture_output=True)
    except OSError:
        return None
    if listed.returncode != 0:
        return None
    paths = []
    for entry in listed.stdout.decode(errors="surrogateescape").split("\0"):
        status, path = entry[:2], entry[3:]
        if status in ("??", "!!") and "__pycache__" not in path:
            paths.append(REPO / path)
            for folder, subfolders, files in [] if path.startswith(TOOL_PATHS) else os.walk(REPO / path):
                subfolders[:] = [d for d in subfolders if d != "__pycache__"]
                paths += [Path(folder, name) for name in subfolders + files]
    found = {}
    for path in paths:
        with contextlib.suppress(OSError):  # gone since it was listed
            stat = path.lstat()
            is_folder = path.is_dir() and not path.is_symlink()
            found[path.relative_to(REPO).as_posix()] = (-1, 0) if is_folder else (stat.st_size, stat.st_mtime_ns)
    return found


LEFTOVERS_BEFORE = repository_leftovers()  # before any test module is collected


@pytest.fixture(scope="session", autouse=True)
def _outside_the_repository(tmp_path_factory):
    """The session works in a folder of its own: what a test, or a command it starts, writes into its working
    folder (mlflow.db, outputs/, optuna.db) never lands in the repository. At the end, no untracked or ignored
    file of the repository may have appeared, changed or gone (a user's own ones included)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        yield
    after = repository_leftovers()
    if LEFTOVERS_BEFORE is None or after is None:
        return
    changed = sorted(p for p in LEFTOVERS_BEFORE.keys() | after.keys() if LEFTOVERS_BEFORE.get(p) != after.get(p))
    if changed:
        more = f" and {len(changed) - 20} more" if len(changed) > 20 else ""
        pytest.fail(f"the session wrote into the repository {REPO} (untracked or ignored files that appeared, changed "
                    f"or went while it ran): {', '.join(changed[:20])}{more}", pytrace=False)  # fmt: skip


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


def copy_store(template: Path, folder: Path) -> None:
    """A store folder (mlflow.db, its artifacts, the outputs) copied to `folder`: the database through sqlite's
    backup, whole and consistent. What is logged into the copy stays out of the template."""
    shutil.copytree(template, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("mlflow.db*"))
    with contextlib.closing(sqlite3.connect(template / "mlflow.db")) as source, contextlib.closing(
        sqlite3.connect(folder / "mlflow.db")
    ) as copy:
        source.backup(copy)


@pytest.fixture(scope="session")
def trained_template(tmp_path_factory, tiny_data):
    """One tiny model trained and registered once for the whole session, in a store no test logs into (tests get
    copies: `trained`): (TrainResult, store folder)."""
    from tftrain.training.trainer import train

    folder = tmp_path_factory.mktemp("trained-template")
    with mlflow_store(folder):
        return train(tiny_config(tiny_data, epochs=3, early_stopping=False)), folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, trained_template):
    """The session's tiny model, trained and registered, in a module-wide store of its own (a copy of the one it
    was trained in, so that what one module logs, registers or promotes is not in another's): (TrainResult, store
    folder)."""
    result, template = trained_template
    folder = tmp_path_factory.mktemp("trained")
    copy_store(template, folder)
    with mlflow_store(folder):
        yield result, folder


@pytest.fixture(scope="session")
def exported_template(tmp_path_factory, trained_template, tiny_data):
    """The session's tiny model exported once (SavedModel, the four TFLite files, the LiteRT twin registered), in
    a store no test logs into: (TrainResult, Export, store folder)."""
    from tftrain.ship.export import export

    result, trained_folder = trained_template
    folder = tmp_path_factory.mktemp("exported-template")
    copy_store(trained_folder, folder)
    with mlflow_store(folder):
        return result, export(result.model.uri, data_dir=str(tiny_data), output_dir=str(folder / "exports")), folder


@pytest.fixture(scope="module")
def trained_and_exported(tmp_path_factory, exported_template):
    """The session's exported model in a module-wide store of its own, as `trained`: (TrainResult, Export, store
    folder)."""
    result, exported, template = exported_template
    folder = tmp_path_factory.mktemp("exported")
    copy_store(template, folder)
    with mlflow_store(folder):
        yield result, exported, folder


@pytest.fixture(scope="session")
def colour(tmp_path_factory):
    """tests/test_serving.py's colour model logged with tftrain's tracking as Keras and as LiteRT, once for the
    session, in a store of its own that tests only read (they enter it: `mlflow_store(colour.store)`)."""
    from test_serving import log_colour_models

    return log_colour_models(tmp_path_factory.mktemp("colour"))


def activated_env() -> dict[str, str]:
    """This process's environment with its python's bin folder first on PATH, as an activated venv has it."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def copy_project(folder: Path) -> Path:
    """The project's tracked files as they are on disk copied to `folder`, as a user's clone has them, with a
    stand-in for the venv scripts/setup.sh makes: its bin folder holds this environment's programs, and its stamp
    says the dependencies are installed, so that scripts sourcing setup.sh go on at once. The stand-in's python
    refuses pip, which would install into this environment."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():  # not one deleted but not yet committed
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, folder / name)
    venv = folder / ".venv"
    (venv / "bin").mkdir(parents=True)
    for program in Path(sys.executable).parent.iterdir():
        if not program.name.startswith(("python", "pip", "activate", "Activate")):
            (venv / "bin" / program.name).symlink_to(program)
    (venv / "bin" / "python").write_text(
        f'#!/bin/sh\ncase " $* " in *" -m pip "*) echo "{venv}: a stand-in, no pip here" >&2; exit 1;; esac\n'
        f'exec {sys.executable} "$@"\n'
    )
    (venv / "bin" / "python").chmod(0o755)
    stamp = hashlib.sha256((folder / "pyproject.toml").read_bytes()).hexdigest()
    (venv / ".tftrain-installed").write_text(stamp + "\n")  # what scripts/setup.sh compares with pyproject.toml
    return folder


@pytest.fixture(scope="session")
def project(tmp_path_factory) -> Path:
    """A copy of the project (copy_project) for the commands that write into the project folder whatever folder
    they are started from: `mlflow run` runs entry points in it, scripts/*.sh cd into it."""
    return copy_project(tmp_path_factory.mktemp("project"))


def mlflow_run_args(project: Path, entry_point: str, params: dict, experiment: str) -> list[str]:
    """`mlflow run` of the project copy `project` with --env-manager local, as users run it in their clone."""
    args = [sys.executable, "-m", "mlflow", "run", str(project), "--env-manager", "local", "-e", entry_point,
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
