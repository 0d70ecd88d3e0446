"""A new classifier head for a pretrained student whose weights' classes are not the target's: fitted to the
target's logits on the student's pooled features before distillation starts, so the first epochs train
agreement instead of undoing a random head (which with a frozen-ish pretrained backbone learns slowly)."""

from __future__ import annotations

import torch

from akd.data.preprocessing import SampleDataset, collate, transforms_for
from akd.models.students import Student
from akd.models.teachers import Teacher

HEAD_FIT_IMAGES = 512  # target queries spent on the fit at most
RIDGE = 1e-3  # relative to the mean feature energy: a well-posed solve with fewer images than features


@torch.no_grad()
def fit_head(student: Student, teacher: Teacher, samples: list, device: torch.device, seed: int = 0) -> int:
    """Least squares of the target's logits (centred per image: a softmax ignores the shift) on the pooled
    features, ridge-regularised; writes the student's linear classifier. Returns the images used."""
    classifier = student.linear_classifier
    dataset = SampleDataset(samples[:HEAD_FIT_IMAGES], transforms_for(teacher.preprocessing, False), seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, collate_fn=collate)
    was_training = student.training
    student.eval()
    features, logits = [], []
    for images, _, _ in loader:
        if images is None:
            continue
        images = images.to(device)
        features.append(student(images).features.float().mean(dim=(2, 3)).cpu())
        target = teacher(images).float().cpu()
        logits.append(target - target.mean(dim=1, keepdim=True))
    student.train(was_training)
    pooled, wanted = torch.cat(features), torch.cat(logits)
    design = torch.cat([pooled, torch.ones(len(pooled), 1)], dim=1).double()
    gram = design.T @ design
    gram += RIDGE * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    solution = torch.linalg.solve(gram, design.T @ wanted.double()).float()
    classifier.weight.copy_(solution[:-1].T.to(classifier.weight))
    classifier.bias.copy_(solution[-1].to(classifier.bias))
    return len(pooled)
