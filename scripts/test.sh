#!/usr/bin/env bash
# Set up (if needed), lint, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks scripts examples
.venv/bin/mypy --ignore-missing-imports --follow-imports=silent --check-untyped-defs src/akd/deploy/tensorrt.py \
    src/akd/runtime/backends/tensorrt.py
bash scripts/build_cpp.sh ${AKD_CPP_DEPS:-}  # the C++ runtime, for its parity tests (skipped when not built)
bash scripts/browser_deps.sh ${AKD_BROWSER_DEPS:-}  # Chromium for tests/test_browser.py (skipped without it)
bash scripts/runtime_only_check.sh  # a second, torch-free environment explains a clip with an exported graph
bash scripts/triton_env.sh  # a real Triton server (nvidia-pytriton's) for tests/test_triton_server.py
.venv/bin/python -m pytest -q "$@"
