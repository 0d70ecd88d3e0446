"""What one stage optimises: ``DistillationStep`` computes the whole loss of a stage in one module, so torch DDP
sees a single forward per iteration whatever the stage calls inside it (student, explainer, judge on masked
images); and which parameters each stage trains."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from akd.models.surrogate import Surrogate, cam_class_weights, layercam_maps
from akd.models.teachers import Teacher
from akd.train import losses

EXPLANATION_TERMS = ("explanation", "sparsity", "rank_prior", "destruction", "insertion", "deletion")
LOSS_TERMS = ("kd", *EXPLANATION_TERMS)


class DistillationStep(nn.Module):
    """One stage's loss for a batch: ``forward(images, labels) -> (loss, stats)``."""

    def __init__(self, surrogate: Surrogate, teacher: Teacher, recipe: dict[str, Any], stage: str):
        super().__init__()
        self.surrogate, self.recipe, self.stage = surrogate, recipe, stage
        self._teacher = [teacher]  # a list keeps the target out of this module's parameters and DDP's buffers
        self._mix = image_mixer(recipe) if stage in ("student", "joint") else None

    def _judge(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of the judge: the target when gradients flow through it, else the student (eq. 9)."""
        teacher = self._teacher[0]
        if teacher.differentiable:
            return teacher(images)
        return self.surrogate.student(images).logits

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        recipe, student = self.recipe, self.surrogate.student
        if self._mix is not None and len(images) % 2 == 0:  # timm mixes pairs: an odd last batch stays unmixed
            images, labels = self._mix(images), torch.full_like(labels, -1)  # a mixed image has no true label
        with torch.no_grad():
            teacher_logits = self._teacher[0](images).float()
        stats: dict[str, torch.Tensor] = {}
        if self.stage == "student":
            logits = student(images).logits
        else:
            class_ids = teacher_logits.argmax(1)  # explain the target's prediction
            joint, layercams, taps = self.stage == "joint", None, self.surrogate.explainer.layercam_taps
            # explainer stage: student frozen, no graph (but the one LayerCAM's gradient needs)
            with torch.set_grad_enabled(joint or bool(taps)):
                (logits, deltas, features), tapped = student.with_gradient_taps(images, taps)
                if taps:
                    contrast = cam_class_weights(teacher_logits, "log_probability")
                    layercams = layercam_maps(logits, tapped, contrast, keep_graph=joint)
            if not joint:
                logits, features, deltas = logits.detach(), features.detach(), [d.detach() for d in deltas]
                layercams = [m.detach() for m in layercams] if layercams is not None else None
            weights = cam_class_weights(teacher_logits, recipe["cam_score"])[:, :, None, None]
            saliency = self.surrogate.explain(deltas, features, weights, images.shape[-2:], layercams)
        logits = logits.float()
        loss = torch.zeros((), device=images.device)
        if self.stage in ("student", "joint"):
            stats["kd"] = losses.kd_loss(logits, teacher_logits, labels, recipe["alpha"], recipe["temperature"])
            loss = loss + stats["kd"]
        if self.stage in ("explainer", "joint"):
            stats.update(self._explanation_terms(images, saliency.float(), teacher_logits, class_ids))
            loss = loss + sum(recipe[term] * stats[term] for term in EXPLANATION_TERMS if term in stats)
        stats["agree"] = (logits.argmax(1) == teacher_logits.argmax(1)).float().sum()
        return loss, stats


    def _explanation_terms(self, images: torch.Tensor, saliency: torch.Tensor, teacher_logits: torch.Tensor,
                           class_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every explanation term the recipe weights, from one judge call over all composites of the batch."""
        recipe = self.recipe
        composites: dict[str, list[torch.Tensor]] = {}
        if recipe["explanation"] > 0 or recipe["destruction"] > 0:
            substrate = losses.substrate(images, recipe["substrate"])
            composites["explanation"] = [losses.blend(images, substrate, saliency)]
            if recipe["destruction"] > 0:
                composites["destruction"] = [losses.blend(images, substrate, 1 - saliency)]
        if recipe["insertion"] > 0 or recipe["deletion"] > 0:
            areas = recipe["topk_areas"]
            chosen = torch.randperm(len(areas))[:recipe["topk_samples"]].tolist()
            masks = [losses.soft_top_mask(saliency, areas[i], recipe["topk_temperature"]) for i in chosen]
            if recipe["insertion"] > 0:
                composites["insertion"] = [losses.insertion_composite(images, mask) for mask in masks]
            if recipe["deletion"] > 0:
                composites["deletion"] = [losses.deletion_composite(images, mask) for mask in masks]
        judged = [image for group in composites.values() for image in group]
        logits = iter(self._judge(torch.cat(judged)).float().split(len(images)) if judged else [])
        judge = {term: [next(logits) for _ in group] for term, group in composites.items()}
        stats = {"sparsity": losses.sparsity_loss(saliency)}
        if "explanation" in judge:
            stats["explanation"] = losses.explanation_loss(judge["explanation"][0], teacher_logits)
        if "destruction" in judge:
            stats["destruction"] = losses.destruction_loss(judge["destruction"][0], teacher_logits)
        if recipe["rank_prior"] > 0:
            stats["rank_prior"] = losses.rank_prior_loss(saliency, recipe["rank_prior_power"])
        # insertion/deletion: the probability of the explained class on each composite, the quantity whose mean
        # over areas is the metric's AUC (insertion enters as 1 - p so every term is minimised)
        for term, sign in (("insertion", -1.0), ("deletion", 1.0)):
            if term in judge:
                probability = torch.stack([losses.class_log_probability(z, class_ids).exp() for z in judge[term]])
                stats[term] = (1.0 - probability.mean()) if sign < 0 else probability.mean()
        return stats


def image_mixer(recipe: dict[str, Any]):
    """Mixup/CutMix of the unlabeled images among themselves (timm's ``Mixup``, one mix per image), or None.

    In distillation the target labels every mixed image itself, so mixing makes new inputs from a small folder
    for the price of target queries only; timm's mixed one-hot labels are not needed and are dropped.
    """
    if not (recipe["mixup_alpha"] or recipe["cutmix_alpha"]):
        return None
    from timm.data import Mixup

    mixer = Mixup(mixup_alpha=recipe["mixup_alpha"], cutmix_alpha=recipe["cutmix_alpha"], prob=recipe["mix_prob"],
                  mode="elem", label_smoothing=0.0, num_classes=1)
    return lambda images: mixer(images.clone(), torch.zeros(len(images), dtype=torch.long, device=images.device))[0]


def param_groups(surrogate: Surrogate, stage: str, recipe: dict, pretrained: bool) -> list[dict]:
    """Parameter groups with an ``lr_scale``: new layers at 1, target-initialised weights slower."""
    spec = recipe["stages"][stage]
    backbone_scale = recipe["pretrained_lr_scale"] if pretrained else 1.0
    student_scale = spec.get("student_lr_scale", 1.0) if stage == "joint" else 1.0
    attention, backbone = [], []
    for name, param in surrogate.student.named_parameters():
        (attention if ".attention." in name else backbone).append(param)
    groups = []
    if stage in ("student", "joint"):
        groups += [{"params": attention, "lr_scale": student_scale},
                   {"params": backbone, "lr_scale": student_scale * backbone_scale}]
    if stage in ("explainer", "joint"):
        groups.append({"params": explainer_parameters(surrogate, recipe), "lr_scale": 1.0})
    return groups


def explainer_parameters(surrogate: Surrogate, recipe: dict) -> list[nn.Parameter]:
    if recipe["explainer_params"] == "calibration":
        return surrogate.explainer.calibration_parameters()
    return list(surrogate.explainer.parameters())


def set_trainable(surrogate: Surrogate, stage: str, recipe: dict) -> None:
    train_student = stage in ("student", "joint")
    train_explainer = stage in ("explainer", "joint")
    surrogate.student.requires_grad_(train_student)
    surrogate.explainer.requires_grad_(False)
    for param in explainer_parameters(surrogate, recipe) if train_explainer else []:
        param.requires_grad_(True)
    surrogate.student.train(train_student)
    surrogate.explainer.train(train_explainer)
    if recipe["freeze_bn"] and train_student:
        for module in surrogate.student.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
