"""DnCNN (journal paper Sec. 4.3) and the OCR-guided chain D1 → CRAFT → D2 (Sec. 4.5): the networks.

* :class:`DnCNN` — Fig. 7: D = 17 layers (conv + ReLU, 15 × conv–BN–ReLU,
  conv), 64 filters of 3×3, residual learning x̂ = x − r̂.  With ``zero_init``
  the last convolution starts at zero, so the untrained network is the
  identity (our choice: training starts from the degraded image's own error).
* :class:`PatchCrops` — random crops of (clean, degraded) patch pairs on the
  JPEG block lattice, the training data of D1.
* :class:`OCRGuidedChain` — Fig. 8: frozen D1 gives x̃ = D1(x); CRAFT finds
  the word boxes on x̃; the trainable D2 refines each word at native
  resolution with a context margin; :func:`reassemble` pastes the words back.
  Each word window is refined as if alone (:func:`run_windows`), in training
  and at test time; on a GPU the windows of a batch run together,
  zero-padded and masked after every layer, which gives the same result.

The training objectives are in :mod:`tficlib.objectives` (:class:`~tficlib.objectives.Dequantization`,
:class:`~tficlib.objectives.OCRGuided`); the recipes of notebooks 04 and 05 in :mod:`tficlib.dequant`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import artifacts, ocr

__all__ = [
    "PACK_WASTE_CUDA",
    "DnCNN",
    "OCRGuidedChain",
    "PatchCrops",
    "load_dncnn",
    "pack_windows",
    "reassemble",
    "receptive_radius",
    "restore",
    "run_windows",
    "uint8_stack",
]


# =========================================================================== the network
class DnCNN(nn.Module):
    """DnCNN of Sec. 4.3 / Fig. 7: x̂ = x − r̂, r̂ = the residual (quantization noise) branch.

    ``depth`` D layers: conv(3×3, ``features``) + ReLU, (D − 2) × [conv(3×3) –
    BatchNorm – ReLU], conv(3×3) to ``channels``.  Padding 1 everywhere, so any
    input size works and the output has the input's shape.  With
    ``zero_init`` (default) the last convolution starts at zero: r̂ = 0 and the
    untrained network is the identity.
    """

    def __init__(self, depth: int = 17, features: int = 64, channels: int = 3, zero_init: bool = True):
        super().__init__()
        if depth < 3:
            raise ValueError(f"DnCNN depth must be >= 3, got {depth}")
        self.depth, self.features, self.channels = int(depth), int(features), int(channels)
        layers: list[nn.Module] = [nn.Conv2d(channels, features, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(features, features, 3, padding=1, bias=False), nn.BatchNorm2d(features),
                       nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(features, channels, 3, padding=1, bias=False))
        self.body = nn.Sequential(*layers)
        if zero_init:
            nn.init.zeros_(self.body[-1].weight)

    def residual(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """r̂: the predicted quantization noise.

        ``mask`` (B, 1, H, W) of 0/1 runs a batch of images of different
        sizes, each zero-padded on the right and bottom to (H, W) and marked by
        ones over its own area: every layer's activations are zeroed outside
        that area, so each layer reads zeros beyond the image's border exactly
        as its own zero padding does, and each image's r̂ equals what it gets
        alone (:func:`run_windows`).  Needs eval-mode BatchNorm (running
        statistics): batch statistics would mix the images and the padding.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"DnCNN expects (B, {self.channels}, H, W) images, got {getattr(x, 'shape', type(x))}")
        if mask is None:
            return self.body(x)
        if mask.shape != (x.shape[0], 1, *x.shape[2:]):
            raise ValueError(f"the mask of a padded batch must be (B, 1, H, W) = {(x.shape[0], 1, *x.shape[2:])}, "
                             f"got {tuple(mask.shape)}")
        if self.training:
            raise ValueError("a masked (padded) batch needs the DnCNN in eval mode: BatchNorm's batch statistics "
                             "would mix the images and their padding")
        x = x * mask
        for layer in self.body:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                x = x * mask
        return x

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return x - self.residual(x, mask)

    def hparams(self) -> dict:
        return {"depth": self.depth, "features": self.features, "channels": self.channels}


