"""AES-256-GCM keyring: round trip, binding, tampering, rotation, key files, no leaks."""

from __future__ import annotations

import base64
import os
import pickle
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tradegraph.security.vault import Keyring, VaultError, aad_for, generate_key

KEY1 = bytes(range(32))
KEY2 = bytes(range(100, 132))
B64_1 = base64.b64encode(KEY1).decode()
B64_2 = base64.b64encode(KEY2).decode()
AAD = aad_for("broker_links", 17, "access_token")
SECRET_TEXT = "deriv-oauth-token-SUPER-SECRET-123"


def _ring1() -> Keyring:
    return Keyring([("k1", KEY1)])


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _secrets_absent(text: str) -> None:
    for needle in (SECRET_TEXT, B64_1, B64_2, KEY1.hex(), KEY2.hex(), repr(KEY1), repr(KEY2)):
        assert needle not in text


def test_round_trip_bytes_and_str() -> None:
    ring = _ring1()
    token = ring.encrypt(SECRET_TEXT, AAD)
    assert ring.decrypt(token, AAD) == SECRET_TEXT.encode()
    assert ring.decrypt_text(token, AAD) == SECRET_TEXT
    blob = bytes(range(256))
    assert ring.decrypt(ring.encrypt(blob, AAD), AAD) == blob
    assert ring.decrypt(ring.encrypt(b"", AAD), AAD) == b""


def test_token_format_and_fresh_nonce() -> None:
    ring = _ring1()
    tokens = [ring.encrypt(SECRET_TEXT, AAD) for _ in range(20)]
    nonces = set()
    for token in tokens:
        version, kid, nonce, ct = token.split(".")
        assert (version, kid) == ("v1", "k1")
        assert len(_b64d(nonce)) == 12
        assert len(_b64d(ct)) == len(SECRET_TEXT) + 16  # GCM tag
        assert SECRET_TEXT not in token
        nonces.add(nonce)
    assert len(nonces) == 20
    assert ring.key_id(tokens[0]) == "k1"


def test_wrong_aad_fails_with_clear_error() -> None:
    ring = _ring1()
    token = ring.encrypt(SECRET_TEXT, AAD)
    other_row = aad_for("broker_links", 18, "access_token")
    with pytest.raises(VaultError, match="another row/field") as info:
        ring.decrypt(token, other_row)
    assert "broker_links:18:access_token" in str(info.value)
    _secrets_absent(str(info.value) + repr(info.value))
    with pytest.raises(VaultError):
        ring.decrypt(token, aad_for("broker_links", 17, "refresh_token"))
    with pytest.raises(VaultError, match="aad"):
        ring.decrypt(token, "")


@pytest.mark.parametrize("part", [2, 3])
def test_tampering_is_detected(part: int) -> None:
    ring = _ring1()
    pieces = ring.encrypt(SECRET_TEXT, AAD).split(".")
    raw = bytearray(_b64d(pieces[part]))
    raw[0] ^= 0x01
    pieces[part] = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    with pytest.raises(VaultError, match="tampered") as info:
        ring.decrypt(".".join(pieces), AAD)
    _secrets_absent(str(info.value))


def test_swapping_key_id_between_known_keys_fails() -> None:
    ring = Keyring([("k1", KEY1), ("k2", KEY2)])
    token = ring.encrypt(SECRET_TEXT, AAD)
    with pytest.raises(VaultError):
        ring.decrypt(token.replace("v1.k1.", "v1.k2.", 1), AAD)


def test_unknown_key_id() -> None:
    token = Keyring([("k9", KEY2)]).encrypt(SECRET_TEXT, AAD)
    with pytest.raises(VaultError, match="unknown vault key id 'k9'"):
        _ring1().decrypt(token, AAD)


@pytest.mark.parametrize(
    "token",
    ["", "v1", "v1.k1.AAAA", "v2.k1.AAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAA", "v1.k!.a.b",
     "v1.k1.***.AAAA", "v1.k1.AAAA.AAAAAAAAAAAAAAAAAAAAAA", "v1.k1.AAAAAAAAAAAAAAAA.AAAA"],
)  # fmt: skip
def test_malformed_tokens(token: str) -> None:
    with pytest.raises(VaultError, match="malformed"):
        _ring1().decrypt(token, AAD)
    with pytest.raises(VaultError):
        _ring1().needs_rotation(token)


