"""Leave one center out: train a head on all centers but one, test it on the held-out one.

The out-of-center generalisation test behind de Jong et al. 2025 ("Current Pathology Foundation
Models are unrobust to Medical Center Differences") and PathoROB's out-of-domain evaluation
(Kömen et al. 2025). The folds are the evaluation's own
(:func:`medfm.evaluation.protocols.loco_folds`), so ``medfm evaluate --protocol loco`` and the
robustness audit hold out the same centers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from medfm.evaluation.protocols import loco_folds
from medfm.features.neighbours import as_embeddings
from medfm.heads.linear import LinearProbe
from medfm.metrics.scores import accuracy, auc
from medfm.robustness.checks import check_labels


def leave_one_center_out(
    embeddings: np.ndarray,
    bio: np.ndarray,
    center: np.ndarray,
    head_factory: Callable[[], object] | None = None,
) -> dict:
    """Train a head on all centers but one and test it on the held-out center, for each center.

    The out-of-center generalisation test behind de Jong et al. 2025 and PathoROB's
    out-of-domain evaluation. ``head_factory()`` returns an unfitted scikit-learn-style
    classifier (``fit(X, y)``, ``predict_proba``, ``classes_``); the default is
    :class:`medfm.heads.linear.LinearProbe`.

    The folds are :func:`medfm.evaluation.protocols.loco_folds` (centers as strings, samples
    without a center only ever train).

    Returns:
        ``{center: {"auc", "accuracy", "n"}}``: ROC AUC (``nan`` when the held-out center has a
        single class), accuracy and the number of held-out samples.
    """
    x = as_embeddings(embeddings)
    bio, center = check_labels(x, bio, center)
    factory = LinearProbe if head_factory is None else head_factory
    out = {}
    for name, test in loco_folds(center):
        held = str(name)
        if len(np.unique(bio[~test])) < 2:
            raise ValueError(
                f"without center {held!r} the training data hold a single class; "
                "leave-one-center-out needs two classes among the remaining centers"
            )
        head = factory().fit(x[~test], bio[~test])
        proba = head.predict_proba(x[test])
        pred = head.classes_[np.argmax(proba, axis=1)]
        single = len(np.unique(bio[test])) < 2
        out[held] = {
            "auc": float("nan") if single else auc(bio[test], proba, head.classes_),
            "accuracy": accuracy(bio[test], pred),
            "n": int(test.sum()),
        }
    return out
