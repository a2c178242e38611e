"""Random views of x̂ for the robust TFIC variant: shapes, range, identity, gradients, seeding, bad input."""

import pytest
import torch

from tficlib import codec, config, evaluate, tfic
from tficlib.objectives import TFIC
from tficlib.ocr import OCRViews, otsu_threshold

NONE = dict(p_mix=0.0, contrast=0.0, brightness=0.0, p_blur=0.0, scale=0.0, degrees=0.0, shift=0.0, noise=0.0)


def _batch(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 128, generator=g)


def test_views_keep_shape_and_range_and_differ_per_image():
    x = _batch()
    torch.manual_seed(0)
    y = OCRViews()(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    same = _batch().repeat(1, 1, 1, 1)[:1].repeat(4, 1, 1, 1)
    torch.manual_seed(1)
    views = OCRViews()(same)
    assert not torch.allclose(views[0], views[1])  # each image draws its own view


def test_strength_zero_and_zero_ranges_are_the_identity():
    x = _batch()
    assert torch.equal(OCRViews(strength=0.0)(x), x)
    torch.manual_seed(0)
    assert torch.allclose(OCRViews(**NONE)(x), x, atol=1e-4)  # bilinear resampling at the identity grid


def test_grey_mix_makes_the_channels_equal():
    x = _batch()
    torch.manual_seed(0)
    y = OCRViews(**{**NONE, "p_mix": 1.0})(x)
    assert torch.allclose(y[:, 0], y[:, 1], atol=1e-5) and torch.allclose(y[:, 1], y[:, 2], atol=1e-5)
    lo, hi = x.min(dim=1).values, x.max(dim=1).values  # a convex mix stays between the channels
    assert bool((y[:, 0] >= lo - 1e-4).all()) and bool((y[:, 0] <= hi + 1e-4).all())


def test_otsu_threshold_matches_opencv_and_splits_two_levels():
    cv2 = pytest.importorskip("cv2")
    g = torch.Generator().manual_seed(5)
    grey = torch.full((2, 1, 32, 128), 0.8)
    grey[:, :, 10:22, 8:120] = 0.3
    grey = (grey + 0.12 * torch.randn(grey.shape, generator=g)).clamp(0, 1)  # overlapping classes: no empty gap
    t = otsu_threshold(grey)
    assert t.shape == (2,) and all(0.4 < float(v) < 0.7 for v in t)
    for i in range(2):
        u8 = (grey[i, 0] * 255).round().to(torch.uint8).numpy()
        cv_t, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        assert float(t[i]) == pytest.approx((cv_t + 0.5) / 255, abs=1e-6)
    two = torch.full((1, 1, 8, 8), 204 / 255)
    two[..., :4] = 51 / 255  # two levels only: the threshold is the middle of the gap
    assert float(otsu_threshold(two)[0]) == pytest.approx(0.5, abs=1e-6)  # (51 + 203) / 2 + 0.5, of 255
    with pytest.raises(ValueError, match=r"expects grey images \(B,1,H,W\)"):
        otsu_threshold(torch.rand(2, 3, 8, 8))


def test_binarized_views_are_two_level_grey_images_with_gradients():
    x = torch.full((3, 3, 32, 128), 0.85)
    x[:, :, 12:20, 10:110] = 0.35  # dark text on a light background
    x = (x + 0.02 * torch.rand(x.shape, generator=torch.Generator().manual_seed(1))).requires_grad_(True)
    torch.manual_seed(0)
    y = OCRViews(strength=0.0, binarize=1.0)(x)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    assert float(y[:, :, 12:20, 10:110].max()) < 0.01 and float(y[:, :, :8].min()) > 0.99
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert torch.equal(OCRViews(strength=0.0, binarize=0.0)(x), x)
    torch.manual_seed(0)
    half = OCRViews(strength=0.0, binarize=0.5)(x.detach().repeat(8, 1, 1, 1))
    binarized = [bool(((v < 0.01) | (v > 0.99)).all()) for v in half]
    assert 0 < sum(binarized) < len(binarized)  # a share of the images, drawn per image


def test_views_are_seeded_by_torch_and_differentiable():
    x = _batch().requires_grad_(True)
    torch.manual_seed(3)
    a = OCRViews()(x)
    torch.manual_seed(3)
    b = OCRViews()(x)
    assert torch.equal(a, b)
    a.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_bad_settings_and_input_are_named():
    with pytest.raises(ValueError, match="strength must be in"):
        OCRViews(strength=1.5)
    with pytest.raises(ValueError, match="p_blur must be a probability"):
        OCRViews(p_blur=2.0)
    with pytest.raises(ValueError, match="binarize must be a probability"):
        OCRViews(binarize=-0.1)
    with pytest.raises(ValueError, match="softness must be > 0"):
        OCRViews(softness=0.0)
    with pytest.raises(ValueError, match="contrast and scale"):
        OCRViews(scale=1.0)
    with pytest.raises(ValueError, match=r"expects a batch \(B,3,H,W\)"):
        OCRViews()(torch.rand(3, 32, 128))


def test_views_enter_the_fingerprint_only_when_set():
    plain = TFIC(0.1).params()
    robust = TFIC(0.1, views=OCRViews(strength=0.5)).params()
    assert "views" not in plain and robust["views"]["strength"] == 0.5
    assert {k: v for k, v in robust.items() if k != "views"} == plain
    assert TFIC(0.1, views=OCRViews()).params() != TFIC(0.1, views=OCRViews(strength=0.5)).params()
    assert TFIC(0.1, views=OCRViews(binarize=0.5)).params() != TFIC(0.1, views=OCRViews()).params()
    assert "binary" not in plain and TFIC(0.1, binary=0.2).params()["binary"] == 0.2
    with pytest.raises(ValueError, match="binary weight must be >= 0"):
        TFIC(0.1, binary=-1.0)
    assert "background" not in plain and TFIC(0.1, 0.001, background=0.1).params()["background"] == 0.1
    with pytest.raises(ValueError, match=r"background weight must be in \[0, 1\]"):
        TFIC(0.1, background=-0.5)


def test_robust_views_follow_the_profile():
    cfg = config.resolve("smoke", device="cpu")
    assert tfic.robust_views(cfg) is None
    only_bin = tfic.robust_views(cfg.with_overrides(tfic={"robust_binarize": 0.5}))
    assert only_bin.strength == 0.0 and only_bin.binarize == 0.5
    both = tfic.robust_views(cfg.with_overrides(tfic={"robust_strength": 1.0, "robust_binarize": 0.25}))
    assert both.strength == 1.0 and both.binarize == 0.25


def test_robust_gammas_are_fixed_or_follow_lambda():
    cfg = config.resolve("cpu", device="cpu")
    lambdas, start = cfg.codec.lambdas, cfg.tfic.sweep_start_index
    fixed = cfg.with_overrides(tfic={"robust_gamma_scaled": False})
    assert tfic.robust_gammas(fixed) == [cfg.tfic.robust_gamma] * len(lambdas)
    assert cfg.tfic.robust_gamma_scaled and tfic.robust_gammas(cfg)[start] == cfg.tfic.robust_gamma
    scaled = tfic.robust_gammas(cfg.with_overrides(tfic={"robust_gamma": 0.2}))
    assert scaled[start] == pytest.approx(0.2)
    below = range(len(lambdas))[start]
    assert [g / lam for g, lam in zip(scaled[:below + 1], lambdas)] == pytest.approx([0.2 / lambdas[start]] * (below + 1))
    assert scaled[below:] == [0.2] * (len(lambdas) - below)
    assert scaled[0] < scaled[1] < 0.2


@pytest.mark.slow
@pytest.mark.parametrize("settings", [{"robust_strength": 0.0}, {"robust_strength": 1.0},
                                      {"robust_binarize": 1.0, "robust_binary": 0.5}, {"robust_background": 0.1},
                                      {"robust_gamma_scaled": False}])
def test_robust_sweep_trains_one_model_per_stage1_model(tmp_path, monkeypatch, settings):
    monkeypatch.setenv("TFIC_DATA", str(tmp_path))
    cfg = config.resolve("smoke", device="cpu").with_overrides(tfic={"steps": 2, "robust_pixel": 0.5, **settings})
    plain = not settings.get("robust_strength") and not settings.get("robust_binarize")
    torch.manual_seed(0)
    stage1 = codec.build_model(cfg.codec.model, cfg.codec.N, cfg.codec.M)
    for k in range(len(cfg.codec.lambdas)):
        codec.save_model(evaluate.model_path(cfg, tfic.STAGE1, "mse", k), stage1, {"method": "mse", "k": k})
    g = torch.Generator().manual_seed(0)
    x = torch.ones(4, 3, cfg.textlines.height, cfg.textlines.width)
    x[:, :, 24:40, 20:230] -= 0.8 * (torch.rand(4, 1, 16, 210, generator=g) > 0.5)
    data = [(x[i], w) for i, w in enumerate(("one", "two", "three", "four"))]
    runs = tfic.robust_sweep(cfg, data, "cpu", seed=0)
    assert [r.params["start"] for r in runs] == list(range(len(cfg.codec.lambdas)))
    assert [r.params["lambda"] for r in runs] == pytest.approx([0.5 * lam for lam in cfg.codec.lambdas])
    assert [r.path.name for r in runs] == [f"tfic_robust_{k}.pt" for k in range(len(cfg.codec.lambdas))]
    _, meta = codec.load_model(runs[-1].path)
    assert meta["method"] == "tfic_robust" and meta["gamma"] == cfg.tfic.robust_gamma  # the last λ is the sweep start
    assert [r.params["gamma"] for r in runs] == pytest.approx(tfic.robust_gammas(cfg))
    scaled = [c for c in tmp_path.rglob("tfic_robust_from0_gamma0.0125_*.ckpt")]  # γ·λ_0/λ_s = 0.1·0.0004/0.0032
    assert len(scaled) == settings.get("robust_gamma_scaled", True)
    assert (meta["views"] is None) == plain and (tfic.robust_views(cfg) is None) == plain
    assert meta.get("binary", 0.0) == settings.get("robust_binary", 0.0)
    shaped = [c.name for c in tmp_path.rglob("tfic_robust_from0_*.ckpt") if "_bin1_shape0.5" in c.name]
    assert len(shaped) == ("robust_binary" in settings)
    assert meta.get("background", 1.0) == settings.get("robust_background", 1.0)
    assert len([c for c in tmp_path.rglob("tfic_robust_from0_*_bg0.1.ckpt")]) == ("robust_background" in settings)
    assert all(len(r.log) == 2 and all(torch.isfinite(torch.tensor(row["ocr"])) for row in r.log) for r in runs)
    assert tfic.robust_sweep(cfg.with_overrides(tfic={"robust": False}), data, "cpu") == []
