import math

import pytest
import torch
import torch.nn.functional as F

from usb_cfsg.modules import CosineClassifier, SemanticFilter, SFMOutput, gather_tokens, keep_count


@pytest.mark.parametrize(
    "n,rho,expected",
    [
        (196, 0.25, 49),
        (16, 0.25, 4),
        (10, 0.25, 3),  # 2.5 rounds half-up
        (6, 0.25, 2),  # 1.5 -> 2
        (3, 0.1, 1),  # 0.3 -> 0 -> at least 1
        (7, 1.0, 7),
        (1, 0.25, 1),
        (49, 0.5, 25),
    ],
)
def test_keep_count(n, rho, expected):
    assert keep_count(n, rho) == expected
    assert SemanticFilter(keep_ratio=rho).keep_count(n) == expected


def test_keep_count_rejects_bad_values():
    with pytest.raises(ValueError):
        keep_count(0, 0.5)
    with pytest.raises(ValueError):
        keep_count(4, 0.0)
    with pytest.raises(ValueError):
        SemanticFilter(keep_ratio=1.5)


def _random_inputs(B=3, N=10, D=8, K=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, D, generator=g), torch.randn(B, N, D, generator=g), torch.randn(K, D, generator=g))


def test_defaults():
    sfm = SemanticFilter()
    assert (sfm.keep_ratio, sfm.temperature, sfm.logit_scale, sfm.local_weight) == (0.25, 0.07, 100.0, 1.0)
    assert sfm.detach_relevance is False
    assert list(sfm.parameters()) == []


def test_shapes_and_ranges():
    g, p, t = _random_inputs(B=3, N=10, D=8, K=5)
    out = SemanticFilter(keep_ratio=0.25)(g, p, t)
    assert isinstance(out, SFMOutput)
    assert out.class_probs.shape == (3, 5)
    assert out.affinity.shape == (3, 10, 5)
    assert out.relevance.shape == (3, 10)
    assert out.keep_idx.shape == (3, 3) and out.keep_idx.dtype == torch.long  # round(2.5) = 3
    assert out.keep_mask.shape == (3, 10) and out.keep_mask.dtype == torch.bool
    assert out.local.shape == (3, 8) and out.coarse.shape == (3, 8)
    torch.testing.assert_close(out.class_probs.sum(1), torch.ones(3))
    assert out.affinity.abs().max() <= 1 + 1e-5
    torch.testing.assert_close(out.coarse.norm(dim=1), torch.ones(3))


def test_relevance_is_a_distribution_and_topk_is_right():
    g, p, t = _random_inputs(B=4, N=16, D=8, K=6, seed=1)
    out = SemanticFilter(keep_ratio=0.25, temperature=0.5, logit_scale=10.0)(g, p, t)
    assert (out.relevance >= 0).all()
    torch.testing.assert_close(out.relevance.sum(1), torch.ones(4))
    assert (out.keep_mask.sum(1) == 4).all()
    for b in range(4):
        kept = out.relevance[b, out.keep_idx[b]]
        assert (kept[:-1] >= kept[1:]).all()  # decreasing relevance
        dropped = out.relevance[b][~out.keep_mask[b]]
        assert kept.min() >= dropped.max()
        assert set(out.keep_idx[b].tolist()) == set(out.keep_mask[b].nonzero().flatten().tolist())


