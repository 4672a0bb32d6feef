"""Train the shipped tiny LM and its learned PRM (one pair for Countdown and arithmetic).

    python -m ppl.train --out models/shipped --seed 0

LM: a ~0.9M-parameter Llama trained on `[<bos>] prompt trace [<eos>]` of freshly
drawn problems of both tasks (50/50 unless `--countdown-share`), loss on the trace
and `<eos>` only; a Countdown problem with several solutions contributes a random one each time it
is drawn, so the LM learns to propose several plausible steps.

PRM: the same architecture, initialised from the trained LM and fine-tuned in
Math-Shepherd's token convention: at each step's final token ("\\n") the
reward is softmax over the logits of "+" (good) and "-" (bad), trained with
binary cross-entropy against the oracle `step_labels`. Its traces are mostly
the LM's own temperature-1 samples (what it judges at inference time), plus
corrupted traces and correct solutions; with `--prm-stream K` every batch also
holds K fresh corrupted traces, a new problem each (a fixed set shows each
arithmetic fact only a few times).

`--checkpoints DIR` keeps each model's training state there, written at every
log line: run the same command again after an interruption and it continues
where it stopped, to the same weights.

Everything is reproducible from `--seed` (NumPy streams for data, fixed JAX
keys). Training data never uses `EVAL_SEED`, which draws the held-out
problems the model cards report on. The tasks come from the registry
(`ppl.tasks.TASKS`, each with its `Training` data); the models themselves
(`models/`) know nothing of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from models.llama import Config, Llama, num_parameters, random_init
from models.loading import load
from models.sampling import (
    NO_TOKEN,
    STOP_EOS,
    STOP_STRING,
    SamplingParams,
    prefill,
    sample_step,
    stop_table,
)
from models.saving import save_pretrained
from models.tokenizer import train_bpe
from ppl.errors import InputError
from ppl.progress import LOGGER, bar, reporting
from ppl.tasks import EVAL_SEED, TASKS, Task

SEQ_LEN = 80  # longest training sequence is 76 tokens (a Countdown trace with its pools)
PROMPT_LEN = 24  # prompts are left-padded to this for sampling
STEP_TOKENS = 24  # token cap of one sampled step (the longest written step has 21)
SAMPLE_STEPS = 5  # steps sampled per trace (arithmetic: 4 operations + answer line)
PRM_LEN = 96  # PRM inputs are cut here; tags beyond are dropped
PRM_TAGS = {"prm_type": "token", "step_tag": "\n", "good_token": "+", "bad_token": "-"}
CORPUS_SEED = 0
CORPUS_PROBLEMS = 200  # per task


def tokenizer_corpus(seed: int = CORPUS_SEED, n: int = CORPUS_PROBLEMS) -> list[str]:
    """Prompt + first solution of `n` problems of each task: the training corpus of the shipped BPE."""
    return [
        task.prompt(p) + "".join(f"{line}\n" for line in task.training.solutions(p)[0])
        for task in TASKS.values()
        for p in task.generate(seed, n)
    ]


def build_tokenizer() -> Any:
    """The shipped tokenizer: the BPE of `models.tokenizer` trained on `tokenizer_corpus()`."""
    return train_bpe(tokenizer_corpus())


def lm_config(vocab_size: int) -> Config:
    return Config(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        max_position_embeddings=512,
    )


# ---------------------------------------------------------------- data


class Drawn(NamedTuple):
    """A problem drawn for training, with the task it belongs to."""

    task: Task
    problem: Any

    @property
    def prompt(self) -> str:
        return self.task.prompt(self.problem)

    def labels(self, lines: list[str]) -> list[int]:
        return self.task.training.step_labels(self.problem, lines)


def draw(task: Task, rng: np.random.Generator | int, n: int) -> list[Drawn]:
    return [Drawn(task, p) for p in task.generate(rng, n)]


def mixed(rng: np.random.Generator, n: int, countdown_share: float = 0.5) -> list[Drawn]:
    """`n` fresh problems, each a Countdown one with probability `countdown_share`, else arithmetic."""
    k = int(rng.binomial(n, countdown_share))
    out = draw(TASKS["countdown"], rng, k) + draw(TASKS["arithmetic"], rng, n - k)
    return [out[i] for i in rng.permutation(n)]


def random_solution(p: Drawn, rng: np.random.Generator) -> list[str]:
    solutions = p.task.training.solutions(p.problem)
    return solutions[int(rng.integers(len(solutions)))]


def lm_batches(
    tok: Any, rng: np.random.Generator, batch: int, countdown_share: float = 0.5
) -> Iterator[tuple[np.ndarray, ...]]:
    """Endless (ids, attention mask, loss mask) batches of fresh problems, a random solution each."""
    while True:
        ids = np.zeros((batch, SEQ_LEN), np.int32)
        loss = np.zeros((batch, SEQ_LEN), np.float32)
        for row, p in enumerate(mixed(rng, batch, countdown_share)):
            lines = random_solution(p, rng)
            prompt = [tok.bos_token_id] + tok.encode(p.prompt)
            trace = tok.encode("".join(f"{s}\n" for s in lines)) + [tok.eos_token_id]
            seq = (prompt + trace)[:SEQ_LEN]
            ids[row, : len(seq)] = seq
            loss[row, len(prompt) : len(seq)] = 1.0
        yield ids, ids != tok.pad_token_id, loss


def prompt_array(tok: Any, batch: list[Drawn]) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded `[<bos>] + prompt` ids [B, PROMPT_LEN] and their mask."""
    ids = np.full((len(batch), PROMPT_LEN), tok.pad_token_id, np.int32)
    for row, p in enumerate(batch):
        seq = [tok.bos_token_id] + tok.encode(p.prompt)
        ids[row, PROMPT_LEN - len(seq) :] = seq
    return ids, ids != tok.pad_token_id


