"""Dataset manifests: the one place that checks generated files against their sha256 (and reads them).

Each split of a generated dataset has a ``manifest.json`` (a header describing how
it was generated, then one entry per item with its files and their sha256).  It
is written last and atomically, so a split whose manifest exists and whose files
match it is complete; anything else is regenerated (:func:`is_complete`) or, when
a stage loads it, refused with a clear error (:func:`load`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from tficlib import artifacts

__all__ = ["file_problems", "is_complete", "load", "read_rgb"]

#: ``entries(manifest) -> [(relative file, expected sha256), ...]``
Entries = Callable[[dict], Iterable[tuple[str, str]]]


def file_problems(root: Path, manifest: dict, entries: Entries) -> list[str]:
    """Problems with the files a manifest lists: missing, or not matching their sha256."""
    problems = []
    for rel, sha in entries(manifest):
        path = root / rel
        if not path.exists():
            problems.append(f"{path} is missing")
        elif artifacts.sha256_file(path) != sha:
            problems.append(f"{path} does not match its sha256 in the manifest")
    return problems


def is_complete(path: Path, expected_header: dict, count: int, entries: Entries) -> bool:
    """True when ``path`` holds a manifest made with ``expected_header`` listing ``count`` valid items."""
    if not path.exists():
        return False
    try:
        manifest = artifacts.read_json(path)
    except artifacts.ArtifactError:
        return False
    if {k: manifest.get(k) for k in expected_header} != expected_header:
        return False
    if len(manifest.get("items", [])) != count:
        return False
    return not file_problems(path.parent, manifest, entries)


def load(path: Path, stage: str, fmt: str, what: str, entries: Entries, regenerate: str) -> dict:
    """Read a manifest and check every file against it.

    Missing -> :class:`~tficlib.artifacts.MissingArtifact` naming the stage's notebook;
    another format, or tampered/corrupt files -> :class:`~tficlib.artifacts.ArtifactError`
    saying how to regenerate (``regenerate``, e.g. ``tficlib.data.pages.generate(cfg, force=True)``).
    """
    path = artifacts.require(path, stage)
    manifest = artifacts.read_json(path, stage)
    if manifest.get("format") != fmt:
        raise artifacts.ArtifactError(f"{path} is not a tficlib {what} manifest")
    problems = file_problems(path.parent, manifest, entries)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise artifacts.ArtifactError(
            f"{what} dataset does not match its manifest: " + "; ".join(problems[:3]) + more
            + f"; regenerate it: run {artifacts.NOTEBOOKS[stage]} (or {regenerate})"
        )
    return manifest


def read_rgb(path: Path) -> np.ndarray:
    """A dataset image file as a uint8 HxWx3 RGB array (its own copy: the file is closed on return)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()
