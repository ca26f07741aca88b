"""Keyed pseudonyms (HMAC-SHA256) for patient, study and series identifiers.

The salt comes from ``$MEDFM_PSEUDONYM_SALT``, or from a config value; without either, a random
salt is created and stored as ``OUT/private/pseudonym_salt.key`` (folder 0700, file 0600), beside
the private source map, and a warning says so. The salt is a re-identification key like that map
(with it, pseudonyms of guessed identifiers can be recomputed), so it stays at the site. The same
salt always gives the same pseudonyms, so datasets ingested in separate runs can be joined.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

SALT_ENV = "MEDFM_PSEUDONYM_SALT"
SALT_FILE = Path("private") / "pseudonym_salt.key"
_OLD_SALT_FILE = "pseudonym_salt.key"  # where releases before 0.2 kept it
log = logging.getLogger(__name__)


def resolve_salt(out_dir: str | os.PathLike, salt: str | None = None) -> bytes:
    """Return the salt to use: ``salt`` argument, else the environment, else the stored/new file."""
    if salt:
        return salt.encode()
    if os.environ.get(SALT_ENV):
        return os.environ[SALT_ENV].encode()
    path, old = Path(out_dir) / SALT_FILE, Path(out_dir) / _OLD_SALT_FILE
    if path.is_file():
        return path.read_bytes().strip()
    if old.is_file():
        log.warning("%s is a re-identification key: move it to %s (owner-only)", old, path)
        return old.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)  # never world-readable
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    log.warning(
        "No pseudonym salt given (set $%s); created a random one at %s. Keep it to "
        "reproduce these pseudonyms, and keep it at the site.",
        SALT_ENV,
        path,
    )
    return path.read_bytes().strip()


def pseudonymize(value: str, salt: bytes, prefix: str = "p") -> str:
    """``prefix-<16 hex chars>``: an HMAC-SHA256 of ``value`` under ``salt``; empty stays empty."""
    if value is None or str(value).strip() == "":
        return ""
    digest = hmac.new(salt, str(value).strip().encode(), hashlib.sha256).hexdigest()
    return f"{prefix}-{digest[:16]}"
