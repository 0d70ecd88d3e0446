"""Video around a SaliencyEngine: sources, sinks, a threaded decode -> infer -> encode pipeline, EMA smoothing and
colormap overlays.

Sources: a video file (OpenCV, or PyAV when OpenCV cannot open it and PyAV is installed), a camera index, an
RTSP/HTTP URL or GStreamer pipeline string (anything with ``!``), or a folder of images. Queues are bounded, so
memory stays flat however long the video; a live source drops its oldest queued frame instead of blocking the
camera. Frames that fail to decode are skipped and counted.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from akd import util
from akd.util import AkdError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = util.IMAGE_EXTENSIONS - {".gif"}  # OpenCV cannot decode GIF
VIDEO_EXTENSIONS = util.VIDEO_EXTENSIONS
_END = object()


@dataclass
class Source:
    """Iterates (index, BGR frame) pairs; counts frames that failed to decode in ``skipped``."""

    name: str
    frames: Iterator[tuple[int, np.ndarray]]
    fps: float
    live: bool
    skipped: int = 0
    counters: dict[str, int] = field(default_factory=dict)


def _capture_frames(capture, name: str, source: Source, expected: int) -> Iterator[tuple[int, np.ndarray]]:
    index, failures = 0, 0
    try:
        while True:
            ok, frame = capture.read()
            if ok and frame is not None:
                failures = 0
                yield index, frame
                index += 1
                continue
            # A failed read before the known end is a corrupt frame: skip it, give up after 30 in a row
            if expected and index < expected and failures < 30:
                failures += 1
                source.skipped += 1
                index += 1
                log.warning("%s: frame %d failed to decode, skipped", name, index)
                continue
            return
    finally:
        capture.release()


def _pyav_frames(path: str, source: Source) -> Iterator[tuple[int, np.ndarray]]:
    import av

    with av.open(path) as container:
        for index, frame in enumerate(container.decode(video=0)):
            try:
                yield index, frame.to_ndarray(format="bgr24")
            except (ValueError, av.error.FFmpegError):
                source.skipped += 1


def read_image(path: str | Path) -> np.ndarray | None:
    """A BGR image, or None (warned, naming the file) when it is unreadable or its header claims more pixels than
    OpenCV decodes (a decompression bomb): a caller skips and counts it, and the files after it still run."""
    try:
        with util.native_messages(path):
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        reason = "too many pixels" if "MAX_IMAGE_PIXELS" in str(exc) else str(exc).strip().splitlines()[-1]
        log.warning("%s: unreadable image (%s), skipped", path, reason)
        return None
    if frame is None:
        log.warning("%s: unreadable image, skipped", path)
    return frame


def _folder_frames(files: list[Path], source: Source) -> Iterator[tuple[int, np.ndarray]]:
    for index, path in enumerate(files):
        frame = read_image(path)
        if frame is None:
            source.skipped += 1
            continue
        yield index, frame


def has_gstreamer() -> bool:
    """Whether this OpenCV build can open GStreamer pipelines (the pip wheels cannot)."""
    return any(line.split(":")[-1].strip().startswith("YES") for line in cv2.getBuildInformation().splitlines()
               if line.strip().startswith("GStreamer"))


def open_source(spec, live: bool | None = None) -> Source:
    """Open what ``spec`` names (see module docstring)."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        capture = cv2.VideoCapture(int(spec))
        if not capture.isOpened():
            raise AkdError(f"camera {spec}: cannot be opened")
        fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
        source = Source(f"camera {spec}", iter(()), fps, True if live is None else live)
        source.frames = _capture_frames(capture, source.name, source, 0)
        return source
    spec = str(spec)
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise AkdError(f"{spec}: no images in folder")
        source = Source(spec, iter(()), 0.0, bool(live))
        source.frames = _folder_frames(files, source)
        return source
    stream = "://" in spec or "!" in spec
    if not stream and not path.is_file():
        raise AkdError(f"{spec}: no such file, folder, camera or stream")
    if "!" in spec and not has_gstreamer():
        raise AkdError(f"{spec}: a GStreamer pipeline, but this OpenCV has no GStreamer (opencv-python-headless "
                       "never does); use an OpenCV built with GStreamer, or give the RTSP/HTTP URL or file itself")
    api = cv2.CAP_GSTREAMER if "!" in spec else cv2.CAP_ANY
    with util.native_messages(spec):
        capture = cv2.VideoCapture(spec, api)
    if capture.isOpened():
        expected = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if not stream else 0
        source = Source(spec, iter(()), capture.get(cv2.CAP_PROP_FPS) or 30.0, stream if live is None else live)
        source.frames = _capture_frames(capture, spec, source, max(expected, 0))
        return source
    capture.release()
    try:
        import av  # noqa: F401 - optional fallback decoder
    except ImportError:
        raise AkdError(f"{spec}: OpenCV cannot decode this video (and PyAV is not installed)") from None
    source = Source(spec, iter(()), 30.0, bool(live))
    try:
        source.frames = _pyav_frames(spec, source)
        return source
    except Exception as exc:  # noqa: BLE001 - PyAV raises many types
        raise AkdError(f"{spec}: unreadable video ({exc})") from None


