"""Free-text math: MATH500, GSM8K and AIME lines, or plain prompts, answered in the model's own words.

Unlike the shipped tasks this one has no generator and no exact step checker: problems come from the
user's JSONL file, the answer is extracted from the trace (the last `\\boxed{}`, `####`, "the answer
is"), answers vote together when math-verify finds them equivalent, and a trace is correct when its
answer is equivalent to the gold (`ppl.grading`). `math_task` builds the `Task` for one run: its
prompt (usually the LM's chat template, `ppl.prompting.chat_prompt`) and its step settings.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Hashable, Sequence
from os import PathLike
from typing import NamedTuple

from models.sampling import SamplingParams
from ppl import grading
from ppl.errors import InputError
from ppl.tasks.jsonl import read_jsonl
from ppl.tasks.task import Task


class MathProblem(NamedTuple):
    question: str
    gold: str | None  # the gold answer as `grading.equivalent` compares it; None for a plain prompt
    fields: dict  # the input line's other fields (its gold under "gold"), kept in the output line


def parse_line(line: str, question_field: str | None = None, answer_field: str | None = None) -> MathProblem:
    """One input line: MATH500 (`problem`, `answer`), GSM8K (`question`, `answer` with `#### gold`),
    AIME (`problem`, integer `answer`), `{"prompt": ...}` with no gold, or the fields named."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(f"not valid JSON ({err.msg})") from None
    if not isinstance(record, dict):
        raise InputError("expected a JSON object")
    if question_field is None:
        question_field = next((f for f in ("problem", "question", "prompt") if f in record), None)
        if question_field is None:
            raise InputError('expected a "problem" (MATH500, AIME), "question" (GSM8K) or "prompt" field '
                             "(or name yours with --question-field)")
    elif question_field not in record:
        raise InputError(f"no {question_field!r} field")
    question = record[question_field]
    if not isinstance(question, str) or not question.strip():
        raise InputError(f"{question_field!r} must be a non-empty string, got {question!r}")
    answer_field = answer_field or "answer"
    fields = {k: v for k, v in record.items() if k != answer_field}
    if answer_field not in record:
        return MathProblem(question, None, fields)
    answer = record[answer_field]
    if isinstance(answer, str) and "####" in answer:
        source = "gsm8k"
    elif isinstance(answer, int) and not isinstance(answer, bool):
        source = "aime"
    else:
        source = "math500"
    fields["gold"] = answer
    return MathProblem(question, grading.gold_answer(answer, source), fields)


def read_problems(
    path: str | PathLike, question_field: str | None = None, answer_field: str | None = None
) -> list[MathProblem]:
    return read_jsonl(path, functools.partial(parse_line, question_field=question_field, answer_field=answer_field))


def response(steps: Sequence[str]) -> str:
    """The trace as one response: its steps joined by blank lines."""
    return "\n\n".join(steps)


def _answer(problem: MathProblem, steps: Sequence[str]) -> str | None:
    return grading.extract_answer(response(steps))


def _correct(problem: MathProblem, steps: Sequence[str]) -> bool | None:
    return None if problem.gold is None else grading.equivalent(problem.gold, _answer(problem, steps))


def answer_classes(answers: Sequence[Hashable | None]) -> list[Hashable | None]:
    """Each answer's class, named by its first member: equivalent answers (math-verify) share one;
    an answer math-verify cannot parse is a class of its own string."""
    numbers = grading.answer_classes(answers)
    first: dict[int, Hashable] = {}
    for answer, number in zip(answers, numbers, strict=True):
        if number is not None:
            first.setdefault(number, answer)
    return [answer if number is None else first[number] for answer, number in zip(answers, numbers, strict=True)]


def math_task(
    prompt: Callable[[str], str],
    max_steps: int,
    params: SamplingParams,
    step_delimiter: str | None = "\n\n",
    max_trace_tokens: int | None = None,
    question_field: str | None = None,
    answer_field: str | None = None,
) -> Task:
    """The free-text math task: `prompt(question)` is the LM's prompt text; a step ends at
    `step_delimiter` (None: after `params.max_tokens` tokens), a trace after `max_steps` steps or
    `max_trace_tokens` tokens."""
    return Task(
        name="math",
        read=functools.partial(read_problems, question_field=question_field, answer_field=answer_field),
        prompt=lambda p: prompt(p.question),
        answer=_answer,
        correct=_correct,
        record=lambda p: dict(p.fields),
        max_steps=max_steps,
        params=params,
        step_delimiter=step_delimiter,
        max_trace_tokens=max_trace_tokens,
        classes=answer_classes,
    )
