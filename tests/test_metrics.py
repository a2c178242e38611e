"""tficlib.metrics on hand-checked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tficlib import evaluate
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


# ----------------------------------------------------------------------------- BD bootstrap
def _per_image(means, n=40, spread=0.1, seed=0):
    """Per-image values (points x n) whose means are exactly ``means``."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, spread, (len(means), n))
    noise -= noise.mean(1, keepdims=True)
    return np.asarray(means, dtype=float)[:, None] + noise


def test_bd_bootstrap_point_estimate_is_bd_of_the_means():
    rates, acc = _per_image(R, spread=0.01, seed=1), _per_image(ACC, seed=2)
    test_acc = _per_image([a + 0.04 for a in ACC], seed=3)
    ci = M.bd_bootstrap(M.bd_quality_result, rates, acc, rates, test_acc, n_boot=200)
    assert ci["value"] == pytest.approx(M.bd_quality(rates.mean(1), acc.mean(1), rates.mean(1), test_acc.mean(1)))
    assert ci["value"] == pytest.approx(0.04, abs=0.01)
    assert ci["low"] < ci["value"] < ci["high"] and ci["std"] > 0
    assert ci["n_boot"] == 200 and ci["n_valid"] == 200 and ci["level"] == 0.95 and ci["reason"] is None


def test_bd_bootstrap_is_paired_over_images():
    # the test curve = the reference + 0.05 on every image: every replicate draws the same images for both
    # curves, so the gain is exactly 0.05 in all of them and the interval has no width
    rates, acc = _per_image(R, spread=0.01, seed=1), _per_image(ACC, spread=0.2, seed=2)
    ci = M.bd_bootstrap(M.bd_quality_result, rates, acc, rates, acc + 0.05, n_boot=100)
    assert ci["low"] == pytest.approx(0.05, abs=1e-9) and ci["high"] == pytest.approx(0.05, abs=1e-9)
    same = M.bd_bootstrap(M.bd_rate_result, rates, acc, rates, acc, n_boot=50)
    assert same["value"] == pytest.approx(0.0, abs=1e-9) and same["low"] == pytest.approx(0.0, abs=1e-9)


def test_bd_bootstrap_seeded_and_wider_at_higher_level():
    rates, acc = _per_image(R, spread=0.01, seed=1), _per_image(ACC, seed=2)
    test_acc = _per_image([a + 0.04 for a in ACC], seed=3)
    a = M.bd_bootstrap(M.bd_rate_result, rates, acc, rates * 0.9, test_acc, n_boot=150, seed=7)
    b = M.bd_bootstrap(M.bd_rate_result, rates, acc, rates * 0.9, test_acc, n_boot=150, seed=7)
    c = M.bd_bootstrap(M.bd_rate_result, rates, acc, rates * 0.9, test_acc, n_boot=150, seed=8)
    assert a == b and (a["low"], a["high"]) != (c["low"], c["high"])
    wide = M.bd_bootstrap(M.bd_rate_result, rates, acc, rates * 0.9, test_acc, n_boot=150, seed=7, level=0.99)
    assert wide["low"] <= a["low"] < a["value"] < a["high"] <= wide["high"]


def test_bd_bootstrap_skips_undefined_qualities():
    rates, cer = _per_image(R, spread=0.01, seed=1), _per_image([0.5, 0.3, 0.2, 0.1], spread=0.05, seed=2)
    cer[:, 3] = np.nan  # an image without text region: no CER, but its bits still count
    ci = M.bd_bootstrap(M.bd_rate_result, rates, cer, rates * 0.8, cer, higher_is_better=False, n_boot=50)
    assert ci["value"] == pytest.approx(-20.0, abs=1e-6) and ci["low"] == pytest.approx(-20.0, abs=1e-6)
    nones = [[None if np.isnan(v) else v for v in row] for row in cer]
    assert M.bd_bootstrap(M.bd_rate_result, rates, nones, rates * 0.8, nones, higher_is_better=False,
                          n_boot=5)["value"] == pytest.approx(-20.0, abs=1e-6)


