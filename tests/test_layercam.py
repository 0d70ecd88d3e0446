"""LayerCAM in the surrogate's map (config ``layercam_weight``, ``layercam8_weight``): the map reads the gradient
of the predicted class's log-probability at the stride-16 (and stride-8) tap, and ``akd.deploy.gradients`` writes
that gradient as forward operations so the surrogate stays one ONNX graph, with a batch size that follows its input."""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from akd.deploy.gradients import without_autograd
from akd.deploy.graph import export_onnx
from akd.models.deployable import DeployableSurrogate
from akd.models.explainer import CalibratedCamHead, DecoderExplainer
from akd.models.surrogate import Surrogate, cam_class_weights, layercam_maps

from conftest import tiny_surrogate_config


def test_layercam_map_is_the_positive_gradient_weighting_of_the_activations():
    """logits = W mean(A): d log p_c / dA_k(x) = (W_ck - sum_j p_j W_jk) / hw at every position x, so the map is
    relu(sum_k relu(that / (1 - p_c)) A_k(x)) with the contrastive class weights - computed here by hand in float64,
    also for an image so confident that 1 - p_c is 0 in float32 (through log_softmax the W_c term vanished)."""
    torch.manual_seed(0)
    tap = torch.randn(2, 6, 3, 4).requires_grad_()
    weight = torch.randn(5, 6)
    for scale in (1.0, 400.0):  # 400: the top logit wins by hundreds, p_c == 1.0 in float32
        logits = tap.mean((2, 3)) @ (scale * weight).t()
        got, = layercam_maps(logits, [tap], cam_class_weights(logits, "log_probability"))
        z = logits.detach().double()
        chosen = z.argmax(1)
        others = z.scatter(1, chosen[:, None], float("-inf")).softmax(1)  # p_j / (1 - p_c), j != c
        grad = scale * (weight.double()[chosen] - others @ weight.double()) / 12
        expected = (grad[:, :, None, None].clamp(min=0) * tap.detach().double()).sum(1, keepdim=True).clamp(min=0)
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)
        assert expected.amax() > 0 and (expected == 0).any()  # both relus active somewhere
    assert float(logits.softmax(1).amax()) == 1.0


def test_one_backward_pass_gives_layercam_at_both_taps():
    """tap16 = 2 x avgpool2(tap8), logits = W mean(tap16) = 2 W mean(tap8): for the class-c logit the gradient at
    tap8 is 2 W_c / (h8 w8) everywhere - computed by hand - and at tap16 it is the one-tap answer."""
    torch.manual_seed(0)
    tap8 = torch.randn(2, 6, 4, 6).requires_grad_()
    tap16 = 2 * torch.nn.functional.avg_pool2d(tap8, 2)
    weight = torch.randn(5, 6)
    logits = tap16.mean((2, 3)) @ weight.t()
    chosen = torch.nn.functional.one_hot(torch.tensor([4, 0]), 5).float()
    at8, at16 = layercam_maps(logits, [tap8, tap16], chosen)
    grad = 2 * weight[[4, 0]] / 24
    expected8 = (grad[:, :, None, None].clamp(min=0) * tap8.detach()).sum(1, keepdim=True).clamp(min=0)
    torch.testing.assert_close(at8, expected8)
    torch.testing.assert_close(at16, layercam_maps(tap16.mean((2, 3)) @ weight.t(), [tap16], chosen)[0])
    assert at8.shape == (2, 1, 4, 6) and at16.shape == (2, 1, 2, 3) and expected8.amax() > 0


def test_student_taps_for_both_strides_are_one_graph_with_frozen_weights():
    """The stride-8 tap becomes a leaf (the gradient stops there), the stride-16 tap lies on its graph: its
    LayerCAM equals the one the stride-16 tap alone gives."""
    torch.manual_seed(0)
    student = Surrogate(tiny_surrogate_config()).eval().student.requires_grad_(False)
    images = torch.randn(2, 3, 64, 64)
    with torch.enable_grad():
        both, (tap8, tap16) = student.with_gradient_taps(images, [0, 1])
        alone, (only16,) = student.with_gradient_taps(images, [1])
        assert tap8.is_leaf and tap8.requires_grad and not tap16.is_leaf and only16.is_leaf
        assert (tap8.shape[-1], tap16.shape[-1]) == (8, 4)
        chosen = torch.softmax(both.logits.detach() * 100, dim=1)
        maps = layercam_maps(both.logits, [tap8, tap16], chosen)
        torch.testing.assert_close(maps[1], layercam_maps(alone.logits, [only16], chosen)[0])
    assert maps[0].amax() > 0 and maps[1].amax() > 0


