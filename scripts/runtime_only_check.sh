#!/usr/bin/env bash
# The runtime-only install, proven: a second virtual environment with akd's core and the cpu extra only (numpy,
# OpenCV, tqdm, onnxruntime - no torch, timm, scipy or scikit-image) explains a real clip and profiles a graph
# exported by the full environment (.venv, made by scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
env=.venv-runtime
[[ -x $env/bin/python ]] || "$PYTHON" -m venv "$env"
$env/bin/python -m pip install --quiet --upgrade pip
$env/bin/python -m pip install --quiet -e ".[cpu]"
for module in torch timm scipy skimage; do
    if $env/bin/python -c "import $module" 2> /dev/null; then
        echo "runtime_only_check: $module is installed in $env; the runtime install must not need it" >&2
        exit 1
    fi
done
out=runs/runtime-only
rm -rf "$out"
.venv/bin/akd-export --out "$out/surrogate.onnx"
$env/bin/akd-explain examples/bottles.mp4 --model "$out/surrogate.onnx" --out "$out/explain" --no-progress
$env/bin/akd-profile "$out/surrogate.onnx" --batch 1 --iters 5 --json "$out/profile.json"
test -s "$out/explain/bottles.overlay.mp4"
printf 'not an engine' > "$out/surrogate.engine"  # an engine reaches the TensorRT runner's own message
if message=$($env/bin/akd-profile "$out/surrogate.engine" --batch 1 --iters 1 2>&1) \
        || ! grep -q "TensorRT is not installed" <<< "$message"; then
    echo "runtime_only_check: loading an engine in $env did not end in the TensorRT install hint: $message" >&2
    exit 1
fi
echo "runtime_only_check: $env (no torch) explained examples/bottles.mp4 -> $out/explain/bottles.overlay.mp4"
