"""Sealed pagination cursors: opaque to clients and to logs, tamper-evident, one listing each.

A cursor carries the last key a page showed (an id, or a patient id), encrypted and
authenticated with AES-GCM. The listing that issued it (and, for a batch's listings, the
batch) is bound in as associated data, so a cursor answers only where it came from. The
key is derived from ``RETINAQ_SECRET_KEY``; the embedded profile generates one under
``var_dir`` instead, shared by every process on that folder.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import struct
import uuid
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from common.settings import Settings

SECRET_KEY_FILE = "secret_key"
MIN_SECRET_LENGTH = 16
# Cursors are query parameters: anything much longer than ours is not ours.
MAX_CURSOR_LENGTH = 512
_VERSION = b"\x01"
_NONCE_BYTES = 12
_TAG_BYTES = 16
# Positions are padded to a multiple of this, so a cursor does not reveal a patient id's length.
_PAD_TO = 32
_PURPOSE = b"retinaq pagination cursors v1"


class InvalidCursor(ValueError):
    """A cursor this key did not seal for this listing: tampered, truncated, foreign or stale."""


class SecretKeyError(RuntimeError):
    """The secret that seals cursors is missing (production profile) or unusable."""


class CursorSealer:
    """Seals and opens cursors with one key; hold one per process."""

    def __init__(self, secret: bytes) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_PURPOSE).derive(secret)
        self._aead = AESGCM(key)

    def seal(self, position: bytes, listing: str, scope_id: uuid.UUID | None = None) -> str:
        """An opaque cursor after ``position`` that only ``listing`` (of ``scope_id``, the batch
        or, for the batches listing, the programme) opens."""
        if len(position) > 0xFFFF:
            raise ValueError("a cursor position is at most 65535 bytes")
        framed = struct.pack(">H", len(position)) + position
        framed += b"\0" * (-len(framed) % _PAD_TO)
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, framed, _context(listing, scope_id))
        return base64.urlsafe_b64encode(_VERSION + nonce + sealed).decode().rstrip("=")

    def open(self, cursor: str, listing: str, scope_id: uuid.UUID | None = None) -> bytes:
        """The position sealed in ``cursor``; :class:`InvalidCursor` for anything else."""
        if len(cursor) > MAX_CURSOR_LENGTH:
            raise InvalidCursor("too long")
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (ValueError, binascii.Error) as exc:
            raise InvalidCursor("not base64url") from exc
        # The decoder skips stray characters and ignores a last character's spare bits;
        # only the one spelling we issue is accepted, so an edited cursor never passes.
        if base64.urlsafe_b64encode(raw).decode().rstrip("=") != cursor:
            raise InvalidCursor("not base64url as issued")
        if len(raw) < 1 + _NONCE_BYTES + _TAG_BYTES or raw[:1] != _VERSION:
            raise InvalidCursor("not a cursor")
        nonce, sealed = raw[1 : 1 + _NONCE_BYTES], raw[1 + _NONCE_BYTES :]
        try:
            framed = self._aead.decrypt(nonce, sealed, _context(listing, scope_id))
        except InvalidTag as exc:
            raise InvalidCursor("not sealed by this key for this listing") from exc
        (length,) = struct.unpack(">H", framed[:2])
        if 2 + length > len(framed):
            raise InvalidCursor("bad framing")
        return framed[2 : 2 + length]


def _context(listing: str, scope_id: uuid.UUID | None) -> bytes:
    """Associated data: the cursor is authentic only for the listing (and batch) it names."""
    return _VERSION + f"{listing}\n{scope_id or ''}".encode()


def cursor_sealer(settings: Settings) -> CursorSealer:
    """The process's sealer, from the configured secret or the embedded profile's own."""
    if settings.secret_key is not None:
        secret = settings.secret_key.get_secret_value()
        if len(secret) < MIN_SECRET_LENGTH:
            raise SecretKeyError(
                f"RETINAQ_SECRET_KEY must be at least {MIN_SECRET_LENGTH} characters; "
                "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return CursorSealer(secret.encode())
    if not settings.is_embedded:
        raise SecretKeyError(
            "RETINAQ_SECRET_KEY is not set: every API process needs the same secret to seal "
            "pagination cursors; generate one with: "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return CursorSealer(embedded_secret(settings.var_dir).encode())


def embedded_secret(var_dir: Path) -> str:
    """The embedded profile's secret: ``var_dir/secret_key``, created once (0600).

    The file is written whole under a temporary name and then linked into place, which
    fails if it already exists: two processes starting together both end up reading the
    one that won, never a half-written file.
    """
    path = var_dir / SECRET_KEY_FILE
    if not path.exists():
        var_dir.mkdir(parents=True, exist_ok=True)
        temporary = var_dir / f".{SECRET_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(32) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            temporary.unlink(missing_ok=True)
    secret = path.read_text().strip()
    if len(secret) < MIN_SECRET_LENGTH:
        raise SecretKeyError(f"{path} holds no usable secret; delete it to make a new one")
    return secret
