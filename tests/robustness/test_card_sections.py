"""Tests for medfm.robustness.card_sections: escaping, number formatting and the readings."""

from medfm.robustness.card_sections import (
    dataset_summary,
    escape,
    section_encoder,
    section_guide,
    section_table,
)


def test_escape_and_non_finite_numbers_in_the_table():
    html = section_table(
        {"<i>enc</i>": {"robustness_index": float("inf"), "robustness_index_normalized": None}}
    )
    assert escape("<i>") == "&lt;i&gt;" and "&lt;i&gt;enc&lt;/i&gt;" in html
    assert "∞" in html and "—" in html


def test_the_reading_follows_the_confidence_interval():
    def reading(ci):
        return section_encoder(0, "e", {"robustness_index": 1.2, "robustness_index_ci95": ci})

    assert "biology dominates" in reading([1.05, 1.3])
    assert "center dominates" in reading([0.7, 0.95])
    assert "inconclusive" in reading([0.9, 1.3])


def test_dataset_summary_counts_from_the_encoder_labels():
    results = {"encoders": {"e": {"center": ["a", "a", "b"], "bio": [0, 1, 1]}}}
    assert dataset_summary(results) == {
        "centers": {"a": 2, "b": 1},
        "classes": {"0": 1, "1": 2},
        "n_samples": 3,
    }


def test_the_guide_reads_the_maps_class_left_center_right_and_cites_both_papers():
    guide = section_guide()
    assert "coloured by class (left) and by center (right)" in guide
    assert "de Jong" in guide and "PathoROB" in guide
