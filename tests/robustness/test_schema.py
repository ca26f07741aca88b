"""robustness.json has exactly the shape documented in medfm.robustness.audit's docstring, as
:func:`run_audit` and the ``medfm robustness`` command write it (the demo's is checked by
tests/test_demo_e2e.py with :func:`check_results`)."""

import json
import math

import numpy as np

from medfm.cli.main import main
from medfm.robustness.audit import AuditData, run_audit

TOP = {"title", "dataset", "chance", "encoders"}
DATASET = {"n_samples", "n_centers", "n_classes", "centers", "classes"}
CHANCE = {"robustness_index", "robustness_index_normalized", "n"}
ENCODER = {
    "k",
    "n",
    "robustness_index",
    "robustness_index_ci95",
    "robustness_index_normalized",
    "robustness_index_normalized_ci95",
    "ri_curve",
    "ri_curve_normalized",
    "center_vs_bio",
    "error_attribution",
    "pairs",
    "apd",
    "leave_one_center_out",
}
HEAD = {"center_accuracy", "bio_accuracy", "center_chance", "bio_chance"}
ATTRIBUTION = {"fraction", "unsupported", "n_errors", "per_center", "errors_per_center"}
PAIRS = {"centers", "counts", "same_bio", "fractions", "expected"}
LOCO = {"auc", "accuracy", "n"}


def _is_number(value) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool)


def _matrix(value, n: int, kind: type) -> bool:
    return (
        len(value) == n
        and all(len(row) == n for row in value)
        and all(isinstance(x, kind) for row in value for x in row)
    )


def check_encoder(enc: dict, centers: list[str]) -> None:
    """Assert one ``encoders`` entry has the documented keys and types."""
    assert set(enc) == ENCODER
    assert isinstance(enc["k"], int) and isinstance(enc["n"], int)
    for key in ("robustness_index", "robustness_index_normalized"):
        assert isinstance(enc[key], float)
        lo, hi = enc[f"{key}_ci95"]
        assert isinstance(lo, float) and isinstance(hi, float) and lo <= hi
    for key in ("ri_curve", "ri_curve_normalized"):
        assert str(enc["k"]) in enc[key]
        assert all(k.isdigit() and isinstance(v, float) for k, v in enc[key].items())
    assert set(enc["center_vs_bio"]) == {"knn", "linear"}
    for head in enc["center_vs_bio"].values():
        assert set(head) == HEAD and all(isinstance(v, float) for v in head.values())
    attribution = enc["error_attribution"]
    assert set(attribution) == ATTRIBUTION and isinstance(attribution["n_errors"], int)
    assert set(attribution["per_center"]) == set(attribution["errors_per_center"]) == set(centers)
    assert all(isinstance(v, int) for v in attribution["errors_per_center"].values())
    pairs = enc["pairs"]
    assert set(pairs) == PAIRS and pairs["centers"] == centers
    for key, kind in (("counts", int), ("same_bio", int), ("fractions", float)):
        assert _matrix(pairs[key], len(centers), kind), key
    assert _matrix(pairs["expected"], len(centers), float)
    assert enc["apd"] is None or isinstance(enc["apd"], float)
    assert list(enc["leave_one_center_out"]) == centers
    for scores in enc["leave_one_center_out"].values():
        assert set(scores) == LOCO and isinstance(scores["n"], int)
        assert isinstance(scores["auc"], float) and isinstance(scores["accuracy"], float)


def check_results(results: dict) -> None:
    """Assert a loaded robustness.json has exactly the documented shape."""
    assert set(results) == TOP and isinstance(results["title"], str)
    dataset = results["dataset"]
    assert set(dataset) == DATASET
    assert all(isinstance(dataset[k], int) for k in ("n_samples", "n_centers", "n_classes"))
    assert sum(dataset["centers"].values()) == sum(dataset["classes"].values())
    assert sum(dataset["centers"].values()) == dataset["n_samples"]
    assert set(results["chance"]) == CHANCE
    assert all(_is_number(v) for v in results["chance"].values())
    centers = sorted(dataset["centers"])
    assert results["encoders"]
    for enc in results["encoders"].values():
        check_encoder(enc, centers)


def _datasets(n: int = 72) -> dict[str, AuditData]:
    """Two encoders' embeddings of ``n`` samples (2 classes, 3 centers, patients of 2): one
    separates the classes, the other the centers."""
    rng = np.random.default_rng(0)
    bio = np.array(["benign", "malignant"])[np.arange(n) % 2]
    center = np.array(["c0", "c1", "c2"])[(np.arange(n) // 2) % 3]
    patient = np.array([f"p{i // 2}" for i in range(n)])
    signal = {"bio": (bio == "malignant") * 3.0, "center": (center == "c1") * 3.0}
    return {
        name: AuditData(
            (rng.normal(size=(n, 8)) + s[:, None]).astype(np.float32), bio, center, patient
        )
        for name, s in signal.items()
    }


def test_a_real_audit_writes_exactly_the_documented_schema(tmp_path):
    n = 72
    returned = run_audit(_datasets(n), tmp_path, k=5, n_boot=20, title="schema")
    results = json.loads((tmp_path / "robustness.json").read_text())
    check_results(results)
    assert results["title"] == "schema" and list(results["encoders"]) == ["bio", "center"]
    assert results["dataset"]["centers"] == {"c0": 24, "c1": 24, "c2": 24}
    assert results["encoders"]["bio"]["k"] == 5 and results["encoders"]["bio"]["n"] == n
    assert math.isfinite(results["encoders"]["bio"]["robustness_index"])
    # the returned dict is the file's content, with int k keys
    assert set(returned["encoders"]["bio"]["ri_curve"]) == {5, 10, 20, 50}
    as_file = json.loads(json.dumps(returned))  # int keys become strings, as in the file
    assert json.dumps(as_file, sort_keys=True) == json.dumps(results, sort_keys=True)


def test_the_robustness_command_writes_the_same_schema(tmp_path):
    argv = ["robustness", "--out", str(tmp_path / "out"), "--k", "auto", "--bootstrap", "20"]
    for name, data in _datasets().items():
        path = tmp_path / f"{name}.npz"
        np.savez(
            path,
            embeddings=data.embeddings,
            label=data.bio,
            center=data.center,
            patient=data.groups,
        )
        argv += ["--embeddings", str(path)]
    assert main([*argv, "--no-tracking", "--no-progress"]) == 0
    results = json.loads((tmp_path / "out" / "robustness.json").read_text())
    check_results(results)
    assert list(results["encoders"]) == ["bio", "center"]
    assert results["encoders"]["bio"]["k"] in (5, 10, 20, 50)
