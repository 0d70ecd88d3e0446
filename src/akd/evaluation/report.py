"""``akd-evaluate``: the paper's Tables 3 and 4 and Figure 6 on the user's own target and images.

Every method explains the same images (the target's resize + centre crop) and the target's own prediction; the
metrics come from ``akd.evaluation.metrics``; speed is timed side by side in this one run with the thread count
pinned, one image at a time (batch 1), the way an interactive user would call each method.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from akd import contract
from akd.evaluation import metrics
from akd.evaluation.files import write_report
from akd.evaluation.html import Gallery
from akd.evaluation.methods import (
    METHOD_BUILDERS,
    METHODS,
    EvalImage,
    SaliencyMethod,
    SavedMapsMethod,
    unavailable_methods,
)
from akd.models.teachers import Teacher
from akd.util import IMAGE_EXTENSIONS, AkdError

GRID_IMAGES = 6


@dataclass
class EvalOptions:
    models: list[str]  # surrogate files for akd (.onnx/.engine/.safetensors); each becomes a method
    data: str
    out: str
    methods: tuple[str, ...] = METHODS
    limit: int | None = None
    subsets: dict[str, int] = field(default_factory=dict)  # method -> first N images only (slow methods)
    masks: str | None = None
    step: int | None = None
    batch_size: int = 32
    threads: int = 1
    rise_masks: int = 4000
    lime_samples: int = 1000
    gradcam_layers: list[str] = field(default_factory=list)  # each a Grad-CAM method; none: the automatic layer
    saved_maps: dict[str, list[str]] = field(default_factory=dict)  # label -> .npz files of maps made elsewhere
    seed: int = 0

    def __post_init__(self):
        for name in self.methods:
            if name not in METHOD_BUILDERS:
                raise AkdError(f"unknown method '{name}' (methods: {', '.join(METHOD_BUILDERS)})")
        for label in self.saved_maps:
            if label.split(":")[0] in self.methods or label.startswith("akd"):
                raise AkdError(f"--maps {label}: the label names a method this run computes; choose another")
        for name in self.subsets:
            if name not in self.methods and name not in self.saved_maps:
                raise AkdError(f"--subset {name}: '{name}' is not among the evaluated methods")


def load_images(teacher: Teacher, data: str, limit: int | None, seed: int) -> tuple[list[EvalImage], int]:
    """Decode, resize and centre-crop like the target; the order is a seeded shuffle so ``--limit`` picks an
    unbiased subset. Unreadable files are skipped and counted."""
    from torchvision.transforms import functional as TF

    from akd.data.sources import discover, read_rgb, sampled

    found = discover(data, "test")
    if not found.samples:
        raise AkdError(f"{data}: no images found")
    pre = teacher.preprocessing
    images, skipped = [], found.skipped
    for sample in sampled(found.samples, seed):
        if limit is not None and len(images) >= limit:
            break
        rgb = read_rgb(sample)
        if rgb is None:
            skipped += 1
            continue
        rgb = TF.center_crop(TF.resize(rgb, int(round(pre.input_size / pre.crop_pct))), pre.input_size)
        pixels = np.asarray(rgb, dtype=np.uint8)
        tensor = torch.from_numpy(contract.normalise(pixels[None], pre.mean, pre.std))
        with torch.no_grad():
            class_id = int(teacher(tensor).argmax(1)[0])
        name = Path(sample.path).stem + (f"@{sample.frame}" if sample.frame is not None else "")
        images.append(EvalImage(name, pixels, tensor, class_id))
    return images, skipped


def load_mask(masks: str, image: EvalImage, teacher: Teacher) -> np.ndarray | None:
    """The object mask for an image (same stem, any image extension), cropped like the image; None if absent."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    stem = image.name.split("@")[0]
    for path in sorted(Path(masks).glob(f"{stem}.*")):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            pre = teacher.preprocessing
            try:
                with Image.open(path) as opened:
                    mask = opened.convert("L")
            except OSError as exc:
                raise AkdError(f"{path}: unreadable mask ({exc})") from None
            mask = TF.resize(mask, int(round(pre.input_size / pre.crop_pct)), TF.InterpolationMode.NEAREST)
            return np.asarray(TF.center_crop(mask, pre.input_size)) > 127
    return None


