"""The TFIC text-line dataset (Della Fiore et al., TFIC, EUSIPCO 2025, Sec. IV-A).

The paper trains and tests on synthetic lines from the TextRecognitionDataGenerator
(trdg): about 20k training and 600 test images of 256x512.  We build the same kind
of data with trdg's own pieces, at the resolution of the profile
(``cfg.textlines.height x width``; ``paper``: 128x512, ``cpu``/``smoke``: 64x256 -- the
stages read each line whole with EasyOCR's recognizer at height 64, which needs a 1:4
canvas: on 256x512 lines that read falls to about 0.53, see ``tficlib.config``):

* **text** -- 1 to 4 words from trdg's English dictionary (``trdg/dicts/en.txt``),
  or trdg-like random strings of letters and digits (as trdg's
  ``create_strings_randomly``), at most ``cfg.textlines.max_chars`` characters, and
  only characters the recognizer can output (:data:`tficlib.ocr.CHARSET`);
* **font** -- a curated list of readable fonts shipped with trdg (:data:`FONTS`;
  decorative, handwriting, caps-only, hairline/thin faces and faces with old-style
  figures are excluded; :func:`font_covers` checks every charset character);
* **background** -- trdg's background types without photos: ``gaussian``
  (trdg type 0), ``uniform`` (type 1, plain white tinted to a random near-white
  level) and ``quasicrystal`` (type 2; a vectorised port of trdg's formula, with its
  contrast reduced so that dark text stays readable);
* **geometry** -- trdg renders the line (``computer_text_generator.generate``); the
  line is scaled to fit the canvas **keeping its aspect ratio** and pasted at a
  random position on a background rendered for the full canvas.  Never stretched:
  stretching a line to 256x512 halves EasyOCR's accuracy.

A ``val`` split (``cfg.textlines.n_val`` lines, drawn like the test split)
is for choices made on data other than the test split (the robust TFIC
variant of notebook 02).  A fourth split, ``unseen`` (``cfg.textlines.n_unseen`` lines), holds text no
training split has: fonts of other families (:data:`UNSEEN_FONTS`: Raleway and
Caviar Dreams from trdg's folder, DejaVu Sans Mono from matplotlib; neither the
text lines nor the pages use them) and words from another source (the prose of
Python's documentation, :func:`tficlib.data.pages.prose_paragraphs`, instead of
trdg's dictionary).  It tests whether a codec's gain holds for text it never saw.

Every image is drawn from its own seed (:func:`item_seed` of the profile seed,
split and index), so generation is byte-reproducible and independent per image.
Files: ``data/<profile>/00_dataset/textlines/<split>/NNNNNN.png`` and a
``manifest.json`` per split (file, label, font, background, sha256), checked on load.
"""

from __future__ import annotations

import hashlib
import math
import random
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from tficlib import artifacts
from tficlib.data import manifest

__all__ = [
    "BACKGROUNDS",
    "FONTS",
    "SPLITS",
    "UNSEEN_FONTS",
    "WORD_SOURCES",
    "TextLineDataset",
    "charset",
    "font_covers",
    "font_path",
    "generate",
    "item_seed",
    "load_split",
    "loader",
    "make_label",
    "make_unseen_label",
    "manifest_path",
    "render_line",
    "split_dir",
]

STAGE = "00_dataset"
FORMAT = "tficlib-textlines-1"  # bump when the generation changes: older datasets are then regenerated
SPLITS = ("train", "val", "test", "unseen")

#: readable faces from trdg/fonts/latin (regular, medium, bold and a few italics)
FONTS = (
    "Aller_Rg.ttf",
    "Aller_Bd.ttf",
    "DroidSans.ttf",
    "DroidSans-Bold.ttf",
    "Lato-Regular.ttf",
    "Lato-Medium.ttf",
    "Lato-Bold.ttf",
    "Lato-Italic.ttf",
    "OpenSans-Regular.ttf",
    "OpenSans-Semibold.ttf",
    "OpenSans-Bold.ttf",
    "OpenSans-Italic.ttf",
    "Roboto-Regular.ttf",
    "Roboto-Medium.ttf",
    "Roboto-Bold.ttf",
    "Roboto-Italic.ttf",
    "RobotoCondensed-Regular.ttf",
    "RobotoCondensed-Bold.ttf",
    "Sansation-Regular.ttf",
    "Sansation-Bold.ttf",
)

