"""tficlib.losses: rate (bpp), rate–distortion and the OCR (CTC) loss of TFIC stage 2."""

from __future__ import annotations

import math

import pytest
import torch

from tficlib import losses


def test_rate_bpp_is_minus_log2_likelihood_per_pixel():
    lk = {"y": torch.full((2, 4, 2, 2), 0.5), "z": torch.full((2, 1, 1, 1), 0.25)}
    # y: 2*4*2*2 = 32 symbols of 1 bit; z: 2 symbols of 2 bits -> 36 bits over 2 images of 3x3 pixels
    assert losses.rate_bpp(lk, num_pixels=2 * 3 * 3).item() == pytest.approx(36 / 18)
    assert losses.rate_bpp(list(lk.values()), 18).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="positive"):
        losses.rate_bpp(lk, 0)
    with pytest.raises(ValueError, match="no likelihood"):
        losses.rate_bpp({}, 10)


def test_rate_distortion_loss_is_r_plus_lambda_255sq_mse():
    x = torch.zeros(1, 3, 4, 4)
    x_hat = torch.full_like(x, 0.1)
    out = {"x_hat": x_hat, "likelihoods": {"y": torch.full((1, 2, 1, 1), 0.5)}}
    terms = losses.RateDistortionLoss(lmbda=0.01)(out, x)
    assert terms["bpp_loss"].item() == pytest.approx(2 / 16)
    assert terms["mse_loss"].item() == pytest.approx(0.01)
    assert terms["loss"].item() == pytest.approx(2 / 16 + 0.01 * 255**2 * 0.01)
    with pytest.raises(ValueError):
        losses.RateDistortionLoss(-0.1)


def test_ocr_loss_checks_its_inputs():
    with pytest.raises(ValueError, match="B,3,H,W"):
        losses.ocr_loss(torch.rand(3, 64, 256), ["a"])
    with pytest.raises(ValueError, match="labels"):
        losses.ocr_loss(torch.rand(2, 3, 64, 256), ["a"])


@pytest.mark.slow
def test_ocr_loss_decreases_on_a_tiny_batch_and_the_recognizer_stays_bit_identical():
    """Gradient steps on the *image* through the frozen recognizer lower the CTC loss."""
    from tficlib import ocr

    recognizer = ocr.get_recognizer("cpu")
    before = {k: v.clone() for k, v in recognizer.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    x = (0.5 + 0.1 * torch.randn(2, 3, 64, 256, generator=g)).clamp(0, 1).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.003)
    values = []
    for _ in range(5):
        opt.zero_grad()
        loss = losses.ocr_loss(x, ["TFIC", "ocr 42"])
        loss.backward()
        opt.step()
        values.append(loss.item())
    assert all(math.isfinite(v) for v in values)
    assert values[-1] < 0.9 * values[0], values
    after = recognizer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in recognizer.parameters())