def _decode_into(source: Source, frames: queue.Queue, stop: threading.Event) -> None:
    """Decoder thread: bounded queue; live sources drop the oldest frame rather than block."""
    try:
        for item in source.frames:
            if stop.is_set():
                break
            if source.live:
                while True:
                    try:
                        frames.put_nowait(item)
                        break
                    except queue.Full:
                        try:
                            frames.get_nowait()
                            source.counters["dropped"] = source.counters.get("dropped", 0) + 1
                        except queue.Empty:
                            pass
            else:
                while not stop.is_set():
                    try:
                        frames.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
    except Exception as exc:  # noqa: BLE001 - a decoder crash ends the stream with a message, not a hang
        log.warning("%s: decoding stopped (%s)", source.name, exc)
    finally:
        frames.put(_END)


def explain_stream(engine, source: Source, smoothing: float = 0.0, queue_size: int = 4,
                   batch_size: int = 1) -> Iterator[tuple[np.ndarray, object]]:
    """Decode in a thread, infer here, yield (frame, result); EMA-smooth the maps when ``smoothing`` > 0."""
    if not 0.0 <= smoothing < 1.0:
        raise AkdError(f"smoothing must be in [0, 1), not {smoothing}")
    batch_size = max(1, min(batch_size, engine.info.max_batch))  # a chunk is one model batch
    frames: queue.Queue = queue.Queue(maxsize=max(queue_size, batch_size))
    stop = threading.Event()
    decoder = threading.Thread(target=_decode_into, args=(source, frames, stop), daemon=True)
    decoder.start()
    previous: np.ndarray | None = None
    held: deque[list[np.ndarray]] = deque()  # frames of the chunks in flight, to pair with their results

    def chunks() -> Iterator[list[np.ndarray]]:
        item = None
        while item is not _END:
            batch = []
            item = frames.get()
            while item is not _END:
                batch.append(item[1])
                if len(batch) == batch_size:
                    break
                try:
                    item = frames.get_nowait() if not source.live else frames.get(timeout=0.001)
                except queue.Empty:
                    break
            if batch:
                held.append(batch)
                yield batch

    try:
        for results in engine.explain_batches(chunks()):
            for frame, result in zip(held.popleft(), results, strict=True):
                if smoothing and previous is not None and previous.shape == result.saliency.shape:
                    result.saliency = smoothing * previous + (1.0 - smoothing) * result.saliency
                previous = result.saliency
                yield frame, result
    finally:
        stop.set()
        while decoder.is_alive():  # unblock a decoder waiting on a full queue
            try:
                frames.get_nowait()
            except queue.Empty:
                decoder.join(timeout=0.05)


def overlay(frame: np.ndarray, result, alpha: float = 0.45, colormap: int | None = None, caption: bool = True,
            color: str = "bgr") -> np.ndarray:
    """Blend a colour-mapped saliency map over the frame (same colour order as the frame) with a caption."""
    heat = cv2.applyColorMap((np.clip(result.saliency, 0, 1) * 255).astype(np.uint8),
                             cv2.COLORMAP_JET if colormap is None else colormap)
    if color == "rgb":
        heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    blended = cv2.addWeighted(frame, 1.0 - alpha, heat, alpha, 0.0)
    if caption:
        text = f"{result.label} {result.score:.2f}"
        scale = max(0.4, frame.shape[1] / 900)
        cv2.putText(blended, text, (8, int(24 * scale + 6)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 4,
                    cv2.LINE_AA)
        cv2.putText(blended, text, (8, int(24 * scale + 6)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return blended


class VideoSink:
    """Writes BGR frames to a video file (mp4v for .mp4/.mov, MJPG otherwise) through a temp file + rename."""

    def __init__(self, path: str | Path, fps: float):
        self.path, self.fps = Path(path), fps or 25.0
        self.tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.writer = None

    def write(self, frame: np.ndarray) -> None:
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fourcc = "mp4v" if self.path.suffix.lower() in (".mp4", ".mov", ".m4v") else "MJPG"
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*fourcc), self.fps,
                                          (frame.shape[1], frame.shape[0]))
            if not self.writer.isOpened():
                raise AkdError(f"{self.path}: cannot open a video writer for this format")
        self.writer.write(frame)

    def close(self, keep: bool = True) -> None:
        if self.writer is not None:
            self.writer.release()
            if keep:
                self.tmp.replace(self.path)
        self.tmp.unlink(missing_ok=True)


class ThreadedWriter:
    """Encode in a background thread behind a bounded queue (backpressure on the producer)."""

    def __init__(self, write, size: int = 8):
        self.queue: queue.Queue = queue.Queue(maxsize=size)
        self.error: BaseException | None = None
        self.aborted = False
        self.thread = threading.Thread(target=self._run, args=(write,), daemon=True)
        self.thread.start()

    def _run(self, write) -> None:
        while (item := self.queue.get()) is not _END:
            if self.error is None and not self.aborted:
                try:
                    write(*item)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the producer's thread
                    self.error = exc

    def put(self, *item) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(item)

    def close(self) -> None:
        self.queue.put(_END)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """Drop what is still queued and wait for the thread: after this nothing writes any more, so the caller
        may release the sink and remove partial outputs (releasing a VideoWriter mid-write crashes OpenCV)."""
        self.aborted = True
        self.queue.put(_END)
        self.thread.join()


def demo_clip(path: str | Path, frames: int = 150, size: tuple[int, int] = (640, 480), fps: float = 30.0) -> Path:
    """A sample video with no download: a camera panning over scikit-image's bundled astronaut photo."""
    import skimage.data

    width, height = size
    photo = cv2.resize(cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR), (2 * width, 2 * height))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    for index in range(frames):
        x = int(width / 2 * (1 + np.sin(index / 25)))
        y = int(height / 2 * (1 + np.cos(index / 31)))
        writer.write(np.ascontiguousarray(photo[y:y + height, x:x + width]))
    writer.release()
    return path
