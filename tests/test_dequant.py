"""DnCNN, the DCT loss and the OCR-guided pipeline (paper 3, Sec. 4.3-4.5)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F

from tficlib import artifacts, config, dequant, dncnn, ocr, train
from tficlib.losses import dct2_blocks, dct_loss
from tficlib.objectives import Dequantization, OCRGuided


# --------------------------------------------------------------------------- DnCNN
@pytest.mark.parametrize("shape", [(2, 3, 17, 23), (1, 3, 9, 65), (1, 3, 3, 1)])
def test_dncnn_output_shape_equals_input_shape(shape):
    model = dncnn.DnCNN(depth=17, features=8, zero_init=False)
    assert model(torch.rand(shape)).shape == shape


def test_dncnn_layout_of_fig7():
    model = dncnn.DnCNN()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == 17 and len(bns) == 15
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert convs[0].out_channels == 64 and convs[-1].out_channels == 3


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_dncnn_is_the_identity_at_init(mode):
    model = dncnn.DnCNN(depth=5, features=8)
    model.train(mode == "train")
    x = torch.rand(2, 3, 19, 21)
    assert torch.equal(model.residual(x), torch.zeros_like(x))
    assert torch.equal(model(x), x)


def test_dncnn_rejects_wrong_channels():
    with pytest.raises(ValueError, match="DnCNN expects"):
        dncnn.DnCNN(depth=3, features=4)(torch.rand(1, 1, 8, 8))


# --------------------------------------------------------------------------- DCT loss
def test_dct_matches_scipy_orthonormal_dct_on_random_blocks():
    x = torch.rand(2, 3, 24, 40, dtype=torch.float64)
    coeffs = dct2_blocks(x)
    assert coeffs.shape == (2, 3, 3, 5, 8, 8)
    rng = np.random.default_rng(0)
    for _ in range(10):
        b, c, i, j = rng.integers(2), rng.integers(3), rng.integers(3), rng.integers(5)
        ref = scipy.fft.dctn(x[b, c, 8 * i:8 * i + 8, 8 * j:8 * j + 8].numpy(), type=2, norm="ortho")
        np.testing.assert_allclose(coeffs[b, c, i, j].numpy(), ref, atol=1e-12)


def test_dct_loss_is_zero_for_identical_images():
    x = torch.rand(2, 3, 64, 256)
    assert dct_loss(x, x.clone()).item() == 0.0


def _from_coefficients(coeffs: np.ndarray) -> torch.Tensor:
    """A (1, 1, 8, 8·n) image whose 8×8 blocks have the given DCT coefficients (n, 8, 8)."""
    blocks = [scipy.fft.idctn(c, type=2, norm="ortho") for c in coeffs]
    return torch.from_numpy(np.concatenate(blocks, axis=1))[None, None]


def test_dct_loss_ignores_differences_below_tau():
    rng = np.random.default_rng(1)
    x = torch.rand(1, 1, 8, 32, dtype=torch.float64)
    small = rng.uniform(-0.49, 0.49, size=(4, 8, 8))
    assert dct_loss(x, x + _from_coefficients(small), tau=0.5).item() == pytest.approx(0.0, abs=1e-12)
    big = small.copy()
    big[2, 3, 1] = 0.9  # one coefficient 0.4 above τ
    expected = 0.4 / big.size
    assert dct_loss(x, x + _from_coefficients(big), tau=0.5).item() == pytest.approx(expected, rel=1e-9)
    # without the margin every difference counts
    assert dct_loss(x, x + _from_coefficients(small), tau=0.0).item() == pytest.approx(np.abs(small).mean())


def test_dct_loss_scale_and_errors():
    x = torch.zeros(1, 1, 8, 8)
    y = torch.full((1, 1, 8, 8), 1.0 / 255)  # DC difference 8/255 on [0, 1], 8 levels on 0..255
    assert dct_loss(x, y, tau=0.5, scale=255.0).item() == pytest.approx((8 - 0.5) / 64, rel=1e-5)
    assert dct_loss(x, y, tau=0.5).item() == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        dct_loss(x, torch.zeros(1, 1, 8, 16))
    with pytest.raises(ValueError, match="smaller than one"):
        dct2_blocks(torch.zeros(1, 1, 4, 8))


def test_dequant_objective_mse_only_has_no_dct_term():
    model = dncnn.DnCNN(depth=3, features=4)
    batch = {"clean": torch.rand(2, 3, 16, 16), "degraded": torch.rand(2, 3, 16, 16)}
    out = Dequantization(1.0)(model, batch)
    assert out["loss"].item() == pytest.approx(out["mse"].item())
    out = Dequantization(0.8)(model, batch)
    assert out["loss"].item() == pytest.approx(0.8 * out["mse"].item() + 0.2 * out["dct"].item(), rel=1e-6)


# --------------------------------------------------------------------------- crops and training
class _FakePatches:
    def __init__(self, n=4, h=64, w=256):
        g = torch.Generator().manual_seed(0)
        self.items = [{"clean": torch.rand(3, h, w, generator=g), "degraded": torch.rand(3, h, w, generator=g),
                       "text": "ab", "words": [("ab", (3, 3, 20, 20))]} for _ in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_low_resolution_decode_of_a_crop_is_the_crop_of_the_patch_decode():
    from tficlib.data import pages

    fake = _FakePatches(2)
    data = dncnn.PatchCrops(fake, crop=32, grid=16, jpeg=(2, 1))
    full = torch.from_numpy(pages.jpeg_low((fake[1]["clean"] * 255).round().byte().permute(1, 2, 0).numpy(), 2, 1))
    torch.manual_seed(0)
    for _ in range(10):
        item = data[1]
        hits = [(y, x) for y in range(0, 64 - 31, 16) for x in range(0, 256 - 31, 16)
                if torch.equal((fake[1]["clean"] * 255).round().byte()[:, y:y + 32, x:x + 32],
                               (item["clean"] * 255).round().byte())]
        (y, x), = hits
        low = full[y // 2:y // 2 + 16, x // 2:x // 2 + 16].permute(2, 0, 1).float() / 255
        assert torch.equal(item["low"], low)
    with pytest.raises(ValueError, match="multiples of 16"):
        dncnn.PatchCrops(fake, crop=24, grid=8, jpeg=(2, 1))


def test_dct_loss_on_the_jpeg_grid_pools_the_restored_image():
    from tficlib.losses import dct_loss_jpeg_grid

    torch.manual_seed(0)
    low, x_hat = torch.rand(1, 3, 16, 32), torch.rand(1, 3, 32, 64)
    expected = dct_loss(low, F.avg_pool2d(x_hat, 2), tau=0.5)
    assert torch.allclose(dct_loss_jpeg_grid(low, x_hat, 2, 0.5), expected)
    up = F.interpolate(low, scale_factor=2, mode="nearest")  # a restored image that pools back to the decode
    assert dct_loss_jpeg_grid(low, up, 2, 0.5).item() == 0.0
    with pytest.raises(ValueError, match="is not 2x the low-resolution decode"):
        dct_loss_jpeg_grid(low, x_hat[..., :62], 2)
    assert "dct_grid" not in Dequantization(0.8).params() and Dequantization(0.8, jpeg_factor=2).params()["dct_grid"]
    with pytest.raises(ValueError, match="needs the low-resolution decodes"):
        Dequantization(0.8, jpeg_factor=2)(dncnn.DnCNN(depth=3, features=4), {"clean": up, "degraded": up})


def test_crops_lie_on_the_jpeg_grid():
    data = dncnn.PatchCrops(_FakePatches(2), crop=32, grid=16)
    full = (data.clean[1].float() / 255)
    torch.manual_seed(0)
    for _ in range(20):
        crop = data[1]["clean"]
        hits = [(y, x) for y in range(0, 64 - 31) for x in range(0, 256 - 31)
                if torch.equal(full[:, y:y + 32, x:x + 32], crop)]
        assert hits and all(y % 16 == 0 and x % 16 == 0 for y, x in hits)


def _tiny_cfg(**dq):
    base = dict(depth=4, features=8, steps=4, batch_size=2, crop=32, eval_every=2, checkpoint_every=2,
                validation_patches=0)
    base.update(dq)
    return config.resolve("smoke", device="cpu").with_overrides(dequant=base)


def test_train_dncnn_snapshots_resume_and_reuse(tmp_data):
    cfg = _tiny_cfg()
    data = dequant.training_crops(cfg, _FakePatches())
    assert data.low is not None and data[0]["low"].shape == (3, 16, 16)  # the crop's JPEG decode, at half size
    ckpt = cfg.stage_dir(dequant.STAGE_DNCNN) / "dncnn.pt"
    result = dequant.train_dncnn(cfg, data, ckpt, progress=False)
    assert [row["step"] for row in result.log] == [1, 2, 3, 4]
    assert sorted(train.snapshots(ckpt)) == [0, 2, 4]
    assert artifacts.read_json(ckpt.with_suffix(".log.json"))["meta"]["schedule"] == "dequant.steps"
    again = dequant.train_dncnn(cfg, data, ckpt, progress=False)
    assert again.reused
    model, meta = dncnn.load_dncnn(ckpt)
    assert meta["dncnn"] == {"depth": 4, "features": 8, "channels": 3}
    for k, v in model.state_dict().items():
        assert torch.equal(v, result.model.state_dict()[k])
    # the identity start: the snapshot at step 0 returns its input
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(dequant.snapshot_model(cfg, ckpt, 0)(x), x)


def test_ablation_is_paired_with_the_main_run(tmp_data):
    cfg = _tiny_cfg(steps=8, ablation_steps=2, lr_decay_start=0.5)
    data = dequant.training_crops(cfg, _FakePatches())
    result, ref = dequant.train_ablation(cfg, data, cfg.stage_dir(dequant.STAGE_DNCNN) / "abl.pt", progress=False)
    assert ref == 2 and len(result.log) == 2
    assert result.meta["schedule"] == "dequant.ablation_steps"  # the amount a dry run's estimate scales by
    assert result.log[0]["lr"] == result.log[1]["lr"] == cfg.dequant.lr  # constant, like the main run's start
    with pytest.raises(ValueError, match="paired"):
        dequant.train_ablation(_tiny_cfg(steps=8, ablation_steps=3), data, cfg.stage_dir("x") / "a.pt")


# --------------------------------------------------------------------------- OCR-guided
def test_match_words_by_overlap():
    words = [("Hello", (10, 5, 60, 25)), ("world", (70, 5, 120, 25)), ("far", (200, 40, 230, 60))]
    boxes = [(8, 3, 62, 27), (66, 2, 124, 28), (150, 30, 160, 35)]
    pairs, counts = ocr.match_words(boxes, words)
    assert pairs == [((8, 3, 62, 27), "Hello"), ((66, 2, 124, 28), "world")]
    assert counts == {"boxes": 3, "matched": 2, "unmatched_boxes": 1, "words": 3, "missed_words": 1}
    # a line box holding two words gets both, in reading order
    pairs, _ = ocr.match_words([(5, 0, 130, 30)], words[:2])
    assert pairs == [((5, 0, 130, 30), "Hello world")]


def test_reassembly_blends_each_window_without_seams():
    x_tilde = torch.rand(3, 64, 256)
    margin = 6
    boxes = [(10, 8, 40, 30), (60, 33, 120, 58), (200, 0, 256, 20)]
    wins = [dncnn._window(b, margin, 64, 256) for b in boxes]
    windows = [torch.full((3, w[3] - w[1], w[2] - w[0]), float(i + 2)) for i, w in enumerate(wins)]
    out = dncnn.reassemble(x_tilde, windows, list(zip(wins, boxes)))
    covered = torch.zeros(64, 256, dtype=torch.bool)
    for i, ((x0, y0, x1, y1), w) in enumerate(zip(boxes, wins)):
        assert torch.allclose(out[:, y0:y1, x0:x1], torch.full((3, y1 - y0, x1 - x0), float(i + 2)))  # the word: D2's
        covered[w[1]:w[3], w[0]:w[2]] = True
        # across the margin the weight falls linearly: half-way it is about half D2's, half x̃
        if x0 - margin >= 0:
            mid = out[:, (y0 + y1) // 2, x0 - margin // 2]
            ref = x_tilde[:, (y0 + y1) // 2, x0 - margin // 2]
            assert torch.all((mid - ref).abs() < (i + 2 - ref).abs())  # moved towards D2's value, not all the way
    assert torch.equal(out[:, ~covered], x_tilde[:, ~covered])  # outside every window: x̃ untouched
    # windows equal to x̃ (an identity D2) change nothing
    same = [x_tilde[:, w[1]:w[3], w[0]:w[2]] for w in wins]
    assert torch.allclose(dncnn.reassemble(x_tilde, same, list(zip(wins, boxes))), x_tilde, atol=1e-6)
    with pytest.raises(ValueError, match="does not fit its place"):
        dncnn.reassemble(x_tilde, [windows[0][:, 1:]], [(wins[0], boxes[0])])


def test_chain_reads_each_word_and_an_identity_d2_reads_like_d1():
    torch.manual_seed(0)
    d1 = _trained_like_dncnn()
    x = torch.rand(2, 3, 64, 256)
    boxes = [[(10, 8, 60, 30), (70, 8, 120, 30)], [(5, 35, 90, 60)]]
    chain = dncnn.OCRGuidedChain(d1, init="identity")
    out = chain.run(x, boxes=boxes)
    assert [len(w) for w in out["words"]] == [2, 1] and out["restored"].shape == x.shape
    base = chain.run(x, boxes=boxes, refine=False)
    for a, b in zip(out["words"], base["words"]):
        for p, q in zip(a, b):
            assert torch.allclose(p, q, atol=1e-6)  # identity start: D2's words are D1's
    assert torch.allclose(out["restored"], out["x_tilde"], atol=1e-6)


def test_coverage_counts_label_characters_inside_matched_boxes():
    words = [("Hello", (10, 5, 60, 25)), ("world", (70, 5, 120, 25)), ("far", (200, 40, 230, 60))]
    assert dequant.coverage([(8, 3, 62, 27), (66, 2, 124, 28)], words) == pytest.approx(10 / 13)
    assert dequant.coverage([], words) == 0.0
    assert dequant.coverage([], []) == 1.0


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_ocr_guided_step_updates_only_d2():
    from tficlib import ocr

    torch.manual_seed(0)
    d1 = dncnn.DnCNN(depth=4, features=8, zero_init=False).eval()
    guided = dncnn.OCRGuidedChain(d1)
    recognizer = ocr.get_recognizer("cpu")
    craft = ocr.get_reader("cpu").detector
    x = torch.ones(2, 3, 64, 256)
    x[:, :, 20:40, 30:200] = 0.2  # a dark bar: something for CRAFT to look at
    x_tilde = d1(x).detach().clamp(0, 1)
    before = {"d1": _state(d1), "craft": _state(craft), "recognizer": _state(recognizer), "d2": _state(guided.d2)}
    guided.detect(x_tilde[0])  # CRAFT runs on D1's output
    objective = OCRGuided(guided, (x_tilde * 255).round().to(torch.uint8))
    optimizer = torch.optim.Adam([p for p in guided.d2.parameters() if p.requires_grad], lr=1e-2)
    batch = [{"index": 0, "box": (30, 20, 200, 40), "label": "hello"},
             {"index": 1, "box": (10, 10, 90, 50), "label": "world"}]
    out = objective(guided.d2, batch)
    out["loss"].backward()
    assert all(p.grad is None for p in d1.parameters()) and all(p.grad is None for p in recognizer.parameters())
    optimizer.step()
    assert _same(before["d1"], _state(d1))
    assert _same(before["craft"], _state(craft))
    assert _same(before["recognizer"], _state(recognizer))
    assert not _same(before["d2"], _state(guided.d2))
    assert float(out["mse"].detach()) == 0.0  # no anchor: the paper's OCR-only loss
    # with the pixel anchor μ: loss = CTC + μ·MSE(x̂_p, x_p); an identity D2 on x_p = x̃ has zero anchor error
    fresh = dncnn.OCRGuidedChain(d1)
    x8 = (x_tilde * 255).round().to(torch.uint8)
    same = OCRGuided(fresh, x8, x8, anchor=50.0)(fresh.d2, batch)
    assert float(same["mse"].detach()) == 0.0 and torch.allclose(same["loss"], same["ctc"])
    white = torch.full_like(x8, 255)
    anchored = OCRGuided(fresh, x8, white, anchor=50.0)(fresh.d2, batch)
    assert float(anchored["mse"].detach()) > 0.01
    assert torch.allclose(anchored["loss"], anchored["ctc"] + 50.0 * anchored["mse"])

    # the CTC cap: the plain mean is torch's "mean" CTC; a cap above every word changes nothing; a cap below
    # every word leaves the loss at the cap and sends no gradient to D2
    labels = [item["label"] for item in batch]
    plain = OCRGuided(fresh, x8)(fresh.d2, batch)
    assert float(plain["capped"]) == 0.0
    high = OCRGuided(fresh, x8, ctc_cap=1e6)(fresh.d2, batch)
    assert torch.allclose(high["loss"], plain["loss"]) and torch.allclose(high["ctc"], plain["ctc"])
    assert float(high["capped"]) == 0.0
    low = OCRGuided(fresh, x8, ctc_cap=1e-3)(fresh.d2, batch)
    assert low["ctc"].item() > 1e-3 and low["capped"].item() == 1.0
    assert torch.allclose(low["loss"], torch.tensor(1e-3)) and torch.allclose(low["ctc"], plain["ctc"])
    fresh.d2.zero_grad(set_to_none=True)
    low["loss"].backward()
    assert all(p.grad is None or not p.grad.any() for p in fresh.d2.parameters())
    # one word above, one below a cap between their losses: only the readable word counts
    with torch.no_grad():
        crops = [ocr.crop_boxes(fresh.refine_words([(x8[i["index"]].float() / 255, i["box"])])[0].clamp(0, 1)[None],
                                [[(0, 0, i["box"][2] - i["box"][0], i["box"][3] - i["box"][1])]])[0] for i in batch]
        logits = recognizer(ocr.pad_crops(crops))
        per = ocr.ctc_loss(logits, labels, reduction="none") / torch.tensor([len(t) for t in labels])  # per char
    cap = float(per.mean())
    mid = OCRGuided(fresh, x8, ctc_cap=cap)(fresh.d2, batch)
    assert float(mid["capped"]) == 0.5
    assert torch.allclose(mid["loss"], per.clamp(max=cap).mean(), rtol=1e-4)
    assert OCRGuided(fresh, x8, ctc_cap=cap).params()["ctc_cap"] == cap


def test_pixel_anchor_needs_aligned_clean_patches():
    guided = dncnn.OCRGuidedChain(dncnn.DnCNN(depth=4, features=8))
    x8 = torch.zeros(2, 3, 16, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="needs the clean patches aligned"):
        OCRGuided(guided, x8, None, anchor=1.0)
    with pytest.raises(ValueError, match="needs the clean patches aligned"):
        OCRGuided(guided, x8, x8[:1], anchor=1.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        OCRGuided(guided, x8, x8, anchor=-1.0)
    with pytest.raises(ValueError, match="CTC cap must be > 0"):
        OCRGuided(guided, x8, ctc_cap=0.0)


def test_targets_are_reported_not_hidden():
    from tficlib import config, metrics
    from tficlib import dequant as dq

    cpu = config.resolve("cpu", device="cpu")
    acc = {"jpeg": 0.02, "dncnn": 0.63, "ocr_guided": 0.70}
    gain = metrics.paired_difference([0.8, 0.7, 0.9, 0.6], [0.7, 0.6, 0.85, 0.55], n_boot=200)
    tiny = metrics.paired_difference([0.61, 0.6, 0.6], [0.6, 0.6, 0.61], n_boot=200)
    out = dq.targets(cpu, acc, gains={"ocr_guided - dncnn": gain, "ocr_guided - anchor_only": tiny},
                     ablation={"with_dct": 0.5, "mse_only": 0.52})
    assert out["degraded JPEG < 0.05"]["met"] and out["DnCNN >= 0.60"]["met"]
    assert out["OCR-guided - DnCNN >= +0.05, interval above 0"]["met"]
    assert out["OCR-guided - DnCNN >= +0.05, interval above 0"]["interval"] == [gain["low"], gain["high"]]
    assert not out["OCR-guided - anchor-only > 0, interval above 0"]["met"]  # an interval that includes 0
    miss = out["lambda = 0.8 (with DCT) >= lambda = 1 (MSE only), same steps"]
    assert not miss["met"] and miss["measured"] == 0.5 and miss["target"] == 0.52
    paper = dq.targets(config.resolve("paper", device="cpu"), acc)
    assert not paper["DnCNN >= 0.70"]["met"] and not paper["OCR-guided >= 0.85"]["met"]
    assert dq.targets(config.resolve("smoke", device="cpu"), acc) == {}


def test_d2_initialisations():
    torch.manual_seed(0)
    d1 = dncnn.DnCNN(depth=4, features=8, zero_init=False).eval()
    x_tilde = torch.rand(3, 40, 96)
    box = [(10, 8, 60, 30)]
    # identity (default): D1's weights except the zeroed last layer, so x̂ = x̃ before training
    guided = dncnn.OCRGuidedChain(d1)
    assert guided.init == "identity"
    assert torch.count_nonzero(guided.d2.body[-1].weight) == 0
    assert torch.count_nonzero(d1.body[-1].weight) > 0  # D1 itself untouched
    assert torch.equal(guided.d2.body[0].weight, d1.body[0].weight)
    (patch,) = guided.refine_words([(x_tilde, box[0])])
    assert torch.equal(patch, x_tilde[:, 8:30, 10:60])
    # "d1": D1 exactly, so D2 re-applies the dequantizer
    literal = dncnn.OCRGuidedChain(d1, init="d1")
    assert _same(_state(literal.d2), _state(d1))
    (patch,) = literal.refine_words([(x_tilde, box[0])])
    assert not torch.allclose(patch, x_tilde[:, 8:30, 10:60])
    # "d1_degraded": D1 on the degraded input's window, with a margin of D1's receptive field at least:
    # before training each word is exactly D1's output of the whole image
    degraded = torch.rand(1, 3, 40, 96)
    on_degraded = dncnn.OCRGuidedChain(d1, init="d1_degraded", margin=2)
    assert on_degraded.reads_degraded and on_degraded.margin == dncnn.receptive_radius(d1) == 4
    with torch.no_grad():
        (patch,) = on_degraded.refine_words([(degraded[0], box[0])])
        assert torch.allclose(patch, d1(degraded)[0, :, 8:30, 10:60], atol=1e-6)
    with pytest.raises(ValueError, match="unknown D2 initialisation 'zeros'"):
        dncnn.OCRGuidedChain(d1, init="zeros")


def _trained_like_dncnn(seed=0):
    """A small DnCNN with non-trivial weights and BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = dncnn.DnCNN(depth=5, features=8, zero_init=False)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return net.eval()


