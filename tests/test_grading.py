"""Grading free-text math answers: extraction, gold normalisation, math-verify equivalence, `ppl grade`."""

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ppl import grading
from ppl.commands import grade
from ppl.errors import InputError
from ppl.grading import answer_classes, check_record, equivalent, extract_answer, gold_answer, grade_record


def xfail(gold, prediction, expected, reason):
    """A row where math-verify's verdict is not the mathematically right one (`expected`)."""
    return pytest.param(gold, prediction, expected, marks=pytest.mark.xfail(reason=reason, strict=True))


# (gold, prediction, the mathematically right verdict) where math-verify 0.9.0 gives that verdict ...
AGREED = [
    ("\\frac{1}{2}", "0.5", True),
    ("0.5", "\\frac{1}{2}", True),
    ("\\frac{1}{2}", "\\frac{2}{4}", True),
    ("\\frac{1}{2}", "\\frac{1}{3}", False),
    ("x = 5", "5", True),
    ("5", "x = 5", True),
    ("x=5", "x=-5", False),
    ("y = 2x + 1", "2x+1", True),
    ("(1, 2]", "(1,2]", True),
    ("(1, 2]", "[1,2]", False),
    ("(1, 2]", "(1,2)", False),
    ("x<2", "(-\\infty,2)", True),
    ("1,000", "1000", True),
    ("1000", "1,000", True),
    ("5040", "5,\\!040", True),
    ("-3", "3", False),
    ("3", "-3", False),
    ("\\dfrac{3}{4}", "3/4", True),
    ("\\frac{3}{4}", "0.75", True),
    ("0.75", "75\\%", True),
    ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", True),
    ("2", "\\sqrt{4}", True),
    ("\\sqrt{2}", "1.414", False),
    ("\\pi", "3.14", False),
    ("\\frac{1}{3}", "0.333", False),
    ("\\frac{14}{3}", "4\\frac{2}{3}", True),
    ("-\\frac{1}{2}", "-0.5", True),
    ("9", "9.0", True),
    ("2^{10}", "1024", True),
    ("10", "\\binom{5}{2}", True),
    ("\\text{(B)}", "B", True),
    ("\\text{(B)}", "\\text{(C)}", False),
    ("\\{1,2\\}", "\\{2,1\\}", True),
    ("3, 5", "5, 3", True),
    ("3", "3, 5", False),
    ("\\pm 2", "2", False),
    ("(3,-2)", "(3, -2)", True),
    ("(3,-2)", "(-2,3)", False),
    ("3+2i", "2i+3", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("\\frac{1}{x}", "x^{-1}", True),
    ("\\infty", "\\infty", True),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", True),
    ("12", "12\\text{ cm}", True),
    ("\\$18", "18", True),
    ("18", "$18", True),
    ("\\text{even}", "\\text{odd}", False),
]
# ... and where it does not.
DISAGREED = [
    xfail("(-\\infty,2)", "x<2", True, "verify is not symmetric: a relation does not match a gold interval"),
    xfail("1000", "1\\,000", True, "a thin-space thousands separator is read as a product, 1*0"),
    xfail("\\frac{1}{3}", "0.\\overline{3}", True, "repeating decimals are not understood"),
    xfail("\\frac{\\sqrt{3}}{2}", "\\sin(60^\\circ)", True, "degrees are dropped, so this is sin(60 radians)"),
    xfail("\\frac{\\pi}{3}", "60^\\circ", True, "degrees are dropped, so this is 60"),
    xfail("18", "18 dollars", True, "a bare unit word outside \\text{} is parsed as a product of symbols"),
]
EQUIVALENCE = AGREED + DISAGREED


@pytest.mark.parametrize(("gold", "prediction", "expected"), EQUIVALENCE)
def test_equivalence_table(gold, prediction, expected):
    assert equivalent(gold, prediction) is expected


@pytest.mark.parametrize("prediction", [None, "", "   ", "$$"])
def test_no_prediction_is_not_equivalent(prediction):
    assert equivalent("5", prediction) is False


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("So the answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("First \\boxed{1}, on reflection \\boxed{2}.", "2"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\boxed{\\boxed{5}}", "5"),
        ("\\boxed{5} and \\boxed{\\boxed{6}+1}", "\\boxed{6}+1"),
        ("\\fbox{7}", "7"),
        ("$\\boxed 5$", "5"),
        ("\\boxed{\\begin{pmatrix}1\\\\2\\end{pmatrix}}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
        ("The answer is 3, so \\boxed{4}", "4"),
        ("She pays 5 * 200 = 1000.\n#### 1,000", "1,000"),
        ("#### 12 and #### 13\n", "13"),
        ("The answer is 12.", "12"),
        ("the answer is 3.5", "3.5"),
        ("The answer is: **42**", "42"),
        ("The answer is $18.", "18"),
        ("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.", "\\frac{3}{4}"),
        ("The answer is \\(x = 5\\).", "x = 5"),
        ("I am not sure.", None),
        ("", None),
        ("\\boxed{}", None),
        ("cut off at \\boxed{\\frac{1}{2", None),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


@pytest.mark.parametrize(
    ("answer", "source", "expected"),
    [
        ("Natalia sold 48/2 = 24 clips in May.\n#### 1,072", "gsm8k", "1072"),
        ("#### 72", "GSM8K", "72"),
        (18, "gsm8k", "18"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "math500", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\frac{14}{3}", "math", "\\frac{14}{3}"),
        (33, "aime", "33"),
        ("042", "aime24", "42"),
        (204.0, "aime", "204"),
    ],
)
def test_gold_answer(answer, source, expected):
    assert gold_answer(answer, source) == expected


@pytest.mark.parametrize(("answer", "source", "message"),
                         [("1.5", "aime", "integer"), (True, "aime", "string or a number"), ("1", "mmlu", "unknown")])
def test_gold_answer_rejects(answer, source, message):
    with pytest.raises(InputError, match=message):
        gold_answer(answer, source)


def test_answer_classes_group_by_equivalence_not_string():
    assert answer_classes(["1/2", "0.5", "\\frac{1}{2}", "2", None]) == [0, 0, 0, 1, None]
    assert answer_classes(["(1,2]", "[1,2]", "", "(1, 2]", "x = 2", "2", "(1,2]"]) == [0, 1, None, 0, 2, 2, 0]
    assert answer_classes([]) == []


def test_answer_classes_parse_each_distinct_answer_once(monkeypatch):
    calls = []
    parse = grading._parse
    monkeypatch.setattr(grading, "_parse", lambda answer: calls.append(answer) or parse(answer))
    assert answer_classes(["3", "3", "3.0", "3", "4"]) == [0, 0, 0, 0, 1]
    assert calls == ["3", "3.0", "4"]


def test_grade_record():
    record = {"id": 7, "answer": "\\frac{1}{2}", "response": "Halve it: \\boxed{0.5}"}
    assert grade_record(record) == {**record, "extracted": "0.5", "correct": True}
    assert grade_record({"answer": "#### 1,234", "response": "so #### 1234"})["correct"] is True
    assert grade_record({"answer": 42, "source": "aime", "response": "The answer is 41."})["correct"] is False
    assert grade_record({"answer": "042", "response": "\\boxed{42}"}, source="aime")["correct"] is True
    assert grade_record({"answer": "3", "response": "no idea"}) == {"answer": "3", "response": "no idea",
                                                                    "extracted": None, "correct": False}


@pytest.mark.parametrize(("record", "message"), [({"answer": "1"}, '"response"'), ({"response": "1"}, '"answer"'),
                                                 ([1, 2], '"answer"'), ({"answer": "1", "response": None}, "string"),
                                                 ({"answer": None, "response": "1"}, "number")])
def test_check_record_rejects(record, message):
    with pytest.raises(InputError, match=message):
        check_record(record)


def test_math_verify_timeouts_fail_off_the_main_thread():
    """The pitfall handled here: math-verify's default signal timeouts raise outside the main thread."""
    import math_verify

    with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="thread"):
        pool.submit(math_verify.parse, "$\\frac{1}{2}$").result()


def test_grading_works_off_the_main_thread():
    with ThreadPoolExecutor(4) as pool:
        verdicts = list(pool.map(lambda row: equivalent(row[0], row[1]), AGREED))
        classes = pool.submit(answer_classes, ["1/2", "0.5", "\\frac{1}{2}", "2", None]).result()
        graded = pool.submit(grade_record, {"answer": "1,000", "response": "\\boxed{1000}"}).result()
    assert verdicts == [expected for _, _, expected in AGREED]
    assert classes == [0, 0, 0, 1, None]
    assert graded["correct"] is True


def test_main_thread_grading_is_bounded_by_a_timeout(monkeypatch):
    monkeypatch.setattr(grading, "TIMEOUT_SECONDS", 1)
    began = time.perf_counter()
    assert equivalent("1", "9^{9^{9^{9}}}") is False  # sympy would evaluate this for ever
    assert time.perf_counter() - began < 10


def run_grade(argv):
    parser = argparse.ArgumentParser(prog="ppl")
    grade.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["grade", *argv])
    return args.run(args)


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_grade_command_end_to_end(tmp_path, capsys):
    lines = [
        {"answer": "\\frac{1}{2}", "response": "So \\boxed{0.5}."},
        {"answer": "Reasoning...\n#### 1,000", "response": "She has 1000 left.\n#### 1000"},
        {"answer": "(1,2]", "response": "The answer is $[1,2]$."},
        {"answer": 5, "response": "I give up."},
    ]
    src = write_lines(tmp_path / "in.jsonl", [json.dumps(line) for line in lines])
    out = tmp_path / "out.jsonl"
    assert run_grade([src, "--out", str(out)]) == 0
    graded = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["correct"] for g in graded] == [True, True, False, False]
    assert [g["extracted"] for g in graded] == ["0.5", "1000", "[1,2]", None]
    assert graded[0]["response"] == lines[0]["response"]
    assert capsys.readouterr().out.strip() == f"graded 4 lines: accuracy 0.500 (1 with no extracted answer) -> {out}"


