"""Loss terms of the three papers, one function per term; objectives combine them.

* the rate R(ŷ, ẑ) in bits per pixel (:func:`rate_bpp`) and the distortion
  λ·255²·MSE(x, x̂) (:func:`distortion`) — TFIC paper (Della Fiore et al.,
  EUSIPCO 2025), Sec. III-B, stage 1 (γ = 0), CompressAI's convention;
* the OCR loss L_OCR(G(x), T(x̂)) — TFIC paper Sec. III-B, stage 2: the CTC
  loss of EasyOCR's frozen recognizer (:func:`ocr_loss`);
* the text logit loss J(x, x̂) — Lai et al., Eq. 4 (:func:`text_logit_loss`);
* the thresholded 8×8 DCT loss — Della Fiore et al., journal extension,
  Sec. 4.4 (:func:`dct_loss`; on the JPEG's own blocks: :func:`dct_loss_jpeg_grid`).

Training objectives (which terms, with which weights) are in
:mod:`tficlib.objectives`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import ocr


def rate_bpp(likelihoods, num_pixels: int) -> torch.Tensor:
    """Rate term R(ŷ, ẑ) = −log2 p(ŷ|ẑ) − log2 p(ẑ), in bits per pixel.

    TFIC paper Sec. III-B (L_rate).  ``likelihoods`` is the dict (or list) of
    likelihood tensors returned by a CompressAI model's forward; the bits of
    every tensor are summed and divided by ``num_pixels`` (batch × H × W), so
    the result is the mean bpp per image.  In training mode the likelihoods
    are those of the noisy latents (the differentiable rate proxy).
    """
    if num_pixels <= 0:
        raise ValueError(f"num_pixels must be positive, got {num_pixels}")
    values = likelihoods.values() if isinstance(likelihoods, dict) else likelihoods
    bits = [torch.log(lk).sum() / -math.log(2) for lk in values]
    if not bits:
        raise ValueError("rate_bpp: no likelihood tensors given")
    return torch.stack(bits).sum() / num_pixels


def distortion(x_hat: torch.Tensor, x: torch.Tensor, lmbda: float) -> torch.Tensor:
    """λ·255²·MSE(x, x̂): stage 1's distortion term (TFIC Sec. III-B), CompressAI's scale for [0, 1] images."""
    return lmbda * 255**2 * F.mse_loss(x_hat, x)


def binary_distortion(x_hat: torch.Tensor, x: torch.Tensor, lmbda: float, softness: float = 0.03) -> torch.Tensor:
    """λ·255²·MSE(B_soft(x̂), B(x)): the pixel term on text shapes, as a binarizing OCR engine sees them.

    B(x): the luma of x above its Otsu threshold (0/1); B_soft(x̂): the same at
    x̂'s own threshold through a sigmoid of width ``softness``
    (:func:`tficlib.ocr.views.soft_binarize`).  Our robust TFIC variant's term (not in the papers).
    """
    from .ocr.views import hard_binarize, soft_binarize

    return lmbda * 255**2 * F.mse_loss(soft_binarize(x_hat, softness), hard_binarize(x))


def text_mask(x: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Where the text is: luma of x at or below its Otsu threshold (dark ink), dilated by ``radius`` pixels; (B, 1, H, W) 0/1."""
    from .ocr.views import hard_binarize

    if radius < 0:
        raise ValueError(f"the dilation radius must be >= 0, got {radius}")
    ink = 1 - hard_binarize(x)
    return F.max_pool2d(ink, 2 * radius + 1, stride=1, padding=radius) if radius else ink


def text_weighted_distortion(x_hat: torch.Tensor, x: torch.Tensor, lmbda: float, background: float,
                             radius: int = 2) -> torch.Tensor:
    """λ·255²·mean(w·(x − x̂)²), w = 1 on the text (:func:`text_mask`) and ``background`` elsewhere.

    With ``background`` = 1 this is :func:`distortion`; below 1 the pixel term
    spends fewer bits on the background, whatever OCR engine reads the text.
    Our robust TFIC variant's term (not in the papers).
    """
    if not 0.0 <= background <= 1.0:
        raise ValueError(f"the background weight must be in [0, 1], got {background}")
    if background == 1:
        return distortion(x_hat, x, lmbda)
    w = background + (1.0 - background) * text_mask(x, radius)
    return lmbda * 255**2 * (w * (x_hat - x) ** 2).mean()


class RateDistortionLoss(nn.Module):
    """Stage-1 loss L = R(ŷ, ẑ) + λ·255²·MSE(x, x̂) (TFIC paper Sec. III-B, γ = 0).

    Same convention as CompressAI's example training loss (MSE on [0, 1]
    images, scaled by 255²).  ``forward(output, target)`` takes the model's
    output dict (``x_hat``, ``likelihoods``) and returns ``bpp_loss``,
    ``mse_loss`` and ``loss``.
    """

    def __init__(self, lmbda: float):
        super().__init__()
        if lmbda < 0:
            raise ValueError(f"λ must be >= 0, got {lmbda}")
        self.lmbda = float(lmbda)

    def forward(self, output: dict, target: torch.Tensor) -> dict:
        n, _, h, w = target.shape
        bpp = rate_bpp(output["likelihoods"], n * h * w)
        mse = F.mse_loss(output["x_hat"], target)
        return {"bpp_loss": bpp, "mse_loss": mse, "loss": bpp + distortion(output["x_hat"], target, self.lmbda)}


