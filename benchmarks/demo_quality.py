"""Quality of the default demo across center strengths, side by side with a random-init encoder.

Runs the full ``medfm demo`` (not --quick) at several center strengths and prints, per strength,
the linear-probe and kNN test AUC of the MAE encoder, the same architecture at random
initialisation, their ratio, and both robustness indices. Not part of the test run.

    python benchmarks/demo_quality.py --strengths 0 0.5 1 --seeds 0
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from medfm.demo import run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--quick", action="store_true", help="the --quick demo instead")
    args = parser.parse_args()
    header = (
        f"{'strength':>8} {'seed':>4} {'linear':>7} {'knn':>7} {'random':>7} "
        f"{'lin/rand':>8} {'RI':>6} {'RI_norm':>7} {'sec':>6}"
    )
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for strength in args.strengths:
            for seed in args.seeds:
                s = run_demo(
                    Path(tmp) / f"s{strength}-{seed}",
                    quick=args.quick,
                    center_strength=strength,
                    seed=seed,
                    tracking=False,
                    progress=False,
                )
                print(
                    f"{strength:>8.2f} {seed:>4d} {s['linear_auc']:>7.3f} {s['knn_auc']:>7.3f} "
                    f"{s['random_init_linear_auc']:>7.3f} "
                    f"{s['linear_auc'] / s['random_init_linear_auc']:>8.3f} "
                    f"{s['robustness_index']:>6.2f} {s['robustness_index_normalized']:>7.3f} "
                    f"{s['seconds']:>6.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
