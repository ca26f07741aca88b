import math

import pytest
import torch
import torch.nn.functional as F

from medfm.ssl.losses import (
    DINOLoss,
    dino_loss,
    info_nce,
    metadata_weighted_info_nce,
)


def _rotated_pairs(angle):
    """z1 = unit axes, z2 = the same rotated by ``angle`` (then scaled, to test normalisation)."""
    c, s = math.cos(angle), math.sin(angle)
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = 3.0 * torch.tensor([[c, s], [-s, c]])
    # cosine similarities: z1[0].z2[0] = z1[1].z2[1] = c, z1[0].z2[1] = -s, z1[1].z2[0] = s,
    # z1[0].z1[1] = z2[0].z2[1] = 0
    return z1, z2, c, s


def _nce_term(positive, others, t):
    """-log(exp(pos/t) / sum(exp(all/t))) for one anchor; ``others`` includes the positive."""
    return -(positive / t - math.log(sum(math.exp(o / t) for o in others)))


def _naive_info_nce(z1, z2, t):
    z = F.normalize(torch.cat([z1, z2]), dim=1).tolist()
    n, b = len(z), len(z1)
    total = 0.0
    for a in range(n):
        sims = [sum(x * y for x, y in zip(z[a], z[k], strict=True)) for k in range(n)]
        positive = sims[(a + b) % n]
        total += _nce_term(positive, [sims[k] for k in range(n) if k != a], t)
    return total / n


def test_info_nce_closed_form_two_pairs():
    t = 0.5
    z1, z2, c, s = _rotated_pairs(0.3)
    # anchors z1[0] and z2[1] see {0, c (positive), -s}; z1[1] and z2[0] see {0, s, c (positive)}
    expected = 0.5 * (_nce_term(c, [0.0, c, -s], t) + _nce_term(c, [0.0, s, c], t))
    assert info_nce(z1, z2, t).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_matches_naive_loop_reference():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 7), torch.randn(5, 7)
    for t in (0.07, 0.2, 1.0):
        assert info_nce(z1, z2, t).item() == pytest.approx(_naive_info_nce(z1, z2, t), rel=1e-5)


def test_info_nce_temperature_behaviour():
    z = torch.eye(4)  # 4 orthogonal samples, both views identical
    losses = [info_nce(z, z, t).item() for t in (2.0, 1.0, 0.5, 0.1, 0.02)]
    assert losses == sorted(losses, reverse=True)  # sharper -> lower for separated pairs
    assert losses[-1] < 1e-6  # -> 0 as t -> 0
    assert info_nce(z, z, 1e4).item() == pytest.approx(math.log(2 * 4 - 1), rel=1e-3)
    assert info_nce(torch.randn(1, 3), torch.randn(1, 3), 0.1).item() == 0.0  # no negatives
    with pytest.raises(ValueError, match="temperature"):
        info_nce(z, z, 0.0)
    with pytest.raises(ValueError, match="must both be"):
        info_nce(z, z[:3], 0.1)


def test_info_nce_gradient_pulls_positives_together():
    torch.manual_seed(1)
    z1, z2 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8)
    before = F.cosine_similarity(z1, z2).mean()
    info_nce(z1, z2, 0.2).backward()
    with torch.no_grad():
        after = F.cosine_similarity(z1 - 0.1 * z1.grad, z2).mean()
    assert after > before


def test_metadata_loss_reduces_to_info_nce_as_sigma_goes_to_zero():
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 5), torch.randn(6, 5)
    meta = torch.tensor([20.0, 31.0, 45.0, 52.0, 67.0, 80.0])
    got = metadata_weighted_info_nce(z1, z2, meta, temperature=0.3, sigma=1e-3)
    assert got.item() == pytest.approx(info_nce(z1, z2, 0.3).item(), rel=1e-6)


def test_metadata_loss_hand_computed_tiny_case():
    t, sigma = 0.5, 1.0
    z1, z2, c, s = _rotated_pairs(0.3)
    meta = torch.tensor([0.0, 1.0])
    w = math.exp(-0.5)  # kernel for a metadata difference of 1 (= sigma)
    # embeddings [z1[0], z1[1], z2[0], z2[1]] with metadata [0, 1, 0, 1]; similarities:
    sims = [[None, 0.0, c, -s], [0.0, None, s, c], [c, s, None, 0.0], [-s, c, 0.0, None]]
    y = [0.0, 1.0, 0.0, 1.0]
    total = 0.0
    for a in range(4):
        others = [k for k in range(4) if k != a]
        log_z = math.log(sum(math.exp(sims[a][k] / t) for k in others))
        weights = {k: 1.0 if y[k] == y[a] else w for k in others}
        norm = sum(weights.values())
        total += -sum(weights[k] / norm * (sims[a][k] / t - log_z) for k in others)
    expected = total / 4
    got = metadata_weighted_info_nce(z1, z2, meta, temperature=t, sigma=sigma)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_metadata_loss_checks_sigma_and_shape():
    z = torch.randn(3, 4)
    with pytest.raises(ValueError, match="sigma"):
        metadata_weighted_info_nce(z, z, torch.zeros(3), sigma=0.0)
    with pytest.raises(ValueError, match="meta must have shape"):
        metadata_weighted_info_nce(z, z, torch.zeros(4))


def _naive_dino(student, teacher, center, ts, tt):
    def softmax(row, temp, shift):
        e = [math.exp((x - c) / temp) for x, c in zip(row, shift, strict=True)]
        return [v / sum(e) for v in e]

    zeros = [0.0] * len(center)
    terms = []
    for i, t_view in enumerate(teacher):
        for v, s_view in enumerate(student):
            if v == i:
                continue
            per_sample = []
            for t_row, s_row in zip(t_view.tolist(), s_view.tolist(), strict=True):
                q = softmax(t_row, tt, center.tolist())
                p = softmax(s_row, ts, zeros)
                per_sample.append(-sum(qk * math.log(pk) for qk, pk in zip(q, p, strict=True)))
            terms.append(sum(per_sample) / len(per_sample))
    return sum(terms) / len(terms)


