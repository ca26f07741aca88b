"""Tests for medfm.data.ingestion.pseudonym: keyed pseudonyms and where the salt comes from."""

from __future__ import annotations

import hashlib
import hmac
import re
import stat

import pytest

from medfm.data.ingestion.pseudonym import SALT_ENV, SALT_FILE, pseudonymize, resolve_salt


def test_pseudonymize_is_deterministic_and_formatted():
    first = pseudonymize("MRN1234567", b"salt")
    assert first == pseudonymize("MRN1234567", b"salt")
    assert re.fullmatch(r"p-[0-9a-f]{16}", first)
    expected = hmac.new(b"salt", b"MRN1234567", hashlib.sha256).hexdigest()[:16]
    assert first == f"p-{expected}"


def test_pseudonymize_prefix_and_whitespace():
    assert re.fullmatch(r"pat-[0-9a-f]{16}", pseudonymize("A", b"s", "pat"))
    assert pseudonymize("  A ", b"s", "pat") == pseudonymize("A", b"s", "pat")
    assert pseudonymize("A", b"s", "pat")[4:] == pseudonymize("A", b"s", "st")[3:]


def test_pseudonymize_differs_by_salt_and_value():
    assert pseudonymize("MRN1", b"salt-a") != pseudonymize("MRN1", b"salt-b")
    assert pseudonymize("MRN1", b"salt-a") != pseudonymize("MRN2", b"salt-a")


@pytest.mark.parametrize("value", ["", "   ", None])
def test_pseudonymize_empty_stays_empty(value):
    assert pseudonymize(value, b"salt") == ""


def test_explicit_salt_wins_over_env_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv(SALT_ENV, "from-env")
    (tmp_path / SALT_FILE).parent.mkdir()
    (tmp_path / SALT_FILE).write_text("from-file")
    assert resolve_salt(tmp_path, "explicit") == b"explicit"


def test_env_salt_wins_over_file_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(SALT_ENV, "from-env")
    assert resolve_salt(tmp_path / "out") == b"from-env"
    assert not (tmp_path / "out").exists()
    (tmp_path / SALT_FILE).parent.mkdir()
    (tmp_path / SALT_FILE).write_text("from-file")
    assert resolve_salt(tmp_path) == b"from-env"


def test_existing_salt_file_is_used(tmp_path, monkeypatch):
    monkeypatch.delenv(SALT_ENV, raising=False)
    (tmp_path / SALT_FILE).parent.mkdir()
    (tmp_path / SALT_FILE).write_text("from-file\n")
    assert resolve_salt(tmp_path) == b"from-file"


def test_new_salt_file_is_created_private_and_reused(tmp_path, monkeypatch):
    monkeypatch.delenv(SALT_ENV, raising=False)
    out = tmp_path / "run"
    first = resolve_salt(out)
    path = out / SALT_FILE
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert re.fullmatch(rb"[0-9a-f]{64}", first)
    content = path.read_bytes()
    assert resolve_salt(out) == first
    assert path.read_bytes() == content
    # Another folder gets its own random salt.
    assert resolve_salt(tmp_path / "other") != first
