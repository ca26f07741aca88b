"""H&E stain normalisation (Macenko et al. 2009) and stain augmentation (Tellez et al. 2018).

Bright-field microscopy follows the Beer-Lambert law: the optical density ``OD = -log(I / Io)`` of a
pixel is a non-negative mix of stain vectors, ``OD = S @ c`` with ``S`` the ``(3, 2)`` matrix of
unit-norm haematoxylin (H) and eosin (E) colours in OD space and ``c`` the two stain concentrations.
Centers differ mostly in ``S`` and in the concentration scale, which is what we normalise away
(:class:`MacenkoNormalize`) or randomise (:class:`RandStainAugment`).

Conventions:
    * Input is a channel-first RGB tile ``(3, H, W)`` with values in **[0, 255]** (uint8 or float),
      numpy or torch. A float tile whose maximum lies in (0, 1] is refused: multiply it by 255.
    * Output is float32 in [0, 255], in the input's type (numpy or torch).
    * Stain matrices are ``(3, 2)``: rows R, G, B; column 0 is H, column 1 is E. H is the vector
      with the larger red optical density (haematoxylin absorbs red and looks blue-purple), as in
      Macenko's reference implementation.
    * ``Io`` is the transmitted light intensity of an empty slide (240 as in Macenko's code).

Why not MONAI's ``monai.apps.pathology`` ``ExtractHEStains`` / ``NormalizeHEStains``: in MONAI 1.6
they order the two stains by the red/blue ratio of their optical densities and so put eosin first
for Macenko's own reference matrix, which is also their default target; a tile synthesised from
that matrix comes back with H and E swapped (a mean error of 23 grey levels where ours is below
0.5). They also take channel-last uint8 arrays only, fail on background tiles, and offset the
optical density by ``I + 1``, which rules out exact round trips. The algorithm is short, so it is
written here in numpy.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import convert_to_dst_type

# Macenko's reference H&E stain matrix (columns H, E) and 99th-percentile concentrations.
REFERENCE_STAINS = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
REFERENCE_MAX_CONCENTRATIONS = np.array([1.9705, 1.0308])


class StainEstimationError(ValueError):
    """The tile has too little tissue (or too little colour variety) to estimate its stains."""


def _pixels(rgb: NdarrayOrTensor) -> np.ndarray:
    """``(3, H, W)`` RGB in [0, 255] -> float64 ``(3, H * W)``, checking shape and range."""
    x = rgb.detach().cpu().numpy() if isinstance(rgb, torch.Tensor) else np.asarray(rgb)
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a channel-first RGB tile (3, H, W), got shape {x.shape}")
    if np.issubdtype(x.dtype, np.floating) and 0.0 < float(x.max()) <= 1.0:
        raise ValueError("stain transforms expect RGB in [0, 255]; multiply the [0, 1] tile by 255")
    return x.reshape(3, -1).astype(np.float64)


def optical_density(pixels: np.ndarray, Io: float = 240.0) -> np.ndarray:
    """Beer-Lambert optical density ``-log(I / Io)`` of ``(3, N)`` intensities (I floored at 1)."""
    return -np.log(np.maximum(pixels, 1.0) / Io)


def _plane(od: np.ndarray) -> np.ndarray:
    """The two leading principal directions ``(3, 2)`` of ``(3, N)`` OD, first one pointing up."""
    _, vectors = np.linalg.eigh(np.cov(od))
    plane = vectors[:, [2, 1]]
    if plane[:, 0].sum() < 0:
        plane[:, 0] *= -1
    return plane


def _estimate(
    od: np.ndarray, alpha: float, beta: float, min_tissue_pixels: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`estimate_stain_matrix` on ``(3, N)`` optical densities."""
    tissue = od[:, np.all(od >= beta, axis=0)]
    if tissue.shape[1] < min_tissue_pixels:
        raise StainEstimationError(
            f"{tissue.shape[1]} tissue pixels (OD >= {beta}), need {min_tissue_pixels}"
        )
    plane = _plane(tissue)
    projected = plane.T @ tissue
    phi = np.arctan2(projected[1], projected[0])
    lo, hi = np.percentile(phi, [alpha, 100.0 - alpha])
    v_lo = plane @ np.array([np.cos(lo), np.sin(lo)])
    v_hi = plane @ np.array([np.cos(hi), np.sin(hi)])
    h, e = (v_lo, v_hi) if v_lo[0] > v_hi[0] else (v_hi, v_lo)
    stains = np.stack([h, e], axis=1)
    stains /= np.linalg.norm(stains, axis=0, keepdims=True)
    if abs(float(stains[:, 0] @ stains[:, 1])) > 0.999:
        raise StainEstimationError("the tissue shows a single colour; cannot separate H from E")
    max_concentrations = np.percentile(np.linalg.pinv(stains) @ od, 99, axis=1)
    if np.any(max_concentrations <= 1e-6):
        raise StainEstimationError("one stain is absent from the tile")
    return stains, max_concentrations


