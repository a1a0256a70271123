"""Hostile input, generated: any value for any training parameter is accepted, or refused in one line with exit
code 2 naming what was wrong; never a traceback."""

import contextlib
import io
import sys
import tempfile

import click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servers import free_port
from tftrain.cli import cli, main
from tftrain.config import PARAMS, TrainConfig
from tftrain.errors import UserError
from tftrain.values import check_output_dir

FIELDS = [f.name for f in PARAMS.values()]

CLOSED_PORT = free_port()  # bound, then released: nothing listens on it
VALUES = st.one_of(
    st.text(max_size=30),
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", " ", "-1", "0", "1e309", "nan", "true", "auto", "../..", "a,b", "1,,2", "\x00"]),
)


def outcome(args: list[str]) -> str | None:
    """None when the parameters are accepted; otherwise the one-line message the CLI would print."""
    try:
        context = cli.commands["train"].make_context("train", args)
        cfg = TrainConfig.from_flat(**context.params)
        with tempfile.TemporaryDirectory() as folder, contextlib.chdir(folder):
            check_output_dir(cfg.tracking.output_dir)  # what the CLI checks before TensorFlow starts
    except click.ClickException as e:
        assert e.exit_code == 2
        return e.format_message()
    except UserError as e:
        assert e.exit_code == 2
        return str(e)
    return None


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(FIELDS), value=VALUES)
def test_any_single_value(name, value):
    message = outcome([f"--{name.replace('_', '-')}", value])
    if message is not None:
        assert message.strip() and "\n" not in message, message
        assert "Traceback" not in message


@settings(max_examples=200, deadline=None)
@given(values=st.dictionaries(st.sampled_from(FIELDS), VALUES, min_size=2, max_size=6))
def test_any_combination(values):
    args = [word for name, value in values.items() for word in (f"--{name.replace('_', '-')}", value)]
    message = outcome(args)
    if message is not None:
        assert message.strip() and "\n" not in message, message


OTHER_COMMANDS = {
    "evaluate": ["--model-uri", "--dataset", "--data-dir"],
    "export": ["--model-uri", "--dataset", "--data-dir", "--output-dir", "--litert-quantization"],
    "promote": ["--model-uri", "--alias", "--min-accuracy"],
    "predict": ["--model-uri", "--output", "--format"],
    "serve": ["--model-uri", "--host", "--port"],
    "sync": [],
}
URIS = st.sampled_from(["models:/m/1", "models:/m@champion", "runs:/0123456789abcdef0123456789abcdef/model", "x"])


@settings(max_examples=300, deadline=None)
@given(
    command=st.sampled_from(sorted(OTHER_COMMANDS)),
    options=st.lists(st.tuples(st.integers(0, 4), VALUES), max_size=4),
    uri=URIS,
    argument=VALUES,
)
def test_any_value_for_the_other_commands(command, options, uri, argument):
    """Whatever is given, the command ends in one line and exit code 2 before any model or data is touched: by
    refusing a value, or (values being fine) by finding no tracking server on a closed port."""
    args = [command] + (["--model-uri", uri] if "--model-uri" in OTHER_COMMANDS[command] else [])
    names = OTHER_COMMANDS[command]
    for index, value in options:
        if names:
            args += [names[index % len(names)], value]
    if command in ("predict", "sync"):
        args.append(argument)
    stderr = io.StringIO()
    with (
        pytest.MonkeyPatch.context() as mp,
        contextlib.redirect_stderr(stderr),
        contextlib.redirect_stdout(io.StringIO()),
        pytest.raises(SystemExit) as exited,
    ):
        mp.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{CLOSED_PORT}")
        mp.setattr(sys, "argv", ["tftrain", *args])
        main()
    lines = stderr.getvalue().splitlines()
    assert exited.value.code == 2 and len(lines) == 1, (args, stderr.getvalue())
    assert lines[0].startswith("tftrain: error: ") or lines[0].startswith("Usage:"), lines
