"""The package's import rules (pyproject's [tool.importlinter] contracts) hold, and a broken one is caught."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = str(Path(sys.executable).with_name("lint-imports"))


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root / "src"), "PATH": "/usr/bin:/bin"})


def test_the_import_contracts_hold():
    done = _lint(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_an_import_up_the_layers_breaks_a_contract(tmp_path):
    """data importing the trainer (a layer above it) is reported by name."""
    shutil.copytree(REPO / "src", tmp_path / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    folders = tmp_path / "src/tftrain/data/folders.py"
    folders.write_text(folders.read_text() + "\nfrom tftrain.training import trainer  # noqa\n")
    done = _lint(tmp_path)
    assert done.returncode == 1 and "tftrain.data.folders -> tftrain.training.trainer" in done.stdout


def _library_sources():
    return [p for p in (REPO / "src/tftrain").rglob("*.py") if p.name != "__main__.py"]


def test_library_code_logs_and_never_prints():
    """print() nowhere in the package: library code logs through the tftrain logger and the CLI echoes its results
    with click (quiet.py's filter child writes bytes, not print)."""
    import ast

    printing = [
        f"{p.relative_to(REPO)}:{node.lineno}"
        for p in _library_sources()
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
    ]
    assert printing == []


def test_one_module_reads_mlflow_run_id():
    """The run `mlflow run` made is read (and handed to Ray workers) in env.py only; everything else asks it."""
    import tokenize

    readers = set()
    for path in _library_sources():
        with path.open("rb") as f:
            for token in tokenize.tokenize(f.readline):
                if token.type == tokenize.STRING and token.string.strip("\"'") == "MLFLOW_RUN_ID":
                    readers.add(path.name)
    assert readers == {"env.py"}
