"""Solve many problems of a task with a search method: bucketed, batched, jitted.

A `Solver` binds a `Task` to an LM, its tokenizer and a judge (a model PRM, or the task's exact
`Verifier`) and runs a `SearchSpec` over a list of problems: prompts are padded to a length
bucket and vmapped in fixed-size chunks (`ppl.batching`), each (method, shapes) compiled once
(`CompiledRuns`), and every problem's answer read out of its particles (`ppl.readout`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from models.llama import shard_weights
from models.sampling import prefill, stop_table
from ppl import batching, prompting, readout
from ppl.errors import InputError
from ppl.reasoning import Paging, PoolExhausted
from ppl.search import SearchResult, SearchSpec, reasoning_program
from ppl.tasks import Task, Verifier

LOGGER = logging.getLogger("ppl")


class PRMInput(NamedTuple):
    """A model PRM's prompt, in its own format: token ids and mask [1, width], left-padded."""

    tokens: jax.Array
    mask: jax.Array


class _Uninformative(NamedTuple):
    """The judge of runs without a PRM: every step gets reward 1, so weights stay uniform."""

    def score_step(self, judge: jax.Array, tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        return jnp.ones(tokens.shape[:1], jnp.float32), judge


# `--prm none`: for the methods that never read a PRM score (greedy, majority).
NO_PRM = Verifier(build=lambda token_bytes: _Uninformative(), context=lambda problem: jnp.zeros((), jnp.int32))
METHODS_WITHOUT_PRM = ("greedy", "majority")


class CompiledRuns:
    """The batched run of each (spec, argument shapes), compiled once ahead of time, so that
    timings exclude compilation (`compile_seconds` adds it up). Compilation happens on one worker
    thread: `prefetch` queues a run's compilation and returns, so it overlaps whatever runs meanwhile
    (XLA compiles on one core; a tiny run leaves the other idle); `get` waits for it."""

    def __init__(self, program_of: Callable[[SearchSpec], Any]):
        self.program_of = program_of
        self._compiled: dict[Any, concurrent.futures.Future] = {}
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ppl-compile")
        self._lock = threading.Lock()
        self.compile_seconds = 0.0

    def get(self, spec: SearchSpec, args: tuple) -> Callable[..., SearchResult]:
        return self.prefetch(spec, args).result()

    def prefetch(self, spec: SearchSpec, args: tuple) -> concurrent.futures.Future:
        """The compilation of `spec`'s run for arguments shaped like `args`, queued unless known."""
        key = (spec, tuple((x.shape, x.dtype) for x in jax.tree.leaves(args[:4])))
        with self._lock:
            if key not in self._compiled:
                self._compiled[key] = self._worker.submit(self._compile, spec, args)
            return self._compiled[key]

    def _compile(self, spec: SearchSpec, args: tuple) -> Callable[..., SearchResult]:
        one = problem_run(spec.engine(self.program_of(spec)))
        rows, width = args[1].shape[0], args[1].shape[-1]
        LOGGER.info(f"compiling {spec.method} N={spec.num_particles} for {rows} problem(s) of prompt "
                    f"width {width} (once per shape; cached on disk by the CLI)")
        began = time.perf_counter()
        batched = jax.jit(jax.vmap(one, in_axes=(0, 0, 0, 0, None, None)))
        compiled = batched.lower(*args).compile()
        self.compile_seconds += time.perf_counter() - began
        return compiled


class Solver:
    """A task bound to its models; `solve(problems, spec)` runs a method on them.

    `prm` is a model PRM (`models.prm.load_prm`) or a `Verifier` (`task.verifier`, `NO_PRM`).
    A model PRM reads the LM's prompt unless `prm_prompt(problem)` gives its own (text for
    `prm_tokenizer`, e.g. `ppl.prompting.prm_prompt`). `eos_ids`: every id that ends a trace
    (default: the tokenizer's EOS). `aggregation` overrides each method's PRM aggregation
    (`readout.AGGREGATIONS`). `batch_rows`: particle rows run together (problems per run =
    `batch_rows // particles`; their caches are what fills memory); `memory_bytes` instead plans it: the
    most problems per run (a power of two) whose compiled program fits, by XLA's own accounting of it
    (`plan_rows`). `mesh`: with a `model` axis, the LM's and a model PRM's weights are split over it
    (`models.llama.shard_weights`), and the particles of a spec without a mesh of its own go over its
    `particles` axis. A model PRM sees each step without its trailing delimiter and EOS, then its own
    step tag: its training format (the shipped PRM's tag is the delimiter "\n" itself).
    """

    def __init__(
        self,
        task: Task,
        lm: Any,
        tokenizer: Any,
        prm: Any,
        *,
        prm_prompt: Callable[[Any], str] | None = None,
        prm_tokenizer: Any = None,
        eos_ids: tuple[int, ...] | None = None,
        aggregation: str | None = None,
        batch_rows: int = batching.PARTICLE_ROWS,
        memory_bytes: int | None = None,
        mesh: Mesh | None = None,
    ):
        if mesh is not None and "model" in mesh.axis_names:
            lm = shard_weights(lm, mesh)
            if not isinstance(prm, Verifier):
                prm = shard_weights(prm, mesh)
        self.task, self.lm, self.tokenizer = task, lm, tokenizer
        delimiters = () if task.step_delimiter is None else (task.step_delimiter,)
        self.stops = stop_table(tokenizer, delimiters, eos_ids)
        self.token_bytes = jax.device_get(self.stops.token_bytes)
        self.token_pieces = readout.token_pieces(self.token_bytes)
        self.verifier = prm if isinstance(prm, Verifier) else None
        self.prm = prm.build(self.stops.token_bytes) if self.verifier else prm
        self.prm_prompt, self.prm_tokenizer = prm_prompt, prm_tokenizer or tokenizer
        self.hidden_at_end = None if self.verifier else jnp.asarray(
            prompting.hidden_at_end(self.token_bytes, tuple(jax.device_get(self.stops.eos_ids).tolist()))
        )
        if aggregation is not None and aggregation not in readout.AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {readout.AGGREGATIONS}, got {aggregation!r}")
        self.aggregation, self.batch_rows, self.memory_bytes = aggregation, batch_rows, memory_bytes
        self.mesh = mesh
        self.compiled = CompiledRuns(self._program)

    @property
    def compile_seconds(self) -> float:
        return self.compiled.compile_seconds

    @property
    def trace_tokens(self) -> int:
        """The most tokens a trace can hold: its budget, or every step at its cap."""
        task = self.task
        cap = task.max_steps * task.params.max_tokens
        return cap if task.max_trace_tokens is None else min(cap, task.max_trace_tokens)

    def _program(self, spec: SearchSpec):
        task = self.task
        paging = None
        if spec.cache == "paged":
            paging = Paging(task.max_steps, task.params.max_tokens, task.max_trace_tokens, pages=spec.cache_pages)
        return reasoning_program(spec.sampling(task.params), self.stops, task.max_steps, spec.form, spec.beta,
                                 self._is_final(), max_trace_tokens=task.max_trace_tokens,
                                 hidden_at_end=self.hidden_at_end, paging=paging)

    def _is_final(self) -> Callable[[jax.Array], jax.Array] | None:
        """A jittable test 'the step starts with the task's final prefix', or None."""
        if self.task.final_prefix is None:
            return None
        prefix = jnp.asarray(self.tokenizer.encode(self.task.final_prefix, add_special_tokens=False), jnp.int32)
        return lambda step: jnp.all(step[:, : prefix.shape[0]] == prefix, axis=1)

    def _check_context(self, model: Any, prompt_width: int, extra: int, which: str) -> None:
        """InputError unless the longest prompt plus the trace fit the model's context length."""
        limit = model.config.max_position_embeddings
        need = prompt_width + self.trace_tokens + extra
        if need > limit:
            raise InputError(
                f"the {which}'s context is {limit} tokens, but the longest prompt ({prompt_width} tokens) plus the "
                f"trace ({self.trace_tokens} tokens: --max-steps x --max-step-tokens, or --max-tokens) need {need}; "
                "lower --max-tokens or --max-steps"
            )

    def solve(
        self,
        problems: Sequence[Any],
        spec: SearchSpec,
        seed: int = 0,
    ) -> list[dict]:
        """Run `spec` on every problem; returns one output record per problem, in order."""
        return self.solve_many(problems, spec, (spec.method,), seed)[spec.method]

    def solve_many(
        self,
        problems: Sequence[Any],
        spec: SearchSpec,
        methods: Sequence[str],
        seed: int = 0,
    ) -> dict[str, list[dict]]:
        """One run of `spec`, read out by the selection rule of each of `methods`.

        Methods that sample the same way (bon, wbon, majority, wmajority) thus
        share their samples, which makes their comparison paired.
        """
        out: dict[str, list[dict]] = {m: [] for m in methods}
        for records in self.records(problems, spec, methods, seed):
            for method in methods:
                out[method] += records[method]
        return out

    def records(
        self, problems: Sequence[Any], spec: SearchSpec, methods: Sequence[str], seed: int = 0
    ) -> Iterator[dict[str, list[dict]]]:
        """`solve_many`'s records run by run, in problem order, as each run ends: a caller can keep them
        (write them out) before the next run, which may fail."""
        for chunk, result, seconds in self.runs(problems, spec, seed):
            out: dict[str, list[dict]] = {m: [] for m in methods}
            for row, index in enumerate(chunk):
                for method in methods:
                    record = readout.answer_record(
                        self.task, problems[index], self.token_pieces, result, row, method, self.aggregation
                    )
                    record.update(particles=spec.particles, seconds=seconds)
                    out[method].append(record)
            yield out

    def runs(
        self, problems: Sequence[Any], spec: SearchSpec, seed: int = 0
    ) -> Iterator[tuple[list[int], SearchResult, float]]:
        """Run `spec` over `problems` in fixed-shape chunks (one compile per bucket).

        Yields `(indices, result, seconds)`: the problems of the chunk, the run's result on the
        host (row r belongs to problem `indices[r]`), and the wall seconds per problem
        (compilation excluded).
        """
        spec, chunks = self._chunks(problems, spec, seed)
        for chunk, args in chunks:
            run = self.compiled.get(spec, args)
            began = time.perf_counter()
            result = to_host(run(*args))
            if result.pool is not None and result.pool.any():
                raise PoolExhausted(self._program(spec).pool.exhausted_message())
            yield chunk, result, (time.perf_counter() - began) / len(chunk)

    def prefetch(self, problems: Sequence[Any], spec: SearchSpec, seed: int = 0) -> None:
        """Start compiling what `runs(problems, spec)` will run, in the background, and return: a caller
        with several specs to run prefetches the next while the current one runs."""
        spec, chunks = self._chunks(problems, spec, seed)
        for _, args in chunks:
            self.compiled.prefetch(spec, args)

    def _chunks(
        self, problems: Sequence[Any], spec: SearchSpec, seed: int
    ) -> tuple[SearchSpec, Iterator[tuple[list[int], tuple]]]:
        """The spec to run (with the solver's mesh, and as the memory plan sizes it) and each chunk's
        problems and run arguments."""
        if self.mesh is not None and spec.mesh is None:
            spec = dataclasses.replace(spec, mesh=self.mesh)
        tokens, mask = batching.encode_prompts(self.tokenizer, [self.task.prompt(p) for p in problems])
        self._check_context(self.lm, int(mask.sum(-1).max()), 0, "LM")
        prm_tokens = prm_mask = None
        if self.verifier is None:
            prm_tokens, prm_mask = tokens, mask
            if self.prm_prompt is not None:
                texts = [self.prm_prompt(p) for p in problems]
                prm_tokens, prm_mask = batching.encode_prompts(self.prm_tokenizer, texts)
            self._check_context(self.prm.model, int(prm_mask.sum(-1).max()), self.task.max_steps, "PRM")

        def arguments(chunk: list[int], padded: list[int]) -> tuple:
            if self.verifier is None:
                judge = PRMInput(jnp.asarray(prm_tokens[padded]), jnp.asarray(prm_mask[padded]))
            else:
                judge = self._contexts([problems[i] for i in padded])
            keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), jnp.asarray(padded))  # per problem
            return keys, jnp.asarray(tokens[padded]), jnp.asarray(mask[padded]), judge, self.lm, self.prm

        rows = self.batch_rows
        if self.memory_bytes is not None:
            rows, spec = self.plan_rows(spec, len(problems), lambda size: arguments([0], [0] * size))
        chunks = batching.chunks(len(problems), spec.particles, rows)
        return spec, ((chunk, arguments(chunk, padded)) for chunk, padded in chunks)

    def plan_rows(
        self, spec: SearchSpec, num_problems: int, arguments: Callable[[int], tuple]
    ) -> tuple[int, SearchSpec]:
        """Particle rows per run under `memory_bytes`, and the spec to run: problems per run doubled while the
        compiled program (`arguments(size)`'s shapes) fits, up to every problem. When one problem does not fit
        with paged caches, their pools are halved until it does (down to one particle's trace: every particle
        then shares every page), betting on shared pages; a run that outgrows them raises `PoolExhausted`.
        InputError if one problem does not fit at all."""
        size, fits = 1, 0
        while True:
            need = peak_bytes(self.compiled.get(spec, arguments(size)))
            LOGGER.info(f"memory plan: {size} problem(s) per run need {need} bytes ({need / 2**30:.3f} GiB)")
            if need > self.memory_bytes:
                if size == 1 and spec.cache == "paged":
                    paging = self._program(spec).pool
                    full = spec.cache_pages or paging.default_pages(spec.held_traces)
                    if full // 2 >= paging.default_pages(1):
                        spec = dataclasses.replace(spec, cache_pages=full // 2)
                        LOGGER.info(f"memory plan: paged caches of {full // 2} pages per pool")
                        continue
                break
            fits = size
            if size >= num_problems:
                break
            size *= 2
        if not fits:
            raise InputError(
                f"one problem at {spec.particles} particles needs {need / 2**30:.2f} GiB (weights, caches and "
                f"temporaries of the compiled run), more than --memory {self.memory_bytes / 2**30:g} GiB; lower "
                "--particles or --max-tokens, or raise --memory"
            )
        return fits * spec.particles, spec

    def particle_texts(self, result: SearchResult, row: int) -> list[list[str]]:
        """Every particle's steps, as text, for row `row` of a result from `runs`."""
        return readout.particle_texts(self.token_pieces, result, row)

    def _contexts(self, problems: list[Any]) -> Any:
        """The verifier's initial judge state of each problem, stacked."""
        contexts = [self.verifier.context(p) for p in problems]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *contexts)


