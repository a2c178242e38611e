"""OCR engines as plug-ins: the registry, both installed engines reading real text, and caches keyed by engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from tficlib import artifacts, config, evaluate, metrics, ocr
from tficlib.ocr import engines


def _line(text: str, height: int = 64, width: int = 256) -> np.ndarray:
    """A clean dark-on-light text line, uint8 RGB (DejaVu Sans from matplotlib's fonts)."""
    import matplotlib

    font = ImageFont.truetype(str(matplotlib.get_data_path()) + "/fonts/ttf/DejaVuSans.ttf", 26)
    img = Image.new("RGB", (width, height), (235, 235, 235))
    ImageDraw.Draw(img).text((6, 16), text, fill=(20, 20, 20), font=font)
    return np.asarray(img)


def test_registry_names_the_engines_and_the_training_one():
    assert ocr.TRAINING_ENGINE == "easyocr"
    assert {"easyocr", "rapidocr", "tesseract"} <= set(ocr.ENGINES)
    status = ocr.available_engines()
    assert status["easyocr"] is None and status["rapidocr"] is None  # both in requirements.lock
    with pytest.raises(ValueError, match="unknown OCR engine 'nope'; registered engines: easyocr"):
        ocr.get_engine("nope")
    names, skipped = ocr.judges()
    assert names[0] == "easyocr" and "rapidocr" in names
    assert set(names) | set(skipped) == set(ocr.ENGINES)
    assert ocr.get_engine("easyocr").trained_against and not ocr.get_engine("rapidocr").trained_against


def test_a_missing_engine_is_a_named_error(monkeypatch):
    monkeypatch.setattr(engines.shutil, "which", lambda name: None)
    assert "tesseract binary is not on the PATH" in engines.TesseractEngine.unavailable()
    with pytest.raises(ocr.EngineUnavailable, match="'tesseract' is not available here: the tesseract binary"):
        engines.TesseractEngine()


_NO_TESSERACT = pytest.mark.skipif(engines.TesseractEngine.unavailable() is not None,
                                   reason="tesseract is not installed here (apt install tesseract-ocr)")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["easyocr", "rapidocr", pytest.param("tesseract", marks=_NO_TESSERACT)])
def test_every_engine_imports_and_reads_a_clean_line(name):
    engine = ocr.get_engine(name, "cpu")
    lines = [_line("hello world"), _line("Quick 2024 fox")]
    read = engine.read_lines(lines)
    assert [metrics.accuracy(t, p, case_sensitive=False) for t, p in zip(["hello world", "Quick 2024 fox"], read)] \
        >= [0.8, 0.8], read
    page = np.full((96, 256, 3), 235, np.uint8)
    page[8:72] = _line("hello world")
    assert metrics.accuracy("hello world", engine.read_text([page])[0], case_sensitive=False) >= 0.8
    ident = engine.identity()
    assert ident["engine"] == name and ident["version"] and len(ident["models"]) == 16
    # a float tensor reads like the uint8 image it quantizes to
    as_tensor = torch.from_numpy(lines[0].copy()).permute(2, 0, 1).float() / 255
    assert engine.read_lines(as_tensor[None]) == read[:1]


@_NO_TESSERACT
def test_tesseract_reads_a_list_in_one_process_and_keeps_every_line_in_place():
    engine = ocr.get_engine("tesseract", "cpu")
    blank = np.full((64, 256, 3), 235, np.uint8)
    texts = ["hello world", "Quick 2024 fox"]
    read = engine.read_lines([blank, _line(texts[0]), blank, blank, _line(texts[1]), blank])
    alone = engine.read_lines([blank])  # whatever Tesseract makes of an empty line, the same in a list
    assert len(read) == 6 and read[0] == read[2] == read[3] == read[5] == alone[0]
    assert [metrics.accuracy(t, p, case_sensitive=False) for t, p in zip(texts, (read[1], read[4]))] >= [0.8, 0.8]
    assert read[1:2] == engine.read_lines([_line(texts[0])])  # the same reading alone as in a list
    assert engine.read_lines([]) == []
    many = engine.read_lines([_line(texts[0]), blank] * 20)  # split over parallel processes, order kept
    assert many == [read[1], alone[0]] * 20


class _Counting(engines.Engine):
    """A fake engine that reads every image as 'ab' and counts its calls."""

    name = "counting"
    version = "1"
    calls = 0

    def read_lines(self, images):
        type(self).calls += 1
        return ["ab"] * len(images)

    read_text = read_lines

    def identity(self):
        return {"engine": self.name, "version": type(self).version, "models": "0" * 16}


def test_a_changed_engine_never_reuses_stored_scores(tmp_path, monkeypatch):
    monkeypatch.setenv("TFIC_DATA", str(tmp_path))
    monkeypatch.setitem(ocr.ENGINES, "counting", _Counting)
    monkeypatch.setattr(engines, "_INSTANCES", {})
    cfg = config.resolve("smoke", device="cpu")
    items = [(torch.rand(3, 8, 32), "ab"), (torch.rand(3, 8, 32), "cd")]
    stage = artifacts.MSE_PRETRAINING
    first = evaluate.evaluate_uncompressed(cfg, items, "cpu", stage, engine="counting")
    assert _Counting.calls == 1 and first["accuracy"] == pytest.approx(0.5)
    assert first["signature"]["engine"] == {"engine": "counting", "version": "1", "models": "0" * 16}
    evaluate.evaluate_uncompressed(cfg, items, "cpu", stage, engine="counting")
    assert _Counting.calls == 1  # the stored scores of the same engine are reused
    monkeypatch.setattr(_Counting, "version", "2")
    evaluate.evaluate_uncompressed(cfg, items, "cpu", stage, engine="counting")
    assert _Counting.calls == 2  # another version of the engine: scored again
    # each engine keeps its own cache: storing one never touches another's
    path = evaluate.cache_path(cfg, stage, "uncompressed", "counting")
    assert path.exists() and path.parent.name == "counting"
    assert not evaluate.cache_path(cfg, stage, "uncompressed", "easyocr").exists()
