"""Show what the quick start produced: the checkpoint's config, agreement with the target on the photos, and a
grid of saliency overlays (``overlays.png``). Usage: python scripts/quickstart.py SURROGATE OUT_DIR"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from akd.models.surrogate import load_surrogate
from akd.models.teachers import load_teacher
from akd.train.data import discover, read_rgb, transforms_for


def overlay(image: torch.Tensor, saliency: torch.Tensor, mean, std) -> np.ndarray:
    rgb = (image.permute(1, 2, 0) * torch.tensor(std) + torch.tensor(mean)).clamp(0, 1).numpy()
    heat = cv2.applyColorMap((saliency[0].numpy() * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(cv2.cvtColor((rgb * 255).astype(np.uint8), cv2.COLOR_RGB2BGR), 0.55, heat, 0.45, 0)


@torch.no_grad()
def main(checkpoint: str, out_dir: str) -> None:
    surrogate = load_surrogate(checkpoint)
    config = surrogate.config
    teacher = load_teacher(config["target"]["name"])
    transform = transforms_for(teacher.preprocessing, train=False)
    samples = [s for s in discover("sample-photos").samples if s.frame is None]
    images = torch.stack([transform(read_rgb(s)) for s in samples])
    saliency, logits = surrogate(images)
    target = teacher(images).argmax(1)
    classes = config["classes"]
    size_mb = Path(checkpoint).stat().st_size / 1e6
    print(f"\nsurrogate: {checkpoint} ({size_mb:.1f} MB), student {config['student']}, target "
          f"{config['target']['name']} sha256 {config['target']['sha256'][:12]}..")
    print(f"{'photo':28s} {'target says':24s} {'surrogate says':24s} saliency")
    for sample, t, s, h in zip(samples, target, logits.argmax(1), saliency, strict=True):
        print(f"{Path(sample.path).name:28s} {classes[t][:24]:24s} {classes[s][:24]:24s} {h.mean():.2f}")
    agreement = (logits.argmax(1) == target).float().mean().item()
    print(f"student-target agreement on {len(samples)} photos: {agreement:.2f}; "
          f"mean saliency {saliency.mean():.2f}")
    tiles = [overlay(img, h, config["preprocessing"]["mean"], config["preprocessing"]["std"])
             for img, h in zip(images[:12], saliency[:12], strict=True)]
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % 4)
    grid = np.vstack([np.hstack(tiles[i:i + 4]) for i in range(0, len(tiles), 4)])
    path = Path(out_dir) / "overlays.png"
    cv2.imwrite(str(path), grid)
    print(f"saliency overlays: {path}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
