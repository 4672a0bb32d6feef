"""Figures of judge results: a forest plot of candidates and heatmaps of judge/worker confusion.

Built with matplotlib's object API (no pyplot): each function draws on the axes it is given (a
notebook's own) or on a new `Figure`, saves it when given a `path`, and returns the Figure; nothing
here chooses a backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

LABEL_CHARS = 14  # longer judge/level names are cut, so that panel titles and ticks do not collide


def forest(frame: pd.DataFrame, path: str | Path | None = None, title: str = "", xlabel: str = "quality",
           ax: Any = None) -> Figure:
    """Candidates (rows of `to_frame()`) as posterior means with 90% intervals, best on top."""
    f = frame.sort_values("quality_mean")
    if ax is None:
        fig = Figure(figsize=(6.0, 0.35 * len(f) + 1.2), layout="constrained")
        ax = fig.subplots()
    y = np.arange(len(f))
    ax.errorbar(f["quality_mean"], y, xerr=[f["quality_mean"] - f["ci_low"], f["ci_high"] - f["quality_mean"]],
                fmt="o", color="C0", ecolor="C0", capsize=3)
    labels = [f"{_short(c)}  (P1={p:.2f})" for c, p in zip(f["candidate"], f["p_rank1"], strict=True)]
    ax.set_yticks(y, labels)
    ax.set_xlabel(f"{xlabel} (mean, 90% interval)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _save(ax.figure, path, 120)


def confusion_heatmaps(confusion: np.ndarray, names, levels, path: str | Path | None = None, title: str = "",
                       max_panels: int = 16, weights: np.ndarray | None = None, axes: Any = None) -> Figure:
    """One heatmap per judge/worker of P(reported | true), each cell labelled with its value; the
    `max_panels` with most `weights` first. `axes`: as many axes as panels, to draw on."""
    order = np.argsort(-weights, kind="stable") if weights is not None else np.arange(len(names))
    order = order[:max_panels]
    n = len(order)
    if axes is None:
        cols = min(4, n)
        rows = int(np.ceil(n / cols))
        k = len(levels)
        fig = Figure(figsize=(max(2.8, 0.55 * k + 1.4) * cols, (max(2.6, 0.5 * k + 1.4)) * rows + 0.5),
                     layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
    else:
        axes = np.ravel(axes)
        fig = axes[0].figure
    ticks = [_short(f"{v:g}" if isinstance(v, int | float | np.number) else v) for v in levels]
    image = None
    for ax, w in zip(axes, order, strict=False):
        image = ax.imshow(confusion[w], vmin=0.0, vmax=1.0, cmap="viridis")
        for (true, reported), value in np.ndenumerate(confusion[w]):
            ax.text(reported, true, f"{value:.2f}", ha="center", va="center", fontsize=6,
                    color="black" if value > 0.6 else "white")
        ax.set_title(_short(names[w]), fontsize=9)
        ax.set_xticks(range(len(ticks)), ticks, fontsize=7, rotation=45 if len(ticks) > 3 else 0)
        ax.set_yticks(range(len(ticks)), ticks, fontsize=7)
        ax.set_xlabel("reported", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
    for ax in list(axes)[n:]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=list(axes[:n]), shrink=0.8)
    fig.suptitle(title)
    return _save(fig, path, 110)


def sibling(path: str | Path, suffix: str) -> Path:
    """`out/plot.png` -> `out/plot_<suffix>.png`: where a second figure goes."""
    p = Path(path)
    return p.with_name(f"{p.stem}_{suffix}{p.suffix or '.png'}")


def _short(name: Any) -> str:
    text = str(name)
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _save(fig: Figure, path: str | Path | None, dpi: int) -> Figure:
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig
