"""``akd-explain``: images, folders and videos -> overlay images/videos (+ optional raw maps), with a progress bar
and a summary. Unreadable images, videos and frames are skipped and counted, never fatal."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from akd.runtime.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, ThreadedWriter, VideoSink, open_source
from akd.util import AkdError, atomic_path

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


def collect_inputs(inputs: list[str]) -> tuple[list[Path], list[Path], list[str]]:
    """(images, videos, missing): folders expand to the images and videos inside them, sorted."""
    images, videos, missing = [], [], []
    for item in inputs:
        path = Path(item)
        candidates = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        if not path.exists():
            missing.append(item)
            continue
        for candidate in candidates:
            suffix = candidate.suffix.lower()
            if suffix in IMAGE_EXTENSIONS:
                images.append(candidate)
            elif suffix in VIDEO_EXTENSIONS:
                videos.append(candidate)
            elif not path.is_dir():
                missing.append(f"{item} (not an image or video)")
    return images, videos, missing


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
    one machine or many, e.g. all feeding one Triton server) split a file list without coordination."""
    images, videos, missing = collect_inputs(inputs)
    index, count = shard
    images, videos = images[index::count], videos[index::count]
    summary = Summary(skipped_inputs=list(missing))
    for item in missing:
        log.warning("%s: not found or not an image/video, skipped", item)
    if not images and not videos:
        raise AkdError("no images or videos to explain in " + ", ".join(inputs))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tqdm(total=len(images), desc="images", unit="img", disable=not progress or not images,
              file=sys.stderr) as bar:
        for path in images:
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            bar.update()
            if frame is None:
                summary.skipped_inputs.append(str(path))
                log.warning("%s: unreadable image, skipped", path)
                continue
            result = engine.explain(frame)
            target = out_dir / f"{path.stem}.overlay.png"
            _write_image(target, engine.overlay(frame, result))
            summary.written += [target, *_save_maps(out_dir, path.stem, result.saliency, maps)]
            summary.frames += 1
            summary.images += 1
    for path in videos:
        try:
            source = open_source(str(path), live=False)
        except AkdError as exc:
            summary.skipped_inputs.append(str(path))
            log.warning("%s", exc)
            continue
        sink = VideoSink(out_dir / f"{path.stem}.overlay.mp4", source.fps)
        maps_dir = out_dir / f"{path.stem}.saliency"

        def write(frame, result, index, sink=sink, maps_dir=maps_dir):
            sink.write(engine.overlay(frame, result))
            if maps:  # one file per frame keeps memory flat however long the video
                maps_dir.mkdir(exist_ok=True)
                _save_maps(maps_dir, f"frame_{index:06d}", result.saliency, maps)

        writer = ThreadedWriter(write)
        frames = 0
        try:
            for frame, result in tqdm(engine.stream(source, smoothing=smoothing, batch_size=batch_size),
                                      desc=path.name, unit="frame", disable=not progress, file=sys.stderr):
                writer.put(frame, result, frames)
                frames += 1
            writer.close()
        except BaseException:
            sink.close(keep=False)
            raise
        summary.skipped_frames += source.skipped
        if frames == 0:
            sink.close(keep=False)
            summary.skipped_inputs.append(str(path))
            log.warning("%s: no decodable frames, skipped", path)
            continue
        sink.close()
        summary.written += [sink.path] + ([maps_dir] if maps else [])
        summary.frames += frames
        summary.videos += 1
    summary.seconds = time.perf_counter() - started
    return summary