def test_fused_ranking_puts_layercams_peak_first_where_cam_is_flat():
    """Weight 1: at 0.5 a one-cell spike, smoothed by the resizes to 32x32, stays under CAM's brightest corner."""
    explainer = _calibrated_head(w16=1.0)
    deltas = [torch.zeros(1, 8, 8, 8), torch.zeros(1, 16, 4, 4), torch.zeros(1, 32, 2, 2)]
    cam = torch.tensor([[[[1.0, 1.0], [1.0, 2.0]]]])  # brightest at the bottom right
    layercam = torch.zeros(1, 1, 4, 4)
    layercam[0, 0, 2, 2] = 5.0  # the top-left pixel of CAM's bright quadrant
    saliency = explainer(deltas, (32, 32), cam, [layercam])[0, 0]
    peak = divmod(int(saliency.argmax()), 32)
    assert 16 <= peak[0] < 24 and 16 <= peak[1] < 24, peak
    plain = _calibrated_head()
    assert divmod(int(plain(deltas, (32, 32), cam)[0, 0].argmax()), 32) >= (24, 24)  # CAM alone: the corner
    with pytest.raises(ValueError, match="needs explainer_cam"):
        DecoderExplainer({"layercam_weight": 0.5}, [8, 16, 32])


def _calibrated_head(w8: float = 0.0, w16: float = 0.0) -> CalibratedCamHead:
    return CalibratedCamHead({"layercam8_weight": w8, "layercam_weight": w16}, [8, 16, 32])


def test_fused_ranking_with_the_stride_8_map_picks_its_peak_inside_the_coarser_ones():
    """CAM says the bottom-right quadrant, stride-16 LayerCAM its top-left cell, stride-8 LayerCAM one pixel in
    that cell: the map peaks at that pixel; without the stride-8 weight, anywhere in the stride-16 cell."""
    explainer = _calibrated_head(0.5, 0.5)
    deltas = [torch.zeros(1, 8, 8, 8), torch.zeros(1, 16, 4, 4), torch.zeros(1, 32, 2, 2)]
    cam = torch.tensor([[[[1.0, 1.0], [1.0, 2.0]]]])
    layercam16 = torch.zeros(1, 1, 4, 4)
    layercam16[0, 0, 2, 2] = 5.0  # rows/columns 16-23 of 32
    layercam8 = torch.zeros(1, 1, 8, 8)
    layercam8[0, 0, 5, 5] = 5.0  # rows/columns 20-23 of 32
    peak = divmod(int(explainer(deltas, (32, 32), cam, [layercam8, layercam16])[0, 0].argmax()), 32)
    assert 20 <= peak[0] < 24 and 20 <= peak[1] < 24, peak
    layercam8[0, 0, 5, 5], layercam8[0, 0, 4, 4] = 0.0, 5.0  # rows/columns 16-19
    peak = divmod(int(explainer(deltas, (32, 32), cam, [layercam8, layercam16])[0, 0].argmax()), 32)
    assert 16 <= peak[0] < 20 and 16 <= peak[1] < 20, peak
    with pytest.raises(ValueError, match="pass them"):
        explainer(deltas, (32, 32), cam, [layercam16])


class SamePadding(nn.Module):
    """timm's Conv2dSame: pad (more on the far side) and convolve without padding."""

    def __init__(self, conv: nn.Conv2d, pads: tuple[int, int, int, int]):
        super().__init__()
        self.conv, self.pads = conv, pads

    def forward(self, x):
        return self.conv(nn.functional.pad(x, self.pads))


class LayerCamOfHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.ReLU6(inplace=True),
                                  nn.Conv2d(16, 16, 5, padding=2, groups=16), nn.ReLU6(),
                                  nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16),
                                  SamePadding(nn.Conv2d(16, 16, 5, stride=2, groups=16), (1, 2, 1, 2)),
                                  nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24), nn.ReLU6())
        self.classifier = nn.Linear(24, 5)
        for norm in (self.head[1], self.head[8]):
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2)

    def forward(self, tapped):
        with torch.enable_grad():
            tapped = tapped.detach().requires_grad_(True)
            log_p = self.classifier(self.head(tapped).mean((2, 3))).log_softmax(1)
            chosen = torch.softmax(log_p.detach() * 100, dim=1)  # as the surrogate weights its predicted class
            (grad,) = torch.autograd.grad((log_p * chosen).sum(), tapped)
        return (grad.clamp(min=0) * tapped).sum(1)


def test_input_gradients_written_as_convolutions_equal_autograd():
    """Every convolution kind the rewrite handles (1x1, depthwise at stride 1, strided depthwise, strided with
    lopsided "same" padding, strided full with an odd input), through eval batch norm, on inputs it was not traced
    on and at other batch sizes. All are forward convolutions (no transposed one), no crop is left (folded into
    the padding), batch norm's scale is in the kernels and the ReLU6 masks read ReLU6's output, not a saved copy
    of its input (so onnxruntime can fuse each ReLU6 into its convolution)."""
    from akd.deploy.gradients import _constant

    torch.manual_seed(0)
    module = LayerCamOfHead().eval().requires_grad_(False)
    example = torch.randn(1, 8, 23, 23)
    traced = without_autograd(module, example)
    nodes = [node for node in traced.graph.nodes if node.op == "call_function"]
    assert not any("backward" in str(node.target) for node in nodes)
    convolutions = [node for node in nodes if node.target == torch.ops.aten.convolution.default]
    masks = [node for node in convolutions if str(node.args[1].target).startswith("_mask_weight_")]
    convolutions = [node for node in convolutions if node not in masks]
    assert len(convolutions) == 2 * 5 and not any(node.args[6] for node in convolutions)  # forward + gradients
    assert all(min(node.args[1]) >= 0 for node in nodes if node.target == torch.ops.aten.constant_pad_nd.default)
    assert not any(node.target in (torch.ops.aten.gt.Scalar, torch.ops.aten.lt.Scalar) for node in nodes)
    clamps = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)  # ReLU6 and ReLU6(inplace=True)
    assert len(masks) == 2 * 3 and all(node.args[0].target in clamps for node in masks)
    scaled_inputs = [node for node in convolutions if node.args[0].target == torch.ops.aten.mul.Tensor
                     and any(isinstance(arg, torch.fx.Node) and _constant(arg) for arg in node.args[0].args)]
    assert all(str(node.args[0].args[1].target).startswith("_gradient_grid_") for node in scaled_inputs)
    for batch in (1, 3):
        other = torch.randn(batch, 8, 23, 23)
        expected = module(other).detach()
        assert expected.abs().max() > 0
        torch.testing.assert_close(traced(other), expected, rtol=1e-5, atol=1e-6)


class ReluGradients(nn.Module):
    def forward(self, x):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            y = nn.functional.relu6(x) + nn.functional.relu(x - 7) * 2
            (grad,) = torch.autograd.grad((y * torch.arange(1.0, 1.0 + x.shape[-1])).sum(), x)
        return grad


def test_gradient_masks_as_convolutions_switch_exactly_at_the_bounds():
    """The masks written as clamped 1x1 convolutions equal the comparisons on the bounds themselves (ReLU6 at 0
    and 6, ReLU at 7), just inside them and far out, and are a fraction only within 2^-122 of a bound."""
    from akd.deploy.gradients import MASK_SCALE

    six_minus = float(np.nextafter(np.float32(6), np.float32(0)))
    values = [-1.0, 0.0, 1e-30, 3.0, six_minus, 6.0, 6.5, 7.0, float(np.nextafter(np.float32(7), np.float32(8))),
              1e30, 1e-38]
    x = torch.tensor(values).reshape(1, 1, 1, -1).repeat(1, 16, 1, 1)  # 16 channels: onnxruntime's NCHWc layout
    traced = without_autograd(ReluGradients(), x)
    assert sum(str(node.target).startswith("_mask_weight_") for node in traced.graph.nodes) == 3
    buffer = io.BytesIO()
    torch.onnx.export(traced, (x,), buffer, input_names=["x"], opset_version=17, dynamo=False)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    expected = ReluGradients()(x)
    for got in (traced(x), torch.from_numpy(session.run(None, {"x": x.numpy()})[0])):
        torch.testing.assert_close(got[..., :-1], expected[..., :-1], rtol=0, atol=0)
        torch.testing.assert_close(got[..., -1], expected[..., -1] * 1e-38 * MASK_SCALE)  # below 2^-122: a fraction


@pytest.fixture(scope="module", params=[0.0, 0.5], ids=["stride16", "stride8and16"])
def layercam_surrogate(request) -> DeployableSurrogate:
    torch.manual_seed(0)
    config = {**tiny_surrogate_config(), "explainer_head": "calibrated-cam", "cam_score": "log_probability",
              "layercam_weight": 0.5, "layercam8_weight": request.param, "input_size": [96, 96]}
    surrogate = Surrogate(config).eval()
    with torch.no_grad():
        surrogate.student.network.fc.weight.mul_(50.0)  # classes stand clear of float rounding
    return DeployableSurrogate(surrogate).eval()


