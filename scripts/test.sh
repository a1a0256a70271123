#!/usr/bin/env bash
# The test suite: sets up ./.venv and the dataset like scripts/run.sh, plus PostgreSQL and Chromium for the
# team-server and browser tests, lints, then runs pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
# The team-server and browser tests run a real PostgreSQL and a headless Chromium.
missing=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
[ -x /usr/lib/chromium/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
fi
.venv/bin/ruff check src tests scripts
exec .venv/bin/python -m pytest "$@"
