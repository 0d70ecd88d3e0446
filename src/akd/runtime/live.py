"""``akd-serve``: live saliency over HTTP. One pipeline thread reads the SOURCE it was started with, explains each
frame once and keeps the latest overlay as a JPEG; every viewer streams that latest frame (MJPEG,
``multipart/x-mixed-replace``), so a slow viewer skips frames and never slows the pipeline, and the model runs
once per frame whatever the number of viewers. No request names a file: the server reads only its SOURCE.
Starlette and uvicorn (the ``live`` extra) are imported only here."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import cv2

from akd.util import AkdError

MAX_VIEWERS = 8
MAX_REQUEST_BYTES = 1024  # a control request is a few numbers
BOUNDARY = "akdframe"


@dataclass
class LiveState:
    """What the page shows; replaced, never mutated, so a reader always sees one frame's numbers."""

    sequence: int = 0
    jpeg: bytes = b""
    label: str = ""
    top: list[dict[str, Any]] = field(default_factory=list)
    stage_ms: dict[str, float] = field(default_factory=dict)
    fps: float = 0.0
    state: str = "starting"  # starting | running | paused | ended | failed
    message: str = ""


class LivePipeline:
    """Explains SOURCE frame by frame on its own thread; ``latest`` is the newest frame's state."""

    def __init__(self, engine, source: str, opacity: float = 0.45, cycle: bool | None = None):
        self.engine, self.source, self.opacity = engine, source, opacity
        self.cycle = Path(source).is_dir() if cycle is None else cycle  # a folder of images plays in a loop
        self.latest = LiveState()
        self.model_calls = 0
        self.changed = threading.Condition()
        self.running = threading.Event()
        self.running.set()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="akd-live", daemon=True)

    def start(self) -> LivePipeline:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.running.set()
        self.thread.join(timeout=10)

    def set_paused(self, paused: bool) -> None:
        (self.running.clear if paused else self.running.set)()
        self._publish(state="paused" if paused else "running")

    def _publish(self, **changes: Any) -> None:
        with self.changed:
            self.latest = LiveState(**{**self.latest.__dict__, **changes})
            self.changed.notify_all()

    def _run(self) -> None:
        try:
            while not self.stopped.is_set():
                self._play_once()
                if not self.cycle:
                    break
            if not self.stopped.is_set():
                self._publish(state="ended", message=f"{self.source}: the source ended")
        except AkdError as exc:
            self._publish(state="failed", message=str(exc))
        except Exception as exc:  # noqa: BLE001 - whatever a decoder or backend raises, the page must say so
            self._publish(state="failed", message=f"{self.source}: {type(exc).__name__}: {exc}")

    def _play_once(self) -> None:
        last = time.perf_counter()
        for frame, result in self.engine.stream(self.source):
            self.running.wait()
            if self.stopped.is_set():
                return
            self.model_calls += 1
            now = time.perf_counter()
            fps = 1.0 / max(now - last, 1e-6)
            last = now
            ok, jpeg = cv2.imencode(".jpg", self.engine.overlay(frame, result, alpha=self.opacity),
                                    [cv2.IMWRITE_JPEG_QUALITY, 80])
            if not ok:
                raise AkdError(f"{self.source}: a frame could not be encoded as JPEG")
            smoothed = fps if not self.latest.fps else 0.9 * self.latest.fps + 0.1 * fps
            self._publish(sequence=self.latest.sequence + 1, jpeg=jpeg.tobytes(), label=result.label,
                          top=[{"id": c, "label": label, "probability": round(p, 4)} for c, label, p in result.top],
                          stage_ms={k: round(v, 2) for k, v in result.stage_ms.items()}, fps=round(smoothed, 2),
                          state="paused" if not self.running.is_set() else "running")

    def wait_newer(self, sequence: int, timeout: float = 1.0) -> LiveState:
        with self.changed:
            self.changed.wait_for(lambda: self.latest.sequence > sequence or self.latest.state in ("ended", "failed"),
                                  timeout=timeout)
            return self.latest


def status(pipeline: LivePipeline, viewers: int) -> dict[str, Any]:
    state = pipeline.latest
    return {"state": state.state, "message": state.message, "frames": state.sequence, "fps": state.fps,
            "top": state.top, "label": state.label, "stage_ms": state.stage_ms, "opacity": pipeline.opacity,
            "model_calls": pipeline.model_calls, "viewers": viewers, "source": pipeline.source}


def apply_control(pipeline: LivePipeline, body: bytes) -> None:
    """A control request's JSON object: ``opacity`` in [0, 1] and/or ``paused``."""
    changes = json.loads(body or b"{}")
    if not isinstance(changes, dict):
        raise ValueError("not an object")
    if "opacity" in changes:
        opacity = float(changes["opacity"])
        if not 0.0 <= opacity <= 1.0:
            raise ValueError("opacity must be in [0, 1]")
        pipeline.opacity = opacity
    if "paused" in changes:
        pipeline.set_paused(bool(changes["paused"]))


def create_app(pipeline: LivePipeline, max_viewers: int = MAX_VIEWERS):
    """The Starlette app: the page, its MJPEG stream, a JSON status and a small control endpoint."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    page = resources.files("akd.runtime").joinpath("live.html").read_text()
    viewers = {"count": 0}

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def stream(request: Request) -> Response:
        if viewers["count"] >= max_viewers:
            return Response(f"at most {max_viewers} viewers", status_code=503)
        viewers["count"] += 1

        async def frames():
            sequence = 0
            try:
                while True:
                    state = await asyncio.to_thread(pipeline.wait_newer, sequence)
                    if state.sequence > sequence and state.jpeg:
                        sequence = state.sequence
                        yield (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(state.jpeg)}"
                               "\r\n\r\n").encode() + state.jpeg + b"\r\n"
                    elif state.state in ("ended", "failed"):
                        return
                    if await request.is_disconnected():
                        return
            finally:
                viewers["count"] -= 1

        return StreamingResponse(frames(), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                                 headers={"Cache-Control": "no-store"})

    async def get_status(request: Request) -> Response:
        return JSONResponse(status(pipeline, viewers["count"]), headers={"Cache-Control": "no-store"})

    async def control(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_REQUEST_BYTES:
            return JSONResponse({"error": "request too large"}, status_code=413)
        try:
            apply_control(pipeline, body)
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(status(pipeline, viewers["count"]))

    return Starlette(routes=[Route("/", index), Route("/stream.mjpg", stream), Route("/status", get_status),
                             Route("/control", control, methods=["POST"])])
