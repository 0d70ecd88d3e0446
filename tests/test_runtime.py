import os
import threading
import time

import cv2
import numpy as np
import pytest

from akd.runtime import SaliencyEngine
from akd.runtime.backends import ModelInfo, Runner
from akd.runtime.geometry import place, to_frame, to_model
from akd.util import AkdError

from conftest import tiny_surrogate_config


class BrightnessRunner(Runner):
    """A fake backend: saliency = normalised brightness of the model input, class = 0. Lets geometry be tested
    independently of any network (the base class's lifecycle and input checks are real)."""

    def __init__(self, size=64, input_format="float-nchw", max_batch=32):
        config = tiny_surrogate_config(size=size)
        self.info = ModelInfo(config, input_format, max_batch, "fp32", "fake")
        self.calls = []

    def _infer(self, batch):
        self.calls.append(len(batch))
        if self.info.input_format == "uint8-nhwc":
            brightness = batch.astype(np.float32).mean(axis=3) / 255.0
        else:
            brightness = (batch * 0.25 + 0.5).mean(axis=1)
        n = len(batch)
        return {"saliency": brightness[:, None].astype(np.float32), "logits": np.zeros((n, 10), np.float32),
                "class_id": np.zeros(n, np.int32), "score": np.ones(n, np.float32)}, {"compute": 0.0}


