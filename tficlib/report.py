"""Tables for notebooks and the docs: Markdown tables, fixed-width metric tables, target verdicts."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["markdown_table", "summary_table", "target", "verdict"]


def _cell(v, digits: int) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_cell(x, digits) for x in v)
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence, columns: Sequence[str] | None = None, digits: int = 3) -> str:
    """A GitHub Markdown table.

    ``rows``: dicts (``columns`` default to the first row's keys and pick the
    cells) or sequences (``columns`` is then the header, one per cell).
    Floats get ``digits`` decimals, ``None`` and NaN become ``n/a``, ``|`` in
    text is escaped.
    """
    rows = list(rows)
    if not rows:
        return "(no rows)"
    if isinstance(rows[0], Mapping):
        columns = list(columns or rows[0].keys())
        cells = [[r.get(c) for c in columns] for r in rows]
    else:
        if columns is None:
            raise ValueError("rows given as sequences need their column names")
        columns = list(columns)
        cells = [list(r) for r in rows]
        bad = [i for i, r in enumerate(cells) if len(r) != len(columns)]
        if bad:
            raise ValueError(f"row {bad[0]} has {len(cells[bad[0]])} cells for {len(columns)} columns")
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(_cell(v, digits) for v in r) + " |" for r in cells]
    return "\n".join(lines)


def summary_table(rows: Mapping[str, Mapping], columns=("bpp", "bpp_estimated", "psnr", "ms_ssim", "accuracy",
                                                        "accuracy_ci")) -> str:
    """A fixed-width text table: one row per name, one column per metric (``-`` where missing)."""
    head = f"{'':>18}" + "".join(f"{c:>14}" for c in columns)
    lines = [head]
    for name, row in rows.items():
        cells = []
        for c in columns:
            v = row.get(c)
            cells.append(f"{v:>14.4f}" if isinstance(v, (int, float)) and v is not None else f"{'-':>14}")
        lines.append(f"{name:>18}" + "".join(cells))
    return "\n".join(lines)


def target(measured, goal, met: bool | None, **extra) -> dict:
    """One target's record for results.json: ``{"measured", "target", "met", ...}`` (``met`` None: not computable)."""
    return {"measured": measured, "target": goal, "met": None if met is None else bool(met), **extra}


def verdict(met: bool | None) -> str:
    """``MET`` / ``NOT MET`` / ``n/a``."""
    return "n/a" if met is None else ("MET" if met else "NOT MET")
