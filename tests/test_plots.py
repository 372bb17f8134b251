"""save_loss_plot: the loss curve as a PNG with matplotlib (the `plots` extra), a clear error without it."""

from __future__ import annotations

import importlib.util

import pytest

from minipeft.workshop.plots import save_loss_plot

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="needs matplotlib (pip install -e '.[plots]')")
def test_loss_plot_is_a_png(tmp_path):
    path = save_loss_plot([3.0, 2.5, 2.0, 1.9], tmp_path / "loss.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(HAS_MATPLOTLIB, reason="matplotlib is installed")
def test_without_matplotlib_the_error_names_the_extra(tmp_path):
    with pytest.raises(ImportError, match=r"save_loss_plot needs matplotlib to write .*loss.png: pip install "
                                          r"'minipeft\[plots\]'"):
        save_loss_plot([1.0], tmp_path / "loss.png")
    assert not (tmp_path / "loss.png").exists()


def test_no_losses_is_refused(tmp_path):
    with pytest.raises(ValueError, match="save_loss_plot: no losses to plot"):
        save_loss_plot([], tmp_path / "loss.png")
