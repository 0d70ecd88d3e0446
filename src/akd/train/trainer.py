"""The distillation loop: stages student / explainer / joint, chained in one run, resumable, data-parallel
(each stage's loss and trainable parameters: ``akd.train.step``)."""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from akd.data.preprocessing import Preprocessing, SampleDataset, collate, transforms_for
from akd.data.sources import data_summary, discover
from akd.models.pretrained import pretrained_student
from akd.models.surrogate import (
    TRAIN_STATE_PREFIX,
    Surrogate,
    read_checkpoint,
    save_checkpoint,
)
from akd.models.teachers import Teacher, load_teacher, teacher_init_state
from akd.train.distributed import all_reduce_sum, barrier, init_distributed, shard_indices
from akd.train.head import fit_head
from akd.train.recipes import STAGES, head_config, learning_rate
from akd.train.step import LOSS_TERMS, DistillationStep, param_groups, set_trainable
from akd.util import AkdError

log = logging.getLogger(__name__)

LOG_COLUMNS = ["stage", "epoch", "lr", "train_loss", *(f"train_{term}" for term in LOSS_TERMS), "train_agreement",
               "val_agreement", "val_teacher_top1", "val_student_top1", "val_mean_saliency", "train_images",
               "val_images", "target_queries", "skipped", "seconds"]


@dataclass
class TrainOptions:
    teacher: str | Teacher  # a spec, or a target already loaded (the Python API's in-memory module)
    data: str
    out: str
    recipe: dict[str, Any]
    val: str | None = None
    student: str = "resnet50_cbam"
    student_weights: str | None = None  # with student timm:NAME: its initial weights (akd.models.pretrained)
    stages: list[str] = field(default_factory=lambda: ["student", "explainer"])
    teacher_weights: str | None = None
    teacher_preprocessing: Preprocessing | None = None
    teacher_skip_classes: int = 0
    image_size: int | None = None
    resume: bool = False
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    aircraft_level: str = "variant"
    video_stride: int = 10
    progress: bool = True
    command: str = ""


