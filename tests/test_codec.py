"""tficlib.codec: models, training and real paths, the .tfic format, checkpoints, evaluation."""

from __future__ import annotations

import struct
import zlib

import pytest
import torch

from tficlib import codec
from tficlib.artifacts import ArtifactError, MissingArtifact, save_checkpoint
from tficlib.codec import TficFormatError


def _model(name="bmshj2018-hyperprior", N=16, M=16, seed=0):
    torch.manual_seed(seed)
    m = codec.build_model(name, N, M)
    m.update(force=True)
    return m.eval()


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def image():
    g = torch.Generator().manual_seed(1)
    return torch.rand(1, 3, 37, 101, generator=g)


@pytest.fixture(scope="module")
def stream(model, image):
    return codec.compress(model, image, label="tfic_0")


def _refresh_crc(data: bytes) -> bytes:
    return data[:5] + struct.pack("<I", zlib.crc32(data[9:])) + data[9:]


# --------------------------------------------------------------------------- models
def test_registry_and_build():
    assert set(codec.MODELS) == {"bmshj2018-hyperprior", "mbt2018-mean", "cheng2020-attn"}
    assert set(codec.MODEL_IDS) == set(codec.MODELS)
    m = codec.build_model("cheng2020-attn", N=16, M=999)  # single width: M ignored
    assert codec.model_spec(m) == {"name": "cheng2020-attn", "N": 16, "M": 16}
    with pytest.raises(ValueError, match="unknown codec model 'tinylic'.*TinyLIC is not in CompressAI"):
        codec.build_model("tinylic")
    assert codec.build_model.__defaults__[0] == "bmshj2018-hyperprior"


def test_training_path_shapes():
    m = codec.build_model("bmshj2018-hyperprior", 16, 16).train()
    x, _ = codec.pad(torch.rand(2, 3, 37, 101))
    out = m(x)
    assert out["x_hat"].shape == x.shape
    assert set(out["likelihoods"]) == {"y", "z"}
    out["x_hat"].mean().backward()  # differentiable
    bpp = codec.estimated_bpp(out["likelihoods"], 37 * 101, per_image=True)
    assert len(bpp) == 2 and all(b > 0 for b in bpp)


def test_pad_and_crop():
    x = torch.rand(1, 3, 37, 101)
    xp, (ph, pw) = codec.pad(x)
    assert xp.shape[-2:] == (64, 128) and (ph, pw) == (27, 27)
    assert torch.equal(codec.crop(xp, 37, 101), x)
    assert torch.equal(xp[..., 63, :101], x[..., 36, :])  # replicated border
    xz, _ = codec.pad(x, mode="constant")
    assert xz[..., 50, 50].abs().sum() == 0


# --------------------------------------------------------------------------- real path
@pytest.mark.parametrize("name", ["bmshj2018-hyperprior", "mbt2018-mean"])
@pytest.mark.parametrize("size", [(64, 64), (37, 101), (1, 1)])
def test_roundtrip_equals_eval_forward(name, size):
    m = _model(name)
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(2))
    data = codec.compress(m, x)
    x_hat = codec.decompress(m, data)
    assert x_hat.shape == (1, 3, *size)
    with torch.no_grad():
        ref = m(codec.pad(x)[0])["x_hat"]
    ref = codec.crop(ref, *size).clamp(0, 1)
    torch.testing.assert_close(x_hat, ref, atol=1e-5, rtol=0)


def test_cheng2020_roundtrip_and_determinism():
    m = _model("cheng2020-attn")
    x = torch.rand(1, 3, 37, 70, generator=torch.Generator().manual_seed(3))
    a = codec.compress(m, x)
    with torch.no_grad():
        m(codec.pad(x)[0])  # forward must not change the weights (masked conv)
    b = codec.compress(m, x)
    assert a == b
    assert codec.decompress(m, a).shape == (1, 3, 37, 70)


def test_deterministic_streams(model, image, stream, tmp_path):
    assert codec.compress(model, image, label="tfic_0") == stream
    assert codec.compress(model, image[0], label="tfic_0") == stream  # (3,H,W) accepted
    # a model saved and loaded again makes the very same bytes
    codec.save_model(tmp_path / "m.pt", model, {"method": "tfic"})
    loaded, meta = codec.load_model(tmp_path / "m.pt")
    assert meta["codec"] == {"name": "bmshj2018-hyperprior", "N": 16, "M": 16}
    assert meta["method"] == "tfic"
    assert meta["codec_fingerprint"] == codec.fingerprint(model).hex()
    assert codec.compress(loaded, image, label="tfic_0") == stream
    torch.testing.assert_close(codec.decompress(loaded, stream), codec.decompress(model, stream))


