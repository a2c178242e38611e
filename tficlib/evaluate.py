"""Evaluation shared by every stage: decode saved models, read with an OCR engine, score, cache, compare.

Like CompressAI's ``utils/eval_model``, one layer between the models and the
notebooks:

* **where things are** — :func:`model_path`, :func:`checkpoint_path`,
  :func:`cache_path`; the test splits (:func:`test_lines`, :func:`test_patches`);
* **decoding** — :func:`decode` (real ``.tfic`` bitstreams of a saved codec:
  bpp from the bytes, header included, and the entropy-coded payload alone,
  PSNR, MS-SSIM) and :func:`reconstruct`;
* **reading and scoring** — :func:`evaluate_model` and
  :func:`evaluate_uncompressed` read the text lines with an OCR engine
  (:mod:`tficlib.ocr.engines`) and score them with TFIC's accuracy
  (Sec. IV-A) and CER/WER; :func:`evaluate_ocr` reads page patches.  Every
  stored evaluation carries a :func:`signature` (model file, test items,
  *engine* name, version and model hash), so a changed model, test split or
  engine is never scored from a stale cache, and each engine has its own
  cache (adding a judge never rescores another);
* **curves and comparisons** — :func:`curve` (a results.json method entry),
  Bjøntegaard values by name (:data:`BD_SPECS`, :func:`bd_value`,
  :func:`bd_summary`, :func:`bd_tables`) with paired-bootstrap intervals over
  the test images (:func:`bd_intervals`), and read-outs of one curve
  (:func:`rate_for_accuracy`, :func:`gap_to_curve` ...);
* **timing** — TFIC's Table I (:func:`runtime_table`).
"""

from __future__ import annotations

import math
import platform
import statistics
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from . import artifacts, codec, metrics, ocr

__all__ = [
    "BD_SPECS",
    "bd_intervals",
    "bd_summary",
    "bd_tables",
    "bd_value",
    "cache_path",
    "checkpoint_path",
    "closest_pair",
    "curve",
    "decode",
    "device_name",
    "evaluate_model",
    "evaluate_ocr",
    "evaluate_uncompressed",
    "gap_to_curve",
    "judge",
    "judged_table",
    "lowest_bpp_reaching",
    "model_path",
    "rate_for_accuracy",
    "read_in_chunks",
    "reconstruct",
    "runtime_table",
    "signature",
    "subset",
    "test_lines",
    "test_patches",
    "text_scores",
    "visual_comparison",
    "without_evals",
]


#: Bumped when what a stored evaluation holds changes, so that older ones are computed again.
EVAL_VERSION = 2


# =========================================================================== where things are
def model_path(cfg, stage: str, method: str, k) -> Path:
    """``<stage_dir>/models/<method>_<k>.pt`` (the CLI's naming: mse_0.pt, tfic_2.pt ...)."""
    return cfg.stage_dir(stage) / "models" / f"{method}_{k}.pt"


def checkpoint_path(cfg, stage: str, run: str) -> Path:
    """``<stage_dir>/checkpoints/<run>.ckpt``: the resumable training state of one run."""
    return cfg.stage_dir(stage) / "checkpoints" / f"{run}.ckpt"


def cache_path(cfg, stage: str, key: str, engine: str | None = None) -> Path:
    """``<stage_dir>/eval/<engine>/<key>.json``: a stored evaluation (``engine`` None: ``eval/<key>.json``)."""
    base = cfg.stage_dir(stage) / "eval"
    return (base / engine if engine else base) / f"{key}.json"


def subset(dataset, n: int | None):
    """The first ``n`` items of ``dataset`` (all when ``n`` is None): a list of (image, label)."""
    n = len(dataset) if n is None else min(int(n), len(dataset))
    return [dataset[i] for i in range(n)]


def test_lines(cfg, split: str = "test"):
    """The text-line test split as every stage evaluates it: the first ``cfg.eval.n_test`` lines.

    Returns ``(images (N,3,H,W) float in [0,1], labels)``.  A missing dataset
    raises :class:`~tficlib.artifacts.MissingArtifact` naming notebook 00.
    """
    from .data import textlines

    items = subset(textlines.load_split(cfg, split), cfg.eval.n_test)
    return torch.stack([x for x, _ in items]), [lab for _, lab in items]


def test_patches(cfg, n: int | None = None) -> dict:
    """The first ``n`` (default ``cfg.eval.n_test``, None: all) test patches as tensors.

    dict(clean (N,3,64,256), degraded, texts, words, dataset).
    """
    from .data import pages

    test = pages.load_patches(cfg, "test")
    limit = cfg.eval.n_test if n is None else n
    count = len(test) if limit is None else min(len(test), int(limit))
    items = [test[i] for i in range(count)]
    return {"clean": torch.stack([it["clean"] for it in items]),
            "degraded": torch.stack([it["degraded"] for it in items]),
            "texts": [it["text"] for it in items], "words": [it["words"] for it in items], "dataset": test}


# =========================================================================== signatures, decoding
def _labels_crc(labels: Sequence[str]) -> int:
    return zlib.crc32("\n".join(labels).encode())


def signature(path: Path | None, labels: Sequence[str], stage: str | None = None, engine: str | None = None) -> dict:
    """What a stored evaluation is valid for: the model file's SHA-256 (``path`` None: uncompressed),
    the number of images, a CRC of their labels and, with ``engine``, that OCR engine's
    :meth:`~tficlib.ocr.engines.Engine.identity` (name, version, model hash); see
    :func:`tficlib.artifacts.cached_json`."""
    sig = {"version": EVAL_VERSION, "n": len(labels), "labels": _labels_crc(labels)}
    if path is not None:
        sig = {"model_sha256": artifacts.sha256_file(artifacts.require(path, stage)), **sig}
    if engine is not None:
        sig["engine"] = ocr.get_engine(engine).identity()
    return sig


def decode(cfg, path, items, device, stage: str | None = None, ms_ssim: bool = True):
    """Real bitstreams of the saved codec ``path`` on ``items`` -> (:func:`tficlib.codec.evaluate_codec`
    result, reconstructions (N, 3, H, W) clipped to [0, 1], the model's meta)."""
    model, meta = codec.load_model(path, stage=stage, device=device)
    ev = codec.evaluate_codec(model, items, batch_size=cfg.eval.batch_size, keep_reconstructions=True,
                              ms_ssim=ms_ssim)
    return ev, torch.cat(ev["reconstructions"]).clamp(0, 1), meta


def reconstruct(path, images: torch.Tensor, device) -> torch.Tensor:
    """Decode ``images`` (B,3,H,W) through real bitstreams of the saved codec at ``path``."""
    model, _ = codec.load_model(path, device=device)
    out = [codec.decompress(model, codec.compress(model, x[None].to(device))).cpu() for x in images]
    return torch.cat(out).clamp(0, 1)


# =========================================================================== reading and scoring
def read_in_chunks(reader: Callable, images, chunk: int = 16, desc: str | None = None) -> list[str]:
    """``reader`` over ``images`` (tensor or list) in chunks, with a tqdm bar when ``desc`` is given."""
    n = len(images)
    starts = range(0, n, max(1, int(chunk)))
    if desc:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, leave=False)
    out: list[str] = []
    for s in starts:
        out += list(reader(images[s:s + chunk]))
    if len(out) != n:
        raise ValueError(f"the reader returned {len(out)} texts for {n} images")
    return out


def text_scores(labels: Sequence[str], preds: Sequence[str]) -> dict:
    """TFIC accuracy (case-sensitive and not) and CER/WER on the whole text, with their per-image values."""
    return {**metrics.text_metrics(labels, preds),
            "per_image_accuracy": [metrics.accuracy(g, p) for g, p in zip(labels, preds)],
            "per_image_cer": [metrics.cer(g, p) for g, p in zip(labels, preds)],
            "per_image_wer": [metrics.wer(g, p) for g, p in zip(labels, preds)]}


def _engine(name: str | None, device) -> ocr.Engine:
    return ocr.get_engine(name or ocr.TRAINING_ENGINE, device)


