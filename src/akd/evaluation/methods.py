"""Saliency methods compared by ``akd-evaluate``, all explaining the same target's prediction on the same image.

Each method is a ``SaliencyMethod``: ``explain(EvalImage) -> (H, W)`` float map at the model's input resolution,
and one lifecycle (a context manager whose exit releases hooks and sessions). ``akd`` runs a surrogate through the
deployable runtime (an .onnx graph, a TensorRT engine or a .safetensors checkpoint); Grad-CAM and LIME come from
their reference packages (``pip install 'akd[eval]'``); RISE is implemented here following the RISE paper's mask
generator because no maintained package ships it. Adding a method is one class and one ``register_method``
builder in this file.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from akd import contract
from akd.models.teachers import Teacher
from akd.perturbation import rise_masks, rise_saliency
from akd.util import AkdError, Registry


@dataclass
class EvalImage:
    """One evaluation image in both forms the methods need, and the target's prediction on it."""

    name: str
    pixels: np.ndarray  # (H, W, 3) uint8 RGB, already resized and centre-cropped for the target
    tensor: torch.Tensor  # (1, 3, H, W) normalised
    class_id: int


class SaliencyMethod(abc.ABC):
    """A saliency method under evaluation. ``execution`` says where it computes (the report records it)."""

    name: str
    execution = "torch on cpu"
    made_elsewhere = False  # maps computed before this run (saved maps): timed where they were made, not here

    @abc.abstractmethod
    def explain(self, image: EvalImage) -> np.ndarray:
        """The (H, W) map of ``image.class_id`` at the model's input resolution."""

    def covers(self, image: EvalImage) -> bool:
        """Whether this method has a map for ``image`` (saved maps cover the images they were made for)."""
        return True

    def recorded_seconds(self, image: EvalImage) -> float | None:
        """Seconds the map took where it was made, when that was not here (saved maps); None: time it here."""
        return None

    def close(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Release hooks, sessions and engines; the default holds none."""

    def __enter__(self) -> SaliencyMethod:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


METHOD_BUILDERS: Registry = Registry()  # --methods' table: (akd-evaluate's options, target) -> [SaliencyMethod]
register_method = METHOD_BUILDERS.register
GRADIENT_METHODS = frozenset({"gradcam"})  # they read the target's gradients: none for a black box


def unavailable_methods(names, teacher: Teacher) -> dict[str, str]:
    """The methods of ``names`` this target cannot run, each with the reason (the report lists them)."""
    if teacher.module is not None:
        return {}
    reason = f"needs gradients; {teacher.identity.get('name', 'the target')} is a black box"
    return {name: reason for name in names if name in GRADIENT_METHODS}


def _require(module: str, method: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise AkdError(f"method '{method}' needs the '{module}' package: pip install 'akd[eval]'") from None


def _torch_module(teacher: Teacher, method: str) -> nn.Module:
    if teacher.module is None:
        raise AkdError(f"method '{method}' needs gradients of a PyTorch target; "
                       f"{teacher.identity.get('name', 'this target')} is a black box")
    return teacher.module.eval()


class AkdMethod(SaliencyMethod):
    """The surrogate's saliency map, computed by the runtime exactly as a deployment would."""

    def __init__(self, model: str, threads: int | None = None, name: str = "akd"):
        from akd.runtime.engine import SaliencyEngine

        options = {"threads": threads} if threads and model.endswith(".onnx") else {}
        self.name = name
        self.engine = SaliencyEngine.load(model, fit="stretch", color="rgb", **options)
        self.execution = self.engine.info.execution_path

    def explain(self, image: EvalImage) -> np.ndarray:
        result = self.engine.explain(image.pixels, model_resolution=True)
        assert result.saliency_model is not None
        return result.saliency_model

    def close(self) -> None:
        self.engine.close()


def last_spatial_module(model: nn.Module, sample: torch.Tensor) -> tuple[str, nn.Module]:
    """The end of the last convolutional stage: the module that finishes last among those whose output keeps
    the last convolution's spatial size (timm EfficientNet: ``bn2`` after ``conv_head``; torchvision ResNet:
    ``layer4``; pooling, even to 2x2, is past the stage)."""
    finished: list[tuple[str, tuple[int, ...], bool]] = []
    names = {module: name for name, module in model.named_modules() if name}

    def record(module, _inputs, output):
        if torch.is_tensor(output) and output.dim() == 4:
            finished.append((names[module], tuple(output.shape[-2:]), isinstance(module, nn.Conv2d)))

    hooks = [module.register_forward_hook(record) for module in names]
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for hook in hooks:
            hook.remove()
    convolutions = [size for _, size, is_conv in finished if is_conv]
    if not convolutions:
        raise AkdError("Grad-CAM: the target has no convolutional layer")
    name = [name for name, size, _ in finished if size == convolutions[-1]][-1]
    return name, model.get_submodule(name)


class GradCamMethod(SaliencyMethod):
    """Grad-CAM (Selvaraju et al. 2017) via the ``grad-cam`` package, on the last convolutional stage."""

    def __init__(self, teacher: Teacher, layer: str | None = None, name: str = "gradcam"):
        self.name = name
        cam_module = _require("pytorch_grad_cam", "gradcam")
        targets = _require("pytorch_grad_cam.utils.model_targets", "gradcam")
        self.model = _torch_module(teacher, "gradcam")
        size = teacher.preprocessing.input_size
        if layer:
            try:
                self.layer_name, target_layer = layer, self.model.get_submodule(layer)
            except AttributeError:
                raise AkdError(f"Grad-CAM: the target has no layer '{layer}'") from None
        else:
            self.layer_name, target_layer = last_spatial_module(self.model, torch.zeros(1, 3, size, size))
        self.cam = cam_module.GradCAM(model=self.model, target_layers=[target_layer])
        self.target_type = targets.ClassifierOutputTarget

    def explain(self, image: EvalImage) -> np.ndarray:
        # a frozen target has no parameter that needs gradients: the input's requires_grad makes the layer's
        # activations part of a graph so Grad-CAM's hooks see their gradients
        tensor = image.tensor.clone().requires_grad_(True)
        maps = self.cam(input_tensor=tensor, targets=[self.target_type(image.class_id)])
        return np.asarray(maps[0], dtype=np.float32)

    def close(self) -> None:
        self.cam.activations_and_grads.release()


class RiseMethod(SaliencyMethod):
    """RISE (Petsiuk et al. 2018) with ``akd.perturbation``'s masks, regenerated from the seed per image, so every
    image sees the same masks without holding N full-size masks in memory."""

    name = "rise"

    def __init__(self, teacher: Teacher, masks: int = 4000, cells: int = 7, keep: float = 0.5, batch_size: int = 100,
                 seed: int = 0):
        self.teacher, self.masks, self.cells, self.keep = teacher, masks, cells, keep
        self.batch_size, self.seed = batch_size, seed

    @torch.no_grad()
    def explain(self, image: EvalImage) -> np.ndarray:
        _, _, height, width = image.tensor.shape
        masks = rise_masks(self.masks, height, width, self.cells, self.keep, self.batch_size, self.seed)
        return rise_saliency(self.teacher, image.tensor, image.class_id, masks, self.masks, self.keep).numpy()


class LimeMethod(SaliencyMethod):
    """LIME (Ribeiro et al. 2016) via the ``lime`` package: quickshift superpixels, ``samples`` perturbations;
    each superpixel gets its weight for the predicted class, so the map keeps LIME's signed ranking."""

    name = "lime"

    def __init__(self, teacher: Teacher, samples: int = 1000, batch_size: int = 50, seed: int = 0):
        self.lime_image = _require("lime.lime_image", "lime")
        self.teacher, self.samples, self.batch_size, self.seed = teacher, samples, batch_size, seed
        self.preprocessing = teacher.preprocessing

    @torch.no_grad()
    def _probabilities(self, images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(contract.normalise(images, self.preprocessing.mean, self.preprocessing.std))
        return F.softmax(self.teacher(batch).float(), dim=1).numpy()

    def explain(self, image: EvalImage) -> np.ndarray:
        import contextlib
        import io

        explainer = self.lime_image.LimeImageExplainer(random_state=self.seed)
        with contextlib.redirect_stderr(io.StringIO()):  # lime 0.2 always draws a tqdm bar per image
            explanation = explainer.explain_instance(
                image.pixels, self._probabilities, labels=(image.class_id,), top_labels=None,
                num_samples=self.samples, batch_size=self.batch_size, random_seed=self.seed)
        weights = np.zeros(int(explanation.segments.max()) + 1, dtype=np.float32)
        for segment, weight in explanation.local_exp[image.class_id]:
            weights[segment] = weight
        return weights[explanation.segments]


class SavedMapsMethod(SaliencyMethod):
    """Maps made elsewhere - RISE with 4000 masks on a GPU (``benchmarks/rise_targets.py --exact-heldout``),
    another explainer - scored here by the same metric code and judge as every method. Each .npz file holds
    ``names`` (akd-evaluate's image names), ``class_ids`` (the class each map explains: it must be the target's
    prediction here) and ``maps`` (N, H, W); optionally ``seconds`` per map, which the speed table then reports
    as timed where the maps were made."""

    made_elsewhere = True

    def __init__(self, label: str, paths: list[str]):
        self.name, self.execution = label, f"saved maps ({', '.join(paths)})"
        self.saved: dict[str, tuple[int, np.ndarray, float]] = {}  # name -> class, map, seconds (nan: untimed)
        for path in paths:
            try:
                with np.load(path, allow_pickle=False) as data:
                    names, class_ids, maps = (data[key] for key in ("names", "class_ids", "maps"))
                    seconds = data["seconds"] if "seconds" in data else [None] * len(names)
            except (OSError, ValueError, KeyError) as exc:
                raise AkdError(f"{path}: not a saved-maps .npz with names, class_ids and maps ({exc})") from None
            if maps.ndim != 3 or not len(names) == len(class_ids) == len(maps) == len(seconds):
                raise AkdError(f"{path}: {len(names)} names, {len(class_ids)} class ids, maps of shape "
                               f"{maps.shape}: expected one (H, W) map per name")
            for name, class_id, saliency, second in zip(names, class_ids, maps, seconds, strict=True):
                self.saved[str(name)] = (int(class_id), saliency.astype(np.float32),
                                         float("nan") if second is None else float(second))

    def covers(self, image: EvalImage) -> bool:
        return image.name in self.saved

    def recorded_seconds(self, image: EvalImage) -> float | None:
        return self.saved[image.name][2]

    def explain(self, image: EvalImage) -> np.ndarray:
        class_id, saliency, _ = self.saved[image.name]
        if class_id != image.class_id:
            raise AkdError(f"--maps {self.name}: the map of {image.name} explains class {class_id}, but the target "
                           f"predicts {image.class_id} here: maps of another target or other images")
        if saliency.shape != image.pixels.shape[:2]:
            raise AkdError(f"--maps {self.name}: the map of {image.name} is {saliency.shape}, the image "
                           f"{image.pixels.shape[:2]}")
        return saliency


@register_method("akd")
def _akd_methods(options, teacher: Teacher) -> list[SaliencyMethod]:
    """One per ``--model``, each checked against the target it is judged by."""
    if not options.models:
        raise AkdError("method 'akd' needs --model")
    methods: list[SaliencyMethod] = []
    try:
        for model in options.models:
            label = "akd" if len(options.models) == 1 else f"akd:{Path(model).name}"
            method = AkdMethod(model, options.threads, label)
            methods.append(method)
            size = teacher.preprocessing.input_size
            if method.engine.info.size != (size, size):
                raise AkdError(f"{model}: the surrogate's input is {method.engine.info.size} but the target reads "
                               f"{size}x{size} images; evaluate it against the target it was distilled from")
            if len(method.engine.classes) != teacher.num_classes:
                raise AkdError(f"{model}: the surrogate knows {len(method.engine.classes)} classes but the target "
                               f"has {teacher.num_classes}; evaluate it against the target it was distilled from")
    except BaseException:
        for method in methods:
            method.close()
        raise
    return methods


@register_method("gradcam")
def _gradcam_methods(options, teacher: Teacher) -> list[SaliencyMethod]:
    layers = options.gradcam_layers or [None]
    return [GradCamMethod(teacher, layer, "gradcam" if len(layers) == 1 else f"gradcam:{layer}") for layer in layers]


@register_method("rise")
def _rise_methods(options, teacher: Teacher) -> list[SaliencyMethod]:
    return [RiseMethod(teacher, options.rise_masks, seed=options.seed)]


@register_method("lime")
def _lime_methods(options, teacher: Teacher) -> list[SaliencyMethod]:
    return [LimeMethod(teacher, options.lime_samples, seed=options.seed)]


METHODS = tuple(METHOD_BUILDERS)
