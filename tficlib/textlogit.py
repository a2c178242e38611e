"""Recipe of notebook 03: the text logit loss of Lai, Tran, Koishida — regions, cached logits, filter, CER/WER.

*Learned Image Compression with Text Quality Enhancement* (Lai et al.) adds a
text term to the rate–distortion loss (Eq. 5, Algorithm 1)::

    L = R(ŷ) + R(ẑ) + λ·D(x, x̂) + κ·J(x, x̂),   J(x, x̂) = (1/n) Σ_i ‖v_i − v̂_i‖²  (Eq. 4)

with B = TextRegion(x) the text boxes of the *original* image (Eq. 1),
b_i = B_i(x), b̂_i = B_i(x̂) crops at the same place (Eq. 2) and
v_i = Recognize(b_i), v̂_i = Recognize(b̂_i) the recognizer's logits (Eq. 3).

Our choices (each written down where it is implemented):

* **TextRegion** = EasyOCR's CRAFT (as in the paper, Sec. 3.2) through
  :func:`tficlib.ocr.detect_boxes` with ``width_ths=0`` (:data:`DETECT_KWARGS`)
  so that EasyOCR does not merge the words of a line: one region per word,
  as the paper's WER procedure assumes ("each valid text region corresponds
  to one word", Sec. 3.3).
* **Recognize** = the frozen EasyOCR ``english_g2`` recognizer
  (:func:`tficlib.ocr.get_recognizer`).  The paper used PARSeq, which is not
  available offline.  v_i are its **pre-softmax CTC logits**, (T_i, 97): one
  row per time step (T_i = W'/4 − 1 for the crop's padded width W'), one
  column per class (CTC blank + 96 characters).  Each crop is resized to
  height 64 keeping its aspect (:func:`tficlib.ocr.crop_boxes`) and padded on
  the right by repeating its last column to EasyOCR's width
  ``ceil(max(w/64, 64/w))·64`` (:func:`tficlib.ocr.bucket_width`), exactly what the
  recognizer does to one crop on its own; crops of equal padded width are
  recognized in one batch.
* **‖·‖²** is the *mean* squared difference over the T_i × 97 entries (the
  paper: "the mean squared value of the text logit difference"), so J is
  independent of the crop width and of the number of classes, and κ = 0.1
  weighs a per-entry squared logit error against bpp and λ·255²·MSE.
  J_k = (1/n_k) Σ_i of that over the n_k kept regions of image k;
  J_k = 0 for an image without kept region (it contributes no text term);
  the batch value is the mean of J_k over the m images (Algorithm 1 divides
  the whole loss by m).
* **Caching** (Sec. 2.2): B and v_i of the originals are computed once per
  dataset split (:func:`region_cache`), so training runs the recognizer only
  on x̂.  The loss is :class:`tficlib.objectives.TextLogit` (Eq. 5) over
  :func:`tficlib.losses.text_logit_loss` (Eq. 4).  The cache records the sha256 of the split's manifest; a cache made
  for another dataset is rebuilt.
* **Region filter** (Eq. 6): median(c) ≥ m_min and stdev(c) ≤ σ_max, where c
  are the *maximum logits of the time steps whose arg-max is not the blank*
  (the per-character confidences; PARSeq has one step per character, a CTC
  model has blank steps between characters).  The paper's m_min = 14.2,
  σ_max = 2 were calibrated for PARSeq; :func:`derive_thresholds` re-derives
  them for EasyOCR from the training split.  A region where nothing is read
  (all steps blank) is dropped.
* **CER/WER** (Eq. 7, Sec. 3.3): the reference text of a region is what the
  recognizer reads in the original's crop, the prediction what it reads in
  the reconstruction's crop at the same box; S, D, I, C are pooled over an
  image's kept regions, then averaged over images (images without a kept
  region are left out).
"""

from __future__ import annotations

import dataclasses
import hashlib
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import artifacts, codec, distributed, evaluate, metrics, ocr, plots
from .losses import distortion, logit_distance, rate_bpp
from .objectives import TextLogit
from .train import Run, derive_seed, fit

__all__ = [
    "CACHE_FORMAT",
    "DETECT_KWARGS",
    "PAPER_THRESHOLDS",
    "STAGE",
    "IndexedLines",
    "RegionCache",
    "Thresholds",
    "build_region_cache",
    "cache_path",
    "collate_indexed",
    "confidence_stats",
    "derive_thresholds",
    "eq4_run",
    "evaluate_regions",
    "finetune",
    "kappa_method",
    "kappa_sweep",
    "load_region_cache",
    "loss_scale",
    "pick_examples",
    "prepare_caches",
    "plot_confidence_histogram",
    "plot_kappa_sweep",
    "plot_rate_text",
    "region_cache",
    "region_correct",
    "region_error_rates",
    "region_filter",
    "run_seed",
    "save_region_cache",
    "text_images",
    "thresholds_for",
    "train_curves",
    "train_stage",
]

