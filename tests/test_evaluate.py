"""akd.evaluation: metrics on cases with known answers, the baselines on a tiny target, the report and the CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from scipy.ndimage import convolve, gaussian_filter
from torch import nn

from akd import perturbation
from akd.cli import main
from akd.data.preprocessing import Preprocessing
from akd.evaluation import metrics
from akd.evaluation.methods import EvalImage, GradCamMethod, LimeMethod, RiseMethod, last_spatial_module
from akd.models.teachers import _module_teacher

PATCH = (slice(8, 16), slice(8, 16))


class PatchModel(nn.Module):
    """Class 0's logit is 8 x (the image's mean over one 8x8 patch - 0.5); class 1's is fixed at 0."""

    def forward(self, x):
        evidence = x[:, :, PATCH[0], PATCH[1]].mean(dim=(1, 2, 3))
        return torch.stack([8 * (evidence - 0.5), torch.zeros_like(evidence)], dim=1)


def patch_image() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, 32, 32, generator=generator) * 0.5
    image[:, :, PATCH[0], PATCH[1]] = 1.0
    return image


def patch_map() -> np.ndarray:
    saliency = np.zeros((32, 32), np.float32)
    saliency[PATCH] = 1.0
    saliency += np.linspace(0, 0.01, 32 * 32, dtype=np.float32).reshape(32, 32)  # no ties
    return saliency


def test_rise_kernel_is_scipys_gaussian_filter_of_a_delta():
    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    kernel = perturbation.rise_kernel()
    assert kernel.shape == (11, 11)
    np.testing.assert_allclose(kernel, gaussian_filter(delta, 5), rtol=1e-6)
    assert kernel.max() / kernel.min() < 3  # sigma 5 truncated at 11x11 is nearly a box
    assert kernel.sum() == pytest.approx(1.0, abs=1e-5)


def test_rise_blur_is_a_per_channel_convolution_with_zero_padding():
    image = torch.rand(1, 3, 20, 24)
    blurred = perturbation.rise_blur(image).numpy()
    kernel = perturbation.rise_kernel()
    for channel in range(3):
        expected = convolve(image[0, channel].numpy(), kernel, mode="constant", cval=0.0)
        np.testing.assert_allclose(blurred[0, channel], expected, atol=1e-5)


def test_step_counting_and_curve_length():
    assert metrics.default_step(224, 224) == 224 * 8
    assert metrics.step_count(224 * 224, 224 * 8) == 28  # 29 points, as in RISE
    assert metrics.step_count(100, 30) == 4
    curve = metrics.causal_curve(PatchModel(), patch_image(), patch_map(), "deletion", step=100)
    assert len(curve) == metrics.step_count(32 * 32, 100) + 1 == 12


def test_auc_of_constant_and_linear_curves():
    assert metrics.auc(np.full(29, 0.7)) == pytest.approx(0.7)
    assert metrics.auc(np.linspace(0, 1, 29)) == pytest.approx(0.5)
    assert metrics.auc(np.array([1.0, 0.0])) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        metrics.auc(np.array([1.0]))


def test_curve_endpoints_are_the_start_and_finish_images():
    model, image = PatchModel(), patch_image()
    probability = torch.softmax(model(image), 1)[0, 0].item()
    deletion = metrics.causal_curve(model, image, patch_map(), "deletion", step=64)
    insertion = metrics.causal_curve(model, image, patch_map(), "insertion", step=64)
    assert deletion[0] == pytest.approx(probability, abs=1e-6)
    zeros = torch.softmax(model(torch.zeros_like(image)), 1)[0, 0].item()
    assert deletion[-1] == pytest.approx(zeros, abs=1e-6)
    assert insertion[-1] == pytest.approx(probability, abs=1e-6)
    blurred = torch.softmax(model(perturbation.rise_blur(image)), 1)[0, 0].item()
    assert insertion[0] == pytest.approx(blurred, abs=1e-6)