def test_grade_command_source_option(tmp_path, capsys):
    src = write_lines(tmp_path / "in.jsonl", [json.dumps({"answer": "042", "response": "\\boxed{42}"})])
    assert run_grade([src, "--out", str(tmp_path / "out.jsonl"), "--source", "aime"]) == 0
    assert "accuracy 1.000" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([json.dumps({"answer": "1", "response": "1"}), json.dumps({"answer": "2"})], 'line 2: expected an object'),
        ([json.dumps({"answer": "1", "response": "1"}), "", '{"answer": "1", "response": '], "line 3: not valid JSON"),
        (["[1, 2]"], "line 1: expected an object"),
        ([json.dumps({"answer": "1.5", "response": "1"})], "line 1: an AIME answer must be an integer"),
        ([], "empty"),
    ],
)
def test_grade_command_rejects_bad_lines(tmp_path, lines, message):
    src = write_lines(tmp_path / "in.jsonl", lines)
    argv = [src, "--out", str(tmp_path / "out.jsonl")] + (["--source", "aime"] if "AIME" in message else [])
    with pytest.raises(InputError, match=message) as err:
        run_grade(argv)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out.jsonl").exists()


def test_grade_command_missing_input_and_output_directory(tmp_path):
    with pytest.raises(InputError, match="nope.jsonl: no such file"):
        run_grade([str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "out.jsonl")])
    src = write_lines(tmp_path / "in.jsonl", [json.dumps({"answer": "1", "response": "1"})])
    with pytest.raises(InputError, match="output directory .*missing does not exist"):
        run_grade([src, "--out", str(tmp_path / "missing" / "out.jsonl")])


def test_grade_through_ppl_main(tmp_path, capsys):
    from ppl import cli

    if "ppl.commands.grade" not in cli.COMMAND_MODULES:
        pytest.skip("ppl.commands.grade is not yet in ppl.cli.COMMAND_MODULES")
    src = write_lines(tmp_path / "in.jsonl", [json.dumps({"answer": "2", "response": "\\boxed{2}"})])
    assert cli.main(["grade", src, "--out", str(tmp_path / "out.jsonl")]) == 0
    assert "accuracy 1.000" in capsys.readouterr().out
    bad = write_lines(tmp_path / "bad.jsonl", [json.dumps({"answer": "2"})])
    assert cli.main(["grade", bad, "--out", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ppl grade: error: line 1:")
