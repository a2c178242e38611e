"""Codec commands of the command line (``python -m tficlib …``, also ``tfic …``).

::

    tfic compress IMAGE -o OUT.tfic [--method tfic|mse|textlogit] [--rate K | --checkpoint FILE] [--profile P]
    tfic decompress IN.tfic -o OUT.png [--checkpoint FILE] [--profile P]
    tfic ocr IMAGE_OR_TFIC [--checkpoint FILE] [--profile P]
    tfic info IN.tfic [--json]

Trained models are found by a naming convention (:func:`default_checkpoint`):
``data/<profile>/<stage>/models/<method>_<k>.pt`` with stage 01_mse_pretraining
(``mse``), 02_tfic_ocr_finetuning (``tfic``) or 03_text_logit_training
(``textlogit``), saved by :func:`tficlib.codec.save_model`; ``k`` is the index
of the rate point in that stage's grid (``cfg.codec.lambdas`` for mse,
``cfg.tfic.gammas`` for tfic, ``cfg.codec.lambdas`` for textlogit at κ = 0.1), i.e.
the position in the method's lists of ``results.json``.

Inputs: PNG, JPEG or TIFF of any size; grayscale and palette images become
RGB, an alpha channel is dropped (composited over white) with a note on
stderr, 16-bit samples are scaled to [0, 1].  Errors are one line on stderr;
exit code 2 for bad usage or bad input (all errors here are ``ValueError`` /
``FileNotFoundError`` subclasses, which ``__main__`` maps to 2), 1 otherwise.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

from . import artifacts, codec, config

__all__ = [
    "CliInputError",
    "METHOD_STAGES",
    "add_commands",
    "available_rates",
    "default_checkpoint",
    "find_checkpoint",
    "load_image",
    "save_png",
]

#: method -> the stage (notebook) that trains its models
METHOD_STAGES = {
    "mse": artifacts.MSE_PRETRAINING,
    "tfic": artifacts.TFIC_FINETUNING,
    "tfic_robust": artifacts.TFIC_FINETUNING,
    "textlogit": artifacts.TEXT_LOGIT,
}
IMAGE_FORMATS = {"PNG", "JPEG", "MPO", "TIFF"}
_LABEL = re.compile(rf"^({'|'.join(map(re.escape, METHOD_STAGES))})_(\d+)$")  # a model's name: <method>_<k>


class CliInputError(ValueError):
    """Bad usage or bad input of a codec command (exit code 2)."""


def _note(msg: str) -> None:
    print(f"tfic: note: {msg}", file=sys.stderr)


# --------------------------------------------------------------------------- checkpoints
def models_dir(cfg, method: str) -> Path:
    """``data/<profile>/<stage>/models/`` of a method."""
    if method not in METHOD_STAGES:
        raise CliInputError(f"unknown method {method!r}; methods are: {', '.join(METHOD_STAGES)}")
    return cfg.stage_dir(METHOD_STAGES[method]) / "models"


def default_checkpoint(cfg, method: str, rate_index: int = 0) -> Path:
    """The trained model of ``method`` at rate point ``rate_index``: ``<stage>/models/<method>_<k>.pt``."""
    if int(rate_index) < 0:
        raise CliInputError(f"--rate must be >= 0, got {rate_index}")
    return models_dir(cfg, method) / f"{method}_{int(rate_index)}.pt"


def available_rates(cfg, method: str) -> list[int]:
    """Rate indices ``k`` with a saved ``<method>_<k>.pt``."""
    folder = models_dir(cfg, method)
    found = []
    for p in folder.glob(f"{method}_*.pt"):
        m = _LABEL.match(p.stem)
        if m and m.group(1) == method:
            found.append(int(m.group(2)))
    return sorted(found)


def _resolve_for_compress(cfg, method: str, rate: int | None, checkpoint: str | None) -> tuple[Path, str]:
    """(checkpoint path, label for the header)."""
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"no such checkpoint: {path}")
        label = "".join(c for c in path.stem if 32 <= ord(c) < 127)[:255]
        return path, label
    k = 0 if rate is None else rate
    path = default_checkpoint(cfg, method, k)
    if not path.is_file():
        stage = METHOD_STAGES[method]
        have = available_rates(cfg, method)
        extra = f" (trained rates: {', '.join(map(str, have))})" if have else ""
        raise artifacts.MissingArtifact(
            f"no trained {method} model at rate {k} for profile {cfg.name!r}: {path} is missing{extra}; "
            f"run {artifacts.NOTEBOOKS[stage]} or pass --checkpoint FILE")
    return path, f"{method}_{k}"


def find_checkpoint(cfg, header: codec.Header) -> Path:
    """The saved model of ``cfg``'s profile that made a stream (same name, N, M and fingerprint).

    Looks first at the checkpoint named by the header's label (``tfic_2`` ->
    the default path of tfic at rate 2), then at every ``models/*.pt`` of the
    stages 01-03, by the fingerprint recorded when each was saved.  That
    fingerprint covers the CDF tables ``update()`` built on the training
    device, and a GPU builds other tables than the CPU this command codes on
    (measured on an H100), so a model trained on a GPU is then loaded on the
    CPU and matched by the fingerprint it has here.
    """
    candidates = []
    m = _LABEL.match(header.label)
    if m:
        candidates.append(default_checkpoint(cfg, m.group(1), int(m.group(2))))
    for method in METHOD_STAGES:
        candidates.extend(sorted(models_dir(cfg, method).glob("*.pt")))
    seen, other_device = set(), []
    for path in candidates:
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        try:
            meta = artifacts.load_checkpoint(path)["meta"]
        except Exception:  # noqa: BLE001 - a foreign file in models/ is skipped
            continue
        spec = meta.get("codec") or {}
        if (spec.get("name"), spec.get("N"), spec.get("M")) != (header.model, header.N, header.M):
            continue
        if meta.get("codec_fingerprint") not in (None, header.fingerprint):
            other_device.append(path)
            continue
        return path
    for path in other_device:  # saved with tables built elsewhere: the fingerprint it has on this CPU
        try:
            model, _ = codec.load_model(path)
        except artifacts.ArtifactError:
            continue
        if codec.fingerprint(model).hex() == header.fingerprint:
            return path
    raise artifacts.MissingArtifact(
        f"no saved model of profile {cfg.name!r} made this stream ({header.model}, N={header.N}, M={header.M}, "
        f"fingerprint {header.fingerprint}, label {header.label or '-'}); pass --checkpoint FILE "
        f"or --profile of the run that trained it")


def _load(path: Path):
    try:
        model, _ = codec.load_model(path)
    except artifacts.ArtifactError as exc:
        raise CliInputError(str(exc)) from exc
    return model


def _model_for_stream(args, header: codec.Header):
    cfg = config.resolve(args.profile)
    path = Path(args.checkpoint) if args.checkpoint else find_checkpoint(cfg, header)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    return _load(path)


# --------------------------------------------------------------------------- images
def _is_tfic(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(codec.MAGIC)) == codec.MAGIC


def _check_input(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"no such {what}: {path}")
    if not path.is_file():
        raise CliInputError(f"{path} is not a file")
    return path


def _rgb_from_array(arr: np.ndarray, scale: float, path: Path, notes: list[str]) -> np.ndarray:
    """(H,W[,C]) samples -> float32 (H,W,3) in [0,1]; alpha composited over white."""
    arr = arr.astype(np.float32) / scale
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise CliInputError(f"{path}: unsupported sample layout {arr.shape}")
    if arr.shape[-1] in (2, 4):
        alpha = arr[..., -1:]
        arr = arr[..., :-1] * alpha + (1.0 - alpha)
        notes.append(f"{path.name}: alpha channel dropped (composited over white)")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.clip(arr, 0.0, 1.0)


def load_image(path: str | Path) -> tuple[torch.Tensor, list[str]]:
    """Read a PNG/JPEG/TIFF into (1,3,H,W) float in [0,1]; returns (x, notes for stderr).

    Grayscale and palette -> RGB; alpha -> composited over white (noted);
    16-bit -> scaled by 1/65535 (noted); EXIF orientation applied.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = _check_input(Path(path), "image")
    if _is_tfic(path):
        raise CliInputError(f"{path} is a .tfic bitstream, not an image; use `tfic decompress`")
    notes: list[str] = []
    try:
        img = Image.open(path)
    except UnidentifiedImageError as exc:
        raise CliInputError(f"{path} is not an image (PNG, JPEG or TIFF expected)") from exc
    with img:
        if img.format not in IMAGE_FORMATS:
            raise CliInputError(f"{path}: {img.format} images are not supported; use PNG, JPEG or TIFF")
        if getattr(img, "n_frames", 1) > 1:
            notes.append(f"{path.name}: {img.n_frames} frames, using the first")
        try:
            if img.format in ("PNG", "TIFF"):
                import imagecodecs

                try:
                    raw = imagecodecs.imread(str(path))
                except Exception:  # noqa: BLE001 - fall back to Pillow below
                    raw = None
                if raw is not None and raw.dtype == np.uint16:
                    if raw.ndim == 4:
                        raw = raw[0]
                    notes.append(f"{path.name}: 16-bit samples scaled to [0, 1]")
                    return _finish(_rgb_from_array(raw, 65535.0, path, notes), notes)
            img.load()
            img = ImageOps.exif_transpose(img)
            mode = img.mode
            if mode.startswith("I;16") or mode == "I":
                arr = np.asarray(img).astype(np.float64)
                scale = 65535.0 if arr.max(initial=0) <= 65535 else float(arr.max())
                notes.append(f"{path.name}: {mode} samples scaled to [0, 1]")
                return _finish(_rgb_from_array(arr, scale, path, notes), notes)
            if mode == "F":
                arr = np.asarray(img).astype(np.float64)
                top = float(arr.max(initial=0))
                scale = 1.0 if top <= 1.0 else (65535.0 if top <= 65535 else top)
                return _finish(_rgb_from_array(arr, scale, path, notes), notes)
            if mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            elif mode in ("LA", "PA", "La", "RGBa"):
                img = img.convert("RGBA")
            elif mode not in ("RGB", "RGBA", "L"):
                img = img.convert("RGB")
            arr = np.asarray(img)
        except (OSError, SyntaxError, ValueError) as exc:
            raise CliInputError(f"{path}: cannot decode the image ({str(exc).splitlines()[0]})") from exc
    return _finish(_rgb_from_array(arr, 255.0, path, notes), notes)


def _finish(rgb: np.ndarray, notes: list[str]) -> tuple[torch.Tensor, list[str]]:
    h, w = rgb.shape[:2]
    if not (1 <= h <= codec.MAX_SIDE and 1 <= w <= codec.MAX_SIDE):
        raise CliInputError(f"image size {w}x{h} outside 1..{codec.MAX_SIDE}")
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().unsqueeze(0)
    return x, notes


def save_png(path: str | Path, x: torch.Tensor) -> Path:
    """Write (1,3,H,W) or (3,H,W) in [0,1] as an 8-bit RGB PNG, atomically."""
    from PIL import Image

    x = x.detach().cpu()
    if x.dim() == 4:
        x = x[0]
    arr = (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    with artifacts.atomic_write(path) as fh:
        Image.fromarray(arr, "RGB").save(fh, format="PNG")
    return Path(path)


def _require_suffix(path: str, suffixes: tuple[str, ...], what: str) -> Path:
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise CliInputError(f"{what} {p} must end in {' or '.join(suffixes)}")
    if p.exists() and p.is_dir():
        raise CliInputError(f"{what} {p} is a directory")
    return p


def _read_stream(path: str) -> tuple[bytes, codec.Header]:
    p = _check_input(Path(path), ".tfic file")
    data = p.read_bytes()
    try:
        header = codec.read_header(data)
    except codec.TficFormatError as exc:
        raise codec.TficFormatError(f"{p}: {exc}") from exc
    return data, header


# --------------------------------------------------------------------------- commands
def _cmd_compress(args) -> int:
    out = _require_suffix(args.output, (".tfic",), "output")
    x, notes = load_image(args.image)
    for n in notes:
        _note(n)
    cfg = config.resolve(args.profile)
    path, label = _resolve_for_compress(cfg, args.method, args.rate, args.checkpoint)
    model = _load(path)
    data = codec.compress(model, x, label=label)
    codec.write_tfic(out, data)
    h = codec.read_header(data)
    print(f"{out}: {h.total_bytes} bytes (header {h.header_bytes}), {h.width}x{h.height}, "
          f"{h.bpp:.4f} bpp, model {h.model} from {path}")
    return 0


def _cmd_decompress(args) -> int:
    out = _require_suffix(args.output, (".png",), "output")
    data, header = _read_stream(args.input)
    model = _model_for_stream(args, header)
    try:
        x_hat = codec.decompress(model, data)
    except codec.TficFormatError as exc:
        raise codec.TficFormatError(f"{args.input}: {exc}") from exc
    save_png(out, x_hat)
    print(f"{out}: {header.width}x{header.height} from {header.total_bytes} bytes ({header.bpp:.4f} bpp)")
    return 0


def _cmd_ocr(args) -> int:
    path = _check_input(Path(args.input), "file")
    try:
        from . import ocr
    except ImportError as exc:
        raise RuntimeError(f"OCR is unavailable: {exc}") from exc
    if _is_tfic(path):
        data, header = _read_stream(args.input)
        model = _model_for_stream(args, header)
        x = codec.decompress(model, data)
    else:
        x, notes = load_image(path)
        for n in notes:
            _note(n)
    reader = ocr.get_engine(args.engine).read_lines if args.line else ocr.get_engine(args.engine).read_text
    print(reader(x.cpu())[0])
    return 0


def _cmd_info(args) -> int:
    data, h = _read_stream(args.input)
    info = {
        "file": str(args.input), "format_version": h.version, "model": h.model, "N": h.N, "M": h.M,
        "fingerprint": h.fingerprint, "label": h.label, "width": h.width, "height": h.height,
        "padded": [h.width + h.pad_w, h.height + h.pad_h], "bytes": h.total_bytes,
        "header_bytes": h.header_bytes, "payload_bytes": h.payload_bytes, "bpp": h.bpp,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"file:           {args.input}\n"
          f"format version: {h.version}\n"
          f"model:          {h.model} (N={h.N}, M={h.M}), fingerprint {h.fingerprint}\n"
          f"label:          {h.label or '-'}\n"
          f"image size:     {h.width}x{h.height} (padded to {h.width + h.pad_w}x{h.height + h.pad_h})\n"
          f"bytes:          {h.total_bytes} (header {h.header_bytes}, entropy-coded {h.payload_bytes})\n"
          f"bpp:            {h.bpp:.4f}")
    return 0


def _nonneg_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a rate index (0, 1, ...), got {text!r}") from exc
    if value < 0:
        raise argparse.ArgumentTypeError(f"rate index must be >= 0, got {value}")
    return value


def add_commands(subparsers) -> None:
    """Register compress / decompress / ocr / info on ``__main__``'s subparsers."""
    profile_help = "smoke | cpu | paper | auto (default: $TFIC_PROFILE or auto); where trained models are looked up"

    p = subparsers.add_parser("compress", help="compress an image into a .tfic bitstream")
    p.add_argument("image", help="PNG, JPEG or TIFF image")
    p.add_argument("-o", "--output", required=True, help="output .tfic file")
    p.add_argument("--method", choices=tuple(METHOD_STAGES), default="tfic",
                   help="which trained codec (default: tfic)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--rate", type=_nonneg_int, default=None,
                   help="rate point k of the method's grid (default 0): <stage>/models/<method>_<k>.pt")
    g.add_argument("--checkpoint", default=None, help="a codec checkpoint saved by tficlib.codec.save_model")
    p.add_argument("--profile", default=None, help=profile_help)
    p.set_defaults(func=_cmd_compress)

    p = subparsers.add_parser("decompress", help="decode a .tfic bitstream into a PNG")
    p.add_argument("input", help="input .tfic file")
    p.add_argument("-o", "--output", required=True, help="output .png file")
    p.add_argument("--checkpoint", default=None,
                   help="the codec that made the stream (default: found by fingerprint in the profile's models)")
    p.add_argument("--profile", default=None, help=profile_help)
    p.set_defaults(func=_cmd_decompress)

    p = subparsers.add_parser("ocr", help="print the text an OCR engine reads in an image or a .tfic bitstream")
    p.add_argument("input", help="PNG/JPEG/TIFF image or .tfic file (decoded first)")
    from .ocr import ENGINES, TRAINING_ENGINE

    p.add_argument("--engine", default=TRAINING_ENGINE, choices=sorted(ENGINES),
                   help=f"OCR engine (default {TRAINING_ENGINE}, the one the codecs are trained against)")
    p.add_argument("--line", action="store_true", help="read the image as one text line (no detection)")
    p.add_argument("--checkpoint", default=None, help="codec for a .tfic input (default: found by fingerprint)")
    p.add_argument("--profile", default=None, help=profile_help)
    p.set_defaults(func=_cmd_ocr)

    p = subparsers.add_parser("info", help="describe a .tfic bitstream (needs no model)")
    p.add_argument("input", help="input .tfic file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)
