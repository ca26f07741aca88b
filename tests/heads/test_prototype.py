"""Tests for medfm.heads.prototype: cosine prototypes, centring and TEEN calibration."""

import math

import numpy as np
import pytest

from medfm.heads.prototype import PrototypeHead, teen_calibrate

# ------------------------------------------------------------------- prototypes, by hand

# Class "a": (1, 0), (3, 0) -> mean (2, 0) -> prototype (1, 0).
# Class "b": (0, 2), (2, 2) -> mean (1, 2) -> prototype (1, 2) / sqrt 5.
X_HAND = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
Y_HAND = np.array(["a", "a", "b", "b"])


def test_prototype_probabilities_match_hand_computed_cosine_softmax():
    head = PrototypeHead(temperature=0.5, center=False).fit(X_HAND, Y_HAND)
    np.testing.assert_allclose(head.prototypes_, [[1, 0], [1 / math.sqrt(5), 2 / math.sqrt(5)]])
    # query (1, 1): cos to "a" = 1/sqrt 2, cos to "b" = 3/sqrt 10; query (2, 0): 1 and 1/sqrt 5
    for query, (cos_a, cos_b) in [
        ([1.0, 1.0], (1 / math.sqrt(2), 3 / math.sqrt(10))),
        ([2.0, 0.0], (1.0, 1 / math.sqrt(5))),
    ]:
        e_a, e_b = math.exp(cos_a / 0.5), math.exp(cos_b / 0.5)
        expected = [[e_a / (e_a + e_b), e_b / (e_a + e_b)]]
        np.testing.assert_allclose(head.predict_proba([query]), expected, rtol=1e-12)
        # the query's length does not matter
        np.testing.assert_allclose(head.predict_proba([np.multiply(query, 7)]), expected)
    assert list(head.classes_) == ["a", "b"]
    assert head.predict([[1.0, 1.0], [2.0, 0.0]]).tolist() == ["b", "a"]
    assert not head.is_novel_.any()


def test_prototype_with_every_class_in_base_classes_is_not_calibrated():
    plain = PrototypeHead(center=False).fit(X_HAND, Y_HAND)
    all_base = PrototypeHead(center=False).fit(X_HAND, Y_HAND, base_classes=["a", "b"])
    np.testing.assert_array_equal(all_base.prototypes_, plain.prototypes_)


# -------------------------------------------------------------------------- TEEN calibration

# Base "a" along e1, base "b" along e2, novel "n" with mean direction (1, 0, 1) / sqrt 2:
# cos(n, a) = 1/sqrt 2, cos(n, b) = 0.
X_TEEN = np.array([[2.0, 0, 0], [4.0, 0, 0], [0, 1.0, 0], [0, 3.0, 0], [1.0, 0, 1.0]])
Y_TEEN = np.array(["a", "a", "b", "b", "n"])


def test_teen_calibration_equals_the_formula_on_a_tiny_case():
    alpha, tau = 0.6, 4.0
    head = PrototypeHead(alpha=alpha, tau=tau, center=False).fit(
        X_TEEN, Y_TEEN, base_classes=["a", "b"]
    )
    assert head.is_novel_.tolist() == [False, False, True]
    p_a, p_b, p_n = np.eye(3)[0], np.eye(3)[1], np.array([1.0, 0, 1.0]) / math.sqrt(2)
    w_a, w_b = math.exp(tau / math.sqrt(2)), math.exp(0.0)
    w_a, w_b = w_a / (w_a + w_b), w_b / (w_a + w_b)
    calibrated = alpha * p_n + (1 - alpha) * (w_a * p_a + w_b * p_b)
    np.testing.assert_allclose(head.prototypes_[2], calibrated / np.linalg.norm(calibrated))
    np.testing.assert_allclose(head.prototypes_[:2], [p_a, p_b])  # base prototypes unchanged
    # the pure function, before renormalisation
    raw = teen_calibrate(np.stack([p_a, p_b, p_n]), head.is_novel_, alpha, tau)
    np.testing.assert_allclose(raw[2], calibrated)


def test_teen_moves_a_novel_prototype_toward_the_similar_base_prototype():
    uncalibrated = PrototypeHead(center=False).fit(X_TEEN, Y_TEEN).prototypes_
    head = PrototypeHead(alpha=0.5, tau=16.0, center=False).fit(
        X_TEEN, Y_TEEN, base_classes=["a", "b"]
    )
    before, after = uncalibrated[2], head.prototypes_[2]
    assert after @ head.prototypes_[0] > before @ uncalibrated[0] + 0.1  # toward "a" (similar)
    assert after @ head.prototypes_[1] < 0.01  # hardly toward "b" (orthogonal)
    # alpha = 1 keeps the novel prototype as it was
    kept = (
        PrototypeHead(alpha=1.0, center=False)
        .fit(X_TEEN, Y_TEEN, base_classes=["a", "b"])
        .prototypes_
    )
    np.testing.assert_allclose(kept, uncalibrated)


def test_prototype_base_classes_must_name_training_labels():
    with pytest.raises(ValueError, match=r"base_classes \['z'\] have no training samples"):
        PrototypeHead(center=False).fit(X_TEEN, Y_TEEN, base_classes=["a", "z"])
    with pytest.raises(ValueError, match="base_classes is empty"):
        PrototypeHead(center=False).fit(X_TEEN, Y_TEEN, base_classes=[])


def test_centred_prototypes_are_unit_class_means_minus_the_training_mean():
    X = np.array([[11.0, 10.0], [13.0, 10.0], [10.0, 12.0], [10.0, 14.0]])
    y = np.array(["a", "a", "b", "b"])
    head = PrototypeHead().fit(X, y)
    # training mean (11, 11.5); class means (12, 10) and (10, 13) -> (1, -1.5) and (-1, 1.5)
    d = np.array([1.0, -1.5]) / np.hypot(1.0, 1.5)
    np.testing.assert_allclose(head.prototypes_, [d, -d], rtol=1e-12)
    # a query at the class-"a" side of the mean goes to "a" although it is closer in angle to "b"
    # before centring
    assert head.predict([[12.5, 10.5]]).tolist() == ["a"]
