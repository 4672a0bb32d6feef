"""Solve many problems of a task with a search method: bucketed, batched, jitted.

A `Task` says how to prompt, when a trace is finished, how to read its
answer and how to check it. A `Solver` binds a task to an LM, a tokenizer and
a PRM (a model PRM, or the task's exact verifier) and runs a `SearchSpec` on
a list of problems: prompts are padded to a length bucket, problems are
vmapped in fixed-size batches, so a run over hundreds of problems compiles
once per (method, budget, bucket).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from inference.answers import answer_posterior, votes
from inference.search import SELECTION, SearchSpec, reasoning_program
from models.prm import aggregate
from models.sampling import NO_TOKEN, SamplingParams, prefill, stop_table

PROMPT_BUCKET = 16  # prompt lengths are padded up to a multiple of this
PARTICLE_ROWS = 1024  # problems per batch = PARTICLE_ROWS // particles


@dataclasses.dataclass(frozen=True)
class Task:
    """What the solver needs to know about a task."""

    name: str
    max_steps: int
    params: SamplingParams
    prompt: Callable[[Any], str]
    answer: Callable[[Any, list[str]], Hashable | None]  # canonical answer class of a trace
    correct: Callable[[Any, list[str]], bool]
    oracle: Callable[[jax.Array], Any]  # token_bytes -> verifier PRM
    oracle_judge: Callable[[Any], Any]  # problem -> the verifier's initial context
    final_prefix: str | None = None  # a step starting with this text ends the trace (e.g. "answer")
    record: Callable[[Any], dict] = dict  # problem -> its fields in the output line


@dataclasses.dataclass
class Solution:
    record: dict  # the output line: the problem's fields plus steps, answer, confidence, correct, tokens


class Solver:
    """A task bound to its models; `solve(problems, spec)` runs a method on them."""

    def __init__(self, task: Task, lm: Any, tokenizer: Any, prm: Any = "oracle"):
        self.task, self.lm, self.tokenizer = task, lm, tokenizer
        self.stops = stop_table(tokenizer, ("\n",))
        self.token_bytes = np.asarray(self.stops.token_bytes)
        self.oracle = prm == "oracle"
        self.prm = task.oracle(self.stops.token_bytes) if self.oracle else prm
        self._compiled: dict = {}
        self.compile_seconds = 0.0  # total time spent compiling, kept out of per-problem timings

    def _prompts(self, problems: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        ids = [bos + self.tokenizer.encode(self.task.prompt(p), add_special_tokens=False) for p in problems]
        width = -(-max(len(x) for x in ids) // PROMPT_BUCKET) * PROMPT_BUCKET
        tokens = np.zeros((len(ids), 1, width), np.int32)
        mask = np.zeros((len(ids), 1, width), bool)
        for i, x in enumerate(ids):  # left padding: the prompt ends where the trace begins
            tokens[i, 0, width - len(x):] = x
            mask[i, 0, width - len(x):] = True
        return tokens, mask

    def _is_final(self) -> Callable[[jax.Array], jax.Array] | None:
        """A jittable test 'the step starts with the task's final prefix', or None."""
        if self.task.final_prefix is None:
            return None
        prefix = jnp.asarray(self.tokenizer.encode(self.task.final_prefix, add_special_tokens=False), jnp.int32)
        return lambda step: jnp.all(step[:, : prefix.shape[0]] == prefix, axis=1)

    def _executable(self, spec: SearchSpec, args: tuple):
        """The compiled run for these shapes, compiled once ahead of time (so timings exclude it)."""
        shapes = tuple((x.shape, x.dtype) for x in jax.tree.leaves(args[:4]))
        key = (spec, shapes)
        if key not in self._compiled:
            task = self.task
            program = reasoning_program(
                spec.sampling(task.params), self.stops, task.max_steps, spec.form, spec.beta, self._is_final()
            )
            engine = spec.engine(program)

            def one(rng_key, tokens, mask, judge, lm, prm):
                # The prompt's caches hold the prompt alone: particles keep their steps in their own.
                lm_state = prefill(lm, tokens, mask, tokens.shape[-1])
                if judge is None:
                    judge = prm.start(tokens, mask, tokens.shape[-1])
                return engine.run_unchecked(rng_key, lm_state, judge, lm, prm)

            began = time.perf_counter()
            batched = jax.jit(jax.vmap(one, in_axes=(0, 0, 0, 0, None, None)))
            self._compiled[key] = batched.lower(*args).compile()
            self.compile_seconds += time.perf_counter() - began
        return self._compiled[key]

    def solve(
        self,
        problems: Sequence[Any],
        spec: SearchSpec,
        seed: int = 0,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[dict]:
        """Run `spec` on every problem; returns one output record per problem, in order."""
        return self.solve_many(problems, spec, (spec.method,), seed, progress)[spec.method]

    def solve_many(
        self,
        problems: Sequence[Any],
        spec: SearchSpec,
        methods: Sequence[str],
        seed: int = 0,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, list[dict]]:
        """One run of `spec`, read out by the selection rule of each of `methods`.

        Methods that sample the same way (bon, wbon, majority, wmajority) thus
        share their samples, which makes their comparison paired.
        """
        out: dict[str, list[dict]] = {m: [] for m in methods}
        for chunk, result, seconds in self.runs(problems, spec, seed):
            for row, index in enumerate(chunk):
                for method in methods:
                    record = self._record(problems[index], result, row, method, spec)
                    record["seconds"] = seconds
                    out[method].append(record)
            if progress is not None:
                progress(len(out[methods[0]]), len(problems))
        return out

    def runs(
        self, problems: Sequence[Any], spec: SearchSpec, seed: int = 0
    ) -> Iterator[tuple[list[int], Any, float]]:
        """Run `spec` over `problems` in fixed-shape chunks (one compile per bucket).

        Yields `(indices, result, seconds)`: the problems of the chunk, the engine's
        result on the host (row r belongs to problem `indices[r]`), and the wall
        seconds per problem (compilation excluded).
        """
        tokens, mask = self._prompts(problems)
        batch = min(max(1, PARTICLE_ROWS // spec.particles), 1 << (len(problems) - 1).bit_length())
        for start in range(0, len(problems), batch):
            chunk = list(range(start, min(start + batch, len(problems))))
            padded = chunk + [chunk[-1]] * (batch - len(chunk))
            judge = self._judges([problems[i] for i in padded])
            keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), start), batch)
            args = (keys, jnp.asarray(tokens[padded]), jnp.asarray(mask[padded]), judge, self.lm, self.prm)
            run = self._executable(spec, args)
            began = time.perf_counter()
            result = to_host(run(*args))
            yield chunk, result, (time.perf_counter() - began) / len(chunk)

    def particle_texts(self, result: Any, row: int) -> list[list[str]]:
        """Every particle's steps, as text, for row `row` of a result from `runs`."""
        trace = result.particles
        steps, lengths, counts = trace.steps[row, :, 0], trace.step_lengths[row, :, 0], trace.num_steps[row, :, 0]
        return [self.decode_steps(steps[i], lengths[i], int(counts[i])) for i in range(steps.shape[0])]

    @staticmethod
    def trace_scores(result: Any, row: int, how: str) -> np.ndarray:
        """Every particle's PRM step rewards for row `row` of a result, aggregated by `how`."""
        trace = result.particles
        valid = np.arange(trace.steps.shape[3])[None, :] < trace.num_steps[row, :, 0][:, None]  # [N, max_steps]
        return np.asarray(aggregate(trace.rewards[row, :, 0], valid, how))

    def _judges(self, problems: list[Any]) -> Any:
        if not self.oracle:
            return None
        judges = [self.task.oracle_judge(p) for p in problems]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *judges)

    def decode_steps(self, steps: np.ndarray, lengths: np.ndarray, count: int) -> list[str]:
        """Text of a trace's first `count` steps, each without its trailing newline."""
        texts = []
        for s in range(count):
            ids = steps[s][: lengths[s]]
            raw = b"".join(bytes(b for b in self.token_bytes[t] if b >= 0) for t in ids if t != NO_TOKEN)
            texts.append(raw.decode("utf-8", errors="replace").strip())
        return [t for t in texts if t]

    def _record(self, problem, result, row, method, spec) -> dict:
        rule, how = SELECTION[method]
        texts = self.particle_texts(result, row)
        answers = [self.task.answer(problem, t) for t in texts]
        scores = self.trace_scores(result, row, how)
        posterior = answer_posterior(answers, votes(rule, scores, result.log_weights[row], len(texts)))
        chosen = posterior.chosen_trace if posterior.chosen_trace is not None else int(np.argmax(scores))
        record = self.task.record(problem)
        record.update(
            steps=texts[chosen],
            answer=_jsonable(posterior.best),
            confidence=0.0 if self._collapsed(result, row) else posterior.confidence,
            correct=bool(self.task.correct(problem, texts[chosen])),
            tokens=int(np.sum(result.deterministic["step.length"][row])),
            method=method,
            particles=spec.particles,
        )
        return record

    @staticmethod
    def _collapsed(result: Any, row: int) -> bool:
        """Every particle reached zero weight at some step: the engine revived them uniformly,
        so the final weights no longer mean anything and the answer gets no confidence."""
        status = getattr(result, "weight_status", None)
        return status is not None and bool(np.any(np.asarray(status)[row] == 3))


def to_host(tree: Any) -> Any:
    """A run's result as numpy on this host; arrays sharded over several processes (multi-host
    runs under ``jax.distributed``) are gathered from all of them."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def _jsonable(answer: Hashable | None) -> Any:
    if isinstance(answer, tuple):
        return list(answer)
    return answer
