"""The ``medmnist_2d`` recipe and ``medfm evaluate``'s defaults on MedMNIST-format files that are
not BreastMNIST: grey and RGB, binary, multi-class and ordinal, 500 to 100,000 images.

MedMNIST files are ``.npz`` with ``{train,val,test}_{images,labels}``, images uint8 ``(n, 28,
28)`` or ``(n, 28, 28, 3)``, labels ``(n, 1)``. This script writes such files from images that
ship with packages (nothing is downloaded), then runs the recipe exactly as a user would, with
nothing but ``data.path`` and the step budget set:

* ``textures``: grey, 6 classes: 28-pixel crops, at random scales, of scikit-image's brick,
  grass, gravel, cell, coins and camera images (1,200 images);
* ``ihc_zoom``: RGB, 5 ordinal classes: crops of scikit-image's immunohistochemistry slide
  (a real IHC-stained tissue image) at 5 magnifications, the label being the zoom level, as a
  pathology set graded by magnification (1,000 images);
* ``phantoms``: grey, binary: medfm's embedded lesions (round or spiculated) against tissue
  (striped or granular), with center signatures; the small end, 500 images;
* ``large``: the phantoms again at ``--large`` images (default 100,000): a short pre-training
  and the frozen heads, timed, to show the pipeline's defaults hold at that size.

For the first three it prints linear, kNN and fine-tune test AUC of the pre-trained encoder
against its random-init twin (the same architecture, fine-tuned under the same budget), at a
fixed step budget so the numbers do not depend on the machine.

    python benchmarks/medmnist_any.py --steps 150 --large 100000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import zoom

from medfm.api import pretrain
from medfm.config import load_config
from medfm.data.synthetic import CLASS_NAMES, SyntheticSpec, apply_center, draw_class
from medfm.evaluation.run import evaluate

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs/pretrain/medmnist_2d.yaml"
SPLITS = {"train": 0.7, "val": 0.1, "test": 0.2}


def _crop(image: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``side``-pixel square of ``image``, resized to 28 x 28."""
    y = rng.integers(0, image.shape[0] - side + 1)
    x = rng.integers(0, image.shape[1] - side + 1)
    patch = image[y : y + side, x : x + side].astype(np.float32)
    factors = (28 / side, 28 / side) + (1,) * (patch.ndim - 2)
    return np.clip(zoom(patch, factors, order=1), 0, 255)[:28, :28].astype(np.uint8)


def textures(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Grey crops of six scikit-image pictures at random scales; label = picture."""
    import skimage.data as data

    sources = [data.brick(), data.grass(), data.gravel(), data.cell(), data.coins(), data.camera()]
    labels = rng.integers(0, len(sources), n)
    images = [_crop(sources[k], int(rng.integers(28, 84)), rng) for k in labels]
    return np.stack(images), labels


def ihc_zoom(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """RGB crops of the IHC slide at five magnifications; label = zoom level (ordinal)."""
    import skimage.data as data

    slide = data.immunohistochemistry()
    sides = (28, 48, 80, 136, 232)
    labels = rng.integers(0, len(sides), n)
    return np.stack([_crop(slide, sides[k], rng) for k in labels]), labels


def phantoms(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """medfm's embedded phantoms, lesion (class 0/1) against tissue (2/3), three centers."""
    from medfm.data.synthetic import _PROFILES

    spec = SyntheticSpec(size=28)
    kinds = rng.integers(0, len(CLASS_NAMES), n)
    images = []
    for i, kind in enumerate(kinds):
        grey = draw_class(int(kind), spec.size, rng)
        grey = apply_center(grey, _PROFILES[i % 3], spec.center_strength, rng)
        images.append(np.round(grey * 255).astype(np.uint8))
    return np.stack(images), (kinds >= 2).astype(int)


def write_npz(path: Path, images: np.ndarray, labels: np.ndarray, seed: int) -> Path:
    """A MedMNIST-format file with random train/val/test splits."""
    order = np.random.default_rng(seed).permutation(len(images))
    cuts = np.cumsum([int(f * len(images)) for f in SPLITS.values()])[:-1]
    arrays = {}
    for name, idx in zip(SPLITS, np.split(order, cuts), strict=True):
        arrays[f"{name}_images"] = images[idx]
        arrays[f"{name}_labels"] = labels[idx].reshape(-1, 1)
    np.savez_compressed(path, **arrays)
    return path


def run_recipe(npz: Path, out: Path, steps: int, heads: str, seed: int = 0) -> tuple[dict, dict]:
    """The recipe with only ``data.path`` and the step budget set, then ``medfm evaluate``."""
    cfg = load_config(
        RECIPE,
        [
            f"data.path={npz}",
            f"out_dir={out}",
            f"seed={seed}",
            f"train.max_steps={steps}",
            "tracking.enabled=false",
            "train.progress=false",
        ],
    )
    start = time.perf_counter()
    _, result = pretrain(cfg)
    timings = {"pretrain_s": time.perf_counter() - start, "steps": result.steps}
    start = time.perf_counter()
    eval_cfg = load_config(None, [f"seed={seed}", f"eval.heads=[{heads}]"])
    metrics = evaluate(out, npz, eval_cfg, out / "eval", progress=False)
    timings["evaluate_s"] = time.perf_counter() - start
    return metrics, timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="pre-training steps per set")
    parser.add_argument("--large", type=int, default=100_000, help="images of the large set")
    parser.add_argument("--large-steps", type=int, default=20)
    parser.add_argument("--skip", nargs="*", default=[], help="sets to leave out")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    sets = {"textures": (textures, 1200), "ihc_zoom": (ihc_zoom, 1000), "phantoms": (phantoms, 500)}
    header = f"{'set':<10} {'n':>7} {'ch':>3} {'cls':>4}"
    header += f" {'head':<9} {'pretrained':>10} {'random':>7} {'gain':>7} {'steps':>6} {'s':>5}"
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (make, n) in sets.items():
            if name in args.skip:
                continue
            images, labels = make(n, rng)
            npz = write_npz(Path(tmp) / f"{name}.npz", images, labels, 0)
            metrics, t = run_recipe(npz, Path(tmp) / name, args.steps, "linear,knn,finetune")
            channels = 3 if images.ndim == 4 else 1
            for head in ("linear", "knn", "finetune"):
                ours = metrics[head]["full"]["test_auc"]
                rand = metrics[f"random:{head}"]["full"]["test_auc"]
                print(
                    f"{name:<10} {n:>7} {channels:>3} {len(np.unique(labels)):>4} {head:<9} "
                    f"{ours:>10.3f} {rand:>7.3f} {ours - rand:>+7.3f} {t['steps']:>6} "
                    f"{t['pretrain_s'] + t['evaluate_s']:>5.0f}",
                    flush=True,
                )
        if "large" not in args.skip:
            start = time.perf_counter()
            images, labels = phantoms(args.large, rng)
            npz = write_npz(Path(tmp) / "large.npz", images, labels, 0)
            made = time.perf_counter() - start
            metrics, t = run_recipe(npz, Path(tmp) / "large", args.large_steps, "linear,knn")
            print(
                f"\nlarge: {args.large} images written in {made:.0f} s; {t['steps']} pre-training "
                f"steps in {t['pretrain_s']:.0f} s; evaluate (features of encoder and twin, "
                f"linear and kNN heads, pixels) in {t['evaluate_s']:.0f} s; linear AUC "
                f"{metrics['linear']['full']['test_auc']:.3f}, kNN "
                f"{metrics['knn']['full']['test_auc']:.3f}"
            )


if __name__ == "__main__":
    main()
