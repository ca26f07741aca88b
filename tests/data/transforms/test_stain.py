"""Tests for medfm.data.transforms.stain: Macenko estimation and normalisation, H&E stain
augmentation.

Tiles are synthesised with the Beer-Lambert law from known stain matrices and concentrations, so
the expected stains, concentrations and normalised images are known in closed form.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfm.data.transforms.stain import (
    REFERENCE_MAX_CONCENTRATIONS,
    REFERENCE_STAINS,
    MacenkoNormalize,
    MacenkoNormalized,
    RandStainAugment,
    RandStainAugmentd,
    StainEstimationError,
    estimate_stain_matrix,
)

IO = 240.0
SIZE = 24
# Another center's stains: columns H, E, unit norm, different hues from the reference.
OTHER_STAINS = np.array([[0.60, 0.30], [0.72, 0.80], [0.35, 0.52]])
OTHER_STAINS = OTHER_STAINS / np.linalg.norm(OTHER_STAINS, axis=0)


def concentrations(max_c: np.ndarray, seed: int = 0) -> np.ndarray:
    """``(2, SIZE*SIZE)`` concentrations with 99th percentile ``max_c``: mixed pixels, and dense
    pure-H and pure-E pixels (dense enough to pass Macenko's background threshold)."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(0.2, 1.0, size=(2, SIZE * SIZE))
    c[:, :120] = [[0.0], [0.0]]
    c[0, :60] = rng.uniform(0.8, 1.0, size=60)  # pure haematoxylin
    c[1, 60:120] = rng.uniform(0.8, 1.0, size=60)  # pure eosin
    return c * (max_c / np.percentile(c, 99, axis=1))[:, None]


def synthesise(stains: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Beer-Lambert RGB tile ``(3, SIZE, SIZE)`` in [0, 255] from stains ``(3, 2)`` and ``c``."""
    return (IO * np.exp(-stains @ c)).reshape(3, SIZE, SIZE)


@pytest.fixture
def reference_tile() -> np.ndarray:
    return synthesise(REFERENCE_STAINS, concentrations(REFERENCE_MAX_CONCENTRATIONS))


def test_estimate_recovers_known_stains_and_max_concentrations():
    max_c = np.array([1.4, 0.7])
    tile = synthesise(OTHER_STAINS, concentrations(max_c))
    stains, est_max_c = estimate_stain_matrix(tile, Io=IO)
    assert stains.shape == (3, 2)
    np.testing.assert_allclose(np.linalg.norm(stains, axis=0), [1.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(stains, OTHER_STAINS, atol=1e-6)
    np.testing.assert_allclose(est_max_c, max_c, rtol=1e-6)


def test_haematoxylin_comes_first_as_the_vector_with_more_red_absorption(reference_tile):
    stains, _ = estimate_stain_matrix(reference_tile)
    h, e = stains[:, 0], stains[:, 1]
    # H absorbs red more (looks blue-purple); E absorbs green most (looks pink).
    assert h[0] > e[0]
    assert np.argmax(e) == 1
    np.testing.assert_allclose(stains, REFERENCE_STAINS, atol=1e-3)
    # The order does not depend on how the tile was made.
    swapped = synthesise(REFERENCE_STAINS[:, ::-1], concentrations(np.array([1.0, 1.9])))
    np.testing.assert_allclose(estimate_stain_matrix(swapped)[0], stains, atol=1e-6)


def test_estimate_accepts_uint8_and_torch_tiles(reference_tile):
    tile8 = np.round(reference_tile).astype(np.uint8)
    stains8, _ = estimate_stain_matrix(tile8)
    stains_t, _ = estimate_stain_matrix(torch.from_numpy(tile8))
    np.testing.assert_allclose(stains8, REFERENCE_STAINS, atol=0.02)
    np.testing.assert_array_equal(stains8, stains_t)


def test_normalising_a_reference_tile_gives_it_back(reference_tile):
    out = MacenkoNormalize()(reference_tile)
    assert out.dtype == np.float32 and out.shape == reference_tile.shape
    np.testing.assert_allclose(out, reference_tile, atol=1e-3)


def test_normalising_another_centers_tile_gives_the_reference_rendering():
    c = concentrations(np.array([1.2, 0.9]), seed=3)
    tile = synthesise(OTHER_STAINS, c)
    # Closed form: same tissue, reference stains, concentrations rescaled to the reference maxima.
    expected = synthesise(
        REFERENCE_STAINS, c * (REFERENCE_MAX_CONCENTRATIONS / [1.2, 0.9])[:, None]
    )
    np.testing.assert_allclose(MacenkoNormalize()(tile), expected, atol=1e-3)


def test_background_tiles_come_back_unchanged():
    white = np.full((3, SIZE, SIZE), 250, dtype=np.uint8)
    white[:, :3, :3] = 120  # a few tissue pixels, too few to estimate stains
    out = MacenkoNormalize()(white)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, white.astype(np.float32))
    with pytest.raises(StainEstimationError, match="tissue pixels"):
        estimate_stain_matrix(white)
    black = torch.zeros(3, SIZE, SIZE)  # one colour only: H and E cannot be separated
    torch.testing.assert_close(MacenkoNormalize()(black), black)


def test_output_stays_in_range_on_noise(reference_tile):
    noise = np.random.default_rng(0).integers(0, 256, size=(3, SIZE, SIZE), dtype=np.uint8)
    for tile in (noise, reference_tile * 0.3):
        out = MacenkoNormalize()(tile)
        assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 255.0


def test_torch_in_torch_out(reference_tile):
    out = MacenkoNormalize()(torch.from_numpy(reference_tile))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32


def test_bad_inputs_raise_errors_that_say_what_to_do(reference_tile):
    with pytest.raises(ValueError, match="multiply"):
        MacenkoNormalize()(reference_tile / 255.0)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        MacenkoNormalize()(reference_tile.transpose(1, 2, 0))
    with pytest.raises(ValueError, match="target_stains"):
        MacenkoNormalize(target_stains=np.eye(3))


def test_dict_normalise_applies_to_keys(reference_tile):
    out = MacenkoNormalized("image")({"image": reference_tile, "label": 3})
    np.testing.assert_allclose(out["image"], reference_tile, atol=1e-3)
    assert out["label"] == 3


def test_stain_augment_strength_zero_and_prob_zero_are_identity(reference_tile):
    tile8 = np.round(reference_tile).astype(np.uint8)
    np.testing.assert_array_equal(RandStainAugment(strength=0.0)(tile8), tile8.astype(np.float32))
    np.testing.assert_array_equal(RandStainAugment(prob=0.0)(tile8), tile8.astype(np.float32))
    # A tiny perturbation is nearly the identity: the residual channel is kept.
    tiny = RandStainAugment(strength=1e-9).set_random_state(0)(reference_tile)
    np.testing.assert_allclose(tiny, reference_tile, atol=1e-3)


def test_stain_augment_perturbs_concentrations_as_c_times_alpha_plus_beta():
    c = concentrations(np.array([1.5, 0.8]))
    c += 0.2  # keep every pixel stained, so nothing is clipped at 255
    tile = synthesise(REFERENCE_STAINS, c)
    augment = RandStainAugment(strength=1.0, estimate_stains=False).set_random_state(7)
    out = augment(tile)
    assert np.all((0.8 <= augment.scale) & (augment.scale <= 1.2))
    assert np.all((-0.1 <= augment.shift) & (augment.shift <= 0.1))
    expected = synthesise(REFERENCE_STAINS, c * augment.scale[:, None] + augment.shift[:, None])
    np.testing.assert_allclose(out, expected, atol=1e-3)


def test_stain_augment_is_repeatable_with_a_seed_and_varies_across_seeds(reference_tile):
    first = RandStainAugment(strength=1.0).set_random_state(11)(reference_tile)
    again = RandStainAugment(strength=1.0).set_random_state(11)(reference_tile)
    other = RandStainAugment(strength=1.0).set_random_state(12)(reference_tile)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).mean() > 1.0
    assert first.min() >= 0.0 and first.max() <= 255.0


def test_stain_augment_on_background_falls_back_to_reference_stains():
    white = np.full((3, SIZE, SIZE), 235.0)
    out = RandStainAugment(strength=1.0).set_random_state(0)(white)
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 255.0


def test_dict_stain_augment_applies_one_perturbation_to_all_keys(reference_tile):
    augment = RandStainAugmentd(["image", "copy"], strength=1.0).set_random_state(5)
    out = augment({"image": reference_tile, "copy": reference_tile.copy()})
    np.testing.assert_array_equal(out["image"], out["copy"])
    assert np.abs(out["image"] - reference_tile).mean() > 0.5
    again = RandStainAugmentd("image", strength=1.0).set_random_state(5)
    np.testing.assert_array_equal(again({"image": reference_tile})["image"], out["image"])