def test_bd_bootstrap_without_overlap_says_why():
    rates, acc = _per_image(R, spread=0.01, seed=1), _per_image(ACC, spread=0.01, seed=2)
    far = _per_image([0.95, 0.96, 0.97, 0.99], spread=0.001, seed=3)
    ci = M.bd_bootstrap(M.bd_rate_result, rates, acc, rates, far, n_boot=20)
    assert ci["value"] is None and ci["low"] is None and "0 of 20" in ci["reason"]
    assert M.format_interval(ci).startswith("n/a (only 0 of 20")


def test_bd_bootstrap_rejects_mismatched_inputs():
    rates, acc = _per_image(R), _per_image(ACC)
    with pytest.raises(ValueError, match="same images"):
        M.bd_bootstrap(M.bd_rate_result, rates, acc, rates[:, :30], acc[:, :30])
    with pytest.raises(ValueError, match="same shape per curve"):
        M.bd_bootstrap(M.bd_rate_result, rates, acc[:3], rates, acc)
    with pytest.raises(ValueError, match="points x images"):
        M.bd_bootstrap(M.bd_rate_result, R, ACC, R, ACC)
    with pytest.raises(ValueError, match="level"):
        M.bd_bootstrap(M.bd_rate_result, rates, acc, rates, acc, level=95)
    with pytest.raises(ValueError, match="rates must be finite"):
        bad = rates.copy()
        bad[0, 0] = np.nan
        M.bd_bootstrap(M.bd_rate_result, bad, acc, rates, acc)


def test_format_interval():
    ci = {"value": -6.4171, "low": -10.565, "high": -2.001, "level": 0.95, "reason": None}
    assert M.format_interval(ci) == "-6.42 (95 % interval -10.6 to -2)"
    assert M.format_interval({**ci, "low": None, "high": None, "reason": "too few"}) == "-6.42 (no interval: too few)"


def test_bd_intervals_match_bd_summary_on_the_means():
    """evaluate.bd_intervals: the same two numbers as bd_summary (from per-image values), with intervals."""
    rng = np.random.default_rng(0)
    n = 30

    def ev(rate, acc):
        a = np.clip(acc + rng.normal(0, 0.1, n), 0, 1)
        return {"per_image_bpp": list(rate * (1 + rng.normal(0, 0.05, n))), "per_image_accuracy": list(a)}

    ref = [ev(r, a) for r, a in zip((0.1, 0.2, 0.4, 0.8), (0.3, 0.6, 0.8, 0.9))]
    test = [ev(r, a + 0.05) for r, a in zip((0.1, 0.2, 0.4, 0.8), (0.3, 0.6, 0.8, 0.9))]
    curve = lambda evals: {"bpp": [float(np.mean(e["per_image_bpp"])) for e in evals],  # noqa: E731
                           "accuracy": [float(np.mean(e["per_image_accuracy"])) for e in evals]}
    summary = evaluate.bd_summary(curve(ref), curve(test))
    iv = evaluate.bd_intervals(ref, test, n_boot=100)
    for key in ("bd_accuracy", "bd_rate_accuracy"):
        assert iv[key]["value"] == pytest.approx(summary[key])
        assert iv[key]["low"] <= iv[key]["value"] <= iv[key]["high"]
    assert iv["bd_accuracy"]["value"] > 0 and iv["bd_rate_accuracy"]["value"] < 0


def test_paired_difference_is_the_mean_difference_with_a_paired_interval():
    a, b = [0.9, 0.8, 0.7, 0.6, 0.5], [0.8, 0.7, 0.6, 0.5, 0.4]  # a beats b by exactly 0.1 on every item
    d = M.paired_difference(a, b, n_boot=200, seed=1)
    assert d["value"] == pytest.approx(0.1) and d["low"] == pytest.approx(0.1) and d["high"] == pytest.approx(0.1)
    noisy = M.paired_difference([1, 0, 1, 0, 1, 0], [0, 1, 0, 1, 0, 1], n_boot=500, seed=0)
    assert noisy["value"] == 0.0 and noisy["low"] < 0 < noisy["high"] and noisy["n"] == 6
    with pytest.raises(ValueError, match="equal-length"):
        M.paired_difference([1, 2], [1])
