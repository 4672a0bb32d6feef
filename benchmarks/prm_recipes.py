"""How much training would a learned PRM need to rank the LM's own arithmetic traces? AUC against compute.

For `pf` to beat voting, the PRM must rank a problem's correct traces above its wrong ones (within-problem
AUC; `prm_ranking.py`). Each recipe here fine-tunes a PRM from the shipped LM on arithmetic data for
`--steps` steps and, every `--every` steps, scores the LM's own samples of dev problems (seed 2000,
`--samples` each, drawn once) by the sum of their steps' log P(good), writing the curve as it goes, with
the accuracy of the answer of most PRM weight (weighted majority) and of the best-scored trace (weighted
best-of-N) next to plain majority voting on the same samples:

  classify     binary cross-entropy at the step tags (the shipped recipe's loss), classes balanced
  prefix       + every token of a step labelled: is the trace so far the start of a correct trace?
               (dense labels: the check of each written digit, not only of the finished line)
  generative   prefix + the LM's next-token loss on correct traces (its arithmetic keeps training)
  stream       classify on fresh corrupted traces only, a new problem each (`ppl.train.corrupted_batches`):
               many more slips and right steps than the fixed set, never one twice
  mix          classify's batch and as many streamed traces beside it: the shipped PRM's recipe (arithmetic
               only here; the shipped one also holds Countdown samples), its curve against compute

`--init DIR` continues a trained PRM instead of starting from the LM (e.g. `--recipes mix --init
models/shipped/prm --lr 2e-4`: a longer low-learning-rate tail); its curve is drawn after the minutes that
PRM's model card says its training took.

Data: the shipped LM's temperature-1 samples (`--problems` x 8, labelled by the oracle) and as many
corrupted traces (`Training.corrupted`), arithmetic only. References, untrained: the shipped PRM, the
LM's own likelihood of its steps as a score, and simulated PRMs (the exact step labels blurred by Gaussian
noise, at several separations): what within-problem AUC weighting needs to beat voting by 0.05. And what the
LM's wrong samples get wrong first (a product, a sum, ... or the operands).

    python benchmarks/prm_recipes.py [--recipes classify,prefix,generative,stream,mix] [--steps 1500] [--every 500]
                                     [--out benchmarks/results/prm_recipes.json] [--curves EARLIER.json]
                                     [--init PRM_DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from matplotlib.figure import Figure
from report import write_json

from inference.answers import answer_posterior
from models.loading import load
from ppl import train as recipe
from ppl.tasks import TASKS, arithmetic
from ppl.tasks.countdown import parse_step

DEV_SEED = 2000
DATA_SEED = 7
RECIPES = ("classify", "prefix", "generative", "stream", "mix")
PREFIX_WEIGHT = 0.5  # a step token's label weighs this much against a step tag's
NOISE_SEED = 3
SEPARATIONS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)  # of the simulated PRM's good and bad step logits, in noise sds


def correct_lines(drawn: recipe.Drawn, lines: list[str]) -> list[str]:
    """The lines that would be right after `lines` (each solution's next line, with the operands of + and *
    either way round), as the oracle judges them."""
    candidates = set()
    for solution in drawn.task.training.solutions(drawn.problem):
        if len(solution) > len(lines):
            line = solution[len(lines)]
            candidates.add(line)
            left, _, value = line.partition("=")
            for op in "+*":
                a, found, b = left.partition(op)
                if found:
                    candidates.add(f"{b}{op}{a}={value}")
    return [c for c in candidates if drawn.labels([*lines, c])[-1] == 1]


def first_error(drawn: recipe.Drawn, lines: list[str]) -> str | None:
    """What a trace's first wrong line gets wrong: the result of an operation ("result *"), its operands, or
    the answer line / a line past it; None when every line is right."""
    labels = drawn.labels(lines)
    if all(labels):
        return None
    i = labels.index(0)
    expected = arithmetic.solution_steps(drawn.problem)
    if i >= len(expected):
        return "answer or extra line"
    step, right = parse_step(lines[i]), parse_step(expected[i])
    if step is None:
        return "malformed"
    same = step.op == right.op and ((step.a, step.b) == (right.a, right.b) or
                                    (step.op in "+*" and (step.b, step.a) == (right.a, right.b)))
    return f"result {right.op}" if same else "operands"


def arrays(tok: Any, items: list[tuple[recipe.Drawn, list[list[int]]]], prefix: bool) -> tuple[np.ndarray, ...]:
    """(ids, mask, weights, labels, tags) [N, PRM_LEN]: step tags weigh their class's balanced weight; with
    `prefix`, every other step token weighs PREFIX_WEIGHT with label "the trace so far starts a correct one"."""
    n = len(items)
    ids = np.full((n, recipe.PRM_LEN), tok.pad_token_id, np.int32)
    weights, labels, tags = (np.zeros((n, recipe.PRM_LEN), np.float32) for _ in range(3))
    for row, (drawn, steps) in enumerate(items):
        seq = [tok.bos_token_id] + tok.encode(drawn.prompt)
        lines: list[str] = []
        on_track = True
        for step in steps:
            if len(seq) + len(step) > recipe.PRM_LEN:
                break
            right = [f"{c}\n" for c in correct_lines(drawn, lines)] if on_track else []
            for j in range(len(step)):
                written = tok.decode(step[: j + 1])
                labels[row, len(seq) + j] = any(c.startswith(written) for c in right)
                weights[row, len(seq) + j] = PREFIX_WEIGHT if prefix else 0.0
            seq += step
            tags[row, len(seq) - 1] = 1.0
            lines.append(tok.decode(step).rstrip("\n"))
            on_track = on_track and bool(labels[row, len(seq) - 1])
        ids[row, : len(seq)] = seq
    at = tags > 0
    good = labels[at].mean()
    weights[at] = np.where(labels[at] > 0, 0.5 / good, 0.5 / (1 - good))
    return ids, ids != tok.pad_token_id, weights, labels, tags


def batches(data: tuple[np.ndarray, ...], rng: np.random.Generator, size: int, lm_data: Any = None):
    """`ppl.train`'s shuffled epochs of the PRM arrays, each batch with an LM batch of correct traces if `lm_data`."""
    for prm in recipe.prm_batches(data[:4], rng, size):
        yield (*prm, *(next(lm_data) if lm_data is not None else ()))


