"""The target's own explanation, without training: the target network itself stands in the student's place, its
stages tapped as they are (no attention), and the map is the one the shipped surrogate computes - the
contrastive class activation map (Grad-CAM where the head is not global average pooling then linear) fused
with LayerCAM at strides 8 and 16 - with the shipped surrogate's calibration. ``akd-export --target`` writes it
as one graph, the gradient as forward operations, behind the same contract as a distilled surrogate.

Taps: a timm CNN's ``feature_info`` (the deepest entry at strides 8 and 16) and its global pool; any other
module (torchvision, a converted ONNX graph) is run once and the last module to finish at each of strides 8, 16
and 32 is tapped - the end of the last block at that resolution.
"""

from __future__ import annotations

import copy
from importlib import resources
from typing import Any

import torch
from torch import nn

from akd.models.students import Student, set_module
from akd.models.surrogate import Surrogate
from akd.models.teachers import Teacher
from akd.util import AkdError

STRIDES = (8, 16, 32)
SHIPPED_SURROGATE = "efficientnet_lite0_surrogate.safetensors"
CALIBRATION_TENSORS = ("explainer.gain", "explainer.bias")
MAP_RECIPE = {"explainer_head": "calibrated-cam", "cam_score": "log_probability", "layercam_weight": 0.5,
              "layercam8_weight": 0.5}


class PlainTap(nn.Module):
    """A tapped stage of the target, unchanged: the explainer reads its output's gradient, not an attention
    difference (which is zero here)."""

    def __init__(self, stage: nn.Module):
        super().__init__()
        self.stage = stage
        self.delta: torch.Tensor | None = None

    def forward(self, *args: Any) -> torch.Tensor:
        output = self.stage(*args)
        self.delta = torch.zeros_like(output)
        return output


def _timm_taps(network: nn.Module) -> dict[int, tuple[str, int]] | None:
    """stride -> (module name, channels) from a timm model's feature_info, or None for other modules."""
    info = getattr(network, "feature_info", None)
    if info is None or not hasattr(network, "global_pool") or not hasattr(network, "get_classifier"):
        return None
    return {entry["reduction"]: (entry["module"], entry["num_chs"]) for entry in info}  # later entries: deeper


def _probed_taps(network: nn.Module, size: int) -> dict[int, tuple[str, int]]:
    """stride -> (module name, channels): the last module (called once) to return an (1, C, size/s, size/s) map."""
    finished: list[tuple[str, tuple[int, ...]]] = []
    calls: dict[str, int] = {}

    def record(name: str):
        def hook(_module, _inputs, output):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                finished.append((name, tuple(output.shape)))
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in network.named_modules() if name]
    try:
        with torch.no_grad():
            network(torch.zeros(1, 3, size, size))
    finally:
        for handle in handles:
            handle.remove()
    taps = {}
    for name, shape in finished:
        stride = size // shape[-1] if shape[-1] else 0
        if stride in STRIDES and shape[-1] * stride == size and shape[-2] * stride == size and calls[name] == 1:
            taps[stride] = (name, shape[1])
    return taps


def target_student(teacher: Teacher) -> tuple[Student, dict[int, str]]:
    """A copy of the target network (the caller's stays as it is) as a Student with plain taps at strides 8, 16,
    32, and which modules they are."""
    network, size = teacher.module, teacher.preprocessing.input_size
    if network is None:
        raise AkdError(f"{teacher.identity['name']}: a black box has no gradients to explain it with; distil a "
                       "surrogate instead (akd-train)")
    if isinstance(network, torch.jit.ScriptModule):
        raise AkdError(f"{teacher.identity['name']}: a TorchScript module cannot be tapped; export it to ONNX or "
                       "give its torchvision/timm name and weights")
    network = copy.deepcopy(network)
    timm_taps = _timm_taps(network)
    taps = timm_taps if timm_taps is not None else _probed_taps(network, size)
    missing = [stride for stride in STRIDES if stride not in taps]
    if missing:
        raise AkdError(f"{teacher.identity['name']}: no feature map at stride {', '.join(map(str, missing))} of a "
                       f"{size}x{size} input; akd explains convolutional networks with maps at strides 8, 16 and 32 "
                       "(vision transformers are not supported)")
    wrapped = []
    for stride in STRIDES:
        name = taps[stride][0]
        tap = PlainTap(network.get_submodule(name))
        set_module(network, name, tap)
        wrapped.append(tap)
    channels = [taps[stride][1] for stride in STRIDES]
    if timm_taps is not None:
        student = Student(network, wrapped, channels, network.global_pool, network.get_classifier())
    else:
        student = Student(network, wrapped, channels, None, None)
    return student.eval(), {stride: taps[stride][0] for stride in STRIDES}


def shipped_calibration() -> dict[str, torch.Tensor]:
    """The shipped surrogate's CAM gain and head bias: they act on standardised maps, so they set the same
    focus (sparsity weight 20 of the imagenet-lite0 recipe) on any target's map."""
    from safetensors import safe_open

    with resources.as_file(resources.files("akd.assets").joinpath(SHIPPED_SURROGATE)) as path, \
            safe_open(str(path), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in CALIBRATION_TENSORS}


def target_surrogate(teacher: Teacher) -> Surrogate:
    """The target's own explanation as a Surrogate (in eval mode), ready for ``akd.deploy``."""
    student, taps = target_student(teacher)
    classes = teacher.class_names or [f"class_{index}" for index in range(teacher.num_classes)]
    size = teacher.preprocessing.input_size
    config = {"student": "target", "student_init": "target", **MAP_RECIPE,
              "classes": classes, "input_size": [size, size], "preprocessing": teacher.preprocessing.to_config(),
              "target": teacher.identity, "taps": {str(stride): name for stride, name in taps.items()},
              "cam": "exact" if student.has_linear_head else "grad-cam", "calibration": "shipped surrogate"}
    surrogate = Surrogate(config, student=student)
    with torch.no_grad():
        for name, value in shipped_calibration().items():
            surrogate.get_parameter(name).copy_(value)
    for parameter in surrogate.parameters():
        parameter.requires_grad_(False)
    return surrogate.eval()