def evaluate_uncompressed(cfg, items, device, stage: str, engine: str | None = None, split: str = "test") -> dict:
    """OCR of the original test lines (the horizontal line of every rate figure), cached per engine and split."""
    eng = _engine(engine, device)
    labels = [lab for _, lab in items]
    cache = cache_path(cfg, stage, "uncompressed" if split == "test" else f"uncompressed.{split}", eng.name)
    sig = signature(None, labels, engine=eng.name)
    data = artifacts.cached_json(cache, sig)
    if data is not None:
        return data
    preds = read_in_chunks(eng.read_lines, torch.stack([x for x, _ in items]))
    data = {"signature": sig, "engine": eng.name, "preds": preds, **text_scores(labels, preds)}
    artifacts.write_json(cache, data)
    return data


def evaluate_model(cfg, path, items, device, stage: str | None = None, engine: str | None = None,
                   refresh: bool = False, decoded=None, split: str = "test") -> dict:
    """Real-bitstream evaluation of a saved codec on ``items`` (list of (image, label)), read by ``engine``.

    Means over images: ``bpp`` (real bytes, header included), ``bpp_payload``
    (entropy-coded bytes only), ``header_bytes``, ``bpp_estimated`` (eval-mode
    rounded likelihoods), ``psnr``, ``ms_ssim``, and the engine's reading of
    each decoded 8-bit line (``read_lines``): ``accuracy`` / ``accuracy_ci``
    (TFIC Sec. IV-A), ``cer`` / ``wer`` on the line, ``preds``; per-image
    lists for the bootstrap.  ``engine`` defaults to the training engine
    (EasyOCR).  Cached in ``<stage_dir>/eval/<engine>/<model stem>.json``
    (``<model stem>.<split>.json`` for another ``split`` than ``test``) under
    :func:`signature`.  ``decoded``: the ``(codec evaluation,
    reconstructions)`` of :func:`decode`, when the caller has them already.
    """
    path = Path(path)
    stage = stage or artifacts.stage_of(path)
    eng = _engine(engine, device)
    labels = [lab for _, lab in items]
    sig = signature(path, labels, stage, eng.name)
    cache = cache_path(cfg, stage, path.stem if split == "test" else f"{path.stem}.{split}", eng.name)
    data = None if refresh else artifacts.cached_json(cache, sig)
    if data is not None:
        return data
    if decoded is None:
        ev, recon, meta = decode(cfg, path, items, device, stage)
    else:
        (ev, recon), meta = decoded, {}
    preds = read_in_chunks(eng.read_lines, recon)
    mean = ev["mean"]
    data = {
        "signature": sig, "model": str(path), "engine": eng.name,
        "meta": {k: v for k, v in meta.items() if k != "fingerprint"},
        "bpp": mean["bpp"], "bpp_payload": mean["bpp_payload"], "bpp_estimated": mean["bpp_estimated"],
        "header_bytes": mean["header_bytes"], "psnr": mean["psnr"], "ms_ssim": mean.get("ms_ssim"), "preds": preds,
        "per_image_bpp": ev["bpp"], "per_image_bpp_payload": ev["bpp_payload"], "per_image_psnr": ev["psnr"],
        **text_scores(labels, preds),
    }
    artifacts.write_json(cache, data)
    return data


def evaluate_ocr(images: torch.Tensor, texts: Sequence[str], clean: torch.Tensor | None = None,
                 progress: bool = False, desc: str = "OCR", engine: str | None = None, device=None) -> dict:
    """Read page patches with an engine's full pipeline (``read_text``, detection first) and score them.

    Returns ``accuracy`` (case-sensitive, TFIC Sec. IV-A), ``accuracy_ci``,
    ``per_image_accuracy``, ``psnr`` against ``clean`` (if given) and the
    ``predictions``.  The same function scores every row of the
    dequantization tables.
    """
    if len(images) != len(texts):
        raise ValueError(f"{len(images)} images but {len(texts)} texts")
    eng = _engine(engine, device)
    items = range(len(images))
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc=desc, leave=False)
    preds = [eng.read_text(images[i:i + 1].clamp(0, 1))[0] for i in items]
    out = {
        "accuracy": metrics.mean_accuracy(texts, preds),
        "accuracy_ci": metrics.mean_accuracy(texts, preds, case_sensitive=False),
        "per_image_accuracy": [metrics.accuracy(t, p) for t, p in zip(texts, preds)],
        "predictions": preds,
    }
    if clean is not None:
        out["psnr"] = metrics.psnr(images.clamp(0, 1), clean)
    return out


