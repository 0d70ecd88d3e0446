"""benchmarks/rise_targets.py builds the RISE maps issue 10's explainer experiments use, on a GPU; its CPU mode
runs the same code here. The maps must be akd-evaluate's RISE maps (same masks, same estimate), and the crops it
explains must be reproducible wherever they are rebuilt."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_benchmark


@pytest.fixture(scope="module")
def rise_targets():
    return load_benchmark("rise_targets")


def test_crop_views_are_reproducible_boxes_of_the_training_ranges(rise_targets):
    crop_params, cropped_view = rise_targets.crop_params, rise_targets.cropped_view
    rows = crop_params(64, 224, seed=5)
    np.testing.assert_array_equal(rows, crop_params(64, 224, seed=5))  # the GPU and the CPU see the same views
    assert not np.array_equal(rows, crop_params(64, 224, seed=6))
    top, left, height, width, flip = rows.T
    area = height * width / 224**2
    assert area.min() >= 0.24 and area.max() <= 1.0  # a quarter of the area at least, sides rounded to pixels
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + height <= 224).all() and (left + width <= 224).all() and 0 < flip.mean() < 1
    image = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    whole = cropped_view(image, (0, 0, 8, 8, 0))
    torch.testing.assert_close(whole, image)  # the full box at the same size is the image itself
    torch.testing.assert_close(cropped_view(image, (0, 0, 8, 8, 1)), image.flip(-1))
    corner = cropped_view(image, (0, 0, 4, 4, 0))
    assert corner.shape == image.shape and corner[0, 0, 0, 0] <= image[0, 0, 0, 1]  # the top-left quarter, enlarged


def test_built_maps_are_the_rise_baselines_maps(rise_targets, tmp_path):
    from safetensors.torch import save_file

    from akd.evaluation.methods import EvalImage, RiseMethod
    from akd.models.teachers import load_teacher

    teacher = load_teacher("efficientnet_lite0")
    work = tmp_path / "work"
    (work / "views").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in teacher.module.state_dict().items()}, str(work / "target.safetensors"))
    (work / "target.json").write_text(json.dumps({"timm": "tf_efficientnet_lite0",
                                                  "preprocessing": teacher.preprocessing.to_config()}))
    rng = np.random.default_rng(0)
    for name in ("train__a", "heldout__b"):
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(work / "views" / f"{name}.jpg",
                                                                                   quality=95)
    out = tmp_path / "out"
    out.mkdir()
    report = rise_targets.build(work, out, masks=40, chunk=20, deadline=600, device="cpu")
    assert report["images"] == 2 and report["fast_vs_fp32"][0]["max_abs"] < 1e-5
    built = np.load(out / "rise_maps_heldout.npz")
    assert list(built["names"]) == ["heldout/b"]

    # the same view through akd-evaluate's RISE
    names, images = rise_targets.read_views(work, teacher.preprocessing.to_config())
    image = images[names.index("heldout/b")][None]
    class_id = int(teacher(image).argmax())
    assert int(built["class_ids"][0]) == class_id
    fresh = RiseMethod(teacher, masks=40).explain(EvalImage("b", None, image, class_id))
    pooled = torch.nn.functional.avg_pool2d(torch.from_numpy(fresh)[None, None], 2)[0, 0].numpy()
    np.testing.assert_allclose(built["maps"][0].astype(np.float32), pooled, atol=2e-3)  # stored as float16
    assert np.corrcoef(built["maps"][0].ravel(), pooled.ravel())[0, 1] > 0.999


def test_exact_heldout_maps_are_akd_evaluates_rise_maps_of_its_own_images(rise_targets, tmp_path):
    """--exact-heldout: akd-evaluate's pixels and classes in, full-resolution fp32 maps out - the maps its RISE
    computes, so `akd-evaluate --maps` scores RISE without running it; split into files that each come back."""
    from safetensors.torch import save_file

    from akd import contract
    from akd.evaluation.methods import EvalImage, RiseMethod
    from akd.models.teachers import load_teacher

    teacher = load_teacher("efficientnet_lite0")
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    save_file({k: v.contiguous() for k, v in teacher.module.state_dict().items()}, str(work / "target.safetensors"))
    (work / "target.json").write_text(json.dumps({"timm": "tf_efficientnet_lite0",
                                                  "preprocessing": teacher.preprocessing.to_config()}))
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (5, 224, 224, 3), dtype=np.uint8)
    pre = teacher.preprocessing
    tensors = [torch.from_numpy(contract.normalise(p[None], pre.mean, pre.std)) for p in pixels]
    classes = [int(teacher(t).argmax()) for t in tensors]
    np.savez(work / rise_targets.EXACT_INPUTS, names=np.array([f"img{i}" for i in range(5)]), pixels=pixels,
             class_ids=np.array(classes))
    report = rise_targets.exact_heldout(work, out, masks=30, chunk=15, deadline=600, device="cpu")
    assert report["exact_heldout"] == 5 and report["class_differs_from_akd_evaluate"] == 0
    parts = [np.load(path) for path in sorted(out.glob("rise_heldout_*.npz"))]
    assert len(parts) == 3  # 5 maps over EXACT_FILES = 4 files: 2 a file
    names = [str(n) for part in parts for n in part["names"]]
    maps = np.concatenate([part["maps"] for part in parts])
    assert names == [f"img{i}" for i in range(5)] and maps.dtype == np.float32 and maps.shape == (5, 224, 224)
    rise = RiseMethod(teacher, masks=30)
    for index in (0, 4):
        fresh = rise.explain(EvalImage(names[index], pixels[index], tensors[index], classes[index]))
        np.testing.assert_allclose(maps[index], fresh, atol=1e-6)
