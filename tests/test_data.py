"""The datasets of notebook 00: text lines (TFIC Sec. IV-A) and page patches (paper 3, Sec. 4.6)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from tficlib import artifacts, config, ocr
from tficlib.data import manifest, pages, textlines


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A tiny profile writing under a temporary data folder."""
    monkeypatch.setenv("TFIC_DATA", str(tmp_path / "data"))
    return config.resolve("smoke").with_overrides(
        textlines={"n_train": 4, "n_test": 3}, pages={"n_pages": 3}
    )


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


# --------------------------------------------------------------------------- text lines
def test_textlines_deterministic_and_loadable(tiny, tmp_path, monkeypatch):
    textlines.generate(tiny, progress=False)
    first = _files(tiny.stage_dir("00_dataset") / "textlines")
    manifest = json.loads(textlines.manifest_path(tiny, "train").read_text())
    monkeypatch.setenv("TFIC_DATA", str(tmp_path / "again"))
    textlines.generate(tiny, progress=False)
    assert _files(tiny.stage_dir("00_dataset") / "textlines") == first
    assert len(first) == 4 + 3 + 3 + 3  # train, val, test and unseen (val and unseen as large as test by default)
    assert {"file", "label", "font", "background", "sha256"} <= set(manifest["items"][0])

    ds = textlines.load_split(tiny, "train")
    image, label = ds[0]
    assert image.shape == (3, tiny.textlines.height, tiny.textlines.width)
    assert image.dtype == torch.float32 and 0.0 <= image.min() and image.max() <= 1.0
    assert label == ds.labels[0] and len(ds.fonts) == 4
    val, test = textlines.load_split(tiny, "val"), textlines.load_split(tiny, "test")
    assert len(val) == len(test) and set(val.fonts) <= set(textlines.FONTS)
    assert not any(torch.equal(val[i][0], test[i][0]) for i in range(len(val)))  # drawn like test, not the same
    unseen = textlines.load_split(tiny, "unseen")
    header = json.loads(textlines.manifest_path(tiny, "unseen").read_text())
    assert not set(unseen.fonts) & set(textlines.FONTS) and set(unseen.fonts) <= set(textlines.UNSEEN_FONTS)
    assert header["words"] == textlines.WORD_SOURCES["unseen"] and "Python" in header["words"]
    assert all(set(lab) <= set(textlines.charset()) for lab in unseen.labels)
    images, labels = next(iter(textlines.loader(tiny, "test", batch_size=2, shuffle=True, seed=1)))
    assert images.shape == (2, 3, tiny.textlines.height, tiny.textlines.width) and len(labels) == 2


def test_textlines_follow_data_seed_not_training_seed(tiny):
    a = textlines._item(tiny, "train", 0)
    same = textlines._item(tiny.with_overrides(seed=1), "train", 0)
    other = textlines._item(tiny.with_overrides(data_seed=1), "train", 0)
    assert a[1] == same[1] and np.array_equal(np.asarray(a[0]), np.asarray(same[0]))
    assert a[1] != other[1] or not np.array_equal(np.asarray(a[0]), np.asarray(other[0]))


def test_textlines_manifest_integrity(tiny):
    textlines.generate(tiny, progress=False)
    root = textlines.manifest_path(tiny, "test").parent
    victim = root / "000001.png"
    image = np.asarray(Image.open(victim)).copy()
    image[0, 0] = 255 - image[0, 0]
    Image.fromarray(image).save(victim)
    with pytest.raises(artifacts.ArtifactError, match="000001.png.*sha256.*00_dataset.ipynb"):
        textlines.load_split(tiny, "test")
    # generate() notices the damage and rewrites the split
    textlines.generate(tiny, progress=False)
    assert len(textlines.load_split(tiny, "test")) == 3


def test_textlines_aspect_ratio_kept():
    label = "Keep the aspect"
    for height, width in ((64, 256), (256, 512)):
        canvas, (x0, y0, x1, y1), (w, h) = textlines.render_line(
            label, "Roboto-Regular.ttf", "uniform", height, width, seed=3, return_box=True
        )
        assert canvas.size == (width, height)
        # one scale factor in both directions (up to rounding to whole pixels)
        assert abs((x1 - x0) / (y1 - y0) - w / h) < 0.05 * w / h + 1.0 / (y1 - y0) * w / h
        # the ink of the fitted line has the aspect of trdg's rendering
        ink = np.asarray(canvas.convert("L")) < 128
        ys, xs = np.nonzero(ink)
        ink_aspect = (xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1)
        assert ink_aspect == pytest.approx(w / h, rel=0.1)


def test_textlines_labels_and_fonts():
    rng = random.Random(0)
    allowed = set(ocr.CHARSET)
    for _ in range(300):
        label = textlines.make_label(rng, 24)
        assert 1 <= len(label) <= 24 and set(label) <= allowed
        assert 1 <= len(label.split()) <= 4
    for name in textlines.FONTS:
        assert textlines.font_covers(textlines.font_path(name), ocr.CHARSET) == ""
    # a caps-only face is not in the curated list; a face lacking '€' is rejected by the check
    assert "BEBAS___.ttf" not in textlines.FONTS
    assert "€" in textlines.font_covers(textlines.font_path("BEBAS___.ttf"), ocr.CHARSET)


