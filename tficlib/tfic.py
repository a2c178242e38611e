"""The TFIC recipe (Della Fiore et al., EUSIPCO 2025, Sec. III–IV) as stage functions.

Notebooks 01 and 02 call these; the training itself is :func:`tficlib.train.train`.

* Stage 1 (:func:`train_mse_models`, γ = 0): L = R(ŷ, ẑ) + λ·255²·MSE(x, x̂)
  at every λ of ``cfg.codec.lambdas`` — from scratch (``lambda_steps = 0``,
  the paper) or fine-tuned from one base model trained at ``base_lambda``
  (the ``cpu``/``smoke`` profiles).
* Stage 2 (:func:`finetune`, λ = 0): L = R(ŷ, ẑ) + γ·L_OCR(G(x), T(x̂))
  from a stage-1 model, the OCR frozen; :func:`paper_recipe` (γ = 0.1 from
  every stage-1 model), :func:`gamma_sweep` (our rate knob) and
  :func:`mse_controls` (the same extra steps with the stage-1 loss).
* Evaluation on real bitstreams (:func:`evaluate_model`): real bpp (header
  included), the eval-mode estimate, PSNR, MS-SSIM and the OCR accuracy of
  Sec. IV-A (case-sensitive and -insensitive), cached per model file.
* Table I (:func:`runtime_table`), BD numbers (:func:`bd_summary`) and the
  operating-point read-outs (:func:`rate_for_accuracy`).

Checkpoints: ``<stage_dir>/checkpoints/<run>.ckpt`` (training state, resumable);
finished codecs: ``<stage_dir>/models/<method>_<k>.pt`` (:func:`tficlib.codec.save_model`).
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import artifacts, codec, metrics, ocr
from . import train as training

__all__ = [
    "STAGE1",
    "STAGE2",
    "Run",
    "bd_intervals",
    "bd_summary",
    "checkpoint_path",
    "curve",
    "decode",
    "device_name",
    "evaluate_model",
    "evaluate_uncompressed",
    "finetune",
    "gamma_sweep",
    "model_path",
    "mse_controls",
    "new_codec",
    "paper_recipe",
    "rate_for_accuracy",
    "reconstruct",
    "runtime_table",
    "signature",
    "subset",
    "train_mse_models",
]

STAGE1 = "01_mse_pretraining"
STAGE2 = "02_tfic_ocr_finetuning"


# --------------------------------------------------------------------------- paths, runs
def model_path(cfg, stage: str, method: str, k) -> Path:
    """``<stage_dir>/models/<method>_<k>.pt`` (the CLI's naming: mse_0.pt, tfic_2.pt ...)."""
    return cfg.stage_dir(stage) / "models" / f"{method}_{k}.pt"


def checkpoint_path(cfg, stage: str, run: str) -> Path:
    """``<stage_dir>/checkpoints/<run>.ckpt``: the resumable training state of one run."""
    return cfg.stage_dir(stage) / "checkpoints" / f"{run}.ckpt"


def new_codec(cfg, seed: int = 0):
    """A freshly initialised codec of the profile (``cfg.codec.model``, N, M), seeded."""
    torch.manual_seed(training._mix(seed, 0x1417))
    return codec.build_model(cfg.codec.model, cfg.codec.N, cfg.codec.M)


@dataclass
class Run:
    """One training run: its name, saved model, log and final auxiliary loss."""

    name: str
    path: Path
    log: list[dict]
    params: dict
    aux_loss: float | None = None
    seconds: float = 0.0
    reused: bool = False
    resumed_from: int | None = None
    extra: dict = field(default_factory=dict)


def _run_seed(seed: int, name: str) -> int:
    return training._mix(seed, zlib.crc32(name.encode()))


def _fit(cfg, stage, name, model, objective, dataset, *, steps, batch_size, lr, device, seed, retrain, schedule):
    """``training.train`` with stage 1's optimizer settings; ``schedule`` names the amount that set ``steps``."""
    c = cfg.codec
    return training.train(
        model, objective, dataset, steps=steps, checkpoint=checkpoint_path(cfg, stage, name),
        batch_size=batch_size, lr=lr, aux_lr=c.aux_lr, clip_max_norm=c.clip_max_norm,
        seed=_run_seed(seed, name), checkpoint_every=c.checkpoint_every, aux_steps=c.aux_steps,
        lr_decay_start=c.lr_decay_start, lr_decay_to=0.1, retrain=retrain, device=device, desc=name,
        meta={"stage": stage, "run": name, "profile": cfg.name, "schedule": schedule},
    )


def _saved_with(path: Path, meta: dict) -> bool:
    """True when ``path`` holds a model saved with ``meta`` (a reused run need not be saved again).

    The same name can hold another run's model (``tfic_2`` of a γ sweep that
    started from another stage-1 model), so the file's existence is not enough.
    """
    if not path.exists():
        return False
    saved = artifacts.load_checkpoint(path).get("meta") or {}
    normal = json.loads(json.dumps(meta, default=str))
    return {k: saved.get(k) for k in normal} == normal


def _save(cfg, stage, method, k, result, params) -> Run:
    path = model_path(cfg, stage, method, k)
    meta = {"stage": stage, "method": method, "k": k, "profile": cfg.name, **params,
            "steps": result.steps, "aux_loss": result.aux_loss}
    if not (result.reused and _saved_with(path, meta)):
        codec.save_model(path, result.model, meta)
    return Run(f"{method}_{k}", path, result.log, params, result.aux_loss, result.meta.get("seconds", 0.0),
               result.reused, result.resumed_from)


# --------------------------------------------------------------------------- stage 1
def train_mse_models(cfg, train_set, device, seed: int = 0, retrain: bool = False) -> tuple[Run | None, list[Run]]:
    """Stage 1 (γ = 0): one MSE codec per λ of ``cfg.codec.lambdas`` -> ``models/mse_<k>.pt``.

    With ``lambda_steps > 0`` a base model is trained at ``base_lambda`` for
    ``base_steps`` and each λ is fine-tuned from it for ``lambda_steps``;
    with ``lambda_steps = 0`` (paper) each λ is trained from scratch for
    ``base_steps``.  Returns ``(base_run or None, runs)``.
    """
    c = cfg.codec
    base_state, base_run = None, None
    if c.lambda_steps > 0:
        res = _fit(cfg, STAGE1, "mse_base", new_codec(cfg, seed), training.rate_distortion_objective(c.base_lambda),
                   train_set, steps=c.base_steps, batch_size=c.batch_size, lr=c.lr, device=device, seed=seed,
                   retrain=retrain, schedule="codec.base_steps")
        base_state = {k: v.detach().clone() for k, v in res.model.state_dict().items()}
        base_run = Run("mse_base", res.checkpoint, res.log, {"lambda": c.base_lambda}, res.aux_loss,
                       res.meta.get("seconds", 0.0), res.reused, res.resumed_from)
    runs = []
    for k, lam in enumerate(c.lambdas):
        model = new_codec(cfg, seed)
        if base_state is not None:
            training.load_model_state(model, base_state)
        res = _fit(cfg, STAGE1, f"mse_{k}", model, training.rate_distortion_objective(lam), train_set,
                   steps=c.lambda_steps or c.base_steps, batch_size=c.batch_size, lr=c.lr, device=device,
                   seed=seed, retrain=retrain, schedule="codec.lambda_steps" if c.lambda_steps else "codec.base_steps")
        runs.append(_save(cfg, STAGE1, "mse", k, res, {"lambda": lam, "from": "mse_base" if base_state else None}))
    return base_run, runs


# --------------------------------------------------------------------------- stage 2
def _stage1_model(cfg, k: int, device):
    model, _ = codec.load_model(model_path(cfg, STAGE1, "mse", k), stage=STAGE1, device=device)
    return model


def finetune(cfg, train_set, device, start_k: int, objective, name: str, seed: int = 0,
             retrain: bool = False):
    """``cfg.tfic.steps`` steps of ``objective`` from the stage-1 model ``mse_<start_k>``."""
    t = cfg.tfic
    model = _stage1_model(cfg, start_k, device)
    return _fit(cfg, STAGE2, name, model, objective, train_set, steps=t.steps, batch_size=t.batch_size,
                lr=t.lr, device=device, seed=seed, retrain=retrain, schedule="tfic.steps")


def _tfic_name(k: int, gamma: float) -> str:
    return f"tfic_from{k}_gamma{gamma:g}"


def paper_recipe(cfg, train_set, device, seed: int = 0, retrain: bool = False) -> list[Run]:
    """The paper's stage 2 from every stage-1 model: λ = 0, γ = ``cfg.tfic.gamma`` (0.1).

    Saved as ``models/tfic_paper_<k>.pt``.  With λ = 0 the loss does not
    depend on where a run starts, so all runs drift towards one operating point.
    """
    g = cfg.tfic.gamma
    runs = []
    for k in range(len(cfg.codec.lambdas)):
        res = finetune(cfg, train_set, device, k, training.tfic_objective(g, 0.0, ste=cfg.tfic.ste),
                       _tfic_name(k, g), seed, retrain)
        runs.append(_save(cfg, STAGE2, "tfic_paper", k, res, {"gamma": g, "lambda": 0.0, "start": k}))
    return runs


def gamma_sweep(cfg, train_set, device, seed: int = 0, retrain: bool = False) -> list[Run]:
    """Our rate knob at λ = 0: one run per γ of ``cfg.tfic.gammas`` -> ``models/tfic_<j>.pt``.

    Every run starts from the stage-1 model ``cfg.tfic.sweep_start_index``; the
    run with the paper's γ is the paper-recipe run from that model (reused).
    """
    start = range(len(cfg.codec.lambdas))[cfg.tfic.sweep_start_index]
    runs = []
    for j, g in enumerate(cfg.tfic.gammas):
        res = finetune(cfg, train_set, device, start, training.tfic_objective(g, 0.0, ste=cfg.tfic.ste),
                       _tfic_name(start, g), seed, retrain)
        runs.append(_save(cfg, STAGE2, "tfic", j, res, {"gamma": g, "lambda": 0.0, "start": start}))
    return runs


def mse_controls(cfg, train_set, device, seed: int = 0, retrain: bool = False) -> list[Run]:
    """Controls: each stage-1 model gets ``cfg.tfic.steps`` more steps of its own stage-1 loss.

    Same batch size and learning rate as the TFIC runs -> ``models/mse_<k>.pt`` of stage 02.
    """
    runs = []
    for k, lam in enumerate(cfg.codec.lambdas):
        res = finetune(cfg, train_set, device, k, training.rate_distortion_objective(lam), f"mse_control_{k}",
                       seed, retrain)
        runs.append(_save(cfg, STAGE2, "mse", k, res, {"lambda": lam, "start": k, "control": True}))
    return runs


# --------------------------------------------------------------------------- evaluation
def subset(dataset, n: int | None):
    """The first ``n`` items of ``dataset`` (all when ``n`` is None): a list of (image, label)."""
    n = len(dataset) if n is None else min(int(n), len(dataset))
    return [dataset[i] for i in range(n)]


def _text_scores(labels, preds) -> dict:
    return {
        "accuracy": metrics.mean_accuracy(labels, preds),
        "accuracy_ci": metrics.mean_accuracy(labels, preds, case_sensitive=False),
        "per_image_accuracy": [metrics.accuracy(g, p) for g, p in zip(labels, preds)],
    }


def _cache_path(cfg, stage: str, key: str) -> Path:
    return cfg.stage_dir(stage) / "eval" / f"{key}.json"


def evaluate_uncompressed(cfg, items, device, stage: str = STAGE1) -> dict:
    """OCR accuracy on the original test images (the horizontal line of Fig. 3), cached."""
    labels = [lab for _, lab in items]
    cache = _cache_path(cfg, stage, "uncompressed")
    sig = {"n": len(items), "labels": zlib.crc32("\n".join(labels).encode())}
    data = artifacts.cached_json(cache, sig)
    if data is not None:
        return data
    images = torch.stack([x for x, _ in items])
    preds = ocr.read_lines(images, device=device)
    data = {"signature": sig, "preds": preds, **_text_scores(labels, preds)}
    artifacts.write_json(cache, data)
    return data


def signature(path: Path, labels: list[str], stage: str | None = None) -> dict:
    """What a stored evaluation of the codec ``path`` on ``labels`` is valid for: the model file's SHA-256,
    the number of images and a CRC of their labels (see :func:`tficlib.artifacts.cached_json`)."""
    return {"model_sha256": artifacts.sha256_file(artifacts.require(path, stage)), "n": len(labels),
            "labels": zlib.crc32("\n".join(labels).encode())}


def decode(cfg, path, items, device, stage: str | None = None, ms_ssim: bool = True):
    """Real bitstreams of the saved codec ``path`` on ``items`` -> (``codec.evaluate_codec`` result,
    reconstructions (N, 3, H, W) clipped to [0, 1], the model's meta)."""
    model, meta = codec.load_model(path, stage=stage, device=device)
    ev = codec.evaluate_codec(model, items, batch_size=cfg.eval.batch_size, keep_reconstructions=True,
                              ms_ssim=ms_ssim)
    return ev, torch.cat(ev["reconstructions"]).clamp(0, 1), meta


def evaluate_model(cfg, path, items, device, stage: str | None = None, refresh: bool = False) -> dict:
    """Real-bitstream evaluation of a saved codec on ``items`` (list of (image, label)).

    Means over images: ``bpp`` (real bytes, header included), ``header_bytes``,
    ``bpp_estimated`` (eval-mode rounded likelihoods), ``psnr``, ``ms_ssim``,
    ``accuracy`` / ``accuracy_ci`` (TFIC Sec. IV-A, EasyOCR's recognizer on the
    decoded 8-bit image), plus ``preds`` and per-image lists.  Cached in
    ``<stage_dir>/eval/<model stem>.json`` keyed by the model file's SHA-256.
    """
    path = Path(path)
    stage = stage or artifacts.stage_of(path)
    labels = [lab for _, lab in items]
    sig = signature(path, labels, stage)
    cache = _cache_path(cfg, stage, path.stem)
    data = None if refresh else artifacts.cached_json(cache, sig)
    if data is not None:
        return data
    ev, recon, meta = decode(cfg, path, items, device, stage)
    preds = ocr.read_lines(recon, device=device)
    mean = ev["mean"]
    data = {
        "signature": sig, "model": str(path), "meta": {k: v for k, v in meta.items() if k != "fingerprint"},
        "bpp": mean["bpp"], "bpp_estimated": mean["bpp_estimated"], "header_bytes": mean["header_bytes"],
        "psnr": mean["psnr"], "ms_ssim": mean.get("ms_ssim"), "preds": preds,
        "per_image_bpp": ev["bpp"], "per_image_psnr": ev["psnr"], **_text_scores(labels, preds),
    }
    artifacts.write_json(cache, data)
    return data


def reconstruct(path, images: torch.Tensor, device) -> torch.Tensor:
    """Decode ``images`` (B,3,H,W) through real bitstreams of the saved codec at ``path``."""
    model, _ = codec.load_model(path, device=device)
    out = [codec.decompress(model, codec.compress(model, x[None].to(device))).cpu() for x in images]
    return torch.cat(out).clamp(0, 1)


METRIC_KEYS = ("bpp", "bpp_estimated", "header_bytes", "psnr", "ms_ssim", "accuracy", "accuracy_ci")


def curve(evals: list[dict], description: str, **params) -> dict:
    """A results.json method entry: lists aligned by rate point (+ the training parameters)."""
    out = {"description": description}
    for key in METRIC_KEYS:
        out[key] = [e.get(key) for e in evals]
    out.update({k: list(v) for k, v in params.items()})
    return out


# --------------------------------------------------------------------------- comparisons
BD_FUNCTIONS = (("bd_accuracy", metrics.bd_quality_result), ("bd_rate_accuracy", metrics.bd_rate_result))


def bd_summary(ref: dict, test: dict) -> dict:
    """BD-accuracy (mean accuracy gain at equal rate, pchip) and BD-rate on the accuracy axis.

    ``ref`` / ``test``: results.json curves (``bpp``, ``accuracy`` lists).  Each
    value comes with ``None`` or the reason it could not be computed.
    """
    out = {}
    for key, fn in BD_FUNCTIONS:
        res = fn(ref["bpp"], ref["accuracy"], test["bpp"], test["accuracy"])
        out[key] = res.value if res.ok else None
        out[key + "_reason"] = res.reason
    return out


def bd_intervals(ref_evals: Sequence[dict], test_evals: Sequence[dict], n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict:
    """Confidence intervals of :func:`bd_summary`'s two values over the test lines.

    ``ref_evals`` / ``test_evals``: the :func:`evaluate_model` results of each
    curve's points (their ``per_image_bpp`` and ``per_image_accuracy``, all on
    the same test lines).  A paired bootstrap over the lines
    (:func:`tficlib.metrics.bd_bootstrap`): how much of a BD value is the
    codecs and how much the 200 (``cpu``) lines that happened to be drawn.
    """
    curves = []
    for evals in (ref_evals, test_evals):
        curves += [[e["per_image_bpp"] for e in evals], [e["per_image_accuracy"] for e in evals]]
    return {key: metrics.bd_bootstrap(fn, *curves, n_boot=n_boot, level=level, seed=seed)
            for key, fn in BD_FUNCTIONS}


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


# --------------------------------------------------------------------------- Table I
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
    """Table I: encoder time vs OCR time per image, mean ± std in ms, same device.

    Encoder = :func:`tficlib.codec.compress` (padding, g_a, h_a, entropy coding
    of ẑ and ŷ to bytes); OCR = EasyOCR's recognizer on the same uncompressed
    image (:func:`tficlib.ocr.read_lines`, what the accuracy uses).  Each of
    the first ``n`` images is timed once after ``warmup`` untimed runs of
    both, with torch's thread count fixed for the whole measurement.
    """
    n = cfg.eval.timing_images if n is None else n
    warmup = cfg.eval.timing_warmup if warmup is None else warmup
    items = items[:n]
    model, _ = codec.load_model(path, device=device)
    threads = torch.get_num_threads()
    dev = torch.device(device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    x0 = items[0][0][None].to(dev)
    for _ in range(max(1, warmup)):
        codec.compress(model, x0)
        ocr.read_lines(x0, device=dev)
    enc, rec = [], []
    with torch.no_grad():
        for x, _ in items:
            x = x[None].to(dev)
            sync()
            t0 = time.perf_counter()
            codec.compress(model, x)
            sync()
            t1 = time.perf_counter()
            ocr.read_lines(x, device=dev)
            sync()
            t2 = time.perf_counter()
            enc.append(1e3 * (t1 - t0))
            rec.append(1e3 * (t2 - t1))
    torch.set_num_threads(threads)
    e = [statistics.fmean(enc), statistics.pstdev(enc)]
    o = [statistics.fmean(rec), statistics.pstdev(rec)]
    return {"encoder": e, "ocr": o, "ratio": e[0] / o[0], "n": len(items), "warmup": warmup,
            "threads": threads, "device": device_name(dev), "model": str(path)}


# --------------------------------------------------------------------------- tables, figures
def summary_table(rows: dict[str, dict], columns=("bpp", "bpp_estimated", "psnr", "ms_ssim", "accuracy",
                                                   "accuracy_ci")) -> str:
    """A fixed-width text table: one row per name, one column per metric."""
    head = f"{'':>18}" + "".join(f"{c:>14}" for c in columns)
    lines = [head]
    for name, row in rows.items():
        cells = []
        for c in columns:
            v = row.get(c)
            cells.append(f"{v:>14.4f}" if isinstance(v, (int, float)) and v is not None else f"{'-':>14}")
        lines.append(f"{name:>18}" + "".join(cells))
    return "\n".join(lines)


def plot_drift(runs: list[Run], start_evals: list[dict], end_evals: list[dict]):
    """Paper recipe (λ = 0, γ = 0.1): training-mode bpp per step of every run, and real bpp start -> end."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for run, s, e in zip(runs, start_evals, end_evals):
        steps = [r["step"] for r in run.log]
        bpp = [r["bpp"] for r in run.log]
        window = max(1, len(bpp) // 20)
        smooth = np.convolve(bpp, np.ones(window) / window, mode="valid")
        ax1.plot(steps[window - 1:], smooth, label=f"from mse_{run.params.get('start')}")
        ax2.plot([0, 1], [s["bpp"], e["bpp"]], marker="o")
    ax1.set_xlabel("step")
    ax1.set_ylabel("training bpp (noisy latents)")
    ax1.set_title("rate during stage 2 (moving average)")
    ax1.grid(True, alpha=0.3)
    ax2.set_xticks([0, 1], ["stage 1 (start)", "stage 2 (end)"])
    ax2.set_ylabel("real bpp (test)")
    ax2.set_title("real rate: start -> end")
    ax2.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def closest_pair(ref: dict, test: dict) -> tuple[int, int]:
    """Indices (i in ref, j in test) of the two rate points closest in log bpp (for Fig. 4)."""
    best = None
    for i, a in enumerate(ref["bpp"]):
        for j, b in enumerate(test["bpp"]):
            d = abs(math.log(a) - math.log(b))
            if best is None or d < best[0]:
                best = (d, i, j)
    return best[1], best[2]


def visual_comparison(paths: dict[str, Path], items, device, indices=(0, 1, 2)):
    """Fig. 4: rows = images, columns = original and each codec in ``paths``, recognized text under each.

    ``paths``: ``{"MSE 0.21 bpp": path, "TFIC 0.20 bpp": path}``.  Decoding is
    through real bitstreams; the text is EasyOCR's reading of the 8-bit image.
    """
    from . import plots

    images = torch.stack([items[i][0] for i in indices])
    labels = [items[i][1] for i in indices]
    columns = {"original": images}
    for name, p in paths.items():
        columns[name] = reconstruct(p, images, device)
    texts = {name: ocr.read_lines(x, device=device) for name, x in columns.items()}
    grid, titles = [], []
    for r in range(len(indices)):
        for name, x in columns.items():
            grid.append(x[r])
            acc = metrics.accuracy(labels[r], texts[name][r])
            titles.append(f"{name}: '{texts[name][r]}' (acc {acc:.2f})")
    return plots.image_grid(grid, titles, ncols=len(columns), cell_width=3.6,
                            suptitle="ground truth: " + " | ".join(repr(lab) for lab in labels))
