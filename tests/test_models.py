import json

import pytest
import torch

from akd.models.cbam import CBAM
from akd.models.students import AttentiveBlock, AttentiveStage, build_student
from akd.models.surrogate import Surrogate, load_surrogate


def _config(student: str, classes: int = 10) -> dict:
    return {"student": student, "classes": [f"c{i}" for i in range(classes)], "explainer_width": 32}


def test_cbam_returns_attentive_difference():
    torch.manual_seed(0)
    cbam = CBAM(32)
    f = torch.randn(2, 32, 8, 8)
    f_hat, delta = cbam(f)
    assert f_hat.shape == f.shape
    torch.testing.assert_close(delta, f_hat - f)
    # attention only scales features by weights in (0, 1): |f_hat| <= |f| everywhere
    assert bool((f_hat.abs() <= f.abs() + 1e-6).all())


def test_cbam_gates_are_constants_of_the_gradient_outside_training_only():
    torch.manual_seed(0)
    cbam = CBAM(16)
    for last in (cbam.channel.mlp[-1], cbam.spatial.conv):  # gates that move with the input, away from 0.5
        torch.nn.init.normal_(last.weight, std=0.5)
    f = torch.randn(1, 16, 6, 6, requires_grad=True)
    cbam.eval()
    f_hat, _ = cbam(f)
    (grad,) = torch.autograd.grad(f_hat.sum(), f)
    with torch.no_grad():  # the gates held fixed: d(f * c * s)/df = c * s
        channel = cbam.channel(f)
        expected = channel * cbam.spatial(f * channel)
    torch.testing.assert_close(grad, expected)
    cbam.train()
    f_hat, _ = cbam(f)
    (trained,) = torch.autograd.grad(f_hat.sum(), f, retain_graph=True)
    assert (trained - expected).abs().max() > 1e-3  # training differentiates through the gates too
    f_hat.sum().backward()
    assert cbam.channel.mlp[0].weight.grad.abs().sum() > 0 and cbam.spatial.conv.weight.grad.abs().sum() > 0


def test_cbam_channel_attention_is_per_channel_and_spatial_is_per_position():
    cbam = CBAM(16)
    f = torch.randn(1, 16, 6, 6)
    channel = cbam.channel(f)
    spatial = cbam.spatial(f)
    assert channel.shape == (1, 16, 1, 1) and spatial.shape == (1, 1, 6, 6)
    assert bool(((channel > 0) & (channel < 1)).all()) and bool(((spatial > 0) & (spatial < 1)).all())
    # spatial attention reacts to where the evidence is: a hot spot gets a different weight than the background
    hot = torch.zeros(1, 16, 6, 6)
    hot[..., 2, 3] = 10.0
    weights = cbam.spatial(hot)[0, 0]
    assert weights[2, 3] != weights[0, 0]


def test_cbam_identity_init_keeps_features():
    f = torch.randn(2, 24, 5, 5)
    f_hat, delta = CBAM(24, identity_init=True)(f)
    assert (delta.abs().max() / f.abs().max()) < 0.02
    torch.testing.assert_close(f_hat, f, atol=0.05 * f.abs().max().item(), rtol=0)


def test_resnet50_cbam_structure_matches_paper():
    student = build_student("resnet50_cbam", 10)
    network = student.network
    assert not any(isinstance(m, AttentiveBlock) for m in network.layer1.modules())
    for name, blocks in (("layer2", 4), ("layer3", 6), ("layer4", 3)):
        layer = getattr(network, name)
        assert len(layer) == blocks and all(isinstance(block, AttentiveBlock) for block in layer)
    assert student.tap_channels == [512, 1024, 2048]
    assert student._taps == [network.layer2[-1], network.layer3[-1], network.layer4[-1]]


