"""The C++ runtime (akd-infer, built by scripts/build_cpp.sh) against the Python runtime on real photos."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
AKD_INFER = Path(os.environ.get("AKD_INFER", ROOT / "build" / "cpp" / "akd-infer"))

if not AKD_INFER.is_file() and os.environ.get("CI") == "true":  # CI builds it: a missing binary is a failure
    raise RuntimeError(f"CI=true but the C++ runtime is not built at {AKD_INFER} (bash scripts/build_cpp.sh)")
pytestmark = pytest.mark.skipif(not AKD_INFER.is_file(), reason="C++ runtime not built (bash scripts/build_cpp.sh)")


def infer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(AKD_INFER), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("photo", ["chelsea", "coffee", "astronaut", "rocket"])
def test_cpp_matches_python_on_real_photos(shipped_onnx_forward_only, tmp_path, photo):
    import skimage.data

    from akd.runtime import SaliencyEngine

    frame = cv2.cvtColor(getattr(skimage.data, photo)(), cv2.COLOR_RGB2BGR)
    image = tmp_path / f"{photo}.png"
    cv2.imwrite(str(image), frame)
    done = infer("--model", str(shipped_onnx_forward_only), str(image), "--saliency-npy", str(tmp_path / "map.npy"),
                 "--out", str(tmp_path / "overlay.png"))
    assert done.returncode == 0, done.stderr
    with SaliencyEngine.load(str(shipped_onnx_forward_only)) as engine:
        expected = engine.explain(frame)
    saliency = np.load(tmp_path / "map.npy")
    assert saliency.shape == expected.saliency.shape
    assert np.abs(saliency - expected.saliency).max() <= 1e-3
    assert f"class {expected.class_id} ({expected.label})" in done.stdout
    assert cv2.imread(str(tmp_path / "overlay.png")).shape == frame.shape


def test_cpp_explains_a_video(shipped_onnx_forward_only, tmp_path):
    from akd.runtime.video import demo_clip

    clip = demo_clip(tmp_path / "clip.avi", frames=5, size=(320, 240))
    done = infer("--model", str(shipped_onnx_forward_only), str(clip), "--out", str(tmp_path / "overlay.avi"))
    assert done.returncode == 0, done.stderr
    assert "5 frames" in done.stdout and "fps" in done.stdout
    capture = cv2.VideoCapture(str(tmp_path / "overlay.avi"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 5


def test_cpp_error_messages(shipped_onnx, shipped_onnx_forward_only, tmp_path):
    missing = infer("--model", str(tmp_path / "none.onnx"), "photo.jpg")
    assert missing.returncode == 2 and f"akd-infer: error: {tmp_path / 'none.onnx'}: model not found" in missing.stderr
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    unreadable = infer("--model", str(shipped_onnx_forward_only), str(broken))
    assert unreadable.returncode == 2 and f"{broken}: cannot read image" in unreadable.stderr
    not_akd = tmp_path / "plain.onnx"
    not_akd.write_bytes(b"")
    plain = infer("--model", str(not_akd), str(broken))
    assert plain.returncode == 2 and "not an akd graph" in plain.stderr
    gradient = infer("--model", str(shipped_onnx), str(broken))  # the default graph reads LayerCAM's gradient
    assert gradient.returncode == 2 and "reads a gradient (LayerCAM)" in gradient.stderr
    assert "--no-layercam" in gradient.stderr and len(gradient.stderr.strip().splitlines()) == 1
