"""Any classifier: the target's own fused explanation (``akd-export --target``, no training) beside the distilled
surrogate and the baselines, on held-out images of ``../shared/data/imagenet-sample`` never used for training or
selection (the split of ``distill_imagenet_sample.py``).

- EfficientNet-Lite0 (white box): its own explanation vs the shipped surrogate vs Grad-CAM(bn2) vs OpenVINO-XAI's
  ReciproCAM (inserted into the model's graph, run by OpenVINO on the same CPU, in its own environment), one
  akd-evaluate run (paired intervals, images/s).
- MobileNetV2, ``../shared/models/mobilenet_v2_1.0_224.onnx`` (a quantized TFLite graph, judged as the file
  itself, a black box): its own explanation through akd's ONNX-to-torch conversion, and a surrogate distilled
  from it as an opaque black box (``--student pretrained:efficientnet_lite0 --recipe blackbox`` on the training
  split plus the three clips' frames; agreement, target queries and minutes from akd-train's log), beside RISE
  and LIME on subsets.

    python benchmarks/any_target.py [--parts lite0,distill,mobilenet] [--limit 160] [--mobilenet-limit 48]
        [--rise 8] [--lime 8]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
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

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/bench-any-target")
    parser.add_argument("--limit", type=int, default=160, help="held-out images for the Lite0 comparison")
    parser.add_argument("--mobilenet-limit", type=int, default=48, help="held-out images for MobileNetV2")
    parser.add_argument("--rise", type=int, default=8, help="images RISE explains (about 1 minute each)")
    parser.add_argument("--lime", type=int, default=8, help="images LIME explains")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parts", default="lite0,distill,mobilenet", help="comma-separated parts to run")
    args = parser.parse_args()
    if not MOBILENET.is_file():
        print(f"needs {MOBILENET} and {SHARED / 'data' / 'imagenet-sample'}", file=sys.stderr)
        return 2
    work = Path(args.work)
    train, val, heldout = split(SHARED / "data" / "imagenet-sample", work / "split")
    common = ["--data", heldout, "--threads", args.threads, "--no-progress"]
    parts = set(args.parts.split(","))
    if "lite0" in parts:
        lite0(work, heldout, args, common)
    distilled = work / "mobilenet_v2.distilled.onnx"
    if "distill" in parts:
        distill(work, train, val, heldout, distilled)
    if "mobilenet" in parts:
        mobilenet(work, heldout, args, common, distilled)
    for name in ("lite0", "mobilenet"):
        if (work / name / "report.md").is_file():
            print(f"\n## {name}\n" + (work / name / "report.md").read_text())
    return 0


def reciprocam_maps(work: Path, heldout: Path, limit: int) -> Path:
    """OpenVINO-XAI's ReciproCAM of Lite0 on akd-evaluate's own images (same seed and limit), made in its own
    environment (scripts/openvino_xai_env.sh) by openvino_xai_maps.py."""
    import numpy as np
    import torch

    from akd.evaluation.report import load_images
    from akd.models.teachers import load_teacher

    run("bash", HERE.parent / "scripts" / "openvino_xai_env.sh")
    teacher = load_teacher("efficientnet_lite0")
    images, _ = load_images(teacher, str(heldout), limit, seed=0)
    model, pixels, maps = work / "lite0.target.onnx", work / "lite0.images.npz", work / "lite0.reciprocam.npz"
    torch.onnx.export(teacher.module, torch.zeros(1, 3, 224, 224), str(model), input_names=["images"],
                      output_names=["logits"], dynamo=False, opset_version=17)
    np.savez(pixels, names=np.array([image.name for image in images]), pixels=np.stack([i.pixels for i in images]),
             class_ids=np.array([image.class_id for image in images]),
             mean=np.array(teacher.preprocessing.mean), std=np.array(teacher.preprocessing.std))
    run(HERE.parent / ".venv-ovxai" / "bin" / "python", HERE / "openvino_xai_maps.py", model, pixels, maps)
    return maps


def lite0(work: Path, heldout: Path, args, common: list) -> None:
    from akd.runtime.engine import default_model

    lite0_own, surrogate = work / "lite0.explained.onnx", work / "surrogate.onnx"
    run("akd-export", "--target", "efficientnet_lite0", "--out", lite0_own, "--force", "--parity-data", heldout)
    run("akd-export", default_model(), "--out", surrogate, "--force", "--parity-data", heldout)
    maps = reciprocam_maps(work, heldout, args.limit)
    run("akd-evaluate", "--model", lite0_own, "--model", surrogate, "--target", "efficientnet_lite0",
        "--methods", "akd,gradcam", "--gradcam-layer", "bn2", "--maps", f"reciprocam={maps}",
        "--limit", args.limit, *common, "--out", work / "lite0")


def distill(work: Path, train: Path, val: Path, heldout: Path, distilled: Path) -> None:
    """The opaque MobileNetV2 distilled into a pretrained Lite0 student on the training images and the clips."""
    data = work / "distill-data"
    data.mkdir(parents=True, exist_ok=True)
    for source in [*train.iterdir(), *(SHARED / "data" / "videos").glob("*.mp4")]:
        link = data / f"frame_{source.name}"  # a flat folder of unlabeled images and clips, not the sample layout
        if not link.exists():
            link.symlink_to(source.resolve())
    checkpoint = work / "mobilenet_v2.distilled.safetensors"
    started = time.perf_counter()
    run("akd-train", "--target", MOBILENET, *MOBILENET_ARGS, "--student", "pretrained:efficientnet_lite0",
        "--recipe", "blackbox", "--data", data, "--val", val, "--no-progress", "--out", checkpoint)
    print(f"distillation: {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    run("akd-export", checkpoint, "--out", distilled, "--force", "--parity-data", heldout)


def agreement(work: Path, heldout: Path, graphs: list[Path]) -> None:
    """Top-1 agreement with the black box on the held-out images: the pretrained student before distillation and
    each exported graph's class_id."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from akd.data.preprocessing import Preprocessing, SampleDataset, transforms_for
    from akd.data.sources import discover
    from akd.models.pretrained import pretrained_student
    from akd.models.students import build_student
    from akd.models.teachers import load_teacher

    target = load_teacher(str(MOBILENET), preprocessing=Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3),
                          skip_classes=1)
    dataset = SampleDataset(discover(str(heldout), "test").samples, transforms_for(target.preprocessing, False))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        wanted = target(images).argmax(1).numpy()
        start = pretrained_student("pretrained:efficientnet_lite0", None, 1000)
        student = build_student(start.arch, 1000, start.state).eval()
        before = torch.cat([student(chunk).logits for chunk in images.split(16)]).argmax(1).numpy()
    print(f"agreement on {len(images)} held-out images: pretrained student before distillation "
          f"{(before == wanted).mean():.4f}")
    for graph in graphs:
        session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        classes = np.concatenate([session.run(["class_id"], {"images": chunk.numpy()})[0]
                                  for chunk in images.split(8)])
        print(f"agreement on {len(images)} held-out images: {graph.name} {(classes == wanted).mean():.4f}")


def mobilenet(work: Path, heldout: Path, args, common: list, distilled: Path) -> None:
    own = work / "mobilenet_v2.explained.onnx"
    run("akd-export", "--target", MOBILENET, *MOBILENET_ARGS, "--out", own, "--force", "--parity-data", heldout)
    models = ["--model", own] + (["--model", distilled] if distilled.is_file() else [])
    agreement(work, heldout, [Path(model) for model in models[1::2]])
    run("akd-evaluate", *models, "--target", MOBILENET, *MOBILENET_ARGS,
        "--methods", "akd,rise,lime", "--subset", f"rise={args.rise}", "--subset", f"lime={args.lime}",
        "--limit", args.mobilenet_limit, *common, "--out", work / "mobilenet")


if __name__ == "__main__":
    sys.exit(main())
