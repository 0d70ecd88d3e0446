#!/usr/bin/env bash
# The main job on the embedded default: the EfficientNet-Lite0 ImageNet surrogate shipped inside akd -> one fused
# ONNX graph (fp32) and its INT8 form -> real-time saliency on a sample video -> a short fidelity and speed
# summary against Grad-CAM, RISE and LIME. No training wait, no downloads.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
run=runs/quickstart
rm -rf "$run"
bin=.venv/bin
$bin/akd-export --out "$run/surrogate.onnx"
# INT8 ranges need photos like the ones to explain: the ImageNet sample when ../shared is beside this checkout,
# else scikit-image's bundled photos - mostly not ImageNet-like (cells, coins, text), on which the int8 class
# often differs from fp32's, so there the drift is printed but not enforced.
if [[ -d ../shared/data/imagenet-sample ]]; then
    calibration=(--data ../shared/data/imagenet-sample --max-drift 0.05)
else
    calibration=(--data sample-photos --num-images 20 --max-drift 1)
fi
$bin/akd-calibrate "$run/surrogate.onnx" "${calibration[@]}" --force --out "$run/surrogate.int8.onnx"
$bin/python -c "from akd.runtime.video import demo_clip; demo_clip('$run/sample.avi', 150)"
for model in surrogate surrogate.int8; do
    $bin/akd-explain "$run/sample.avi" --model "$run/$model.onnx" --out "$run/explain-$model" --smoothing 0.5 \
        --no-progress
done
$bin/akd-evaluate --model "$run/surrogate.onnx" --model "$run/surrogate.int8.onnx" --teacher efficientnet_lite0 \
    --data sample-photos --limit 16 --subset rise=2 --subset lime=4 --threads 2 --no-progress --out "$run/evaluate"
echo "overlay videos: $run/explain-*/sample.overlay.mp4; report: $run/evaluate/report.md (+ curves.png, overlays.png)"