def within_problem_auc(scores: np.ndarray, correct: np.ndarray) -> tuple[float, int]:
    """Mean ROC AUC of correct vs wrong traces over the problems [P, S] that have both; and their number."""
    mixed = [i for i in range(len(correct)) if correct[i].any() and not correct[i].all()]
    return float(np.mean([recipe.roc_auc(scores[i], correct[i]) for i in mixed])), len(mixed)


class Dev:
    """The LM's samples of the dev problems, and the figures of a scorer on them."""

    def __init__(self, tok: Any, sampler: Any, lm_params: Any, problems: int, samples: int):
        drawn = recipe.draw(TASKS["arithmetic"], DEV_SEED, problems)
        pool = [p for p in drawn for _ in range(samples)]
        traces = recipe.sample_traces(sampler, lm_params, tok, jax.random.key(DEV_SEED), pool)
        texts = [[tok.decode(s).rstrip("\n") for s in t] for t in traces]
        self.correct = np.array([p.task.correct(p.problem, t) for p, t in zip(pool, texts, strict=True)])
        self.correct = self.correct.reshape(problems, samples)
        self.answers = [p.task.answer(p.problem, t) for p, t in zip(pool, texts, strict=True)]
        errors = [first_error(p, t) for p, t in zip(pool, texts, strict=True)]
        self.first_errors = {kind: errors.count(kind) for kind in sorted(set(errors) - {None})}
        self.truth = [p.task.answer(p.problem, p.task.training.solutions(p.problem)[0]) for p in drawn]
        self.ids, self.mask, _, self.labels, self.tags = arrays(tok, list(zip(pool, traces, strict=True)), False)
        self.shape = (problems, samples)
        prompt = np.array([1 + len(tok.encode(p.prompt)) for p in pool])
        last = self.ids.shape[1] - 1 - np.argmax(self.tags[:, ::-1] > 0, axis=1)
        position = np.arange(self.ids.shape[1])
        self.steps = (position >= prompt[:, None]) & (position <= last[:, None]) & self.tags.any(1)[:, None]

    def scores(self, per_token: Any) -> np.ndarray:
        """A scorer's per-token scores [B, L] of the samples."""
        return np.concatenate([np.asarray(per_token(self.ids[s : s + 256], self.mask[s : s + 256]))
                               for s in range(0, len(self.ids), 256)])

    def noisy_oracle(self, separation: float, rng: np.random.Generator) -> np.ndarray:
        """Per-token scores of a simulated PRM: log sigmoid(z) at each step tag, z ~ N(+-separation, 1) for a
        good / bad step (its oracle label): how well a PRM must rank for weighting to pay."""
        z = separation * (2 * self.labels - 1) + rng.standard_normal(self.labels.shape)
        return np.where(self.tags > 0, -np.logaddexp(0.0, -z), 0.0)

    def figures(self, scores: np.ndarray, every_token: bool = False) -> dict:
        """Within-problem AUC of trace scores: per-token scores [B, L] summed at the step tags (or, with
        `every_token`, over every step token); the step AUC of the scores at the tags; and the accuracy
        of the answer with most weight exp(trace score) and of the best-scored trace."""
        at = self.tags > 0
        summed = self.steps if every_token else at
        trace_scores = (scores * summed).sum(1).reshape(self.shape)
        within, mixed = within_problem_auc(trace_scores, self.correct)
        return {"within_problem_auc": within, "mixed_problems": mixed,
                "step_auc": None if every_token else recipe.roc_auc(scores[at], self.labels[at]),
                "weighted_vote": self.vote(np.exp(trace_scores - trace_scores.max(1, keepdims=True))),
                "best": float(self.correct[np.arange(len(trace_scores)), trace_scores.argmax(1)].mean())}

    def vote(self, weights: np.ndarray) -> float:
        """Accuracy of the answer with the most weight among each problem's samples (weights [P, S])."""
        samples = self.shape[1]
        return float(np.mean([
            answer_posterior(self.answers[i * samples : (i + 1) * samples], row).best == self.truth[i]
            for i, row in enumerate(weights)
        ]))


