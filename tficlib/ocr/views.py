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
* additive Gaussian noise of σ ~ U(0, ``noise``).

Every step is differentiable in x̂; randomness comes from torch's global
generator, which the training loop seeds and checkpoints.  ``strength``
scales every range at once (0: the identity).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

__all__ = ["OCRViews"]


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

    def __post_init__(self):
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"view strength must be in [0, 1], got {self.strength}")
        for name in ("p_mix", "p_blur"):
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
        if s == 0:
            return x
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
