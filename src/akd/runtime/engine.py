"""``SaliencyEngine``: frames in (uint8 HxWx3, any size, BGR by default), per-frame saliency at frame resolution,
class id, label and score out - over any backend.

Resize/crop policy: ``fit="letterbox"`` by default (aspect kept, mean-colour padding, the whole frame explained);
``"crop"`` reproduces the model's training preprocessing; ``"stretch"`` scales each axis. The saliency is mapped
back through the same affine placement (see ``akd.runtime.geometry``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from akd import contract
from akd.contract import CLASS_ID, LOGITS, SALIENCY, SCORE
from akd.runtime.backends import Inference, ModelInfo, Runner, open_runner
from akd.runtime.geometry import FITS, Placement, place, to_frame, to_model
from akd.util import AkdError


@dataclass
class Result:
    saliency: np.ndarray  # (H, W) float32 in [0,1], at the frame's resolution
    class_id: int
    label: str
    score: float
    saliency_model: np.ndarray | None = None  # (h, w) at model resolution, when asked for
    placement: Placement | None = field(default=None, repr=False)
    stage_ms: dict[str, float] = field(default_factory=dict, repr=False)  # its batch's stage times
    top: list[tuple[int, str, float]] = field(default_factory=list, repr=False)  # (class, label, probability)


def default_model() -> str:
    """The model ``SaliencyEngine.load()`` uses when none is given: the surrogate shipped inside the package."""
    from importlib import resources

    shipped = resources.files("akd").joinpath("assets/efficientnet_lite0_surrogate.safetensors")
    if not shipped.is_file():
        raise AkdError("no model given and this akd build ships no default surrogate; pass a .onnx, .engine or "
                       ".safetensors model")
    return str(shipped)


class SaliencyEngine:
    """One loaded model; thread-safe (backends serialise or are re-entrant), reusable for images and video."""

    def __init__(self, runner: Runner, fit: str = "letterbox", color: str = "bgr"):
        if fit not in FITS:
            raise AkdError(f"fit must be one of {', '.join(FITS)}, not '{fit}'")
        if color not in ("bgr", "rgb"):
            raise AkdError(f"color must be 'bgr' or 'rgb', not '{color}'")
        self.runner, self.fit, self.color = runner, fit, color
        info: ModelInfo = runner.info
        self.info = info
        self.classes = list(info.config["classes"])
        pre = info.config["preprocessing"]
        self.scale, self.offset = contract.normalisation(pre["mean"], pre["std"])  # normalised = pixel*scale-offset
        self.crop_pct = float(pre.get("crop_pct", 0.875))
        self.pad_rgb = tuple(int(round(m * 255)) for m in pre["mean"])

    @classmethod
    def load(cls, model: str | None = None, backend: str = "auto", device: str = "auto", fit: str = "letterbox",
             color: str = "bgr", **options) -> SaliencyEngine:
        """``model``: a fused .onnx graph, a TensorRT .engine (with its sidecar) or a .safetensors surrogate."""
        return cls(open_runner(model or default_model(), backend, device, **options), fit, color)

    # ---- frames -> model batch ------------------------------------------------------------------------
    def _check(self, frame, index: int) -> np.ndarray:
        if not isinstance(frame, np.ndarray):
            raise AkdError(f"frame {index}: expected a numpy array, got {type(frame).__name__}")
        if frame.dtype != np.uint8:
            nan = " (it contains NaN)" if np.issubdtype(frame.dtype, np.floating) and np.isnan(frame).any() else ""
            raise AkdError(f"frame {index}: expected uint8 pixels, got {frame.dtype}{nan}")
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise AkdError(f"frame {index}: expected shape HxWx3, got {frame.shape}")
        if frame.shape[0] == 0 or frame.shape[1] == 0:
            raise AkdError(f"frame {index}: empty frame {frame.shape}")
        return frame

    def preprocess(self, frames: Sequence[np.ndarray]) -> tuple[np.ndarray, list[Placement]]:
        """Frames -> one batch in the model's input format, plus each frame's placement."""
        placements, images = [], []
        size = self.info.size
        pad = self.pad_rgb[::-1] if self.color == "bgr" else self.pad_rgb
        for index, frame in enumerate(frames):
            frame = self._check(frame, index)
            placement = place(frame.shape[:2], size, self.fit, self.crop_pct)
            images.append(to_model(frame, placement, pad))  # colour order swapped on the small image below
            placements.append(placement)
        swap = self.color == "bgr"
        if self.info.input_format == "uint8-nhwc":
            batch = np.stack(images)
            return (np.ascontiguousarray(batch[..., ::-1]) if swap else batch), placements
        blob = cv2.dnn.blobFromImages(images, 1.0, swapRB=swap)  # NCHW float32 in one pass
        blob *= self.scale
        blob -= self.offset
        return blob, placements

    def _results(self, outputs: dict[str, np.ndarray], placements: list[Placement],
                 model_resolution: bool) -> list[Result]:
        saliency_maps, class_ids, scores = outputs[SALIENCY], outputs[CLASS_ID], outputs[SCORE]
        if not np.isfinite(saliency_maps).all() or not np.isfinite(scores).all():
            raise AkdError(f"{self.info.source}: the model returned non-finite saliency or scores (NaN/inf); "
                           "its weights are corrupt or its precision overflowed")
        results = []
        for index, placement in enumerate(placements):
            saliency = saliency_maps[index, 0]
            class_id = int(class_ids[index])
            label = self.classes[class_id] if 0 <= class_id < len(self.classes) else str(class_id)
            results.append(Result(to_frame(saliency, placement), class_id, label, float(scores[index]),
                                  saliency.copy() if model_resolution else None, placement,
                                  top=self._top(outputs[LOGITS][index])))
        return results

    def _top(self, logits: np.ndarray, count: int = 5) -> list[tuple[int, str, float]]:
        """The ``count`` most probable classes of the surrogate's logits (the deciding class is ``class_id``)."""
        shifted = np.exp(logits.astype(np.float64) - logits.max())
        probabilities = shifted / shifted.sum()
        best = np.argsort(-probabilities)[:count]
        return [(int(c), self.classes[c] if c < len(self.classes) else str(c), float(probabilities[c])) for c in best]

    def explain(self, frames: np.ndarray | Sequence[np.ndarray], model_resolution: bool = False
                ) -> Result | list[Result]:
        """One frame -> one Result; a list or (N,H,W,3) array -> a list, split into the model's maximum batch."""
        if isinstance(frames, np.ndarray) and frames.ndim == 2:
            raise AkdError(f"expected a colour frame HxWx3, got a 2-D array {frames.shape}; convert grayscale "
                           "with cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)")
        if not isinstance(frames, (np.ndarray, list, tuple)):
            raise AkdError(f"expected a uint8 HxWx3 numpy frame or a list of them, got {type(frames).__name__}")
        single = isinstance(frames, np.ndarray) and frames.ndim == 3
        batch_frames = [frames] if single else list(frames)
        if not batch_frames:
            raise AkdError("no frames given")
        step = max(1, self.info.max_batch)
        chunks = [batch_frames[start:start + step] for start in range(0, len(batch_frames), step)]
        if len(chunks) == 1:  # nothing to overlap with: one call on this thread
            results = self._explain_now(chunks[0], model_resolution)
        else:
            results = [result for chunk in self.explain_batches(chunks, model_resolution) for result in chunk]
        return results[0] if single else results

    def _explain_now(self, chunk: Sequence[np.ndarray], model_resolution: bool) -> list[Result]:
        t0 = time.perf_counter()
        batch, placements = self.preprocess(chunk)
        t1 = time.perf_counter()
        return self._finish(self.runner.infer(batch), placements, t0, t1, model_resolution)

    def explain_batches(self, chunks: Iterable[Sequence[np.ndarray]], model_resolution: bool = False
                        ) -> Iterator[list[Result]]:
        """Each chunk's results, in order, with as many chunks in flight as the runner holds (the CUDA pipelines'
        slots, onnxruntime's worker thread: 2): chunk i+1 is preprocessed (and copied to the device) while chunk
        i computes, and on a GPU small batches of several slots run side by side. Each chunk must fit the
        model's maximum batch."""
        depth = max(1, self.runner.in_flight)
        if depth == 1:
            yield from (self._explain_now(chunk, model_resolution) for chunk in chunks)
            return
        pending: deque[tuple[Any, list[Placement], float, float]] = deque()

        def finish(handle, placements, t0, t1):
            return self._finish(self.runner.collect(handle), placements, t0, t1, model_resolution)

        for chunk in chunks:
            t0 = time.perf_counter()
            batch, placements = self.preprocess(chunk)
            t1 = time.perf_counter()
            pending.append((self.runner.submit(batch), placements, t0, t1))
            if len(pending) == depth:
                yield finish(*pending.popleft())
        while pending:
            yield finish(*pending.popleft())

    def _finish(self, inference: Inference, placements: list[Placement], t0: float, t1: float,
                model_resolution: bool) -> list[Result]:
        """A batch's results; ``t0``/``t1``: when its preprocessing started and ended."""
        t2 = time.perf_counter()
        results = self._results(inference.outputs, placements, model_resolution)
        stage_ms = {"preprocess": (t1 - t0) * 1e3, **inference.stage_ms, "infer_total": (t2 - t1) * 1e3,
                    "postprocess": (time.perf_counter() - t2) * 1e3}  # per call: threads never mix them
        for result in results:
            result.stage_ms = stage_ms
        return results

    __call__ = explain

    # ---- video ------------------------------------------------------------------------------------------
    def stream(self, source, smoothing: float = 0.0, live: bool | None = None, queue_size: int = 4,
               batch_size: int = 1) -> Iterator[tuple[np.ndarray, Result]]:
        """Frames of a video file, camera index, RTSP/GStreamer string or image folder, with their results.

        Decoding and inference run in separate threads with bounded queues; live sources (cameras, streams)
        drop the oldest frame instead of blocking. ``smoothing`` in [0,1) is the EMA weight of the previous map.
        """
        from akd.runtime.video import Source, explain_stream, open_source

        opened = source if isinstance(source, Source) else open_source(source, live)
        yield from explain_stream(self, opened, smoothing, queue_size, batch_size)

    def overlay(self, frame: np.ndarray, result: Result, alpha: float = 0.45, colormap: int | None = None,
                caption: bool = True) -> np.ndarray:
        from akd.runtime.video import overlay

        return overlay(frame, result, alpha, colormap, caption, self.color)

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> SaliencyEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
