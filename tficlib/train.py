"""The one training loop of every learned stage (codecs, DnCNN, D2), resumable, hookable, distributable.

CompressAI's training contract (``examples/train.py``), made resumable:

* a main Adam on the network parameters and, when the model has entropy
  bottlenecks, an auxiliary Adam on their ``quantiles`` only; the main
  gradients are clipped (``clip_max_norm``) and every step also takes one
  ``aux_loss()`` step;
* at the end, ``aux_steps`` auxiliary-only steps and CompressAI's exact
  bisection of the quantiles, so that the quantile (aux) loss has converged
  before real bitstreams are made, then ``update(force=True)`` (CDF tables) —
  call :func:`prepare_for_coding` again before evaluating a model you changed;
* seeded: the data order of step ``s`` and the random numbers it draws derive
  from ``(seed, s)`` only (:func:`derive_seed`, :func:`batch_indices`), so a
  resumed run follows exactly the path of an uninterrupted one;
* a checkpoint (model + optimizers + scheduler + step + RNG states + log),
  written atomically every ``checkpoint_every`` steps and at the end, loaded
  with ``weights_only=True`` (no pickled code); re-running resumes an
  interrupted run and reuses a finished one unless ``retrain=True``; a
  checkpoint written with other settings (its *fingerprint*: the objective's
  :meth:`~tficlib.objectives.Objective.params`, schedule, seed, data size) is
  never trusted;
* :class:`Hook` objects see the run start, every step and the end (weight
  snapshots for an accuracy-vs-steps curve: :class:`SnapshotHook`);
* launched by ``torchrun``, the same loop trains data-parallel
  (:mod:`tficlib.distributed`): every rank takes its share of the batch one
  process would draw, and only rank 0 writes.

Stages call it through :func:`fit`, which reads every optimizer setting of a
run from the profile (:func:`settings`), so that no recipe copies them.  The
per-step log goes to ``<checkpoint>.log.json`` and ``.log.csv``.
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
from torch import nn

from . import artifacts, distributed
from .objectives import Objective

__all__ = [
    "CHECKPOINT_KIND",
    "Hook",
    "Run",
    "Settings",
    "SnapshotHook",
    "TrainResult",
    "aux_parameters",
    "batch_indices",
    "configure_optimizers",
    "derive_seed",
    "fit",
    "load_model_state",
    "log_paths",
    "main_parameters",
    "prepare_for_coding",
    "read_log",
    "settings",
    "snapshots",
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
def derive_seed(*values: int) -> int:
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
            g = torch.Generator().manual_seed(derive_seed(seed, 0xDA7A, epoch))
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


# --------------------------------------------------------------------------- results
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


@dataclass
class Run:
    """One finished training run of a stage, as the notebooks list it: its name, saved model, log, settings.

    ``params`` holds what distinguishes the run (λ, γ, κ, the stage-1 model it
    started from ...); ``error`` says why a run has no model (a diverged loss).
    """

    name: str
    path: Path | None
    log: list[dict]
    params: dict
    aux_loss: float | None = None
    seconds: float = 0.0
    reused: bool = False
    resumed_from: int | None = None
    error: str | None = None

    @property
    def state(self) -> str:
        """``reused`` / ``resumed from step s`` / ``trained`` / ``diverged: ...`` for a notebook's table."""
        if self.error:
            return f"diverged: {self.error}"
        if self.reused:
            return "reused"
        return f"resumed from step {self.resumed_from}" if self.resumed_from else "trained"

    @classmethod
    def of(cls, name: str, path: Path | None, result: TrainResult, params: dict) -> Run:
        """The :class:`Run` of a :class:`TrainResult` whose model was saved at ``path``."""
        return cls(name, path, result.log, params, result.aux_loss, result.meta.get("seconds", 0.0),
                   result.reused, result.resumed_from)


# --------------------------------------------------------------------------- hooks
class Hook:
    """Called by :func:`train` on every rank; a hook that writes files writes on rank 0 only."""

    def on_start(self, model: nn.Module, start_step: int, steps: int) -> None:
        """Before the first step that runs (``start_step`` > 0 when resuming)."""

    def before_step(self, model: nn.Module, step: int) -> None:
        """Before step ``step`` (0-based) changes the weights."""

    def after_step(self, model: nn.Module, step: int, row: dict) -> None:
        """After step ``step``; ``row`` is its log entry."""

    def on_finish(self, model: nn.Module, steps: int) -> None:
        """After the last step and the final auxiliary steps (not called when a finished run is reused)."""


def _snapshot_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint).with_suffix(".snapshots.pt")


