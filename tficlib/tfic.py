"""Recipes of notebooks 01 and 02: the TFIC codec (Della Fiore et al., EUSIPCO 2025, Sec. III–IV).

* Stage 1 (:func:`train_mse_models`, γ = 0): L = R(ŷ, ẑ) + λ·255²·MSE(x, x̂)
  (:class:`~tficlib.objectives.RateDistortion`) at every λ of
  ``cfg.codec.lambdas`` — from scratch (``lambda_steps = 0``, the paper) or
  fine-tuned from one base model trained at ``base_lambda``.
* Stage 2 (:func:`finetune`, λ = 0): L = R(ŷ, ẑ) + γ·L_OCR(G(x), T(x̂))
  (:class:`~tficlib.objectives.TFIC`) from a stage-1 model, the OCR frozen:
  :func:`paper_recipe` (γ = 0.1 from every stage-1 model), :func:`gamma_sweep`
  (our rate knob), :func:`mse_controls` (the same extra steps with the
  stage-1 loss) and :func:`robust_sweep` (our extension: the pixel term kept
  beside the OCR term, optionally on random views of x̂, for a gain that
  holds for engines never trained against).  :func:`train_stage1` /
  :func:`train_stage2` run all of a notebook's training (also
  ``python -m tficlib train 01|02``).
* The stage's own figure: :func:`plot_drift`.  Evaluation and Fig. 4
  (:func:`tficlib.evaluate.visual_comparison`) are :mod:`tficlib.evaluate`'s.

Checkpoints: ``<stage_dir>/checkpoints/<run>.ckpt`` (training state, resumable);
finished codecs: ``<stage_dir>/models/<method>_<k>.pt`` (:func:`tficlib.codec.save_model`).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import torch

from . import artifacts, codec, evaluate
from .objectives import TFIC, RateDistortion
from .train import Run, derive_seed, fit, load_model_state

__all__ = [
    "STAGE1",
    "STAGE2",
    "finetune",
    "gamma_sweep",
    "mse_controls",
    "new_codec",
    "paper_recipe",
    "plot_drift",
    "robust_sweep",
    "robust_views",
    "train_mse_models",
    "train_stage1",
    "train_stage2",
]

STAGE1 = artifacts.MSE_PRETRAINING
STAGE2 = artifacts.TFIC_FINETUNING


def new_codec(cfg, seed: int = 0):
    """A freshly initialised codec of the profile (``cfg.codec.model``, N, M), seeded."""
    torch.manual_seed(derive_seed(seed, 0x1417))
    return codec.build_model(cfg.codec.model, cfg.codec.N, cfg.codec.M)


def _run_seed(seed: int, name: str) -> int:
    return derive_seed(seed, zlib.crc32(name.encode()))


def _fit(cfg, kind: str, stage: str, name: str, model, objective, dataset, *, device, seed: int, retrain: bool):
    return fit(cfg, kind, model, objective, dataset, evaluate.checkpoint_path(cfg, stage, name),
               seed=_run_seed(seed, name), device=device, desc=name, retrain=retrain,
               meta={"stage": stage, "run": name})


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
    path = evaluate.model_path(cfg, stage, method, k)
    meta = {"stage": stage, "method": method, "k": k, "profile": cfg.name, **params,
            "steps": result.steps, "aux_loss": result.aux_loss}
    if not (result.reused and _saved_with(path, meta)) and artifacts.is_writer():
        codec.save_model(path, result.model, meta)
    return Run.of(f"{method}_{k}", path, result, params)


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
        res = _fit(cfg, "codec.base", STAGE1, "mse_base", new_codec(cfg, seed), RateDistortion(c.base_lambda),
                   train_set, device=device, seed=seed, retrain=retrain)
        base_state = {k: v.detach().clone() for k, v in res.model.state_dict().items()}
        base_run = Run.of("mse_base", res.checkpoint, res, {"lambda": c.base_lambda})
    runs = []
    for k, lam in enumerate(c.lambdas):
        model = new_codec(cfg, seed)
        if base_state is not None:
            load_model_state(model, base_state)
        res = _fit(cfg, "codec.lambda", STAGE1, f"mse_{k}", model, RateDistortion(lam), train_set, device=device,
                   seed=seed, retrain=retrain)
        runs.append(_save(cfg, STAGE1, "mse", k, res, {"lambda": lam, "from": "mse_base" if base_state else None}))
    return base_run, runs


def train_stage1(cfg, device=None, seed: int | None = None, retrain: bool = False) -> tuple[Run | None, list[Run]]:
    """Every training run of notebook 01 on the profile's training lines (:func:`train_mse_models`)."""
    from .data import textlines

    seed = cfg.seed if seed is None else seed
    return train_mse_models(cfg, textlines.load_split(cfg, "train"), device or cfg.device, seed, retrain)