STAGE = artifacts.TEXT_LOGIT
CACHE_FORMAT = "tficlib-textlogit-regions-1"
#: EasyOCR ``detect`` options for TextRegion(x): no horizontal merging, one box per word.
DETECT_KWARGS: dict[str, Any] = {"width_ths": 0.0}
#: The paper's Eq. 6 thresholds, calibrated for PARSeq's logits (Sec. 3.2).
PAPER_THRESHOLDS = {"m_min": 14.2, "sigma_max": 2.0}
#: bumped when the region evaluation changes, so cached evaluations are recomputed
EVAL_VERSION = 3


# --------------------------------------------------------------------------- Eq. 6: region filter
def confidence_stats(v: torch.Tensor) -> tuple[float, float]:
    """(median, stdev) of the per-character confidences of logits ``v`` (T, 97) (Eq. 6).

    The confidences are the maximum logits of the time steps whose arg-max is
    not the CTC blank (class 0).  The median of an even count is the mean of
    the two middle values; stdev is the sample standard deviation (0 for a
    single step).  A region with no non-blank step reads nothing:
    ``(-inf, inf)``, which every filter drops.
    """
    if not isinstance(v, torch.Tensor) or v.dim() != 2:
        raise ValueError(f"confidence_stats expects logits (T, C), got {getattr(v, 'shape', type(v))}")
    best, arg = v.detach().float().max(dim=1)
    c = best[arg != 0].cpu().tolist()
    if not c:
        return float("-inf"), float("inf")
    return float(statistics.median(c)), float(statistics.stdev(c)) if len(c) > 1 else 0.0


def region_filter(median, stdev, m_min: float, sigma_max: float) -> np.ndarray:
    """Eq. 6: keep a region iff median(v) ≥ m_min and stdev(v) ≤ σ_max (boolean array)."""
    m = np.asarray(median, dtype=float)
    s = np.asarray(stdev, dtype=float)
    if m.shape != s.shape:
        raise ValueError(f"median and stdev differ in shape: {m.shape} vs {s.shape}")
    return (m >= m_min) & (s <= sigma_max)


@dataclass(frozen=True)
class Thresholds:
    """Eq. 6 thresholds and how they were obtained."""

    m_min: float
    sigma_max: float
    source: str  # "derived" (from a training split) or "fixed"
    quantile: float | None = None
    n_regions: int = 0  # regions the derivation saw
    n_calibration: int = 0  # regions it used (the correctly read ones, or all)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def region_correct(text: str, label: str) -> bool:
    """Whether a region's recognized ``text`` is a word of ``label`` (or a run of its words).

    Used to calibrate Eq. 6 on the training split, where the ground-truth
    line is known: a region the recognizer reads correctly on the original
    image is a region whose logits J should preserve.
    """
    t = " ".join(text.split())
    if not t:
        return False
    words = label.split()
    for i in range(len(words)):
        for j in range(i + 1, len(words) + 1):
            if " ".join(words[i:j]) == t:
                return True
    return False


def derive_thresholds(median, stdev, correct=None, quantile: float = 0.05) -> Thresholds:
    """Re-derive Eq. 6's (m_min, σ_max) for our recognizer from a training split.

    The paper's m_min = 14.2, σ_max = 2 are PARSeq-specific.  We keep the same
    rule and calibrate its thresholds on the distribution of the training
    regions: among the regions read correctly on the original (``correct``;
    all regions that read something when it is None or selects none),
    m_min is the ``quantile`` quantile of the median confidence and σ_max the
    ``1 − quantile`` quantile of the stdev, i.e. each rule alone drops about
    ``quantile`` of the well-read regions and whatever is less confident.
    """
    if not 0.0 <= quantile < 0.5:
        raise ValueError(f"quantile must be in [0, 0.5), got {quantile}")
    m = np.asarray(median, dtype=float)
    s = np.asarray(stdev, dtype=float)
    if m.shape != s.shape:
        raise ValueError(f"median and stdev differ in shape: {m.shape} vs {s.shape}")
    readable = np.isfinite(m) & np.isfinite(s)
    use = readable
    if correct is not None:
        c = np.asarray(correct, dtype=bool)
        if c.shape != m.shape:
            raise ValueError(f"correct has shape {c.shape}, expected {m.shape}")
        if (c & readable).any():
            use = c & readable
    if not use.any():
        raise ValueError("derive_thresholds: no region with a readable text to calibrate on")
    return Thresholds(
        m_min=float(np.quantile(m[use], quantile)),
        sigma_max=float(np.quantile(s[use], 1.0 - quantile)),
        source="derived", quantile=float(quantile), n_regions=int(m.size), n_calibration=int(use.sum()),
    )