def snapshots(checkpoint: str | Path) -> dict[int, dict]:
    """The weight snapshots a :class:`SnapshotHook` saved beside ``checkpoint``: ``{step: state_dict}``."""
    return _read_snapshots(_snapshot_path(checkpoint))


def _read_snapshots(path: Path) -> dict[int, dict]:
    if not path.exists():
        return {}
    payload = artifacts.load_checkpoint(path)
    return {int(k): v for k, v in payload["state"].items()}


class SnapshotHook(Hook):
    """Store the weights every ``every`` steps and at the end, beside the checkpoint (``.snapshots.pt``).

    For an accuracy-vs-steps curve.  A run that starts from step 0 starts a
    new file; a resumed run keeps the snapshots taken before the interruption.
    """

    def __init__(self, checkpoint: str | Path, every: int):
        self.path, self.every = _snapshot_path(checkpoint), int(every)
        self.store: dict[int, dict] = {}

    def _save(self) -> None:
        if distributed.is_main():
            artifacts.save_checkpoint(self.path, {str(k): v for k, v in self.store.items()},
                                      {"kind": "snapshots", "steps": sorted(self.store)})

    def _take(self, model: nn.Module, step: int) -> None:
        self.store[step] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        self._save()

    def on_start(self, model, start_step, steps):
        if start_step == 0:
            if self.path.exists() and distributed.is_main():
                self.path.unlink()
            self.store = {}
        else:
            self.store = _read_snapshots(self.path)

    def before_step(self, model, step):
        if self.every and step % self.every == 0 and step not in self.store:
            self._take(model, step)

    def on_finish(self, model, steps):
        if self.every and steps not in self.store:
            self._take(model, steps)


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    """Every optimizer setting of one kind of run; :func:`settings` reads them from a profile."""

    steps: int
    batch_size: int
    lr: float
    aux_lr: float = 1e-3
    clip_max_norm: float | None = None
    checkpoint_every: int = 100
    aux_steps: int = 0
    lr_decay_start: float = 1.0
    lr_decay_to: float = 0.1
    schedule: str | None = None  # the profile amount that sets ``steps`` (for runner.schedule_estimate)


#: The kinds of training run and the profile section each reads its amounts from.
KINDS = ("codec.base", "codec.lambda", "tfic", "textlogit", "dequant", "dequant.ablation", "ocr_guided")


def settings(cfg, kind: str) -> Settings:
    """The :class:`Settings` of a run of ``kind`` (one of :data:`KINDS`) in profile ``cfg``.

    Codec runs (stage 1, TFIC, text logit) share stage 1's optimizer settings
    (``cfg.codec``: aux lr, clipping, checkpoints, aux steps, lr schedule) with
    their own steps, batch and lr; DnCNN runs read ``cfg.dequant``.  The
    λ = 1 ablation keeps the main run's constant lr when it is shorter (it
    is then paired with a snapshot of the main run).
    """
    c, d = cfg.codec, cfg.dequant
    codec_opt = {"aux_lr": c.aux_lr, "clip_max_norm": c.clip_max_norm, "checkpoint_every": c.checkpoint_every,
                 "aux_steps": c.aux_steps, "lr_decay_start": c.lr_decay_start, "lr_decay_to": c.lr_decay_to}
    dequant_opt = {"clip_max_norm": d.clip_max_norm, "checkpoint_every": max(1, d.checkpoint_every),
                   "lr_decay_start": d.lr_decay_start, "lr_decay_to": d.lr_decay_to}
    if kind == "codec.base":
        return Settings(c.base_steps, c.batch_size, c.lr, **codec_opt, schedule="codec.base_steps")
    if kind == "codec.lambda":
        amount = "codec.lambda_steps" if c.lambda_steps else "codec.base_steps"
        return Settings(c.lambda_steps or c.base_steps, c.batch_size, c.lr, **codec_opt, schedule=amount)
    if kind == "tfic":
        t = cfg.tfic
        return Settings(t.steps, t.batch_size, t.lr, **codec_opt, schedule="tfic.steps")
    if kind == "textlogit":
        t = cfg.textlogit
        return Settings(t.steps, t.batch_size, t.lr, **codec_opt, schedule="textlogit.steps")
    if kind == "dequant":
        return Settings(d.steps, d.batch_size, d.lr, **dequant_opt, schedule="dequant.steps")
    if kind == "dequant.ablation":
        steps = d.steps if d.ablation_steps is None else int(d.ablation_steps)
        opt = {**dequant_opt, "lr_decay_start": 1.0} if steps < d.steps else dequant_opt
        return Settings(steps, d.batch_size, d.lr, **opt, schedule="dequant.ablation_steps")
    if kind == "ocr_guided":
        return Settings(d.ocr_guided_steps, d.ocr_guided_batch, d.ocr_guided_lr, **dequant_opt,
                        schedule="dequant.ocr_guided_steps")
    raise ValueError(f"unknown kind of run {kind!r}; kinds are {', '.join(KINDS)}")


