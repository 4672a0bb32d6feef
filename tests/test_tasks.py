"""The reasoning tasks (Countdown, arithmetic) and the shipped tokenizer."""

import ast
import json
import operator
from fractions import Fraction

import numpy as np
import pytest

from ppl.errors import InputError
from ppl.tasks import arithmetic, countdown

# ---------------------------------------------------------------- Countdown


def brute_reachable(pool, target):
    """Independent oracle: any ordered pair, any op, exact Fractions, positive integer results only."""
    if len(pool) == 1:
        return pool[0] == target
    ops = [operator.add, operator.sub, operator.mul, operator.truediv]
    for i in range(len(pool)):
        for j in range(len(pool)):
            if i == j:
                continue
            rest = [x for k, x in enumerate(pool) if k not in (i, j)]
            for op in ops:
                c = op(Fraction(pool[i]), Fraction(pool[j]))
                if c.denominator == 1 and c > 0 and brute_reachable([*rest, int(c)], target):
                    return True
    return False


@pytest.fixture(scope="module")
def problems():
    return countdown.generate(np.random.default_rng(0), 40)


def test_generate_respects_distribution(problems):
    assert len(problems) == 40
    for p in problems:
        assert len(p.numbers) == 4 and all(1 <= x <= 25 for x in p.numbers)
        assert 10 <= p.target <= 100
        assert brute_reachable(list(p.numbers), p.target)
    assert countdown.generate(0, 5) == countdown.generate(0, 5)
    assert countdown.generate(0, 5) != countdown.generate(1, 5)


def test_solutions_verify_and_wrong_traces_do_not(problems):
    for p in problems[:15]:
        sols = countdown.solutions(p)
        assert sols and len({tuple(s) for s in sols}) == len(sols)
        for s in sols:
            assert countdown.verify(p, s)
            assert countdown.step_labels(p, s) == [1, 1, 1]
        first = sols[0]
        assert not countdown.verify(p, first[:2])
        assert not countdown.verify(p, [*first, first[-1]])
        a, op, b, c, pool = countdown.parse_step(first[0])
        assert not countdown.verify(p, [f"{a}{op}{b}={c + 1}", *first[1:]])
        assert countdown.verify(p, [f"{a}{op}{b}={c}", *first[1:]])  # the pool may go unwritten


def test_verify_specific_cases():
    p = countdown.Problem((3, 7, 12, 25), 34)
    assert countdown.verify(p, ["7*3=21", "25+21=46", "46-12=34"])
    assert countdown.verify(p, ["3*7=21", "21+25=46", "46-12=34"])  # smaller operand first is fine
    assert not countdown.verify(p, ["7*3=21", "25+21=46", "46-12=35"])  # wrong arithmetic
    assert not countdown.verify(p, ["7*3=21", "25+21=46", "12-46=34"])  # negative result
    assert not countdown.verify(p, ["7*3=21", "25+21=46", "46-12=34", "34*1=34"])  # too many steps
    assert not countdown.verify(p, ["7*7=49", "49-3=46", "46-12=34"])  # 7 used twice
    assert not countdown.verify(p, ["7*3=21", "25+21=46", "46-12=34x"])  # malformed
    q = countdown.Problem((2, 3, 4, 5), 1)
    assert not countdown.verify(q, ["3*2=6", "6+4=10", "10/5=2"])  # ends at 2
    assert countdown.verify(q, ["3-2=1", "5-4=1", "1/1=1"])


def test_parse_step():
    assert countdown.parse_step("7*3=21\n") == countdown.Step(7, "*", 3, 21)
    assert countdown.parse_step("7*3=21").text == "7*3=21"
    assert countdown.parse_step("7*3=21 (25 12 21)") == countdown.Step(7, "*", 3, 21, (25, 12, 21))
    bad_pools = ["7*3=21(12)", "7*3=21 (12  21)", "7*3=21 ()", "7*3=21 (012)", "7*3=21 (12) (3)", "7*3=21 ( 12)"]
    for bad in ["7 * 3 = 21", "07*3=21", "7x3=21", "7*3=", "-7*3=-21", "answer 21", "", *bad_pools]:
        assert countdown.parse_step(bad) is None


