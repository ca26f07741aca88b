"""Robustness index against the size of a center signature, on real BreastMNIST images.

A semi-synthetic multi-center benchmark: the real images of ``shared/data/breastmnist.npz`` (all
splits) are dealt to K virtual centers, balanced and stratified by class (seeded), and each center
stamps its acquisition signature on its images (contrast / gamma, noise, blur, bias field; the
profiles of :func:`medfm.data.synthetic.apply_center`) at strengths 0 to 1. A FIXED encoder embeds
every version of every image, and both robustness indices (:func:`medfm.robustness.index.
robustness_index`; bio = the BreastMNIST label) are computed for the encoder and, in the same run,
for the raw pixels. As the signature grows, neighbours should come more from the same center, so
both indices should fall; the script checks and prints whether they do, prints the chance level of
each index for this label / center mix, and writes ``robustness_vs_strength.png``,
``results.json`` and a robustness card (``robustness_card.html``) for the strongest signature.
Each image gets its own noise seed, the same at every strength, so strengths differ only by
the signature. Not part of the test run.

    python benchmarks/robustness_semisynthetic.py
    python benchmarks/robustness_semisynthetic.py --encoder runs/demo/encoder --out runs/ri
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from medfm.config import load_config  # noqa: E402
from medfm.data.synthetic import _PROFILES, apply_center  # noqa: E402
from medfm.io import write_json  # noqa: E402
from medfm.models import create_backbone, encode, load_encoder  # noqa: E402
from medfm.robustness.card import render_robustness_card  # noqa: E402
from medfm.robustness.index import robustness_index  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/breastmnist.npz"
CLASS_NAMES = {0: "malignant", 1: "normal/benign"}  # BreastMNIST labels
CURVE_KS = (5, 10, 20, 50)


def load_images(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """All splits of a 2D MedMNIST ``.npz``: grey images ``(n, H, W)`` in [0, 1] and labels."""
    if not path.is_file():
        sys.exit(
            f"{path} not found: this benchmark needs BreastMNIST (MedMNIST v2) as "
            "../shared/data/breastmnist.npz beside the repository, or pass --data FILE.npz"
        )
    with np.load(path) as npz:
        splits = [s for s in ("train", "val", "test") if f"{s}_images" in npz.files]
        images = np.concatenate([npz[f"{s}_images"] for s in splits]).astype(np.float64) / 255
        labels = np.concatenate([npz[f"{s}_labels"][:, 0] for s in splits]).astype(int)
    if images.ndim == 4:  # RGB MedMNIST sets: grey, since the center profiles are grey-scale
        images = images.mean(axis=-1)
    if images.ndim != 3:
        sys.exit(f"{path}: expected 2D images (n, H, W[, 3]), got shape {images.shape}")
    return images, labels


def assign_centers(labels: np.ndarray, n_centers: int, seed: int) -> np.ndarray:
    """Center index per image: within each class, a seeded shuffle dealt round-robin, so every
    center gets the same number of images (+-1) and the same class mix."""
    rng = np.random.default_rng(seed)
    centers = np.empty(len(labels), dtype=int)
    offset = 0
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        centers[idx] = (np.arange(len(idx)) + offset) % n_centers
        offset += len(idx)
    return centers


def shift_images(images: np.ndarray, centers: np.ndarray, strength: float, seed: int) -> np.ndarray:
    """Every image with its center's signature at ``strength`` (noise seeded per image)."""
    return np.stack(
        [
            apply_center(img, _PROFILES[c], strength, np.random.default_rng([seed, i]))
            for i, (img, c) in enumerate(zip(images, centers, strict=True))
        ]
    ).astype(np.float32)


def build_encoder(encoder_dir: str | None, seed: int) -> tuple[torch.nn.Module, int, int, str]:
    """The fixed encoder: (model, image_size, channels, pooling)."""
    torch.manual_seed(seed)
    if encoder_dir:
        model, cfg = load_encoder(encoder_dir)
    else:
        cfg = load_config(None, ["data.image_size=28", "model.patch_size=4"])
        model = create_backbone(cfg.model, cfg.data.image_size, cfg.data.channels)
    if str(cfg.model.name).startswith("vit3d"):
        sys.exit(f"{encoder_dir}: a 3D encoder ({cfg.model.name}); this benchmark needs a 2D one")
    return model.eval(), int(cfg.data.image_size), int(cfg.data.channels), str(cfg.model.pooling)


@torch.no_grad()
def embed(model, images: np.ndarray, size: int, channels: int, pooling: str) -> np.ndarray:
    """``(n, H, W)`` images in [0, 1] -> ``(n, d)`` features, fed as medfm's MedMNIST loader
    does (spatial axes x-first), resized by area and repeated to the encoder's channels."""
    x = torch.from_numpy(np.swapaxes(images, 1, 2).copy())[:, None]
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    x = x.repeat(1, channels, 1, 1)
    return torch.cat([encode(model, b, pooling) for b in x.split(256)]).float().numpy()


def chance_levels(bio: np.ndarray, center: np.ndarray) -> dict[str, float]:
    """Both indices when neighbours are drawn uniformly at random (their expectation, pooled)."""
    n = len(bio)
    _, b = np.unique(bio, return_inverse=True)
    _, c = np.unique(center, return_inverse=True)
    joint = np.zeros((b.max() + 1, c.max() + 1))
    np.add.at(joint, (b, c), 1)
    n_b, n_c, n_bc = joint.sum(1)[b], joint.sum(0)[c], joint[b, c]
    same_bio, same_center = (n_b - 1).sum(), (n_c - 1).sum()
    so, os_ = (n_b - n_bc).sum(), (n_c - n_bc).sum()
    return {"ratio": same_bio / same_center, "normalized": so / (so + os_), "n": n}


def both_indices(features: np.ndarray, bio: np.ndarray, center: np.ndarray, k: int) -> dict:
    return {
        "ratio": robustness_index(features, bio, center, k=k, variant="ratio"),
        "normalized": robustness_index(features, bio, center, k=k, variant="normalized"),
    }


def falls_monotonically(strengths: list[float], values: list[float]) -> str:
    rises = [
        f"{a:g}->{b:g} ({v1:.3f}->{v2:.3f})"
        for a, b, v1, v2 in zip(strengths, strengths[1:], values, values[1:], strict=False)
        if v2 > v1
    ]
    return "yes" if not rises else "NO, rises at " + ", ".join(rises)


def plot(strengths, table, chance, encoder_name, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, variant, neutral in zip(axes, ("ratio", "normalized"), (1.0, 0.5), strict=True):
        for source, style in ((encoder_name, "o-"), ("raw pixels", "s--")):
            ax.plot(strengths, [row[source][variant] for row in table], style, label=source)
        ax.axhline(chance[variant], color="tab:green", linestyle=":", label="chance")
        ax.axhline(neutral, color="grey", linestyle="--", linewidth=1, label=f"{neutral:g}")
        ax.set_xlabel("center signature strength")
        ax.set_ylabel(f"RI {variant}")
        ax.set_title(f"RI {variant} vs strength", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("BreastMNIST, virtual centers: robustness index vs center signature strength")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def card_entry(features, bio, center, k, ri) -> dict:
    """One encoder of the robustness card: both indices, their curves over k, the embeddings."""
    ks = [kk for kk in CURVE_KS if kk < len(features)]
    curve = {
        v: {kk: robustness_index(features, bio, center, k=kk, variant=v) for kk in ks}
        for v in ("ratio", "normalized")
    }
    return {
        "robustness_index": ri["ratio"],
        "robustness_index_normalized": ri["normalized"],
        "k": k,
        "ri_curve": curve["ratio"],
        "ri_curve_normalized": curve["normalized"],
        "embeddings": features,
        "bio": bio.tolist(),
        "center": center.tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a 2D MedMNIST .npz")
    parser.add_argument("--centers", type=int, default=3, help=f"1..{len(_PROFILES)}")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0, 0.25, 0.5, 0.75, 1])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoder", help="a medfm encoder artifact folder (default: random ViT)")
    parser.add_argument("--out", type=Path, help="output folder (default: a new temp folder)")
    args = parser.parse_args()
    if not 1 <= args.centers <= len(_PROFILES):
        sys.exit(f"--centers must be in 1..{len(_PROFILES)} (the synthetic center profiles)")
    start = time.perf_counter()
    out = args.out or Path(tempfile.mkdtemp(prefix="medfm-ri-strength-"))
    out.mkdir(parents=True, exist_ok=True)

    images, labels = load_images(args.data)
    centers = assign_centers(labels, args.centers, args.seed)
    center_names = np.array([_PROFILES[c].name for c in centers])
    bio = np.array([CLASS_NAMES.get(int(v), str(v)) for v in labels])
    model, size, channels, pooling = build_encoder(args.encoder, args.seed)
    encoder_name = f"encoder {Path(args.encoder).name}" if args.encoder else "random-init ViT"
    chance = chance_levels(bio, center_names)
    counts = {str(n): int((center_names == n).sum()) for n in np.unique(center_names)}
    classes = {str(n): int((bio == n).sum()) for n in np.unique(bio)}
    print(
        f"{len(images)} images from {args.data.name}, classes "
        f"{classes}, centers {counts}; "
        f"encoder: {encoder_name} ({size}px, {channels} ch, {pooling} pooling); k={args.k}"
    )

    strengths = sorted(args.strengths)
    table, last = [], None
    header = (
        f"{'strength':>8} | {'enc RI':>7} {'enc norm':>8} | {'pix RI':>7} {'pix norm':>8} | "
        f"{'enc/pix RI':>10}"
    )
    print(header + "\n" + "-" * len(header))
    for strength in strengths:
        shifted = shift_images(images, centers, strength, args.seed)
        feats = embed(model, shifted, size, channels, pooling)
        pixels = shifted.reshape(len(shifted), -1)
        row = {
            "strength": strength,
            encoder_name: both_indices(feats, bio, center_names, args.k),
            "raw pixels": both_indices(pixels, bio, center_names, args.k),
        }
        table.append(row)
        last = (feats, pixels, row)
        e, p = row[encoder_name], row["raw pixels"]
        print(
            f"{strength:>8.2f} | {e['ratio']:>7.3f} {e['normalized']:>8.3f} | "
            f"{p['ratio']:>7.3f} {p['normalized']:>8.3f} | {e['ratio'] / p['ratio']:>10.3f}",
            flush=True,
        )
    print(
        f"{'chance':>8} | {chance['ratio']:>7.3f} {chance['normalized']:>8.3f} | "
        f"{chance['ratio']:>7.3f} {chance['normalized']:>8.3f} |  (random neighbours)"
    )

    print("\nDoes RI fall monotonically as the center signature grows?")
    for source in (encoder_name, "raw pixels"):
        for variant in ("ratio", "normalized"):
            verdict = falls_monotonically(strengths, [r[source][variant] for r in table])
            print(f"  {source:>16} {variant:>10}: {verdict}")

    figure = plot(strengths, table, chance, encoder_name, out / "robustness_vs_strength.png")
    feats, pixels, row = last
    card = render_robustness_card(
        {
            "title": f"Robustness card: BreastMNIST, {args.centers} virtual centers",
            "subtitle": f"semi-synthetic benchmark, center signature strength {strengths[-1]:g}, "
            f"seed {args.seed}",
            "dataset": {
                "name": f"{args.data.name} (all splits), virtual centers",
                "n_samples": len(images),
                "notes": "Real images dealt to virtual centers (stratified by class); each "
                "center's acquisition signature is simulated.",
            },
            "chance": {
                "robustness_index": chance["ratio"],
                "robustness_index_normalized": chance["normalized"],
            },
            "encoders": {
                encoder_name: card_entry(feats, bio, center_names, args.k, row[encoder_name]),
                "raw pixels": card_entry(pixels, bio, center_names, args.k, row["raw pixels"]),
            },
        },
        out / "robustness_card.html",
    )
    write_json({"chance": chance, "k": args.k, "table": table}, out / "results.json")
    print(f"\nplot: {figure}\ncard: {card}\nresults: {out / 'results.json'}")
    print(f"done in {time.perf_counter() - start:.0f} s; outputs in {out}")


if __name__ == "__main__":
    main()
