"""`python -m tftrain` runs the CLI (the MLproject entry points call it this way). A Python without tftrain's
dependencies (`mlflow run --env-manager local` from a shell whose `python` is not the project's venv) gets one
line saying which Python it was and what to do, not an import traceback halfway through a command."""

import importlib.util
import sys

# what every command needs; found without importing any of them (milliseconds)
NEEDED = ("click", "numpy", "PIL", "mlflow", "tensorflow", "keras")

if missing := [name for name in NEEDED if importlib.util.find_spec(name) is None]:
    sys.stderr.write(
        f"tftrain: error: {sys.executable} has no {', '.join(missing)}, which tftrain needs: run it from the "
        "project's venv (source .venv/bin/activate, or bash scripts/run.sh, which sets it up)\n"
    )
    sys.exit(2)

from tftrain.cli import main  # noqa: E402

main()