def test_apply_step():
    assert countdown.apply_step((3, 7, 12, 25), "7*3=21") == (12, 21, 25)
    assert countdown.apply_step((3, 7, 12, 25), "7*3=22") is None
    assert countdown.apply_step((3, 7, 12, 25), "7*7=49") is None
    assert countdown.apply_step((3, 7, 12, 25), "12/7=1") is None
    assert countdown.apply_step((3, 3), "3-3=0") is None
    assert countdown.apply_step((3, 3), "3/3=1") == (1,)
    assert countdown.apply_step((3, 7, 12, 25), "7*3=21 (12 21 25)") == (12, 21, 25)
    assert countdown.apply_step((3, 7, 12, 25), "7*3=21 (25 21 12)") == (12, 21, 25)  # a multiset
    assert countdown.apply_step((3, 7, 12, 25), "7*3=21 (12 21 24)") is None  # the pool left is wrong
    assert countdown.apply_step((3, 7, 12, 25), "7*3=21 (12 25)") is None


def test_oracle_agrees_with_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(150):
        size = int(rng.integers(1, 5))
        pool = [int(x) for x in rng.integers(1, 26, size)]
        target = int(rng.integers(1, 120))
        expected = brute_reachable(pool, target)
        assert countdown.solvable(pool, target) == expected
    assert countdown.solvable((3, 7, 12, 25), 34)


def test_step_labels_match_oracle_on_corrupted_traces(problems):
    rng = np.random.default_rng(2)
    seen = set()
    for p in problems[:25]:
        for _ in range(4):
            trace = countdown.corrupted_trace(p, rng)
            labels = countdown.step_labels(p, trace)
            assert len(trace) == len(labels) == 3
            pool, expected = list(p.numbers), []
            for step in trace:
                pool = pool and countdown.apply_step(pool, step)
                expected.append(int(bool(pool) and brute_reachable(list(pool), p.target)))
            assert labels == expected
            assert (labels[-1] == 1) == countdown.verify(p, trace)
            seen.add(tuple(labels))
    assert (1, 1, 1) in seen and (0, 0, 0) in seen and len(seen) >= 3


def test_prompt_and_trace_format():
    p = countdown.Problem((3, 7, 12, 25), 34)
    assert countdown.prompt(p) == "countdown 3 7 12 25 -> 34\n"
    steps = ["7*3=21 (12 21 25)", "25+21=46 (12 46)", "46-12=34 (34)"]
    assert countdown.verify(p, steps) and steps in countdown.solutions(p)
    assert countdown.format_solution(steps) == "7*3=21 (12 21 25)\n25+21=46 (12 46)\n46-12=34 (34)\n"
    assert countdown.TASK.answer(p, steps) == countdown.TASK.answer(p, ["7*3=21", "25+21=46", "46-12=34"])


def write(tmp_path, lines):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_countdown_read_problems(tmp_path):
    good = json.dumps({"numbers": [3, 7, 12, 25], "target": 34})
    path = write(tmp_path, [good, "", json.dumps({"numbers": [1, 2, 3, 4], "target": 24, "id": "x"})])
    assert countdown.read_problems(path) == [
        countdown.Problem((3, 7, 12, 25), 34),
        countdown.Problem((1, 2, 3, 4), 24),
    ]


