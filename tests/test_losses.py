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


def _text_line(seed=0):
    x = torch.full((2, 3, 32, 128), 0.85)
    x[:, :, 12:20, 10:110] = 0.3
    return (x + 0.02 * torch.rand(x.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)


def test_binary_distortion_measures_text_shapes_not_grey_levels():
    x = _text_line()
    same_shapes = (0.5 * x + 0.25).clamp(0, 1)  # lower contrast, same shapes under Otsu's threshold
    lost = x.clone()
    lost[:, :, 12:20, 60:110] = 0.85  # half the text gone
    d_same, d_lost = losses.binary_distortion(same_shapes, x, 1.0), losses.binary_distortion(lost, x, 1.0)
    assert float(d_same) < 1e-3 * 255**2 and float(d_lost) > 0.05 * 255**2
    assert float(losses.distortion(same_shapes, x, 1.0)) > 0.01 * 255**2  # the plain pixel term sees the contrast
    assert float(losses.binary_distortion(lost, x, 0.5)) == pytest.approx(0.5 * float(d_lost))
    x_hat = lost.clone().requires_grad_(True)
    losses.binary_distortion(x_hat, x, 1.0).backward()
    assert x_hat.grad is not None and torch.isfinite(x_hat.grad).all() and float(x_hat.grad.abs().sum()) > 0


def test_text_mask_is_the_dark_ink_dilated_by_its_radius():
    x = _text_line()
    mask = losses.text_mask(x, radius=2)
    assert mask.shape == (2, 1, 32, 128)
    assert bool((mask[:, :, 10:22, 8:112] == 1).all())  # the bar rows 12:20, cols 10:110, grown by 2 pixels
    assert float(mask.sum()) == 2 * 12 * 104
    assert float(losses.text_mask(x, radius=0).sum()) == 2 * 8 * 100
    with pytest.raises(ValueError, match="radius must be >= 0"):
        losses.text_mask(x, radius=-1)


def test_text_weighted_distortion_weighs_the_background_down():
    x = _text_line()
    off_text = x.clone()
    off_text[:, :, 0:6, :] = 0.6  # an error in the background only
    on_text = x.clone()
    on_text[:, :, 12:20, 10:110] = 0.6  # an error on the text only
    for x_hat in (off_text, on_text):
        assert float(losses.text_weighted_distortion(x_hat, x, 0.01, 1.0)) == pytest.approx(
            float(losses.distortion(x_hat, x, 0.01)))
    assert float(losses.text_weighted_distortion(off_text, x, 0.01, 0.0)) == 0.0
    assert float(losses.text_weighted_distortion(off_text, x, 0.01, 0.25)) == pytest.approx(
        0.25 * float(losses.distortion(off_text, x, 0.01)))
    assert float(losses.text_weighted_distortion(on_text, x, 0.01, 0.0)) == pytest.approx(
        float(losses.distortion(on_text, x, 0.01)))
    x_hat = off_text.clone().requires_grad_(True)
    losses.text_weighted_distortion(x_hat, x, 0.01, 0.5).backward()
    assert torch.isfinite(x_hat.grad).all() and float(x_hat.grad[:, :, 0:6].abs().sum()) > 0
    with pytest.raises(ValueError, match=r"background weight must be in \[0, 1\]"):
        losses.text_weighted_distortion(x, x, 0.01, 1.5)


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
