"""Data-parallel training with ``torch.distributed``: what makes K processes train as one.

``torchrun --nproc_per_node K -m tficlib train STAGE`` starts K processes;
:func:`init_from_env` joins them into one process group (NCCL on CUDA, gloo
on the CPU) and :func:`tficlib.train.train` then runs every step as follows:

* **one global batch.** Every rank draws the batch one process would draw
  (the loop's batch order and the random crops of a step are a pure function
  of seed and step) and keeps its share (:func:`shard`); the batch size must
  be a multiple of K.
* **the same noise.** CompressAI's training quantizer adds uniform noise to
  the latents.  Inside :func:`global_noise` each rank draws the noise of the
  *whole* batch from the step's seed and keeps its rows, so the noisy latents
  of a K-rank step are those of the one-process step.
* **the same batch statistics.** A network with BatchNorm in training mode
  (DnCNN) normalises over the whole batch: :func:`convert_batchnorm` swaps its
  BatchNorm layers for :class:`GlobalBatchNorm2d`, which all-reduces the sums
  (differentiably).  PyTorch's own ``SyncBatchNorm`` refuses CPU tensors.
* **gradients averaged** by ``DistributedDataParallel``; every loss of
  :mod:`tficlib.objectives` is a mean over the batch's items, so the average
  of the ranks' gradients is the whole batch's gradient.
* **the entropy bottleneck's quantiles stay out of DDP.** Their auxiliary
  loss (CompressAI's ``aux_loss``) depends on no data and is minimised by a
  separate optimizer after the main step; each rank takes the same auxiliary
  step on the same (synchronised) parameters, so no communication is needed,
  and DDP never waits for gradients that its backward does not produce.
* **rank 0 writes** checkpoints, logs and models (atomically); the others
  wait at a barrier, then read the same files.  Logged scalars are averaged
  over the ranks.

A run resumed after a kill, with any number of ranks, continues from the last
checkpoint like one process does.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "Context",
    "GlobalBatchNorm2d",
    "barrier",
    "context",
    "convert_batchnorm",
    "global_noise",
    "init_from_env",
    "is_main",
    "launched_by_torchrun",
    "main_first",
    "mean_over_ranks",
    "shard",
    "shutdown",
]


@dataclass(frozen=True)
class Context:
    """This process's place in the run: ``rank`` of ``world`` processes (1 without torch.distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def context() -> Context:
    """The current :class:`Context` (rank 0 of 1 unless a process group is initialised)."""
    dist = _dist()
    if dist is None:
        return Context()
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def is_main() -> bool:
    """True on the rank that writes files (rank 0, or the only process): :func:`tficlib.artifacts.is_writer`."""
    from .artifacts import is_writer

    return is_writer()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the body first (e.g. builds and writes a cache), the other ranks after it (and read it)."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def launched_by_torchrun() -> bool:
    """True when the environment of ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``) is set."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def init_from_env(device: str | None = None) -> Context:
    """Join the process group described by torchrun's environment; returns the :class:`Context`.

    NCCL when ``device`` is CUDA (each rank on ``cuda:LOCAL_RANK``), gloo
    otherwise.  Without torchrun's environment nothing is done (one process).
    """
    import torch.distributed as dist

    if not launched_by_torchrun() or _dist() is not None:
        return context()
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    return context()


def shutdown() -> None:
    """Leave the process group (after a barrier), if one is initialised."""
    dist = _dist()
    if dist is not None:
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    dist = _dist()
    if dist is not None:
        dist.barrier()


def shard(batch, ctx: Context):
    """This rank's share of a collated global batch: rows ``[r·B/K, (r+1)·B/K)`` of every tensor or list.

    Tuples, dicts and lists holding tensors are records (each field is
    sharded); any other list is a list of items (labels, word dicts).
    """
    if not ctx.distributed:
        return batch
    if isinstance(batch, torch.Tensor):
        n = batch.shape[0]
        if n % ctx.world:
            raise ValueError(f"a batch of {n} does not split into {ctx.world} equal shares")
        k = n // ctx.world
        return batch[ctx.rank * k:(ctx.rank + 1) * k]
    if isinstance(batch, dict):
        return {key: shard(v, ctx) for key, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(shard(v, ctx) for v in batch)
    if isinstance(batch, list) and any(isinstance(v, (torch.Tensor, list, tuple)) for v in batch):
        return [shard(v, ctx) for v in batch]  # a collated record (default_collate of tuples): shard each field
    if isinstance(batch, list):  # a list of items (strings, word dicts): its share
        n = len(batch)
        if n % ctx.world:
            raise ValueError(f"a batch of {n} does not split into {ctx.world} equal shares")
        k = n // ctx.world
        return batch[ctx.rank * k:(ctx.rank + 1) * k]
    return batch


@contextlib.contextmanager
def global_noise(model: nn.Module, ctx: Context) -> Iterator[None]:
    """While active, the model's CompressAI entropy models draw the noise of the whole batch, keep their rows.

    CompressAI's ``quantize(inputs, "noise")`` adds ``empty_like(inputs).uniform_(-0.5, 0.5)``.
    The Gaussian conditional quantizes (B, C, H, W) latents (batch on dim 0);
    the entropy bottleneck reshapes its input to (C, 1, B·H·W) (batch
    outermost in the last dim).  Each rank draws the tensor of the global
    batch, as one process would, and keeps its contiguous share.  No-op in
    one process.
    """
    if not ctx.distributed:
        yield
        return
    from compressai.entropy_models import EntropyBottleneck, EntropyModel

    patched = []
    for module in model.modules():
        if isinstance(module, EntropyModel):
            batch_dim = 2 if isinstance(module, EntropyBottleneck) else 0
            original = module.quantize

            def quantize(inputs, mode, means=None, _original=original, _dim=batch_dim):
                if mode != "noise":
                    return _original(inputs, mode, means)
                shape = list(inputs.shape)
                shape[_dim] *= ctx.world
                noise = torch.empty(shape, dtype=inputs.dtype, device=inputs.device).uniform_(-0.5, 0.5)
                return inputs + noise.unflatten(_dim, (ctx.world, -1)).select(_dim, ctx.rank)

            module.quantize = quantize
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.quantize  # the class's method again


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the whole batch across all ranks.

    The per-channel sums (then the squared deviations from the global mean)
    are all-reduced with ``torch.distributed.nn.functional.all_reduce``
    (gradients flow through it), then normalisation and the running statistics follow
    ``nn.BatchNorm2d`` (biased variance to normalise, unbiased for the
    running variance).  In eval mode, or in one process, it is BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dist = _dist()
        if not self.training or dist is None or dist.get_world_size() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        total = all_reduce(torch.cat([x.sum(dim=(0, 2, 3)), x.new_full((1,), float(x.numel() // c))]))
        n = total[c]
        mean = total[:c] / n
        var = all_reduce((x - mean[None, :, None, None]).pow(2).sum(dim=(0, 2, 3))) / n  # two passes, as BatchNorm
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * (var.detach() * n / max(float(n) - 1, 1.0)))
        y = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_batchnorm(model: nn.Module) -> nn.Module:
    """Swap every ``nn.BatchNorm2d`` of ``model`` for a :class:`GlobalBatchNorm2d` holding the same tensors.

    In place; the state dict keeps its keys, so checkpoints load either way.
    """
    for name, child in list(model.named_children()):
        if type(child) is nn.BatchNorm2d:
            bn = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            bn.to(next(child.buffers()).device if list(child.buffers()) else "cpu")
            bn.train(child.training)
            setattr(model, name, bn)
        else:
            convert_batchnorm(child)
    return model


def mean_over_ranks(values: dict[str, float], ctx: Context) -> dict[str, float]:
    """The mean of each logged scalar over the ranks (the same keys on every rank)."""
    dist = _dist()
    if not ctx.distributed or dist is None or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return {k: float(v) / ctx.world for k, v in zip(keys, t.cpu().tolist())}

