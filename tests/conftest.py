"""Shared fixtures: every test writes under a temporary data folder, never into data/."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def tmp_data(tmp_path, monkeypatch):
    """Point ``cfg.data_dir`` / ``cfg.figures_dir`` at a temporary folder."""
    monkeypatch.setenv("TFIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("TFIC_FIGURES", str(tmp_path / "figures"))
    return tmp_path
