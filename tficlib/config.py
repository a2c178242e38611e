"""Profiles: how much data, how many steps, which resolution.

A profile changes *amounts* (images, steps, crop sizes, resolution), never the
method.  There is one place for the profile table: :data:`PROFILES`.

``smoke``  tests and CI, the whole chain in minutes.
``cpu``    a 2-core machine without GPU, the whole chain in at most 120 minutes.
``paper``  the papers' data sizes, resolutions and schedules, on a CUDA GPU.
``auto``   ``paper`` when CUDA is available, else ``cpu`` (the default).

Use :func:`resolve` in the second cell of every notebook::

    cfg = tficlib.config.resolve(PROFILE)

and ``dataclasses.replace`` (or :meth:`Profile.with_overrides`) to change one
amount for an experiment.

Changed amounts for a whole run: ``$TFIC_OVERRIDES`` holds a JSON object of
dotted keys, ``{"codec.base_steps": 10, "eval.n_test": 50}``, applied by
:func:`resolve` in every notebook (``python -m tficlib run --set
codec.base_steps=10`` writes it).  Such a run is a *variant* of its profile
and keeps its artifacts apart, in ``data/<profile>-<variant>/`` (variant
``custom``, or the reserved key ``"variant"``).  :func:`dry_run_overrides` gives the
variant ``dryrun``: the profile's resolutions, models and batch sizes with a
few images and steps per stage, to check a whole chain (``paper`` on a new
GPU machine) in minutes before spending hours on it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "OVERRIDES_ENV",
    "PROFILE_NAMES",
    "PROFILES",
    "Profile",
    "UnknownProfile",
    "apply_overrides",
    "dry_run_overrides",
    "parse_assignments",
    "repo_root",
    "resolve",
    "with_seed",
]


class UnknownProfile(ValueError):
    """Raised for a profile name that is not in :data:`PROFILE_NAMES`."""


# --------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class TextLinesCfg:
    """TFIC text-line dataset (paper 1, Sec. IV-A: ~20k train / 600 test, 256x512; ours 128x512 in ``paper``)."""

    n_train: int
    n_test: int
    height: int
    width: int
    max_chars: int = 24  # longest label; longer lines become unreadable once fitted
    n_val: int = 0  # validation lines, drawn like the test split (0: the size of n_test)
    n_unseen: int = 0  # the "unseen" test split: fonts and words no training split uses (0: the size of n_test)


@dataclass(frozen=True)
class PagesCfg:
    """Document pages and their patches (paper 3, Sec. 4.6)."""

    n_pages: int
    font_size: int = 20  # pixels; 20 px prose reads ~1.0 clean (the largest size whose lines fit a 32-px pitch)
    downsample: int = 2  # degradation: downsample by this factor ...
    jpeg_quality: int = 1  # ... JPEG at the paper's "highest quantization factor" (cpu: a calibrated milder one) ...
    patch_height: int = 64  # ... upsample back; patches are 64x256
    patch_width: int = 256
    patches_per_page: int = 10
    train_fraction: float = 0.8  # split by page
    page_width: int = 1024
    page_height: int = 1024


@dataclass(frozen=True)
class CodecCfg:
    """Hyperprior codec and its stage-1 (MSE) training (paper 1, Sec. III)."""

    model: str = "bmshj2018-hyperprior"
    N: int = 128
    M: int = 192
    lambdas: tuple[float, ...] = (0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032)
    batch_size: int = 8
    lr: float = 1e-4
    aux_lr: float = 1e-3
    clip_max_norm: float = 1.0
    base_steps: int = 1000  # base model, trained at base_lambda
    base_lambda: float = 0.0016
    lambda_steps: int = 500  # per-λ fine-tuning from the base model (0: train each λ from scratch)
    checkpoint_every: int = 200
    aux_steps: int = 200  # auxiliary-only (quantile) steps after training, before the exact bisection
    lr_decay_start: float = 0.7  # lr constant until this fraction of a run, then a cosine ...
    lr_decay_to: float = 0.1  # ... down to lr_decay_to·lr (stage 1, and the TFIC and text logit fine-tuning)


@dataclass(frozen=True)
class TficCfg:
    """Stage 2: rate + γ·OCR with λ = 0 (paper 1, Sec. III-B)."""

    gamma: float = 0.1
    gammas: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0)  # our rate knob at λ = 0
    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-4
    sweep_start_index: int = -1  # the γ sweep starts from this stage-1 model (index into CodecCfg.lambdas)
    ste: bool = True  # the OCR sees rounded latents through a straight-through estimator
    # our robust variant (not in the paper): rate + pixel·λ_k·D + γ·L_OCR(T(x̂)) from every stage-1 model k
    robust: bool = True
    robust_gamma: float = 0.1
    robust_pixel: float = 1.0  # the share of each stage-1 model's λ kept as a pixel term (0: λ = 0, as the paper)
    robust_strength: float = 0.0  # random views T of x̂ before the recognizer (tficlib.ocr.OCRViews; 0: none)
    robust_binarize: float = 0.0  # share of views binarized at Otsu's threshold (OCRViews.binarize; 0: none)
    robust_binary: float = 0.0  # share of λ_k on the binarized pixel term (losses.binary_distortion; 0: none)
    robust_background: float = 1.0  # pixel term's weight off the text (losses.text_weighted_distortion; 1: plain MSE)
    robust_gamma_scaled: bool = True  # γ_k = robust_gamma·min(1, λ_k/λ_s), λ_s the sweep start (False: γ_k = γ)
    robust_validation: bool = True  # also judge the robust and MSE curves on the val lines (where settings are chosen)


@dataclass(frozen=True)
class TextLogitCfg:
    """Rate + λ·D + κ·J(x, x̂) (Lai et al., Eq. 5, Algorithm 1)."""

    kappa: float = 0.1
    kappas: tuple[float, ...] = (0.0, 0.001, 0.01, 0.1, 1.0, 10.0)
    sweep_lambda_index: int = 2  # which λ of CodecCfg.lambdas the κ sweep uses
    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-4
    train_images: int | None = None  # training images with cached CRAFT boxes + logits (None: all)
    filter_quantile: float = 0.05  # Eq. 6 thresholds re-derived as quantiles of the training regions
    m_min: float | None = None  # fixed Eq. 6 thresholds instead (the paper's PARSeq values: 14.2, 2.0)
    sigma_max: float | None = None
    ste: bool = True  # reference and J runs decode rounded latents (straight-through estimator)
    # J on logits less each frame's mean (our deviation; False: Eq. 4 on raw logits).  On the cpu stage-1
    # models 66-79 % of Eq. 4's J only shifts whole frames, which the softmax ignores; cpu BD-rate on CER
    # -14.7 % vs -6.4 % (both on 400 training lines)
    centered_logits: bool = True


@dataclass(frozen=True)
class DequantCfg:
    """DnCNN dequantization and OCR-guided refinement (paper 3, Sec. 4.3-4.5)."""

    depth: int = 17
    features: int = 64
    mse_weight: float = 0.8  # λ in λ·MSE + (1-λ)·L_DCT
    dct_tau: float = 0.5
    crop: int = 48  # training crops on the 8x8 JPEG grid (multiple of 8)
    batch_size: int = 32
    lr: float = 1e-3
    steps: int = 2000
    ocr_guided_steps: int = 500
    ocr_guided_batch: int = 16
    ocr_guided_lr: float = 1e-4
    ocr_guided_init: str = "d1"  # D2's start (dncnn.OCRGuidedChain): "d1" (a copy of D1, the paper's), "identity", "d1_degraded"
    ocr_guided_anchor: float = 50.0  # μ·MSE(x̂_p, x_p) beside the OCR loss (our deviation; the paper: 0)
    ocr_guided_ctc_cap: float | None = 3.0  # per-word CTC per character capped (our deviation; None: the paper's)
    eval_every: int = 250  # weight snapshots for the accuracy-vs-steps curve
    clip_max_norm: float | None = None  # gradient clipping (None: off)
    lr_decay_start: float = 0.5  # lr constant, then cosine from this fraction of the steps ...
    lr_decay_to: float = 0.01  # ... down to lr_decay_to·lr
    checkpoint_every: int = 200
    ablation_steps: int | None = None  # λ = 1 (MSE only) ablation; None: as many as steps
    word_margin: int = 8  # context pixels around each word patch given to D2
    dct_grid: str = "jpeg"  # L_DCT's 8x8 blocks: "jpeg" = the JPEG's own (x̂ pooled by the downsampling); "patch"
    validation_patches: int = 0  # the last training patches, held out from D1 and D2 to choose settings on
    guided_train_patches: int | None = None  # training patches used by 05 (None: all)
    curve_patches: int = 50  # test patches OCR-read for each point of the accuracy-vs-steps curve


@dataclass(frozen=True)
class EvalCfg:
    """Evaluation amounts shared by the stages (test-split sizes, timings)."""

    n_test: int | None = None  # None: the whole test split
    timing_images: int = 50
    timing_warmup: int = 5
    batch_size: int = 16
    bootstrap: int = 1000  # paired-bootstrap replicates for the confidence intervals of BD values


@dataclass(frozen=True)
class Profile:
    """Every amount of one profile.  Frozen: use :meth:`with_overrides` to change one."""

    name: str
    device: str
    seed: int  # every random choice of training and evaluation derives from it
    textlines: TextLinesCfg
    pages: PagesCfg
    codec: CodecCfg
    tfic: TficCfg
    textlogit: TextLogitCfg
    dequant: DequantCfg
    eval: EvalCfg = field(default_factory=EvalCfg)
    num_threads: int | None = None  # torch threads; None: leave torch's default
    data_seed: int = 0  # the generated datasets (text lines, pages) derive from it: a training seed keeps the data
    variant: str = ""  # non-empty when amounts were overridden (see apply_overrides)
    overrides: str = ""  # those overrides as sorted JSON (recorded in every results.json of the variant)

    @property
    def quick(self) -> bool:
        """True for ``smoke`` and the ``dryrun`` variant: a few steps per stage, models far from trained.

        Notebooks skip the checks that need trained models (rate estimates
        matching real bytes, rate drift) when it is True.
        """
        return self.name == "smoke" or self.variant == "dryrun"

    @property
    def dir_name(self) -> str:
        """``<profile>``, or ``<profile>-<variant>`` for a run with overridden amounts."""
        return f"{self.name}-{self.variant}" if self.variant else self.name

    @property
    def data_dir(self) -> Path:
        """``data/<profile>/`` under the repository (or ``$TFIC_DATA``); ``data/<profile>-<variant>/`` for a variant."""
        base = os.environ.get("TFIC_DATA")
        return (Path(base) if base else repo_root() / "data") / self.dir_name

    @property
    def figures_dir(self) -> Path:
        """``figures/<profile>/`` under the repository (or ``$TFIC_FIGURES``), like :attr:`data_dir`."""
        base = os.environ.get("TFIC_FIGURES")
        return (Path(base) if base else repo_root() / "figures") / self.dir_name

    def stage_dir(self, stage: str) -> Path:
        """``data/<profile>/<stage>/``, e.g. ``stage_dir("01_mse_pretraining")``."""
        return self.data_dir / stage

    def with_overrides(self, **changes) -> Profile:
        """Copy with some amounts changed: ``cfg.with_overrides(codec={"base_steps": 10})``."""
        kwargs = {}
        for key, value in changes.items():
            current = getattr(self, key)
            if dataclasses.is_dataclass(current) and isinstance(value, dict):
                value = dataclasses.replace(current, **value)
            kwargs[key] = value
        return dataclasses.replace(self, **kwargs)


# --------------------------------------------------------------------------- the table
def _smoke(device: str) -> Profile:
    return Profile(
        name="smoke",
        device=device,
        seed=0,
        textlines=TextLinesCfg(n_train=48, n_test=16, height=64, width=256),
        pages=PagesCfg(n_pages=4, jpeg_quality=4),
        codec=CodecCfg(
            N=32, M=48, lambdas=(0.0004, 0.0032), batch_size=4, lr=1e-3,
            base_steps=6, base_lambda=0.0016, lambda_steps=3, checkpoint_every=4,
        ),
        tfic=TficCfg(gammas=(0.1, 1.0), steps=3, batch_size=4),
        textlogit=TextLogitCfg(kappas=(0.0, 0.1, 10.0), sweep_lambda_index=0, steps=3, batch_size=4,
                                train_images=8),
        dequant=DequantCfg(steps=6, batch_size=8, ocr_guided_steps=3, ocr_guided_batch=4, eval_every=3,
                           ablation_steps=3, checkpoint_every=4, guided_train_patches=8, curve_patches=3,
                           validation_patches=8),
        eval=EvalCfg(n_test=8, timing_images=4, timing_warmup=1, batch_size=8),
        num_threads=1,  # tiny tensors: one thread avoids OpenMP oversubscription
    )


def _cpu(device: str) -> Profile:
    return Profile(
        name="cpu",
        device=device,
        seed=0,
        textlines=TextLinesCfg(n_train=2000, n_test=200, height=64, width=256),
        # JPEG quality 4, chosen on the 100 held-out training patches (never the test split) as the mildest
        # quality whose degraded text still reads < 0.05 (the paper's "unreadable"), so that D1 gets within
        # reach of the paper's ≈ 75 % in a 2-core budget; quality 1 (the paper's) is --set pages.jpeg_quality=1
        pages=PagesCfg(n_pages=100, jpeg_quality=4),
        codec=CodecCfg(
            N=64, M=96, lambdas=(0.00006, 0.00015, 0.0004, 0.001, 0.0025), batch_size=8, lr=3e-4,
            base_steps=1500, base_lambda=0.0004, lambda_steps=300, checkpoint_every=100,
        ),
        # γ from 0.01 reaches the low rates where the MSE codec stops being readable.  Stage 2 at lr 1e-4:
        # at 3e-4 (250 steps) the MSE controls gained and TFIC lost (BD-accuracy -0.015).  The sweep
        # starts from mse_2: from mse_4 it gave BD-accuracy +0.040, from mse_2 +0.078
        # The val-line judging of the robust variant is off (chain budget): --set tfic.robust_validation=true
        tfic=TficCfg(steps=300, batch_size=8, lr=1e-4, gammas=(0.01, 0.03, 0.1, 0.3, 1.0, 3.0), sweep_start_index=2,
                     robust_validation=False),
        # 1600 training lines: 120 steps x 8 see none twice.  Chosen on held-out training lines
        # 1800-1999 (not the test split): BD-rate on CER there -17.1 % with 1600, -16.0 % with 400;
        # lr 3e-4 moved the J runs along the rate axis (BD-CER -12.2 % against -17.5 %)
        textlogit=TextLogitCfg(steps=120, batch_size=8, train_images=1600),
        dequant=DequantCfg(crop=64, batch_size=8, lr=1e-3, steps=2000, eval_every=500, ablation_steps=500,
                           ocr_guided_steps=300, ocr_guided_batch=8, guided_train_patches=300, validation_patches=100),
        eval=EvalCfg(n_test=None, timing_images=50, timing_warmup=5),
        num_threads=2,
    )


def _paper(device: str) -> Profile:
    return Profile(
        name="paper",
        device=device,
        seed=0,
        # The paper's 20k / 600 lines, at 128x512 instead of its 256x512: every stage reads a line whole
        # (EasyOCR's recognizer at height 64, read_lines / recognizer_logits), which needs the 1:4 shape of
        # the cpu lines.  Clean test lines, whole-line read (the first 40): 64x256 0.950,
        # 128x512 0.950, 256x1024 0.948, 256x512 0.533 (text shrunk 4x); CRAFT + recognizer reads all ~0.98.
        textlines=TextLinesCfg(n_train=20000, n_test=600, height=128, width=512),
        pages=PagesCfg(n_pages=2285),
        codec=CodecCfg(
            N=128, M=192, batch_size=16, lr=1e-4, base_steps=100_000, base_lambda=0.0016,
            lambda_steps=0, checkpoint_every=2000,
        ),
        tfic=TficCfg(steps=20_000, batch_size=16),
        textlogit=TextLogitCfg(steps=20_000, batch_size=16),
        dequant=DequantCfg(crop=64, batch_size=64, steps=100_000, ocr_guided_steps=20_000,
                           ocr_guided_batch=64, eval_every=5000, validation_patches=1000),
        eval=EvalCfg(n_test=None, timing_images=200, timing_warmup=10, batch_size=32),
    )


PROFILES = {"smoke": _smoke, "cpu": _cpu, "paper": _paper}
PROFILE_NAMES = ("smoke", "cpu", "paper", "auto")

#: Environment variable read by :func:`resolve`: a JSON object of dotted keys.
OVERRIDES_ENV = "TFIC_OVERRIDES"
#: Profile fields that are not amounts: no override may set them.
_NOT_AMOUNTS = ("name", "device", "variant", "overrides")


def dry_run_overrides(cfg: Profile) -> dict:
    """The ``dryrun`` variant of ``cfg``: every stage's code with a few images and steps.

    Resolutions, model sizes, batch sizes and the λ / γ / κ grids stay the
    profile's (every model is still trained, for a few steps each), so a dry
    run of ``paper`` on a GPU machine exercises the paper's shapes and memory.
    """
    return {
        "variant": "dryrun",
        "textlines.n_train": 32,
        "textlines.n_test": 8,
        "pages.n_pages": 4,
        "codec.base_steps": 4,
        "codec.lambda_steps": min(cfg.codec.lambda_steps, 2),
        "codec.checkpoint_every": 2,
        "codec.aux_steps": 5,
        "tfic.steps": 3,
        "textlogit.steps": 3,
        "textlogit.train_images": 16,
        "dequant.steps": 4,
        "dequant.ablation_steps": 2,
        "dequant.eval_every": 2,
        "dequant.checkpoint_every": 2,
        "dequant.ocr_guided_steps": 3,
        "dequant.guided_train_patches": 8,
        "dequant.validation_patches": 8,
        "dequant.curve_patches": 3,
        "eval.n_test": 8,
        "eval.timing_images": 4,
        "eval.timing_warmup": 1,
        "eval.bootstrap": 50,
    }


def parse_assignments(items) -> dict:
    """``["codec.base_steps=10", "tfic.gammas=[0.1, 1]"]`` -> ``{"codec.base_steps": 10, ...}``.

    Each value is read as JSON (numbers, lists, ``null``, ``true``) and kept as
    a string if it is not JSON.  A missing ``=`` is an error that names the item.
    """
    out = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"bad override {item!r}: expected section.field=value, e.g. codec.base_steps=10")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out[key.strip()] = value
    return out


def apply_overrides(cfg: Profile, overrides: dict) -> Profile:
    """``cfg`` with the amounts of ``overrides`` (dotted keys) changed, as a variant of its profile.

    ``{"codec.base_steps": 10, "seed": 1}``; lists become tuples where the
    field holds a tuple; the reserved key ``"variant"`` names the variant
    (default: ``cfg``'s own variant, else ``custom``), which moves the run's artifacts to
    ``data/<profile>-<variant>/``.  The profile's name (and so its targets)
    stays.  Unknown sections or fields are errors that list the valid ones.
    """
    if not isinstance(overrides, dict):
        raise ValueError(f"overrides must be a JSON object of dotted keys, got {type(overrides).__name__}")
    overrides = dict(overrides)
    variant = str(overrides.pop("variant", None) or cfg.variant or "custom")
    if not variant.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"variant {variant!r} must be letters, digits, '-' or '_' (it names a folder)")
    sections = [f.name for f in dataclasses.fields(cfg) if f.name not in _NOT_AMOUNTS]
    changes: dict = {}
    for key, value in overrides.items():
        section, dot, name = str(key).partition(".")
        if section not in sections:
            valid = ", ".join(sections)
            raise ValueError(f"unknown setting {key!r}: the first part must be one of {valid}")
        current = getattr(cfg, section)
        if dataclasses.is_dataclass(current):
            fields = {f.name for f in dataclasses.fields(current)}
            if not dot or name not in fields:
                raise ValueError(f"unknown setting {key!r}: {section} has {', '.join(sorted(fields))}")
            _check_type(key, typing.get_type_hints(type(current))[name], value)
            if isinstance(getattr(current, name), tuple) and isinstance(value, list):
                value = tuple(value)
            changes.setdefault(section, {})[name] = value
        else:
            if dot:
                raise ValueError(f"unknown setting {key!r}: {section} is a plain value, write {section}=...")
            _check_type(key, typing.get_type_hints(Profile)[section], value)
            changes[section] = value
    recorded = {**json.loads(cfg.overrides or "{}"), **overrides}
    return dataclasses.replace(cfg.with_overrides(**changes), variant=variant,
                               overrides=json.dumps(recorded, sort_keys=True))


_KINDS = {bool: (bool, "true or false"), int: (int, "an integer"), float: ((int, float), "a number"),
          str: (str, "a string"), tuple: ((list, tuple), "a list")}


def _check_type(key: str, hint, value) -> None:
    """Raise a ValueError naming ``key`` when ``value`` does not fit the field's type ``hint``."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        hint = next(a for a in args if a is not type(None))
    accepted, words = _KINDS.get(typing.get_origin(hint) or hint, (object, ""))
    wrong_bool = isinstance(value, bool) and hint is not bool  # JSON true is not a number here
    if wrong_bool or not isinstance(value, accepted):
        optional = " or null" if type(None) in args else ""
        raise ValueError(f"setting {key!r} must be {words}{optional}, got {value!r}")


def _env_overrides() -> dict | None:
    """The overrides in ``$TFIC_OVERRIDES`` (None if unset or empty); invalid JSON is an error."""
    raw = os.environ.get(OVERRIDES_ENV, "").strip()
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"${OVERRIDES_ENV} is not valid JSON ({exc}): {raw[:80]!r}") from None
    return value


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - torch is a hard dependency
        return False


