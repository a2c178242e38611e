"""Document pages, their 64x256 patches and the extreme-JPEG degradation.

Della Fiore et al., *End-to-End Semantic Preservation in Text-Aware Image
Compression Systems* (journal extension of TFIC), Sec. 4.6: pages of black text on
white, cut into 10 non-overlapping 64x256 patches per page, split 80/20 by page;
the degraded input is a low-resolution, coarsely quantized JPEG.

Choices we made (the paper does not pin them down):

* **text** -- English prose that ships with Python itself: the paragraphs of the
  Python reference documentation in the standard library's ``pydoc_data.topics``
  (the text ``help()`` shows), keeping prose paragraphs only (no indented code or
  grammar, no headings), reST markup removed, characters limited to the
  recognizer's charset.  The exact text depends on the Python minor version
  (3.11 in the lock file).
* **fonts** -- one of :data:`FONTS` per page (serif: STIX General (Times-like),
  DejaVu Serif; sans: DejaVu Sans (all three shipped with matplotlib), Roboto and
  Open Sans (shipped with trdg)).
* **layout** -- ``cfg.pages.font_size`` px text, drawn word by word with PIL on a
  ``page_width x page_height`` white page; the line pitch is half the patch
  height (32 px), so a patch holds exactly two lines.  Every character's ink box
  is recorded.
* **patches** -- the top of a patch is aligned with a line slot (two whole lines
  in it), its x position is random (seeded) among the positions whose left and
  right borders cut through no character (the fewest, if none is free), so no
  partial glyph is visible that the ground truth lacks (cut glyphs cost ~5 % of
  EasyOCR's accuracy on clean patches); patches must not overlap and must hold
  at least :data:`MIN_PATCH_CHARS` characters.
* **ground truth** -- the characters whose ink boxes lie fully inside the patch,
  in reading order; words keep their structure: a word fully inside is kept, a
  word cut by the patch border contributes only its fully-inside characters
  (a contiguous piece of it).  ``text`` = the words joined by single spaces,
  line after line.  ``words`` = ``(word, (x0, y0, x1, y1))`` in patch pixels: the
  union box of the word's kept characters (the OCR-guided stage crops them).
* **degradation** (:func:`degrade`) -- applied per patch: downsample by
  ``factor`` with an area (box) filter, JPEG at ``quality`` (Pillow/libjpeg,
  RGB with its default 4:2:0 chroma subsampling; the text is grey, so chroma
  carries nothing), decode, upsample back with bicubic interpolation.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tficlib import artifacts
from tficlib.data import manifest

__all__ = [
    "FONTS",
    "PatchDataset",
    "Page",
    "degrade",
    "font_file",
    "generate",
    "jpeg_low",
    "load_patches",
    "manifest_path",
    "page_with_patches",
    "patch_ground_truth",
    "prose_paragraphs",
    "render_page",
    "select_patches",
    "split_pages",
]

STAGE = "00_dataset"
FORMAT = "tficlib-pages-1"  # bump when the generation changes: older datasets are then regenerated
SPLITS = ("train", "test")
MIN_PATCH_CHARS = 12  # a patch must "contain text"
MARGIN = 40  # page margin in pixels
CODE_TOKENS = ("__", "://", "()", ">>>")  # paragraphs with these read as code, not prose

#: name -> (package that ships it, path inside that package's data)
FONTS = {
    "STIXGeneral": ("matplotlib", "fonts/ttf/STIXGeneral.ttf"),
    "DejaVuSerif": ("matplotlib", "fonts/ttf/DejaVuSerif.ttf"),
    "DejaVuSans": ("matplotlib", "fonts/ttf/DejaVuSans.ttf"),
    "Roboto-Regular": ("trdg", "fonts/latin/Roboto-Regular.ttf"),
    "OpenSans-Regular": ("trdg", "fonts/latin/OpenSans-Regular.ttf"),
}


def font_file(name: str) -> Path:
    """Absolute path of one of :data:`FONTS`."""
    if name not in FONTS:
        raise ValueError(f"unknown page font {name!r}; fonts are {', '.join(FONTS)}")
    package, rel = FONTS[name]
    if package == "matplotlib":
        import matplotlib

        base = Path(matplotlib.get_data_path())
    else:
        import trdg

        base = Path(trdg.__file__).resolve().parent
    path = base / rel
    if not path.exists():
        raise FileNotFoundError(f"font {name} not found at {path}")
    return path


# --------------------------------------------------------------------------- prose
@lru_cache(maxsize=1)
def prose_paragraphs() -> tuple[str, ...]:
    """English prose paragraphs of Python's reference documentation (``pydoc_data.topics``).

    Keeps paragraphs whose lines are not indented (no code, no grammar), that are
    not headings, have at least 12 words, are mostly letters and hold no code
    tokens (:data:`CODE_TOKENS`); removes reST
    markup (``*emphasis*``, backquotes) and characters outside the recognizer's charset.
    """
    from pydoc_data.topics import topics

    from tficlib import ocr

    allowed = set(ocr.CHARSET)
    out = []
    for key in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[key]):
            lines = block.split("\n")
            if any(line[:1].isspace() for line in lines) or any(
                set(line.strip()) <= set("*=-^~") and line.strip() for line in lines
            ):
                continue
            text = " ".join(line.strip() for line in lines)
            text = re.sub(r"[*`]", "", text).replace("\u2019", "'").replace("\u201c", '"').replace(
                "\u201d", '"')
            text = "".join(c for c in text if c in allowed)
            text = re.sub(r"\s+", " ", text).strip()
            words = text.split()
            letters = sum(c.isalpha() for c in text)
            code_like = any(token in text for token in CODE_TOKENS)
            if len(words) >= 12 and letters >= 0.75 * len(text.replace(" ", "")) and not code_like:
                out.append(text)
    return tuple(out)


# --------------------------------------------------------------------------- pages
@dataclass
class Page:
    """A rendered page: the image and every character's ink box, in reading order.

    ``chars``: list of ``(char, (x0, y0, x1, y1), line, word)`` (word = index of the
    whitespace-separated token on the page).  ``slots``: the top y of each line slot.
    """

    image: Image.Image
    font: str
    chars: list
    slots: list
    line_pitch: int


def _seed(seed: int, *parts) -> int:
    key = "/".join(str(p) for p in ("tficlib-pages", int(seed), *parts))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


def render_page(cfg, index: int) -> Page:
    """Render page ``index`` of the profile (deterministic from ``cfg.data_seed``).

    Black prose on white, ``cfg.pages.font_size`` px, one line slot every
    ``patch_height // 2`` pixels, text drawn word by word with PIL; each
    character's ink box is the font's ink box of that character (``getbbox``)
    placed at its pen position in the word (``getlength`` of the preceding
    characters), widened to whole pixels.
    """
    p = cfg.pages
    rng = random.Random(_seed(cfg.data_seed, "page", index))
    font_name = list(FONTS)[rng.randrange(len(FONTS))]
    font = ImageFont.truetype(str(font_file(font_name)), p.font_size)
    pitch = p.patch_height // 2
    ascent, descent = font.getmetrics()
    if ascent + descent > pitch:
        raise ValueError(f"font size {p.font_size} px does not fit a {pitch}-px line pitch")
    baseline_offset = (pitch - ascent - descent) // 2 + ascent
    image = Image.new("RGB", (p.page_width, p.page_height), "white")
    draw = ImageDraw.Draw(image)
    space = font.getlength(" ")
    paragraphs = prose_paragraphs()
    para = rng.randrange(len(paragraphs))
    slots = list(range(MARGIN, p.page_height - MARGIN - pitch + 1, pitch))
    chars = []
    ink = {}  # char -> its ink box relative to (pen x, baseline)
    word_id = 0
    right = p.page_width - MARGIN
    words = paragraphs[para].split()
    for line, top in enumerate(slots):
        baseline = top + baseline_offset
        x = float(MARGIN)
        if not words:  # a paragraph ended on the previous line: the next one starts here
            para = (para + 1) % len(paragraphs)
            words = paragraphs[para].split()
        while words:
            word = words[0]
            width = font.getlength(word)
            if x + width > right:
                if x == MARGIN:  # a word longer than the line: cut it
                    words[0] = word[1:]
                    word = word[:1]
                    width = font.getlength(word)
                else:
                    break
            words.pop(0)
            draw.text((x, baseline), word, fill="black", font=font, anchor="ls")
            for i, ch in enumerate(word):
                if ch not in ink:
                    ink[ch] = font.getbbox(ch, anchor="ls")
                cx = x + font.getlength(word[:i])
                x0, y0, x1, y1 = ink[ch]
                box = (math.floor(cx + x0), baseline + y0, math.ceil(cx + x1), baseline + y1)
                chars.append((ch, box, line, word_id))
            word_id += 1
            x += width + space
    return Page(image=image, font=font_name, chars=chars, slots=slots, line_pitch=pitch)


def patch_ground_truth(chars, box) -> tuple[str, list]:
    """Ground truth of the patch ``box = (x0, y0, x1, y1)`` (page pixels, x1/y1 exclusive).

    The characters whose ink boxes lie fully inside the patch, in reading order;
    a word cut by the border keeps only its fully-inside characters.  Returns
    ``(text, words)``: ``words`` = ``[(word, (x0, y0, x1, y1)), ...]`` in patch
    pixels (union of the kept characters' boxes); ``text`` = words joined by spaces.
    """
    px0, py0, px1, py1 = box
    words: dict[int, list] = {}
    for ch, (x0, y0, x1, y1), _line, word in chars:
        if x0 >= px0 and y0 >= py0 and x1 <= px1 and y1 <= py1:
            words.setdefault(word, []).append((ch, (x0 - px0, y0 - py0, x1 - px0, y1 - py0)))
    out = []
    for word in sorted(words):
        pieces = words[word]
        text = "".join(c for c, _ in pieces)
        boxes = np.array([b for _, b in pieces])
        out.append((text, (int(boxes[:, 0].min()), int(boxes[:, 1].min()),
                           int(boxes[:, 2].max()), int(boxes[:, 3].max()))))
    return " ".join(w for w, _ in out), out


def _cut_counts(page: Page, top_line: int, page_width: int, patch_width: int) -> np.ndarray:
    """For every patch x position: how many characters of lines ``top_line``, ``top_line + 1``
    a patch border at ``x`` or ``x + patch_width`` would cut through."""
    cut = np.zeros(page_width - patch_width + 1, dtype=np.int64)
    for _ch, (x0, _y0, x1, _y1), line, _word in page.chars:
        if line not in (top_line, top_line + 1):
            continue
        cut[max(0, x0 + 1):max(0, x1)] += 1  # left border strictly inside the box
        cut[max(0, x0 - patch_width + 1):max(0, x1 - patch_width)] += 1  # right border
    return cut


def select_patches(cfg, page: Page, index: int) -> list[tuple[int, int, int, int]]:
    """``patches_per_page`` non-overlapping patch boxes holding text (seeded).

    The top of a patch is a line slot (two whole lines inside); x is drawn at
    random among the positions whose borders cut through the fewest characters
    (almost always none), so the patch shows no partial glyph that is absent from
    its ground truth.
    """
    p = cfg.pages
    rng = random.Random(_seed(cfg.data_seed, "patches", index))
    tops = list(range(max(1, len(page.slots) - 1)))
    candidates: dict[int, np.ndarray] = {}
    chosen: list[tuple[int, int, int, int]] = []
    for _ in range(200 * p.patches_per_page):
        if len(chosen) == p.patches_per_page:
            break
        line = tops[rng.randrange(len(tops))]
        if line not in candidates:
            cut = _cut_counts(page, line, p.page_width, p.patch_width)
            candidates[line] = np.flatnonzero(cut == cut.min())
        x = int(candidates[line][rng.randrange(len(candidates[line]))])
        y = page.slots[line]
        box = (x, y, x + p.patch_width, y + p.patch_height)
        if any(box[0] < c[2] and c[0] < box[2] and box[1] < c[3] and c[1] < box[3] for c in chosen):
            continue
        text, _ = patch_ground_truth(page.chars, box)
        if sum(c.isalnum() for c in text) >= MIN_PATCH_CHARS:
            chosen.append(box)
    if len(chosen) < p.patches_per_page:
        raise RuntimeError(f"page {index}: found only {len(chosen)} of {p.patches_per_page} patches")
    return chosen


def page_with_patches(cfg, index: int) -> Image.Image:
    """Page ``index`` with its patches outlined in red (for figures)."""
    page = render_page(cfg, index)
    image = page.image.copy()
    draw = ImageDraw.Draw(image)
    for x0, y0, x1, y1 in select_patches(cfg, page, index):
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(220, 0, 0), width=2)
    return image


def split_pages(cfg) -> dict[str, list[int]]:
    """Page indices of each split: a seeded permutation, ``train_fraction`` of pages for training."""
    n = cfg.pages.n_pages
    order = list(range(n))
    random.Random(_seed(cfg.data_seed, "split")).shuffle(order)
    n_train = int(round(cfg.pages.train_fraction * n))
    if n >= 2:
        n_train = min(max(n_train, 1), n - 1)
    return {"train": sorted(order[:n_train]), "test": sorted(order[n_train:])}


# --------------------------------------------------------------------------- degradation
def jpeg_low(image: np.ndarray, factor: int, quality: int) -> np.ndarray:
    """The low-resolution JPEG decode of :func:`degrade`: downsample by ``factor``, JPEG at ``quality``, decode.

    ``image``: uint8 HxWx3 RGB; returns uint8 (H/f)x(W/f)x3.  Its 8×8 blocks
    are the JPEG's own blocks (the DCT loss on JPEG's grid compares with them).
    """
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"degrade expects a uint8 HxWx3 RGB array, got {array.dtype} {array.shape}")
    if int(factor) < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    h, w = array.shape[:2]
    small = Image.fromarray(array, "RGB").resize(
        (max(1, round(w / factor)), max(1, round(h / factor))), Image.Resampling.BOX
    )
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as decoded:
        return np.asarray(decoded.convert("RGB")).copy()


def degrade(image: np.ndarray, factor: int, quality: int) -> np.ndarray:
    """Extreme low-resolution JPEG (paper 3, Sec. 4.6): downsample, JPEG, upsample back.

    x̃ = U_f(JPEG_q^{-1}(JPEG_q(D_f(x)))): ``image`` uint8 HxWx3 RGB is
    downsampled by ``factor`` with an area (box) filter, encoded with Pillow's
    JPEG at ``quality`` (1 = coarsest quantization; default 4:2:0 chroma
    subsampling) and decoded (:func:`jpeg_low`), then upsampled to HxW with
    bicubic interpolation.  Returns uint8 HxWx3.
    """
    h, w = np.asarray(image).shape[:2]
    low = Image.fromarray(jpeg_low(image, factor, quality), "RGB")
    return np.asarray(low.resize((w, h), Image.Resampling.BICUBIC)).copy()


# --------------------------------------------------------------------------- files
def _root(cfg) -> Path:
    return cfg.stage_dir(STAGE) / "pages"


def manifest_path(cfg, split: str) -> Path:
    """``data/<profile>/00_dataset/pages/<split>/manifest.json``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
    return _root(cfg) / split / "manifest.json"


