import json

import nbformat
import pytest

from tficlib import artifacts, config, runner


def _notebook(path, *sources, parameters='PROFILE = "auto"'):
    nb = nbformat.v4.new_notebook()
    cells = [nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]})]
    cells += [nbformat.v4.new_code_cell(src) for src in sources]
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


@pytest.fixture
def fake_notebooks(tmp_path, tmp_data, monkeypatch):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    monkeypatch.setattr(runner, "notebooks_dir", lambda: nbdir)
    return nbdir


def test_list_notebooks_by_prefix(fake_notebooks):
    for name in ("00_a", "01_b", "02_c"):
        _notebook(fake_notebooks / f"{name}.ipynb", "x = 1")
    names = lambda ps: [p.name[:2] for p in ps]  # noqa: E731
    assert names(runner.list_notebooks()) == ["00", "01", "02"]
    assert names(runner.list_notebooks("01")) == ["01", "02"]
    assert names(runner.list_notebooks("0", "1")) == ["00", "01"]
    with pytest.raises(ValueError, match="no notebook with prefix '07'"):
        runner.list_notebooks("07")
    with pytest.raises(ValueError, match="comes after"):
        runner.list_notebooks("02", "00")


@pytest.mark.slow
def test_pipeline_runs_in_order_and_stops_at_first_failure(fake_notebooks, tmp_data):
    _notebook(fake_notebooks / "00_ok.ipynb", "assert PROFILE == 'smoke', PROFILE")
    _notebook(fake_notebooks / "01_broken.ipynb", "y = 2", "raise ValueError('boom in cell')")
    _notebook(fake_notebooks / "02_never.ipynb", "z = 3")
    lines = []
    with pytest.raises(runner.NotebookFailed) as exc:
        runner.run_pipeline("smoke", log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    err = exc.value
    assert err.notebook.name == "01_broken.ipynb"
    assert err.cell == 3 and "ValueError: boom in cell" in str(err)
    assert "01_broken.ipynb failed in cell 3" in str(err)
    executed = tmp_data / "data" / "smoke" / "executed"
    assert (executed / "00_ok.ipynb").exists() and (executed / "01_broken.ipynb").exists()
    assert not (executed / "02_never.ipynb").exists()
    timings = json.loads((tmp_data / "data" / "smoke" / "timings.json").read_text())
    assert list(timings) == ["00_ok"] and timings["00_ok"] > 0
    assert any("[1/3] 00_ok.ipynb" in line for line in lines)


def test_cli_run_rejects_unknown_profile(capsys):
    from tficlib.__main__ import main

    assert main(["run", "--profile", "gpu"]) == 2
    err = capsys.readouterr().err
    assert "unknown profile 'gpu'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["--set", "codec.N"], "bad override 'codec.N': expected section.field=value"),
    (["--set", "codec.NN=3"], "unknown setting 'codec.NN'"),
])
def test_cli_run_rejects_bad_overrides(capsys, tmp_data, argv, message):
    from tficlib.__main__ import main

    assert main(["run", "--profile", "smoke", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_data / "data" / "smoke-custom").exists()  # rejected before anything is written


@pytest.mark.slow
def test_pipeline_passes_overrides_to_the_notebooks(fake_notebooks, tmp_data, monkeypatch):
    monkeypatch.delenv("TFIC_OVERRIDES", raising=False)
    _notebook(fake_notebooks / "00_check.ipynb",
              "from tficlib import artifacts, config\n"
              "cfg = config.resolve(PROFILE)\n"
              "assert (cfg.variant, cfg.quick, cfg.tfic.steps, cfg.codec.base_steps) == ('dryrun', True, 7, 4), cfg\n"
              "assert cfg.data_dir.name == 'smoke-dryrun'\n"
              "artifacts.write_json(cfg.data_dir / '02_x' / 'run.log.json', {'meta': {'schedule': 'tfic.steps'},\n"
              "                     'log': [{'seconds': 60.0}, {'seconds': 360.0}, {'seconds': 360.0}]})")
    lines = []
    runs = runner.run_pipeline("smoke", log=lambda *a, **k: lines.append(" ".join(map(str, a))), dry_run=True,
                               overrides={"tfic.steps": 7})
    assert [r.notebook.name for r in runs] == ["00_check.ipynb"]
    assert (tmp_data / "data" / "smoke-dryrun" / "executed" / "00_check.ipynb").exists()
    # the dry run's step times scaled to the same run without --dry-run: tfic.steps = 7 (the override)
    est = json.loads((tmp_data / "data" / "smoke-dryrun" / "schedule_estimate.json").read_text())
    assert est["hours"] == {"02_x": 0.7} and est["runs"]["02_x/run.log.json"]["steps"] == 7
    assert any("full 'smoke' schedules train for about 0.7 h" in line and "02 0.7 h" in line for line in lines)
    # and with the profile's own tfic.steps (3 in smoke) beside it
    assert est["profile_amounts"] == {"total_hours": 0.3, "hours": {"02_x": 0.3}}
    assert any("profile's own amounts" in line and "about 0.3 h (02 0.3 h)" in line for line in lines)
    assert not (tmp_data / "data" / "smoke").exists()
    assert "TFIC_OVERRIDES" not in __import__("os").environ  # restored after the run
    with pytest.raises(ValueError, match="unknown setting 'tfic.stepz'"):
        runner.run_pipeline("smoke", log=lambda *a, **k: None, overrides={"tfic.stepz": 7})


@pytest.mark.slow
def test_pipeline_keeps_environment_overrides(fake_notebooks, tmp_data, monkeypatch):
    monkeypatch.setenv("TFIC_OVERRIDES", '{"variant": "long", "tfic.steps": 900}')
    _notebook(fake_notebooks / "00_check.ipynb",
              "from tficlib import config\n"
              "cfg = config.resolve(PROFILE)\n"
              "assert (cfg.variant, cfg.tfic.steps, cfg.tfic.batch_size) == ('long', 900, 2), cfg")
    runner.run_pipeline("smoke", log=lambda *a, **k: None, overrides={"tfic.batch_size": 2})
    assert (tmp_data / "data" / "smoke-long" / "executed" / "00_check.ipynb").exists()
    assert __import__("os").environ["TFIC_OVERRIDES"] == '{"variant": "long", "tfic.steps": 900}'


@pytest.mark.slow
def test_a_seed_run_hands_its_seed_to_the_notebooks(fake_notebooks, tmp_data, monkeypatch):
    """The notebooks train with their SEED parameter: the runner must set it, not only the variant's folder."""
    monkeypatch.delenv("TFIC_OVERRIDES", raising=False)
    _notebook(fake_notebooks / "02_check.ipynb",
              "from tficlib import artifacts, config\n"
              "cfg = config.resolve(PROFILE, seed=SEED)\n"
              "assert SEED == cfg.seed, (SEED, cfg)\n"
              "artifacts.write_results(cfg, '02_tfic_ocr_finetuning', {}, {})",
              parameters='PROFILE = "auto"\nSEED = 0')
    runner.run_pipeline("smoke", log=lambda *a, **k: None, seed=4)
    runner.run_pipeline("smoke", log=lambda *a, **k: None)  # the profile's own seed, in its own folder
    stored = {folder: json.loads((tmp_data / "data" / folder / "02_tfic_ocr_finetuning" / "results.json").read_text())
              for folder in ("smoke-seed4", "smoke")}
    assert {folder: r["seed"] for folder, r in stored.items()} == {"smoke-seed4": 4, "smoke": 0}


def test_schedule_estimate_scales_each_logged_run_by_its_amount(tmp_path):
    """Median seconds per step (first step left out) x the amount named in the log's meta, per stage."""
    from tficlib import artifacts, config

    cfg = config.resolve("paper", device="cpu")  # base_steps 100000, ablation_steps None -> dequant.steps
    write = artifacts.write_json
    write(tmp_path / "01_mse" / "checkpoints" / "mse_0.log.json",
          {"meta": {"schedule": "codec.base_steps"}, "log": [{"seconds": 9.0}] + [{"seconds": s} for s in (1, 1, 3)]})
    write(tmp_path / "04_dncnn" / "abl.log.json",
          {"meta": {"schedule": "dequant.ablation_steps"}, "log": [{"seconds": 0.036}]})
    write(tmp_path / "04_dncnn" / "other.log.json", {"meta": {}, "log": [{"seconds": 5.0}]})  # no schedule
    (tmp_path / "03_x").mkdir()
    (tmp_path / "03_x" / "cut.log.json").write_text('{"meta": {"schedule": "tfic.st')  # a run killed mid-write
    est = runner.schedule_estimate(tmp_path, cfg)
    assert est["hours"] == {"01_mse": round(1.0 * 100_000 / 3600, 2), "04_dncnn": 1.0}
    assert est["total_hours"] == round(100_000 / 3600 + 1.0, 2)
    assert est["runs"]["04_dncnn/abl.log.json"] == {"schedule": "dequant.ablation_steps", "steps": 100_000,
                                                     "seconds_per_step": 0.036}
    assert set(est["runs"]) == {"01_mse/checkpoints/mse_0.log.json", "04_dncnn/abl.log.json"}


def test_a_variant_links_only_the_earlier_stages_it_reads_and_does_not_retrain(tmp_path, monkeypatch):
    monkeypatch.setenv("TFIC_DATA", str(tmp_path))
    base = config.resolve("smoke", device="cpu")
    for stage in ("00_dataset", "01_mse_pretraining"):
        (base.stage_dir(stage)).mkdir(parents=True)
        (base.stage_dir(stage) / "results.json").write_text("{}")
    seeded = config.resolve("smoke", device="cpu", seed=3)
    linked = runner.link_earlier_stages(seeded, ["02_tfic_ocr_finetuning"], log=lambda *a: None)
    assert set(linked) == {"00_dataset", "01_mse_pretraining"}
    assert (seeded.stage_dir("01_mse_pretraining") / "results.json").samefile(
        base.stage_dir("01_mse_pretraining") / "results.json")  # hard links: no copy of the models
    # 03 does not read 02: a seed run of 03 leaves 02 out, so a later seed run of 02 trains its own
    (base.stage_dir("02_tfic_ocr_finetuning")).mkdir(parents=True)
    (base.stage_dir("02_tfic_ocr_finetuning") / "results.json").write_text("{}")
    other_seed = config.resolve("smoke", device="cpu", seed=4)
    assert set(runner.link_earlier_stages(other_seed, ["03_text_logit_training"], log=lambda *a: None)) == {
        "00_dataset", "01_mse_pretraining"}
    assert not other_seed.stage_dir("02_tfic_ocr_finetuning").exists()
    # 06 reads every stage
    assert set(runner.link_earlier_stages(other_seed, ["05_ocr_guided_refinement", "06_evaluation"],
                                          log=lambda *a: None)) == {"02_tfic_ocr_finetuning"}
    # a variant whose settings concern a stage does not take that stage (nor what reads it) from the profile
    changed = config.apply_overrides(base, {"variant": "other", "codec.lambdas": [0.01]})
    assert set(runner.link_earlier_stages(changed, ["02_tfic_ocr_finetuning"], log=lambda *a: None)) == {"00_dataset"}
    assert runner.link_earlier_stages(base, ["02_tfic_ocr_finetuning"]) == {}  # the profile itself links nothing
    with pytest.raises(TypeError, match="the list of stages run"):
        runner.link_earlier_stages(changed, "02_tfic_ocr_finetuning")
    # D2's own settings leave D1 (04) as it is; D1's settings do not
    (base.stage_dir("04_dncnn_dequantization")).mkdir(parents=True)
    (base.stage_dir("04_dncnn_dequantization") / "results.json").write_text("{}")
    d2 = config.apply_overrides(base, {"variant": "d2", "dequant.ocr_guided_init": "d1", "dequant.word_margin": 4})
    assert set(runner.link_earlier_stages(d2, ["05_ocr_guided_refinement"], log=lambda *a: None)) == {
        "00_dataset", "04_dncnn_dequantization"}  # 05 reads 00 and 04 only
    d1 = config.apply_overrides(base, {"variant": "d1", "dequant.steps": 7})
    assert set(runner.link_earlier_stages(d1, ["05_ocr_guided_refinement"], log=lambda *a: None)) == {"00_dataset"}


def test_a_variant_reuses_the_profiles_runs_its_settings_leave_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv("TFIC_DATA", str(tmp_path))
    base = config.resolve("smoke", device="cpu")
    ckpts = base.stage_dir("02_tfic_ocr_finetuning") / "checkpoints"
    ckpts.mkdir(parents=True)
    for name in ("tfic_from1_gamma0.1.ckpt", "tfic_from1_gamma0.1.log.json"):
        (ckpts / name).write_text(name)
    (ckpts.parent / "eval" / "rapidocr").mkdir(parents=True)
    (ckpts.parent / "eval" / "rapidocr" / "tfic_0.json").write_text("{}")
    (ckpts.parent / "models").mkdir()
    (ckpts.parent / "models" / "tfic_0.pt").write_text("model")  # saved again by the variant, not linked
    stages = ["02_tfic_ocr_finetuning"]
    robust = config.apply_overrides(base, {"variant": "shape", "tfic.robust_binary": 0.5})
    assert runner.link_reusable(robust, stages, log=lambda *a: None) == {"02_tfic_ocr_finetuning": 3}
    linked = robust.stage_dir("02_tfic_ocr_finetuning") / "checkpoints" / "tfic_from1_gamma0.1.ckpt"
    assert linked.samefile(ckpts / "tfic_from1_gamma0.1.ckpt")
    assert (robust.stage_dir("02_tfic_ocr_finetuning") / "eval" / "rapidocr" / "tfic_0.json").is_file()
    assert not (robust.stage_dir("02_tfic_ocr_finetuning") / "models").exists()
    assert runner.link_reusable(robust, stages, log=lambda *a: None) == {}  # what the variant has stays
    # a new checkpoint replaces the link atomically: the profile's file keeps its content
    artifacts.write_json(linked, {"retrained": True})
    assert (ckpts / "tfic_from1_gamma0.1.ckpt").read_text() == "tfic_from1_gamma0.1.ckpt"
    # nothing to reuse: another seed (every fingerprint holds it), changed inputs (stage 1), the profile itself
    for cfg in (config.apply_overrides(base, {"variant": "s", "seed": 5, "tfic.robust_binary": 0.5}),
                config.apply_overrides(base, {"variant": "c", "codec.lambdas": [0.01]}), base):
        assert runner.link_reusable(cfg, stages, log=lambda *a: None) == {}
        assert not (cfg.stage_dir("02_tfic_ocr_finetuning") / "checkpoints" / "tfic_from1_gamma0.1.ckpt").exists() \
            or cfg is base
    # evaluation amounts do not concern training
    assert runner.link_reusable(config.apply_overrides(base, {"variant": "e", "eval.n_test": 4}), stages,
                                   log=lambda *a: None) == {"02_tfic_ocr_finetuning": 3}
    with pytest.raises(TypeError, match="the list of stages run"):
        runner.link_reusable(robust, "02_tfic_ocr_finetuning")