@pytest.mark.parametrize(
    "bad, words",
    [
        ("{not json", "JSON"),
        ('{"numbers": [1, 2, 3], "target": 6}', "4 integers"),
        ('{"numbers": [1, 2, 3, 4, 5], "target": 6}', "4 integers"),
        ('{"numbers": [1, 2, 3, 4.5], "target": 6}', "4.5"),
        ('{"numbers": [1, 2, 3, true], "target": 6}', "True"),
        ('{"numbers": [1, 2, 3, 4], "target": "10"}', "'10'"),
        ('{"numbers": [1, 2, 3, 0], "target": 6}', "positive"),
        ('{"numbers": [1, 2, 3, 4], "target": 1000}', "not reachable"),
        ('{"target": 6}', "numbers"),
        ("[1, 2, 3, 4]", "numbers"),
    ],
)
def test_countdown_read_problems_names_the_line(tmp_path, bad, words):
    good = json.dumps({"numbers": [3, 7, 12, 25], "target": 34})
    with pytest.raises(InputError, match=r"^line 3: ") as err:
        countdown.read_problems(write(tmp_path, [good, good, bad]))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_read_problems_file_errors(tmp_path):
    for module in (countdown, arithmetic):
        with pytest.raises(InputError, match="empty"):
            module.read_problems(write(tmp_path, ["", "  "]))
        with pytest.raises(InputError, match="no such file"):
            module.read_problems(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------- arithmetic


def exact_value(text):
    """Independent evaluator over Python's own parse of the (operator-compatible) grammar."""
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}

    def walk(node):
        if isinstance(node, ast.BinOp):
            return ops[type(node.op)](walk(node.left), walk(node.right))
        assert isinstance(node, ast.Constant) and isinstance(node.value, int)
        return Fraction(node.value)

    return walk(ast.parse(text, mode="eval").body)


def one_op_per_group(text):
    """Every parenthesised group, and the top level, holds exactly one operation of its own."""
    stack = [0]
    for ch in text:
        if ch == "(":
            stack.append(0)
        elif ch == ")":
            if stack.pop() != 1:
                return False
        elif ch in "+-*/":
            stack[-1] += 1
    return stack == [1]


def test_arithmetic_generator_grammar_and_bounds():
    exprs = arithmetic.generate(np.random.default_rng(0), 300)
    counts = {3: 0, 4: 0}
    for e in exprs:
        assert set(e) <= set("0123456789+-*/()") and arithmetic.to_text(arithmetic.parse(e)) == e
        assert one_op_per_group(e)
        steps = arithmetic.solution_steps(e)
        counts[len(steps)] += 1
        assert e.count("(") == e.count(")") == len(steps) - 1
        leaves = [
            int(x) for x in e.replace("(", " ").replace(")", " ").translate(str.maketrans("+-*/", "    ")).split()
        ]
        assert len(leaves) == len(steps) + 1 and all(2 <= x <= 30 for x in leaves)
        assert all(0 <= arithmetic.parse_step(s).c <= 999 for s in steps)
        value = arithmetic.evaluate(e)
        assert Fraction(value) == exact_value(e)
        assert arithmetic.verify_steps(e, steps)
        assert arithmetic.answer_from_trace(arithmetic.format_solution(e)) == value
    assert counts[3] > 0 and counts[4] > 0
    assert arithmetic.generate(5, 3) == arithmetic.generate(5, 3)


def test_arithmetic_formats():
    e = "(((17+25)*3)-40)/2"
    assert arithmetic.prompt(e) == "arithmetic (((17+25)*3)-40)/2\n"
    assert arithmetic.format_solution(e) == "17+25=42\n42*3=126\n126-40=86\n86/2=43\nanswer 43\n"
    assert arithmetic.prompt("2 + 3*4") == "arithmetic 2+(3*4)\n"
    assert arithmetic.evaluate("2+3*4-6/3") == 12
    assert arithmetic.evaluate("10-2-3") == 5
    assert arithmetic.answer_from_trace("1+1=2\nanswer 2\nanswer 3\n") == 2
    assert arithmetic.answer_from_trace("1+1=2\n") is None


def test_arithmetic_step_labels():
    e = "(((17+25)*3)-40)/2"
    good = ["17+25=42", "42*3=126", "126-40=86", "86/2=43", "answer 43"]
    assert arithmetic.step_labels(e, good) == [1, 1, 1, 1, 1]
    assert arithmetic.step_labels(e, ["25+17=42", "3*42=126"]) == [1, 1]  # + and * commute
    assert arithmetic.step_labels(e, ["17+25=42", "42*3=126", "40-126=86"]) == [1, 1, 0]
    assert arithmetic.step_labels(e, ["17+25=42", "42*3=127", "127-40=87"]) == [1, 0, 0]
    assert arithmetic.step_labels(e, ["17+25=42", "answer 42"]) == [1, 0]
    assert arithmetic.step_labels(e, [*good[:4], "answer 44"]) == [1, 1, 1, 1, 0]
    assert arithmetic.step_labels(e, [*good, "answer 43"]) == [1, 1, 1, 1, 1, 0]
    assert arithmetic.verify_steps(e, good) and arithmetic.verify_steps(e, good[:4])
    assert not arithmetic.verify_steps(e, good[:3])


