"""Master keys: the key file, permissions, rotation, the environment, no secrets in reprs."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import stat
from pathlib import Path

import pytest

from keyvault.errors import KeyFileError, MasterKeyError, UnknownKeyError
from keyvault.masterkey import (
    ENV_MASTER_KEY,
    ENV_MASTER_KEY_PREVIOUS,
    MasterKey,
    MasterKeyring,
    create_master_key_file,
    generate_master_key,
    load_master_key_file,
    load_master_keyring,
    master_key_id,
    master_key_path,
    remove_master_key,
    rotate_master_key,
)

MATERIAL = bytes(range(32))
MATERIAL_B64 = base64.urlsafe_b64encode(MATERIAL).rstrip(b"=").decode()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- the key and the ring ------------------------------------------------------------------------


def test_id_is_derived_from_material() -> None:
    expected = hashlib.sha256(b"onegate keyvault master key id v1\x00" + MATERIAL).digest()[:4].hex()
    assert master_key_id(MATERIAL) == expected
    key = MasterKey(MATERIAL)
    assert key.key_id == expected
    assert key.id_bytes == bytes.fromhex(expected)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_key_size_is_checked(size: int) -> None:
    with pytest.raises(ValueError, match="exactly 32 bytes"):
        MasterKey(bytes(size))


def test_reprs_never_show_material() -> None:
    key = MasterKey(MATERIAL)
    ring = MasterKeyring([key], key.key_id)
    for text in (repr(key), str(key), repr(ring), str(ring)):
        assert MATERIAL_B64 not in text
        assert MATERIAL.hex() not in text
        assert key.key_id in text
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(key)


def test_key_equality_is_by_material() -> None:
    assert MasterKey(MATERIAL) == MasterKey(MATERIAL)
    assert MasterKey(MATERIAL) != MasterKey(bytes(32))
    assert len({MasterKey(MATERIAL), MasterKey(MATERIAL)}) == 1


def test_ring_lookup_and_validation() -> None:
    a, b = MasterKey(MATERIAL), MasterKey(bytes(32))
    ring = MasterKeyring([a, b], b.key_id)
    assert ring.active is b
    assert ring.ids == (a.key_id, b.key_id)
    assert ring.get(a.key_id) is a
    assert a.key_id in ring
    assert len(ring) == 2
    with pytest.raises(UnknownKeyError, match="00000000"):
        ring.get("00000000")
    with pytest.raises(MasterKeyError, match="twice"):
        MasterKeyring([a, MasterKey(MATERIAL)], a.key_id)
    with pytest.raises(MasterKeyError, match="not among"):
        MasterKeyring([a], b.key_id)
    with pytest.raises(MasterKeyError, match="no master keys"):
        MasterKeyring([], a.key_id)


# -- the key file --------------------------------------------------------------------------------


def test_create_key_file(tmp_path: Path) -> None:
    path = master_key_path(tmp_path)
    assert path == tmp_path / "keys" / "master.key"
    ring = create_master_key_file(path, clock=lambda: 1234.5)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    doc = json.loads(path.read_text())
    assert doc["format"] == 1
    assert doc["active"] == ring.active_id
    [entry] = doc["keys"]
    assert entry["id"] == ring.active_id
    assert entry["created_at"] == 1234.5
    assert base64.urlsafe_b64decode(entry["key"] + "=") == ring.active.material
    loaded = load_master_key_file(path)
    assert loaded.ids == ring.ids
    assert loaded.active == ring.active
    assert loaded.source == str(path)


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    path = master_key_path(tmp_path)
    first = create_master_key_file(path)
    with pytest.raises(KeyFileError, match="already exists"):
        create_master_key_file(path)
    assert load_master_key_file(path).active == first.active


@pytest.mark.parametrize("loose", [0o640, 0o644, 0o604])
def test_loose_permissions_are_refused_with_the_fix(tmp_path: Path, loose: int) -> None:
    path = master_key_path(tmp_path)
    create_master_key_file(path)
    path.chmod(loose)
    with pytest.raises(KeyFileError) as info:
        load_master_keyring(tmp_path, environ={})
    message = str(info.value)
    assert str(path) in message
    assert f"chmod 600 {path}" in message
    path.chmod(0o600)
    load_master_keyring(tmp_path, environ={})


def test_rotate_adds_and_activates_keeping_old(tmp_path: Path) -> None:
    path = master_key_path(tmp_path)
    first = create_master_key_file(path)
    new_id = rotate_master_key(path)
    ring = load_master_key_file(path)
    assert ring.active_id == new_id != first.active_id
    assert ring.ids == (first.active_id, new_id)
    assert mode(path) == 0o600
    third = rotate_master_key(path)
    assert load_master_key_file(path).ids == (first.active_id, new_id, third)
    assert sorted(p.name for p in path.parent.iterdir()) == [".master.key.lock", "master.key"]


def test_remove_old_key_but_never_the_active_one(tmp_path: Path) -> None:
    path = master_key_path(tmp_path)
    first = create_master_key_file(path).active_id
    second = rotate_master_key(path)
    with pytest.raises(MasterKeyError, match="is active"):
        remove_master_key(path, second)
    with pytest.raises(UnknownKeyError):
        remove_master_key(path, "00000000")
    remove_master_key(path, first)
    assert load_master_key_file(path).ids == (second,)


def test_rotate_detects_id_collision(tmp_path: Path) -> None:
    path = master_key_path(tmp_path)
    create_master_key_file(path, token_bytes=bytes)
    with pytest.raises(MasterKeyError, match="collides"):
        rotate_master_key(path, token_bytes=bytes)


def write_doc(path: Path, doc: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(json.dumps(doc))
    path.chmod(0o600)


def good_entry() -> dict[str, object]:
    return {"id": master_key_id(MATERIAL), "created_at": 1.0, "key": MATERIAL_B64}


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ([], "format"),
        ({"format": 2, "active": "x", "keys": []}, "format"),
        ({"format": 1, "keys": [good_entry()]}, "active"),
        ({"format": 1, "active": "x", "keys": []}, "non-empty"),
        ({"format": 1, "active": "x", "keys": ["nope"]}, r"keys\[0\] is not an object"),
        ({"format": 1, "active": "x", "keys": [{**good_entry(), "id": "XYZ"}]}, "8 hex digits"),
        ({"format": 1, "active": "x", "keys": [{**good_entry(), "created_at": "now"}]}, "number"),
        ({"format": 1, "active": "x", "keys": [{**good_entry(), "key": "c2hvcnQ"}]}, "32 bytes"),
        ({"format": 1, "active": "x", "keys": [{**good_entry(), "key": "a+b/"}]}, "base64url"),
        ({"format": 1, "active": "x", "keys": [{**good_entry(), "id": "00000000"}]}, "does not match"),
        ({"format": 1, "active": "00000000", "keys": [good_entry()]}, "not among"),
        ({"format": 1, "active": "x", "keys": [good_entry(), good_entry()]}, "twice"),
    ],
)
def test_malformed_key_files(tmp_path: Path, doc: object, match: str) -> None:
    path = master_key_path(tmp_path)
    write_doc(path, doc)
    with pytest.raises(KeyFileError, match=match):
        load_master_key_file(path)


def test_invalid_json_message_does_not_quote_content(tmp_path: Path) -> None:
    path = master_key_path(tmp_path)
    path.parent.mkdir(mode=0o700)
    path.write_text('{"key": "' + MATERIAL_B64 + '"')
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not valid JSON") as info:
        load_master_key_file(path)
    assert MATERIAL_B64 not in str(info.value)
    assert info.value.__cause__ is None


# -- the environment -----------------------------------------------------------------------------


def test_env_key_is_used_and_file_ignored(tmp_path: Path) -> None:
    path = master_key_path(tmp_path)
    create_master_key_file(path)
    path.chmod(0o644)  # would be refused if read
    ring = load_master_keyring(tmp_path, environ={ENV_MASTER_KEY: MATERIAL_B64})
    assert ring.ids == (master_key_id(MATERIAL),)
    assert ring.active.material == MATERIAL
    assert ENV_MASTER_KEY in ring.source


@pytest.mark.parametrize("spelling", [MATERIAL_B64, MATERIAL_B64 + "=", f"  {MATERIAL_B64}\n"])
def test_env_key_spellings(tmp_path: Path, spelling: str) -> None:
    ring = load_master_keyring(tmp_path, environ={ENV_MASTER_KEY: spelling})
    assert ring.active.material == MATERIAL


def test_env_previous_keys_unwrap_only(tmp_path: Path) -> None:
    old1, old2 = generate_master_key(), generate_master_key()
    ring = load_master_keyring(
        tmp_path, environ={ENV_MASTER_KEY: MATERIAL_B64, ENV_MASTER_KEY_PREVIOUS: f"{old1}, {old2},"}
    )
    assert ring.active_id == master_key_id(MATERIAL)
    assert len(ring) == 3
    assert ENV_MASTER_KEY_PREVIOUS in ring.source


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("not base64!", "not base64url"),
        (base64.b64encode(bytes([0xFB]) * 32).decode(), "not base64url"),  # standard alphabet '+/'
        ("c2hvcnQ", "exactly 32 bytes, got 5"),
        (base64.urlsafe_b64encode(bytes(48)).decode(), "exactly 32 bytes, got 48"),
        (MATERIAL_B64[:-1] + "R", "not canonical"),  # same bytes, non-zero padding bits
    ],
)
def test_env_key_is_validated_without_echoing_it(tmp_path: Path, value: str, match: str) -> None:
    with pytest.raises(MasterKeyError, match=match) as info:
        load_master_keyring(tmp_path, environ={ENV_MASTER_KEY: value})
    assert value.strip() not in str(info.value)
    assert ENV_MASTER_KEY in str(info.value)


def test_env_previous_is_validated(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError, match=f"{ENV_MASTER_KEY_PREVIOUS} item 2"):
        load_master_keyring(
            tmp_path,
            environ={ENV_MASTER_KEY: MATERIAL_B64, ENV_MASTER_KEY_PREVIOUS: f"{generate_master_key()},bad"},
        )


def test_previous_without_active_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError, match=f"{ENV_MASTER_KEY} is not"):
        load_master_keyring(tmp_path, environ={ENV_MASTER_KEY_PREVIOUS: MATERIAL_B64})


def test_empty_env_falls_back_to_the_file(tmp_path: Path) -> None:
    ring = create_master_key_file(master_key_path(tmp_path))
    assert load_master_keyring(tmp_path, environ={ENV_MASTER_KEY: "  "}).ids == ring.ids


def test_nothing_configured_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as info:
        load_master_keyring(tmp_path, environ={})
    assert ENV_MASTER_KEY in str(info.value)
    assert str(master_key_path(tmp_path)) in str(info.value)


def test_same_key_same_id_from_file_or_env(tmp_path: Path) -> None:
    ring = create_master_key_file(master_key_path(tmp_path))
    encoded = base64.urlsafe_b64encode(ring.active.material).decode()
    assert load_master_keyring(tmp_path / "other", environ={ENV_MASTER_KEY: encoded}).ids == ring.ids


def test_generate_master_key() -> None:
    text = generate_master_key()
    assert len(text) == 43
    assert "=" not in text
    assert len(base64.urlsafe_b64decode(text + "=")) == 32
    assert generate_master_key() != text
    assert generate_master_key(token_bytes=lambda n: MATERIAL[:n]) == MATERIAL_B64
