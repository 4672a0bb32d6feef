"""Grading free-text math answers as the field does: extract the final answer, compare with math-verify.

`extract_answer` takes a model's final answer out of its response (the last `\\boxed{}`, else GSM8K's
`#### X`, else "the answer is X"); `gold_answer` normalises a data set's gold; `equivalent` asks
math-verify whether the two are the same mathematical object (`\\frac{1}{2}` and `0.5`, `x = 5` and `5`,
`(1, 2]` but not `[1, 2]`); `answer_classes` groups answers by equivalence for voting; `grade_record`
grades one JSONL line.

math-verify bounds each parse and comparison with `signal.alarm`, which only works in the main thread
(elsewhere it raises). So the main thread grades with its timeouts (`TIMEOUT_SECONDS`, which stop answers
such as `9^{9^{9^9}}` that sympy would evaluate for ever) and any other thread grades with them disabled:
there, the caller bounds the time. Pure Python: math-verify (and sympy) are imported on first use.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from functools import cache

from ppl.errors import InputError

# Seconds math-verify may spend on one parse or one comparison (main thread only, see above).
TIMEOUT_SECONDS = 5

# Data sets whose golds `gold_answer` knows, by the `source` name that selects them.
SOURCES = ("gsm8k", "math500", "aime")
_SOURCE_ALIASES = {"math": "math500", "aime24": "aime", "aime25": "aime"}

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_ANSWER_IS = re.compile(r"answer\s+is\b\s*:?[ \t]*(.*)", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?=\s|$)")
_AIME = re.compile(r"[+-]?\d+")


def extract_answer(text: str) -> str | None:
    """The final answer in a model's response, or None when it gives none.

    The content of the last `\\boxed{...}` or `\\fbox{...}` (braces balanced, so `\\boxed{\\frac{1}{2}}`
    gives `\\frac{1}{2}`); else the text after the last GSM8K `####`; else X in the last "the (final)
    answer is X", cut at the end of its sentence and stripped of `$` and a trailing period.
    """
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    if "####" in text:
        answer = _clean(text.rsplit("####", 1)[1].strip().split("\n", 1)[0])
        if answer:
            return answer
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        answer = matches[-1].group(1)
        end = _SENTENCE_END.search(answer)
        answer = _clean(answer[: end.start()] if end else answer)
        if answer:
            return answer
    return None


def gold_answer(record_answer: str | int | float, source: str) -> str:
    """A data set's gold answer as a string that `equivalent` compares.

    `source` is one of `SOURCES` (case-insensitive; `math` is MATH500, `aime24`/`aime25` are AIME):
    GSM8K golds are the text after `####` with thousands commas stripped, MATH500 golds are the LaTeX
    string as given, AIME golds are integers (`"042"` gives `"42"`). Raises InputError for an answer
    of the wrong type or an unknown source.
    """
    kind = _source(source)
    if kind is None:
        raise InputError(f"unknown answer source {source!r}: expected one of {', '.join(SOURCES)}")
    if isinstance(record_answer, bool) or not isinstance(record_answer, str | int | float):
        raise InputError(f"answer must be a string or a number, got {record_answer!r}")
    if kind == "aime":
        if isinstance(record_answer, float) and record_answer.is_integer():
            return str(int(record_answer))
        if isinstance(record_answer, int) or (isinstance(record_answer, str)
                                              and _AIME.fullmatch(record_answer.strip())):
            return str(int(record_answer))
        raise InputError(f"an AIME answer must be an integer, got {record_answer!r}")
    text = str(record_answer).strip()
    if kind == "gsm8k":
        text = text.rsplit("####", 1)[-1].strip().replace(",", "")
    return text


def equivalent(gold: str, prediction: str | None) -> bool:
    """Whether `prediction` is the same answer as `gold`, by math-verify (`verify(gold, prediction)`).

    Both are parsed as LaTeX (as if between `$...$`) and as plain expressions. Not symmetric, as
    math-verify is not: the gold comes first. None, an empty or an unparseable prediction is False.
    """
    if prediction is None:
        return False
    return _verify(_parse(gold), _parse(prediction))


def answer_classes(answers: Sequence[str | None]) -> list[int | None]:
    """The equivalence class of each answer, numbered in order of first appearance, for voting.

    An answer joins the first class whose first member it is equivalent to (that member as the gold),
    else starts a new class; None and answers math-verify cannot parse get None. Each distinct string
    is parsed and classified once.
    """
    parsed: list[list] = []  # each class's first member, parsed
    by_text: dict[str, int | None] = {}
    classes: list[int | None] = []
    for answer in answers:
        if answer is None:
            classes.append(None)
            continue
        if answer not in by_text:
            target = _parse(answer)
            if not target:
                by_text[answer] = None
            else:
                index = next((i for i, first in enumerate(parsed) if _verify(first, target)), None)
                if index is None:
                    parsed.append(target)
                    index = len(parsed) - 1
                by_text[answer] = index
        classes.append(by_text[answer])
    return classes


def check_record(record: object, source: str | None = None) -> dict:
    """`record` itself when it is an object with a gold `answer` and a string `response`.

    Raises InputError with a one-line message otherwise, or when its gold is malformed for its source.
    """
    if not isinstance(record, dict) or "answer" not in record or "response" not in record:
        raise InputError('expected an object with "answer" and "response"')
    if not isinstance(record["response"], str):
        raise InputError(f'"response" must be a string, got {record["response"]!r}')
    _record_gold(record, source)
    return record


def grade_record(record: dict, source: str | None = None) -> dict:
    """`record` (a gold `answer`, a model `response`) plus `extracted` (str or None) and `correct` (bool).

    The gold is normalised by `gold_answer` for `source`, else for the record's own `source` field
    when it names one of `SOURCES`; otherwise a gold containing `####` is read as GSM8K's and any
    other is taken as given. Raises InputError for a malformed record (see `check_record`).
    """
    check_record(record, source)
    extracted = extract_answer(record["response"])
    return {**record, "extracted": extracted, "correct": equivalent(_record_gold(record, source), extracted)}


def _record_gold(record: dict, source: str | None) -> str:
    answer = record["answer"]
    if source is None and isinstance(record.get("source"), str) and _source(record["source"]):
        source = record["source"]
    if source is None:
        if isinstance(answer, bool) or not isinstance(answer, str | int | float):
            raise InputError(f'"answer" must be a string or a number, got {answer!r}')
        source = "gsm8k" if isinstance(answer, str) and "####" in answer else "math500"
    return gold_answer(answer, source)


def _source(name: str) -> str | None:
    name = name.strip().lower()
    name = _SOURCE_ALIASES.get(name, name)
    return name if name in SOURCES else None


def _last_boxed(text: str) -> str | None:
    """The argument of the last `\\boxed`/`\\fbox` (`\\boxed{\\boxed{x}}` unwrapped); None if absent or unclosed."""
    argument, match = None, _BOX.search(text)
    while match:  # the last box outside any other box
        argument = _box_argument(text, match.end())
        match = _BOX.search(text, argument[1] if argument else match.end())
    while argument is not None:
        content, _ = argument
        inner = _BOX.match(content)
        argument = _box_argument(content, inner.end()) if inner else None
        if argument is None or argument[1] != len(content):  # not `\boxed{\boxed{...}}`
            return content or None
    return None


def _box_argument(text: str, start: int) -> tuple[str, int] | None:
    """The argument of a box command ending at `start` and the index past it; None if it has none."""
    i = start
    while i < len(text) and text[i] in " \t":
        i += 1
    if i == len(text) or text[i] != "{":  # `\boxed 5`: up to the closing `$` or the end of the line
        if i == start:
            return None
        content = re.split(r"[$\n]", text[i:], maxsplit=1)[0]
        return content.strip(), i + len(content)
    depth, begin = 0, i
    while i < len(text):
        char = text[i]
        if char == "\\":  # `\{`, `\}` and `\\` are not grouping braces
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[begin + 1: i].strip(), i + 1
        i += 1
    return None


def _clean(answer: str) -> str:
    """`answer` without surrounding whitespace, `**`, `$`, `\\(...\\)`, `\\[...\\]` and a trailing period."""
    previous = None
    while answer != previous:
        previous = answer
        answer = answer.strip().strip("*").strip()
        answer = answer.removesuffix(".").strip()
        if len(answer) >= 2 and answer[0] == "$" and answer[-1] == "$":
            answer = answer.strip("$")
        elif answer.count("$") == 1 and (answer[0] == "$" or answer[-1] == "$"):  # `$18`: a currency sign
            answer = answer.strip("$")
        for left, right in (("\\(", "\\)"), ("\\[", "\\]")):
            if answer.startswith(left) and answer.endswith(right):
                answer = answer[len(left): -len(right)]
    return answer


def _timeout() -> int | None:
    """math-verify's signal timeout where signals work (the main thread), else None (disabled)."""
    return TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


def _parse(answer: str) -> list:
    """math-verify's parse of an extracted answer: LaTeX as between `$...$`, else the text as it is."""
    math_verify = _math_verify()
    text = _clean(answer)
    if not text:
        return []
    config = [math_verify.LatexExtractionConfig(), math_verify.ExprExtractionConfig()]
    parsed = math_verify.parse(f"${text}$", extraction_config=config, parsing_timeout=_timeout())
    return parsed or math_verify.parse(text, extraction_config=config, parsing_timeout=_timeout())


def _verify(gold: list, target: list) -> bool:
    if not gold or not target:
        return False
    return bool(_math_verify().verify(gold, target, timeout_seconds=_timeout()))


class _NoTimeoutWarning(logging.Filter):
    """Drops math-verify's one-off warning that its timeout is disabled: off the main thread that is intended."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


@cache
def _math_verify():
    import math_verify

    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_NoTimeoutWarning())
    return math_verify
