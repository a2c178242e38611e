"""Text logit loss (Lai et al.): J, the region cache, the Eq. 6 filter, CER/WER per region."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tficlib import artifacts, config, evaluate, losses, metrics, ocr, textlogit
from tficlib.objectives import TextLogit

WORDS = ("harbour light", "Quartz 42")


@pytest.fixture(scope="module")
def recognizer():
    return ocr.get_recognizer("cpu")


@pytest.fixture(scope="module")
def lines():
    """Two rendered 64x256 text lines and hand-made word boxes (no detector needed)."""
    from tficlib.data import textlines

    images = []
    for k, text in enumerate(WORDS):
        im = textlines.render_line(text, "Roboto-Regular.ttf", "uniform", 64, 256, seed=k)
        images.append(torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255)
    boxes = [[(0, 0, 128, 64), (120, 0, 256, 64)], [(10, 5, 200, 60)]]
    return torch.stack(images), boxes


# --------------------------------------------------------------------------- J(x, x̂), Eq. 4
def test_j_is_zero_for_identical_images(recognizer, lines):
    x, boxes = lines
    targets = ocr.region_logits(x, boxes, recognizer)
    assert [len(t) for t in targets] == [2, 1]
    assert all(t.shape[-1] == ocr.NUM_CLASSES for ts in targets for t in ts)
    j_cached = losses.text_logit_loss(x.clone(), boxes, targets, recognizer)
    j_fresh = losses.text_logit_loss(x.clone(), boxes, x, recognizer)
    assert float(j_cached) == pytest.approx(0.0, abs=1e-6)
    assert float(j_fresh) == pytest.approx(0.0, abs=1e-6)


def test_j_positive_and_differentiable_wrt_x_hat_only(recognizer, lines):
    x, boxes = lines
    x = x.clone().requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    x_hat = (x.detach() + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1).requires_grad_(True)
    j = losses.text_logit_loss(x_hat, boxes, x, recognizer)
    assert float(j.detach()) > 1e-3
    j.backward()
    assert x.grad is None  # the original's logits are constants (cached in training)
    assert x_hat.grad is not None and float(x_hat.grad.abs().sum()) > 0
    # gradient only inside the boxes of the original (plus roi_align's one-pixel support)
    assert float(x_hat.grad[1, :, :, 220:].abs().sum()) == 0.0


def test_j_is_mean_over_entries_and_images(recognizer, lines):
    """J_k = mean over regions of the mean squared entry; an image with no box adds 0 to the batch mean."""
    x, boxes = lines
    targets = ocr.region_logits(x, boxes, recognizer)
    shifted = [[t + 1.0 for t in ts] for ts in targets]  # every entry off by 1 -> J_k = 1
    assert float(losses.text_logit_loss(x, boxes, shifted, recognizer)) == pytest.approx(1.0, rel=1e-5)
    no_text = [boxes[0], []]
    partial = [shifted[0], []]
    assert float(losses.text_logit_loss(x, no_text, partial, recognizer)) == pytest.approx(0.5, rel=1e-5)


def test_centred_j_ignores_per_frame_shifts_and_keeps_the_rest(recognizer, lines):
    """centered=True: a shift of all 97 logits of a frame (invisible to the softmax) costs nothing."""
    x, boxes = lines
    targets = ocr.region_logits(x, boxes, recognizer)
    g = torch.Generator().manual_seed(1)
    frame_shift = [[t + 3.0 * torch.randn(t.shape[0], 1, generator=g) for t in ts] for ts in targets]
    assert float(losses.text_logit_loss(x, boxes, frame_shift, recognizer)) > 1.0  # Eq. 4 counts the shifts
    assert float(losses.text_logit_loss(x, boxes, frame_shift, recognizer, centered=True)) == pytest.approx(0.0, abs=1e-4)
    # a change within a frame (one class up by 1) is seen by both; the centred form removes its mean 1/97
    one_class = [[t.clone() for t in ts] for ts in targets]
    for ts in one_class:
        for t in ts:
            t[:, 5] += 1.0
    raw = float(losses.text_logit_loss(x, boxes, one_class, recognizer))
    centred = float(losses.text_logit_loss(x, boxes, one_class, recognizer, centered=True))
    n = ocr.NUM_CLASSES
    assert raw == pytest.approx(1.0 / n, rel=1e-4)
    assert centred == pytest.approx((1 - 1 / n) ** 2 / n + (n - 1) / n**3, rel=1e-4)
    # the distance on given logits is the loss without running the recognizer again
    v_hat = ocr.region_logits(x, boxes, recognizer)
    for centred in (False, True):
        assert torch.allclose(losses.logit_distance(v_hat, frame_shift, centred, like=x),
                              losses.text_logit_loss(x, boxes, frame_shift, recognizer, centered=centred), atol=1e-6)
    # without J (κ = 0, the reference) the choice changes nothing, and is not recorded: reference runs are shared
    assert "logits" not in TextLogit(1e-3, 0.0, centered=True).params()


def test_j_rejects_mismatched_inputs(recognizer, lines):
    x, boxes = lines
    with pytest.raises(ValueError, match="box lists"):
        losses.text_logit_loss(x, boxes[:1], x, recognizer)
    with pytest.raises(ValueError, match="one logit tensor per box"):
        losses.text_logit_loss(x, boxes, [[], []], recognizer)
    bad = [[torch.zeros(5, ocr.NUM_CLASSES), torch.zeros(5, ocr.NUM_CLASSES)], [torch.zeros(5, ocr.NUM_CLASSES)]]
    with pytest.raises(ValueError, match="rebuild"):
        losses.text_logit_loss(x, boxes, bad, recognizer)


def test_batched_regions_equal_single_crops(recognizer, lines):
    """Grouping crops by EasyOCR's padded width gives the logits of each crop recognized alone."""
    x, boxes = lines
    together = ocr.region_logits(x, boxes, recognizer)
    for b in range(2):
        for i, box in enumerate(boxes[b]):
            (alone,) = ocr.region_logits(x[b:b + 1], [[box]], recognizer)
            torch.testing.assert_close(together[b][i], alone[0], atol=1e-4, rtol=1e-4)


