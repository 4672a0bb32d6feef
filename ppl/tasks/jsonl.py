"""Reading problem files: one JSON object per line, one-line errors that name the line."""

from __future__ import annotations

from collections.abc import Callable
from os import PathLike
from typing import TypeVar

from ppl.errors import InputError

T = TypeVar("T")


def read_jsonl(path: str | PathLike, parse_line: Callable[[str], T]) -> list[T]:
    """`parse_line` applied to every non-blank line of `path`.

    Raises InputError with a one-line message: `line 3: ...` for a bad line (from the
    InputError `parse_line` raises), or naming the file when it is missing, unreadable or empty.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read ({err.__class__.__name__})") from None
    problems = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            problems.append(parse_line(line))
        except InputError as err:
            raise InputError(f"line {number}: {err}") from None
    if not problems:
        raise InputError(f"{path}: no problems (empty file)")
    return problems
