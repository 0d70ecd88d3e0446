"""Fidelity and speed of the shipped surrogate against Grad-CAM, RISE and LIME (the paper's Tables 3 and 4).

Target: the built-in EfficientNet-Lite0. Images: the held-out split of ../shared/data/imagenet-sample (the split of
benchmarks/distill_imagenet_sample.py; the shipped surrogate was trained on the other 640 images only). The
surrogate is exported to fp32 ONNX and INT8 (cpu flavour, calibrated on the training split) and both are timed
through the runtime with onnxruntime at batch 1, side by side with the baselines in one akd-evaluate run.

    python benchmarks/fidelity_imagenet_sample.py [--limit 160] [--rise 8] [--lime 16] [--threads 2]

Goals (same images, same machine): akd insertion >= Grad-CAM + 0.02 and within 0.02 of RISE; akd deletion <=
Grad-CAM; akd intensity <= 0.6 x Grad-CAM; akd fps >= 3 x Grad-CAM and >= 1000 x RISE.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distill_imagenet_sample import SHARED, split  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="surrogate checkpoint (default: the shipped one)")
    parser.add_argument("--work", default="runs/bench-fidelity")
    parser.add_argument("--limit", type=int, default=160, help="held-out images for akd and Grad-CAM")
    parser.add_argument("--rise", type=int, default=8, help="images RISE explains (about 1-2 min each on 2 cores)")
    parser.add_argument("--lime", type=int, default=16, help="images LIME explains")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"benchmark needs {SHARED}", file=sys.stderr)
        return 2
    from akd.runtime.engine import default_model

    work = Path(args.work)
    train_dir, heldout_dir = split(SHARED, work / "split")
    checkpoint = args.model or default_model()
    fp32, int8 = work / "surrogate.fp32.onnx", work / "surrogate.int8.onnx"
    run = lambda *command: subprocess.run([str(c) for c in command], check=True)  # noqa: E731
    run("akd-export", checkpoint, "--out", fp32, "--force", "--parity-data", heldout_dir)
    run("akd-calibrate", fp32, "--data", train_dir, "--out", int8, "--force")
    run("akd-evaluate", "--model", fp32, "--model", int8, "--teacher", "efficientnet_lite0", "--data", heldout_dir,
        "--limit", args.limit, "--subset", f"rise={args.rise}", "--subset", f"lime={args.lime}",
        "--threads", args.threads, "--no-progress", "--out", work / "report")
    return check_goals(work / "report" / "report.json")


def check_goals(path: Path) -> int:
    import json

    report = json.loads(path.read_text())
    results = report["results"]
    common = {name: {k: v["mean"] for k, v in result["common"].items()} for name, result in results.items()}
    fps = {name: 1 / result["seconds"]["mean"] for name, result in results.items()}
    print(f"\ngoals on the {report['common_images']} images every method explained "
          f"({report['machine']['threads']} threads, {report['machine']['cpu_count']} CPUs):")
    for name in [n for n in results if n.startswith("akd")]:
        akd, cam, rise = common[name], common["gradcam"], common["rise"]
        goals = [
            ("insertion >= Grad-CAM + 0.02", akd["insertion"], cam["insertion"] + 0.02,
             akd["insertion"] >= cam["insertion"] + 0.02),
            ("insertion within 0.02 of RISE", akd["insertion"], rise["insertion"] - 0.02,
             akd["insertion"] >= rise["insertion"] - 0.02),
            ("deletion <= Grad-CAM", akd["deletion"], cam["deletion"], akd["deletion"] <= cam["deletion"]),
            ("intensity <= 0.6 x Grad-CAM", akd["intensity"], 0.6 * cam["intensity"],
             akd["intensity"] <= 0.6 * cam["intensity"]),
            ("fps >= 3 x Grad-CAM", fps[name], 3 * fps["gradcam"], fps[name] >= 3 * fps["gradcam"]),
            ("fps >= 1000 x RISE", fps[name], 1000 * fps["rise"], fps[name] >= 1000 * fps["rise"]),
        ]
        for goal, value, bound, met in goals:
            print(f"  {name:32s} {goal:32s} {value:9.4f} vs {bound:9.4f}  {'met' if met else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
