#!/usr/bin/env bash
# The main job on the embedded default: the EfficientNet-Lite0 ImageNet surrogate shipped inside akd -> one fused
# ONNX graph (fp32) and its INT8 form -> real-time saliency on a real clip (examples/bottles.mp4, CC BY 4.0) -> a
# short fidelity and speed summary against Grad-CAM, RISE and LIME on frames of that clip. No training wait, no
# downloads.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
run=runs/quickstart
clip=examples/bottles.mp4
rm -rf "$run"
bin=.venv/bin
$bin/akd-export --out "$run/surrogate.onnx"
# INT8 ranges from photos like the ones to explain: the ImageNet sample when ../shared sits beside this checkout,
# else frames of the clip itself; drift is judged on held-out images and printed. On AVX2 CPUs without VNNI the
# cpu flavour drifts past the default gate of 0.03 (docs/BENCHMARKS.md, "Precision on CPU"), so the quick start
# loosens it to 0.06; on the clip's near-identical frames, where the target hesitates between "nipple" and
# "water bottle", int8 flips the class often: shown, not enforced.
if [[ -d ../shared/data/imagenet-sample ]]; then
    calibration=(--data ../shared/data/imagenet-sample --max-drift 0.06)
else
    calibration=(--data "$clip" --max-drift 1)
fi
$bin/akd-calibrate "$run/surrogate.onnx" "${calibration[@]}" --force --out "$run/surrogate.int8.onnx"
for model in surrogate surrogate.int8; do
    $bin/akd-explain "$clip" --model "$run/$model.onnx" --out "$run/explain-$model" --smoothing 0.5 --no-progress
done
$bin/akd-evaluate --model "$run/surrogate.onnx" --model "$run/surrogate.int8.onnx" --target efficientnet_lite0 \
    --data "$clip" --limit 16 --subset rise=2 --subset lime=4 --threads 2 --no-progress --out "$run/evaluate"
echo "overlay videos: $run/explain-*/bottles.overlay.mp4; report: $run/evaluate/report.html (+ report.md, curves.png, overlays.png)"
