"""OCR for the three papers: engines behind one interface, and EasyOCR's frozen, differentiable recognizer.

Three papers use an OCR engine in three ways; this package is the one place for
all of them:

* **Reading** (every paper's evaluation): an :class:`Engine` reads images to
  strings, as one line each (``read_lines``) or with detection first
  (``read_text``).  ``easyocr`` is the engine the codecs are trained against;
  ``rapidocr`` and ``tesseract`` are independent judges
  (:mod:`tficlib.ocr.engines`).  :func:`read_lines` / :func:`read_text` are
  EasyOCR's (:mod:`tficlib.ocr.easyocr_reader`).
* **Frozen OCR in the loss** (TFIC Sec. III-A; journal paper Sec. 4.5):
  :class:`Recognizer`, :func:`recognizer_logits`, :func:`ctc_loss`,
  :func:`greedy_decode` (:mod:`tficlib.ocr.recognizer`); :class:`OCRViews`,
  random views of x̂ for a loss that no single preprocessing satisfies
  (:mod:`tficlib.ocr.views`).
* **Text regions** (Lai et al., Eq. 1–3): :func:`detect_boxes` is
  TextRegion(x), :func:`crop_boxes` is B_i(x), :func:`region_logits` is
  Recognize(b_i) (:mod:`tficlib.ocr.regions`).

Which path a stage uses: text lines are read whole (``read_lines``; the
differentiable twin is ``recognizer_logits`` + ``greedy_decode``, exact on
64×256 lines whose text fills the height), pages and patches with detection
(``read_text``).  Reading a line at its CRAFT box (:func:`line_box` +
:func:`line_logits`) agrees with ``read_text`` where the whole-line read
shrinks the text too far (docs/deviations.md).
"""

from .easyocr_reader import detect_boxes, get_reader, line_box, read_lines, read_text
from .engines import (
    ENGINES,
    TRAINING_ENGINE,
    Engine,
    EngineUnavailable,
    available_engines,
    get_engine,
    judges,
    register,
)
from .images import as_image_list, as_uint8_rgb, grey
from .recognizer import (
    CHARSET,
    GREY_WEIGHTS,
    NUM_CLASSES,
    RECOGNIZER_HEIGHT,
    Recognizer,
    ctc_loss,
    encode_labels,
    get_recognizer,
    greedy_decode,
    recognizer_logits,
    to_charset,
)
from .regions import (
    as_saved,
    bucket_width,
    crop_boxes,
    join_words,
    line_logits,
    match_words,
    pad_crops,
    reading_order,
    recognize_crops,
    recognize_regions,
    region_logits,
)
from .views import OCRViews, otsu_threshold

__all__ = [
    "CHARSET", "ENGINES", "GREY_WEIGHTS", "NUM_CLASSES", "RECOGNIZER_HEIGHT", "TRAINING_ENGINE",
    "Engine", "EngineUnavailable", "OCRViews", "Recognizer",
    "as_image_list", "as_saved", "as_uint8_rgb", "available_engines", "bucket_width", "crop_boxes", "ctc_loss",
    "detect_boxes", "encode_labels", "get_engine", "get_reader", "get_recognizer", "greedy_decode", "grey",
    "join_words", "judges", "line_box", "line_logits", "match_words", "otsu_threshold", "pad_crops", "read_lines",
    "read_text", "reading_order", "recognize_crops", "recognize_regions", "recognizer_logits", "region_logits", "register",
    "to_charset",
]
