"""Classic-codec baselines through imagecodecs: JPEG, WebP (lossy), AVIF, JPEG XL, JPEG 2000.

Each codec is swept over its own quality knob (:data:`CODECS`), and the rate of
every point is the mean **real** bits per pixel, ``8·len(encoded bytes) / (H·W)``
(:func:`tficlib.metrics.bpp`), over the images.  Encoder settings are chosen to
give each codec its smallest files, so that the baselines are fair:

==========  ======================  =====================================================
key         knob (higher = better)  settings
==========  ======================  =====================================================
jpeg        quality 1..100          libjpeg(-turbo), 4:2:0, ``optimize=True`` (optimal Huffman tables)
webp        quality 0..100          libwebp lossy, ``method=6`` (slowest, smallest)
avif        quality 0..100          libavif (AV1), ``speed=6``
jpegxl      quality 0..100          libjxl, ``effort=7`` (quality 0 = distance 25, the coarsest)
jpeg2000    target PSNR in dB       OpenJPEG, raw J2K codestream (no JP2 boxes); the knob is
                                    the quality layer's PSNR target, not a 0..100 scale
==========  ======================  =====================================================

**Rate floors.**  Every format spends a fixed number of bytes on headers
(markers, quantization and Huffman tables, container boxes) before any image
data; on a 64×256 text line (16 384 pixels) every 100 bytes cost 0.049 bpp.
:func:`rate_floor` measures a codec's floor as the size of a flat mid-gray image
at its coarsest setting — the price of the headers and an (almost) empty
payload.  Measured at 64×256 (imagecodecs 2026.1.14): JPEG 377 B = 0.184 bpp
(quantization and Huffman tables), WebP 86 B = 0.042, AVIF 305 B = 0.149,
JPEG XL 67 B = 0.033, JPEG 2000 161 B = 0.079 bpp.  Text lines cost more at the
coarsest setting (trdg lines of the ``cpu`` profile: JPEG 0.32, WebP 0.24, AVIF
0.25, JPEG XL 0.35, JPEG 2000 0.11 bpp on average), so below about 0.25 bpp
only JPEG 2000 is on the plot.

Codecs the installed imagecodecs lacks are reported by :func:`available` and
:func:`skip_note`; :func:`encode` raises :class:`CodecUnavailable` for them.
Images are ``uint8`` H×W×3 RGB arrays (H×W grayscale is replicated to RGB), or
float tensors (N,3,H,W) in [0, 1] for :func:`sweep`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .metrics import bpp as _bpp

__all__ = [
    "CODECS",
    "Codec",
    "CodecUnavailable",
    "SweepResult",
    "available",
    "decode",
    "encode",
    "rate_floor",
    "rate_floors",
    "skip_note",
    "sweep",
    "to_float",
    "to_uint8",
]


class CodecUnavailable(RuntimeError):
    """The installed imagecodecs has no working encoder/decoder for this codec."""


@dataclass(frozen=True)
class Codec:
    """One classic codec: its imagecodecs functions, knob and default quality grid."""

    key: str
    label: str
    flag: str  # imagecodecs.<flag>.available
    encoder: str
    decoder: str
    knob: str
    qualities: tuple[int, ...]  # default grid, increasing quality
    options: dict = field(default_factory=dict)


#: Default grids: each codec's coarsest setting up to about 1 bpp on the 64×256 trdg text lines of
#: the ``cpu`` profile (measured: JPEG 0.32–1.15, WebP 0.24–1.28, AVIF 0.25–1.2, JPEG XL 0.35–1.1,
#: JPEG 2000 0.11–1.08 bpp), denser at the low-rate end where the learned codecs live.
CODECS: dict[str, Codec] = {
    c.key: c
    for c in (
        Codec("jpeg", "JPEG", "JPEG8", "jpeg8_encode", "jpeg8_decode", "quality 1..100",
              (1, 3, 5, 8, 10, 15, 20, 25, 30, 40), {"optimize": True}),
        Codec("webp", "WebP", "WEBP", "webp_encode", "webp_decode", "quality 0..100",
              (0, 2, 5, 10, 15, 20, 30, 40, 50, 60), {"lossless": False, "method": 6}),
        Codec("avif", "AVIF", "AVIF", "avif_encode", "avif_decode", "quality 0..100",
              (0, 5, 10, 15, 20, 25, 30, 35, 40, 50), {"speed": 6, "numthreads": 1}),
        Codec("jpegxl", "JPEG XL", "JPEGXL", "jpegxl_encode", "jpegxl_decode", "quality 0..100",
              (0, 5, 10, 15, 20, 25, 30, 40, 50, 60), {"effort": 7}),
        Codec("jpeg2000", "JPEG 2000", "JPEG2K", "jpeg2k_encode", "jpeg2k_decode", "target PSNR (dB)",
              (16, 17, 18, 19, 20, 22, 24, 26, 28, 30), {"codecformat": "j2k"}),
    )
}


def _codec(key: str) -> Codec:
    try:
        return CODECS[key]
    except KeyError:
        raise ValueError(f"unknown codec {key!r}; classic codecs are: {', '.join(CODECS)}") from None


@functools.lru_cache(maxsize=1)
def _available() -> tuple[tuple[str, bool], ...]:
    import imagecodecs

    result = []
    for key, c in CODECS.items():
        flag = getattr(imagecodecs, c.flag, None)  # a stub class with available=False when missing
        result.append((key, getattr(flag, "available", False) is True))
    return tuple(result)


def available() -> dict[str, bool]:
    """Which classic codecs the installed imagecodecs can encode and decode (``<FLAG>.available``)."""
    return dict(_available())


def skip_note(key: str) -> str | None:
    """``None`` if the codec is available, else a sentence saying why it is skipped."""
    c = _codec(key)
    if available()[key]:
        return None
    import imagecodecs

    return (f"{c.label} skipped: imagecodecs {imagecodecs.__version__} was built without "
            f"{c.flag} (imagecodecs.{c.flag}.available is False)")


def _check_uint8(image) -> np.ndarray:
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise TypeError(f"image must be uint8 (H,W,3); got dtype {a.dtype} (use to_uint8 for floats)")
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"image must be (H,W,3) or (H,W) uint8, got shape {a.shape}")
    return np.ascontiguousarray(a)


def encode(codec: str, image, quality: float) -> bytes:
    """Encode a uint8 H×W×3 image with ``codec`` at ``quality`` (the codec's knob); the real bytes."""
    c = _codec(codec)
    note = skip_note(codec)
    if note:
        raise CodecUnavailable(note)
    import imagecodecs

    a = _check_uint8(image)
    level = int(round(float(quality)))
    return bytes(getattr(imagecodecs, c.encoder)(a, level=level, **c.options))


def decode(codec: str, data: bytes) -> np.ndarray:
    """Decode ``data`` written by :func:`encode`; a uint8 H×W×3 array."""
    c = _codec(codec)
    note = skip_note(codec)
    if note:
        raise CodecUnavailable(note)
    import imagecodecs

    out = np.asarray(getattr(imagecodecs, c.decoder)(bytes(data)))
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    if out.ndim == 3 and out.shape[2] == 4:  # an opaque alpha channel some decoders add
        out = out[:, :, :3]
    if out.dtype != np.uint8:
        raise ValueError(f"{c.label} decoded to {out.dtype}, expected uint8")
    return np.ascontiguousarray(out)


def to_uint8(images) -> list[np.ndarray]:
    """Float tensor (N,3,H,W)/(3,H,W) in [0,1] or uint8 arrays → list of uint8 H×W×3 arrays."""
    import torch

    if isinstance(images, torch.Tensor):
        x = images.detach().to("cpu", torch.float32)
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (N,3,H,W) float images, got shape {tuple(x.shape)}")
        arr = (x.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return [np.ascontiguousarray(a) for a in arr]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return [_check_uint8(a) for a in images]
    if isinstance(images, np.ndarray):
        return [_check_uint8(images)]
    return [_check_uint8(a) for a in images]


def to_float(images: np.ndarray | Sequence[np.ndarray]):
    """uint8 (N,H,W,3) / list of H×W×3 → float tensor (N,3,H,W) in [0,1]."""
    import torch

    arr = np.stack([_check_uint8(a) for a in images]) if not (
        isinstance(images, np.ndarray) and images.ndim == 4) else images
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div(255.0)


@dataclass
class SweepResult:
    """One codec swept over a quality grid.

    ``bpp[k]`` is the mean real bpp at ``qualities[k]``; ``num_bytes[k][i]`` the
    byte count of image ``i`` (``len`` of its encoded bytes);
    ``reconstructions[k]`` the decoded images as uint8 (N,H,W,3) (a list of
    H×W×3 arrays if the images differ in size; empty when ``keep=False``).
    ``floor_bpp``: :func:`rate_floor` at the images' size.
    """

    codec: str
    qualities: list
    bpp: list[float]
    num_bytes: list[list[int]]
    reconstructions: list[np.ndarray]
    floor_bpp: float

    def as_float(self, k: int):
        """Reconstructions at quality index ``k`` as a float tensor (N,3,H,W) in [0,1]."""
        if not self.reconstructions:
            raise ValueError("reconstructions were not kept (sweep(..., keep=False))")
        return to_float(self.reconstructions[k])

    def methods_entry(self) -> dict:
        """The ``results.json`` method entry (lists aligned by rate point)."""
        return {"description": f"{CODECS[self.codec].label} via imagecodecs, {CODECS[self.codec].knob} "
                               f"{list(self.qualities)}",
                "quality": list(self.qualities), "bpp": list(self.bpp), "floor_bpp": self.floor_bpp}


def sweep(codec: str, images, qualities: Sequence[float] | None = None, keep: bool = True,
          progress: bool = False) -> SweepResult:
    """Encode and decode every image at every quality; mean real bpp per quality.

    ``images``: float tensor (N,3,H,W) in [0,1] or uint8 H×W×3 arrays (one size
    or several).  ``qualities`` defaults to the codec's grid in :data:`CODECS`.
    """
    c = _codec(codec)
    note = skip_note(codec)
    if note:
        raise CodecUnavailable(note)
    qualities = list(c.qualities if qualities is None else qualities)
    if not qualities:
        raise ValueError("empty quality grid")
    arrays = to_uint8(images)
    if not arrays:
        raise ValueError("no images to sweep")
    iterator = qualities
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(qualities, desc=f"{c.label} sweep", leave=False)
    rates, sizes, recons = [], [], []
    for q in iterator:
        nbytes, rec, per_image = [], [], []
        for a in arrays:
            data = encode(codec, a, q)
            nbytes.append(len(data))
            per_image.append(_bpp(len(data), a.shape[0], a.shape[1]))
            if keep:
                out = decode(codec, data)
                if out.shape != a.shape:
                    raise ValueError(f"{c.label} decoded shape {out.shape} != input {a.shape}")
                rec.append(out)
        rates.append(float(np.mean(per_image)))
        sizes.append(nbytes)
        if keep:
            shapes = {r.shape for r in rec}
            recons.append(np.stack(rec) if len(shapes) == 1 else rec)
    h, w = arrays[0].shape[:2]
    return SweepResult(codec, qualities, rates, sizes, recons, rate_floor(codec, h, w)["bpp"])


def rate_floor(codec: str, height: int = 64, width: int = 256) -> dict:
    """A codec's fixed floor: bytes and bpp of a flat mid-gray image at its coarsest default setting."""
    c = _codec(codec)
    flat = np.full((int(height), int(width), 3), 128, dtype=np.uint8)
    data = encode(codec, flat, c.qualities[0])
    return {"codec": codec, "quality": c.qualities[0], "bytes": len(data),
            "bpp": _bpp(len(data), height, width)}


def rate_floors(height: int = 64, width: int = 256) -> dict[str, dict]:
    """:func:`rate_floor` of every classic codec; a missing codec gets ``{"skipped": note}``."""
    return {key: ({"skipped": skip_note(key)} if skip_note(key) else rate_floor(key, height, width))
            for key in CODECS}