def test_hand_computed_tiny_case():
    # t = e0, e1; g = e0; logit_scale 1 -> pi = softmax([1, 0]) = [a, 1 - a], a = e / (1 + e)
    # patches p1 = e0, p2 = e1; tau 1 -> A = I; softmax over patches: class 0 [a, 1-a], class 1 [1-a, a]
    # r1 = a * a + (1 - a) * (1 - a); r2 = 2 a (1 - a)
    a = math.e / (1 + math.e)
    r1, r2 = a * a + (1 - a) ** 2, 2 * a * (1 - a)
    t = torch.eye(2)
    g = torch.tensor([[1.0, 0.0]])
    p = torch.eye(2).unsqueeze(0)
    # rho = 1: keep both; f = r1 e0 + r2 e1 (r1 + r2 = 1); z_c = normalize(e0 + normalize(f))
    out = SemanticFilter(keep_ratio=1.0, temperature=1.0, logit_scale=1.0)(g, p, t)
    torch.testing.assert_close(out.class_probs, torch.tensor([[a, 1 - a]]))
    torch.testing.assert_close(out.relevance, torch.tensor([[r1, r2]]))
    torch.testing.assert_close(out.local, torch.tensor([[r1, r2]]))
    nf = math.hypot(r1, r2)
    zc = torch.tensor([[1 + r1 / nf, r2 / nf]])
    torch.testing.assert_close(out.coarse, zc / zc.norm())
    # rho = 0.5: keep only p1 (r1 > r2); f = p1; z_c = normalize(e0 + e0) = e0
    out = SemanticFilter(keep_ratio=0.5, temperature=1.0, logit_scale=1.0)(g, p, t)
    assert out.keep_idx.tolist() == [[0]]
    torch.testing.assert_close(out.local, torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(out.coarse, torch.tensor([[1.0, 0.0]]))
    # coarse logits = s * cos(z_c, W_c) by hand: z_c = e0, W_c = t -> [30 * 1, 30 * 0]
    clf = CosineClassifier.from_text(t, scale=30.0)
    torch.testing.assert_close(clf(out.coarse), torch.tensor([[30.0, 0.0]]))


def test_coarse_logits_match_manual_cosine():
    g, p, t = _random_inputs(B=2, N=9, D=6, K=4, seed=3)
    out = SemanticFilter(keep_ratio=0.5, local_weight=0.7)(g, p, t)
    zc = F.normalize(F.normalize(g, dim=-1) + 0.7 * F.normalize(out.local, dim=-1), dim=-1)
    torch.testing.assert_close(out.coarse, zc)
    clf = CosineClassifier.from_text(t, scale=30.0)
    manual = torch.stack(
        [torch.stack([30.0 * torch.dot(zc[b], t[k]) / t[k].norm() for k in range(4)]) for b in range(2)]
    )
    torch.testing.assert_close(clf(out.coarse), manual)


def test_local_is_convex_combination_of_kept_patches():
    g, p, t = _random_inputs(B=2, N=12, D=5, K=3, seed=4)
    out = SemanticFilter(keep_ratio=0.5, temperature=0.2, logit_scale=5.0)(g, p, t)
    for b in range(2):
        idx = out.keep_idx[b]
        w = out.relevance[b, idx] / out.relevance[b, idx].sum()
        assert (w >= 0).all() and torch.isclose(w.sum(), torch.tensor(1.0))
        torch.testing.assert_close(out.local[b], (w.unsqueeze(1) * p[b, idx]).sum(0))


def test_dominant_patch():
    # 8 patches; patch 5 is exactly the text of class 1, which the global feature predicts;
    # every other patch is orthogonal to both texts; with a sharp temperature nearly all relevance
    # goes to patch 5, and the local feature is (almost) that patch, whatever its norm.
    D, N = 6, 8
    t = torch.eye(D)[:2]  # classes along e0, e1
    g = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    p = torch.zeros(1, N, D)
    p[0, :, 2:] = torch.randn(N, D - 2, generator=torch.Generator().manual_seed(0))
    p[0, 5] = torch.tensor([0.0, 3.0, 0.0, 0.0, 0.0, 0.0])
    out = SemanticFilter(keep_ratio=0.5, temperature=0.01)(g, p, t)
    assert out.keep_idx[0, 0].item() == 5
    assert out.relevance[0, 5] > 0.99
    torch.testing.assert_close(out.local[0], p[0, 5], atol=1e-3, rtol=0)
    torch.testing.assert_close(out.coarse[0], F.normalize(g[0], dim=0), atol=1e-3, rtol=0)


def test_affinity_features_drive_relevance_patch_features_drive_local():
    g, p, t = _random_inputs(B=2, N=8, D=4, K=3, seed=5)
    dense = torch.randn(2, 8, 4, generator=torch.Generator().manual_seed(9))
    sfm = SemanticFilter(keep_ratio=0.5)
    a = sfm(g, p, t, affinity_feat=dense)
    b = sfm(g, p * 2.0 + 1.0, t, affinity_feat=dense)  # other patches, same dense features
    torch.testing.assert_close(a.relevance, b.relevance)
    assert torch.equal(a.keep_idx, b.keep_idx)
    torch.testing.assert_close(b.local, 2.0 * a.local + 1.0)  # convex weights sum to 1
    c = sfm(g, p, t)  # defaults to the patch features
    torch.testing.assert_close(c.affinity, F.normalize(p, dim=-1) @ F.normalize(t, dim=-1).t())


def test_local_weight_zero_and_scale_invariance():
    g, p, t = _random_inputs(seed=6)
    out = SemanticFilter(local_weight=0.0)(g, p, t)
    torch.testing.assert_close(out.coarse, F.normalize(g, dim=-1))
    sfm = SemanticFilter()
    torch.testing.assert_close(sfm(g, p, t).coarse, sfm(5.0 * g, p, 3.0 * t).coarse)


def test_gradients():
    g, p, t = _random_inputs(seed=7)
    dense = torch.randn_like(p)
    g.requires_grad_(True), p.requires_grad_(True), dense.requires_grad_(True)
    out = SemanticFilter(keep_ratio=0.5, logit_scale=5.0, temperature=0.5)(g, p, t, affinity_feat=dense)
    (out.coarse * torch.randn_like(out.coarse)).sum().backward()
    for x in (g, p, dense):
        assert x.grad is not None and x.grad.abs().sum() > 0
    g.grad = p.grad = dense.grad = None
    out = SemanticFilter(keep_ratio=0.5, detach_relevance=True)(g, p, t, affinity_feat=dense)
    out.local.sum().backward()
    assert dense.grad is None and p.grad is not None


def test_shape_errors():
    g, p, t = _random_inputs(B=2, N=4, D=3, K=2)
    sfm = SemanticFilter()
    with pytest.raises(ValueError):
        sfm(g[:1], p, t)
    with pytest.raises(ValueError):
        sfm(g, p, t[:, :2])
    with pytest.raises(ValueError):
        sfm(g, p, t, affinity_feat=p[:, :3])


def test_gather_tokens():
    tokens = torch.arange(2 * 4 * 3, dtype=torch.float).view(2, 4, 3)
    idx = torch.tensor([[3, 0], [1, 1]])
    out = gather_tokens(tokens, idx)
    assert out.shape == (2, 2, 3)
    assert torch.equal(out[0, 0], tokens[0, 3]) and torch.equal(out[0, 1], tokens[0, 0])
    assert torch.equal(out[1, 0], tokens[1, 1]) and torch.equal(out[1, 1], tokens[1, 1])


def test_ties_keep_lower_patch_indices():
    # identical patches -> uniform relevance; the stable sort keeps the first n_keep patches
    p = torch.ones(2, 8, 4)
    out = SemanticFilter(keep_ratio=0.25)(torch.randn(2, 4), p, torch.randn(3, 4))
    torch.testing.assert_close(out.relevance, torch.full((2, 8), 1 / 8))
    assert out.keep_idx.tolist() == [[0, 1], [0, 1]]


def test_relevance_over_classes_hand_computed_and_blank_patches_lose():
    # t = e0, e1 (D = 3); g = e0, logit_scale 1 -> pi = [a, 1 - a]; tau 1
    # p1 = e0 (class 0), p2 = e1 (class 1), p3 = e2 (like neither class: a blank patch, A = [0, 0])
    a = math.e / (1 + math.e)
    t = torch.eye(3)[:2]
    g = torch.tensor([[1.0, 0.0, 0.0]])
    p = torch.eye(3).unsqueeze(0)
    # classes: per patch softmax over classes: p1 [a, 1-a], p2 [1-a, a], p3 [1/2, 1/2]
    # raw r = [a a + (1-a)(1-a), 2 a (1-a), 1/2], then divided by its sum
    raw = torch.tensor([a * a + (1 - a) ** 2, 2 * a * (1 - a), 0.5])
    out = SemanticFilter(keep_ratio=1.0, temperature=1.0, logit_scale=1.0, relevance="classes")(g, p, t)
    torch.testing.assert_close(out.relevance, (raw / raw.sum()).unsqueeze(0))
    # patches: per class softmax over the 3 patches: class 0 [e, 1, 1] / (e + 2), class 1 [1, e, 1] / (e + 2)
    per0 = torch.tensor([math.e, 1.0, 1.0]) / (math.e + 2)
    per1 = torch.tensor([1.0, math.e, 1.0]) / (math.e + 2)
    out_p = SemanticFilter(keep_ratio=1.0, temperature=1.0, logit_scale=1.0)(g, p, t)
    torch.testing.assert_close(out_p.relevance, (a * per0 + (1 - a) * per1).unsqueeze(0))
    # "classes" scores each patch by its agreement with the believed classes: at a sharp temperature a
    # patch sure of the believed class 0 > a blank patch (1/K of every class) > a patch sure of class 1
    sharp = SemanticFilter(keep_ratio=1.0, temperature=0.07, logit_scale=100.0, relevance="classes")(g, p, t)
    r = sharp.relevance[0]
    assert r[0] > 0.6 and r[0] > r[2] > r[1] and abs(float(r[2] / r[0]) - 0.5) < 1e-3
    with pytest.raises(ValueError, match="relevance must be one of patches, classes"):
        SemanticFilter(relevance="pixels")


def test_contrastive_relevance_credits_what_separates_the_classes_not_what_they_share():
    # two classes that share a direction s and differ in d0 / d1 (D = 4: s, d0, d1, other)
    s, d0, d1, o = torch.eye(4)
    t = torch.stack([s + 0.5 * d0, s + 0.5 * d1])
    g = (s + 0.5 * d0).unsqueeze(0)  # an image of class 0
    # patch 0: the shared body (like both classes), patch 1: the detail of class 0, patch 2: unrelated
    p = torch.stack([s, d0, o]).unsqueeze(0)
    plain = SemanticFilter(keep_ratio=1 / 3, temperature=0.1, logit_scale=100.0)(g, p, t)
    contrastive = SemanticFilter(keep_ratio=1 / 3, temperature=0.1, logit_scale=100.0, relevance="contrastive")(g, p, t)
    assert plain.keep_idx.tolist() == [[0]]  # plain similarity keeps the body every class shares
    assert contrastive.keep_idx.tolist() == [[1]]  # the contrastive affinity keeps the distinguishing detail
    torch.testing.assert_close(contrastive.relevance.sum(1), torch.ones(1))
    # by hand: A - mean_k A, softmax over patches per class at tau, weighted by pi
    affinity = F.normalize(p, dim=-1) @ F.normalize(t, dim=-1).t()
    centred = affinity - affinity.mean(dim=2, keepdim=True)
    pi = (100.0 * F.normalize(g, dim=-1) @ F.normalize(t, dim=-1).t()).softmax(-1)
    expected = torch.einsum("bnk,bk->bn", (centred / 0.1).softmax(dim=1), pi)
    torch.testing.assert_close(contrastive.relevance, expected)
