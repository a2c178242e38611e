"""Notebook hygiene: what nbval cannot see (outputs, tags, prefixes, lesson structure)."""

from __future__ import annotations

import collections
from pathlib import Path

import nbformat
import pytest

from tficlib.artifacts import NOTEBOOKS

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_FILES = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_exist_with_unique_prefixes():
    assert NOTEBOOK_FILES, "no notebooks found"
    prefixes = collections.Counter(p.name[:3] for p in NOTEBOOK_FILES)
    assert all(n == 1 for n in prefixes.values()), prefixes
    for p in NOTEBOOK_FILES:
        assert p.name[:2].isdigit() and p.name[2] == "_", p.name
        assert f"notebooks/{p.name}" in NOTEBOOKS.values(), f"{p.name} is not registered in artifacts.NOTEBOOKS"


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.name)
def test_notebook_is_a_clean_lesson(path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), \
        f"{path.name} is committed with outputs; run nbstripout"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: exactly one cell must be tagged 'parameters'"
    assert code[0] is tagged[0], f"{path.name}: the parameters cell must be the first code cell"
    src = tagged[0].source
    assert 'os.environ.get("TFIC_PROFILE", "auto")' in src and "SEED" in src
    assert "config.resolve(PROFILE, seed=SEED)" in code[1].source, \
        f"{path.name}: the second code cell must resolve the profile with the notebook's seed (its own folder)"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.lstrip().startswith("# "), "title first"
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "What you will learn" in markdown, f"{path.name}: missing 'What you will learn'"
    assert "$" in markdown, f"{path.name}: the equation it implements should be written in LaTeX"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