def _header(cfg, split: str) -> dict:
    p = cfg.pages
    return {"format": FORMAT, "split": split, "seed": cfg.data_seed, "n_pages": p.n_pages,
            "pages": split_pages(cfg)[split], "font_size": p.font_size, "downsample": p.downsample,
            "jpeg_quality": p.jpeg_quality, "patch_height": p.patch_height,
            "patch_width": p.patch_width, "patches_per_page": p.patches_per_page,
            "page_width": p.page_width, "page_height": p.page_height,
            "train_fraction": p.train_fraction, "fonts": list(FONTS)}


def _entries(manifest: dict):
    for item in manifest["items"]:
        for kind in ("clean", "degraded"):
            yield item[kind], item[f"sha256_{kind}"]


def _valid(cfg, split: str) -> bool:
    expected = _header(cfg, split)
    return manifest.is_complete(manifest_path(cfg, split), expected,
                                len(expected["pages"]) * cfg.pages.patches_per_page, _entries)


def generate(cfg, force: bool = False, progress: bool = True) -> dict[str, Path]:
    """Render the pages, cut and degrade the patches, write PNGs and a manifest per split.

    Skipped for a split whose manifest is complete and valid (unless ``force``).
    Returns ``{split: manifest path}``.
    """
    from tqdm.auto import tqdm

    p = cfg.pages
    out = {}
    for split, page_ids in split_pages(cfg).items():
        path = manifest_path(cfg, split)
        if not force and _valid(cfg, split):
            out[split] = path
            continue
        root = path.parent
        items = []
        for index in tqdm(page_ids, desc=f"pages ({split})", disable=not progress):
            page = render_page(cfg, index)
            array = np.asarray(page.image)
            for k, box in enumerate(select_patches(cfg, page, index)):
                x0, y0, x1, y1 = box
                clean = np.ascontiguousarray(array[y0:y1, x0:x1])
                degraded = degrade(clean, p.downsample, p.jpeg_quality)
                text, words = patch_ground_truth(page.chars, box)
                item = {"page": index, "patch": k, "font": page.font, "box": list(box),
                        "text": text, "words": [[w, list(b)] for w, b in words]}
                for kind, pixels in (("clean", clean), ("degraded", degraded)):
                    name = f"{index:05d}_{k:02d}_{kind}.png"
                    with artifacts.atomic_write(root / name) as fh:
                        Image.fromarray(pixels, "RGB").save(fh, format="PNG")
                    item[kind] = name
                    item[f"sha256_{kind}"] = artifacts.sha256_file(root / name)
                items.append(item)
        artifacts.write_json(path, {**_header(cfg, split), "items": items})
        out[split] = path
    return out


