"""Tests for medfm.heads.dr_tune and the dr_tune regulariser of medfm.heads.finetune: zero shift
for identical encoders, the Procrustes rotation, the loss against a hand-written reference, a
frozen encoder that is never trained nor saved, and exact resume with the queues."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import Dataset
from torch import nn

from medfm.config import load_config
from medfm.heads.dr_tune import procrustes_rotation, semantic_calibration
from medfm.heads.finetune import FineTuneClassifier, fine_tune
from medfm.models.backbones import create_backbone, encode
from medfm.train.checkpoint import CHECKPOINT, load_checkpoint


def _encoder(depth=1):
    cfg = load_config(None, [f"model.depth={depth}", "data.image_size=16"])
    torch.manual_seed(0)
    return create_backbone(cfg.model, 16, 1)


# ----------------------------------------------------------------------- semantic calibration


def test_identical_encoders_give_exactly_zero_shift():
    model = FineTuneClassifier(_encoder(), 3, regularizer="dr_tune")  # nothing fine-tuned yet
    model.train()
    images = torch.rand(12, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(12) % 3
    fine = encode(model.encoder, images, "mean")
    pre = model.dr_tune.pretrained_features(images)
    assert torch.equal(pre, fine)
    classifier = torch.randn(3, fine.shape[1], generator=torch.Generator().manual_seed(2))
    for rotate in (True, False):
        cal = semantic_calibration(pre, fine.detach(), labels, 3, classifier, rotate)
        assert torch.equal(cal.global_shift, torch.zeros_like(cal.global_shift))
        assert torch.equal(cal.class_shift, torch.zeros_like(cal.class_shift))
        assert torch.equal(cal.rotation, torch.eye(fine.shape[1]))
        assert torch.equal(cal.features, F.normalize(pre, dim=1))


def _rotation(d, seed):
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=_gen(seed)))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_procrustes_recovers_a_rotation_and_calibration_undoes_a_global_drift():
    source = torch.randn(40, 6, dtype=torch.float64, generator=_gen(3))
    source = source - source.mean(0)
    rotation = _rotation(6, 4)
    torch.testing.assert_close(procrustes_rotation(source, source @ rotation.T), rotation)
    # pre-trained unit features, fine-tuned = the same rotated: calibration maps one onto the
    # other, so every class centre is already in place
    pre = F.normalize(torch.randn(40, 6, dtype=torch.float64, generator=_gen(5)), dim=1)
    fine = pre @ rotation.T
    labels = torch.arange(40) % 4
    cal = semantic_calibration(pre, fine, labels, 4, rotate=True)
    torch.testing.assert_close(cal.features, fine)
    torch.testing.assert_close(cal.class_shift, torch.zeros(4, 6, dtype=torch.float64))
    # without the rotation only the means are aligned
    plain = semantic_calibration(pre, fine, labels, 4, rotate=False)
    torch.testing.assert_close(plain.global_shift, fine.mean(0) - pre.mean(0))
    assert torch.equal(plain.rotation, torch.eye(6, dtype=torch.float64))


def test_a_class_missing_from_the_queue_gets_no_shift():
    pre = F.normalize(torch.randn(6, 4, dtype=torch.float64, generator=_gen(6)), dim=1)
    fine = F.normalize(torch.randn(6, 4, dtype=torch.float64, generator=_gen(7)), dim=1)
    cal = semantic_calibration(pre, fine, torch.tensor([0, 0, 0, 2, 2, 2]), 3)
    assert torch.equal(cal.class_shift[1], torch.zeros(4, dtype=torch.float64))
    assert torch.isfinite(cal.features).all()


# ------------------------------------------------------------- the loss, against a reference


class _Stub(nn.Module):
    """A linear "encoder": ``(B, 1, 2, 2)`` images -> one ``(B, 1, 3)`` token."""

    num_features = 3

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 3, bias=False)

    def forward_features(self, x):
        return self.proj(x.flatten(1))[:, None, :]


def _unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _cross_entropy(logits, y):
    logits = logits - logits.max(1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -np.mean(log_p[np.arange(len(y)), y])


def _reference_dr(pre, fine, y, W, b, scale):
    """DR-Tune's calibration and DR term written out (numpy, loops over classes)."""
    p, f = _unit(pre), _unit(fine)
    xc, yc = p - p.mean(0), f - f.mean(0)
    u, _, vt = np.linalg.svd(xc.T @ yc)  # max tr(R M) with M = sum x_i y_i^T: R = V U^T
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rot = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    g = xc @ rot.T + f.mean(0)
    out = g.copy()
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        s = np.array([f[i] @ W[c] / np.linalg.norm(W[c]) for i in idx])
        w = np.exp(s) / np.exp(s).sum()
        shift = (w[:, None] * f[idx]).sum(0) - (w[:, None] * g[idx]).sum(0)
        out[idx] = g[idx] + shift
    out = _unit(out) * scale
    return _cross_entropy(out @ W.T + b, y)


