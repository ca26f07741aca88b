"""``medfm robustness`` end to end: on embeddings files and on a manifest embedded by a timm
encoder from a local weights file; JSON, card, comparison of encoders."""

import json
import math

import numpy as np
import pytest

from medfm.cli.main import main
from medfm.robustness.audit import AuditData, run_audit
from medfm.robustness.index import robustness_index


def _clustered(by: str, seed: int = 0, n_per: int = 12):
    """4 classes x 3 centers; embeddings cluster by ``by`` ("bio" or "center")."""
    rng = np.random.default_rng(seed)
    bio = np.repeat(np.arange(4), 3 * n_per) % 4
    center = np.tile(np.repeat(np.arange(3), n_per), 4)
    key = bio if by == "bio" else center
    means = rng.normal(size=(4, 16)) * 5
    emb = means[key] + rng.normal(size=(len(bio), 16))
    patient = np.arange(len(bio)) // 2  # pairs of samples share a patient
    return emb.astype(np.float32), bio.astype(str), np.array([f"c{c}" for c in center]), patient


def test_run_audit_ranks_a_biology_encoder_above_a_center_encoder(tmp_path):
    datasets = {}
    for by in ("bio", "center"):
        emb, bio, center, patient = _clustered(by)
        datasets[f"by_{by}"] = AuditData(emb, bio, center, patient.astype(str))
    results = run_audit(datasets, tmp_path, k=5, n_boot=50)
    good, bad = results["encoders"]["by_bio"], results["encoders"]["by_center"]
    assert good["robustness_index"] > 1 > bad["robustness_index"]
    assert good["robustness_index_normalized"] > 0.5 > bad["robustness_index_normalized"]
    lo, hi = good["robustness_index_ci95"]
    assert lo <= good["robustness_index"] <= hi
    cvb = bad["center_vs_bio"]["linear"]
    assert cvb["center_accuracy"] > cvb["bio_accuracy"]
    assert good["center_vs_bio"]["knn"]["bio_accuracy"] == pytest.approx(1.0)
    assert sorted(good["ri_curve"]) == [5, 10, 20, 50]
    emb, bio, center, patient = _clustered("bio")
    for variant, key in (
        ("ratio", "robustness_index"),
        ("normalized", "robustness_index_normalized"),
    ):
        direct = robustness_index(
            emb, bio, center, k=5, variant=variant, groups=patient.astype(str)
        )
        assert good[key] == pytest.approx(direct, rel=1e-12)
    assert good["ri_curve"][5] == good["robustness_index"]
    saved = json.loads((tmp_path / "robustness.json").read_text())
    assert saved["encoders"]["by_bio"]["k"] == 5
    html = (tmp_path / "report.html").read_text()
    assert "by_bio" in html and "by_center" in html and "data:image/png;base64," in html


def test_results_are_written_before_anything_is_logged(tmp_path):
    """A tracking call that fails after the audit cannot cost its results: robustness.json and
    the card are on disk before the first metric or artifact is logged."""
    from medfm.tracking.base import NullLogger

    class FailingLogger(NullLogger):
        def log_metrics(self, metrics, step=None):
            assert (tmp_path / "robustness.json").is_file()
            assert (tmp_path / "report.html").is_file()
            raise ConnectionError("tracking server gone")

    emb, bio, center, patient = _clustered("bio")
    data = {"enc": AuditData(emb, bio, center, patient.astype(str))}
    with pytest.raises(ConnectionError, match="tracking server gone"):
        run_audit(data, tmp_path, k=5, n_boot=10, logger=FailingLogger())
    saved = json.loads((tmp_path / "robustness.json").read_text())
    assert saved["encoders"]["enc"]["robustness_index"] > 1


def test_cli_on_embeddings_files(tmp_path, capsys):
    for by in ("bio", "center"):
        emb, bio, center, patient = _clustered(by, seed=1)
        np.savez(tmp_path / f"{by}.npz", embeddings=emb, label=bio, site=center, patient=patient)
    code = main(
        [
            "robustness",
            "--embeddings",
            str(tmp_path / "bio.npz"),
            "--embeddings",
            str(tmp_path / "center.npz"),
            "--center-column",
            "site",
            "--k",
            "auto",
            "--bootstrap",
            "20",
            "--out",
            str(tmp_path / "out"),
            "--no-tracking",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "bio: RI" in out and "center: RI" in out
    results = json.loads((tmp_path / "out" / "robustness.json").read_text())
    assert results["encoders"]["bio"]["k"] in (5, 10, 20, 50)
    assert main(["robustness", "--out", str(tmp_path / "x"), "--no-tracking"]) == 2
    assert "--embeddings" in capsys.readouterr().err
    with pytest.raises(ValueError, match="column 'center' not found"):
        main(
            [
                "robustness",
                "--embeddings",
                str(tmp_path / "bio.npz"),
                "--out",
                str(tmp_path / "y"),
                "--no-tracking",
            ]
        )


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from medfm.data.ingestion.ingest import ingest
    from medfm.data.synthetic import SyntheticSpec, write_dataset

    root = tmp_path_factory.mktemp("audit")
    labels = write_dataset(root / "d", SyntheticSpec(cases_per_center=4, images_per_case=2))
    return ingest([root / "d" / "raw"], root / "i", labels=labels, salt="s", progress=False)


def test_cli_audits_a_timm_encoder_from_a_local_weights_file(manifest, tmp_path, capsys):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    name = "vit_tiny_patch16_224"
    source = timm.create_model(name, pretrained=False, num_classes=0, img_size=32, in_chans=1)
    weights = tmp_path / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    out = tmp_path / "out"
    argv = ["robustness", "--encoder", f"timm:{name}", "--weights", str(weights)]
    argv += ["--data", str(manifest.manifest), "--image-size", "32", "--out", str(out)]
    argv += ["--no-tracking", "--no-progress", "robustness.k=5", "eval.bootstrap=20"]
    assert main(argv) == 0
    assert f"timm:{name}: RI" in capsys.readouterr().out
    results = json.loads((out / "robustness.json").read_text())
    assert list(results["encoders"]) == [f"timm:{name}"]
    enc = results["encoders"][f"timm:{name}"]
    assert enc["k"] == 5  # from the robustness.k override
    assert enc["n"] == results["dataset"]["n_samples"] == 24  # 3 centers x 4 patients x 2
    assert results["dataset"]["n_centers"] == 3
    assert math.isfinite(enc["robustness_index"]) and enc["robustness_index"] > 0
    assert 0 <= enc["robustness_index_normalized"] <= 1
    lo, hi = enc["robustness_index_ci95"]
    assert lo <= enc["robustness_index"] <= hi
    assert sorted(int(k) for k in enc["ri_curve"]) == [5, 10, 20]  # 22 neighbours outside a patient
    assert (out / "report.html").is_file() and len(list((out / "feature_cache").iterdir())) == 1
    # an option beats the override; the cached features are reused
    assert main([*argv[:-2], "--k", "3", "--bootstrap", "10", "--out", str(tmp_path / "o2")]) == 0
    again = json.loads((tmp_path / "o2" / "robustness.json").read_text())
    assert again["encoders"][f"timm:{name}"]["k"] == 3


def test_cli_refuses_a_timm_encoder_without_weights(manifest, tmp_path):
    argv = ["robustness", "--encoder", "timm:vit_tiny_patch16_224", "--data"]
    argv += [str(manifest.manifest), "--out", str(tmp_path), "--no-tracking"]
    with pytest.raises(ValueError, match="needs local weights"):
        main(argv)
