"""Training losses of the three papers, one function per term.

* rate (bits per pixel) and rate–distortion, R + λ·255²·MSE — TFIC paper
  (Della Fiore et al., EUSIPCO 2025), Sec. III-B, stage 1 (γ = 0);
* the OCR loss L_OCR(G(x), T(x̂)) — TFIC paper Sec. III-B, stage 2: the CTC
  loss of EasyOCR's frozen recognizer;
* the text logit loss J(x, x̂) — Lai et al., Eq. 4 (added by its owner);
* the thresholded 8×8 DCT loss — Della Fiore et al., journal extension,
  Sec. 4.3 (added by its owner).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


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
        return {"bpp_loss": bpp, "mse_loss": mse, "loss": bpp + self.lmbda * 255**2 * mse}


def ocr_loss(x_hat: torch.Tensor, labels, reduction: str = "mean") -> torch.Tensor:
    """L_OCR(G(x), T(x̂)): CTC loss of the frozen EasyOCR recognizer on x̂.

    TFIC paper Sec. III-B calls it "the cross-entropy loss between the
    text-indexes of the ground truth text and the reconstructed one".
    EasyOCR's recognizer (english_g2) is a CRNN trained with CTC, so the
    faithful cross-entropy for it is the CTC loss: the negative log-likelihood
    of the ground-truth label summed over all alignments.  ``x_hat`` (B,3,H,W)
    is clamped to [0, 1]; gradients flow through the recognizer (whose weights
    stay frozen) into the codec.
    """
    from . import ocr

    if x_hat.dim() != 4 or x_hat.shape[1] != 3:
        raise ValueError(f"ocr_loss expects x_hat of shape (B,3,H,W), got {tuple(x_hat.shape)}")
    if len(labels) != x_hat.shape[0]:
        raise ValueError(f"ocr_loss: {len(labels)} labels for a batch of {x_hat.shape[0]} images")
    recognizer = ocr.get_recognizer(x_hat.device)
    logits = recognizer(x_hat.clamp(0.0, 1.0))
    return ocr.ctc_loss(logits, list(labels), reduction=reduction)
