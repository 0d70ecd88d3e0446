#!/usr/bin/env bash
# The main job on the embedded default: distil the built-in EfficientNet-Lite0 ImageNet target into an attentive
# surrogate on scikit-image's bundled photos (no downloads), then show what it produced.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=runs/quickstart/surrogate.safetensors
rm -f "$out" "${out%.safetensors}.log.csv"
.venv/bin/akd-train --teacher efficientnet_lite0 --student same-as-teacher --recipe imagenet-lite0 \
    --data sample-photos --stages student,explainer --epochs 2 --batch-size 8 --no-progress --out "$out"
.venv/bin/python scripts/quickstart.py "$out" runs/quickstart