def test_the_right_map_beats_a_random_and_an_inverted_map():
    model, image = PatchModel(), patch_image()
    right = patch_map()
    random_map = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    inverted = -right
    scores = {name: {mode: metrics.auc(metrics.causal_curve(model, image, saliency, mode, step=32))
                     for mode in metrics.MODES}
              for name, saliency in (("right", right), ("random", random_map), ("inverted", inverted))}
    assert scores["right"]["insertion"] > scores["random"]["insertion"] + 0.05
    assert scores["random"]["insertion"] > scores["inverted"]["insertion"]
    assert scores["right"]["deletion"] < scores["random"]["deletion"] - 0.05
    assert scores["random"]["deletion"] < scores["inverted"]["deletion"]


def test_curve_rejects_bad_mode_and_mismatched_map():
    with pytest.raises(ValueError, match="mode"):
        metrics.causal_curve(PatchModel(), patch_image(), patch_map(), "sideways")
    with pytest.raises(ValueError, match="does not match"):
        metrics.causal_curve(PatchModel(), patch_image(), np.zeros((16, 16)), "deletion")


def test_intensity_uses_min_max_normalisation():
    saliency = np.array([[0.0, 1.0], [1.0, 2.0]])
    assert metrics.intensity(saliency) == pytest.approx(0.5)
    assert metrics.intensity(saliency * 7 + 3) == pytest.approx(0.5)  # scale and offset do not matter
    assert metrics.intensity(np.full((4, 4), 0.3)) == 0.0  # a constant map says nothing
    np.testing.assert_allclose(metrics.normalise(saliency), saliency / 2)


def test_pointing_games():
    mask = np.zeros((32, 32), bool)
    mask[PATCH] = True
    assert metrics.pointing_game(patch_map(), mask)
    far = np.zeros((32, 32))
    far[30, 30] = 1
    assert not metrics.pointing_game(far, mask, tolerance=5)
    assert metrics.pointing_game(far, mask, tolerance=25)
    assert metrics.energy_pointing_game(patch_map(), mask) > 0.9  # the tie-breaking ramp holds the rest
    assert metrics.energy_pointing_game(-patch_map(), mask) < 0.1


# ---- baselines ----------------------------------------------------------------------------------------------
def patch_teacher():
    return _module_teacher(PatchModel(), Preprocessing(input_size=32), {"name": "patch"})


def eval_image() -> EvalImage:
    image = patch_image()
    return EvalImage("patch", np.zeros((32, 32, 3), np.uint8), image, 0)


def test_rise_finds_the_patch_and_is_seeded():
    method = RiseMethod(patch_teacher(), masks=400, batch_size=100, seed=3)
    saliency = method.explain(eval_image())
    assert saliency.shape == (32, 32)
    assert saliency[PATCH].mean() > saliency.mean() * 1.2
    np.testing.assert_array_equal(saliency, method.explain(eval_image()))


def test_last_spatial_module_picks_the_end_of_the_last_conv_stage(tiny_net):
    from torchvision.models import resnet18

    assert last_spatial_module(resnet18(), torch.zeros(1, 3, 64, 64))[0] == "layer4"
    assert last_spatial_module(tiny_net, torch.zeros(1, 3, 32, 32))[0] == "features.4"  # ReLU before pooling


BIG_PATCH = (slice(24, 48), slice(24, 48))


