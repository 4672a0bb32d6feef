"""The `Task` protocol: what every command, the demo, training and the benchmarks know of a task.

A task is one module in `ppl/tasks` that defines `TASK = Task(...)`, plus one line in the
registry `ppl.tasks.TASKS`. Problems are whatever the task's module makes them (a NamedTuple,
a string); nothing outside the module looks inside one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Sequence
from os import PathLike
from typing import Any, NamedTuple

import jax
import numpy as np

from models.sampling import SamplingParams

EVAL_SEED = 1000  # held-out problems: `task.generate(EVAL_SEED, n)`; training never draws from this seed

Problem = Any
Steps = list[str]  # a trace: the text of each step, without its delimiter


class Verifier(NamedTuple):
    """A task's exact step checker, used in place of a model PRM (rewards 0 or 1).

    `build(token_bytes)` is the PRM: `score_step(judge, tokens [1, T], mask) -> (reward [1], judge)`,
    reading token ids through the tokenizer's byte table (`models.sampling.StopTable.token_bytes`);
    `context(problem)` is its initial judge state for one problem (the facts the checker needs).
    """

    build: Callable[[jax.Array], Any]
    context: Callable[[Problem], Any]


class Training(NamedTuple):
    """What the shipped-model recipe (`ppl.train`) needs of a task with known solutions."""

    solutions: Callable[[Problem], list[Steps]]  # every correct trace (training draws one)
    step_labels: Callable[[Problem, Sequence[str]], list[int]]  # the exact 0/1 label of each step
    corrupted: Callable[[Problem, np.random.Generator], Steps]  # a trace with realistic slips


@dataclasses.dataclass(frozen=True)
class Task:
    """A task: its problems, how to prompt for them, and how to read and check a trace."""

    name: str
    read: Callable[[str | PathLike], list[Problem]]  # a JSONL file; one-line InputError naming a bad line
    prompt: Callable[[Problem], str]  # the LM's prompt text (special tokens included, e.g. a chat template's)
    answer: Callable[[Problem, Steps], Hashable | None]  # the trace's answer (None: no answer)
    correct: Callable[[Problem, Steps], bool | None]  # None: the problem has no gold answer
    record: Callable[[Problem], dict]  # the problem's fields in an output line
    max_steps: int
    params: SamplingParams  # how a step is sampled (temperature, token cap)
    generate: Callable[[np.random.Generator | int | None, int], list[Problem]] | None = None  # (seed, n) -> problems
    step_delimiter: str | None = "\n"  # a step ends at this text (or at EOS); None: at the token cap
    final_prefix: str | None = None  # a step starting with this text ends the trace (e.g. "answer")
    max_trace_tokens: int | None = None  # the whole trace's token budget (None: max_steps x the step cap)
    # Answers -> the answer class of each (equal classes vote together); None: answers are their own class.
    classes: Callable[[Sequence[Hashable | None]], list[Hashable | None]] | None = None
    verifier: Verifier | None = None  # an exact checker, if the task has one
    training: Training | None = None  # solutions and labels, if the task can train the shipped models
    eval_seed: int = EVAL_SEED