def map_without_layercam(module: DeployableSurrogate, images: torch.Tensor) -> np.ndarray:
    """The same surrogate's map with its LayerCAM weights set to 0 for one call."""
    explainer = module.surrogate.explainer
    weights, explainer.layercam_weights = explainer.layercam_weights, (0.0, 0.0)
    try:
        with torch.no_grad():
            return module(images)[0].numpy()
    finally:
        explainer.layercam_weights = weights


def test_layercam_graph_follows_the_batch_and_equals_torch(layercam_surrogate):
    """Exported through make_fx at batch 2, the ONNX graph runs batches 1 and 3 like the eager surrogate; and the
    map really reads LayerCAM (it differs from the same surrogate's map without it)."""
    model = export_onnx(layercam_surrogate, layercam_surrogate.surrogate.config, "float-nchw", {})
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    for batch in (1, 3):
        images = torch.randn(batch, 3, 96, 96, generator=generator)
        with torch.no_grad():
            expected = [t.numpy() for t in layercam_surrogate(images)]
        got = session.run(None, {"images": images.numpy()})
        assert got[0].shape == (batch, 1, 96, 96)
        np.testing.assert_allclose(got[0], expected[0], atol=1e-4)
        np.testing.assert_allclose(got[1], expected[1], rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(got[2], expected[2])
    without = map_without_layercam(layercam_surrogate, images)
    assert np.abs(without - expected[0]).max() > 0.05


def test_layercam_forward_leaves_no_graph_in_inference_and_keeps_it_in_training(layercam_surrogate):
    surrogate = layercam_surrogate.surrogate
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        saliency, logits = surrogate(images)
    assert not saliency.requires_grad and not logits.requires_grad
    saliency, logits = surrogate(images)
    assert saliency.requires_grad and logits.requires_grad
    (saliency.mean() + logits.mean()).backward()  # the forward's graph survived the map's own backward
    assert surrogate.student.network.fc.weight.grad is not None


def test_without_autograd_refuses_a_graph_whose_structure_follows_the_batch():
    from akd.util import AkdError

    class Odd(nn.Module):
        def forward(self, x):
            return x * 2 if len(x) % 2 else x + 1

    with pytest.raises(AkdError, match="changes with the batch size"):
        without_autograd(Odd(), torch.randn(2, 3))


def test_no_layercam_export_is_forward_only_and_says_so(layercam_surrogate, tmp_path):
    """``akd-export --no-layercam``: CAM's map without the gradient term, recorded in the graph's config."""
    import json

    import onnx

    import akd
    from akd.models.surrogate import save_checkpoint

    checkpoint = tmp_path / "layercam.safetensors"
    save_checkpoint(checkpoint, layercam_surrogate.surrogate)
    full, = akd.export(str(checkpoint), str(tmp_path / "full.onnx"), verify=False)
    plain, = akd.export(str(checkpoint), str(tmp_path / "plain.onnx"), verify=False, layercam=False)
    convolutions = {name: [node.input[1] for node in onnx.load(str(path)).graph.node if node.op_type == "Conv"]
                    for name, path in (("full", full), ("plain", plain))}
    masks = [weight for weight in convolutions["full"] if weight.startswith("_mask_weight_")]
    # the gradient through layer4's five convolutions (and layer3's for the stride-8 tap), a ReLU mask after each
    # block's first convolution and its sum
    stages = 2 if layercam_surrogate.surrogate.explainer.layercam_weights[0] else 1
    assert len(convolutions["full"]) - len(masks) == len(convolutions["plain"]) + 5 * stages
    assert len(masks) == 4 * stages
    metadata = {p.key: p.value for p in onnx.load(str(plain)).metadata_props}
    config = json.loads(metadata["akd_config"])
    assert config["layercam_weight"] == config["layercam8_weight"] == 0.0
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    expected = map_without_layercam(layercam_surrogate, images)
    got = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"]).run(None, {"images": images.numpy()})
    np.testing.assert_allclose(got[0], expected, atol=1e-5)


def test_layercam_graph_quantizes_to_int8(layercam_surrogate, photo_folder, tmp_path):
    """The gradient reads the classifier's weight again, transposed; onnxruntime's quantizer gives a shared
    initializer one per-channel axis and failed on it (IndexError), so a weight's later readers stay float."""
    import onnx

    import akd
    from akd.models.surrogate import save_checkpoint

    checkpoint = tmp_path / "layercam.safetensors"
    save_checkpoint(checkpoint, layercam_surrogate.surrogate)
    for flavour in ("cpu", "tensorrt"):
        graph, = akd.export(str(checkpoint), str(tmp_path / f"{flavour}.onnx"), precision="int8",
                            calib_data=str(photo_folder), int8_target=flavour, num_images=24, max_drift=1.0,
                            parity_data=str(photo_folder))
        nodes = onnx.load(str(graph)).graph.node
        produced = {output: node.op_type for node in nodes for output in node.output}
        gemm_inputs = [produced.get(node.input[0]) for node in nodes if node.op_type == "Gemm"]
        assert len(gemm_inputs) == 2 and gemm_inputs.count("DequantizeLinear") == 1, gemm_inputs  # gradient: float
        # the stem and the stride-4 stage stay float, the stride-8 stage on is int8 (measured: far less drift)
        inferred = onnx.shape_inference.infer_shapes(onnx.load(str(graph))).graph.value_info
        grid = {info.name: info.type.tensor_type.shape.dim[-1].dim_value for info in inferred
                if len(info.type.tensor_type.shape.dim) == 4}
        quantized_by_grid: dict[int, set[bool]] = {}
        for node in nodes:
            if node.op_type == "Conv" and node.output[0] in grid:
                quantized = produced.get(node.input[1]) == "DequantizeLinear"
                quantized_by_grid.setdefault(grid[node.output[0]], set()).add(quantized)
        assert quantized_by_grid[48] == quantized_by_grid[24] == {False}, quantized_by_grid
        assert True in quantized_by_grid[12] and True in quantized_by_grid[6], quantized_by_grid
        outputs = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"]).run(
            None, {"images": np.random.default_rng(0).normal(size=(2, 3, 96, 96)).astype(np.float32)})
        assert outputs[0].shape == (2, 1, 96, 96) and np.isfinite(outputs[0]).all() and outputs[0].std() > 0


