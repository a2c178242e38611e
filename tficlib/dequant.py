"""DnCNN dequantization and OCR-guided refinement of extreme JPEG.

Della Fiore et al., *End-to-End Semantic Preservation in Text-Aware Image
Compression Systems* (journal extension of TFIC), Section 4:

* :class:`DnCNN` -- Sec. 4.3, Fig. 7: D = 17 layers (conv + ReLU, 15 ×
  conv–BN–ReLU, conv), 64 filters of 3×3, residual learning x̂ = x − r̂.
* :func:`dequant_objective` -- Sec. 4.4: λ·MSE(x, x̂) + (1 − λ)·L_DCT, with
  L_DCT (:func:`tficlib.losses.dct_loss`) comparing x̂ with the quantized
  input, as the paper states.
* :func:`train_dncnn` -- the training recipe (on random crops, through
  :func:`tficlib.train.train`), with weight snapshots for an
  accuracy-vs-steps curve.
* :class:`OCRGuided` -- Sec. 4.5, Fig. 8: frozen D1 → frozen CRAFT on D1's
  output → word patches → trainable D2 (initialised from D1) → frozen
  recognizer, loss = CTC of each patch's ground-truth word; the refined
  patches are pasted back into D1's output (the reassembled x̂).

Choices we made where the paper is silent (the notebooks state them too):

* **channels** -- the network works on the 3 RGB channels of the patches (the
  text is grey, so the channels carry the same signal; RGB keeps the
  library's image convention and costs only the first and last layer).
* **identity start** -- the last convolution is initialised to zero, so the
  untrained network returns its input (r̂ = 0) and training starts from the
  degraded image's own error instead of from noise.
* **DCT scale** -- pixel values in [0, 1]: at JPEG quality 1 every step of the
  quantization table is 255 levels, i.e. 1.0 on this scale, so τ = 0.5 is
  half a quantization step (the interval in which the original coefficient
  lies).  8×8 blocks on the patch grid (the JPEG's own 8×8 grid was at the
  downsampled resolution: one JPEG block covers 2×2 of these blocks).
* **D2 on word patches** -- at the native resolution of the page (the scale
  D1 learned), with a context margin; the refined word is resized to the
  recognizer's height only for the recognizer (``ocr.crop_boxes``).  D2's
  BatchNorm keeps D1's running statistics (eval mode) while its weights learn.
  Each word window is refined as if alone, in training and at test time; on a
  GPU the windows of a batch run together, zero-padded and masked
  (:func:`run_windows`), which gives the same result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import artifacts
from .losses import dct_loss

__all__ = [
    "STAGE_DNCNN",
    "targets",
    "STAGE_GUIDED",
    "DnCNN",
    "OCRGuided",
    "PatchCrops",
    "WordPatches",
    "accuracy_curve",
    "dequant_objective",
    "evaluate_ocr",
    "load_dncnn",
    "markdown_table",
    "match_words",
    "ocr_guided_objective",
    "precompute_guidance",
    "reassemble",
    "pack_windows",
    "restore",
    "run_windows",
    "snapshot_model",
    "test_patches",
    "snapshots",
    "train_ablation",
    "train_dncnn",
    "train_ocr_guided",
]

STAGE_DNCNN = "04_dncnn_dequantization"
STAGE_GUIDED = "05_ocr_guided_refinement"


# =========================================================================== the network
class DnCNN(nn.Module):
    """DnCNN of Sec. 4.3 / Fig. 7: x̂ = x − r̂, r̂ = the residual (quantization noise) branch.

    ``depth`` D layers: conv(3×3, ``features``) + ReLU, (D − 2) × [conv(3×3) –
    BatchNorm – ReLU], conv(3×3) to ``channels``.  Padding 1 everywhere, so any
    input size works and the output has the input's shape.  With
    ``zero_init`` (default) the last convolution starts at zero: r̂ = 0 and the
    untrained network is the identity.
    """

    def __init__(self, depth: int = 17, features: int = 64, channels: int = 3, zero_init: bool = True):
        super().__init__()
        if depth < 3:
            raise ValueError(f"DnCNN depth must be >= 3, got {depth}")
        self.depth, self.features, self.channels = int(depth), int(features), int(channels)
        layers: list[nn.Module] = [nn.Conv2d(channels, features, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(features, features, 3, padding=1, bias=False), nn.BatchNorm2d(features),
                       nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(features, channels, 3, padding=1, bias=False))
        self.body = nn.Sequential(*layers)
        if zero_init:
            nn.init.zeros_(self.body[-1].weight)

    def residual(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """r̂: the predicted quantization noise.

        ``mask`` (B, 1, H, W) of 0/1 runs a batch of images of different
        sizes, each zero-padded on the right and bottom to (H, W) and marked by
        ones over its own area: every layer's activations are zeroed outside
        that area, so each layer reads zeros beyond the image's border exactly
        as its own zero padding does, and each image's r̂ equals what it gets
        alone (:func:`run_windows`).  Needs eval-mode BatchNorm (running
        statistics): batch statistics would mix the images and the padding.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"DnCNN expects (B, {self.channels}, H, W) images, got {getattr(x, 'shape', type(x))}")
        if mask is None:
            return self.body(x)
        if mask.shape != (x.shape[0], 1, *x.shape[2:]):
            raise ValueError(f"the mask of a padded batch must be (B, 1, H, W) = {(x.shape[0], 1, *x.shape[2:])}, "
                             f"got {tuple(mask.shape)}")
        if self.training:
            raise ValueError("a masked (padded) batch needs the DnCNN in eval mode: BatchNorm's batch statistics "
                             "would mix the images and their padding")
        x = x * mask
        for layer in self.body:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                x = x * mask
        return x

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return x - self.residual(x, mask)

    def hparams(self) -> dict:
        return {"depth": self.depth, "features": self.features, "channels": self.channels}