# =========================================================================== curves
#: The metrics a curve (results.json method entry) carries, in this order, when its evaluations have them.
CURVE_KEYS = ("bpp", "bpp_payload", "bpp_estimated", "header_bytes", "psnr", "ms_ssim", "accuracy", "accuracy_ci",
              "cer", "wer")


def curve(evals: Sequence[dict], description: str, keys: Sequence[str] = CURVE_KEYS, **params) -> dict:
    """A results.json method entry: lists aligned by rate point of every metric the evaluations have,
    plus the training parameters (``lambda=[...]``, ``gamma=[...]`` ...)."""
    out: dict = {"description": description}
    for key in keys:
        if any(e.get(key) is not None for e in evals):
            out[key] = [e.get(key) for e in evals]
    out.update({k: list(v) for k, v in params.items()})
    return out


# =========================================================================== Bjøntegaard values
_LOWER = {"higher_is_better": False}
#: name -> (BD function, metric, options): every BD value the project reports, one place.
BD_SPECS: dict[str, tuple[Callable, str, dict]] = {
    "bd_accuracy": (metrics.bd_quality_result, "accuracy", {}),
    "bd_rate_accuracy": (metrics.bd_rate_result, "accuracy", {}),
    "bd_rate_cer": (metrics.bd_rate_result, "cer", _LOWER),
    "bd_rate_wer": (metrics.bd_rate_result, "wer", _LOWER),
    "bd_cer": (metrics.bd_quality_result, "cer", {**_LOWER, "relative": True}),
    "bd_wer": (metrics.bd_quality_result, "wer", {**_LOWER, "relative": True}),
    "bd_psnr_db": (metrics.bd_quality_result, "psnr", {}),
    "bd_psnr_percent": (metrics.bd_quality_result, "psnr", {"relative": True}),
    "bd_rate_psnr": (metrics.bd_rate_result, "psnr", {}),
}


def _points(entry: dict, metric: str, rate: str) -> tuple[list[float], list[float]]:
    pts = [(float(r), float(q)) for r, q in zip(entry.get(rate) or [], entry.get(metric) or [])
           if r is not None and q is not None and math.isfinite(float(r)) and math.isfinite(float(q)) and r > 0]
    return [p[0] for p in pts], [p[1] for p in pts]


def bd_value(ref: dict, test: dict, key: str, rate: str = "bpp") -> metrics.BDResult:
    """The BD value ``key`` (:data:`BD_SPECS`) of curve ``test`` against ``ref`` on the ``rate`` axis.

    ``rate`` is ``bpp`` (real bytes) or ``bpp_payload``.  Points with a
    missing value are left out; fewer than two points, or curves that
    overlap too little, give NaN with the reason (:mod:`tficlib.metrics`).
    """
    if key not in BD_SPECS:
        raise ValueError(f"unknown BD value {key!r}; known: {', '.join(BD_SPECS)}")
    fn, metric, options = BD_SPECS[key]
    for name, entry in (("reference", ref), ("test", test)):
        if metric not in entry or rate not in entry:
            return metrics.BDResult(float("nan"), f"the {name} has no {metric if metric not in entry else rate}")
    r1, q1 = _points(ref, metric, rate)
    r2, q2 = _points(test, metric, rate)
    if len(r1) < 2 or len(r2) < 2:
        return metrics.BDResult(float("nan"), f"fewer than two {metric} points")
    return fn(r1, q1, r2, q2, **options)