# --------------------------------------------------------------------------- the cache (Sec. 2.2)
@dataclass
class RegionCache:
    """Boxes B, logits v_i, confidences and texts of the original images of one split.

    Regions are stored flat (``R`` of them) in reading order, image after
    image: ``image_index[r]`` is the image, ``boxes[r]`` (x0, y0, x1, y1),
    ``logits[offsets[r]:offsets[r+1]]`` the (T_r, 97) logits v_r,
    ``median``/``stdev`` the Eq. 6 statistics, ``texts[r]`` the greedy-decoded
    reading.  ``kept`` (Eq. 6) is set by :meth:`apply`.
    """

    split: str
    manifest_sha256: str
    n_images: int
    image_index: torch.Tensor
    boxes: torch.Tensor
    offsets: torch.Tensor
    logits: torch.Tensor
    median: torch.Tensor
    stdev: torch.Tensor
    texts: list[str]
    labels: list[str]
    kept: torch.Tensor | None = None
    thresholds: Thresholds | None = None

    def __post_init__(self):
        self._by_image: list[list[int]] = [[] for _ in range(self.n_images)]
        for r, i in enumerate(self.image_index.tolist()):
            self._by_image[i].append(r)

    @property
    def n_regions(self) -> int:
        return int(self.image_index.numel())

    def regions_of(self, image: int, kept_only: bool = True) -> list[int]:
        """Region ids of ``image`` (kept ones only, once :meth:`apply` was called)."""
        rs = self._by_image[image]
        if kept_only and self.kept is not None:
            rs = [r for r in rs if bool(self.kept[r])]
        return rs

    def region_logits(self, r: int) -> torch.Tensor:
        return self.logits[int(self.offsets[r]):int(self.offsets[r + 1])]

    def correct(self) -> np.ndarray:
        """Per region: read correctly on the original (:func:`region_correct` against its line's label)."""
        return np.array([region_correct(t, self.labels[i]) for t, i in zip(self.texts, self.image_index.tolist())],
                        dtype=bool)

    def apply(self, thresholds: Thresholds) -> RegionCache:
        """Set ``kept`` by Eq. 6 with ``thresholds``; returns self."""
        self.kept = torch.from_numpy(region_filter(self.median.numpy(), self.stdev.numpy(),
                                                   thresholds.m_min, thresholds.sigma_max))
        self.thresholds = thresholds
        return self

    def batch(self, images: Sequence[int], device=None) -> tuple[list[list[tuple]], list[list[torch.Tensor]]]:
        """Kept boxes and cached logits v_i of ``images``: ``(boxes per image, v per image)``."""
        boxes, targets = [], []
        for i in images:
            rs = self.regions_of(int(i))
            boxes.append([tuple(int(v) for v in self.boxes[r].tolist()) for r in rs])
            targets.append([self.region_logits(r).to(device) if device is not None else self.region_logits(r)
                            for r in rs])
        return boxes, targets

    def reference_texts(self, images: Sequence[int] | None = None) -> list[list[str]]:
        """Per image, the texts read in its kept regions of the original (the Eq. 7 reference)."""
        images = range(self.n_images) if images is None else images
        return [[self.texts[r] for r in self.regions_of(int(i))] for i in images]

    def summary(self) -> dict:
        """Counts for a notebook table."""
        kept = int(self.kept.sum()) if self.kept is not None else None
        with_region = sum(1 for i in range(self.n_images) if self.regions_of(i))
        return {"split": self.split, "images": self.n_images, "regions": self.n_regions,
                "regions_per_image": self.n_regions / max(1, self.n_images), "kept_regions": kept,
                "images_with_kept_region": with_region,
                "correct_on_original": float(self.correct().mean()) if self.n_regions else float("nan")}

    def state(self) -> dict:
        return {"image_index": self.image_index, "boxes": self.boxes, "offsets": self.offsets,
                "logits": self.logits, "median": self.median, "stdev": self.stdev,
                "texts": list(self.texts), "labels": list(self.labels)}


