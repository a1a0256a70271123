"""The CLI as a user meets it: exit codes, one-line errors, no tracebacks. Refusals run tftrain's main() in this
process through click's CliRunner; those that must come before TensorFlow loads, and what depends on a fresh
interpreter, run in real processes (probe)."""

import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import write_dataset, write_idx
from tftrain.cli import main

RUN = "0123456789abcdef0123456789abcdef"


def tftrain(*args: str) -> subprocess.CompletedProcess:
    """`tftrain ARGS` as main() runs it, in this process under click's CliRunner (stdin, stdout and stderr of its
    own): the exit code and what it printed, with the warnings Python would print for a command of its own (its
    default filters), so that a refusal in one line is one line."""
    with CliRunner().isolation() as (stdout, stderr, _), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "argv", ["tftrain", *args])
            try:
                main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        shown = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in caught)
        sys.stdout.flush()
        sys.stderr.flush()
        return subprocess.CompletedProcess(["tftrain", *args], code, stdout.getvalue().decode(),
                                           stderr.getvalue().decode() + shown)  # fmt: skip


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--epochs", "0"], "invalid value for epochs: received 0; allowed: an integer >= 1"),
        (["train", "--epochs", "x"], "invalid value for epochs: received 'x'; allowed: an integer"),
        (["train", "--batch-size", "-3"], "invalid value for batch_size: received -3"),
        (["train", "--model", "resnet"], "received 'resnet'; allowed: mlp, cnn, cnn_bn, mobilenet_v2"),
        (["train", "--dataset", "cifar10"], "received 'cifar10'; allowed: fashion_mnist, mnist, an existing folder"),
        (["train", "--validation-split", "1.5"], "invalid value for validation_split: received 1.5"),
        (["train", "--learning-rate", "fast"], "invalid value for learning_rate: received 'fast'; allowed: a number"),
        (["train", "--early-stopping", "maybe"], "'maybe' is not a valid boolean"),
        (["train", "--data-dir", "/no/such/dir"], "invalid value for data_dir: received '/no/such/dir'"),
        (["train", "--bogus", "1"], "No such option '--bogus'"),
        (["pipeline", "--plateau-factor", "2"], "invalid value for plateau_factor: received 2.0"),
        (["evaluate"], "Missing option '--model-uri'"),
        (
            ["evaluate", "--model-uri", "my-model"],
            "invalid value for model_uri: received 'my-model'; allowed: runs:/",
        ),
        (
            ["evaluate", "--model-uri", "runs:/abc/model"],
            "invalid value for model_uri: received 'runs:/abc/model'",
        ),
        (
            ["export", "--model-uri", f"models:/m-{RUN}", "--dataset", "cifar"],
            "invalid value for dataset: received 'cifar'",
        ),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["promote", "--model-uri", "models:/m@champion"], "allowed: a registered version, models:/<name>/<version>"),
        (["promote", "--model-uri", "models:/m/1", "--alias", "latest"], "invalid value for alias: received 'latest'"),
        (["promote", "--model-uri", "models:/m/1", "--min-accuracy", "1.5"], "invalid value for min_accuracy"),
        (
            ["export", "--model-uri", "models:/m/1", "--litert-quantization", "int4"],
            "invalid value for litert_quantization: received 'int4'; allowed: one of float32, dynamic_range",
        ),
        (["predict", "--model-uri", "models:/m/1"], "Missing argument 'INPUT...'"),
        (["predict", "--model-uri", "models:/m/1", "/no/such.png"], "invalid value for INPUT: received '/no/such.png'"),
        (
            ["predict", "--model-uri", "models:/m/1", ".", "--format", "xml"],
            "invalid value for format: received 'xml'; allowed: one of auto, csv, json",
        ),
        (
            ["train", "--augment", "heavy"],
            "invalid value for augment: received 'heavy'; allowed: one of auto, none, flip",
        ),
        (["serve", "--port", "70000"], "70000 is not in the range 1<=x<=65535"),
        (["serve", "--model-uri", "latest"], "invalid value for model_uri: received 'latest'"),
        (["serve", "--workers", "0"], "0 is not in the range 1<=x<=256"),
        (["serve", "--max-body-mb", "0"], "0.0 is not in the range 0.001<=x<=2000"),
        (["serve", "--engine", "ray", "--workers", "2"], "--workers is for --engine local; with --engine ray, say"),
        (["serve", "--engine", "k8s"], "'k8s' is not one of 'local', 'ray'"),
        (["serve", "--replicas", "2"], "--replicas is for --engine ray; received --replicas 2 with --engine local"),
        (["bench", "--only", "recipe-mlp,fast"], "invalid value for --only: received 'recipe-mlp,fast'; allowed:"),
        (["bench", "--repeat", "0"], "0 is not in the range 1<=x<=20"),
        (["bench", "--json", "/no/dir/b.json"], "invalid value for --json: received '/no/dir/b.json'"),
        (["bench", "--data-dir", "/no/such/dir"], "invalid value for data_dir: received '/no/such/dir'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args, expected):
    done = tftrain(*args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith("tftrain: error: ") and expected in done.stderr


def test_predict_refuses_an_output_it_cannot_write(tmp_path):
    """The input holds an image (once, "." here was the repository's folder, whose figures made it so)."""
    Image.new("L", (28, 28)).save(tmp_path / "photo.png")
    done = tftrain("predict", "--model-uri", "models:/m/1", str(tmp_path), "--output", "/no/dir/p.csv")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith("tftrain: error: ") and "invalid value for output" in done.stderr


def user_error_line(done):
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    return [line for line in done.stderr.splitlines() if line.startswith("tftrain: error: ")]


def test_missing_model_in_the_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    done = tftrain("evaluate", "--model-uri", "models:/nope/1")
    (line,) = user_error_line(done)
    assert "model_uri 'models:/nope/1' cannot be opened" in line


def test_serve_names_a_missing_model_before_starting(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    done = tftrain("serve", "--model-uri", "models:/nope@champion")
    (line,) = user_error_line(done)
    assert "model_uri 'models:/nope@champion' cannot be opened" in line


def test_corrupt_data_file_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = write_dataset(tmp_path / "data")
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    done = tftrain("train", "--data-dir", str(folder))
    (line,) = user_error_line(done)
    assert f"data file {folder / 'train-labels-idx1-ubyte.gz'}: 5 labels for 640 images" in line


def test_unwritable_output_dir(tmp_path, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("a file, not a folder")
    done = tftrain("train", "--data-dir", str(tiny_data), "--output-dir", "taken/out")
    (line,) = user_error_line(done)
    assert "invalid value for output_dir: received 'taken/out'" in line


def test_help_lists_the_steps_and_exits_0():
    done = tftrain("--help")
    assert done.returncode == 0
    for command in ("train", "evaluate", "export", "promote", "predict", "serve", "pipeline"):
        assert f"  {command} " in done.stdout
    options = tftrain("train", "--help").stdout
    assert "--early-stopping-patience INTEGER" in options and "[default: 3]" in options


def test_the_cli_imports_neither_the_bench_nor_a_test_harness():
    """`tftrain` loads the commands users run; the benchmark loads only for `tftrain bench`, and the server harness
    of the tests and scripts (tests/servers.py) is not in the package."""
    code = "import sys, tftrain.cli, tftrain.ship.serve; print(' '.join(m for m in sys.modules if m.startswith('tftrain')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "tftrain.cli" in loaded and not [m for m in loaded if m.startswith("tftrain.bench")]
    import tftrain.ship.serve

    assert not hasattr(tftrain.ship.serve, "running_server")


def test_the_processes_tests_start_import_this_tftrain(tmp_path):
    """The tests' processes start in other folders than pytest's (a test's own, the project copy): they import the
    tftrain under test, not an installed copy of another checkout (a relative PYTHONPATH once made them)."""
    import tftrain

    code = "import tftrain; print(tftrain.__file__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert Path(done.stdout.strip()) == Path(tftrain.__file__)


# Runs the CLI, then says on stdout which of TensorFlow and Keras got imported (an empty list: neither).
NO_TF_PROBE = (
    "import atexit, sys; atexit.register(lambda: print(sorted({'tensorflow', 'keras'} & set(sys.modules)))); "
    "sys.argv[0] = 'tftrain'; from tftrain.cli import main; main()"
)


@pytest.fixture(scope="module")
def mistakes(tmp_path_factory, tiny_data):
    """A working folder with a store and one of each mistake a check must catch; a listening port."""
    folder = tmp_path_factory.mktemp("mistakes")
    (folder / "empty").mkdir()
    (folder / "no-images" / "sub").mkdir(parents=True)
    (folder / "no-images" / "sub" / "notes.txt").write_text("not an image")
    (folder / "user.py").write_text("import tensorflow\n\n\ndef other():\n    pass\n")  # never to be run
    (folder / "raises.py").write_text("def build(input_shape, num_classes):\n    raise ValueError('no')\n")
    (folder / "journal").mkdir()
    (folder / "journal" / "run.json").write_text(f'{{"run_id": "{RUN}"}}')
    (folder / "photo.png").write_bytes(b"")
    bad = write_dataset(folder / "bad-data", n_train=64, n_test=20)
    write_idx(bad / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()  # an existing, empty store
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield folder, busy.getsockname()[1], tiny_data


CHECKED_BEFORE_TENSORFLOW = [
    (["train", "--data-dir", "empty"], "data folder empty lacks train-images-idx3-ubyte.gz"),
    (["train", "--data-dir", "bad-data"], "train-labels-idx1-ubyte.gz: 5 labels for 64 images"),
    (["train", "--model", "user.py:build"], "model builder user.py:build: user.py has no function 'build'"),
    (["train", "--model", "no_such_module:build"], "cannot import no_such_module: ModuleNotFoundError"),
    (["train", "--output-dir", "user.py/out"], "invalid value for output_dir: received 'user.py/out'"),
    (["train", "--launcher", "ray", "--engine", "fit"], "invalid combination: engine=fit with launcher=ray"),
    (["train", "--launcher", "ray", "--strategy", "mirrored"], "launcher=ray with strategy=mirrored"),
    (["train", "--launcher", "ray", "--workers", "0"], "invalid value for workers: received 0"),
    (["train", "--launcher", "ray", "--ray-address", "127.0.0.1:1"], "received 127.0.0.1:1; nothing answers there"),
    (["train", "--launcher", "ray", "--ray-address", "127.0.0.1:{busy}"], "something answers there, but not a Ray"),
    (
        ["train", "--launcher", "ray", "--ray-address", "head node"],
        "invalid value for ray_address: received 'head node'",
    ),
    (
        ["train", "--workers", "4"],
        "invalid combination: workers=4 with launcher=none; workers is an option of launcher=ray",
    ),
    (["train", "--launcher", "ray", "--ray-address", "127.0.0.1:99999"], "invalid value for ray_address: received"),
    (["train", "--strategy", "multi_worker"], "invalid value for TF_CONFIG: received no cluster"),
    (["train", "--ray-address", "auto"], "allowed: launcher=ray, or ray_address empty (its default)"),
    (["pipeline", "--launcher", "ray", "--ray-address", "head node"], "invalid value for ray_address: received 'head"),
    (["pipeline", "--dataset", "user.py:load"], "dataset function user.py:load: user.py has no function 'load'"),
    (["pipeline", "--model", "resnet50"], "model=resnet50 with images of 28x28; allowed: images of at least 32x32"),
    (["evaluate", "--model-uri", "models:/nope/1"], "model_uri 'models:/nope/1' cannot be opened: Registered Model"),
    (["evaluate", "--model-uri", f"runs:/{RUN}/model"], f"cannot be opened: Run with id={RUN} not found"),
    (["evaluate", "--model-uri", "models:/nope/1", "--dataset", "empty"], "image folder"),
    (["export", "--model-uri", "models:/nope@champion"], "model_uri 'models:/nope@champion' cannot be opened"),
    (["promote", "--model-uri", "models:/nope/3"], "model_uri 'models:/nope/3' cannot be opened"),
    (["predict", "--model-uri", "models:/nope/1", "no-images"], "input folder no-images has no image files"),
    (["predict", "--model-uri", "models:/nope/1", "photo.png"], "model_uri 'models:/nope/1' cannot be opened"),
    (["serve", "--port", "{busy}"], "cannot listen on 127.0.0.1:{busy}: Address already in use"),
    (["serve", "--model-uri", "models:/nope@champion"], "model_uri 'models:/nope@champion' cannot be opened"),
    (["sync", "journal"], f"offline journal journal: run {RUN} is not in tracking store"),
]


def probe(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{cwd / 'mlflow.db'}"
    command = [sys.executable, "-c", NO_TF_PROBE, *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.mark.parametrize("args, expected", CHECKED_BEFORE_TENSORFLOW)
def test_mistakes_are_said_before_tensorflow_loads(mistakes, args, expected):
    folder, busy, _ = mistakes
    done = probe([a.format(busy=busy) for a in args], folder)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("tftrain: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert expected.format(busy=busy) in done.stderr
    assert done.stdout == "[]\n", f"imported {done.stdout.strip()} before refusing: {done.stderr}"


def test_the_probe_sees_tensorflow_when_the_checks_pass(mistakes):
    """The builder exists and is only wrong when it runs: that takes TensorFlow, and the probe says so."""
    folder, _, tiny_data = mistakes
    done = probe(["train", "--data-dir", str(tiny_data), "--model", "raises.py:build"], folder)
    assert done.returncode == 2 and "model builder raises.py:build raised ValueError: no" in done.stderr
    assert done.stdout == "['keras', 'tensorflow']\n"


def test_a_python_without_the_dependencies_gets_one_line():
    """`mlflow run --env-manager local` runs whichever `python` is first on PATH: outside the venv, say so."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    done = subprocess.run(
        [sys.executable, "-S", "-m", "tftrain", "train"], capture_output=True, text=True, env=env, timeout=60
    )  # fmt: skip  (-S: no site-packages, so none of the dependencies)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"tftrain: error: {sys.executable} has no click, numpy, PIL, mlflow, tensorflow")
    assert "source .venv/bin/activate" in done.stderr
