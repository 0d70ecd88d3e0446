"""akd from Python: what the commands do, callable with objects in memory (the CLI is a thin layer over this).

    import akd
    surrogate, metrics = akd.distill(my_model, "photos/", "runs/mine.safetensors", student="resnet18_cbam",
                                     preprocessing=akd.Preprocessing(224), epochs=1)
    graph = akd.export("runs/mine.safetensors", out="runs/mine.onnx")[0]
    int8 = akd.calibrate(graph, "runs/mine.int8.onnx", data="photos/")
    report = akd.evaluate(graph, "photos/", "runs/eval", target=my_model, methods=("akd", "gradcam"))
    with akd.SaliencyEngine.load(str(graph)) as engine:
        result = engine.explain(frame)

``target`` is an ``nn.Module`` (with ``preprocessing``: how it wants its pixels) or a spec string as the CLI takes
(``efficientnet_lite0``, ``torchvision:resnet50``, ``timm:NAME``, a .onnx or TorchScript file).
"""

from __future__ import annotations

import shlex
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

from akd.util import AkdError, check_writable


class Distilled(NamedTuple):
    surrogate: Any  # akd.models.surrogate.Surrogate, loaded from the checkpoint written
    metrics: dict[str, Any]  # the last epoch's: agreement, losses, mean saliency, seconds


def _teacher(target, preprocessing=None, weights: str | None = None, skip_classes: int = 0,
             white_box: bool = False, num_classes: int | None = None):
    """A target from a spec string, an ``nn.Module`` or any other callable (a black box: a model behind an API,
    ``akd.models.teachers.CallableTarget``; ``num_classes`` for one that answers top-k)."""
    from torch import nn

    from akd.models.teachers import load_teacher, teacher_from_callable, teacher_from_module

    if isinstance(target, nn.Module):
        return teacher_from_module(target, preprocessing)
    if isinstance(target, str):
        return load_teacher(target, weights, preprocessing, skip_classes, white_box)
    if callable(target):
        return teacher_from_callable(target, preprocessing, num_classes)
    raise AkdError(f"target: expected a spec string, an nn.Module or a callable, got {type(target).__name__}")


def _target_label(target, out: str | None) -> str:
    """The name the target's explanation graph is written under: ``<stem>.explained`` beside a target file."""
    if isinstance(target, str) and Path(target).suffix and Path(target).is_file():
        return str(Path(target).with_suffix(".explained"))
    if out is None:
        raise AkdError("--out is required when exporting the explanation of a target given by name")
    name = target.rpartition(":")[2] if isinstance(target, str) else type(target).__name__
    return f"{name}.explained"


def _target_surrogate(target, preprocessing, weights: str | None, skip_classes: int, opaque: bool):
    from akd.models.target_explanation import target_surrogate

    return target_surrogate(_teacher(target, preprocessing, weights, skip_classes, white_box=not opaque))


def distill(target, data: str, out: str, *, student: str = "resnet50_cbam", preprocessing=None,
            recipe: str | dict | None = None, overrides: tuple[str, ...] = (), epochs: int | None = None,
            batch_size: int | None = None, stages: tuple[str, ...] = ("student", "explainer"), val: str | None = None,
            weights: str | None = None, skip_classes: int = 0, num_classes: int | None = None, command: str = "",
            **options: Any) -> Distilled:
    """Distil ``target`` on the images under ``data`` into an attentive surrogate saved at ``out`` (.safetensors);
    returns it, loaded, with the training metrics. ``target``: a spec, an ``nn.Module`` or a function (a black
    box; ``num_classes`` when it answers with its top k classes only). ``recipe``: a built-in name, a file or a
    dict; ``overrides``: ``KEY=VALUE`` strings; ``options``: the remaining ``TrainOptions`` (image_size, resume,
    seed, workers, device, aircraft_level, video_stride, progress)."""
    from akd.models.surrogate import load_surrogate
    from akd.train.recipes import apply_overrides, load_recipe
    from akd.train.trainer import TrainOptions, train

    if not str(out).endswith(".safetensors"):
        raise AkdError(f"--out {out}: the surrogate checkpoint must be a .safetensors file")
    check_writable(out)
    loaded = recipe if isinstance(recipe, dict) else load_recipe(recipe)
    teacher = _teacher(target, preprocessing, weights, skip_classes, num_classes=num_classes)
    recipe_values = apply_overrides(loaded, list(overrides), epochs, batch_size)
    metrics = train(TrainOptions(
        teacher=teacher, data=data, out=str(out), recipe=recipe_values, val=val, student=student, stages=list(stages),
        command=command or f"akd.distill(data={shlex.quote(str(data))}, out={shlex.quote(str(out))})", **options))
    return Distilled(load_surrogate(out), metrics)


