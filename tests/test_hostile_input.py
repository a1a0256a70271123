"""Hostile input, generated: any value for any training parameter is accepted, or refused in one line with exit
code 2 naming what was wrong; never a traceback."""

import contextlib
import dataclasses
import tempfile

import click
from hypothesis import given, settings
from hypothesis import strategies as st

from tftrain.cli import cli
from tftrain.config import TrainConfig
from tftrain.errors import UserError
from tftrain.train import check_output_dir

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
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
        cfg = TrainConfig(**context.params)
        with tempfile.TemporaryDirectory() as folder, contextlib.chdir(folder):
            check_output_dir(cfg.output_dir)  # what train checks first, before TensorFlow starts
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