def build_methods(options: EvalOptions, teacher: Teacher, stack: contextlib.ExitStack) -> list[SaliencyMethod]:
    """The methods ``options.methods`` names and the saved maps, each entered on ``stack`` so all are released
    however the run ends."""
    unavailable = unavailable_methods(options.methods, teacher)
    built = [method for name in options.methods if name not in unavailable
             for method in METHOD_BUILDERS[name](options, teacher)]
    built += [SavedMapsMethod(label, paths) for label, paths in options.saved_maps.items()]
    if not built:
        raise AkdError(f"nothing to evaluate: {'; '.join(f'{k} {v}' for k, v in unavailable.items())}")
    return [stack.enter_context(method) for method in built]


def _time_inference(teacher: Teacher, images: list[EvalImage]) -> list[float]:
    """The paper's 'normal inference' row: the target alone, batch 1."""
    seconds = []
    with torch.no_grad():
        teacher(images[0].tensor)  # warm-up
        for image in images:
            started = time.perf_counter()
            teacher(image.tensor)
            seconds.append(time.perf_counter() - started)
    return seconds


TIMING_ROUNDS, TIMING_BLOCK_SECONDS = 3, 5.0


def subset_size(subsets: dict[str, int], method_name: str, default: int) -> int:
    """How many of the first images a method runs on: ``--subset rise=N`` covers every ``rise:...`` variant."""
    return subsets.get(method_name.split(":")[0], default)


