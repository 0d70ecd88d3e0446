"""RISE maps of the built-in EfficientNet-Lite0 target for every image of the ImageNet sample, built on a GPU (issue
10: "RISE with 4000 masks for all training images costs minutes on a GPU; cache those maps and distil the
explainer towards them on CPU"). On the 2-core CPU the same maps take about 1.5 minutes per image.

The lent GPU machine has torch, timm and numpy but neither akd's dependencies nor ../shared, so the inputs travel:

    python benchmarks/rise_targets.py --prepare runs/gpu-check     # here: views, target weights, split names
    PYTHONPATH=src python benchmarks/rise_targets.py --work runs/gpu-check --out "$OUT" --deadline 300   # there

Each image is the target's evaluation view (resize 256, centre crop 224: what akd-evaluate and the explainer
targets see), stored as JPEG quality 95. Masks are ``akd.perturbation.rise_masks`` with the seed RiseMethod uses,
so these are the maps akd-evaluate's RISE computes on CPU, up to the GPU's fp16 arithmetic (measured on two images
against fp32 and reported). Output ``rise_maps.npz``: names (split/file), class ids and probabilities of the
target, maps average-pooled to 56 x 56 (train and validation) and 112 x 112 (held-out), float16.

``--exact-heldout`` instead computes RISE for akd-evaluate's own held-out images (its pixels and the target's CPU
class, written by ``--prepare``) at full resolution in fp32, TF32 off, into ``rise_heldout_*.npz``: RISE on all
160 held-out images, which the 2-core CPU cannot afford (4 hours), for ``akd-evaluate --maps rise=...``.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"
SPLITS = ("train", "val", "heldout")
POOL = {"train": 4, "val": 4, "heldout": 2}
EXACT_INPUTS = "heldout_eval_images.npz"
EXACT_FILES = 4  # the full-resolution float32 maps come back in this many files (16 MB per file at most)


def prepare(work: Path) -> None:
    from PIL import Image
    from safetensors.torch import save_file

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from distill_imagenet_sample import split

    from akd.data.preprocessing import transforms_for
    from akd.evaluation.report import load_images
    from akd.models.teachers import load_teacher

    teacher = load_teacher("efficientnet_lite0")
    view = transforms_for(teacher.preprocessing, train=False).transforms[:2]  # resize + centre crop, no tensor
    views = work / "views"
    views.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as links:  # the split's folders are links into ../shared: not carried
        folders = split(SHARED, Path(links))
        files = {name: sorted(link.resolve() for link in folder.iterdir())
                 for name, folder in zip(SPLITS, folders, strict=True)}
    for name, paths in files.items():
        for path in paths:
            image = Image.open(path).convert("RGB")
            for transform in view:
                image = transform(image)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=95)
            (views / f"{name}__{path.stem}.jpg").write_bytes(buffer.getvalue())
    with tempfile.TemporaryDirectory() as links:  # akd-evaluate's own images of the held-out split, exactly
        heldout = split(SHARED, Path(links))[2]
        images, _ = load_images(teacher, str(heldout), None, seed=0)
    np.savez_compressed(work / EXACT_INPUTS, names=np.array([image.name for image in images]),
             pixels=np.stack([image.pixels for image in images]),
             class_ids=np.array([image.class_id for image in images]))
    state = {key: value.contiguous() for key, value in teacher.module.state_dict().items()}
    save_file(state, str(work / "target.safetensors"))  # fp32: the exact maps need the exact target
    (work / "target.json").write_text(json.dumps({"timm": "tf_efficientnet_lite0", **teacher.identity,
                                                  "preprocessing": teacher.preprocessing.to_config()}))
    print(f"prepared {work}: {len(list(views.iterdir()))} views, {len(images)} evaluation images, target weights")


def load_target(work: Path, device: str) -> tuple[torch.nn.Module, dict]:
    import timm
    from safetensors.torch import load_file

    identity = json.loads((work / "target.json").read_text())
    module = timm.create_model(identity["timm"], pretrained=False)
    module.load_state_dict(load_file(str(work / "target.safetensors")))
    return module.eval().to(device), identity


def read_views(work: Path, preprocessing: dict) -> tuple[list[str], torch.Tensor]:
    from PIL import Image

    paths = sorted((work / "views").glob("*.jpg"), key=lambda p: (SPLITS.index(p.stem.split("__")[0]), p.name))
    pixels = np.stack([np.asarray(Image.open(path).convert("RGB"), np.float32) / 255 for path in paths])
    mean, std = (torch.tensor(preprocessing[key]).view(1, 3, 1, 1) for key in ("mean", "std"))
    return [p.stem.replace("__", "/") for p in paths], (torch.from_numpy(pixels).permute(0, 3, 1, 2) - mean) / std


def crop_params(count: int, size: int, seed: int) -> np.ndarray:
    """``count`` random-resized-crop boxes of a ``size`` x ``size`` view (the training augmentation's scale and
    aspect ranges) with a flip flag each: rows (top, left, height, width, flip), reproducible from ``seed``."""
    from torchvision import transforms as T

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rows = [(*T.RandomResizedCrop.get_params(torch.empty(1, size, size), (0.25, 1.0), (3 / 4, 4 / 3)),
                 int(torch.rand(()) < 0.5)) for _ in range(count)]
    return np.array(rows, dtype=np.int64)


def cropped_view(images: torch.Tensor, params) -> torch.Tensor:
    """The crop ``params`` (a ``crop_params`` row) of (N, C, H, W) images, resized back to (H, W) and flipped
    when the row says so: the same view wherever its RISE map or a training step is computed."""
    from torchvision.transforms import functional as TF

    top, left, height, width, flip = (int(v) for v in params)
    view = TF.resized_crop(images, top, left, height, width, list(images.shape[-2:]), antialias=True)
    return view.flip(-1) if flip else view


@torch.no_grad()
def build(work: Path, out: Path, masks: int, chunk: int, deadline: float, device: str, augment: int = 0) -> dict:
    """Maps image by image until ``deadline`` seconds have passed; fp16 + channels_last on CUDA."""
    from akd.perturbation import rise_masks, rise_saliency

    started = time.perf_counter()
    torch.backends.cudnn.benchmark = True
    exact, identity = load_target(work, device)
    dtype = torch.float16 if device == "cuda" else torch.float32
    fast = copy.deepcopy(exact).to(dtype).to(memory_format=torch.channels_last)
    classify = lambda x: fast(x.contiguous(memory_format=torch.channels_last))  # noqa: E731
    names, images = read_views(work, identity["preprocessing"])
    all_masks = torch.cat(list(rise_masks(masks, 224, 224))).to(device, dtype)
    report: dict = {"masks": masks, "device": torch.cuda.get_device_name() if device == "cuda" else device,
                    "torch": torch.__version__, "dtype": str(dtype)}
    agreement = []  # how far the fast arithmetic moves RISE's maps, against fp32 on two images
    torch.backends.cudnn.allow_tf32 = False  # the reference in true fp32
    for image in images[:2].to(device):
        class_id = int(exact(image[None]).argmax())
        reference = rise_saliency(exact, image[None], class_id, iter(all_masks.float().split(chunk)), masks)
        got = rise_saliency(classify, image[None].to(dtype), class_id, iter(all_masks.split(chunk)), masks)
        agreement.append({"pearson": float(torch.corrcoef(torch.stack([reference.flatten(), got.flatten()]))[0, 1]),
                          "max_abs": float((reference - got).abs().max()),
                          "range": float(reference.max() - reference.min())})
    report["fast_vs_fp32"] = agreement

    if augment:
        return {**report, **crops(names, images, augment, classify, all_masks, chunk, started, deadline, out)}
    done: dict[str, list] = {split: [] for split in SPLITS}
    rise_started = time.perf_counter()
    for name, image in zip(names, images, strict=True):
        if time.perf_counter() - started > deadline:
            break
        image = image[None].to(device, dtype)
        probs = F.softmax(classify(image).float(), dim=1)[0]
        class_id = int(probs.argmax())
        saliency = rise_saliency(classify, image, class_id, iter(all_masks.split(chunk)), masks)
        split = name.split("/")[0]
        pooled = F.avg_pool2d(saliency[None, None], POOL[split])[0, 0]
        done[split].append((name, class_id, float(probs[class_id]), pooled.half().cpu().numpy()))
    count = sum(len(rows) for rows in done.values())
    seconds = time.perf_counter() - rise_started
    report.update(images=count, of=len(names), seconds=seconds, masked_images_per_s=count * masks / seconds)
    for split, rows in done.items():
        if rows:
            split_names, classes, probs, maps = zip(*rows, strict=True)
            np.savez(out / f"rise_maps_{split}.npz", names=np.array(split_names), class_ids=np.array(classes),
                     probs=np.array(probs, np.float32), maps=np.stack(maps), masks=masks, pool=POOL[split])
    return report


@torch.no_grad()
def exact_heldout(work: Path, out: Path, masks: int, chunk: int, deadline: float, device: str) -> dict:
    """RISE maps of the held-out images exactly as akd-evaluate sees them (its decoded, resized, cropped pixels
    and the target's class on CPU, from ``--prepare``), at full resolution in fp32 with TF32 off: the maps
    akd-evaluate's RISE computes on CPU, up to the order of float sums. ``akd-evaluate --maps rise=FILE...``
    scores them with the same metric code as every other method."""
    from akd import contract
    from akd.perturbation import rise_masks, rise_saliency

    started = time.perf_counter()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    target, identity = load_target(work, device)
    inputs = np.load(work / EXACT_INPUTS)
    pre = identity["preprocessing"]
    all_masks = torch.cat(list(rise_masks(masks, 224, 224))).to(device)
    rows = []
    for name, pixels, class_id in zip(inputs["names"], inputs["pixels"], inputs["class_ids"], strict=True):
        if time.perf_counter() - started > deadline:
            break
        image = torch.from_numpy(contract.normalise(pixels[None], pre["mean"], pre["std"])).to(device)
        began = time.perf_counter()
        saliency = rise_saliency(target, image, int(class_id), iter(all_masks.split(chunk)), masks)
        predicted = int(target(image).argmax())
        rows.append((str(name), int(class_id), predicted, saliency.cpu().numpy(), time.perf_counter() - began))
    names, classes, predicted, maps, seconds = zip(*rows, strict=True)
    per_file = -(-len(rows) // EXACT_FILES)
    for part, start in enumerate(range(0, len(rows), per_file)):
        stop = start + per_file
        np.savez(out / f"rise_heldout_{part}.npz", names=np.array(names[start:stop]),
                 class_ids=np.array(classes[start:stop]), maps=np.stack(maps[start:stop]).astype(np.float32),
                 seconds=np.array(seconds[start:stop]), masks=masks)
    return {"exact_heldout": len(rows), "of": len(inputs["names"]), "masks": masks, "dtype": "float32, TF32 off",
            "device": torch.cuda.get_device_name() if device == "cuda" else device, "torch": torch.__version__,
            "seconds_per_image_median": float(np.median(seconds)),
            "class_differs_from_akd_evaluate": int(sum(a != b for a, b in zip(classes, predicted, strict=True)))}


def crops(names, images, per_image, classify, all_masks, chunk, started, deadline, out) -> dict:
    """RISE maps of ``per_image`` random-resized-crop views of each training view (``crop_params`` seeded by
    the image's index), round-robin over the images so a deadline leaves every image some views."""
    from akd.perturbation import rise_saliency

    train = [(index, name) for index, name in enumerate(names) if name.startswith("train/")]
    params = {index: crop_params(per_image, images.shape[-1], seed=index) for index, _ in train}
    rows, rise_started = [], time.perf_counter()
    for round_ in range(per_image):
        for index, name in train:
            if time.perf_counter() - started > deadline:
                break
            row = params[index][round_]
            view = cropped_view(images[index][None], row).to(all_masks)
            probs = F.softmax(classify(view).float(), dim=1)[0]
            class_id = int(probs.argmax())
            saliency = rise_saliency(classify, view, class_id, iter(all_masks.split(chunk)), len(all_masks))
            rows.append((name, row, class_id, float(probs[class_id]),
                         F.avg_pool2d(saliency[None, None], 4)[0, 0].half().cpu().numpy()))
    seconds = time.perf_counter() - rise_started
    if rows:
        crop_names, crop_rows, classes, probs, maps = zip(*rows, strict=True)
        np.savez(out / "rise_maps_crops.npz", names=np.array(crop_names), params=np.stack(crop_rows),
                 class_ids=np.array(classes), probs=np.array(probs, np.float32), maps=np.stack(maps),
                 masks=len(all_masks), pool=4)
    return {"crops": len(rows), "crop_seconds": seconds, "masked_images_per_s": len(rows) * len(all_masks) / seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prepare", metavar="DIR", help="write the inputs (here, with ../shared) and stop")
    parser.add_argument("--work", default="runs/gpu-check")
    parser.add_argument("--out", default="runs/gpu-check/out")
    parser.add_argument("--masks", type=int, default=4000)
    parser.add_argument("--chunk", type=int, default=1000, help="masked images per forward")
    parser.add_argument("--deadline", type=float, default=300, help="seconds; stop and save what is done")
    parser.add_argument("--augment", type=int, default=0,
                        help="instead of the views themselves: this many random crops of each training view")
    parser.add_argument("--exact-heldout", action="store_true",
                        help="instead: full-resolution fp32 maps of akd-evaluate's held-out images (for --maps)")
    parser.add_argument("--device", default="cuda", help="cpu only to try the script on a few masks")
    args = parser.parse_args()
    if args.prepare:
        prepare(Path(args.prepare))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("rise_targets needs CUDA (on 2 CPU cores the maps take ~1.5 min per image)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.exact_heldout:
        report = exact_heldout(Path(args.work), out, args.masks, args.chunk, args.deadline, args.device)
    else:
        report = build(Path(args.work), out, args.masks, args.chunk, args.deadline, args.device, args.augment)
    (out / "rise_targets.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
