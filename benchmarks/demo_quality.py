"""Quality of the default demo across center strengths, side by side with a random-init encoder.

Runs the full ``medfm demo`` (not --quick) at several center strengths and prints, per strength,
the linear-probe and kNN test AUC of the demo's encoder and of the same architecture at random
initialisation, the gains with their paired bootstrap CIs, and both robustness indices. Not part
of the test run.

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
        f"{'strength':>8} {'seed':>4} {'linear':>7} {'random':>7} {'gain [95% CI]':>24} "
        f"{'kNN':>7} {'random':>7} {'gain [95% CI]':>24} {'RI':>6} {'RI_norm':>7} {'sec':>6}"
    )
    print(header, flush=True)
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
                    f"{strength:>8.2f} {seed:>4d} {s['linear_auc']:>7.3f} "
                    f"{s['random_init_linear_auc']:>7.3f} {_gain(s, 'linear'):>24} "
                    f"{s['knn_auc']:>7.3f} {s['random_init_knn_auc']:>7.3f} "
                    f"{_gain(s, 'knn'):>24} {s['robustness_index']:>6.2f} "
                    f"{s['robustness_index_normalized']:>7.3f} {s['seconds']:>6.0f}",
                    flush=True,
                )


def _gain(summary: dict, head: str) -> str:
    lo, hi = summary[f"{head}_gain_ci95"]
    return f"{summary[f'{head}_gain']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


if __name__ == "__main__":
    main()