def build_region_cache(dataset, split: str = "train", manifest_sha256: str = "", n_images: int | None = None,
                       device=None, progress: bool = True, detect_kwargs: dict | None = None) -> RegionCache:
    """TextRegion and Recognize on the originals (Eq. 1-3), once (Sec. 2.2).

    ``dataset[i] -> (image (3, H, W) float in [0, 1], label)``; the first
    ``n_images`` items (all when None).  Boxes come from CRAFT
    (:func:`tficlib.ocr.detect_boxes` with :data:`DETECT_KWARGS`), logits from
    :func:`tficlib.ocr.region_logits` without gradient.
    """
    n = len(dataset) if n_images is None else min(int(n_images), len(dataset))
    if n <= 0:
        raise ValueError("build_region_cache: no image to cache")
    kwargs = dict(DETECT_KWARGS if detect_kwargs is None else detect_kwargs)
    dev = torch.device(device) if device is not None else None
    recognizer = ocr.get_recognizer(dev)
    it = range(n)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"TextRegion + Recognize on {split} originals")
    image_index, boxes, texts, chunks, medians, stdevs, labels = [], [], [], [], [], [], []
    for i in it:
        x, label = dataset[i]
        labels.append(label)
        bxs = ocr.detect_boxes(x, device=dev, **kwargs)
        if not bxs:
            continue
        with torch.no_grad():
            (vs,) = ocr.region_logits(x.unsqueeze(0).to(recognizer.device), [bxs], recognizer)
        for b, v in zip(bxs, vs):
            v = v.float().cpu()
            m, s = confidence_stats(v)
            image_index.append(i)
            boxes.append(b)
            chunks.append(v)
            medians.append(m)
            stdevs.append(s)
        texts += [ocr.greedy_decode(v[None].cpu())[0] for v in vs]
    lengths = [c.shape[0] for c in chunks]
    offsets = torch.zeros(len(chunks) + 1, dtype=torch.long)
    if lengths:
        offsets[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.long), 0)
    return RegionCache(
        split=split, manifest_sha256=manifest_sha256, n_images=n,
        image_index=torch.tensor(image_index, dtype=torch.long),
        boxes=torch.tensor(boxes, dtype=torch.int32).reshape(-1, 4),
        offsets=offsets,
        logits=torch.cat(chunks) if chunks else torch.zeros(0, ocr.NUM_CLASSES),
        median=torch.tensor(medians, dtype=torch.float64),
        stdev=torch.tensor(stdevs, dtype=torch.float64),
        texts=texts, labels=labels,
    )


def cache_path(cfg, split: str) -> Path:
    """``data/<profile>/03_text_logit_training/cache/regions_<split>.pt``."""
    return cfg.stage_dir(STAGE) / "cache" / f"regions_{split}.pt"


def save_region_cache(path, cache: RegionCache, meta: dict | None = None) -> Path:
    """Atomic save (tensors, strings and numbers only: loads with ``weights_only=True``)."""
    full = {"format": CACHE_FORMAT, "split": cache.split, "manifest_sha256": cache.manifest_sha256,
            "n_images": cache.n_images, "detect_kwargs": DETECT_KWARGS, **(meta or {})}
    return artifacts.save_checkpoint(path, cache.state(), full)


def load_region_cache(path) -> tuple[RegionCache, dict]:
    """Load a cache written by :func:`save_region_cache` (no pickled code runs)."""
    payload = artifacts.load_checkpoint(path)
    meta = payload["meta"]
    if meta.get("format") != CACHE_FORMAT:
        raise artifacts.ArtifactError(f"{path} is not a text-logit region cache ({CACHE_FORMAT})")
    st = payload["state"]
    cache = RegionCache(split=meta["split"], manifest_sha256=meta["manifest_sha256"], n_images=int(meta["n_images"]),
                        image_index=st["image_index"], boxes=st["boxes"], offsets=st["offsets"],
                        logits=st["logits"], median=st["median"], stdev=st["stdev"],
                        texts=list(st["texts"]), labels=list(st["labels"]))
    return cache, meta


def region_cache(cfg, split: str, n_images: int | None = None, device=None, force: bool = False,
                 progress: bool = True) -> RegionCache:
    """The region cache of ``split`` (first ``n_images`` images), built once and reused.

    Reused only if it was made from the same dataset (sha256 of the split's
    ``manifest.json``), for the same number of images and detector settings;
    otherwise rebuilt and written atomically to :func:`cache_path`.
    """

    with distributed.main_first():  # under torchrun: rank 0 builds and writes the cache, the others read it
        return _region_cache(cfg, split, n_images, device, force, progress)


def _region_cache(cfg, split, n_images, device, force, progress) -> RegionCache:
    from .data import textlines

    dataset = textlines.load_split(cfg, split)
    manifest_sha = artifacts.sha256_file(textlines.manifest_path(cfg, split))
    n = len(dataset) if n_images is None else min(int(n_images), len(dataset))
    path = cache_path(cfg, split)
    if path.exists() and not force:
        try:
            cache, meta = load_region_cache(path)
        except artifacts.ArtifactError:
            cache, meta = None, {}
        if (cache is not None and meta.get("manifest_sha256") == manifest_sha and cache.n_images == n
                and meta.get("detect_kwargs") == DETECT_KWARGS):
            return cache
        if progress:
            print(f"{path.name}: made for another dataset or settings; rebuilding")
    cache = build_region_cache(dataset, split, manifest_sha, n, device=device, progress=progress)
    if artifacts.is_writer():
        save_region_cache(path, cache)
    return cache


