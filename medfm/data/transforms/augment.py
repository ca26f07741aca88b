"""Random data augmentation as configuration: ``data.augment`` is an ordered list of named steps.

These run in the DataLoader after the deterministic ``data.preprocess`` steps and the patch
sampling, on every patch, and only in pre-training (downstream commands never augment).

.. code-block:: yaml

    data:
      augment:
        - {name: stain, strength: 0.5}          # H&E concentrations (Tellez et al. 2018)
        - {name: field_affine, strength: 0.5}   # random-field geometry (Mansfield et al. 2023)

Each step draws its parameters from the patch's own seed (mixed with the step's position), so
augmentation depends on (seed, step, sample) only, never on the worker or process that runs it.
The objective's own views (crops, flips, intensity jitter, :mod:`medfm.ssl.views`) come on top.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from monai.transforms import RandomizableTransform
from omegaconf import DictConfig

from medfm.data.transforms.preprocess import PreprocessError, step_arguments
from medfm.data.transforms.random_fields import RandFieldAffine, RandFieldIntensity
from medfm.data.transforms.stain import RandStainAugment
from medfm.registry import Registry

AugmentStep = Callable[[torch.Tensor, int], torch.Tensor]
AUGMENT_STEPS: Registry[Callable[..., AugmentStep]] = Registry("augment step")


class SeededStep:
    """A MONAI random transform run with its random state set from a seed on every call."""

    def __init__(self, transform: RandomizableTransform, value_max: float = 1.0) -> None:
        self.transform, self.value_max = transform, float(value_max)

    def __call__(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        self.transform.set_random_state(seed=int(seed) % 2**32)
        return torch.as_tensor(self.transform(image), dtype=torch.float32)


class _StainStep(SeededStep):
    """Stain augmentation works on [0, 255] RGB: images in ``[0, value_max]`` are scaled to it
    and back."""

    def __call__(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        scale = 255.0 / self.value_max
        return super().__call__(image * scale, seed) / scale


@AUGMENT_STEPS.register("stain")
def stain(strength: float = 1.0, prob: float = 1.0, value_max: float = 1.0) -> AugmentStep:
    """:class:`~medfm.data.transforms.stain.RandStainAugment` (Tellez et al. 2018) on RGB tiles
    whose values
    lie in ``[0, value_max]`` (1 after ``scale_range`` to [0, 1], 255 for raw tiles)."""
    return _StainStep(RandStainAugment(prob=prob, strength=strength), value_max)


@AUGMENT_STEPS.register("field_affine")
def field_affine(
    strength: float = 1.0, length_scale: float = 16.0, prob: float = 1.0
) -> AugmentStep:
    """:class:`~medfm.data.transforms.random_fields.RandFieldAffine`: a smooth random-field
    deformation
    (Mansfield et al. 2023, "Random Field Augmentations for Self-Supervised Representation
    Learning"), 2D or 3D."""
    return SeededStep(RandFieldAffine(strength=strength, length_scale=length_scale, prob=prob))


@AUGMENT_STEPS.register("field_intensity")
def field_intensity(
    strength: float = 1.0, length_scale: float = 16.0, prob: float = 1.0
) -> AugmentStep:
    """:class:`~medfm.data.transforms.random_fields.RandFieldIntensity`: smooth random gain and
    offset
    fields (Mansfield et al. 2023)."""
    return SeededStep(RandFieldIntensity(strength=strength, length_scale=length_scale, prob=prob))


def augment_steps(data_cfg: DictConfig) -> list[AugmentStep]:
    """The steps of ``data.augment`` (empty when unset); raises :class:`PreprocessError` naming
    an unknown step or argument."""
    steps = data_cfg.get("augment") or []
    return [step_arguments(AUGMENT_STEPS, "data.augment", i, s) for i, s in enumerate(steps)]


def apply_augment(steps: list[AugmentStep], image: torch.Tensor, seed: int) -> torch.Tensor:
    """Run ``steps`` on one patch ``(C, *spatial)``, each from its own stream of ``seed``."""
    for j, step in enumerate(steps):
        image = step(image, int(np.random.default_rng([int(seed), 101, j]).integers(2**62)))
    return image


__all__ = ["AUGMENT_STEPS", "PreprocessError", "apply_augment", "augment_steps"]
