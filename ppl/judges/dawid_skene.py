"""Label aggregation: Bayesian Dawid-Skene (full confusion or one-coin) and majority vote.

Each task has a latent true class z ~ Categorical(pi); worker w reports label l
with probability theta[w, z, l]. The true class is summed out exactly: per task,
logsumexp_k [log pi_k + sum over the task's rows of log theta[w, k, l]], the
sum done with `segment_sum` over label rows (no loop over tasks).

Priors on the confusion matrices, all saying "workers are better than chance"
(which also keeps the sampler out of the label-switched mode):
* hierarchical (the default; after Paun et al. 2018, "Comparing Bayesian
  models of annotation"): each worker's confusion logits are a population
  confusion plus the worker's skill, label bias and class-specific quirks,
  each effect with a learned scale. A worker with few labels borrows the
  population's confusion instead of a fixed prior, and a skill shared by all
  classes lets a worker's record on one class inform the others. With flat
  rows, crowds with biased workers (Web) drift to a "junk class" solution.
* flat: independent diagonal-favouring Dirichlet rows per worker.
* one-coin: one accuracy per worker, errors uniform over the other classes.
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

PRIORS = ("hierarchical", "flat", "one-coin")


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


def hierarchical_log_theta(n_workers: int, n_classes: int) -> jnp.ndarray:
    """Worker confusions pooled towards a population confusion; returns log theta, shape (W, K, K).

    logits[w, k, l] = population[k, l] + skill[w] 1(k = l) + bias[w, l] + quirk[w, k, l].
    The population confusion has the right report commonest for every true
    class (`population_logits`). skill: how much better than the population a
    worker is on every class at once; bias: a worker's taste for some labels
    whatever the truth; quirk: the rest of a full confusion matrix (only for
    K > 2: with two classes skill and bias already span every confusion).
    Each effect has a learned scale, so the data decide how far workers may
    stray from the population; non-centred, so NUTS sees no funnel for workers
    with few labels.
    """
    K = n_classes
    off = numpyro.sample("off", dist.Normal(0.0, 1.0).expand([K, K - 1]).to_event(2))
    gap = numpyro.sample("gap", dist.Gamma(2.0, 1.0).expand([K]).to_event(1))
    logits = (population_logits(off, gap) + _worker_effect("skill", (n_workers, 1, 1)) * jnp.eye(K)
              + _worker_effect("bias", (n_workers, 1, K)))
    if K > 2:
        logits = logits + _worker_effect("quirk", (n_workers, K, K))
    return jax.nn.log_softmax(logits, axis=-1)


def _worker_effect(name: str, shape: tuple[int, ...]) -> jnp.ndarray:
    """A random effect `name_sd * name` with `name ~ N(0, 1)` and a learned scale `name_sd ~ HalfNormal(1)`."""
    scale = numpyro.sample(f"{name}_sd", dist.HalfNormal(1.0))
    return scale * numpyro.sample(name, dist.Normal(0.0, 1.0).expand(list(shape)).to_event(len(shape)))


def population_logits(off: jnp.ndarray, gap: jnp.ndarray) -> jnp.ndarray:
    """(K, K) logits with off-diagonal `off` (K, K-1) and diagonal = largest off-diagonal + `gap` (> 0)."""
    K = gap.shape[0]
    rows, cols = np.nonzero(1 - np.eye(K))
    beta = jnp.zeros((K, K)).at[rows, cols].set(off.ravel())
    return beta.at[np.arange(K), np.arange(K)].set(off.max(-1) + gap)


def dawid_skene_model(task, worker, label, n_tasks: int, n_workers: int, n_classes: int,
                      prior: str = "hierarchical", prior_diag: float = 3.0, prior_off: float = 1.0) -> None:
    """NumPyro model of crowd labels with the true class of each task marginalised.

    prior: "hierarchical", "flat" (Dirichlet rows with `prior_diag`/`prior_off`) or "one-coin".
    """
    pi = numpyro.sample("pi", dist.Dirichlet(jnp.ones(n_classes)))
    if prior == "hierarchical":
        log_theta = hierarchical_log_theta(n_workers, n_classes)
    elif prior == "one-coin":
        # Same marginal prior on the diagonal as a Dirichlet row of the full model.
        acc = numpyro.sample("accuracy", dist.Beta(prior_diag, prior_off * (n_classes - 1)).expand([n_workers]))
        log_theta = one_coin_log_theta(acc, n_classes)
    else:
        conc = prior_concentration(n_classes, prior_diag, prior_off)
        log_theta = jnp.log(numpyro.sample("theta", dist.Dirichlet(conc).expand([n_workers, n_classes]).to_event(2)))
    if prior != "flat":
        numpyro.deterministic("theta", jnp.exp(log_theta))
    joint = task_log_joint(jnp.log(pi), log_theta, task, worker, label, n_tasks)
    numpyro.factor("labels", logsumexp(joint, axis=-1))  # one term per task: pointwise log-likelihood


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
        """`worker, accuracy_mean, ci_low, ci_high, n_labels, r_hat, ess`: reliability with a credible
        interval and the sampler's diagnostics of it (NaN without NUTS)."""
        lo, hi = interval(self.accuracy_draws, mass)
        counts = np.bincount(self.labels.worker, minlength=self.labels.n_workers)
        rhat, ess = (self.fit or Fit({}, "none")).diagnostics(self.accuracy_draws)
        return pd.DataFrame({"worker": self.labels.workers, "accuracy_mean": self.accuracy_draws.mean(0),
                             "ci_low": lo, "ci_high": hi, "n_labels": counts, "r_hat": rhat, "ess": ess})

    def to_inference_data(self):
        """ArviZ InferenceData of the model's parameters and the derived worker accuracies."""
        if self.fit is None:
            raise PPLError("majority vote has no posterior to export; use model='dawid-skene' or 'one-coin'")
        lab = self.labels
        post = dict(self.fit.samples)
        post["worker_accuracy"] = self.accuracy_draws
        coords = {"worker": np.asarray(lab.workers.astype(str)), "true_class": np.asarray(lab.classes.astype(str)),
                  "reported": np.asarray(lab.classes.astype(str))}
        coords["task"] = np.asarray(lab.tasks.astype(str))
        dims = {"pi": ["true_class"], "theta": ["worker", "true_class", "reported"], "accuracy": ["worker"],
                "worker_accuracy": ["worker"], "gap": ["true_class"], "labels": ["task"]}
        return to_inference_data(self.fit, post, coords, dims)