def plot_confidence_histogram(cache: RegionCache, thresholds: Thresholds, bins: int = 40):
    """Histograms of Eq. 6's statistics over a split's regions, with the thresholds (a figure)."""
    import matplotlib.pyplot as plt

    m, s = cache.median.numpy(), cache.stdev.numpy()
    ok = np.isfinite(m) & np.isfinite(s)
    correct = cache.correct()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, values, thr, name, rule in ((axes[0], m, thresholds.m_min, "median of max logit", "m_min"),
                                        (axes[1], s, thresholds.sigma_max, "stdev of max logit", "σ_max")):
        edges = np.histogram_bin_edges(values[ok], bins=bins) if ok.any() else bins
        ax.hist(values[ok & correct], bins=edges, alpha=0.7, label="read correctly on x")
        ax.hist(values[ok & ~correct], bins=edges, alpha=0.7, label="misread on x")
        ax.axvline(thr, color="k", linestyle="--", label=f"{rule} = {thr:.2f}")
        ax.set_xlabel(name + " (non-blank steps)")
        ax.set_ylabel("regions")
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"Eq. 6 statistics of EasyOCR logits, {cache.split} split ({cache.n_regions} CRAFT regions)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- Eq. 4-5: training
class IndexedLines(torch.utils.data.Dataset):
    """``dataset[i]`` → ``(image, label, i)`` for ``i < n``: training items that know their cache entry."""

    def __init__(self, dataset, n: int | None = None):
        self.dataset = dataset
        self.n = len(dataset) if n is None else min(int(n), len(dataset))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} items")
        image, label = self.dataset[i]
        return image, label, i


def collate_indexed(items):
    """``[(image, label, i)]`` → ``(images (B,3,H,W), labels, indices (B,))``."""
    images, labels, idx = zip(*items)
    return torch.stack(images), list(labels), torch.tensor(idx, dtype=torch.long)


def kappa_method(kappa: float, cfg) -> str:
    """Method key of a run: ``reference`` (κ = 0), ``textlogit`` (κ = cfg.textlogit.kappa), else ``kappa<κ>``."""
    if kappa == 0:
        return "reference"
    if kappa == cfg.textlogit.kappa:
        return "textlogit"
    return f"kappa{kappa:g}"


def thresholds_for(cfg, cache: RegionCache) -> Thresholds:
    """Eq. 6 thresholds of the profile: fixed if ``cfg.textlogit.m_min/sigma_max`` are set, else derived.

    Derived (:func:`derive_thresholds`) from the training regions read
    correctly on the originals, at ``cfg.textlogit.filter_quantile``.
    """
    t = cfg.textlogit
    if t.m_min is not None and t.sigma_max is not None:
        return Thresholds(float(t.m_min), float(t.sigma_max), source="fixed", n_regions=cache.n_regions)
    return derive_thresholds(cache.median.numpy(), cache.stdev.numpy(), cache.correct(), t.filter_quantile)


def run_seed(seed: int, k: int) -> int:
    """Training seed of every run at λ index ``k``: the same for all κ (same batches, same noise)."""
    return derive_seed(int(seed), 0x7E47, int(k))