def prm_scorer(model: Any, good: int, bad: int) -> Any:
    """Per-token log P(good) of a token PRM (read at the step tags)."""
    return jax.jit(lambda ids, mask: jax.nn.log_sigmoid(recipe.prm_logits(model, ids, mask, good, bad)))


def lm_scorer(lm: Any) -> Any:
    """Per-token log-probability of each token under the LM (0 at the first); summed over a trace's
    steps, the trace's likelihood: the LM's own confidence as a score."""

    @jax.jit
    def per_token(ids, mask):
        logp = jax.nn.log_softmax(lm(ids, mask)[:, :-1])
        return jnp.pad(jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0], ((0, 0), (1, 0)))

    return per_token


def train_curve(prm: Any, batches: Any, dev: Dev, args: argparse.Namespace, tags: tuple[int, int], name: str,
                save: Any, rows: int) -> None:
    """Train `prm` on `batches` (PRM arrays of `rows` rows, then an LM batch or nothing) and `save` the curve
    of its dev figures every `args.every` steps; training minutes exclude the measuring."""
    good, bad = tags
    curve, began, measuring = [], time.perf_counter(), 0.0

    def loss_fn(model, ids, mask, weights, labels, *lm_batch):
        logit = recipe.prm_logits(model, ids, mask, good, bad)
        loss = jnp.sum(optax.sigmoid_binary_cross_entropy(logit, labels) * weights) / jnp.sum(weights)
        return loss + (recipe.lm_loss(model, *lm_batch) if lm_batch else 0.0)

    def measure(step: int, model: Any) -> None:
        nonlocal measuring
        if step % args.every == 0:
            t = time.perf_counter()
            minutes = (t - began - measuring) / 60
            curve.append({"steps": step, "batch": rows, "train_minutes": minutes,
                          **dev.figures(dev.scores(prm_scorer(model, good, bad)))})
            measuring += time.perf_counter() - t
            save(curve)

    recipe.train(prm, loss_fn, batches, args.steps, args.lr, args.every, name, on_log=measure)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--problems", type=int, default=1500, help="training problems, 8 LM samples each")
    parser.add_argument("--dev-problems", type=int, default=200)
    parser.add_argument("--samples", type=int, default=16, help="LM samples per dev problem")
    parser.add_argument("--out", default="benchmarks/results/prm_recipes.json")
    parser.add_argument("--init", default=None, help="a trained PRM directory to continue (default: start from "
                        "the shipped LM)")
    parser.add_argument("--curves", default=None, help="an earlier run's JSON: draw its recipe curves with this "
                        "run's references (use with --recipes '')")
    args = parser.parse_args(argv)
    recipes = [name for name in args.recipes.split(",") if name]
    if set(recipes) - set(RECIPES):
        parser.error(f"--recipes: choose from {', '.join(RECIPES)}")
    began = time.perf_counter()
    tok = recipe.build_tokenizer()
    lm, _ = load("models/shipped/lm")
    graphdef, lm_params = nnx.split(lm)
    sampler = recipe.make_sampler(graphdef, tok, 1.0)
    good, bad = tok.convert_tokens_to_ids(["+", "-"])
    dev = Dev(tok, sampler, lm_params, args.dev_problems, args.samples)
    result = {"benchmark": "prm_recipes", "task": "arithmetic", "dev_seed": DEV_SEED, "steps": args.steps,
              "batch": args.batch, "lr": args.lr, "training_problems": args.problems, "references": {},
              "recipes": {}, "jax": jax.__version__}
    shipped, _ = load("models/shipped/prm")
    result["references"]["shipped PRM"] = dev.figures(dev.scores(prm_scorer(shipped, good, bad)))
    result["references"]["LM likelihood"] = dev.figures(dev.scores(lm_scorer(lm)), every_token=True)
    result["majority"] = dev.vote(np.ones(dev.shape))
    result["wrong_samples_by_first_error"] = dev.first_errors
    noise = np.random.default_rng(NOISE_SEED)
    result["noisy_oracle"] = [{"separation": d, **dev.figures(dev.noisy_oracle(d, noise))} for d in SEPARATIONS]
    print(f"majority {result['majority']:.3f}; references: {result['references']}", flush=True)
    if args.curves:
        result["curves_from"] = args.curves
        result["recipes"] = json.loads(Path(args.curves).read_text())["recipes"]
    if not recipes:
        write_json(args.out, result)
        figure(result).savefig(args.out.replace(".json", ".png"), dpi=120)
        return result
    rng = np.random.default_rng(DATA_SEED)
    task = TASKS["arithmetic"]
    pool = [p for p in recipe.draw(task, rng, args.problems) for _ in range(8)]
    items = list(zip(pool, recipe.sample_traces(sampler, lm_params, tok, jax.random.key(DATA_SEED), pool),
                     strict=True))
    items += [(p, recipe.text_steps(tok, task.training.corrupted(p.problem, rng)))
              for p in recipe.draw(task, rng, len(pool))]
    items = [(p, steps) for p, steps in items if steps]
    print(f"data: {len(items)} traces ({time.perf_counter() - began:.0f}s)", flush=True)

    def streamed() -> Any:
        sample = [recipe.scored(tok, p, recipe.text_steps(tok, task.training.corrupted(p.problem, rng)), "stream")
                  for p in recipe.draw(task, rng, 2000)]  # its classes' weights
        return recipe.corrupted_batches(tok, rng, args.batch, 0.0, recipe.class_weights(sample))

    start = 0.0
    if args.init:  # a continuation: its curve starts where the init PRM's training ended
        card = Path(args.init) / "README.md"
        found = re.search(r"training wall time\*\*: ([0-9.]+) min", card.read_text() if card.exists() else "")
        if found is None:
            parser.error(f"--init {args.init}: no model card with its training wall time (a PRM from ppl.train)")
        start = float(found.group(1))
    for name in recipes:
        label = f"{name} from {args.init}" if args.init else name

        def save(curve: list[dict], label: str = label) -> None:
            for point in curve:
                point.setdefault("start_minutes", start)
                point.setdefault("lr", args.lr)
            result["recipes"][label] = curve
            write_json(args.out, result)
            print(f"{label} {curve[-1]}", flush=True)

        if name == "stream":
            data_batches = streamed()
        else:
            data = arrays(tok, items, prefix=name not in ("classify", "mix"))
            lm_data = recipe.lm_batches(tok, rng, args.batch, countdown_share=0.0) if name == "generative" else None
            data_batches = batches(data, rng, args.batch, lm_data)
            if name == "mix":
                data_batches = recipe.joined(data_batches, streamed())
        prm = load(args.init)[0] if args.init else nnx.merge(graphdef, jax.tree.map(jnp.copy, lm_params))
        rows = 2 * args.batch if name == "mix" else args.batch
        train_curve(prm, data_batches, dev, args, (good, bad), name, save, rows)
    result["total_s"] = time.perf_counter() - began
    print(write_json(args.out, result))
    figure(result).savefig(args.out.replace(".json", ".png"), dpi=120)
    return result


