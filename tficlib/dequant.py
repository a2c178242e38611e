"""Recipes of notebooks 04 and 05: dequantizing extreme JPEG with DnCNN, then OCR-guided refinement.

Della Fiore et al., *End-to-End Semantic Preservation in Text-Aware Image
Compression Systems* (journal extension of TFIC), Section 4:

* notebook 04 — :func:`train_dncnn`: D1, a :class:`~tficlib.dncnn.DnCNN`
  (Sec. 4.3) trained on random crops with λ·MSE(x, x̂) + (1 − λ)·L_DCT(x_q, x̂)
  (Sec. 4.4, :class:`~tficlib.objectives.Dequantization`), with weight
  snapshots for an accuracy-vs-steps curve (:func:`accuracy_curve`);
  :func:`train_ablation` is the λ = 1 (MSE only) ablation;
* notebook 05 — :func:`precompute_guidance` (frozen D1 and CRAFT, once),
  :class:`WordPatches` and :func:`train_ocr_guided`: D2 trained through the
  frozen recognizer (Sec. 4.5, :class:`~tficlib.objectives.OCRGuided`);
* :func:`targets`: the profile's accuracy targets, measured.

Choices we made where the paper is silent are stated in the notebooks; the
networks are in :mod:`tficlib.dncnn`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from . import artifacts, distributed, evaluate, metrics, ocr
from .dncnn import DnCNN, OCRGuidedChain, PatchCrops, load_dncnn, restore
from .objectives import Dequantization, OCRGuided
from .train import SnapshotHook, TrainResult, fit, snapshots

__all__ = [
    "STAGE_DNCNN",
    "STAGE_GUIDED",
    "WordPatches",
    "accuracy_curve",
    "precompute_guidance",
    "snapshot_model",
    "targets",
    "train_ablation",
    "train_dncnn",
    "train_ocr_guided",
    "train_stage4",
    "train_stage5",
]

STAGE_DNCNN = artifacts.DNCNN
STAGE_GUIDED = artifacts.OCR_GUIDED


# =========================================================================== data
def split_training(cfg, dataset=None) -> tuple:
    """The training patches D1 and D2 learn from, and the held-out validation patches: ``(train, validation)``.

    The last ``cfg.dequant.validation_patches`` training patches (whole pages
    at the end of the training split) are set aside, never trained on, to
    choose settings on (the test split is only reported).  Both are
    ``torch.utils.data.Subset`` objects that keep the dataset's ``words``.
    """
    from .data import pages

    dataset = pages.load_patches(cfg, "train") if dataset is None else dataset
    n_val = min(int(cfg.dequant.validation_patches), len(dataset) - 1)
    cut = len(dataset) - max(0, n_val)
    parts = []
    for indices in (range(cut), range(cut, len(dataset))):
        part = torch.utils.data.Subset(dataset, list(indices))
        if hasattr(dataset, "words"):
            part.words = lambda i, _idx=list(indices): dataset.words(_idx[i])
        parts.append(part)
    return parts[0], parts[1]


def validation_patches(cfg) -> dict:
    """The held-out validation patches as tensors, like :func:`tficlib.evaluate.test_patches` (None when there are none)."""
    _, val = split_training(cfg)
    if len(val) == 0:
        return None
    items = [val[i] for i in range(len(val))]
    return {"clean": torch.stack([it["clean"] for it in items]), "degraded": torch.stack([it["degraded"] for it in items]),
            "texts": [it["text"] for it in items], "words": [it["words"] for it in items], "dataset": val}


def training_crops(cfg, dataset=None) -> PatchCrops:
    """D1's training data: random crops of the training patches (validation held out) on the JPEG block lattice.

    With ``cfg.dequant.dct_grid = "jpeg"`` each crop also carries its
    low-resolution JPEG decode for the DCT loss on the JPEG's own blocks.
    """
    d, p = cfg.dequant, cfg.pages
    train, _ = split_training(cfg, dataset)
    if d.dct_grid not in ("jpeg", "patch"):
        raise ValueError(f"dequant.dct_grid must be 'jpeg' or 'patch', got {d.dct_grid!r}")
    jpeg = (p.downsample, p.jpeg_quality) if d.dct_grid == "jpeg" else None
    return PatchCrops(train, crop=d.crop, grid=8 * p.downsample if jpeg else 16, jpeg=jpeg)


# =========================================================================== notebook 04: D1
def train_dncnn(cfg, train_set, checkpoint: str | Path, *, mse_weight: float | None = None, kind: str = "dequant",
                steps: int | None = None, snapshot_every: int | None = None, retrain: bool = False, device=None,
                progress: bool = True) -> TrainResult:
    """Train a :class:`~tficlib.dncnn.DnCNN` (Sec. 4.3–4.4) with :func:`tficlib.train.fit`.

    Amounts from ``cfg.dequant`` (depth, features, crop on the JPEG block
    lattice, λ = ``mse_weight``, τ, the DCT term's grid) and the optimizer settings of ``kind``
    (:func:`tficlib.train.settings`: ``dequant``, or ``dequant.ablation`` for
    the λ = 1 ablation); ``steps`` overrides the profile's.  Starts at the
    identity (zero last layer).  Every ``snapshot_every`` steps (default
    ``cfg.dequant.eval_every``; 0: none) the weights are stored beside the
    checkpoint (:class:`~tficlib.train.SnapshotHook`) for :func:`accuracy_curve`.
    """
    d = cfg.dequant
    mse_weight = d.mse_weight if mse_weight is None else float(mse_weight)
    every = d.eval_every if snapshot_every is None else int(snapshot_every)
    model = DnCNN(d.depth, d.features)
    data = train_set if isinstance(train_set, PatchCrops) else training_crops(cfg, train_set)
    objective = Dequantization(mse_weight, d.dct_tau, jpeg_factor=cfg.pages.downsample if d.dct_grid == "jpeg" else 0)
    hooks = [SnapshotHook(checkpoint, every)] if every else []
    return fit(cfg, kind, model, objective, data, checkpoint, seed=cfg.seed, steps=steps, device=device,
               desc=objective.name, progress=progress, retrain=retrain, hooks=hooks,
               meta={"dncnn": model.hparams(), "crop": d.crop})


def train_ablation(cfg, train_set, checkpoint: str | Path, *, retrain: bool = False, device=None,
                   progress: bool = True) -> tuple[TrainResult, int]:
    """The λ = 1 (MSE only) ablation of Sec. 4.4, paired with the main λ run: returns (result, reference_step).

    With ``cfg.dequant.ablation_steps`` = None (or = steps) it is the main
    recipe with λ = 1, compared with the main run's final model.  With fewer
    steps (a budget), it runs at the constant lr that the main run has up to
    ``lr_decay_start·steps``, with the same seed and crops, and is compared
    with the main run's weight snapshot at the same step (which must be a
    snapshot step inside the constant-lr phase).
    """
    d = cfg.dequant
    steps = d.steps if d.ablation_steps is None else int(d.ablation_steps)
    if steps < d.steps and (not d.eval_every or steps % d.eval_every or steps > d.lr_decay_start * d.steps):
        raise ValueError(
            f"ablation_steps={steps} must be a multiple of eval_every={d.eval_every} and at most "
            f"lr_decay_start·steps={d.lr_decay_start * d.steps:g} to be paired with a snapshot of the main run")
    result = train_dncnn(cfg, train_set, checkpoint, mse_weight=1.0, kind="dequant.ablation", snapshot_every=0,
                         retrain=retrain, device=device, progress=progress)
    return result, steps


def snapshot_model(cfg, checkpoint: str | Path, step: int) -> DnCNN:
    """The DnCNN of a :func:`train_dncnn` run at weight snapshot ``step`` (eval mode)."""
    store = snapshots(checkpoint)
    if step not in store:
        raise KeyError(f"no snapshot at step {step} beside {checkpoint} (have {sorted(store)})")
    model = DnCNN(cfg.dequant.depth, cfg.dequant.features)
    model.load_state_dict(store[step])
    return model.eval()


def accuracy_curve(cfg, checkpoint: str | Path, degraded: torch.Tensor, texts: Sequence[str],
                   progress: bool = True) -> list[dict]:
    """OCR accuracy of each weight snapshot of a :func:`train_dncnn` run: [{step, accuracy, accuracy_ci}]."""
    store = snapshots(checkpoint)
    if not store:
        raise artifacts.MissingArtifact(f"no weight snapshots beside {checkpoint}; train with snapshot_every > 0")
    d = cfg.dequant
    rows = []
    steps = sorted(store)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="accuracy vs steps")
    for step in steps:
        model = DnCNN(d.depth, d.features)
        model.load_state_dict(store[step])
        out = evaluate.evaluate_ocr(restore(model, degraded, cfg.eval.batch_size), texts)
        rows.append({"step": step, "accuracy": out["accuracy"], "accuracy_ci": out["accuracy_ci"]})
    return rows


def train_stage4(cfg, device=None, retrain: bool = False) -> dict[str, TrainResult]:
    """Every training run of notebook 04: D1 (``dncnn.pt``) and the λ = 1 ablation (``dncnn_mse_only.pt``)."""
    crops = training_crops(cfg)
    stage = cfg.stage_dir(STAGE_DNCNN)
    return {"dncnn": train_dncnn(cfg, crops, stage / "dncnn.pt", retrain=retrain, device=device),
            "ablation": train_ablation(cfg, crops, stage / "dncnn_mse_only.pt", retrain=retrain, device=device)[0]}


def targets(cfg, accuracy: dict, gains: dict | None = None, ablation: dict | None = None) -> dict:
    """The profile's targets, measured: ``{claim: {"measured", "target", "met"}}`` (:func:`tficlib.report.target`).

    ``accuracy``: ``{"jpeg", "dncnn", "ocr_guided"}`` accuracies (05's at the
    chain end); ``gains``: paired differences (:func:`tficlib.metrics.paired_difference`)
    ``ocr_guided - dncnn`` and ``ocr_guided - anchor_only``; ``ablation``:
    ``{"with_dct", "mse_only"}`` accuracies at the same step.  ``cpu``:
    degraded < 0.05 (the paper's "below 5 %"), DnCNN ≥ 0.60, OCR-guided ≥
    DnCNN + 0.05 with its interval above 0, above the anchor-only control
    (interval above 0), λ = 0.8 reads at least as well as λ = 1.  ``paper``
    (the journal's Sec. 4.6 on a GPU): DnCNN ≥ 0.70, OCR-guided ≥ 0.85.
    ``smoke`` has none.  A target not met is reported with its number, never
    hidden: the notebooks print this table and store it in results.json.
    """
    from .report import target

    if cfg.name not in ("cpu", "paper"):
        return {}
    out = {}
    if accuracy.get("jpeg") is not None:
        out["degraded JPEG < 0.05"] = target(accuracy["jpeg"], 0.05, accuracy["jpeg"] < 0.05)
    floor = 0.60 if cfg.name == "cpu" else 0.70
    if accuracy.get("dncnn") is not None:
        out[f"DnCNN >= {floor:.2f}"] = target(accuracy["dncnn"], floor, accuracy["dncnn"] >= floor)
    if ablation:
        out["lambda = 0.8 (with DCT) >= lambda = 1 (MSE only), same steps"] = target(
            ablation["with_dct"], ablation["mse_only"], ablation["with_dct"] >= ablation["mse_only"])
    if cfg.name == "paper" and accuracy.get("ocr_guided") is not None:
        out["OCR-guided >= 0.85"] = target(accuracy["ocr_guided"], 0.85, accuracy["ocr_guided"] >= 0.85)
    for key, goal, claim in (("ocr_guided - dncnn", 0.05, "OCR-guided - DnCNN >= +0.05, interval above 0"),
                             ("ocr_guided - anchor_only", 0.0, "OCR-guided - anchor-only > 0, interval above 0")):
        g = (gains or {}).get(key)
        if g is not None and cfg.name == "cpu":
            out[claim] = target(g["value"], goal, g["value"] >= goal and g["low"] > 0, interval=[g["low"], g["high"]])
    return out


# =========================================================================== notebook 05: D2
def precompute_guidance(d1: DnCNN, dataset, path: str | Path, *, detect_kwargs: dict | None = None,
                        batch_size: int = 16, progress: bool = True, d1_id: str = "") -> dict:
    """D1's outputs, CRAFT's boxes and their labels for a whole split, computed once and cached.

    D1 and CRAFT are frozen, so x̃ = D1(x) and the matched (box, word) pairs do
    not change during D2's training.  Cached at ``path`` (atomic, loaded
    with ``weights_only``); recomputed if ``d1_id`` (e.g. the D1 checkpoint's
    sha256), the split size or the detector settings differ.  Returns
    dict(x_tilde uint8 (N,3,H,W), pairs [[(box, label)]], counts totals).
    """
    path = Path(path)
    key = {"d1": d1_id, "n": len(dataset), "detect_kwargs": dict(detect_kwargs or {})}
    if path.exists():
        payload = artifacts.load_checkpoint(path)
        if payload["meta"].get("key") == key:
            st = payload["state"]
            return {"x_tilde": st["x_tilde"], "pairs": payload["meta"]["pairs"], "counts": payload["meta"]["counts"],
                    "words": payload["meta"]["words"]}
    degraded = torch.stack([dataset[i]["degraded"] for i in range(len(dataset))])
    x_tilde = restore(d1, degraded, batch_size)
    x8 = (x_tilde * 255).round().to(torch.uint8)
    items = range(len(dataset))
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="CRAFT on D1's output")
    all_pairs, all_words, totals = [], [], {}
    for i in items:
        words = dataset.words(i) if hasattr(dataset, "words") else dataset[i]["words"]
        all_words.append([(w, list(b)) for w, b in words])
        boxes = ocr.detect_boxes(x8[i].permute(1, 2, 0).numpy(), **(detect_kwargs or {}))
        pairs, counts = ocr.match_words(boxes, words)
        pairs = [(list(b), ocr.to_charset(t)) for b, t in pairs]
        all_pairs.append([p for p in pairs if p[1].strip()])
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
    if artifacts.is_writer():
        artifacts.save_checkpoint(path, {"x_tilde": x8},
                                  {"key": key, "pairs": all_pairs, "counts": totals, "words": all_words})
    return {"x_tilde": x8, "pairs": all_pairs, "counts": totals, "words": all_words}


class WordPatches(torch.utils.data.Dataset):
    """The matched (word patch, label) pairs of a split: ``item = dict(index, box, label)``.

    ``index`` points into the cached x̃ of :func:`precompute_guidance`.  If
    CRAFT matched no box in the whole split (an untrained D1, as in the
    ``smoke`` profile), the rendered words' own boxes are used instead and
    ``self.fallback`` is True (the notebook says so).
    """

    def __init__(self, guidance: dict):
        self.x_tilde = guidance["x_tilde"]
        self.items = [(i, tuple(b), t) for i, pairs in enumerate(guidance["pairs"]) for b, t in pairs]
        self.fallback = not self.items
        if self.fallback:
            self.items = [(i, tuple(b), ocr.to_charset(w)) for i, words in enumerate(guidance.get("words", []))
                          for w, b in words if ocr.to_charset(w).strip()]
        if not self.items:
            raise ValueError("no word patches: CRAFT matched no box and the split has no ground-truth words")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        i, box, label = self.items[index]
        return {"index": i, "box": box, "label": label}


def _collate_words(items):
    return items


#: D2's training runs (notebook 05): the OCR-guided D2 and its two controls, each with its checkpoint name.
D2_VARIANTS = {
    "ocr_guided": "d2.pt",  # the profile's loss: CTC (capped per word) + μ·MSE anchor
    "anchor_only": "d2_anchor_only.pt",  # the same steps and words, the anchor alone (no OCR term)
    "plain_ctc": "d2_plain_ctc.pt",  # the paper's loss: the plain mean CTC, no anchor
}


def d2_objective(cfg, chain: OCRGuidedChain, inputs_u8: torch.Tensor, clean_u8: torch.Tensor | None,
                 variant: str = "ocr_guided") -> OCRGuided:
    """The objective of a D2 variant (:data:`D2_VARIANTS`) with the profile's μ and cap."""
    d = cfg.dequant
    if variant == "ocr_guided":
        return OCRGuided(chain, inputs_u8, clean_u8, anchor=d.ocr_guided_anchor, ctc_cap=d.ocr_guided_ctc_cap)
    if variant == "anchor_only":
        if not d.ocr_guided_anchor:
            raise ValueError("the anchor-only control needs a pixel anchor μ > 0 (dequant.ocr_guided_anchor)")
        return OCRGuided(chain, inputs_u8, clean_u8, anchor=d.ocr_guided_anchor, ocr_weight=0.0)
    if variant == "plain_ctc":
        return OCRGuided(chain, inputs_u8, None, anchor=0.0, ctc_cap=None)
    raise ValueError(f"unknown D2 variant {variant!r}; variants are {', '.join(D2_VARIANTS)}")


def train_ocr_guided(cfg, d1: DnCNN, guidance: dict, checkpoint: str | Path, *, clean: torch.Tensor | None = None,
                     degraded: torch.Tensor | None = None, variant: str = "ocr_guided", steps: int | None = None,
                     retrain: bool = False, device=None, progress: bool = True) -> tuple[OCRGuidedChain, TrainResult]:
    """Fine-tune D2 (initialised from D1) through the frozen recognizer (Sec. 4.5); returns (chain, TrainResult).

    D1, CRAFT (its boxes are precomputed in ``guidance``) and the recognizer
    stay frozen; only D2's parameters are given to the optimizer.  Amounts
    from ``cfg.dequant``: ``ocr_guided_steps``, ``ocr_guided_batch`` (word
    patches per step), ``ocr_guided_lr``, ``ocr_guided_init`` (D2's start,
    :class:`~tficlib.dncnn.OCRGuidedChain`), ``ocr_guided_anchor`` (μ; needs
    ``clean``, the uint8 clean patches aligned with ``guidance["x_tilde"]``),
    ``ocr_guided_ctc_cap``.  A chain that starts D2 on the degraded inputs
    needs ``degraded`` (uint8, aligned).  ``variant`` (:data:`D2_VARIANTS`)
    trains the profile's loss or one of its controls.
    """
    d = cfg.dequant
    chain = OCRGuidedChain(d1, margin=d.word_margin, init=d.ocr_guided_init)
    if chain.reads_degraded and (degraded is None or degraded.shape != guidance["x_tilde"].shape):
        raise ValueError("D2 started as D1 on the degraded input needs the degraded patches aligned with x̃")
    words = WordPatches(guidance)
    objective = d2_objective(cfg, chain, degraded if chain.reads_degraded else guidance["x_tilde"], clean, variant)
    result = fit(cfg, "ocr_guided", chain.d2, objective, words, checkpoint, seed=cfg.seed, steps=steps, device=device,
                 collate=_collate_words, desc=objective.name, progress=progress, retrain=retrain,
                 meta={"dncnn": chain.d2.hparams(), "n_words": len(words), "init": chain.init, "variant": variant,
                       "fallback_ground_truth_boxes": words.fallback})
    chain.d2 = result.model
    chain.train(False)
    return chain, result


def guidance_subset(cfg):
    """The training patches notebook 05 uses: the first ``guided_train_patches`` of D1's training part."""
    train, _ = split_training(cfg)
    n = len(train) if cfg.dequant.guided_train_patches is None else min(len(train), cfg.dequant.guided_train_patches)
    subset = torch.utils.data.Subset(train, range(n))
    subset.words = train.words
    return subset


def prepare_guidance(cfg, d1_path: Path, device=None) -> tuple[DnCNN, dict, torch.Tensor, torch.Tensor]:
    """D1, its cached guidance on the training words, and the aligned clean and degraded patches (uint8)."""
    from .dncnn import uint8_stack

    d1, _ = load_dncnn(d1_path, STAGE_DNCNN, device=device or cfg.device)
    subset = guidance_subset(cfg)
    with distributed.main_first():
        guidance = precompute_guidance(d1, subset, cfg.stage_dir(STAGE_GUIDED) / "guidance.pt",
                                       d1_id=artifacts.sha256_file(d1_path), batch_size=cfg.eval.batch_size)
    return d1, guidance, uint8_stack(subset, "clean"), uint8_stack(subset, "degraded")


def train_stage5(cfg, device=None, retrain: bool = False) -> dict[str, tuple[OCRGuidedChain, TrainResult]]:
    """Every training run of notebook 05: D2 and its two controls (:data:`D2_VARIANTS`)."""
    d1_path = artifacts.require(cfg.stage_dir(STAGE_DNCNN) / "dncnn.pt", STAGE_DNCNN)
    d1, guidance, clean, degraded = prepare_guidance(cfg, d1_path, device)
    return {v: train_ocr_guided(cfg, d1, guidance, cfg.stage_dir(STAGE_GUIDED) / name, clean=clean, degraded=degraded,
                                variant=v, retrain=retrain, device=device)
            for v, name in D2_VARIANTS.items()}


# =========================================================================== notebook 05: reading the chain
def coverage(boxes: Sequence[tuple], words: Sequence[tuple]) -> float:
    """Share of the label's alphanumeric characters inside the boxes they are matched to (:func:`tficlib.ocr.match_words`).

    What the detector alone lets through: a word CRAFT missed (or merged
    beyond recognition) cannot be read, however good D2 is.
    """
    total = sum(sum(c.isalnum() for c in w) for w, _ in words)
    if not total:
        return 1.0
    pairs, _ = ocr.match_words(list(boxes), list(words))
    return sum(sum(c.isalnum() for c in label) for _, label in pairs) / total


def evaluate_chain(cfg, chains: dict[str, OCRGuidedChain], patches: dict, device=None, reassembled: bool = True,
                   progress: bool = True) -> dict:
    """Every D2 of ``chains`` and D1 read at the end of the chain, at the same CRAFT boxes (Sec. 4.5).

    For each patch: x̃ = D1(x), CRAFT's boxes on x̃ (once, shared by every
    variant), then the frozen recognizer on each word — D1's crop for
    ``dncnn``, D2's refined crop for each chain — the words joined in reading
    order and scored against the patch's text (TFIC accuracy, per patch, so
    that differences are paired).  Also ``coverage`` (:func:`coverage`) and,
    with ``reassembled``, the engine's full pipeline (``read_text``) on each
    restored image and its PSNR.  Returns ``{"chain": {name: scores},
    "reassembled": {name: scores}, "coverage": [...], "boxes": [...]}``.
    """
    dev = torch.device(device or cfg.device)
    degraded, texts = patches["degraded"], patches["texts"]
    first = next(iter(chains.values()))
    step = max(1, cfg.eval.batch_size)
    starts = range(0, len(texts), step)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="D1 + CRAFT + recognizer (chain end)", leave=False)
    boxes, d1_texts, d1_images = [], [], []
    for s in starts:
        out = first.read(degraded[s:s + step].to(dev), refine=False)
        boxes += out["boxes"]
        d1_texts += out["texts"]
        d1_images.append(out["x_tilde"].cpu())

    def scores(preds: list[str]) -> dict:
        per = [metrics.accuracy(t, p) for t, p in zip(texts, preds)]
        return {"accuracy": float(np.mean(per)), "accuracy_ci": metrics.mean_accuracy(texts, preds, case_sensitive=False),
                "per_image_accuracy": per, "predictions": preds}

    chain = {"dncnn": scores(d1_texts)}
    restored = {"dncnn": torch.cat(d1_images)}
    for name, c in chains.items():
        preds, images = [], []
        it = range(0, len(texts), step)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc=f"{name}: D2 + recognizer (chain end)", leave=False)
        for s in it:
            out = c.read(degraded[s:s + step].to(dev), boxes=boxes[s:s + step])
            preds += out["texts"]
            images.append(out["restored"].cpu())
        chain[name] = scores(preds)
        restored[name] = torch.cat(images)
    result = {"chain": chain, "coverage": [coverage(b, w) for b, w in zip(boxes, patches["words"])],
              "boxes": [[list(b) for b in bs] for bs in boxes], "restored": restored}
    if reassembled:
        result["reassembled"] = {name: evaluate.evaluate_ocr(img, texts, patches["clean"], progress=progress,
                                                             desc=f"{name}: read_text (reassembled)")
                                 for name, img in restored.items()}
    return result


