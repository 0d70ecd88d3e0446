"""Where images come from, all reduced to a list of ``Sample(path, label, frame)``.

Layouts recognised under ``--data DIR`` (first match wins): CUB-200-2011, FGVC-Aircraft, Stanford Cars, the
ImageNet sample layout (``<wnid>_<name>.JPEG``, label = wnid's ImageNet index), ImageFolder (one folder per
class), and a flat folder of unlabeled images and videos. A video file is a source of unlabeled frames.
``sample-photos`` names scikit-image's bundled photos, the data of the README's quick start.
Unlabeled samples carry label -1 and are distilled from the target's soft outputs only.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from akd.util import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, AkdError, native_messages

log = logging.getLogger(__name__)

WNID_FILE = re.compile(r"^(n\d{8})_")
AIRCRAFT_LEVELS = {"variant": "variants.txt", "family": "families.txt", "manufacturer": "manufacturers.txt"}


@dataclass(frozen=True)
class Sample:
    path: str
    label: int = -1
    frame: int | None = None  # frame index for video sources


@dataclass
class SampleSet:
    samples: list[Sample]
    classes: list[str] | None  # None: unlabeled (soft labels only)
    layout: str
    skipped: int = 0


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _find_root(root: Path, marker: str, subdirs: tuple[str, ...]) -> Path | None:
    for candidate in (root, *(root / s for s in subdirs)):
        if (candidate / marker).is_file():
            return candidate
    return None


def _read_pairs(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split(maxsplit=1)) for line in path.read_text().splitlines() if line.strip()]


def cub_samples(root: Path, split: str) -> SampleSet:
    """CUB-200-2011: images.txt, image_class_labels.txt (1-based), train_test_split.txt (1 = train)."""
    paths = dict(_read_pairs(root / "images.txt"))
    labels = {k: int(v) - 1 for k, v in _read_pairs(root / "image_class_labels.txt")}
    is_train = {k: v.strip() == "1" for k, v in _read_pairs(root / "train_test_split.txt")}
    classes = [name for _, name in _read_pairs(root / "classes.txt")]
    wanted = split in ("train", "trainval")
    samples = [Sample(str(root / "images" / paths[k]), labels[k]) for k in paths if is_train[k] == wanted]
    return SampleSet(samples, classes, "cub-200-2011")


def aircraft_samples(root: Path, split: str, level: str) -> SampleSet:
    """FGVC-Aircraft: data/images_<level>_<split>.txt lines "<image id> <class name>"."""
    if level not in AIRCRAFT_LEVELS:
        raise AkdError(f"aircraft level must be one of {', '.join(AIRCRAFT_LEVELS)}, not '{level}'")
    split = {"train": "trainval"}.get(split, split)
    listing = root / f"images_{level}_{split}.txt"
    if not listing.is_file():
        raise AkdError(f"{listing}: FGVC-Aircraft split file not found")
    classes = [line.strip() for line in (root / AIRCRAFT_LEVELS[level]).read_text().splitlines() if line.strip()]
    index = {name: i for i, name in enumerate(classes)}
    samples = [Sample(str(root / "images" / f"{image}.jpg"), index[name]) for image, name in _read_pairs(listing)]
    return SampleSet(samples, classes, f"fgvc-aircraft-{level}")


def cars_samples(root: Path, split: str) -> SampleSet:
    """Stanford Cars: devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat."""
    from scipy.io import loadmat

    classes = [str(name) for name in loadmat(root / "devkit" / "cars_meta.mat", squeeze_me=True)["class_names"]]
    if split in ("train", "trainval"):
        annotations, folder = root / "devkit" / "cars_train_annos.mat", root / "cars_train"
    else:
        annotations, folder = root / "cars_test_annos_withlabels.mat", root / "cars_test"
        if not annotations.is_file():
            annotations = root / "devkit" / "cars_test_annos_withlabels.mat"
    records = loadmat(annotations, squeeze_me=True)["annotations"]
    samples = [Sample(str(folder / str(r["fname"])), int(r["class"]) - 1) for r in records]
    return SampleSet(samples, classes, "stanford-cars")


def video_samples(path: Path, stride: int) -> list[Sample]:
    """Every ``stride``-th frame of a video (OpenCV); an unreadable video yields no samples."""
    import cv2

    with native_messages(path):
        capture = cv2.VideoCapture(str(path))
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    capture.release()
    if count <= 0:
        log.warning("%s: unreadable video, skipped", path)
    return [Sample(str(path), -1, frame) for frame in range(0, max(count, 0), stride)]


def folder_samples(root: Path, video_stride: int) -> SampleSet:
    """ImageNet-sample, ImageFolder or flat layouts, decided by what the folder holds."""
    from akd.data.imagenet import imagenet_class_names, imagenet_wnids

    files = sorted(p for p in root.iterdir() if p.is_file())
    images = [p for p in files if _is_image(p)]
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and any(_is_image(p) for p in d.iterdir()))
    if images and all(WNID_FILE.match(p.name) for p in images):
        index = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
        unknown = [p.name for p in images if WNID_FILE.match(p.name).group(1) not in index]
        if unknown:
            raise AkdError(f"{root}: {len(unknown)} files name no ImageNet-1k wnid, e.g. {unknown[0]}")
        samples = [Sample(str(p), index[WNID_FILE.match(p.name).group(1)]) for p in images]
        return SampleSet(samples, list(imagenet_class_names()), "imagenet-sample")
    if class_dirs and not images:
        classes = [d.name for d in class_dirs]
        samples = [Sample(str(p), label) for label, d in enumerate(class_dirs)
                   for p in sorted(d.iterdir()) if p.is_file() and _is_image(p)]
        return SampleSet(samples, classes, "imagefolder")
    samples, unreadable_videos = [Sample(str(p)) for p in images], 0
    for video in (p for p in files if _is_video(p)):
        frames = video_samples(video, video_stride)
        samples += frames
        unreadable_videos += not frames
    return SampleSet(samples, None, "flat", skipped=unreadable_videos)


def discover(spec: str, split: str = "train", aircraft_level: str = "variant", video_stride: int = 10) -> SampleSet:
    """Resolve ``--data``/``--val`` into samples; header-check every image and count the ones skipped."""
    photos = spec == "sample-photos"
    if photos:
        import skimage.data

        spec = skimage.data.data_dir
    root = Path(spec)
    if photos:  # scikit-image's own multi-page TIFF test file is not a photo (and PIL warns about it)
        found = folder_samples(root, video_stride)
        found.samples = [s for s in found.samples if Path(s.path).name != "multipage_rgb.tif"]
    elif root.is_file() and _is_video(root):
        found = SampleSet(video_samples(root, video_stride), None, "video")
    elif not root.is_dir():
        raise AkdError(f"{spec}: data folder not found")
    elif cub := _find_root(root, "image_class_labels.txt", ("CUB_200_2011",)):
        found = cub_samples(cub, split)
    elif aircraft := _find_root(root, "variants.txt", ("data", "fgvc-aircraft-2013b/data")):
        found = aircraft_samples(aircraft, split, aircraft_level)
    elif cars := _find_root(root, "devkit/cars_meta.mat", ("stanford_cars",)):
        found = cars_samples(cars, split)
    else:
        found = folder_samples(root, video_stride)
    kept = [s for s in found.samples if s.frame is not None or _header_ok(s.path)]
    found.skipped += len(found.samples) - len(kept)
    found.samples = kept
    if found.skipped:
        log.warning("%s: skipped %d unreadable images or videos", spec, found.skipped)
    if not found.samples:
        raise AkdError(f"{spec}: no readable images or video frames found ({found.layout} layout)")
    return found


def _header_ok(path: str) -> bool:
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt files
        log.warning("%s: unreadable image skipped (%s)", path, exc)
        return False


def read_rgb(sample: Sample) -> Image.Image | None:
    """Decode one sample as an RGB image, or None (logged) when the file or frame is corrupt."""
    try:
        if sample.frame is None:
            with Image.open(sample.path) as image:
                return image.convert("RGB")
        import cv2

        with native_messages(sample.path):
            capture = cv2.VideoCapture(sample.path)
            capture.set(cv2.CAP_PROP_POS_FRAMES, sample.frame)
            ok, frame = capture.read()
        capture.release()
        if not ok:
            raise ValueError(f"frame {sample.frame} did not decode")
        return Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    except Exception as exc:  # noqa: BLE001
        log.warning("%s: unreadable, skipped (%s)", sample.path, exc)
        return None


def sampled(samples: list, seed: int) -> list:
    """A deterministic shuffle of the samples (same list, same seed -> same order)."""
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
    return [samples[i] for i in order]


def data_summary(found: SampleSet) -> str:
    labels = "unlabeled" if found.classes is None else f"{len(found.classes)} classes"
    skipped = f", {found.skipped} skipped" if found.skipped else ""
    return f"{len(found.samples)} samples ({found.layout}, {labels}{skipped})"