@torch.no_grad()
def restore(model: nn.Module, x: torch.Tensor, batch_size: int = 16, device=None) -> torch.Tensor:
    """Run ``model`` (eval mode) on images x (N, 3, H, W) in batches; output clamped to [0, 1], on CPU."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [model(x[i:i + batch_size].to(device)).clamp_(0, 1).cpu() for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else x.new_zeros((0, *x.shape[1:]))


def load_dncnn(path: str | Path, stage: str | None = None, device="cpu") -> tuple[DnCNN, dict]:
    """Load a DnCNN from a :func:`tficlib.train.train` checkpoint (weights only); returns (model, meta)."""
    payload = artifacts.load_checkpoint(path, stage)
    meta = payload["meta"]
    hp = meta.get("dncnn")
    if not hp:
        raise artifacts.ArtifactError(f"{path} holds no DnCNN (meta['dncnn'] missing)")
    if not meta.get("finished"):
        raise artifacts.ArtifactError(f"{path} is an unfinished training run; re-run its notebook to finish it")
    model = DnCNN(**hp)
    model.load_state_dict(payload["state"]["model"])
    return model.to(device).eval(), meta


# =========================================================================== data: random crops
def uint8_stack(dataset, kind: str) -> torch.Tensor:
    """The ``kind`` images (``"clean"`` or ``"degraded"``) of a patch dataset as one uint8 (N, 3, H, W) tensor."""
    if hasattr(dataset, "uint8"):
        arrays = [dataset.uint8(i, kind) for i in range(len(dataset))]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return torch.stack([(dataset[i][kind] * 255).round().to(torch.uint8) for i in range(len(dataset))])


class PatchCrops(torch.utils.data.Dataset):
    """Random ``crop``×``crop`` crops of (clean, degraded) patch pairs, on a ``grid``-pixel lattice.

    Held in memory as uint8.  The crop position comes from torch's global
    generator, which :func:`tficlib.train.train` seeds from (seed, step), so a
    resumed run draws the same crops.  ``grid`` = 16 puts every crop on the
    JPEG block lattice (8×8 blocks at half resolution) of a patch whose
    origin lies on it; ``crop=None`` returns whole patches.
    """

    def __init__(self, dataset, crop: int | None = 48, grid: int = 16):
        self.clean = uint8_stack(dataset, "clean")
        self.degraded = uint8_stack(dataset, "degraded")
        if len(self.clean) == 0:
            raise ValueError("PatchCrops: the dataset is empty")
        h, w = self.clean.shape[-2:]
        if crop is not None and (crop > h or crop > w or crop <= 0):
            raise ValueError(f"crop {crop} does not fit {h}x{w} patches")
        self.crop, self.grid = crop, max(1, int(grid))

    def __len__(self) -> int:
        return len(self.clean)

    def __getitem__(self, index: int) -> dict:
        c, d = self.clean[index], self.degraded[index]
        if self.crop is not None:
            h, w = c.shape[-2:]
            ny, nx = (h - self.crop) // self.grid + 1, (w - self.crop) // self.grid + 1
            y = int(torch.randint(ny, ())) * self.grid
            x = int(torch.randint(nx, ())) * self.grid
            c, d = c[:, y:y + self.crop, x:x + self.crop], d[:, y:y + self.crop, x:x + self.crop]
        return {"clean": c.float() / 255.0, "degraded": d.float() / 255.0}


# =========================================================================== the loss
def dequant_objective(mse_weight: float = 0.8, tau: float = 0.5) -> Callable:
    """Sec. 4.4: L = λ·MSE(x, x̂) + (1 − λ)·L_DCT(x_q, x̂), x̂ = DnCNN(x_q).

    x = the clean patch, x_q = the quantized (degraded) input; L_DCT compares
    x̂ with x_q (the paper: "coherent with the quantized input in the
    frequency domain"), on [0, 1] pixel values with τ = 0.5 = half a quantization
    step of JPEG quality 1.  ``mse_weight`` = λ (λ = 1: MSE only).  An objective
    for :func:`tficlib.train.train`; logs ``mse``, ``dct``, ``psnr``.
    """
    if not 0.0 <= mse_weight <= 1.0:
        raise ValueError(f"λ must be in [0, 1], got {mse_weight}")

    def objective(model, batch):
        x, xq = batch["clean"], batch["degraded"]
        x_hat = model(xq)
        mse = F.mse_loss(x_hat, x)
        dct = dct_loss(xq, x_hat, tau=tau) if mse_weight < 1.0 else x_hat.new_zeros(())
        loss = mse_weight * mse + (1.0 - mse_weight) * dct
        psnr = -10.0 * math.log10(max(float(mse.detach()), 1e-12))
        return {"loss": loss, "mse": mse, "dct": dct, "psnr": psnr}

    objective.params = {"objective": "dequant", "mse_weight": float(mse_weight), "tau": float(tau)}
    objective.name = f"DnCNN λ={mse_weight:g}"
    return objective


# =========================================================================== snapshots (curve)
def _snapshot_path(checkpoint: Path) -> Path:
    return Path(checkpoint).with_suffix(".snapshots.pt")


def snapshots(checkpoint: str | Path) -> dict[int, dict]:
    """The weight snapshots saved during :func:`train_dncnn`: {step: state_dict}."""
    path = _snapshot_path(Path(checkpoint))
    if not path.exists():
        return {}
    payload = artifacts.load_checkpoint(path)
    return {int(k): v for k, v in payload["state"].items()}


class _Snapshotting:
    """Wrap an objective: every ``every`` steps store the model's weights (for the accuracy curve).

    Counts its own calls from ``start`` (the step a resumed run starts from);
    the snapshots file is written atomically.
    """

    def __init__(self, objective, every: int, path: Path, start: int, store: dict):
        self.objective, self.every, self.path, self.step, self.store = objective, every, path, start, store
        self.params, self.name = objective.params, objective.name

    def __call__(self, model, batch):
        if self.every and self.step % self.every == 0 and self.step not in self.store:
            self.store[self.step] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            artifacts.save_checkpoint(self.path, {str(k): v for k, v in self.store.items()},
                                      {"kind": "dncnn-snapshots", "steps": sorted(self.store)})
        self.step += 1
        return self.objective(model, batch)


def _resume_step(checkpoint: Path, steps: int, retrain: bool) -> int:
    if retrain or not checkpoint.exists():
        return 0
    try:
        meta = artifacts.load_checkpoint(checkpoint)["meta"]
    except artifacts.ArtifactError:
        return 0
    if meta.get("fingerprint", {}).get("steps") != steps:
        return 0
    return steps if meta.get("finished") else int(meta.get("step", 0))


def train_dncnn(
    cfg,
    train_set,
    checkpoint: str | Path,
    *,
    mse_weight: float | None = None,
    steps: int | None = None,
    snapshot_every: int | None = None,
    constant_lr: bool = False,
    retrain: bool = False,
    device=None,
    progress: bool = True,
    schedule: str | None = None,
):
    """Train a :class:`DnCNN` (Sec. 4.3–4.4) with :func:`tficlib.train.train`; returns its ``TrainResult``.

    Amounts from ``cfg.dequant``: depth, features, crop (on the 16-px JPEG
    lattice), batch size, lr (Adam, constant then a cosine decay over the last
    ``lr_decay_start`` part), steps, λ (``mse_weight``), τ.  Starts at the
    identity (zero last layer).  Every ``snapshot_every`` steps (default
    ``cfg.dequant.eval_every``) the weights are stored beside the checkpoint
    (:func:`snapshots`) so :func:`accuracy_curve` can show accuracy against
    steps.  ``constant_lr`` keeps the lr constant (no decay): a run of s
    steps then follows exactly the first s steps of a longer run with the
    same seed (same crops, same lr), which :func:`train_ablation` uses.
    ``schedule`` names the amount that sets ``steps`` (recorded in the log for
    :func:`tficlib.runner.schedule_estimate`; default ``dequant.steps`` when
    ``steps`` is not given).  Checkpoints, resume and reuse
    of a finished model are :func:`~tficlib.train.train`'s.
    """
    from . import train as _train

    d = cfg.dequant
    mse_weight = d.mse_weight if mse_weight is None else float(mse_weight)
    if schedule is None and steps is None:
        schedule = "dequant.steps"
    steps = d.steps if steps is None else int(steps)
    every = d.eval_every if snapshot_every is None else int(snapshot_every)
    checkpoint = Path(checkpoint)
    model = DnCNN(d.depth, d.features)
    data = train_set if isinstance(train_set, PatchCrops) else PatchCrops(train_set, d.crop)
    objective = dequant_objective(mse_weight, d.dct_tau)
    start = _resume_step(checkpoint, steps, retrain)
    snap_path = _snapshot_path(checkpoint)
    store = {} if (retrain or start == 0) else snapshots(checkpoint)
    if start == 0 and snap_path.exists():
        snap_path.unlink()
    if start < steps:
        objective = _Snapshotting(objective, every, snap_path, start, store)
    result = _train.train(
        model, objective, data, steps=steps, checkpoint=checkpoint, batch_size=d.batch_size, lr=d.lr,
        clip_max_norm=d.clip_max_norm, seed=cfg.seed, checkpoint_every=max(1, d.checkpoint_every),
        lr_decay_start=1.0 if constant_lr else d.lr_decay_start, lr_decay_to=d.lr_decay_to, retrain=retrain,
        device=device or cfg.device, desc=objective.name, progress=progress,
        meta={"dncnn": model.hparams(), "profile": cfg.name, "crop": d.crop, "schedule": schedule},
    )
    if every and start < steps and steps not in store:  # the final weights close the curve
        store[steps] = {k: v.detach().cpu().clone() for k, v in result.model.state_dict().items()}
        artifacts.save_checkpoint(snap_path, {str(k): v for k, v in store.items()},
                                  {"kind": "dncnn-snapshots", "steps": sorted(store)})
    return result


def train_ablation(cfg, train_set, checkpoint: str | Path, *, retrain: bool = False, device=None,
                   progress: bool = True):
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
    paired = steps < d.steps
    if paired and (not d.eval_every or steps % d.eval_every or steps > d.lr_decay_start * d.steps):
        raise ValueError(
            f"ablation_steps={steps} must be a multiple of eval_every={d.eval_every} and at most "
            f"lr_decay_start·steps={d.lr_decay_start * d.steps:g} to be paired with a snapshot of the main run")
    result = train_dncnn(cfg, train_set, checkpoint, mse_weight=1.0, steps=steps, snapshot_every=0,
                         constant_lr=paired, retrain=retrain, device=device, progress=progress,
                         schedule="dequant.ablation_steps")
    return result, steps


def snapshot_model(cfg, checkpoint: str | Path, step: int) -> DnCNN:
    """The DnCNN of a :func:`train_dncnn` run at weight snapshot ``step`` (eval mode)."""
    store = snapshots(checkpoint)
    if step not in store:
        raise KeyError(f"no snapshot at step {step} beside {checkpoint} (have {sorted(store)})")
    model = DnCNN(cfg.dequant.depth, cfg.dequant.features)
    model.load_state_dict(store[step])
    return model.eval()


def targets(cfg, scores: dict) -> dict:
    """The issue's accuracy targets for this profile, measured: ``{claim: {"measured", "target", "met"}}``.

    ``cpu``: degraded < 0.10, DnCNN >= 0.35, OCR-guided >= DnCNN + 0.15; ``paper`` (a CUDA GPU, the
    journal's regime, Sec. 4.6): DnCNN >= 0.70, OCR-guided >= 0.85.  ``smoke`` has none (a few
    steps).  A target that is not met is reported with its number, never hidden: the notebooks
    print this table and store it in results.json instead of stopping the pipeline.
    """
    if cfg.name not in ("cpu", "paper"):
        return {}
    acc = {k: s["accuracy"] for k, s in scores.items()}
    rows = {"degraded JPEG < 0.10": (acc.get("jpeg"), 0.10, lambda v, t: v < t)}
    rows["DnCNN >= %.2f" % (0.35 if cfg.name == "cpu" else 0.70)] = (
        acc.get("dncnn"), 0.35 if cfg.name == "cpu" else 0.70, lambda v, t: v >= t)
    if "ocr_guided" in acc:
        if cfg.name == "cpu":
            rows["OCR-guided >= DnCNN + 0.15"] = (acc["ocr_guided"], acc["dncnn"] + 0.15, lambda v, t: v >= t)
        else:
            rows["OCR-guided >= 0.85"] = (acc["ocr_guided"], 0.85, lambda v, t: v >= t)
    return {claim: {"measured": v, "target": t, "met": bool(v is not None and ok(v, t))}
            for claim, (v, t, ok) in rows.items()}


# =========================================================================== OCR evaluation
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


def markdown_table(rows: Sequence[Sequence], header: Sequence[str]) -> str:
    """A small Markdown table (for ``IPython.display.Markdown``)."""
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# =========================================================================== OCR evaluation
def evaluate_ocr(images: torch.Tensor, texts: Sequence[str], clean: torch.Tensor | None = None,
                 progress: bool = False, desc: str = "OCR") -> dict:
    """OCR the images with EasyOCR's full pipeline (``ocr.read_text``) and score them.

    Returns ``accuracy`` (case-sensitive, TFIC Sec. IV-A), ``accuracy_ci``
    (case-insensitive), ``psnr`` against ``clean`` (if given) and the
    ``predictions``.  The same function scores every row of the tables.
    """
    from . import metrics, ocr

    if len(images) != len(texts):
        raise ValueError(f"{len(images)} images but {len(texts)} texts")
    items = range(len(images))
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc=desc, leave=False)
    preds = [ocr.read_text(images[i:i + 1].clamp(0, 1))[0] for i in items]
    out = {
        "accuracy": metrics.mean_accuracy(texts, preds),
        "accuracy_ci": metrics.mean_accuracy(texts, preds, case_sensitive=False),
        "predictions": preds,
    }
    if clean is not None:
        out["psnr"] = metrics.psnr(images.clamp(0, 1), clean)
    return out


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
        out = evaluate_ocr(restore(model, degraded, cfg.eval.batch_size), texts)
        rows.append({"step": step, "accuracy": out["accuracy"], "accuracy_ci": out["accuracy_ci"]})
    return rows


# =========================================================================== OCR-guided (Sec. 4.5)
def _area(b) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _intersection(a, b) -> float:
    return _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def match_words(boxes, words, min_cover: float = 0.5, min_iou: float = 0.3) -> tuple[list, dict]:
    """Give each detected box the ground-truth text it covers (Sec. 4.5, G_p(x)).

    A rendered word belongs to the detected box that covers the largest part
    of it, if that part is at least ``min_cover`` of the word's box.  A box's
    label is its words joined by spaces (in reading order); it is *matched* if
    it has words and its IoU with their union box is at least ``min_iou``.
    Returns ``(pairs, counts)``: pairs = [(box, label)], counts = dict(boxes,
    matched, unmatched_boxes, words, missed_words).
    """
    owner: dict[int, list] = {}
    missed = 0
    for wi, (_word, wb) in enumerate(words):
        covers = [_intersection(b, wb) / max(_area(wb), 1e-9) for b in boxes]
        if covers and max(covers) >= min_cover:
            owner.setdefault(int(np.argmax(covers)), []).append(wi)
        else:
            missed += 1
    pairs = []
    for bi, box in enumerate(boxes):
        members = owner.get(bi)
        if not members:
            continue
        wbs = [words[i][1] for i in members]
        union = (min(b[0] for b in wbs), min(b[1] for b in wbs), max(b[2] for b in wbs), max(b[3] for b in wbs))
        iou = _intersection(box, union) / max(_area(box) + _area(union) - _intersection(box, union), 1e-9)
        if iou >= min_iou:
            order = sorted(members, key=lambda i: (words[i][1][1] // 16, words[i][1][0]))
            pairs.append((tuple(int(v) for v in box), " ".join(words[i][0] for i in order)))
    counts = {"boxes": len(boxes), "matched": len(pairs), "unmatched_boxes": len(boxes) - len(pairs),
              "words": len(words), "missed_words": missed}
    return pairs, counts


def reassemble(x_tilde: torch.Tensor, patches: Sequence[torch.Tensor], boxes: Sequence[tuple]) -> torch.Tensor:
    """x̂: D1's output with each refined word patch pasted back at its box (Sec. 4.5, last step).

    ``x_tilde`` (3, H, W); ``patches[i]`` (3, y1−y0, x1−x0) for ``boxes[i]`` =
    (x0, y0, x1, y1); a patch of another size is resized to its box
    (bilinear).  Later boxes overwrite earlier ones where they overlap.
    Differentiable with respect to the patches.
    """
    if x_tilde.dim() != 3:
        raise ValueError(f"reassemble expects one image (3, H, W), got {tuple(x_tilde.shape)}")
    if len(patches) != len(boxes):
        raise ValueError(f"{len(patches)} patches for {len(boxes)} boxes")
    out = x_tilde.clone()
    for patch, (x0, y0, x1, y1) in zip(patches, boxes):
        size = (y1 - y0, x1 - x0)
        if tuple(patch.shape[-2:]) != size:
            patch = F.interpolate(patch.unsqueeze(0), size=size, mode="bilinear", align_corners=False)[0]
        out[:, y0:y1, x0:x1] = patch
    return out


def _window(box, margin: int, h: int, w: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return max(0, x0 - margin), max(0, y0 - margin), min(w, x1 + margin), min(h, y1 + margin)


def pack_windows(shapes: Sequence[tuple[int, int]], max_waste: float) -> list[list[int]]:
    """Group images of sizes ``shapes`` [(h, w)] into padded batches: lists of indices.

    Sorted by width then height; an image joins the current group while the
    group's padded area (count × max h × max w) stays within (1 + ``max_waste``)
    × the sum of its images' areas.  ``max_waste`` = 0 groups only images of
    one size.
    """
    if max_waste < 0:
        raise ValueError(f"max_waste must be >= 0, got {max_waste}")
    order = sorted(range(len(shapes)), key=lambda k: (shapes[k][1], shapes[k][0]))
    groups: list[list[int]] = []
    for k in order:
        cand = groups[-1] + [k] if groups else [k]
        hh = max(shapes[j][0] for j in cand)
        ww = max(shapes[j][1] for j in cand)
        area = sum(shapes[j][0] * shapes[j][1] for j in cand)
        if groups and len(cand) * hh * ww <= (1 + max_waste) * area:
            groups[-1] = cand
        else:
            groups.append([k])
    return groups


#: padded-area overhead allowed when D2's word windows are batched on a GPU (few large kernels beat many small
#: ones there); on the CPU each pixel costs, and only windows of one size share a batch.
PACK_WASTE_CUDA = 0.5


def run_windows(model: DnCNN, windows: Sequence[torch.Tensor], max_waste: float | None = None) -> list[torch.Tensor]:
    """``model`` (eval mode) on images of different sizes [(C, h, w)]: the outputs, each as if run alone.

    Windows are grouped by :func:`pack_windows`, zero-padded to their group's
    size and run with :meth:`DnCNN.residual`'s mask, so grouping changes the
    speed, never the result.  ``max_waste`` None: :data:`PACK_WASTE_CUDA` on
    a CUDA device, 0 elsewhere (measured on 2 CPU cores: padded batches of
    word windows were slower than one window at a time).
    """
    if not windows:
        return []
    if max_waste is None:
        max_waste = PACK_WASTE_CUDA if windows[0].device.type == "cuda" else 0.0
    shapes = [tuple(w.shape[-2:]) for w in windows]
    out: list[torch.Tensor | None] = [None] * len(windows)
    for group in pack_windows(shapes, max_waste):
        if len(group) == 1:
            out[group[0]] = model(windows[group[0]].unsqueeze(0))[0]
            continue
        hh = max(shapes[j][0] for j in group)
        ww = max(shapes[j][1] for j in group)
        x = torch.stack([F.pad(windows[j], (0, ww - shapes[j][1], 0, hh - shapes[j][0])) for j in group])
        mask = x.new_zeros(len(group), 1, hh, ww)
        for n, j in enumerate(group):
            mask[n, :, :shapes[j][0], :shapes[j][1]] = 1
        y = model(x, mask)
        for n, j in enumerate(group):
            out[j] = y[n, :, :shapes[j][0], :shapes[j][1]]
    return out


class OCRGuided(nn.Module):
    """The OCR-guided dequantizer of Sec. 4.5 / Fig. 8.

    ``d1`` (frozen) gives x̃ = D1(x); CRAFT (``ocr.detect_boxes``, frozen) finds
    the word boxes on x̃; ``d2`` (trainable) refines each word patch x̃_p at
    native resolution with ``margin`` pixels of context: x̂_p = D2(x̃_p);
    :func:`reassemble` pastes the x̂_p back into x̃.  D2's BatchNorm uses D1's
    running statistics (always eval mode).

    Unless ``d2`` is given, D2 starts from D1's weights (Sec. 4.5: "starting
    from the pretrained DnCNN").  ``init`` says how:

    * ``"identity"`` (default): D1's weights with the last convolution of the
      residual branch set to zero, so that D2 starts as the identity and
      x̂ = x̃ before training — the OCR loss can only move it from D1's result;
    * ``"d1"``: D1 exactly, so that D2 re-applies the dequantizer to an image
      it has already dequantized (x̂_p = D1(D1(x))_p before training).
    """

    INITS = ("identity", "d1")

    def __init__(self, d1: DnCNN, d2: DnCNN | None = None, margin: int = 8, detect_kwargs: dict | None = None,
                 init: str = "identity"):
        super().__init__()
        import copy

        if init not in self.INITS:
            raise ValueError(f"unknown D2 initialisation {init!r}; choose one of {', '.join(self.INITS)}")
        self.d1 = d1.eval()
        for p in self.d1.parameters():
            p.requires_grad_(False)
        if d2 is None:
            d2 = copy.deepcopy(d1)
            if init == "identity":
                with torch.no_grad():
                    d2.body[-1].weight.zero_()
        self.d2 = d2
        self.init = init
        for p in self.d2.parameters():
            p.requires_grad_(True)
        self.margin = int(margin)
        self.detect_kwargs = dict(detect_kwargs or {})
        self.train(False)

    def train(self, mode: bool = True) -> OCRGuided:
        """D1 and D2 stay in eval mode (frozen D1; D2 keeps D1's BatchNorm statistics)."""
        super().train(False)
        return self

    def refine(self, x_tilde: torch.Tensor, boxes: Sequence[tuple]) -> tuple[list, list]:
        """D2 on the word patches of one image x̃ (3, H, W): returns (refined patches, boxes)."""
        return self.refine_words([(x_tilde, b) for b in boxes]), list(boxes)

    def refine_words(self, words: Sequence[tuple[torch.Tensor, tuple]]) -> list[torch.Tensor]:
        """x̂_p = D2(x̃_p) for word boxes of any images: [(x̃ (3, H, W), box)] -> patches (3, y1−y0, x1−x0).

        Each word is refined in its window (the box plus ``margin`` pixels of
        context, cut at the image border) exactly as if alone
        (:func:`run_windows`), in training and at test time alike.
        """
        wins, crops = [], []
        for x_tilde, box in words:
            h, w = x_tilde.shape[-2:]
            x0, y0, x1, y1 = win = _window(box, self.margin, h, w)
            wins.append(win)
            crops.append(x_tilde[:, y0:y1, x0:x1])
        out = run_windows(self.d2, crops)
        return [o[:, b[1] - win[1]:b[3] - win[1], b[0] - win[0]:b[2] - win[0]]
                for o, (_, b), win in zip(out, words, wins)]

    def detect(self, x_tilde: torch.Tensor) -> list:
        from . import ocr

        return ocr.detect_boxes(x_tilde.detach().clamp(0, 1).cpu(), **self.detect_kwargs)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) degraded -> x̂ (B, 3, H, W) in [0, 1]: D1, CRAFT, D2 per word, reassembly."""
        x_tilde = self.d1(x).clamp(0, 1)
        out = []
        for xt in x_tilde:
            boxes = self.detect(xt)
            patches, boxes = self.refine(xt, boxes)
            out.append(reassemble(xt, patches, boxes).clamp(0, 1))
        return torch.stack(out)


def precompute_guidance(d1: DnCNN, dataset, path: str | Path, *, detect_kwargs: dict | None = None,
                        batch_size: int = 16, progress: bool = True, d1_id: str = "") -> dict:
    """D1's outputs, CRAFT's boxes and their labels for a whole split, computed once and cached.

    D1 and CRAFT are frozen, so x̃ = D1(x) and the matched (box, word) pairs do
    not change during D2's training.  Cached at ``path`` (atomic, loaded
    with ``weights_only``); recomputed if ``d1_id`` (e.g. the D1 checkpoint's
    sha256), the split size or the detector settings differ.  Returns
    dict(x_tilde uint8 (N,3,H,W), pairs [[(box, label)]], counts totals).
    """
    from . import ocr

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
        pairs, counts = match_words(boxes, words)
        pairs = [(list(b), ocr.to_charset(t)) for b, t in pairs]
        all_pairs.append([p for p in pairs if p[1].strip()])
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
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
        from . import ocr

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


def ocr_guided_objective(guided: OCRGuided, x_tilde_u8: torch.Tensor, clean_u8: torch.Tensor | None = None,
                         anchor: float = 0.0, ctc_cap: float | None = None) -> Callable:
    """L_OCR = E_p[CTC(OCR(D2(x̃_p)), G_p(x))] (Sec. 4.5): the frozen recognizer reads each refined patch.

    For :func:`tficlib.train.train` with the model ``guided.d2``; a batch is a
    list of :class:`WordPatches` items.  Each refined patch is clipped to
    [0, 1] — what the reassembled image holds at test time — and resized to
    the recognizer's height by ``ocr.crop_boxes`` (roi_align, aspect kept).
    Without the clip, D2 learned to write pixel values up to 2.5 that the
    recognizer read well and the test image cannot hold.

    ``anchor`` = μ > 0 adds μ·MSE(x̂_p, x_p), x_p the clean page at the same
    box (``clean_u8``, aligned with ``x_tilde_u8``): our deviation from the
    paper's OCR-only loss (μ = 0), which let D2 drift to washed-out, thinned
    strokes that EasyOCR's own detector and reader then misread.

    ``ctc_cap`` = c (our deviation; None: the plain mean, the paper's): each
    word's CTC per character ℓ_p is capped, L_OCR = E_p[min(ℓ_p, c)], so a
    word the recognizer cannot read at all (ℓ_p > c) gives no gradient.
    Without the cap the mean is dominated by such words; D2 then lowered it
    by making the recognizer less sure of its wrong readings, and read worse
    than D1 (README, dequantization section).  The terms report the plain
    mean CTC (``ctc``) and the fraction of capped words (``capped``).
    """
    from . import ocr

    if anchor < 0:
        raise ValueError(f"the pixel anchor μ must be >= 0, got {anchor}")
    if ctc_cap is not None and not ctc_cap > 0:
        raise ValueError(f"the CTC cap must be > 0 (or None for no cap), got {ctc_cap}")
    if anchor > 0 and (clean_u8 is None or clean_u8.shape != x_tilde_u8.shape):
        shape = None if clean_u8 is None else tuple(clean_u8.shape)
        raise ValueError(f"a pixel anchor μ = {anchor:g} needs the clean patches aligned with x̃ "
                         f"{tuple(x_tilde_u8.shape)}, got {shape}")

    def objective(model, batch):
        model.eval()  # D2 keeps D1's BatchNorm statistics; its weights still learn
        device = next(model.parameters()).device
        recognizer = ocr.get_recognizer(device)
        crops, labels, errors = [], [], []
        patches = guided.refine_words([(x_tilde_u8[item["index"]].to(device).float() / 255.0, item["box"])
                                       for item in batch])
        for item, patch in zip(batch, patches):
            h, w = patch.shape[-2:]
            crops += ocr.crop_boxes(patch.clamp(0, 1).unsqueeze(0), [[(0, 0, w, h)]])
            labels.append(item["label"])
            if anchor > 0:
                x0, y0, x1, y1 = item["box"]
                clean = clean_u8[item["index"], :, y0:y1, x0:x1].to(device).float() / 255.0
                errors.append(F.mse_loss(patch, clean))
        logits = recognizer(ocr.pad_crops(crops))
        per_char = ocr.ctc_loss(logits, labels, reduction="per_char")
        ctc = per_char.mean()  # = ocr.ctc_loss(logits, labels), torch's "mean"
        ocr_term = ctc if ctc_cap is None else per_char.clamp(max=ctc_cap).mean()
        capped = (per_char.detach() > ctc_cap).float().mean() if ctc_cap is not None else ctc.new_zeros(())
        mse = torch.stack(errors).mean() if errors else ctc.new_zeros(())
        return {"loss": ocr_term + anchor * mse, "ctc": ctc, "mse": mse, "capped": capped}

    objective.params = {"objective": "ocr_guided", "margin": guided.margin, "init": guided.init,
                        "anchor": float(anchor), "clip": True,
                        "ctc_cap": None if ctc_cap is None else float(ctc_cap)}
    objective.name = "OCR-guided D2"
    return objective


def train_ocr_guided(cfg, d1: DnCNN, guidance: dict, checkpoint: str | Path, *, clean: torch.Tensor | None = None,
                     steps: int | None = None, retrain: bool = False, device=None, progress: bool = True):
    """Fine-tune D2 (initialised from D1) with the OCR loss (Sec. 4.5); returns (OCRGuided, TrainResult).

    D1, CRAFT (its boxes are precomputed) and the recognizer stay frozen; only
    D2's parameters are given to the optimizer.  Amounts from
    ``cfg.dequant``: ``ocr_guided_steps``, ``ocr_guided_batch`` (word
    patches per step), ``ocr_guided_lr``, ``ocr_guided_init`` and
    ``ocr_guided_anchor`` (μ of :func:`ocr_guided_objective`; μ > 0 needs
    ``clean``, the uint8 clean patches aligned with ``guidance["x_tilde"]``)
    and ``ocr_guided_ctc_cap``.
    """
    from . import train as _train

    d = cfg.dequant
    schedule = "dequant.ocr_guided_steps" if steps is None else None
    steps = d.ocr_guided_steps if steps is None else int(steps)
    guided = OCRGuided(d1, margin=d.word_margin, init=d.ocr_guided_init)
    words = WordPatches(guidance)
    objective = ocr_guided_objective(guided, guidance["x_tilde"], clean, anchor=d.ocr_guided_anchor,
                                     ctc_cap=d.ocr_guided_ctc_cap)
    result = _train.train(
        guided.d2, objective, words, steps=steps, checkpoint=checkpoint, batch_size=d.ocr_guided_batch,
        lr=d.ocr_guided_lr, clip_max_norm=d.clip_max_norm, seed=cfg.seed,
        checkpoint_every=max(1, d.checkpoint_every), lr_decay_start=d.lr_decay_start,
        lr_decay_to=d.lr_decay_to, retrain=retrain, device=device or cfg.device, collate=_collate_words,
        desc=objective.name, progress=progress,
        meta={"dncnn": guided.d2.hparams(), "profile": cfg.name, "n_words": len(words), "init": guided.init,
              "fallback_ground_truth_boxes": words.fallback, "schedule": schedule},
    )
    guided.d2 = result.model
    guided.train(False)
    return guided, result

