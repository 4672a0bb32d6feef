"""Countdown: combine four numbers with + - * / in three steps to hit a target.

Distribution: four numbers, each uniform in 1..25, and a target uniform in
10..100; the pair is redrawn jointly until the target is reachable.

Rules: a step takes two numbers of the current pool (a multiset) and puts
back `c = a op b`; every `c` must be a positive integer (subtraction only when
the result is > 0, division only when exact). After three steps one number
remains; the problem is solved when it equals the target.

Text the LM is trained on (one step per line, "\\n" ends a step, the
tokenizer's EOS follows the third step; there is no answer line because the
last step already states the result). Each step carries the numbers it leaves
in play, sorted, so that judging a step (is the target still reachable?) and
proposing the next one are local questions:

    prompt:  "countdown 3 7 12 25 -> 34\\n"
    trace:   "7*3=21 (12 21 25)\\n25+21=46 (12 46)\\n46-12=34 (34)\\n"   then <eos>

A step is written `a+b=c`, `a-b=c`, `a*b=c` or `a/b=c`: decimal integers
without signs, spaces or leading zeros, optionally followed by one space and
the pool in parentheses, numbers separated by single spaces in any order. A
written pool must be the true pool after the step (as a multiset); a step
without one is judged on its arithmetic alone. Generated solutions put the
larger operand first; `verify` accepts either order wherever the arithmetic is
valid.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from os import PathLike
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from models.sampling import SamplingParams
from ppl.errors import InputError
from ppl.tasks import jax_verifiers
from ppl.tasks.jsonl import read_jsonl
from ppl.tasks.task import Task, Training, Verifier

NUM_NUMBERS = 4
NUMBER_RANGE = (1, 25)
TARGET_RANGE = (10, 100)
OPS = "+-*/"

_NUMBER = r"(?:0|[1-9]\d*)"
_STEP = re.compile(rf"({_NUMBER})([-+*/])({_NUMBER})=({_NUMBER})(?: \(({_NUMBER}(?: {_NUMBER})*)\))?")

Pool = tuple[int, ...]


class Problem(NamedTuple):
    """A Countdown instance: the starting numbers and the target."""

    numbers: tuple[int, ...]
    target: int


class Step(NamedTuple):
    """One written step `a op b = c` (not necessarily correct arithmetic), and the pool it says it leaves."""

    a: int
    op: str
    b: int
    c: int
    pool: tuple[int, ...] | None = None  # the numbers written in parentheses after the step, if any

    @property
    def text(self) -> str:
        return f"{self.a}{self.op}{self.b}={self.c}"


def with_pool(step: Step, pool: Sequence[int]) -> str:
    """The step's text followed by the pool it leaves, sorted: `7*3=21 (12 21 25)`."""
    return f"{step.text} ({' '.join(map(str, sorted(pool)))})"


def combine(a: int, op: str, b: int) -> int | None:
    """The value of `a op b` under the rules, or None where the rules forbid it."""
    if op == "+":
        return a + b
    if op == "*":
        return a * b
    if op == "-":
        return a - b if a > b else None
    if op == "/":
        return a // b if b > 0 and a % b == 0 else None
    raise ValueError(f"unknown operation {op!r}")


def parse_step(text: str) -> Step | None:
    """Read one step line (surrounding whitespace ignored); None when malformed."""
    m = _STEP.fullmatch(text.strip())
    if m is None:
        return None
    pool = None if m[5] is None else tuple(int(x) for x in m[5].split(" "))
    return Step(int(m[1]), m[2], int(m[3]), int(m[4]), pool)


def apply_step(pool: Sequence[int], step: Step | str) -> Pool | None:
    """The sorted pool after `step`, or None if it is malformed, uses absent numbers, is wrong or writes
    a pool that is not the one it leaves."""
    if isinstance(step, str):
        step = parse_step(step)
        if step is None:
            return None
    rest = list(pool)
    for operand in (step.a, step.b):
        if operand not in rest:
            return None
        rest.remove(operand)
    c = combine(step.a, step.op, step.b)
    if c is None or c != step.c or c <= 0:
        return None
    after = tuple(sorted((*rest, c)))
    if step.pool is not None and tuple(sorted(step.pool)) != after:
        return None
    return after


