"""Judge models: exact marginalisation, recovery on easy data, coverage sanity, CLI errors."""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from jax.scipy.special import logsumexp

from ppl.errors import InputError
from ppl.judges import aggregate, rank
from ppl.judges.data import encode_labels, read_table
from ppl.judges.dawid_skene import task_log_joint
from ppl.judges.simplex import simulate

FAST = dict(num_samples=80, num_warmup=80, num_chains=2)


def crowd(seed: int, n_tasks: int = 60, n_workers: int = 6, n_classes: int = 3, accuracy: float = 0.85):
    """Labels from good one-coin workers: every worker labels every task."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(n_classes, size=n_tasks)
    rows = []
    for t in range(n_tasks):
        for w in range(n_workers):
            ok = rng.random() < accuracy
            lab = truth[t] if ok else rng.choice([k for k in range(n_classes) if k != truth[t]])
            rows.append((f"t{t}", f"w{w}", int(lab)))
    return pd.DataFrame(rows, columns=["task", "worker", "label"]), pd.Series(truth, index=[f"t{t}" for t in
                                                                                            range(n_tasks)])


def confusion_crowd(seed: int, confusion: np.ndarray, n_tasks: int, skip: float = 0.0):
    """Labels drawn from known per-worker confusions (W, K, K); each label is dropped with prob `skip`."""
    rng = np.random.default_rng(seed)
    W, K, _ = confusion.shape
    truth = rng.integers(K, size=n_tasks)
    rows = [(f"t{t}", f"w{w}", int(rng.choice(K, p=confusion[w, truth[t]])))
            for t in range(n_tasks) for w in range(W) if rng.random() >= skip]
    return pd.DataFrame(rows, columns=["task", "worker", "label"]), pd.Series(truth, index=[f"t{t}" for t in
                                                                                            range(n_tasks)])


def test_enumeration_equals_brute_force_marginal():
    rng = np.random.default_rng(0)
    K, W, T = 3, 2, 2
    df = pd.DataFrame({"task": [0, 0, 1, 1, 1], "worker": [0, 1, 0, 1, 1], "label": [0, 2, 1, 1, 0]})
    lab = encode_labels(df)
    pi = rng.dirichlet(np.ones(K))
    theta = rng.dirichlet(np.ones(K), size=(W, K))
    joint = task_log_joint(jnp.log(pi), jnp.log(theta), lab.task, lab.worker, lab.label, T)
    ours = float(logsumexp(joint, axis=-1).sum())
    brute = 0.0
    for zs in itertools.product(range(K), repeat=T):  # sum over every joint assignment of true labels
        p = np.prod([pi[z] for z in zs])
        for t, w, lbl in zip(lab.task, lab.worker, lab.label, strict=True):
            p *= theta[w, zs[t], lbl]
        brute += p
    assert ours == pytest.approx(np.log(brute), rel=1e-5)


@pytest.mark.parametrize("model", ["dawid-skene", "one-coin", "majority"])
def test_aggregate_recovers_easy_truth(model):
    df, truth = crowd(1)
    res = aggregate(df, model=model, **FAST)
    pred = res.predict().reindex(truth.index)
    assert (pred.to_numpy() == truth.to_numpy()).mean() == 1.0
    frame = res.to_frame(all_labels=True)
    assert np.allclose(frame.groupby("task")["prob"].sum(), 1.0)
    workers = res.workers_frame()
    assert list(workers.columns) == ["worker", "accuracy_mean", "ci_low", "ci_high", "n_labels", "r_hat", "ess"]
    assert workers.r_hat.isna().all() if model == "majority" else workers.r_hat.lt(1.1).all()
    assert (workers.ci_low <= workers.accuracy_mean).all() and (workers.accuracy_mean <= workers.ci_high).all()
    if model != "majority":
        assert workers.accuracy_mean.between(0.7, 0.97).all()


def test_dawid_skene_beats_majority_with_weak_crowd():
    """Two good workers and five near-random ones: majority vote follows the crowd, Dawid-Skene weighs workers."""
    good, truth = crowd(2, n_tasks=80, n_workers=2, n_classes=2, accuracy=0.95)
    weak, _ = crowd(2, n_tasks=80, n_workers=5, n_classes=2, accuracy=0.6)
    weak["worker"] = "weak" + weak["worker"]
    both = pd.concat([good, weak], ignore_index=True)
    acc = {m: (aggregate(both, model=m, **FAST).predict().reindex(truth.index) == truth).mean()
           for m in ("majority", "dawid-skene")}
    assert acc["dawid-skene"] >= acc["majority"] + 0.05


def test_same_seed_same_output_and_inference_data():
    df, _ = crowd(3, n_tasks=20, n_workers=3)
    a = aggregate(df, seed=7, **FAST)
    b = aggregate(df, seed=7, **FAST)
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame())
    idata = a.to_inference_data()
    assert idata.posterior["theta"].shape == (2, 80, 3, 3, 3)
    assert idata.log_likelihood["labels"].shape == (2, 80, 20)
    assert "worker_accuracy" in idata.posterior


def test_simplex_ranks_clear_candidates_and_covers_truth():
    df, quality, _ = simulate(0, n_candidates=4, n_judges=3, n_items=25, n_levels=3)
    res = rank(df, **FAST)
    frame = res.to_frame()
    assert list(frame.columns) == ["candidate", "quality_mean", "ci_low", "ci_high", "rank", "p_rank1", "r_hat", "ess"]
    assert frame["p_rank1"].sum() == pytest.approx(1.0)
    f = frame.set_index("candidate").loc[quality.index]
    assert ((f.ci_low <= quality) & (quality <= f.ci_high)).mean() >= 0.75
    assert np.corrcoef(f.quality_mean, quality)[0, 1] > 0.8
    assert res.to_inference_data().posterior["quality"].shape == (2, 80, 4)


def test_simplex_options_run():
    df, quality, _ = simulate(1, n_candidates=3, n_judges=2, n_items=8, n_levels=3)
    res = rank(df, monotone=True, item_effects=True, **FAST)
    assert {"slope", "cutpoints", "self_bias", "item_z"} <= set(res.fit.samples)
    assert res.to_frame()["rank"].tolist() == [1, 2, 3]
    assert np.isfinite(res.quality_draws).all()


def test_bradley_terry_pairwise_and_from_scores():
    rng = np.random.default_rng(0)
    strength = {"a": 1.5, "b": 0.0, "c": -1.5}
    rows = []
    for i in range(120):
        left, right = rng.choice(list(strength), size=2, replace=False)
        p = 1 / (1 + np.exp(-(strength[left] - strength[right])))
        u = rng.random()
        winner = "tie" if u > 0.9 else (left if u < 0.9 * p else right)
        rows.append((i, left, right, "j", winner))
    df = pd.DataFrame(rows, columns=["item", "left", "right", "judge", "winner"])
    frame = rank(df, model="bradley-terry", **FAST).to_frame()
    assert frame["candidate"].tolist() == ["a", "b", "c"]
    assert frame["p_rank1"].iloc[0] > 0.9
    scores, _, _ = simulate(2, n_candidates=3, n_judges=2, n_items=10, n_levels=3)
    assert len(rank(scores, model="bradley-terry", **FAST).to_frame()) == 3


def test_coverage_sanity_over_replications():
    """Over a few prior draws, 90% intervals cover most true qualities (loose: few replications)."""
    hits = []
    for s in range(3):
        df, quality, _ = simulate(10 + s, n_candidates=4, n_judges=3, n_items=20, n_levels=3)
        f = rank(df, seed=s, **FAST).to_frame().set_index("candidate").loc[quality.index]
        hits += list((f.ci_low <= quality) & (quality <= f.ci_high))
    assert 0.7 <= np.mean(hits) <= 1.0


def test_read_table_with_and_without_header(tmp_path):
    with_header = tmp_path / "a.tsv"
    with_header.write_text("task\tworker\tlabel\n1\t1\t2\n1\t2\t10\n")
    without = tmp_path / "b.tsv"
    without.write_text("1\t1\t2\n1\t2\t10\n")
    a = read_table(with_header, ("task", "worker", "label"))
    b = read_table(without, ("task", "worker", "label"))
    pd.testing.assert_frame_equal(a, b)
    assert a["label"].tolist() == [2, 10]


def test_api_errors_are_one_line():
    with pytest.raises(InputError, match="missing column"):
        aggregate(pd.DataFrame({"task": [1], "label": [1]}))
    bad = pd.DataFrame({"item": [1, 1], "candidate": ["a", "b"], "judge": ["j", "j"], "score": ["3", "good"]})
    with pytest.raises(InputError, match="must be numeric"):
        rank(bad)
    one = pd.DataFrame({"item": [1, 2], "candidate": ["a", "a"], "judge": ["j", "j"], "score": [1, 2]})
    with pytest.raises(InputError, match="single candidate"):
        rank(one)
    cat = pd.DataFrame({"task": [1, 2], "worker": pd.Categorical(["w1", "w1"], categories=["w1", "w2"]),
                        "label": [0, 1]})
    with pytest.raises(InputError, match="worker 'w2' has no labels"):
        aggregate(cat, model="majority")


POPULATION = np.array([[0.8, 0.15, 0.05], [0.1, 0.7, 0.2], [0.05, 0.15, 0.8]])


def test_hierarchical_recovers_a_shared_asymmetric_confusion():
    """Workers share a confusion with structured errors (1 is mistaken for 2 more than for 0): recovered per worker."""
    df, _ = confusion_crowd(4, np.stack([POPULATION] * 6), n_tasks=150)
    res = aggregate(df, seed=1, **FAST)
    assert np.abs(res.confusion - POPULATION).max() < 0.12
    assert np.abs(res.confusion.mean(0) - POPULATION).max() < 0.06


def test_hierarchical_pools_a_sparse_worker_towards_the_population():
    """A worker with a handful of labels inherits the crowd's high accuracy; flat Dirichlet rows cannot."""
    good = np.stack([np.full((3, 3), 0.03) + 0.91 * np.eye(3)] * 6)
    df, truth = confusion_crowd(5, good, n_tasks=60)
    sparse = pd.DataFrame({"task": truth.index[:4], "worker": "sparse", "label": truth.to_numpy()[:4]})
    df = pd.concat([df, sparse], ignore_index=True)
    acc = {p: aggregate(df, prior=p, **FAST).workers_frame().set_index("worker").loc["sparse", "accuracy_mean"]
           for p in ("hierarchical", "flat")}
    assert acc["hierarchical"] > 0.8 > acc["flat"]


