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
    assert (paper.textlines.height, paper.textlines.width) == (256, 512)
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