def test_bucket_width_follows_easyocr():
    assert ocr.bucket_width(64) == 64
    assert ocr.bucket_width(65) == 128
    assert ocr.bucket_width(256) == 256
    assert ocr.bucket_width(32) == 128  # narrow crops: ceil(64/32) * 64
    with pytest.raises(ValueError):
        ocr.bucket_width(0)


# --------------------------------------------------------------------------- Eq. 6, constructed logits
def _logits(char_values, blank_value=30.0, blanks_between=1):
    """(T, 97) logits: characters (class 5) with max logit ``char_values``, blank steps with ``blank_value``."""
    blank = torch.full((ocr.NUM_CLASSES,), -5.0)
    blank[0] = blank_value
    rows = [blank] if not char_values else []
    for v in char_values:
        row = torch.full((ocr.NUM_CLASSES,), -5.0)
        row[5] = v
        rows.append(row)
        for _ in range(blanks_between):
            b = torch.full((ocr.NUM_CLASSES,), -5.0)
            b[0] = blank_value
            rows.append(b)
    return torch.stack(rows)


def test_confidence_stats_use_non_blank_steps_only():
    m, s = textlogit.confidence_stats(_logits([15.0, 16.0, 17.0], blank_value=40.0))
    assert m == pytest.approx(16.0)
    assert s == pytest.approx(1.0)  # sample stdev of 15, 16, 17
    m, s = textlogit.confidence_stats(_logits([12.0, 18.0]))
    assert m == pytest.approx(15.0) and s == pytest.approx(math.sqrt(18.0))
    assert textlogit.confidence_stats(_logits([20.0])) == (20.0, 0.0)
    assert textlogit.confidence_stats(_logits([])) == (float("-inf"), float("inf"))


