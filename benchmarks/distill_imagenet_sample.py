"""Distil the built-in EfficientNet-Lite0 target on ../shared/data/imagenet-sample and measure the surrogate.

Split: the 800 images sorted by name, permuted with seed 0, first 640 train / last 160 held-out (symlinked into
two folders so the split is plain ImageNet-sample layout). Reports target top-1 on the held-out images, student-
target top-1 agreement on them (goal >= 0.90), mean saliency, and the wall time of the training command.

    python benchmarks/distill_imagenet_sample.py [--work runs/bench-distill] [--ship] [-- extra akd-train flags]

``--ship`` then writes the trained surrogate, without its training state, to the package as the embedded default
(src/akd/assets/efficientnet_lite0_surrogate.safetensors).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"
SHIPPED = Path(__file__).resolve().parents[1] / "src" / "akd" / "assets" / "efficientnet_lite0_surrogate.safetensors"


def split(source: Path, work: Path, train_count: int = 640, val_count: int = 96) -> tuple[Path, Path, Path]:
    """(train, validation, held-out) folders. The held-out 160 are the same images as before validation existed;
    validation is carved from the training images, to choose recipes and epochs without touching held-out."""
    files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(0)).tolist()
    folders = (work / "train", work / "val", work / "heldout")
    chosen_sets = (order[:train_count - val_count], order[train_count - val_count:train_count], order[train_count:])
    for folder, chosen in zip(folders, chosen_sets, strict=True):
        folder.mkdir(parents=True, exist_ok=True)
        wanted = {files[index].name for index in chosen}
        for stale in [link for link in folder.iterdir() if link.name not in wanted]:  # an older split's links
            stale.unlink()
        for index in chosen:
            link = folder / files[index].name
            if not link.exists():
                link.symlink_to(files[index].resolve())
    return folders


@torch.no_grad()
def measure(checkpoint: Path, heldout: Path) -> dict[str, float]:
    from akd.data.preprocessing import SampleDataset, collate, transforms_for
    from akd.data.sources import discover
    from akd.models.surrogate import load_surrogate
    from akd.models.teachers import load_teacher

    teacher = load_teacher("efficientnet_lite0")
    surrogate = load_surrogate(checkpoint)
    found = discover(str(heldout), "test")
    dataset = SampleDataset(found.samples, transforms_for(teacher.preprocessing, False))
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, collate_fn=collate)
    agree = teacher_top1 = student_top1 = seen = saliency = 0.0
    for images, labels, _ in loader:
        teacher_pred = teacher(images).argmax(1)
        maps, logits = surrogate(images)
        agree += (logits.argmax(1) == teacher_pred).sum().item()
        teacher_top1 += (teacher_pred == labels).sum().item()
        student_top1 += (logits.argmax(1) == labels).sum().item()
        saliency += maps.mean(dim=(1, 2, 3)).sum().item()
        seen += len(images)
    return {"heldout_images": int(seen), "target_top1": teacher_top1 / seen, "student_top1": student_top1 / seen,
            "agreement": agree / seen, "mean_saliency": saliency / seen}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/bench-distill")
    parser.add_argument("--ship", action="store_true", help="write the result into the package as the default")
    parser.add_argument("--resume", action="store_true",
                        help="continue the checkpoint in --work (for example a finished student stage)")
    parser.add_argument("extra", nargs="*", help="extra akd-train flags (after --)")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"benchmark needs {SHARED}", file=sys.stderr)
        return 2
    work = Path(args.work)
    train_dir, val_dir, heldout_dir = split(SHARED, work)
    out = work / "surrogate.safetensors"
    for stale in (out, out.with_suffix(".log.csv")) if not args.resume else ():
        stale.unlink(missing_ok=True)
    command = ["akd-train", "--teacher", "efficientnet_lite0", "--student", "same-as-teacher",
               "--recipe", "imagenet-lite0", "--stages", "student,explainer", "--data", str(train_dir),
               "--val", str(val_dir), "--workers", "1", "--no-progress", "--out", str(out), *args.extra]
    if args.resume:
        command.append("--resume")
    print("command:", shlex.join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ})
    wall = time.perf_counter() - started
    result = measure(out, heldout_dir)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"wall time (training command): {wall / 60:.1f} min")
    for key, value in result.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    print(f"goal agreement >= 0.90: {'met' if result['agreement'] >= 0.90 else 'missed'}")
    if args.ship:
        ship(out, result)
    return 0


def ship(checkpoint: Path, heldout: dict) -> None:
    """Weights and config only (no optimizer state), with the held-out measurement in the config."""
    from akd.models.surrogate import load_surrogate, save_checkpoint

    surrogate = load_surrogate(checkpoint)
    surrogate.config["metrics"] = {**surrogate.config.get("metrics", {}), "heldout": heldout}
    save_checkpoint(SHIPPED, surrogate)
    print(f"shipped: {SHIPPED} ({SHIPPED.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    sys.exit(main())