def test_coding_mode_switches_cudnn_to_deterministic_fp32_and_back():
    """compress/decompress run h_s with deterministic cuDNN and no TF32 on CUDA (flags restored after)."""
    cudnn = torch.backends.cudnn
    before = (cudnn.enabled, cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32)
    with codec.coding_mode("cuda"):
        assert cudnn.enabled and cudnn.deterministic and not cudnn.benchmark and not cudnn.allow_tf32
    assert (cudnn.enabled, cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32) == before
    with codec.coding_mode("cpu"):  # the CPU path is deterministic already: nothing changes
        assert (cudnn.enabled, cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32) == before


def test_non_finite_reconstruction_is_rejected(stream):
    """A stream whose decoded latents blow up the synthesis transform is an error, never a NaN image."""
    m = _model()  # its own copy: the module's model stays untouched
    assert codec.decompress(m, stream).isfinite().all()
    m.g_s.register_forward_hook(lambda module, inputs, out: out * float("nan"))
    with pytest.raises(TficFormatError, match="non-finite pixels"):
        codec.decompress(m, stream)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_streams_repeat_and_decode(image):
    """On CUDA the same image gives the same bytes every time and decodes to the eval-mode forward."""
    m = _model().cuda()
    m.update(force=True)
    x = image.cuda()
    streams = {codec.compress(m, x) for _ in range(5)}
    assert len(streams) == 1
    x_hat = codec.decompress(m, streams.pop())
    with torch.no_grad():
        ref = codec.crop(m(codec.pad(x)[0])["x_hat"], *image.shape[-2:]).clamp(0, 1)
    torch.testing.assert_close(x_hat, ref, atol=1e-4, rtol=0)


def test_header_fields(model, image, stream):
    h = codec.read_header(stream)
    assert (h.version, h.model, h.N, h.M, h.label) == (1, "bmshj2018-hyperprior", 16, 16, "tfic_0")
    assert (h.height, h.width, h.pad_h, h.pad_w, h.latent_shape) == (37, 101, 27, 27, (1, 2))
    assert h.fingerprint == codec.fingerprint(model).hex()
    assert h.total_bytes == len(stream)
    assert h.header_bytes + h.payload_bytes == len(stream)
    assert h.payload_bytes == sum(n for group in h.string_lengths for n in group)
    assert 20 <= h.header_bytes <= 40, h.header_bytes
    assert h.bpp == pytest.approx(8 * len(stream) / (37 * 101))
    r = codec.real_bpp(model, image)
    assert r["bytes"] == len(codec.compress(model, image)) and r["header_bytes"] == h.header_bytes - 6
    assert r["bpp"] == pytest.approx(8 * r["bytes"] / (37 * 101))


def test_write_tfic_atomic_and_checked(stream, tmp_path):
    p = codec.write_tfic(tmp_path / "a.tfic", stream)
    assert codec.read_tfic(p) == stream
    with pytest.raises(TficFormatError):
        codec.write_tfic(tmp_path / "b.tfic", stream[:-1])
    assert not (tmp_path / "b.tfic").exists()
    assert [q.name for q in tmp_path.iterdir()] == ["a.tfic"]  # no temporary left behind
    with pytest.raises(FileNotFoundError, match="no such .tfic file"):
        codec.read_tfic(tmp_path / "missing.tfic")