def _resolve_device(name: str, env_local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise AkdError("--device cuda requested but CUDA is not available")
        return torch.device("cuda", env_local_rank)
    return torch.device(name)


class Trainer:
    def __init__(self, options: TrainOptions):
        self.options = options
        self.device = _resolve_device(options.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.env = init_distributed(self.device)
        unknown = [s for s in options.stages if s not in STAGES]
        if unknown or not options.stages:
            raise AkdError(f"--stages: unknown stage(s) {', '.join(unknown)} (choose from {', '.join(STAGES)})")
        missing = [s for s in options.stages if s not in options.recipe["stages"]]
        if missing:
            raise AkdError(f"recipe '{options.recipe.get('name')}' defines no schedule for stage(s) {missing}")
        self.teacher = options.teacher if isinstance(options.teacher, Teacher) else load_teacher(
            options.teacher, options.teacher_weights, options.teacher_preprocessing, options.teacher_skip_classes)
        if options.image_size:
            self.teacher.preprocessing.input_size = options.image_size
        self.train_set = discover(options.data, "train", options.aircraft_level, options.video_stride)
        self.val_set = discover(options.val, "test", options.aircraft_level, options.video_stride) \
            if options.val else None
        for found, flag in ((self.train_set, "--data"), (self.val_set, "--val")):
            if found is not None and found.classes is not None and len(found.classes) != self.teacher.num_classes:
                raise AkdError(f"{flag} {getattr(options, flag[2:])}: {len(found.classes)} classes "
                               f"({found.layout}) but the target predicts {self.teacher.num_classes}")
        self.surrogate, self.pretrained = self._build_surrogate()
        self.surrogate.to(self.device)
        if self.teacher.module is not None:
            self.teacher.module.to(self.device)
        self.log_path = Path(options.out).with_suffix(".log.csv")

    def _build_surrogate(self) -> tuple[Surrogate, bool]:
        options, teacher = self.options, self.teacher
        init_state, init, self.new_head = None, "scratch", False
        arch = options.student
        if arch == "same-as-teacher":
            arch, init_state = teacher_init_state(teacher)
            init = "target"
            if not teacher.identity.get("init_state"):
                log.warning("target has no trained weights; the student starts from its random weights")
        elif arch.startswith("pretrained:") or options.student_weights:
            pretrained = pretrained_student(arch, options.student_weights, teacher.num_classes)
            arch, init_state, init, self.new_head = (pretrained.arch, pretrained.state, pretrained.origin,
                                                     pretrained.new_head)
        classes = self.train_set.classes or teacher.class_names or [f"class_{i}" for i in
                                                                    range(teacher.num_classes)]
        identity = {k: v for k, v in teacher.identity.items() if k not in ("student", "init_state")}
        config = {
            "student": arch,
            "student_init": init,
            **head_config(options.recipe),
            "cam_score": options.recipe["cam_score"],
            "layercam_weight": float(options.recipe["layercam_weight"]),
            "layercam8_weight": float(options.recipe["layercam8_weight"]),
            "classes": list(classes),
            "input_size": [teacher.preprocessing.input_size] * 2,
            "preprocessing": teacher.preprocessing.to_config(),
            "target": identity,
            "recipe": options.recipe,
            "stages": options.stages,
            "training": {"seed": options.seed, "data": options.data, "val": options.val,
                         "data_layout": self.train_set.layout, "command": options.command},
            "metrics": {},
        }
        torch.manual_seed(options.seed)
        return Surrogate(config, init_state), init_state is not None

    # ---- checkpoint state --------------------------------------------------------------------------------
    def _save(self, optimizer: torch.optim.Optimizer, stage: str, completed: dict[str, int], scaler) -> None:
        """Weights + config + everything an exact resume needs: epochs done per stage, the optimizer's
        momentum buffers, the global RNG state and the AMP loss scale."""
        state = optimizer.state_dict()
        tensors = {f"{TRAIN_STATE_PREFIX}optim.{index}.{key}": value.detach().cpu().contiguous()
                   for index, entry in state["state"].items() for key, value in entry.items()
                   if torch.is_tensor(value)}
        tensors[f"{TRAIN_STATE_PREFIX}rng"] = torch.get_rng_state()
        progress = {"stages": self.options.stages, "completed": completed, "optim_stage": stage,
                    "scaler": scaler.state_dict() if scaler.is_enabled() else None}
        save_checkpoint(self.options.out, self.surrogate, tensors, {"train_state": json.dumps(progress)})

    def _resume_point(self) -> tuple[dict[str, int], dict[str, torch.Tensor], dict]:
        """Epochs completed per stage, optimizer tensors and progress record of the checkpoint at --out."""
        if not (self.options.resume and os.path.exists(self.options.out)):
            if self.options.resume and self.env.main:
                log.warning("%s does not exist yet: starting from scratch", self.options.out)
            return {}, {}, {}
        tensors, metadata = read_checkpoint(self.options.out)
        saved = json.loads(metadata["config"])
        for key in ("student", "classes"):
            if saved[key] != self.surrogate.config[key]:
                raise AkdError(f"{self.options.out}: cannot resume, its {key} differs from this run's")
        if saved["target"].get("sha256") != self.surrogate.config["target"].get("sha256"):
            raise AkdError(f"{self.options.out}: cannot resume, it was distilled from a different target")
        if "train_state" not in metadata:
            raise AkdError(f"{self.options.out}: cannot resume, the checkpoint holds no training state")
        progress = json.loads(metadata["train_state"])
        if progress["stages"] != self.options.stages:
            raise AkdError(f"{self.options.out}: cannot resume, it ran stages {','.join(progress['stages'])}")
        weights = {k: v for k, v in tensors.items() if not k.startswith(TRAIN_STATE_PREFIX)}
        self.surrogate.load_state_dict(weights)
        self.surrogate.config["metrics"] = saved.get("metrics", {})
        torch.set_rng_state(tensors[f"{TRAIN_STATE_PREFIX}rng"])
        optim = {k.removeprefix(f"{TRAIN_STATE_PREFIX}optim."): v for k, v in tensors.items()
                 if k.startswith(f"{TRAIN_STATE_PREFIX}optim.")}
        return progress["completed"], optim, progress

    # ---- loop --------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        options, env = self.options, self.env
        if env.main:
            print(f"akd-train: target {self.teacher.identity['name']} ({self.teacher.num_classes} classes), "
                  f"student {self.surrogate.config['student']} ({self.surrogate.config['student_init']}), "
                  f"data {data_summary(self.train_set)}, world size {env.world}, device {self.device}",
                  file=sys.stderr)
        completed, optim_state, progress = self._resume_point()
        if self.new_head and not completed:
            fitted = fit_head(self.surrogate.student, self.teacher, self.train_set.samples, self.device, options.seed)
            if env.main:
                print(f"akd-train: new classifier head fitted to the target's logits on {fitted} images",
                      file=sys.stderr)
        dataset = SampleDataset(self.train_set.samples, transforms_for(self.teacher.preprocessing, True),
                                      options.seed)
        scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda")
        if progress.get("scaler") and scaler.is_enabled():  # its state dict: update() before scale() raises
            scaler.load_state_dict(progress["scaler"])
        ran = False
        for index, stage in enumerate(options.stages):
            epochs = options.recipe["stages"][stage]["epochs"]
            done = completed.get(stage, 0)
            if done >= epochs:
                continue
            later = [s for s in options.stages[index + 1:] if completed.get(s, 0)]
            if later:
                raise AkdError(f"{options.out}: cannot add epochs to stage '{stage}', stage '{later[0]}' already ran")
            optimizer, step = self._stage_setup(stage, optim_state if progress.get("optim_stage") == stage else {})
            for epoch in range(done, epochs):
                dataset.epoch = index * 100_000 + epoch  # fresh augmentations per stage and epoch
                metrics = self._train_epoch(step, optimizer, scaler, dataset, stage, epoch)
                if self.val_set is not None and env.main:
                    metrics.update(self.validate())
                completed[stage] = epoch + 1
                self.surrogate.config["metrics"] = {"stage": stage, "epoch": epoch + 1, **metrics}
                if env.main:
                    self._save(optimizer, stage, completed, scaler)
                    self._log_row(stage, epoch + 1, metrics)
                barrier(env)
                ran = True
        if not ran and env.main:
            print(f"akd-train: {options.out} already completed every stage; nothing to do", file=sys.stderr)
        return self.surrogate.config["metrics"]

    def _stage_setup(self, stage: str, optim_state: dict[str, torch.Tensor]):
        recipe = self.options.recipe
        set_trainable(self.surrogate, stage, recipe)
        optimizer = torch.optim.SGD(param_groups(self.surrogate, stage, recipe, self.pretrained), lr=0.0,
                                    momentum=recipe["momentum"], nesterov=recipe["nesterov"],
                                    weight_decay=recipe["weight_decay"])
        if optim_state:
            state = optimizer.state_dict()
            for key, value in optim_state.items():
                index, name = key.split(".", 1)
                state["state"].setdefault(int(index), {})[name] = value
            optimizer.load_state_dict(state)
        step: nn.Module = DistillationStep(self.surrogate, self.teacher, recipe, stage)
        if self.env.world > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            step = nn.parallel.DistributedDataParallel(step, device_ids=device_ids)
        return optimizer, step

    def _train_epoch(self, step, optimizer, scaler, dataset, stage: str, epoch: int) -> dict[str, float]:
        options, env, recipe = self.options, self.env, self.options.recipe
        spec = recipe["stages"][stage]
        lr = learning_rate(spec, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        per_rank_batch = max(1, spec.get("batch_size", recipe["batch_size"]) // env.world)
        indices = shard_indices(len(dataset), dataset.epoch, options.seed, env.rank, env.world, shuffle=True)
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=per_rank_batch,
                                             shuffle=False, num_workers=options.workers, collate_fn=collate)
        totals = {"loss": 0.0, "agree": 0.0, "seen": 0.0, "skipped": 0.0}
        started = time.perf_counter()
        bar = tqdm(loader, desc=f"{stage} {epoch + 1}/{spec['epochs']}", disable=not (env.main and options.progress),
                   leave=False, file=sys.stderr)
        for images, labels, skipped in bar:
            totals["skipped"] += skipped
            if images is None:
                continue
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=scaler.is_enabled()):
                loss, stats = step(images, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            totals["loss"] += loss.item() * len(images)
            totals["agree"] += stats["agree"].item()
            totals["seen"] += len(images)
            for key in LOSS_TERMS:
                if key in stats:
                    totals[key] = totals.get(key, 0.0) + stats[key].item() * len(images)
            bar.set_postfix(loss=f"{loss.item():.4f}", agree=f"{totals['agree'] / totals['seen']:.3f}")
        keys = sorted(totals)
        summed = dict(zip(keys, all_reduce_sum([totals[k] for k in keys], env, self.device), strict=True))
        seen = max(summed["seen"], 1.0)
        metrics = {f"train_{k}": summed[k] / seen for k in keys if k not in ("seen", "skipped")}
        queries = all_reduce_sum([float(self.teacher.queries)], env, self.device)[0]
        metrics.update(train_agreement=summed.pop("agree") / seen, train_images=int(summed["seen"]),
                       target_queries=int(queries),
                       skipped=int(summed["skipped"]), lr=lr, seconds=time.perf_counter() - started)
        metrics.pop("train_agree", None)
        if env.main:
            shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
            print(f"akd-train: {stage} epoch {epoch + 1}/{spec['epochs']}: {shown}", file=sys.stderr)
        return metrics

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Student-target agreement, both top-1 accuracies (when labeled) and mean saliency on --val."""
        was_training = [m.training for m in self.surrogate.modules()]
        self.surrogate.eval()
        dataset = SampleDataset(self.val_set.samples, transforms_for(self.teacher.preprocessing, False))
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.options.recipe["batch_size"],
                                             num_workers=self.options.workers, collate_fn=collate)
        agree = teacher_correct = student_correct = labeled = seen = saliency_sum = 0.0
        for images, labels, _ in loader:
            if images is None:
                continue
            images, labels = images.to(self.device), labels.to(self.device)
            teacher_pred = self.teacher(images).argmax(1)
            saliency, logits = self.surrogate(images)
            student_pred = logits.argmax(1)
            agree += (student_pred == teacher_pred).sum().item()
            mask = labels >= 0
            labeled += mask.sum().item()
            teacher_correct += (teacher_pred[mask] == labels[mask]).sum().item()
            student_correct += (student_pred[mask] == labels[mask]).sum().item()
            saliency_sum += saliency.mean(dim=(1, 2, 3)).sum().item()
            seen += len(images)
        for module, mode in zip(self.surrogate.modules(), was_training, strict=True):
            module.train(mode)
        metrics = {"val_agreement": agree / max(seen, 1), "val_mean_saliency": saliency_sum / max(seen, 1),
                   "val_images": int(seen)}
        if labeled:
            metrics.update(val_teacher_top1=teacher_correct / labeled, val_student_top1=student_correct / labeled)
        print("akd-train: validation: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                    for k, v in metrics.items()), file=sys.stderr)
        return metrics

    def _log_row(self, stage: str, epoch: int, metrics: dict[str, Any]) -> None:
        """Append one row per epoch to ``<out>.log.csv``; the columns are fixed so every stage fits them."""
        row = {"stage": stage, "epoch": epoch, **{k: round(v, 6) if isinstance(v, float) else v
                                                   for k, v in metrics.items()}}
        new = not self.log_path.exists()
        with open(self.log_path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS, extrasaction="ignore", restval="")
            if new:
                writer.writeheader()
            writer.writerow(row)

def train(options: TrainOptions) -> dict[str, Any]:
    return Trainer(options).run()