# --------------------------------------------------------------------------- the loop
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


class _Batch:
    """A batch handed to :class:`_Step` untouched (DistributedDataParallel re-packs tuples and lists of inputs)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class _Step(nn.Module):
    """The model and its objective as one module, so that DistributedDataParallel wraps the whole step."""

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: _Batch):
        return self.objective(self.model, batch.value)


def _wrap(model: nn.Module, objective: Objective, ctx: distributed.Context, device: torch.device) -> nn.Module:
    """The module a step calls: the model and objective, in DistributedDataParallel when there are ranks."""
    step = _Step(model, objective)
    if not ctx.distributed:
        return step
    from torch.nn.parallel import DistributedDataParallel as DDP

    ignore = [f"model.{n}" for n, p in model.named_parameters() if n.endswith("quantiles")]
    if ignore:  # trained by the auxiliary loss outside the wrapped forward (tficlib.distributed)
        DDP._set_params_and_buffers_to_ignore_for_model(step, ignore)
    ids = [device.index if device.index is not None else ctx.local_rank] if device.type == "cuda" else None
    # buffers are never synced in the forward (BatchNorm statistics are global already: GlobalBatchNorm2d);
    # torch >= 2.14 names that forward_sync_buffers, older versions broadcast_buffers
    import inspect

    no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
               else "broadcast_buffers")
    return DDP(step, device_ids=ids, **{no_sync: False})


def train(
    model: nn.Module,
    objective: Objective,
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
    hooks: Sequence[Hook] = (),
) -> TrainResult:
    """Train ``model`` for ``steps`` steps of ``objective`` on ``dataset``, resumably.

    ``model`` holds the starting weights (random, or a model to fine-tune); a
    checkpoint at ``checkpoint`` takes precedence: unfinished -> resume from
    its step, finished -> reuse (unless ``retrain``).  A checkpoint written
    with other settings is not trusted: training starts over.

    ``lr`` is constant until ``lr_decay_start·steps`` and then follows a cosine
    down to ``lr_decay_to·lr`` (``lr_decay_start=1``: constant).  After the
    last step, ``aux_steps`` auxiliary-only Adam steps fit the quantiles and,
    with ``exact_quantiles``, CompressAI's bisection
    (``update(update_quantiles=True)``) solves the same auxiliary objective
    exactly; then ``update(force=True)`` builds the CDF tables.  Returns a
    :class:`TrainResult`; the model is left in eval mode on ``device``.

    Under ``torchrun`` (:mod:`tficlib.distributed`) each rank trains on its
    share of every batch (``batch_size`` must be a multiple of the number of
    ranks) and only rank 0 writes; the result equals one process's within
    float rounding.
    """
    if steps < 0 or batch_size <= 0 or checkpoint_every <= 0:
        raise ValueError(f"bad schedule: steps={steps}, batch_size={batch_size}, checkpoint_every={checkpoint_every}")
    if len(dataset) == 0:
        raise ValueError("train: the dataset is empty")
    if not isinstance(objective, Objective):
        raise TypeError(f"train needs a tficlib.objectives.Objective, got {type(objective).__name__}")
    ctx = distributed.context()
    if batch_size % ctx.world:
        raise ValueError(f"a batch of {batch_size} does not split into {ctx.world} ranks: choose a batch size "
                         f"that is a multiple of the number of processes")
    main = distributed.is_main()
    checkpoint = Path(checkpoint)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if ctx.distributed:
        distributed.convert_batchnorm(model)  # batch statistics of the whole batch, across ranks
    model.to(device)
    collate = collate or _collate
    optimizer, aux_optimizer = configure_optimizers(model, lr, aux_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, steps, lr_decay_start, lr_decay_to))
    fingerprint = {
        **objective.params(), "steps": int(steps), "batch_size": int(batch_size), "lr": float(lr),
        "aux_lr": float(aux_lr), "clip_max_norm": clip_max_norm, "seed": int(seed),
        "n_data": len(dataset), "aux_steps": int(aux_steps), "exact_quantiles": bool(exact_quantiles),
        "lr_decay_start": float(lr_decay_start), "lr_decay_to": float(lr_decay_to), "model": type(model).__name__,
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
                return TrainResult(model, log, checkpoint, steps, reused=True, aux_loss=saved_meta.get("aux_loss"),
                                   aux_log=list(saved_meta.get("aux_log", [])), meta=saved_meta)
            optimizer.load_state_dict(state["optimizer"])
            if aux_optimizer is not None:
                aux_optimizer.load_state_dict(state["aux_optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            _set_rng_state(state["rng"])
            start_step = resumed_from = int(state["step"])
        elif progress and main:
            print(f"{checkpoint.name}: saved with other settings; training from the start")

    def save(step: int, finished: bool = False, extra: dict | None = None) -> None:
        if not main:
            return
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
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start_step, desc=desc or objective.name, leave=True, dynamic_ncols=True)
    for hook in hooks:
        hook.on_start(model, start_step, steps)
    step_module = _wrap(model, objective, ctx, device)
    n = len(dataset)
    for step in range(start_step, steps):
        for hook in hooks:
            hook.before_step(model, step)
        objective.set_mode(model)
        torch.manual_seed(derive_seed(seed, step))
        batch = collate([dataset[i] for i in batch_indices(n, batch_size, seed, step)])
        batch = _to_device(distributed.shard(batch, ctx), device)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with distributed.global_noise(model, ctx):
            out = step_module(_Batch(batch))
        loss = out["loss"]
        finite = bool(torch.isfinite(loss))
        if ctx.distributed:  # every rank stops together
            finite = distributed.mean_over_ranks({"finite": float(finite)}, ctx)["finite"] == 1.0
        if not finite:
            raise FloatingPointError(f"non-finite loss {float(loss)} at step {step} ({desc or objective.name})")
        loss.backward()
        if clip_max_norm:
            torch.nn.utils.clip_grad_norm_(mains, clip_max_norm)
        optimizer.step()
        terms = {k: s for k, v in out.items() if (s := _scalar(v)) is not None}
        if aux_optimizer is not None:
            aux_optimizer.zero_grad(set_to_none=True)
            aux = _aux_loss(model)
            aux.backward()
            aux_optimizer.step()
            terms["aux"] = float(aux.detach())
        row = {"step": step + 1, **distributed.mean_over_ranks(terms, ctx)}
        row["lr"] = optimizer.param_groups[0]["lr"]
        scheduler.step()
        row["seconds"] = time.perf_counter() - t0
        log.append(row)
        for hook in hooks:
            hook.after_step(model, step, row)
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
    for hook in hooks:
        hook.on_finish(model, steps)
    seconds = time.perf_counter() - t_start
    extra = {"aux_loss": aux_final, "aux_loss_before_bisection": aux_trained,
             "aux_log": aux_log[:: max(1, len(aux_log) // 50)], "seconds": seconds, "ranks": ctx.world}
    save(steps, finished=True, extra=extra)
    distributed.barrier()  # the other ranks read what rank 0 wrote only after it is written
    return TrainResult(model, log, checkpoint, steps, resumed_from=resumed_from, aux_loss=aux_final,
                       aux_log=aux_log, seconds=seconds, meta={**meta, **extra, "finished": True})


def fit(cfg, kind: str, model: nn.Module, objective: Objective, dataset: Sequence, checkpoint: str | Path, *,
        seed: int, steps: int | None = None, device=None, collate: Callable | None = None, desc: str | None = None,
        meta: dict | None = None, hooks: Sequence[Hook] = (), retrain: bool = False,
        progress: bool = True) -> TrainResult:
    """:func:`train` with every optimizer setting of a run of ``kind`` read from the profile (:func:`settings`).

    ``steps`` overrides the profile's amount (the run's log then names no
    schedule); ``meta`` is stored beside the checkpoint with the profile's
    name and the schedule.
    """
    s = settings(cfg, kind)
    schedule = s.schedule if steps is None else None
    return train(model, objective, dataset, steps=s.steps if steps is None else int(steps), checkpoint=checkpoint,
                 batch_size=s.batch_size, lr=s.lr, aux_lr=s.aux_lr, clip_max_norm=s.clip_max_norm, seed=seed,
                 checkpoint_every=s.checkpoint_every, aux_steps=s.aux_steps, lr_decay_start=s.lr_decay_start,
                 lr_decay_to=s.lr_decay_to, retrain=retrain, device=device or cfg.device, collate=collate,
                 desc=desc, meta={"profile": cfg.name, "schedule": schedule, **(meta or {})}, progress=progress,
                 hooks=hooks)