def bd_summary(ref: dict, test: dict, keys: Sequence[str] = ("bd_accuracy", "bd_rate_accuracy"),
               rate: str = "bpp") -> dict:
    """``{key: value or None, key_reason: None or why}`` for each BD value in ``keys`` (TFIC's accuracy axis)."""
    out = {}
    for key in keys:
        res = bd_value(ref, test, key, rate)
        out[key] = res.value if res.ok else None
        out[key + "_reason"] = res.reason
    return out


def bd_tables(ref: dict, test: dict, keys: Sequence[str] = ("bd_rate_cer", "bd_rate_wer", "bd_cer", "bd_wer",
                                                               "bd_psnr_db", "bd_psnr_percent", "bd_accuracy"),
              rate: str = "bpp") -> dict:
    """``{key: {"value", "reason"}}`` for each BD value in ``keys`` (Lai et al. Tables 1 and 2 by default)."""
    out = {}
    for key in keys:
        res = bd_value(ref, test, key, rate)
        out[key] = {"value": res.value if res.ok else None, "reason": res.reason}
    return out


def bd_intervals(ref_evals: Sequence[dict], test_evals: Sequence[dict], keys: Sequence[str] = ("bd_accuracy",
                 "bd_rate_accuracy"), images: Sequence[int] | None = None, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95, rate: str = "bpp") -> dict:
    """Paired-bootstrap intervals (:func:`tficlib.metrics.bd_bootstrap`) of BD values over the test images.

    ``ref_evals`` / ``test_evals``: the evaluations of each curve's points on
    the same test images, with ``per_image_<rate>`` and ``per_image_<metric>``.
    ``images``: when a metric's per-image list covers only some images (Lai's
    region CER: the images with a kept text region), their indices; those
    images count for the rate and not for the metric, as in the reported means.
    """
    out = {}
    for key in keys:
        if key not in BD_SPECS:
            raise ValueError(f"unknown BD value {key!r}; known: {', '.join(BD_SPECS)}")
        fn, metric, options = BD_SPECS[key]

        def per_image(e: dict, metric=metric, key=key) -> list[float]:
            values = e.get(f"per_image_{metric}")
            if values is None:
                raise ValueError(f"{e.get('model', 'an evaluation')} has no per-image {metric}: no interval for {key}")
            n = len(e[f"per_image_{rate}"])
            if len(values) == n:
                return values
            if images is None or len(values) != len(images):
                raise ValueError(f"{e.get('model', 'an evaluation')}: {len(values)} per-image {metric} values "
                                 f"for {n} images" + ("" if images is None else f" ({len(images)} with text)"))
            full = [float("nan")] * n
            for i, v in zip(images, values):
                full[int(i)] = v
            return full

        curves = []
        for evals in (ref_evals, test_evals):
            curves += [[e[f"per_image_{rate}"] for e in evals], [per_image(e) for e in evals]]
        out[key] = metrics.bd_bootstrap(fn, *curves, n_boot=n_boot, level=level, seed=seed, **options)
    return out


