#!/usr/bin/env bash
# Set everything up, then start the server on http://127.0.0.1:8188 (extra arguments go to server.py).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_env.sh
# Large tensors come back to the OS when freed (glibc keeps them in its heap otherwise), which
# keeps the peak memory of a long session at the level of a plain diffusers run.
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-131072}
exec .venv/bin/python server.py "$@"
