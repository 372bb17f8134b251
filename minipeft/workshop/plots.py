"""Plots of a run, for the command line (`finetune --plot`) and the tutorials; needs the `plots` extra (matplotlib)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from minipeft.io_utils import atomic_write


def save_loss_plot(losses: Sequence[float], path: str | os.PathLike, title: str = "fine-tuning") -> Path:
    """Write the training loss of every step (and its 10-step running mean) as a PNG at `path`, atomically."""
    if not losses:
        raise ValueError(f"save_loss_plot: no losses to plot for {path}; train at least one step")
    try:
        import matplotlib  # noqa: PLC0415 (optional extra)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        raise ImportError(f"save_loss_plot needs matplotlib to write {path}: pip install 'minipeft[plots]'") from None
    steps = range(1, len(losses) + 1)
    window = [sum(losses[max(0, i - 9):i + 1]) / (i + 1 - max(0, i - 9)) for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss per step")
    ax.plot(steps, window, lw=2, label="mean of the last 10 steps")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (completion tokens)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
