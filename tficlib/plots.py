"""Figures shared by the notebooks: image grids, rate curves, training curves.

Every figure a notebook keeps goes through :func:`save_figure`, which writes
``figures/<profile>/<name>.png`` atomically (:func:`tficlib.artifacts.atomic_write`).
:func:`rate_curves` draws ``results.json`` method entries (DESIGN.md): lists
aligned by rate point become curves, single numbers (e.g. the accuracy on
uncompressed images) horizontal lines.  Headless runs (papermill, CI) use
matplotlib's Agg backend automatically; nothing here forces a backend, so
notebooks keep their inline figures.

Other stages may add small plotting functions here.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .artifacts import atomic_write

__all__ = [
    "METHOD_LABELS",
    "METRIC_LABELS",
    "image_grid",
    "per_engine",
    "rate_curves",
    "save_figure",
    "training_curves",
]

#: Legend labels for the method keys of results.json.
METHOD_LABELS = {
    "uncompressed": "uncompressed",
    "mse": "MSE codec",
    "tfic": "TFIC (rate + γ·OCR)",
    "textlogit": "text logit (κ·J)",
    "jpeg": "JPEG",
    "webp": "WebP",
    "avif": "AVIF",
    "jpegxl": "JPEG XL",
    "jpeg2000": "JPEG 2000",
    "clean": "clean",
    "dncnn": "DnCNN",
    "ocr_guided": "OCR-guided",
    "reference": "reference (κ = 0)",
    "tfic_robust": "TFIC, robust (ours)",
    "anchor_only": "D2, anchor only",
    "plain_ctc": "D2, plain CTC",
}

#: Axis labels for the metric keys of results.json.
METRIC_LABELS = {
    "bpp": "rate (bpp, real bytes)",
    "bpp_estimated": "rate (bpp, estimated)",
    "bpp_payload": "rate (bpp, entropy-coded payload)",
    "accuracy": "OCR accuracy",
    "accuracy_ci": "OCR accuracy (case-insensitive)",
    "cer": "CER",
    "wer": "WER",
    "psnr": "PSNR (dB)",
    "ms_ssim": "MS-SSIM",
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def save_figure(fig, cfg, name: str, dpi: int = 120) -> Path:
    """Write ``fig`` to ``cfg.figures_dir/<name>.png`` atomically and return the path.

    ``cfg`` is a :class:`tficlib.config.Profile` (or a folder path).  ``name``
    is a plain file stem such as ``"06_rate_accuracy"`` (a ``.png`` suffix is
    accepted).
    """
    stem = name[:-4] if name.lower().endswith(".png") else name
    if not _NAME.match(stem):
        raise ValueError(f"figure name must be a plain file stem (letters, digits, . _ -), got {name!r}")
    folder = Path(cfg) if isinstance(cfg, (str, os.PathLike)) else Path(cfg.figures_dir)
    path = folder / f"{stem}.png"
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight")
    return path


def _to_display(image) -> np.ndarray:
    """A float tensor (3,H,W)/(1,H,W) in [0,1] or a uint8/float array → an array imshow understands."""
    if hasattr(image, "detach"):  # torch tensor
        image = image.detach().to("cpu").float().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = np.transpose(image, (1, 2, 0))
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"cannot show an image of shape {a.shape}; expected (3,H,W), (H,W,3) or (H,W)")
    if a.dtype != np.uint8:
        a = np.clip(a.astype(np.float32), 0.0, 1.0)
    return a


def image_grid(images, titles: Sequence[str] | None = None, ncols: int = 4, cell_width: float = 3.0,
               suptitle: str | None = None, fontsize: int = 8):
    """A figure with ``images`` in a grid and each title *under* its image (e.g. recognized text).

    ``images``: a float tensor (N,3,H,W) in [0,1], or a list of tensors
    (3,H,W) / uint8 arrays (H,W,3) / (H,W).  Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    if getattr(images, "ndim", None) == 3 and (hasattr(images, "dim") or images.shape[-1] in (3, 4)):
        images = [images]  # one (3,H,W) tensor or one (H,W,3) array; a (N,H,W) array is a gray batch
    items = list(images)  # a (N,...) tensor/array iterates over its images
    if not items:
        raise ValueError("image_grid needs at least one image")
    if titles is not None and len(titles) != len(items):
        raise ValueError(f"{len(items)} images but {len(titles)} titles")
    arrays = [_to_display(im) for im in items]
    ncols = max(1, min(int(ncols), len(arrays)))
    nrows = math.ceil(len(arrays) / ncols)
    h, w = arrays[0].shape[:2]
    label_room = 0.35 if titles is not None else 0.05
    title_room = 0.4 if suptitle else 0.0
    fig, axes = plt.subplots(nrows, ncols, squeeze=False,
                             figsize=(ncols * cell_width, nrows * (cell_width * h / w + label_room) + title_room))
    for k, ax in enumerate(axes.flat):
        if k >= len(arrays):
            ax.axis("off")
            continue
        a = arrays[k]
        ax.imshow(a, cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=255 if a.dtype == np.uint8 else 1,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            ax.set_xlabel(str(titles[k]), fontsize=fontsize)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def _as_float_list(values) -> np.ndarray:
    return np.asarray([np.nan if v is None else float(v) for v in values], dtype=float)


def rate_curves(ax, methods: Mapping[str, Mapping], metric: str = "accuracy", x: str = "bpp",
                labels: Mapping[str, str] | None = None, styles: Mapping[str, Mapping] | None = None,
                logx: bool = False, title: str | None = None, legend: bool = True) -> list[str]:
    """Plot ``metric`` against ``x`` for every method of a results.json ``methods`` dict.

    Lists aligned by rate point become curves (sorted by rate; ``None``/NaN
    points skipped); a single number with no rate list (e.g.
    ``{"uncompressed": {"accuracy": 0.91}}``) becomes a dashed horizontal
    line.  Methods without ``metric`` are skipped.  Returns the keys drawn.
    """
    labels = dict(labels or {})
    styles = dict(styles or {})
    drawn = []
    for key, entry in methods.items():
        if not isinstance(entry, Mapping) or metric not in entry:
            continue
        label = labels.get(key, METHOD_LABELS.get(key, key))
        style = dict(styles.get(key, {}))
        value = entry[metric]
        if isinstance(value, (list, tuple, np.ndarray)):
            if x not in entry:
                raise ValueError(f"methods[{key!r}] has a {metric!r} list but no {x!r} list")
            xs, ys = _as_float_list(entry[x]), _as_float_list(value)
            if xs.shape != ys.shape:
                raise ValueError(f"methods[{key!r}]: {x!r} and {metric!r} lists differ in length "
                                 f"({xs.size} vs {ys.size})")
            ok = np.isfinite(xs) & np.isfinite(ys)
            if not ok.any():
                continue
            order = np.argsort(xs[ok], kind="stable")
            style.setdefault("marker", "o")
            style.setdefault("markersize", 4)
            ax.plot(xs[ok][order], ys[ok][order], label=label, **style)
        elif value is not None and math.isfinite(float(value)):
            style.setdefault("linestyle", "--")
            style.setdefault("color", "0.3")
            ax.axhline(float(value), label=label, **style)
        else:
            continue
        drawn.append(key)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(METRIC_LABELS.get(x, x))
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if legend and drawn:
        ax.legend(fontsize=8)
    return drawn


def per_engine(by_engine: Mapping[str, Mapping], metric: str = "accuracy", x: str = "bpp",
               labels: Mapping[str, str] | None = None, styles: Mapping[str, Mapping] | None = None,
               logx: bool = True, title: str = ""):
    """One rate–``metric`` panel per OCR engine: ``by_engine[engine] = {"curves": methods, "uncompressed": {...}}``.

    The same codecs read by each engine side by side (the engine the codecs
    were trained against first); returns the figure.
    """
    import matplotlib.pyplot as plt

    names = list(by_engine)
    if not names:
        raise ValueError("per_engine: no engine to draw")
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 3.9), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names):
        entry = by_engine[name]
        methods = {"uncompressed": entry.get("uncompressed", {}), **entry["curves"]}
        rate_curves(ax, methods, metric=metric, x=x, labels=labels, styles=styles, logx=logx,
                    title=f"read by {name}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def training_curves(log_records, keys: Sequence[str], x: str = "step", logy: Sequence[str] = (),
                    ncols: int = 3, title: str | None = None):
    """One panel per key of a training log; returns the figure.

    ``log_records``: a list of dicts (one per logged step, as the training
    loop writes them) or a dict of equal-length lists.  Records without a key
    are skipped for that panel; keys in ``logy`` use a log y-axis.
    """
    import matplotlib.pyplot as plt

    if isinstance(log_records, Mapping):
        columns = {k: list(v) for k, v in log_records.items()}
        n = max((len(v) for v in columns.values()), default=0)
        records = [{k: v[i] for k, v in columns.items() if i < len(v)} for i in range(n)]
    else:
        records = list(log_records)
    keys = list(keys)
    if not keys:
        raise ValueError("training_curves needs at least one key")
    missing = [k for k in keys if not any(k in r for r in records)]
    if missing:
        raise ValueError(f"keys {missing} are not in the log (available: {sorted({k for r in records for k in r})})")
    ncols = max(1, min(int(ncols), len(keys)))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, figsize=(4.0 * ncols, 3.0 * nrows))
    for k, ax in enumerate(axes.flat):
        if k >= len(keys):
            ax.axis("off")
            continue
        key = keys[k]
        pts = [(r.get(x, i), r[key]) for i, r in enumerate(records) if r.get(key) is not None]
        xs, ys = zip(*pts)
        ax.plot(xs, ys, linewidth=1.2)
        if key in logy:
            ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_title(key)
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
