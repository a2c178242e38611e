"""The explorer of notebook 06: pick a test line, a method and a rate point; see what the OCR reads.

:class:`Explorer` codes one test image *for real* at the chosen point — a
classic codec at its quality setting (:func:`tficlib.baselines.encode`), or a
saved learned codec (:func:`tficlib.codec.compress`) — decodes it, and shows
the reconstruction, its bpp (from the real bytes of this one image), the text
EasyOCR reads (the training engine's ``read_lines``, the OCR of every
stage) and its accuracy (TFIC Sec. IV-A).

Headless (papermill, nbval, tests) it degrades gracefully: the widgets are
built without a display (ipywidgets needs no front end to create them),
nothing is drawn into them unless :func:`is_interactive`, and
:meth:`Explorer.static` gives the same content as a figure and a table, which
notebook 06 always prints so that an executed copy shows it too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import baselines, metrics

__all__ = ["Explorer", "RatePoint", "code_point", "is_interactive", "rate_points", "show"]

#: results.json parameter lists that name a learned codec's rate knob, with their symbols.
_KNOBS = (("lambda", "λ"), ("gamma", "γ"), ("kappa", "κ"))


@dataclass(frozen=True)
class RatePoint:
    """One rate point of one method: a classic codec setting or a saved learned codec."""

    method: str
    index: int
    setting: str  # "quality 10", "λ=0.0004" ...
    bpp: float | None  # the method's mean bpp at this point over the test split (results.json)
    codec: str | None = None  # classic codec key
    quality: float | None = None
    model_path: str | None = None

    @property
    def label(self) -> str:
        rate = "?" if self.bpp is None else f"{self.bpp:.3f}"
        return f"{self.setting} ({rate} bpp on the test split)"


def rate_points(cfg, methods: Mapping[str, Mapping]) -> dict[str, list[RatePoint]]:
    """The explorable points of every method of notebook 06's ``methods``.

    Classic codecs: one point per ``quality``.  Learned codecs: one point per
    saved model ``data/<profile>/<source stage>/models/<method>_<k>.pt`` that
    exists (``source`` is set by :func:`tficlib.evaluation.learned_curves`).
    """
    out: dict[str, list[RatePoint]] = {}
    for key, entry in methods.items():
        bpps = entry.get("bpp") if isinstance(entry, Mapping) else None
        if not isinstance(bpps, list) or not bpps:
            continue
        points = []
        if key in baselines.CODECS and "quality" in entry:
            knob = " ".join(w for w in baselines.CODECS[key].knob.split() if ".." not in w)
            for k, q in enumerate(entry["quality"]):
                points.append(RatePoint(key, k, f"{knob} {q:g}", bpps[k], codec=key, quality=q))
        elif entry.get("source"):
            from . import evaluate  # imports compressai: only when there is a learned codec

            for k, b in enumerate(bpps):
                path = evaluate.model_path(cfg, entry["source"], key, k)
                if not path.exists():
                    continue
                knobs = [f"{symbol}={entry[name][k]:g}" for name, symbol in _KNOBS
                         if isinstance(entry.get(name), list) and k < len(entry[name])
                         and isinstance(entry[name][k], (int, float))]
                points.append(RatePoint(key, k, ", ".join(knobs) or f"point {k}", b, model_path=str(path)))
        if points:
            out[key] = points
    return out


def _load_model(path: str, device: str, cache: dict):
    from . import codec

    key = (path, device)
    if key not in cache:
        cache[key] = codec.load_model(Path(path), device=device)[0]
    return cache[key]


def code_point(point: RatePoint, image, device: str = "cpu", models: dict | None = None):
    """Code ``image`` ((3,H,W) float in [0,1]) at ``point``; ``(reconstruction (3,H,W), num_bytes)``."""
    import torch

    if point.codec is not None:
        a = baselines.to_uint8(image)[0]
        data = baselines.encode(point.codec, a, point.quality)
        return baselines.to_float([baselines.decode(point.codec, data)])[0], len(data)
    if point.model_path is None:
        raise ValueError(f"rate point {point} names neither a classic codec nor a model file")
    from . import codec

    model = _load_model(point.model_path, str(device), {} if models is None else models)
    data = codec.compress(model, image[None].to(device))
    with torch.no_grad():
        recon = codec.decompress(model, data)[0].detach().cpu().clamp(0, 1)
    return recon, len(data)


def is_interactive() -> bool:
    """True inside a Jupyter kernel that can show widgets (not when ``TFIC_HEADLESS`` is set)."""
    if os.environ.get("TFIC_HEADLESS"):
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


class Explorer:
    """Widgets: ``image`` (test line index), ``method``, ``point`` (rate point), ``info``, ``out``.

    ``images``: float (N,3,H,W) in [0,1]; ``labels``: ground truth;
    ``points``: :func:`rate_points`; ``reader``: a function list-of-images ->
    list of texts (default: the training engine's ``read_lines``).
    ``live=None`` draws into the widgets only when :func:`is_interactive`.
    """

    def __init__(self, images, labels: Sequence[str], points: Mapping[str, Sequence[RatePoint]],
                 reader: Callable | None = None, device: str = "cpu", live: bool | None = None):
        import ipywidgets as w

        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if len(images) == 0:
            raise ValueError("the explorer needs at least one test image")
        self.points = {k: list(v) for k, v in points.items() if v}
        if not self.points:
            raise ValueError("no method has an explorable rate point")
        self.images, self.labels = images, list(labels)
        if reader is None:
            from . import ocr

            reader = ocr.get_engine(ocr.TRAINING_ENGINE, device).read_lines
        self.reader, self.device = reader, str(device)
        self.live = is_interactive() if live is None else bool(live)
        self._models: dict = {}
        self._cache: dict = {}
        first = next(iter(self.points))
        self.image = w.IntSlider(value=0, min=0, max=len(images) - 1, description="test line")
        self.method = w.Dropdown(options=[(self._method_label(k), k) for k in self.points], value=first,
                                 description="method")
        self.point = w.Dropdown(options=self._point_options(first), description="rate point",
                                layout=w.Layout(width="32em"))
        self.info = w.HTML()
        self.out = w.Output()
        self.widget = w.VBox([w.HBox([self.image, self.method]), self.point, self.info, self.out])
        self.method.observe(self._on_method, names="value")
        self.image.observe(self.update, names="value")
        self.point.observe(self.update, names="value")
        self.update()

    @staticmethod
    def _method_label(key: str) -> str:
        from .plots import METHOD_LABELS

        return METHOD_LABELS.get(key, key)

    def _point_options(self, method: str):
        return [(p.label, k) for k, p in enumerate(self.points[method])]

    def _on_method(self, change) -> None:
        options = self._point_options(change["new"])
        with self.point.hold_trait_notifications():
            self.point.options = options
            self.point.value = 0
        self.update()

    def view(self, i: int, method: str, k: int) -> dict:
        """Code test line ``i`` with ``method`` at point ``k``: reconstruction, bpp, text, accuracy."""
        key = (int(i), method, int(k))
        if key not in self._cache:
            point = self.points[method][k]
            x = self.images[i]
            recon, nbytes = code_point(point, x, self.device, self._models)
            text = self.reader(recon[None])[0]
            h, w = x.shape[-2:]
            self._cache[key] = {
                "index": int(i), "method": method, "point": point, "label": self.labels[i],
                "original": x, "reconstruction": recon, "bytes": nbytes, "bpp": metrics.bpp(nbytes, h, w),
                "text": text, "accuracy": metrics.accuracy(self.labels[i], text),
                "psnr": metrics.psnr(recon, x),
            }
        return self._cache[key]

    def update(self, *_) -> dict:
        """Recompute the current selection; draw it when live.  Returns :meth:`view`'s dict."""
        v = self.view(self.image.value, self.method.value, self.point.value)
        self.info.value = (f"<b>{self._method_label(v['method'])}</b>, {v['point'].setting}: "
                           f"<b>{v['bpp']:.3f} bpp</b> ({v['bytes']} bytes), PSNR {v['psnr']:.1f} dB<br>"
                           f"ground truth: <code>{v['label']}</code><br>"
                           f"OCR reads: <code>{v['text']}</code> — accuracy <b>{v['accuracy']:.2f}</b>")
        if self.live:
            import matplotlib.pyplot as plt
            from IPython.display import clear_output, display

            from .plots import image_grid

            with self.out:
                clear_output(wait=True)
                fig = image_grid([v["original"], v["reconstruction"]],
                                 ["original", f"{v['bpp']:.3f} bpp: '{v['text']}'"], ncols=2, cell_width=4.5)
                display(fig)
                plt.close(fig)
        return v

    def static(self, indices: Sequence[int] = (0, 1), target_bpp: float | None = None,
               methods: Sequence[str] | None = None):
        """The headless fallback: a grid (rows: test lines; columns: original and each method) and its rows.

        Each method is shown at its point closest to ``target_bpp`` in log rate
        (default: the geometric mean of the methods' lowest rates).  Returns
        ``(figure, rows)``; rows hold method, setting, bpp, text, accuracy.
        """
        from .plots import image_grid

        methods = [m for m in (methods or self.points) if m in self.points]
        indices = [i for i in indices if 0 <= i < len(self.images)] or [0]
        if target_bpp is None:
            lows = [min(p.bpp for p in self.points[m] if p.bpp) for m in methods
                    if any(p.bpp for p in self.points[m])]
            target_bpp = float(np.exp(np.mean(np.log(lows)))) if lows else 0.3

        def closest(m: str) -> int:
            pts = self.points[m]
            return min(range(len(pts)), key=lambda k: abs(math.log(pts[k].bpp or 1e-9) - math.log(target_bpp)))

        chosen = {m: closest(m) for m in methods}
        grid = [self.images[i] for i in indices]
        titles = [f"original: '{self.labels[i]}'" for i in indices]
        rows = []
        for m, k in chosen.items():  # one row of the grid per method, one column per test line
            for i in indices:
                v = self.view(i, m, k)
                grid.append(v["reconstruction"])
                titles.append(f"{self._method_label(m)}, {v['bpp']:.2f} bpp: '{v['text']}'")
                rows.append({"image": i, "method": m, "setting": v["point"].setting, "bpp": v["bpp"],
                             "text": v["text"], "ground_truth": v["label"], "accuracy": v["accuracy"]})
        fig = image_grid(grid, titles, ncols=len(indices), cell_width=3.6, fontsize=7,
                         suptitle=f"each method at its point closest to {target_bpp:.2f} bpp")
        return fig, rows


def show(explorer: Explorer, interactive: bool | None = None) -> bool:
    """Display the explorer's widgets when interactive; returns whether it did."""
    interactive = is_interactive() if interactive is None else interactive
    if interactive:
        from IPython.display import display

        display(explorer.widget)
    return bool(interactive)