def test_surrogate_shapes_and_ranges_resnet18():
    model = Surrogate(_config("resnet18_cbam")).eval()
    images = torch.randn(3, 3, 64, 96)
    with torch.no_grad():
        saliency, logits = model(images)
    assert saliency.shape == (3, 1, 64, 96) and logits.shape == (3, 10)
    assert model.student.tap_channels == [128, 256, 512]


def test_resnet34_cbam_builds():
    student = build_student("resnet34_cbam", 5)
    logits, deltas, _ = student(torch.randn(1, 3, 64, 64))
    assert logits.shape == (1, 5)
    assert [d.shape[1] for d in deltas] == [128, 256, 512]
    assert [d.shape[-1] for d in deltas] == [8, 4, 2]


def test_timm_student_taps_three_deepest_stages_and_keeps_target_weights():
    import timm

    target = timm.create_model("resnet10t", pretrained=False, num_classes=7).eval()
    student = build_student("timm:resnet10t", 7, init_state=target.state_dict()).eval()
    assert sum(isinstance(m, AttentiveStage) for m in student.modules()) == 3
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, deltas, _ = student(images)
        expected = target(images)
    assert [d.shape[-1] for d in deltas] == [8, 4, 2]
    # near-identity attention: the student starts out predicting what the target predicts
    assert torch.equal(logits.argmax(1), expected.argmax(1))
    torch.testing.assert_close(logits, expected, atol=0.15 * expected.abs().max().item(), rtol=0)


def test_unknown_student_is_a_clear_error():

    from akd.util import AkdError

    with pytest.raises(AkdError, match="unknown student"):
        build_student("vgg_cbam", 3)


def test_class_activation_map_is_each_positions_share_of_the_logit():
    """With global average pooling and a linear classifier, the mean of CAM over positions plus the bias is the
    class logit: CAM is exact, not an approximation, for both student families."""
    torch.manual_seed(0)
    for arch in ("resnet18_cbam", "timm:resnet10t"):
        student = build_student(arch, 6).eval()
        with torch.no_grad():
            logits, _, features = student(torch.randn(3, 3, 64, 64))
            classes = torch.tensor([0, 5, 2])
            one_hot = torch.nn.functional.one_hot(classes, 6).float()[..., None, None]
            cam = student.class_activation_map(features, one_hot)
        bias = student._classifier[0].bias[classes]
        assert cam.shape == (3, 1, 2, 2)
        torch.testing.assert_close(cam.mean(dim=(1, 2, 3)) + bias, logits[torch.arange(3), classes])


def test_log_probability_cam_is_the_gradient_of_the_log_probability():
    """``cam_score: log_probability``: CAM with weights one-hot - softmax equals, position by position, the
    gradient of log p_c with respect to the pooled features times those features (Grad-CAM of log p_c at the
    last layer); it differs from the logit CAM and survives export as softmax - softmax."""
    from akd.models.surrogate import cam_class_weights

    torch.manual_seed(0)
    student = build_student("resnet18_cbam", 6).eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        student._classifier[0].weight.mul_(30)  # clear winners: the sharpened class choice is one-hot
        logits, _, features = student(images)
    weights = cam_class_weights(logits[..., None, None] * 0.01, "log_probability")  # close logits: soft choice
    assert torch.allclose(weights.sum(dim=1), torch.zeros(3, 1, 1), atol=1e-6)
    classes = logits.argmax(1)
    classifier = student._classifier[0].double()  # float64: 1 - p_c of these confident logits needs it
    pooled = features.double().mean(dim=(2, 3)).requires_grad_(True)
    log_p = torch.log_softmax(classifier(pooled), dim=1)[torch.arange(3), classes].sum()
    (gradient,) = torch.autograd.grad(log_p, pooled)
    probability = torch.softmax(classifier(pooled.detach()), dim=1)[torch.arange(3), classes]
    student._classifier[0].float()
    with torch.no_grad():
        cam = student.class_activation_map(features, cam_class_weights(logits[..., None, None], "log_probability"))
        plain = student.class_activation_map(features, cam_class_weights(logits[..., None, None], "logit"))
    expected = (gradient[..., None, None] * features.double()).sum(dim=1, keepdim=True)
    torch.testing.assert_close(cam, (expected / (1 - probability).view(3, 1, 1, 1)).float(), rtol=1e-3, atol=1e-4)
    with torch.no_grad():  # a confident prediction (1 - p_c rounds to 0 in float32) keeps a contrastive map
        confident = logits.clone()
        confident[torch.arange(3), classes] += 60.0
        sharp = student.class_activation_map(features, cam_class_weights(confident[..., None, None],
                                                                          "log_probability"))
    torch.testing.assert_close(sharp, cam, rtol=1e-3, atol=1e-3)
    assert not torch.allclose(cam, plain)
    with pytest.raises(ValueError, match="cam_score"):
        cam_class_weights(logits, "probability")


