"""The surrogate = attentive student + explainer, and its safetensors checkpoint (config JSON in the header)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Any

import torch
from torch import nn

from akd.models.explainer import build_head, calibrated_from_decoder
from akd.models.students import Student, build_student
from akd.util import AkdError, atomic_path

CHECKPOINT_FORMAT = "akd-surrogate"
CHECKPOINT_VERSION = 1
TRAIN_STATE_PREFIX = "train_state."


class Surrogate(nn.Module):
    """``forward(images) -> (saliency (N,1,H,W) in [0,1], logits (N,C))`` for normalised images."""

    def __init__(self, config: dict[str, Any], init_state: dict | None = None, student: Student | None = None):
        """``student``: one built elsewhere (the target itself, ``akd.models.target_explanation``) instead of
        the config's architecture."""
        super().__init__()
        self.config = config
        self.student: Student = (student if student is not None
                                 else build_student(config["student"], len(config["classes"]), init_state))
        self.explainer = build_head(config, self.student.tap_channels)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Without grad mode (inference) the outputs carry no graph, even when the map differentiates inside."""
        keep_graph = torch.is_grad_enabled()
        taps = self.explainer.layercam_taps
        # no pool + linear head (a converted graph): CAM is Grad-CAM of the contrastive score, from the same backward
        gradient_cam = self.explainer.reads_cam and not self.student.has_linear_head
        needed = [*taps, LAST_TAP] if gradient_cam else taps
        with torch.enable_grad() if needed else contextlib.nullcontext():
            (logits, deltas, features), tapped = self.student.with_gradient_taps(images, needed)
            # a Reshape to a constant 4-D shape, not an Unsqueeze of two axes: OpenCV's importer runs only the former
            classes = len(self.config["classes"])
            weights = (cam_class_weights(logits.reshape(-1, classes, 1, 1), self.config.get("cam_score", "logit"))
                       if self.explainer.reads_cam and not gradient_cam else None)
            contrast = cam_class_weights(logits, "log_probability") if needed else None
            if gradient_cam:
                *layercams, cam = layercam_maps(logits, tapped, contrast, keep_graph, grad_cam_last=True)
                saliency = self.explainer(deltas, images.shape[-2:], cam, layercams)
            else:
                layercams = layercam_maps(logits, tapped, contrast, keep_graph) if taps else None
                saliency = self.explain(deltas, features, weights, images.shape[-2:], layercams)
        if not keep_graph:
            saliency, logits = saliency.detach(), logits.detach()
        return saliency, logits

    def explain(self, deltas: list[torch.Tensor], features: torch.Tensor, class_weights: torch.Tensor | None,
                size: tuple[int, int], layercams: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The saliency map of the class(es) weighted by ``class_weights`` (N, classes, 1, 1) from the student's
        outputs (CAM only when the explainer reads it; ``layercams`` when its config weights them)."""
        cam = self.student.class_activation_map(features, class_weights) if self.explainer.reads_cam else None
        return self.explainer(deltas, size, cam, layercams)


LAST_TAP = 2  # the student's stride-32 tap


def layercam_maps(logits: torch.Tensor, taps: list[torch.Tensor], class_weights: torch.Tensor,
                  keep_graph: bool = False, grad_cam_last: bool = False) -> list[torch.Tensor]:
    """(N,1,h,w) LayerCAM (Jiang et al. 2021) at each of ``taps``: relu(sum_k relu(d s / d A_k) A_k) for the score
    s = sum_j class_weights_j z_j of the logits z. With ``cam_class_weights(logits, "log_probability")`` that
    gradient is d log p_c / dA divided by 1 - p_c > 0: the same map, without rounding - through log_softmax,
    float32 makes 1 - p_c exactly 0 once the other classes' probabilities sum below about 3e-8, and the gradient
    kept only their term (none of the 96 validation images is that confident; a clear photo can be). One backward
    pass from the logits through every tap; the gradient is a constant of the map (no second-order graph).
    ``keep_graph``: the caller still backpropagates through the forward (training). ``grad_cam_last``: the last
    map is Grad-CAM instead, sum_k mean(d s / d A_k) A_k without ReLU - CAM of the same class weights, up to scale,
    for a head that is global average pooling then linear, and its generalisation for any other head."""
    score = (class_weights.detach().reshape(logits.shape) * logits.float()).sum()
    gradients = torch.autograd.grad(score, taps, retain_graph=keep_graph)
    maps = [(gradient.clamp(min=0) * tap).sum(dim=1, keepdim=True).clamp(min=0)
            for gradient, tap in zip(gradients, taps, strict=True)]
    if grad_cam_last:
        maps[-1] = (gradients[-1].mean(dim=(2, 3), keepdim=True) * taps[-1]).sum(dim=1, keepdim=True)
    return maps