@torch.no_grad()
def restore(model: nn.Module, x: torch.Tensor, batch_size: int = 16, device=None) -> torch.Tensor:
    """Run ``model`` (eval mode) on images x (N, 3, H, W) in batches; output clamped to [0, 1], on CPU."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [model(x[i:i + batch_size].to(device)).clamp_(0, 1).cpu() for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else x.new_zeros((0, *x.shape[1:]))


def load_dncnn(path: str | Path, stage: str | None = None, device="cpu") -> tuple[DnCNN, dict]:
    """Load a DnCNN from a :func:`tficlib.train.train` checkpoint (weights only); returns (model, meta)."""
    payload = artifacts.load_checkpoint(path, stage)
    meta = payload["meta"]
    hp = meta.get("dncnn")
    if not hp:
        raise artifacts.ArtifactError(f"{path} holds no DnCNN (meta['dncnn'] missing)")
    if not meta.get("finished"):
        raise artifacts.ArtifactError(f"{path} is an unfinished training run; re-run its notebook to finish it")
    model = DnCNN(**hp)
    model.load_state_dict(payload["state"]["model"])
    return model.to(device).eval(), meta


# =========================================================================== data: random crops
def uint8_stack(dataset, kind: str) -> torch.Tensor:
    """The ``kind`` images (``"clean"`` or ``"degraded"``) of a patch dataset as one uint8 (N, 3, H, W) tensor."""
    if hasattr(dataset, "uint8"):
        arrays = [dataset.uint8(i, kind) for i in range(len(dataset))]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return torch.stack([(dataset[i][kind] * 255).round().to(torch.uint8) for i in range(len(dataset))])


class PatchCrops(torch.utils.data.Dataset):
    """Random ``crop``×``crop`` crops of (clean, degraded) patch pairs, on a ``grid``-pixel lattice.

    Held in memory as uint8.  The crop position comes from torch's global
    generator, which :func:`tficlib.train.train` seeds from (seed, step), so a
    resumed run draws the same crops.  ``grid`` = 16 puts every crop on the
    JPEG block lattice (8×8 blocks at half resolution) of a patch whose
    origin lies on it; ``crop=None`` returns whole patches.

    With ``jpeg=(factor, quality)`` (the degradation of
    :func:`tficlib.data.pages.degrade`) each item also holds ``low``: the
    low-resolution JPEG decode of its crop (the crop's ``1/factor`` scale, on
    the JPEG's own 8×8 grid when ``grid`` is ``8·factor``), recomputed here
    from the clean patches; the DCT loss on JPEG's grid compares with it.
    """

    def __init__(self, dataset, crop: int | None = 48, grid: int = 16, jpeg: tuple[int, int] | None = None):
        self.clean = uint8_stack(dataset, "clean")
        self.degraded = uint8_stack(dataset, "degraded")
        if len(self.clean) == 0:
            raise ValueError("PatchCrops: the dataset is empty")
        h, w = self.clean.shape[-2:]
        if crop is not None and (crop > h or crop > w or crop <= 0):
            raise ValueError(f"crop {crop} does not fit {h}x{w} patches")
        self.crop, self.grid = crop, max(1, int(grid))
        self.low, self.factor = None, 1
        if jpeg is not None:
            from .data import pages

            self.factor, quality = int(jpeg[0]), int(jpeg[1])
            step = 8 * self.factor
            if self.grid % step or (crop is not None and crop % step) or h % step or w % step:
                raise ValueError(f"the JPEG grid of a ×{self.factor} degradation needs crops, their lattice and the "
                                 f"patches in multiples of {step} pixels (crop {crop}, grid {self.grid}, {h}x{w})")
            lows = [pages.jpeg_low(c.permute(1, 2, 0).numpy(), self.factor, quality) for c in self.clean]
            self.low = torch.from_numpy(np.stack(lows)).permute(0, 3, 1, 2).contiguous()

    def __len__(self) -> int:
        return len(self.clean)

    def __getitem__(self, index: int) -> dict:
        c, d = self.clean[index], self.degraded[index]
        low = self.low[index] if self.low is not None else None
        if self.crop is not None:
            h, w = c.shape[-2:]
            ny, nx = (h - self.crop) // self.grid + 1, (w - self.crop) // self.grid + 1
            y = int(torch.randint(ny, ())) * self.grid
            x = int(torch.randint(nx, ())) * self.grid
            c, d = c[:, y:y + self.crop, x:x + self.crop], d[:, y:y + self.crop, x:x + self.crop]
            if low is not None:
                f, n = self.factor, self.crop // self.factor
                low = low[:, y // f:y // f + n, x // f:x // f + n]
        item = {"clean": c.float() / 255.0, "degraded": d.float() / 255.0}
        if low is not None:
            item["low"] = low.float() / 255.0
        return item


# =========================================================================== the OCR-guided chain (Sec. 4.5)
def reassemble(x_tilde: torch.Tensor, windows: Sequence[torch.Tensor], placements: Sequence[tuple]) -> torch.Tensor:
    """x̂: D1's output with each refined word window blended back in (Sec. 4.5, last step), without seams.

    ``x_tilde`` (3, H, W); ``windows[i]`` (3, h, w) is the refined window of
    ``placements[i]`` = ``(window, box)``, both (x0, y0, x1, y1) in image
    pixels, the box inside the window.  Each window is weighted by α = 1 on
    its word box, falling linearly to 0 across its margin, and
    x̂ = x̃ + Σ_i α_i (y_i − x̃) / max(1, Σ_i α_i): the words are exactly
    D2's, the margins fade into x̃ (no visible box edge), overlaps average.
    Differentiable with respect to the windows.
    """
    if x_tilde.dim() != 3:
        raise ValueError(f"reassemble expects one image (3, H, W), got {tuple(x_tilde.shape)}")
    if len(windows) != len(placements):
        raise ValueError(f"{len(windows)} windows for {len(placements)} placements")
    h, w = x_tilde.shape[-2:]
    delta = torch.zeros_like(x_tilde)
    weight = x_tilde.new_zeros((1, h, w))
    for y, ((wx0, wy0, wx1, wy1), (bx0, by0, bx1, by1)) in zip(windows, placements):
        if tuple(y.shape[-2:]) != (wy1 - wy0, wx1 - wx0):
            raise ValueError(f"a window of {tuple(y.shape[-2:])} does not fit its place {(wx0, wy0, wx1, wy1)}")
        alpha = _feather(wy1 - wy0, wx1 - wx0, (bx0 - wx0, by0 - wy0, bx1 - wx0, by1 - wy0), x_tilde)
        delta[:, wy0:wy1, wx0:wx1] = delta[:, wy0:wy1, wx0:wx1] + alpha * (y - x_tilde[:, wy0:wy1, wx0:wx1])
        weight[:, wy0:wy1, wx0:wx1] = weight[:, wy0:wy1, wx0:wx1] + alpha
    return x_tilde + delta / weight.clamp(min=1.0)


def _feather(h: int, w: int, box: tuple, like: torch.Tensor) -> torch.Tensor:
    """(1, h, w): 1 on ``box`` (window coordinates), a linear ramp to 0 at the window's edge outside it."""
    x0, y0, x1, y1 = box
    ys = torch.arange(h, dtype=like.dtype, device=like.device)
    xs = torch.arange(w, dtype=like.dtype, device=like.device)

    def ramp(t, lo, hi, size):
        before = torch.clamp((t + 1) / (lo + 1), max=1.0) if lo > 0 else torch.ones_like(t)
        after = torch.clamp((size - t) / (size - hi + 1), max=1.0) if hi < size else torch.ones_like(t)
        return torch.minimum(before, after)

    return (ramp(ys, y0, y1, h)[:, None] * ramp(xs, x0, x1, w)[None, :])[None]


def _window(box, margin: int, h: int, w: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return max(0, x0 - margin), max(0, y0 - margin), min(w, x1 + margin), min(h, y1 + margin)


def pack_windows(shapes: Sequence[tuple[int, int]], max_waste: float) -> list[list[int]]:
    """Group images of sizes ``shapes`` [(h, w)] into padded batches: lists of indices.

    Sorted by width then height; an image joins the current group while the
    group's padded area (count × max h × max w) stays within (1 + ``max_waste``)
    × the sum of its images' areas.  ``max_waste`` = 0 groups only images of
    one size.
    """
    if max_waste < 0:
        raise ValueError(f"max_waste must be >= 0, got {max_waste}")
    order = sorted(range(len(shapes)), key=lambda k: (shapes[k][1], shapes[k][0]))
    groups: list[list[int]] = []
    for k in order:
        cand = groups[-1] + [k] if groups else [k]
        hh = max(shapes[j][0] for j in cand)
        ww = max(shapes[j][1] for j in cand)
        area = sum(shapes[j][0] * shapes[j][1] for j in cand)
        if groups and len(cand) * hh * ww <= (1 + max_waste) * area:
            groups[-1] = cand
        else:
            groups.append([k])
    return groups


#: padded-area overhead allowed when D2's word windows are batched on a GPU (few large kernels beat many small
#: ones there); on the CPU each pixel costs, and only windows of one size share a batch.
PACK_WASTE_CUDA = 0.5


def run_windows(model: DnCNN, windows: Sequence[torch.Tensor], max_waste: float | None = None) -> list[torch.Tensor]:
    """``model`` (eval mode) on images of different sizes [(C, h, w)]: the outputs, each as if run alone.

    Windows are grouped by :func:`pack_windows`, zero-padded to their group's
    size and run with :meth:`DnCNN.residual`'s mask, so grouping changes the
    speed, never the result.  ``max_waste`` None: :data:`PACK_WASTE_CUDA` on
    a CUDA device, 0 elsewhere (measured on 2 CPU cores: padded batches of
    word windows were slower than one window at a time).
    """
    if not windows:
        return []
    if max_waste is None:
        max_waste = PACK_WASTE_CUDA if windows[0].device.type == "cuda" else 0.0
    shapes = [tuple(w.shape[-2:]) for w in windows]
    out: list[torch.Tensor | None] = [None] * len(windows)
    for group in pack_windows(shapes, max_waste):
        if len(group) == 1:
            out[group[0]] = model(windows[group[0]].unsqueeze(0))[0]
            continue
        hh = max(shapes[j][0] for j in group)
        ww = max(shapes[j][1] for j in group)
        x = torch.stack([F.pad(windows[j], (0, ww - shapes[j][1], 0, hh - shapes[j][0])) for j in group])
        mask = x.new_zeros(len(group), 1, hh, ww)
        for n, j in enumerate(group):
            mask[n, :, :shapes[j][0], :shapes[j][1]] = 1
        y = model(x, mask)
        for n, j in enumerate(group):
            out[j] = y[n, :, :shapes[j][0], :shapes[j][1]]
    return out


def receptive_radius(model: DnCNN) -> int:
    """Pixels on each side that a DnCNN output pixel depends on: one per 3×3 convolution (D)."""
    return int(model.depth)


class OCRGuidedChain(nn.Module):
    """The OCR-guided dequantizer of Sec. 4.5 / Fig. 8.

    ``d1`` (frozen) gives x̃ = D1(x); CRAFT (``ocr.detect_boxes``, frozen) finds
    the word boxes on x̃; ``d2`` (trainable) refines each word in its window
    (the box plus ``margin`` pixels of context); the frozen recognizer reads
    each refined word (:meth:`read`, the chain's own output) and
    :func:`reassemble` blends the words back into x̃ for the restored image.
    D2's BatchNorm uses D1's running statistics (always eval mode).

    Unless ``d2`` is given, D2 starts from D1's weights (Sec. 4.5: "starting
    from the pretrained DnCNN").  ``init`` says how:

    * ``"identity"``: D1's weights with the last convolution of the residual
      branch set to zero, so D2 starts as the identity on x̃'s windows;
    * ``"d1"``: D1 exactly, on x̃'s windows (D1 applied a second time);
    * ``"d1_degraded"``: D1 exactly, on the *degraded* input's windows, with a
      margin of at least D1's receptive field: before training D2 gives D1's
      output at every word (x̂_p = D1(x)_p), and it learns from the original
      input rather than from D1's result.

    :attr:`reads_degraded` tells which image D2's windows are cut from.
    """

    INITS = ("identity", "d1", "d1_degraded")

    def __init__(self, d1: DnCNN, d2: DnCNN | None = None, margin: int = 8, detect_kwargs: dict | None = None,
                 init: str = "identity"):
        super().__init__()
        if init not in self.INITS:
            raise ValueError(f"unknown D2 initialisation {init!r}; choose one of {', '.join(self.INITS)}")
        self.d1 = d1.eval()
        for p in self.d1.parameters():
            p.requires_grad_(False)
        if d2 is None:
            d2 = copy.deepcopy(d1)
            if init == "identity":
                with torch.no_grad():
                    d2.body[-1].weight.zero_()
        self.d2 = d2
        self.init = init
        for p in self.d2.parameters():
            p.requires_grad_(True)
        self.margin = max(int(margin), receptive_radius(d1)) if init == "d1_degraded" else int(margin)
        self.detect_kwargs = dict(detect_kwargs or {})
        self.train(False)

    @property
    def reads_degraded(self) -> bool:
        """True when D2's windows are cut from the degraded input x (``init="d1_degraded"``), else from x̃."""
        return self.init == "d1_degraded"

    def train(self, mode: bool = True) -> OCRGuidedChain:
        """D1 and D2 stay in eval mode (frozen D1; D2 keeps D1's BatchNorm statistics)."""
        super().train(False)
        return self

    def windows(self, words: Sequence[tuple[torch.Tensor, tuple]], d2: DnCNN | None = None) -> list[tuple]:
        """D2 on the window of each word: ``[(source (3, H, W), box)]`` -> ``[(refined window, (window, box))]``.

        The window is the box plus ``margin`` pixels of context, cut at the
        image border; each is refined exactly as if alone (:func:`run_windows`),
        in training and at test time alike.  ``d2`` (default ``self.d2``) is the
        network to run: the training loop passes the module it trains.
        """
        wins, crops = [], []
        for source, box in words:
            h, w = source.shape[-2:]
            x0, y0, x1, y1 = win = _window(box, self.margin, h, w)
            wins.append(win)
            crops.append(source[:, y0:y1, x0:x1])
        out = run_windows(self.d2 if d2 is None else d2, crops)
        return [(o, (win, tuple(b))) for o, (_, b), win in zip(out, words, wins)]

    def refine_words(self, words: Sequence[tuple[torch.Tensor, tuple]], d2: DnCNN | None = None) -> list[torch.Tensor]:
        """x̂_p = D2(source_p) for word boxes of any images: [(source (3, H, W), box)] -> patches (3, y1−y0, x1−x0)."""
        return [o[:, b[1] - win[1]:b[3] - win[1], b[0] - win[0]:b[2] - win[0]]
                for o, (win, b) in self.windows(words, d2)]

    def detect(self, x_tilde: torch.Tensor) -> list:
        """CRAFT's word boxes on D1's output (frozen), in reading order."""
        return ocr.detect_boxes(x_tilde.detach().clamp(0, 1).cpu(), **self.detect_kwargs)

    @torch.no_grad()
    def run(self, x: torch.Tensor, boxes: Sequence[Sequence[tuple]] | None = None, refine: bool = True) -> dict:
        """The chain on degraded images x (B, 3, H, W): every intermediate, for reading and figures.

        Returns ``x_tilde`` (D1's output), ``boxes`` (CRAFT on x̃, or the
        given ones), ``words`` (per image, the word patches the recognizer
        reads: D2's with ``refine``, else x̃'s at the same boxes) and
        ``restored`` (x̂: the words blended into x̃, :func:`reassemble`).
        All in [0, 1].
        """
        x_tilde = self.d1(x).clamp(0, 1)
        boxes = [self.detect(xt) for xt in x_tilde] if boxes is None else [list(b) for b in boxes]
        words, restored = [], []
        for xi, xt, bs in zip(x, x_tilde, boxes):
            if not refine or not bs:
                words.append([xt[:, b[1]:b[3], b[0]:b[2]] for b in bs])
                restored.append(xt)
                continue
            source = xi if self.reads_degraded else xt
            refined = self.windows([(source, b) for b in bs])
            words.append([o[:, b[1] - win[1]:b[3] - win[1], b[0] - win[0]:b[2] - win[0]].clamp(0, 1)
                          for o, (win, b) in refined])
            restored.append(reassemble(xt, [o for o, _ in refined], [p for _, p in refined]).clamp(0, 1))
        return {"x_tilde": x_tilde, "boxes": boxes, "words": words, "restored": torch.stack(restored)}

    @torch.no_grad()
    def read(self, x: torch.Tensor, boxes: Sequence[Sequence[tuple]] | None = None, refine: bool = True) -> dict:
        """The text at the end of the chain (Sec. 4.5): the frozen recognizer on each word, joined in reading order.

        Each word patch (D2's, or D1's with ``refine=False``) is read as a
        saved 8-bit image holds it, by the recognizer the chain is trained
        through (greedy CTC decoding); the words of an image are joined in
        CRAFT's reading order.  Returns :meth:`run`'s dict plus ``texts``
        (one string per image) and ``word_texts``.
        """
        out = self.run(x, boxes, refine)
        recognizer = ocr.get_recognizer(x.device)
        word_texts = []
        for words in out["words"]:
            if not words:
                word_texts.append([])
                continue
            crops = [ocr.crop_boxes(ocr.as_saved(p)[None], [[(0, 0, p.shape[-1], p.shape[-2])]])[0] for p in words]
            logits = ocr.recognize_crops(crops, recognizer)
            word_texts.append([ocr.greedy_decode(v[None])[0] for v in logits])
        out["word_texts"] = word_texts
        out["texts"] = [ocr.join_words(t) for t in word_texts]
        return out

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) degraded -> x̂ (B, 3, H, W) in [0, 1]: D1, CRAFT, D2 per word, reassembly."""
        return self.run(x)["restored"]
