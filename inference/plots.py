"""Pictures of an SMC run: the effective sample size per step and the particles' genealogy.

Built with matplotlib's object API: each function draws on `ax` when given (a notebook's own
axes) or on a new `Figure`, and returns the Figure; nothing here chooses a backend.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure


def _axes(ax: Any, figsize: tuple[float, float]) -> tuple[Figure, Any]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def lineages(ancestors: Any) -> np.ndarray:
    """[N, T + 1]: final particle i's ancestor in every column (0 = initial, t + 1 = after step t),
    from `ancestors` [T, N] (particle j after step t descends from `ancestors[t, j]`)."""
    ancestors = np.asarray(ancestors)
    steps, n = ancestors.shape
    paths = np.empty((n, steps + 1), np.int64)
    paths[:, steps] = np.arange(n)
    for t in reversed(range(steps)):
        paths[:, t] = ancestors[t, paths[:, t + 1]]
    return paths


def ess_plot(ess: Any, num_particles: int, ax: Any = None) -> Figure:
    """ESS after each step's reweighting, against N."""
    ess = np.asarray(ess)
    fig, ax = _axes(ax, (5.5, 4))
    steps = np.arange(1, len(ess) + 1)
    ax.plot(steps, ess, "o-", label="ESS")
    ax.axhline(num_particles, color="grey", ls=":", label="N")
    ax.set(xlabel="step t", ylabel="ESS after reweighting", ylim=(0, num_particles + 1), xticks=steps,
           title="effective sample size")
    ax.legend()
    return fig


def genealogy_plot(ancestors: Any, weights: Any = None, ax: Any = None) -> Figure:
    """Every parent-child link in grey, the surviving lineages in colour, final weights as dot sizes."""
    ancestors = np.asarray(ancestors)
    steps, n = ancestors.shape
    fig, ax = _axes(ax, (5.5, 4))
    columns = np.arange(steps + 1)
    for t in range(steps):
        for i in range(n):
            ax.plot([t, t + 1], [ancestors[t, i], i], color="lightgrey", lw=1)
    for path in lineages(ancestors):
        ax.plot(columns, path, color="C0", lw=1.5)
    if weights is not None:
        ax.scatter(np.full(n, steps), np.arange(n), s=2000 * np.asarray(weights), color="C1", zorder=3,
                   label="final weight")
        ax.legend(loc="upper left")
    ax.set(xlabel="column (0 = initial, t + 1 = after step t)", ylabel="particle", xticks=columns,
           title="genealogy")
    return fig
