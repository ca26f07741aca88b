"""Tests for medfm.robustness.card (the HTML robustness card), its sections
(medfm.robustness.card_sections) and medfm.robustness.card_plots."""

import base64
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from medfm.figures import embedding_map_figure, figure_png
from medfm.robustness.card import render_robustness_card
from medfm.robustness.card_plots import errors_by_center_plot, ri_curve_plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input"}


def full_encoder(n=60, seed=0):
    rng = np.random.default_rng(seed)
    center = [f"C{i % 3}" for i in range(n)]
    bio = [str(i % 2) for i in range(n)]
    return {
        "robustness_index": 1.23456,
        "robustness_index_ci95": [1.1, 1.35],
        "robustness_index_normalized": 0.6123,
        "k": 10,
        "ri_curve": {5: 1.3, 10: 1.23456, 20: 1.15, 50: 1.05},
        "ri_curve_normalized": {5: 0.63, 10: 0.6123, 20: 0.58, 50: 0.55},
        "center_vs_bio": {
            "knn": {"center_accuracy": 0.912, "bio_accuracy": 0.745, "center_chance": 1 / 3},
            "linear": {"center_accuracy": 0.88, "bio_accuracy": 0.8},
        },
        "error_attribution": {
            "fraction": 0.425,
            "per_center": {"C0": 0.5, "C1": 0.3, "C2": 0.45},
            "n_errors": 40,
            "errors_per_center": {"C0": 14, "C1": 12, "C2": 14},
        },
        "apd": 0.0712,
        "embeddings": rng.normal(size=(n, 8)).tolist(),  # projected with pca_2d
        "bio": bio,
        "center": center,
    }


@pytest.fixture
def results():
    return {
        "title": "Robustness card: BreastMNIST, 3 virtual centers",
        "dataset": {
            "name": "breastmnist-semisynthetic",
            "n_samples": 60,
            "centers": {"C0": 20, "C1": 20, "C2": 20},
            "classes": {"0": 30, "1": 30},
            "center_class_counts": {"C0": {"0": 10, "1": 10}, "C1": {"0": 10, "1": 10}},
        },
        "chance": {"robustness_index": 1.5, "robustness_index_normalized": 0.667},
        "encoders": {
            "mae-vit-tiny": full_encoder(),
            "<b>x</b>": {"robustness_index": 0.8, "k": 10},  # optional keys missing
        },
    }


class StructureChecker(HTMLParser):
    """Records tags and checks that every non-void tag is closed in order."""

    def __init__(self):
        super().__init__()
        self.stack, self.tags, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def test_card_is_self_contained_valid_html_with_both_encoders(results, tmp_path):
    path = render_robustness_card(results, tmp_path / "sub" / "card.html")
    assert path == tmp_path / "sub" / "card.html" and path.is_file()
    assert not list(path.parent.glob(".*.tmp"))
    text = path.read_text(encoding="utf-8")

    assert "http://" not in text and "https://" not in text
    assert 'src="http' not in text and "<script" not in text and "<link" not in text
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    checker = StructureChecker()
    checker.feed(text)
    assert checker.errors == [] and checker.stack == []
    for tag in ("html", "head", "title", "style", "body", "table", "h1", "h2", "img"):
        assert tag in checker.tags

    # figures: RI curve, embedding maps and errors by center for the full encoder, all inline PNG
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 3
    assert all(base64.b64decode(b).startswith(PNG_MAGIC) for b in images)

    assert "mae-vit-tiny" in text
    assert "&lt;b&gt;x&lt;/b&gt;" in text and "<b>x</b>" not in text


def test_card_formats_numbers_and_cites_the_definitions(results, tmp_path):
    text = render_robustness_card(results, tmp_path / "card.html").read_text(encoding="utf-8")
    assert "1.23" in text and "[1.10, 1.35]" in text  # RI ratio with its CI
    assert "0.612" in text  # RI normalized
    assert "0.912 / 0.745" in text and "0.880 / 0.800" in text  # kNN and linear center / bio
    assert "42.5 %" in text and "7.1 %" in text  # error attribution, APD
    assert "0.80" in text  # the second encoder's RI
    assert re.search(r"chance \(random neighbours\)</td><td>1.50</td><td>0.667</td>", text)
    assert "biology dominates" in text and "center dominates (no CI)" in text
    assert "de Jong" in text and "2025" in text
    assert "PathoROB" in text and "Kömen" in text
    assert "ratio &gt; 1: biology dominates" in text.lower() and "0.5 is neutral" in text
    for count in ("breastmnist-semisynthetic", "C0", "C2", "60"):
        assert count in text


def test_card_tolerates_missing_optional_keys_and_non_finite_values(tmp_path):
    results = {
        "encoders": {
            "bare": {},
            "inf": {"robustness_index": float("inf"), "robustness_index_normalized": float("nan")},
        }
    }
    text = render_robustness_card(results, tmp_path / "card.html").read_text(encoding="utf-8")
    assert "Robustness card" in text and "bare" in text
    assert "∞" in text and "n/a" in text and "not computed" in text
    assert "data:image/png;base64," not in text

    empty = render_robustness_card({"encoders": {}}, tmp_path / "empty.html")
    assert "No encoders" in empty.read_text(encoding="utf-8")


def test_card_counts_dataset_from_encoder_labels_and_accepts_json_round_trip(results, tmp_path):
    del results["dataset"]
    round_tripped = json.loads(json.dumps(results))  # int keys of ri_curve become strings
    text = render_robustness_card(round_tripped, tmp_path / "card.html").read_text("utf-8")
    assert re.search(r"<dt>Samples</dt><dd>60</dd>", text)
    assert re.search(r"<dt>Centers</dt><dd>3</dd>", text)
    assert re.search(r"<dt>Classes</dt><dd>2</dd>", text)
    assert text.count("data:image/png;base64,") == 3


def test_card_rejects_results_without_encoders(tmp_path):
    with pytest.raises(ValueError, match="encoders"):
        render_robustness_card({"dataset": {}}, tmp_path / "card.html")


def test_card_names_the_encoder_whose_data_is_malformed(tmp_path):
    bad = {"encoders": {"enc1": {"embedding_2d": [[0, 0], [1, 1]], "bio": [0], "center": [0]}}}
    with pytest.raises(ValueError, match="enc1"):
        render_robustness_card(bad, tmp_path / "card.html")


def test_plots_return_png_bytes():
    for png in (
        ri_curve_plot({"5": 1.2, "10": float("inf")}, selected_k=10),
        figure_png(embedding_map_figure([[0, 0], [1, 0], [0, 1]], [0, 1, 0], ["a", "b", "b"])),
        errors_by_center_plot({"a": 0.2, "b": 0.6}, overall=0.4, counts={"a": 3}),
    ):
        assert isinstance(png, bytes) and png.startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="same length"):
        embedding_map_figure(np.zeros((3, 2)), bio=[0, 1], center=[0, 1, 2])
