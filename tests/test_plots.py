"""tficlib.plots: figures are written atomically where the profile says."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from tficlib import config, plots  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_save_figure_writes_png_atomically(tmp_data):
    cfg = config.resolve("smoke")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    path = plots.save_figure(fig, cfg, "06_rate_accuracy")
    assert path == tmp_data / "figures" / "smoke" / "06_rate_accuracy.png"
    assert path.read_bytes()[:8] == PNG
    assert [p.name for p in path.parent.iterdir()] == ["06_rate_accuracy.png"]  # no temp file left
    assert plots.save_figure(fig, cfg, "06_rate_accuracy.png") == path


def test_save_figure_failure_leaves_old_file(tmp_data, monkeypatch):
    cfg = config.resolve("smoke")
    fig, _ = plt.subplots()
    path = plots.save_figure(fig, cfg, "grid")
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.save_figure(fig, cfg, "grid")
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]


def test_save_figure_rejects_paths(tmp_path):
    fig, _ = plt.subplots()
    with pytest.raises(ValueError, match="plain file stem"):
        plots.save_figure(fig, tmp_path, "../escape")
    assert plots.save_figure(fig, tmp_path, "ok").exists()


def test_image_grid_tensors_and_arrays():
    x = torch.rand(5, 3, 16, 64)
    fig = plots.image_grid(x, titles=[f"text {i}" for i in range(5)], ncols=2)
    axes = fig.axes
    assert len(axes) == 6  # 3 rows x 2 columns, the last one blank
    assert axes[0].get_xlabel() == "text 0" and not axes[5].axison
    arrays = [np.zeros((16, 64, 3), np.uint8), np.zeros((16, 64), np.uint8)]
    fig2 = plots.image_grid(arrays)
    assert len(fig2.axes) == 2
    assert len(plots.image_grid(torch.rand(3, 16, 64)).axes) == 1  # one (3,H,W) image, not 3 channels
    with pytest.raises(ValueError, match="2 images but 1 titles"):
        plots.image_grid(arrays, titles=["a"])


def test_rate_curves_lists_and_scalars():
    methods = {
        "uncompressed": {"accuracy": 0.91},
        "mse": {"bpp": [0.3, 0.1, 0.2], "accuracy": [0.8, 0.4, None]},
        "tfic": {"bpp": [0.1, 0.2], "psnr": [20.0, 22.0]},  # no accuracy: skipped
    }
    fig, ax = plt.subplots()
    drawn = plots.rate_curves(ax, methods, metric="accuracy")
    assert drawn == ["uncompressed", "mse"]
    lines = {line.get_label(): line for line in ax.get_lines()}
    xs, ys = lines["MSE codec"].get_data()
    assert list(xs) == [0.1, 0.3] and list(ys) == [0.4, 0.8]  # sorted by rate, None skipped
    assert list(lines["uncompressed"].get_ydata()) == [0.91, 0.91]
    assert ax.get_xlabel().startswith("rate (bpp")
    with pytest.raises(ValueError, match="differ in length"):
        plots.rate_curves(ax, {"m": {"bpp": [0.1], "accuracy": [0.2, 0.3]}})


def test_training_curves_records_and_columns():
    log = [{"step": i, "loss": 1.0 / (i + 1), "bpp": 0.5} for i in range(10)]
    fig = plots.training_curves(log, ["loss", "bpp"], logy=["loss"])
    assert [ax.get_title() for ax in fig.axes] == ["loss", "bpp"]
    assert fig.axes[0].get_yscale() == "log"
    fig2 = plots.training_curves({"step": [0, 1], "loss": [2.0, 1.0]}, ["loss"])
    assert list(fig2.axes[0].get_lines()[0].get_ydata()) == [2.0, 1.0]
    with pytest.raises(ValueError, match=r"keys \['mse'\] are not in the log"):
        plots.training_curves(log, ["mse"])
