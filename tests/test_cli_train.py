"""``python -m tficlib train STAGE``: the notebook then finds its runs finished, and reports what it reports alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tficlib import artifacts, config, runner
from tficlib.__main__ import main


def test_unknown_stage_is_a_usage_error(capsys):
    assert main(["train", "06", "--profile", "smoke"]) == 2
    assert "no training in stage '06': stages with training are 01, 02, 03, 04, 05" in capsys.readouterr().err


@pytest.mark.slow
def test_train_then_notebook_reuses_the_runs_and_matches_the_notebook_alone(tmp_path, monkeypatch):
    from tficlib.data import textlines

    alone, first = tmp_path / "alone", tmp_path / "first"
    monkeypatch.setenv("TFIC_DATA", str(first))
    monkeypatch.setenv("TFIC_FIGURES", str(tmp_path / "figures"))
    textlines.generate(config.resolve("smoke", device="cpu"), progress=False)
    shutil.copytree(first, alone)

    env = {**os.environ, "TFIC_DATA": str(first), "TFIC_DEVICE": "cpu"}
    out = subprocess.run([sys.executable, "-m", "tficlib", "train", "01", "--profile", "smoke"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mse_base" in out.stdout and "trained" in out.stdout
    cfg = config.resolve("smoke", device="cpu")
    ckpts = sorted((cfg.stage_dir(artifacts.MSE_PRETRAINING) / "checkpoints").glob("*.ckpt"))
    assert len(ckpts) == len(cfg.codec.lambdas) + 1  # the base model and one per λ
    before = {p.name: artifacts.sha256_file(p) for p in ckpts}

    runner.run_pipeline("smoke", "01", "01", log=lambda *a, **k: None)
    assert {p.name: artifacts.sha256_file(p) for p in ckpts} == before  # nothing trained again
    executed = json.loads((cfg.data_dir / "executed" / "01_mse_pretraining.ipynb").read_text())
    text = "".join("".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", []))
    assert text.count("reused") == len(ckpts)
    with_cli = artifacts.read_results(cfg, artifacts.MSE_PRETRAINING)

    monkeypatch.setenv("TFIC_DATA", str(alone))
    runner.run_pipeline("smoke", "01", "01", log=lambda *a, **k: None)
    by_notebook = artifacts.read_results(config.resolve("smoke", device="cpu"), artifacts.MSE_PRETRAINING)
    assert with_cli["methods"] == by_notebook["methods"]