def fit_dawid_skene(labels: Labels, *, prior: str = "hierarchical", prior_diag: float = 3.0,
                    prior_off: float = 1.0, seed: int = 0, num_samples: int = 500, num_warmup: int = 500,
                    num_chains: int = 4, svi: bool = False, svi_steps: int = 3000,
                    progress_bar: bool = False) -> AggregateResult:
    """Posterior of Dawid-Skene under `prior` ("hierarchical", "flat" or "one-coin") by NUTS, or SVI when `svi`."""
    if prior not in PRIORS:
        raise PPLError(f"unknown Dawid-Skene prior {prior!r}; choose one of {', '.join(PRIORS)}")
    K, W = labels.n_classes, labels.n_workers
    data = (jnp.asarray(labels.task), jnp.asarray(labels.worker), jnp.asarray(labels.label))
    model = partial(dawid_skene_model, *data, labels.n_tasks, W, K, prior, prior_diag, prior_off)
    pi0, theta0 = em_start(labels, np.asarray(prior_concentration(K, prior_diag, prior_off)))
    f = fit(model, seed=seed, num_samples=num_samples, num_warmup=num_warmup, num_chains=num_chains, svi=svi,
            svi_steps=svi_steps, progress_bar=progress_bar,
            init_values={"pi": jnp.asarray(pi0)} | start_values(prior, pi0, theta0))
    theta = f.samples["theta"]
    probs = np.asarray(_mean_task_posterior(jnp.log(f.samples["pi"]), jnp.log(theta), *data, labels.n_tasks))
    diag = np.diagonal(theta, axis1=-2, axis2=-1)  # (S, W, K)
    acc = np.einsum("sk,swk->sw", f.samples["pi"], diag)
    return AggregateResult("one-coin" if prior == "one-coin" else "dawid-skene", labels, probs, acc,
                           theta.mean(0), f)


def start_values(prior: str, pi0: np.ndarray, theta0: np.ndarray) -> dict[str, jnp.ndarray]:
    """The EM estimate `theta0` written in the parameters of `prior`: where the sampler starts."""
    if prior == "one-coin":
        return {"accuracy": jnp.asarray(np.clip(np.einsum("k,wk->w", pi0, np.diagonal(theta0, 0, 1, 2)), 0.05, 0.99))}
    if prior == "flat":
        return {"theta": jnp.asarray(theta0)}
    K, W = pi0.shape[0], theta0.shape[0]
    logits = np.log(theta0).mean(0)
    off = logits[np.nonzero(1 - np.eye(K))].reshape(K, K - 1)
    start = {"off": off, "gap": np.maximum(np.diagonal(logits) - off.max(-1), 0.2)}
    shapes = {"skill": (W, 1, 1), "bias": (W, 1, K)} | ({"quirk": (W, K, K)} if K > 2 else {})
    for name, shape in shapes.items():
        start |= {name: np.zeros(shape), f"{name}_sd": np.asarray(0.5)}
    return {k: jnp.asarray(v) for k, v in start.items()}


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