def test_dr_tune_loss_matches_a_hand_written_reference():
    torch.manual_seed(0)
    stub = _Stub()
    model = FineTuneClassifier(
        stub, 2, augment=False, regularizer="dr_tune", dr_tune_weight=0.7, dr_tune_queue=5
    )
    with torch.no_grad():  # fine-tuning has moved the encoder and the head
        stub.proj.weight.add_(0.3 * torch.randn(3, 4))
        model.head.weight.copy_(torch.tensor([[1.0, -0.5, 0.2], [-0.3, 0.8, 0.4]]))
        model.head.bias.copy_(torch.tensor([0.1, -0.2]))
    w_pre = model.dr_tune.frozen.proj.weight.detach().double().numpy()
    w_fine = stub.proj.weight.detach().double().numpy()
    W, b = model.head.weight.detach().double().numpy(), model.head.bias.detach().double().numpy()
    images = torch.rand(6, 1, 2, 2, generator=_gen(8))
    y = np.array([0, 1, 1, 0, 1, 0])
    first = model({"image": images[:3], "target": torch.as_tensor(y[:3])})
    second = model({"image": images[3:], "target": torch.as_tensor(y[3:])})
    x = images.flatten(1).double().numpy()
    pre, fine = x @ w_pre.T, x @ w_fine.T
    # queue of 5: the first batch's last two images and the second batch
    keep = [1, 2, 3, 4, 5]
    scale = np.linalg.norm(fine[3:], axis=1).mean()
    dr = _reference_dr(pre[keep], fine[keep], y[keep], W, b, scale)
    ce = _cross_entropy(fine[3:] @ W.T + b, y[3:])
    assert second["dr"].item() == pytest.approx(dr, rel=1e-5)
    assert second["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert second["loss"].item() == pytest.approx(ce + 0.7 * dr, rel=1e-5)
    assert int(model.dr_tune.queue_len) == 5 and int(model.dr_tune.queue_ptr) == 1
    # the first call saw its own three images only
    scale = np.linalg.norm(fine[:3], axis=1).mean()
    dr_first = _reference_dr(pre[:3], fine[:3], y[:3], W, b, scale)
    assert first["dr"].item() == pytest.approx(dr_first, rel=1e-4)
    # prediction is the fine-tuned encoder and head alone
    proba = model.predict_proba(images)
    logits = fine @ W.T + b
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(proba, expected, rtol=1e-5)


def test_an_unknown_regularizer_is_refused():
    with pytest.raises(ValueError, match="finetune.regularizer='l2sp'"):
        FineTuneClassifier(_encoder(), 2, regularizer="l2sp")


# ------------------------------------------------------- training with the engine, resume


def _bright_dark(n, seed):
    rng = np.random.default_rng(seed)
    labels = np.array([str(i % 2) for i in range(n)])
    images = rng.uniform(0, 0.5, size=(n, 1, 16, 16)).astype(np.float32)
    images[labels == "1", :, 4:12, 4:12] += 0.5
    return [{"image": torch.as_tensor(im)} for im in images], labels


class KilledError(Exception):
    pass


class _Dying(Dataset):
    """A dataset that raises after ``budget`` reads (a run killed mid-way)."""

    def __init__(self, items, budget):
        super().__init__(items)
        self.budget = budget

    def __getitem__(self, index):
        self.budget -= 1
        if self.budget < 0:
            raise KilledError
        return super().__getitem__(index)


def _run(tmp_path, name, dataset=None, *extra):
    items, labels = _bright_dark(64, 0)
    cfg = load_config(
        None,
        [
            "finetune.steps=6",
            "finetune.eval_every=3",
            "finetune.patience=0",
            "finetune.batch_size=16",
            "finetune.lr=3e-3",
            "finetune.warmup_steps=2",
            "finetune.regularizer=dr_tune",
            "finetune.dr_tune_queue=40",
            *extra,
        ],
    ).finetune
    return fine_tune(
        lambda: _encoder(depth=2),
        dataset if dataset is not None else Dataset(items),
        labels,
        np.array(["0", "1"]),
        np.arange(48),
        np.arange(48, 64),
        cfg,
        "mean",
        0,
        tmp_path / name,
    )


def test_the_frozen_encoder_is_never_trained_nor_saved(tmp_path):
    model, result = _run(tmp_path, "a")
    assert result.steps_run == 6
    start = _encoder(depth=2).state_dict()
    frozen = model.dr_tune.frozen
    for name, param in frozen.named_parameters():
        assert not param.requires_grad and param.grad is None, name
        assert torch.equal(param, start[name]), name  # still the pre-trained weights
    moved = model.encoder.state_dict()["blocks.0.attn.qkv.weight"]
    assert not torch.equal(moved, start["blocks.0.attn.qkv.weight"])  # the copy was trained
    assert not any(name.startswith("dr_tune") for name, _ in model.named_parameters())
    saved = load_checkpoint(tmp_path / "a" / CHECKPOINT)["model"]
    assert set(saved) == set(model.state_dict())
    extra = {k for k in saved if not k.startswith(("encoder.", "head."))}
    assert extra == {
        "dr_tune.pre_queue",
        "dr_tune.fine_queue",
        "dr_tune.label_queue",
        "dr_tune.queue_ptr",
        "dr_tune.queue_len",
    }
    assert int(saved["dr_tune.queue_len"]) == 40 and int(saved["dr_tune.queue_ptr"]) == 96 % 40


def test_a_killed_dr_tune_run_resumes_bitwise_with_its_queues(tmp_path):
    _run(tmp_path, "straight")
    items, _ = _bright_dark(64, 0)
    # 16 validation images, then 3 batches of 16: the 4th batch dies after the step-3 checkpoint
    with pytest.raises(KilledError):
        _run(tmp_path, "killed", _Dying(items, 16 + 3 * 16))
    assert load_checkpoint(tmp_path / "killed" / CHECKPOINT)["step"] == 3
    torch.manual_seed(123)  # a fresh process starts from another RNG state
    _, result = _run(tmp_path, "killed")
    assert result.steps_run == 6
    straight = load_checkpoint(tmp_path / "straight" / CHECKPOINT)["model"]
    resumed = load_checkpoint(tmp_path / "killed" / CHECKPOINT)["model"]
    assert set(straight) == set(resumed)
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name