def test_region_filter_keeps_and_drops_as_documented():
    cases = {
        "confident": ([15.0, 16.0, 17.0], True),  # median 16 >= 14.2, stdev 1 <= 2
        "low median": ([10.0, 11.0, 12.0], False),  # median 11 < 14.2
        "erratic": ([10.0, 20.0, 30.0], False),  # median 20 but stdev 10 > 2
        "two steps": ([14.5, 16.5], True),  # median 15.5, stdev 1.41
        "nothing read": ([], False),
    }
    stats = [textlogit.confidence_stats(_logits(v)) for v, _ in cases.values()]
    kept = textlogit.region_filter([m for m, _ in stats], [s for _, s in stats], **textlogit.PAPER_THRESHOLDS)
    assert kept.tolist() == [k for _, k in cases.values()]
    assert textlogit.region_filter([15.0, 15.0], [2.0, 2.5], m_min=15.0, sigma_max=2.0).tolist() == [True, False]


def test_derive_thresholds_are_quantiles_of_correct_regions():
    median = np.array([10.0, 12.0, 14.0, 16.0, 18.0, 3.0, float("-inf")])
    stdev = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 9.0, float("inf")])
    correct = np.array([True, True, True, True, True, False, False])
    th = textlogit.derive_thresholds(median, stdev, correct, quantile=0.25)
    assert th.m_min == pytest.approx(12.0) and th.sigma_max == pytest.approx(4.0)
    assert (th.n_regions, th.n_calibration, th.source) == (7, 5, "derived")
    kept = textlogit.region_filter(median, stdev, th.m_min, th.sigma_max)
    assert kept.tolist() == [False, True, True, True, False, False, False]
    everything = textlogit.derive_thresholds(median, stdev, None, quantile=0.0)
    assert everything.m_min == 3.0 and everything.sigma_max == 9.0  # infinite (unreadable) ignored
    with pytest.raises(ValueError, match="quantile"):
        textlogit.derive_thresholds(median, stdev, quantile=0.7)


def test_region_correct():
    assert textlogit.region_correct("light", "harbour light")
    assert textlogit.region_correct("harbour light", "harbour light")
    assert not textlogit.region_correct("ligh", "harbour light")
    assert not textlogit.region_correct("", "harbour light")


# --------------------------------------------------------------------------- Eq. 7 per region
def test_region_error_rates_hand_made():
    reference = [["hello", "world"], ["abc"], [], ["sun", "rain", "snow"]]
    predicted = [["hallo", "world"], ["abc"], [], ["sun", "r ai n", "snowy"]]
    r = textlogit.region_error_rates(reference, predicted)
    # image 0: 1 substitution over 10 characters, 1 wrong region (word) of 2; image 1: perfect;
    # image 2: no region -> left out; image 3: 2 insertions (spaces) + 1 insertion over 11 characters,
    # 2 wrong regions of 3 -- a region is one word, so a reading split by spaces is one substitution
    assert r["n_images"] == 3
    assert r["per_image_cer"] == pytest.approx([0.1, 0.0, 3 / 11])
    assert r["per_image_wer"] == pytest.approx([0.5, 0.0, 2 / 3])
    assert r["cer"] == pytest.approx((0.1 + 0 + 3 / 11) / 3)
    assert r["wer"] == pytest.approx((0.5 + 0 + 2 / 3) / 3)
    assert all(w <= 1 for w in r["per_image_wer"])
    with pytest.raises(ValueError, match="regions"):
        textlogit.region_error_rates([["a"]], [[]])


def test_bd_rate_on_cer_hand_computed():
    """Same CER at 20 % fewer bits everywhere -> BD-rate −20 %; equal curves -> 0."""
    bpp = [0.1, 0.2, 0.4, 0.8]
    cer = [0.5, 0.3, 0.15, 0.05]
    assert metrics.bd_rate(bpp, cer, [0.8 * r for r in bpp], cer, higher_is_better=False) == pytest.approx(-20.0,
                                                                                                          abs=1e-6)
    assert metrics.bd_quality(bpp, cer, bpp, cer, higher_is_better=False) == pytest.approx(0.0, abs=1e-9)