# ---------------------------------------------------------------- sampling


def make_sampler(graphdef: Any, tok: Any, temperature: float) -> Callable:
    """Jitted `(params, key, ids, mask) -> (tokens [S, B, T], lengths [S, B], stops [S, B])`.

    `SAMPLE_STEPS` calls of `sample_step` with stop string "\\n" in one scan; a row
    stops after `<eos>`.
    """
    params_ = SamplingParams(temperature=temperature, max_tokens=STEP_TOKENS)
    stops = stop_table(tok, ("\n",), (tok.eos_token_id,))

    @jax.jit
    def sample(params, key, ids, mask):
        lm = nnx.merge(graphdef, params)
        state = prefill(lm, ids, mask, PROMPT_LEN + SAMPLE_STEPS * STEP_TOKENS)

        def body(carry, key):
            state, active = carry
            r = sample_step(lm, key, state, params_, stops, active)
            return (r.state, active & (r.stop != STOP_EOS)), (r.tokens, r.length, jnp.where(active, r.stop, -1))

        active = jnp.ones(ids.shape[:1], bool)
        _, out = jax.lax.scan(body, (state, active), jax.random.split(key, SAMPLE_STEPS))
        return out

    return sample


def sampled_steps(tokens: np.ndarray, lengths: np.ndarray, stops: np.ndarray, row: int) -> list[list[int]]:
    """The complete steps (ending in "\\n") of one row, as token-id lists, up to the first other stop."""
    steps = []
    for s in range(tokens.shape[0]):
        if stops[s, row] != STOP_STRING:
            break
        step = tokens[s, row, : lengths[s, row]]
        steps.append([int(t) for t in step if t != NO_TOKEN])
    return steps


def sample_traces(
    sampler: Callable, params: Any, tok: Any, key: jax.Array, batch_problems: list[Drawn], batch: int = 256
) -> list[list[list[int]]]:
    """Sampled traces (lists of step token ids) for each problem, in batches of `batch` (padded)."""
    out = []
    for start in range(0, len(batch_problems), batch):
        chunk = batch_problems[start : start + batch]
        ids, mask = prompt_array(tok, chunk + chunk[:1] * (batch - len(chunk)))
        key, sub = jax.random.split(key)
        tokens, lengths, stops = (np.asarray(x) for x in sampler(params, sub, ids, mask))
        out += [sampled_steps(tokens, lengths, stops, row) for row in range(len(chunk))]
    return out


# ---------------------------------------------------------------- training


