#!/usr/bin/env bash
# Set everything up, then start the server on http://127.0.0.1:8188 (extra arguments go to server.py).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_env.sh
exec .venv/bin/python server.py "$@"