# --------------------------------------------------------------------------- loading
class PatchDataset:
    """Patches of one split: ``dataset[i] -> dict(clean, degraded, text, words)``.

    ``clean``/``degraded``: float (3, 64, 256) in [0, 1]; ``text``: ground truth;
    ``words``: ``[(word, (x0, y0, x1, y1)), ...]`` in patch pixels.  Also
    ``.texts``, ``.pages``, ``.fonts`` and :meth:`uint8` (HxWx3 arrays for EasyOCR).
    """

    def __init__(self, root: Path, manifest: dict):
        self.root = Path(root)
        self.split = manifest["split"]
        self.header = {k: v for k, v in manifest.items() if k != "items"}
        self._items = manifest["items"]

    def __len__(self) -> int:
        return len(self._items)

    @property
    def texts(self) -> list[str]:
        return [i["text"] for i in self._items]

    @property
    def pages(self) -> list[int]:
        return [i["page"] for i in self._items]

    @property
    def fonts(self) -> list[str]:
        return [i["font"] for i in self._items]

    def words(self, index: int) -> list[tuple[str, tuple[int, int, int, int]]]:
        return [(w, tuple(b)) for w, b in self._items[index]["words"]]

    def uint8(self, index: int, kind: str = "clean") -> np.ndarray:
        """Patch ``index`` (``kind`` = ``clean`` or ``degraded``) as uint8 HxWx3."""
        if kind not in ("clean", "degraded"):
            raise ValueError(f"kind must be 'clean' or 'degraded', got {kind!r}")
        return manifest.read_rgb(self.root / self._items[index][kind])

    def __getitem__(self, index: int) -> dict:
        import torch

        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} patches")

        def tensor(kind):
            return torch.from_numpy(self.uint8(index, kind)).permute(2, 0, 1).float().div_(255.0)

        return {"clean": tensor("clean"), "degraded": tensor("degraded"),
                "text": self._items[index]["text"], "words": self.words(index)}


def load_patches(cfg, split: str) -> PatchDataset:
    """Load a split's patches, checking each file's sha256 against the manifest.

    Missing -> :class:`~tficlib.artifacts.MissingArtifact` naming notebooks/00_dataset.ipynb;
    tampered/corrupt -> :class:`~tficlib.artifacts.ArtifactError`.
    """
    path = manifest_path(cfg, split)
    data = manifest.load(path, STAGE, FORMAT, "page-patch", _entries,
                         "tficlib.data.pages.generate(cfg, force=True)")
    return PatchDataset(path.parent, data)