CLASS_SHARPNESS = 100.0  # softmax(z * this): one-hot unless the top two logits lie within ~0.1 of each other
WINNER_PUSH = 1e4  # how far the chosen class is pushed down before the other classes' softmax (cam_class_weights)


def predicted_class(logits: torch.Tensor, sharpness: float = CLASS_SHARPNESS) -> torch.Tensor:
    """Weights of the predicted class over dim 1: softmax(z * sharpness), one-hot unless the top two logits lie
    within a few hundredths (then their CAMs blend, which is what a near-tie should give). Softmax is
    shift-invariant and every runtime subtracts the maximum itself; doing it here broadcasts an (N,1,1,1) tensor,
    which OpenCV's importer (the C++ runtime) cannot run, and a Gather by ArgMax it cannot load. 100 keeps logits
    up to 655 finite in fp16."""
    return torch.softmax(logits.float() * sharpness, dim=1)


CAM_SCORES = ("logit", "log_probability")


def cam_class_weights(logits: torch.Tensor, score: str = "logit") -> torch.Tensor:
    """Weights over the classes (dim 1) whose classifier rows CAM sums. ``logit``: the predicted class's row (Zhou
    et al.'s CAM). ``log_probability``: that row minus the mean row of the *other* classes weighted by their
    probabilities renormalised among themselves, ``w_c - sum_{j != c} r_j w_j``. That is the gradient of log p_c
    with respect to the pooled features divided by (1 - p_c) > 0, so it ranks pixels exactly as that gradient does:
    first what makes the image this class *rather than the others*, last what the competing classes share.
    Written without 1 - p_c, which rounds to 0 in float32 for a confident prediction (the map would go flat):
    the other classes' softmax is taken with the chosen class pushed down by WINNER_PUSH x its weight squared
    (squared, so the tiny weights a clear winner leaves on the runners-up move nothing). Why log_probability is
    the shipped score: docs/BENCHMARKS.md, "Explainer objectives"."""
    chosen = predicted_class(logits)
    if score == "log_probability":
        return chosen - torch.softmax(logits.float() - WINNER_PUSH * chosen * chosen, dim=1)
    if score != "logit":
        raise ValueError(f"cam_score must be one of {', '.join(CAM_SCORES)}, not '{score}'")
    return chosen


def save_checkpoint(path: str | os.PathLike, model: Surrogate, extra_tensors: dict | None = None,
                    extra_metadata: dict | None = None) -> None:
    """Write weights + config (and optional training state) as one safetensors file, atomically."""
    from safetensors.torch import save_file

    tensors = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    tensors.update(extra_tensors or {})
    metadata = {"format": CHECKPOINT_FORMAT, "version": str(CHECKPOINT_VERSION), "config": json.dumps(model.config),
                "tensors_sha256": tensors_sha256(tensors)}
    metadata.update(extra_metadata or {})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A content hash of every tensor (name, dtype, shape, bytes), recorded in the header at save time: a file
    whose header is intact but whose data was damaged loads as garbage otherwise."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of an akd checkpoint, checked: known format version, the content hash recorded
    at save time, finite weights. safetensors never unpickles anything."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise AkdError(f"{path}: checkpoint not found")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AkdError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    if metadata.get("format") != CHECKPOINT_FORMAT or "config" not in metadata:
        raise AkdError(f"{path}: not an akd surrogate checkpoint (no '{CHECKPOINT_FORMAT}' config in its header)")
    version = metadata.get("version", "1")
    if not version.isdigit() or int(version) > CHECKPOINT_VERSION:
        raise AkdError(f"{path}: checkpoint format version {version} is newer than this akd reads "
                       f"({CHECKPOINT_VERSION}); upgrade akd")
    recorded = metadata.get("tensors_sha256")
    if recorded is not None and recorded != tensors_sha256(tensors):
        raise AkdError(f"{path}: corrupt checkpoint (its tensors do not match the content hash recorded when it "
                       "was saved)")
    broken = next((name for name, tensor in tensors.items()
                   if tensor.is_floating_point() and not torch.isfinite(tensor).all()), None)
    if broken is not None:
        raise AkdError(f"{path}: corrupt checkpoint (tensor '{broken}' holds NaN or infinite values)")
    return tensors, metadata


def load_surrogate(path: str | os.PathLike) -> Surrogate:
    """Rebuild the surrogate from the checkpoint's own config and load its weights (strictly)."""
    tensors, metadata = read_checkpoint(path)
    config = json.loads(metadata["config"])
    weights = {k: v for k, v in tensors.items() if not k.startswith(TRAIN_STATE_PREFIX)}
    weights = calibrated_from_decoder(config, weights)
    model = Surrogate(config)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise AkdError(f"{path}: weights do not match the config's architecture ({exc})") from None
    return model.eval()