# --------------------------------------------------------------------------- the cache
@pytest.fixture(scope="module")
def tiny_dataset():
    from tficlib.data import textlines

    items = []
    for k, text in enumerate(("paper boat", "KEY 9")):
        im = textlines.render_line(text, "OpenSans-Regular.ttf", "uniform", 64, 256, seed=10 + k)
        items.append((torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255, text))
    return items


@pytest.mark.slow
def test_cache_matches_fresh_computation(recognizer, tiny_dataset, tmp_path):
    cache = textlogit.build_region_cache(tiny_dataset, "train", "sha", progress=False, device="cpu")
    assert cache.n_images == 2 and cache.n_regions >= 2
    path = textlogit.save_region_cache(tmp_path / "regions_train.pt", cache)
    loaded, meta = textlogit.load_region_cache(path)  # weights_only=True inside
    assert meta["manifest_sha256"] == "sha" and loaded.texts == cache.texts
    for i, (x, _) in enumerate(tiny_dataset):
        fresh_boxes = ocr.detect_boxes(x, device="cpu", **textlogit.DETECT_KWARGS)
        rs = loaded.regions_of(i)
        assert [tuple(loaded.boxes[r].tolist()) for r in rs] == fresh_boxes
        fresh = ocr.region_logits(x[None], [fresh_boxes], recognizer)[0]
        for r, v in zip(rs, fresh):
            torch.testing.assert_close(loaded.region_logits(r), v.detach(), atol=1e-4, rtol=1e-4)
            assert textlogit.confidence_stats(v) == pytest.approx((float(loaded.median[r]), float(loaded.stdev[r])))
    # the readings of the originals are the recognizer's
    assert " ".join(loaded.reference_texts([0])[0]) == "paper boat"
    th = textlogit.Thresholds(m_min=-1e9, sigma_max=1e9, source="fixed")
    boxes, targets = loaded.apply(th).batch([1, 0])
    assert len(boxes) == 2 and [len(t) for t in targets] == [len(b) for b in boxes]
    assert float(losses.text_logit_loss(torch.stack([tiny_dataset[1][0], tiny_dataset[0][0]]), boxes, targets,
                                        recognizer)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_region_cache_is_reused_and_rebuilt_for_another_dataset(tmp_data, monkeypatch):
    from tficlib.data import textlines

    cfg = config.resolve("smoke", device="cpu").with_overrides(textlines={"n_train": 2, "n_test": 1})
    textlines.generate(cfg, progress=False)
    built = []
    real_build = textlogit.build_region_cache

    def counting_build(*args, **kwargs):
        built.append(args[1])
        return real_build(*args, **kwargs)

    monkeypatch.setattr(textlogit, "build_region_cache", counting_build)
    first = textlogit.region_cache(cfg, "test", progress=False)
    assert textlogit.cache_path(cfg, "test").exists() and built == ["test"]
    again = textlogit.region_cache(cfg, "test", progress=False)
    assert built == ["test"] and again.texts == first.texts
    # another dataset (its manifest changes) -> rebuilt
    mpath = textlines.manifest_path(cfg, "test")
    manifest = json.loads(mpath.read_text())
    manifest["note"] = "regenerated"
    artifacts.write_json(mpath, manifest)
    textlogit.region_cache(cfg, "test", progress=False)
    assert built == ["test", "test"]
    # a foreign file at the cache path is not trusted
    with artifacts.atomic_write(textlogit.cache_path(cfg, "test")) as fh:
        fh.write(b"not a cache")
    with pytest.raises(artifacts.ArtifactError):
        textlogit.load_region_cache(textlogit.cache_path(cfg, "test"))


# --------------------------------------------------------------------------- Eq. 5 objective
@pytest.mark.slow
def test_objective_adds_kappa_j_and_reference_has_none(recognizer, tiny_dataset):
    from tficlib import codec

    torch.manual_seed(0)
    model = codec.build_model("bmshj2018-hyperprior", 16, 16).train()
    cache = textlogit.RegionCache(
        split="train", manifest_sha256="x", n_images=2, image_index=torch.tensor([0]),
        boxes=torch.tensor([[0, 0, 128, 64]], dtype=torch.int32), offsets=torch.tensor([0, 31]),
        logits=torch.zeros(31, ocr.NUM_CLASSES), median=torch.tensor([20.0], dtype=torch.float64),
        stdev=torch.tensor([1.0], dtype=torch.float64), texts=["paper"], labels=["paper boat", "KEY 9"])
    with pytest.raises(ValueError, match="Eq. 6"):
        TextLogit(0.001, 0.1, cache)
    cache.apply(textlogit.Thresholds(**textlogit.PAPER_THRESHOLDS, source="fixed"))
    batch = textlogit.collate_indexed([(*tiny_dataset[i], i) for i in range(2)])
    torch.manual_seed(1)
    ref = TextLogit(0.001, 0.0)(model, batch)
    torch.manual_seed(1)
    out = TextLogit(0.001, 0.1, cache)(model, batch)
    assert "J" not in ref and float(out["J"].detach()) > 0
    # image 1 has no kept region: J is region 0's term halved by the batch mean
    assert float(out["loss"].detach()) == pytest.approx(float(ref["loss"].detach()) + 0.1 * float(out["J"].detach()), rel=1e-5)
    out["loss"].backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.g_s.parameters())
    assert all(p.grad is None for p in recognizer.parameters())
    # the centred J is recorded in the fingerprint (a different run) and is no larger than Eq. 4's
    torch.manual_seed(1)
    centred_obj = TextLogit(0.001, 0.1, cache, centered=True)
    assert centred_obj.params()["logits"] == "centered"
    assert "logits" not in TextLogit(0.001, 0.1, cache).params()
    centred = centred_obj(model, batch)
    assert 0 < float(centred["J"].detach()) <= float(out["J"].detach())
    assert textlogit.kappa_method(0.0, config.resolve("smoke")) == "reference"
    assert textlogit.kappa_method(0.1, config.resolve("smoke")) == "textlogit"
    assert textlogit.kappa_method(10.0, config.resolve("smoke")) == "kappa10"