def finetune(cfg, k: int, kappa: float, cache: RegionCache, device=None, seed: int = 0,
             retrain: bool = False, progress: bool = True, centered: bool | None = None,
             method: str | None = None) -> Run:
    """Fine-tune the stage-1 model ``mse_<k>`` with Eq. 5 at λ = ``cfg.codec.lambdas[k]`` and ``kappa``.

    ``centered`` (None: ``cfg.textlogit.centered_logits``) chooses J's form
    (:func:`tficlib.losses.text_logit_loss`); ``method`` names the run
    (default :func:`kappa_method`).

    Every run at λ index k (reference κ = 0, text logit κ > 0) starts from the
    same checkpoint and takes exactly ``cfg.textlogit.steps`` steps on the
    same batches (the cached training images, seed :func:`run_seed`), through
    :func:`tficlib.train.fit` (resume, reuse); the codec is saved as
    ``models/<method>_<k>.pt``.  A non-finite loss (too large a κ) is
    reported in ``Run.error``, path None.  ``Run.params`` holds ``method``,
    ``k``, ``lambda`` and ``kappa``.
    """
    from .data import textlines

    t = cfg.textlogit
    lmbda = float(cfg.codec.lambdas[k])
    method = method or kappa_method(kappa, cfg)
    centered = t.centered_logits if centered is None else bool(centered)
    name = f"{method}_{k}"
    params = {"method": method, "k": k, "lambda": lmbda, "kappa": float(kappa)}
    start = evaluate.model_path(cfg, artifacts.MSE_PRETRAINING, "mse", k)
    model, _ = codec.load_model(start, stage=artifacts.MSE_PRETRAINING, device=device or cfg.device)
    data = IndexedLines(textlines.load_split(cfg, "train"), cache.n_images)
    objective = TextLogit(lmbda, kappa, cache if kappa > 0 else None, ste=t.ste, centered=centered)
    try:
        res = fit(cfg, "textlogit", model, objective, data, evaluate.checkpoint_path(cfg, STAGE, name),
                  seed=run_seed(seed, k), device=device, collate=collate_indexed,
                  desc=f"{name} λ={lmbda:g} κ={kappa:g}", progress=progress, retrain=retrain,
                  meta={"stage": STAGE, "run": name})
    except FloatingPointError as exc:
        return Run(name, None, [], params, error=str(exc))
    path = evaluate.model_path(cfg, STAGE, method, k)
    if not (res.reused and path.exists()) and artifacts.is_writer():
        codec.save_model(path, res.model, {"stage": STAGE, "method": method, "k": k, "lambda": lmbda,
                                           "kappa": kappa, "steps": t.steps, "profile": cfg.name,
                                           "aux_loss": res.aux_loss})
    return Run.of(name, path, res, params)


def train_curves(cfg, cache: RegionCache, device=None, seed: int = 0, retrain: bool = False) -> dict[str, list[Run]]:
    """Fig. 2's two curves: ``reference`` (κ = 0) and ``textlogit`` (κ = cfg.textlogit.kappa) at every λ."""
    runs: dict[str, list[Run]] = {"reference": [], "textlogit": []}
    for k in range(len(cfg.codec.lambdas)):
        runs["reference"].append(finetune(cfg, k, 0.0, cache, device, seed, retrain))
        runs["textlogit"].append(finetune(cfg, k, cfg.textlogit.kappa, cache, device, seed, retrain))
    return runs


def eq4_run(cfg, cache: RegionCache, device=None, seed: int = 0, retrain: bool = False) -> Run | None:
    """The paper's Eq. 4 (raw logits) at the κ sweep's λ and κ = cfg.textlogit.kappa, method ``textlogit_eq4``.

    Set beside the centred run of :func:`train_curves` at the same λ (same
    start, steps and batches); None when the profile trains Eq. 4 itself
    (``centered_logits`` False), since that run is then the ``textlogit`` one.
    """
    if not cfg.textlogit.centered_logits:
        return None
    k = range(len(cfg.codec.lambdas))[cfg.textlogit.sweep_lambda_index]
    return finetune(cfg, k, cfg.textlogit.kappa, cache, device, seed, retrain, centered=False, method="textlogit_eq4")


def kappa_sweep(cfg, cache: RegionCache, device=None, seed: int = 0, retrain: bool = False) -> list[Run]:
    """Fig. 4: one run per κ of ``cfg.textlogit.kappas`` at λ index ``sweep_lambda_index`` (κ = 0 included).

    The κ = 0 and κ = cfg.textlogit.kappa runs are those of :func:`train_curves` (reused).
    """
    k = range(len(cfg.codec.lambdas))[cfg.textlogit.sweep_lambda_index]
    return [finetune(cfg, k, float(kappa), cache, device, seed, retrain) for kappa in cfg.textlogit.kappas]


def prepare_caches(cfg, n_test: int | None = None, device=None) -> tuple[RegionCache, RegionCache]:
    """The training and test region caches with the Eq. 6 filter applied (thresholds from the training split)."""
    train_cache = region_cache(cfg, "train", n_images=cfg.textlogit.train_images, device=device)
    test_cache = region_cache(cfg, "test", n_images=n_test, device=device)
    thresholds = thresholds_for(cfg, train_cache)
    return train_cache.apply(thresholds), test_cache.apply(thresholds)


def train_stage(cfg, device=None, seed: int | None = None, retrain: bool = False) -> dict[str, Any]:
    """Every training run of notebook 03: the two curves, the κ sweep and Eq. 4 as written."""
    from .data import textlines

    seed = cfg.seed if seed is None else seed
    n_test = len(evaluate.subset(range(len(textlines.load_split(cfg, "test"))), cfg.eval.n_test))
    train_cache, _ = prepare_caches(cfg, n_test, device)
    return {"curves": train_curves(cfg, train_cache, device, seed, retrain),
            "kappa_sweep": kappa_sweep(cfg, train_cache, device, seed, retrain),
            "eq4": eq4_run(cfg, train_cache, device, seed, retrain)}


