"""Versioned binary serialization of per-key state: struct + array + zlib, never pickle.

Layout of a key blob (little endian)::

    b"MWK" | version (1 byte) | flags (1 byte: bit 0 = body is zlib-compressed) | body

    body = ints (struct ``_INTS``) | NF doubles | 8 uint64 SimHash ring | 256-byte Bloom filter

Version 3 (key-0.4 to key-0.8) had 61 doubles; version 4 (key-0.9 to key-0.13) appends the
change-point state, which a v3 blob decodes to zeros (a CUSUM that just restarted); version 5
(key-0.14) appends the last two conversations and the follow-up counts, which a v3 or v4 blob
decodes to zeros (no conversation seen yet). An upgrade keeps every key's history.

Decoding only parses numbers: it cannot execute anything. Anything that does not match the
layout exactly (magic, version, length, ranges, non-finite floats) raises ``ValueError``.
Compression pays for the many light keys whose Bloom filter and ring are mostly zeros; the
decompressor is bounded, so a crafted blob cannot inflate beyond the fixed body size.
"""

from __future__ import annotations

import math
import struct
import zlib
from array import array

from models import features as F
from models.keymodel import KeyState

__all__ = ["KEY_FORMAT_VERSION", "decode_key", "encode_key"]

KEY_FORMAT_VERSION = 7
_MAGIC = b"MWK"
# seq, events, last_min, mask, since_eval, ring_pos, bloom_n, bloom_gen, ep_seq, ep_sev,
# ep_det, ep_events, evals
_INTS = struct.Struct("<qqqQIBHBIBBII")
_BODY_LEN = _INTS.size + 8 * F.NF + 64 + 256
#: doubles per version this build reads; missing trailing doubles start at 0.0
_NF_OF = {3: 61, 4: 70, 5: 76, 6: 78, KEY_FORMAT_VERSION: F.NF}


def encode_key(ks: KeyState) -> bytes:
    """Serialize a key state (a few hundred bytes for most keys).

    Examples
    --------
    >>> ks = KeyState(); ks.events = 3; ks.seq = 17
    >>> blob = encode_key(ks)
    >>> len(blob) < 200, decode_key(blob).seq
    (True, 17)
    """
    body = (
        _INTS.pack(
            ks.seq,
            ks.events,
            ks.last_min,
            ks.mask,
            ks.since_eval,
            ks.ring_pos,
            ks.bloom_n,
            ks.bloom_gen,
            ks.ep_seq,
            ks.ep_sev,
            ks.ep_det,
            ks.ep_events,
            ks.evals,
        )
        + ks.f.tobytes()
        + ks.ring.tobytes()
        + bytes(ks.bloom)
    )
    packed = zlib.compress(body, 6)
    if len(packed) < len(body):
        return _MAGIC + bytes((KEY_FORMAT_VERSION, 1)) + packed
    return _MAGIC + bytes((KEY_FORMAT_VERSION, 0)) + body


def decode_key(blob: bytes) -> KeyState:
    """Parse a key blob written by :func:`encode_key`; ValueError on anything else."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ValueError(f"key state must be bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < 5 or blob[:3] != _MAGIC:
        raise ValueError("not a moatwatch key state (bad magic); drop it and let the key re-learn")
    version, flags = blob[3], blob[4]
    nf = _NF_OF.get(version)
    if nf is None:
        raise ValueError(
            f"key state format version {version} is not supported (expected one of "
            f"{sorted(_NF_OF)})"
        )
    body_len = _BODY_LEN - 8 * (F.NF - nf)
    if flags not in (0, 1):
        raise ValueError(f"key state has unknown flags {flags}")
    body = blob[5:]
    if flags == 1:
        d = zlib.decompressobj()
        try:
            body = d.decompress(body, body_len + 1)
        except zlib.error as exc:
            raise ValueError(f"key state is corrupt ({exc})") from None
        if not d.eof or d.unconsumed_tail or d.unused_data:
            raise ValueError("key state is corrupt (compressed body has the wrong size)")
    if len(body) != body_len:
        raise ValueError(f"key state body is {len(body)} bytes, expected {body_len}")
    (
        seq,
        events,
        last_min,
        mask,
        since_eval,
        ring_pos,
        bloom_n,
        bloom_gen,
        ep_seq,
        ep_sev,
        ep_det,
        ep_events,
        evals,
    ) = _INTS.unpack_from(body)
    if seq < -1 or events < 0 or ring_pos > 7 or bloom_gen > 1 or ep_sev > 3 or ep_det > 2:
        raise ValueError("key state holds out-of-range counters")
    off = _INTS.size
    f = array("d")
    f.frombytes(body[off : off + 8 * nf])
    for v in f:
        if not math.isfinite(v):
            raise ValueError("key state holds a non-finite number")
    if nf < F.NF:
        f.frombytes(bytes(8 * (F.NF - nf)))
    if nf <= F.F_CHANGE_REF:
        # Written before key-0.19: no level the key stood at before a change, so none of its
        # scores is a change until Page-Hinkley sets one (0.0 would make every score a rise).
        f[F.F_CHANGE_REF] = 1.0
    if nf <= F.F_FU_SW:
        # Written before key-0.25: the two conversation slots hold 1 + crc32 of the id alone;
        # shift it over the topic bits (no topics known) so the slots still match their turns.
        f[F.F_CONV0_H] *= 64.0
        f[F.F_CONV1_H] *= 64.0
    off += 8 * nf
    ring = array("Q")
    ring.frombytes(body[off : off + 64])
    off += 64
    ks = KeyState()
    ks.f = f
    ks.ring = ring
    ks.bloom = bytearray(body[off : off + 256])
    ks.seq = seq
    ks.events = events
    ks.last_min = last_min
    ks.mask = mask
    ks.since_eval = since_eval
    ks.ring_pos = ring_pos
    ks.bloom_n = bloom_n
    ks.bloom_gen = bloom_gen
    ks.ep_seq = ep_seq
    ks.ep_sev = ep_sev
    ks.ep_det = ep_det
    ks.ep_events = ep_events
    ks.evals = evals
    return ks
