"""tficlib.metrics on hand-checked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tficlib import metrics as M


# ----------------------------------------------------------------------------- accuracy
def test_accuracy_hand_checked():
    assert M.accuracy("abc", "abd") == pytest.approx(2 / 3)
    assert M.accuracy("abc", "abc") == 1.0
    assert M.accuracy("abcd", "ab") == pytest.approx(1 - 2 / 4)  # two deletions over max length 4
    assert M.accuracy("ab", "xyz") == pytest.approx(0.0)  # lev 3 over max 3


def test_accuracy_ignores_punctuation_and_spaces():
    assert M.accuracy("Hello, world!", "Hello world") == 1.0
    assert M.accuracy("e-mail: a.b", "email ab") == 1.0
    assert M.alphanumeric("a-b c!1") == "abc1"


def test_accuracy_case():
    assert M.accuracy("Abc", "abc") == pytest.approx(2 / 3)
    assert M.accuracy("Abc", "abc", case_sensitive=False) == 1.0
    assert M.mean_accuracy(["Abc", "xy"], ["abc", "xy"], case_sensitive=False) == 1.0
    assert M.mean_accuracy(["Abc", "xy"], ["abc", "xy"]) == pytest.approx((2 / 3 + 1) / 2)


def test_accuracy_empty_strings():
    assert M.accuracy("", "") == 1.0
    assert M.accuracy("", "abc") == 0.0
    assert M.accuracy("abc", "") == 0.0
    assert M.accuracy("!!", " .") == 1.0  # no alphanumerics on either side


def test_accuracy_bad_input():
    with pytest.raises(TypeError, match="pred must be a str"):
        M.accuracy("abc", None)
    with pytest.raises(ValueError, match="2 ground truths but 1 predictions"):
        M.mean_accuracy(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no .* pairs"):
        M.mean_accuracy([], [])


def test_text_metrics_keys():
    out = M.text_metrics(["Hello world"], ["hello world"])
    assert set(out) == {"accuracy", "accuracy_ci", "cer", "wer"}
    assert out["accuracy_ci"] == 1.0 and out["accuracy"] == pytest.approx(1 - 1 / 10)
    assert out["cer"] == pytest.approx(1 / 11) and out["wer"] == pytest.approx(1 / 2)


# ----------------------------------------------------------------------------- CER / WER
def test_cer_wer_hand_checked():
    # "kitten" -> "sitting": 2 substitutions + 1 insertion over 6 reference characters
    assert M.edit_counts("kitten", "sitting") == {"S": 2, "D": 0, "I": 1, "C": 4, "N": 6}
    assert M.cer("kitten", "sitting") == pytest.approx(3 / 6)
    assert M.cer("hello world", "helo world") == pytest.approx(1 / 11)
    assert M.cer("hello  world ", "hello world") == 0.0  # whitespace runs collapse
    assert M.wer("the cat sat", "the bat sat") == pytest.approx(1 / 3)
    assert M.wer("the cat sat", "the cat sat down") == pytest.approx(1 / 3)  # one insertion
    assert M.cer("ab", "abcdef") == pytest.approx(2.0)  # CER is not bounded by 1 (insertions)
    assert M.mean_cer(["ab", "cd"], ["ab", "cx"]) == pytest.approx(0.25)
    assert M.mean_wer(["a b", "c"], ["a b", "d"]) == pytest.approx(0.5)


def test_cer_wer_empty_reference():
    assert M.cer("", "") == 0.0 and M.wer("", "") == 0.0
    assert M.cer("", "abc") == 1.0 and M.wer("", "abc") == 1.0
    assert M.cer("abc", "") == 1.0 and M.wer("a b", "") == 1.0  # all deletions


def test_lai_per_image_then_mean():
    # image 1: regions "ab","cd" read as "ab","c": 1 error / 4 chars; image 2: "x" read "y": 1/1
    gts = [["ab", "cd"], ["x"]]
    preds = [["ab", "c"], ["y"]]
    assert M.image_cer(gts[0], preds[0]) == pytest.approx(0.25)
    assert M.mean_over_images(gts, preds, "cer") == pytest.approx((0.25 + 1.0) / 2)
    assert M.mean_over_images(gts, preds, "wer") == pytest.approx((0.5 + 1.0) / 2)
    assert M.mean_over_images([[], ["a"]], [[], ["a"]]) == 0.0
    with pytest.raises(ValueError, match="image 0: 2 reference regions but 1 predictions"):
        M.mean_over_images([["a", "b"]], [["a"]])
    with pytest.raises(ValueError, match="metric must be"):
        M.mean_over_images(gts, preds, "ler")


# ----------------------------------------------------------------------------- images
def test_psnr_known_value():
    x = torch.zeros(2, 3, 8, 8)
    y = torch.full((2, 3, 8, 8), 0.1)  # MSE = 0.01 -> 20 dB
    assert M.psnr(x, y) == pytest.approx(20.0)
    y[1] = 0.01  # MSE 1e-4 -> 40 dB; the mean is per image
    assert M.psnr(x, y) == pytest.approx(30.0)
    assert M.psnr(x, y, reduction="none").tolist() == pytest.approx([20.0, 40.0])
    assert M.psnr(x, x) == 100.0  # identical images are capped, never inf
    assert M.psnr(x[0], y[0]) == pytest.approx(20.0)  # (C,H,W) accepted
    with pytest.raises(ValueError, match="differ in shape"):
        M.psnr(x, y[:, :, :4])
    with pytest.raises(ValueError, match="integer images"):
        M.psnr(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


def test_ms_ssim_levels():
    assert M.ms_ssim_levels(64, 256) == 3
    assert M.ms_ssim_levels(256, 512) == 5
    assert M.ms_ssim_levels(161, 161) == 5 and M.ms_ssim_levels(160, 400) == 4
    with pytest.raises(ValueError, match="too small"):
        M.ms_ssim_levels(10, 100)


def test_ms_ssim_identical_and_64x256():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 256, generator=g)
    assert M.ms_ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    z = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    v_y, v_z = M.ms_ssim(x, y), M.ms_ssim(x, z)
    assert 0.0 < v_z < v_y < 1.0
    assert M.ms_ssim(x, y, reduction="none").shape == (2,)
    with pytest.raises(ValueError, match="levels=5 impossible"):
        M.ms_ssim(x, y, levels=5)


def test_ms_ssim_matches_pytorch_msssim_at_five_scales():
    import pytorch_msssim

    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 176, 192, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    ref = float(pytorch_msssim.ms_ssim(x, y, data_range=1.0))
    assert M.ms_ssim(x, y) == pytest.approx(ref, abs=1e-5)


def test_bpp():
    assert M.bpp(2048, 64, 256) == pytest.approx(1.0)
    assert M.bpp(b"\x00" * 1024, 64, 256) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="positive"):
        M.bpp(10, 0, 256)


# ----------------------------------------------------------------------------- BD
R = [0.1, 0.2, 0.4, 0.8]
ACC = [0.3, 0.6, 0.8, 0.9]


def test_bd_identical_curves_are_zero():
    assert M.bd_rate(R, ACC, R, ACC) == pytest.approx(0.0, abs=1e-9)
    assert M.bd_quality(R, ACC, R, ACC) == pytest.approx(0.0, abs=1e-12)


def test_bd_rate_known_factor():
    # the test reaches every quality at 0.8x the reference rate -> -20 %
    assert M.bd_rate(R, ACC, [0.8 * r for r in R], ACC) == pytest.approx(-20.0, abs=1e-9)
    assert M.bd_rate(R, ACC, [1.25 * r for r in R], ACC) == pytest.approx(25.0, abs=1e-9)
    # unsorted input gives the same answer
    perm = [2, 0, 3, 1]
    assert M.bd_rate([R[i] for i in perm], [ACC[i] for i in perm], [0.8 * r for r in R], ACC) == \
        pytest.approx(-20.0, abs=1e-9)


def test_bd_quality_known_offset():
    assert M.bd_quality(R, ACC, R, [a + 0.05 for a in ACC]) == pytest.approx(0.05, abs=1e-12)
    res = M.bd_quality_result(R, ACC, R, [a * 1.1 for a in ACC], relative=True)
    assert res.ok and res.value == pytest.approx(10.0, abs=1e-9)


def test_bd_lower_is_better_cer():
    cer = [0.5, 0.3, 0.2, 0.1]
    assert M.bd_rate(R, cer, [0.8 * r for r in R], cer, higher_is_better=False) == pytest.approx(-20.0, abs=1e-9)
    assert M.bd_quality(R, cer, R, [c - 0.05 for c in cer], higher_is_better=False) == \
        pytest.approx(-0.05, abs=1e-12)


def test_bd_no_overlap_is_nan_with_reason():
    res = M.bd_rate_result(R, ACC, R, [0.95, 0.96, 0.97, 0.99])
    assert math.isnan(res.value) and not res.ok and "do not overlap" in res.reason
    assert math.isnan(M.bd_rate(R, ACC, R, [0.95, 0.96, 0.97, 0.99]))
    small = M.bd_rate_result(R, ACC, R, [0.85, 0.9, 0.95, 0.99])  # overlap 0.05 / 0.69
    assert math.isnan(small.value) and "min_overlap" in small.reason and 0 < small.overlap < 0.25
    assert math.isfinite(M.bd_rate(R, ACC, R, [0.85, 0.9, 0.95, 0.99], min_overlap=0.0))
    res_q = M.bd_quality_result(R, ACC, [5.0, 6.0, 7.0, 8.0], ACC)
    assert math.isnan(res_q.value) and "rate ranges do not overlap" in res_q.reason


def test_bd_non_monotone_curves():
    wiggly = [0.3, 0.6, 0.5, 0.9]  # point 2 is worse than the cheaper point 1
    res = M.bd_rate_result(R, wiggly, R, ACC)
    assert res.ok and res.dropped_ref == (2,)
    rr, qq, kept = M.operational_curve(R, wiggly)
    assert kept == (0, 1, 3) and list(qq) == [0.3, 0.6, 0.9]
    strict = M.bd_rate_result(R, wiggly, R, ACC, monotone=False)
    assert math.isnan(strict.value) and "not strictly increasing" in strict.reason
    flat = M.bd_rate_result(R, [1.0, 1.0, 1.0, 1.0], R, ACC)  # saturated accuracy: one point left
    assert math.isnan(flat.value) and "1 point(s)" in flat.reason


def test_bd_bad_input():
    with pytest.raises(ValueError, match="rates must be > 0"):
        M.bd_rate([0.0, 0.1], [0.1, 0.2], R, ACC)
    with pytest.raises(ValueError, match="4 rates but 3 qualities"):
        M.bd_rate(R, ACC[:3], R, ACC)
    with pytest.raises(ValueError, match="finite"):
        M.bd_rate(R, [0.1, None, 0.3, 0.4], R, ACC)


def test_bd_accepts_numpy():
    assert M.bd_rate(np.array(R), np.array(ACC), np.array(R) * 0.5, np.array(ACC)) == pytest.approx(-50.0)
