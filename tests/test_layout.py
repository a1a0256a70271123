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
