"""Shared point sets of the robustness tests."""

import numpy as np
import pytest


def _clustered(seed, n=400, n_patients=80, d=32, bio_scale=2.0, center_scale=1.5):
    """Random embeddings with a class signal, a center signal and patients nested in centers."""
    rng = np.random.default_rng(seed)
    patient = rng.integers(0, n_patients, n)
    center = patient % 4
    bio = rng.integers(0, 3, n)
    bio[:3] = [0, 1, 2]  # first appearances in sorted order (croma factorises by appearance)
    emb = (
        rng.normal(size=(n, d)) + bio_scale * np.eye(d)[bio] + center_scale * np.eye(d)[4 + center]
    )
    return emb, bio, center, patient


@pytest.fixture
def clustered():
    """``clustered(seed, n=400, n_patients=80, ...) -> (emb, bio, center, patient)``."""
    return _clustered
