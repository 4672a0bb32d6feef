"""The command line: one-line errors with a non-zero exit code, before any model is loaded."""

import json

import pytest

from ppl.cli import main


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"numbers": [1, 2, 3, 4], "target": 10}\n{"numbers": [1, 2, 3, 4], "target": 10\n', "line 2"),
        ('{"numbers": [1, 2, 3], "target": 10}\n', "line 1"),
        ('{"numbers": [1, 2, 3, "4"], "target": 10}\n', "line 1"),
        ('{"numbers": [1, 1, 1, 1], "target": 97}\n', "line 1"),
        ("", "empty"),
    ],
)
def test_countdown_solve_rejects_malformed_input(tmp_path, capsys, content, message):
    problems = write(tmp_path, "in.jsonl", content)
    code = main(["countdown", "solve", "--problems", problems, "--method", "pf", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("ppl countdown: error:") and message in err[0]
    assert not (tmp_path / "o").exists()


def test_arithmetic_solve_rejects_bad_expression(tmp_path, capsys):
    problems = write(tmp_path, "in.jsonl", json.dumps({"expression": "(3+4"}) + "\n")
    code = main(["arithmetic", "solve", "--problems", problems, "--method", "pf", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "line 1" in err[0]


def test_missing_file_and_bad_budget(tmp_path, capsys):
    code = main(["countdown", "solve", "--problems", str(tmp_path / "nope.jsonl"), "--method", "bon",
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "nope.jsonl" in capsys.readouterr().err
    problems = write(tmp_path, "in.jsonl", '{"numbers": [1, 2, 3, 4], "target": 10}\n')
    code = main(["countdown", "solve", "--problems", problems, "--method", "bon", "--particles", "0",
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "--particles" in capsys.readouterr().err


def test_unknown_method_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["countdown", "solve", "--problems", "x", "--method", "magic", "--out", "y"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_demo_budgets_must_be_positive_lists(capsys):
    assert main(["demo", "--budgets", "4,x"]) == 2
    assert "--budgets must be a comma-separated list" in capsys.readouterr().err
    assert main(["demo", "--baseline-budgets", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err


def test_demo_runs_every_method_at_budgets_and_the_baselines_beyond():
    from ppl.commands.demo import SAMPLING_FAMILY, SELECTING, demo_runs

    runs = demo_runs([1, 4], [4, 16])
    assert [(spec.method, n) for spec, _, n in runs] == [
        ("greedy", 1), ("bon", 1), ("bon", 4), *[(m, 4) for m in SELECTING], ("bon", 16)]
    assert runs[1][1] == SAMPLING_FAMILY + SELECTING  # one sample: every method reads the same run
    assert runs[-1][1] == SAMPLING_FAMILY
    assert [spec.method for spec, _, _ in demo_runs([4], [])] == ["greedy", "bon", *SELECTING]


class _FailingSolver:
    """A solver whose second run fails: the first run's lines must survive in the output."""

    compile_seconds = 0.0

    def __init__(self, error):
        self.error = error

    def records(self, problems, spec, methods, seed=0):
        yield {spec.method: [{"answer": 1, "tokens": 3, "correct": True}] * 2}
        raise self.error


@pytest.mark.parametrize("error", [None, KeyboardInterrupt()])
def test_solve_keeps_the_lines_of_finished_runs_when_a_later_run_fails(tmp_path, error):
    from ppl.commands.solve import _solve_and_write
    from ppl.reasoning import PoolExhausted
    from ppl.search import SearchSpec

    error = error or PoolExhausted("the page pool ran out")
    out = tmp_path / "out.jsonl"
    with pytest.raises(type(error)) as raised:
        _solve_and_write(_FailingSolver(error), [0] * 5, SearchSpec("pf", 4), 0, out, "solve", quiet=True)
    assert f"2 of 5 problems' lines kept in {out}" in str(raised.value)
    assert [json.loads(line)["answer"] for line in out.read_text().splitlines()] == [1, 1]


class _FixedSolver:
    """A solver whose one run returns `records` (so the summary line can be read without a model)."""

    compile_seconds = 0.0

    def __init__(self, records):
        self._records = records

    def records(self, problems, spec, methods, seed=0):
        yield {spec.method: self._records}


@pytest.mark.parametrize(("method", "resampled", "says"), [
    ("pf", [2, 1], "resampled at 1.50 steps per problem,"),
    ("epf", [0, 0], "resampled at 0.00 steps per problem (never: "),
    ("bon", [0, 0], None),  # independent samples: never resampling is not news
])
def test_solve_summary_counts_a_filters_resampling_steps(tmp_path, capsys, method, resampled, says):
    from ppl.commands.solve import _solve_and_write
    from ppl.search import SearchSpec

    records = [{"answer": 1, "tokens": 3, "correct": correct, "resampled": count}
               for correct, count in zip([True, False], resampled, strict=True)]
    _solve_and_write(_FixedSolver(records), [0, 0], SearchSpec(method, 4), 0, tmp_path / "o.jsonl", "solve", True)
    summary = capsys.readouterr().out
    assert "accuracy 0.500 on 2 graded" in summary
    assert (says in summary) if says else "resampled" not in summary