def _corner_frame(h=240, w=400, corner="top-right"):
    frame = np.zeros((h, w, 3), np.uint8)
    ys = slice(0, h // 4) if corner.startswith("top") else slice(3 * h // 4, h)
    xs = slice(3 * w // 4, w) if corner.endswith("right") else slice(0, w // 4)
    frame[ys, xs] = 255
    return frame, ys, xs


@pytest.mark.parametrize("fit", ["letterbox", "stretch"])
@pytest.mark.parametrize("corner", ["top-right", "bottom-left"])
def test_saliency_is_projected_back_onto_the_frame(fit, corner):
    engine = SaliencyEngine(BrightnessRunner(), fit=fit)
    frame, ys, xs = _corner_frame(corner=corner)
    result = engine.explain(frame)
    assert result.saliency.shape == frame.shape[:2]
    inside = result.saliency[ys, xs].mean()
    outside = np.delete(result.saliency.reshape(-1), np.flatnonzero(frame[..., 0].reshape(-1))).mean()
    assert inside > 0.9 and outside < 0.1
    peak_y, peak_x = np.unravel_index(np.argmax(cv2.blur(result.saliency, (15, 15))), result.saliency.shape)
    assert ys.start <= peak_y < ys.stop and xs.start <= peak_x < xs.stop


def test_crop_policy_zeroes_what_the_model_never_saw():
    engine = SaliencyEngine(BrightnessRunner(), fit="crop")
    frame = np.full((100, 300, 3), 255, np.uint8)
    result = engine.explain(frame, model_resolution=True)
    assert result.saliency_model.shape == (64, 64)
    assert result.saliency[:, :60].max() == 0 and result.saliency[:, -60:].max() == 0  # cropped away
    assert result.saliency[10:90, 120:180].min() > 0.9  # the centre crop (rows 7..94, columns 107..194)


def test_placement_round_trip_is_consistent():
    frame = (np.random.default_rng(0).random((90, 160)) * 255).astype(np.uint8)
    frame = cv2.GaussianBlur(frame, (0, 0), 6)
    rgb = np.repeat(frame[..., None], 3, axis=2)
    for fit in ("letterbox", "stretch"):
        placement = place(frame.shape, (64, 64), fit)
        model = to_model(rgb, placement, (0, 0, 0))[..., 0].astype(np.float32)
        back = to_frame(model, placement)
        assert np.abs(back - frame).mean() < 6.0, fit


def test_uint8_graph_input_and_rgb_frames():
    runner = BrightnessRunner(input_format="uint8-nhwc")
    engine = SaliencyEngine(runner, color="rgb")
    frame, ys, xs = _corner_frame()
    batch, _ = engine.preprocess([frame])
    assert batch.dtype == np.uint8 and batch.shape == (1, 64, 64, 3)
    assert engine.explain(frame).saliency[ys, xs].mean() > 0.9


def test_batches_are_split_to_the_model_maximum():
    runner = BrightnessRunner(max_batch=3)
    engine = SaliencyEngine(runner)
    frames = [_corner_frame(h=50 + 10 * i, w=80)[0] for i in range(7)]
    results = engine.explain(frames)
    assert runner.calls == [3, 3, 1] and len(results) == 7
    for frame, result in zip(frames, results, strict=True):
        assert result.saliency.shape == frame.shape[:2]
        np.testing.assert_allclose(result.saliency, engine.explain(frame).saliency, atol=1e-6)


@pytest.mark.parametrize("bad,fragment", [
    (np.zeros((10, 10, 3), np.float32), "expected uint8"),
    (np.full((10, 10, 3), np.nan, np.float32), "NaN"),
    (np.zeros((10, 10), np.uint8), "HxWx3"),
    (np.zeros((0, 10, 3), np.uint8), "empty"),
    ("not a frame", "numpy array"),
])
def test_bad_frames_are_clear_errors(bad, fragment):
    with pytest.raises(AkdError, match=fragment):
        SaliencyEngine(BrightnessRunner()).explain([bad])
    with pytest.raises(AkdError, match="no frames"):
        SaliencyEngine(BrightnessRunner()).explain([])


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    from akd.deploy.exporter import ExportOptions, export

    out = tmp_path_factory.mktemp("runtime") / "tiny.onnx"
    export(ExportOptions(str(tiny_checkpoint), str(out), precision="fp32", verify=False))
    return out


def _frames(count, seed=0):
    """Blurred noise over a random colour per frame: the tiny surrogate predicts several classes over them."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        noise = cv2.GaussianBlur(rng.integers(0, 255, (120 + 8 * i, 160, 3), dtype=np.uint8), (0, 0), 3)
        tint = rng.integers(0, 255, 3)
        frames.append(np.clip(noise * 0.5 + tint * 0.5, 0, 255).astype(np.uint8))
    return frames


def test_onnxruntime_and_torch_backends_agree(tiny_checkpoint, exported):
    frames = _frames(8)
    onnx_results = SaliencyEngine.load(str(exported)).explain(frames)
    torch_results = SaliencyEngine.load(str(tiny_checkpoint), device="cpu").explain(frames)
    assert len({r.class_id for r in torch_results}) >= 2  # class agreement below is not vacuous
    for a, b in zip(onnx_results, torch_results, strict=True):
        np.testing.assert_allclose(a.saliency, b.saliency, atol=1e-4)
        assert a.class_id == b.class_id and a.label == b.label and a.score == pytest.approx(b.score, abs=1e-4)


@pytest.mark.parametrize("which", ["onnx", "torch"])
def test_one_engine_shared_by_eight_threads(tiny_checkpoint, exported, which):
    engine = SaliencyEngine.load(str(exported if which == "onnx" else tiny_checkpoint))
    frames = _frames(16, seed=3)
    expected = [engine.explain(f) for f in frames]
    got: dict[int, object] = {}

    def work(worker):
        for index in range(worker, len(frames), 8):
            got[index] = engine.explain(frames[index])

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, result in enumerate(expected):
        np.testing.assert_array_equal(got[index].saliency, result.saliency)
        assert got[index].class_id == result.class_id


def _write_clip(path, frames=20, size=(160, 120)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    for index in range(frames):
        frame = np.zeros((size[1], size[0], 3), np.uint8)
        cv2.circle(frame, (10 + index * 6, 60), 15, (255, 255, 255), -1)
        writer.write(frame)
    writer.release()


def test_video_stream_round_trip_and_smoothing(exported, tmp_path):
    clip = tmp_path / "clip.avi"
    _write_clip(clip)
    engine = SaliencyEngine.load(str(exported))
    pairs = list(engine.stream(str(clip)))
    assert len(pairs) == 20 and all(r.saliency.shape == (120, 160) for _, r in pairs)
    raw = [r.saliency for _, r in engine.stream(str(clip), batch_size=4)]
    smooth = [r.saliency for _, r in engine.stream(str(clip), smoothing=0.8)]
    np.testing.assert_allclose(raw[0], smooth[0], atol=1e-6)
    np.testing.assert_allclose(smooth[1], 0.8 * smooth[0] + 0.2 * raw[1], atol=1e-5)
    assert np.abs(np.diff(smooth, axis=0)).mean() < np.abs(np.diff(raw, axis=0)).mean()


def test_stream_memory_stays_flat_over_2000_frames():
    engine = SaliencyEngine(BrightnessRunner())
    from akd.runtime.video import Source, explain_stream

    frame = np.zeros((480, 640, 3), np.uint8)

    def rss_mb():
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * 4096 / 1e6

    source = Source("synthetic", ((i, frame) for i in range(2000)), 30.0, live=False)
    baseline = None
    for index, _ in enumerate(explain_stream(engine, source)):
        if index == 200:
            baseline = rss_mb()
    assert rss_mb() - baseline < 40


def test_live_source_drops_oldest_frames():
    import time

    from akd.runtime.video import Source, explain_stream

    class SlowRunner(BrightnessRunner):
        def _infer(self, batch):
            time.sleep(0.02)
            return super()._infer(batch)

    frames = ((i, np.full((32, 32, 3), i % 255, np.uint8)) for i in range(300))
    source = Source("live", frames, 30.0, live=True)
    seen = sum(1 for _ in explain_stream(SaliencyEngine(SlowRunner()), source, queue_size=2))
    assert seen < 300 and source.counters["dropped"] == 300 - seen


def test_akd_explain_cli(exported, tmp_path, capsys):
    from akd.cli import explain_main

    good = tmp_path / "in" / "good.png"
    good.parent.mkdir()
    cv2.imwrite(str(good), _frames(1)[0])
    (tmp_path / "in" / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "in" / "broken.mp4").write_bytes(b"not a video")
    _write_clip(tmp_path / "in" / "clip.avi", frames=12)
    out = tmp_path / "out"
    code = explain_main([str(tmp_path / "in"), str(tmp_path / "missing.png"), "--model", str(exported), "--out",
                         str(out), "--maps", "npy", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "13 frames (1 images, 1 videos)" in captured.out and "skipped 3 inputs" in captured.out
    assert (out / "good.overlay.png").is_file() and np.load(out / "good.saliency.npy").shape == (120, 160)
    video = cv2.VideoCapture(str(out / "clip.overlay.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 12 and int(video.get(cv2.CAP_PROP_FRAME_WIDTH)) == 160
    assert len(list((out / "clip.saliency").iterdir())) == 12
    assert not (out / "broken.overlay.mp4").exists()


def test_akd_explain_and_profile_errors(tmp_path, capsys):
    from akd.cli import explain_main, profile_main

    assert explain_main(["x.png", "--model", str(tmp_path / "nope.onnx"), "--no-progress"]) == 2
    assert "model not found" in capsys.readouterr().err
    assert profile_main([str(tmp_path / "m.txt")]) == 2
    assert "unknown model type" in capsys.readouterr().err
    assert profile_main(["m.onnx", "--batch", "0"]) == 2
    assert "positive" in capsys.readouterr().err


def test_akd_profile_cli(exported, tmp_path, capsys):
    import json

    from akd.cli import profile_main

    report = tmp_path / "profile.json"
    code = profile_main([str(exported), "--batch", "1,2", "--iters", "3", "--warmup", "1", "--frame-size", "320x240",
                         "--json", str(report)])
    assert code == 0
    out = capsys.readouterr().out
    assert "batch   1:" in out and "p99" in out
    data = json.loads(report.read_text())
    assert [row["batch"] for row in data["results"]] == [1, 2]
    assert {"preprocess", "compute", "postprocess"} <= set(data["results"][0]["stage_ms"])
    assert data["environment"]["onnxruntime"]


class AsyncFakeCuda:
    """A CUDA binding whose streams really run later: each stream is a worker thread executing its queue of
    copies, kernels and event records in order; ``synchronize`` waits for that stream alone. Copies take
    ``copy_s`` seconds, so overlap (or its absence) shows in wall time."""

    name = "async-fake"

    def __init__(self, copy_s: float = 0.0):
        self.copy_s, self.released, self.streams = copy_s, 0, []

    def pinned(self, shape, dtype):
        return np.zeros(shape, dtype)

    def device(self, nbytes):
        return bytearray(nbytes)

    def pointer(self, buffer):
        return id(buffer)

    def stream(self):
        import queue
        import threading

        work: queue.Queue = queue.Queue()

        def serve():
            while True:
                job = work.get()
                job()
                work.task_done()

        threading.Thread(target=serve, daemon=True).start()
        self.streams.append(work)
        return work

    def _later(self, stream, job):
        stream.put(job)

    def h2d(self, device, host, stream):
        data = host.copy()  # what the pinned buffer holds when the copy is enqueued (the caller keeps it intact)

        def copy():
            time.sleep(self.copy_s)
            device[: data.nbytes] = data.tobytes()
        self._later(stream, copy)

    def d2h(self, host, device, stream):
        def copy():
            time.sleep(self.copy_s)
            host[...] = np.frombuffer(bytes(device[: host.nbytes]), host.dtype).reshape(host.shape)
        self._later(stream, copy)

    def event(self):
        return [0.0]

    def record(self, event, stream):
        self._later(stream, lambda: event.__setitem__(0, time.perf_counter()))

    def synchronize(self, stream):
        stream.join()

    def elapsed_ms(self, start, end):
        return (end[0] - start[0]) * 1e3

    def release(self, slot):
        self.released += 1


def _doubling_pipeline(api, slots: int, kernel_s: float = 0.0):
    from akd.runtime.cuda import OutputSpec, SlotPipeline

    def compute(slot, n):  # "kernel" on the slot's stream: output = 2 * input, after kernel_s
        def kernel():
            time.sleep(kernel_s)
            data = np.frombuffer(bytes(slot.device_in[: n * 12]), np.float32).reshape(n, 3)
            slot.device_out["y"][: n * 12] = (2 * data).astype(np.float32).tobytes()
        api._later(slot.stream, kernel)

    return SlotPipeline(api, 4, (3,), np.float32, {"y": OutputSpec((3,), np.float32)}, compute, slots=slots)


def test_slot_pipeline_keeps_order_overlaps_and_frees_its_slots():
    import threading

    batches = [np.full((1 + i % 4, 3), i, np.float32) for i in range(8)]
    timings = {}
    for slots in (1, 2):
        api = AsyncFakeCuda(copy_s=0.01)
        pipeline = _doubling_pipeline(api, slots, kernel_s=0.03)
        started = time.perf_counter()
        results = list(pipeline.run(batches))
        timings[slots] = time.perf_counter() - started
        for batch, result in zip(batches, results, strict=True):
            np.testing.assert_array_equal(result["y"], 2 * batch)
        pipeline.close()
        assert api.released == slots
    assert timings[2] <= 0.8 * timings[1], timings  # two slots: one batch's copies under the other's kernel

    api = AsyncFakeCuda()
    pipeline = _doubling_pipeline(api, 2)
    for index, result in enumerate(pipeline.run(batches)):  # a free slot at every yield: no deadlock
        outputs, stage_ms = pipeline.infer(batches[index])
        np.testing.assert_array_equal(outputs["y"], result["y"])
        assert set(stage_ms) == {"h2d", "compute", "d2h"} and stage_ms["compute"] >= 0
    got = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, pipeline.infer(batches[i])[0]["y"]))
               for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, values in got.items():
        np.testing.assert_array_equal(values, 2 * batches[index])
    assert pipeline.free.qsize() == 2  # every slot returned


@pytest.mark.parametrize("in_flight", [2, 3])
def test_engine_keeps_the_runners_batches_in_flight(in_flight):
    """SaliencyEngine.explain_batches (what stream() uses) submits up to the runner's ``in_flight`` batches before
    collecting the oldest; results come back in order."""
    events = []

    class Pipelined(BrightnessRunner):
        pass

        def _submit(self, batch):
            events.append(("submit", float(batch.mean())))
            return batch

        def _collect(self, batch):
            events.append(("collect", float(batch.mean())))
            return BrightnessRunner._infer(self, batch)

    runner = Pipelined(size=32)
    runner.in_flight = in_flight
    engine = SaliencyEngine(runner)
    frames = [np.full((20, 30, 3), 40 * i, np.uint8) for i in range(5)]
    results = list(engine.explain_batches([[frame] for frame in frames]))
    assert [r[0].saliency.mean() for r in results] == sorted(r[0].saliency.mean() for r in results)
    kinds = [kind for kind, _ in events]
    assert kinds == ["submit"] * in_flight + ["collect", "submit"] * (5 - in_flight) + ["collect"] * in_flight
    assert [value for kind, value in events if kind == "collect"] == [value for kind, value in events
                                                                      if kind == "submit"]


cuda = pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")


@cuda
def test_torch_cuda_pipeline_matches_cpu(tiny_checkpoint, exported):
    frames = _frames(6)
    reference = SaliencyEngine.load(str(exported)).explain(frames)
    for options in ({}, {"fp16": True}, {"cuda_graphs": True}, {"channels_last": True}, {"slots": 1}):
        got = SaliencyEngine.load(str(tiny_checkpoint), device="cuda", max_batch=4, **options).explain(frames)
        for a, b in zip(reference, got, strict=True):
            np.testing.assert_allclose(a.saliency, b.saliency, atol=2e-2 if options else 1e-3)


@pytest.mark.parametrize("option", ["fp16", "cuda_graphs", "channels_last"])
def test_torch_backend_refuses_gpu_only_options_on_cpu(tiny_checkpoint, option):
    with pytest.raises(AkdError, match="need the torch backend on a CUDA device"):
        SaliencyEngine.load(str(tiny_checkpoint), device="cpu", **{option: True})


def test_cuda_python_binding_reports_cuda_errors_clearly():
    """Without a GPU driver, the real cuda-python calls fail - as a one-line AkdError naming the CUDA error."""
    pytest.importorskip("cuda.bindings")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from akd.runtime.cuda import CudaPython

    with pytest.raises(AkdError, match="CUDA error"):
        CudaPython().pinned((2, 3), np.float32)


def test_shipped_surrogate_is_the_default_and_knows_a_cat():
    """SaliencyEngine.load() with no model uses the surrogate packaged in akd: ImageNet names, no training
    state, <= 30 MB, and it sees the cat in scikit-image's 'chelsea' photo (ImageNet cats are classes 281-285)."""
    import json

    import skimage.data

    from akd.models.surrogate import TRAIN_STATE_PREFIX, read_checkpoint
    from akd.runtime.engine import default_model

    path = default_model()
    assert os.path.getsize(path) <= 30e6
    tensors, header = read_checkpoint(path)
    assert not any(name.startswith(TRAIN_STATE_PREFIX) for name in tensors) and "train_state" not in header
    assert json.loads(header["config"])["target"]["name"] == "efficientnet_lite0"
    with SaliencyEngine.load(color="rgb") as engine:
        assert engine.classes[281] == "tabby" and len(engine.classes) == 1000
        result = engine.explain(skimage.data.chelsea())
    assert 281 <= result.class_id <= 285, result.label
    assert result.saliency.shape == skimage.data.chelsea().shape[:2]
    assert 0.05 < result.saliency.mean() < 0.6


def test_gstreamer_pipeline_without_gstreamer_says_so():
    from akd.runtime.video import has_gstreamer, open_source

    if has_gstreamer():
        pytest.skip("this OpenCV has GStreamer: the pipeline would really open")
    with pytest.raises(AkdError, match="no GStreamer"):
        open_source("videotestsrc ! videoconvert ! appsink")


def test_runtime_cli_runs_without_the_training_stack(exported, tmp_path):
    """akd-explain and akd-profile on an exported graph with torch, torchvision, timm, scipy and scikit-image made
    unimportable (a sitecustomize that poisons them): what the runtime-only install (`akd[cpu]`) has.
    scripts/runtime_only_check.sh proves the same with a real second virtual environment."""
    import subprocess
    import sys

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "import sys\nfor name in ('torch', 'torchvision', 'timm', 'scipy', 'skimage'):\n    sys.modules[name] = None\n")
    frame = tmp_path / "frame.png"
    cv2.imwrite(str(frame), _frames(1)[0])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    run = [sys.executable, "-m", "akd.cli"]
    explained = subprocess.run([*run, "explain", str(frame), "--model", str(exported), "--out", str(tmp_path / "out"),
                                "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert explained.returncode == 0, explained.stderr
    assert (tmp_path / "out" / "frame.overlay.png").is_file()
    profiled = subprocess.run([*run, "profile", str(exported), "--batch", "1", "--iters", "2"], capture_output=True,
                              text=True, env=env, timeout=300)
    assert profiled.returncode == 0 and "torch None" in profiled.stdout, profiled.stderr
    default = subprocess.run([*run, "explain", str(frame), "--out", str(tmp_path / "o2")], capture_output=True,
                             text=True, env=env, timeout=300)
    assert default.returncode == 2 and "pip install 'akd[train]'" in default.stderr
    engine = tmp_path / "surrogate.engine"
    engine.write_bytes(b"not an engine")
    loaded = subprocess.run([*run, "profile", str(engine), "--batch", "1", "--iters", "1"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert loaded.returncode == 2 and "TensorRT is not installed" in loaded.stderr, loaded.stderr
    probe = ("from akd.runtime.backends.tensorrt import cuda_device\nfrom akd.util import AkdError\n"
             "try:\n    cuda_device()\nexcept AkdError as exc:\n    print('AkdError:', exc)")
    device = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert device.returncode == 0 and device.stdout.startswith("AkdError:"), device.stderr  # no torch needed
    blocked = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, env=env, timeout=60)
    assert blocked.returncode != 0  # the poison really works


def test_http_stream_through_opencv_and_the_pyav_fallback(tmp_path, monkeypatch):
    """A clip served over HTTP from 127.0.0.1: OpenCV's FFmpeg reads it; when OpenCV cannot open a stream (a build
    without FFmpeg), PyAV decodes the same URL."""
    import functools
    import http.server

    if os.environ.get("CI") != "true":  # CI installs the video extra: there a missing PyAV fails
        pytest.importorskip("av")
    from akd.runtime import video
    from akd.runtime.video import open_source

    _write_clip(tmp_path / "clip.avi", frames=6)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/clip.avi"
    try:
        assert sum(1 for _ in open_source(url).frames) == 6

        class Closed:
            def __init__(self, *args):
                pass

            def isOpened(self):
                return False

            def release(self):
                pass

        monkeypatch.setattr(video.cv2, "VideoCapture", Closed)
        frames = [frame for _, frame in open_source(url).frames]
        assert len(frames) == 6 and frames[0].shape == (120, 160, 3)
    finally:
        server.shutdown()


def test_runner_lifecycle_input_check_and_per_call_timings(tmp_path):
    """Polygraphy's habits: inputs checked against the model's metadata, stage times returned per call (two
    threads on one engine never see each other's), and a closed runner refuses with one line."""
    import threading

    runner = BrightnessRunner(size=32, max_batch=4)
    with pytest.raises(AkdError, match=r"expected a batch of float32 \(N, 3, 32, 32\)"):
        runner.infer(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(AkdError, match="expected a batch of float32"):
        runner.infer(np.zeros((1, 3, 32, 32), np.float64))
    with pytest.raises(AkdError, match="a batch of 5 images; this model takes 1 to 4"):
        runner.infer(np.zeros((5, 3, 32, 32), np.float32))
    outputs, stage_ms = runner.infer(np.zeros((2, 3, 32, 32), np.float32))
    assert outputs["saliency"].shape == (2, 1, 32, 32) and stage_ms == {"compute": 0.0}

    engine = SaliencyEngine(runner)
    seen: list[dict] = []

    def worker():
        for _ in range(20):
            result = engine.explain(np.zeros((20, 30, 3), np.uint8))
            seen.append(result.stage_ms)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 80 and all({"preprocess", "compute", "postprocess"} <= set(s) for s in seen)
    assert len({id(s) for s in seen}) == 80  # each call its own timings, never a shared dict
    with engine:
        pass
    assert not runner.active
    with pytest.raises(AkdError, match="this runner was closed"):
        engine.explain(np.zeros((20, 30, 3), np.uint8))
    runner.close()  # closing twice is harmless


def test_a_registered_backend_is_picked_by_suffix(tmp_path):
    from akd.runtime.backends import BACKEND_LOADERS, BACKEND_SUFFIXES, open_runner, register_backend

    register_backend("brightness", (".bright",))(lambda path, device, **options: BrightnessRunner(**options))
    try:
        model = tmp_path / "m.bright"
        model.write_bytes(b"")
        runner = open_runner(str(model), max_batch=2)
        assert isinstance(runner, BrightnessRunner) and runner.info.max_batch == 2
        with pytest.raises(AkdError, match="needs the brightness backend"):
            open_runner(str(model), backend="onnxruntime")
    finally:
        del BACKEND_LOADERS["brightness"], BACKEND_SUFFIXES[".bright"]
    with pytest.raises(AkdError, match=r"unknown model type \(expected .engine, .onnx, .plan, .safetensors\)"):
        open_runner(str(tmp_path / "m.bright"))


def test_cuda_graph_buckets():
    from akd.runtime.backends.torch import batch_buckets, bucket_for

    assert batch_buckets(32) == [1, 2, 4, 8, 16, 32] and batch_buckets(12) == [1, 2, 4, 8, 12]
    assert batch_buckets(1) == [1]
    buckets = batch_buckets(12)
    assert [bucket_for(n, buckets) for n in (1, 2, 3, 5, 8, 9, 12)] == [1, 2, 4, 8, 8, 12, 12]


def test_onnxruntime_runner_overlaps_the_next_batch_and_keeps_order(exported):
    """The onnxruntime runner computes in its own thread (two batches in flight): a stream's results are the same,
    in the same order, as one call per batch, which runs on the calling thread (no worker started: a hand-off
    with nothing to overlap only adds latency); closing stops the worker."""
    frames = _frames(12, seed=3)
    with SaliencyEngine.load(str(exported)) as engine:
        assert engine.runner.in_flight == 2
        one_by_one = [engine.explain(frame) for frame in frames]
        assert engine.runner._worker is None
        pipelined = [result for chunk in engine.explain_batches([[f] for f in frames]) for result in chunk]
        worker = engine.runner._worker
    assert [r.class_id for r in pipelined] == [r.class_id for r in one_by_one]
    for a, b in zip(pipelined, one_by_one, strict=True):
        np.testing.assert_array_equal(a.saliency, b.saliency)
    assert worker._shutdown and engine.runner._worker is None


def test_onnxruntime_runner_runs_single_frames_on_a_session_with_the_batch_fixed_at_one(exported):
    """On the CPU single frames run on a second session whose batch is fixed at 1 (onnxruntime lays the graph out
    for it); its outputs are the dynamic session's, and every other batch size runs on the dynamic one."""
    from akd.runtime.backends.onnxruntime import OnnxRuntimeRunner

    class Counted:
        def __init__(self, session):
            self.session, self.calls = session, 0

        def run(self, *args):
            self.calls += 1
            return self.session.run(*args)

    runner = OnnxRuntimeRunner(str(exported), device="cpu")
    assert runner.single.get_inputs()[0].shape[0] == 1 and runner.session.get_inputs()[0].shape[0] == "batch"
    size = runner.info.config["input_size"]
    batch = np.random.default_rng(0).normal(size=(3, 3, *size)).astype(np.float32)
    runner.single, runner.session = Counted(runner.single), Counted(runner.session)
    together = runner.infer(batch).outputs
    alone = [runner.infer(batch[i:i + 1]).outputs for i in range(3)]
    assert (runner.single.calls, runner.session.calls) == (3, 1)
    for i, outputs in enumerate(alone):
        np.testing.assert_allclose(outputs["saliency"], together["saliency"][i:i + 1], atol=1e-5)
        assert outputs["class_id"][0] == together["class_id"][i]
