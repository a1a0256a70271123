"""A user's own function, named as module:function or path/to/file.py:function (dataset functions, model
builders): imported once, with errors that name it in one line."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from tftrain.config import parse_function
from tftrain.errors import UserError


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else ""


def load_function(spec: str, what: str) -> Callable:
    """The function `spec` names; `what` says what it is for in errors ("dataset function", "model builder")."""
    source, name = parse_function(spec)
    try:
        module = _import_file(source) if source.endswith(".py") else importlib.import_module(source)
    except Exception as e:  # SyntaxError, ImportError and whatever the module raises at import
        raise UserError(f"{what} {spec}: cannot import {source}: {type(e).__name__}: {first_line(e)}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserError(f"{what} {spec}: {source} has no function {name!r}")
    return fn


def _import_file(source: str):
    """A .py file as a module, registered in sys.modules (dataclasses and pickle look their module up there)."""
    if not Path(source).is_file():
        raise FileNotFoundError(f"no file {source}")
    module_name = f"tftrain_user_{Path(source).stem}"
    module_spec = importlib.util.spec_from_file_location(module_name, source)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
