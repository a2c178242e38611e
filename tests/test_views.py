"""Random views of x̂ for the robust TFIC variant: shapes, range, identity, gradients, seeding, bad input."""

import pytest
import torch

from tficlib import codec, config, evaluate, tfic
from tficlib.objectives import TFIC
from tficlib.ocr import OCRViews

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


@pytest.mark.slow
@pytest.mark.parametrize("strength", [0.0, 1.0])
def test_robust_sweep_trains_one_model_per_stage1_model(tmp_path, monkeypatch, strength):
    monkeypatch.setenv("TFIC_DATA", str(tmp_path))
    cfg = config.resolve("smoke", device="cpu").with_overrides(
        tfic={"steps": 2, "robust_pixel": 0.5, "robust_strength": strength})
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
    assert meta["method"] == "tfic_robust" and meta["gamma"] == cfg.tfic.robust_gamma
    assert (meta["views"] is None) == (strength == 0) and (tfic.robust_views(cfg) is None) == (strength == 0)
    assert all(len(r.log) == 2 and all(torch.isfinite(torch.tensor(row["ocr"])) for row in r.log) for r in runs)
    assert tfic.robust_sweep(cfg.with_overrides(tfic={"robust": False}), data, "cpu") == []
