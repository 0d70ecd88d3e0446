#!/usr/bin/env bash
# OpenVINO-XAI for benchmarks/openvino_xai_maps.py, in an environment of its own: openvino-xai 1.1 needs numpy<2.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
env=.venv-ovxai
stamp=$env/.akd-ovxai-ready
[[ -f $stamp ]] && exit 0
[[ -x $env/bin/python ]] || "$PYTHON" -m venv "$env"
$env/bin/python -m pip install --quiet --upgrade pip
$env/bin/python -m pip install --quiet "openvino-xai==1.1.0" "numpy<2" opencv-python-headless
touch "$stamp"