#: Fonts of the ``unseen`` split: name -> (package that ships it, path in its data); families no training split uses.
UNSEEN_FONTS = {
    "Raleway-Regular.ttf": ("trdg", "fonts/latin/Raleway-Regular.ttf"),
    "Raleway-SemiBold.ttf": ("trdg", "fonts/latin/Raleway-SemiBold.ttf"),
    "CaviarDreams.ttf": ("trdg", "fonts/latin/CaviarDreams.ttf"),
    "DejaVuSansMono.ttf": ("matplotlib", "fonts/ttf/DejaVuSansMono.ttf"),
    "DejaVuSansMono-Bold.ttf": ("matplotlib", "fonts/ttf/DejaVuSansMono-Bold.ttf"),
}
#: Where the words of each split come from (recorded in the manifests).
WORD_SOURCES = {"train": "trdg's English dictionary (75 %) and random strings (25 %)",
                "val": "trdg's English dictionary (75 %) and random strings (25 %)",
                "test": "trdg's English dictionary (75 %) and random strings (25 %)",
                "unseen": "the prose of Python's documentation (pydoc_data.topics)"}

#: background name -> trdg's background_type
BACKGROUNDS = {"gaussian": 0, "uniform": 1, "quasicrystal": 2}

TEXT_COLOR = "#000000,#3c3c3c"  # trdg draws a random colour in this (dark) range
RANDOM_STRING_FRACTION = 0.25  # share of lines made of random letters/digits
QUASICRYSTAL_CONTRAST = 0.3  # trdg's pattern spans black..white; keep it light
HEIGHT_FRACTION = (0.4, 0.75)  # text height as a fraction of the canvas height (upper bound)


# --------------------------------------------------------------------------- resources
def charset() -> str:
    """The recognizer's characters (:data:`tficlib.ocr.CHARSET`; one place for that fact)."""
    from tficlib import ocr

    return ocr.CHARSET


def _trdg_dir() -> Path:
    import trdg

    return Path(trdg.__file__).resolve().parent


def font_path(name: str) -> Path:
    """Absolute path of a font of trdg's latin folder, or one of :data:`UNSEEN_FONTS`."""
    if name in UNSEEN_FONTS:
        package, rel = UNSEEN_FONTS[name]
        if package == "matplotlib":
            import matplotlib

            base = Path(matplotlib.get_data_path())
        else:
            base = _trdg_dir()
        path = base / rel
        if not path.exists():
            raise FileNotFoundError(f"font {name!r} not found at {path}")
        return path
    path = _trdg_dir() / "fonts" / "latin" / name
    if not path.exists():
        raise FileNotFoundError(f"font {name!r} is not in {path.parent} (is trdg 1.8 installed?)")
    return path


def font_covers(path: str | Path, chars: str) -> str:
    """Characters of ``chars`` (spaces ignored) that the font at ``path`` has no glyph for."""
    from fontTools.ttLib import TTFont

    cmap = TTFont(str(path), lazy=True).getBestCmap()
    return "".join(c for c in chars if c != " " and ord(c) not in cmap)


@lru_cache(maxsize=2)
def _checked_fonts(split: str = "train") -> tuple[str, ...]:
    chars = charset()
    fonts = tuple(UNSEEN_FONTS) if split == "unseen" else FONTS
    for name in fonts:
        missing = font_covers(font_path(name), chars)
        if missing:
            raise ValueError(f"font {name} cannot render {missing!r}; remove it from its list")
    return fonts


@lru_cache(maxsize=1)
def _prose_words() -> tuple[str, ...]:
    """The words of Python's documentation prose (the page dataset's text), kept if the recognizer can spell them."""
    import re

    from tficlib.data.pages import prose_paragraphs

    word = re.compile(r"^[A-Za-z]+(?:['-][A-Za-z]+)*$")  # prose words, not code tokens
    words = {w.strip(".,;:()[]\"'!?") for para in prose_paragraphs() for w in para.split()}
    return tuple(sorted(w for w in words if 2 <= len(w) <= 14 and word.match(w)))


