#!/usr/bin/env bash
# Create .venv with akd and its dependencies (idempotent: redone only when pyproject.toml changes).
# torch/torchvision are pinned first so pip takes the CPU-machine's local wheels instead of a newer download.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.akd-setup-$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [[ -f $stamp ]]; then
    exit 0
fi
[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --quiet -e ".[train,students,eval,serve,live,video,cpu,dev]"
# Type stubs to check the TensorRT backend without TensorRT; --no-deps, since the stubs pull the real wheel,
# which only installs from NVIDIA's index.
.venv/bin/python -m pip install --quiet --no-deps "tensorrt-stubs==10.13.0.35.1"
rm -f .venv/.akd-setup-*
touch "$stamp"