def problem_run(engine: Callable[..., SearchResult]) -> Callable[..., SearchResult]:
    """One problem's run as the Solver compiles it (vmapped over problems): prefill the prompt into the LM's
    (and a model PRM's) caches, search, and return the traces without the models' states: the readout needs
    their text, rewards and weights, and a program whose result holds no KV cache keeps one copy of it."""

    def run(rng_key, tokens, mask, judge, lm, prm):
        # The prompt's caches hold the prompt alone: particles keep their steps in their own.
        lm_state = prefill(lm, tokens, mask, tokens.shape[-1])
        if isinstance(judge, PRMInput):
            judge = prm.start(judge.tokens, judge.mask, judge.tokens.shape[-1])
        result = engine(rng_key, lm_state, judge, lm, prm)
        pool = None if result.pool is None else result.pool.exhausted  # whether the pages ran out, not the pages
        return result._replace(particles=result.particles._replace(lm=None, judge=None, pages=None), pool=pool)

    return run


def peak_bytes(compiled: Any) -> int:
    """Device memory a compiled program needs by XLA's own accounting: its arguments (weights
    included), outputs and temporaries, less the buffers it aliases."""
    stats = compiled.memory_analysis()
    return (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
            - stats.alias_size_in_bytes)


def to_host(tree: Any) -> Any:
    """A run's result as numpy on this host; arrays sharded over several processes (multi-host
    runs under ``jax.distributed``) are gathered from all of them."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)
