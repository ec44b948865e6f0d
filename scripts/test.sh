#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine, then run it. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
# passive OpenMP waits: spinning threads slow everything badly when a training job shares the 2 cores
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
export RANDMASK_DATA="${RANDMASK_DATA:-$(cd .. && pwd)/shared/data}"
python3 -m pip install -q -r requirements.txt   # the project itself (editable) with its test extras
python3 -m pip install -q --no-deps torchattacks==3.5.1   # it pins an old requests; we need only its attacks
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: browser tests will skip"
fi
python3 -m ruff check .
lint-imports   # the layer contracts in pyproject.toml
python3 -m pytest -q "$@"
