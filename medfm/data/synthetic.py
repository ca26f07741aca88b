"""The embedded multi-center dataset: generated, never downloaded.

Grey-scale 2D images with four biological classes (two lesion shapes, two tissue textures), acquired
at several virtual centers. Each center leaves an acquisition signature (intensity scale and gamma,
noise, blur, a smooth bias field and, for colour tiles, a stain-like tint) whose size is set by
``center_strength``: 0 gives no center signature, 1 a strong one. This is the set-up in which
de Jong et al. 2025 ("Current Pathology Foundation Models are unrobust to Medical Center
Differences") show that encoders can learn the center instead of the biology.

:func:`write_dataset` writes real files (DICOM with realistic headers, including synthetic PHI so
that de-identification is exercised, NIfTI and PNG) plus a ``labels.csv`` with no PHI in it.
The same
seed gives byte-identical files.

Example:
    >>> from medfm.data.synthetic import SyntheticSpec, write_dataset
    >>> spec = SyntheticSpec(cases_per_center=4)
    >>> labels_csv = write_dataset("runs/demo/data", spec)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid
from scipy.ndimage import gaussian_filter

from medfm.data.writers import write_dicom, write_nifti, write_png
from medfm.io import atomic_path

CLASS_NAMES = ("round_lesion", "spiculated_lesion", "striped_tissue", "granular_tissue")
FORMATS = ("dicom", "nifti", "png")
_FIRST_NAMES = (
    "ANNA",
    "BORIS",
    "CARLA",
    "DMITRI",
    "ELIF",
    "FARID",
    "GRETA",
    "HUGO",
    "INES",
    "JONAS",
)


@dataclasses.dataclass(frozen=True)
class CenterProfile:
    """One center's acquisition signature at full strength, and its DICOM identity."""

    name: str
    manufacturer: str
    institution: str
    modality: str
    scale: float  # multiplies intensities
    gamma: float  # intensity ** gamma
    noise: float  # extra Gaussian noise std (intensity units in [0, 1])
    blur: float  # Gaussian blur sigma in pixels
    bias: float  # amplitude of a linear multiplicative bias field
    bias_angle: float  # direction of the bias field, radians
    tint: tuple[float, float, float]  # stain-like RGB colour shift for colour tiles


_PROFILES = (
    CenterProfile(
        "center_a",
        "Acme Imaging",
        "ZZ North Valley Hospital",
        "US",
        1.35,
        0.65,
        0.00,
        0.0,
        0.35,
        0.0,
        (0.10, -0.05, 0.08),
    ),
    CenterProfile(
        "center_b",
        "Borealis Medical",
        "ZZ Lakeside Clinic",
        "US",
        0.70,
        1.50,
        0.10,
        0.0,
        0.0,
        0.0,
        (-0.08, 0.06, -0.02),
    ),
    CenterProfile(
        "center_c",
        "Cardinal Systems",
        "ZZ Hillcrest University Hospital",
        "US",
        1.00,
        1.00,
        0.03,
        1.3,
        -0.35,
        1.6,
        (0.02, -0.08, 0.12),
    ),
    CenterProfile(
        "center_d",
        "Delta Diagnostics",
        "ZZ Riverside Medical Center",
        "US",
        0.85,
        1.25,
        0.06,
        0.7,
        0.25,
        3.1,
        (0.12, 0.04, -0.06),
    ),
)


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """What to generate: ``cases_per_center`` patients, ``images_per_case`` images each."""

    n_centers: int = 3
    cases_per_center: int = 50
    images_per_case: int = 3
    size: int = 32
    center_strength: float = 0.5
    seed: int = 0
    color: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.n_centers <= len(_PROFILES):
            raise ValueError(f"n_centers must be in 1..{len(_PROFILES)}, got {self.n_centers}")
        if not 0.0 <= self.center_strength <= 1.0:
            raise ValueError(f"center_strength must be in [0, 1], got {self.center_strength}")


@dataclasses.dataclass
class SyntheticImage:
    """One generated image: its pixels, class, center, case (patient) and file format."""

    image: np.ndarray  # uint8, (H, W) or (H, W, 3)
    label: int
    center: CenterProfile
    case: str
    index: int


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    axis = np.linspace(-1.0, 1.0, size)
    return np.meshgrid(axis, axis, indexing="ij")


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    field = gaussian_filter(rng.normal(size=(size, size)), sigma=size / 6)
    field = (field - field.mean()) / (field.std() + 1e-8)
    return 0.30 + 0.05 * field


def _lesion(size: int, rng: np.random.Generator, spikes: int) -> np.ndarray:
    yy, xx = _grid(size)
    cy, cx = rng.uniform(-0.35, 0.35, size=2)
    radius = rng.uniform(0.30, 0.45)
    theta = np.arctan2(yy - cy, xx - cx)
    r = np.hypot(yy - cy, xx - cx)
    if spikes:
        radius = radius * (
            0.65 + 0.45 * np.abs(np.cos(spikes / 2 * (theta + rng.uniform(0, np.pi))))
        )
    return 1.0 / (1.0 + np.exp((r - radius) / 0.03))


