"""Key derivation: HMAC-SHA256(master, version (4 bytes BE) || client id). Vectors checked with
``printf '\\x00\\x00\\x00\\x01alice' | openssl dgst -sha256 -mac HMAC -macopt key:0123456789abcdef``."""

from __future__ import annotations

import pytest

from watermark.keys import KeyMaterialError, KeyRing, client_key, parse_master_secret, scheme_key

M = b"0123456789abcdef"


@pytest.mark.parametrize(
    ("master", "version", "client", "expected"),
    [
        (M, 1, "alice", "338d1d100df8d272fca0d1d25a06e612cf3ea32615d44406352808a0d7e58394"),
        (M, 2, "alice", "a7abcbf5c186b1fdf4b6037e444f808c75ab635f96fc82c4fd40f0d2412d98ab"),
        (M, 1, "bob", "fadd95cc9f50b17daf58bcd12377574f39667161ffde6bed580d035967747f17"),
        (bytes(range(32)), 1, "ü-client", "7b6f18f6b44d36ca8a8175d42f57b4f4483eec635a13fa354218354c7b51ac29"),
        (M, 1, "", "efa25bfb5b0b9bbb0f34b730995054d2f2aa6217cdba82758a1f87268932d700"),
    ],
)
def test_client_key_vectors(master: bytes, version: int, client: str, expected: str) -> None:
    assert client_key(master, version, client).hex() == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("0123456789abcdef\n", b"0123456789abcdef"),
        ("  hex:000102030405060708090a0b0c0d0e0f  ", bytes(range(16))),
        (b"0123456789abcdef0123\n", b"0123456789abcdef0123"),
    ],
)
def test_parse_master_secret(raw: str | bytes, expected: bytes) -> None:
    assert parse_master_secret(raw) == expected


@pytest.mark.parametrize("raw", ["short", "hex:0011", "hex:zz" * 10, "", b"123"])
def test_parse_master_secret_rejects(raw: str | bytes) -> None:
    with pytest.raises(KeyMaterialError):
        parse_master_secret(raw)


@pytest.mark.parametrize("version", [0, -1, 2**32])
def test_versions_out_of_range(version: int) -> None:
    with pytest.raises(KeyMaterialError):
        client_key(M, version, "a")
    with pytest.raises(KeyMaterialError):
        KeyRing(M, version)


def test_scheme_key_never_equals_a_client_key() -> None:
    # version 0 is reserved for scheme keys: the HMAC inputs differ in their first 4 bytes
    assert scheme_key(M, 1, "lexical/tuple") != client_key(M, 1, "lexical/tuple")
    assert scheme_key(M, 1, "x") != scheme_key(M, 2, "x")


def test_ring_versions_and_candidates() -> None:
    ring = KeyRing(M, current=3, retained=(1, 2, 3, 1))
    assert ring.versions == (3, 2, 1)
    keys = ring.candidates(["a", "b"])
    assert [(k.client_id, k.version) for k in keys] == [("a", 3), ("b", 3), ("a", 2), ("b", 2), ("a", 1), ("b", 1)]
    assert ring.key("a").version == 3
    assert ring.key("a", 1).key == client_key(M, 1, "a")
    assert ring.key("a").seed64 == int.from_bytes(client_key(M, 3, "a")[:8], "little")
    assert ring.key("a").key_id != ring.key("b").key_id and ring.key("a").key_id.startswith("v3-")
    with pytest.raises(KeyMaterialError):
        KeyRing(b"too short")


def test_candidate_keys_follow_recorded_versions() -> None:
    from watermark.verify import candidate_keys

    ring = KeyRing(M, current=2, retained=(1,))
    got = candidate_keys(ring, ["a", "b", "a", "c"], {"a": [1], "b": [1, 2], "c": [7]})
    assert [(k.client_id, k.version) for k in got] == [("b", 2), ("a", 1), ("b", 1)]
    assert all(k.key == client_key(M, k.version, k.client_id) for k in got)
    plain = candidate_keys(ring, ["a", "b", "a"])
    assert [(k.client_id, k.version) for k in plain] == [("a", 2), ("b", 2), ("a", 1), ("b", 1)]