def test_missing_dataset_names_the_notebook(tiny):
    with pytest.raises(artifacts.MissingArtifact, match="notebooks/00_dataset.ipynb"):
        textlines.load_split(tiny, "train")
    with pytest.raises(artifacts.MissingArtifact, match="notebooks/00_dataset.ipynb"):
        pages.load_patches(tiny, "test")
    with pytest.raises(ValueError, match="unknown split"):
        textlines.load_split(tiny, "validation")


# --------------------------------------------------------------------------- pages
def test_patch_ground_truth_keeps_fully_inside_characters():
    chars = [  # (char, box, line, word): "ab cd" on one line
        ("a", (0, 0, 10, 20), 0, 0), ("b", (10, 0, 20, 20), 0, 0),
        ("c", (30, 0, 40, 20), 0, 1), ("d", (40, 0, 50, 20), 0, 1),
    ]
    text, words = pages.patch_ground_truth(chars, (5, 0, 45, 20))  # cuts 'a' and 'd'
    assert text == "b c"
    assert words == [("b", (5, 0, 15, 20)), ("c", (25, 0, 35, 20))]
    assert pages.patch_ground_truth(chars, (0, 0, 50, 20))[0] == "ab cd"
    assert pages.patch_ground_truth(chars, (0, 1, 50, 20))[0] == ""  # every box cut at the top


def test_rendered_page_boxes_and_patches(tiny):
    page = pages.render_page(tiny, 0)
    ink = np.asarray(page.image.convert("L")) < 128
    covered = np.zeros_like(ink)
    for _ch, (x0, y0, x1, y1), _line, _word in page.chars:
        covered[y0:y1, x0:x1] = True
    assert (ink & ~covered).sum() <= 0.001 * ink.sum()  # every ink pixel belongs to a character box
    boxes = pages.select_patches(tiny, page, 0)
    assert len(boxes) == tiny.pages.patches_per_page
    for i, a in enumerate(boxes):
        assert (a[2] - a[0], a[3] - a[1]) == (tiny.pages.patch_width, tiny.pages.patch_height)
        for b in boxes[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), "overlap"
        text, words = pages.patch_ground_truth(page.chars, a)
        assert sum(c.isalnum() for c in text) >= pages.MIN_PATCH_CHARS
        assert text == " ".join(w for w, _ in words)


def test_pages_split_by_page_and_load(tiny):
    split = pages.split_pages(tiny)
    assert not set(split["train"]) & set(split["test"])
    assert sorted(split["train"] + split["test"]) == list(range(tiny.pages.n_pages))
    assert len(split["test"]) >= 1
    pages.generate(tiny, progress=False)
    train, test = pages.load_patches(tiny, "train"), pages.load_patches(tiny, "test")
    assert not set(train.pages) & set(test.pages)
    assert len(train) + len(test) == tiny.pages.n_pages * tiny.pages.patches_per_page
    item = test[0]
    assert item["clean"].shape == item["degraded"].shape == (3, 64, 256)
    assert item["text"] == test.texts[0] and item["words"] == test.words(0)
    for word, (x0, y0, x1, y1) in item["words"]:
        assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 64 and word


def test_pages_manifest_integrity(tiny):
    pages.generate(tiny, progress=False)
    path = pages.manifest_path(tiny, "train")
    victim = path.parent / json.loads(path.read_text())["items"][0]["degraded"]
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(artifacts.ArtifactError, match="sha256.*00_dataset.ipynb"):
        pages.load_patches(tiny, "train")


def test_degrade_changes_the_image_and_keeps_its_size():
    image = Image.new("RGB", (256, 64), "white")
    ImageDraw.Draw(image).text((4, 10), "Degrade me, please", fill="black", font_size=20)
    array = np.asarray(image)
    out = pages.degrade(array, 2, 1)
    assert out.shape == array.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - array).mean() > 1.0
    assert np.array_equal(out, pages.degrade(array, 2, 1))  # deterministic
    with pytest.raises(ValueError, match="uint8"):
        pages.degrade(array.astype(np.float32), 2, 1)
    with pytest.raises(ValueError, match="quality"):
        pages.degrade(array, 2, 0)


def test_quasicrystal_is_trdgs_formula(monkeypatch):
    from trdg import background_generator

    random.seed(1)
    reference = np.asarray(background_generator.quasicrystal(24, 40).convert("L")).astype(int)
    monkeypatch.setattr(textlines, "QUASICRYSTAL_CONTRAST", 1.0)
    ours = np.asarray(textlines._quasicrystal(24, 40, random.Random(1)).convert("L")).astype(int)
    assert reference.max() - reference.min() > 50  # a real pattern, not a flat patch
    assert np.abs(ours - reference).max() <= 1


def test_read_rgb_gives_rgb_uint8_from_grey_and_rgba(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")

    g = manifest.read_rgb(tmp_path / "grey.png")
    assert g.shape == (3, 4, 3) and g.dtype == np.uint8
    assert (g == grey[..., None]).all()
    c = manifest.read_rgb(tmp_path / "rgba.png")
    assert c.shape == (3, 4, 3) and (c[..., 0] == 200).all() and (c[..., 1:] == 0).all()
    c[0, 0, 0] = 1  # its own writable copy
    with pytest.raises(FileNotFoundError):
        manifest.read_rgb(tmp_path / "missing.png")