def test_rotation_with_two_keys() -> None:
    old = Keyring.from_config(f"k1:{B64_1}")
    token_old = old.encrypt(SECRET_TEXT, AAD)

    new = Keyring.from_config(f"k2:{B64_2},k1:{B64_1}")
    assert new.primary_kid == "k2" and new.kids == ("k2", "k1")
    assert new.needs_rotation(token_old)
    assert new.decrypt_text(token_old, AAD) == SECRET_TEXT

    rotated = new.reencrypt(token_old, AAD)
    assert rotated.startswith("v1.k2.")
    assert not new.needs_rotation(rotated)
    assert new.decrypt_text(rotated, AAD) == SECRET_TEXT
    assert new.reencrypt(rotated, AAD) != rotated  # fresh nonce every time
    # Once rotated, the old key can be dropped from the ring.
    assert Keyring.from_config(f"k2:{B64_2}").decrypt_text(rotated, AAD) == SECRET_TEXT
    with pytest.raises(VaultError, match="unknown"):
        old.decrypt(rotated, AAD)
    # Re-encrypting keeps the binding: it needs the right aad.
    with pytest.raises(VaultError):
        new.reencrypt(token_old, aad_for("users", 1, "totp_secret"))


def test_with_new_primary_and_to_config_round_trip() -> None:
    ring = _ring1().with_new_primary("k2")
    assert ring.kids == ("k2", "k1")
    again = Keyring.from_config(ring.to_config())
    token = ring.encrypt(SECRET_TEXT, AAD)
    assert again.decrypt_text(token, AAD) == SECRET_TEXT
    with pytest.raises(VaultError, match="duplicate"):
        ring.with_new_primary("k1")


def test_from_config_accepts_spacing_urlsafe_and_unpadded() -> None:
    urlsafe = base64.urlsafe_b64encode(KEY2).decode().rstrip("=")
    ring = Keyring.from_config(f"  k1 : {B64_1} ,\n k2:{urlsafe} ,")
    assert ring.kids == ("k1", "k2")
    # The unpadded urlsafe spelling decodes to the very same key bytes.
    assert ring.decrypt(Keyring([("k2", KEY2)]).encrypt(b"a", AAD), AAD) == b"a"


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("", "no vault keys"),
        ("k1", "kid:base64key"),
        (f":{B64_1}", "kid:base64key"),
        ("k1:!!notbase64!!", "not valid base64"),
        (f"k1:{base64.b64encode(KEY1[:16]).decode()}", "32 bytes"),
        (f"k1:{B64_1},k1:{B64_2}", "duplicate"),
        (f"bad.kid:{B64_1}", "invalid vault key id"),
    ],
)
def test_from_config_errors_do_not_leak_keys(spec: str, match: str) -> None:
    with pytest.raises(VaultError, match=match) as info:
        Keyring.from_config(spec)
    _secrets_absent(str(info.value) + repr(info.value))


def test_repr_and_pickle_do_not_expose_keys() -> None:
    ring = Keyring([("k1", KEY1), ("k2", KEY2)])
    text = repr(ring) + str(ring) + repr([ring])
    assert "k1" in repr(ring) and "k2" in repr(ring)
    _secrets_absent(text)
    with pytest.raises(TypeError):
        pickle.dumps(ring)


def test_keyring_validation() -> None:
    with pytest.raises(VaultError, match="empty"):
        Keyring([])
    with pytest.raises(VaultError, match="32 bytes"):
        Keyring([("k1", b"short")])
    assert len(generate_key()) == 32 and generate_key() != generate_key()
    assert len(Keyring.generate().kids) == 1


def test_aad_for() -> None:
    assert aad_for("users", 5, "totp_secret") == "users:5:totp_secret"
    assert aad_for("t", "a:b", "f") == "t:a:b:f"  # row id may contain ':'
    for table, row, field in [("a:b", 1, "f"), ("t", 1, "a:b"), ("", 1, "f"), ("t", "", "f")]:
        with pytest.raises(ValueError):
            aad_for(table, row, field)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("permissive_umask")
def test_generate_file_mode_0600_and_no_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "vault.keys"
    ring = Keyring.generate_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(path.parent.iterdir()) == [path]  # temp file cleaned up
    token = ring.encrypt(SECRET_TEXT, AAD)
    assert Keyring.load_file(path).decrypt_text(token, AAD) == SECRET_TEXT
    before = path.read_bytes()
    with pytest.raises(VaultError, match="already exists"):
        Keyring.generate_file(path)
    assert path.read_bytes() == before


def test_load_or_create_creates_once_then_loads(tmp_path: Path) -> None:
    path = tmp_path / "vault.keys"
    first = Keyring.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = Keyring.load_or_create(path)
    assert second.kids == first.kids
    token = first.encrypt(SECRET_TEXT, AAD)
    assert second.decrypt_text(token, AAD) == SECRET_TEXT


def test_load_file_warns_on_loose_permissions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "vault.keys"
    path.write_text(f"# comment\nk1:{B64_1}\n")
    path.chmod(0o644)
    ring = Keyring.load_file(path)
    assert ring.kids == ("k1",)
    assert "chmod 600" in caplog.text
    _secrets_absent(caplog.text)


def test_decrypt_text_rejects_non_utf8() -> None:
    ring = _ring1()
    with pytest.raises(VaultError, match="UTF-8"):
        ring.decrypt_text(ring.encrypt(b"\xff\xfe", AAD), AAD)
