#!/usr/bin/env bash
# Set everything up, then start the server on http://127.0.0.1:8188 (extra arguments go to server.py).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_env.sh
# Memory is owned by the model manager (handles, LRU eviction, /free) and the heap is trimmed after
# each prompt and each unload, so allocations keep glibc's fast defaults (no MALLOC_MMAP_THRESHOLD_).
exec .venv/bin/python server.py "$@"
