"""Fuzzing the .tfic decoder (issue 7): mutated valid streams end in TficFormatError, never
a crash, a hang or a garbage image; arbitrary bytes behind a valid checksum never get past
the strict parser with anything but TficFormatError.  Bounded: derandomized, at most
200 examples per property, 2 s per example."""

from __future__ import annotations

import struct
import zlib

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tficlib import codec  # noqa: E402
from tficlib.codec import TficFormatError  # noqa: E402

FUZZ = settings(max_examples=200, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

torch.manual_seed(0)
MODEL = codec.build_model("bmshj2018-hyperprior", 16, 16)
MODEL.update(force=True)
MODEL.eval()
IMAGE = torch.rand(1, 3, 40, 70, generator=torch.Generator().manual_seed(0))
VALID = codec.compress(MODEL, IMAGE, label="mse_1")
REFERENCE = codec.decompress(MODEL, VALID)

flip = st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 7))
truncate = st.tuples(st.just("truncate"), st.integers(0, 10_000))
insert = st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=16))
delete = st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 16))
overwrite = st.tuples(st.just("overwrite"), st.integers(0, 10_000), st.integers(0, 255))
mutation = st.one_of(flip, truncate, insert, delete, overwrite)


def _mutate(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for op in ops:
        pos = op[1] % (len(b) + 1)
        if op[0] == "flip" and b:
            b[pos % len(b)] ^= 1 << op[2]
        elif op[0] == "truncate":
            del b[pos:]
        elif op[0] == "insert":
            b[pos:pos] = op[2]
        elif op[0] == "delete":
            del b[pos:pos + op[2]]
        elif op[0] == "overwrite" and b:
            b[pos % len(b)] = op[2]
    return bytes(b)


@FUZZ
@given(st.lists(mutation, min_size=1, max_size=3))
def test_mutated_streams_are_rejected(ops):
    data = _mutate(VALID, ops)
    try:
        x_hat = codec.decompress(MODEL, data)
    except TficFormatError:
        assert data != VALID
        return
    # only a mutation that gave back the very same bytes may decode (the checksum sees the rest)
    assert data == VALID
    assert torch.equal(x_hat, REFERENCE)


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes(data):
    with pytest.raises(TficFormatError):
        codec.read_header(data)


@FUZZ
@given(st.binary(max_size=120))
def test_arbitrary_body_behind_valid_checksum(body):
    """The parser itself is bounds-checked: a forged checksum does not help."""
    data = codec.MAGIC + bytes([codec.FORMAT_VERSION]) + struct.pack("<I", zlib.crc32(body)) + body
    try:
        h = codec.read_header(data)
    except TficFormatError:
        return
    assert h.total_bytes == len(data) and 1 <= h.height <= codec.MAX_SIDE


@FUZZ
@given(st.integers(9, len(VALID) - 1), st.integers(0, 255))
def test_header_mutations_behind_valid_checksum(pos, value):
    """One byte anywhere changed and the checksum recomputed (a forged stream): TficFormatError,
    or a stream that still parses (another label, image size, or entropy-coded bytes) and
    decodes to an image of the declared size; never any other exception or a crash."""
    b = bytearray(VALID)
    b[pos] = value
    body = bytes(b[9:])
    data = VALID[:5] + struct.pack("<I", zlib.crc32(body)) + body
    try:
        h = codec.read_header(data)
    except TficFormatError:
        return
    if h.string_lengths != codec.read_header(VALID).string_lengths:
        return  # string boundaries moved: forged input for the entropy decoder, not run here
    try:
        x_hat = codec.decompress(MODEL, data)
    except TficFormatError:
        return
    assert x_hat.shape == (1, 3, h.height, h.width)