def ocr_loss(x_hat: torch.Tensor, labels, reduction: str = "mean", views=None) -> torch.Tensor:
    """L_OCR(G(x), T(x̂)): CTC loss of the frozen EasyOCR recognizer on x̂.

    TFIC paper Sec. III-B calls it "the cross-entropy loss between the
    text-indexes of the ground truth text and the reconstructed one".
    EasyOCR's recognizer (english_g2) is a CRNN trained with CTC, so the
    faithful cross-entropy for it is the CTC loss: the negative log-likelihood
    of the ground-truth label summed over all alignments.  ``x_hat`` (B,3,H,W)
    is clamped to [0, 1]; gradients flow through the recognizer (whose weights
    stay frozen) into the codec.  ``views`` (:class:`tficlib.ocr.views.OCRViews`,
    our extension): the recognizer reads one random view T(x̂) per image, so
    the loss is a one-sample estimate of E_T[L_OCR(G(x), T(x̂))].
    """
    if x_hat.dim() != 4 or x_hat.shape[1] != 3:
        raise ValueError(f"ocr_loss expects x_hat of shape (B,3,H,W), got {tuple(x_hat.shape)}")
    if len(labels) != x_hat.shape[0]:
        raise ValueError(f"ocr_loss: {len(labels)} labels for a batch of {x_hat.shape[0]} images")
    recognizer = ocr.get_recognizer(x_hat.device)
    x = x_hat.clamp(0.0, 1.0)
    logits = recognizer(views(x) if views is not None else x)
    return ocr.ctc_loss(logits, list(labels), reduction=reduction)


# --------------------------------------------------------------------------- text logit loss (Lai et al.)
def text_logit_loss(x_hat: torch.Tensor, boxes, targets, recognizer=None, centered: bool = False) -> torch.Tensor:
    """J(x, x̂) = (1/n) Σ_i ‖v_i − v̂_i‖² (Lai et al., Eq. 4), averaged over the batch (Algorithm 1).

    ``boxes``: per image, the (kept) text boxes B_i of the *original* (Eq. 1);
    ``targets``: per image, the original's logits v_i (T_i, 97) of those boxes
    (the region cache of notebook 03), or the original images x
    (B, 3, H, W), whose v_i are then computed here without gradient.
    v̂_i = pre-softmax CTC logits of the frozen EasyOCR recognizer on the
    crop B_i(x̂) of x̂ clamped to [0, 1] (Eq. 2-3; the paper used PARSeq).
    ‖·‖² is the mean over the T_i × 97 entries; J_k = 0 for an image with no
    box (no text term); the result is the mean of J_k over the B images.
    Differentiable w.r.t. ``x_hat`` only.

    ``centered`` (our deviation; False is Eq. 4): compare the logits after
    subtracting each frame's mean over the 97 classes from v_i and v̂_i.  The
    softmax of a frame, and so every reading of it, is unchanged by adding one
    number to all its logits; Eq. 4 on raw logits also penalises those shifts
    (most of J on the ``cpu`` stage-1 models, docs/deviations.md), the centred form only what
    the recognizer's output depends on.
    """
    if not isinstance(x_hat, torch.Tensor) or x_hat.dim() != 4 or x_hat.shape[1] != 3:
        raise ValueError(f"text_logit_loss expects x_hat (B,3,H,W), got {getattr(x_hat, 'shape', type(x_hat))}")
    if len(boxes) != x_hat.shape[0]:
        raise ValueError(f"text_logit_loss: {len(boxes)} box lists for a batch of {x_hat.shape[0]} images")
    if isinstance(targets, torch.Tensor):
        if targets.shape != x_hat.shape:
            raise ValueError(f"original images {tuple(targets.shape)} and x_hat {tuple(x_hat.shape)} differ")
        with torch.no_grad():
            targets = ocr.region_logits(targets.detach(), boxes, recognizer)
    if len(targets) != len(boxes) or any(len(t) != len(b) for t, b in zip(targets, boxes)):
        raise ValueError("text_logit_loss: targets must hold one logit tensor per box of every image")
    v_hat = ocr.region_logits(x_hat.clamp(0.0, 1.0), boxes, recognizer)
    return logit_distance(v_hat, targets, centered, like=x_hat)


def logit_distance(v_hat, targets, centered: bool = False, like: torch.Tensor | None = None) -> torch.Tensor:
    """The distance of :func:`text_logit_loss` between given logits: per image v̂_i and v_i, lists of (T_i, 97).

    Lets a caller that already has v̂ (e.g. both forms of J on one
    reconstruction) skip running the recognizer again.  An image without
    regions adds a zero made like ``like`` (default: a CPU float).
    """
    per_image = []
    for vs, vhs in zip(targets, v_hat):
        if not vs:
            per_image.append(like.new_zeros(()) if like is not None else torch.zeros(()))
            continue
        terms = []
        for v, vh in zip(vs, vhs):
            if v.shape != vh.shape:
                raise ValueError(f"cached logits {tuple(v.shape)} do not match the crop's {tuple(vh.shape)}: "
                                 "the cache was made with other boxes or another recognizer; rebuild it")
            diff = vh.float() - v.detach().to(vh.device).float()
            if centered:
                diff = diff - diff.mean(dim=-1, keepdim=True)
            terms.append(diff.pow(2).mean())
        per_image.append(torch.stack(terms).mean())
    return torch.stack(per_image).mean()


# --------------------------------------------------------------------------- DCT loss (dequantization)
def _dct_matrix(n: int, dtype, device) -> torch.Tensor:
    """Orthonormal DCT-II matrix C (n×n): C[k, i] = a_k·cos(π(2i+1)k / 2n), a_0 = √(1/n), a_k = √(2/n)."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    c = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c.to(dtype=dtype, device=device)


def dct2_blocks(x: torch.Tensor, block: int = 8) -> torch.Tensor:
    """2-D orthonormal DCT-II of the non-overlapping ``block``×``block`` blocks of ``x`` (JPEG's transform).

    Della Fiore et al., journal extension, Sec. 4.4: "the two-dimensional DCT is
    applied to each block, following the standard JPEG formulation" — JPEG's
    8×8 FDCT is the orthonormal DCT-II, ``scipy.fft.dctn(b, norm="ortho")``.
    ``x`` (B, C, H, W); the grid starts at the image origin and the rows/columns
    past the last whole block are ignored.  Returns (B, C, H//block, W//block,
    block, block): coefficient [u, v] of each block (u vertical frequency).
    Differentiable.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"dct2_blocks expects a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
    if not x.is_floating_point():
        raise TypeError(f"dct2_blocks expects float images, got {x.dtype}")
    b, c, h, w = x.shape
    nh, nw = h // block, w // block
    if nh == 0 or nw == 0:
        raise ValueError(f"image {h}x{w} is smaller than one {block}x{block} block")
    blocks = x[:, :, : nh * block, : nw * block].reshape(b, c, nh, block, nw, block).transpose(3, 4)
    m = _dct_matrix(block, x.dtype, x.device)
    return m @ blocks @ m.T


def dct_loss(x: torch.Tensor, x_hat: torch.Tensor, tau: float = 0.5, scale: float = 1.0) -> torch.Tensor:
    """L_DCT(x, x̂) = E_b[max(|DCT(x_b) − DCT(x̂_b)| − τ, 0)] (Della Fiore et al., journal ext., Eq. of Sec. 4.4).

    The mean over every 8×8 block, coefficient and channel of the thresholded
    absolute DCT difference.  The paper compares x̂ with the *quantized input*
    x, so that the output keeps the JPEG's spectral structure; coefficient
    differences smaller than τ cost nothing.  ``scale`` multiplies the pixel
    values before the transform: 1 (default) for images in [0, 1] — at JPEG
    quality 1 every quantization step is 255 levels = 1.0 on this scale, so
    τ = 0.5 is half a quantization step, the width of the interval in which
    the original coefficient lies; ``scale=255`` computes on JPEG's 0..255
    levels (the level shift by 128 cancels in the difference).
    """
    if x.shape != x_hat.shape:
        raise ValueError(f"dct_loss: x and x_hat differ in shape: {tuple(x.shape)} vs {tuple(x_hat.shape)}")
    if tau < 0:
        raise ValueError(f"τ must be >= 0, got {tau}")
    diff = dct2_blocks((x - x_hat) * scale)  # the DCT is linear: DCT(x_b) − DCT(x̂_b) = DCT(x_b − x̂_b)
    return torch.relu(diff.abs() - tau).mean()


def dct_loss_jpeg_grid(x_low: torch.Tensor, x_hat: torch.Tensor, factor: int, tau: float = 0.5) -> torch.Tensor:
    """L_DCT on the JPEG's own 8×8 blocks: :func:`dct_loss` of x̂ averaged over ``factor``×``factor`` pixels
    against the low-resolution JPEG decode ``x_low`` (journal ext., Sec. 4.4 with Sec. 4.6's degradation).

    The degraded input x_q is a ×``factor`` upsampled JPEG: its quantized
    coefficients live on 8×8 blocks of the low-resolution image, i.e. on
    (8·factor)² pixel blocks of x̂.  Pooling x̂ back to that resolution puts
    every 8×8 DCT block of the loss on one JPEG block.
    """
    if x_hat.shape[-2] != x_low.shape[-2] * factor or x_hat.shape[-1] != x_low.shape[-1] * factor:
        raise ValueError(f"x_hat {tuple(x_hat.shape[-2:])} is not {factor}x the low-resolution decode "
                         f"{tuple(x_low.shape[-2:])}")
    pooled = F.avg_pool2d(x_hat, factor) if factor > 1 else x_hat
    return dct_loss(x_low, pooled, tau=tau)