def loss_scale(cfg, cache: RegionCache, device=None, n: int = 16) -> list[dict]:
    """The terms of Eq. 5 for every stage-1 model on ``n`` cached training images (eval mode, rounded).

    Shows what κ weighs: bpp, λ·255²·MSE and J(x, x̂) at the start of
    fine-tuning: ``J`` in the form the profile trains, ``J_eq4`` on raw
    logits (Eq. 4), ``J_centred`` without each frame's mean, and
    ``shift_share`` = 1 − J_centred / J_eq4, the part of Eq. 4 that only
    shifts whole frames (invisible to the softmax).
    """
    from .data import textlines

    data = IndexedLines(textlines.load_split(cfg, "train"), cache.n_images)
    n = min(n, len(data))
    x, _, idx = collate_indexed([data[i] for i in range(n)])
    dev = torch.device(device or cfg.device)
    x = x.to(dev)
    boxes, targets = cache.batch(idx.tolist(), device=dev)
    rows = []
    for k, lmbda in enumerate(cfg.codec.lambdas):
        model, _ = codec.load_model(evaluate.model_path(cfg, artifacts.MSE_PRETRAINING, "mse", k),
                                    stage=artifacts.MSE_PRETRAINING, device=dev)
        with torch.no_grad():
            out = model(x)
            v_hat = ocr.region_logits(out["x_hat"].clamp(0.0, 1.0), boxes)  # the recognizer once, both forms of J
            j_eq4 = float(logit_distance(v_hat, targets, like=out["x_hat"]))
            j_centred = float(logit_distance(v_hat, targets, centered=True, like=out["x_hat"]))
            bpp = float(rate_bpp(out["likelihoods"], x.shape[0] * x.shape[2] * x.shape[3]))
            d = float(distortion(out["x_hat"], x, lmbda))
        j = j_centred if cfg.textlogit.centered_logits else j_eq4
        rows.append({"k": k, "lambda": lmbda, "bpp_estimated": bpp, "lambda_D": d, "J": j,
                     "kappa_J": cfg.textlogit.kappa * j, "J_eq4": j_eq4, "J_centred": j_centred,
                     "shift_share": 1 - j_centred / j_eq4 if j_eq4 > 0 else None})
    return rows


