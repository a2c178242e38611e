"""The two datasets of notebook 00 (``notebooks/00_dataset.ipynb``).

* :mod:`tficlib.data.textlines` -- the TFIC text-line dataset (trdg lines, TFIC Sec. IV-A).
* :mod:`tficlib.data.pages` -- rendered document pages, their 64x256 patches and the
  extreme-JPEG degradation (journal paper, Sec. 4.6).

Both are written under ``data/<profile>/00_dataset/`` with a sha256 manifest per
split; loading a missing dataset raises :class:`tficlib.artifacts.MissingArtifact`
naming the notebook to run.
"""

from tficlib.data import pages, textlines

__all__ = ["pages", "textlines"]
