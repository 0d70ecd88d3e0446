"""The Python API as a notebook user meets it: an nn.Module held in memory, distilled, exported from memory,
explained, evaluated - the same stages the CLI runs, without a file for the target."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import akd
from akd.util import AkdError

from conftest import SIZE


@pytest.fixture(scope="module")
def distilled(tiny_net, imagefolder, tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "tiny.safetensors"
    target = copy.deepcopy(tiny_net)  # the API freezes the module it is given; the session fixture stays intact
    result = akd.distill(target, str(imagefolder), str(out), student="resnet18_cbam",
                         preprocessing=akd.Preprocessing(input_size=SIZE), epochs=1, batch_size=8,
                         stages=("student",), overrides=("stages.student.lr=0.01",), progress=False)
    return result, out


def test_distill_an_in_memory_module(distilled):
    (surrogate, metrics), out = distilled
    assert out.is_file() and metrics["epoch"] == 1 and metrics["train_images"] == 16  # every image, one epoch
    assert surrogate.config["target"]["kind"] == "module" and surrogate.config["target"]["name"] == "TinyNet"
    assert surrogate.config["input_size"] == [SIZE, SIZE]
    assert surrogate.config["training"]["command"].startswith("akd.distill(")


def test_export_from_memory_explain_and_evaluate(distilled, tiny_net, imagefolder, tmp_path):
    (surrogate, _), checkpoint = distilled
    written = akd.export(surrogate, str(tmp_path / "tiny.onnx"))
    assert [p.name for p in written] == ["tiny.onnx"]
    frame = np.zeros((48, 80, 3), np.uint8)
    frame[:24, 40:] = 255
    with akd.SaliencyEngine.load(str(written[0])) as onnx_engine, \
            akd.SaliencyEngine.load(str(checkpoint)) as torch_engine:
        from_graph, from_checkpoint = onnx_engine.explain(frame), torch_engine.explain(frame)
    assert from_graph.class_id == from_checkpoint.class_id
    np.testing.assert_allclose(from_graph.saliency, from_checkpoint.saliency, atol=1e-4)

    report = akd.evaluate(str(written[0]), str(imagefolder), str(tmp_path / "eval"), target=tiny_net,
                          preprocessing=akd.Preprocessing(input_size=SIZE), methods=("akd", "rise"), limit=4,
                          rise_masks=50, progress=False)
    assert report["methods"] == ["akd", "rise"] and report["images"] == 4
    assert (tmp_path / "eval" / "report.md").is_file()


def test_api_errors_name_the_problem(tiny_net, distilled, tmp_path):
    with pytest.raises(AkdError, match="expected a spec string, an nn.Module or a callable, got int"):
        akd.distill(3, "data", str(tmp_path / "x.safetensors"))
    with pytest.raises(AkdError, match="must be a .safetensors file"):
        akd.distill(tiny_net, "data", str(tmp_path / "x.pt"))
    (surrogate, _), _ = distilled
    with pytest.raises(AkdError, match="out is required"):
        akd.export(surrogate)
    with pytest.raises(AkdError, match="cannot re-create a target that was distilled from an in-memory module"):
        akd.export(surrogate, str(tmp_path / "t.onnx"), include_target=True)


def test_import_akd_stays_light():
    """``import akd`` pulls no torch: the runtime-only install imports it (the API loads on first use)."""
    import subprocess
    import sys

    code = "import sys, akd; assert 'torch' not in sys.modules, 'torch imported'; print(akd.__version__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
