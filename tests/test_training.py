import json
import os
import subprocess
import sys

import pytest
import torch

from akd.models.surrogate import load_surrogate, read_checkpoint
from akd.train.recipes import apply_overrides, load_recipe
from akd.train.trainer import Trainer, TrainOptions, train

from conftest import SIZE


def _options(target, data, out, stages, epochs, **overrides) -> TrainOptions:
    from akd.data.preprocessing import Preprocessing

    settings = [f"{k}={v}" for k, v in {"stages.student.lr": 0.01, "stages.joint.lr": 0.01,
                                          "stages.explainer.lr": 0.01, "destruction": 0.5, **overrides}.items()]
    recipe = apply_overrides(load_recipe("paper-imagenet"), settings, epochs=epochs, batch_size=8)
    return TrainOptions(teacher=str(target), data=str(data), out=str(out), recipe=recipe, student="resnet18_cbam",
                        stages=stages, teacher_preprocessing=Preprocessing(input_size=SIZE), progress=False)


def _weights(path) -> dict[str, torch.Tensor]:
    return dict(load_surrogate(path).state_dict())


@pytest.mark.parametrize("stage", ["student", "explainer", "joint"])
def test_loss_falls_on_a_fixed_batch(torchscript_target, stage):
    from akd.data.preprocessing import Preprocessing
    from akd.models.surrogate import Surrogate
    from akd.models.teachers import load_teacher
    from akd.train.step import DistillationStep, param_groups, set_trainable

    torch.manual_seed(0)
    teacher = load_teacher(str(torchscript_target), preprocessing=Preprocessing(input_size=SIZE))
    surrogate = Surrogate({"student": "resnet18_cbam", "classes": list("abcd"), "explainer_width": 32})
    recipe = {**load_recipe("paper-imagenet"), "freeze_bn": True}
    set_trainable(surrogate, stage, recipe)
    step = DistillationStep(surrogate, teacher, recipe, stage)
    params = [p for group in param_groups(surrogate, stage, recipe, False) for p in group["params"]]
    optimizer = torch.optim.SGD(params, lr=0.02, momentum=0.9, nesterov=True)
    images, labels = torch.randn(8, 3, SIZE, SIZE), torch.full((8,), -1)
    history = []
    for _ in range(25):
        loss, _ = step(images, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < 0.6 * history[0], history


def test_chained_stages_write_a_self_describing_checkpoint(torchscript_target, imagefolder, tmp_path):
    """That each stage learns is test_loss_falls_on_a_fixed_batch's job; this one checks what the run records."""
    out = tmp_path / "e.safetensors"
    metrics = train(_options(torchscript_target, imagefolder, out, ["student", "explainer"], epochs=2))
    assert metrics["stage"] == "explainer" and "train_sparsity" in metrics
    _, header = read_checkpoint(out)
    config = json.loads(header["config"])
    assert config["student"] == "resnet18_cbam" and config["classes"] == [f"class_{i}" for i in range(4)]
    assert config["input_size"] == [SIZE, SIZE] and len(config["target"]["sha256"]) == 64
    assert config["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert config["recipe"]["name"] == "paper-imagenet" and config["metrics"]["epoch"] == 2
    model = load_surrogate(out)
    saliency, logits = model(torch.randn(2, 3, SIZE, SIZE))
    assert saliency.shape == (2, 1, SIZE, SIZE) and logits.shape == (2, 4)


def test_checkpoint_header_has_no_pickle(torchscript_target, imagefolder, tmp_path):
    out = tmp_path / "p.safetensors"
    train(_options(torchscript_target, imagefolder, out, ["student"], epochs=1))
    raw = out.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    json.loads(raw[8:8 + header_len])  # the whole header is JSON
    assert b"\x80\x04" not in raw[:8 + header_len]


METRIC_TERMS = {"insertion": 1.0, "deletion": 1.0, "explanation": 0.0, "explainer_cam": "true", "rank_prior": 1.0}


@pytest.mark.parametrize("terms", [{}, METRIC_TERMS], ids=["paper", "metric-terms-and-cam"])
def test_resume_is_bit_identical(torchscript_target, imagefolder, tmp_path, terms):
    """Also with the soft top-k terms, whose areas are drawn from the global RNG the checkpoint restores."""
    straight = tmp_path / "straight.safetensors"
    train(_options(torchscript_target, imagefolder, straight, ["joint"], epochs=2, **terms))
    resumed = tmp_path / "resumed.safetensors"
    train(_options(torchscript_target, imagefolder, resumed, ["joint"], epochs=1, **terms))
    options = _options(torchscript_target, imagefolder, resumed, ["joint"], epochs=2, **terms)
    options.resume = True
    train(options)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_interrupted_chained_run_resumes_exactly(torchscript_target, imagefolder, tmp_path, monkeypatch):
    stages = ["student", "explainer"]
    straight = tmp_path / "straight.safetensors"
    train(_options(torchscript_target, imagefolder, straight, stages, epochs=2))

    interrupted = tmp_path / "interrupted.safetensors"
    original = Trainer._train_epoch
    calls = []

    def crash_on_third_epoch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_train_epoch", crash_on_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(_options(torchscript_target, imagefolder, interrupted, stages, epochs=2))
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    _, header = read_checkpoint(interrupted)
    assert json.loads(header["train_state"])["completed"] == {"student": 2}
    options = _options(torchscript_target, imagefolder, interrupted, stages, epochs=2)
    options.resume = True
    train(options)
    a, b = _weights(straight), _weights(interrupted)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_black_box_target_trains_with_student_as_judge(tmp_path, tiny_net, imagefolder):
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(tiny_net, torch.zeros(1, 3, SIZE, SIZE), str(path), input_names=["images"], dynamo=False)
    out = tmp_path / "bb.safetensors"
    metrics = train(_options(path, imagefolder, out, ["student", "explainer"], epochs=1))
    assert metrics["train_images"] == 16
    assert json.loads(read_checkpoint(out)[1]["config"])["target"]["kind"] == "onnx"


def _run_cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "akd.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(torchscript_target, imagefolder, tmp_path):
    common = ["train", "--teacher", str(torchscript_target), "--data", str(imagefolder), "--student", "resnet18_cbam",
              "--stages", "student", "--epochs", "2", "--batch-size", "8", "--image-size", str(SIZE),
              "--set", "freeze_bn=true", "--set", "stages.student.lr=0.01", "--no-progress"]
    single = tmp_path / "single.safetensors"
    result = _run_cli(*common, "--out", str(single))
    assert result.returncode == 0, result.stderr
    double = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(_free_port()), "-m", "akd.cli", *common, "--out", str(double)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world size 2" in result.stderr
    a, b = _weights(single), _weights(double)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4, msg=key)
    changed = any(not torch.equal(a[k], b0) for k, b0 in _weights_at_init(a).items())
    assert changed


def _weights_at_init(reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from akd.models.surrogate import Surrogate

    torch.manual_seed(0)
    model = Surrogate({"student": "resnet18_cbam", "classes": ["a", "b", "c", "d"]})
    return {k: v for k, v in model.state_dict().items() if k in reference and "attention" in k}


def test_stage_batch_size_and_the_batch_flag():
    recipe = load_recipe("imagenet-lite0")
    assert recipe["stages"]["explainer"]["batch_size"] == 16 and recipe["batch_size"] == 32
    assert recipe["rank_prior"] == 0 and recipe["sparsity"] == 20.0
    flagged = apply_overrides(recipe, [], batch_size=8)  # the flag is the global batch of every stage
    assert flagged["batch_size"] == 8 and "batch_size" not in flagged["stages"]["explainer"]
    assert "batch_size" in recipe["stages"]["explainer"]  # overrides never touch the loaded recipe


def test_rank_prior_power_must_be_positive():
    from akd.util import AkdError

    with pytest.raises(AkdError, match="rank_prior_power"):
        apply_overrides(load_recipe("imagenet-lite0"), ["rank_prior_power=0"])


@pytest.mark.parametrize("override, message", [
    ("topk_areas=[]", "topk_areas"), ("topk_areas=[0.1, 1.5]", "topk_areas"), ("topk_areas=[a]", "topk_areas"),
    ("topk_samples=0", "topk_samples"), ("topk_samples=9", "topk_samples"), ("topk_temperature=0", "temperature"),
])
def test_soft_top_k_keys_are_validated(override, message):
    from akd.util import AkdError

    with pytest.raises(AkdError, match=message):
        apply_overrides(load_recipe("imagenet-lite0"), [override])


def test_paper_recipes_keep_the_paper_objective():
    """The new keys default to the paper's objective (explanation KL on, metric terms off, no CAM input)."""
    recipe = load_recipe("paper-imagenet")
    assert (recipe["explanation"], recipe["insertion"], recipe["deletion"], recipe["explainer_cam"]) == \
        (1.0, 0.0, 0.0, False)
    lite = load_recipe("imagenet-lite0")  # the shipped recipe: CAM's ranking, only the map's calibration trains
    assert lite["explainer_cam"] is True and lite["explainer_params"] == "calibration"
    assert lite["cam_score"] == "log_probability" and lite["stages"]["explainer"]["epochs"] > 0
    assert (recipe["cam_score"], recipe["explainer_params"]) == ("logit", "all")


def test_calibration_stage_moves_intensity_and_keeps_the_ranking(torchscript_target, imagefolder, tmp_path):
    """explainer_params 'calibration': only the CAM gain and the head's bias train, so the map's values (its
    intensity) follow the sparsity weight while the pixel order - all insertion/deletion read - stays CAM's."""
    first = tmp_path / "first.safetensors"
    options = _options(torchscript_target, imagefolder, first, ["student"], epochs=1, explainer_cam="true",
                       cam_score="log_probability")
    options.image_size = 128  # a 4x4 map at stride 32: at 32x32 CAM is one position and the map is flat
    train(options)
    before = load_surrogate(first)
    out = tmp_path / "calibrated.safetensors"
    options = _options(torchscript_target, imagefolder, out, ["student", "explainer"], epochs=1,
                       explainer_cam="true", cam_score="log_probability", explainer_params="calibration",
                       sparsity=5.0, destruction=0.0, **{"stages.explainer.lr": 0.5})
    options.image_size = 128
    train(options)
    after = load_surrogate(out)
    images = torch.randn(4, 3, 128, 128)
    with torch.no_grad():
        old, new = before(images)[0], after(images)[0]
    assert torch.equal(after.explainer.head.weight, torch.zeros_like(after.explainer.head.weight))
    gain, bias = after.explainer.cam_gain.item(), after.explainer.head.bias.item()
    assert new.mean() < old.mean() - 0.05, (gain, bias)  # the sparsity weight darkened the map
    assert old.flatten(1).std(dim=1).min() > 1e-3 and new.flatten(1).std(dim=1).min() > 1e-4  # maps with a ranking
    for a, b in zip(old.flatten(1), new.flatten(1), strict=True):  # float rounding may tie close values
        ranks = torch.stack([a.argsort().argsort(), b.argsort().argsort()]).double()
        assert torch.corrcoef(ranks)[0, 1] > 0.9999, (gain, bias)
    from akd.util import AkdError

    with pytest.raises(AkdError, match="needs explainer_cam"):
        apply_overrides(load_recipe("paper-imagenet"), ["explainer_params=calibration"])


def test_toml_recipe_equals_yaml_and_milestones_step_the_rate(tmp_path):
    from akd.train.recipes import learning_rate

    yaml_recipe = load_recipe("paper-imagenet")
    lines = [f"{k} = {json.dumps(v)}" for k, v in yaml_recipe.items() if not isinstance(v, dict)]
    for stage, spec in yaml_recipe["stages"].items():
        lines.append(f"[stages.{stage}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in spec.items()]
    path = tmp_path / "paper.toml"
    path.write_text("\n".join(lines) + "\n")
    assert load_recipe(str(path)) == yaml_recipe
    spec = {"lr": 0.1, "milestones": [2, 5], "gamma": 0.5}
    assert [learning_rate(spec, epoch) for epoch in range(7)] == [0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025]
    assert learning_rate({"lr": 0.3}, 10) == 0.3
    path.write_text("alpha = [unclosed\n")
    from akd.util import AkdError

    with pytest.raises(AkdError, match="malformed recipe"):
        load_recipe(str(path))


def test_amp_scaler_state_survives_the_json_train_state():
    """The trainer stores GradScaler.state_dict() in the checkpoint's JSON header and restores it with
    load_state_dict (calling update(scale) before any scale() raised). CPU scaler: same state format as CUDA's."""
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    for _ in range(2):
        scaler.scale((weight ** 2).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
    restored = torch.amp.GradScaler("cpu")
    restored.load_state_dict(json.loads(json.dumps(scaler.state_dict())))
    assert restored.get_scale() == scaler.get_scale() == 1024.0
    assert restored.state_dict()["_growth_tracker"] == 2
    restored.scale((weight ** 2).sum()).backward()
    restored.step(optimizer)
    restored.update()  # the third step grows the scale, as the uninterrupted scaler would
    assert restored.get_scale() == 2048.0


def test_mixing_makes_new_images_the_target_labels(torchscript_target):
    """Mixup/CutMix in the student stage: the target is asked about the mixed images (not the originals), the true
    labels are dropped for them, and the explainer stage never mixes."""
    from akd.data.preprocessing import Preprocessing
    from akd.models.surrogate import Surrogate
    from akd.models.teachers import load_teacher
    from akd.train.step import DistillationStep, image_mixer

    torch.manual_seed(0)
    recipe = apply_overrides(load_recipe("blackbox"), ["mixup_alpha=0.8", "cutmix_alpha=1.0"])
    images = torch.rand(6, 3, SIZE, SIZE)
    mixed = image_mixer(recipe)(images)
    assert mixed.shape == images.shape and not torch.equal(mixed, images)
    low, high = torch.minimum(images, images.flip(0)), torch.maximum(images, images.flip(0))
    assert bool(((mixed >= low - 1e-6) & (mixed <= high + 1e-6)).all())  # each pixel from the image or its pair
    assert image_mixer(load_recipe("blackbox")) is None  # off unless a recipe asks for it

    target = load_teacher(str(torchscript_target), preprocessing=Preprocessing(input_size=SIZE))
    seen = []

    def teacher(batch):  # the target, recording what it is asked about
        seen.append(batch.clone())
        return target(batch)

    teacher.differentiable = False
    surrogate = Surrogate({"student": "resnet18_cbam", "classes": list("abcd"), "explainer_width": 32})
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    DistillationStep(surrogate, teacher, {**recipe, "alpha": 0.0}, "student")(images, labels)
    assert not torch.equal(seen[-1], images)
    DistillationStep(surrogate, teacher, recipe, "explainer")(images, labels)
    assert torch.equal(seen[-1], images)
    for bad, message in (("mixup_alpha=-1", "mixup_alpha"), ("mix_prob=2", "mix_prob")):
        with pytest.raises(Exception, match=message):
            apply_overrides(recipe, [bad])