def make_unseen_label(rng: random.Random, max_chars: int) -> str:
    """1-4 words of Python's documentation prose, at most ``max_chars`` characters."""
    words_ = _prose_words()
    words: list[str] = []
    for _ in range(rng.randint(1, 4)):
        word = words_[rng.randrange(len(words_))]
        if words and len(" ".join(words + [word])) > max_chars:
            break
        words.append(word)
    return " ".join(words)[:max_chars].strip()


@lru_cache(maxsize=1)
def _dictionary() -> tuple[str, ...]:
    """trdg's English dictionary, keeping words the recognizer can spell (letters, digits, ' - . &)."""
    allowed = set(charset()) - set(" ")
    words = []
    for line in (_trdg_dir() / "dicts" / "en.txt").read_text(encoding="utf8").splitlines():
        word = line.strip()
        if word and len(word) <= 16 and all(c in allowed for c in word) and any(c.isalnum() for c in word):
            words.append(word)
    return tuple(words)


# --------------------------------------------------------------------------- one image
def item_seed(seed: int, split: str, index: int) -> int:
    """A 63-bit seed for image ``index`` of ``split``, independent of every other image."""
    digest = hashlib.sha256(f"tficlib-textlines/{int(seed)}/{split}/{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _random_word(rng: random.Random) -> str:
    """A trdg-like random string: letters and digits (trdg's ``create_strings_randomly``)."""
    pool = string.ascii_letters + string.digits
    return "".join(rng.choice(pool) for _ in range(rng.randint(3, 10)))


def make_label(rng: random.Random, max_chars: int) -> str:
    """1-4 dictionary words or random strings, at most ``max_chars`` characters, within the charset."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    random_strings = rng.random() < RANDOM_STRING_FRACTION
    n_words = rng.randint(1, 4)
    case = rng.random()
    words: list[str] = []
    for _ in range(n_words):
        if random_strings:
            word = _random_word(rng)
        else:
            words_ = _dictionary()
            word = words_[rng.randrange(len(words_))]
            if case < 0.15:
                word = word.upper()
            elif case < 0.35:
                word = word[:1].upper() + word[1:]
        if words and len(" ".join(words + [word])) > max_chars:
            break
        words.append(word)
    label = " ".join(words)[:max_chars].strip()
    allowed = set(charset())
    assert label and all(c in allowed for c in label), label
    return label


def _quasicrystal(height: int, width: int, rng: random.Random) -> Image.Image:
    """trdg's ``background_generator.quasicrystal`` (same formula and random draws), vectorised.

    trdg's version loops over pixels in Python (seconds per 256x512 image).  The
    pattern is then compressed to ``[255*(1-QUASICRYSTAL_CONTRAST), 255]``.
    """
    frequency = rng.random() * 30 + 20
    phase = rng.random() * 2 * math.pi
    rotation_count = rng.randint(10, 20)
    y = np.arange(width, dtype=np.float64) / max(width - 1, 1) * 4 * math.pi - 2 * math.pi
    x = np.arange(height, dtype=np.float64) / max(height - 1, 1) * 4 * math.pi - 2 * math.pi
    xx, yy = np.meshgrid(x, y, indexing="ij")  # (H, W): x runs down, y across, as in trdg
    r = np.hypot(xx, yy)
    base = np.arctan2(yy, xx)
    z = np.zeros_like(r)
    for i in range(rotation_count):
        z += np.cos(r * np.sin(base + i * math.pi * 2.0 / rotation_count) * frequency + phase)
    c = np.clip(255 - np.round(255 * z / rotation_count), 0, 255)
    c = 255 - (255 - c) * QUASICRYSTAL_CONTRAST
    return Image.fromarray(np.round(c).astype(np.uint8), "L").convert("RGB")


def _background(kind: str, height: int, width: int, rng: random.Random, seed: int) -> Image.Image:
    """A full-canvas background of trdg's type ``kind`` (no photos)."""
    from trdg import background_generator

    if kind == "gaussian":
        import cv2

        cv2.setRNGSeed(seed % (2**31))
        return background_generator.gaussian_noise(height, width).convert("RGB")
    if kind == "uniform":
        level = rng.randint(225, 255)
        return background_generator.plain_white(height, width).convert("RGB").point(
            lambda v: v * level // 255
        )
    if kind == "quasicrystal":
        return _quasicrystal(height, width, rng)
    raise ValueError(f"unknown background {kind!r}; choose one of {', '.join(BACKGROUNDS)}")


def render_line(label: str, font: str, background: str, height: int, width: int, seed: int,
                return_box: bool = False):
    """Render ``label`` on a ``height x width`` canvas, deterministically from ``seed``.

    trdg renders the line (tight crop of the ink); it is scaled by one factor in
    both directions (aspect ratio kept) to fit the canvas minus a margin and at most
    a random fraction of the canvas height, then pasted at a random position on a
    background rendered for the full canvas.  Returns a PIL RGB image (and the
    pasted box ``(x0, y0, x1, y1)`` and the unscaled line size if ``return_box``).
    """
    from tficlib.compat import patch_pillow_getsize

    patch_pillow_getsize()
    from PIL import ImageFont
    from trdg import computer_text_generator

    rng = random.Random(seed)
    path = str(font_path(font))
    margin = max(2, round(0.04 * min(height, width)))
    box_w, box_h = width - 2 * margin, height - 2 * margin
    cap_h = rng.uniform(*HEIGHT_FRACTION) * height

    # size the rendering so that the final resize is a down-scaling (sharper than up-scaling)
    probe = 100
    left, top, right, bottom = ImageFont.truetype(path, probe).getbbox(label)
    scale = min(box_w / max(right - left, 1), box_h / max(bottom - top, 1), cap_h / max(bottom - top, 1))
    font_size = max(12, int(math.ceil(probe * scale * 1.5)))

    state = random.getstate()
    random.seed(seed)  # trdg draws the text colour from the module-level `random`
    try:
        line, _mask = computer_text_generator.generate(
            label, path, TEXT_COLOR, font_size, 0, 1.0, 0, True, False
        )
    finally:
        random.setstate(state)
    w, h = line.size
    scale = min(box_w / w, box_h / h, cap_h / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    line = line.resize((new_w, new_h), Image.Resampling.LANCZOS)
    x0 = margin + rng.randint(0, max(0, box_w - new_w))
    y0 = margin + rng.randint(0, max(0, box_h - new_h))
    canvas = _background(background, height, width, rng, seed)
    canvas.paste(line, (x0, y0), line)
    if return_box:
        return canvas, (x0, y0, x0 + new_w, y0 + new_h), (w, h)
    return canvas


def _item(cfg, split: str, index: int) -> tuple[Image.Image, dict]:
    seed = item_seed(cfg.data_seed, split, index)
    rng = random.Random(seed ^ 0x5EED)
    make = make_unseen_label if split == "unseen" else make_label
    label = make(rng, cfg.textlines.max_chars)
    fonts = _checked_fonts(split)
    font = fonts[rng.randrange(len(fonts))]
    background = list(BACKGROUNDS)[rng.randrange(len(BACKGROUNDS))]
    image = render_line(label, font, background, cfg.textlines.height, cfg.textlines.width, seed)
    return image, {"label": label, "font": font, "background": background}


# --------------------------------------------------------------------------- files
def split_dir(cfg, split: str) -> Path:
    """``data/<profile>/00_dataset/textlines/<split>/``."""
    _check_split(split)
    return cfg.stage_dir(STAGE) / "textlines" / split


def manifest_path(cfg, split: str) -> Path:
    return split_dir(cfg, split) / "manifest.json"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")


def _split_size(cfg, split: str) -> int:
    t = cfg.textlines
    return {"train": t.n_train, "val": t.n_val or t.n_test, "test": t.n_test, "unseen": t.n_unseen or t.n_test}[split]


def _expected_header(cfg, split: str) -> dict:
    t = cfg.textlines
    header = {"format": FORMAT, "split": split, "seed": cfg.data_seed, "count": _split_size(cfg, split),
              "height": t.height, "width": t.width, "max_chars": t.max_chars,
              "fonts": list(UNSEEN_FONTS) if split == "unseen" else list(FONTS)}
    if split == "unseen":
        header["words"] = WORD_SOURCES[split]
    return header


def _entries(manifest: dict):
    return ((item["file"], item["sha256"]) for item in manifest["items"])


def _valid_manifest(cfg, split: str) -> bool:
    expected = _expected_header(cfg, split)
    return manifest.is_complete(manifest_path(cfg, split), expected, expected["count"], _entries)


def generate(cfg, force: bool = False, progress: bool = True) -> dict[str, Path]:
    """Generate every split for ``cfg`` (skipped where a complete, valid manifest exists).

    Returns ``{split: manifest path}``.  Each image is written atomically; the
    manifest is written last, so an interrupted run is simply redone.
    """
    from tqdm.auto import tqdm

    out = {}
    for split in SPLITS:
        path = manifest_path(cfg, split)
        if not force and _valid_manifest(cfg, split):
            out[split] = path
            continue
        root = split_dir(cfg, split)
        items = []
        for index in tqdm(range(_split_size(cfg, split)), desc=f"text lines ({split})",
                          disable=not progress):
            image, meta = _item(cfg, split, index)
            name = f"{index:06d}.png"
            with artifacts.atomic_write(root / name) as fh:
                image.save(fh, format="PNG")
            items.append({"file": name, **meta, "sha256": artifacts.sha256_file(root / name)})
        artifacts.write_json(path, {**_expected_header(cfg, split), "items": items})
        out[split] = path
    return out


# --------------------------------------------------------------------------- loading
@dataclass
class _Item:
    file: str
    label: str
    font: str
    background: str


class TextLineDataset:
    """A split of text lines: ``dataset[i] -> (image float 3xHxW in [0, 1], label)``.

    A ``torch.utils.data.Dataset`` (map-style).  ``.labels``, ``.fonts``,
    ``.backgrounds``, ``.files``; :meth:`uint8` gives the HxWx3 array (for EasyOCR).
    """

    def __init__(self, root: Path, manifest: dict):
        self.root = Path(root)
        self.split = manifest["split"]
        self.height, self.width = manifest["height"], manifest["width"]
        self._items = [_Item(i["file"], i["label"], i["font"], i["background"]) for i in manifest["items"]]

    def __len__(self) -> int:
        return len(self._items)

    @property
    def labels(self) -> list[str]:
        return [i.label for i in self._items]

    @property
    def fonts(self) -> list[str]:
        return [i.font for i in self._items]

    @property
    def backgrounds(self) -> list[str]:
        return [i.background for i in self._items]

    @property
    def files(self) -> list[Path]:
        return [self.root / i.file for i in self._items]

    def uint8(self, index: int) -> np.ndarray:
        """Image ``index`` as a uint8 HxWx3 RGB array."""
        return manifest.read_rgb(self.root / self._items[index].file)

    def __getitem__(self, index: int):
        import torch

        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} text lines")
        array = self.uint8(index)
        image = torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)
        return image, self._items[index].label