# --------------------------------------------------------------------------- Eq. 7: evaluation
def region_error_rates(reference: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict:
    """Lai et al.'s CER/WER (Eq. 7, Sec. 3.3): per image over its regions, then the mean over images.

    ``reference[i]`` / ``predicted[i]``: the texts of image i's regions (the
    original's and the reconstruction's readings of the same boxes).
    CER pools S, D, I, C of the characters over the image's regions
    (:func:`tficlib.metrics.image_cer`).  WER follows the paper's reading that
    "each valid text region corresponds to one word", so D_w = I_w = 0: a
    region is one word, substituted if its reading differs (whitespace runs
    collapsed), so WER = wrong regions / regions ≤ 1.  Images without region
    are left out of the mean (their CER/WER is undefined).  Returns ``cer``,
    ``wer``, ``n_images`` and the per-image values.
    """
    if len(reference) != len(predicted):
        raise ValueError(f"{len(reference)} reference images but {len(predicted)} predicted")
    cers, wers = [], []
    for k, (g, p) in enumerate(zip(reference, predicted)):
        if len(g) != len(p):
            raise ValueError(f"image {k}: {len(g)} reference regions but {len(p)} predicted")
        if not g:
            continue
        cers.append(metrics.image_cer(g, p))
        wers.append(sum(" ".join(a.split()) != " ".join(b.split()) for a, b in zip(g, p)) / len(g))

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")

    return {"cer": mean(cers), "wer": mean(wers), "n_images": len(cers), "per_image_cer": cers,
            "per_image_wer": wers}

def evaluate_regions(cfg, path, items, cache: RegionCache, device=None, refresh: bool = False) -> dict:
    """A saved codec on the test items: real bpp, PSNR, TFIC accuracy, and CER/WER per Eq. 7.

    The line reading (bpp from the bytes, header included; PSNR; the
    training engine's reading of the whole line: ``accuracy``, and its line
    CER/WER as ``cer_line`` / ``wer_line``) is :func:`tficlib.evaluate.evaluate_model`'s.
    ``cer`` / ``wer`` are Lai's (:func:`region_error_rates`): the readings of
    the original's kept regions (``cache``) against those of the same boxes
    of the decoded image.  Cached in ``<stage>/eval/regions/<model stem>.json``,
    keyed by the model file, the test items and the kept regions.
    """
    path = Path(path)
    dev = device or cfg.device
    labels = [lab for _, lab in items]
    kept = None if cache.kept is None else hashlib.sha256(np.packbits(cache.kept.numpy()).tobytes()).hexdigest()
    sig = {"version": EVAL_VERSION, **evaluate.signature(path, labels, STAGE), "cache": cache.manifest_sha256,
           "kept": kept}
    store = evaluate.cache_path(cfg, STAGE, path.stem, "regions")
    regions = None if refresh else artifacts.cached_json(store, sig)
    decoded = None
    if regions is None:
        ev, recon, _ = evaluate.decode(cfg, path, items, dev, STAGE)
        decoded = (ev, recon)
        preds: list[list[str]] = []
        step = max(1, cfg.eval.batch_size)
        for s in range(0, len(items), step):
            boxes, _ = cache.batch(range(s, min(len(items), s + step)))
            preds += ocr.recognize_regions(recon[s:s + step].to(dev), boxes)
        rates = region_error_rates(cache.reference_texts(range(len(items))), preds)
        regions = {"signature": sig, "model": str(path), "cer": rates["cer"], "wer": rates["wer"],
                   "n_text_images": rates["n_images"], "per_image_cer": rates["per_image_cer"],
                   "per_image_wer": rates["per_image_wer"], "region_preds": preds}
        artifacts.write_json(store, regions)
    line = evaluate.evaluate_model(cfg, path, items, dev, STAGE, refresh=refresh, decoded=decoded)
    out = {k: v for k, v in line.items() if k not in ("signature", "cer", "wer")}
    out.update({"cer_line": line["cer"], "wer_line": line["wer"]})
    out.update({k: v for k, v in regions.items() if k != "signature"})
    return out


def text_images(cache: RegionCache, n: int | None = None) -> list[int]:
    """Indices of the images with at least one kept region: those with a CER/WER (Eq. 7), in order."""
    return [i for i in range(cache.n_images if n is None else n) if cache.regions_of(i)]


def plot_rate_text(methods: dict, title: str = "", styles: dict | None = None):
    """Fig. 2: CER vs bpp and WER vs bpp (real bytes) for the methods of a results dict."""
    import matplotlib.pyplot as plt

    labels = {"reference": "w/o J (κ = 0)", "textlogit": "w/ J"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("cer", "wer")):
        plots.rate_curves(ax, methods, metric=metric, labels=labels, styles=styles,
                          title=f"{metric.upper()} vs bpp {title}".strip())
    fig.tight_layout()
    return fig


def plot_kappa_sweep(reference: dict, sweep: list[dict], kappas: Sequence[float]):
    """Fig. 4: CER/WER vs bpp of the κ sweep at one λ, over the reference (κ = 0, every λ) curve."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("cer", "wer")):
        plots.rate_curves(ax, {"reference": reference}, metric=metric, labels={"reference": "κ = 0, every λ"},
                          styles={"reference": {"color": "0.5"}})
        pts = [(e["bpp"], e[metric], kappa) for e, kappa in zip(sweep, kappas)
               if e is not None and e.get(metric) is not None and e.get("bpp") is not None]
        if pts:
            xs, ys, ks = zip(*pts)
            ax.plot(xs, ys, "-", color="C3", linewidth=0.8)
            for i, (x, y, kappa) in enumerate(pts):
                ax.scatter([x], [y], color="C3", zorder=3)
                # labels alternate above and below the points so that neighbouring κ do not overlap
                ax.annotate(f"κ={kappa:g}", (x, y), textcoords="offset points", xytext=(4, 5 if i % 2 == 0 else -12),
                            fontsize=8)
        ax.set_title(f"κ sweep at one λ: {metric.upper()} vs bpp")
    fig.tight_layout()
    return fig


def pick_examples(ev_ref: dict, ev_test: dict, n: int = 2, first: int = 2) -> list[int]:
    """Test images for Fig. 3: the first ``first`` ones, then the ``n`` with the largest per-image CER gain.

    Per-image CER lists only cover images with a kept region, in order; the
    indices returned are test-item indices.
    """
    with_text = [i for i, p in enumerate(ev_ref["region_preds"]) if p]
    gains = sorted(((r - t, i) for r, t, i in zip(ev_ref["per_image_cer"], ev_test["per_image_cer"], with_text)),
                   reverse=True)
    out = list(range(min(first, len(ev_ref["region_preds"]))))
    for _, i in gains:
        if len(out) >= first + n:
            break
        if i not in out:
            out.append(i)
    return out
