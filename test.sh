#!/usr/bin/env bash
# Set everything up (test tools and Debian's chromium included), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_env.sh --test
# One OpenMP thread that sleeps when idle: on small shared machines the default spin-wait
# makes tiny-model tests 20-50x slower.
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