def test_pack_windows_groups_by_size_within_the_waste_bound():
    shapes = [(20, 50), (20, 50), (22, 48), (20, 120), (20, 118)]
    # max_waste 0: only images of one size share a batch
    assert sorted(map(sorted, dncnn.pack_windows(shapes, 0.0))) == [[0, 1], [2], [3], [4]]
    # a bound that lets the similar widths join but not 50 with 120 (padding 50 -> 120 wastes > 100 %)
    assert sorted(map(sorted, dncnn.pack_windows(shapes, 0.2))) == [[0, 1, 2], [3, 4]]
    assert sorted(map(sorted, dncnn.pack_windows(shapes, 10.0))) == [[0, 1, 2, 3, 4]]
    assert dncnn.pack_windows([], 0.5) == []
    with pytest.raises(ValueError, match="max_waste must be >= 0"):
        dncnn.pack_windows(shapes, -0.1)


def test_masked_padded_batch_equals_each_window_alone_with_gradients():
    net = _trained_like_dncnn()
    torch.manual_seed(1)
    windows = [torch.rand(3, h, w) for h, w in [(21, 37), (30, 64), (21, 37), (17, 90), (33, 15)]]
    alone = [net(w.unsqueeze(0))[0] for w in windows]
    sum(o.square().sum() for o in alone).backward()
    grads_alone = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    packed = dncnn.run_windows(net, windows, max_waste=100.0)  # one padded batch of all five
    sum(o.square().sum() for o in packed).backward()
    for a, b in zip(alone, packed):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-6)
    for ga, p in zip(grads_alone, net.parameters()):
        assert torch.allclose(ga, p.grad, rtol=1e-4, atol=1e-6)
    # without the mask the padding leaks into the windows (the check above would fail)
    x = torch.stack([F.pad(w, (0, 90 - w.shape[-1], 0, 33 - w.shape[-2])) for w in windows])
    leaky = net(x)
    assert not torch.allclose(leaky[0, :, :21, :37], alone[0], atol=1e-3)


