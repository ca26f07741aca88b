"""Tests for medfm.robustness.inputs: audit data from columns and .npz files, weights per spec,
encoder names."""

import numpy as np
import pytest

from medfm.robustness.inputs import AuditData, audit_data_from_npz, encoder_name, weights_for


def test_from_columns_keeps_rows_with_a_class_and_a_center():
    columns = {
        "label": ["a", "", "b", "a"],
        "center": ["x", "y", "", "y"],
        "patient": ["p1", "p2", "p3", "p4"],
    }
    data = AuditData.from_columns(np.arange(8).reshape(4, 2), columns, "label", "center", "patient")
    np.testing.assert_array_equal(data.embeddings, [[0, 1], [6, 7]])
    assert data.embeddings.dtype == np.float32
    assert data.bio.tolist() == ["a", "a"] and data.center.tolist() == ["x", "y"]
    assert data.groups.tolist() == ["p1", "p4"]
    assert AuditData.from_columns(np.zeros((4, 2)), columns, "label", "center", None).groups is None
    with pytest.raises(ValueError, match=r"column 'site' not found; available: \['center'"):
        AuditData.from_columns(np.zeros((4, 2)), columns, "label", "site", None)


def test_audit_data_from_npz(tmp_path):
    np.savez(tmp_path / "enc.npz", embeddings=np.eye(3), label=["a", "b", "a"], center=[1, 2, 2])
    data = audit_data_from_npz([tmp_path / "enc.npz"], "label", "center", None)["enc"]
    assert data.center.tolist() == ["1", "2", "2"]
    np.savez(tmp_path / "bad.npz", features=np.eye(3))
    with pytest.raises(ValueError, match="no 'embeddings' array"):
        audit_data_from_npz([tmp_path / "bad.npz"], "label", "center", None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        audit_data_from_npz([tmp_path / "none.npz"], "label", "center", None)


def test_weights_for_a_spec():
    assert weights_for("timm:vit_small", "w.safetensors") == "w.safetensors"
    assert weights_for("runs/mae", "w.safetensors") is None  # a run brings its own weights
    assert weights_for("timm:a", {"timm:a": "a.st", "timm:b": "b.st"}) == "a.st"
    assert weights_for("timm:c", {"timm:a": "a.st"}) is None
    assert weights_for("timm:a", None) is None


def test_encoder_names(tmp_path):
    run = tmp_path / "mae_run"
    run.mkdir()
    (run / "encoder.safetensors").write_bytes(b"")
    assert encoder_name(str(run)) == "mae_run"
    assert encoder_name(f"random:{run}") == "random:mae_run"
    assert encoder_name(str(run / "encoder.safetensors")) == "mae_run"
    assert encoder_name("timm:vit_tiny_patch16_224@/w/x.safetensors") == "timm:vit_tiny_patch16_224"
    assert encoder_name("random:vit_tiny") == "random:vit_tiny"
