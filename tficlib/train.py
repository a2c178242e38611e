"""One training loop for every learned stage (codecs and DnCNN).

CompressAI's training contract (``examples/train.py``), made resumable:

* a main Adam on the network parameters and, when the model has entropy
  bottlenecks, an auxiliary Adam on their ``quantiles`` only; the main
  gradients are clipped (``clip_max_norm``) and every step also takes one
  ``aux_loss()`` step;
* at the end, ``aux_steps`` extra auxiliary-only steps (cheap: they touch the
  quantiles only) and CompressAI's exact bisection of the quantiles, so that
  the quantile (aux) loss has converged before real bitstreams are made,
  then ``update(force=True)`` (CDF tables) — call
  :func:`prepare_for_coding` again before any evaluation of a model you
  changed;
* seeded: the data order of step ``s`` and the random noise it draws derive
  from ``(seed, s)`` only, so a run resumed from a checkpoint follows exactly
  the same path as an uninterrupted one;
* a checkpoint (model + optimizers + scheduler + step + RNG states + log),
  written atomically every ``checkpoint_every`` steps and at the end,
  loaded with ``weights_only=True`` (no pickled code);
* re-running after an interruption resumes from the last checkpoint;
  re-running after completion reuses the finished model unless
  ``retrain=True``;
* the per-step log goes to ``<checkpoint>.log.json`` and ``.log.csv``.

An *objective* is any callable ``objective(model, batch) -> dict`` whose
``"loss"`` entry is the scalar to minimise; every other scalar entry
(``bpp``, ``mse``, ``ocr``, ``psnr`` ...) is logged.  The TFIC objectives
(stage 1: R + λ·255²·MSE; stage 2: R + γ·L_OCR through the straight-through
forward :func:`forward_ste`) are defined here.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import artifacts
from .losses import RateDistortionLoss, ocr_loss, rate_bpp

__all__ = [
    "TrainResult",
    "aux_parameters",
    "batch_indices",
    "configure_optimizers",
    "forward_ste",
    "load_model_state",
    "log_paths",
    "main_parameters",
    "prepare_for_coding",
    "rate_distortion_objective",
    "read_log",
    "tfic_objective",
    "train",
]

CHECKPOINT_KIND = "tficlib.train"


# --------------------------------------------------------------------------- parameters
def aux_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The entropy bottlenecks' ``quantiles`` (CompressAI's auxiliary parameters)."""
    return [p for n, p in model.named_parameters() if n.endswith("quantiles") and p.requires_grad]


def main_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every trainable parameter except the quantiles."""
    return [p for n, p in model.named_parameters() if not n.endswith("quantiles") and p.requires_grad]


def configure_optimizers(model: nn.Module, lr: float, aux_lr: float = 1e-3):
    """CompressAI's two optimizers: Adam(main, lr) and Adam(quantiles, aux_lr) (None without quantiles)."""
    main = main_parameters(model)
    if not main:
        raise ValueError("configure_optimizers: the model has no trainable parameters")
    optimizer = torch.optim.Adam(main, lr=lr)
    aux = aux_parameters(model)
    aux_optimizer = torch.optim.Adam(aux, lr=aux_lr) if aux else None
    return optimizer, aux_optimizer


def _aux_loss(model: nn.Module) -> torch.Tensor | None:
    return model.aux_loss() if hasattr(model, "aux_loss") and aux_parameters(model) else None


def prepare_for_coding(model: nn.Module) -> nn.Module:
    """``model.update(force=True)`` (CDF tables for the entropy coder) and eval mode.

    Must be called before any real bitstream or evaluation of a model whose
    weights changed (CompressAI's contract).  No-op for models without
    entropy models.
    """
    if hasattr(model, "update"):
        model.update(force=True)
    return model.eval()