# --------------------------------------------------------------------------- stage 2
def finetune(cfg, train_set, device, start_k: int, objective, name: str, seed: int = 0, retrain: bool = False):
    """``cfg.tfic.steps`` steps of ``objective`` from the stage-1 model ``mse_<start_k>``."""
    model, _ = codec.load_model(evaluate.model_path(cfg, STAGE1, "mse", start_k), stage=STAGE1, device=device)
    return _fit(cfg, "tfic", STAGE2, name, model, objective, train_set, device=device, seed=seed, retrain=retrain)


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
        res = finetune(cfg, train_set, device, k, TFIC(g, 0.0, ste=cfg.tfic.ste), _tfic_name(k, g), seed, retrain)
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
        res = finetune(cfg, train_set, device, start, TFIC(g, 0.0, ste=cfg.tfic.ste), _tfic_name(start, g), seed,
                       retrain)
        runs.append(_save(cfg, STAGE2, "tfic", j, res, {"gamma": g, "lambda": 0.0, "start": start}))
    return runs


def robust_views(cfg):
    """The random views of the robust variant (:class:`tficlib.ocr.OCRViews`), None without jitter or binarization."""
    from .ocr import OCRViews

    t = cfg.tfic
    if t.robust_strength == 0 and t.robust_binarize == 0:
        return None
    return OCRViews(strength=t.robust_strength, binarize=t.robust_binarize)


def robust_gammas(cfg) -> list[float]:
    """γ_k of each robust run: ``robust_gamma``, or with ``robust_gamma_scaled`` γ·min(1, λ_k/λ_s).

    λ_s is the γ sweep's start (``cfg.tfic.sweep_start_index``).  Scaled, the
    models below λ_s keep the OCR term's ratio to the pixel term at λ_s,
    R + λ_k·(p·255²·MSE + (γ/λ_s)·L_OCR), instead of letting it dominate
    where λ_k is small; from λ_s up γ stays γ.
    """
    t, lambdas = cfg.tfic, cfg.codec.lambdas
    ref = lambdas[t.sweep_start_index]
    return [t.robust_gamma * min(1.0, lam / ref) if t.robust_gamma_scaled else t.robust_gamma for lam in lambdas]


