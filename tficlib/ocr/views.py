"""Random views of a reconstruction before the frozen recognizer: E_T[L_OCR(G(x), T(x̂))].

Our extension of TFIC's stage 2 (not in the paper).  Trained against one
recognizer, a codec can keep text readable only for that recognizer's
preprocessing (fixed luma weights, one scale, no blur): low-contrast strokes,
a checkerboard texture the recognizer's first layers happen to read, chroma
left free.  Averaging the OCR loss over random views T(x̂) -- photometric and
geometric transforms every OCR engine's preprocessing may apply -- makes the
codec keep text that survives all of them.

:class:`OCRViews` draws, per image and independently:

* a grey mix with random convex channel weights (probability ``p_mix``):
  the recognizer's luma weights no longer hide one colour channel;
* contrast c ~ U(1 − ``contrast``, 1 + ``contrast`` / 2) about the image mean
  and brightness b ~ U(−``brightness``, ``brightness``);
* a Gaussian blur of σ ~ U(0.1, ``blur``) (probability ``p_blur``,
  :func:`torchvision.transforms.v2.functional.gaussian_blur`);
* an affine map: scale ~ U(1 − ``scale``, 1 + ``scale`` / 2), rotation
  ~ U(±``degrees``), shift up to ``shift`` of the size (bilinear, border
  pixels repeated; :func:`torch.nn.functional.affine_grid`);
* additive Gaussian noise of σ ~ U(0, ``noise``);
* last, a soft binarization (probability ``binarize``, independent of
  ``strength``): sigmoid((g − t) / ``softness``) of the luma g at the image's
  Otsu threshold t (computed without gradient), the global thresholding that
  engines such as Tesseract apply before they read.  Strokes fainter than the
  texture around them vanish in this view, so the OCR loss asks for strokes
  that survive a threshold.

Every step is differentiable in x̂; randomness comes from torch's global
generator, which the training loop seeds and checkpoints.  ``strength``
scales every range but ``binarize`` at once (0 and ``binarize`` 0: the identity).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .recognizer import GREY_WEIGHTS

__all__ = ["OCRViews", "hard_binarize", "luma", "otsu_threshold", "soft_binarize"]

def otsu_threshold(grey: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Otsu's threshold of each image of a batch (B, 1, H, W) in [0, 1]: the t maximizing the between-class variance.

    Returns (B,) thresholds, each half a bin above the last bin of the dark class (OpenCV's
    ``THRESH_OTSU`` level), or the middle of an empty gap between the classes.
    """
    if grey.dim() != 4 or grey.shape[1] != 1:
        raise ValueError(f"otsu_threshold expects grey images (B,1,H,W), got {tuple(grey.shape)}")
    b = grey.shape[0]
    idx = (grey.reshape(b, -1).clamp(0, 1) * (bins - 1)).round().long()
    hist = torch.zeros(b, bins, device=grey.device, dtype=torch.float64).scatter_add_(
        1, idx, torch.ones_like(idx, dtype=torch.float64))
    p = hist / hist.sum(dim=1, keepdim=True)
    levels = torch.arange(bins, device=grey.device, dtype=torch.float64) / (bins - 1)
    w0 = p.cumsum(dim=1)
    m0 = (p * levels).cumsum(dim=1)
    mean = m0[:, -1:]
    between = (mean * w0 - m0) ** 2 / (w0 * (1 - w0)).clamp_min(1e-12)
    # a gap between the classes (empty bins) is a plateau of equal variance: take its middle, not its first bin
    top = between >= between.max(dim=1, keepdim=True).values * (1 - 1e-9)
    first = top.to(torch.int8).argmax(dim=1)
    last = bins - 1 - top.flip(1).to(torch.int8).argmax(dim=1)
    k = (first + last).to(torch.float64) / 2
    return ((k + 0.5) / (bins - 1)).to(grey.dtype)


def luma(x: torch.Tensor) -> torch.Tensor:
    """Grey (B, 1, H, W) of RGB images (B, 3, H, W) with the recognizer's weights (:data:`GREY_WEIGHTS`)."""
    return (x * x.new_tensor(GREY_WEIGHTS)[None, :, None, None]).sum(dim=1, keepdim=True)


def hard_binarize(x: torch.Tensor) -> torch.Tensor:
    """1 where the luma of x is above its Otsu threshold (background), 0 on the dark ink: (B, 1, H, W), no gradient."""
    with torch.no_grad():
        g = luma(x)
        return (g > otsu_threshold(g)[:, None, None, None]).to(x.dtype)


