"""Key and shared state serialization: compact, exact round trip, garbage rejected."""

from __future__ import annotations

import os
import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # --import-mode=importlib
from detection_streams import mixed_stream  # noqa: E402

from models.codec import decode_key, encode_key  # noqa: E402
from models.engine import DetectionCore  # noqa: E402


@pytest.fixture(scope="module")
def core():
    c = DetectionCore()
    for i, e in enumerate(mixed_stream(seed=3, hours=1.0)):
        c.process(e, i)
    return c


def test_round_trip_is_exact(core):
    for k in sorted(core.keys):
        blob = core.export_key(k)
        again = encode_key(decode_key(blob))
        assert again == blob


def test_key_blobs_are_a_few_hundred_bytes(core):
    sizes = [len(core.export_key(k)) for k in core.keys]
    assert max(sizes) <= 900
    assert sorted(sizes)[len(sizes) // 2] <= 500


def test_shared_round_trip(core):
    blob = core.export_shared()
    other = DetectionCore()
    other.import_shared(blob)
    assert other.export_shared() == blob


def test_unknown_key_exports_none(core):
    assert core.export_key("nope") is None


@pytest.mark.parametrize(
    "blob",
    [
        b"",
        b"garbage",
        b"\x80\x04\x95pickle",  # a pickle header is just garbage here
        b"MWK\x02\x00" + bytes(600),
        b"MWK\x01\x07" + bytes(600),
        b"MWK\x01\x00" + bytes(10),
        b"MWK\x01\x01" + b"not zlib",
    ],
)
def test_import_key_rejects_garbage(blob):
    with pytest.raises(ValueError):
        DetectionCore().import_key("k", blob)


def test_import_key_rejects_non_finite_and_out_of_range(core):
    k = sorted(core.keys)[0]
    ks = decode_key(core.export_key(k))
    ks.f[3] = float("nan")
    with pytest.raises(ValueError):
        decode_key(encode_key(ks))
    ks = decode_key(core.export_key(k))
    ks.ep_sev = 9
    with pytest.raises(ValueError):
        decode_key(encode_key(ks))


def test_zlib_bomb_is_bounded():
    import zlib

    bomb = b"MWK\x01\x01" + zlib.compress(bytes(50_000_000))
    with pytest.raises(ValueError):
        decode_key(bomb)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_import_anything_never_crashes_otherwise(blob):
    core = DetectionCore()
    try:
        core.import_key("k", blob)
    except ValueError:
        assert not core.has_key("k")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000))
def test_import_shared_garbage_raises_value_error(blob):
    try:
        DetectionCore().import_shared(blob)
    except ValueError:
        pass


def test_truncated_and_bitflipped_real_blobs(core):
    rng = random.Random(0)
    blob = core.export_key(sorted(core.keys)[-1])
    for cut in range(0, len(blob), 7):
        try:
            decode_key(blob[:cut])
        except ValueError:
            pass
    for _ in range(200):
        b = bytearray(blob)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        try:
            decode_key(bytes(b))
        except ValueError:
            pass


def test_blob_of_an_older_layout_is_rejected():
    from models.codec import encode_key
    from models.keymodel import KeyState

    blob = bytearray(encode_key(KeyState()))
    blob[3] = 2  # the version byte follows the 3-byte magic; v2 (key-0.3) is not read
    with pytest.raises(ValueError, match="not supported"):
        decode_key(bytes(blob))
    blob[3] = 3  # v3 is read, but only with its own length
    with pytest.raises(ValueError, match="wrong size|bytes, expected"):
        decode_key(bytes(blob))


def test_v3_blob_keeps_the_keys_history_and_starts_its_change_points_at_zero():
    import zlib

    from models import features as Fm
    from models.codec import _INTS, encode_key
    from models.keymodel import KeyState

    ks = KeyState()
    ks.events, ks.seq = 40, 99
    for i in range(Fm.NF):
        ks.f[i] = 0.5 + i
    body = zlib.decompress(encode_key(ks)[5:])
    cut = _INTS.size + 8 * 61  # v3 ended its doubles at index 60 (F_RFAST)
    v3 = body[:cut] + body[_INTS.size + 8 * Fm.NF:]
    back = decode_key(b"MWK" + bytes((3, 0)) + v3)
    assert back.events == 40 and back.seq == 99
    assert list(back.f[:61]) == list(ks.f[:61])
    assert list(back.f[61 : Fm.F_CHANGE_REF]) == [0.0] * (Fm.F_CHANGE_REF - 61)
    assert back.f[Fm.F_CHANGE_REF] == 1.0  # no pre-change level yet (key-0.19)
    assert Fm.F_HCP == 61 and Fm.F_SCP + 3 == 70  # the change points are what v4 appended


@pytest.mark.parametrize("version, nf", [(3, 61), (4, 70), (5, 76), (6, 78)])
def test_older_blobs_start_the_conversation_state_empty(version, nf):
    """A v3/v4 blob (key-0.4 to key-0.13) decodes with no conversation seen and no follow-ups:
    the key keeps its history and its fabricated share starts at 0. A v5/v6 blob's two
    conversation slots (1 + crc32 of the id) move over the topic bits key-0.25 added (x 64, no
    topic known), so the key's next turn still matches its conversation."""
    import zlib

    from models import features as Fm
    from models.codec import _INTS, encode_key
    from models.keymodel import KeyState

    ks = KeyState()
    ks.events, ks.seq = 12, 7
    for i in range(Fm.NF):
        ks.f[i] = 1.5 + i
    body = zlib.decompress(encode_key(ks)[5:])
    old = body[: _INTS.size + 8 * nf] + body[_INTS.size + 8 * Fm.NF :]
    back = decode_key(b"MWK" + bytes((version, 0)) + old)
    slots = (Fm.F_CONV0_H, Fm.F_CONV1_H)
    assert [v for i, v in enumerate(back.f[:nf]) if i not in slots] == [
        v for i, v in enumerate(ks.f[:nf]) if i not in slots]
    if nf > Fm.F_CONV0_H:
        assert [back.f[i] for i in slots] == [64.0 * ks.f[i] for i in slots]
        assert back.f[Fm.F_FU_SW] == 0.0
    if nf < Fm.F_CONV0_H:
        assert list(back.f[Fm.F_CONV0_H : Fm.F_CHANGE]) == [0.0] * (Fm.F_CHANGE - Fm.F_CONV0_H)
        assert Fm.fabricated_share(back) == 0.0 and Fm.fabricated_share(ks) > 0.0
    # v5 and older (before key-0.19) have no level the key stood at before a change: 1.0, so
    # no score counts as a rise above it until Page-Hinkley sets one (0.0 would make all do)
    if nf <= Fm.F_CHANGE_REF:
        assert back.f[Fm.F_CHANGE] == 0.0 and back.f[Fm.F_CHANGE_REF] == 1.0
