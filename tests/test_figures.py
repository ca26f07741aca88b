"""Tests for medfm.figures: the figure saver, PNG bytes, the PCA map and the one embedding map."""

import numpy as np
import pytest

from medfm.figures import embedding_map_figure, figure_png, pca_2d, save_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _points(n=24, seed=0):
    rng = np.random.default_rng(seed)
    bio = np.array(["benign", "malignant"] * (n // 2))
    center = np.array([f"c{i % 3}" for i in range(n)])
    return rng.normal(size=(n, 8)) + 3 * (bio == "malignant")[:, None], bio, center


def test_embedding_map_figure_draws_class_then_center():
    feats, bio, center = _points()
    fig = embedding_map_figure(feats, bio, center, title="demo")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["coloured by class", "coloured by center"]
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes]
    assert legends == [["benign", "malignant"], ["c0", "c1", "c2"]]
    png = figure_png(fig)
    assert png.startswith(PNG_SIGNATURE) and png == figure_png(
        embedding_map_figure(feats, bio, center, title="demo")
    )


def test_save_figure_writes_the_same_png_atomically(tmp_path):
    feats, bio, center = _points()
    fig = embedding_map_figure(feats, bio, center, title="demo")
    path = save_figure(fig, tmp_path / "nested" / "map.png")
    assert path == tmp_path / "nested" / "map.png"
    assert path.read_bytes() == figure_png(embedding_map_figure(feats, bio, center, title="demo"))
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_embedding_map_figure_refuses_bad_shapes():
    with pytest.raises(ValueError, match="same length"):
        embedding_map_figure(np.zeros((3, 2)), bio=[0, 1], center=[0, 1, 2])
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        embedding_map_figure(np.zeros(3), bio=[0, 1, 0], center=[0, 1, 2])


def test_pca_2d_orders_components_by_variance():
    rng = np.random.default_rng(0)
    # variance 25 along (1, 1, 0, 0)/sqrt 2, 4 along the third axis, little elsewhere
    base = rng.normal(size=(200, 3)) * [5.0, 2.0, 0.1]
    rotation = np.array([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    rotation[0] /= np.sqrt(2)
    xy = pca_2d(base @ rotation + 3.0)
    assert xy.shape == (200, 2)
    np.testing.assert_allclose(xy.mean(0), 0.0, atol=1e-9)
    var = xy.var(0)
    assert var[0] > var[1]
    np.testing.assert_allclose(np.abs(xy), np.abs(base[:, :2] - base[:, :2].mean(0)), atol=0.2)