def estimate_stain_matrix(
    rgb: NdarrayOrTensor,
    Io: float = 240.0,
    alpha: float = 1.0,
    beta: float = 0.15,
    min_tissue_pixels: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """Estimate a tile's H&E stain vectors and maximal concentrations (Macenko et al. 2009).

    Pixels with an optical density below ``beta`` in any channel are background and ignored. The
    others are projected on the plane of their two leading principal directions; the stain vectors
    are the directions at the ``alpha`` and ``100 - alpha`` percentiles of the angle in that plane.

    Args:
        rgb: ``(3, H, W)`` RGB tile in [0, 255].
        Io: transmitted light intensity of an empty slide.
        alpha: percentile (in %) of the angle taken as the extreme, robust to outliers.
        beta: optical density below which a pixel counts as background.
        min_tissue_pixels: fewest tissue pixels needed; fewer raise :class:`StainEstimationError`.

    Returns:
        ``stains`` ``(3, 2)`` with unit-norm columns H, E, and ``max_concentrations`` ``(2,)``, the
        99th percentile of each stain's concentration over all pixels.

    Raises:
        StainEstimationError: too few tissue pixels, a single colour, or a missing stain.
    """
    od = optical_density(_pixels(rgb), Io)
    return _estimate(od, alpha, beta, min_tissue_pixels)


def _like(out: np.ndarray, rgb: NdarrayOrTensor) -> NdarrayOrTensor:
    """``(3, N)`` float -> float32 ``(3, H, W)`` in the type of ``rgb`` (numpy or torch)."""
    out = out.reshape(tuple(rgb.shape)).astype(np.float32)
    if isinstance(rgb, torch.Tensor):
        return convert_to_dst_type(torch.from_numpy(out), rgb, dtype=torch.float32)[0]
    return out


class MacenkoNormalize(Transform):
    """Map an H&E tile's stains and concentration scale onto a target's (Macenko et al. 2009).

    "A method for normalizing histology slides for quantitative analysis", ISBI 2009. The tile's
    stain matrix and 99th-percentile concentrations come from :func:`estimate_stain_matrix`, the
    concentrations are rescaled to the target's, and the tile is recomposed with the target stains.
    A tile with too little tissue to estimate its stains is returned unchanged (as float32).

    Args:
        target_stains: ``(3, 2)`` target stain matrix (columns H, E); default Macenko's reference.
        target_max_concentrations: ``(2,)`` target 99th-percentile concentrations.
        Io, alpha, beta, min_tissue_pixels: see :func:`estimate_stain_matrix`.

    Shapes: ``(3, H, W)`` in [0, 255] -> ``(3, H, W)`` float32 in [0, 255].
    """

    def __init__(
        self,
        target_stains: np.ndarray | None = None,
        target_max_concentrations: np.ndarray | None = None,
        Io: float = 240.0,
        alpha: float = 1.0,
        beta: float = 0.15,
        min_tissue_pixels: int = 100,
    ) -> None:
        stains = REFERENCE_STAINS if target_stains is None else np.asarray(target_stains, float)
        max_c = target_max_concentrations
        max_c = REFERENCE_MAX_CONCENTRATIONS if max_c is None else np.asarray(max_c, float)
        if stains.shape != (3, 2) or max_c.shape != (2,):
            raise ValueError(
                f"target_stains must be (3, 2) and target_max_concentrations (2,), "
                f"got {stains.shape} and {max_c.shape}"
            )
        self.target_stains, self.target_max_concentrations = stains, max_c
        self.Io, self.alpha, self.beta = Io, alpha, beta
        self.min_tissue_pixels = min_tissue_pixels

    def __call__(self, rgb: NdarrayOrTensor) -> NdarrayOrTensor:
        pixels = _pixels(rgb)
        od = optical_density(pixels, self.Io)
        try:
            stains, max_c = _estimate(od, self.alpha, self.beta, self.min_tissue_pixels)
        except StainEstimationError:
            return _like(pixels, rgb)
        concentrations = np.linalg.pinv(stains) @ od
        concentrations *= (self.target_max_concentrations / max_c)[:, None]
        out = self.Io * np.exp(-self.target_stains @ concentrations)
        return _like(np.clip(out, 0.0, 255.0), rgb)


def _complete_basis(stains: np.ndarray) -> np.ndarray:
    """``(3, 2)`` H, E -> invertible ``(3, 3)`` [H, E, residual], residual orthogonal to both."""
    residual = np.cross(stains[:, 0], stains[:, 1])
    return np.column_stack([stains, residual / np.linalg.norm(residual)])


class RandStainAugment(RandomizableTransform):
    """Randomly perturb the H and E concentrations of a tile (Tellez et al. 2018).

    Tellez et al., "Whole-slide mitosis detection in H&E breast histology using PHH3 as a reference
    to train distilled stain-invariant convolutional networks", IEEE TMI 2018. Each stain's
    concentration becomes ``c * a + b`` with ``a ~ U(1 - 0.2 s, 1 + 0.2 s)`` and
    ``b ~ U(-0.1 s, 0.1 s)`` for ``s = strength``. The tile is decomposed with its own Macenko stain
    matrix (or Macenko's reference matrix when ``estimate_stains=False`` or the tile is background)
    completed by a residual vector, so ``a = 1, b = 0`` gives the tile back. ``strength=0`` returns
    the tile unchanged (as float32).

    Args:
        prob: probability of augmenting a tile.
        strength: size of the perturbation; 1 is Tellez's strong setting.
        Io: transmitted light intensity of an empty slide.
        estimate_stains: estimate each tile's stain matrix rather than use the reference one.

    Shapes: ``(3, H, W)`` in [0, 255] -> ``(3, H, W)`` float32 in [0, 255].
    """

    def __init__(
        self,
        prob: float = 1.0,
        strength: float = 1.0,
        Io: float = 240.0,
        estimate_stains: bool = True,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if strength < 0:
            raise ValueError(f"strength must be >= 0, got {strength}")
        self.strength, self.Io, self.estimate_stains = strength, Io, estimate_stains
        self.scale = np.ones(2)
        self.shift = np.zeros(2)

    def randomize(self, data: object = None) -> None:
        """Draw the next stain scaling and shift (Tellez et al. 2018)."""
        super().randomize(None)
        if not self._do_transform:
            return
        s = self.strength
        self.scale = self.R.uniform(1.0 - 0.2 * s, 1.0 + 0.2 * s, size=2)
        self.shift = self.R.uniform(-0.1 * s, 0.1 * s, size=2)

    def _stains(self, rgb: NdarrayOrTensor) -> np.ndarray:
        if self.estimate_stains:
            try:
                return estimate_stain_matrix(rgb, self.Io)[0]
            except StainEstimationError:
                pass
        return REFERENCE_STAINS

    def __call__(self, rgb: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        if randomize:
            self.randomize()
        pixels = _pixels(rgb)
        if not self._do_transform or self.strength == 0:
            return _like(pixels, rgb)
        basis = _complete_basis(self._stains(rgb))
        concentrations = np.linalg.solve(basis, optical_density(pixels, self.Io))
        concentrations[:2] = concentrations[:2] * self.scale[:, None] + self.shift[:, None]
        out = self.Io * np.exp(-basis @ concentrations)
        return _like(np.clip(out, 0.0, 255.0), rgb)


class MacenkoNormalized(MapTransform):
    """Dict form of :class:`MacenkoNormalize`."""

    def __init__(
        self,
        keys: KeysCollection,
        target_stains: np.ndarray | None = None,
        target_max_concentrations: np.ndarray | None = None,
        Io: float = 240.0,
        alpha: float = 1.0,
        beta: float = 0.15,
        min_tissue_pixels: int = 100,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalize = MacenkoNormalize(
            target_stains, target_max_concentrations, Io, alpha, beta, min_tissue_pixels
        )

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalize(d[key])
        return d


class RandStainAugmentd(RandomizableTransform, MapTransform):
    """Dict form of :class:`RandStainAugment`; all keys get the same perturbation."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        strength: float = 1.0,
        Io: float = 240.0,
        estimate_stains: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.augment = RandStainAugment(1.0, strength, Io, estimate_stains)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandStainAugmentd:
        """Seed this transform and its array form alike."""
        super().set_random_state(seed, state)
        self.augment.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        if self._do_transform:
            self.augment.randomize()
        for key in self.key_iterator(d):
            if self._do_transform:
                d[key] = self.augment(d[key], randomize=False)
            else:
                d[key] = _like(_pixels(d[key]), d[key])
        return d
