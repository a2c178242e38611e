"""Text regions: boxes in reading order, differentiable crops, and the recognizer's logits of regions.

Building blocks shared by the text logit loss and the OCR-guided refinement:

* :func:`crop_boxes` is b_i = B_i(x) of Lai et al. (Eq. 2): differentiable
  ``roi_align`` crops resized to the recognizer's height, aspect kept;
* :func:`region_logits` is v_i = Recognize(b_i) (Eq. 3): each crop padded to
  EasyOCR's own width (:func:`bucket_width`), crops of one width in one batch,
  exactly what the recognizer computes for one crop alone;
* :func:`recognize_regions` reads regions as a saved 8-bit image holds them;
* :func:`match_words` gives each detected box the ground-truth words it
  covers (G_p(x) of the journal paper, Sec. 4.5);
* :func:`reading_order` and :func:`join_words` turn boxes and their texts
  into one string, the way EasyOCR groups a page into lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .recognizer import RECOGNIZER_HEIGHT, get_recognizer, greedy_decode, recognizer_logits

__all__ = [
    "as_saved",
    "bucket_width",
    "crop_boxes",
    "join_words",
    "line_logits",
    "match_words",
    "pad_crops",
    "reading_order",
    "recognize_crops",
    "recognize_regions",
    "region_logits",
]


# --------------------------------------------------------------------------- reading order
def reading_order(boxes: list[tuple[float, float, float, float]], ycenter_ths: float = 0.5) -> list[int]:
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


def join_words(texts: list[str]) -> str:
    """Words (or line fragments) joined by single spaces, whitespace runs collapsed."""
    return " ".join(" ".join(texts).split())


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


# --------------------------------------------------------------------------- logits of regions (Lai et al., Eq. 2-3)
def bucket_width(width: int, height: int = 64) -> int:
    """EasyOCR's padded width for a crop ``height`` × ``width``: ``ceil(max(w/h, h/w))·h``.

    ``NormalizePAD`` in EasyOCR (and :meth:`tficlib.ocr.Recognizer.preprocess`)
    pads a single crop on the right to this width; crops sharing it can be
    recognized in one batch with identical results.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"crop size must be positive, got {height}x{width}")
    ratio = width / height
    return math.ceil(max(ratio, 1.0 / ratio)) * height


def recognize_crops(crops: list[torch.Tensor], recognizer) -> list[torch.Tensor]:
    """Recognizer logits (T_i, 97) of each (1, 3, 64, w_i) crop, batched by padded width."""
    out: list[torch.Tensor | None] = [None] * len(crops)
    groups: dict[int, list[int]] = {}
    height = recognizer.height
    for i, c in enumerate(crops):
        groups.setdefault(bucket_width(c.shape[-1], height), []).append(i)
    for width, idx in sorted(groups.items()):
        batch = torch.cat([F.pad(crops[i], (0, width - crops[i].shape[-1], 0, 0), mode="replicate")
                           for i in idx])
        logits = recognizer(batch)
        for j, i in enumerate(idx):
            out[i] = logits[j]
    return out  # type: ignore[return-value]


def region_logits(x: torch.Tensor, boxes: Sequence[Sequence], recognizer=None) -> list[list[torch.Tensor]]:
    """v_i = Recognize(B_i(x)) for every box of every image (Lai et al. Eq. 2-3).

    ``x`` (B, 3, H, W) float in [0, 1]; ``boxes`` one list of (x0, y0, x1, y1)
    per image.  Returns, per image, a list of pre-softmax CTC logits (T_i, 97),
    differentiable w.r.t. ``x`` when autograd is on.  ``recognizer`` defaults
    to the frozen EasyOCR recognizer on ``x``'s device.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"region_logits expects images (B, 3, H, W), got {getattr(x, 'shape', type(x))}")
    if len(boxes) != x.shape[0]:
        raise ValueError(f"region_logits: {len(boxes)} box lists for {x.shape[0]} images")
    recognizer = recognizer or get_recognizer(x.device)
    counts = [len(b) for b in boxes]
    if sum(counts) == 0:
        return [[] for _ in boxes]
    crops = crop_boxes(x, [list(b) for b in boxes], height=recognizer.height)
    flat = recognize_crops(crops, recognizer)
    out, k = [], 0
    for n in counts:
        out.append(flat[k:k + n])
        k += n
    return out


def as_saved(x: torch.Tensor) -> torch.Tensor:
    """x̂ as a saved 8-bit image would hold it: clamped to [0, 1] and rounded to 1/255."""
    return (x.detach().float().clamp(0, 1) * 255).round() / 255


def recognize_regions(x_hat: torch.Tensor, boxes: Sequence[Sequence], recognizer=None) -> list[list[str]]:
    """Texts read in the regions ``boxes`` of the reconstructions (8-bit, no gradient), per image."""
    with torch.no_grad():
        logits = region_logits(as_saved(x_hat), boxes, recognizer)
    return [[greedy_decode(v[None])[0] for v in vs] for vs in logits]


# --------------------------------------------------------------------------- ground truth of detected boxes
def _area(b) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _intersection(a, b) -> float:
    return _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def match_words(boxes, words, min_cover: float = 0.5, min_iou: float = 0.3) -> tuple[list, dict]:
    """Give each detected box the ground-truth text it covers (Sec. 4.5, G_p(x)).

    A rendered word belongs to the detected box that covers the largest part
    of it, if that part is at least ``min_cover`` of the word's box.  A box's
    label is its words joined by spaces (in reading order); it is *matched* if
    it has words and its IoU with their union box is at least ``min_iou``.
    Returns ``(pairs, counts)``: pairs = [(box, label)], counts = dict(boxes,
    matched, unmatched_boxes, words, missed_words).
    """
    owner: dict[int, list] = {}
    missed = 0
    for wi, (_word, wb) in enumerate(words):
        covers = [_intersection(b, wb) / max(_area(wb), 1e-9) for b in boxes]
        if covers and max(covers) >= min_cover:
            owner.setdefault(int(np.argmax(covers)), []).append(wi)
        else:
            missed += 1
    pairs = []
    for bi, box in enumerate(boxes):
        members = owner.get(bi)
        if not members:
            continue
        wbs = [words[i][1] for i in members]
        union = (min(b[0] for b in wbs), min(b[1] for b in wbs), max(b[2] for b in wbs), max(b[3] for b in wbs))
        iou = _intersection(box, union) / max(_area(box) + _area(union) - _intersection(box, union), 1e-9)
        if iou >= min_iou:
            order = sorted(members, key=lambda i: (words[i][1][1] // 16, words[i][1][0]))
            pairs.append((tuple(int(v) for v in box), " ".join(words[i][0] for i in order)))
    counts = {"boxes": len(boxes), "matched": len(pairs), "unmatched_boxes": len(boxes) - len(pairs),
              "words": len(words), "missed_words": missed}
    return pairs, counts
