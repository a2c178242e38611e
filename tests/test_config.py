import dataclasses

import pytest

from tficlib import config


def test_profiles_resolve_by_name():
    for name in ("smoke", "cpu", "paper"):
        cfg = config.resolve(name, device="cpu")
        assert cfg.name == name
        assert cfg.device == "cpu"


def test_auto_is_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(config, "_cuda_available", lambda: False)
    assert config.resolve("auto").name == "cpu"
    monkeypatch.setattr(config, "_cuda_available", lambda: True)
    assert config.resolve("auto").name == "paper"


def test_environment_variable_default(monkeypatch):
    monkeypatch.setenv("TFIC_PROFILE", "smoke")
    assert config.resolve().name == "smoke"
    assert config.resolve(" SMOKE ").name == "smoke"


def test_unknown_profile_lists_valid_ones():
    with pytest.raises(config.UnknownProfile) as exc:
        config.resolve("gpu")
    msg = str(exc.value)
    assert "'gpu'" in msg
    for name in config.PROFILE_NAMES:
        assert name in msg


def test_profiles_are_frozen_and_overridable():
    cfg = config.resolve("smoke", device="cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3
    other = cfg.with_overrides(seed=3, codec={"base_steps": 1})
    assert other.seed == 3 and other.codec.base_steps == 1
    assert cfg.codec.base_steps != 1 or cfg.seed == 0


def test_paper_scale_matches_the_papers():
    paper = config.resolve("paper", device="cpu")
    assert (paper.textlines.n_train, paper.textlines.n_test) == (20000, 600)
    # 128x512, not the paper's 256x512: the whole-line read needs a 1:4 line (tficlib.config, README)
    assert (paper.textlines.height, paper.textlines.width) == (128, 512)
    assert (paper.pages.patch_height, paper.pages.patch_width, paper.pages.patches_per_page) == (64, 256, 10)
    assert paper.pages.jpeg_quality == 1
    assert paper.tfic.gamma == 0.1
    assert paper.textlogit.kappa == 0.1
    assert (paper.dequant.depth, paper.dequant.features) == (17, 64)
    assert paper.dequant.mse_weight == 0.8 and paper.dequant.dct_tau == 0.5


def test_profiles_only_change_amounts():
    """A profile changes amounts, never the method: the same fields in every profile."""
    smoke, cpu, paper = (config.resolve(n, device="cpu") for n in ("smoke", "cpu", "paper"))
    for section in ("tfic", "textlogit", "dequant"):
        a, b, c = (getattr(p, section) for p in (smoke, cpu, paper))
        assert type(a) is type(b) is type(c)
    for p in (smoke, cpu, paper):
        assert p.tfic.gamma == 0.1 and p.textlogit.kappa == 0.1
        assert p.dequant.mse_weight == 0.8 and p.dequant.dct_tau == 0.5
        assert p.codec.model == "bmshj2018-hyperprior"
        assert len(p.codec.lambdas) >= 2 and list(p.codec.lambdas) == sorted(p.codec.lambdas)
    assert len(cpu.codec.lambdas) >= 5


def test_data_dir_follows_environment(tmp_data):
    cfg = config.resolve("smoke", device="cpu")
    assert cfg.data_dir == tmp_data / "data" / "smoke"
    assert cfg.stage_dir("01_mse_pretraining") == tmp_data / "data" / "smoke" / "01_mse_pretraining"
    assert cfg.figures_dir == tmp_data / "figures" / "smoke"


def test_setup_seeds_torch():
    import torch

    cfg = config.resolve("smoke", device="cpu")
    config.setup(cfg, 123)
    a = torch.rand(3)
    config.setup(cfg, 123)
    assert torch.equal(a, torch.rand(3))


def test_setup_shares_the_threads_among_torchrun_processes(monkeypatch):
    import torch

    before = torch.get_num_threads()
    cfg = config.resolve("cpu", device="cpu")
    try:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        config.setup(cfg)
        assert torch.get_num_threads() == max(1, cfg.num_threads // 2)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
        config.setup(cfg)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_overrides_make_a_variant_with_its_own_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("TFIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("TFIC_FIGURES", str(tmp_path / "figures"))
    cpu = config.resolve("cpu", device="cpu")
    sets = config.parse_assignments(["codec.base_steps=10", "tfic.gammas=[0.1, 1]", "eval.n_test=null", "seed=3",
                                     "codec.model=mbt2018-mean"])
    assert sets == {"codec.base_steps": 10, "tfic.gammas": [0.1, 1], "eval.n_test": None, "seed": 3,
                    "codec.model": "mbt2018-mean"}
    custom = config.apply_overrides(cpu, sets)
    assert (custom.codec.base_steps, custom.tfic.gammas, custom.eval.n_test, custom.seed) == (10, (0.1, 1), None, 3)
    assert custom.codec.model == "mbt2018-mean" and custom.codec.N == cpu.codec.N  # the rest stays the profile's
    assert custom.name == "cpu" and custom.variant == "custom" and not custom.quick
    assert custom.data_dir == tmp_path / "data" / "cpu-custom"
    assert custom.figures_dir == tmp_path / "figures" / "cpu-custom"
    assert cpu.data_dir == tmp_path / "data" / "cpu" and cpu.variant == ""
    assert config.apply_overrides(cpu, {"variant": "long", "tfic.steps": 900}).data_dir.name == "cpu-long"


@pytest.mark.parametrize("overrides, message", [
    ({"codecs.N": 1}, "unknown setting 'codecs.N': the first part must be one of seed, textlines"),
    ({"codec.NN": 1}, "unknown setting 'codec.NN': codec has M, N, aux_lr"),
    ({"codec": 1}, "unknown setting 'codec': codec has"),
    ({"seed.value": 1}, "seed is a plain value"),
    ({"name": "paper"}, "unknown setting 'name'"),
    ({"overrides": "{}"}, "unknown setting 'overrides'"),
    ({"variant": "../x"}, "names a folder"),
    ({"tfic.robust_gamma_scaled": "no"}, "setting 'tfic.robust_gamma_scaled' must be true or false, got 'no'"),
    ({"tfic.steps": "abc"}, "setting 'tfic.steps' must be an integer, got 'abc'"),
    ({"tfic.steps": 1.5}, "setting 'tfic.steps' must be an integer, got 1.5"),
    ({"tfic.gamma": True}, "setting 'tfic.gamma' must be a number, got True"),
    ({"tfic.gammas": 0.1}, "setting 'tfic.gammas' must be a list, got 0.1"),
    ({"eval.n_test": "all"}, "setting 'eval.n_test' must be an integer or null, got 'all'"),
    ({"dequant.ocr_guided_init": 3}, "setting 'dequant.ocr_guided_init' must be a string, got 3"),
    ({"seed": "one"}, "setting 'seed' must be an integer, got 'one'"),
    ([1, 2], "must be a JSON object"),
])
def test_bad_overrides_are_named(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        config.apply_overrides(config.resolve("smoke", device="cpu"), overrides)


def test_bad_assignment_is_named():
    with pytest.raises(ValueError, match="bad override 'codec.N': expected section.field=value"):
        config.parse_assignments(["codec.N"])


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv(config.OVERRIDES_ENV, '{"variant": "dryrun", "textlines.n_train": 32}')
    cfg = config.resolve("paper", device="cpu")
    assert cfg.textlines.n_train == 32 and cfg.textlines.n_test == 600 and cfg.quick
    assert cfg.data_dir.name == "paper-dryrun"
    monkeypatch.setenv(config.OVERRIDES_ENV, "{codec: 1")
    with pytest.raises(ValueError, match="TFIC_OVERRIDES is not valid JSON"):
        config.resolve("paper", device="cpu")
    monkeypatch.setenv(config.OVERRIDES_ENV, "")
    assert config.resolve("paper", device="cpu").variant == ""


def test_dry_run_keeps_shapes_and_models_and_cuts_amounts():
    for name in ("cpu", "paper"):
        full = config.resolve(name, device="cpu")
        dry = config.apply_overrides(full, config.dry_run_overrides(full))
        assert dry.quick and dry.variant == "dryrun" and dry.name == name
        for section, fields in {"textlines": ("height", "width"), "codec": ("N", "M", "lambdas", "batch_size"),
                                "tfic": ("gammas", "batch_size"), "textlogit": ("kappas",),
                                "pages": ("patch_height", "patch_width", "jpeg_quality", "downsample"),
                                "dequant": ("depth", "features", "crop", "batch_size", "ocr_guided_batch")}.items():
            for f in fields:
                assert getattr(getattr(dry, section), f) == getattr(getattr(full, section), f), (name, section, f)
        assert dry.textlines.n_train <= 32 and dry.codec.base_steps <= 4 and dry.tfic.steps <= 3
        assert dry.dequant.steps <= 4 and dry.eval.n_test <= 8
        assert (dry.codec.lambda_steps == 0) == (full.codec.lambda_steps == 0)  # the paper trains each λ from scratch
    assert config.resolve("smoke", device="cpu").quick and not config.resolve("cpu", device="cpu").quick


def test_overrides_accumulate_and_keep_the_variant():
    cpu = config.resolve("cpu", device="cpu")
    long = config.apply_overrides(cpu, {"variant": "long", "tfic.steps": 900})
    more = config.apply_overrides(long, {"tfic.batch_size": 4})
    assert (more.variant, more.tfic.steps, more.tfic.batch_size) == ("long", 900, 4)
    assert __import__("json").loads(more.overrides) == {"tfic.steps": 900, "tfic.batch_size": 4}


def test_cpu_text_logit_runs_see_no_line_twice_and_leave_the_validation_lines_out():
    """03's `cpu` amounts were chosen on training lines 1800-1999 (README): no J run may train on them."""
    cpu = config.resolve("cpu", device="cpu")
    t = cpu.textlogit
    assert t.steps * t.batch_size <= t.train_images  # one pass at most: no line seen twice
    assert t.train_images <= 1800 <= cpu.textlines.n_train - 200


def test_a_training_seed_is_a_variant_with_the_same_data():
    cpu = config.resolve("cpu", device="cpu")
    assert config.with_seed(cpu, None) is cpu and config.with_seed(cpu, cpu.seed) is cpu
    one = config.resolve("cpu", device="cpu", seed=1)
    assert (one.seed, one.variant, one.data_dir.name, one.data_seed) == (1, "seed1", "cpu-seed1", cpu.data_seed)
    custom = config.apply_overrides(cpu, {"tfic.steps": 5})
    both = config.with_seed(custom, 2)
    assert both.variant == "custom" and both.seed == 2 and __import__("json").loads(both.overrides)["seed"] == 2


def test_a_notebook_seed_that_disagrees_with_the_variant_is_an_error(monkeypatch):
    monkeypatch.setenv(config.OVERRIDES_ENV, '{"seed": 1, "variant": "seed1"}')
    assert config.resolve("cpu", device="cpu", seed=1).seed == 1
    assert config.resolve("cpu", device="cpu").seed == 1
    with pytest.raises(ValueError, match=r"seed 0 \(a notebook's SEED\) disagrees with seed 1 .* -p SEED 1"):
        config.resolve("cpu", device="cpu", seed=0)