def test_cam_explainer_starts_from_the_cam_ranking_and_exports(tmp_path):
    """A fresh CAM-reading explainer ranks pixels as CAM of the predicted class does (zero-initialised head), so
    training starts from a faithful map; the class choice happens inside the surrogate and survives ONNX export."""
    import numpy as np
    import onnxruntime as ort
    import torch.nn.functional as F

    torch.manual_seed(0)
    config = {"student": "resnet18_cbam", "classes": list("abcdef"), "explainer_width": 32, "explainer_cam": True}
    surrogate = Surrogate(config).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        saliency, logits = surrogate(images)
        _, _, features = surrogate.student(images)
        one_hot = torch.nn.functional.one_hot(logits.argmax(1), 6).float()[..., None, None]
        cam = surrogate.student.class_activation_map(features, one_hot)
    expected = F.interpolate(F.interpolate(cam, size=(8, 8), mode="bilinear"), size=(64, 64), mode="bilinear")
    for got, want in zip(saliency, expected, strict=True):
        assert np.corrcoef(got.flatten().numpy(), want.flatten().numpy())[0, 1] > 0.999
    path = tmp_path / "cam.onnx"
    torch.onnx.export(surrogate, (images,), str(path), input_names=["images"], output_names=["saliency", "logits"],
                      dynamic_axes={"images": {0: "n"}}, opset_version=17, dynamo=False)
    other = torch.randn(3, 3, 64, 64)  # another batch size, other predicted classes
    onnx_saliency, onnx_logits = ort.InferenceSession(str(path)).run(None, {"images": other.numpy()})
    with torch.no_grad():
        torch_saliency, torch_logits = surrogate(other)
    np.testing.assert_allclose(onnx_saliency, torch_saliency.numpy(), atol=1e-5)
    np.testing.assert_allclose(onnx_logits, torch_logits.numpy(), atol=1e-4)


def test_registered_students_and_targets_are_one_function_away(tiny_net):
    """Adding a student or a target: one registered function; build_student/load_teacher then know it by name."""
    from akd.data.preprocessing import Preprocessing
    from akd.models import students, teachers
    from akd.util import AkdError

    students.register_student("tiny_cbam")(lambda classes, init: build_student("resnet18_cbam", classes, init))
    teachers.register_builtin_target("tiny")(lambda: teachers.teacher_from_module(tiny_net, Preprocessing(32)))
    try:
        assert build_student("tiny_cbam", 7).tap_channels == build_student("resnet18_cbam", 7).tap_channels
        teacher = teachers.load_teacher("tiny")
        assert teacher.identity["kind"] == "module" and teacher.preprocessing.input_size == 32
        assert teacher(torch.zeros(2, 3, 32, 32)).shape == (2, teacher.num_classes)
        with pytest.raises(AkdError, match="unknown student 'nope'.*tiny_cbam"):
            build_student("nope", 3)
    finally:
        del students.STUDENTS["tiny_cbam"], teachers.BUILTIN_TARGETS["tiny"]
    with pytest.raises(AkdError, match="unknown target 'tiny'"):
        teachers.load_teacher("tiny")


