"""Notebook 06's library: results of every stage, classic-codec curves, BD tables, the explorer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tficlib import artifacts, baselines, config, evaluation, ocr, report, widgets

BPP = [0.1, 0.2, 0.4, 0.8]
LOG = np.log10(BPP)


def _acc(shift: float = 0.0, slope: float = 0.2, base: float = 0.7) -> list[float]:
    """Accuracy linear in log10(bpp): a curve shifted by ``shift`` decades in rate."""
    return [float(base + slope * (x + shift)) for x in LOG]


def _fake_reader(images) -> list[str]:
    """A stand-in OCR: the text says how bright the image is (fast, deterministic)."""
    return [f"m{int(float(x.float().mean()) * 100)}" for x in images]


class _Brightness(ocr.Engine):
    """The stand-in OCR as a registered engine."""

    name = "brightness"

    def read_lines(self, images):
        return _fake_reader(images)

    read_text = read_lines

    def identity(self):
        return {"engine": self.name, "version": "1", "models": "0" * 16}


@pytest.fixture(autouse=True)
def fake_engine(monkeypatch):
    monkeypatch.setitem(ocr.ENGINES, "brightness", _Brightness)


@pytest.fixture
def cfg(tmp_data):
    return config.resolve("smoke")


@pytest.fixture
def stage_files(cfg):
    """Results files with known numbers: TFIC = the MSE curve at half the rate, 03, 04 and 05."""
    unc = {"accuracy": 0.7, "accuracy_ci": 0.72}
    mse = {"bpp": BPP, "accuracy": _acc(), "psnr": [20.0 + 10 * x for x in LOG], "lambda": [1e-4, 2e-4, 4e-4, 8e-4]}
    tfic = {"bpp": [b / 2 for b in BPP], "accuracy": _acc(), "psnr": [18.0 + 10 * x for x in LOG],
            "gamma": [0.03, 0.1, 0.3, 1.0]}
    artifacts.write_results(cfg, "00_dataset", {"uncompressed": unc, "clean": {"accuracy": 0.99, "psnr": None},
                                                "jpeg": {"accuracy": 0.01, "psnr": 14.0}})
    artifacts.write_results(cfg, "01_mse_pretraining", {"uncompressed": unc, "mse": mse})
    artifacts.write_results(cfg, "02_tfic_ocr_finetuning", {"uncompressed": unc, "mse": mse, "tfic": tfic},
                            tables={"runtime_ms": {"encoder": [13.0, 1.0], "ocr": [26.0, 2.0], "ratio": 0.5,
                                                   "device": "test CPU", "threads": 1, "n": 4}})
    cer_ref = [0.4, 0.3, 0.2, 0.1]
    artifacts.write_results(cfg, "03_text_logit_training", {
        "reference": {"bpp": BPP, "cer": cer_ref, "accuracy": _acc(), "psnr": [20.0] * 4},
        "textlogit": {"bpp": [0.75 * b for b in BPP], "cer": cer_ref, "accuracy": _acc(), "psnr": [20.0] * 4}})
    artifacts.write_results(cfg, "04_dncnn_dequantization", {
        "clean": {"accuracy": 0.99}, "jpeg": {"accuracy": 0.03, "psnr": 14.0}, "dncnn": {"accuracy": 0.5}})
    return cfg


# --------------------------------------------------------------------------- stage results
def test_missing_stages_are_named_with_their_notebook(cfg):
    artifacts.write_results(cfg, "00_dataset", {"uncompressed": {"accuracy": 0.9}})
    loaded = evaluation.load_results(cfg)
    assert list(loaded.stages) == ["00_dataset"]
    assert set(loaded.missing) == set(evaluation.STAGES) - {"00_dataset"}
    assert "notebooks/03_text_logit_training.ipynb" in loaded.missing["03_text_logit_training"]
    report = loaded.report()
    assert "MISSING" in report and "notebooks/05_ocr_guided_refinement.ipynb" in report
    # the tables still build, naming what to run
    heads = evaluation.headline_table(loaded)
    assert any(r["status"] == "missing: run notebooks/02_tfic_ocr_finetuning.ipynb" for r in heads)
    assert evaluation.runtime_table(loaded) == []
    deq = {r["input"]: r for r in evaluation.dequant_table(loaded)}
    assert deq["dncnn"]["accuracy"] is None and "04_dncnn" in deq["dncnn"]["missing"]


def test_corrupt_results_are_reported_not_raised(cfg):
    path = cfg.stage_dir("01_mse_pretraining") / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    loaded = evaluation.load_results(cfg, ["01_mse_pretraining"])
    assert "not valid JSON" in loaded.missing["01_mse_pretraining"]


# --------------------------------------------------------------------------- BD table
def test_comparison_table_from_results_files_gives_known_bd_values(stage_files):
    loaded = evaluation.load_results(stage_files)
    methods = {k: loaded.method(k, stages)[1] for k, stages in evaluation.LEARNED.items()}
    # a classic codec exactly 4x the MSE codec's rate for the same accuracy, and a worse one
    methods["jpeg"] = {"bpp": [4 * b for b in BPP], "accuracy": _acc(), "psnr": [20.0 + 10 * x for x in LOG]}
    methods["webp"] = {"bpp": [8 * b for b in BPP], "accuracy": _acc(), "psnr": [20.0 + 10 * x for x in LOG]}
    assert evaluation.best_classic(methods)[0] == "jpeg"
    rows = {(r["reference"], r["method"]): r for r in evaluation.comparison_table(methods)}
    tfic = rows[("mse", "tfic")]
    assert tfic["bd_rate_accuracy"] == pytest.approx(-50.0, abs=1e-6)  # half the rate, same accuracy
    assert tfic["bd_accuracy"] == pytest.approx(0.2 * math.log10(2), abs=1e-6)  # slope x log10(2)
    assert tfic["bd_rate_psnr"] is not None and tfic["bd_psnr"] == pytest.approx(10 * math.log10(2) - 2, abs=1e-6)
    assert rows[("jpeg (best classic)", "mse")]["bd_rate_accuracy"] == pytest.approx(-75.0, abs=1e-6)
    assert rows[("jpeg (best classic)", "tfic")]["bd_rate_accuracy"] == pytest.approx(-87.5, abs=1e-6)
    # the reference of 03 has the MSE codec's curve: no gain
    ref_row = rows[("mse", "reference")]
    assert ref_row["bd_rate_accuracy"] == pytest.approx(0.0, abs=1e-9)
    assert ("jpeg (best classic)", "jpeg") not in rows and ("mse", "mse") not in rows


def test_bd_row_reports_why_a_value_is_missing():
    a = {"bpp": [0.1, 0.2], "accuracy": [0.1, 0.2]}
    b = {"bpp": [1.0, 2.0], "accuracy": [0.8, 0.9]}
    row = evaluation.bd_row("a", a, "b", b)
    assert row["bd_rate_accuracy"] is None and "overlap" in row["bd_rate_accuracy_reason"]
    assert row["bd_psnr"] is None and "no psnr" in row["bd_psnr_reason"]


def test_headline_runtime_and_dequant_tables(stage_files):
    loaded = evaluation.load_results(stage_files)
    heads = evaluation.headline_table(loaded)
    assert {"paper", "claim", "paper_number", "ours", "profile"} <= set(heads[0])
    by_claim = {r["claim"]: r for r in heads}
    lai = next(r for r in heads if r["paper"].startswith("Lai"))
    assert "-30" in lai["paper_number"] and "-35" in lai["paper_number"]
    assert "-25.0 %" in lai["ours"] and lai["status"] == "partly"  # 0.75x rate at equal CER
    rt = next(r for c, r in by_claim.items() if "Table I" in c)
    assert "12.9" in rt["paper_number"] and "24.1" in rt["paper_number"] and "0.54" in rt["paper_number"]
    assert "ratio 0.50" in rt["ours"] and rt["status"] == "reproduced"
    tfic = next(r for c, r in by_claim.items() if "uncompressed" in c)
    assert tfic["status"] == "partly"  # best TFIC 0.681: within 0.02 of 0.7 but below it
    journal = [r for r in heads if r["paper"].startswith("semantic")]
    assert [r["paper_number"] for r in journal] == ["< 5 %", "≈ 75 %", "≈ 90 %"]
    assert journal[0]["status"] == "reproduced" and journal[1]["status"] == "partly"
    assert journal[2]["status"].startswith("missing: run notebooks/05")
    runtime = evaluation.runtime_table(loaded)
    assert [r["what"] for r in runtime] == ["encoder", "ocr", "encoder / OCR"]
    assert runtime[0]["paper_mean_ms"] == 12.9 and runtime[1]["std_ms"] == 2.0 and runtime[2]["mean_ms"] == 0.5
    deq = {r["input"]: r for r in evaluation.dequant_table(loaded)}
    assert deq["dncnn"]["source"] == "04_dncnn_dequantization" and deq["jpeg"]["accuracy"] == 0.03
    md = report.markdown_table(heads, ["paper", "claim", "paper_number", "ours", "profile"])
    assert md.count("\n") == len(heads) + 1 and md.startswith("| paper |")
    # headline_table also reads notebook 06's own results.json
    assert evaluation.headline_table({"tables": {"headline": heads}}) == heads


def test_markdown_table_formats_cells():
    md = report.markdown_table([{"a": 0.12345, "b": None, "c": "x|y"}], digits=2)
    assert md.splitlines()[2] == "| 0.12 | n/a | x\\|y |"
    assert report.markdown_table([]) == "(no rows)"


# --------------------------------------------------------------------------- classic codecs
def _synthetic_lines(n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.ones(n, 3, 64, 256)
    for i in range(n):  # dark "glyph" bars on a light background
        for _ in range(6 + i):
            x0 = int(torch.randint(8, 230, (1,), generator=g))
            x[i, :, 18:46, x0:x0 + 6] = 0.1
    return x


def test_classic_curves_are_aligned_with_real_byte_counts(tmp_path):
    images = _synthetic_lines(3)
    labels = ["m90", "m89", "m88"]
    grid = {"jpeg": [5, 30, 90], "jpeg2000": [18, 24, 34]}
    ev = evaluation.classic_curves(images, labels, codecs=list(grid), qualities=grid, engine="brightness",
                                   cache_dir=tmp_path)
    for key, entry in ev.methods.items():
        n = len(grid[key])
        for m in ("quality", "bpp", "bytes", "accuracy", "accuracy_ci", "cer", "wer", "psnr"):
            assert len(entry[m]) == n, (key, m)
        assert len(ev.preds[key]) == n and all(len(p) == 3 for p in ev.preds[key])
        # bpp are the real encoded bytes of each image
        for k, q in enumerate(grid[key]):
            sizes = [len(baselines.encode(key, a, q)) for a in baselines.to_uint8(images)]
            assert ev.num_bytes[key][k] == sizes
            assert entry["bpp"][k] == pytest.approx(np.mean([8 * s / (64 * 256) for s in sizes]))
        assert all(b2 > b1 for b1, b2 in zip(entry["bpp"], entry["bpp"][1:])), entry["bpp"]  # monotone rate
        assert entry["psnr"][-1] > entry["psnr"][0]
        assert entry["bpp"][0] >= entry["floor_bpp"] * 0.5
    again = evaluation.classic_curves(images, labels, codecs=list(grid), qualities=grid, engine="brightness",
                                      cache_dir=tmp_path)
    assert sorted(again.cached) == sorted(grid) and again.methods == ev.methods


def test_rate_figure_draws_every_method_and_shades_the_floor(stage_files):
    import matplotlib.pyplot as plt

    methods = {"uncompressed": {"accuracy": 0.9}, "mse": {"bpp": BPP, "accuracy": _acc()},
               "jpeg": {"bpp": [0.3, 0.5], "accuracy": [0.5, 0.9]}}
    fig = evaluation.rate_figure(methods, "accuracy")
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert "JPEG (≥ 0.30 bpp)" in labels and "uncompressed" in labels
    assert any("below every classic codec" in s for s in labels)
    plt.close(fig)
    fig = evaluation.dequant_figure(evaluation.dequant_table(evaluation.load_results(stage_files)))
    plt.close(fig)


# --------------------------------------------------------------------------- explorer
def test_explorer_builds_widgets_without_a_display(cfg, monkeypatch):
    import ipywidgets

    monkeypatch.setenv("TFIC_HEADLESS", "1")
    images = _synthetic_lines(2)
    methods = {"jpeg": {"bpp": [0.5, 0.9], "quality": [10, 60]},
               "jpeg2000": {"bpp": [0.2, 0.4], "quality": [18, 26]}}
    points = widgets.rate_points(cfg, methods)
    assert [p.setting for p in points["jpeg"]] == ["quality 10", "quality 60"]
    ex = widgets.Explorer(images, ["m90", "m89"], points, reader=_fake_reader)
    assert not ex.live and not widgets.is_interactive()
    assert isinstance(ex.widget, ipywidgets.VBox)
    assert isinstance(ex.method, ipywidgets.Dropdown) and isinstance(ex.image, ipywidgets.IntSlider)
    v = ex.update()
    data = baselines.encode("jpeg", baselines.to_uint8(images[0])[0], 10)
    assert v["bytes"] == len(data) and v["bpp"] == pytest.approx(8 * len(data) / (64 * 256))
    assert v["text"].startswith("m") and 0.0 <= v["accuracy"] <= 1.0
    ex.method.value = "jpeg2000"  # switching the method refreshes the rate points
    assert ex.point.options[0][0].startswith("target PSNR (dB) 18")
    assert ex._cache and "JPEG 2000" in ex.info.value
    ex.image.value = 1
    assert "m89" in ex.info.value
    fig, rows = ex.static(indices=(0, 1))
    assert len(rows) == 4 and {r["method"] for r in rows} == {"jpeg", "jpeg2000"}
    assert len(fig.axes) == 6  # (original + 2 methods) x 2 lines
    assert widgets.show(ex) is False


def test_explorer_refuses_empty_inputs(cfg):
    with pytest.raises(ValueError, match="no method"):
        widgets.Explorer(_synthetic_lines(1), ["a"], {}, reader=_fake_reader, live=False)


# --------------------------------------------------------------------------- learned codecs
@pytest.mark.slow
def test_learned_curves_add_line_cer_from_saved_models(cfg):
    from tficlib import codec

    torch.manual_seed(0)
    images, labels = _synthetic_lines(2), ["m90", "m89"]
    stage = "03_text_logit_training"
    bpps, per_image = [], []
    for k in range(2):
        model = codec.build_model("bmshj2018-hyperprior", N=8, M=8)
        path = codec.save_model(cfg.stage_dir(stage) / "models" / f"textlogit_{k}.pt", model, {"k": k})
        model, _ = codec.load_model(path)
        per_image.append(codec.evaluate_codec(model, images, ms_ssim=False)["bpp"])
        bpps.append(float(np.mean(per_image[-1])))
    entry = {"bpp": bpps, "cer": [0.5, 0.4], "accuracy": [0.1, 0.2], "lambda": [1e-4, 2e-4], "kappa": [0.1, 0.1]}
    artifacts.write_results(cfg, stage, {"textlogit": entry, "reference": {**entry, "bpp": [1.0, 2.0]}})
    loaded = evaluation.load_results(cfg, [stage])
    methods, notes, evals = evaluation.learned_curves(cfg, loaded, images, labels, engine="brightness")
    tl = methods["textlogit"]
    assert tl["source"] == stage and tl["cer_lai"] == [0.5, 0.4] and tl["bpp"] == bpps
    assert len(tl["cer"]) == len(tl["wer"]) == 2 and all(c >= 0 for c in tl["cer"])
    assert tl["engine"] == "brightness" and len(evals["textlogit"]) == 2
    assert evals["textlogit"][0]["per_image_bpp"] == per_image[0]
    # the reference's model files are missing: an independent engine cannot read it, a note says why
    assert "reference" not in methods and any("reference" in n and "missing" in n for n in notes)
    assert any(n.startswith("mse: stage 02_tfic_ocr_finetuning missing") for n in notes)
    # the explorer offers the saved models as rate points
    points = widgets.rate_points(cfg, methods)
    assert [p.setting for p in points["textlogit"]] == ["λ=0.0001, κ=0.1", "λ=0.0002, κ=0.1"]
    recon, nbytes = widgets.code_point(points["textlogit"][0], images[0])
    assert recon.shape == images[0].shape and 8 * nbytes / (64 * 256) == pytest.approx(per_image[0][0])


@pytest.mark.slow
def test_every_judge_reads_every_curve_and_the_comparisons_have_intervals(cfg):
    from tficlib import codec, evaluate

    torch.manual_seed(0)
    images, labels = _synthetic_lines(4), ["m90", "m89", "m90", "m88"]
    items = list(zip(images, labels))
    paths = {}
    for method in ("mse", "tfic"):
        paths[method] = []
        for k, n in enumerate((8, 12)):
            model = codec.build_model("bmshj2018-hyperprior", N=n, M=n)
            paths[method].append(codec.save_model(cfg.stage_dir("02_tfic_ocr_finetuning") / "models" / f"{method}_{k}.pt",
                                                  model, {"k": k}))
    judged = evaluate.judge(cfg, paths, items, "cpu", "01_mse_pretraining", engines=["brightness"],
                            comparisons=[("mse", "tfic")], seed=0)
    entry = judged["by_engine"]["brightness"]
    assert judged["engines"] == ["brightness"] and set(entry["curves"]) == {"mse", "tfic"}
    assert len(entry["curves"]["tfic"]["bpp"]) == 2 and "bpp_payload" in entry["curves"]["tfic"]
    assert all(p < b for p, b in zip(entry["curves"]["tfic"]["bpp_payload"], entry["curves"]["tfic"]["bpp"]))
    assert set(entry["bd"]["tfic vs mse"]) >= {"bd_accuracy", "bd_rate_accuracy"}
    assert set(entry["bd_payload"]["tfic vs mse"]) >= {"bd_accuracy"}
    assert entry["bd_ci"]["tfic vs mse"]["bd_accuracy"]["n_boot"] == cfg.eval.bootstrap
    row = evaluate.judged_table(judged)[0]
    assert row["comparison"] == "tfic vs mse" and "brightness" in row
    slim = evaluate.without_evals(judged)
    assert "evals" not in slim["by_engine"]["brightness"] and "evals" in entry  # what results.json stores
    assert isinstance(slim["by_engine"]["brightness"]["seconds"], float) and entry["seconds"] >= 0


def test_judge_comparisons_name_the_best_classic_and_skip_missing_curves():
    methods = {"mse": {"bpp": BPP, "accuracy": _acc()}, "tfic": {"bpp": BPP, "accuracy": _acc(base=0.75)},
               "jpeg": {"bpp": [0.3, 0.5, 0.8, 1.2], "accuracy": _acc()}}
    n = 5
    evals = {k: [{"per_image_bpp": [b] * n, "per_image_accuracy": [a] * n} for b, a in zip(v["bpp"], v["accuracy"])]
             for k, v in methods.items()}
    rows = evaluation.judge_comparisons(methods, evals, "jpeg", n_boot=20)
    assert [(r["reference"], r["method"]) for r in rows] == [("mse", "tfic"), ("jpeg", "mse"), ("jpeg", "tfic")]
    assert rows[0]["bd_accuracy"] == pytest.approx(0.05, abs=1e-6)
    assert rows[0]["bd_accuracy_low"] == pytest.approx(0.05, abs=1e-6)  # every image moves by the same amount
    table = evaluation.judges_table({"easyocr": rows, "brightness": rows})
    assert table[0]["comparison"] == "tfic vs mse" and table[0]["easyocr"] == table[0]["brightness"]


def test_seed_table_gathers_the_seed_variants(tmp_data):
    for seed, bd in ((0, 0.08), (1, 0.06), (2, 0.07)):
        c = config.resolve("smoke", seed=seed)
        judged = {name: {"bd": {"tfic vs mse": {"bd_accuracy": bd - 0.07}}} for name in ("easyocr", "rapidocr")}
        if seed == 2:  # a judge present for one seed only
            judged["tesseract"] = {"bd": {"tfic vs mse": {"bd_accuracy": 0.5}}}
        artifacts.write_results(c, "02_tfic_ocr_finetuning", {"tfic": {"bpp": [0.1, 0.2], "accuracy": [0.5, 0.8]}},
                                {"bd": {"bd_accuracy": bd}, "judges": {"engines": sorted(judged), "by_engine": judged}})
    rows, folders = evaluation.seed_table(config.resolve("smoke"))
    assert folders == ["smoke", "smoke-seed1", "smoke-seed2"]
    by_label = {r["value"]: r for r in rows}
    row = by_label["TFIC vs MSE codec, BD-accuracy"]
    assert row["n"] == 3 and row["mean"] == pytest.approx(0.07) and row["std"] == pytest.approx(0.01)
    assert row["seeds"] == {"0": 0.08, "1": 0.06, "2": 0.07}
    assert by_label["TFIC, best accuracy"]["mean"] == pytest.approx(0.8)
    # one row per independent judge; the training engine's own row is the headline above
    rapid = by_label["TFIC vs MSE codec, BD-accuracy, rapidocr"]
    assert rapid["n"] == 3 and rapid["mean"] == pytest.approx(0.0, abs=1e-12)
    assert by_label["TFIC vs MSE codec, BD-accuracy, tesseract"]["n"] == 1
    assert "TFIC vs MSE codec, BD-accuracy, easyocr" not in by_label
    assert by_label["text logit, best accuracy"]["n"] == 0 and by_label["text logit, best accuracy"]["mean"] is None
