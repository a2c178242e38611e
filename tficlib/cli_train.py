"""``python -m tficlib train STAGE``: a notebook's training runs outside the notebook, on one or many processes.

Runs every training run of a stage (01: stage 1 and its λ fine-tunes; 02: the
paper recipe, the γ sweep and the MSE controls; 03: the reference and J runs,
the κ sweep and Eq. 4; 04: DnCNN and its λ = 1 ablation; 05: D2) with the
profile's amounts, writing exactly the checkpoints and models the notebook
writes, so that the notebook afterwards finds them finished and only
evaluates and plots.

Alone it is one process.  Under ``torchrun --nproc_per_node K`` (or a
multi-node rendezvous) every run is data-parallel over the K processes
(:mod:`tficlib.distributed`): NCCL on CUDA, gloo on the CPU; rank 0 writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from . import artifacts, config, distributed

__all__ = ["STAGES", "add_command", "train_stage"]


def _runs(result) -> list:
    """The :class:`~tficlib.train.Run` / TrainResult objects of a stage's result, flattened."""
    if result is None:
        return []
    if isinstance(result, dict):
        return [r for v in result.values() for r in _runs(v)]
    if isinstance(result, (list, tuple)):
        return [r for v in result for r in _runs(v)]
    return [result]


def _stage1(cfg, device, retrain):
    from . import tfic

    base, runs = tfic.train_stage1(cfg, device, retrain=retrain)
    return ([base] if base else []) + runs


def _stage2(cfg, device, retrain):
    from . import tfic

    return tfic.train_stage2(cfg, device, retrain=retrain)


def _stage3(cfg, device, retrain):
    from . import textlogit

    return textlogit.train_stage(cfg, device, retrain=retrain)


def _stage4(cfg, device, retrain):
    from . import dequant

    return dequant.train_stage4(cfg, device, retrain=retrain)


def _stage5(cfg, device, retrain):
    from . import dequant

    return dequant.train_stage5(cfg, device, retrain=retrain)[1]


#: notebook prefix -> (stage, the function that runs its training)
STAGES: dict[str, tuple[str, Callable]] = {
    "01": (artifacts.MSE_PRETRAINING, _stage1),
    "02": (artifacts.TFIC_FINETUNING, _stage2),
    "03": (artifacts.TEXT_LOGIT, _stage3),
    "04": (artifacts.DNCNN, _stage4),
    "05": (artifacts.OCR_GUIDED, _stage5),
}


def train_stage(prefix: str, profile: str | None = None, overrides: dict | None = None, retrain: bool = False,
                log=print, seed: int | None = None) -> list:
    """Every training run of notebook ``prefix`` (``"01"`` ... ``"05"``) in ``profile``; returns the runs.

    Joins torchrun's process group when launched by torchrun, and leaves it at the end.
    """
    key = str(prefix).zfill(2)[:2]
    if key not in STAGES:
        raise ValueError(f"no training in stage {prefix!r}: stages with training are {', '.join(STAGES)}")
    stage, fn = STAGES[key]
    cfg = config.resolve(profile)
    if overrides:
        cfg = config.apply_overrides(cfg, overrides)
    cfg = config.with_seed(cfg, seed)
    ctx = distributed.init_from_env(cfg.device)
    try:
        if ctx.rank == 0:
            from .runner import link_earlier_stages, link_reusable

            link_earlier_stages(cfg, [stage], log=log)  # a variant takes the stages it does not retrain from the profile
            link_reusable(cfg, [stage], log=log)  # ... and the runs its settings leave as they were
        distributed.barrier()
        device = config.setup(cfg)
        if ctx.rank == 0:
            where = f"{ctx.world} processes ({'NCCL' if device.type == 'cuda' else 'gloo'})" if ctx.distributed \
                else "one process"
            log(f"tficlib: training {stage} in profile {cfg.name!r} on {device}, {where}; data in {cfg.data_dir}")
        t0 = time.perf_counter()
        runs = _runs(fn(cfg, device, retrain))
        if ctx.rank == 0:
            for r in runs:
                name = getattr(r, "name", None) or getattr(r, "checkpoint", "")
                state = getattr(r, "state", None) or ("reused" if r.reused else "trained")
                log(f"  {str(name):<28} {state}")
            log(f"tficlib: {len(runs)} run(s) in {(time.perf_counter() - t0) / 60:.1f} min; now run "
                f"notebooks/{stage}.ipynb (python -m tficlib run --profile {cfg.name} --from {key} --to {key}) "
                "to evaluate")
        return runs
    finally:
        if ctx.distributed:
            distributed.shutdown()


def _cmd_train(args) -> int:
    train_stage(args.stage, args.profile, config.parse_assignments(args.set), retrain=args.retrain, seed=args.seed)
    return 0


def add_command(subparsers) -> None:
    """``train STAGE [--profile P] [--set k=v ...] [--retrain]``."""
    p = subparsers.add_parser("train", help="run a notebook's training runs (also under torchrun, data-parallel)")
    p.add_argument("stage", help=f"notebook prefix: {', '.join(STAGES)}")
    p.add_argument("--profile", default=None, help="smoke | cpu | paper | auto (default: $TFIC_PROFILE or auto)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="change an amount (as for 'run'); the runs then belong to the variant's folder")
    p.add_argument("--seed", type=int, default=None, help="a training seed other than the profile's (variant seed<N>)")
    p.add_argument("--retrain", action="store_true", help="train again even where a finished run exists")
    p.set_defaults(func=_cmd_train)
