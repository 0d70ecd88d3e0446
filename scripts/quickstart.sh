#!/usr/bin/env bash
# The main job on the embedded default: distil the built-in EfficientNet-Lite0 ImageNet target into an attentive
# surrogate on scikit-image's bundled photos (no downloads), export it as one fused ONNX graph,
# and explain a sample video in real time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
run=runs/quickstart
rm -rf "$run"
.venv/bin/akd-train --teacher efficientnet_lite0 --student same-as-teacher --recipe imagenet-lite0 \
    --data sample-photos --stages student,explainer --epochs 2 --batch-size 8 --no-progress \
    --out "$run/surrogate.safetensors"
.venv/bin/python scripts/quickstart.py "$run/surrogate.safetensors" "$run"
.venv/bin/akd-export "$run/surrogate.safetensors" --precision fp32
.venv/bin/python -c "from akd.runtime.video import demo_clip; demo_clip('$run/sample.avi', 150)"
.venv/bin/akd-explain "$run/sample.avi" --model "$run/surrogate.onnx" --out "$run/explain" --smoothing 0.5 \
    --no-progress
echo "overlay video: $run/explain/sample.overlay.mp4"