def test_a_calibration_only_decoder_converts_to_the_calibrated_cam_head_bit_for_bit(tmp_path):
    """A checkpoint from before heads had names, whose decoder only calibrated CAM (head weights zero), loads as
    the calibrated-cam head: two parameters instead of the decoder, the same map bit for bit. A decoder whose
    head has weights stays a decoder."""
    from akd.models.explainer import CalibratedCamHead, DecoderExplainer
    from akd.models.surrogate import save_checkpoint

    torch.manual_seed(0)
    config = {"student": "resnet18_cbam", "classes": list("abcdef"), "explainer_width": 32, "explainer_cam": True,
              "layercam_weight": 0.5}
    old = Surrogate(config).eval()
    assert isinstance(old.explainer, DecoderExplainer)
    assert "explainer_head" not in old.config  # what such a checkpoint's config holds
    with torch.no_grad():
        old.explainer.head.bias.fill_(-1.5)
        old.explainer.cam_gain.fill_(2.0)
    images = torch.randn(3, 3, 64, 64)
    save_checkpoint(tmp_path / "old.safetensors", old)
    converted = load_surrogate(tmp_path / "old.safetensors")
    assert isinstance(converted.explainer, CalibratedCamHead)
    assert [name for name, _ in converted.explainer.named_parameters()] == ["gain", "bias"]
    with torch.no_grad():
        assert torch.equal(converted(images)[0], old(images)[0])
        old.explainer.head.weight[0, 0, 1, 1] = 0.1  # a trained head: the decoder matters
    save_checkpoint(tmp_path / "trained.safetensors", old)
    kept = load_surrogate(tmp_path / "trained.safetensors")
    assert isinstance(kept.explainer, DecoderExplainer) and kept.config["explainer_head"] == "decoder"
    with torch.no_grad():
        assert torch.equal(kept(images)[0], old(images)[0])


def test_the_shipped_checkpoint_holds_only_trained_weights():
    """The shipped surrogate names its head: the calibrated CAM, whose two numbers are all its explainer holds."""
    from importlib import resources

    from akd.models.surrogate import read_checkpoint

    tensors, metadata = read_checkpoint(resources.files("akd.assets").joinpath(
        "efficientnet_lite0_surrogate.safetensors"))
    assert json.loads(metadata["config"])["explainer_head"] == "calibrated-cam"
    assert sorted(name for name in tensors if name.startswith("explainer.")) == ["explainer.bias", "explainer.gain"]


@pytest.mark.parametrize("arch", ["resnet18_cbam", "timm:tf_efficientnet_lite0"])
def test_fp16_keeps_the_network_through_its_first_tap_in_fp32(arch):
    """Under autocast the stages up to the stride-8 tap run (and keep weights) in fp32, the rest in fp16; the
    autocast state is restored after the forward, and the found modules are exactly those that run first."""
    student = build_student(arch, 10).eval()
    sample = torch.zeros(1, 3, 64, 64)
    kept = student.modules_through_first_tap(sample)
    first_tap, last_tap = student._taps[0], student._taps[-1]
    assert first_tap in kept and last_tap not in kept and student._classifier[0] not in kept
    convolutions = [m for m in student.network.modules() if isinstance(m, torch.nn.Conv2d)]
    early = next(m for m in convolutions if m in kept)
    late = next(m for m in reversed(convolutions) if m not in kept)
    dtypes = {}
    handles = [conv.register_forward_hook(lambda module, _i, out: dtypes.__setitem__(module, out.dtype))
               for conv in (early, late)]
    handles += student.fp32_through_first_tap()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        student(sample)
        assert torch.is_autocast_enabled("cpu")  # restored once the prefix has run
    for handle in handles:
        handle.remove()
    assert dtypes[early] == torch.float32 and dtypes[late] == torch.float16
