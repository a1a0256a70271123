"""The CLI as a user meets it: real processes, exit codes, one-line errors, no tracebacks."""

import subprocess
import sys

import numpy as np
import pytest

from conftest import write_dataset, write_idx

RUN = "0123456789abcdef0123456789abcdef"


def tftrain(*args, cwd=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "tftrain", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--epochs", "0"], "invalid value for epochs: received 0; allowed: an integer >= 1"),
        (["train", "--epochs", "x"], "Invalid value for '--epochs': 'x' is not a valid integer"),
        (["train", "--batch-size", "-3"], "invalid value for batch_size: received -3"),
        (["train", "--model", "resnet"], "received 'resnet'; allowed: mlp, cnn, cnn_bn, mobilenet_v2"),
        (["train", "--dataset", "cifar10"], "received 'cifar10'; allowed: fashion_mnist, mnist, an existing folder"),
        (["train", "--validation-split", "1.5"], "invalid value for validation_split: received 1.5"),
        (["train", "--learning-rate", "fast"], "'fast' is not a valid float"),
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
        (["export", "--model-uri", "models:/m/1", "--litert-quantization", "int4"], "'int4' is not one of 'float32'"),
        (["predict", "--model-uri", "models:/m/1"], "Missing argument 'INPUT...'"),
        (["predict", "--model-uri", "models:/m/1", "/no/such.png"], "invalid value for INPUT: received '/no/such.png'"),
        (["predict", "--model-uri", "models:/m/1", ".", "--output", "/no/dir/p.csv"], "invalid value for output"),
        (["predict", "--model-uri", "models:/m/1", ".", "--format", "xml"], "'xml' is not one of 'auto', 'csv'"),
        (["serve", "--port", "70000"], "70000 is not in the range 1<=x<=65535"),
        (["serve", "--model-uri", "latest"], "invalid value for model_uri: received 'latest'"),
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


def user_error_line(done):
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    return [line for line in done.stderr.splitlines() if line.startswith("tftrain: error: ")]


def test_missing_model_in_the_store(tmp_path):
    done = tftrain("evaluate", "--model-uri", "models:/nope/1", cwd=tmp_path)
    (line,) = user_error_line(done)
    assert "model_uri 'models:/nope/1' cannot be opened" in line


def test_serve_names_a_missing_model_before_starting(tmp_path):
    done = tftrain("serve", "--model-uri", "models:/nope@champion", cwd=tmp_path)
    (line,) = user_error_line(done)
    assert "model_uri 'models:/nope@champion' cannot be opened" in line


def test_corrupt_data_file_named(tmp_path):
    folder = write_dataset(tmp_path / "data")
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    done = tftrain("train", "--data-dir", str(folder), cwd=tmp_path)
    (line,) = user_error_line(done)
    assert f"data file {folder / 'train-labels-idx1-ubyte.gz'}: 5 labels for 640 images" in line


def test_unwritable_output_dir(tmp_path, tiny_data):
    (tmp_path / "taken").write_text("a file, not a folder")
    done = tftrain("train", "--data-dir", str(tiny_data), "--output-dir", "taken/out", cwd=tmp_path)
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
    code = "import sys, tftrain.cli, tftrain.serve; print(' '.join(m for m in sys.modules if m.startswith('tftrain')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "tftrain.cli" in loaded and not [m for m in loaded if m.startswith("tftrain.bench")]
    import tftrain.serve

    assert not hasattr(tftrain.serve, "running_server")