def test_hierarchical_label_confidence_is_calibrated():
    """Weak workers with their own biases: the posterior confidence of the chosen label matches its accuracy."""
    rng = np.random.default_rng(6)
    confusion = rng.dirichlet(np.ones(3), size=(5, 3)) * 0.5 + 0.5 * POPULATION
    df, truth = confusion_crowd(6, confusion, n_tasks=300, skip=0.3)
    frame = aggregate(df, **FAST).to_frame().set_index("task").loc[truth.index]
    correct = (frame["label"] == truth).mean()
    assert 0.6 < correct < 0.97  # hard enough that confidence is informative
    assert abs(frame["prob"].mean() - correct) < 0.06


def test_svi_returns_derived_confusions():
    """SVI draws include deterministic sites (the confusion built from accuracies or random effects)."""
    df, truth = crowd(7, n_tasks=40, n_workers=4)
    res = aggregate(df, model="one-coin", svi=True, svi_steps=400, num_samples=50)
    assert res.fit.samples["theta"].shape == (50, 4, 3, 3)
    assert (res.predict().reindex(truth.index) == truth).mean() > 0.9



def test_pointwise_log_likelihood_is_each_tasks_marginal_and_feeds_loo():
    """The log_likelihood group holds log p(labels of task t | draw), checked by summing over the true class
    by hand; az.loo / az.compare then rank Dawid-Skene against one-coin on a crowd with a confused worker."""
    import arviz as az

    confusion = np.stack([np.eye(3) * 0.8 + 0.2 / 3, np.eye(3) * 0.8 + 0.2 / 3, np.eye(3)[[1, 2, 0]] * 0.9 + 0.1 / 3])
    df, _ = confusion_crowd(4, confusion, n_tasks=40)
    lab = encode_labels(df)
    ds = aggregate(df, model="dawid-skene", **FAST)
    pointwise = ds.fit.log_likelihood["labels"]
    assert pointwise.shape == (160, lab.n_tasks)
    pi, theta = ds.fit.samples["pi"][7], ds.fit.samples["theta"][7]
    for t in (0, 13, 39):
        rows = lab.task == t
        marginal = sum(pi[k] * np.prod(theta[lab.worker[rows], k, lab.label[rows]]) for k in range(3))
        assert pointwise[7, t] == pytest.approx(np.log(marginal), rel=1e-4)
    one_coin = aggregate(df, model="one-coin", **FAST)
    table = az.compare({"dawid-skene": ds.to_inference_data(), "one-coin": one_coin.to_inference_data()})
    assert table.index[0] == "dawid-skene"  # the rotated worker is a confusion one-coin cannot express
    summary = az.summary(ds.to_inference_data(), var_names=["worker_accuracy"])
    assert np.isfinite(summary["r_hat"]).all() and (summary["ess_bulk"] > 20).all()


def test_unmixed_chains_warn():
    from ppl.judges.infer import ConvergenceWarning

    df, _ = crowd(5, n_tasks=30, n_workers=4)
    with pytest.warns(ConvergenceWarning, match="R-hat"):
        aggregate(df, model="dawid-skene", num_samples=8, num_warmup=3, num_chains=2)
