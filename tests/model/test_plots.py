# ruff: noqa: S101
import numpy as np
import pytest

from model.metrics import Thresholds
from model.plots import plot_confusion, plot_pr_curve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
Y = np.array([0, 1, 0, 0, 1, 0, 1, 1])
S = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
T = Thresholds(review=0.2, block=0.7)


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1000


@pytest.mark.parametrize("plot", [plot_pr_curve, plot_confusion])
def test_plot_writes_png(tmp_path, plot):
    out = plot(Y, S, T, tmp_path / "sub" / "fig.png")
    assert out == tmp_path / "sub" / "fig.png"
    _assert_png(out)


@pytest.mark.parametrize("plot", [plot_pr_curve, plot_confusion])
def test_plot_single_class_still_writes_png(tmp_path, plot):
    out = plot(
        np.zeros(4, dtype=int), [0.1, 0.2, 0.3, 0.4], Thresholds(review=0.5, block=0.9), str(tmp_path / "one_class.png")
    )
    _assert_png(out)


def test_plots_close_their_figures(tmp_path):
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    plot_pr_curve(Y, S, T, tmp_path / "a.png")
    plot_confusion(Y, S, T, tmp_path / "b.png")
    assert len(plt.get_fignums()) == before
    assert plt.get_backend().lower() == "agg"


def test_plot_rejects_empty_input(tmp_path):
    with pytest.raises(ValueError):
        plot_pr_curve([], [], T, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
