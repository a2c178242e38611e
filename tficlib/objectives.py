"""Training objectives: the papers' losses built from the terms of :mod:`tficlib.losses`.

An :class:`Objective` turns one batch into the scalar to minimise (``"loss"``)
and the scalars to log (``bpp``, ``mse``, ``psnr``, ``ocr``, ``J`` ...).
:func:`tficlib.train.train` runs any of them; :meth:`Objective.params` is
what identifies a run (it goes into the checkpoint's fingerprint, so a
checkpoint made with other settings is never resumed or reused).

=====================  =========================================================  ==========================
objective              loss                                                        paper
=====================  =========================================================  ==========================
:class:`RateDistortion`  R(ŷ, ẑ) + λ·255²·MSE(x, x̂)                                TFIC Sec. III-B, stage 1
:class:`TFIC`          R(ŷ, ẑ) + γ·L_OCR(G(x), T(x̂)) [+ λ·255²·MSE]                 TFIC Sec. III-B, stage 2
:class:`TextLogit`     R(ŷ) + R(ẑ) + λ·255²·MSE(x, x̂) + κ·J(x, x̂)                  Lai et al. Eq. 5
:class:`Dequantization`  λ·MSE(x, x̂) + (1 − λ)·L_DCT(x_q, x̂), x̂ = D(x_q)           journal Sec. 4.4
:class:`OCRGuided`     E_p[ℓ_OCR(OCR(D2(x̃_p)), G_p(x))] [+ μ·MSE anchor]             journal Sec. 4.5
=====================  =========================================================  ==========================

The codec objectives decode rounded latents through a straight-through
estimator when ``ste`` is set (:func:`tficlib.codec.forward_ste`, one adapter
per CompressAI model family); the rate always uses the noisy-latent
likelihoods of training mode.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from . import codec, metrics, ocr
from .losses import (
    binary_distortion,
    dct_loss,
    dct_loss_jpeg_grid,
    distortion,
    ocr_loss,
    rate_bpp,
    text_logit_loss,
    text_weighted_distortion,
)

__all__ = [
    "Dequantization",
    "OCRGuided",
    "Objective",
    "RateDistortion",
    "TFIC",
    "TextLogit",
]


def _psnr(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    """PSNR of a training batch for the log (:func:`tficlib.metrics.psnr` of the clamped reconstruction)."""
    return metrics.psnr(x_hat.detach().clamp(0, 1), x.detach())


class Objective(abc.ABC):
    """A training objective: ``objective(model, batch) -> {"loss": scalar tensor, **logged scalars}``.

    ``params()`` identifies the run (the checkpoint's fingerprint), ``name``
    labels its progress bar, :meth:`set_mode` puts the model in the mode the
    objective trains it in (training mode unless the objective says otherwise).
    The loss must be a *mean over the batch's items* (images, word patches):
    a distributed run averages the ranks' gradients, which then equals the
    gradient of the whole batch.
    """

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """A short label (progress bars, logs)."""

    @abc.abstractmethod
    def params(self) -> dict:
        """JSON-able settings that identify a run of this objective."""

    @abc.abstractmethod
    def __call__(self, model, batch) -> dict[str, Any]:
        """The loss and the logged scalars of one batch."""

    def set_mode(self, model) -> None:
        """Put ``model`` in the mode it is trained in (called before every step)."""
        model.train()


def _codec_forward(model, x: torch.Tensor, ste: bool) -> dict:
    return codec.forward_ste(model, x) if ste else model(x)


@dataclass(frozen=True)
class RateDistortion(Objective):
    """Stage 1 (γ = 0): L = R(ŷ, ẑ) + λ·255²·MSE(x, x̂) (TFIC Sec. III-B); batch = images or (images, labels)."""

    lmbda: float

    def __post_init__(self):
        if self.lmbda < 0:
            raise ValueError(f"λ must be >= 0, got {self.lmbda}")

    @property
    def name(self) -> str:
        return f"rd(lambda={self.lmbda:g})"

    def params(self) -> dict:
        return {"objective": "rate_distortion", "lambda": float(self.lmbda)}

    def __call__(self, model, batch) -> dict:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        out = model(x)
        n, _, h, w = x.shape
        bpp = rate_bpp(out["likelihoods"], n * h * w)
        mse = F.mse_loss(out["x_hat"], x)
        return {"loss": bpp + distortion(out["x_hat"], x, self.lmbda), "bpp": bpp, "mse": mse,
                "psnr": _psnr(out["x_hat"], x)}


@dataclass(frozen=True)
class TFIC(Objective):
    """Stage 2: L = λ·255²·MSE + R(ŷ, ẑ) + γ·L_OCR(G(x), T(x̂)) (TFIC Sec. III-B); batch = (images, labels).

    The paper's recipe is λ = 0, γ = 0.1.  L_OCR is the CTC loss of the frozen
    EasyOCR recognizer (:func:`tficlib.losses.ocr_loss`).  Our robust variant:
    ``views``, L_OCR on random views T(x̂) (:class:`tficlib.ocr.views.OCRViews`);
    ``binary`` > 0 adds binary·255²·MSE(B_soft(x̂), B(x)) (:func:`tficlib.losses.binary_distortion`);
    ``background`` < 1 weighs the pixel term by that much off the text
    (:func:`tficlib.losses.text_weighted_distortion`).
    """

    gamma: float
    lmbda: float = 0.0
    ste: bool = True
    views: Any = None
    binary: float = 0.0
    background: float = 1.0

    def __post_init__(self):
        if self.gamma < 0 or self.lmbda < 0 or self.binary < 0:
            raise ValueError(f"γ, λ and the binary weight must be >= 0, got γ={self.gamma}, λ={self.lmbda}, "
                             f"binary={self.binary}")
        if not 0.0 <= self.background <= 1.0:
            raise ValueError(f"the background weight must be in [0, 1], got {self.background}")

    @property
    def name(self) -> str:
        robust = (", views" if self.views is not None else "") + (f", binary={self.binary:g}" if self.binary else "")
        robust += f", background={self.background:g}" if self.background != 1 else ""
        return f"tfic(gamma={self.gamma:g}, lambda={self.lmbda:g}, ste={self.ste}{robust})"

    def params(self) -> dict:
        params = {"objective": "tfic", "gamma": float(self.gamma), "lambda": float(self.lmbda), "ste": bool(self.ste)}
        if self.views is not None:  # only then, so that the paper recipe's fingerprints stay what they were
            params["views"] = self.views.params()
        if self.binary:
            params["binary"] = float(self.binary)
        if self.background != 1:
            params["background"] = float(self.background)
        return params

    def __call__(self, model, batch) -> dict:
        x, labels = batch
        out = _codec_forward(model, x, self.ste)
        n, _, h, w = x.shape
        bpp = rate_bpp(out["likelihoods"], n * h * w)
        l_ocr = ocr_loss(out["x_hat"], labels, views=self.views)
        loss = bpp + self.gamma * l_ocr
        if self.lmbda:  # background 1: the plain pixel term, losses.distortion
            loss = loss + text_weighted_distortion(out["x_hat"], x, self.lmbda, self.background)
        if self.binary:
            loss = loss + binary_distortion(out["x_hat"], x, self.binary)
        return {"loss": loss, "bpp": bpp, "ocr": l_ocr, "mse": F.mse_loss(out["x_hat"], x),
                "psnr": _psnr(out["x_hat"], x)}


@dataclass(frozen=True)
class TextLogit(Objective):
    """Lai et al. Eq. 5: L = R(ŷ) + R(ẑ) + λ·255²·MSE(x, x̂) + κ·J(x, x̂); batch = (images, labels, indices).

    κ = 0 is the reference run (stage 1 continued).  ``regions`` holds the
    original images' kept boxes and logits v_i by training index (the region
    cache of notebook 03: ``regions.batch(indices, device) -> (boxes, v)``);
    the recognizer runs on x̂ only.  ``centered``: J on logits less each
    frame's mean (our deviation; False is Eq. 4, :func:`tficlib.losses.text_logit_loss`).
    """

    lmbda: float
    kappa: float
    regions: Any = field(default=None, compare=False)
    ste: bool = True
    centered: bool = False

    def __post_init__(self):
        if self.lmbda < 0 or self.kappa < 0:
            raise ValueError(f"λ and κ must be >= 0, got λ={self.lmbda}, κ={self.kappa}")
        if self.kappa > 0 and (self.regions is None or getattr(self.regions, "kept", None) is None):
            raise ValueError("κ > 0 needs a region cache with its Eq. 6 filter applied (RegionCache.apply)")

    @property
    def name(self) -> str:
        return f"textlogit(lambda={self.lmbda:g}, kappa={self.kappa:g})"

    def params(self) -> dict:
        params = {"objective": "text_logit", "lambda": float(self.lmbda), "kappa": float(self.kappa),
                  "ste": bool(self.ste)}
        if self.kappa > 0:
            r = self.regions
            params.update({"cache": r.manifest_sha256, "cache_images": r.n_images,
                           "m_min": round(r.thresholds.m_min, 6), "sigma_max": round(r.thresholds.sigma_max, 6)})
            if self.centered:  # only then, so that the fingerprints of Eq. 4 runs stay what they were
                params["logits"] = "centered"
        return params

    def __call__(self, model, batch) -> dict:
        x, _labels, idx = batch
        out = _codec_forward(model, x, self.ste)
        n, _, h, w = x.shape
        bpp = rate_bpp(out["likelihoods"], n * h * w)
        loss = bpp + distortion(out["x_hat"], x, self.lmbda)
        terms = {"bpp": bpp, "mse": F.mse_loss(out["x_hat"], x), "psnr": _psnr(out["x_hat"], x)}
        if self.kappa > 0:
            boxes, targets = self.regions.batch(idx.tolist(), device=x.device)
            j = text_logit_loss(out["x_hat"], boxes, targets, centered=self.centered)
            loss = loss + self.kappa * j
            terms["J"] = j
        terms["loss"] = loss
        return terms


@dataclass(frozen=True)
class Dequantization(Objective):
    """Journal Sec. 4.4: L = λ·MSE(x, x̂) + (1 − λ)·L_DCT(x_q, x̂), x̂ = DnCNN(x_q); batch = {clean, degraded[, low]}.

    x = the clean patch, x_q = the quantized (degraded) input; L_DCT compares
    x̂ with x_q (the paper: "coherent with the quantized input in the
    frequency domain") on [0, 1] pixel values, τ = half a quantization step
    of JPEG quality 1.  ``mse_weight`` = λ (λ = 1: MSE only).  ``jpeg_factor``
    = f > 0 puts the DCT blocks on the JPEG's own grid
    (:func:`tficlib.losses.dct_loss_jpeg_grid`: x̂ pooled f×f against the
    batch's ``low``, the low-resolution JPEG decode); 0 compares 8×8 blocks
    of the upsampled patch (the earlier reading).
    """

    mse_weight: float = 0.8
    tau: float = 0.5
    jpeg_factor: int = 0

    def __post_init__(self):
        if not 0.0 <= self.mse_weight <= 1.0:
            raise ValueError(f"λ must be in [0, 1], got {self.mse_weight}")
        if self.jpeg_factor < 0:
            raise ValueError(f"jpeg_factor must be >= 0, got {self.jpeg_factor}")

    @property
    def name(self) -> str:
        return f"DnCNN λ={self.mse_weight:g}"

    def params(self) -> dict:
        params = {"objective": "dequant", "mse_weight": float(self.mse_weight), "tau": float(self.tau)}
        if self.jpeg_factor:  # only then, so that the fingerprints of patch-grid runs stay what they were
            params["dct_grid"] = f"jpeg x{self.jpeg_factor}"
        return params

    def __call__(self, model, batch) -> dict:
        x, xq = batch["clean"], batch["degraded"]
        x_hat = model(xq)
        mse = F.mse_loss(x_hat, x)
        if self.mse_weight >= 1.0:
            dct = x_hat.new_zeros(())
        elif self.jpeg_factor:
            if "low" not in batch:
                raise ValueError("the DCT loss on JPEG's grid needs the low-resolution decodes: "
                                 "PatchCrops(..., jpeg=(factor, quality))")
            dct = dct_loss_jpeg_grid(batch["low"], x_hat, self.jpeg_factor, tau=self.tau)
        else:
            dct = dct_loss(xq, x_hat, tau=self.tau)
        loss = self.mse_weight * mse + (1.0 - self.mse_weight) * dct
        return {"loss": loss, "mse": mse, "dct": dct, "psnr": _psnr(x_hat, x)}


@dataclass(frozen=True)
class OCRGuided(Objective):
    """Journal Sec. 4.5: L_OCR = E_p[CTC(OCR(D2(x̃_p)), G_p(x))]; the frozen recognizer reads each refined patch.

    Trains ``chain.d2`` (the model given to the loop); a batch is a list of
    word items ``{index, box, label}`` into ``inputs_u8``, the images D2's
    windows are cut from (D1's outputs x̃, or the degraded inputs when the
    chain starts D2 as D1 on them: :attr:`~tficlib.dncnn.OCRGuidedChain.reads_degraded`).
    Each refined patch is clipped to [0, 1] — what the restored image holds at
    test time — and resized to the recognizer's height (``ocr.crop_boxes``).

    Our deviations (the paper's: ``ocr_weight`` 1, ``anchor`` 0, ``ctc_cap``
    None): ``anchor`` = μ adds μ·MSE(x̂_p, x_p) to the clean page at the same
    box (``clean_u8``, aligned with ``inputs_u8``); ``ctc_cap`` = c caps each
    word's CTC per character, L_OCR = E_p[min(ℓ_p, c)], so a word the
    recognizer cannot read at all gives no gradient; ``ocr_weight`` = 0 with
    μ > 0 is the anchor-only control (the recognizer is not run).  Logs the
    plain mean CTC (``ctc``) and the share of capped words (``capped``).  D2
    keeps D1's BatchNorm statistics (eval mode) while its weights learn.
    """

    chain: Any = field(compare=False)
    inputs_u8: torch.Tensor = field(compare=False, repr=False)
    clean_u8: torch.Tensor | None = field(default=None, compare=False, repr=False)
    anchor: float = 0.0
    ctc_cap: float | None = None
    ocr_weight: float = 1.0

    def __post_init__(self):
        if self.anchor < 0:
            raise ValueError(f"the pixel anchor μ must be >= 0, got {self.anchor}")
        if self.ctc_cap is not None and not self.ctc_cap > 0:
            raise ValueError(f"the CTC cap must be > 0 (or None for no cap), got {self.ctc_cap}")
        if self.ocr_weight < 0 or (self.ocr_weight == 0 and self.anchor == 0):
            raise ValueError(f"the OCR weight must be >= 0 and the loss not empty (OCR weight {self.ocr_weight}, "
                             f"anchor {self.anchor})")
        if self.anchor > 0 and (self.clean_u8 is None or self.clean_u8.shape != self.inputs_u8.shape):
            shape = None if self.clean_u8 is None else tuple(self.clean_u8.shape)
            raise ValueError(f"a pixel anchor μ = {self.anchor:g} needs the clean patches aligned with the inputs "
                             f"{tuple(self.inputs_u8.shape)}, got {shape}")

    @property
    def name(self) -> str:
        return "OCR-guided D2" if self.ocr_weight else "D2, anchor only"

    def params(self) -> dict:
        params = {"objective": "ocr_guided", "margin": self.chain.margin, "init": self.chain.init,
                  "anchor": float(self.anchor), "clip": True,
                  "ctc_cap": None if self.ctc_cap is None else float(self.ctc_cap)}
        if self.ocr_weight != 1.0:  # only then, so that the fingerprints of the OCR-guided runs stay what they were
            params["ocr_weight"] = float(self.ocr_weight)
        return params

    def set_mode(self, model) -> None:
        model.eval()  # D2 keeps D1's BatchNorm statistics; its weights still learn

    def __call__(self, model, batch) -> dict:
        device = next(model.parameters()).device
        patches = self.chain.refine_words([(self.inputs_u8[item["index"]].to(device).float() / 255.0, item["box"])
                                           for item in batch], d2=model)
        errors = []
        if self.anchor > 0:
            for item, patch in zip(batch, patches):
                x0, y0, x1, y1 = item["box"]
                clean = self.clean_u8[item["index"], :, y0:y1, x0:x1].to(device).float() / 255.0
                errors.append(F.mse_loss(patch, clean))
        mse = torch.stack(errors).mean() if errors else patches[0].new_zeros(())
        if not self.ocr_weight:
            zero = mse.new_zeros(())
            return {"loss": self.anchor * mse, "ctc": zero, "mse": mse, "capped": zero}
        crops = []
        for patch in patches:
            h, w = patch.shape[-2:]
            crops += ocr.crop_boxes(patch.clamp(0, 1).unsqueeze(0), [[(0, 0, w, h)]])
        logits = ocr.get_recognizer(device)(ocr.pad_crops(crops))
        per_char = ocr.ctc_loss(logits, [item["label"] for item in batch], reduction="per_char")
        ctc = per_char.mean()  # = ocr.ctc_loss(logits, labels), torch's "mean"
        ocr_term = ctc if self.ctc_cap is None else per_char.clamp(max=self.ctc_cap).mean()
        capped = (per_char.detach() > self.ctc_cap).float().mean() if self.ctc_cap is not None else ctc.new_zeros(())
        return {"loss": self.ocr_weight * ocr_term + self.anchor * mse, "ctc": ctc, "mse": mse, "capped": capped}
