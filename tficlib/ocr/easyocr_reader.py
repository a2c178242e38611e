"""EasyOCR's own pipeline (CRAFT detector + recognizer), offline: how every stage *reads*.

* :func:`read_text` is ``Reader.readtext`` (``detect`` then ``recognize``,
  EasyOCR's defaults, contrast fallback included) on uint8 images, the words
  joined in reading order: what the papers report for pages and patches.
* :func:`read_lines` runs the recognizer alone on the whole image as one text
  line (``Reader.recognize`` with the full-image box): the non-differentiable
  twin of :func:`tficlib.ocr.recognizer.recognizer_logits` + greedy decoding,
  used for the single-line text images.
* :func:`detect_boxes` is TextRegion(x) of Lai et al. (Eq. 1): CRAFT through
  EasyOCR's own box extraction, as axis-aligned pixel boxes in reading order.

One difference from ``readtext(rgb_array)``: EasyOCR's ``reformat_input``
treats a 3-channel *array* as BGR, which would swap the R and B weights of the
grey image; we hand EasyOCR the grey image computed from RGB instead, so the
differentiable and the non-differentiable path see the same luminance.
"""

from __future__ import annotations

import math
import warnings

from .images import as_image_list, as_uint8_rgb, grey
from .recognizer import model_dir, resolve_device
from .regions import join_words, reading_order

__all__ = [
    "detect_boxes",
    "get_reader",
    "line_box",
    "read_lines",
    "read_text",
]

_READERS: dict[str, object] = {}


def get_reader(device=None):
    """EasyOCR's ``Reader(['en'])``, offline, unquantized, cached per device.

    Weights come from ``easyocr_en_models.model_dir()`` (craft_mlt_25k.pth,
    english_g2.pth) with ``download_enabled=False``: a missing file is an
    error, never a download.  ``device`` defaults to CUDA when available.
    """
    import easyocr

    dev = resolve_device(device)
    key = str(dev)
    if key not in _READERS:
        directory = model_dir()
        gpu = False if dev.type == "cpu" else key
        _READERS[key] = easyocr.Reader(
            ["en"],
            gpu=gpu,
            model_storage_directory=directory,
            user_network_directory=directory,  # not ~/.EasyOCR: nothing is written
            download_enabled=False,
            quantize=False,
            verbose=False,
        )
    return _READERS[key]


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
        for rgb in as_image_list(images):
            horizontal, free = reader.detect(rgb, reformat=False)
            result = reader.recognize(grey(rgb), horizontal[0], free[0], detail=1, reformat=False)
            boxes = [
                (min(p[0] for p in box), min(p[1] for p in box), max(p[0] for p in box), max(p[1] for p in box))
                for box, _, _ in result
            ]
            out.append(join_words([result[i][1] for i in reading_order(boxes)]))
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
        for rgb in as_image_list(images):
            out.append(join_words(reader.recognize(grey(rgb), detail=0, reformat=False)))
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
    rgb = as_uint8_rgb(image)
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
    return [boxes[i] for i in reading_order(boxes)]


def line_box(image, device=None) -> tuple[int, int, int, int]:
    """The text line of a single-line image: the union of its CRAFT boxes (whole image if none).

    Computed once on the original x (Lai et al.: B "can be pre-calculated for
    each ground truth image before training") and reused for x̂.
    """
    rgb = as_uint8_rgb(image)
    boxes = detect_boxes(rgb, device=device)
    if not boxes:
        return (0, 0, rgb.shape[1], rgb.shape[0])
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )
