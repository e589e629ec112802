#!/usr/bin/env bash
# CI smoke test of the asv suite: every benchmark runs once, on tiny arrays
# (BNFAST_ASV_SMOKE=1, see asv_bench/benchmarks/common.py), against the bnfast that this
# Python imports (installed, or this checkout built in place). It checks that the suite
# still runs; its times mean nothing and nothing is saved. Exit status: asv's (non-zero
# when a benchmark fails).
#
#     tools/asv_smoke.sh            # from anywhere; uses `python` on PATH
set -euo pipefail
cd "$(dirname "$0")/../asv_bench"
python -m asv machine --yes >/dev/null
export BNFAST_ASV_SMOKE=1
python -m asv check -E "existing:$(command -v python)"
# peakmem_* benchmarks call the same code as their time_* twins: skipped to save time.
python -m asv run -E "existing:$(command -v python)" --quick --dry-run --show-stderr \
    --bench '^(?!.*peakmem_)' "$@"
