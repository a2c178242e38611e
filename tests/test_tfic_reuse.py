"""A reused training run re-saves its model when the file under its name holds another run's."""

from types import SimpleNamespace

import torch

from tficlib import codec, config, evaluate, tfic


def test_reused_run_overwrites_another_runs_model(tmp_path, monkeypatch):
    monkeypatch.setenv("TFIC_DATA", str(tmp_path))
    cfg = config.resolve("smoke", device="cpu")
    torch.manual_seed(0)
    model = codec.build_model(cfg.codec.model, cfg.codec.N, cfg.codec.M)
    result = SimpleNamespace(model=model, reused=True, steps=3, aux_loss=0.1, log=[], meta={}, resumed_from=None)
    path = evaluate.model_path(cfg, tfic.STAGE2, "tfic", 2)
    # the name tfic_2 first holds a sweep run that started from stage-1 model 4 ...
    tfic._save(cfg, tfic.STAGE2, "tfic", 2, result, {"gamma": 0.1, "start": 4})
    assert codec.load_model(path)[1]["start"] == 4
    before = path.stat().st_mtime_ns
    # ... a reused run with the same settings leaves the file alone ...
    tfic._save(cfg, tfic.STAGE2, "tfic", 2, result, {"gamma": 0.1, "start": 4})
    assert path.stat().st_mtime_ns == before
    # ... and a reused run of another sweep (start 2) replaces it
    tfic._save(cfg, tfic.STAGE2, "tfic", 2, result, {"gamma": 0.1, "start": 2})
    assert codec.load_model(path)[1]["start"] == 2
