#!/usr/bin/env bash
# A real Triton server for the tests: the nvidia-pytriton wheel bundles `tritonserver` with its Python backend.
# Its backend stub is built against numpy 1.x, so the server runs with .venv-triton (numpy<2, onnxruntime for the
# exported model.py) first on PATH; the stub matching this Python is copied into the backend folder.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
env=.venv-triton
stamp=$env/.akd-triton-ready
[[ -f $stamp ]] && exit 0
[[ -x $env/bin/python ]] || "$PYTHON" -m venv "$env"
$env/bin/python -m pip install --quiet --upgrade pip
$env/bin/python -m pip install --quiet "nvidia-pytriton==0.7.0" "numpy<2" onnxruntime
server=$($env/bin/python -c "import os, pytriton; print(os.path.join(os.path.dirname(pytriton.__file__), 'tritonserver'))")
version=$($env/bin/python -c "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')")
cp "$server/python_backend_stubs/$version/triton_python_backend_stub" "$server/backends/python/"
touch "$stamp"
echo "triton_env: $server/bin/tritonserver with the Python backend for Python $version in $env"