@pytest.mark.parametrize("stage", ["explainer", "joint"])
def test_training_stages_read_layercam_and_train_what_they_should(torchscript_target, stage):
    """The explainer stage computes LayerCAM with the student frozen (its gradient only); the joint stage keeps
    the forward's graph for the distillation loss after LayerCAM's own backward."""
    from akd.data.preprocessing import Preprocessing
    from akd.models.teachers import load_teacher
    from akd.train.recipes import apply_overrides, load_recipe
    from akd.train.step import DistillationStep, param_groups, set_trainable

    from conftest import SIZE

    torch.manual_seed(0)
    teacher = load_teacher(str(torchscript_target), preprocessing=Preprocessing(input_size=SIZE))
    recipe = apply_overrides(load_recipe("imagenet-lite0"), [])
    assert recipe["layercam_weight"] == recipe["layercam8_weight"] == 0.5
    surrogate = Surrogate({"student": "resnet18_cbam", "classes": list("abcd"), "explainer_head": "calibrated-cam",
                           "cam_score": "log_probability", "layercam_weight": 0.5, "layercam8_weight": 0.5})
    set_trainable(surrogate, stage, recipe)
    step = DistillationStep(surrogate, teacher, recipe, stage)
    loss, _ = step(torch.randn(4, 3, 128, 128), torch.full((4,), -1))
    loss.backward()
    params = [p for group in param_groups(surrogate, stage, recipe, False) for p in group["params"]]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert surrogate.explainer.gain.grad.abs() > 0
    trained_student = surrogate.student.network.fc.weight.grad is not None
    assert trained_student == (stage == "joint")


@pytest.mark.parametrize("key", ["layercam_weight", "layercam8_weight"])
def test_recipe_validates_layercam_weights(key):
    from akd.train.recipes import apply_overrides, load_recipe
    from akd.util import AkdError

    for bad in ("-1", "true", "'0.5'"):
        with pytest.raises(AkdError, match=f"{key} must be a number >= 0"):
            apply_overrides(load_recipe("imagenet-lite0"), [f"{key}={bad}"])
    with pytest.raises(AkdError, match=f"{key} adds LayerCAM .* needs explainer_cam"):
        apply_overrides(load_recipe("paper-imagenet"), [f"{key}=0.5"])
    assert apply_overrides(load_recipe("imagenet-lite0"), [f"{key}=0"])[key] == 0