def export(surrogate=None, out: str | None = None, *, precision: str = "fp32", format: str = "onnx",
           batch: tuple[int, int, int] = (1, 8, 32), engine: dict | None = None, triton: dict | None = None,
           on_report=None, target=None, target_weights: str | None = None, preprocessing=None,
           skip_classes: int = 0, opaque: bool = False, **options: Any) -> list[Path]:
    """The fused graph (and engine/serving files) of ``surrogate``: a .safetensors path, a ``Surrogate`` held in
    memory, or None for the one shipped with akd (then ``out`` is required). ``batch`` is the TensorRT profile
    (MIN, OPT, MAX), from which Triton's batching follows; ``engine``/``triton``: further ``EngineOptions`` /
    ``TritonOptions`` fields; ``options``: ``ExportOptions`` fields (input_format, include_target, layercam, verify,
    parity_data, calib_data, num_images, calibration_method, int8_target, max_drift, cache_dir, force);
    ``on_report(checks)`` receives the parity/drift numbers. Returns the paths written.

    ``target`` instead of a surrogate: the target's own explanation, no training (``akd.models.target_explanation``)
    - a spec as ``akd-train`` takes (an ONNX file converted to torch unless ``opaque``) or an ``nn.Module``;
    written beside a target file as ``<stem>.explained.onnx``, else under ``out``."""
    from akd.deploy.exporter import ExportOptions
    from akd.deploy.exporter import export as export_graph
    from akd.deploy.serving import TritonOptions
    from akd.deploy.tensorrt import EngineOptions
    from akd.models.surrogate import Surrogate, save_checkpoint
    from akd.runtime.engine import default_model

    triton = {"max_batch": batch[2], "preferred_batches": (batch[1], batch[2]), **(triton or {})}
    settings = dict(precision=precision, format=format, engine=EngineOptions(batch=batch, **(engine or {})),
                    triton=TritonOptions(**triton), **options)
    if target is not None:
        if surrogate is not None:
            raise AkdError("export either a surrogate or a target's own explanation, not both")
        return export_graph(ExportOptions(_target_label(target, out), None if out is None else str(out),
                                          target_surrogate=lambda: _target_surrogate(
                                              target, preprocessing, target_weights, skip_classes, opaque),
                                          **settings), on_report)
    if isinstance(surrogate, Surrogate):  # in memory: exported from a checkpoint written for it
        if out is None:
            raise AkdError("out is required when exporting a surrogate held in memory")
        with tempfile.TemporaryDirectory(prefix="akd-export-") as folder:
            checkpoint = Path(folder) / "surrogate.safetensors"
            save_checkpoint(checkpoint, surrogate)
            return export_graph(ExportOptions(str(checkpoint), str(out), **settings), on_report)
    if surrogate is None and out is None:
        raise AkdError("--out is required when exporting the shipped surrogate (it lives inside the package)")
    return export_graph(ExportOptions(str(surrogate or default_model()), None if out is None else str(out),
                                      **settings), on_report)


def calibrate(model: str | Path, out: str | Path, *, data: str | None = None, flavour: str = "cpu",
              method: str = "entropy", num_images: int = 512, max_drift: float | None = None,
              cache_dir: str | None = None, force: bool = False) -> dict[str, Any]:
    """An fp32 akd graph -> its INT8 form at ``out``, refused when it drifts too far; returns what happened
    (ranges, images, drift). Without ``data``, the shipped surrogate's own ranges (its graphs only)."""
    from akd.deploy.calibration import DEFAULT_MAX_DRIFT
    from akd.deploy.int8 import calibrate_file

    return calibrate_file(str(model), data, str(out), flavour, method, num_images,
                          DEFAULT_MAX_DRIFT if max_drift is None else max_drift, cache_dir, force)


def evaluate(models: str | list[str] | None, data: str, out: str, *, target="efficientnet_lite0",
             preprocessing=None, methods: tuple[str, ...] | None = None, weights: str | None = None,
             skip_classes: int = 0, progress: bool = True, **options: Any) -> dict[str, Any]:
    """Insertion/deletion, intensity and speed of the surrogate graph(s) ``models`` (default: the shipped one)
    against Grad-CAM, RISE and LIME on ``target``'s predictions; writes report.md/json and figures to ``out`` and
    returns the report. ``options``: ``EvalOptions`` fields (limit, subsets, masks, step, batch_size, threads,
    rise_masks, lime_samples, gradcam_layers, saved_maps, seed)."""
    from akd.evaluation.methods import METHODS
    from akd.evaluation.report import EvalOptions
    from akd.evaluation.report import evaluate as run_evaluation
    from akd.runtime.engine import default_model

    check_writable(out, "dir")
    chosen = tuple(methods or METHODS)
    listed = [models] if isinstance(models, (str, Path)) else list(models or [])
    if "akd" in chosen and not listed:
        listed = [default_model()]
    evaluation = EvalOptions(models=[str(m) for m in listed], data=data, out=str(out), methods=chosen, **options)
    return run_evaluation(evaluation, _teacher(target, preprocessing, weights, skip_classes), progress=progress)