def test_masked_batch_errors_are_named():
    net = _trained_like_dncnn()
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"mask of a padded batch must be \(B, 1, H, W\)"):
        net(x, torch.ones(2, 3, 16, 16))
    net.train()
    with pytest.raises(ValueError, match="needs the DnCNN in eval mode"):
        net(x, torch.ones(2, 1, 16, 16))


def test_refine_at_test_time_equals_the_training_path_word_by_word():
    d1 = _trained_like_dncnn()
    guided = dncnn.OCRGuidedChain(d1, init="d1", margin=4)
    torch.manual_seed(2)
    x = torch.rand(1, 3, 64, 256)
    boxes = [(3, 4, 40, 30), (50, 33, 120, 60), (200, 0, 256, 20)]
    with torch.no_grad():
        x_tilde = d1(x)[0].clamp(0, 1)
        together = guided.run(x, boxes=[boxes])["words"][0]  # test time: D1, then every word of the image
        kept = boxes
        for patch, box in zip(together, kept):
            (alone,) = guided.refine_words([(x_tilde, box)])  # one word (as in a training batch)
            x0, y0, x1, y1 = box
            win = dncnn._window(box, 4, 64, 256)
            direct = guided.d2(x_tilde[None, :, win[1]:win[3], win[0]:win[2]])[0]
            assert torch.allclose(patch, alone.clamp(0, 1), atol=1e-6)
            assert torch.allclose(patch, direct[:, y0 - win[1]:y1 - win[1], x0 - win[0]:x1 - win[0]].clamp(0, 1),
                                  atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_packs_windows_and_matches_each_window_alone():
    net = _trained_like_dncnn().cuda()
    torch.manual_seed(3)
    windows = [torch.rand(3, h, w, device="cuda") for h, w in [(21, 37), (22, 40), (21, 37), (17, 45)]]
    shapes = [tuple(w.shape[-2:]) for w in windows]
    assert len(dncnn.pack_windows(shapes, dncnn.PACK_WASTE_CUDA)) < len(windows)  # batched on the GPU
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            alone = [net(w[None])[0] for w in windows]
            packed = dncnn.run_windows(net, windows)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    for a, b in zip(alone, packed):
        assert torch.allclose(a, b, atol=1e-5)
