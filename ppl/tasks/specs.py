"""The shipped tasks as `ppl.solver.Task`s: prompts, answers, checks, oracles."""

from __future__ import annotations

from models.sampling import SamplingParams
from ppl.solver import Task
from ppl.tasks import arithmetic, countdown
from ppl.tasks.oracles import ArithmeticOracle, CountdownOracle


def _countdown_answer(problem: countdown.Problem, steps: list[str]) -> tuple[str, ...] | None:
    """A solution's class: its steps as a set (the same solution in another order is the same answer)."""
    if len(steps) != 3 or any(countdown.parse_step(s) is None for s in steps):
        return None
    return tuple(sorted(steps))


def _arithmetic_answer(expression: str, steps: list[str]) -> int | None:
    return arithmetic.answer_from_trace("\n".join(steps) + "\n")


COUNTDOWN = Task(
    name="countdown",
    max_steps=3,
    params=SamplingParams(temperature=1.0, max_tokens=12),
    prompt=countdown.prompt,
    answer=_countdown_answer,
    correct=countdown.verify,
    oracle=CountdownOracle,
    oracle_judge=CountdownOracle.judge,
    record=lambda p: {"numbers": list(p.numbers), "target": p.target},
)

ARITHMETIC = Task(
    name="arithmetic",
    max_steps=5,
    params=SamplingParams(temperature=1.0, max_tokens=12),
    prompt=arithmetic.prompt,
    answer=_arithmetic_answer,
    correct=lambda e, steps: _arithmetic_answer(e, steps) == arithmetic.evaluate(e),
    oracle=ArithmeticOracle,
    oracle_judge=ArithmeticOracle.judge,
    final_prefix="answer",
    record=lambda e: {"expression": e},
)

TASKS = {task.name: task for task in (COUNTDOWN, ARITHMETIC)}
