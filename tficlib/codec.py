"""Learned image codecs (CompressAI) and the ``.tfic`` bitstream file.

TFIC paper (Della Fiore et al., Sec. III) codes images with a learned
hyperprior codec: analysis g_a, hyper-analysis h_a, entropy bottleneck for z,
Gaussian conditional for y with scales from h_s(ẑ), synthesis g_s.  We build
it from CompressAI by name (:data:`MODELS`):

``bmshj2018-hyperprior``  the scale hyperprior of Ballé et al. 2018 (default; also Lai et al.)
``mbt2018-mean``          mean-scale hyperprior (Minnen et al. 2018)
``cheng2020-attn``        Cheng et al. 2020 with attention; it has a single width N (M = N).
                          Its autoregressive context model makes the eval-mode forward
                          differ from the real decode (CompressAI rounds y without the
                          predicted means in forward), and coding is slow (sequential).

The paper's TinyLIC (a transformer codec) is **not in CompressAI**; the model
is a parameter (``CodecCfg.model``) so one can be registered in
:data:`MODELS` later.

Two paths, as in CompressAI:

* training path: ``model(x)`` -> ``{"x_hat", "likelihoods"}`` (uniform noise
  in train mode, rounding in eval mode); :func:`estimated_bpp` turns eval-mode
  likelihoods into a rate estimate;
* real path: :func:`compress` -> bytes of a ``.tfic`` file, :func:`decompress`
  -> x̂, after ``model.update(force=True)``.  Reported bpp is always from the
  real bytes, header included (:func:`real_bpp`, :func:`evaluate_codec`).

Inputs of any size are padded on the bottom/right to a multiple of 64 (the
codec's total down-sampling, 2^(4+2)) by **replicating the border pixels**
(cheaper to code than a zero border) and the reconstruction is cropped back.

``.tfic`` format, version 1 (varint = unsigned LEB128, at most 5 bytes)::

    magic        4 bytes  b"TFIC"
    version      u8       1
    checksum     u32 LE   CRC-32 of every byte after this field (rest of header + payload)
    model        varint   model id (MODEL_IDS: 1 bmshj2018-hyperprior, 2 mbt2018-mean, 3 cheng2020-attn)
    N, M         varint   widths needed to rebuild the model (M = N for cheng2020)
    fingerprint  8 bytes  SHA-256[:8] of the model's state_dict (weights + CDF tables)
    height, width varint  original image size (padding to 64 is implied: pad = -size mod 64,
                          latent size = padded size / 64)
    label        varint length + ASCII, free text such as the checkpoint "tfic_2" (may be empty)
    strings      tree of CompressAI's entropy-coded strings for this image ([[y], [z]] for the
                 hyperpriors; any nesting up to depth 4): node = varint v; v even: v/2 bytes
                 follow; v odd: a list of (v-1)/2 nodes follows

About 30 bytes of header for a 64x256 line (0.015 bpp), reported as ``header_bytes``.
The parser checks every length against the remaining bytes before reading, and
the file must end exactly where the tree ends.  Any truncated, corrupted,
wrong-magic, future-version or foreign-model stream raises
:class:`TficFormatError`; the checksum is verified before any field is
trusted, so a corrupted payload never reaches the entropy decoder.  (The
CRC-32 guards against accidents, not forgery: a stream forged with a valid
checksum still meets the bounds checks, but its entropy-coded bytes decode to
whatever they say.)

As everywhere in CompressAI, the decoder recomputes the Gaussian scales from
ẑ with h_s: decode on the same kind of device (CPU or the same GPU model) that
encoded, or the scale indexes may differ.  On CUDA the coding passes run with
deterministic cuDNN and without TF32 (:func:`coding_mode`): h_s is made of
transposed convolutions, whose default cuDNN algorithms are not guaranteed to
give the same bits in the encoder's and the decoder's call, and one scale index
that differs between them desynchronises the whole arithmetic-coded stream
(measured on an H100: NaN reconstructions without it).  A model's CDF tables built by
``update()`` on another device can differ too; the fingerprint then differs
and the stream is rejected instead of decoded wrongly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import statistics
import struct
import time
import warnings
import weakref
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import metrics
from .artifacts import ArtifactError, atomic_write, load_checkpoint, save_checkpoint

with warnings.catch_warnings():  # compressai's import uses the deprecated torch.jit.script
    warnings.simplefilter("ignore", FutureWarning)
    from compressai.entropy_models import EntropyBottleneck, GaussianConditional
    from compressai.layers import MaskedConv2d
    from compressai.models import (
        Cheng2020Attention,
        JointAutoregressiveHierarchicalPriors,
        MeanScaleHyperprior,
        ScaleHyperprior,
    )

__all__ = [
    "ALIGN",
    "FORMAT_VERSION",
    "Header",
    "MAGIC",
    "MODELS",
    "MODEL_IDS",
    "TficFormatError",
    "build_model",
    "compress",
    "crop",
    "decompress",
    "estimated_bpp",
    "evaluate_codec",
    "fingerprint",
    "forward_ste",
    "load_model",
    "model_spec",
    "pad",
    "read_header",
    "read_tfic",
    "real_bpp",
    "register_ste_forward",
    "save_model",
    "time_decoder",
    "time_encoder",
    "write_tfic",
]

#: name -> CompressAI class.  TinyLIC (the TFIC paper's transformer codec) is not in CompressAI.
MODELS: dict[str, type] = {
    "bmshj2018-hyperprior": ScaleHyperprior,
    "mbt2018-mean": MeanScaleHyperprior,
    "cheng2020-attn": Cheng2020Attention,
}
_NAME_OF = {cls: name for name, cls in MODELS.items()}
_SINGLE_WIDTH = {"cheng2020-attn"}  # models with only N (M = N)

MAGIC = b"TFIC"
FORMAT_VERSION = 1
ALIGN = 64  # total down-sampling of every model in MODELS (g_a 2^4, h_a 2^2)
MAX_SIDE = 1 << 16  # largest height/width a version-1 stream may declare
_MAX_DEPTH = 4
_MAX_NODES = 4096
_PREFIX = struct.Struct("<4sBI")  # magic, version, crc32
_FP_BYTES = 8
#: stable ids of the model names in the bitstream (add new models with new ids)
MODEL_IDS = {"bmshj2018-hyperprior": 1, "mbt2018-mean": 2, "cheng2020-attn": 3}
_NAME_OF_ID = {i: n for n, i in MODEL_IDS.items()}


class TficFormatError(ValueError):
    """The bytes are not a valid ``.tfic`` stream for this model (truncated, corrupt, foreign, ...)."""


# --------------------------------------------------------------------------- models
def build_model(name: str = "bmshj2018-hyperprior", N: int = 128, M: int | None = 192):
    """A fresh CompressAI model by name (see :data:`MODELS`).

    ``cheng2020-attn`` has a single width: ``M`` is ignored (M = N).
    """
    if name not in MODELS:
        raise ValueError(f"unknown codec model {name!r}; models are: {', '.join(MODELS)} "
                         "(TinyLIC is not in CompressAI)")
    N = int(N)
    if N < 1 or N > 0xFFFF:
        raise ValueError(f"N must be in 1..65535, got {N}")
    if name in _SINGLE_WIDTH:
        model = MODELS[name](N=N)
    else:
        if M is None or int(M) < 1 or int(M) > 0xFFFF:
            raise ValueError(f"{name} needs M in 1..65535, got {M!r}")
        model = MODELS[name](N=N, M=int(M))
    _apply_masks(model)
    return model


# --------------------------------------------------------------------------- training forward (STE)
#: CompressAI class -> its straight-through training forward (:func:`forward_ste`); the most specific
#: registered class of a model's MRO is used, so a subclass inherits its parent's forward.
_STE_FORWARDS: dict[type, Callable] = {}


def register_ste_forward(cls: type):
    """Decorator: ``fn(model, x) -> dict`` is the straight-through forward of ``cls`` (and its subclasses)."""
    def wrap(fn: Callable) -> Callable:
        _STE_FORWARDS[cls] = fn
        return fn
    return wrap


def forward_ste(model, x: torch.Tensor) -> dict:
    """Training forward whose decoder sees *rounded* latents (straight-through estimator).

    TFIC paper Sec. III-B trains through the quantizer: the rate keeps
    CompressAI's noisy-latent likelihoods (training mode) while the synthesis
    transform g_s receives ŷ = y + (round(y − μ) + μ − y).detach(): the
    forward value is the rounded latent the real decoder will see, the
    backward pass the identity.  μ = 0 for the scale hyperprior, the
    predicted means for mean-scale models.  One adapter per model family
    (:func:`register_ste_forward`); returns ``x_hat``, ``y_hat``, ``y`` and
    ``likelihoods`` like CompressAI's forward.
    """
    for cls in type(model).__mro__:
        if cls in _STE_FORWARDS:
            return _STE_FORWARDS[cls](model, x)
    raise TypeError(f"no straight-through forward for {type(model).__name__}; register one with "
                    "tficlib.codec.register_ste_forward (supported: "
                    f"{', '.join(c.__name__ for c in _STE_FORWARDS)})")


def _ste_round(y: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    return y + (torch.round(y - mu) + mu - y).detach()


@register_ste_forward(ScaleHyperprior)
def _ste_scale_hyperprior(model, x: torch.Tensor) -> dict:
    """bmshj2018-hyperprior: z = h_a(|y|), scales = h_s(ẑ), μ = 0."""
    y = model.g_a(x)
    z_hat, z_likelihoods = model.entropy_bottleneck(model.h_a(torch.abs(y)))
    scales_hat = model.h_s(z_hat)
    _, y_likelihoods = model.gaussian_conditional(y, scales_hat, means=None)
    y_hat = _ste_round(y, torch.zeros_like(y))
    return {"x_hat": model.g_s(y_hat), "y_hat": y_hat, "y": y,
            "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}


@register_ste_forward(MeanScaleHyperprior)
def _ste_mean_scale(model, x: torch.Tensor) -> dict:
    """mbt2018-mean: z = h_a(y), (scales, means) = h_s(ẑ), μ = the predicted means."""
    y = model.g_a(x)
    z_hat, z_likelihoods = model.entropy_bottleneck(model.h_a(y))
    scales_hat, means_hat = model.h_s(z_hat).chunk(2, 1)
    _, y_likelihoods = model.gaussian_conditional(y, scales_hat, means=means_hat)
    y_hat = _ste_round(y, means_hat)
    return {"x_hat": model.g_s(y_hat), "y_hat": y_hat, "y": y,
            "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}


@register_ste_forward(JointAutoregressiveHierarchicalPriors)
def _ste_autoregressive(model, x: torch.Tensor) -> dict:
    """mbt2018 / cheng2020: the context model sees the noisy latents (CompressAI's training forward), g_s round(y)."""
    y = model.g_a(x)
    gc = model.gaussian_conditional
    z_hat, z_likelihoods = model.entropy_bottleneck(model.h_a(y))
    params = model.h_s(z_hat)
    y_noisy = gc.quantize(y, "noise" if model.training else "dequantize")
    ctx_params = model.context_prediction(y_noisy)
    scales_hat, means_hat = model.entropy_parameters(torch.cat((params, ctx_params), dim=1)).chunk(2, 1)
    _, y_likelihoods = gc(y, scales_hat, means=means_hat)
    y_hat = _ste_round(y, torch.zeros_like(y))
    return {"x_hat": model.g_s(y_hat), "y_hat": y_hat, "y": y,
            "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}


def _apply_masks(model) -> None:
    """Zero the masked weights of context models once (cheng2020).

    CompressAI's MaskedConv2d masks its weight inside ``forward``, so the first
    forward would change the weights (and the fingerprint) of a fresh model;
    masking up front makes forward idempotent and streams reproducible.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, MaskedConv2d):
                m.weight.mul_(m.mask)


def model_spec(model) -> dict:
    """``{"name", "N", "M"}`` of a model built by :func:`build_model` (M = N for cheng2020)."""
    name = _NAME_OF.get(type(model))
    if name is None:
        raise ValueError(f"unsupported codec class {type(model).__name__}; models are: {', '.join(MODELS)}")
    return {"name": name, "N": int(model.N), "M": int(model.M)}


def _is_updated(model) -> bool:
    mods = [m for m in model.modules() if isinstance(m, (EntropyBottleneck, GaussianConditional))]
    return bool(mods) and all(m._quantized_cdf.numel() > 0 for m in mods)


def _require_updated(model) -> None:
    if not _is_updated(model):
        raise ValueError("the codec has no CDF tables: call model.update(force=True) after training "
                         "(CompressAI's contract) before compress/decompress")


_FP_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fingerprint(model) -> bytes:
    """8 bytes: SHA-256 (truncated) over every state_dict tensor (weights and CDF tables), by name.

    Cached per model and recomputed when any tensor is replaced or modified in
    place (PyTorch's version counter).  Writing through ``tensor.data`` bypasses
    the counter: call ``fingerprint.cache_clear()`` after doing that.
    """
    tensors = model.state_dict(keep_vars=True)
    key = tuple((k, t.data_ptr(), t._version, tuple(t.shape), str(t.dtype), str(t.device))
                for k, t in tensors.items())
    cached = _FP_CACHE.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensors[name].shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    digest = h.digest()[:_FP_BYTES]
    _FP_CACHE[model] = (key, digest)
    return digest


fingerprint.cache_clear = _FP_CACHE.clear  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- padding
def pad(x: torch.Tensor, multiple: int = ALIGN, mode: str = "replicate") -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (B,3,H,W) on the bottom/right to a multiple of ``multiple``; returns (x_pad, (pad_h, pad_w)).

    ``mode`` is ``"replicate"`` (default: border pixels repeated, cheap to code)
    or ``"constant"`` (zeros).
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (ph, pw)


def crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop padded (B,3,H',W') back to the top-left ``height`` x ``width``."""
    return x[..., :height, :width]


def _as_batch1(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected an image tensor, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"compress takes one RGB image (3,H,W) or (1,3,H,W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise ValueError(f"image size {h}x{w} outside 1..{MAX_SIDE}")
    if not x.is_floating_point():
        raise ValueError(f"expected a float image in [0, 1], got dtype {x.dtype}")
    if not torch.isfinite(x).all() or x.min() < -1e-6 or x.max() > 1 + 1e-6:
        raise ValueError("image values must be finite and in [0, 1]")
    return x


# --------------------------------------------------------------------------- the file format
@dataclasses.dataclass(frozen=True)
class Header:
    """The parsed header of a ``.tfic`` stream (see the module docstring)."""

    version: int
    model: str
    label: str
    N: int
    M: int
    fingerprint: str  # hex of 8 bytes
    height: int
    width: int
    pad_h: int  # implied: -height mod 64
    pad_w: int
    latent_shape: tuple[int, int]
    string_lengths: tuple  # nested like CompressAI's strings
    total_bytes: int
    payload_bytes: int  # entropy-coded bytes

    @property
    def header_bytes(self) -> int:
        """Everything that is not entropy-coded data (fields, lengths, checksum)."""
        return self.total_bytes - self.payload_bytes

    @property
    def bpp(self) -> float:
        """Real bits per pixel of the original image, header included."""
        return 8.0 * self.total_bytes / (self.height * self.width)

    @property
    def bpp_payload(self) -> float:
        """Bits per pixel of the entropy-coded payload alone (the rate papers in this field report)."""
        return 8.0 * self.payload_bytes / (self.height * self.width)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _encode_tree(node, out: bytearray, depth: int = 0) -> None:
    if isinstance(node, (bytes, bytearray)):
        out += _varint(2 * len(node))
        out += node
    elif isinstance(node, (list, tuple)):
        if depth >= _MAX_DEPTH or len(node) > _MAX_NODES:
            raise ValueError("codec strings nested too deep or too many to store")
        out += _varint(2 * len(node) + 1)
        for child in node:
            _encode_tree(child, out, depth + 1)
    else:
        raise TypeError(f"codec strings must be bytes or lists of bytes, got {type(node).__name__}")


class _Reader:
    """Bounds-checked reads from a bytes buffer; every failure is a TficFormatError."""

    def __init__(self, data: bytes, pos: int):
        self.data, self.pos = data, pos

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.left:
            raise TficFormatError(f"truncated .tfic stream: {what} needs {n} bytes at offset {self.pos}, "
                                  f"only {self.left} left")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def varint(self, what: str, limit: int = 0xFFFFFFFF) -> int:
        value = 0
        for i in range(5):
            (byte,) = self.take(1, what)
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                break
        else:
            raise TficFormatError(f"corrupt .tfic stream: {what} is longer than 5 bytes")
        if value > limit:
            raise TficFormatError(f"corrupt .tfic stream: {what} = {value} exceeds {limit}")
        return value

    def text(self, what: str) -> str:
        raw = self.take(self.varint(f"{what} length", 255), what)
        if not all(32 <= b < 127 for b in raw):
            raise TficFormatError(f"corrupt .tfic header: {what} is not printable ASCII")
        return raw.decode("ascii")


def _decode_tree(r: _Reader, depth: int, budget: list[int]) -> tuple[Any, Any, int]:
    """Returns (strings, lengths, payload_bytes)."""
    budget[0] -= 1
    if budget[0] < 0:
        raise TficFormatError(f"corrupt .tfic stream: more than {_MAX_NODES} string nodes")
    v = r.varint("string node")
    if v % 2 == 0:
        s = r.take(v // 2, "entropy-coded string")
        return bytes(s), v // 2, v // 2
    count = v // 2
    if depth >= _MAX_DEPTH:
        raise TficFormatError(f"corrupt .tfic stream: strings nested deeper than {_MAX_DEPTH}")
    if count > r.left:  # every node takes at least one byte
        raise TficFormatError(f"truncated .tfic stream: {count} strings declared, only {r.left} bytes left")
    items, lengths, total = [], [], 0
    for _ in range(count):
        s, n, t = _decode_tree(r, depth + 1, budget)
        items.append(s)
        lengths.append(n)
        total += t
    return items, tuple(lengths), total


def _parse(data) -> tuple[Header, list]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"a .tfic stream is bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _PREFIX.size:
        raise TficFormatError(f"truncated .tfic stream: {len(data)} bytes, shorter than the "
                              f"{_PREFIX.size}-byte prefix")
    magic, version, crc = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise TficFormatError(f"not a .tfic stream (starts with {magic!r}, expected {MAGIC!r})")
    if version > FORMAT_VERSION:
        raise TficFormatError(f".tfic format version {version} is newer than this reader (supports "
                              f"{FORMAT_VERSION}); upgrade tficlib (or the file is corrupt)")
    if version < 1:
        raise TficFormatError(f"corrupt .tfic stream: invalid format version {version}")
    computed = zlib.crc32(data[_PREFIX.size:])
    if computed != crc:
        raise TficFormatError(f"corrupt or truncated .tfic stream: checksum mismatch (stored {crc:#010x}, "
                              f"computed {computed:#010x})")
    r = _Reader(data, _PREFIX.size)
    model_id = r.varint("model id")
    if model_id not in _NAME_OF_ID:
        raise TficFormatError(f"unknown model id {model_id} in .tfic header (known: "
                              f"{', '.join(f'{i}={n}' for n, i in MODEL_IDS.items())}); newer tficlib?")
    N = r.varint("N", 0xFFFF)
    M = r.varint("M", 0xFFFF)
    fp = r.take(_FP_BYTES, "fingerprint")
    height = r.varint("height", MAX_SIDE)
    width = r.varint("width", MAX_SIDE)
    if N < 1 or M < 1 or height < 1 or width < 1:
        raise TficFormatError(f"corrupt .tfic header: N={N}, M={M}, size {height}x{width}")
    label = r.text("label")
    strings, lengths, payload = _decode_tree(r, 0, [_MAX_NODES])
    if r.left:
        raise TficFormatError(f"corrupt .tfic stream: {r.left} unexpected bytes after the strings")
    if not isinstance(strings, list) or not strings:
        raise TficFormatError("corrupt .tfic stream: the strings are not a non-empty list")
    pad_h, pad_w = (-height) % ALIGN, (-width) % ALIGN
    header = Header(version=version, model=_NAME_OF_ID[model_id], label=label, N=N, M=M,
                    fingerprint=fp.hex(), height=height, width=width, pad_h=pad_h, pad_w=pad_w,
                    latent_shape=((height + pad_h) // ALIGN, (width + pad_w) // ALIGN),
                    string_lengths=lengths, total_bytes=len(data), payload_bytes=payload)
    return header, strings


def read_header(data) -> Header:
    """Parse and verify (magic, version, checksum, bounds) a ``.tfic`` stream; needs no model."""
    return _parse(data)[0]


def read_tfic(path: str | os.PathLike) -> bytes:
    """The bytes of a ``.tfic`` file (FileNotFoundError names the path)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such .tfic file: {path}")
    return path.read_bytes()


def write_tfic(path: str | os.PathLike, data: bytes) -> Path:
    """Write a ``.tfic`` stream atomically (after checking it parses)."""
    read_header(data)
    with atomic_write(path, "wb") as fh:
        fh.write(data)
    return Path(path)


# --------------------------------------------------------------------------- real path
def compress(model, x: torch.Tensor, label: str = "", pad_mode: str = "replicate") -> bytes:
    """Entropy-code one image (3,H,W) or (1,3,H,W) in [0,1] into a ``.tfic`` stream.

    The model must have been updated (``model.update(force=True)``).  Images are
    coded one at a time so that the decoder's hyper-synthesis sees the same
    batch shape as the encoder's (batched convolutions may round differently).
    """
    x = _as_batch1(x)
    spec = model_spec(model)
    _require_updated(model)
    label = str(label)
    if len(label) > 255 or not all(32 <= ord(c) < 127 for c in label):
        raise ValueError(f"label must be printable ASCII of at most 255 characters, got {label!r}")
    height, width = x.shape[-2:]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            xp, _ = pad(x.to(device), ALIGN, pad_mode)
            with coding_mode(device):
                out = model.compress(xp)
    finally:
        model.train(was_training)
    sh, sw = (int(s) for s in out["shape"])
    if (sh, sw) != (xp.shape[-2] // ALIGN, xp.shape[-1] // ALIGN):
        raise ValueError(f"{spec['name']} returned latent size {sh}x{sw}; expected a /{ALIGN} down-sampling")
    body = bytearray(_varint(MODEL_IDS[spec["name"]]))
    body += _varint(spec["N"]) + _varint(spec["M"]) + fingerprint(model)
    body += _varint(height) + _varint(width)
    body += _varint(len(label)) + label.encode("ascii")
    _encode_tree(list(out["strings"]), body)
    body = bytes(body)
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, zlib.crc32(body)) + body


@contextlib.contextmanager
def coding_mode(device):
    """The arithmetic of the real coding path: on CUDA, deterministic cuDNN without TF32; elsewhere unchanged.

    The encoder and the decoder must compute bit-identical scales from ẑ
    (h_s, Ballé et al. 2018, Sec. 3): the entropy coder turns each scale into a
    table index, and one index that differs desynchronises the rest of the
    stream.  cuDNN's default algorithms for the transposed convolutions of h_s
    are not guaranteed to be deterministic, and TF32 rounds differently from
    one GPU generation to the next; both are switched off for compress and
    decompress only (training keeps the fast defaults).
    """
    if torch.device(device).type == "cuda":
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
            yield
    else:
        yield


def _check_identity(model, header: Header) -> None:
    spec = model_spec(model)
    if header.model != spec["name"] or (header.N, header.M) != (spec["N"], spec["M"]):
        raise TficFormatError(
            f"stream made by {header.model} (N={header.N}, M={header.M}), "
            f"but the given model is {spec['name']} (N={spec['N']}, M={spec['M']})")
    mine = fingerprint(model).hex()
    if header.fingerprint != mine:
        raise TficFormatError(
            f"stream made by another {header.model} model (fingerprint {header.fingerprint}, "
            f"this model {mine}): decode it with the checkpoint that made it")


def decompress(model, data) -> torch.Tensor:
    """Decode a ``.tfic`` stream with the model that made it -> x̂ (1,3,H,W) in [0,1].

    Raises :class:`TficFormatError` for any stream that is not valid for this
    model (checked before the entropy decoder runs).
    """
    if model is None:
        raise ValueError("decompress needs the model that made the stream (load it with load_model)")
    header, strings = _parse(data)
    _check_identity(model, header)
    _require_updated(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), coding_mode(next(model.parameters()).device):
            out = model.decompress(strings, list(header.latent_shape))
    except (RuntimeError, ValueError, IndexError, AssertionError, OverflowError) as exc:
        raise TficFormatError(f"entropy decoding failed: {str(exc).splitlines()[0] if str(exc) else exc!r}") from exc
    finally:
        model.train(was_training)
    x_hat = out["x_hat"]
    expected = (header.height + header.pad_h, header.width + header.pad_w)
    if tuple(x_hat.shape[-2:]) != expected:
        raise TficFormatError(f"decoded size {tuple(x_hat.shape[-2:])} differs from the header's {expected}")
    if not bool(torch.isfinite(x_hat).all()):
        raise TficFormatError("the stream decoded to non-finite pixels: its entropy-coded bytes do not match this "
                              "model's scales (a stream damaged past the checksum, or decoded on a device whose "
                              "arithmetic differs from the encoder's)")
    return crop(x_hat, header.height, header.width).clamp(0, 1)


def real_bpp(model, x: torch.Tensor, data: bytes | None = None) -> dict:
    """Real rate of one image: ``{"bpp", "bytes", "header_bytes"}`` (bpp includes the header)."""
    x = _as_batch1(x)
    data = compress(model, x) if data is None else data
    header = read_header(data)
    return {"bpp": header.bpp, "bytes": header.total_bytes, "header_bytes": header.header_bytes}


def estimated_bpp(likelihoods, num_pixels: int, per_image: bool = False):
    """Rate estimate Σ -log2 p / pixels from the likelihoods of ``model(x)``.

    Use the eval-mode (rounded) likelihoods: the train-mode (uniform noise)
    estimate is not a rate to report.  ``per_image=True`` returns a list (one
    value per batch item), else the batch mean as a float.
    """
    if isinstance(likelihoods, dict):
        likelihoods = list(likelihoods.values())
    elif isinstance(likelihoods, torch.Tensor):
        likelihoods = [likelihoods]
    bits = None
    for lk in likelihoods:
        b = -torch.log2(lk.detach().float()).flatten(1).sum(1)
        bits = b if bits is None else bits + b
    per = (bits / float(num_pixels)).tolist()
    return per if per_image else sum(per) / len(per)


# --------------------------------------------------------------------------- checkpoints
def save_model(path: str | os.PathLike, model, meta: dict | None = None) -> Path:
    """Save a codec (weights + entropy-model buffers) with its name, N, M and fingerprint.

    Calls ``model.update(force=True)`` first, so the stored CDF tables match the
    weights and a loaded model compresses without retraining.  Stored as
    ``state = {"model": state_dict}``, ``meta = {**meta, "codec": {"name", "N", "M"}, "codec_fingerprint": hex}``.
    A checkpoint of :func:`tficlib.train.train` also loads if its meta carries
    the same ``"codec"`` entry (its state has the weights under ``"model"``).
    """
    spec = model_spec(model)
    model.update(force=True)
    state = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    full = dict(meta or {})
    full["codec"] = spec
    full["codec_fingerprint"] = fingerprint(model).hex()
    return save_checkpoint(path, state, full)


def load_model(path: str | os.PathLike, stage: str | None = None, device="cpu"):
    """Load a codec saved by :func:`save_model` -> ``(model, meta)``, eval mode, updated.

    Executes no pickled code.  A missing file names ``stage``'s notebook; a file
    that is not a codec checkpoint raises :class:`ArtifactError`.
    """
    try:
        payload = load_checkpoint(path, stage)
    except (ArtifactError, FileNotFoundError):
        raise
    except Exception as exc:  # noqa: BLE001 - torch.load on foreign bytes raises anything (KeyError ...)
        raise ArtifactError(f"{path} is not a tficlib checkpoint (or is corrupt): "
                            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    meta = payload.get("meta") or {}
    spec = meta.get("codec")
    if not isinstance(spec, dict) or not {"name", "N", "M"} <= set(spec):
        raise ArtifactError(f"{path} is a tficlib checkpoint but not a codec (no codec name/N/M in its "
                            "meta; codecs are saved with tficlib.codec.save_model)")
    state = payload.get("state") or {}
    sd = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ArtifactError(f"{path}: no model state_dict in the checkpoint")
    try:
        model = build_model(spec["name"], spec["N"], spec["M"])
        model.load_state_dict(sd)
        _apply_masks(model)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ArtifactError(f"{path}: weights do not fit {spec['name']} (N={spec['N']}, M={spec['M']}): "
                            f"{str(exc).splitlines()[0]}") from exc
    model = model.to(device)
    model.update(force=True)
    model.eval()
    return model, meta


# --------------------------------------------------------------------------- evaluation
def _images_of(images):
    """Yield (1,3,H,W) tensors from a tensor batch, a list, or a dataset of (image, label) / dicts."""
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            images = images.unsqueeze(0)
        for i in range(images.shape[0]):
            yield images[i:i + 1]
        return
    for item in images:
        if isinstance(item, dict):
            item = item.get("clean", item.get("image"))
        elif isinstance(item, (tuple, list)):
            item = item[0]
        yield item.unsqueeze(0) if item.dim() == 3 else item


def _ms_ssim(x, y) -> float | None:
    try:
        return float(metrics.ms_ssim(x, y))
    except ValueError:  # image too small for any MS-SSIM scale
        return None


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def evaluate_codec(model, images, batch_size: int = 8, keep_reconstructions: bool = True,
                   ms_ssim: bool = True, progress: bool = False) -> dict:
    """Evaluate a codec on real bitstreams (TFIC paper Sec. IV: rate from real bytes).

    For each image: compress to a ``.tfic`` stream, decompress those bytes, and
    measure.  Returns lists aligned by image: ``bpp`` (real, header included),
    ``bpp_payload`` (entropy-coded bytes only), ``bytes``, ``header_bytes``, ``bpp_estimated`` (eval-mode rounded
    likelihoods, same padding), ``psnr``, ``ms_ssim`` (None with ``ms_ssim=False``; None for an image too small for it), ``encode_ms``, ``decode_ms``,
    ``reconstructions`` (list of (1,3,H,W) CPU tensors, if kept), and
    ``mean`` (averages of the numbers).
    """
    _require_updated(model)
    device = next(model.parameters()).device
    use_ms = bool(ms_ssim)
    res: dict[str, Any] = {k: [] for k in ("bpp", "bpp_payload", "bytes", "header_bytes", "bpp_estimated", "psnr",
                                           "ms_ssim", "encode_ms", "decode_ms", "reconstructions")}
    items = list(_images_of(images))
    it = items
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(items, desc="evaluate codec")
    was_training = model.training
    model.eval()
    try:
        # estimated rate: eval-mode forward in batches of equal-size images
        for start in range(0, len(items), max(1, batch_size)):
            chunk = items[start:start + max(1, batch_size)]
            groups: dict[tuple, list] = {}
            for x in chunk:
                groups.setdefault(tuple(x.shape), []).append(x)
            est = {}
            for shape, xs in groups.items():
                with torch.no_grad():
                    xp, _ = pad(torch.cat(xs).to(device))
                    lk = model(xp)["likelihoods"]
                est[shape] = estimated_bpp(lk, shape[-2] * shape[-1], per_image=True)
            for x in chunk:
                res["bpp_estimated"].append(est[tuple(x.shape)].pop(0))
        for x in it:
            x = x.to(device)
            _sync(device)
            t0 = time.perf_counter()
            data = compress(model, x)
            _sync(device)
            t1 = time.perf_counter()
            x_hat = decompress(model, data)
            _sync(device)
            t2 = time.perf_counter()
            header = read_header(data)
            res["bpp"].append(header.bpp)
            res["bpp_payload"].append(header.bpp_payload)
            res["bytes"].append(header.total_bytes)
            res["header_bytes"].append(header.header_bytes)
            res["encode_ms"].append(1e3 * (t1 - t0))
            res["decode_ms"].append(1e3 * (t2 - t1))
            res["psnr"].append(float(metrics.psnr(x, x_hat)))
            res["ms_ssim"].append(_ms_ssim(x, x_hat) if use_ms else None)
            if keep_reconstructions:
                res["reconstructions"].append(x_hat.cpu())
    finally:
        model.train(was_training)
    if not use_ms:
        res["ms_ssim"] = None
    res["mean"] = {}
    for k, v in res.items():
        if isinstance(v, list) and k != "reconstructions":
            vals = [a for a in v if a is not None]
            res["mean"][k] = sum(vals) / len(vals) if vals else float("nan")
    return res


def _time(fn, repeats: int, warmup: int, threads: int | None, device) -> dict:
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        for _ in range(max(0, warmup)):
            fn()
        times = []
        for _ in range(max(1, repeats)):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(1e3 * (time.perf_counter() - t0))
    finally:
        torch.set_num_threads(old)
    return {"mean_ms": statistics.fmean(times), "std_ms": statistics.pstdev(times) if len(times) > 1 else 0.0,
            "n": len(times), "threads": int(threads or old), "device": str(device)}


def time_encoder(model, x: torch.Tensor, repeats: int = 20, warmup: int = 3, threads: int | None = None) -> dict:
    """Encoder time for Table I (TFIC paper): analysis transforms + entropy coding to bytes.

    Times :func:`compress` on one image (padding, g_a, h_a, entropy coding of
    z and y, header), after ``warmup`` untimed runs, with ``threads`` torch
    threads (default: unchanged).  Returns ``{"mean_ms", "std_ms", "n",
    "threads", "device"}``.
    """
    x = _as_batch1(x)
    device = next(model.parameters()).device
    x = x.to(device)
    return _time(lambda: compress(model, x), repeats, warmup, threads, device)


def time_decoder(model, data: bytes, repeats: int = 20, warmup: int = 3, threads: int | None = None) -> dict:
    """Decoder time: parse + entropy decoding + synthesis g_s, as :func:`time_encoder`."""
    device = next(model.parameters()).device
    return _time(lambda: decompress(model, data), repeats, warmup, threads, device)
