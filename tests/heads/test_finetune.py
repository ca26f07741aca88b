"""Tests for medfm.heads.finetune: layer-wise LR decay, partial fine-tuning, zero-initialised
classifier, early stopping on validation AUC through the training engine."""

import numpy as np
import pytest
import torch
from monai.data import Dataset

from medfm.config import load_config
from medfm.heads.finetune import FineTuneClassifier, fine_tune
from medfm.metrics.scores import auc
from medfm.models.backbones import create_backbone
from medfm.train.optim import build_optimizer


def _encoder(depth=3):
    cfg = load_config(None, [f"model.depth={depth}", "data.image_size=16"])
    torch.manual_seed(0)
    return create_backbone(cfg.model, 16, 1)


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


def _ft_cfg(*extra):
    return load_config(
        None,
        [
            "finetune.steps=60",
            "finetune.eval_every=5",
            "finetune.patience=2",
            "finetune.batch_size=16",
            "finetune.lr=3e-3",
            *extra,
        ],
    ).finetune


def _run(tmp_path, name, seed=0, val_idx=None, *extra):
    items, labels = _bright_dark(64, 0)
    val_idx = np.arange(48, 64) if val_idx is None else val_idx
    return fine_tune(
        lambda: _encoder(depth=2),
        Dataset(items),
        labels,
        np.array(["0", "1"]),
        np.arange(48),
        val_idx,
        _ft_cfg(*extra),
        "mean",
        seed,
        tmp_path / name,
    )


def test_fine_tune_learns_and_keeps_the_best_validation_weights(tmp_path):
    model, result = _run(tmp_path, "a")
    assert result.val_auc > 0.95
    assert result.step % 5 == 0 and result.step <= result.steps_run
    items, labels = _bright_dark(64, 0)
    val_images = torch.stack([items[i]["image"] for i in range(48, 64)])
    assert auc(labels[48:], model.predict_proba(val_images), ["0", "1"]) == pytest.approx(
        result.val_auc
    )
    assert (tmp_path / "a" / "best.pt").is_file()


def test_fine_tune_stops_after_patience_evaluations_without_improvement(tmp_path):
    # lr 0: the zero-initialised classifier never moves, the val AUC stays 0.5, so the best is
    # the first evaluation (step 5) and patience 2 stops the run at step 15 of 60
    _, result = _run(tmp_path, "flat", 0, None, "finetune.lr=0.0")
    assert result.step == 5 and result.steps_run == 15 and result.val_auc == 0.5


def test_seeds_change_the_run_but_not_the_starting_weights(tmp_path):
    a, _ = _run(tmp_path, "s0", 0, None, "finetune.steps=5", "finetune.patience=0")
    b, _ = _run(tmp_path, "s1", 1, None, "finetune.steps=5", "finetune.patience=0")
    c, _ = _run(tmp_path, "s0-again", 0, None, "finetune.steps=5", "finetune.patience=0")
    key = "encoder.blocks.0.attn.qkv.weight"
    assert not torch.equal(a.state_dict()[key], b.state_dict()[key])
    torch.testing.assert_close(a.state_dict()[key], c.state_dict()[key], rtol=0, atol=0)
    fresh = FineTuneClassifier(_encoder(depth=2), 2).state_dict()[key]
    assert not torch.equal(fresh, a.state_dict()[key])  # trained from the same start ...
    torch.testing.assert_close(FineTuneClassifier(_encoder(depth=2), 2).state_dict()[key], fresh)


def test_without_a_validation_split_the_last_weights_are_kept(tmp_path):
    _, result = _run(tmp_path, "noval", 0, np.array([], dtype=int), "finetune.steps=10")
    assert np.isnan(result.val_auc) and result.steps_run == 10 and result.step == 10
    assert not (tmp_path / "noval" / "best.pt").exists()
