import math

import pytest
import torch
import torch.nn.functional as F

from akd.train import losses


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def test_kd_loss_temperature_and_direction_match_hand_computation():
    zs = torch.tensor([[1.0, 0.0, -1.0]])
    zt = torch.tensor([[0.0, 2.0, 0.0]])
    t = 2.0
    ps = torch.softmax(zs / t, 1)[0].tolist()
    pt = torch.softmax(zt / t, 1)[0].tolist()
    expected = t * t * _kl(pt, ps)  # KL(teacher || student), scaled by t^2
    got = losses.kd_loss(zs, zt, None, alpha=0.5, temperature=t)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert got.item() != pytest.approx(t * t * _kl(ps, pt), rel=1e-3)  # not the reverse direction


def test_kd_loss_alpha_mixes_soft_and_hard_terms():
    zs = torch.tensor([[0.5, 1.5, -0.5], [2.0, 0.0, 0.0]])
    zt = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, -1.0]])
    labels = torch.tensor([1, 0])
    kl = sum(_kl(torch.softmax(zt, 1)[i].tolist(), torch.softmax(zs, 1)[i].tolist()) for i in range(2)) / 2
    ce = F.cross_entropy(zs, labels).item()
    got = losses.kd_loss(zs, zt, labels, alpha=0.3, temperature=1.0)
    assert got.item() == pytest.approx(0.3 * kl + 0.7 * ce, rel=1e-5)


def test_kd_loss_is_soft_only_without_labels_and_ignores_unknown_labels():
    zs, zt = torch.randn(4, 5), torch.randn(4, 5)
    soft = losses.kd_loss(zs, zt, torch.full((4,), -1), alpha=0.5, temperature=1.0)
    assert soft.item() == pytest.approx(losses.kd_loss(zs, zt, None, alpha=0.5).item())
    assert soft.item() == pytest.approx(F.kl_div(F.log_softmax(zs, 1), F.softmax(zt, 1), reduction="batchmean").item(),
                                        rel=1e-5)
    mixed = losses.kd_loss(zs, zt, torch.tensor([2, -1, -1, -1]), alpha=0.5)
    expected = 0.5 * soft.item() + 0.5 * F.cross_entropy(zs[:1], torch.tensor([2])).item()
    assert mixed.item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_is_zero_when_student_matches_teacher_and_gradients_only_reach_student():
    zt = torch.randn(3, 6, requires_grad=True)
    zs = zt.detach().clone().requires_grad_(True)
    loss = losses.kd_loss(zs, zt, None)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    losses.kd_loss(zs + 1e-2 * torch.randn(3, 6), zt, None).backward()
    assert zt.grad is None and zs.grad is not None


def test_explanation_loss_kl_direction():
    judged = torch.tensor([[0.0, 1.0]])
    target = torch.tensor([[2.0, 0.0]])
    expected = _kl(torch.softmax(target, 1)[0].tolist(), torch.softmax(judged, 1)[0].tolist())
    assert losses.explanation_loss(judged, target).item() == pytest.approx(expected, rel=1e-5)


def test_sparsity_and_paper_lambda_conversion():
    saliency = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]]])
    assert losses.sparsity_loss(saliency).item() == pytest.approx(0.5)
    assert losses.paper_lambda_to_mean() == pytest.approx(0.50176)
    # mean-normalised weight * mean == paper weight * sum, on a 224x224 map
    h = torch.rand(1, 1, 224, 224)
    assert (losses.paper_lambda_to_mean() * h.mean()).item() == pytest.approx((1e-5 * h.sum()).item(), rel=1e-5)


def test_destruction_loss_is_probability_of_target_class():
    judged = torch.tensor([[1.0, 0.0, 0.0]])
    target = torch.tensor([[0.0, 5.0, 0.0]])
    assert losses.destruction_loss(judged, target).item() == pytest.approx(torch.softmax(judged, 1)[0, 1].item())


def test_substrates_and_blend():
    images = torch.zeros(1, 3, 32, 32)
    images[..., 8:24, 8:24] = 1.0
    assert torch.equal(losses.substrate(images, "zeros"), torch.zeros_like(images))
    blurred = losses.substrate(images, "blur")
    assert blurred.shape == images.shape and 0 < blurred[0, 0, 8, 16] < 1 and blurred[0, 0, 6, 16] > 0.01
    keep = torch.zeros(1, 1, 32, 32)
    keep[..., :16] = 1
    mixed = losses.blend(images, blurred, keep)
    assert torch.equal(mixed[..., :16], images[..., :16]) and torch.equal(mixed[..., 16:], blurred[..., 16:])
    with pytest.raises(ValueError, match="substrate"):
        losses.substrate(images, "noise")


