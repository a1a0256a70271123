#!/usr/bin/env bash
# The test suite: sets up ./.venv and the dataset like scripts/run.sh, lints, then runs pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
.venv/bin/ruff check src tests scripts
exec .venv/bin/python -m pytest "$@"