class BrightPatchModel(nn.Module):
    """Class 0's logit is 4 x (the mean of relu(1x1 convolution) over one patch of a 96x96 image - 0.5). The
    convolution gives Grad-CAM its hooks and a positive channel weight; a superpixel replaced by its mean colour
    (LIME's perturbation) loses the patch's bright squares."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        nn.init.constant_(self.conv.weight, 1 / 3)

    def forward(self, x):
        evidence = torch.relu(self.conv(x))[:, 0, BIG_PATCH[0], BIG_PATCH[1]].mean(dim=(1, 2))
        return torch.stack([4 * (evidence - 0.5), torch.zeros_like(evidence)], dim=1)


def bright_patch_image() -> EvalImage:
    rng = np.random.default_rng(0)
    pixels = rng.integers(96, 160, (96, 96, 3)).astype(np.uint8)  # dim noise: relu keeps little of it
    squares = (np.indices((24, 24)) // 4).sum(0) % 2 * 255
    pixels[BIG_PATCH] = squares.astype(np.uint8)[..., None]
    tensor = (torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.25
    return EvalImage("bright-patch", pixels, tensor, 0)


@pytest.mark.parametrize("method", ["gradcam", "lime"])
def test_gradcam_and_lime_find_the_patch(method):
    pytest.importorskip({"gradcam": "pytorch_grad_cam", "lime": "lime"}[method])
    teacher = _module_teacher(BrightPatchModel(), Preprocessing(96, (0.5,) * 3, (0.25,) * 3), {"name": "patch"})
    image = bright_patch_image()
    assert int(teacher(image.tensor).argmax(1)[0]) == 0
    explainer = GradCamMethod(teacher, "conv") if method == "gradcam" else LimeMethod(teacher, samples=300)
    saliency = explainer.explain(image)
    explainer.close()
    outside = np.ones((96, 96), bool)
    outside[BIG_PATCH] = False
    assert saliency[BIG_PATCH].mean() > 2 * max(saliency[outside].mean(), 1e-6), (saliency[BIG_PATCH].mean(),
                                                                                 saliency[outside].mean())


def test_gradcam_and_lime_adapters_on_a_tiny_target(tiny_net):
    pytest.importorskip("pytorch_grad_cam")
    pytest.importorskip("lime")
    from conftest import quadrant_image

    teacher = _module_teacher(tiny_net, Preprocessing(input_size=96), {"name": "tiny"})
    pixels = np.asarray(quadrant_image(3, np.random.default_rng(0), size=96))  # big enough for several superpixels
    pre = teacher.preprocessing
    tensor = (torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 255
              - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    image = EvalImage("q3", pixels, tensor, int(teacher(tensor).argmax(1)[0]))
    gradcam = GradCamMethod(teacher)
    assert gradcam.layer_name == "features.4"
    cam = gradcam.explain(image)
    gradcam.close()
    assert cam.shape == (96, 96) and cam.min() >= 0 and np.isfinite(cam).all()
    lime = LimeMethod(teacher, samples=40, batch_size=20)
    first = lime.explain(image)
    assert first.shape == (96, 96) and np.isfinite(first).all() and np.ptp(first) > 0
    np.testing.assert_array_equal(first, lime.explain(image))  # seeded


def test_gradcam_refuses_a_black_box_and_unknown_layers(tiny_net):
    pytest.importorskip("pytorch_grad_cam")
    from akd.util import AkdError

    black_box = patch_teacher()
    black_box.module = None
    with pytest.raises(AkdError, match="black box"):
        GradCamMethod(black_box)
    with pytest.raises(AkdError, match="no layer 'nope'"):
        GradCamMethod(_module_teacher(tiny_net, Preprocessing(input_size=32), {"name": "tiny"}), layer="nope")


# ---- report and CLI ---------------------------------------------------------------------------------------------
def test_evaluate_writes_a_complete_report(tiny_checkpoint, flat_folder, tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    pytest.importorskip("lime")
    from akd.evaluation.report import EvalOptions, evaluate, markdown

    from conftest import tiny_eval_target

    teacher = tiny_eval_target(tiny_checkpoint)
    options = EvalOptions(models=[str(tiny_checkpoint)], data=str(flat_folder), out=str(tmp_path / "report"),
                          limit=3, subsets={"rise": 2, "lime": 2}, rise_masks=50, lime_samples=20)
    report = evaluate(options, teacher, progress=False)
    assert report["images"] == 3 and report["common_images"] == 2
    assert report["settings"]["points"] == 9  # 64 x 64 pixels, 64 * 8 per step
    assert set(report["results"]) == {"akd", "gradcam", "rise", "lime"}
    assert report["results"]["akd"]["all"]["insertion"]["count"] == 3
    assert report["results"]["rise"]["all"]["insertion"]["count"] == 2
    assert {result["timed_in"] for result in report["results"].values()} == {"blocks of its own (3 rounds)"}
    for result in report["results"].values():
        assert len(result["curves"]["insertion"]) == 9
        assert result["common"]["deletion"]["count"] == 2
    folder = tmp_path / "report"
    assert json.loads((folder / "report.json").read_text())["images"] == 3
    assert "Table 4" in (folder / "report.md").read_text() == markdown(report)
    # akd against each baseline on the images both explained, per image
    assert set(report["paired"]) == {"akd - gradcam", "akd - rise", "akd - lime"}
    assert report["paired"]["akd - rise"]["insertion"]["count"] == 2
    akd_rows = {row["image"]: row["insertion"] for row in report["results"]["akd"]["per_image"]}
    cam_rows = {row["image"]: row["insertion"] for row in report["results"]["gradcam"]["per_image"]}
    assert report["paired"]["akd - gradcam"]["insertion"]["mean"] == pytest.approx(
        np.mean([akd_rows[k] - cam_rows[k] for k in akd_rows]))
    assert "Paired per-image differences" in markdown(report)
    for figure in ("curves.png", "overlays.png"):
        assert (folder / figure).read_bytes()[:4] == b"\x89PNG"
    page = (folder / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]*)"', page)
    # one thumbnail per image, an overlay per method and image it explained, the curves; all inlined
    assert len(sources) == 3 + (3 + 3 + 2 + 2) + 1 and all(src.startswith("data:image/") for src in sources)
    assert "http://" not in page and "https://" not in page and page.count('<tr data-margin=') == 3
    assert all(f"<th>{name}</th>" in page for name in report["results"])
    assert not list(folder.glob(".*tmp"))


def test_speed_is_timed_in_blocks_apart_from_the_scoring(monkeypatch):
    """A method that runs slowly right after another one (as onnxruntime after PyTorch's spinning threads) is timed
    at its own pace; a method slower than a block keeps its scoring-loop times and is not run again."""
    import time

    from akd.evaluation import report as report_module

    monkeypatch.setattr(report_module, "TIMING_BLOCK_SECONDS", 0.2)
    last = {"caller": None}

    class Method:
        made_elsewhere = False

        def __init__(self, name):
            self.name, self.calls = name, 0

        def explain(self, image):
            self.calls += 1
            time.sleep(0.03 if last["caller"] not in (None, self.name) else 0.003)
            last["caller"] = self.name

    methods = [Method("akd"), Method("gradcam"), Method("rise")]
    images = list(range(10))
    per_image = {"akd": [{"seconds": 0.03}] * 10, "gradcam": [{"seconds": 0.03}] * 10,
                 "rise": [{"seconds": 1.0}] * 2}
    speed = report_module._time_methods(methods, images, per_image, {"gradcam": 4})
    assert speed["rise"] == {"seconds": report_module._summary([1.0, 1.0]), "timed_in": "the scoring loop"}
    assert methods[2].calls == 0
    for method, count in ((methods[0], 10), (methods[1], 4)):
        assert method.calls == count * report_module.TIMING_ROUNDS  # every image of its subset, in each round
        assert speed[method.name]["seconds"]["median"] < 0.015  # each call after the other method's took 0.03
        assert speed[method.name]["timed_in"].startswith("blocks of its own")


def test_paired_difference_interval_is_about_the_per_image_differences():
    from akd.evaluation.report import paired_difference

    rng = np.random.default_rng(0)
    theirs = rng.uniform(0.3, 0.7, 200)
    better = paired_difference(list(theirs + 0.03 + rng.normal(0, 0.02, 200)), list(theirs))
    assert 0 < better["ci95"][0] < better["mean"] < better["ci95"][1] and better["count"] == 200
    # large image-to-image spread but a consistent small gain: the paired interval still excludes 0
    assert better["ci95"][1] - better["ci95"][0] < 0.02
    same = paired_difference(list(theirs + rng.normal(0, 0.05, 200)), list(theirs))
    assert same["ci95"][0] < 0 < same["ci95"][1]
    with pytest.raises(ValueError):
        paired_difference([0.5], [0.4])


def test_gradcam_layers_become_named_methods_and_are_released(tiny_net):
    import contextlib

    from akd.evaluation.report import EvalOptions, build_methods

    teacher = _module_teacher(tiny_net, Preprocessing(input_size=32), {"name": "tiny"})
    options = EvalOptions(models=[], data="unused", out="unused", methods=("gradcam",),
                          gradcam_layers=["features.0", "features.3"])
    layers = [tiny_net.get_submodule(name) for name in ("features.0", "features.3")]
    with contextlib.ExitStack() as stack:
        methods = build_methods(options, teacher, stack)
        assert [m.name for m in methods] == ["gradcam:features.0", "gradcam:features.3"]
        assert [m.layer_name for m in methods] == ["features.0", "features.3"]
        assert all(layer._forward_hooks for layer in layers)
    assert not any(layer._forward_hooks for layer in layers)  # the stack's exit released every hook


def test_a_registered_method_is_one_function_away(tiny_net, flat_folder, tmp_path):
    """Adding a method: a SaliencyMethod and a register_method builder; akd-evaluate then runs it by name."""
    from akd.evaluation import methods as registry
    from akd.evaluation.report import EvalOptions, evaluate

    class Centre(registry.SaliencyMethod):
        name, closed = "centre", False

        def explain(self, image):
            height, width = image.tensor.shape[-2:]
            ys, xs = np.mgrid[:height, :width]
            return -((ys - height / 2) ** 2 + (xs - width / 2) ** 2).astype(np.float32)

        def close(self):
            Centre.closed = True

    registry.register_method("centre")(lambda options, teacher: [Centre()])
    try:
        teacher = _module_teacher(tiny_net, Preprocessing(input_size=32), {"name": "tiny"})
        report = evaluate(EvalOptions(models=[], data=str(flat_folder), out=str(tmp_path / "r"),
                                      methods=("centre", "rise"), limit=3, rise_masks=50), teacher, progress=False)
    finally:
        del registry.METHOD_BUILDERS["centre"]
    assert report["methods"] == ["centre", "rise"] and Centre.closed
    assert report["machine"]["execution"]["centre"] == "torch on cpu"
    assert report["machine"]["target_device"] == "cpu"
    assert len(report["results"]["centre"]["per_image"]) == 3


def test_saved_maps_are_scored_like_the_method_that_made_them(tiny_net, flat_folder, tmp_path):
    """Maps made elsewhere (RISE on a GPU) and saved: the same rows as the method computed here on the images the
    file covers, the seconds recorded where they were made; a map of another class is refused, naming the image."""
    from akd.evaluation.report import EvalOptions, evaluate, load_images
    from akd.util import AkdError

    teacher = _module_teacher(tiny_net, Preprocessing(input_size=32), {"name": "tiny"})
    images, _ = load_images(teacher, str(flat_folder), 3, seed=0)
    rise = RiseMethod(teacher, masks=50)
    saved = tmp_path / "maps.npz"
    np.savez(saved, names=np.array([image.name for image in images[1:]]),
             class_ids=np.array([image.class_id for image in images[1:]]),
             maps=np.stack([rise.explain(image) for image in images[1:]]), seconds=np.array([0.25, 0.5]))
    report = evaluate(EvalOptions(models=[], data=str(flat_folder), out=str(tmp_path / "r"), methods=("rise",),
                                  limit=3, rise_masks=50, saved_maps={"rise-gpu": [str(saved)]}),
                      teacher, progress=False)
    computed = {row["image"]: row for row in report["results"]["rise"]["per_image"]}
    rows = report["results"]["rise-gpu"]["per_image"]
    assert [row["image"] for row in rows] == [image.name for image in images[1:]]  # only the covered images
    for row in rows:
        for key in ("insertion", "deletion", "intensity"):
            assert row[key] == computed[row["image"]][key]
    assert [row["seconds"] for row in rows] == [0.25, 0.5]
    assert report["results"]["rise-gpu"]["timed_in"] == f"where the maps were made: saved maps ({saved})"
    assert report["common_images"] == 2

    np.savez(saved, names=np.array([images[0].name]), class_ids=np.array([images[0].class_id + 1]),
             maps=np.zeros((1, 32, 32), np.float32))
    with pytest.raises(AkdError, match=f"the map of {images[0].name} explains class"):
        evaluate(EvalOptions(models=[], data=str(flat_folder), out=str(tmp_path / "r2"), methods=(),
                             limit=3, saved_maps={"rise-gpu": [str(saved)]}), teacher, progress=False)


@pytest.mark.parametrize("extra, fragment", [
    (["--methods", "akd,magic"], "unknown method 'magic'"),
    (["--subset", "rise"], "expected METHOD=N"),
    (["--methods", "gradcam", "--subset", "rise=2"], "--subset rise"),
    (["--model", "missing.onnx", "--methods", "akd"], "missing.onnx: model not found"),
    (["--methods", "rise", "--maps", "rise"], "expected LABEL=FILE.npz"),
    (["--methods", "rise", "--maps", "rise=maps.npz"], "--maps rise: the label names a method"),
    (["--methods", "rise", "--maps", "saved=missing.npz"], "missing.npz: not a saved-maps .npz"),
])
def test_cli_errors_are_one_line(torchscript_target, flat_folder, tmp_path, capsys, extra, fragment):
    code = main(["evaluate", "--teacher", str(torchscript_target), "--data", str(flat_folder),
                 "--out", str(tmp_path / "r"), "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_cli_missing_data(torchscript_target, tmp_path, capsys):
    code = main(["evaluate", "--teacher", str(torchscript_target), "--data", str(tmp_path / "none"),
                 "--methods", "rise", "--out", str(tmp_path / "r")])
    assert code == 2 and "none" in capsys.readouterr().err


def test_evaluate_cli_full_report_with_masks(flat_folder, tmp_path, capsys):
    """The command end to end: a file target with the surrogate's class count, object masks -> pointing games in
    report.json and report.md, the figures written; a target with another class count is refused up front."""
    pytest.importorskip("matplotlib")
    from akd.models.surrogate import Surrogate, save_checkpoint

    from conftest import tiny_surrogate_config

    torch.manual_seed(0)
    checkpoint = tmp_path / "s224.safetensors"  # file targets read 224x224 images
    save_checkpoint(checkpoint, Surrogate(tiny_surrogate_config(size=224)).eval())
    target = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                           nn.Linear(8, 10)).eval()
    scripted = tmp_path / "target.pt"
    torch.jit.script(target).save(str(scripted))
    masks = tmp_path / "masks"
    masks.mkdir()
    from PIL import Image

    for path in flat_folder.iterdir():
        mask = np.zeros((32, 32), np.uint8)
        mask[8:24, 8:24] = 255
        Image.fromarray(mask).save(masks / f"{path.stem}.png")
    out = tmp_path / "report"
    common = ["evaluate", "--model", str(checkpoint), "--teacher", str(scripted), "--mean", "0.5,0.5,0.5",
              "--std", "0.25,0.25,0.25", "--data", str(flat_folder), "--methods", "akd,rise", "--limit", "2",
              "--rise-masks", "20", "--no-progress"]
    code = main([*common, "--masks", str(masks), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["results"]["akd"]["all"]["pointing"]["count"] == 2
    assert "energy_pointing" in report["results"]["rise"]["all"]
    assert {p.name for p in out.iterdir()} >= {"report.json", "report.md", "curves.png", "overlays.png"}
    five = tmp_path / "five.pt"
    torch.jit.script(nn.Sequential(nn.Conv2d(3, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())).save(str(five))
    code = main([*common[:3], "--teacher", str(five), *common[5:], "--out", str(tmp_path / "r2")])
    err = capsys.readouterr().err
    assert code == 2 and "knows 10 classes but the target has 5" in err


def test_black_box_target_lists_gradcam_as_not_run(tiny_net, flat_folder, tmp_path):
    """An ONNX black box: RISE runs, Grad-CAM is reported as needing gradients (not dropped, not crashing); asked
    for Grad-CAM alone, the run refuses with the reason."""
    from akd.evaluation.report import EvalOptions, evaluate
    from akd.models.teachers import load_teacher
    from akd.util import AkdError

    path = tmp_path / "tiny.onnx"
    torch.onnx.export(tiny_net, torch.zeros(1, 3, 32, 32), str(path), input_names=["images"], dynamo=False,
                      dynamic_axes={"images": {0: "batch"}})
    teacher = load_teacher(str(path), preprocessing=Preprocessing(input_size=32))
    report = evaluate(EvalOptions(models=[], data=str(flat_folder), out=str(tmp_path / "r"),
                                  methods=("gradcam", "rise"), limit=2, rise_masks=50), teacher, progress=False)
    assert report["methods"] == ["rise"]
    assert report["not_run"] == {"gradcam": "needs gradients; tiny.onnx is a black box"}
    assert "Not run: gradcam (needs gradients; tiny.onnx is a black box)." in (tmp_path / "r" / "report.md").read_text()
    with pytest.raises(AkdError, match="nothing to evaluate: gradcam needs gradients"):
        evaluate(EvalOptions(models=[], data=str(flat_folder), out=str(tmp_path / "r2"), methods=("gradcam",),
                             limit=2), teacher, progress=False)