def _time_methods(methods: list[SaliencyMethod], images: list[EvalImage], per_image: dict[str, list[dict]],
                  subsets: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Each method's seconds per image, timed apart from the scoring. Inside the scoring loop a method runs right
    after the judge's PyTorch curves, whose OpenMP threads are still spinning: the onnxruntime graph measured 21.4
    instead of 13.6 ms per image there, a PyTorch method nothing. So each method explains images in a block of its
    own, as a deployment runs one explainer frame after frame, blocks rotating between methods for a few rounds.
    A method slower than a block (RISE, LIME) keeps its scoring-loop times: milliseconds are noise there."""
    scored = {method.name: [row["seconds"] for row in per_image[method.name]] for method in methods}
    elsewhere = {method.name: method.execution for method in methods if method.made_elsewhere}
    fast = [method for method in methods
            if method.name not in elsewhere and np.median(scored[method.name]) <= TIMING_BLOCK_SECONDS]
    timed: dict[str, list[float]] = {method.name: [] for method in fast}
    speed = {name: {"seconds": _summary(seconds), "timed_in": "the scoring loop"}
             for name, seconds in scored.items() if name not in timed and name not in elsewhere}
    speed.update({name: {"seconds": _summary(scored[name]), "timed_in": f"where the maps were made: {where}"}
                  for name, where in elsewhere.items()})
    for round_index in range(TIMING_ROUNDS):
        shift = round_index % max(1, len(fast))
        for method in fast[shift:] + fast[:shift]:
            block_started = time.perf_counter()
            for image in images[:subset_size(subsets, method.name, len(images))]:
                started = time.perf_counter()
                method.explain(image)
                timed[method.name].append(time.perf_counter() - started)
                if started - block_started > TIMING_BLOCK_SECONDS:
                    break
    for name, seconds in timed.items():
        speed[name] = {"seconds": _summary(seconds), "timed_in": f"blocks of its own ({TIMING_ROUNDS} rounds)"}
    return speed


def _summary(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "median": float(np.median(array)), "std": float(array.std()),
            "count": int(len(array))}


def paired_difference(ours: list[float], theirs: list[float], seed: int = 0, resamples: int = 10_000
                      ) -> dict[str, float]:
    """Mean of the per-image differences ours - theirs with a 95% percentile-bootstrap interval: whether one
    method beats another is a statement about the interval of the paired difference, not about two means."""
    diffs = np.asarray(ours, dtype=np.float64) - np.asarray(theirs, dtype=np.float64)
    if len(diffs) < 2:
        raise ValueError("a paired difference needs at least two images")
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(resamples, len(diffs)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(diffs.mean()), "ci95": [float(low), float(high)], "count": int(len(diffs))}


def _paired(per_image: dict[str, list[dict[str, Any]]], seed: int) -> dict[str, dict[str, Any]]:
    """Every akd method against every baseline, on the images both explained."""
    paired: dict[str, dict[str, Any]] = {}
    for ours in [name for name in per_image if name.startswith("akd")]:
        rows = {row["image"]: row for row in per_image[ours]}
        for theirs in [name for name in per_image if not name.startswith("akd")]:
            both = [(rows[row["image"]], row) for row in per_image[theirs] if row["image"] in rows]
            if len(both) < 2:
                continue
            paired[f"{ours} - {theirs}"] = {
                key: paired_difference([a[key] for a, _ in both], [b[key] for _, b in both], seed)
                for key in ("insertion", "deletion", "intensity")}
    return paired


def evaluate(options: EvalOptions, teacher: Teacher, progress: bool = True) -> dict[str, Any]:
    """Run every method on every image (or its subset); returns the JSON-able report and writes it to ``out``."""
    import importlib.util

    from tqdm import tqdm

    if importlib.util.find_spec("matplotlib") is None:  # before the work, not after it
        raise AkdError("akd-evaluate draws its figures with matplotlib, which is not installed: "
                       "pip install 'akd[eval]'")
    load_before = os.getloadavg()[0]  # other work on the machine inflates every timing: the report says so
    torch.set_num_threads(options.threads)
    images, skipped = load_images(teacher, options.data, options.limit, options.seed)
    with contextlib.ExitStack() as stack:
        methods = build_methods(options, teacher, stack)
        per_image: dict[str, list[dict[str, Any]]] = {method.name: [] for method in methods}
        grid_maps: dict[str, list[np.ndarray]] = {method.name: [] for method in methods}
        gallery = Gallery()  # report.html's overlays of every image
        curves: dict[str, dict[str, list[np.ndarray]]] = {m.name: {"insertion": [], "deletion": []} for m in methods}
        executions = {method.name: method.execution for method in methods}
        for method in methods:  # warm-up outside the timed loop (session/graph initialisation)
            if method.covers(images[0]):
                method.explain(images[0])
        for index, image in enumerate(tqdm(images, desc="akd-evaluate", disable=not progress)):
            mask = load_mask(options.masks, image, teacher) if options.masks else None
            for method in methods:
                if index >= subset_size(options.subsets, method.name, len(images)) or not method.covers(image):
                    continue
                saliency, row, method_curves = _score(method, image, teacher, options, mask)
                per_image[method.name].append(row)
                gallery.add(image.name, image.pixels, method.name, saliency)
                for mode, curve in method_curves.items():
                    curves[method.name][mode].append(curve)
                if index < GRID_IMAGES:
                    grid_maps[method.name].append(metrics.normalise(saliency))
        speed = _time_methods(methods, images, per_image, options.subsets)
    inference = _time_inference(teacher, images)
    report = _assemble(options, teacher, images, skipped, per_image, curves, inference, speed)
    report["machine"]["load_average_before"] = load_before
    report["machine"]["execution"] = executions
    report["not_run"] = unavailable_methods(options.methods, teacher)
    write_report(report, markdown(report), options.out, images[:GRID_IMAGES], grid_maps, gallery)
    return report


def _score(method: SaliencyMethod, image: EvalImage, teacher: Teacher, options: EvalOptions,
           mask: np.ndarray | None) -> tuple[np.ndarray, dict[str, Any], dict[str, np.ndarray]]:
    """One method on one image: its map (timed), the per-image row and the insertion/deletion curves."""
    started = time.perf_counter()
    saliency = method.explain(image)
    recorded = method.recorded_seconds(image)
    seconds = time.perf_counter() - started if recorded is None else recorded
    row: dict[str, Any] = {"image": image.name, "target_class": image.class_id, "seconds": seconds,
                           "intensity": metrics.intensity(saliency)}
    curves = {mode: metrics.causal_curve(teacher, image.tensor, saliency, mode, options.step, options.batch_size,
                                         image.class_id) for mode in metrics.MODES}
    row.update({mode: metrics.auc(curve) for mode, curve in curves.items()})
    if mask is not None:
        row["pointing"] = float(metrics.pointing_game(saliency, mask))
        row["energy_pointing"] = metrics.energy_pointing_game(saliency, mask)
    return saliency, row, curves


def _target_device(teacher: Teacher) -> str:
    """Where the target (the judge of every curve, and Grad-CAM/RISE/LIME's model) runs."""
    if teacher.module is None:
        return "onnxruntime on cpu"
    parameter = next(teacher.module.parameters(), None)
    return str(parameter.device) if parameter is not None else "cpu"


def _assemble(options, teacher, images, skipped, per_image, curves, inference, speed) -> dict[str, Any]:
    everyone = set.intersection(*[{row["image"] for row in rows} for rows in per_image.values()])
    results: dict[str, Any] = {}
    for name, rows in per_image.items():
        keys = [k for k in ("insertion", "deletion", "intensity", "pointing", "energy_pointing") if k in rows[0]]
        common = [row for row in rows if row["image"] in everyone]
        results[name] = {
            "all": {key: _summary([row[key] for row in rows]) for key in keys},
            "common": {key: _summary([row[key] for row in common]) for key in keys},
            **speed[name],
            "curves": {mode: np.mean(curves[name][mode], axis=0).tolist() for mode in metrics.MODES},
            "per_image": rows,
        }
    height, width = images[0].tensor.shape[-2:]
    step = options.step or metrics.default_step(height, width)
    return {
        "target": teacher.identity, "data": options.data, "images": len(images), "skipped": skipped,
        "common_images": len(everyone), "methods": list(per_image),
        "settings": {"step": step, "points": metrics.step_count(height * width, step) + 1,
                     "blur": "RISE kernel 11x11 sigma 5, zero padding", "deletion_substrate": "zeros (normalised)",
                     "rise_masks": options.rise_masks, "rise_cells": 7, "rise_keep": 0.5,
                     "lime_samples": options.lime_samples, "seed": options.seed, "subsets": options.subsets},
        "machine": {"threads": options.threads, "cpu": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "target_device": _target_device(teacher)},
        "inference_seconds": _summary(inference),
        "results": results,
        "paired": _paired(per_image, options.seed),
    }


def markdown(report: dict[str, Any]) -> str:
    """Paper-style tables: speed (Table 3) and faithfulness (Table 4), on the images every method ran on."""
    results = report["results"]
    inference = report["inference_seconds"]["median"]
    lines = [f"# akd-evaluate: {report['target'].get('name', 'target')} on {report['data']}", "",
             f"{report['images']} images ({report['skipped']} unreadable skipped); {report['common_images']} explained "
             f"by every method. Step {report['settings']['step']} pixels ({report['settings']['points']} points), "
             f"{report['machine']['threads']} thread(s), {report['machine']['cpu_count']} CPUs, batch 1.", ""]
    load = report["machine"].get("load_average_before", 0.0)
    if load > 0.5 * (report["machine"]["cpu_count"] or 1):
        lines += [f"**The machine was busy** (load average {load:.1f} before the run on "
                  f"{report['machine']['cpu_count']} CPUs): every timing below is inflated.", ""]
    lines += ["## Speed (Table 3, median of each method's per-image times after a warm-up)", "",
              "| method | seconds / image | images / s | x normal inference | timed in |",
              "|---|---:|---:|---:|---|",
              f"| normal inference | {inference:.4f} | {1 / inference:.1f} | 1.00 | a block of its own |"]
    for name, result in results.items():
        seconds = result["seconds"]["median"]
        lines.append(f"| {name} | {seconds:.4f} | {1 / seconds:.2f} | {seconds / inference:.2f} | "
                     f"{result['timed_in']} |")
    optional = [k for k in ("pointing", "energy_pointing") if all(k in r["common"] for r in results.values())]
    header = "| method | insertion (higher) | deletion (lower) | intensity (lower) |" + "".join(
        f" {k.replace('_', ' ')} |" for k in optional)
    for scope, title in (("common", "on the images every method explained"), ("all", "on every image each ran on")):
        lines += ["", f"## Faithfulness (Table 4), {title}", "", header,
                  "|---|---:|---:|---:|" + "---:|" * len(optional)]
        for name, result in results.items():
            cells = result[scope]
            if not cells["insertion"]["count"]:
                continue
            row = f"| {name} ({cells['insertion']['count']}) | " + " | ".join(
                f"{cells[k]['mean']:.4f} ± {cells[k]['std']:.3f}" for k in ("insertion", "deletion", "intensity"))
            lines.append(row + " |" + "".join(f" {cells[k]['mean']:.3f} |" for k in optional))
    if report.get("paired"):
        lines += ["", "## Paired per-image differences (mean, 95% bootstrap interval)", "",
                  "| akd - baseline (images) | insertion (higher) | deletion (lower) | intensity (lower) |",
                  "|---|---:|---:|---:|"]
        for pair, cells in report["paired"].items():
            lines.append(f"| {pair} ({cells['insertion']['count']}) | " + " | ".join(
                f"{cells[k]['mean']:+.4f} [{cells[k]['ci95'][0]:+.4f}, {cells[k]['ci95'][1]:+.4f}]"
                for k in ("insertion", "deletion", "intensity")) + " |")
    lines += [f"\nNot run: {name} ({reason})." for name, reason in report.get("not_run", {}).items()]
    lines += ["", "Figures: `curves.png` (mean insertion/deletion curves), `overlays.png` (maps per method).", ""]
    return "\n".join(lines)
