"""The GPU device check's CPU half runs here: the inputs it builds on the device (the clip's frames, held-out
photos when rise_targets.py prepared them) go through the engine's preprocessing, and its fp32 reference is the
shipped surrogate itself - a check on the device that judged other inputs or another model would prove nothing."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from conftest import BENCHMARKS, load_benchmark

SCRIPT = BENCHMARKS / "gpu_check.py"


def test_inputs_are_the_clip_and_the_prepared_photos_as_the_engine_sees_them(tmp_path):
    from akd.runtime.engine import SaliencyEngine

    gpu_check = load_benchmark("gpu_check")
    frames_only = gpu_check.load_inputs(tmp_path)
    assert frames_only.shape == (24, 3, 224, 224)
    (tmp_path / "views").mkdir()
    photo = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "views" / "heldout__a.jpg"), photo)
    cv2.imwrite(str(tmp_path / "views" / "train__b.jpg"), photo)  # training views are not test inputs
    images = gpu_check.load_inputs(tmp_path)
    assert images.shape == (25, 3, 224, 224)
    with SaliencyEngine.load(device="cpu") as engine:
        expected = engine.preprocess([cv2.imread(str(tmp_path / "views" / "heldout__a.jpg"))])[0]
    np.testing.assert_array_equal(images[24:], expected)

    reference = gpu_check.cpu_reference(frames_only[:8])
    with SaliencyEngine.load(device="cpu") as engine:
        direct = engine.runner.infer(frames_only[:8]).outputs
    for name, values in reference.items():
        np.testing.assert_array_equal(values, direct[name])
    assert len(set(gpu_check.cpu_reference(frames_only)["class_id"].tolist())) >= 2  # not one class throughout


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the check runs for real")
def test_without_cuda_the_check_says_so(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--work", str(tmp_path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "gpu_check needs CUDA" in result.stderr
