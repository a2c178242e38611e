"""Shared fixtures: every test writes under a temporary data folder, never into data/."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_configure(config):
    """One torch thread for the whole suite: the tests use tiny tensors, which only lose time to
    OpenMP thread hand-offs (badly so on a busy 2-core machine); results do not depend on it."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def tmp_data(tmp_path, monkeypatch):
    """Point ``cfg.data_dir`` / ``cfg.figures_dir`` at a temporary folder."""
    monkeypatch.setenv("TFIC_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("TFIC_FIGURES", str(tmp_path / "figures"))
    return tmp_path
