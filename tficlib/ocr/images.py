"""Images as OCR engines take them: uint8 H × W × 3 RGB arrays, and the grey image of the recognizers.

Float images of the library (tensors (B, 3, H, W) in [0, 1]) are quantized to
uint8 first, as a saved image would be, so every engine reads what a file holds.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["as_image_list", "as_uint8_rgb", "grey"]


def as_uint8_rgb(image) -> np.ndarray:
    """One image as a contiguous uint8 H x W x 3 RGB array."""
    if isinstance(image, torch.Tensor):
        t = image.detach()
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"expected a float image (3, H, W), got shape {tuple(image.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"expected a float tensor in [0, 1], got dtype {t.dtype}")
        t = (t.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        if t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        return np.ascontiguousarray(t.permute(1, 2, 0).numpy())
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(
                f"expected a uint8 H x W x 3 array, got dtype {image.dtype} "
                "(pass float images as a torch tensor (B, 3, H, W) in [0, 1])"
            )
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 H x W x 3 RGB array, got shape {image.shape}")
        return np.ascontiguousarray(image)
    raise TypeError(f"expected a uint8 numpy array or a float torch tensor, got {type(image).__name__}")


def as_image_list(images) -> list[np.ndarray]:
    """A batch (float tensor (B, 3, H, W), uint8 array (B, H, W, 3) or a list) as uint8 RGB arrays."""
    if isinstance(images, torch.Tensor):
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4:
            raise ValueError(f"expected a float tensor (B, 3, H, W), got shape {tuple(images.shape)}")
        return [as_uint8_rgb(im) for im in images]
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return [as_uint8_rgb(im) for im in images]
        return [as_uint8_rgb(images)]
    if isinstance(images, (list, tuple)):
        return [as_uint8_rgb(im) for im in images]
    raise TypeError(
        f"expected a list of uint8 H x W x 3 arrays or a float tensor (B, 3, H, W), got {type(images).__name__}"
    )


def grey(rgb: np.ndarray) -> np.ndarray:
    """``cv2.COLOR_RGB2GRAY`` of a uint8 RGB array (Y = 0.299 R + 0.587 G + 0.114 B, BT.601)."""
    import cv2

    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
