"""A user's own function, named as module:function or path/to/file.py:function (dataset functions, model
builders): imported once, with errors that name it in one line."""

from __future__ import annotations

import ast
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


def check_source(spec: str, what: str) -> None:
    """What load_function would say about a missing module, a file that does not parse or a function it does not
    define, found by reading the source instead of running it (running it may import TensorFlow). Modules whose
    names cannot be told without running them (a star import, a module __getattr__, a dotted module, an extension)
    are left to load_function."""
    source, name = parse_function(spec)
    path = source if source.endswith(".py") else _module_source(source, spec, what)
    if path is None:
        return
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError) as e:
        raise UserError(f"{what} {spec}: cannot import {source}: {type(e).__name__}: {first_line(e)}") from None
    names = _top_level_names(tree)
    if names is not None and name not in names:
        raise UserError(f"{what} {spec}: {source} has no function {name!r}")


def _module_source(module: str, spec: str, what: str) -> str | None:
    """The .py file of a top-level module, found as import would find it but without running it."""
    if "." in module:
        return None  # finding a submodule runs its package's __init__
    found = importlib.util.find_spec(module)
    if found is None:
        raise UserError(f"{what} {spec}: cannot import {module}: ModuleNotFoundError: No module named {module!r}")
    return found.origin if found.origin and found.origin.endswith(".py") else None


def _top_level_names(tree: ast.Module) -> set[str] | None:
    """Every name the module binds anywhere, a superset of its top-level names (so the check never refuses a
    function the module has); None if it may bind names at run time."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(alias.name == "*" for alias in node.names):
                return None
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    dynamic = "__getattr__" in names or _called(tree) & {"globals", "setattr", "exec", "vars"}
    return None if dynamic else names


def _called(tree: ast.Module) -> set[str]:
    return {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}


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