def load_split(cfg, split: str) -> TextLineDataset:
    """Load a generated split, checking every file against its sha256 in the manifest.

    Missing -> :class:`~tficlib.artifacts.MissingArtifact` naming notebooks/00_dataset.ipynb;
    tampered/corrupt -> :class:`~tficlib.artifacts.ArtifactError`.
    """
    path = manifest_path(cfg, split)
    data = manifest.load(path, STAGE, FORMAT, "text-line", _entries,
                         "tficlib.data.textlines.generate(cfg, force=True)")
    return TextLineDataset(path.parent, data)


def _collate(batch):
    import torch

    images, labels = zip(*batch)
    return torch.stack(images), list(labels)


def loader(cfg, split: str, batch_size: int, shuffle: bool = False, seed: int | None = None,
           drop_last: bool = False):
    """A ``DataLoader`` over :func:`load_split` yielding ``(images (B,3,H,W), labels list[str])``.

    Shuffling draws from its own ``torch.Generator`` seeded with ``seed`` (default ``cfg.seed``).
    """
    import torch

    generator = torch.Generator()
    generator.manual_seed(cfg.seed if seed is None else int(seed))
    return torch.utils.data.DataLoader(
        load_split(cfg, split), batch_size=batch_size, shuffle=shuffle, generator=generator,
        collate_fn=_collate, drop_last=drop_last, num_workers=0,
    )
