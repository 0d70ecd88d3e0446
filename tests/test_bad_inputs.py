"""Bad inputs, unwritable outputs and corrupt weights: one clear line (exit 2) or skipped and counted, never a lost
artifact, never the good inputs beside them."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from akd.runtime.backends import Runner
from akd.util import AkdError


def _one_line_error(capsys, code: int, fragment: str) -> str:
    assert code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert fragment in errors[0], errors[0]
    return errors[0]


def _bomb(path: Path) -> Path:
    """A valid PNG header claiming 50000 x 50000 pixels (a decompression bomb), with a tiny body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                     + chunk(b"IEND", b""))
    return path


def _photo(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.GaussianBlur(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8), (0, 0), 3))
    return path


@pytest.fixture(scope="module")
def graph(tiny_checkpoint, tmp_path_factory) -> Path:
    from akd.deploy.exporter import ExportOptions, export

    out = tmp_path_factory.mktemp("bad-inputs") / "tiny.onnx"
    export(ExportOptions(str(tiny_checkpoint), str(out), precision="fp32", verify=False))
    return out


def test_decompression_bomb_is_skipped_and_the_rest_explained(graph, tmp_path, capsys, caplog):
    from akd.cli import explain_main
    from akd.data.sources import discover

    folder = tmp_path / "in"
    _bomb(folder.mkdir() or folder / "a_bomb.png")
    _photo(folder / "b_good.png")
    code = explain_main([str(folder), "--model", str(graph), "--out", str(tmp_path / "out"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err
    assert "a_bomb.png: unreadable image (too many pixels)" in caplog.text
    assert "1 frames (1 images" in captured.out and "skipped 1 inputs" in captured.out
    assert (tmp_path / "out" / "b_good.overlay.png").is_file()
    found = discover(str(folder))  # what train, calibrate, evaluate and export parity read through
    assert [Path(s.path).name for s in found.samples] == ["b_good.png"] and found.skipped == 1


def test_outputs_with_the_same_stem_stay_apart(graph, tmp_path, capsys):
    from akd.cli import explain_main

    inputs = [_photo(tmp_path / "d1" / "pic.jpg", 1), _photo(tmp_path / "d1" / "pic.png", 2),
              _photo(tmp_path / "d2" / "pic.jpg", 3), _photo(tmp_path / "d2" / "sub" / "other.png", 4)]
    out = tmp_path / "out"
    code = explain_main([str(tmp_path / "d1"), str(tmp_path / "d2"), "--model", str(graph), "--out", str(out),
                         "--maps", "npy", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    overlays = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.overlay.png"))
    assert overlays == ["d1/pic.jpg.overlay.png", "d1/pic.png.overlay.png", "d2/pic.jpg.overlay.png",
                        "sub/other.overlay.png"]
    assert len(list(out.rglob("*.saliency.npy"))) == len(inputs)
    assert f"wrote {2 * len(inputs)} outputs" in captured.out


def test_collect_inputs_recurses_and_survives_a_symlink_loop(tmp_path):
    from akd.runtime.explain import collect_inputs

    _photo(tmp_path / "top" / "a.png")
    _photo(tmp_path / "top" / "deeper" / "b.png")
    os.symlink(tmp_path / "top", tmp_path / "top" / "deeper" / "loop")
    found = collect_inputs([str(tmp_path / "top")])
    assert sorted(found.names.values()) == ["a", "deeper/b"]
    assert any("symlink loop" in item for item in found.missing)


def test_nothing_explained_is_an_error(graph, tmp_path, capsys):
    from akd.cli import explain_main

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    _bomb(tmp_path / "in" / "bomb.png")
    code = explain_main([str(tmp_path / "in"), "--model", str(graph), "--out", str(tmp_path / "out"),
                         "--no-progress"])
    _one_line_error(capsys, code, "nothing explained: all 2 inputs")


def test_unwritable_outputs_are_refused_before_the_work(graph, tiny_checkpoint, torchscript_target, imagefolder,
                                                        tmp_path, capsys):
    from akd.cli import calibrate_main, explain_main, export_main, profile_main, train_main

    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me")
    photo = _photo(tmp_path / "in" / "p.png")
    _one_line_error(capsys, explain_main([str(photo), "--model", str(graph), "--out", str(a_file)]), "is a file")
    _one_line_error(capsys, profile_main([str(graph), "--json", str(tmp_path)]), "is a folder")
    _one_line_error(capsys, export_main([str(tiny_checkpoint), "--out", str(a_file / "m.onnx")]),
                    "cannot be created")
    _one_line_error(capsys, calibrate_main([str(graph), "--data", str(tmp_path / "in"), "--out", str(tmp_path)]),
                    "is a folder")
    code = train_main(["--teacher", str(torchscript_target), "--data", str(imagefolder), "--out",
                       str(a_file / "s.safetensors"), "--epochs", "1", "--no-progress"])
    _one_line_error(capsys, code, "cannot be created")
    assert a_file.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_refused(graph, tmp_path, capsys):
    from akd.cli import explain_main

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code = explain_main([str(_photo(tmp_path / "p.png")), "--model", str(graph), "--out", str(locked / "o")])
        _one_line_error(capsys, code, "cannot be written")
    finally:
        locked.chmod(0o755)


def _corrupt_middle(source: Path, target: Path) -> Path:
    data = bytearray(source.read_bytes())
    header = 8 + struct.unpack("<Q", data[:8])[0]
    middle = header + (len(data) - header) // 2
    data[middle:middle + 64] = bytes(range(64))
    target.write_bytes(bytes(data))
    return target


def test_corrupt_checkpoint_is_refused_at_load(tiny_checkpoint, tmp_path, capsys):
    from akd.cli import explain_main, export_main
    from akd.models.surrogate import load_surrogate, save_checkpoint

    damaged = _corrupt_middle(tiny_checkpoint, tmp_path / "damaged.safetensors")
    with pytest.raises(AkdError, match="corrupt checkpoint .*content hash"):
        load_surrogate(damaged)
    photo = _photo(tmp_path / "p.png")
    _one_line_error(capsys, explain_main([str(photo), "--model", str(damaged), "--out", str(tmp_path / "o")]),
                    "corrupt checkpoint")
    _one_line_error(capsys, export_main([str(damaged), "--out", str(tmp_path / "m.onnx")]), "corrupt checkpoint")
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "o").exists()
    model = load_surrogate(tiny_checkpoint)  # NaN saved on purpose: the hash matches, the values do not pass
    with torch.no_grad():
        model.explainer.head.bias.fill_(float("nan"))  # the tiny surrogate's head is the paper's decoder
    save_checkpoint(tmp_path / "nan.safetensors", model)
    with pytest.raises(AkdError, match="explainer.head.bias' holds NaN"):
        load_surrogate(tmp_path / "nan.safetensors")


def test_newer_checkpoint_format_is_refused(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    from akd.models.surrogate import read_checkpoint

    _, metadata = read_checkpoint(tiny_checkpoint)
    save_file(load_file(str(tiny_checkpoint)), str(tmp_path / "v9.safetensors"), metadata={**metadata, "version": "9"})
    with pytest.raises(AkdError, match="version 9 is newer"):
        read_checkpoint(tmp_path / "v9.safetensors")


def _nan_graph(graph: Path, out: Path) -> Path:
    """The graph with its explainer head's bias set to NaN: every saliency map it computes is NaN."""
    model = onnx.load(str(graph))
    head = next(t for t in model.graph.initializer if "head" in t.name and len(t.dims) == 1)
    head.CopyFrom(numpy_helper.from_array(np.full(tuple(head.dims), np.nan, np.float32), head.name))
    onnx.save(model, str(out))
    return out


def test_nan_graph_fails_every_gate_and_the_runtime(graph, tmp_path):
    from akd.deploy import parity
    from akd.deploy.calibration import drift
    from akd.runtime import SaliencyEngine

    _nan_graph(graph, tmp_path / "nan.onnx")
    with SaliencyEngine.load(str(tmp_path / "nan.onnx")) as engine, \
            pytest.raises(AkdError, match="nan.onnx: the model returned non-finite"):
        engine.explain(np.zeros((40, 50, 3), np.uint8))
    nan_maps = {"saliency": np.full((2, 1, 4, 4), np.nan), "class_id": np.array([1, 2])}
    good_maps = {"saliency": np.zeros((2, 1, 4, 4)), "class_id": np.array([1, 2]), "logits": 5 * np.eye(2, 3, 1)}
    nan_metrics = parity.compare(good_maps, nan_maps, real=np.array([False, True]))
    for precision in ("fp32", "fp16", "int8"):
        assert parity.failures(nan_metrics, precision)  # every precision's gate has a saliency limit
    assert drift(nan_metrics) == float("inf")


def test_non_finite_calibration_ranges_are_never_cached(tmp_path):
    from akd.deploy.calibration import _refuse_nonfinite_ranges

    cache = tmp_path / "ranges.json"
    cache.write_text(json.dumps({"CLS": "TensorsData", "data": {"good": {"lowest": -1.0, "highest": 2.0},
                                                                  "bad": {"lowest": float("nan"), "highest": 1.0}}}))
    with pytest.raises(AkdError, match="non-finite ranges for 1 tensors .*'bad'"):
        _refuse_nonfinite_ranges(cache)
    assert not cache.exists()
    cache.write_text(json.dumps({"CLS": "TensorsData", "data": {"good": {"lowest": -1.0, "highest": 2.0}}}))
    _refuse_nonfinite_ranges(cache)
    assert cache.exists()


class _InterruptingRunner(Runner):
    """Wraps a runner and raises KeyboardInterrupt on its N-th call, like Ctrl-C mid-video."""

    def __init__(self, runner, after: int):
        self.runner, self.after, self.calls = runner, after, 0
        self.info = runner.info

    def _infer(self, batch):
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt
        return tuple(self.runner.infer(batch))

    def _release(self):
        self.runner.close()


def test_interrupted_video_leaves_no_maps_folder(graph, tmp_path):
    from akd.runtime import SaliencyEngine
    from akd.runtime.backends import open_runner
    from akd.runtime.explain import explain_inputs

    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (80, 60))
    for index in range(20):
        writer.write(np.full((60, 80, 3), index * 10, np.uint8))
    writer.release()
    out = tmp_path / "out"
    engine = SaliencyEngine(_InterruptingRunner(open_runner(str(graph)), after=8))
    with pytest.raises(KeyboardInterrupt):
        explain_inputs(engine, [str(clip)], str(out), maps="npy", progress=False)
    assert not out.exists() or not list(out.iterdir())  # neither the video nor a folder of per-frame maps
    engine = SaliencyEngine(open_runner(str(graph)))
    summary = explain_inputs(engine, [str(clip)], str(out), maps="npy", progress=False)
    assert summary.frames == 20 and len(list((out / "clip.saliency").iterdir())) == 20
    assert sorted(p.name for p in out.iterdir()) == ["clip.overlay.mp4", "clip.saliency"]


@pytest.mark.parametrize("bad,fragment", [
    (np.zeros((300, 451), np.uint8), r"2-D array \(300, 451\)"),
    (None, "got NoneType"),
    (7, "got int"),
])
def test_python_api_names_the_problem(graph, bad, fragment):
    from akd.runtime import SaliencyEngine

    with SaliencyEngine.load(str(graph)) as engine, pytest.raises(AkdError, match=fragment):
        engine.explain(bad)


def test_small_user_folder_holds_out_a_fifth_for_drift(tmp_path):
    from akd.deploy.calibration import calibration_data

    for index in range(64):
        _photo(tmp_path / "user" / f"{index:02d}.png", index)
    data = calibration_data(str(tmp_path / "user"), num_images=512)
    assert len(data.samples) == 52 and len(data.heldout) == 12
    assert not {s.path for s in data.samples} & {s.path for s in data.heldout}
    for index in range(10):
        _photo(tmp_path / "tiny" / f"{index}.png", index)
    assert len(calibration_data(str(tmp_path / "tiny"), num_images=512).heldout) == 0


def test_small_cli_mistakes(graph, tmp_path, capsys):
    from akd.cli import profile_main
    from akd.data.sources import discover
    from akd.runtime import SaliencyEngine

    assert profile_main([str(graph), "--warmup", "-1"]) == 2
    assert "non-negative" in capsys.readouterr().err
    (tmp_path / "random.engine").write_bytes(os.urandom(256))
    with pytest.raises(AkdError, match="random.engine: "):
        SaliencyEngine.load(str(tmp_path / "random.engine"))
    names = [Path(s.path).name for s in discover("sample-photos").samples]
    assert names and "multipage_rgb.tif" not in names


def test_explain_and_profile_say_where_inference_runs(graph, tmp_path, capsys):
    from akd.cli import explain_main, profile_main

    photo = _photo(tmp_path / "p.png")
    assert explain_main([str(photo), "--model", str(graph), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert f"akd-explain: {graph} (fp32) on onnxruntime, CPUExecutionProvider" in capsys.readouterr().err
    assert profile_main([str(graph), "--batch", "1", "--iters", "2", "--warmup", "0"]) == 0
    assert "on onnxruntime, CPUExecutionProvider" in capsys.readouterr().err


def test_calibrating_a_nan_graph_is_refused_before_onnxruntime(graph, photo_folder, tmp_path, capsys):
    from akd.cli import calibrate_main

    _nan_graph(graph, tmp_path / "nan.onnx")
    cache = tmp_path / "cache"
    code = calibrate_main([str(tmp_path / "nan.onnx"), "--data", str(photo_folder), "--out", str(tmp_path / "q.onnx"),
                           "--cache-dir", str(cache), "--num-images", "16"])
    _one_line_error(capsys, code, "computes NaN or infinity")
    assert not (tmp_path / "q.onnx").exists() and not (cache.exists() and list(cache.iterdir()))


def test_decoder_noise_names_its_file(graph, tmp_path):
    """libjpeg and FFmpeg print to fd 2 without a file name; the CLI re-emits each line naming the file (a real
    process: the capture works on the process's own stderr descriptor)."""
    import subprocess
    import sys

    folder = tmp_path / "in"
    good = _photo(folder / "good.jpg")
    (folder / "cut.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (folder / "clip.mp4").write_bytes(b"\0\0\0\x18ftypmp42" + b"x" * 1000)
    result = subprocess.run([sys.executable, "-c", "import sys; from akd.cli import explain_main; "
                             "sys.exit(explain_main(sys.argv[1:]))", str(folder), "--model", str(graph),
                             "--out", str(tmp_path / "out"), "--no-progress"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert any(line.endswith("cut.jpg: Premature end of JPEG file") for line in lines), result.stderr
    assert any("clip.mp4: " in line and "moov atom not found" in line for line in lines), result.stderr
    assert not [line for line in lines if line.startswith(("Premature", "[mov"))], result.stderr