def test_dino_loss_matches_hand_written_reference():
    torch.manual_seed(0)
    student = [torch.randn(2, 3) for _ in range(4)]  # 2 global + 2 local crops
    teacher = [torch.randn(2, 3) for _ in range(2)]
    center = torch.tensor([0.1, -0.2, 0.3])
    got = dino_loss(student, teacher, center, student_temp=0.1, teacher_temp=0.04)
    expected = _naive_dino(student, teacher, center, 0.1, 0.04)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    module = DINOLoss(3, student_temp=0.1, teacher_temp=0.04)
    module.center.copy_(center)
    assert module(student, teacher).item() == pytest.approx(expected, rel=1e-5)


def test_dino_loss_is_minimal_when_student_matches_sharpened_teacher():
    torch.manual_seed(0)
    ts, tt = 0.1, 0.04
    teacher = 0.05 * torch.randn(3, 5)  # not too peaked at teacher_temp 0.04
    center = 0.01 * torch.randn(5)
    q = F.softmax((teacher - center) / tt, dim=-1)
    best = (ts * q.log()).requires_grad_(True)  # softmax(best / ts) == q
    other_view = torch.randn(3, 5)  # student view 0 is the teacher's own crop: never compared
    loss = dino_loss([other_view, best], [teacher], center, ts, tt)
    entropy = -(q * q.log()).sum(-1).mean()
    assert entropy > 0.5
    assert loss.item() == pytest.approx(entropy.item(), rel=1e-5)
    loss.backward()
    assert best.grad.abs().max() < 1e-5
    for _ in range(5):
        worse = best.detach() + 0.05 * torch.randn(3, 5)
        assert dino_loss([other_view, worse], [teacher], center, ts, tt) > loss


def test_dino_center_update_is_an_ema_of_teacher_means():
    crit = DINOLoss(out_dim=2, center_momentum=0.9)
    teacher = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[5.0, 6.0], [7.0, 8.0]])]
    crit.update_center(teacher)
    assert torch.allclose(crit.center, 0.1 * torch.tensor([[4.0, 5.0]]))
    crit.update_center(teacher)
    assert torch.allclose(crit.center, (0.9 * 0.1 + 0.1) * torch.tensor([[4.0, 5.0]]))
    assert "center" in crit.state_dict()


def _fake_world(monkeypatch, rank, world, full_by_local):
    """Make :mod:`medfm.ssl.gather` act as rank ``rank`` of ``world``: ``gather_with_grad(x)``
    returns the full tensor whose ``rank``-th share is ``x`` (autograd flows through every share,
    as the real all-gather's summed backward makes it flow across processes)."""
    from medfm.ssl import gather as G

    def gather(x, grad=True):
        for local, shares in full_by_local:
            if torch.equal(x.detach(), local.detach()):
                parts = [x if i == rank else shares[i] for i in range(world)]
                return torch.cat(parts if grad else [p.detach() for p in parts])
        raise AssertionError("unexpected tensor gathered")

    monkeypatch.setattr(G, "world_size", lambda: world)
    monkeypatch.setattr(G, "rank", lambda: rank)
    monkeypatch.setattr(G, "gather_with_grad", gather)
    monkeypatch.setattr(G, "gather_no_grad", lambda x: gather(x, grad=False))


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("metadata", [False, True])
def test_sharded_contrastive_loss_and_gradient_equal_the_full_batch(monkeypatch, world, metadata):
    """Each rank's loss over its own queries against the gathered keys, averaged over ranks (as
    DDP averages gradients), is the full batch's loss and gradient: the positive-pair offsets by
    rank are right and no rescaling is needed."""
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 5, requires_grad=True), torch.randn(8, 5, requires_grad=True)
    meta = torch.rand(8) * 3

    def loss(a, b, m, gather):
        if metadata:
            return metadata_weighted_info_nce(a, b, m, 0.3, 0.7, gather_distributed=gather)
        return info_nce(a, b, 0.3, gather_distributed=gather)

    full = loss(z1, z2, meta, False)
    g1, g2 = torch.autograd.grad(full, [z1, z2])
    n1, n2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    total = 0.0
    for r in range(world):
        # what rank r's gather would return: every rank's normalised share, this rank's own
        # share being the very tensor the loss normalised (matched by value)
        s1, s2, sm = n1.chunk(world), n2.chunk(world), meta.chunk(world)
        with monkeypatch.context() as m:
            local1, local2 = z1.chunk(world)[r], z2.chunk(world)[r]
            table = [
                (F.normalize(local1, dim=1), s1),
                (F.normalize(local2, dim=1), s2),
                (sm[r], sm),
            ]
            _fake_world(m, r, world, table)
            total = total + loss(local1, local2, sm[r], True) / world
    torch.testing.assert_close(total, full, rtol=1e-6, atol=1e-6)
    h1, h2 = torch.autograd.grad(total, [z1, z2])
    torch.testing.assert_close(h1, g1, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(h2, g2, rtol=1e-5, atol=1e-7)


def test_gather_is_a_no_op_in_one_process():
    from medfm.ssl.gather import all_reduce_mean, gather_no_grad, gather_with_grad

    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x and gather_no_grad(x) is x and all_reduce_mean(x) is x
    z1, z2 = torch.randn(6, 4), torch.randn(6, 4)
    assert torch.equal(info_nce(z1, z2, gather_distributed=True), info_nce(z1, z2))
