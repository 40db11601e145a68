#!/usr/bin/env bash
# Run the test suite. Creates .venv on first use and (re)installs the project
# with its test extra when pyproject.toml changed. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv test
exec "$VENV/bin/python" -m pytest "$@"
