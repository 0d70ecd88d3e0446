"""``akd-explain``: images, folders and videos -> overlay images/videos (+ optional raw maps), with a progress bar
and a summary. Unreadable images, videos and frames are skipped and counted, never fatal."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from akd.runtime.video import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    ThreadedWriter,
    VideoSink,
    open_source,
    read_image,
)
from akd.util import AkdError, atomic_path, check_writable

MAP_FILES = ("npy", "png", "both")  # --maps: raw saliency maps as .npy arrays, 8-bit PNGs, or both

log = logging.getLogger(__name__)


@dataclass
class Summary:
    frames: int = 0
    images: int = 0
    videos: int = 0
    skipped_inputs: list[str] = field(default_factory=list)
    skipped_frames: int = 0
    seconds: float = 0.0
    written: list[Path] = field(default_factory=list)

    def line(self) -> str:
        fps = self.frames / self.seconds if self.seconds else 0.0
        return (f"{self.frames} frames ({self.images} images, {self.videos} videos) in {self.seconds:.1f} s, "
                f"{fps:.1f} fps; skipped {len(self.skipped_inputs)} inputs and {self.skipped_frames} frames")


@dataclass
class Inputs:
    """What the command-line inputs expand to; ``names`` maps each file to its unique output name (no suffix)."""

    images: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    names: dict[Path, str] = field(default_factory=dict)


def _walk(folder: Path, missing: list[str]) -> list[Path]:
    """Files under ``folder``, subfolders included, sorted; a symlink loop is followed once and counted."""
    seen, files = set(), []
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            missing.append(f"{root} (symlink loop, not followed again)")
            dirs.clear()
            continue
        seen.add(real)
        dirs.sort()
        files += [Path(root) / name for name in names if (Path(root) / name).is_file()]
    return sorted(files)


def collect_inputs(inputs: list[str]) -> Inputs:
    """Folders expand to the images and videos inside them (recursively). Output names mirror each file's path
    inside its folder (a file argument: its name); where two would still collide (``d1/pic.jpg`` and
    ``d2/pic.jpg``, or ``pic.jpg`` and ``pic.png``), they keep the folder's name and the file's extension."""
    found = Inputs()
    relative: dict[Path, tuple[str, Path]] = {}
    for item in inputs:
        path = Path(item)
        if not path.exists():
            found.missing.append(item)
            continue
        candidates = _walk(path, found.missing) if path.is_dir() else [path]
        for candidate in candidates:
            suffix = candidate.suffix.lower()
            if suffix in IMAGE_EXTENSIONS or suffix in VIDEO_EXTENSIONS:
                (found.images if suffix in IMAGE_EXTENSIONS else found.videos).append(candidate)
                relative[candidate] = (path.name, candidate.relative_to(path) if path.is_dir() else
                                       Path(candidate.name))
            elif not path.is_dir():
                found.missing.append(f"{item} (not an image or video)")
    stems = {file: rel.with_suffix("").as_posix() for file, (_, rel) in relative.items()}
    clashes = _clashing(stems)
    for file in clashes:
        folder, rel = relative[file]
        stems[file] = f"{folder}/{rel.as_posix()}" if rel.name != folder else rel.as_posix()
    for file in _clashing(stems):  # the same path given twice, or one file through two arguments
        stems[file] = f"{stems[file]}-{sorted(stems).index(file)}"
    found.names = stems
    return found


def _clashing(stems: dict[Path, str]) -> list[Path]:
    counts = Counter(stems.values())
    return [file for file, stem in stems.items() if counts[stem] > 1]


def _write_image(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        ok, encoded = cv2.imencode(path.suffix, image)
        if not ok:
            raise AkdError(f"{path}: cannot encode image")
        tmp.write_bytes(encoded.tobytes())


def _save_maps(out: Path, stem: str, saliency: np.ndarray, maps: str | None) -> list[Path]:
    written = []
    if maps in ("npy", "both"):
        target = out / f"{stem}.saliency.npy"
        with atomic_path(target) as tmp, open(tmp, "wb") as handle:
            np.save(handle, saliency.astype(np.float32))
        written.append(target)
    if maps in ("png", "both"):
        target = out / f"{stem}.saliency.png"
        _write_image(target, (np.clip(saliency, 0, 1) * 255).astype(np.uint8))
        written.append(target)
    return written


def explain_inputs(engine, inputs: list[str], out: str, maps: str | None = None, smoothing: float = 0.0,
                   batch_size: int = 1, progress: bool = True, shard: tuple[int, int] = (0, 1)) -> Summary:
    """``shard=(k, n)``: this process takes every n-th image and video starting at the k-th, so n processes (on
    one machine or many, e.g. all feeding one Triton server) split a file list without coordination.
    Raises AkdError when nothing could be explained (every input unreadable)."""
    found = collect_inputs(inputs)
    index, count = shard
    images, videos = found.images[index::count], found.videos[index::count]
    summary = Summary(skipped_inputs=list(found.missing))
    for item in found.missing:
        log.warning("%s: not found or not an image/video, skipped", item)
    if not images and not videos:
        raise AkdError("no images or videos to explain in " + ", ".join(inputs))
    out_dir = check_writable(out, "dir")
    started = time.perf_counter()
    with tqdm(total=len(images), desc="images", unit="img", disable=not progress or not images,
              file=sys.stderr) as bar:
        for path in images:
            frame = read_image(path)
            bar.update()
            if frame is None:
                summary.skipped_inputs.append(str(path))
                continue
            result = engine.explain(frame)
            target = out_dir / f"{found.names[path]}.overlay.png"
            _write_image(target, engine.overlay(frame, result))
            summary.written += [target, *_save_maps(target.parent, target.name.removesuffix(".overlay.png"),
                                                    result.saliency, maps)]
            summary.frames += 1
            summary.images += 1
    for path in videos:
        frames = _explain_video(engine, path, out_dir / found.names[path], maps, smoothing, batch_size, progress,
                                summary)
        summary.frames += frames
        summary.videos += frames > 0
    summary.seconds = time.perf_counter() - started
    if not summary.frames:
        raise AkdError(f"nothing explained: all {len(summary.skipped_inputs)} inputs were unreadable or missing")
    return summary


def _explain_video(engine, path: Path, out_base: Path, maps: str | None, smoothing: float, batch_size: int,
                   progress: bool, summary: Summary) -> int:
    """One video -> ``NAME.overlay.mp4`` (+ ``NAME.saliency/`` with one map per frame). Both are written under
    temporary names and renamed at the end, so an interrupted or failed video leaves neither behind."""
    try:
        source = open_source(str(path), live=False)
    except AkdError as exc:
        summary.skipped_inputs.append(str(path))
        log.warning("%s", exc)
        return 0
    sink = VideoSink(out_base.with_name(f"{out_base.name}.overlay.mp4"), source.fps)
    maps_dir = out_base.with_name(f"{out_base.name}.saliency")
    partial = maps_dir.with_name(f".{maps_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)

    def write(frame, result, index):
        sink.write(engine.overlay(frame, result))
        if maps:  # one file per frame keeps memory flat however long the video
            partial.mkdir(parents=True, exist_ok=True)
            _save_maps(partial, f"frame_{index:06d}", result.saliency, maps)

    writer = ThreadedWriter(write)
    frames = 0
    try:
        for frame, result in tqdm(engine.stream(source, smoothing=smoothing, batch_size=batch_size),
                                  desc=path.name, unit="frame", disable=not progress, file=sys.stderr):
            writer.put(frame, result, frames)
            frames += 1
        writer.close()
    except BaseException:
        writer.abort()  # the encode thread stops before the sink and the partial maps go
        sink.close(keep=False)
        shutil.rmtree(partial, ignore_errors=True)
        raise
    summary.skipped_frames += source.skipped
    if frames == 0:
        sink.close(keep=False)
        summary.skipped_inputs.append(str(path))
        log.warning("%s: no decodable frames, skipped", path)
        return 0
    sink.close()
    summary.written.append(sink.path)
    if maps:
        shutil.rmtree(maps_dir, ignore_errors=True)
        partial.replace(maps_dir)
        summary.written.append(maps_dir)
    return frames
