"""Plot functions: draw on the axes they are given, return the Figure, never switch the backend."""

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from inference.plots import ess_plot, genealogy_plot, lineages
from ppl.commands.demo import accuracy_figure, bootstrap_interval, expected_calibration_error, reliability_figure
from ppl.judges.plots import confusion_heatmaps, forest


def test_lineages_follow_the_ancestors_back():
    ancestors = np.array([[0, 0, 1], [2, 2, 0]])  # after step 0: parents 0 0 1; after step 1: 2 2 0
    # final particle 0 <- 2 (column 1) <- 1 (column 0); 1 <- 2 <- 1; 2 <- 0 <- 0
    np.testing.assert_array_equal(lineages(ancestors), [[1, 2, 0], [1, 2, 1], [0, 0, 2]])


def test_plots_draw_on_given_axes_and_keep_the_backend(tmp_path):
    backend = matplotlib.get_backend()
    fig = Figure()
    ax_ess, ax_tree, ax_forest = fig.subplots(1, 3)
    assert ess_plot([3.0, 2.5], 4, ax=ax_ess) is fig
    assert genealogy_plot([[0, 0, 1, 3]], [0.1, 0.2, 0.3, 0.4], ax=ax_tree) is fig
    frame = pd.DataFrame({"candidate": ["a", "a-very-long-candidate-name"], "quality_mean": [0.2, 0.5],
                          "ci_low": [0.1, 0.4], "ci_high": [0.3, 0.6], "p_rank1": [0.1, 0.9]})
    assert forest(frame, ax=ax_forest) is fig
    assert "a-very-long-c…  (P1=0.90)" in [t.get_text() for t in ax_forest.get_yticklabels()]
    assert isinstance(ess_plot([1.0], 2), Figure) and matplotlib.get_backend() == backend
    path = tmp_path / "forest.png"
    assert isinstance(forest(frame, path), Figure) and path.stat().st_size > 1000


def test_confusion_heatmaps_label_every_cell():
    confusion = np.array([[[0.9, 0.1], [0.2, 0.8]], [[0.5, 0.5], [0.3, 0.7]]])
    fig = confusion_heatmaps(confusion, ["judge-1", "judge-2"], [0, 1])
    texts = [t.get_text() for ax in fig.axes[:2] for t in ax.texts]
    assert sorted(texts) == sorted(f"{v:.2f}" for v in confusion.ravel())


def test_reliability_is_per_budget_with_bin_counts():
    rng = np.random.default_rng(0)
    rows = []
    for budget in (1, 4):
        confidence = rng.uniform(size=40) if budget > 1 else np.ones(40)
        correct = rng.uniform(size=40) < confidence
        rows.append({"task": "t", "method": "pf", "budget": budget, "accuracy": correct.mean(),
                     "accuracy_95": bootstrap_interval(list(correct)),
                     "pairs": [[float(c), bool(k)] for c, k in zip(confidence, correct, strict=True)]})
    rows.append({"task": "t", "method": "majority", "budget": 4, "accuracy": 0.5, "accuracy_95": [0.3, 0.7],
                 "pairs": []})
    fig = reliability_figure(rows)
    assert len(fig.axes) == 2
    for ax, row in zip(fig.axes, rows, strict=False):
        pairs = np.array(row["pairs"])
        ece = expected_calibration_error(list(pairs[:, 0]), list(pairs[:, 1].astype(bool)))
        assert ax.get_title() == f"t pf N={row['budget']}: ECE {ece:.3f}"
        assert sum(int(t.get_text()) for t in ax.texts) == 40  # every problem in one labelled bar
    accuracy = accuracy_figure(rows, 40)
    drawn = {c.get_label(): c for c in accuracy.axes[0].containers}  # errorbar containers, one per method
    lines = [drawn["pf"].lines[0], drawn["majority"].lines[0]]
    assert len({(line.get_marker(), line.get_linestyle()) for line in lines}) == 2
    assert lines[1].get_xdata()[0] != 4  # nudged off the shared budget so that no point hides another
    spans = [tuple(np.round(seg[:, 1], 6)) for c in drawn.values() for seg in c.lines[2][0].get_segments()]
    assert (0.3, 0.7) in spans and len(spans) == 3  # every interval is drawn


def test_bootstrap_interval_matches_the_binomial_spread():
    outcomes = [True] * 200 + [False] * 200
    low, high = bootstrap_interval(outcomes)
    assert abs(low - (0.5 - 1.96 * 0.025)) < 0.01 and abs(high - (0.5 + 1.96 * 0.025)) < 0.01
    assert bootstrap_interval([True] * 10) == [1.0, 1.0]
    small_low, small_high = bootstrap_interval(outcomes[::10])
    assert small_high - small_low > 2.5 * (high - low)  # 10x fewer problems: ~3x wider
