"""Run the notebook pipeline headlessly with papermill (the main job).

``python -m tficlib run --profile cpu --from 00 --to 06`` executes the
numbered notebooks in order, writes the executed copies under
``data/<profile>/executed/``, records each notebook's wall time in
``data/<profile>/timings.json`` and stops at the first failure, naming the
notebook and the cell that failed.  After a dry run it estimates how long
the full schedules would train on this machine (:func:`schedule_estimate`).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import config
from .artifacts import NOTEBOOKS as NOTEBOOK_STAGES
from .artifacts import ArtifactError, read_json, write_json

__all__ = ["NotebookFailed", "list_notebooks", "run_pipeline", "schedule_estimate"]


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


#: amounts that may be None in a profile, and the amount each then stands for
_SCHEDULE_DEFAULTS = {"dequant.ablation_steps": "dequant.steps"}


def _amount(cfg, dotted: str) -> int:
    section, field = dotted.split(".", 1)
    value = getattr(getattr(cfg, section), field)
    if value is None and dotted in _SCHEDULE_DEFAULTS:
        return _amount(cfg, _SCHEDULE_DEFAULTS[dotted])
    return int(value)


def schedule_estimate(data_dir: str | os.PathLike, cfg) -> dict:
    """Hours of training that ``cfg``'s schedules take at the step times logged in ``data_dir`` (a dry run's).

    Every training log under ``data_dir`` (``<checkpoint>.log.json`` of
    :func:`tficlib.train.train`) whose meta names the amount that set its
    number of steps (``"schedule": "tfic.steps"``, ...) counts once: the median
    of its seconds per step (the first step, start-up and cuDNN autotuning,
    left out when there are more) times that amount in ``cfg``.  Evaluation,
    data and figures are not counted.  Returns ``{"profile", "total_hours",
    "hours": {stage folder: h}, "runs": {log: {"schedule", "steps",
    "seconds_per_step"}}}``.
    """
    data_dir = Path(data_dir)
    hours: dict[str, float] = {}
    runs: dict[str, dict] = {}
    for path in sorted(data_dir.glob("*/**/*.log.json")):
        try:
            payload = read_json(path)
        except ArtifactError:  # a log cut short by a killed run: not counted
            continue
        schedule = (payload.get("meta") or {}).get("schedule")
        seconds = [row["seconds"] for row in payload.get("log", []) if isinstance(row, dict) and "seconds" in row]
        if not schedule or not seconds:
            continue
        per_step = statistics.median(seconds[1:] if len(seconds) > 1 else seconds)
        steps = _amount(cfg, schedule)
        stage = path.relative_to(data_dir).parts[0]
        hours[stage] = hours.get(stage, 0.0) + per_step * steps / 3600
        runs[str(path.relative_to(data_dir))] = {"schedule": schedule, "steps": steps,
                                                 "seconds_per_step": round(per_step, 5)}
    return {"profile": cfg.name, "total_hours": round(sum(hours.values()), 2),
            "hours": {k: round(v, 2) for k, v in sorted(hours.items())}, "runs": runs}


#: The profile sections (dotted-key prefixes) each stage's results depend on, with the stages it reads.
STAGE_SECTIONS = {
    "00_dataset": ({"textlines", "pages", "data_seed"}, ()),
    "01_mse_pretraining": ({"codec"}, ("00_dataset",)),
    "02_tfic_ocr_finetuning": ({"tfic"}, ("00_dataset", "01_mse_pretraining")),
    "03_text_logit_training": ({"textlogit"}, ("00_dataset", "01_mse_pretraining")),
    "04_dncnn_dequantization": ({"dequant"}, ("00_dataset",)),
    "05_ocr_guided_refinement": ({"dequant"}, ("00_dataset", "04_dncnn_dequantization")),
}


#: Settings of a shared section that concern one stage only (dotted-key prefixes): 05's D2 settings leave 04 as it is.
STAGE_ONLY = {
    "05_ocr_guided_refinement": ("dequant.ocr_guided_", "dequant.guided_train_patches", "dequant.word_margin"),
}


def _concerns(stage: str, key: str) -> bool:
    section = key.split(".")[0]
    if section == "eval":
        return True
    if section not in STAGE_SECTIONS.get(stage, (set(), ()))[0]:
        return False
    return not any(key.startswith(prefixes) for other, prefixes in STAGE_ONLY.items() if other != stage)


def _untouched(stage: str, changed: set[str]) -> bool:
    """True when no changed setting concerns ``stage`` or a stage it reads (``eval`` concerns every stage)."""
    deps = STAGE_SECTIONS.get(stage, (set(), ()))[1]
    return not any(_concerns(stage, key) for key in changed) and all(_untouched(d, changed) for d in deps)


def _reads(stages) -> set[str]:
    """The stages that ``stages`` read, directly or through another stage (06 reads every stage)."""
    todo = [d for s in stages for d in (STAGE_SECTIONS[s][1] if s in STAGE_SECTIONS else STAGE_SECTIONS)]
    seen: set[str] = set()
    while todo:
        stage = todo.pop()
        if stage not in seen:
            seen.add(stage)
            todo.extend(STAGE_SECTIONS[stage][1])
    return seen


def link_earlier_stages(cfg, stages, log=print) -> dict[str, str]:
    """For a variant that runs the notebooks ``stages``: hard-link the earlier stages they read from the profile's own.

    Only stages before the first one run that the run reads (:data:`STAGE_SECTIONS`),
    that the variant's settings do not concern (a training ``seed`` concerns
    only the stages that run) and that the variant's folder lacks: a stage the
    run does not read is not linked, so a later run of it in the variant
    trains its own instead of finding the profile's.  Returns ``{stage: source folder}``.
    """
    import shutil

    if isinstance(stages, str):
        raise TypeError(f"link_earlier_stages takes the list of stages run, got the string {stages!r}")
    stages = list(stages)
    if not cfg.variant or not stages or stages[0] not in NOTEBOOK_STAGES:
        return {}
    changed = set(json.loads(cfg.overrides or "{}")) - {"seed", "variant"}
    base = cfg.data_dir.parent / cfg.name
    read = _reads(stages)
    linked = {}
    for stage in list(STAGE_SECTIONS)[:list(NOTEBOOK_STAGES).index(stages[0])]:
        src, dst = base / stage, cfg.stage_dir(stage)
        if stage not in read or dst.exists() or not src.exists() or not _untouched(stage, changed):
            continue
        shutil.copytree(src, dst, copy_function=os.link)
        linked[stage] = str(src)
        log(f"tficlib: {stage} of the variant linked from {src} (its settings are the profile's)")
    return linked


#: Folders of a stage whose files say what they were made with, so that a variant may reuse them: training
#: checkpoints (fingerprints, :func:`tficlib.train.train`) and evaluation caches (signatures, :func:`tficlib.evaluate.signature`).
REUSABLE = ("checkpoints", "eval")


def link_reusable(cfg, stages, log=print) -> dict[str, int]:
    """For a variant that runs ``stages``: hard-link the profile's checkpoints and evaluation caches of those stages.

    A training run whose fingerprint (objective, steps, seed, data size ...)
    matches its linked checkpoint is reused, and an evaluation whose signature
    (model file hash, labels, engine) matches its linked cache is read back;
    anything else is computed again and replaces its link (written
    atomically, so the profile's file never changes).  A variant that changes
    one setting of 02 thus trains and evaluates only the runs that setting
    concerns.  Nothing is linked for a stage whose inputs the variant changes
    (a checkpoint does not record which earlier models it started from) or
    for a variant with another training ``seed`` (every fingerprint holds it).
    Returns ``{stage: files linked}``.
    """
    import shutil

    if isinstance(stages, str):
        raise TypeError(f"link_reusable takes the list of stages run, got the string {stages!r}")
    changed = {k for k in json.loads(cfg.overrides or "{}") if k != "variant" and not k.startswith("eval.")}
    if not cfg.variant or "seed" in changed:
        return {}
    base = cfg.data_dir.parent / cfg.name
    linked = {}
    for stage in stages:
        deps = STAGE_SECTIONS.get(stage, (set(), ()))[1]
        if not all(_untouched(d, changed) for d in deps):
            continue
        n = 0
        for folder in REUSABLE:
            src = base / stage / folder
            for f in sorted(src.rglob("*")) if src.is_dir() else ():
                dst = cfg.stage_dir(stage) / folder / f.relative_to(src)
                if not f.is_file() or dst.exists():
                    continue
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(f, dst)
                except OSError:  # another file system: a copy
                    shutil.copy2(f, dst)
                n += 1
        if n:
            linked[stage] = n
            log(f"tficlib: {n} checkpoints and evaluation caches of {stage} linked from {base / stage}: what the "
                f"variant's settings leave unchanged is reused, the rest is computed")
    return linked


#: Where the measured (cpu) and estimated (paper) minutes per notebook live: the README's table is made from it.
EXPECTED_SOURCE = "docs/timings.json"


def expected_minutes(profile: str, stages) -> float | None:
    """Minutes the notebooks ``stages`` took (``cpu``) or are estimated to take (``paper``), from docs/timings.json."""
    path = config.repo_root() / EXPECTED_SOURCE
    if not path.exists():
        return None
    table = json.loads(path.read_text()).get(profile, {}).get("minutes", {})
    values = [table.get(s) for s in stages]
    return sum(values) if values and all(isinstance(v, (int, float)) for v in values) else None


def timing_table() -> str:
    """The README's table of minutes per notebook and profile, made from docs/timings.json (one place for those numbers)."""
    data = json.loads((config.repo_root() / EXPECTED_SOURCE).read_text())
    stages = list(NOTEBOOK_STAGES)
    head = "| profile | " + " | ".join(s[:2] for s in stages) + " | total | how |"
    rows = [head, "| " + " | ".join("---" for _ in range(len(stages) + 3)) + " |"]
    for profile, entry in data.items():
        minutes = entry["minutes"]
        cells = [f"{minutes[s]:.1f}" if isinstance(minutes.get(s), (int, float)) else "–" for s in stages]
        total = sum(v for v in minutes.values() if isinstance(v, (int, float)))
        total_cell = f"{total:.0f}" if total < 120 else f"{total / 60:.1f} h"
        rows.append(f"| `{profile}` | " + " | ".join(cells) + f" | {total_cell} | {entry['how']} |")
    return "\n".join(rows)


def _duration(minutes: float) -> str:
    return f"about {minutes:.0f} min" if minutes < 120 else f"about {minutes / 60:.1f} h"


def run_pipeline(profile: str = "auto", first: str | None = None, last: str | None = None,
                 log=print, extra_parameters: dict | None = None, overrides: dict | None = None,
                 dry_run: bool = False, seed: int | None = None) -> list[NotebookRun]:
    """Execute the notebooks ``first``..``last`` with papermill in ``profile``.

    ``overrides`` (dotted keys, :func:`tficlib.config.apply_overrides`),
    ``dry_run`` (:func:`tficlib.config.dry_run_overrides`, applied first) and
    a training ``seed`` other than the profile's (variant ``seed<N>``) make
    the run a variant: the notebooks get them through ``$TFIC_OVERRIDES`` and
    write to ``data/<profile>-<variant>/``.  A variant that starts after 00
    takes the earlier stages it reads and its settings do not concern from
    the profile's own folder (:func:`link_earlier_stages`), and the training
    checkpoints and evaluation caches of the stages it runs, so that runs its
    settings do not change are reused (:func:`link_reusable`).
    Returns one :class:`NotebookRun` per notebook; raises :class:`NotebookFailed`
    at the first failure.  Timings are merged into ``timings.json`` in ``cfg.data_dir``.
    """
    import papermill

    cfg = config.resolve(profile)  # with $TFIC_OVERRIDES, if set
    own = cfg  # the profile's own amounts
    full = config.apply_overrides(cfg, overrides) if overrides else cfg  # the same run without --dry-run
    changes = {**(config.dry_run_overrides(cfg) if dry_run else {}), **(overrides or {})}
    if changes:
        cfg = config.apply_overrides(cfg, changes)  # checked here, before any notebook starts
    cfg = config.with_seed(cfg, seed)
    full = config.with_seed(full, seed)
    notebooks = list_notebooks(first, last)
    link_earlier_stages(cfg, [nb.stem for nb in notebooks], log=log)
    link_reusable(cfg, [nb.stem for nb in notebooks], log=log)
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
    chosen = ""
    if str(profile or os.environ.get("TFIC_PROFILE", "auto")).lower() == "auto":
        chosen = " (auto: CUDA found)" if cfg.name == "paper" else " (auto: no CUDA GPU found)"
    log(f"tficlib: running {len(notebooks)} notebook(s) in profile {cfg.name!r}{chosen} on {cfg.device}{variant}")
    expected = expected_minutes(cfg.name, [nb.stem for nb in notebooks])
    if expected and not dry_run and not cfg.variant:
        log(f"tficlib: expected time {_duration(expected)} ({EXPECTED_SOURCE}); interrupt now (Ctrl-C) to "
            f"choose another profile, e.g. make reproduce PROFILE=cpu")
    try:
        for i, nb in enumerate(notebooks, 1):
            out = executed_dir / nb.name
            log(f"[{i}/{len(notebooks)}] {nb.name} ...", end="" if log is print else "\n")
            if log is print:
                sys.stdout.flush()
            start = time.perf_counter()
            try:
                papermill.execute_notebook(
                    str(nb), str(out), parameters={"PROFILE": cfg.name, "SEED": cfg.seed, **(extra_parameters or {})},
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
    if dry_run:
        est = schedule_estimate(cfg.data_dir, full)
        if est["runs"]:
            # --set amounts (e.g. more steps, for steadier step times) also count in the estimate; then
            # the profile's own amounts are estimated beside it
            own_est = schedule_estimate(cfg.data_dir, own)
            if own_est["runs"] != est["runs"]:
                est["profile_amounts"] = {k: own_est[k] for k in ("total_hours", "hours")}
            est_path = write_json(cfg.data_dir / "schedule_estimate.json", est)

            def stages(e: dict) -> str:
                return ", ".join(f"{k[:2]} {v:.1f} h" for k, v in e["hours"].items())

            log(f"tficlib: at these step times the full {full.name!r} schedules train for about "
                f"{est['total_hours']:.1f} h on {cfg.device} ({stages(est)}; evaluation not counted): {est_path}")
            if "profile_amounts" in est:
                log(f"tficlib: with the profile's own amounts instead of the --set ones: about "
                    f"{own_est['total_hours']:.1f} h ({stages(own_est)})")
    figures = sorted(cfg.figures_dir.glob("*.png")) if cfg.figures_dir.exists() else []
    if figures:
        log("figures:")
        for f in figures:
            log(f"  {f}")
    return runs