def with_seed(cfg: Profile, seed: int | None) -> Profile:
    """``cfg`` with the training seed ``seed``: a variant ``seed<N>`` (own folder) unless it is the profile's own.

    The datasets keep ``data_seed``, so every seed trains and is tested on the same data.
    """
    if seed is None or int(seed) == cfg.seed:
        return cfg
    changes = {"seed": int(seed)}
    if not cfg.variant:
        changes["variant"] = f"seed{int(seed)}"
    return apply_overrides(cfg, changes)


def resolve(name: str | None = None, *, device: str | None = None, seed: int | None = None) -> Profile:
    """Return the :class:`Profile` called ``name``.

    ``name`` defaults to ``$TFIC_PROFILE`` and then ``"auto"``: ``paper`` when
    CUDA is available, else ``cpu``.  ``$TFIC_OVERRIDES`` (JSON, see
    :func:`apply_overrides`) changes amounts and makes the result a variant;
    so does a ``seed`` other than the profile's (:func:`with_seed`), every
    notebook's ``SEED`` parameter.  ``device`` defaults to ``cuda`` when
    available, else ``cpu`` (the ``smoke`` profile also uses CUDA when present,
    so the GPU path is exercised by the same tests).
    """
    if name is None:
        name = os.environ.get("TFIC_PROFILE", "auto")
    key = str(name).strip().lower()
    if key not in PROFILE_NAMES:
        raise UnknownProfile(
            f"unknown profile {name!r}; valid profiles are: {', '.join(PROFILE_NAMES)}"
        )
    cuda = _cuda_available()
    if device is None:
        device = os.environ.get("TFIC_DEVICE") or ("cuda" if cuda else "cpu")
    if key == "auto":
        key = "paper" if cuda else "cpu"
    cfg = PROFILES[key](device)
    overrides = _env_overrides()
    cfg = cfg if overrides is None else apply_overrides(cfg, overrides)
    if seed is not None and overrides and "seed" in overrides and int(seed) != cfg.seed:
        raise ValueError(f"the seed {int(seed)} (a notebook's SEED) disagrees with seed {cfg.seed} in "
                         f"${OVERRIDES_ENV}, the variant {cfg.variant!r}: pass the same seed to both "
                         f"(papermill -p SEED {cfg.seed}; `python -m tficlib run --seed N` does)")
    return with_seed(cfg, seed)


def repo_root() -> Path:
    """The repository root (the folder holding ``pyproject.toml``)."""
    here = Path(__file__).resolve().parent.parent
    return here


def setup(cfg: Profile, seed: int | None = None):
    """Seed every generator, fix torch's thread count, and return the ``torch.device``.

    Called once per notebook after :func:`resolve`; every random choice of a
    stage derives from ``seed`` (default: the profile's).
    """
    import random

    import numpy as np
    import torch

    seed = cfg.seed if seed is None else int(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if cfg.num_threads:
        # under torchrun the processes of one machine share its cores (LOCAL_WORLD_SIZE is torchrun's)
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, cfg.num_threads // max(1, local_ranks)))
    return torch.device(cfg.device)