def test_bd_intervals_place_per_image_cer_on_the_images_with_text():
    """Per-image CER exists only for images with text: the bootstrap puts each value on its image."""
    n, with_text = 6, [0, 2, 3, 5]
    bpp = [0.1, 0.2, 0.4, 0.8]
    cer = [0.5, 0.3, 0.15, 0.05]

    def ev(rate, c, shift=0.0):
        per_cer = [c + shift * (k % 2) for k in range(len(with_text))]  # mean c + shift / 2
        return {"per_image_bpp": [rate] * n, "per_image_cer": per_cer, "per_image_wer": per_cer}

    ref = [ev(r, c) for r, c in zip(bpp, cer)]
    test = [ev(0.8 * r, c) for r, c in zip(bpp, cer)]
    keys = ("bd_rate_cer", "bd_rate_wer", "bd_cer", "bd_wer")
    iv = evaluate.bd_intervals(ref, test, keys, images=with_text, n_boot=30)
    assert set(iv) == {"bd_rate_cer", "bd_rate_wer", "bd_cer", "bd_wer"}
    assert iv["bd_rate_cer"]["value"] == pytest.approx(-20.0, abs=1e-6)
    assert iv["bd_rate_cer"]["low"] == pytest.approx(-20.0, abs=1e-6)  # same CER, 0.8x bits on every image
    assert iv["bd_cer"]["value"] == pytest.approx(metrics.bd_quality(bpp, cer, [0.8 * r for r in bpp], cer,
                                                                     higher_is_better=False, relative=True))
    with pytest.raises(ValueError, match="3 per-image cer values for 6 images \\(4 with text\\)"):
        evaluate.bd_intervals(ref, [{**e, "per_image_cer": e["per_image_cer"][:3]} for e in test], keys,
                              images=with_text)
    with pytest.raises(ValueError, match="has no per-image psnr: no interval for bd_psnr_db"):
        evaluate.bd_intervals(ref, test, ("bd_psnr_db",), images=with_text)
