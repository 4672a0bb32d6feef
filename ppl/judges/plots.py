"""PNG figures: a forest plot of candidates and heatmaps of judge/worker confusion.

Figures are built with matplotlib's object API (no pyplot), so importing this module does
not touch the backend a notebook or script has chosen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def forest(frame: pd.DataFrame, path: str | Path, title: str = "", xlabel: str = "quality") -> Path:
    """Candidates (rows of `to_frame()`) as posterior means with 90% intervals, best on top."""
    f = frame.sort_values("quality_mean")
    fig = Figure(figsize=(6.0, 0.35 * len(f) + 1.2))
    ax = fig.subplots()
    y = np.arange(len(f))
    ax.errorbar(f["quality_mean"], y, xerr=[f["quality_mean"] - f["ci_low"], f["ci_high"] - f["quality_mean"]],
                fmt="o", color="C0", ecolor="C0", capsize=3)
    labels = [f"{c}  (P1={p:.2f})" for c, p in zip(f["candidate"], f["p_rank1"], strict=True)]
    ax.set_yticks(y, labels)
    ax.set_xlabel(f"{xlabel} (mean, 90% interval)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)


def confusion_heatmaps(confusion: np.ndarray, names, levels, path: str | Path, title: str = "",
                       max_panels: int = 16, weights: np.ndarray | None = None) -> Path:
    """One heatmap per judge/worker of P(reported | true); the `max_panels` with most `weights` first."""
    order = np.argsort(-weights, kind="stable") if weights is not None else np.arange(len(names))
    order = order[:max_panels]
    n = len(order)
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(2.6 * cols, 2.5 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    ticks = [f"{v:g}" if isinstance(v, (int, float, np.number)) else str(v) for v in levels]
    for ax, w in zip(axes.flat, order, strict=False):
        im = ax.imshow(confusion[w], vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_title(str(names[w]), fontsize=9)
        ax.set_xticks(range(len(ticks)), ticks, fontsize=7)
        ax.set_yticks(range(len(ticks)), ticks, fontsize=7)
        ax.set_xlabel("reported", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return Path(path)


def sibling(path: str | Path, suffix: str) -> Path:
    """`out/plot.png` -> `out/plot_<suffix>.png`: where a second figure goes."""
    p = Path(path)
    return p.with_name(f"{p.stem}_{suffix}{p.suffix or '.png'}")
