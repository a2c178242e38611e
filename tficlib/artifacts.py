"""Artifacts that stages hand to each other: atomic files, results.json, checkpoints.

Every file a stage writes goes through :func:`atomic_write` (a temporary file in
the same folder, flushed, fsynced, then renamed over the target), so an
interrupted run never leaves a half-written file that a later stage trusts.

Every stage ends with :func:`write_results` (the ``results.json`` schema of
DESIGN.md) and every stage that needs an earlier one calls :func:`require`,
which raises :class:`MissingArtifact` naming the notebook to run first.
Checkpoints are plain tensors and JSON-able metadata, loaded with
``torch.load(weights_only=True)``: loading executes no pickled code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "DATASET",
    "DNCNN",
    "EVALUATION",
    "MSE_PRETRAINING",
    "OCR_GUIDED",
    "TEXT_LOGIT",
    "TFIC_FINETUNING",
    "ArtifactError",
    "MissingArtifact",
    "NOTEBOOKS",
    "atomic_write",
    "cached_json",
    "is_writer",
    "load_checkpoint",
    "read_json",
    "read_results",
    "require",
    "save_checkpoint",
    "sha256_file",
    "write_json",
    "write_results",
]

#: The stages, one per notebook: the names of their folders under ``data/<profile>/``.
DATASET = "00_dataset"
MSE_PRETRAINING = "01_mse_pretraining"
TFIC_FINETUNING = "02_tfic_ocr_finetuning"
TEXT_LOGIT = "03_text_logit_training"
DNCNN = "04_dncnn_dequantization"
OCR_GUIDED = "05_ocr_guided_refinement"
EVALUATION = "06_evaluation"

#: stage name -> the notebook that produces it (the registry of stages, in pipeline order)
NOTEBOOKS = {stage: f"notebooks/{stage}.ipynb" for stage in (
    DATASET, MSE_PRETRAINING, TFIC_FINETUNING, TEXT_LOGIT, DNCNN, OCR_GUIDED, EVALUATION)}

CHECKPOINT_FORMAT = "tficlib-checkpoint-1"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class ArtifactError(RuntimeError):
    """An artifact exists but cannot be trusted (corrupt, foreign, wrong hash)."""


class MissingArtifact(FileNotFoundError):
    """An earlier stage's artifact is missing; the message names the notebook to run."""


def is_writer() -> bool:
    """False on the ranks of a distributed run that must not write artifacts (all but rank 0)."""
    import sys

    dist = sys.modules.get("torch.distributed")  # never import torch just to ask
    return not (dist is not None and dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


def stage_of(path: Path) -> str | None:
    """The stage folder name (``01_mse_pretraining``) that ``path`` lies in, if any."""
    for part in Path(path).parts:
        if part in NOTEBOOKS:
            return part
    return None


def require(path: str | os.PathLike, stage: str | None = None) -> Path:
    """Return ``path`` if it exists, else raise :class:`MissingArtifact`.

    ``stage`` (e.g. ``"01_mse_pretraining"``) defaults to the stage folder the
    path lies in; the message names that stage's notebook.
    """
    path = Path(path)
    if path.exists():
        return path
    stage = stage or stage_of(path)
    hint = f"; run {NOTEBOOKS[stage]} first" if stage in NOTEBOOKS else ""
    profile = _profile_of(path)
    if hint and profile:
        hint += f" (profile {profile!r})"
    raise MissingArtifact(f"missing artifact {path}{hint}")


def _profile_of(path: Path) -> str | None:
    parts = Path(path).parts
    for i, part in enumerate(parts):
        if part in NOTEBOOKS and i > 0:
            return parts[i - 1]
    return None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; on success rename it over ``path``.

    If the body raises (or the process dies), ``path`` keeps its old content (or
    stays absent) and the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _jsonable(obj: Any) -> Any:
    """Convert numpy / torch scalars and tuples so ``json`` can write them; NaN -> None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    path = Path(path)
    text = json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n"
    with atomic_write(path, "w") as fh:
        fh.write(text)
    return path


def read_json(path: str | os.PathLike, stage: str | None = None) -> Any:
    """Read JSON; a missing file raises :class:`MissingArtifact`, a broken one :class:`ArtifactError`."""
    path = require(path, stage)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); delete it and re-run its notebook") from exc


def cached_json(path: str | os.PathLike, signature: dict) -> dict | None:
    """The JSON stored at ``path`` if it was written with ``signature`` under its ``"signature"`` key.

    None when the file is missing or was made for something else (compute it again).  The one
    test of whether a cached evaluation is still valid.
    """
    path = Path(path)
    if not path.exists():
        return None
    data = read_json(path)
    return data if isinstance(data, dict) and data.get("signature") == signature else None


def write_results(cfg, stage: str, methods: dict, tables: dict | None = None, **extra) -> Path:
    """Write ``data/<profile>/<stage>/results.json`` in the schema of DESIGN.md.

    ``methods`` maps a method key (``mse``, ``tfic``, ``jpeg``, ``dncnn`` ...) to
    its metrics: lists aligned by rate point for codecs, single numbers for
    the dequantization stages.
    """
    if stage not in NOTEBOOKS:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(NOTEBOOKS)}")
    for key, metrics in methods.items():
        if not isinstance(metrics, dict):
            raise TypeError(f"methods[{key!r}] must be a dict of metrics, got {type(metrics).__name__}")
        lengths = {k: len(v) for k, v in metrics.items() if isinstance(v, (list, tuple))}
        if "bpp" in lengths and any(n != lengths["bpp"] for n in lengths.values()):
            raise ValueError(f"methods[{key!r}]: lists are not aligned by rate point: {lengths}")
    data = {"stage": stage, "profile": cfg.name, "seed": cfg.seed, "methods": methods,
            "tables": tables or {}}
    if getattr(cfg, "variant", ""):  # a run with overridden amounts says which (tficlib.config.apply_overrides)
        data["variant"] = cfg.variant
        data["overrides"] = json.loads(cfg.overrides or "{}")
    data.update(extra)
    return write_json(cfg.stage_dir(stage) / "results.json", data)


def read_results(cfg, stage: str) -> dict:
    """Read a stage's ``results.json``, naming the notebook to run if it is missing."""
    return read_json(cfg.stage_dir(stage) / "results.json", stage)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, state: dict, meta: dict | None = None) -> Path:
    """Save ``state`` (nested dicts of tensors / numbers / strings) atomically.

    Only tensors and plain Python values are stored, so :func:`load_checkpoint`
    can use ``weights_only=True``.  ``meta`` is JSON-able information (step,
    profile, model name, hyper-parameters) stored beside the tensors.
    """
    import torch

    payload = {"format": CHECKPOINT_FORMAT, "meta": json.loads(json.dumps(_jsonable(meta or {}))),
               "state": state}
    with atomic_write(path, "wb") as fh:
        torch.save(payload, fh)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, stage: str | None = None, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`, executing no pickled code.

    Returns ``{"format", "meta", "state"}``.  A missing file names the notebook
    that writes it; a file that is not ours raises :class:`ArtifactError`.
    """
    import pickle

    import torch

    path = require(path, stage)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, KeyError,
            IndexError, TypeError, AttributeError) as exc:
        raise ArtifactError(
            f"{path} is not a tficlib checkpoint (or is corrupt): "
            f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ArtifactError(f"{path} is not a tficlib checkpoint (format tag missing)")
    return payload
