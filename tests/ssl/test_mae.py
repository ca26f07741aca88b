import pytest
import torch

from medfm.config import load_config
from medfm.models.backbones import create_backbone
from medfm.ssl.mae import MAE
from medfm.ssl.objectives import build_objective
from medfm.ssl.patches import patchify


def _mae(channels=1, ratio=0.75, norm_pix=True):
    cfg = load_config(
        None, ["model.depth=2", f"ssl.mask_ratio={ratio}", f"ssl.norm_pix_loss={norm_pix}"]
    )
    return build_objective(create_backbone(cfg.model, 16, channels), cfg.ssl)


@pytest.mark.parametrize("channels", [1, 3])
def test_forward_backward_finite_and_every_parameter_gets_a_gradient(channels):
    torch.manual_seed(0)
    mae = _mae(channels)
    out = mae({"image": torch.rand(4, channels, 16, 16)})
    assert torch.isfinite(out["loss"])
    assert out["mask_fraction"].item() == pytest.approx(0.75)
    out["loss"].backward()
    missing = [n for n, p in mae.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_encoder_sees_only_visible_patches():
    mae = _mae(ratio=0.75)
    seen = []
    mae.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    mae({"image": torch.rand(2, 1, 16, 16)})
    # 16 patches at 75 % masking -> 4 visible + 1 class token
    assert seen == [torch.Size([2, 5, 192])]


def test_loss_counts_only_masked_patches():
    torch.manual_seed(0)
    mae = _mae(norm_pix=False)
    images = torch.rand(2, 1, 16, 16)
    latent, mask, ids_restore = mae.forward_encoder(images)
    target = patchify(images, 4)
    perfect_on_masked = torch.where(mask.bool().unsqueeze(-1), target, target + 100.0)
    assert mae.forward_loss(images, perfect_on_masked, mask).item() == 0.0
    off_by_one = target + 1.0
    assert mae.forward_loss(images, off_by_one, mask).item() == pytest.approx(1.0)


def test_unknown_objective_is_a_clear_error():
    cfg = load_config(None, ["ssl.objective=byol", "model.depth=1"])
    with pytest.raises(ValueError, match="byol"):
        build_objective(create_backbone(cfg.model, 16, 1), cfg.ssl)
    assert isinstance(_mae(), MAE)
