"""Label aggregation: Bayesian Dawid-Skene (full confusion or one-coin) and majority vote.

Each task has a latent true class z ~ Categorical(pi); worker w reports label l
with probability theta[w, z, l]. The true class is summed out exactly: per task,
logsumexp_k [log pi_k + sum over the task's rows of log theta[w, k, l]], the
sum done with `segment_sum` over label rows (no loop over tasks). Dirichlet
priors that favour the diagonal say "workers are better than chance" and keep
the sampler out of the label-switched mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
from jax.scipy.special import logsumexp

from ppl.errors import PPLError
from ppl.judges.data import Labels
from ppl.judges.infer import Fit, fit, interval, to_inference_data

MODELS = ("dawid-skene", "one-coin", "majority")


def prior_concentration(n_classes: int, diag: float, off: float) -> jnp.ndarray:
    """Dirichlet concentration of each confusion row: `diag` on the true class, `off` elsewhere."""
    return off + (diag - off) * jnp.eye(n_classes)


def task_log_joint(log_pi: jnp.ndarray, log_theta: jnp.ndarray, task: jnp.ndarray, worker: jnp.ndarray,
                   label: jnp.ndarray, n_tasks: int) -> jnp.ndarray:
    """log p(z_t = k, labels of task t) for every task and class, shape (n_tasks, K)."""
    rows = log_theta[worker, :, label]  # (N, K): log P(reported label | true class k)
    return log_pi + jax.ops.segment_sum(rows, task, num_segments=n_tasks)


def one_coin_log_theta(accuracy: jnp.ndarray, n_classes: int) -> jnp.ndarray:
    """Confusion of one-coin workers: correct with `accuracy`, otherwise uniform over the other classes."""
    eye = jnp.eye(n_classes)
    acc = accuracy[:, None, None]
    return jnp.log(acc * eye + (1.0 - acc) / (n_classes - 1) * (1.0 - eye))


def dawid_skene_model(task, worker, label, n_tasks: int, n_workers: int, n_classes: int,
                      one_coin: bool = False, prior_diag: float = 3.0, prior_off: float = 1.0) -> None:
    """NumPyro model of crowd labels with the true class of each task marginalised."""
    pi = numpyro.sample("pi", dist.Dirichlet(jnp.ones(n_classes)))
    if one_coin:
        # Same marginal prior on the diagonal as a Dirichlet row of the full model.
        acc = numpyro.sample("accuracy", dist.Beta(prior_diag, prior_off * (n_classes - 1)).expand([n_workers]))
        log_theta = one_coin_log_theta(acc, n_classes)
    else:
        conc = prior_concentration(n_classes, prior_diag, prior_off)
        theta = numpyro.sample("theta", dist.Dirichlet(conc).expand([n_workers, n_classes]).to_event(2))
        log_theta = jnp.log(theta)
    joint = task_log_joint(jnp.log(pi), log_theta, task, worker, label, n_tasks)
    numpyro.factor("labels", logsumexp(joint, axis=-1).sum())


def _log_theta_from(samples: dict, n_classes: int) -> jnp.ndarray:
    if "theta" in samples:
        return jnp.log(samples["theta"])
    return jax.vmap(lambda a: one_coin_log_theta(a, n_classes))(samples["accuracy"])


@partial(jax.jit, static_argnames=("n_tasks",))
def _mean_task_posterior(log_pi, log_theta, task, worker, label, n_tasks):
    def one(args):
        lp, lt = args
        j = task_log_joint(lp, lt, task, worker, label, n_tasks)
        return jax.nn.softmax(j, axis=-1)

    post = jax.lax.map(one, (log_pi, log_theta), batch_size=50)
    return post.mean(axis=0)


@dataclass
class AggregateResult:
    """Posterior of each task's true label and each worker's reliability."""

    model: str
    labels: Labels
    probs: np.ndarray  # (tasks, classes): posterior of the true label
    accuracy_draws: np.ndarray  # (draws, workers): P(worker correct) under the class prior
    confusion: np.ndarray | None  # (workers, classes, classes): posterior mean confusion
    fit: Fit | None = None

    def to_frame(self, all_labels: bool = False) -> pd.DataFrame:
        """`task, label, prob`: the posterior-mode label of each task and its probability.

        With `all_labels`, one row per task and class (the full posterior).
        """
        lab = self.labels
        if all_labels:
            t, k = np.meshgrid(np.arange(lab.n_tasks), np.arange(lab.n_classes), indexing="ij")
            return pd.DataFrame({"task": lab.tasks[t.ravel()], "label": lab.classes[k.ravel()],
                                 "prob": self.probs.ravel()})
        best = self.probs.argmax(axis=1)
        return pd.DataFrame({"task": lab.tasks, "label": lab.classes[best],
                             "prob": self.probs[np.arange(lab.n_tasks), best]})

    def predict(self) -> pd.Series:
        """Posterior-mode label per task, indexed by task (crowd-kit's `fit_predict` shape)."""
        f = self.to_frame()
        return pd.Series(f["label"].to_numpy(), index=pd.Index(f["task"], name="task"), name="agg_label")

    def workers_frame(self, mass: float = 0.9) -> pd.DataFrame:
        """`worker, accuracy_mean, ci_low, ci_high, n_labels`: reliability with a credible interval."""
        lo, hi = interval(self.accuracy_draws, mass)
        counts = np.bincount(self.labels.worker, minlength=self.labels.n_workers)
        return pd.DataFrame({"worker": self.labels.workers, "accuracy_mean": self.accuracy_draws.mean(0),
                             "ci_low": lo, "ci_high": hi, "n_labels": counts})

    def to_inference_data(self):
        """ArviZ InferenceData of the model's parameters and the derived worker accuracies."""
        if self.fit is None:
            raise PPLError("majority vote has no posterior to export; use model='dawid-skene' or 'one-coin'")
        lab = self.labels
        post = dict(self.fit.samples)
        post["worker_accuracy"] = self.accuracy_draws
        coords = {"worker": np.asarray(lab.workers.astype(str)), "true_class": np.asarray(lab.classes.astype(str)),
                  "reported": np.asarray(lab.classes.astype(str))}
        dims = {"pi": ["true_class"], "theta": ["worker", "true_class", "reported"], "accuracy": ["worker"],
                "worker_accuracy": ["worker"]}
        return to_inference_data(self.fit, post, coords, dims)


def fit_dawid_skene(labels: Labels, *, one_coin: bool = False, prior_diag: float = 3.0, prior_off: float = 1.0,
                    seed: int = 0, num_samples: int = 500, num_warmup: int = 500, svi: bool = False,
                    svi_steps: int = 3000) -> AggregateResult:
    """Posterior of Dawid-Skene (or one-coin) by NUTS, or SVI when `svi`."""
    K, W = labels.n_classes, labels.n_workers
    data = (jnp.asarray(labels.task), jnp.asarray(labels.worker), jnp.asarray(labels.label))
    model = partial(dawid_skene_model, *data, labels.n_tasks, W, K, one_coin, prior_diag, prior_off)
    conc = np.asarray(prior_concentration(K, prior_diag, prior_off))
    pi0, theta0 = em_start(labels, conc)
    init = {"pi": jnp.asarray(pi0)}
    if one_coin:
        init["accuracy"] = jnp.asarray(np.clip(np.einsum("k,wk->w", pi0, np.diagonal(theta0, 0, 1, 2)), 0.05, 0.99))
    else:
        init["theta"] = jnp.asarray(theta0)
    f = fit(model, seed=seed, num_samples=num_samples, num_warmup=num_warmup, svi=svi, svi_steps=svi_steps,
            init_values=init)
    log_pi = jnp.log(f.samples["pi"])
    log_theta = _log_theta_from(f.samples, K)
    probs = np.asarray(_mean_task_posterior(log_pi, log_theta, *data, labels.n_tasks))
    theta = np.exp(np.asarray(log_theta))
    diag = np.diagonal(theta, axis1=-2, axis2=-1)  # (S, W, K)
    acc = np.einsum("sk,swk->sw", f.samples["pi"], diag)
    return AggregateResult("one-coin" if one_coin else "dawid-skene", labels, probs, acc, theta.mean(0), f)


def em_start(labels: Labels, conc: np.ndarray, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """A few EM steps (M-step = posterior mean under the Dirichlet prior) from the vote shares.

    Only a starting point for NUTS/SVI: it lands near the posterior mode, which
    shortens warmup a lot on data sets with many workers.
    """
    K, W = labels.n_classes, labels.n_workers
    post = majority_vote(labels).probs
    for _ in range(iters):
        counts = np.zeros((W, K, K))
        np.add.at(counts, (labels.worker, slice(None), labels.label), post[labels.task])
        theta = counts + conc
        theta /= theta.sum(-1, keepdims=True)
        pi = (post.sum(0) + 1.0) / (post.sum() + K)
        joint = np.log(pi) + np.zeros((labels.n_tasks, K))
        np.add.at(joint, labels.task, np.log(theta[labels.worker, :, labels.label]))
        post = np.exp(joint - joint.max(1, keepdims=True))
        post /= post.sum(1, keepdims=True)
    return pi, theta


def majority_vote(labels: Labels) -> AggregateResult:
    """Majority vote: the vote share as `prob` (ties go to the first class); workers' agreement with it.

    Worker reliability is agreement with the majority label, with a Beta(1, 1)
    posterior interval; a baseline, not a model of the workers.
    """
    counts = np.zeros((labels.n_tasks, labels.n_classes))
    np.add.at(counts, (labels.task, labels.label), 1.0)
    probs = counts / counts.sum(1, keepdims=True)
    agree = (probs.argmax(1)[labels.task] == labels.label).astype(float)
    n = np.bincount(labels.worker, minlength=labels.n_workers)
    k = np.bincount(labels.worker, weights=agree, minlength=labels.n_workers)
    draws = np.random.default_rng(0).beta(1 + k, 1 + n - k, size=(1000, labels.n_workers))
    return AggregateResult("majority", labels, probs, draws, None, None)