def test_compress_rejects_bad_input(model):
    with pytest.raises(ValueError, match="one RGB image"):
        codec.compress(model, torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        codec.compress(model, torch.rand(1, 3, 8, 8) * 3)
    fresh = codec.build_model("bmshj2018-hyperprior", 16, 16)
    with pytest.raises(ValueError, match=r"update\(force=True\)"):
        codec.compress(fresh, torch.rand(1, 3, 8, 8))


# --------------------------------------------------------------------------- rejection
def test_wrong_magic_and_future_version(model, stream):
    with pytest.raises(TficFormatError, match="not a .tfic stream"):
        codec.decompress(model, b"\x89PNG" + stream[4:])
    with pytest.raises(TficFormatError, match="version 2 is newer"):
        codec.read_header(stream[:4] + bytes([2]) + stream[5:])
    with pytest.raises(TficFormatError, match="invalid format version 0"):
        codec.read_header(stream[:4] + bytes([0]) + stream[5:])
    with pytest.raises(TypeError):
        codec.read_header("TFIC")


def test_every_truncation_rejected(model, stream):
    for n in range(len(stream)):
        with pytest.raises(TficFormatError, match="truncated|checksum"):
            codec.decompress(model, stream[:n])
    with pytest.raises(TficFormatError, match="checksum"):
        codec.decompress(model, stream + b"\x00")


def test_every_bit_flip_rejected(model, stream):
    for i in range(len(stream)):
        for bit in range(8):
            bad = bytearray(stream)
            bad[i] ^= 1 << bit
            with pytest.raises(TficFormatError):
                codec.decompress(model, bytes(bad))


def test_strict_parser_with_valid_checksum(model, stream):
    """Corrupt header fields behind a recomputed checksum: the bounds checks still hold."""
    h = codec.read_header(stream)
    end_of_fields = 9 + 1 + 1 + 1 + 8 + 1 + 1 + 1 + len(h.label)
    for i in range(9, end_of_fields):
        for value in (0x00, 0x7F, 0x80, 0xFF, stream[i] ^ 1):
            bad = bytearray(stream)
            bad[i] = value
            bad = _refresh_crc(bytes(bad))
            if bad == stream:
                continue
            try:
                x_hat = codec.decompress(model, bad)
            except TficFormatError:
                continue
            hb = codec.read_header(bad)  # only the image size (or label) changed: a valid stream
            assert x_hat.shape == (1, 3, hb.height, hb.width)
    # lengths beyond the data, deep nesting, trailing garbage
    body = stream[9:end_of_fields]
    for tree in (b"\xff\xff\x03", b"\x03" * 10, b"\x05\x04ab", b"\x03\x00\x00", b"\x02a"):
        with pytest.raises(TficFormatError):
            codec.read_header(_refresh_crc(stream[:9] + body + tree))


def test_foreign_model_rejected(model, stream):
    with pytest.raises(TficFormatError, match="another bmshj2018-hyperprior model"):
        codec.decompress(_model(seed=1), stream)
    with pytest.raises(TficFormatError, match=r"N=16, M=16.*N=16, M=24"):
        codec.decompress(_model(M=24), stream)
    with pytest.raises(TficFormatError, match="mbt2018-mean"):
        codec.decompress(_model("mbt2018-mean"), stream)
    with pytest.raises(ValueError, match="needs the model"):
        codec.decompress(None, stream)


def test_fingerprint_follows_weights(model):
    m = _model(seed=5)
    before = codec.fingerprint(m)
    with torch.no_grad():
        m.g_s[0].weight.add_(1e-3)
    assert codec.fingerprint(m) != before
    m.update(force=True)
    assert len(codec.fingerprint(m)) == 8


# --------------------------------------------------------------------------- checkpoints
def test_load_model_errors(tmp_path):
    with pytest.raises(MissingArtifact, match="01_mse_pretraining.ipynb"):
        codec.load_model(tmp_path / "data" / "cpu" / "01_mse_pretraining" / "models" / "mse_0.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ArtifactError, match="not a tficlib checkpoint"):
        codec.load_model(tmp_path / "junk.pt")
    save_checkpoint(tmp_path / "other.pt", {"w": torch.zeros(1)}, {"kind": "dncnn"})
    with pytest.raises(ArtifactError, match="not a codec"):
        codec.load_model(tmp_path / "other.pt")
    save_checkpoint(tmp_path / "bad.pt", {"model": {"w": torch.zeros(1)}},
                    {"codec": {"name": "bmshj2018-hyperprior", "N": 16, "M": 16}})
    with pytest.raises(ArtifactError, match="do not fit"):
        codec.load_model(tmp_path / "bad.pt")


# --------------------------------------------------------------------------- evaluation
def test_evaluate_codec(model):
    g = torch.Generator().manual_seed(4)
    imgs = [(torch.rand(3, 64, 96, generator=g), "a"), (torch.rand(3, 64, 96, generator=g), "b"),
            (torch.rand(3, 37, 101, generator=g), "c")]
    res = codec.evaluate_codec(model, imgs, batch_size=2)
    assert len(res["bpp"]) == len(res["psnr"]) == len(res["bpp_estimated"]) == 3
    for x, r in zip(imgs, res["reconstructions"]):
        assert r.shape == (1, *x[0].shape)
    data = codec.compress(model, imgs[2][0])
    assert res["bytes"][2] == len(data)
    assert res["bpp"][2] == pytest.approx(8 * len(data) / (37 * 101))
    torch.testing.assert_close(res["reconstructions"][2], codec.decompress(model, data))
    # the eval-mode estimate accounts for the entropy-coded payload (header excluded) within a few %
    payload_bpp = 8 * (res["bytes"][0] - res["header_bytes"][0]) / (64 * 96)
    assert res["bpp_estimated"][0] == pytest.approx(payload_bpp, rel=0.25, abs=0.05)
    assert res["mean"]["bpp"] == pytest.approx(sum(res["bpp"]) / 3)
    assert all(t > 0 for t in res["encode_ms"] + res["decode_ms"])
    if res["ms_ssim"] is not None:
        assert all(v is None or -1 <= v <= 1 for v in res["ms_ssim"])


def test_time_encoder(model, image):
    t = codec.time_encoder(model, image, repeats=3, warmup=1, threads=1)
    assert t["n"] == 3 and t["mean_ms"] > 0 and t["std_ms"] >= 0 and t["threads"] == 1
    d = codec.time_decoder(model, codec.compress(model, image), repeats=2, warmup=0)
    assert d["n"] == 2 and d["mean_ms"] > 0
