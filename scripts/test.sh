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
# The numerical-agreement tests (fast vs exact attacks, fused vs eager kernels, torchattacks, training resume) once
# more under each instruction set PyTorch and our kernels can be limited to on this machine, so that a tolerance
# that holds on one CPU family only fails here, not on a user's. Skipped when arguments pick tests, or with
# RANDMASK_ISA_MATRIX=0.
if [ "$#" -eq 0 ] && [ "${RANDMASK_ISA_MATRIX:-1}" != 0 ] && [ "$(uname -m)" = x86_64 ]; then
  for isa in "ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 RANDMASK_FUSED_MARCH=x86-64-v3" \
             "ONEDNN_MAX_CPU_ISA=AVX512_CORE" \
             "ONEDNN_MAX_CPU_ISA=SSE41 ATEN_CPU_CAPABILITY=default RANDMASK_FUSED_MARCH=x86-64"; do
    echo "== agreement tests under $isa"
    env $isa python3 -m pytest -q -m agreement
  done
fi
