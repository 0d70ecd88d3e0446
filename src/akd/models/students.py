"""Attentive students: a classifier whose three deepest scales (stride 8, 16, 32) pass through CBAM.

Every student exposes the same interface to the explainer: ``forward(x) -> (logits, [delta_8, delta_16,
delta_32], features)`` and ``tap_channels``; ``features`` is the last feature map before global average pooling,
from which ``class_activation_map`` computes CAM (Zhou et al. 2016) with the student's own linear classifier.
Two families share it:

- ``resnet{18,34,50}_cbam``: the paper's student, CBAM inside every residual block of layer2..layer4, the
  attentive differences taken from the last block of each of those layers.
- ``timm:<name>``: any timm CNN; the module behind each of its three deepest ``feature_info`` entries is wrapped
  with CBAM on its output. With ``init_state`` (the target's own weights) distillation starts from the target.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from akd.models.cbam import CBAM
from akd.util import AkdError, Registry

RESNET_STUDENTS = {"resnet18_cbam": "resnet18", "resnet34_cbam": "resnet34", "resnet50_cbam": "resnet50"}


class AttentiveBlock(nn.Module):
    """A torchvision residual block with CBAM applied to the residual branch before the addition."""

    def __init__(self, block: nn.Module, identity_init: bool):
        super().__init__()
        self.block = block
        out_channels = (block.bn3 if hasattr(block, "bn3") else block.bn2).num_features
        self.attention = CBAM(out_channels, identity_init=identity_init)
        self.delta: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        identity = x if b.downsample is None else b.downsample(x)
        out = b.relu(b.bn1(b.conv1(x)))
        out = b.bn2(b.conv2(out))
        if hasattr(b, "conv3"):
            out = b.bn3(b.conv3(b.relu(out)))
        out, self.delta = self.attention(out)
        return b.relu(out + identity)


class AttentiveStage(nn.Module):
    """Wraps a timm stage so its output f becomes f_hat = CBAM(f); the difference is kept for the explainer."""

    def __init__(self, stage: nn.Module, channels: int, identity_init: bool):
        super().__init__()
        self.stage = stage
        self.attention = CBAM(channels, identity_init=identity_init)
        self.delta: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f_hat, self.delta = self.attention(self.stage(x))
        return f_hat


class StudentOutput(NamedTuple):
    logits: torch.Tensor
    deltas: list[torch.Tensor]  # attentive differences at strides 8, 16, 32
    features: torch.Tensor  # the input of the global average pool


class Student(nn.Module):
    """A classifier plus the three attention taps the explainer reads, fine to coarse, and its pooled features.

    ``pool`` must be the global average pool directly followed by the linear ``classifier``: that is what makes
    ``class_activation_map`` the exact per-position contribution to a class logit."""

    def __init__(self, network: nn.Module, taps: list[nn.Module], tap_channels: list[int], pool: nn.Module | None,
                 classifier: nn.Module | None):
        super().__init__()
        self.network = network
        self._taps = taps  # plain list: the modules are already registered inside ``network``
        self.tap_channels = tap_channels
        self._classifier = [classifier]  # registered inside ``network`` too
        self._features: list[torch.Tensor] = []
        self._pool_type = getattr(pool, "pool_type", "avg") if pool is not None else None
        if pool is not None:
            pool.register_forward_pre_hook(lambda _module, inputs: self._features.append(inputs[0]))

    def forward(self, x: torch.Tensor) -> StudentOutput:
        return self._run(x)

    def with_gradient_taps(self, x: torch.Tensor, indices: list[int]) -> tuple[StudentOutput, list[torch.Tensor]]:
        """The outputs and the outputs of the taps ``indices`` (ascending; 0 is stride 8) as tensors the logits can
        be differentiated by, even with frozen weights: then the first is a leaf (a gradient stops there instead
        of running on to the input) and the later ones lie on its graph, so one backward pass reaches them all."""
        tapped: list[torch.Tensor] = []

        def keep(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
            tapped.append(output if output.requires_grad else output.detach().requires_grad_())
            return tapped[-1]

        handles = [self._taps[index].register_forward_hook(keep) for index in indices]
        try:
            return self._run(x), tapped
        finally:
            for handle in handles:
                handle.remove()

    def _run(self, x: torch.Tensor) -> StudentOutput:
        self._features.clear()
        logits = self.network(x)
        deltas = [tap.delta for tap in self._taps]
        for tap in self._taps:
            tap.delta = None
        features = self._features.pop() if self._features else logits.new_zeros(len(logits), 0, 1, 1)
        return StudentOutput(logits, deltas, features)

    def fp32_through_first_tap(self) -> list:
        """Under autocast, run the network in fp32 up to and including its first (stride-8) tap; returns the hook
        handles. fp16 loses most there, in the high-resolution stages with few channels (per stage on an H200 and
        through onnxruntime: docs/BENCHMARKS.md "GPU"), which hold a small share of the weights."""
        saved: list[dict[str, bool]] = []

        def enter(_module, _inputs) -> None:
            saved.append({device: torch.is_autocast_enabled(device) for device in ("cpu", "cuda")})
            for device in saved[-1]:
                torch.set_autocast_enabled(device, False)

        def leave(_module, _inputs, _output) -> None:
            for device, enabled in saved.pop().items():
                torch.set_autocast_enabled(device, enabled)

        return [self.network.register_forward_pre_hook(enter), self._taps[0].register_forward_hook(leave)]

    def modules_through_first_tap(self, sample: torch.Tensor) -> list[nn.Module]:
        """The network's modules that run before its first tap's output exists (found by running ``sample``):
        the ones ``fp32_through_first_tap`` keeps in fp32, whose weights must stay fp32 too."""
        seen: list[nn.Module] = []
        finished: list[bool] = []
        handles = [module.register_forward_hook(lambda module, _i, _o: None if finished else seen.append(module))
                   for module in self.network.modules() if module is not self.network]
        handles.append(self._taps[0].register_forward_hook(lambda *_: finished.append(True)))
        try:
            with torch.no_grad():
                self(sample)
        finally:
            for handle in handles:
                handle.remove()
        return seen

    @property
    def has_linear_head(self) -> bool:
        """Global average pooling then a linear classifier: CAM is then exact. Otherwise (a converted ONNX graph)
        the map's CAM term is Grad-CAM at the last tap, the same ranking for such a head."""
        return isinstance(self._classifier[0], nn.Linear) and self._pool_type == "avg"

    @property
    def linear_classifier(self) -> nn.Linear:
        """The linear classifier after global average pooling (CAM's weights, the head a new target refits)."""
        return self._linear_head()

    def _linear_head(self, features: torch.Tensor | None = None) -> nn.Linear:
        classifier = self._classifier[0]
        if not (self.has_linear_head and (features is None or features.shape[1] == classifier.in_features)):
            raise AkdError("this student does not end in global average pooling followed by a linear classifier, "
                           "so it has no class activation map (use the decoder explainer head without explainer_cam)")
        return classifier

    def class_activation_map(self, features: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
        """(N,1,h,w) CAM: the classifier rows weighted by ``class_weights`` (N, classes, 1, 1) - one-hot for one
        class - applied at every position; its mean over positions plus the bias is the class logit."""
        classifier = self._linear_head(features)
        kernel = classifier.weight.t()[:, :, None, None]  # (C, classes, 1, 1): a constant in the graph
        weights = F.conv2d(class_weights.to(kernel.dtype), kernel).to(features.dtype)  # (N, C, 1, 1)
        return (features * weights).mean(dim=1, keepdim=True) * features.shape[1]


def set_module(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def resnet_cbam(arch: str, num_classes: int, init_state: dict | None = None) -> Student:
    import torchvision

    network = getattr(torchvision.models, RESNET_STUDENTS[arch])(weights=None, num_classes=num_classes)
    if init_state is not None:
        network.load_state_dict(init_state)
    taps, channels = [], []
    for layer_name in ("layer2", "layer3", "layer4"):
        layer = getattr(network, layer_name)
        for index in range(len(layer)):
            layer[index] = AttentiveBlock(layer[index], identity_init=init_state is not None)
        taps.append(layer[-1])
        channels.append(layer[-1].attention.channel.mlp[0].in_channels)
    return Student(network, taps, channels, network.avgpool, network.fc)


def timm_student(name: str, num_classes: int, init_state: dict | None = None) -> Student:
    import timm

    try:
        network = timm.create_model(name, pretrained=False, num_classes=num_classes)
    except RuntimeError as exc:  # timm raises RuntimeError for unknown model names
        raise AkdError(f"unknown timm student '{name}': {exc}") from None
    if init_state is not None:
        network.load_state_dict(init_state)
    deepest: dict[int, dict] = {}
    for info in network.feature_info:
        if info["reduction"] in (8, 16, 32):
            deepest[info["reduction"]] = info  # later entries at the same stride are deeper
    if sorted(deepest) != [8, 16, 32]:
        raise AkdError(f"timm model '{name}' has no feature stages at strides 8, 16 and 32")
    taps, channels = [], []
    for reduction in (8, 16, 32):
        info = deepest[reduction]
        stage = AttentiveStage(network.get_submodule(info["module"]), info["num_chs"], init_state is not None)
        set_module(network, info["module"], stage)
        taps.append(stage)
        channels.append(info["num_chs"])
    return Student(network, taps, channels, getattr(network, "global_pool", None), network.get_classifier())


STUDENTS: Registry = Registry()  # full name -> (classes, initial state) -> Student
STUDENT_FAMILIES: Registry = Registry()  # prefix of prefix:NAME -> (NAME, classes, initial state) -> Student
register_student, register_student_family = STUDENTS.register, STUDENT_FAMILIES.register


for _arch in RESNET_STUDENTS:  # the paper's students
    register_student(_arch)(lambda classes, init, _arch=_arch: resnet_cbam(_arch, classes, init))
register_student_family("timm")(timm_student)


def build_student(arch: str, num_classes: int, init_state: dict | None = None) -> Student:
    """``arch``: a registered name (``resnet{18,34,50}_cbam``) or ``family:NAME`` (``timm:<model name>``)."""
    if arch in STUDENTS:
        return STUDENTS[arch](num_classes, init_state)
    family, _, name = arch.partition(":")
    if name and family in STUDENT_FAMILIES:
        return STUDENT_FAMILIES[family](name, num_classes, init_state)
    names = [*STUDENTS, *(f"{prefix}:<name>" for prefix in STUDENT_FAMILIES)]
    raise AkdError(f"unknown student '{arch}': use one of {', '.join(names)} or same-as-teacher")
