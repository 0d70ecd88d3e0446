"""What akd-evaluate writes: report.json, report.md, curves.png, overlays.png and report.html, each atomically."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from akd.evaluation import metrics
from akd.evaluation.html import Gallery, render
from akd.util import atomic_path


def write_report(report: dict[str, Any], report_md: str, out: str, grid_images: list, grid_maps: dict[str, list],
                 gallery: Gallery) -> None:
    """report.json, report.md, curves.png, overlays.png, report.html - each written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(out)
    with atomic_path(folder / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    with atomic_path(folder / "report.md") as tmp:
        tmp.write_text(report_md)
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, mode in zip(axes, metrics.MODES, strict=True):
        for name, result in report["results"].items():
            curve = np.asarray(result["curves"][mode])
            axis.plot(np.linspace(0, 1, len(curve)), curve, label=f"{name} ({metrics.auc(curve):.3f})")
        axis.set(title=mode, xlabel="fraction of pixels " + ("inserted" if mode == "insertion" else "deleted"),
                 ylabel="probability of the predicted class", ylim=(0, 1))
        axis.legend()
    figure.tight_layout()
    curves_png = io.BytesIO()
    figure.savefig(curves_png, format="png", dpi=100)
    plt.close(figure)
    for name, content in (("curves.png", curves_png.getvalue()),
                          ("report.html", render(report, curves_png.getvalue(), gallery).encode())):
        with atomic_path(folder / name) as tmp:
            tmp.write_bytes(content)
    names = [name for name, maps in grid_maps.items() if maps]
    rows = len(grid_images)
    figure, axes = plt.subplots(rows, len(names) + 1, figsize=(2.2 * (len(names) + 1), 2.2 * rows), squeeze=False)
    for row, image in enumerate(grid_images):
        axes[row, 0].imshow(image.pixels)
        axes[row, 0].set_title(image.name[:24], fontsize=7)
        for column, name in enumerate(names, start=1):
            axes[row, column].imshow(image.pixels)
            if row < len(grid_maps[name]):
                axes[row, column].imshow(grid_maps[name][row], cmap="jet", alpha=0.5, vmin=0, vmax=1)
            if row == 0:
                axes[row, column].set_title(name, fontsize=8)
    for axis in axes.flat:
        axis.axis("off")
    figure.tight_layout()
    with atomic_path(folder / "overlays.png") as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
