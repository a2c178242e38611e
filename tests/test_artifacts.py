import json
import os

import pytest
import torch

from tficlib import artifacts, config


def test_missing_artifact_names_the_notebook(tmp_data):
    cfg = config.resolve("cpu", device="cpu")
    path = cfg.stage_dir("01_mse_pretraining") / "models" / "mse_0.pt"
    with pytest.raises(artifacts.MissingArtifact) as exc:
        artifacts.require(path)
    msg = str(exc.value)
    assert "notebooks/01_mse_pretraining.ipynb" in msg
    assert "'cpu'" in msg
    assert str(path) in msg


def test_read_results_of_missing_stage(tmp_data):
    cfg = config.resolve("smoke", device="cpu")
    with pytest.raises(artifacts.MissingArtifact, match="notebooks/04_dncnn_dequantization.ipynb"):
        artifacts.read_results(cfg, "04_dncnn_dequantization")


def test_atomic_write_keeps_old_content_on_crash(tmp_path):
    target = tmp_path / "a" / "file.txt"
    with artifacts.atomic_write(target, "w") as fh:
        fh.write("old")
    with pytest.raises(RuntimeError):
        with artifacts.atomic_write(target, "w") as fh:
            fh.write("half-written")
            raise RuntimeError("simulated crash")
    assert target.read_text() == "old"
    assert os.listdir(target.parent) == ["file.txt"]  # no temporary file left behind


def test_atomic_write_never_creates_partial_file(tmp_path):
    target = tmp_path / "new.bin"
    with pytest.raises(KeyboardInterrupt):
        with artifacts.atomic_write(target) as fh:
            fh.write(b"abc")
            raise KeyboardInterrupt
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_results_schema_round_trip(tmp_data):
    cfg = config.resolve("smoke", device="cpu")
    methods = {
        "uncompressed": {"accuracy": 0.9},
        "mse": {"description": "rate + λ·MSE", "bpp": [0.1, 0.2], "accuracy": [0.3, torch.tensor(0.5)],
                "psnr": [20.0, float("inf")]},
    }
    path = artifacts.write_results(cfg, "01_mse_pretraining", methods, tables={"runtime_ms": {"encoder": [1.0, 0.1]}})
    data = json.loads(path.read_text())
    assert data["stage"] == "01_mse_pretraining" and data["profile"] == "smoke" and data["seed"] == 0
    assert data["methods"]["mse"]["accuracy"] == [0.3, 0.5]
    assert data["methods"]["mse"]["psnr"] == [20.0, None]  # non-finite numbers become null
    assert artifacts.read_results(cfg, "01_mse_pretraining") == data
    assert "variant" not in data and "overrides" not in data
    custom = config.apply_overrides(cfg, {"codec.base_steps": 2, "tfic.gammas": [0.3]})
    data = json.loads(artifacts.write_results(custom, "01_mse_pretraining", methods).read_text())
    assert data["profile"] == "smoke" and data["variant"] == "custom"
    assert data["overrides"] == {"codec.base_steps": 2, "tfic.gammas": [0.3]}
    assert artifacts.read_results(custom, "01_mse_pretraining") == data != artifacts.read_results(cfg, "01_mse_pretraining")


def test_results_reject_misaligned_curves(tmp_data):
    cfg = config.resolve("smoke", device="cpu")
    with pytest.raises(ValueError, match="aligned"):
        artifacts.write_results(cfg, "01_mse_pretraining", {"mse": {"bpp": [0.1, 0.2], "accuracy": [0.5]}})
    with pytest.raises(ValueError, match="unknown stage"):
        artifacts.write_results(cfg, "07_nothing", {})


def test_checkpoint_round_trip_and_foreign_files(tmp_path):
    state = {"w": torch.arange(4.0), "nested": {"step": 3, "name": "x"}}
    path = artifacts.save_checkpoint(tmp_path / "m.pt", state, meta={"model": "bmshj2018-hyperprior"})
    loaded = artifacts.load_checkpoint(path)
    assert torch.equal(loaded["state"]["w"], state["w"])
    assert loaded["state"]["nested"] == {"step": 3, "name": "x"}
    assert loaded["meta"] == {"model": "bmshj2018-hyperprior"}

    foreign = tmp_path / "foreign.pt"
    torch.save({"w": torch.zeros(1)}, foreign)
    with pytest.raises(artifacts.ArtifactError, match="not a tficlib checkpoint"):
        artifacts.load_checkpoint(foreign)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(artifacts.ArtifactError, match="not a tficlib checkpoint"):
        artifacts.load_checkpoint(garbage)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_loading_executes_no_pickled_code(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": artifacts.CHECKPOINT_FORMAT, "meta": {}, "state": _Evil()}, evil)
    with pytest.raises(artifacts.ArtifactError):
        artifacts.load_checkpoint(evil)


def test_read_json_reports_corruption(tmp_path):
    p = tmp_path / "results.json"
    p.write_text("{not json")
    with pytest.raises(artifacts.ArtifactError, match="not valid JSON"):
        artifacts.read_json(p)


@pytest.mark.parametrize("content", [b"plain text, not a checkpoint\n", b"PK\x03\x04garbage", b""])
def test_foreign_bytes_are_refused_with_the_named_error(tmp_path, content):
    p = tmp_path / "x.pt"
    p.write_bytes(content)
    with pytest.raises(artifacts.ArtifactError, match="not a tficlib checkpoint"):
        artifacts.load_checkpoint(p)


def test_atomic_write_gives_usual_permissions(tmp_path):
    target = tmp_path / "f.txt"
    with artifacts.atomic_write(target, "w") as fh:
        fh.write("x")
    assert target.stat().st_mode & 0o777 == 0o666 & ~artifacts._UMASK


def test_cached_json_returns_only_a_store_made_with_the_same_signature(tmp_path):
    store = tmp_path / "eval" / "model.json"
    sig = {"model_sha256": "ab" * 32, "n": 3, "labels": 123}
    assert artifacts.cached_json(store, sig) is None  # nothing stored yet
    artifacts.write_json(store, {"signature": sig, "accuracy": 0.5})
    assert artifacts.cached_json(store, sig) == {"signature": sig, "accuracy": 0.5}
    assert artifacts.cached_json(store, {**sig, "n": 4}) is None  # another test set: evaluate again
    artifacts.write_json(store, [1, 2])
    assert artifacts.cached_json(store, sig) is None  # not a stored evaluation at all
    store.write_text("{broken")
    with pytest.raises(artifacts.ArtifactError, match="not valid JSON"):
        artifacts.cached_json(store, sig)
