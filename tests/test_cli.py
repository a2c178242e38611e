"""Command line codec commands (issue 7): compress -> info -> decompress -> ocr, bad inputs.

A tiny codec (N=M=16) trained for a few steps with the project's own training loop is
saved under the smoke profile's model folder of a temporary data directory.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tficlib import cli_codec, codec, config, train
from tficlib.__main__ import main
from tficlib.objectives import RateDistortion


@pytest.fixture
def env(tmp_data, monkeypatch):
    """A tmp data dir with a tfic model at rate 0 of the smoke profile, and a few images."""
    monkeypatch.setenv("TFIC_PROFILE", "smoke")
    cfg = config.resolve("smoke")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    lines = [(torch.rand(3, 64, 64, generator=g), "x") for _ in range(4)]
    model = train.train(codec.build_model("bmshj2018-hyperprior", 16, 16), RateDistortion(0.01),
                        lines, steps=3, checkpoint=tmp_data / "tiny.ckpt", batch_size=2, lr=1e-3,
                        aux_steps=2, progress=False).model
    ckpt = cli_codec.default_checkpoint(cfg, "tfic", 0)
    codec.save_model(ckpt, model, {"method": "tfic", "rate_index": 0})
    rng = np.random.default_rng(0)
    d = tmp_data
    Image.fromarray(rng.integers(0, 256, (37, 101, 3), dtype=np.uint8)).save(d / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8)).save(d / "gray.png")
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    rgba[..., 3] = 0
    Image.fromarray(rgba).save(d / "rgba.png")
    Image.fromarray(np.full((10, 12), 32768, dtype=np.uint16)).save(d / "g16.png")
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).convert("P").save(d / "pal.png")
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(d / "img.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(d / "img.tif")
    (d / "text.png").write_text("this is not an image")
    return d, cfg, ckpt


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_compress_info_decompress(env, capsys):
    d, cfg, ckpt = env
    rc, out, err = _run(capsys, "compress", d / "rgb.png", "-o", d / "a.tfic")
    assert rc == 0, err
    assert "a.tfic" in out and "bpp" in out
    data = (d / "a.tfic").read_bytes()
    h = codec.read_header(data)
    assert (h.width, h.height, h.label) == (101, 37, "tfic_0")

    rc, out, err = _run(capsys, "info", d / "a.tfic")
    assert rc == 0, err
    for text in ("format version: 1", "bmshj2018-hyperprior (N=16, M=16)", "101x37", f"{len(data)} (header",
                 f"{h.bpp:.4f}"):
        assert text in out
    rc, out, _ = _run(capsys, "info", d / "a.tfic", "--json")
    info = json.loads(out)
    assert info["bytes"] == len(data) and info["header_bytes"] == h.header_bytes

    # model found by fingerprint (label tfic_0 -> the default checkpoint), then with --checkpoint
    rc, out, err = _run(capsys, "decompress", d / "a.tfic", "-o", d / "a.png")
    assert rc == 0, err
    rc, out, err = _run(capsys, "decompress", d / "a.tfic", "-o", d / "b.png", "--checkpoint", ckpt)
    assert rc == 0, err
    a = np.asarray(Image.open(d / "a.png"))
    assert a.shape == (37, 101, 3) and np.array_equal(a, np.asarray(Image.open(d / "b.png")))
    model, _ = codec.load_model(ckpt)
    ref = (codec.decompress(model, data)[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(a, ref)


def test_stream_found_when_saved_fingerprint_is_another_devices(env, capsys):
    """A checkpoint saved on a GPU records the fingerprint of the GPU's CDF tables; the CPU's differ.

    Its streams made here (on the CPU) still find it: by the fingerprint it has once loaded here.
    """
    d, _, ckpt = env
    payload = torch.load(ckpt, map_location="cpu", weights_only=True)
    payload["meta"]["codec_fingerprint"] = "00" * 8  # as if update() had run on another device
    torch.save(payload, ckpt)
    assert _run(capsys, "compress", d / "rgb.png", "-o", d / "g.tfic")[0] == 0
    rc, out, err = _run(capsys, "decompress", d / "g.tfic", "-o", d / "g.png")
    assert rc == 0, err
    assert np.asarray(Image.open(d / "g.png")).shape == (37, 101, 3)
    header = codec.read_header((d / "g.tfic").read_bytes())
    assert cli_codec.find_checkpoint(config.resolve("smoke"), header) == ckpt


def test_compress_is_deterministic(env, capsys):
    d, _, ckpt = env
    for name in ("x.tfic", "y.tfic"):
        assert _run(capsys, "compress", d / "rgb.png", "-o", d / name, "--checkpoint", ckpt)[0] == 0
    assert (d / "x.tfic").read_bytes() == (d / "y.tfic").read_bytes()


@pytest.mark.parametrize("name,size", [("gray.png", (20, 30)), ("rgba.png", (20, 30)), ("g16.png", (10, 12)),
                                       ("pal.png", (20, 30)), ("img.jpg", (20, 30)), ("img.tif", (20, 30))])
def test_input_kinds(env, capsys, name, size):
    d, _, _ = env
    rc, _, err = _run(capsys, "compress", d / name, "-o", d / "k.tfic", "--rate", "0")
    assert rc == 0, err
    if name == "rgba.png":
        assert "alpha channel dropped" in err
    h = codec.read_header((d / "k.tfic").read_bytes())
    assert (h.height, h.width) == size
    assert _run(capsys, "decompress", d / "k.tfic", "-o", d / "k.png")[0] == 0
    assert np.asarray(Image.open(d / "k.png")).shape == (*size, 3)


def test_load_image_conversions(env):
    d, _, _ = env
    x, notes = cli_codec.load_image(d / "g16.png")
    assert x.shape == (1, 3, 10, 12) and notes
    assert x.min().item() == pytest.approx(32768 / 65535, abs=1e-6)
    x, _ = cli_codec.load_image(d / "gray.png")
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    x, notes = cli_codec.load_image(d / "rgba.png")  # fully transparent -> white
    assert torch.all(x == 1.0) and "alpha" in notes[0]
    x, _ = cli_codec.load_image(d / "rgb.png")
    ref = torch.from_numpy(np.array(Image.open(d / "rgb.png"))).permute(2, 0, 1).float() / 255
    assert torch.equal(x[0], ref)


def test_default_checkpoint_convention(env):
    _, cfg, ckpt = env
    assert ckpt == cfg.stage_dir("02_tfic_ocr_finetuning") / "models" / "tfic_0.pt"
    assert cli_codec.default_checkpoint(cfg, "mse", 3).name == "mse_3.pt"
    assert cli_codec.default_checkpoint(cfg, "textlogit", 1).parent.parent.name == "03_text_logit_training"
    assert cli_codec.available_rates(cfg, "tfic") == [0]


@pytest.mark.parametrize("argv,message", [
    (["compress", "{d}/missing.png", "-o", "{d}/o.tfic"], "no such image"),
    (["compress", "{d}/text.png", "-o", "{d}/o.tfic"], "is not an image"),
    (["compress", "{d}/rgb.png", "-o", "{d}/o.png"], "must end in .tfic"),
    (["decompress", "{d}/good.tfic", "-o", "{d}/o.jpg"], "must end in .png"),
    (["compress", "{d}/rgb.png", "-o", "{d}/o.tfic", "--method", "mse"],
     "run notebooks/01_mse_pretraining.ipynb or pass --checkpoint FILE"),
    (["compress", "{d}/rgb.png", "-o", "{d}/o.tfic", "--rate", "4"], "trained rates: 0"),
    (["compress", "{d}/rgb.png", "-o", "{d}/o.tfic", "--checkpoint", "{d}/text.png"], "not a tficlib checkpoint"),
    (["compress", "{d}/good.tfic", "-o", "{d}/o.tfic"], "is a .tfic bitstream, not an image"),
    (["decompress", "{d}/corrupt.tfic", "-o", "{d}/o.png"], "checksum mismatch"),
    (["decompress", "{d}/short.tfic", "-o", "{d}/o.png"], "truncated"),
    (["info", "{d}/corrupt.tfic"], "checksum mismatch"),
    (["info", "{d}/rgb.png"], "not a .tfic stream"),
    (["info", "{d}/future.tfic"], "newer than this reader"),
    (["decompress", "{d}/foreign.tfic", "-o", "{d}/o.png"], "no saved model of profile 'smoke' made this stream"),
    (["decompress", "{d}/foreign.tfic", "-o", "{d}/o.png", "--checkpoint", "{ckpt}"], "another bmshj2018"),
    (["compress", "{d}/rgb.png", "-o", "{d}/o.tfic", "--rate", "x"], None),  # argparse usage error
])
def test_bad_inputs(env, capsys, argv, message):
    d, _, ckpt = env
    assert _run(capsys, "compress", d / "rgb.png", "-o", d / "good.tfic")[0] == 0
    good = (d / "good.tfic").read_bytes()
    bad = bytearray(good)
    bad[-1] ^= 0x10
    (d / "corrupt.tfic").write_bytes(bytes(bad))
    (d / "short.tfic").write_bytes(good[:6])
    (d / "future.tfic").write_bytes(good[:4] + b"\x09" + good[5:])
    torch.manual_seed(7)
    other = codec.build_model("bmshj2018-hyperprior", 16, 16)
    other.update(force=True)
    (d / "foreign.tfic").write_bytes(codec.compress(other, torch.rand(1, 3, 8, 8)))
    rc, out, err = _run(capsys, *[a.format(d=d, ckpt=ckpt) for a in argv])
    assert rc == 2
    if message is not None:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tfic: error: "), err
        assert message in lines[0], err
    assert not (d / "o.tfic").exists() and not (d / "o.png").exists()


@pytest.mark.slow
def test_subprocess_exit_codes(env):
    d, _, _ = env
    r = subprocess.run([sys.executable, "-m", "tficlib", "info", str(d / "rgb.png")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"tfic: error: {d / 'rgb.png'}: not a .tfic stream "
                                             "(starts with b'\\x89PNG', expected b'TFIC')"]


@pytest.mark.slow
def test_ocr_command(env, capsys):
    pytest.importorskip("tficlib.ocr", reason="tficlib.ocr (the OCR helper's module) is not there yet")
    from PIL import ImageDraw, ImageFont

    d, _, _ = env
    img = Image.new("RGB", (256, 64), "white")
    try:
        font = ImageFont.load_default(size=36)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    ImageDraw.Draw(img).text((10, 10), "HELLO 42", fill="black", font=font)
    img.save(d / "hello.png")
    rc, out, err = _run(capsys, "ocr", d / "hello.png")
    assert rc == 0, err
    assert "HELLO" in out.upper()
    assert _run(capsys, "compress", d / "hello.png", "-o", d / "hello.tfic")[0] == 0
    rc, out, err = _run(capsys, "ocr", d / "hello.tfic")  # decoded first (untrained codec: any text)
    assert rc == 0, err
    assert out.endswith("\n")
