"""tficlib.baselines: classic codecs through imagecodecs, real byte counts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from tficlib import baselines as B
from tficlib import metrics as M

AVAILABLE = [k for k, ok in B.available().items() if ok]


def _text_line(text: str, seed: int) -> np.ndarray:
    """A 64x256 synthetic text line (dark text on a light, slightly noisy background)."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (256, 64), tuple(int(v) for v in rng.integers(200, 250, 3)))
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", 24)
    except OSError:
        font = ImageFont.load_default()
    ImageDraw.Draw(img).text((6, 16), text, fill=(20, 20, 30), font=font)
    a = np.asarray(img).astype(int) + rng.normal(0, 4, (64, 256, 3)).astype(int)
    return np.clip(a, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def lines():
    return [_text_line("Quick brown fox 42", 0), _text_line("Meeting at 10:30", 1)]


def test_all_five_codecs_are_known():
    assert set(B.CODECS) == {"jpeg", "webp", "avif", "jpegxl", "jpeg2000"}
    for key, c in B.CODECS.items():
        assert list(c.qualities) == sorted(c.qualities), key
        if key in AVAILABLE:
            assert B.skip_note(key) is None
        else:
            assert "skipped" in B.skip_note(key)


def test_unknown_codec():
    with pytest.raises(ValueError, match="unknown codec 'png'"):
        B.encode("png", np.zeros((8, 8, 3), np.uint8), 50)


@pytest.mark.parametrize("codec", AVAILABLE)
def test_round_trip_shape_and_bytes(codec, lines):
    data = B.encode(codec, lines[0], B.CODECS[codec].qualities[3])
    assert isinstance(data, bytes) and len(data) > 0
    out = B.decode(codec, data)
    assert out.shape == (64, 256, 3) and out.dtype == np.uint8
    assert M.psnr(B.to_float([lines[0]]), B.to_float([out])) > 15.0
    gray = B.decode(codec, B.encode(codec, lines[0][:, :, 0], B.CODECS[codec].qualities[3]))
    assert gray.shape == (64, 256, 3)


@pytest.mark.parametrize("codec", AVAILABLE)
def test_sweep_monotone_real_bytes(codec, lines):
    res = B.sweep(codec, lines)
    assert res.qualities == list(B.CODECS[codec].qualities)
    assert len(res.bpp) == len(res.qualities) == len(res.num_bytes) == len(res.reconstructions)
    # monotone quality -> monotone (non-decreasing) rate, end to end strictly increasing
    assert all(b2 >= b1 for b1, b2 in zip(res.bpp, res.bpp[1:])), res.bpp
    assert res.bpp[-1] > res.bpp[0]
    # the rate is the real byte count of the encoded stream
    for k, q in enumerate(res.qualities[:2]):
        sizes = [len(B.encode(codec, a, q)) for a in lines]
        assert res.num_bytes[k] == sizes
        assert res.bpp[k] == pytest.approx(np.mean([M.bpp(n, 64, 256) for n in sizes]))
    assert res.reconstructions[0].shape == (2, 64, 256, 3)
    assert res.as_float(0).shape == (2, 3, 64, 256)
    # the grid spans the codec's low-rate end up to well above 0.5 bpp on a 64x256 line
    assert res.bpp[0] < 0.45 and res.bpp[-1] > 0.5
    assert 0 < res.floor_bpp <= res.bpp[0]
    entry = res.methods_entry()
    assert len(entry["bpp"]) == len(entry["quality"])


def test_sweep_accepts_float_tensors(lines):
    codec = AVAILABLE[0]
    x = B.to_float(lines)
    assert x.shape == (2, 3, 64, 256) and float(x.max()) <= 1.0
    assert B.to_uint8(x)[0].tolist() == lines[0].tolist()  # exact uint8 round trip
    res = B.sweep(codec, x, qualities=[B.CODECS[codec].qualities[-1]], keep=False)
    assert res.reconstructions == [] and len(res.bpp) == 1


def test_rate_floor_is_the_header_size():
    for codec in AVAILABLE:
        floor = B.rate_floor(codec, 64, 256)
        assert floor["bpp"] == pytest.approx(8 * floor["bytes"] / (64 * 256))
        assert 0 < floor["bytes"] < 1000
    floors = B.rate_floors(64, 256)
    assert set(floors) == set(B.CODECS)
    assert all(("bytes" in f) == (k in AVAILABLE) for k, f in floors.items())


def test_bad_images():
    codec = AVAILABLE[0]
    with pytest.raises(TypeError, match="must be uint8"):
        B.encode(codec, np.zeros((8, 8, 3), np.float32), 50)
    with pytest.raises(ValueError, match=r"\(H,W,3\)"):
        B.encode(codec, np.zeros((8, 8, 2), np.uint8), 50)