def test_arithmetic_corrupted_traces():
    rng = np.random.default_rng(3)
    exprs = arithmetic.generate(rng, 60)
    clean = 0
    for e in exprs:
        lines = arithmetic.corrupted_trace(e, rng)
        labels = arithmetic.step_labels(e, lines)
        assert len(lines) == len(arithmetic.solution_steps(e)) + 1 and lines[-1].startswith("answer ")
        assert labels == sorted(labels, reverse=True)  # once wrong, wrong for good
        assert all(arithmetic.parse_step(x) for x in lines[:-1])
        clean += all(labels)
        if all(labels):
            assert lines == arithmetic.format_solution(e).splitlines()
    assert 0 < clean < len(exprs)


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "end"),
        ("(1+2", "')'"),
        ("1+2)", "')'"),
        ("2^3", "'^'"),
        ("1 2", "'2'"),
        ("²+1", "'²'"),
        ("7/2", "exact"),
        ("3-5", "non-negative"),
        ("4/(2-2)", "exact"),
        ("(" * 200 + "1" + ")" * 200, "nested"),
    ],
)
def test_arithmetic_parse_errors(text, words):
    with pytest.raises(InputError) as err:
        arithmetic.evaluate(text)
    assert words in str(err.value)


@pytest.mark.parametrize(
    "bad, words",
    [
        ("{bad", "JSON"),
        ('{"expression": 5}', "expression"),
        ('{"expr": "1+2"}', "expression"),
        ('{"expression": "7"}', "no operation"),
        ('{"expression": "7/2"}', "exact"),
    ],
)
def test_arithmetic_read_problems(tmp_path, bad, words):
    good = json.dumps({"expression": "2 + 3*4"})
    assert arithmetic.read_problems(write(tmp_path, [good])) == ["2+(3*4)"]
    with pytest.raises(InputError, match=r"^line 2: ") as err:
        arithmetic.read_problems(write(tmp_path, [good, bad]))
    assert words in str(err.value)


# ---------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    from ppl.train import build_tokenizer

    return build_tokenizer()


def test_tokenizer_round_trip_and_digits(tokenizer):
    p = countdown.generate(0, 1)[0]
    texts = [
        countdown.prompt(p) + countdown.format_solution(countdown.solutions(p)[0]),
        arithmetic.prompt("(((17+25)*3)-40)/2") + arithmetic.format_solution("(((17+25)*3)-40)/2"),
        " héllo  wörld\t\n\n 你好 ",
        "",
    ]
    for text in texts:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    ids = tokenizer.encode("1234567890")
    assert len(ids) == 10 and tokenizer.convert_ids_to_tokens(ids) == list("1234567890")
    assert 320 - 20 <= len(tokenizer) <= 400
    assert [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id] == [0, 1, 2]


def test_tokenizer_step_delimiter(tokenizer):
    newline = tokenizer.convert_tokens_to_ids("Ċ")
    with_newline = [i for t, i in tokenizer.get_vocab().items() if "\n" in tokenizer.convert_tokens_to_string([t])]
    assert with_newline == [newline]  # the step delimiter is one token, and no other token holds it
    ids = tokenizer.encode(arithmetic.format_solution("(((17+25)*3)-40)/2"))
    assert ids.count(newline) == 5 and ids[-1] == newline


def test_tokenizer_is_deterministic_and_loads_with_auto(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from ppl.train import build_tokenizer

    assert build_tokenizer().get_vocab() == tokenizer.get_vocab()
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = arithmetic.prompt("2+3*4") + arithmetic.format_solution("2+3*4")
    assert loaded.encode(text) == tokenizer.encode(text)
    assert loaded.decode(loaded.encode(text)) == text
    assert loaded.eos_token == "<eos>" and loaded.eos_token_id == tokenizer.eos_token_id
