"""Any classifier: the target's own fused explanation (``akd-export --target``, no training) beside the distilled
surrogate and the baselines, on held-out images of ``../shared/data/imagenet-sample`` never used for training or
selection (the split of ``distill_imagenet_sample.py``).

- EfficientNet-Lite0 (white box): its own explanation vs the shipped surrogate vs Grad-CAM(bn2), one akd-evaluate
  run (paired intervals, images/s).
- MobileNetV2, ``../shared/models/mobilenet_v2_1.0_224.onnx`` (a quantized TFLite graph, judged as the file
  itself, a black box): its explanation through akd's ONNX-to-torch conversion vs RISE and LIME on subsets.

    python benchmarks/any_target.py [--limit 160] [--mobilenet-limit 48] [--rise 8] [--lime 8]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"
MOBILENET = SHARED / "models" / "mobilenet_v2_1.0_224.onnx"
MOBILENET_ARGS = ["--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--target-skip-classes", "1"]


def run(*command) -> None:
    print("+", " ".join(map(str, command)), flush=True)
    subprocess.run([str(c) for c in command], check=True)


def main() -> int:
    sys.path.insert(0, str(HERE))
    from distill_imagenet_sample import split

    from akd.runtime.engine import default_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/bench-any-target")
    parser.add_argument("--limit", type=int, default=160, help="held-out images for the Lite0 comparison")
    parser.add_argument("--mobilenet-limit", type=int, default=48, help="held-out images for MobileNetV2")
    parser.add_argument("--rise", type=int, default=8, help="images RISE explains (about 1 minute each)")
    parser.add_argument("--lime", type=int, default=8, help="images LIME explains")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not MOBILENET.is_file():
        print(f"needs {MOBILENET} and {SHARED / 'data' / 'imagenet-sample'}", file=sys.stderr)
        return 2
    work = Path(args.work)
    _, _, heldout = split(SHARED / "data" / "imagenet-sample", work / "split")
    common = ["--data", heldout, "--threads", args.threads, "--no-progress"]

    lite0_own, surrogate = work / "lite0.explained.onnx", work / "surrogate.onnx"
    run("akd-export", "--target", "efficientnet_lite0", "--out", lite0_own, "--force", "--parity-data", heldout)
    run("akd-export", default_model(), "--out", surrogate, "--force", "--parity-data", heldout)
    run("akd-evaluate", "--model", lite0_own, "--model", surrogate, "--target", "efficientnet_lite0",
        "--methods", "akd,gradcam", "--gradcam-layer", "bn2", "--limit", args.limit, *common,
        "--out", work / "lite0")

    mobilenet_own = work / "mobilenet_v2.explained.onnx"
    run("akd-export", "--target", MOBILENET, *MOBILENET_ARGS, "--out", mobilenet_own, "--force",
        "--parity-data", heldout)
    run("akd-evaluate", "--model", mobilenet_own, "--target", MOBILENET, *MOBILENET_ARGS,
        "--methods", "akd,rise,lime", "--subset", f"rise={args.rise}", "--subset", f"lime={args.lime}",
        "--limit", args.mobilenet_limit, *common, "--out", work / "mobilenet")
    for name in ("lite0", "mobilenet"):
        print(f"\n## {name}\n" + (work / name / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