def robust_sweep(cfg, train_set, device, seed: int = 0, retrain: bool = False) -> list[Run]:
    """Our robust variant: L = R + p·λ_k·255²·MSE + γ_k·E_T[L_OCR(G(x), T(x̂))] -> ``models/tfic_robust_<k>.pt``.

    From every stage-1 model k (λ_k), like :func:`mse_controls`, with the pixel
    term the paper drops kept at ``p = cfg.tfic.robust_pixel`` of λ_k,
    γ_k from :func:`robust_gammas` and, at ``cfg.tfic.robust_strength > 0``, the
    recognizer reading random views T(x̂) (:func:`robust_views`; at
    ``cfg.tfic.robust_binarize > 0`` that share of them binarized) and, at
    ``cfg.tfic.robust_binary > 0``, a pixel term on binarized shapes of
    ``robust_binary·λ_k`` (:func:`tficlib.losses.binary_distortion`); at
    ``cfg.tfic.robust_background < 1`` the pixel term weighs the background
    by that much (:func:`tficlib.losses.text_weighted_distortion`).  The
    stage-1 λ is the rate knob, so the curve spans the MSE codec's rates.
    Nothing is trained when ``cfg.tfic.robust`` is False.
    """
    t = cfg.tfic
    if not t.robust:
        return []
    views = robust_views(cfg)
    runs = []
    for k, (lam, gamma) in enumerate(zip(cfg.codec.lambdas, robust_gammas(cfg))):
        name = f"tfic_robust_from{k}_gamma{gamma:g}_pixel{t.robust_pixel:g}_views{t.robust_strength:g}"
        name += (f"_bin{t.robust_binarize:g}" if t.robust_binarize else "") + (
            f"_shape{t.robust_binary:g}" if t.robust_binary else "") + (
            f"_bg{t.robust_background:g}" if t.robust_background != 1 else "")
        objective = TFIC(gamma, t.robust_pixel * lam, ste=t.ste, views=views, binary=t.robust_binary * lam,
                         background=t.robust_background)
        res = finetune(cfg, train_set, device, k, objective, name, seed, retrain)
        runs.append(_save(cfg, STAGE2, "tfic_robust", k, res,
                          {"gamma": gamma, "lambda": t.robust_pixel * lam, "start": k,
                           "pixel": t.robust_pixel, "views": None if views is None else views.params(),
                           **({"binary": t.robust_binary} if t.robust_binary else {}),
                           **({"background": t.robust_background} if t.robust_background != 1 else {})}))
    return runs


def mse_controls(cfg, train_set, device, seed: int = 0, retrain: bool = False) -> list[Run]:
    """Controls: each stage-1 model gets ``cfg.tfic.steps`` more steps of its own stage-1 loss.

    Same batch size and learning rate as the TFIC runs -> ``models/mse_<k>.pt`` of stage 02.
    """
    runs = []
    for k, lam in enumerate(cfg.codec.lambdas):
        res = finetune(cfg, train_set, device, k, RateDistortion(lam), f"mse_control_{k}", seed, retrain)
        runs.append(_save(cfg, STAGE2, "mse", k, res, {"lambda": lam, "start": k, "control": True}))
    return runs


def train_stage2(cfg, device=None, seed: int | None = None, retrain: bool = False) -> dict[str, list[Run]]:
    """Every training run of notebook 02: ``{"paper": ..., "tfic": ..., "mse": ..., "robust": ...}``."""
    from .data import textlines

    seed = cfg.seed if seed is None else seed
    device = device or cfg.device
    train_set = textlines.load_split(cfg, "train")
    return {"paper": paper_recipe(cfg, train_set, device, seed, retrain),
            "tfic": gamma_sweep(cfg, train_set, device, seed, retrain),
            "mse": mse_controls(cfg, train_set, device, seed, retrain),
            "robust": robust_sweep(cfg, train_set, device, seed, retrain)}


# --------------------------------------------------------------------------- figures
def plot_drift(runs: list[Run], start_evals: list[dict], end_evals: list[dict]):
    """Paper recipe (λ = 0, γ = 0.1): training-mode bpp per step of every run, and real bpp start -> end."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for i, (run, s, e) in enumerate(zip(runs, start_evals, end_evals)):
        label = f"from mse_{run.params.get('start')}"
        steps = [r["step"] for r in run.log]
        bpp = [r["bpp"] for r in run.log]
        window = max(1, len(bpp) // 20)
        smooth = np.convolve(bpp, np.ones(window) / window, mode="valid")
        ax1.plot(steps[window - 1:], smooth, color=f"C{i}", label=label)
        ax2.plot([0, 1], [s["bpp"], e["bpp"]], marker="o", color=f"C{i}", label=label)
    ax1.set_xlabel("step")
    ax1.set_ylabel("training bpp (noisy latents)")
    ax1.set_title("rate during stage 2 (moving average)")
    ax1.grid(True, alpha=0.3)
    ax2.set_xticks([0, 1], ["stage 1 (start)", "stage 2 (end)"])
    ax2.set_ylabel("real bpp (test)")
    ax2.set_title("real rate: start -> end")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=7, title="run", title_fontsize=7)
    fig.tight_layout()
    return fig