def test_rank_prior_is_zero_on_the_profile_and_ignores_where_pixels_sit():
    count = 16 * 16
    profile = ((torch.arange(count) + 0.5) / count).pow(4)
    exact = profile[torch.randperm(count, generator=torch.Generator().manual_seed(0))].view(1, 1, 16, 16)
    assert losses.rank_prior_loss(exact, power=4, size=16).item() == pytest.approx(0.0, abs=1e-12)
    flipped = exact.flip(-1)  # same values elsewhere: same loss
    assert losses.rank_prior_loss(flipped, power=4, size=16).item() == pytest.approx(0.0, abs=1e-12)
    ones = torch.ones(2, 1, 16, 16)  # the collapse the prior prevents: all-ones maps cost (1 - q^4)^2 on average
    expected = (1 - profile).pow(2).mean().item()
    assert losses.rank_prior_loss(ones, power=4, size=16).item() == pytest.approx(expected, rel=1e-5)
    saliency = torch.full((1, 1, 32, 32), 0.5, requires_grad=True)
    losses.rank_prior_loss(saliency, power=4, size=16).backward()
    assert saliency.grad is not None and saliency.grad.abs().sum() > 0


def _patch_judge(images: torch.Tensor) -> torch.Tensor:
    """Two-class logits that read one 6x6 patch only: class 0 when its detail (contrast) is intact."""
    patch = images[:, :, 4:10, 20:26]
    detail = (patch - patch.mean(dim=(2, 3), keepdim=True)).abs().mean(dim=(1, 2, 3))
    return torch.stack([8 * detail - 2, torch.zeros_like(detail)], dim=1)


@pytest.mark.parametrize("term", ["insertion", "deletion"])
def test_metric_shaped_terms_teach_a_map_to_rank_the_patch_the_judge_reads_first(term):
    """A free map trained by the soft top-k insertion (kept detail over RISE's blur) or deletion (zeros) term
    alone ends with the judge's patch at the top of its ranking; it starts from random noise."""
    torch.manual_seed(0)
    images = torch.randn(1, 3, 32, 32)
    logits = torch.nn.Parameter(0.1 * torch.randn(1, 1, 32, 32))
    optimizer = torch.optim.Adam([logits], lr=0.05)
    classes = torch.zeros(1, dtype=torch.long)
    for step in range(150):
        saliency = torch.sigmoid(logits)
        mask = losses.soft_top_mask(saliency, (0.05, 0.1, 0.2)[step % 3], temperature=0.05)
        if term == "insertion":
            loss = 1 - losses.class_log_probability(_patch_judge(losses.insertion_composite(images, mask)),
                                                    classes).exp().mean()
        else:
            loss = losses.class_log_probability(_patch_judge(losses.deletion_composite(images, mask)),
                                                classes).exp().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    ranked = logits.detach().flatten().argsort(descending=True)[:36]
    rows, cols = ranked // 32, ranked % 32
    inside = ((rows >= 4) & (rows < 10) & (cols >= 20) & (cols < 26)).float().mean().item()
    assert inside > 0.8, inside


def test_soft_top_mask_keeps_the_requested_area():
    saliency = torch.rand(2, 1, 40, 40)
    for area in (0.05, 0.3):
        mask = losses.soft_top_mask(saliency, area, temperature=0.01)
        assert mask.mean(dim=(1, 2, 3)).tolist() == pytest.approx([area, area], abs=0.02)
        top = saliency.flatten(1) >= saliency.flatten(1).quantile(1 - area, dim=1, keepdim=True)
        assert ((mask.flatten(1) > 0.5) == top).float().mean() > 0.99


def test_composites_are_what_the_metrics_score():
    from akd.perturbation import rise_blur

    images = torch.randn(1, 3, 16, 16)
    keep = (torch.rand(1, 1, 16, 16) > 0.5).float()
    torch.testing.assert_close(losses.insertion_composite(images, keep),
                               torch.where(keep.bool(), images, rise_blur(images)))
    torch.testing.assert_close(losses.deletion_composite(images, keep),
                               torch.where(keep.bool(), torch.zeros_like(images), images))
