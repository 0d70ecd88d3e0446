"""Fidelity and speed of the shipped surrogate against Grad-CAM, RISE and LIME (the paper's Tables 3 and 4).

Target: the built-in EfficientNet-Lite0. Images: the held-out split of ../shared/data/imagenet-sample (the split of
benchmarks/distill_imagenet_sample.py; the shipped surrogate was trained on 544 of the other 640 images and its
recipe chosen on the remaining 96). The surrogate is exported to fp32 ONNX (and with ``--int8`` its INT8 form,
calibrated on the training split) and timed through the runtime with onnxruntime at batch 1, side by side with the
baselines in one akd-evaluate run. Grad-CAM runs on two layers - the end of the last stage (``blocks.6``) and the
final 1x1 convolution's output (``bn2``, after ``conv_head``) - and akd is compared with the better of the two.

    python benchmarks/fidelity_imagenet_sample.py [--limit 160] [--rise 32] [--lime 8] [--int8] [--threads 2]

RISE costs about 1.5 minutes per image on the 2-core CPU; with ``--rise-maps runs/gpu-check/out/rise_heldout_*.npz``
(``benchmarks/rise_targets.py --exact-heldout`` on a GPU: the same masks on akd-evaluate's own images, fp32) the
RISE row covers every held-out image, scored here by the same metric code, and its speed is the GPU's.

Goals (same images, same machine; "beats" = the 95% interval of the paired per-image difference): akd insertion
>= Grad-CAM + 0.02 with the interval above 0; within 0.02 of RISE on RISE's images; akd deletion <= Grad-CAM;
akd intensity <= 0.6 x Grad-CAM; akd fps >= 3 x Grad-CAM and >= 1000 x RISE.
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
    parser.add_argument("--rise", type=int, default=32, help="images RISE explains (about 1.5 min each on 2 cores)")
    parser.add_argument("--rise-maps", nargs="+", metavar="NPZ",
                        help="RISE's maps made on a GPU (rise_targets.py --exact-heldout) instead of --rise")
    parser.add_argument("--lime", type=int, default=8, help="images LIME explains (0: none)")
    parser.add_argument("--int8", action="store_true", help="also evaluate the INT8 graph")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"benchmark needs {SHARED}", file=sys.stderr)
        return 2
    from akd.runtime.engine import default_model

    work = Path(args.work)
    train_dir, _, heldout_dir = split(SHARED, work / "split")
    checkpoint = args.model or default_model()
    fp32, int8 = work / "surrogate.fp32.onnx", work / "surrogate.int8.onnx"
    run = lambda *command: subprocess.run([str(c) for c in command], check=True)  # noqa: E731
    run("akd-export", checkpoint, "--out", fp32, "--force", "--parity-data", heldout_dir)
    models = ["--model", fp32]
    if args.int8:
        run("akd-calibrate", fp32, "--data", train_dir, "--out", int8, "--force")
        models += ["--model", int8]
    methods, baselines = ["akd", "gradcam"], []
    if args.rise_maps:  # RISE made on a GPU, scored here
        baselines += ["--maps", "rise=" + ",".join(args.rise_maps)]
    else:
        methods.append("rise")
        baselines += ["--subset", f"rise={args.rise}"]
    if args.lime:
        methods.append("lime")
        baselines += ["--subset", f"lime={args.lime}"]
    baselines = ["--methods", ",".join(methods), *baselines]
    run("akd-evaluate", *models, "--teacher", "efficientnet_lite0", "--data", heldout_dir, "--limit", args.limit,
        *baselines, "--gradcam-layer", "blocks.6", "--gradcam-layer", "bn2",
        "--threads", args.threads, "--no-progress", "--out", work / "report")
    return check_goals(work / "report" / "report.json")


def check_goals(path: Path) -> int:
    import json

    report = json.loads(path.read_text())
    results, paired = report["results"], report["paired"]
    means = {name: {k: v["mean"] for k, v in result["all"].items()} for name, result in results.items()}
    fps = {name: 1 / result["seconds"]["median"] for name, result in results.items()}
    cams = [name for name in results if name.startswith("gradcam")]
    cam = max(cams, key=lambda name: means[name]["insertion"])
    print(f"\ngoals ({report['machine']['threads']} threads, {report['machine']['cpu_count']} CPUs); the stronger "
          f"Grad-CAM is {cam} (insertion {means[cam]['insertion']:.4f} vs "
          + ", ".join(f"{n} {means[n]['insertion']:.4f}" for n in cams if n != cam) + "):")
    for name in [n for n in results if n.startswith("akd")]:
        vs_cam, vs_rise = paired[f"{name} - {cam}"], paired[f"{name} - rise"]
        ins, dele = vs_cam["insertion"], vs_cam["deletion"]
        goals = [
            (f"insertion - {cam} >= +0.02, CI above 0", ins["mean"], ins["ci95"],
             ins["mean"] >= 0.02 and ins["ci95"][0] > 0),
            ("insertion - RISE >= -0.02 (RISE's images)", vs_rise["insertion"]["mean"], vs_rise["insertion"]["ci95"],
             vs_rise["insertion"]["mean"] >= -0.02),
            (f"deletion - {cam} <= 0", dele["mean"], dele["ci95"], dele["mean"] <= 0),
            (f"intensity <= 0.6 x {cam}", means[name]["intensity"], [0.6 * means[cam]["intensity"]] * 2,
             means[name]["intensity"] <= 0.6 * means[cam]["intensity"]),
            (f"fps >= 3 x {cam}", fps[name], [3 * fps[cam]] * 2, fps[name] >= 3 * fps[cam]),
        ]
        if not results["rise"]["timed_in"].startswith("where the maps were made"):  # else timed on another machine
            goals.append(("fps >= 1000 x RISE", fps[name], [1000 * fps["rise"]] * 2, fps[name] >= 1000 * fps["rise"]))
        for goal, value, bound, met in goals:
            print(f"  {name:28s} {goal:44s} {value:+9.4f} [{bound[0]:+.4f}, {bound[1]:+.4f}]  "
                  f"{'met' if met else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
