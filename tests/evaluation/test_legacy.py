"""Tests for medfm.evaluation.legacy (feature table, heads, robustness) and medfm.figures."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from medfm.config import load_config
from medfm.evaluation.legacy import FeatureTable, evaluate_heads, evaluate_robustness
from medfm.figures import embedding_map, pca_2d
from medfm.robustness.index import robustness_index

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def eval_cfg():
    return load_config(None, []).eval


def _blob_rows(seed, n_per_split=(60, 30, 30), d=16, sep=8.0):
    """Three well-separated Gaussian classes with string labels, split into train/val/test."""
    rng = np.random.default_rng(seed)
    rows, feats = [], []
    for split, n in zip(("train", "val", "test"), n_per_split, strict=True):
        for i in range(n):
            label = i % 3
            feats.append(rng.normal(size=d) + sep * np.eye(d)[label])
            rows.append(
                {
                    "label": str(label),
                    "center": f"c{i % 2}",
                    "patient": f"{split}-{i}",
                    "split": split,
                }
            )
    return np.array(feats), rows


# ----------------------------------------------------------------------------- FeatureTable


def test_from_rows_rejects_a_length_mismatch():
    with pytest.raises(ValueError, match="3 feature rows for 2 manifest rows"):
        FeatureTable.from_rows(np.zeros((3, 4)), [{"label": "0"}, {"label": "1"}])


def test_from_rows_fills_missing_columns_and_part_keeps_labelled_rows_of_a_split():
    feats = np.arange(8, dtype=float).reshape(4, 2)
    rows = [
        {"label": "a", "split": "train", "center": "c1"},
        {"label": "", "split": "train"},
        {"label": "b", "split": "test"},
        {"split": "train", "label": "b", "patient": "p9"},
    ]
    table = FeatureTable.from_rows(feats, rows)
    assert table.center.tolist() == ["c1", "", "", ""]
    assert table.patient.tolist() == ["", "", "", "p9"]
    X, y = table.part("train")
    np.testing.assert_array_equal(X, feats[[0, 3]])
    assert y.tolist() == ["a", "b"]
    X, y = table.part("val")
    assert X.shape == (0, 2) and y.tolist() == []


# --------------------------------------------------------------------------- evaluate_heads


def test_evaluate_heads_on_separated_blobs(eval_cfg):
    feats, rows = _blob_rows(0)
    results = evaluate_heads(FeatureTable.from_rows(feats, rows), eval_cfg)
    assert set(results) == {"linear", "knn"}
    for name in ("linear", "knn"):
        assert set(results[name]) >= {
            "test_auc",
            "test_auc_ci95",
            "test_acc",
            "test_bacc",
            "test_f1",
            "test_ece",
        }
        assert results[name]["test_auc"] == pytest.approx(1.0, abs=1e-3)
        lo, hi = results[name]["test_auc_ci95"]
        assert lo <= results[name]["test_auc"] <= hi
        assert results[name]["test_acc"] >= 0.95
        assert 0.0 <= results[name]["test_ece"] <= 1.0


def test_evaluate_heads_scores_chance_on_features_without_signal(eval_cfg):
    # Same table shape, but the features are noise: the test AUC falls far below the blobs' 1.0.
    feats, rows = _blob_rows(1, sep=0.0)
    results = evaluate_heads(FeatureTable.from_rows(feats, rows), eval_cfg)
    for name in ("linear", "knn"):
        assert 0.2 < results[name]["test_auc"] < 0.8


def test_evaluate_heads_works_without_a_val_split(eval_cfg):
    feats, rows = _blob_rows(2)
    keep = [i for i, r in enumerate(rows) if r["split"] != "val"]
    table = FeatureTable.from_rows(feats[keep], [rows[i] for i in keep])
    results = evaluate_heads(table, eval_cfg)
    assert results["linear"]["test_auc"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("missing", ["test", "train"])
def test_evaluate_heads_needs_train_and_test_splits(eval_cfg, missing):
    feats, rows = _blob_rows(0)
    keep = [i for i, r in enumerate(rows) if r["split"] != missing]
    table = FeatureTable.from_rows(feats[keep], [rows[i] for i in keep])
    with pytest.raises(ValueError, match="'train' and 'test'"):
        evaluate_heads(table, eval_cfg)


def test_evaluate_heads_rejects_an_unknown_head(eval_cfg):
    feats, rows = _blob_rows(0)
    cfg = OmegaConf.merge(eval_cfg, {"heads": ["linear", "svm"]})
    with pytest.raises(ValueError, match="unknown head 'svm'"):
        evaluate_heads(FeatureTable.from_rows(feats, rows), cfg)


# ---------------------------------------------------------------------- evaluate_robustness


def _center_rows(seed, center_strength, bio_strength, n=80, d=12):
    """Features = class offset + center offset + noise; two classes crossed with four centers."""
    rng = np.random.default_rng(seed)
    rows, feats = [], []
    for i in range(n):
        bio, center = i % 2, (i // 2) % 4
        feats.append(
            bio_strength * np.eye(d)[bio]
            + center_strength * np.eye(d)[2 + center]
            + rng.normal(size=d)
        )
        rows.append(
            {"label": str(bio), "center": f"c{center}", "patient": f"p{i // 4}", "split": "test"}
        )
    return np.array(feats), rows


def test_evaluate_robustness_is_lower_when_the_center_is_encoded_strongly():
    strong = evaluate_robustness(FeatureTable.from_rows(*_center_rows(0, 8.0, 1.0)), k=5)
    weak = evaluate_robustness(FeatureTable.from_rows(*_center_rows(0, 0.5, 8.0)), k=5)
    assert strong["k"] == weak["k"] == 5
    assert strong["robustness_index"] < 1 < weak["robustness_index"]
    assert strong["robustness_index_normalized"] < 0.5 < weak["robustness_index_normalized"]


def test_evaluate_robustness_uses_labelled_rows_and_excludes_the_same_patient():
    feats, rows = _center_rows(1, 2.0, 2.0)
    rows[3] = dict(rows[3], label="")
    rows[10] = dict(rows[10], center="")
    result = evaluate_robustness(FeatureTable.from_rows(feats, rows), k=3)
    keep = [i for i in range(len(rows)) if i not in (3, 10)]
    args = (feats[keep], [rows[i]["label"] for i in keep], [rows[i]["center"] for i in keep])
    groups = np.array([rows[i]["patient"] for i in keep])
    assert result["robustness_index"] == robustness_index(*args, k=3, groups=groups)
    assert result["robustness_index_normalized"] == robustness_index(
        *args, k=3, variant="normalized", groups=groups
    )
    # the patient exclusion matters here: without it the value differs
    assert result["robustness_index"] != robustness_index(*args, k=3)


# ------------------------------------------------------------------------------------ plots


def test_embedding_map_writes_a_png(tmp_path):
    feats, rows = _center_rows(2, 2.0, 2.0, n=24)
    bio = np.array([r["label"] for r in rows])
    center = np.array([r["center"] for r in rows])
    path = embedding_map(feats, bio, center, tmp_path / "nested" / "map.png", title="demo")
    assert path == tmp_path / "nested" / "map.png"
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 1000


def test_pca_2d_orders_components_by_variance():
    rng = np.random.default_rng(0)
    # variance 25 along (1, 1, 0, 0)/sqrt 2, 4 along the third axis, little elsewhere
    base = rng.normal(size=(200, 3)) * [5.0, 2.0, 0.1]
    rotation = np.array([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    rotation[0] /= np.sqrt(2)
    feats = base @ rotation + 3.0
    xy = pca_2d(feats)
    assert xy.shape == (200, 2)
    np.testing.assert_allclose(xy.mean(0), 0.0, atol=1e-9)
    var = xy.var(0)
    assert var[0] > var[1]
    # the components are the base axes up to sign
    np.testing.assert_allclose(np.abs(xy), np.abs(base[:, :2] - base[:, :2].mean(0)), atol=0.2)