def _outcomes(a: int, b: int) -> list[tuple[str, int]]:
    """The legal `(op, c)` for operands `a >= b`."""
    out = [("+", a + b)]
    if a > b:
        out.append(("-", a - b))
    out.append(("*", a * b))
    if a % b == 0:
        out.append(("/", a // b))
    return out


def _splits(pool: Sequence[int]) -> dict[tuple[int, int], tuple[int, ...]]:
    """Each distinct pair `(a, b)`, `a >= b`, of `pool` mapped to the numbers left beside it."""
    values = sorted(pool, reverse=True)
    splits: dict[tuple[int, int], tuple[int, ...]] = {}
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            splits.setdefault((values[i], values[j]), (*values[:i], *values[i + 1 : j], *values[j + 1 :]))
    return splits


def valid_steps(pool: Sequence[int]) -> list[Step]:
    """Every distinct legal step from `pool`, larger operand first, in a fixed order."""
    return [Step(a, op, b, c) for a, b in _splits(pool) for op, c in _outcomes(a, b)]


def _reduce(pool: Pool) -> set[int]:
    """Every number `pool` can be reduced to (plain recursion: cheap for 3 numbers, ~1 ms for 4)."""
    if len(pool) == 1:
        return set(pool)
    if len(pool) == 2:
        return {c for _, c in _outcomes(max(pool), min(pool))}
    out: set[int] = set()
    for (a, b), rest in _splits(pool).items():
        for _, c in _outcomes(a, b):
            out |= _reduce((*rest, c))
    return out


@lru_cache(maxsize=2**12)
def _finals(pool: Pool) -> frozenset[int]:
    """Memoised `_reduce` on a sorted pool (a 4-number pool has ~130 finals, a 3-number one < 50)."""
    return frozenset(_reduce(pool))


def solvable(pool: Sequence[int], target: int) -> bool:
    """Whether the pool can be reduced, step by step, to the single number `target`."""
    return len(pool) > 0 and target in _finals(tuple(sorted(pool)))


def solutions(problem: Problem) -> list[list[str]]:
    """All distinct solutions (larger operand first), each a list of step texts with their pools."""

    def search(pool: Pool) -> list[list[str]]:
        if len(pool) == 1:
            return [[]] if pool[0] == problem.target else []
        found = []
        for step in valid_steps(pool):
            child = apply_step(pool, step)
            if problem.target in _finals(child):
                found.extend([with_pool(step, child), *rest] for rest in search(child))
        return found

    return search(tuple(sorted(problem.numbers)))


def verify(problem: Problem, steps: Sequence[str]) -> bool:
    """Exact check: `len(numbers) - 1` legal steps ending at the target."""
    if len(steps) != len(problem.numbers) - 1:
        return False
    pool: Pool | None = tuple(problem.numbers)
    for text in steps:
        pool = apply_step(pool, text)
        if pool is None:
            return False
    return pool == (problem.target,)


def step_labels(problem: Problem, steps: Sequence[str]) -> list[int]:
    """PRM labels: 1 while every step so far is legal and the target is still reachable, else 0."""
    labels = []
    pool: Pool | None = tuple(problem.numbers)
    for text in steps:
        pool = None if pool is None else apply_step(pool, text)
        labels.append(int(pool is not None and solvable(pool, problem.target)))
    return labels


def prompt(problem: Problem) -> str:
    """The prompt text: `countdown 3 7 12 25 -> 34` and a newline."""
    return f"countdown {' '.join(map(str, problem.numbers))} -> {problem.target}\n"


def format_solution(steps: Sequence[str]) -> str:
    """The trace text: one step per line, each ended by a newline (EOS is the tokenizer's)."""
    return "".join(f"{s}\n" for s in steps)


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return np.random.default_rng(rng)


def generate(rng: np.random.Generator | int | None, n: int) -> list[Problem]:
    """`n` problems from the distribution above (joint rejection on reachability)."""
    rng = _rng(rng)
    problems: list[Problem] = []
    while len(problems) < n:
        numbers = tuple(int(x) for x in rng.integers(NUMBER_RANGE[0], NUMBER_RANGE[1] + 1, NUM_NUMBERS))
        target = int(rng.integers(TARGET_RANGE[0], TARGET_RANGE[1] + 1))
        if solvable(numbers, target):
            problems.append(Problem(numbers, target))
    return problems


def miswrite(value: int, rng: np.random.Generator) -> int:
    """A plausible wrong copy of `value`: one digit changed (multi-digit, half the time) or off by one."""
    digits = str(value)
    if len(digits) > 1 and rng.random() < 0.5:
        i = int(rng.integers(len(digits)))
        choices = [d for d in "0123456789" if d != digits[i] and not (i == 0 and d == "0")]
        return int(digits[:i] + str(rng.choice(choices)) + digits[i + 1 :])
    return value + 1 if value == 0 or rng.random() < 0.5 else value - 1


def _illegal(pool: Sequence[int], rng: np.random.Generator) -> Step:
    """A step with correct arithmetic but one operand not available in the pool (or used twice)."""
    keep = int(rng.choice(pool))
    rest = list(pool)
    rest.remove(keep)
    absent = [v for v in range(1, max(NUMBER_RANGE[1], *pool) + 1) if v not in rest]
    other = int(rng.choice(absent))
    a, b = max(keep, other), min(keep, other)
    legal = [Step(a, op, b, c) for op in OPS if (c := combine(a, op, b)) is not None]
    return legal[int(rng.integers(len(legal)))]


def _written_pool(pool: list[int], step: Step) -> list[int]:
    """The pool as the writer of `step` believes it: operands removed where present, `c` added."""
    rest = list(pool)
    for operand in (step.a, step.b):
        if operand in rest:
            rest.remove(operand)
    return [*rest, step.c]


def corrupted_trace(
    problem: Problem,
    rng: np.random.Generator | int | None,
    p_wrong: float = 0.3,
    p_slip: float = 0.15,
    p_illegal: float = 0.1,
) -> list[str]:
    """A noisy trace of `len(numbers) - 1` steps for PRM training; label it with `step_labels`.

    Each step is, independently: an arithmetic slip (`p_slip`), a step using a
    number not in the pool (`p_illegal`), a uniformly random legal step
    (`p_wrong`, often a dead end), or else a legal step that keeps the target
    reachable (a random legal one once none does). Later steps continue from
    the pool the writer believes it has, as an LM carrying its error would.
    """
    rng = _rng(rng)
    pool = list(problem.numbers)
    steps = []
    for _ in range(len(problem.numbers) - 1):
        legal = valid_steps(pool)
        good = [s for s in legal if solvable(apply_step(pool, s), problem.target)]
        u = rng.random()
        if u < p_slip:
            slipped = legal[int(rng.integers(len(legal)))]
            step = slipped._replace(c=miswrite(slipped.c, rng) or slipped.c + 1)  # stays positive
        elif u < p_slip + p_illegal:
            step = _illegal(pool, rng)
        elif u < p_slip + p_illegal + p_wrong or not good:
            step = legal[int(rng.integers(len(legal)))]
        else:
            step = good[int(rng.integers(len(good)))]
        pool = _written_pool(pool, step)
        steps.append(with_pool(step, pool))
    return steps


def _problem_from_json(line: str) -> Problem:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(f"not valid JSON ({err.msg})") from None
    if not isinstance(record, dict) or "numbers" not in record or "target" not in record:
        raise InputError('expected an object with "numbers" and "target"')
    numbers, target = record["numbers"], record["target"]
    if not isinstance(numbers, list) or len(numbers) != NUM_NUMBERS:
        raise InputError(f'"numbers" must be a list of {NUM_NUMBERS} integers')
    for value in (*numbers, target):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InputError(f"{value!r} is not a positive integer")
    if not solvable(numbers, target):
        raise InputError(f"target {target} is not reachable from {numbers}")
    return Problem(tuple(numbers), target)


def read_problems(path: str | PathLike) -> list[Problem]:
    """Problems from a JSONL file of `{"numbers": [4 ints], "target": int}` (blank lines skipped).

    Raises InputError with a one-line message (`line 3: ...` for a bad line).
    """
    return read_jsonl(path, _problem_from_json)


class CountdownVerifier(NamedTuple):
    """P(solvable | pool after the step): 1 iff the step is legal and the target stays reachable."""

    token_bytes: jax.Array

    @staticmethod
    def context(problem: Problem) -> tuple[jax.Array, jax.Array]:
        return jnp.asarray([problem.numbers], jnp.int32), jnp.asarray([problem.target], jnp.int32)

    def score_step(self, judge, tokens, mask):
        pool, target = judge
        check = jax.vmap(jax_verifiers.countdown_step_reward, in_axes=(0, 0, 0, None))
        reward, pool, _ = check(pool, target, tokens, self.token_bytes)
        return reward, (pool, target)


def _answer(problem: Problem, steps: list[str]) -> tuple[str, ...] | None:
    """A solution's class: its steps without their pools, as a set (the same solution in another order is the
    same answer)."""
    parsed = [parse_step(s) for s in steps]
    if len(steps) != NUM_NUMBERS - 1 or any(step is None for step in parsed):
        return None
    return tuple(sorted(step.text for step in parsed))


TASK = Task(
    name="countdown",
    generate=generate,
    read=read_problems,
    prompt=prompt,
    answer=_answer,
    correct=verify,
    record=lambda p: {"numbers": list(p.numbers), "target": p.target},
    max_steps=NUM_NUMBERS - 1,
    params=SamplingParams(temperature=1.0, max_tokens=20),
    verifier=Verifier(CountdownVerifier, CountdownVerifier.context),
    training=Training(solutions=solutions, step_labels=step_labels, corrupted=corrupted_trace),
)
