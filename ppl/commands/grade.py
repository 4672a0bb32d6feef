"""`ppl grade`: grade a JSONL file of model responses against their gold answers with math-verify."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ppl.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    from ppl.grading import SOURCES

    grade = subparsers.add_parser("grade", help="grade free-text math answers (a JSONL of answer, response)")
    grade.add_argument("input", help='input JSONL, one object a line with a gold "answer" and a model "response"')
    grade.add_argument("--out", required=True, help='output JSONL: each line plus "extracted" and "correct"')
    grade.add_argument("--source", choices=SOURCES,
                       help="how to read the golds (default: each line's own \"source\", else as given)")
    grade.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    grade.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ppl.grading import grade_record
    from ppl.progress import bar
    from ppl.tasks.jsonl import read_jsonl

    out = Path(args.out)
    if out.parent and not out.parent.exists():
        raise InputError(f"output directory {out.parent} does not exist")
    records = read_jsonl(args.input, lambda line: _parse_line(line, args.source))
    graded = []
    with bar(len(records), "grade", args.quiet, unit="line") as progress:
        for record in records:
            graded.append(grade_record(record, source=args.source))
            progress.update()
    with out.open("w") as handle:
        for record in graded:
            handle.write(json.dumps(record) + "\n")
    accuracy = sum(r["correct"] for r in graded) / len(graded)
    missing = sum(r["extracted"] is None for r in graded)
    print(f"graded {len(graded)} lines: accuracy {accuracy:.3f} ({missing} with no extracted answer) -> {out}")
    return 0


def _parse_line(line: str, source: str | None) -> dict:
    from ppl.grading import check_record

    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(f"not valid JSON ({err.msg})") from None
    return check_record(record, source)