def figure(result: dict) -> Figure:
    """Left: within-problem AUC against training minutes per recipe. Right: what a ranking buys, weighted
    majority's accuracy against within-problem AUC (simulated PRMs as a curve, the recipes' last points and
    the references as markers) next to plain majority voting."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    for name, curve in result["recipes"].items():
        left.plot([p.get("start_minutes", 0.0) + p["train_minutes"] for p in curve],
                  [p["within_problem_auc"] for p in curve], marker="o", label=name)
        right.plot(curve[-1]["within_problem_auc"], curve[-1]["weighted_vote"], marker="o", ls="", label=name)
    for (name, ref), style, marker in zip(result["references"].items(), (":", "-."), "sD", strict=False):
        left.axhline(ref["within_problem_auc"], color="gray", linestyle=style, label=name)
        right.plot(ref["within_problem_auc"], ref["weighted_vote"], marker=marker, color="gray", ls="", label=name)
    left.axhline(0.9, color="k", lw=0.8, label="target 0.90")
    left.set(xlabel="PRM training minutes (2 CPU cores)", ylabel="within-problem AUC (arithmetic)", ylim=(0.4, 1.0))
    oracle = result["noisy_oracle"]
    right.plot([p["within_problem_auc"] for p in oracle], [p["weighted_vote"] for p in oracle], "k--",
               label="noisy exact verifier")
    right.axhline(result["majority"], color="gray", lw=0.8, label="majority")
    right.axhline(result["majority"] + 0.05, color="k", lw=0.8, label="majority + 0.05")
    right.set(xlabel="within-problem AUC", ylabel="weighted majority accuracy")
    for ax in (left, right):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return fig


if __name__ == "__main__":
    main()
