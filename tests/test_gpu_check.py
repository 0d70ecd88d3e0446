"""The GPU device check's inputs are made here (no GPU needed): the TorchScript it carries must reproduce the
shipped surrogate exactly through the torch backend, or the check on the device would judge the wrong thing."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_prepared_inputs_reproduce_the_shipped_surrogate(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    monkeypatch.setattr(gpu_check, "IMAGENET", tmp_path / "absent")  # the clip's frames only: quick
    gpu_check.prepare(tmp_path)
    from akd.runtime.backends.torch import TorchRunner

    reference = dict(np.load(tmp_path / "reference.npz"))
    images = reference.pop("images")
    assert images.shape == (24, 3, 224, 224) and len(set(reference["class_id"].tolist())) >= 2
    runner = TorchRunner("surrogate.ts", "cpu", max_batch=8, module=torch.jit.load(str(tmp_path / "surrogate.ts")),
                         config=json.loads((tmp_path / "config.json").read_text()))
    with runner:
        for start in (0, 8, 16):
            outputs = runner.infer(np.ascontiguousarray(images[start:start + 8])).outputs
            for name, values in outputs.items():
                np.testing.assert_allclose(values, reference[name][start:start + 8], atol=1e-4)  # fp32 parity


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the check runs for real")
def test_without_cuda_the_check_says_so(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--work", str(tmp_path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "gpu_check needs CUDA" in result.stderr