# --------------------------------------------------------------------------- data order
def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64), so (seed, step) streams never overlap."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
    return x & 0x7FFFFFFFFFFFFFFF


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Dataset indices of training step ``step``: epochs of a permutation seeded by (seed, epoch).

    Pure function of its arguments, so a resumed run draws the same batches.
    """
    if n <= 0:
        raise ValueError("batch_indices: the dataset is empty")
    out = []
    start = step * batch_size
    perms: dict[int, torch.Tensor] = {}
    for pos in range(start, start + batch_size):
        epoch, offset = divmod(pos, n)
        if epoch not in perms:
            g = torch.Generator().manual_seed(_mix(seed, 0xDA7A, epoch))
            perms[epoch] = torch.randperm(n, generator=g)
        out.append(int(perms[epoch][offset]))
    return out


def _collate(items: list):
    return torch.utils.data.default_collate(items)


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [_to_device(v, device) for v in batch]
        return type(batch)(moved) if isinstance(batch, tuple) else moved
    return batch


def load_model_state(model: nn.Module, state_dict: dict) -> None:
    """``model.load_state_dict`` that first resizes buffers whose saved shape differs.

    CompressAI's entropy models keep CDF tables (``_quantized_cdf``, ``_offset``,
    ``_cdf_length``) whose size depends on the weights; CompressAI only resizes
    them when they are empty.
    """
    buffers = dict(model.named_buffers())
    for name, value in state_dict.items():
        buf = buffers.get(name)
        if buf is not None and buf.shape != value.shape:
            buf.resize_(value.shape)
    model.load_state_dict(state_dict)


# --------------------------------------------------------------------------- RNG states
def _rng_state() -> dict:
    """Every generator's state as tensors (checkpoint-safe with weights_only=True)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_meta": torch.tensor([np_state[2], np_state[3]], dtype=torch.int64),
        "numpy_gauss": torch.tensor(np_state[4], dtype=torch.float64),
        "python": torch.tensor(list(py_state[1]), dtype=torch.int64),
        "python_version": torch.tensor(py_state[0], dtype=torch.int64),
        "python_gauss": torch.tensor(float("nan") if py_state[2] is None else py_state[2],
                                     dtype=torch.float64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32),
                         int(state["numpy_meta"][0]), int(state["numpy_meta"][1]),
                         float(state["numpy_gauss"])))
    gauss = float(state["python_gauss"])
    random.setstate((int(state["python_version"]), tuple(int(v) for v in state["python"].tolist()),
                     None if math.isnan(gauss) else gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# --------------------------------------------------------------------------- objectives
def forward_ste(model: nn.Module, x: torch.Tensor) -> dict:
    """Hyperprior forward whose decoder sees *rounded* latents (straight-through).

    TFIC paper Sec. III-B trains through the quantizer; here the rate keeps
    CompressAI's noisy-latent likelihoods (training mode) while the synthesis
    transform g_s receives ŷ = y + (round(y − μ) + μ − y).detach(): the
    forward value is the rounded latent the real decoder will see, the
    backward pass is the identity (CompressAI's "dequantize" rounding with a
    straight-through gradient).  μ = 0 for the scale hyperprior; the
    predicted means for mean-scale models.  Works with the modules of
    ``bmshj2018-hyperprior`` (g_a, h_a, entropy_bottleneck, h_s,
    gaussian_conditional, g_s), ``mbt2018-mean`` and the autoregressive
    ``cheng2020-attn`` / ``mbt2018`` (whose context model sees the noisy
    latents, as in CompressAI's training forward, and whose decoder sees
    round(y) with the STE).
    """
    for name in ("g_a", "h_a", "h_s", "g_s", "entropy_bottleneck", "gaussian_conditional"):
        if not hasattr(model, name):
            raise TypeError(f"forward_ste needs a CompressAI hyperprior model; {type(model).__name__} has no {name}")
    y = model.g_a(x)
    gc = model.gaussian_conditional
    if hasattr(model, "context_prediction"):  # joint autoregressive + hyperprior
        z = model.h_a(y)
        z_hat, z_likelihoods = model.entropy_bottleneck(z)
        params = model.h_s(z_hat)
        y_noisy = gc.quantize(y, "noise" if model.training else "dequantize")
        ctx_params = model.context_prediction(y_noisy)
        gaussian_params = model.entropy_parameters(torch.cat((params, ctx_params), dim=1))
        scales_hat, means_hat = gaussian_params.chunk(2, 1)
        _, y_likelihoods = gc(y, scales_hat, means=means_hat)
        means_q = None
    else:
        z = model.h_a(y if _is_mean_scale(model) else torch.abs(y))
        z_hat, z_likelihoods = model.entropy_bottleneck(z)
        params = model.h_s(z_hat)
        if _is_mean_scale(model):
            scales_hat, means_q = params.chunk(2, 1)
        else:
            scales_hat, means_q = params, None
        _, y_likelihoods = gc(y, scales_hat, means=means_q)
    mu = means_q if means_q is not None else torch.zeros_like(y)
    y_hat = y + (torch.round(y - mu) + mu - y).detach()
    x_hat = model.g_s(y_hat)
    return {"x_hat": x_hat, "y_hat": y_hat, "y": y, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}


def _is_mean_scale(model: nn.Module) -> bool:
    """True for mean-scale hyperpriors (mbt2018-mean): h_s outputs (scales, means)."""
    from compressai.models import MeanScaleHyperprior

    return isinstance(model, MeanScaleHyperprior)


def _psnr(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    mse = F.mse_loss(x_hat.detach().clamp(0, 1), x).item()
    return 10 * math.log10(1.0 / max(mse, 1e-10))


def rate_distortion_objective(lmbda: float) -> Callable:
    """Stage 1 (γ = 0): L = R(ŷ, ẑ) + λ·255²·MSE(x, x̂), batch = (images, labels) or images.

    Logs ``bpp`` (training-mode noisy estimate), ``mse`` and ``psnr``.
    """
    criterion = RateDistortionLoss(lmbda)

    def objective(model, batch):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        out = model(x)
        terms = criterion(out, x)
        return {"loss": terms["loss"], "bpp": terms["bpp_loss"], "mse": terms["mse_loss"],
                "psnr": _psnr(out["x_hat"], x)}

    objective.name = f"rd(lambda={lmbda:g})"
    objective.params = {"objective": "rate_distortion", "lambda": float(lmbda)}
    return objective


def tfic_objective(gamma: float, lmbda: float = 0.0, ste: bool = True) -> Callable:
    """Stage 2: L = λ·255²·MSE + R(ŷ, ẑ) + γ·L_OCR(G(x), T(x̂)) (TFIC paper Sec. III-B).

    The paper's recipe is λ = 0, γ = 0.1.  L_OCR is the CTC loss of the
    frozen EasyOCR recognizer (:func:`tficlib.losses.ocr_loss`).  With
    ``ste=True`` the decoder sees rounded latents (:func:`forward_ste`) while
    the rate uses the noisy likelihoods.  batch = (images, labels).
    """
    if gamma < 0 or lmbda < 0:
        raise ValueError(f"γ and λ must be >= 0, got γ={gamma}, λ={lmbda}")

    def objective(model, batch):
        x, labels = batch
        out = forward_ste(model, x) if ste else model(x)
        n, _, h, w = x.shape
        bpp = rate_bpp(out["likelihoods"], n * h * w)
        l_ocr = ocr_loss(out["x_hat"], labels)
        mse = F.mse_loss(out["x_hat"], x)
        loss = bpp + gamma * l_ocr
        if lmbda:
            loss = loss + lmbda * 255**2 * mse
        return {"loss": loss, "bpp": bpp, "ocr": l_ocr, "mse": mse, "psnr": _psnr(out["x_hat"], x)}

    objective.name = f"tfic(gamma={gamma:g}, lambda={lmbda:g}, ste={ste})"
    objective.params = {"objective": "tfic", "gamma": float(gamma), "lambda": float(lmbda), "ste": bool(ste)}
    return objective


# --------------------------------------------------------------------------- logs
def log_paths(checkpoint: str | Path) -> tuple[Path, Path]:
    """``(<checkpoint>.log.json, <checkpoint>.log.csv)``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_suffix(".log.json"), checkpoint.with_suffix(".log.csv")


def _write_logs(checkpoint: Path, log: list[dict], meta: dict) -> None:
    json_path, csv_path = log_paths(checkpoint)
    artifacts.write_json(json_path, {"meta": meta, "log": log})
    keys: list[str] = []
    for row in log:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(log)
    with artifacts.atomic_write(csv_path, "w") as fh:
        fh.write(buf.getvalue())


def read_log(checkpoint: str | Path) -> list[dict]:
    """The per-step log written beside ``checkpoint`` (list of dicts: step, loss, bpp, ...)."""
    json_path, _ = log_paths(checkpoint)
    return artifacts.read_json(json_path)["log"]


# --------------------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    """What :func:`train` returns."""

    model: nn.Module
    log: list[dict]
    checkpoint: Path
    steps: int
    resumed_from: int | None = None  # step a resumed run started from
    reused: bool = False  # the finished model was loaded, no step was run
    aux_loss: float | None = None  # final auxiliary (quantile) loss
    aux_log: list[float] = field(default_factory=list)  # aux loss during the aux-only steps
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)


def _scalar(v: Any) -> float | None:
    if isinstance(v, torch.Tensor):
        return float(v.detach()) if v.numel() == 1 else None
    if isinstance(v, (int, float, np.floating, np.integer)):
        return float(v)
    return None


def _lr_factor(step: int, steps: int, decay_start: float, decay_to: float) -> float:
    """1 until ``decay_start·steps``, then a cosine down to ``decay_to`` at the last step."""
    start = int(decay_start * steps)
    if step < start or steps <= start:
        return 1.0
    t = (step - start) / max(1, steps - start)
    return decay_to + (1 - decay_to) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def train(
    model: nn.Module,
    objective: Callable[[nn.Module, Any], dict],
    dataset: Sequence,
    *,
    steps: int,
    checkpoint: str | Path,
    batch_size: int = 8,
    lr: float = 1e-4,
    aux_lr: float = 1e-3,
    clip_max_norm: float | None = 1.0,
    seed: int = 0,
    checkpoint_every: int = 100,
    aux_steps: int = 0,
    exact_quantiles: bool = True,
    lr_decay_start: float = 1.0,
    lr_decay_to: float = 0.1,
    retrain: bool = False,
    device: str | torch.device | None = None,
    collate: Callable | None = None,
    desc: str | None = None,
    meta: dict | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` for ``steps`` steps of ``objective`` on ``dataset``, resumably.

    ``model`` holds the starting weights (random, or a stage-1 model to
    fine-tune); a checkpoint at ``checkpoint`` takes precedence: unfinished
    -> resume from its step, finished -> reuse (unless ``retrain``).  A
    checkpoint written with other hyper-parameters (objective, steps, batch,
    lr, seed, dataset size) is not trusted: training starts over.

    ``lr`` is constant until ``lr_decay_start·steps`` and then follows a cosine
    down to ``lr_decay_to·lr`` (``lr_decay_start=1``: constant).  After the
    last step, ``aux_steps`` auxiliary-only Adam steps fit the quantiles and,
    with ``exact_quantiles``, CompressAI's bisection
    (``update(update_quantiles=True)``) solves the same auxiliary objective
    exactly (aux loss ~0.04 from ~2600 in 0.2 s, where 2000 Adam steps at
    lr 1e-2 only reach ~2360); then ``update(force=True)`` builds the CDF
    tables.  The final aux loss is in ``TrainResult.aux_loss``.  Returns a
    :class:`TrainResult`; the model is left in eval mode on ``device``.
    """
    if steps < 0 or batch_size <= 0 or checkpoint_every <= 0:
        raise ValueError(f"bad schedule: steps={steps}, batch_size={batch_size}, checkpoint_every={checkpoint_every}")
    if len(dataset) == 0:
        raise ValueError("train: the dataset is empty")
    checkpoint = Path(checkpoint)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    collate = collate or _collate
    optimizer, aux_optimizer = configure_optimizers(model, lr, aux_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, steps, lr_decay_start, lr_decay_to))
    params = dict(getattr(objective, "params", {"objective": getattr(objective, "name", repr(objective))}))
    fingerprint = {
        **params, "steps": int(steps), "batch_size": int(batch_size), "lr": float(lr),
        "aux_lr": float(aux_lr), "clip_max_norm": clip_max_norm, "seed": int(seed),
        "n_data": len(dataset), "aux_steps": int(aux_steps), "exact_quantiles": bool(exact_quantiles), "lr_decay_start": float(lr_decay_start),
        "lr_decay_to": float(lr_decay_to), "model": type(model).__name__,
    }
    meta = {"kind": CHECKPOINT_KIND, "fingerprint": fingerprint, **(meta or {})}
    log: list[dict] = []
    start_step = 0
    resumed_from = None
    t_start = time.perf_counter()

    if checkpoint.exists() and not retrain:
        payload = artifacts.load_checkpoint(checkpoint)
        saved_meta = payload["meta"]
        if saved_meta.get("kind") != CHECKPOINT_KIND:
            raise artifacts.ArtifactError(f"{checkpoint} is not a training checkpoint of tficlib.train")
        if saved_meta.get("fingerprint") == json.loads(json.dumps(fingerprint)):
            state = payload["state"]
            load_model_state(model, state["model"])
            log = list(state["log"])
            if saved_meta.get("finished"):
                model.to(device).eval()
                aux = saved_meta.get("aux_loss")
                return TrainResult(model, log, checkpoint, steps, reused=True, aux_loss=aux,
                                   aux_log=list(saved_meta.get("aux_log", [])), meta=saved_meta)
            optimizer.load_state_dict(state["optimizer"])
            if aux_optimizer is not None:
                aux_optimizer.load_state_dict(state["aux_optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            _set_rng_state(state["rng"])
            start_step = resumed_from = int(state["step"])
        elif progress:
            print(f"{checkpoint.name}: saved with other settings; training from the start")

    def save(step: int, finished: bool = False, extra: dict | None = None) -> None:
        state = {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "step": step, "rng": _rng_state(), "log": log,
        }
        if aux_optimizer is not None:
            state["aux_optimizer"] = aux_optimizer.state_dict()
        m = {**meta, "step": step, "finished": finished, **(extra or {})}
        artifacts.save_checkpoint(checkpoint, state, m)
        _write_logs(checkpoint, log, m)

    mains = main_parameters(model)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start_step, desc=desc or getattr(objective, "name", "train"),
                   leave=True, dynamic_ncols=True)
    model.train()
    n = len(dataset)
    for step in range(start_step, steps):
        torch.manual_seed(_mix(seed, step))
        batch = collate([dataset[i] for i in batch_indices(n, batch_size, seed, step)])
        batch = _to_device(batch, device)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = objective(model, batch)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {float(loss)} at step {step} ({desc or ''})")
        loss.backward()
        if clip_max_norm:
            torch.nn.utils.clip_grad_norm_(mains, clip_max_norm)
        optimizer.step()
        row = {"step": step + 1}
        row.update({k: s for k, v in out.items() if (s := _scalar(v)) is not None})
        if aux_optimizer is not None:
            aux_optimizer.zero_grad(set_to_none=True)
            aux = _aux_loss(model)
            aux.backward()
            aux_optimizer.step()
            row["aux"] = float(aux.detach())
        row["lr"] = optimizer.param_groups[0]["lr"]
        scheduler.step()
        row["seconds"] = time.perf_counter() - t0
        log.append(row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{row[k]:.4g}" for k in ("loss", "bpp", "psnr", "ocr", "aux") if k in row})
        if (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            save(step + 1)
    if bar is not None:
        bar.close()

    aux_log: list[float] = []
    aux_trained = aux_final = None
    if aux_optimizer is not None:
        for _ in range(aux_steps):
            aux_optimizer.zero_grad(set_to_none=True)
            aux = _aux_loss(model)
            aux.backward()
            aux_optimizer.step()
            aux_log.append(float(aux.detach()))
        with torch.no_grad():
            aux_trained = float(_aux_loss(model))
            if exact_quantiles:
                model.update(force=True, update_quantiles=True)
            aux_final = float(_aux_loss(model))
    prepare_for_coding(model)
    seconds = time.perf_counter() - t_start
    extra = {"aux_loss": aux_final, "aux_loss_before_bisection": aux_trained,
             "aux_log": aux_log[:: max(1, len(aux_log) // 50)], "seconds": seconds}
    save(steps, finished=True, extra=extra)
    return TrainResult(model, log, checkpoint, steps, resumed_from=resumed_from, aux_loss=aux_final,
                       aux_log=aux_log, seconds=seconds, meta={**meta, **extra, "finished": True})
