"""Evaluation metrics: OCR accuracy, CER/WER, PSNR, MS-SSIM, bpp and Bjøntegaard deltas.

Text metrics
    * :func:`accuracy` — TFIC paper (Della Fiore et al., EUSIPCO 2025), Sec. IV-A:
      ``1 − lev(G, T) / max(|G|, |T|)`` where ``G`` and ``T`` are the ground-truth
      and recognized texts reduced to their **alphanumeric** characters
      (``str.isalnum``; spaces and punctuation are dropped *before* the edit
      distance, our reading of "number of alphanumeric characters").
      Case-sensitive by default; ``case_sensitive=False`` case-folds both texts.
      Stages report both, as ``accuracy`` and ``accuracy_ci``
      (:func:`text_metrics`).  Both empty → 1.0; exactly one empty → 0.0.
    * :func:`cer` / :func:`wer` — Lai, Tran, Koishida, Eq. 7:
      ``(S + D + I) / (S + D + C)``, i.e. edit operations over the reference
      length ``N = S + D + C``.  Texts are compared as given (case-sensitive,
      punctuation kept) after collapsing runs of whitespace; words are the
      whitespace-separated tokens.  **Empty reference:** 0.0 if the prediction
      is empty too, else 1.0 (anything read where nothing should be is wholly
      wrong — the same rule as :func:`accuracy`).  CER is not bounded by 1
      otherwise (insertions), as the paper notes.
    * Lai's averaging ("first calculated for each individual image and then
      averaged over all images"): :func:`image_cer` / :func:`image_wer` pool the
      S, D, I, C counts over one image's text regions (Eq. 7 per image), and
      :func:`mean_over_images` averages those per-image values.  For single-line
      images (one region per image) :func:`mean_cer` / :func:`mean_wer` are the
      same thing.

Image metrics
    * :func:`psnr` — per image ``10·log10(R² / MSE)`` then the mean over the
      batch; identical images give ``max_db`` (100 dB) instead of ``inf`` so that
      means stay finite.
    * :func:`ms_ssim` — Wang et al. 2003 via ``pytorch_msssim``'s SSIM kernel
      (11×11 Gaussian, σ = 1.5).  Five scales need a short side > 160 px; a
      64×256 line has room for three.  We use the largest number of scales
      ``K ≤ 5`` with ``short side > 10·2^(K−1)`` (pytorch-msssim's own size rule
      generalised to K scales) and the first ``K`` standard weights renormalised
      to sum to 1.  256×512 images get the standard 5-scale MS-SSIM; 64×256
      images a 3-scale one (not numerically comparable with 5-scale values in
      the papers).  We do not pad: padding adds content identical in both
      images and inflates the score.
    * :func:`bpp` — ``8 · bytes / (H · W)`` from real encoded bytes.

Bjøntegaard deltas (``bjontegaard`` package, pchip interpolation)
    * :func:`bd_rate` — mean rate difference in percent at equal quality
      (negative: the test method needs less rate), integrated over the common
      quality range; works with accuracy (higher is better) and, with
      ``higher_is_better=False``, with CER/WER (the quality is negated).
    * :func:`bd_quality` — mean quality difference at equal rate over the common
      log-rate range (``bjontegaard.bd_psnr`` with any quality); in the
      quality's own units, or in percent of the reference (Lai's BD-CER /
      BD-WER / BD-PSNR %, Table 2) with ``relative=True``.
    * **Monotone rule.**  Each curve is first reduced to its *operational*
      rate–quality curve (:func:`operational_curve`): points sorted by rate,
      keeping only those that improve quality over every cheaper point (the
      Pareto front — the settings a user would pick).  This makes quality
      strictly monotone in rate, which the pchip inverse used by BD-rate needs.
      Pass ``monotone=False`` to refuse non-monotone curves instead (NaN with a
      reason).
    * A BD value that cannot be computed (fewer than two operational points,
      ranges that do not overlap, or overlap below ``min_overlap`` of the union
      range, default :data:`MIN_OVERLAP`) is NaN; :func:`bd_rate_result` /
      :func:`bd_quality_result` return a :class:`BDResult` that says why.
    * :func:`bd_bootstrap` — how sure a BD value is: a paired bootstrap over
      the test images (every point of both curves is measured on the same
      images, so each replicate resamples the images once for all points)
      gives a percentile confidence interval.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BDResult",
    "MIN_OVERLAP",
    "MS_SSIM_WEIGHTS",
    "accuracy",
    "alphanumeric",
    "bd_bootstrap",
    "bd_quality",
    "bd_quality_result",
    "bd_rate",
    "bd_rate_result",
    "bpp",
    "cer",
    "edit_counts",
    "format_interval",
    "image_cer",
    "image_wer",
    "levenshtein",
    "mean_accuracy",
    "mean_cer",
    "mean_over_images",
    "mean_wer",
    "ms_ssim",
    "ms_ssim_levels",
    "operational_curve",
    "paired_difference",
    "psnr",
    "text_metrics",
    "wer",
]

#: Default minimum overlap (fraction of the union range) for a BD value.  The
#: ``bjontegaard`` package only *warns* below 0.75; OCR-accuracy curves saturate
#: and rarely overlap that much, so we compute down to a quarter and return NaN
#: (with a reason) below it, where the integral rests on one or two segments.
MIN_OVERLAP = 0.25

#: MS-SSIM scale weights (Wang, Simoncelli, Bovik 2003), finest scale first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


# =========================================================================== text
def levenshtein(a: str | Sequence[str], b: str | Sequence[str]) -> int:
    """Levenshtein distance of two strings (characters) or two word lists (words).

    The one place the project computes an edit distance (rapidfuzz).
    """
    from rapidfuzz.distance import Levenshtein

    return int(Levenshtein.distance(a, b))


def _check_text(value, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return value


def alphanumeric(text: str, case_sensitive: bool = True) -> str:
    """``text`` reduced to its alphanumeric characters (case-folded unless ``case_sensitive``)."""
    _check_text(text, "text")
    kept = "".join(ch for ch in text if ch.isalnum())
    return kept if case_sensitive else kept.casefold()


def accuracy(gt: str, pred: str, case_sensitive: bool = True) -> float:
    """TFIC accuracy ``1 − lev(G, T) / max(|G|, |T|)`` over alphanumerics (TFIC Sec. IV-A).

    >>> accuracy("abc", "abd")
    0.6666666666666667
    >>> accuracy("Hello, world!", "hello world", case_sensitive=False)
    1.0
    """
    g = alphanumeric(_check_text(gt, "gt"), case_sensitive)
    t = alphanumeric(_check_text(pred, "pred"), case_sensitive)
    longest = max(len(g), len(t))
    if longest == 0:
        return 1.0
    return 1.0 - levenshtein(g, t) / longest


def _check_pairs(gts, preds) -> tuple[list, list]:
    gts, preds = list(gts), list(preds)
    if len(gts) != len(preds):
        raise ValueError(f"{len(gts)} ground truths but {len(preds)} predictions")
    if not gts:
        raise ValueError("no (ground truth, prediction) pairs to average")
    return gts, preds


def mean_accuracy(gts: Sequence[str], preds: Sequence[str], case_sensitive: bool = True) -> float:
    """Mean of :func:`accuracy` over aligned lists."""
    gts, preds = _check_pairs(gts, preds)
    return float(np.mean([accuracy(g, p, case_sensitive) for g, p in zip(gts, preds)]))


def _units(text: str, unit: str) -> str | list[str]:
    if unit == "char":
        return " ".join(text.split())
    if unit == "word":
        return text.split()
    raise ValueError(f"unit must be 'char' or 'word', got {unit!r}")


def edit_counts(gt: str, pred: str, unit: str = "char") -> dict[str, int]:
    """S, D, I, C and N = S + D + C of Lai et al. Eq. 7 for one reference/prediction pair.

    ``unit`` is ``"char"`` (whitespace runs collapsed to one space) or
    ``"word"`` (whitespace-separated tokens).  S + D + I equals the Levenshtein
    distance.
    """
    from rapidfuzz.distance import Levenshtein

    ref = _units(_check_text(gt, "gt"), unit)
    hyp = _units(_check_text(pred, "pred"), unit)
    ops = Levenshtein.editops(ref, hyp)
    s = sum(op.tag == "replace" for op in ops)
    d = sum(op.tag == "delete" for op in ops)
    i = sum(op.tag == "insert" for op in ops)
    n = len(ref)
    return {"S": s, "D": d, "I": i, "C": n - s - d, "N": n}


def _error_rate(counts: Sequence[dict[str, int]]) -> float:
    errors = sum(c["S"] + c["D"] + c["I"] for c in counts)
    n = sum(c["N"] for c in counts)
    if n == 0:
        return 0.0 if errors == 0 else 1.0
    return errors / n


def cer(gt: str, pred: str) -> float:
    """Character error rate (Lai et al., Eq. 7); empty reference: 0.0 or 1.0 (see module doc)."""
    return _error_rate([edit_counts(gt, pred, "char")])


def wer(gt: str, pred: str) -> float:
    """Word error rate (Lai et al., Eq. 7); empty reference: 0.0 or 1.0 (see module doc)."""
    return _error_rate([edit_counts(gt, pred, "word")])


def mean_cer(gts: Sequence[str], preds: Sequence[str]) -> float:
    """Mean per-image CER (one text per image, e.g. single text lines)."""
    gts, preds = _check_pairs(gts, preds)
    return float(np.mean([cer(g, p) for g, p in zip(gts, preds)]))


def mean_wer(gts: Sequence[str], preds: Sequence[str]) -> float:
    """Mean per-image WER (one text per image, e.g. single text lines)."""
    gts, preds = _check_pairs(gts, preds)
    return float(np.mean([wer(g, p) for g, p in zip(gts, preds)]))


def image_cer(region_gts: Sequence[str], region_preds: Sequence[str]) -> float:
    """CER of one image from its text regions: Eq. 7 with S, D, I, C summed over the regions."""
    gts, preds = _check_pairs(region_gts, region_preds)
    return _error_rate([edit_counts(g, p, "char") for g, p in zip(gts, preds)])


def image_wer(region_gts: Sequence[str], region_preds: Sequence[str]) -> float:
    """WER of one image from its text regions: Eq. 7 with S, D, I, C summed over the regions."""
    gts, preds = _check_pairs(region_gts, region_preds)
    return _error_rate([edit_counts(g, p, "word") for g, p in zip(gts, preds)])


def mean_over_images(
    per_image_gts: Sequence[Sequence[str]],
    per_image_preds: Sequence[Sequence[str]],
    metric: str = "cer",
) -> float:
    """Lai et al.'s procedure: CER/WER per image over its regions, then the mean over images.

    ``per_image_gts[i]`` lists the reference texts of image ``i``'s regions and
    ``per_image_preds[i]`` the recognized texts of the same regions.  An image
    with no regions counts as CER/WER 0.
    """
    per_image = {"cer": image_cer, "wer": image_wer}.get(metric)
    if per_image is None:
        raise ValueError(f"metric must be 'cer' or 'wer', got {metric!r}")
    images_g, images_p = _check_pairs(per_image_gts, per_image_preds)
    values = []
    for k, (g, p) in enumerate(zip(images_g, images_p)):
        if isinstance(g, str) or isinstance(p, str):
            raise TypeError(f"image {k}: expected a list of region texts, got a str")
        if len(g) != len(p):
            raise ValueError(f"image {k}: {len(g)} reference regions but {len(p)} predictions")
        values.append(per_image(g, p) if g else 0.0)
    return float(np.mean(values))


def text_metrics(gts: Sequence[str], preds: Sequence[str]) -> dict[str, float]:
    """The text metrics every stage reports: ``accuracy``, ``accuracy_ci``, ``cer``, ``wer``."""
    return {
        "accuracy": mean_accuracy(gts, preds, case_sensitive=True),
        "accuracy_ci": mean_accuracy(gts, preds, case_sensitive=False),
        "cer": mean_cer(gts, preds),
        "wer": mean_wer(gts, preds),
    }


# =========================================================================== images
def _as_batch(x, name: str):
    import torch

    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"{name} must be (N,C,H,W) or (C,H,W), got shape {tuple(x.shape)}")
    return x


def _pair(x, y, data_range: float):
    import torch

    x, y = _as_batch(x, "x"), _as_batch(y, "y")
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    if not (x.is_floating_point() and y.is_floating_point()) and data_range == 1.0:
        raise ValueError(
            "integer images with data_range=1.0: convert to float in [0, 1] or pass data_range=255"
        )
    return x.to(torch.float64), y.to(torch.float64)


def _reduce(values, reduction: str):
    if reduction == "mean":
        return float(values.mean())
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def psnr(x, y, data_range: float = 1.0, max_db: float = 100.0, reduction: str = "mean"):
    """PSNR in dB per image, then the mean (``reduction="none"``: the per-image tensor).

    ``x``, ``y``: (N,C,H,W) or (C,H,W) in ``[0, data_range]``.  Identical images
    (MSE = 0) give ``max_db`` rather than ``inf``; larger values are capped too.
    """
    import torch

    x, y = _pair(x, y, data_range)
    mse = (x - y).pow(2).flatten(1).mean(1)
    with torch.no_grad():
        value = 10.0 * torch.log10(float(data_range) ** 2 / mse.clamp_min(1e-300))
    return _reduce(value.clamp(max=max_db), reduction)


def ms_ssim_levels(height: int, width: int, win_size: int = 11) -> int:
    """Number of MS-SSIM scales an image of this size supports (≤ 5).

    The largest ``K`` with ``min(height, width) > (win_size − 1)·2^(K−1)``;
    pytorch-msssim's rule for ``K = 5`` is ``short side > 160``.
    """
    short = min(int(height), int(width))
    for levels in range(len(MS_SSIM_WEIGHTS), 0, -1):
        if short > (win_size - 1) * 2 ** (levels - 1):
            return levels
    raise ValueError(f"image {height}x{width} is too small for MS-SSIM (short side must exceed {win_size - 1})")


def ms_ssim(x, y, data_range: float = 1.0, reduction: str = "mean", levels: int | None = None):
    """MS-SSIM per image (mean over RGB channels), then the mean over the batch.

    ``levels`` defaults to :func:`ms_ssim_levels` of the image size (5 for
    images with a short side > 160 px, 3 for 64×256); the first ``levels``
    standard weights are renormalised to sum to 1.  With 5 levels this equals
    ``pytorch_msssim.ms_ssim``.
    """
    import torch
    import torch.nn.functional as F
    from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

    x, y = _pair(x, y, data_range)
    x, y = x.to(torch.float32), y.to(torch.float32)
    win_size, win_sigma = 11, 1.5
    max_levels = ms_ssim_levels(x.shape[-2], x.shape[-1], win_size)
    levels = max_levels if levels is None else int(levels)
    if not 1 <= levels <= max_levels:
        raise ValueError(
            f"levels={levels} impossible for {x.shape[-2]}x{x.shape[-1]} images (1..{max_levels})"
        )
    weights = torch.tensor(MS_SSIM_WEIGHTS[:levels], dtype=x.dtype, device=x.device)
    weights = weights / weights.sum()
    win = _fspecial_gauss_1d(win_size, win_sigma).repeat([x.shape[1], 1, 1, 1]).to(x.device)
    factors = []
    with torch.no_grad():
        for i in range(levels):
            ssim_c, cs = _ssim(x, y, win=win, data_range=data_range, size_average=False, K=(0.01, 0.03))
            if i < levels - 1:
                factors.append(torch.relu(cs))
                padding = [s % 2 for s in x.shape[2:]]
                x = F.avg_pool2d(x, kernel_size=2, padding=padding)
                y = F.avg_pool2d(y, kernel_size=2, padding=padding)
        factors.append(torch.relu(ssim_c))
        stacked = torch.stack(factors, dim=0)  # (levels, N, C)
        value = torch.prod(stacked ** weights.view(-1, 1, 1), dim=0).mean(1)
    return _reduce(value.to(torch.float64), reduction)


def bpp(num_bytes: int | bytes | bytearray, height: int, width: int) -> float:
    """Bits per pixel ``8·bytes / (H·W)``; ``num_bytes`` may be the encoded bytes themselves."""
    if isinstance(num_bytes, (bytes, bytearray, memoryview)):
        num_bytes = len(num_bytes)
    if int(height) <= 0 or int(width) <= 0:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    if num_bytes < 0:
        raise ValueError(f"num_bytes must be >= 0, got {num_bytes}")
    return 8.0 * float(num_bytes) / (int(height) * int(width))


# =========================================================================== Bjøntegaard
@dataclass(frozen=True)
class BDResult:
    """A Bjøntegaard delta with the reason it is NaN, if it is.

    ``value``: percent for BD-rate; quality units (or percent with
    ``relative=True``) for BD-quality.  ``overlap``: overlapping fraction of the
    union range on the integration axis (quality for BD-rate, log-rate for
    BD-quality).  ``dropped_ref`` / ``dropped_test``: indices of input points
    removed by the monotone rule.
    """

    value: float
    reason: str | None = None
    overlap: float = float("nan")
    dropped_ref: tuple[int, ...] = ()
    dropped_test: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        return math.isfinite(self.value)

    def __float__(self) -> float:
        return float(self.value)


def _as_curve(rates, qualities, name: str) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rates, dtype=float).ravel()
    q = np.asarray(qualities, dtype=float).ravel()
    if r.shape != q.shape:
        raise ValueError(f"{name}: {r.size} rates but {q.size} qualities")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(q))):
        raise ValueError(f"{name}: rates and qualities must be finite numbers (got NaN/inf/None)")
    if np.any(r <= 0):
        raise ValueError(f"{name}: rates must be > 0 for the log-rate axis, got {r.tolist()}")
    return r, q


def operational_curve(rates, qualities, higher_is_better: bool = True):
    """The operational (Pareto) rate–quality curve: ``(rates, qualities, kept_indices)``.

    Points are sorted by rate (ties: the better quality first) and a point is
    kept only if its quality is strictly better than every cheaper kept point.
    The result has strictly increasing rate and strictly improving quality.
    """
    r, q = _as_curve(rates, qualities, "curve")
    s = q if higher_is_better else -q
    order = sorted(range(r.size), key=lambda i: (r[i], -s[i]))
    kept: list[int] = []
    for i in order:
        if not kept or s[i] > s[kept[-1]]:
            kept.append(i)
    idx = np.asarray(kept, dtype=int)
    return r[idx], q[idx], tuple(int(i) for i in idx)


def _prepare(r_ref, q_ref, r_test, q_test, higher_is_better: bool, monotone: bool):
    """Operational curves of both inputs, or a reason why BD cannot be computed."""
    curves = []
    for name, r, q in (("reference", r_ref, q_ref), ("test", r_test, q_test)):
        r, q = _as_curve(r, q, name)
        rr, qq, kept = operational_curve(r, q, higher_is_better)
        dropped = tuple(sorted(set(range(r.size)) - set(kept)))
        if dropped and not monotone:
            return None, (
                f"{name} quality is not strictly {'increasing' if higher_is_better else 'decreasing'} "
                f"in rate (points {list(dropped)} would be dropped); pass monotone=True to use the "
                "operational (Pareto) curve"
            )
        if rr.size < 2:
            return None, (
                f"{name} curve has {rr.size} point(s) after the monotone rule (needs >= 2; "
                f"dropped points {list(dropped)})"
            )
        curves.append((rr, qq, dropped))
    return curves, None


def _overlap(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
    union = max(a.max(), b.max()) - min(a.min(), b.min())
    return (max(hi - lo, 0.0) / union if union > 0 else 0.0), lo, hi



def _overlap_check(axis: str, a: np.ndarray, b: np.ndarray, shown_ref: np.ndarray, shown_test: np.ndarray,
                   min_overlap: float, unit: str = "") -> tuple[float, float, float, str | None]:
    """Overlap of the two curves on ``axis`` (``a``, ``b``) and, if too small, the reason (ranges shown
    in ``shown_ref`` / ``shown_test`` units)."""
    overlap, lo, hi = _overlap(a, b)
    ranges = (f"reference [{shown_ref.min():.4g}, {shown_ref.max():.4g}]{unit}, "
              f"test [{shown_test.min():.4g}, {shown_test.max():.4g}]{unit}")
    if overlap <= 0.0:
        return overlap, lo, hi, f"{axis} ranges do not overlap: {ranges}"
    if overlap < min_overlap:
        return overlap, lo, hi, (f"{axis} ranges overlap only {overlap:.0%} of their union "
                                 f"(< min_overlap {min_overlap:.0%}): {ranges}")
    return overlap, lo, hi, None

def bd_rate_result(
    r_ref, q_ref, r_test, q_test, higher_is_better: bool = True, monotone: bool = True,
    min_overlap: float = MIN_OVERLAP,
) -> BDResult:
    """BD-rate in percent (negative: the test needs less rate at equal quality), with its reason.

    Integrates log-rate over the common quality range with pchip
    (``bjontegaard.bd_rate``).  ``higher_is_better=False`` for CER/WER (the
    quality is negated).  See the module doc for the monotone rule and
    ``min_overlap``.
    """
    import bjontegaard

    curves, reason = _prepare(r_ref, q_ref, r_test, q_test, higher_is_better, monotone)
    if curves is None:
        return BDResult(float("nan"), reason)
    (rr, qr, dr), (rt, qt, dt) = curves
    sign = 1.0 if higher_is_better else -1.0
    overlap, lo, hi, reason = _overlap_check("quality", qr, qt, qr, qt, min_overlap)
    if reason:
        return BDResult(float("nan"), reason, overlap, dr, dt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = bjontegaard.bd_rate(rr, sign * qr, rt, sign * qt, method="pchip",
                                    require_matching_points=False, min_overlap=0)
    return BDResult(float(value), None, overlap, dr, dt)


def bd_rate(r_ref, q_ref, r_test, q_test, higher_is_better: bool = True, **kwargs) -> float:
    """BD-rate in percent (pchip); NaN when it cannot be computed (see :func:`bd_rate_result`)."""
    return bd_rate_result(r_ref, q_ref, r_test, q_test, higher_is_better, **kwargs).value


def bd_quality_result(
    r_ref, q_ref, r_test, q_test, higher_is_better: bool = True, relative: bool = False,
    monotone: bool = True, min_overlap: float = MIN_OVERLAP,
) -> BDResult:
    """Mean quality difference (test − reference) at equal rate, over the common log-rate range.

    ``bjontegaard.bd_psnr`` (pchip) with any quality: accuracy, PSNR, CER ...
    The sign is the quality's own (for CER, negative = better).  With
    ``relative=True`` the difference is in percent of the reference's mean
    quality over the same range (Lai et al.'s BD-CER / BD-WER, Table 2).
    """
    import bjontegaard

    curves, reason = _prepare(r_ref, q_ref, r_test, q_test, higher_is_better, monotone)
    if curves is None:
        return BDResult(float("nan"), reason)
    (rr, qr, dr), (rt, qt, dt) = curves
    overlap, lo, hi, reason = _overlap_check("log-rate", np.log10(rr), np.log10(rt), rr, rt, min_overlap,
                                             unit=" bpp")
    if reason:
        return BDResult(float("nan"), reason, overlap, dr, dt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value, f_ref, _ = bjontegaard.bd_psnr(rr, qr, rt, qt, method="pchip", require_matching_points=False,
                                              interpolators=True, min_overlap=0)
    value = float(value)
    if relative:
        ref_mean = float(f_ref.integrate(lo, hi)) / (hi - lo)
        if ref_mean == 0.0:
            return BDResult(float("nan"), "reference mean quality is 0 over the common range; "
                            "relative BD-quality undefined", overlap, dr, dt)
        value = 100.0 * value / abs(ref_mean)
    return BDResult(value, None, overlap, dr, dt)


def bd_quality(r_ref, q_ref, r_test, q_test, higher_is_better: bool = True, **kwargs) -> float:
    """Mean quality gain at equal rate (pchip); NaN when it cannot be computed (see :func:`bd_quality_result`)."""
    return bd_quality_result(r_ref, q_ref, r_test, q_test, higher_is_better, **kwargs).value


def _per_image(values, name: str) -> np.ndarray:
    try:
        a = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: per-image values must be numbers (None allowed as NaN): {exc}") from None
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{name}: expected one list of per-image values per rate point "
                         f"(points x images), got shape {a.shape}")
    return a


def bd_bootstrap(fn, ref_rates, ref_qualities, test_rates, test_qualities, *, n_boot: int = 1000,
                 level: float = 0.95, seed: int = 0, **kwargs) -> dict:
    """Paired bootstrap confidence interval of a Bjøntegaard delta over the test images.

    ``fn``: :func:`bd_rate_result`, :func:`bd_quality_result` (or their float
    versions); ``kwargs`` go to it (``higher_is_better``, ``relative`` ...).
    Each of the four inputs holds one list of *per-image* values per rate
    point (points x N), all over the same N test images in the same order.
    A quality may be NaN (or None) for an image where it is undefined (CER of
    a line without text region): means skip it, as the reported mean does.

    The point estimate is ``fn`` on the per-point means.  Each of ``n_boot``
    replicates draws N image indices with replacement, *the same for every
    point of both curves* (the curves differ by codec, not by images: pairing
    keeps the image-to-image spread out of the difference), recomputes the
    means and ``fn``.  The interval is the ``level`` percentile interval of
    the replicates that could be computed (a replicate whose curves stop
    overlapping is NaN and left out; ``n_valid`` counts the others).

    Returns ``value``, ``low``, ``high``, ``std`` (None where undefined),
    ``level``, ``n_boot``, ``n_valid`` and ``reason`` (why there is no
    interval, else None).
    """
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rr, qr = _per_image(ref_rates, "reference rates"), _per_image(ref_qualities, "reference qualities")
    rt, qt = _per_image(test_rates, "test rates"), _per_image(test_qualities, "test qualities")
    if rr.shape != qr.shape or rt.shape != qt.shape:
        raise ValueError(f"rates and qualities must have the same shape per curve: reference "
                         f"{rr.shape} / {qr.shape}, test {rt.shape} / {qt.shape}")
    if rr.shape[1] != rt.shape[1]:
        raise ValueError(f"the curves must be measured on the same images: reference has "
                         f"{rr.shape[1]} per point, test {rt.shape[1]}")
    if not (np.all(np.isfinite(rr)) and np.all(np.isfinite(rt))):
        raise ValueError("per-image rates must be finite numbers")

    def estimate(idx) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample without any defined quality
            means = [rr[:, idx].mean(1), np.nanmean(qr[:, idx], 1), rt[:, idx].mean(1), np.nanmean(qt[:, idx], 1)]
        if not all(np.all(np.isfinite(m)) for m in means):
            return float("nan")
        return float(fn(*means, **kwargs))

    n = rr.shape[1]
    value = estimate(np.arange(n))
    rng = np.random.default_rng(seed)
    reps = np.array([estimate(rng.integers(0, n, n)) for _ in range(int(n_boot))])
    valid = reps[np.isfinite(reps)]
    out = {"value": value if math.isfinite(value) else None, "low": None, "high": None, "std": None,
           "level": float(level), "n_boot": int(n_boot), "n_valid": int(valid.size), "reason": None}
    if valid.size < max(2, int(n_boot) // 2):
        out["reason"] = (f"only {valid.size} of {int(n_boot)} bootstrap replicates could be computed "
                         "(the curves stop overlapping when the images are resampled)")
        return out
    alpha = (1.0 - float(level)) / 2.0
    out["low"], out["high"] = (float(v) for v in np.quantile(valid, [alpha, 1.0 - alpha]))
    out["std"] = float(valid.std(ddof=1))
    return out


def paired_difference(a, b, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Mean of the per-item differences a_i − b_i with a paired-bootstrap ``level`` interval.

    ``a``, ``b``: per-item values (e.g. per-patch accuracies of two methods on
    the same test items).  Each replicate redraws the items with replacement,
    the same draw for both.  Returns ``value``, ``low``, ``high``, ``std``,
    ``level``, ``n_boot``, ``n`` — in the shape of :func:`bd_bootstrap`'s result.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired_difference needs two equal-length lists of per-item values, got {a.shape} and {b.shape}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = a - b
    rng = np.random.default_rng(seed)
    reps = np.array([d[rng.integers(0, d.size, d.size)].mean() for _ in range(int(n_boot))])
    alpha = (1.0 - float(level)) / 2.0
    low, high = np.quantile(reps, [alpha, 1.0 - alpha])
    return {"value": float(d.mean()), "low": float(low), "high": float(high), "std": float(reps.std(ddof=1)),
            "level": float(level), "n_boot": int(n_boot), "n": int(d.size), "reason": None}


def format_interval(ci: dict, spec: str = ".3g") -> str:
    """One :func:`bd_bootstrap` result as text: ``-6.42 (95 % interval -10.6 to -2)`` or why there is none."""
    if ci.get("value") is None:
        return f"n/a ({ci.get('reason') or 'the BD value cannot be computed'})"
    text = format(ci["value"], spec)
    if ci.get("low") is None:
        return f"{text} (no interval: {ci.get('reason')})"
    return f"{text} ({100 * ci['level']:g} % interval {ci['low']:{spec}} to {ci['high']:{spec}})"
