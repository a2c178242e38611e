"""Run the notebook pipeline headlessly with papermill (the main job).

``python -m tficlib run --profile cpu --from 00 --to 06`` executes the
numbered notebooks in order, writes the executed copies under
``data/<profile>/executed/``, records each notebook's wall time in
``data/<profile>/timings.json`` and stops at the first failure, naming the
notebook and the cell that failed.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import config
from .artifacts import read_json, write_json

__all__ = ["NotebookFailed", "list_notebooks", "run_pipeline"]


class NotebookFailed(RuntimeError):
    """A notebook of the pipeline raised; the message names the notebook and the cell."""

    def __init__(self, notebook: Path, cell: int | None, error: str, executed: Path):
        self.notebook, self.cell, self.error, self.executed = notebook, cell, error, executed
        where = f"cell {cell}" if cell is not None else "an unknown cell"
        super().__init__(f"{notebook.name} failed in {where}: {error} (executed copy: {executed})")


@dataclass
class NotebookRun:
    notebook: Path
    executed: Path
    seconds: float


def notebooks_dir() -> Path:
    return config.repo_root() / "notebooks"


def list_notebooks(first: str | None = None, last: str | None = None) -> list[Path]:
    """The numbered notebooks ``NN_*.ipynb`` whose prefix lies in ``[first, last]``."""
    found = sorted(p for p in notebooks_dir().glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no notebooks found in {notebooks_dir()}")
    prefixes = [p.name[:2] for p in found]
    for bound in (first, last):
        if bound is not None and bound.zfill(2)[:2] not in prefixes:
            raise ValueError(f"no notebook with prefix {bound!r}; prefixes are {', '.join(prefixes)}")
    lo = (first or prefixes[0]).zfill(2)[:2]
    hi = (last or prefixes[-1]).zfill(2)[:2]
    if lo > hi:
        raise ValueError(f"--from {lo} comes after --to {hi}")
    return [p for p in found if lo <= p.name[:2] <= hi]


def _failed_cell(exc: Exception, executed: Path) -> tuple[int | None, str]:
    """(1-based index of the failing cell in the *original* notebook, "Error: message")."""
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    error = f"{ename}: {str(evalue).splitlines()[0] if evalue else ''}"
    try:
        import nbformat

        nb = nbformat.read(str(executed), as_version=4)
    except Exception:  # noqa: BLE001 - the executed copy may not exist if the kernel died early
        return None, error
    index = 0
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags or "papermill-error-cell-tag" in tags:
            continue  # cells papermill added are not part of the original notebook
        index += 1
        if cell.get("cell_type") == "code" and any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            return index, error
    return None, error


def run_pipeline(profile: str = "auto", first: str | None = None, last: str | None = None,
                 log=print, extra_parameters: dict | None = None, overrides: dict | None = None,
                 dry_run: bool = False) -> list[NotebookRun]:
    """Execute the notebooks ``first``..``last`` with papermill in ``profile``.

    ``overrides`` (dotted keys, :func:`tficlib.config.apply_overrides`) and
    ``dry_run`` (:func:`tficlib.config.dry_run_overrides`, applied first) make
    the run a variant: the notebooks get them through ``$TFIC_OVERRIDES`` and
    write to ``data/<profile>-<variant>/``.
    Returns one :class:`NotebookRun` per notebook; raises :class:`NotebookFailed`
    at the first failure.  Timings are merged into ``timings.json`` in ``cfg.data_dir``.
    """
    import json

    import papermill

    cfg = config.resolve(profile)  # with $TFIC_OVERRIDES, if set
    changes = {**(config.dry_run_overrides(cfg) if dry_run else {}), **(overrides or {})}
    if changes:
        cfg = config.apply_overrides(cfg, changes)  # checked here, before any notebook starts
    notebooks = list_notebooks(first, last)
    executed_dir = cfg.data_dir / "executed"
    executed_dir.mkdir(parents=True, exist_ok=True)
    timings_path = cfg.data_dir / "timings.json"
    timings = read_json(timings_path) if timings_path.exists() else {}
    env_profile = os.environ.get("TFIC_PROFILE")
    env_overrides = os.environ.get(config.OVERRIDES_ENV)
    os.environ["TFIC_PROFILE"] = cfg.name
    if cfg.variant:  # everything changed so far, for config.resolve in each notebook
        os.environ[config.OVERRIDES_ENV] = json.dumps({**json.loads(cfg.overrides), "variant": cfg.variant})
    else:
        os.environ.pop(config.OVERRIDES_ENV, None)
    runs: list[NotebookRun] = []
    variant = f" (variant {cfg.variant!r}, data in {cfg.data_dir})" if cfg.variant else ""
    log(f"tficlib: running {len(notebooks)} notebook(s) in profile {cfg.name!r} on {cfg.device}{variant}")
    try:
        for i, nb in enumerate(notebooks, 1):
            out = executed_dir / nb.name
            log(f"[{i}/{len(notebooks)}] {nb.name} ...", end="" if log is print else "\n")
            if log is print:
                sys.stdout.flush()
            start = time.perf_counter()
            try:
                papermill.execute_notebook(
                    str(nb), str(out), parameters={"PROFILE": cfg.name, **(extra_parameters or {})},
                    cwd=str(nb.parent), progress_bar=False, log_output=False, kernel_name="python3",
                    # the kernel's own start-up chatter (not the notebook's output) stays quiet
                    extra_arguments=["--IPKernelApp.log_level=ERROR"],
                )
            except Exception as exc:  # papermill.PapermillExecutionError and kernel deaths
                seconds = time.perf_counter() - start
                log(f" FAILED after {seconds:.0f} s")
                cell, error = _failed_cell(exc, out)
                raise NotebookFailed(nb, cell, error, out) from exc
            seconds = time.perf_counter() - start
            timings[nb.stem] = round(seconds, 1)
            write_json(timings_path, timings)
            runs.append(NotebookRun(nb, out, seconds))
            log(f" done in {seconds:.0f} s")
    finally:
        for key, value in (("TFIC_PROFILE", env_profile), (config.OVERRIDES_ENV, env_overrides)):
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    total = sum(r.seconds for r in runs)
    log(f"tficlib: {len(runs)} notebook(s) in {total / 60:.1f} min; timings in {timings_path}")
    figures = sorted(cfg.figures_dir.glob("*.png")) if cfg.figures_dir.exists() else []
    if figures:
        log("figures:")
        for f in figures:
            log(f"  {f}")
    return runs