def _stripes(size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = _grid(size)
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(3.0, 4.5)
    phase = rng.uniform(0, 2 * np.pi)
    return 0.5 + 0.5 * np.sin(np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)


def _granules(size: int, rng: np.random.Generator) -> np.ndarray:
    dots = (rng.random((size, size)) < 0.08).astype(float)
    return np.clip(gaussian_filter(dots, sigma=0.8) * 4.0, 0.0, 1.0)


def draw_class(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """The biological content of one image, float in [0, 1], shape ``(size, size)``."""
    base = _background(size, rng)
    if label == 0:
        pattern = _lesion(size, rng, spikes=0)
    elif label == 1:
        pattern = _lesion(size, rng, spikes=int(rng.integers(5, 9)))
    elif label == 2:
        pattern = _stripes(size, rng)
    elif label == 3:
        pattern = _granules(size, rng)
    else:
        raise ValueError(f"label must be in 0..{len(CLASS_NAMES) - 1}, got {label}")
    return np.clip(base + 0.45 * pattern, 0.0, 1.0)


def apply_center(
    image: np.ndarray, profile: CenterProfile, strength: float, rng: np.random.Generator
) -> np.ndarray:
    """Apply a center's acquisition signature at ``strength`` in [0, 1] to an image in [0, 1]."""
    size = image.shape[0]
    blur = strength * profile.blur
    out = gaussian_filter(image, sigma=blur) if blur > 0 else image
    yy, xx = _grid(size)
    ramp = xx * np.cos(profile.bias_angle) + yy * np.sin(profile.bias_angle)
    out = out * (1.0 + strength * profile.bias * ramp)
    out = np.clip(out, 0.0, 1.0) ** (1.0 + strength * (profile.gamma - 1.0))
    out = out * (1.0 + strength * (profile.scale - 1.0))
    noise = 0.02 + strength * profile.noise
    return np.clip(out + rng.normal(scale=noise, size=out.shape), 0.0, 1.0)


def apply_stain(image: np.ndarray, profile: CenterProfile, strength: float) -> np.ndarray:
    """Turn a grey image in [0, 1] into an H&E-like RGB tile with the center's colour shift."""
    pink, purple = np.array([0.93, 0.60, 0.75]), np.array([0.45, 0.25, 0.60])
    rgb = (1.0 - image)[..., None] * pink + image[..., None] * purple
    return np.clip(rgb + strength * np.asarray(profile.tint), 0.0, 1.0)


def generate(spec: SyntheticSpec) -> Iterator[SyntheticImage]:
    """Yield every image of the dataset, deterministically from ``spec.seed``."""
    rng = np.random.default_rng(spec.seed)
    n_classes = len(CLASS_NAMES)
    for c, profile in enumerate(_PROFILES[: spec.n_centers]):
        for k in range(spec.cases_per_center):
            case = f"case_{c * spec.cases_per_center + k + 1:04d}"
            label = int((k + c) % n_classes)  # balanced classes within every center
            for i in range(spec.images_per_case):
                grey = apply_center(
                    draw_class(label, spec.size, rng), profile, spec.center_strength, rng
                )
                pixels = apply_stain(grey, profile, spec.center_strength) if spec.color else grey
                yield SyntheticImage(
                    np.round(pixels * 255).astype(np.uint8), label, profile, case, i
                )


def _phi_header(profile: CenterProfile, case: str, seed: int) -> dict[str, object]:
    """Synthetic, distinctive PHI (so tests can prove it never leaks) plus the center's identity."""
    rng = np.random.default_rng([seed, int(case.split("_")[1])])
    return {
        "PatientName": f"ZZSYNTH^{_FIRST_NAMES[int(rng.integers(len(_FIRST_NAMES)))]}^{case[-4:]}",
        "PatientID": f"MRN{int(rng.integers(10**6, 10**7))}",
        "PatientBirthDate": f"19{int(rng.integers(40, 99))}0{int(rng.integers(1, 9))}15",
        "AccessionNumber": f"ACC{int(rng.integers(10**5, 10**6))}",
        "ReferringPhysicianName": "ZZDOC^REFERRER",
        "Modality": profile.modality,
        "Manufacturer": profile.manufacturer,
        "InstitutionName": profile.institution,
        "StudyInstanceUID": generate_uid(entropy_srcs=[str(seed), case, "study"]),
    }


def _write_one(item: SyntheticImage, raw: Path, seed: int) -> Path:
    fmt = "png" if item.image.ndim == 3 else FORMATS[int(item.case.split("_")[1]) % len(FORMATS)]
    stem = raw / item.center.name / item.case / f"img_{item.index:02d}"
    if fmt == "png":
        return write_png(item.image, stem.with_suffix(".png"))
    if fmt == "nifti":
        return write_nifti(item.image, stem.with_suffix(".nii.gz"))
    header = _phi_header(item.center, item.case, seed)
    # each image is its own single-slice series (one view) within the case's study
    header["SeriesInstanceUID"] = generate_uid(
        entropy_srcs=[str(seed), item.case, str(item.index), "series"]
    )
    header["SOPInstanceUID"] = generate_uid(entropy_srcs=[str(seed), item.case, str(item.index)])
    header["InstanceNumber"] = item.index + 1
    return write_dicom(item.image, stem.with_suffix(".dcm"), header)


def write_dataset(out_dir: str | os.PathLike, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write the dataset under ``out_dir/raw/<center>/<case>/`` and ``out_dir/labels.csv``.

    Each case (patient) is stored in one format, cycling DICOM, NIfTI, PNG so that format and center
    are independent. ``labels.csv`` has columns ``path`` (relative to ``out_dir``), ``label``,
    ``label_name`` and ``center``. Returns the path of ``labels.csv``.
    """
    out_dir = Path(out_dir)
    rows = []
    for item in generate(spec):
        path = _write_one(item, out_dir / "raw", spec.seed)
        rows.append(
            {
                "path": path.relative_to(out_dir).as_posix(),
                "label": item.label,
                "label_name": CLASS_NAMES[item.label],
                "center": item.center.name,
            }
        )
    labels = out_dir / "labels.csv"
    with atomic_path(labels) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "label_name", "center"])
        writer.writeheader()
        writer.writerows(rows)
    return labels
