"""The class kit: export a finished chain, import it elsewhere; corrupt, tampered and foreign archives are refused."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import torch

from tficlib import artifacts, codec, config, kit, train
from tficlib.__main__ import main
from tficlib.objectives import RateDistortion


def _train_tiny(ckpt, steps=2):
    torch.manual_seed(0)
    model = codec.build_model("bmshj2018-hyperprior", N=8, M=8)
    data = [(torch.rand(3, 64, 64), "a") for _ in range(4)]
    return train.train(model, RateDistortion(0.01), data, steps=steps, checkpoint=ckpt, batch_size=2, lr=1e-3,
                       aux_steps=2, progress=False)


@pytest.fixture
def chain(tmp_path, monkeypatch):
    """A finished smoke 'chain' in a temporary data folder: a training checkpoint, an evaluation, results, a figure."""
    monkeypatch.setenv("TFIC_DATA", str(tmp_path / "a" / "data"))
    monkeypatch.setenv("TFIC_FIGURES", str(tmp_path / "a" / "figures"))
    cfg = config.resolve("smoke", device="cpu")
    ckpt = cfg.stage_dir(artifacts.MSE_PRETRAINING) / "checkpoints" / "mse_0.ckpt"
    _train_tiny(ckpt)
    artifacts.write_json(cfg.stage_dir(artifacts.MSE_PRETRAINING) / "eval" / "easyocr" / "mse_0.json", {"bpp": 0.1})
    artifacts.write_results(cfg, artifacts.EVALUATION, {"jpeg": {"bpp": [0.3], "accuracy": [0.9]}})
    (cfg.stage_dir(artifacts.DATASET) / "textlines" / "test").mkdir(parents=True)
    (cfg.stage_dir(artifacts.DATASET) / "textlines" / "test" / "000000.png").write_bytes(b"png")  # regenerated
    cfg.figures_dir.mkdir(parents=True)
    (cfg.figures_dir / "06_rate_accuracy.png").write_bytes(b"figure")
    return cfg, ckpt


def test_export_then_import_round_trip_reuses_the_finished_run(chain, tmp_path, monkeypatch):
    cfg, ckpt = chain
    out = tmp_path / "kit.tar.gz"
    manifest = kit.export(cfg, out, log=lambda *a: None)
    names = set(manifest["files"])
    assert "data/smoke/01_mse_pretraining/checkpoints/mse_0.ckpt" in names
    assert "figures/smoke/06_rate_accuracy.png" in names
    assert not any(n.endswith("000000.png") for n in names)  # datasets are regenerated, not packed

    monkeypatch.setenv("TFIC_DATA", str(tmp_path / "b" / "data"))
    monkeypatch.setenv("TFIC_FIGURES", str(tmp_path / "b" / "figures"))
    kit.import_kit(out, log=lambda *a: None)
    other = config.resolve("smoke", device="cpu")
    moved = other.stage_dir(artifacts.MSE_PRETRAINING) / "checkpoints" / "mse_0.ckpt"
    assert artifacts.read_results(other, artifacts.EVALUATION)["methods"]["jpeg"]["accuracy"] == [0.9]
    assert (other.figures_dir / "06_rate_accuracy.png").read_bytes() == b"figure"
    slim = artifacts.load_checkpoint(moved)
    assert set(slim["state"]) == {"model", "log"} and slim["meta"]["finished"]
    again = _train_tiny(moved)
    assert again.reused  # the notebook would skip the training
    original = artifacts.load_checkpoint(ckpt)["state"]["model"]
    assert all(torch.equal(original[k], again.model.state_dict()[k]) for k in original)
    with pytest.raises(kit.KitError, match="exists; pass --force"):
        kit.import_kit(out, log=lambda *a: None)
    kit.import_kit(out, force=True, log=lambda *a: None)


def test_export_refuses_an_unfinished_chain(tmp_data):
    with pytest.raises(artifacts.MissingArtifact, match="06_evaluation"):
        kit.export(config.resolve("smoke", device="cpu"), tmp_data / "k.tar.gz")


def _tar(path, members: dict[str, bytes], manifest: dict | None = None, link: str | None = None):
    with tarfile.open(path, "w:gz") as tar:
        if manifest is not None:
            data = json.dumps(manifest).encode()
            info = tarfile.TarInfo("kit.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)


def _manifest(files: dict[str, bytes]) -> dict:
    return {"format": kit.FORMAT, "profile": "smoke", "dir": "smoke",
            "files": {n: {"sha256": kit._sha256(d), "bytes": len(d)} for n, d in files.items()}}


@pytest.mark.parametrize("case, message", [
    ("traversal", "would be written outside data or figures"),
    ("tampered", "does not match its hash"),
    ("foreign", "is not a tficlib kit"),
    ("link", "not a regular file"),
    ("unlisted", "not listed in kit.json"),
    ("other_dir", "not under data/smoke/"),
])
def test_bad_kits_are_refused_and_nothing_is_written(tmp_path, monkeypatch, case, message):
    monkeypatch.setenv("TFIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("TFIC_FIGURES", str(tmp_path / "figures"))
    path = tmp_path / f"{case}.tar.gz"
    good = {"data/smoke/06_evaluation/results.json": b"{}"}
    if case == "traversal":
        evil = {"data/smoke/../../evil.txt": b"x"}
        _tar(path, evil, _manifest(evil))
    elif case == "tampered":
        _tar(path, {k: b"{changed}" for k in good}, _manifest(good))
    elif case == "foreign":
        _tar(path, good, None)
    elif case == "link":
        _tar(path, {}, _manifest({}), link="data/smoke/link")
    elif case == "unlisted":
        _tar(path, {**good, "data/smoke/extra.json": b"1"}, _manifest(good))
    else:
        other = {"data/cpu/06_evaluation/results.json": b"{}"}
        _tar(path, other, _manifest(other))
    with pytest.raises(kit.KitError, match=message):
        kit.import_kit(path, log=lambda *a: None)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "data" / "smoke").exists()


def test_a_corrupt_archive_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TFIC_DATA", str(tmp_path / "data"))
    path = tmp_path / "cut.tar.gz"
    good = {"data/smoke/06_evaluation/results.json": b"{}"}
    _tar(path, good, _manifest(good))
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    assert main(["kit", "import", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tfic: error: ") and "corrupt" in err and err.count("\n") == 1
    assert not (tmp_path / "data" / "smoke").exists()