# =========================================================================== judges
def judge(cfg, curves: dict[str, Sequence[Path]], items, device, stage_of_uncompressed: str,
          engines: Sequence[str] | None = None, comparisons: Sequence[tuple[str, str]] = (),
          keys: Sequence[str] = ("bd_accuracy", "bd_rate_accuracy"), seed: int = 0, progress: bool = False,
          split: str = "test") -> dict:
    """Every curve read by every OCR engine: the codecs' rate–accuracy curves per judge, and BD values between them.

    ``curves``: ``{method: [model paths by rate point]}``; ``items``: the test
    ``(image, label)`` pairs; ``engines``: default every available engine
    (:func:`tficlib.ocr.judges`; the training engine first).  For each engine:
    ``uncompressed`` (its reading of the originals, cached under
    ``stage_of_uncompressed``), ``curves`` (:func:`curve` entries),
    ``evals`` (per-point evaluations, cached per engine), and for each
    ``(reference, test)`` in ``comparisons`` the BD values ``keys`` on real
    bytes (``bd``) and on the entropy-coded payload (``bd_payload``), with
    paired-bootstrap intervals over the test items (``bd_ci``), and ``seconds``:
    the wall-clock time this engine took in this call (cached readings cost
    almost nothing).  ``skipped`` names the engines that cannot run here.
    """
    names, skipped = ocr.judges(engines)
    out: dict = {"engines": names, "skipped": skipped, "by_engine": {}}
    for name in names:
        start = time.perf_counter()
        entry: dict = {"uncompressed": {k: v for k, v in evaluate_uncompressed(cfg, items, device, stage_of_uncompressed,
                                                                                 engine=name, split=split).items()
                                        if k in ("accuracy", "accuracy_ci", "cer", "wer")},
                       "curves": {}, "evals": {}, "bd": {}, "bd_payload": {}, "bd_ci": {}}
        for method, paths in curves.items():
            it = paths
            if progress:
                from tqdm.auto import tqdm

                it = tqdm(list(paths), desc=f"{method}: decode + {name}", leave=False)
            evals = [evaluate_model(cfg, p, items, device, engine=name, split=split) for p in it]
            entry["evals"][method] = evals
            entry["curves"][method] = curve(evals, f"{method}, read by {name}")
        for ref, test in comparisons:
            pair = f"{test} vs {ref}"
            entry["bd"][pair] = bd_summary(entry["curves"][ref], entry["curves"][test], keys)
            entry["bd_payload"][pair] = bd_summary(entry["curves"][ref], entry["curves"][test], keys, rate="bpp_payload")
            entry["bd_ci"][pair] = bd_intervals(entry["evals"][ref], entry["evals"][test], keys,
                                                n_boot=cfg.eval.bootstrap, seed=seed)
        entry["seconds"] = round(time.perf_counter() - start, 1)
        out["by_engine"][name] = entry
    return out


def judged_table(judged: dict, key: str = "bd_accuracy") -> list[dict]:
    """One row per comparison, one column per engine: ``key`` with its interval (for a Markdown table)."""
    rows: dict[str, dict] = {}
    for name, entry in judged["by_engine"].items():
        for pair, values in entry["bd"].items():
            ci = entry["bd_ci"].get(pair, {}).get(key, {})
            row = rows.setdefault(pair, {"comparison": pair})
            row[name] = values.get(key)
            row[f"{name} 95 % interval"] = None if ci.get("low") is None else f"{ci['low']:+.3f} to {ci['high']:+.3f}"
            row[f"{name} (payload)"] = entry["bd_payload"][pair].get(key)
    return list(rows.values())


def without_evals(judged: dict) -> dict:
    """:func:`judge`'s result without the per-point evaluations (for results.json)."""
    return {**judged, "by_engine": {n: {k: v for k, v in e.items() if k != "evals"}
                                    for n, e in judged["by_engine"].items()}}


# =========================================================================== read-outs of one curve
def rate_for_accuracy(entry: dict, target: float) -> float | None:
    """Lowest bpp at which a curve reaches ``target`` accuracy (log-linear between measured points).

    Uses the operational (monotone) curve; ``None`` when no point reaches ``target``.
    """
    r, q, _ = metrics.operational_curve(entry["bpp"], entry["accuracy"])
    if q[-1] < target:
        return None
    i = int(np.argmax(q >= target))
    if i == 0:
        return float(r[0])
    t = (target - q[i - 1]) / (q[i] - q[i - 1])
    return float(math.exp(math.log(r[i - 1]) + t * (math.log(r[i]) - math.log(r[i - 1]))))


def lowest_bpp_reaching(entry: dict, target: float) -> float | None:
    """Lowest *measured* bpp whose accuracy is >= ``target`` (None if none)."""
    ok = [b for b, a in zip(entry["bpp"], entry["accuracy"]) if a is not None and a >= target]
    return min(ok) if ok else None


