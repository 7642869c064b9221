"""Field encryption for stored secrets: AES-256-GCM under a versioned keyring.

Why: OAuth tokens, broker API secrets and TOTP seeds must be usable by the server yet
useless in a database dump. Each ciphertext names its key id, so keys rotate by adding a new
primary and re-encrypting rows at leisure. The associated data binds a ciphertext to its
table/row/field, so copying one user's encrypted secret into another row fails to decrypt
instead of silently handing it over.

Token format: ``v1.<kid>.<nonce b64url>.<ciphertext+tag b64url>``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["KEY_BYTES", "Keyring", "VaultError", "aad_for", "generate_key"]

logger = logging.getLogger(__name__)

VERSION = "v1"
KEY_BYTES = 32
NONCE_BYTES = 12
_KID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_AAD_PART_RE = re.compile(r"^[^:]+$")


class VaultError(Exception):
    """Encryption/decryption or keyring failure. Messages never contain keys or plaintext."""


def generate_key() -> bytes:
    """32 fresh random bytes for AES-256."""
    return secrets.token_bytes(KEY_BYTES)


def aad_for(table: str, row_id: object, field: str) -> str:
    """Associated data binding a ciphertext to one column of one row: ``table:row_id:field``.

    Table and field may not contain ':' so the encoding is unambiguous whatever the row id.
    """
    for name, value in (("table", table), ("field", field)):
        if not isinstance(value, str) or not _AAD_PART_RE.match(value):
            raise ValueError(f"{name} must be a non-empty string without ':'")
    row = str(row_id)
    if not row:
        raise ValueError("row_id must not be empty")
    return f"{table}:{row}:{field}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _decode_key(kid: str, text: str) -> bytes:
    # Accept standard or urlsafe alphabet, with or without padding.
    normalized = text.strip().replace("-", "+").replace("_", "/")
    normalized += "=" * (-len(normalized) % 4)
    try:
        key = base64.b64decode(normalized, validate=True)
    except (binascii.Error, ValueError):
        raise VaultError(f"vault key {kid!r} is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise VaultError(f"vault key {kid!r} must be {KEY_BYTES} bytes, got {len(key)}")
    return key


def _new_kid() -> str:
    return "k" + secrets.token_hex(4)


class Keyring:
    """Ordered set of AES-256 keys; the first is the primary used for new ciphertexts."""

    __slots__ = ("_ciphers", "_keys", "_primary")

    def __init__(self, keys: Iterable[tuple[str, bytes]]) -> None:
        ordered: dict[str, bytes] = {}
        for kid, key in keys:
            if not _KID_RE.match(kid):
                raise VaultError(f"invalid vault key id {kid!r} (use [A-Za-z0-9_-], max 32)")
            if kid in ordered:
                raise VaultError(f"duplicate vault key id {kid!r}")
            if len(key) != KEY_BYTES:
                raise VaultError(f"vault key {kid!r} must be {KEY_BYTES} bytes")
            ordered[kid] = bytes(key)
        if not ordered:
            raise VaultError("keyring is empty")
        self._keys = ordered
        self._ciphers = {kid: AESGCM(key) for kid, key in ordered.items()}
        self._primary = next(iter(ordered))

    def __repr__(self) -> str:
        return f"Keyring(primary={self._primary!r}, kids={list(self._keys)!r})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would copy raw keys into caches/queues/logs; refuse.
        raise TypeError("Keyring cannot be pickled")

    @property
    def primary_kid(self) -> str:
        return self._primary

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def generate(cls, kid: str | None = None) -> Keyring:
        """A one-key keyring with a fresh random key."""
        return cls([(kid or _new_kid(), generate_key())])

    @classmethod
    def from_config(cls, spec: str) -> Keyring:
        """Parse ``"kid1:base64key,kid2:base64key"`` (primary first; commas or newlines)."""
        entries: list[tuple[str, bytes]] = []
        lines = (line for line in spec.splitlines() if not line.strip().startswith("#"))
        for raw in ",".join(lines).split(","):
            item = raw.strip()
            if not item:
                continue
            kid, sep, encoded = item.partition(":")
            kid = kid.strip()
            if not sep or not kid or not encoded.strip():
                raise VaultError("vault key entries must look like 'kid:base64key'")
            entries.append((kid, _decode_key(kid, encoded)))
        if not entries:
            raise VaultError("no vault keys configured")
        return cls(entries)

    def to_config(self) -> str:
        """Serialise back to the ``kid:base64key,...`` form. The result is SECRET."""
        return ",".join(
            f"{kid}:{base64.b64encode(key).decode('ascii')}" for kid, key in self._keys.items()
        )

    def with_new_primary(self, kid: str | None = None, key: bytes | None = None) -> Keyring:
        """A keyring whose new primary is ``key`` (fresh if None); old keys still decrypt."""
        new_kid = kid or _new_kid()
        return Keyring([(new_kid, key or generate_key()), *self._keys.items()])

    @classmethod
    def generate_file(cls, path: str | os.PathLike[str]) -> Keyring:
        """Create a key file (mode 0600) holding one fresh key; refuse to overwrite one.

        Written to a private temp file and hard-linked into place, so the file never exists
        with other permissions or half-written, and a concurrent creator cannot clobber it.
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        keyring = cls.generate()
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".vault-", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write("# TradeGraph vault keys: kid:base64key, primary first. SECRET.\n")
                fh.write(keyring.to_config().replace(",", "\n") + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, target)
            except FileExistsError:
                raise VaultError(f"vault key file {str(target)!r} already exists") from None
        finally:
            os.unlink(tmp)
        return keyring

    @classmethod
    def load_file(cls, path: str | os.PathLike[str]) -> Keyring:
        """Read a key file; warn if group/other can read it."""
        target = Path(path)
        mode = target.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning("vault key file %s is accessible by group/other; chmod 600 it", target)
        return cls.from_config(target.read_text(encoding="ascii"))

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> Keyring:
        """The embedded default: load the key file, creating it on first run."""
        target = Path(path)
        if not target.exists():
            try:
                return cls.generate_file(target)
            except VaultError:
                if not target.exists():  # not the "another process created it" race
                    raise
        return cls.load_file(target)

    # ---- encryption ---------------------------------------------------------------------

    @staticmethod
    def _aad(version: str, kid: str, aad: str) -> bytes:
        if not isinstance(aad, str) or not aad:
            raise VaultError("associated data (aad) is required")
        return f"{version}|{kid}|{aad}".encode()

    def encrypt(self, plaintext: bytes | str, aad: str) -> str:
        """Encrypt under the primary key with a fresh random 96-bit nonce."""
        data = plaintext.encode("utf-8") if isinstance(plaintext, str) else bytes(plaintext)
        kid = self._primary
        nonce = os.urandom(NONCE_BYTES)
        ct = self._ciphers[kid].encrypt(nonce, data, self._aad(VERSION, kid, aad))
        return f"{VERSION}.{kid}.{_b64url(nonce)}.{_b64url(ct)}"

    @staticmethod
    def _parse(token: str) -> tuple[str, bytes, bytes]:
        if not isinstance(token, str):
            raise VaultError("vault token must be a string")
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != VERSION:
            raise VaultError("malformed vault token (expected v1.<kid>.<nonce>.<ciphertext>)")
        _, kid, nonce_text, ct_text = parts
        if not _KID_RE.match(kid):
            raise VaultError("malformed vault token (bad key id)")
        try:
            nonce, ct = _unb64url(nonce_text), _unb64url(ct_text)
        except (binascii.Error, ValueError):
            raise VaultError("malformed vault token (bad base64)") from None
        if len(nonce) != NONCE_BYTES or len(ct) < 16:
            raise VaultError("malformed vault token (bad nonce or ciphertext length)")
        return kid, nonce, ct

    def key_id(self, token: str) -> str:
        """The key id a token was encrypted under."""
        return self._parse(token)[0]

    def decrypt(self, token: str, aad: str) -> bytes:
        """Decrypt, checking integrity and that ``aad`` is the one it was encrypted with."""
        kid, nonce, ct = self._parse(token)
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise VaultError(f"unknown vault key id {kid!r}: is the keyring missing a key?")
        try:
            return cipher.decrypt(nonce, ct, self._aad(VERSION, kid, aad))
        except InvalidTag:
            raise VaultError(
                f"vault decryption failed for {aad!r}: ciphertext was tampered with or "
                "belongs to another row/field"
            ) from None

    def decrypt_text(self, token: str, aad: str) -> str:
        """``decrypt`` for values that were encrypted from a str."""
        try:
            return self.decrypt(token, aad).decode("utf-8")
        except UnicodeDecodeError:
            raise VaultError(f"vault value for {aad!r} is not UTF-8 text") from None

    def needs_rotation(self, token: str) -> bool:
        """True when the token is not under the current primary key."""
        return self._parse(token)[0] != self._primary

    def reencrypt(self, token: str, aad: str) -> str:
        """Decrypt and encrypt again under the primary key (always with a fresh nonce)."""
        return self.encrypt(self.decrypt(token, aad), aad)
