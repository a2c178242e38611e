"""Every figure the README shows is committed and is one the notebooks write."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent


def _notebook_figure_names() -> set[str]:
    names = set()
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        nb = nbformat.read(str(path), as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                names.update(re.findall(r"save_figure\([^)]*?[\"']([\w.-]+)[\"']", cell.source))
    return names


def test_readme_figures_exist_and_come_from_notebooks():
    readme = (ROOT / "README.md").read_text()
    shown = re.findall(r"\]\((figures/[\w./-]+\.png)\)", readme)
    assert shown, "the README shows no figure"
    written = _notebook_figure_names()
    for rel in shown:
        assert (ROOT / rel).is_file(), f"README shows {rel}, which is not committed"
        assert Path(rel).stem in written, f"README shows {rel}, which no notebook writes"


def test_readme_names_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make reproduce" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_the_timing_table_is_made_from_docs_timings_json():
    from tficlib import runner

    readme = (ROOT / "README.md").read_text()
    table = runner.timing_table()
    assert table in readme, "README's timing table differs from docs/timings.json: paste runner.timing_table()"
    assert runner.expected_minutes("cpu", ["00_dataset", "01_mse_pretraining"]) > 0


def test_the_readme_is_a_front_door_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200, "keep the README a front door: details go to docs/"
    links = re.findall(r"\]\(((?:docs|notebooks|figures)/[^)#\s]+)\)", readme)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"
    for doc in (ROOT / "docs").glob("*.md"):
        for link in re.findall(r"\]\(([\w./-]+\.(?:md|json|png))\)", doc.read_text()):
            assert (doc.parent / link).resolve().exists(), f"{doc.name} links to {link}, which does not exist"
