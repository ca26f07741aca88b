"""Tests for medfm.features.cache: computed once, memory-mapped, keyed by encoder and data."""

import os

import numpy as np

from medfm.features.cache import cached_features, feature_key


def test_features_are_computed_once_then_memory_mapped(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(12, dtype=np.float64).reshape(3, 4)

    first = cached_features(tmp_path, "k1", compute)
    again = cached_features(tmp_path, "k1", compute)
    assert len(calls) == 1 and isinstance(again, np.memmap) and again.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert [p.name for p in tmp_path.iterdir()] == ["k1.npy"]  # no temporary file left behind
    cached_features(None, "k1", compute)
    assert len(calls) == 2  # no cache folder: always computed


def test_key_changes_with_encoder_pooling_settings_and_image_files(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    paths = [str(image), f"{tmp_path / 'b.npz'}#train/0"]
    base = feature_key("enc1", "mean", {"image_size": 28}, paths)
    assert base == feature_key("enc1", "mean", {"image_size": 28}, paths)
    assert base != feature_key("enc2", "mean", {"image_size": 28}, paths)
    assert base != feature_key("enc1", "cls", {"image_size": 28}, paths)
    assert base != feature_key("enc1", "mean", {"image_size": 32}, paths)
    assert base != feature_key("enc1", "mean", {"image_size": 28}, paths[::-1])
    image.write_bytes(b"xy")
    os.utime(image, ns=(1, 1))
    assert base != feature_key("enc1", "mean", {"image_size": 28}, paths)