def soft_binarize(x: torch.Tensor, softness: float = 0.03) -> torch.Tensor:
    """sigmoid((g − t) / softness) of the luma g at its Otsu threshold t (no gradient through t): (B, 1, H, W)."""
    g = luma(x)
    return torch.sigmoid((g - otsu_threshold(g.detach())[:, None, None, None]) / softness)


@dataclass(frozen=True)
class OCRViews:
    """Random photometric and geometric views T(x̂) of a batch (B, 3, H, W) in [0, 1] (module docstring)."""

    strength: float = 1.0
    p_mix: float = 0.5
    contrast: float = 0.5
    brightness: float = 0.1
    p_blur: float = 0.5
    blur: float = 1.2
    scale: float = 0.2
    degrees: float = 2.0
    shift: float = 0.04
    noise: float = 0.04
    binarize: float = 0.0
    softness: float = 0.03

    def __post_init__(self):
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"view strength must be in [0, 1], got {self.strength}")
        if not self.softness > 0:
            raise ValueError(f"binarization softness must be > 0, got {self.softness}")
        for name in ("p_mix", "p_blur", "binarize"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.contrast < 1.0 or not 0.0 <= self.scale < 1.0:
            raise ValueError(f"contrast and scale must be in [0, 1), got {self.contrast}, {self.scale}")

    def params(self) -> dict:
        """JSON-able settings (part of a training run's fingerprint)."""
        return {k: float(v) for k, v in asdict(self).items()}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"OCRViews expects a batch (B,3,H,W), got {tuple(x.shape)}")
        s = self.strength
        if s > 0:
            x = self._jitter(x, s)
        if self.binarize > 0:
            x = self._binarize(x)
        return x

    def _binarize(self, x: torch.Tensor) -> torch.Tensor:
        """Soft Otsu binarization of the luma for a ``binarize`` share of the images, as three equal channels."""
        binary = soft_binarize(x, self.softness).expand_as(x)
        on = (torch.rand(x.shape[0], device=x.device) < self.binarize).to(x.dtype)[:, None, None, None]
        return on * binary + (1 - on) * x

    def _jitter(self, x: torch.Tensor, s: float) -> torch.Tensor:
        b, dev, dt = x.shape[0], x.device, x.dtype

        def uniform(low, high):
            return low + (high - low) * torch.rand(b, device=dev, dtype=dt)

        # grey mix with random convex weights (Dirichlet(1, 1, 1)) for a p_mix share of the images
        w = -torch.log(torch.rand(b, 3, device=dev, dtype=dt).clamp_min(1e-6))
        w = w / w.sum(dim=1, keepdim=True)
        grey = (x * w[:, :, None, None]).sum(dim=1, keepdim=True).expand_as(x)
        mix = (torch.rand(b, device=dev) < self.p_mix * s).to(dt)[:, None, None, None]
        x = mix * grey + (1 - mix) * x
        # contrast about each image's mean, brightness
        c = uniform(1 - self.contrast * s, 1 + self.contrast * s / 2)[:, None, None, None]
        bright = uniform(-self.brightness * s, self.brightness * s)[:, None, None, None]
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * c + mean + bright
        # Gaussian blur, per image
        if self.blur > 0 and self.p_blur > 0:
            from torchvision.transforms.v2 import functional as TF

            sigma = uniform(0.1, max(0.1, self.blur * s)).tolist()
            apply = (torch.rand(b) < self.p_blur * s).tolist()
            x = torch.stack([TF.gaussian_blur(img, kernel_size=[5, 5], sigma=[sg, sg]) if on else img
                             for img, sg, on in zip(x, sigma, apply)])
        # affine: scale, rotation, shift (normalised coordinates), bilinear with border pixels repeated
        zoom = uniform(1 - self.scale * s, 1 + self.scale * s / 2)
        angle = uniform(-self.degrees * s, self.degrees * s) * (math.pi / 180)
        h, wid = x.shape[-2:]
        aspect = wid / h
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos, -sin / aspect, uniform(-2 * self.shift * s, 2 * self.shift * s)], -1),
                             torch.stack([sin * aspect, cos, uniform(-2 * self.shift * s, 2 * self.shift * s)], -1)],
                            dim=1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        # additive noise
        sd = uniform(0.0, self.noise * s)[:, None, None, None]
        x = x + sd * torch.randn_like(x)
        return x.clamp(0.0, 1.0)