def gap_to_curve(reference: dict, bpp: float, value: float, metric: str = "cer") -> float | None:
    """``value`` minus the reference curve's ``metric`` at the same rate (linear in log-bpp).

    Negative: the point lies below (better than, for CER) the reference curve.
    None when ``bpp`` is outside the reference's rate range or a value is missing.
    """
    pts = sorted((b, q) for b, q in zip(reference["bpp"], reference[metric]) if b is not None and q is not None)
    if bpp is None or value is None or len(pts) < 2 or not pts[0][0] <= bpp <= pts[-1][0]:
        return None
    xs = np.log([b for b, _ in pts])
    return float(value - np.interp(math.log(bpp), xs, [q for _, q in pts]))


def closest_pair(ref: dict, test: dict) -> tuple[int, int]:
    """Indices (i in ref, j in test) of the two rate points closest in log bpp (for a visual comparison)."""
    best = None
    for i, a in enumerate(ref["bpp"]):
        for j, b in enumerate(test["bpp"]):
            d = abs(math.log(a) - math.log(b))
            if best is None or d < best[0]:
                best = (d, i, j)
    return best[1], best[2]


def visual_comparison(paths: dict[str, Path], items, device, indices=(0, 1, 2)):
    """A visual comparison (TFIC Fig. 4, Lai et al. Fig. 3): rows = images, columns = original and each codec in ``paths``, recognized text under each.

    ``paths``: ``{"MSE 0.21 bpp": path, "TFIC 0.20 bpp": path}``.  Decoding is
    through real bitstreams; the text is the training engine's reading of the 8-bit image.
    """
    images = torch.stack([items[i][0] for i in indices])
    labels = [items[i][1] for i in indices]
    columns = {"original": images}
    for name, p in paths.items():
        columns[name] = reconstruct(p, images, device)
    reader = _engine(None, device).read_lines
    texts = {name: reader(x) for name, x in columns.items()}
    grid, titles = [], []
    for r in range(len(indices)):
        for name, x in columns.items():
            grid.append(x[r])
            acc = metrics.accuracy(labels[r], texts[name][r])
            titles.append(f"{name}: '{texts[name][r]}' (acc {acc:.2f})")
    from . import plots

    return plots.image_grid(grid, titles, ncols=len(columns), cell_width=3.6,
                            suptitle="ground truth: " + " | ".join(repr(lab) for lab in labels))


# =========================================================================== Table I
def device_name(device) -> str:
    """A readable name of ``device`` (GPU model, or CPU model and thread count)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} (CPU, {torch.get_num_threads()} torch threads)"


def runtime_table(cfg, path, items, device, n: int | None = None, warmup: int | None = None) -> dict:
    """TFIC Table I: encoder time vs OCR time per image, mean ± std in ms, same device.

    Encoder = :func:`tficlib.codec.compress` (padding, g_a, h_a, entropy coding
    of ẑ and ŷ to bytes); OCR = the training engine's reading of the same
    uncompressed image (what the accuracy uses).  Each of the first ``n``
    images is timed once after ``warmup`` untimed runs of both, with torch's
    thread count fixed for the whole measurement.
    """
    n = cfg.eval.timing_images if n is None else n
    warmup = cfg.eval.timing_warmup if warmup is None else warmup
    items = items[:n]
    model, _ = codec.load_model(path, device=device)
    reader = _engine(None, device).read_lines
    threads = torch.get_num_threads()
    dev = torch.device(device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    x0 = items[0][0][None].to(dev)
    for _ in range(max(1, warmup)):
        codec.compress(model, x0)
        reader(x0)
    enc, rec = [], []
    with torch.no_grad():
        for x, _ in items:
            x = x[None].to(dev)
            sync()
            t0 = time.perf_counter()
            codec.compress(model, x)
            sync()
            t1 = time.perf_counter()
            reader(x)
            sync()
            t2 = time.perf_counter()
            enc.append(1e3 * (t1 - t0))
            rec.append(1e3 * (t2 - t1))
    torch.set_num_threads(threads)
    e = [statistics.fmean(enc), statistics.pstdev(enc)]
    o = [statistics.fmean(rec), statistics.pstdev(rec)]
    return {"encoder": e, "ocr": o, "ratio": e[0] / o[0], "n": len(items), "warmup": warmup,
            "threads": threads, "device": device_name(dev), "model": str(path)}
