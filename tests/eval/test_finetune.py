"""Tests for medfm.eval.finetune: layer-wise LR decay, partial fine-tuning, zero-initialised
classifier, early stopping on validation AUC through the training engine."""

import numpy as np
import pytest
import torch
from monai.data import Dataset

from medfm.config import load_config
from medfm.eval.finetune import FineTuneClassifier, fine_tune
from medfm.models.backbones import build_backbone
from medfm.train.optim import build_optimizer


def _encoder(depth=3):
    cfg = load_config(None, [f"model.depth={depth}", "data.image_size=16"])
    torch.manual_seed(0)
    return build_backbone(cfg.model, 16, 1)


def test_layer_decay_scales_by_depth_from_the_top():
    model = FineTuneClassifier(_encoder(depth=3), 2, layer_decay=0.5)
    assert model.lr_scale("head.weight") == 1.0
    assert model.lr_scale("encoder.norm.weight") == 1.0
    assert model.lr_scale("encoder.blocks.2.mlp.fc1.weight") == 0.5
    assert model.lr_scale("encoder.blocks.0.attn.qkv.weight") == 0.125
    assert model.lr_scale("encoder.patch_embed.proj.weight") == 0.0625
    assert model.lr_scale("encoder.cls_token") == 0.0625
    cfg = load_config(None, ["train.lr=0.1"])
    opt, _ = build_optimizer(model, cfg.train)
    lrs = {id(p): g["initial_lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lrs[id(named["encoder.blocks.0.attn.qkv.weight"])] == pytest.approx(0.0125)
    assert lrs[id(named["head.weight"])] == pytest.approx(0.1)
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays[id(named["encoder.blocks.0.attn.qkv.bias"])] == 0.0


def test_last_k_blocks_leave_the_rest_frozen_and_the_head_starts_at_zero():
    model = FineTuneClassifier(_encoder(depth=3), 3, train_blocks=1)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "encoder.blocks.2.attn.qkv.weight" in trained and "encoder.norm.weight" in trained
    assert "encoder.blocks.1.attn.qkv.weight" not in trained
    assert "encoder.patch_embed.proj.weight" not in trained and "head.weight" in trained
    assert not model.head.weight.any() and not model.head.bias.any()
    proba = model.predict_proba(torch.rand(4, 1, 16, 16))
    np.testing.assert_allclose(proba, 1 / 3)  # zero logits: uniform before training


def _bright_dark(n, seed):
    """Class 1 images are brighter in the centre: an easy task a few steps can learn."""
    rng = np.random.default_rng(seed)
    labels = np.array([str(i % 2) for i in range(n)])
    images = rng.uniform(0, 0.5, size=(n, 1, 16, 16)).astype(np.float32)
    images[labels == "1", :, 4:12, 4:12] += 0.5
    return [{"image": torch.as_tensor(im)} for im in images], labels


def test_fine_tune_learns_keeps_the_best_validation_weights_and_stops_early(tmp_path):
    items, labels = _bright_dark(64, 0)
    dataset = Dataset(items)
    ft = load_config(
        None,
        [
            "finetune.steps=60",
            "finetune.eval_every=5",
            "finetune.patience=2",
            "finetune.batch_size=16",
            "finetune.lr=3e-3",
        ],
    ).finetune
    train_idx, val_idx = np.arange(48), np.arange(48, 64)
    model, result = fine_tune(
        lambda: _encoder(depth=2),
        dataset,
        labels,
        np.array(["0", "1"]),
        train_idx,
        val_idx,
        ft,
        "mean",
        0,
        tmp_path / "ft",
    )
    assert result.val_auc > 0.95
    assert result.step % 5 == 0 and result.step <= result.steps_run
    if result.steps_run < 60:  # stopped early: patience x eval_every steps after the best
        assert result.steps_run - result.step == 10
    val_images = torch.stack([items[i]["image"] for i in val_idx])
    from medfm.eval.metrics import auc

    assert auc(labels[val_idx], model.predict_proba(val_images), ["0", "1"]) == pytest.approx(
        result.val_auc
    )
    assert (tmp_path / "ft" / "best.pt").is_file()
