"""The random fields of Mansfield et al. 2023 in the contrastive and DINO views: the warp
(``ssl.random_field_affine_strength``, RandFieldAffine) and the intensity field
(``ssl.random_field_strength``, RandFieldIntensity), each reaching the views from the config."""

import pytest
import torch

from medfm.config import load_config
from medfm.models.backbones import create_backbone
from medfm.ssl.objectives import build_objective
from medfm.ssl.views import MultiCrop, TwoViews, random_field_affine

# every other augmentation off: a full-image crop, no flip, jitter, blur or noise
PLAIN = {
    "scale": (1.0, 1.0),
    "ratio": (1.0, 1.0),
    "flip_prob": 0.0,
    "jitter_prob": 0.0,
    "blur_prob": 0.0,
    "noise_prob": 0.0,
}


@pytest.mark.parametrize("shape", [(6, 1, 24, 24), (4, 2, 12, 12, 12)], ids=["2d", "3d"])
def test_the_warp_changes_views_reproducibly_from_each_samples_seed(shape):
    images = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    seeds = torch.randint(0, 2**62, (shape[0],), generator=torch.Generator().manual_seed(1))
    size = shape[-1]
    plain = TwoViews(size, **PLAIN)
    warped = TwoViews(
        size, random_field_affine_strength=1.0, random_field_affine_length_scale=4.0, **PLAIN
    )
    base = plain(images, sample_seeds=seeds)
    torch.testing.assert_close(base[0], images, atol=1e-5, rtol=0)  # the plain view is the image
    torch.manual_seed(5)
    first = warped(images, sample_seeds=seeds)
    torch.manual_seed(6)  # the global RNG plays no part once the seeds are given
    again = warped(images, sample_seeds=seeds.clone())
    for v in range(2):
        assert torch.equal(first[v], again[v])
        # every sample is warped: a resampling of its own image, not the image itself
        change = (first[v] - base[v]).flatten(1).abs().amax(dim=1)
        assert (change > 0.05).all()
        assert first[v].min() >= images.min() - 1e-6 and first[v].max() <= images.max() + 1e-6
    assert not torch.allclose(first[0], first[1])  # the two views get different fields
    # a sample's warped views do not depend on the rest of its batch
    alone = warped(images[2:3], sample_seeds=seeds[2:3])
    half = warped(images[: shape[0] // 2], sample_seeds=seeds[: shape[0] // 2])
    for v in range(2):
        assert torch.equal(alone[v], first[v][2:3])
        assert torch.equal(half[v], first[v][: shape[0] // 2])
    other = warped(images[2:3], sample_seeds=seeds[2:3] + 1)
    assert (other[0] - alone[0]).abs().max() > 0.05
    # strength 0 is the identity, and without seeds the global RNG fixes the field
    assert random_field_affine(images, 0.0) is images
    torch.manual_seed(3)
    a = random_field_affine(images, 1.0, 4.0)
    torch.manual_seed(3)
    assert torch.equal(a, random_field_affine(images, 1.0, 4.0))


def _objective(name, *extra):
    cfg = load_config(
        None,
        [
            "model.depth=1",
            "data.image_size=16",
            "ssl.local_crop_size=8",
            "ssl.n_local_crops=1",
            f"ssl.objective={name}",
            *extra,
        ],
    )
    torch.manual_seed(0)
    objective = build_objective(create_backbone(cfg.model, 16, 1), cfg.ssl, cfg.model.pooling)
    return objective


def _augments(views):
    if isinstance(views, MultiCrop):
        return [views.global_augment, views.local_augment]
    assert isinstance(views, TwoViews)
    return [views.augment]


@pytest.mark.parametrize("name", ["simclr", "dino", "hybrid", "metadata", "anatcl", "sit"])
@pytest.mark.parametrize(
    ("key", "attribute"),
    [
        ("random_field_strength", "random_field_strength"),  # RandFieldIntensity
        ("random_field_affine_strength", "random_field_affine_strength"),  # RandFieldAffine
    ],
    ids=["intensity", "warp"],
)
def test_the_config_puts_each_random_field_in_the_views_of_every_contrastive_objective(
    name, key, attribute
):
    """build_objective -> views: the setting reaches every Augment, changes the views of the
    same seeds, and (SimCLR) the loss of the same weights and batch."""
    images, seeds = torch.rand(4, 1, 16, 16), torch.arange(4) + 7
    off, on = (
        _objective(name),
        _objective(name, f"ssl.{key}=0.8", "ssl.random_field_length_scale=4"),
    )
    assert all(getattr(a, attribute) == 0.0 for a in _augments(off.views))
    assert all(getattr(a, attribute) == 0.8 for a in _augments(on.views))
    for v_off, v_on in zip(
        off.views(images, sample_seeds=seeds), on.views(images, sample_seeds=seeds), strict=True
    ):
        assert (v_on - v_off).abs().max() > 0.05
    if name == "simclr":
        batch = {"image": images, "sample_seed": seeds}
        with torch.no_grad():
            assert off.eval()(batch)["loss"] != on.eval()(batch)["loss"]
