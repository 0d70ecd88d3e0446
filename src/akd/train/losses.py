"""The paper's losses (eq. 4-11) plus the optional destruction term, as plain functions.

Normalisation used here: every loss is a mean over the batch; the sparsity term is ``lambda * mean(H)`` over
pixels. The paper writes ``lambda * ||H||_1`` summed over a 224x224 map with lambda = 1e-5, which equals
``(1e-5 * 224 * 224) * mean(H) = 0.50176 * mean(H)``: the ``paper-*`` recipes therefore use 0.50176.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAPER_LAMBDA = 1e-5


def paper_lambda_to_mean(paper_lambda: float = PAPER_LAMBDA, height: int = 224, width: int = 224) -> float:
    """Convert the paper's sum-normalised sparsity weight to the mean-normalised weight used by akd."""
    return paper_lambda * height * width


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
            alpha: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    """alpha * t^2 * KL(softmax(z_T/t) || softmax(z_S/t)) + (1 - alpha) * CE(z_S, label)  (eq. 4, 6, 7).

    Labels equal to -1 are unknown. With no known label in the batch the loss is soft-only (t^2 * KL); with
    some, cross-entropy averages over the labeled samples.
    """
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / t, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * t * t
    known = labels is not None and bool((labels >= 0).any())
    if not known:
        return kl
    mask = labels >= 0
    ce = F.cross_entropy(student_logits[mask], labels[mask])
    return alpha * kl + (1 - alpha) * ce


SUBSTRATES = ("zeros", "blur")


def substrate(images: torch.Tensor, kind: str) -> torch.Tensor:
    """What replaces the pixels an explanation leaves out. ``zeros`` is the mean colour in normalised space, as
    eq. 9 writes it (H * x). ``blur`` is a heavy Gaussian blur of the image itself: removing a region then
    removes its detail without pasting an unnatural flat patch, which a target reacts to wherever it appears -
    with the zeros substrate that reaction pushes every pixel of H towards 1 (measured: all-ones maps)."""
    if kind == "zeros":
        return torch.zeros_like(images)
    if kind == "blur":
        from torchvision.transforms.functional import gaussian_blur

        sigma = max(images.shape[-2:]) / 22.0
        size = int(2 * round(3 * sigma) + 1)
        return gaussian_blur(images, [size, size], [sigma, sigma])
    raise ValueError(f"substrate must be one of {', '.join(SUBSTRATES)}, not '{kind}'")


def blend(images: torch.Tensor, substrate_images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """keep * x + (1 - keep) * substrate; with the zeros substrate this is the paper's H (.) x."""
    return keep * images + (1 - keep) * substrate_images


def explanation_loss(judge_logits_on_masked: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(z_T(x)) || softmax(z_J(H (.) x)))  (eq. 9): the explanation alone must keep the prediction."""
    return F.kl_div(F.log_softmax(judge_logits_on_masked, dim=1), F.log_softmax(teacher_logits.detach(), dim=1),
                    log_target=True, reduction="batchmean")


def sparsity_loss(saliency: torch.Tensor) -> torch.Tensor:
    """mean(H): the L1 norm of a map in [0, 1], normalised by its size (see module docstring)."""
    return saliency.mean()


def rank_prior_loss(saliency: torch.Tensor, power: float, size: int = 56) -> torch.Tensor:
    """Mean squared distance between each map's sorted values and the quantile profile ``q ** power``.

    Why: the explanation and destruction terms both reward keeping (or removing) *more* pixels, so a map left to
    them and a sparsity weight saturates at all ones (measured on 640 ImageNet images). Fixing the distribution
    of values - mean ``1 / (power + 1)`` - leaves the explainer only one choice: *which* pixels rank high. That is
    what insertion and deletion measure. It generalises the area constraint of extremal perturbations (Fong et
    al. 2019) from a step profile to a graded one. Maps are area-pooled to ``size`` x ``size`` to keep the sort
    cheap."""
    pooled = F.adaptive_avg_pool2d(saliency, size).flatten(1)
    ranked, _ = pooled.sort(dim=1)
    count = ranked.shape[1]
    quantiles = (torch.arange(count, device=saliency.device, dtype=ranked.dtype) + 0.5) / count
    return (ranked - quantiles.pow(power)).pow(2).mean()


def destruction_loss(judge_logits_on_complement: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Probability of the target's class on (1 - H) (.) x: removing the explanation should destroy the
    prediction (Dabkowski & Gal 2017). Speaks to the deletion metric; weight 0 in the paper recipes."""
    predicted = teacher_logits.argmax(dim=1, keepdim=True)
    return F.softmax(judge_logits_on_complement, dim=1).gather(1, predicted).mean()


def soft_top_mask(saliency: torch.Tensor, area: float, temperature: float) -> torch.Tensor:
    """A soft mask of each map's top ``area`` fraction: sigmoid((H - t) / tau) with t the map's (1 - area)
    quantile (no gradient) and tau = ``temperature`` x the map's value range. Gradients reach the pixels near the
    threshold: whether moving them into or out of the top fraction helps is what the metrics reward."""
    flat = saliency.detach().flatten(1)
    threshold = torch.quantile(flat, 1.0 - area, dim=1).view(-1, 1, 1, 1)
    spread = (flat.amax(1) - flat.amin(1)).clamp_min(1e-6).view(-1, 1, 1, 1)
    return torch.sigmoid((saliency - threshold) / (temperature * spread))


def insertion_composite(images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """What the insertion metric scores: the kept pixels over RISE's blur of the image."""
    from akd.perturbation import rise_blur

    return blend(images, rise_blur(images), keep)


def deletion_composite(images: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """What the deletion metric scores: the removed pixels set to zero in normalised space."""
    return images * (1 - removed)


def class_log_probability(judge_logits: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
    """Per-sample log-softmax of the given classes."""
    return F.log_softmax(judge_logits, dim=1).gather(1, class_ids.view(-1, 1)).squeeze(1)