def lm_loss(model: Llama, ids: jax.Array, mask: jax.Array, weights: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy over the positions where `weights` is 1."""
    logits = model(ids, mask)[:, :-1]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:])
    w = weights[:, 1:]
    return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)


def prm_logits(model: Llama, ids: jax.Array, mask: jax.Array, good: int, bad: int) -> jax.Array:
    """logit P(good) at every position: the "+" logit minus the "-" logit."""
    logits = model(ids, mask)
    return logits[..., good] - logits[..., bad]


def train(
    model: Llama,
    loss_fn: Callable,
    batches: Iterator,
    steps: int,
    lr: float,
    log_every: int,
    name: str,
    on_log: Callable[[int, Llama], None] | None = None,
    checkpoint: Path | None = None,
) -> tuple[Llama, float]:
    """AdamW with linear warmup and cosine decay; returns the model and the mean loss of the last log window.
    `on_log(step, model)` is called at each log line (e.g. to measure a curve while training).

    With `checkpoint` (a safetensors file) the parameters and optimizer state are written there at every
    log line, and a run that finds one continues from it: the batches it had used are drawn again and
    skipped, so an interrupted run ends where an uninterrupted one would."""
    warmup = min(200, steps // 10 + 1)
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), lr * 0.1)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    graphdef, params = nnx.split(model)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, *batch):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p), *batch))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    done, mean = 0, float("nan")
    if checkpoint is not None and checkpoint.exists():
        (params, opt_state), done, mean = read_checkpoint(checkpoint, (params, opt_state), steps)
        LOGGER.info(f"[{name}] resuming from {checkpoint} at step {done}/{steps}")
        for _ in range(done):
            next(batches)
    start, window = time.time(), []
    with bar(steps, name, quiet=not LOGGER.isEnabledFor(logging.INFO), unit="step", initial=done) as progress:
        for i in range(done + 1, steps + 1):
            params, opt_state, loss = step(params, opt_state, *next(batches))
            window.append(loss)
            progress.update()
            if i % log_every == 0 or i == steps:
                mean = float(np.mean(jax.device_get(window)))
                progress.set_postfix_str(f"loss {mean:.4f}")
                LOGGER.info(f"[{name}] step {i}/{steps} loss {mean:.4f} ({time.time() - start:.0f}s)")
                window = []
                if checkpoint is not None:
                    write_checkpoint(checkpoint, (params, opt_state), i, steps, mean)
                if on_log is not None:
                    on_log(i, nnx.merge(graphdef, params))
    return nnx.merge(graphdef, params), mean


def write_checkpoint(path: Path, state: Any, step: int, steps: int, loss: float) -> None:
    """The leaves of `state` as a safetensors file (written aside, then renamed: never half a file)."""
    from safetensors.numpy import save_file

    leaves = {str(i): np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(state))}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(leaves, str(path.with_suffix(".tmp")), metadata={"step": str(step), "steps": str(steps),
                                                              "loss": repr(loss)})
    os.replace(path.with_suffix(".tmp"), path)


def read_checkpoint(path: Path, like: Any, steps: int) -> tuple[Any, int, float]:
    """(state shaped as `like`, its step, the loss logged there) from `write_checkpoint`'s file; InputError
    when it is another run's (other shapes, or another number of steps, which changes the schedule)."""
    from safetensors import safe_open

    with safe_open(str(path), "numpy") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    leaves, tree = jax.tree.flatten(like)
    fits = len(tensors) == len(leaves) and all(
        tensors[str(i)].shape == np.shape(leaf) for i, leaf in enumerate(leaves)
    )
    if not fits or int(meta["steps"]) != steps:
        raise InputError(f"{path} is a checkpoint of another run (other shapes or not {steps} steps): "
                         "remove it or use another --checkpoints directory")
    state = jax.tree.unflatten(tree, [jnp.asarray(tensors[str(i)]) for i in range(len(leaves))])
    return state, int(meta["step"]), float(meta["loss"])


# ---------------------------------------------------------------- PRM data


@dataclasses.dataclass
class Scored:
    """A PRM example: ids of `[<bos>] prompt steps`, tag positions and their oracle labels."""

    task: str  # the task's name
    ids: list[int]
    tags: list[int]
    labels: list[int]
    source: str


def scored(tok: Any, p: Drawn, steps: list[list[int]], source: str) -> Scored | None:
    """Label a trace (step token ids) with the oracle; None when it has no complete step."""
    ids = [tok.bos_token_id] + tok.encode(p.prompt)
    tags = []
    for step in steps:
        if len(ids) + len(step) > PRM_LEN:
            break
        ids += step
        tags.append(len(ids) - 1)
    if not tags:
        return None
    lines = [tok.decode(s).rstrip("\n") for s in steps[: len(tags)]]
    return Scored(p.task.name, ids, tags, p.labels(lines), source)


def text_steps(tok: Any, lines: list[str]) -> list[list[int]]:
    return [tok.encode(f"{line}\n") for line in lines]


def prm_examples(
    tok: Any,
    rng: np.random.Generator,
    sampler: Callable,
    params: Any,
    key: jax.Array,
    n_sampled: int,
    n_other: int,
    per_problem: int = 1,
) -> list[Scored]:
    """`n_sampled` LM-sampled traces, `per_problem` of each problem, and `n_other` each of corrupted traces
    and correct solutions.

    Several samples of one problem are on-policy contrast: the LM's right and wrong traces of the same
    question, which is what the PRM must tell apart when a search selects among them.
    """
    examples = []
    pool = [p for p in mixed(rng, n_sampled // per_problem) for _ in range(per_problem)]
    for p, steps in zip(pool, sample_traces(sampler, params, tok, key, pool), strict=True):
        examples.append(scored(tok, p, steps, "sampled"))
    for p in mixed(rng, n_other):
        examples.append(scored(tok, p, text_steps(tok, p.task.training.corrupted(p.problem, rng)), "corrupted"))
    for p in mixed(rng, n_other):
        examples.append(scored(tok, p, text_steps(tok, random_solution(p, rng)), "correct"))
    return [e for e in examples if e is not None]


def class_weights(examples: list[Scored]) -> dict[tuple[str, int], float]:
    """Loss weight of a step by (task, label): each task's good and bad steps weigh half of its steps each."""
    counts: dict[tuple[str, int], int] = {}
    for e in examples:
        for label in e.labels:
            counts[e.task, label] = counts.get((e.task, label), 0) + 1
    totals = {task: sum(c for (t, _), c in counts.items() if t == task) for task, _ in counts}
    return {(task, label): totals[task] / (2 * c) for (task, label), c in counts.items()}


def prm_arrays(
    examples: list[Scored], pad: int, balance: bool = False, weights: dict[tuple[str, int], float] | None = None
) -> tuple[np.ndarray, ...]:
    """(ids, attention mask, tag weights, labels) arrays [N, PRM_LEN]; a tag weighs 1, or its class's
    `class_weights` with `balance` (those of the examples themselves, or the given `weights`)."""
    n = len(examples)
    ids = np.full((n, PRM_LEN), pad, np.int32)
    tags = np.zeros((n, PRM_LEN), np.float32)
    labels = np.zeros((n, PRM_LEN), np.float32)
    weights = (weights or class_weights(examples)) if balance else {}
    for row, e in enumerate(examples):
        ids[row, : len(e.ids)] = e.ids
        tags[row, e.tags] = [weights.get((e.task, label), 1.0) for label in e.labels]
        labels[row, e.tags] = e.labels
    mask = np.zeros((n, PRM_LEN), bool)
    for row, e in enumerate(examples):
        mask[row, : len(e.ids)] = True
    return ids, mask, tags, labels


def prm_batches(arrays: tuple[np.ndarray, ...], rng: np.random.Generator, batch: int) -> Iterator:
    """Endless shuffled epochs over the PRM examples."""
    n = arrays[0].shape[0]
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch + 1, batch):
            idx = order[start : start + batch]
            yield tuple(a[idx] for a in arrays)


def corrupted_batches(
    tok: Any, rng: np.random.Generator, batch: int, countdown_share: float,
    weights: dict[tuple[str, int], float] | None = None,
) -> Iterator[tuple[np.ndarray, ...]]:
    """Endless PRM batches of fresh corrupted traces (`Training.corrupted`), each of a new problem, a tag
    weighing its class's `weights` (or 1): a stream that never repeats a trace, so the PRM sees far more
    slips (and the right steps around them) than a fixed set holds."""
    while True:
        problems = mixed(rng, batch, countdown_share)
        examples = [scored(tok, p, text_steps(tok, p.task.training.corrupted(p.problem, rng)), "stream")
                    for p in problems]
        yield prm_arrays([e for e in examples if e is not None], tok.pad_token_id, weights is not None, weights)


def joined(*streams: Iterator[tuple[np.ndarray, ...]]) -> Iterator[tuple[np.ndarray, ...]]:
    """One batch of each stream, concatenated row-wise, at every step."""
    for parts in zip(*streams, strict=False):  # endless streams
        yield tuple(np.concatenate(arrays) for arrays in zip(*parts, strict=True))


# ---------------------------------------------------------------- evaluation


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact ROC AUC (Mann-Whitney U with ties counted half); NaN when one class is absent."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for f, c in zip(first, counts, strict=True):
        ranks[order[f : f + c]] = f + (c + 1) / 2.0  # average rank of a tie group, 1-based
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def greedy_accuracy(sampler: Callable, params: Any, tok: Any, eval_problems: list[Drawn]) -> float:
    """Fraction of problems the LM's greedy trace gets right (`Task.correct`)."""
    traces = sample_traces(sampler, params, tok, jax.random.key(0), eval_problems)
    solved = [
        p.task.correct(p.problem, [tok.decode(s).rstrip("\n") for s in t])
        for p, t in zip(eval_problems, traces, strict=True)
    ]
    return float(np.mean(solved))


def prm_probabilities(prm: Llama, tok: Any, examples: list[Scored]) -> np.ndarray:
    """P(good) the PRM gives at every position of each example [N, PRM_LEN] (read it at the step tags)."""
    ids, mask, _, _ = prm_arrays(examples, tok.pad_token_id)
    good, bad = tok.convert_tokens_to_ids(["+", "-"])
    score = jax.jit(lambda i, m: jax.nn.sigmoid(prm_logits(prm, i, m, good, bad)))
    return np.concatenate([np.asarray(score(ids[s : s + 256], mask[s : s + 256])) for s in range(0, len(ids), 256)])


def prm_auc(prm: Llama, tok: Any, examples: list[Scored]) -> tuple[float, float, int]:
    """(step-level ROC AUC, fraction of good steps, number of steps) of the PRM on `examples`."""
    _, _, tags, labels = prm_arrays(examples, tok.pad_token_id)
    probs = prm_probabilities(prm, tok, examples)
    at = tags > 0
    return roc_auc(probs[at], labels[at]), float(labels[at].mean()), int(at.sum())


# ---------------------------------------------------------------- main


def model_card(title: str, body: dict[str, Any], command: str) -> str:
    lines = [f"# {title}", ""]
    lines += [f"- **{k}**: {v}" for k, v in body.items()]
    lines += ["", "Reproduce (CPU, deterministic for a given seed and backend):", "", "```", command, "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """`python -m ppl.train`: the shipped-model recipe, with progress on stderr (see `run`)."""
    parser = _parser()
    args = parser.parse_args(argv)
    for flag in ("countdown_share", "prm_stream_countdown_share"):
        if not 0.0 <= getattr(args, flag) <= 1.0:
            parser.error(f"--{flag.replace('_', '-')} must lie in [0, 1], got {getattr(args, flag)}")
    if args.seed == EVAL_SEED:
        parser.error(f"seed {EVAL_SEED} is reserved for evaluation")
    with reporting(args.quiet):
        try:
            run(args)
        except InputError as err:
            parser.error(str(err))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="models/shipped", help="writes OUT/lm and OUT/prm")
    parser.add_argument("--seed", type=int, default=0, help=f"data and init seed (must differ from {EVAL_SEED})")
    parser.add_argument("--lm-steps", type=int, default=6000)
    parser.add_argument("--lm-batch", type=int, default=32)
    parser.add_argument("--lm-lr", type=float, default=3e-3)
    parser.add_argument("--countdown-share", type=float, default=0.6,
                        help="share of Countdown problems in the LM's data (the rest arithmetic; the PRM's stays 1/2)")
    parser.add_argument("--prm-steps", type=int, default=4500)
    parser.add_argument("--prm-batch", type=int, default=32)
    parser.add_argument("--prm-lr", type=float, default=1e-3)
    parser.add_argument("--prm-sampled", type=int, default=24000, help="LM-sampled PRM training traces")
    parser.add_argument("--prm-per-problem", type=int, default=8,
                        help="LM samples of each PRM training problem (on-policy contrast within a problem)")
    parser.add_argument("--prm-balance", action=argparse.BooleanOptionalAction, default=True,
                        help="weigh good and bad steps equally in the PRM's loss (per task)")
    parser.add_argument("--prm-stream", type=int, default=32,
                        help="fresh corrupted traces added to every PRM batch (a new problem each; 0: none)")
    parser.add_argument("--prm-stream-countdown-share", type=float, default=0.0,
                        help="share of Countdown problems in the --prm-stream traces (the rest arithmetic)")
    parser.add_argument("--prm-other", type=int, default=1000, help="corrupted traces, and as many correct ones")
    parser.add_argument("--eval-problems", type=int, default=200, help="held-out problems per task")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--checkpoints", default=None, help="a directory for the LM's and PRM's training state, "
                        "written at every log line: the same command run again continues from there")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or log lines on stderr")
    parser.add_argument("--lm", default=None, help="a directory holding the LM these --lm-* flags trained: "
                        "reuse it and train the PRM only (OUT/lm is left as it is)")
    return parser


def run(args: argparse.Namespace) -> None:
    """Train the LM (or reuse `--lm`) and the PRM, evaluate both, write them and their model cards."""
    flags = {k: v for k, v in vars(args).items() if k not in ("log_every", "lm", "quiet", "checkpoints")}
    command = "python -m ppl.train " + " ".join(
        ("--" if v is not False else "--no-") + k.replace("_", "-") + ("" if isinstance(v, bool) else f" {v}")
        for k, v in flags.items()
    )
    out = Path(args.out)
    total_start = time.time()
    tok = build_tokenizer()
    lm_rng, prm_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(args.seed).spawn(2))
    key_prm, key_eval = jax.random.split(jax.random.key(args.seed), 3)[1:]  # the shipped recipe's keys
    good, bad = tok.convert_tokens_to_ids(["+", "-"])

    # LM
    start = time.time()
    if args.lm:
        lm, _ = load(args.lm)
        LOGGER.info(f"LM: reusing {args.lm}")
    else:
        lm = random_init(lm_config(len(tok)), seed=args.seed)
        LOGGER.info(f"LM: {num_parameters(lm):,} parameters")
        lm, lm_final = train(
            lm,
            lm_loss,
            lm_batches(tok, lm_rng, args.lm_batch, args.countdown_share),
            args.lm_steps,
            args.lm_lr,
            args.log_every,
            "lm",
            checkpoint=args.checkpoints and Path(args.checkpoints) / "lm.safetensors",
        )
    lm_time = time.time() - start
    graphdef, lm_params = nnx.split(lm)
    greedy = make_sampler(graphdef, tok, 0.0)
    sampler = make_sampler(graphdef, tok, 1.0)
    held_out = {name: draw(task, EVAL_SEED, args.eval_problems) for name, task in TASKS.items()}
    accuracy = {task: greedy_accuracy(greedy, lm_params, tok, ps) for task, ps in held_out.items()}
    LOGGER.info(f"LM greedy accuracy on held-out problems: {accuracy}")
    if not args.lm:
        save_pretrained(lm, out / "lm", tok)

    # PRM
    start = time.time()
    examples = prm_examples(
        tok, prm_rng, sampler, lm_params, key_prm, args.prm_sampled, args.prm_other, args.prm_per_problem
    )
    data_time = time.time() - start
    stats = {
        source: f"{sum(e.source == source for e in examples)} traces, "
        f"{np.mean([x for e in examples if e.source == source for x in e.labels]):.2f} of steps good"
        for source in ("sampled", "corrupted", "correct")
    }
    LOGGER.info(f"PRM data ({data_time:.0f}s): {stats}")

    def prm_loss(model, ids, mask, tags, labels):
        logit = prm_logits(model, ids, mask, good, bad)
        bce = optax.sigmoid_binary_cross_entropy(logit, labels)
        return jnp.sum(bce * tags) / jnp.maximum(jnp.sum(tags), 1.0)

    prm = nnx.merge(graphdef, jax.tree.map(jnp.copy, lm_params))
    batches = prm_batches(prm_arrays(examples, tok.pad_token_id, args.prm_balance), prm_rng, args.prm_batch)
    if args.prm_stream:
        weights = class_weights(examples) if args.prm_balance else None
        stream = corrupted_batches(tok, prm_rng, args.prm_stream, args.prm_stream_countdown_share, weights)
        batches = joined(batches, stream)
    start = time.time()
    prm, prm_final = train(prm, prm_loss, batches, args.prm_steps, args.prm_lr, args.log_every, "prm",
                           checkpoint=args.checkpoints and Path(args.checkpoints) / "prm.safetensors")
    prm_time = time.time() - start
    eval_examples = []
    for ps in held_out.values():
        traces = sample_traces(sampler, lm_params, tok, key_eval, ps + ps)  # two samples per problem
        eval_examples += [e for p, t in zip(ps + ps, traces, strict=True) if (e := scored(tok, p, t, "sampled"))]
    auc = {task: prm_auc(prm, tok, [e for e in eval_examples if e.task == task]) for task in TASKS}
    LOGGER.info(f"PRM step AUC on held-out LM samples: {auc}")
    total = time.time() - total_start

    common = {
        "tokenizer": f"shipped byte-level BPE (`ppl.train.build_tokenizer`), {len(tok)} tokens",
        "seed": f"{args.seed} (NumPy `SeedSequence({args.seed}).spawn(2)` streams for data, "
        f"`jax.random.key({args.seed})` for sampling); held-out problems use `EVAL_SEED = {EVAL_SEED}`",
        "optimizer": "AdamW (weight decay 0.01), linear warmup then cosine decay to 10%, global-norm clip 1.0",
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), JAX {jax.__version__} on "
        f"{jax.default_backend()}",
        "total wall time of the run": f"{total / 60:.1f} min on CPU ("
        + (f"LM reused from {args.lm}, " if args.lm else "LM, ") + "PRM data, PRM, evaluation)",
    }
    arch = "Llama, hidden 128, 4 layers, 4 heads (2 KV heads, head dim 32), MLP 384, untied embeddings"
    prm_card = {
        "architecture": f"{arch}; {num_parameters(prm):,} parameters; initialised from the shipped LM",
        "convention": "Math-Shepherd token PRM: at each step's final token (\"\\n\") P(good) = softmax over the "
        "logits of `+` (good) and `-` (bad); input `[<bos>] prompt steps` with the LM's token ids",
        "data": f"{stats}; sampled at temperature 1, {args.prm_per_problem} per problem; each task with "
        "probability 1/2; labels from the oracle `step_labels`"
        + ("; good and bad steps weigh equally in the loss (per task)" if args.prm_balance else "")
        + (f"; and in every batch {args.prm_stream} fresh corrupted traces, a new problem each "
           f"({args.prm_steps * args.prm_stream:,} in all; Countdown with probability "
           f"{args.prm_stream_countdown_share:g}, else arithmetic)" if args.prm_stream else ""),
        "steps / batch / peak lr": f"{args.prm_steps} / {args.prm_batch}"
        + (f" + {args.prm_stream} streamed" if args.prm_stream else "") + f" / {args.prm_lr}",
        "loss": "binary cross-entropy of the `+`/`-` logit difference at step tags",
        "final loss (mean of last log window)": f"{prm_final:.4f}",
        "PRM data sampling wall time": f"{data_time / 60:.1f} min",
        "training wall time": f"{prm_time / 60:.1f} min",
        "step-level ROC AUC, held-out": ", ".join(
            f"{task} {auc[task][0]:.3f} ({auc[task][2]} steps, {auc[task][1]:.0%} good)" for task in TASKS
        )
        + f"; LM temperature-1 traces, 2 per problem, of `{{task}}.generate({EVAL_SEED}, {args.eval_problems})`",
        **common,
    }
    save_pretrained(prm, out / "prm", tok, PRM_TAGS)
    if not args.lm:
        lm_card = {
            "architecture": f"{arch}; {num_parameters(lm):,} parameters",
            "data": f"{args.lm_steps * args.lm_batch:,} sequences `[<bos>] prompt trace [<eos>]` of fresh problems, "
            f"Countdown with probability {args.countdown_share:g}, else arithmetic (Countdown: a random one of all "
            "solutions); loss on trace and `<eos>` only",
            "steps / batch / peak lr": f"{args.lm_steps} / {args.lm_batch} / {args.lm_lr}",
            "final loss (mean of last log window)": f"{lm_final:.4f}",
            "training wall time": f"{lm_time / 60:.1f} min",
            "greedy accuracy, held-out": ", ".join(
                f"{task} {accuracy[task]:.1%} ({args.eval_problems} problems, `{task}.generate({EVAL_SEED}, "
                f"{args.eval_problems})`)"
                for task in TASKS
            ),
            **common,
        }
        (out / "lm" / "README.md").write_text(model_card("Shipped tiny LM (Countdown + arithmetic)", lm_card, command))
    (out / "prm" / "README.md").write_text(model_card("Shipped tiny PRM (Countdown + arithmetic)", prm_card, command))
    summary = {"lm_accuracy": accuracy, "prm_auc": {t: a[0] for t, a in auc.items()}, "minutes": total / 60}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
